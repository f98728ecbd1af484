"""Rules of the non-quantised grouped matmul: MindSpeed ``npu_gmm`` / ``npu_gmm_v2`` and torch_npu
``npu_grouped_matmul`` (spec grouped-matmul-family.md 1.1-1.9).

The three ops share one set of predicates over a normalised view of the call (:class:`_GmmCall`):
x / weight / bias as lists of TensorMeta, the group list (its values, whether it is an int array
(``List[int]``) or a Tensor), split_item, group_type, group_list_type.

Group-list total vs rows (spec 1.3, 4.1): the device treats the two group-list paths differently,
and so does the checker:

* int-array path (``List[int]``: MindSpeed ``npu_gmm`` -> aclnnGroupedMatmulV2, torch_npu
  ``npu_grouped_matmul.List`` -> V1): the host checks ``group_list[-1] == x.shape[0]`` (M split)
  or ``== x.shape[1]`` (K split) [C: ``CheckGroupListSplitM/SplitK``] -> rule ``gmm.total_list``.
* Tensor path (V3/V4/V5): the host never reads the values.  The aclnn V4/V5 docs say ``<=``, the
  torch_npu / MindSpeed docs say ``==``.  The checker (and therefore the simulator) enforces
  ``total <= rows`` as an error (a larger total would read past x: undefined) [I], and for MindSpeed
  ``npu_gmm``/``npu_gmm_v2`` reports ``total < rows`` as a doc-only warning (MindSpeed doc "相等");
  rows past the total are undefined output (rule ``gmm.total_tensor`` / ``gmm.total_tensor_doc``).

K split (group_type 2), as the host's ``CheckCaseSplitK`` accepts it: one transposed x and either one
weight [K, N] with a group list (y [E, M, N], or E outputs with split_item 0/1), or a weight list
{[K_i, N_i]} with split_item 0/1 and no group list - each weight's K is its group, taken from x's
columns in order, and the weights' total K must not exceed x's K (nothing checks it; a larger total
reads past x).  CANN's split-K case table uses the second form.

float32: the host rejects it only on the V1 API (``CheckFunctionParams``: aclnnGroupedMatmul on
Ascend910B / 910_93), which op-plugin calls for the ``List[int]`` group-list overload; the
single-tensor sentence of the V3 and older V4 docs is a doc-level warning up to 9.0.1.

Scope: the quantised paths (int8 / int4 weights, scale, offset, per_token_scale, antiquant_*,
activation_*, group_list_type 2, x_dtype & co.) are reported as not simulated (``NotSimulatedError``)
with a message naming the ascend_moe op that models them; they are not device rules.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from . import register_op
from ..products import A2_A3
from ..sim import gmm as _sim

P310 = "atlas-inference"
GMM_PRODUCTS = A2_A3 | {P310, "ascend-950"}

SRC_HOST = "ops-transformer gmm/grouped_matmul/op_host/op_api/aclnn_grouped_matmul.cpp"
H = "aclnn_grouped_matmul.cpp"   # short form in sources that name several functions of it


def host(*functions: str, tag: str = "") -> str:
    """Source text of a host rule: the file and the function(s) that reject the call."""
    return f"{SRC_HOST} {' / '.join(functions)}" + (f" ({tag})" if tag else "")


SRC_OP_PLUGIN = "op-plugin op_plugin/ops/opapi/GroupedMatmulKernelNpuOpApi.cpp"
SRC_MINDSPEED = "MindSpeed mindspeed/ops/gmm.py, csrc/cann/gmm.cpp"
SRC_DOC_V4 = "aclnnGroupedMatmulV4/V5 docs (gmm/grouped_matmul/docs)"
SRC_TORCH_DOC = "op-plugin docs/zh/custom_APIs/torch_npu/torch_npu-npu_grouped_matmul.md"
SCOPE = "ascend-moe scope: the simulator models the non-quantised grouped matmul only"
QUANT_FIX = ("for quantised grouped matmul use ascend_moe.npu_grouped_matmul_swiglu_quant (A8W8/A8W4 + SwiGLU "
             "+ per-token quant) or ascend_moe.npu_grouped_matmul_finalize_routing (A8W8/A8W4 + MoE combine)")

FLOAT_DTYPES = ("float16", "bfloat16", "float32")
QUANT_DTYPES = ("int8", "int4", "int32", "uint8", "float8_e4m3fn", "float8_e5m2")
BIAS_DTYPE = {"float16": "float16", "bfloat16": "float32", "float32": "float32", "float64": "float64"}
INT32_MAX = 2 ** 31 - 1
MAX_INNER_AXIS = 65535
MAX_LIST_LEN_ARRAY = 128
MAX_LIST_LEN_TENSOR = 1024
# torch_npu output_dtype int codes (TORCH_DTYPE_ENUM_VALUE_TO_SCALAR_TYPE_MAP)
OUTPUT_DTYPE_CODES = {5: "float16", 15: "bfloat16", 6: "float32", 3: "int32"}
# op-plugin v7.1.0 (torch_npu 7.1.0, paired with CANN 8.2.RC1) refuses group_type=None without a group list
OP_PLUGIN_7_1 = "8.2.RC1"
# [I] the fp32 single-tensor sentence is in the V3 doc and in the V4 doc of the released trees up to v9.0.1,
# not in the V4 doc of the next release's tree (master); taken to leave the docs with 9.1.0
FP32_SINGLE_DOC_UNTIL = "9.1.0"

npu_gmm_spec = register_op("npu_gmm", _sim.npu_gmm, products=GMM_PRODUCTS, source=SRC_MINDSPEED)
npu_gmm_v2_spec = register_op("npu_gmm_v2", _sim.npu_gmm_v2, products=GMM_PRODUCTS, source=SRC_MINDSPEED)
npu_grouped_matmul_spec = register_op("npu_grouped_matmul", _sim.npu_grouped_matmul, products=GMM_PRODUCTS,
                                      source="op-plugin op_plugin/ops/opapi/GroupedMatmulKernelNpuOpApi.cpp")
ALL = (npu_gmm_spec, npu_gmm_v2_spec, npu_grouped_matmul_spec)
MINDSPEED = (npu_gmm_spec, npu_gmm_v2_spec)
TORCH_NPU = (npu_grouped_matmul_spec,)


class _GmmCall:
    """A normalised view of any of the three ops' calls."""

    def __init__(self, call):
        # (no reference back to the call: the call keeps this view, and a cycle would keep the call's tensors -
        # a weight whose .grad is a large gradient among them - alive until the garbage collector runs)
        self.op = call.op
        self.xs = call.metas("x")
        self.ws = call.metas("weight")
        self.bs = call.metas("bias")
        gl = call.get("group_list")
        gl_name = "group_list"
        if gl is None and call.get("group_list_ints") is not None:
            # the torch schema's int-array twin of group_list (ascend_moe.ops.gmm), as bound by the
            # generic NPU kernel
            gl, gl_name = call.get("group_list_ints"), "group_list_ints"
        self.gl = gl
        self.gl_given = gl is not None
        self.gl_is_list = isinstance(gl, (list, tuple))
        self.gl_meta = None if (gl is None or self.gl_is_list) else call.meta(gl_name)
        self.gl_values = call.values(gl_name) if self.gl_given else None
        if self.gl_values is not None:
            self.gl_values = np.asarray(self.gl_values).reshape(-1) if np.asarray(self.gl_values).ndim <= 1 \
                else np.asarray(self.gl_values)
        if call.op == "npu_grouped_matmul":
            self.split_item = call.get("split_item")
            self.split_item = 0 if self.split_item is None else self.split_item
            self.raw_group_type = call.get("group_type")
            self.group_type = _sim.resolve_group_type(self.raw_group_type, gl) if (
                self.raw_group_type is not None or self.gl_is_list or gl is None) else None
            glt = call.get("group_list_type")
            self.group_list_type = 0 if glt is None else glt
        else:
            self.split_item = 3
            self.raw_group_type = call.get("group_type")
            self.group_type = self.raw_group_type
            self.group_list_type = 0 if call.op == "npu_gmm" else 1

    @property
    def gl_len(self) -> Optional[int]:
        if self.gl_is_list:
            return len(self.gl)
        if self.gl_meta is not None and self.gl_meta.ndim >= 1:
            return self.gl_meta.shape[0]
        return None

    @property
    def single_x(self) -> bool:
        return len(self.xs) == 1

    @property
    def single_w3(self) -> bool:
        return len(self.ws) == 1 and self.ws[0].ndim == 3

    @property
    def num_groups(self) -> Optional[int]:
        """E as the weight defines it (None for K split, where the group list defines it)."""
        if self.group_type == 2:
            return None
        if self.single_w3:
            return self.ws[0].shape[0]
        return len(self.ws)

    def ends(self) -> Optional[np.ndarray]:
        """Group ends (cumsum) when the values are concrete and 1-D."""
        v = self.gl_values
        if v is None or v.ndim != 1:
            return None
        return v if self.group_list_type == 0 else np.cumsum(v)


def _v(call) -> _GmmCall:
    if not hasattr(call, "_gmm_view"):
        call._gmm_view = _GmmCall(call)
    return call._gmm_view


def rule(specs, id, argument, summary, **kw):
    """Register one predicate on several op specs."""
    def deco(fn):
        for s in specs:
            s.rule(id, argument, summary, **kw)(fn)
        return fn
    return deco


def _storage_last_dim(m) -> int:
    return m.shape[-2] if m.is_transposed_last_two() else m.shape[-1]


def _x_rows(v: _GmmCall) -> Optional[int]:
    """Rows the group list partitions: x.shape[0] for M split, x.shape[1] for K split."""
    if not v.xs or v.xs[0].ndim < 2:
        return None
    return v.xs[0].shape[1] if v.group_type == 2 else v.xs[0].shape[0]


# ----------------------------------------------------------------------------------------------
# scope: quantised paths
# ----------------------------------------------------------------------------------------------

_QUANT_ARGS = ("scale", "offset", "antiquant_scale", "antiquant_offset", "per_token_scale", "activation_input",
               "activation_quant_scale", "activation_quant_offset")


def _quant_arg_rule(arg: str, id: str, what: str):
    @rule(TORCH_NPU, id, arg, f"{arg} must be None: {what}", source=SCOPE, fix=QUANT_FIX,
          severity="not-simulated")
    def _(call):
        if call.given(arg):
            v = call[arg]
            if isinstance(v, (list, tuple)):
                desc = f"a list of {len(v)} tensor(s)"
            elif hasattr(v, "shape"):
                desc = f"a tensor of shape {list(v.shape)}"
            else:
                desc = f"{arg}={v!r}"
            return (f"{arg} is given ({desc}): it selects a quantised path ({what}), which "
                    f"npu_grouped_matmul does not simulate")


for _arg in _QUANT_ARGS:
    _quant_arg_rule(_arg, f"gmm.quant_arg.{_arg}", "quantised / anti-quantised grouped matmul")
for _arg in ("x_dtype", "weight_dtype", "scale_dtype", "per_token_scale_dtype"):
    _quant_arg_rule(_arg, f"gmm.quant_arg.{_arg}", "950 MX/fp8/int4 quantised grouped matmul")


@rule(ALL, "gmm.quant_dtype", "weight", "int8/int4/int32/fp8 x or weight are quantised paths",
      source=SCOPE + "; MindSpeed gmm.py 'Only support non quant case'", fix=QUANT_FIX, severity="not-simulated")
def _(call):
    v = _v(call)
    out = []
    for name, metas in (("x", v.xs), ("weight", v.ws)):
        for i, m in enumerate(metas):
            if m.dtype in QUANT_DTYPES:
                out.append(f"{name}[{i}] has dtype {m.dtype}: the quantised grouped matmul is not handled by "
                           f"{call.op} (only float16/bfloat16/float32)")
    return out


@rule(TORCH_NPU, "gmm.group_list_type", "group_list_type",
      "group_list_type is 0 (cumsum) or 1 (counts); 2 (sparse [E,2]) is A8W8-only",
      source=SCOPE + "; " + SRC_DOC_V4 + " (type 2 is the sparse [E, 2] form of the quantised path)",
      fix="pass group_list_type=0 for a cumsum or 1 for counts", severity="not-simulated")
def _(call):
    t = _v(call).group_list_type
    if t not in (0, 1):
        extra = " (type 2 = sparse [[expert, count]] exists only for the A8W8 quantised path)" if t == 2 else ""
        return f"group_list_type={t!r} is not simulated (the simulator models 0 and 1){extra}"


@rule(TORCH_NPU, "gmm.list_is_cumsum", "group_list_type",
      "a List[int] group_list is cumulative split points: group_list_type must be 0",
      source="op-plugin op_plugin/ops/opapi/GroupedMatmulKernelNpuOpApi.cpp npu_grouped_matmul(.., "
             "OptionalIntArrayRef group_list, ..): group_list_type is not used, the list goes to "
             "aclnnGroupedMatmul (V1), which has no list-type parameter",
      fix="pass the cumsum of the counts with group_list_type=0, or pass the counts as an int64 Tensor",
      kind="wrapper", status=None)
def _(call):
    v = _v(call)
    if v.gl_is_list and v.group_list_type not in (0, None):
        return (f"group_list_type={v.group_list_type!r} with a List[int] group_list: torch_npu's .List overload "
                "ignores group_list_type and the device reads the list as cumulative split points")


@rule(TORCH_NPU, "gmm.act_type", "act_type", "act_type must be 0 for the non-quantised grouped matmul",
      source=host("CheckFunctionParams", tag="'Non quant case dose not support activation'"), fix="pass act_type=0")
def _(call):
    a = call.get("act_type")
    if a not in (None, 0):
        return f"act_type must be 0 (no fused activation), got act_type={a!r}"


@rule(TORCH_NPU, "gmm.output_dtype", "output_dtype", "non-quantised: output_dtype is None or the x dtype",
      source=host("CheckNonQuantMatmulDataType", "CheckMatmulDataType", tag="y dtype must equal x dtype when x "
                  "is float16/bfloat16/float32; quantised calls go through CheckFunctionQuantParams, which "
                  "allows int8/int32/float16/bfloat16 outputs"),
      fix="omit output_dtype (the output has x's dtype)")
def _(call):
    od = call.get("output_dtype")
    v = _v(call)
    if od is None or not v.xs or v.xs[0].dtype not in FLOAT_DTYPES:
        return None  # quantised calls: not simulated (gmm.quant_dtype), their output dtypes are not judged here
    name = OUTPUT_DTYPE_CODES.get(od) if isinstance(od, (int, np.integer)) else None
    if name is None:
        try:
            from ..sim.numerics import dtype_name
            name = dtype_name(od)
        except Exception:
            return f"output_dtype must be None or one of the codes {sorted(OUTPUT_DTYPE_CODES)}, got output_dtype={od!r}"
    if name != v.xs[0].dtype:
        return (f"output_dtype={od!r} ({name}) differs from x dtype {v.xs[0].dtype}: the non-quantised grouped "
                f"matmul outputs x's dtype")


# ----------------------------------------------------------------------------------------------
# group_type / split_item
# ----------------------------------------------------------------------------------------------


@rule(TORCH_NPU, "gmm.group_type_required", "group_type",
      "group_type must be passed explicitly with a Tensor group list, and (torch_npu >= 7.1.0) without any group list",
      source=SRC_OP_PLUGIN + " npu_grouped_matmul (TORCH_CHECK 'requires manual passing group_type'); the "
             "no-group-list case from op-plugin v7.1.0 (torch_npu 7.1.0 pairs with CANN 8.2.RC1)",
      fix="pass group_type=0 (M split), 2 (K split) or -1 (no split)", kind="wrapper", status=None)
def _(call):
    v = _v(call)
    if v.raw_group_type is not None:
        return None
    if v.gl_given and not v.gl_is_list:
        return "group_type=None with a Tensor group_list: torch_npu requires manual passing group_type"
    if not v.gl_given and not call.cann < OP_PLUGIN_7_1:
        return ("group_type=None without a group list: torch_npu >= 7.1.0 (CANN >= 8.2.RC1) requires manual "
                "passing group_type")


@rule(TORCH_NPU, "gmm.group_type", "group_type", "group_type in {-1, 0, 2}",
      source=host("PreCheckGroupType"), fix="pass group_type=0 (M split), 2 (K split) or -1 (no split)")
def _(call):
    v = _v(call)
    if v.group_type is None:
        return None
    if v.group_type not in (-1, 0, 2):
        note = " (1 = N split is not supported)" if v.group_type == 1 else ""
        return f"group_type must be -1, 0 or 2, got group_type={v.group_type!r}{note}"


@rule(MINDSPEED, "gmm.group_type_mindspeed", "group_type", "npu_gmm / npu_gmm_v2: group_type is 0 or 2",
      source=SRC_MINDSPEED + " npu_gmm_param_verification; MindSpeed docs/zh/ops/gmm.md group_type table",
      fix="pass group_type=0 (M split) or group_type=2 (K split)", kind="wrapper", status=None)
def _(call):
    g = call.get("group_type")
    if g not in (0, 2):
        note = " (1 = N split is not supported)" if g == 1 else ""
        return f"group_type must be 0 or 2, got group_type={g!r}{note}"


@rule(TORCH_NPU, "gmm.split_item", "split_item", "split_item in {0, 1, 2, 3}",
      source=host("PreCheckGroupType", "CheckCaseSplitM", "CheckCaseNoSplit", tag="splitItem 0/1 with a y list, "
                  "2/3 with one y"),
      fix="pass split_item 0/1 (a list of outputs) or 2/3 (one output)")
def _(call):
    s = _v(call).split_item
    if s not in (0, 1, 2, 3):
        return f"split_item must be 0, 1, 2 or 3, got split_item={s!r}"


# ----------------------------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------------------------


@rule(ALL, "gmm.x_dtype", "x", "x is float16, bfloat16 or float32",
      source=host("CheckFunctionParams", tag="'no matching xDtype and weightDtype pattern'"),
      fix="cast x to float16, bfloat16 or float32")
def _(call):
    out = []
    for i, m in enumerate(_v(call).xs):
        if m.dtype in QUANT_DTYPES:
            continue  # reported by gmm.quant_dtype
        if m.dtype == "float64" and _sim.float64_enabled():
            continue  # gradcheck mode of the simulator, not a device dtype
        if m.dtype not in FLOAT_DTYPES:
            out.append(f"x[{i}] dtype must be float16, bfloat16 or float32, got {m.dtype}")
    return out


@rule(ALL, "gmm.weight_dtype", "weight", "weight dtype equals x dtype (non-quantised)",
      source=host("CheckNonQuantMatmulDataType", "CheckMatmulDataType"),
      fix="cast weight to x's dtype")
def _(call):
    v = _v(call)
    if not v.xs:
        return None
    xd = v.xs[0].dtype
    out = [f"x[{i}] has dtype {m.dtype}, x[0] has {xd}: all x must share one dtype"
           for i, m in enumerate(v.xs) if m.dtype != xd]
    out += [f"weight[{i}] has dtype {m.dtype} but x has {xd}: non-quantised weight must match x"
            for i, m in enumerate(v.ws) if m.dtype != xd and m.dtype not in QUANT_DTYPES and xd not in QUANT_DTYPES]
    return out


@rule(ALL, "gmm.bias_dtype", "bias", "bias dtype: float16 x -> float16, bfloat16 x -> float32, float32 -> float32",
      source=host("CheckNonQuantMatmulDataType", tag="bias bfloat16 -> float32, else x's dtype"),
      fix="cast bias to the dtype the table gives for x's dtype")
def _(call):
    v = _v(call)
    if not v.xs or not v.bs:
        return None
    want = BIAS_DTYPE.get(v.xs[0].dtype)
    if want is None:
        return None
    return [f"bias[{i}] has dtype {m.dtype}, but with x {v.xs[0].dtype} the bias must be {want}"
            for i, m in enumerate(v.bs) if m.dtype != want]


@rule(TORCH_NPU, "gmm.fp32_v1", "x", "A2/A3: float32 is rejected on the V1 API (the List[int] group-list overload)",
      products=A2_A3, source=host("CheckFunctionParams", tag="apiVersion V1 on ASCEND910B / ASCEND910_93: "
                                  "'does not support x or weight dtype float32'"),
      fix="pass the group list as an int64 Tensor (V4 path) or cast to bfloat16")
def _(call):
    v = _v(call)
    if v.xs and v.xs[0].dtype == "float32" and v.gl_is_list:
        return ("x dtype float32 with a List[int] group_list: this overload calls aclnnGroupedMatmul (V1), whose host "
                "check rejects float32 on Atlas A2/A3")


@rule(TORCH_NPU, "gmm.fp32_single_doc", "x", "docs: float32 only with single x, single weight and single y",
      products=A2_A3 | {"ascend-950"}, until=FP32_SINGLE_DOC_UNTIL, severity="warning",
      source="aclnnGroupedMatmulV3 doc and aclnnGroupedMatmulV4 doc up to CANN 9.0.1 (fp32 '仅支持单tensor'); the "
             "current V4 doc and the host code (aclnn_grouped_matmul.cpp CheckFunctionParams rejects float32 only "
             "on V1) do not restrict it",
      fix="ignore if intended (the host accepts it), or use single tensors with split_item 2/3")
def _(call):
    v = _v(call)
    if v.xs and v.xs[0].dtype == "float32" and not (len(v.xs) == 1 and len(v.ws) == 1 and v.split_item in (2, 3)):
        return (f"x dtype float32 with len(x)={len(v.xs)}, len(weight)={len(v.ws)}, split_item={v.split_item}: the "
                f"docs of this release say float32 needs single tensors")


@rule(ALL, "gmm.group_list_dtype", "group_list", "a Tensor group_list is int64",
      source=host("CheckGroupListCommonTensor"),
      fix="pass group_list as an int64 tensor (torch.int64)")
def _(call):
    m = _v(call).gl_meta
    if m is not None and m.dtype != "int64":
        return f"group_list must be int64, got dtype {m.dtype}"


@rule((npu_gmm_v2_spec,), "gmm.v2_tensor_only", "group_list", "npu_gmm_v2 takes a Tensor group_list only",
      source=SRC_MINDSPEED + " npu_gmm_param_verification", fix="pass the counts as an int64 tensor",
      kind="wrapper", status=None)
def _(call):
    if _v(call).gl_is_list:
        return f"npu_gmm_v2 group_list must be a torch.Tensor, got a list {list(_v(call).gl)[:8]}"


# ----------------------------------------------------------------------------------------------
# group list: presence, rank, length, values
# ----------------------------------------------------------------------------------------------


@rule(ALL, "gmm.group_list_required", "group_list",
      "group_list is required for M split with a single x and for K split with a single weight",
      source=host("CheckGroupListSplitM", "CheckGroupListSplitK", "CheckGroupListCommonTensor",
                  "CheckGroupListCommonIntArray", tag="CheckCaseSplitK requires it only for one weight and one y"),
      fix="pass the group list (cumsum for npu_gmm, counts for npu_gmm_v2)")
def _(call):
    v = _v(call)
    if v.gl_given or v.group_type not in (0, 2):
        return None
    if (v.group_type == 2 and len(v.ws) == 1) or (v.group_type == 0 and v.single_x and (v.num_groups or 0) > 1):
        return f"group_list=None but group_type={v.group_type} with a single x needs it"


@rule(ALL, "gmm.group_list_rank", "group_list", "group_list is 1-D",
      source="the host reads only dim 0 of a Tensor group list (aclnn_grouped_matmul.cpp CheckGroupListCommonTensor); "
             "the kernel reads the values flat, so a multi-dimensional list gives wrong group bounds",
      fix="pass a 1-D group list of length E", kind="kernel", status=None)
def _(call):
    m = _v(call).gl_meta
    if m is not None and m.ndim != 1:
        return f"group_list must be 1-D, got shape {list(m.shape)}"


@rule(ALL, "gmm.group_list_len", "group_list", "len(group_list) == E (number of weight groups)",
      source=host("CheckGroupListCommonTensor", "CheckGroupListCommonIntArray"),
      fix="pass one group-list entry per expert (weight.shape[0])")
def _(call):
    v = _v(call)
    n, e = v.gl_len, v.num_groups
    if n is None or e is None or v.group_type != 0 or not v.single_x:
        return None
    # spec 1.3 says "len == E (or E == 1)"; a weight with one group cannot serve more group-list
    # entries (the kernel would index past it), so equality is required here [I]
    if n != e:
        return f"group_list has {n} entries but weight has E={e} groups"


@rule(ALL, "gmm.group_list_max_len", "group_list",
      "len(group_list) <= 128 for a List[int], <= 1024 for a Tensor",
      source=host("CheckGroupListCommonIntArray", "CheckGroupListCommonTensor",
                  tag="MAX_GROUP_LIST_SIZE_ARRAY=128 / MAX_GROUP_LIST_SIZE_TENSOR=1024"),
      fix="use a Tensor group list (up to 1024 groups) or fewer groups")
def _(call):
    v = _v(call)
    n = v.gl_len
    if n is None:
        return None
    limit = MAX_LIST_LEN_ARRAY if v.gl_is_list else MAX_LIST_LEN_TENSOR
    if n > limit:
        kind = "List[int]" if v.gl_is_list else "Tensor"
        return f"group_list ({kind}) has {n} entries, at most {limit} allowed"


@rule(ALL, "gmm.group_list_len_one_doc", "group_list", "docs: group_list length cannot be 1",
      source="torch_npu / MindSpeed docs ('长度不能为1'); host allows it when E == 1 (spec 4 item 4)",
      fix="ignore on the device (host accepts it), or use more than one group", severity="warning", status=None)
def _(call):
    v = _v(call)
    if v.gl_is_list and v.gl_len == 1:
        return f"group_list has length 1 (list {list(v.gl)}); the docs say the length cannot be 1"


@rule(ALL, "gmm.group_list_values_list", "group_list",
      "int-array group list: cumsum non-negative and non-decreasing / counts non-negative",
      source=host("CheckGroupListCommonIntArray"),
      fix="pass a non-negative, non-decreasing cumsum (npu_gmm) or non-negative counts")
def _(call):
    v = _v(call)
    if v.gl_is_list:
        return _values_problem(v)


@rule(ALL, "gmm.group_list_values_tensor", "group_list",
      "Tensor group list: cumsum non-negative and non-decreasing / counts non-negative",
      source=SRC_DOC_V4 + "; the host never reads Tensor group-list values, the kernel's group offsets go wrong "
             "(undefined result)", fix="pass a non-negative, non-decreasing cumsum or non-negative counts",
      kind="kernel", status=None)
def _(call):
    v = _v(call)
    if not v.gl_is_list:
        return _values_problem(v)


def _values_problem(v: _GmmCall) -> Optional[str]:
    vals = v.gl_values
    if vals is None or vals.ndim != 1 or vals.size == 0:
        return None
    if (vals < 0).any():
        i = int(np.argmax(vals < 0))
        return f"group_list[{i}]={int(vals[i])} is negative (group_list={_short(vals)})"
    if v.group_list_type == 0 and (np.diff(vals) < 0).any():
        i = int(np.argmax(np.diff(vals) < 0)) + 1
        return (f"group_list (cumsum) decreases at index {i}: {int(vals[i - 1])} -> {int(vals[i])} "
                f"(group_list={_short(vals)})")
    return None


def _short(vals) -> str:
    vals = [int(x) for x in vals]
    return str(vals) if len(vals) <= 16 else str(vals[:16])[:-1] + ", ...]"


@rule(ALL, "gmm.total_list", "group_list",
      "int-array group list: last cumsum == x.shape[0] (M split) / x.shape[1] (K split)",
      source=host("CheckGroupListSplitM", "CheckGroupListSplitK"),
      fix="make the group list cover exactly the rows of x (or use a Tensor group list, where fewer rows are allowed)")
def _(call):
    v = _v(call)
    ends, rows = v.ends(), _x_rows(v)
    if not v.gl_is_list or ends is None or ends.size == 0 or rows is None or not v.single_x:
        return None
    if v.group_type == 2 and len(v.ws) > 1:
        return None  # CheckCaseSplitK does not call CheckGroupListSplitK for several weights
    if int(ends[-1]) != rows:
        axis = "x.shape[1] (K)" if v.group_type == 2 else "x.shape[0] (M)"
        return f"group_list total is {int(ends[-1])} but {axis} is {rows}; the int-array path requires equality"


@rule(ALL, "gmm.total_tensor", "group_list",
      "Tensor group list: total <= x rows (rows past it are left unwritten)",
      source=SRC_DOC_V4 + " ('应小于等于'); the host never reads Tensor group-list values "
             "(aclnn_grouped_matmul.cpp CheckGroupListCommonTensor), so nothing rejects a larger total: the kernel "
             "reads past the end of x and the result is undefined",
      fix="make the group-list total at most the rows of x", kind="kernel", status=None)
def _(call):
    v = _v(call)
    ends, rows = v.ends(), _x_rows(v)
    if v.gl_is_list or ends is None or ends.size == 0 or rows is None or not v.single_x:
        return None
    if v.group_type == 2 and len(v.ws) > 1:
        return None  # several weights: their K define the groups (gmm.k_split_total, gmm.k_split_forms)
    if int(ends[-1]) > rows:
        axis = "x.shape[1] (K)" if v.group_type == 2 else "x.shape[0] (M)"
        return (f"group_list total is {int(ends[-1])} but {axis} is only {rows}: the device does not check this, "
                f"its kernel would read past the end of x (undefined result)")


@rule(MINDSPEED, "gmm.total_tensor_doc", "group_list",
      "MindSpeed doc: the group-list total equals x.shape[0]", severity="warning", status=None,
      source="MindSpeed docs/zh/ops/gmm.md ('最后一个值与x中tensor的第一维相等'); host does not check the Tensor path",
      fix="ignore if intended: rows past the total are left undefined by the device")
def _(call):
    v = _v(call)
    ends, rows = v.ends(), _x_rows(v)
    if v.gl_is_list or ends is None or ends.size == 0 or rows is None:
        return None
    if int(ends[-1]) < rows:
        return f"group_list total is {int(ends[-1])} < {rows} rows of x; rows {int(ends[-1])}.. are left undefined"


@rule(TORCH_NPU, "gmm.group_list_multi_x", "group_list",
      "with a list of x (one per group) the group list, if given, matches the x rows",
      source=host("CheckGroupListSplitM", tag="x separated: each x_i's rows equal the group-list increment; "
                  "int-array path only, the Tensor path never reads the values"),
      fix="omit group_list with a list of x, or pass the cumsum of the x_i rows")
def _(call):
    v = _v(call)
    ends = v.ends()
    if v.single_x or ends is None or v.group_type != 0 or not v.gl_is_list or any(m.ndim < 1 for m in v.xs):
        return None
    rows = np.cumsum([m.shape[0] for m in v.xs])
    if ends.shape != rows.shape or (ends != rows).any():
        return f"group_list (as cumsum {_short(ends)}) does not match the x list rows (cumsum {_short(rows)})"


# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------


@rule(ALL, "gmm.ranks", "weight", "ranks: M split x 2-D, weight 3-D [E,K,N] or list of 2-D; K split one 2-D x and "
      "2-D weights; no split x 2-6-D, weight 2-D",
      source=host("CheckDimNumAndFormat", "CheckCaseSplitM", "CheckCaseSplitK",
                  "CheckDimNumAndGroupListNoSplitAndFormat"),
      fix="reshape to the ranks the group_type table gives")
def _(call):
    v = _v(call)
    out = []
    if not v.xs or not v.ws:
        return f"x and weight must be non-empty, got len(x)={len(v.xs)}, len(weight)={len(v.ws)}"
    if v.group_type == 2:
        if len(v.xs) != 1 or v.xs[0].ndim != 2:
            out.append(f"group_type=2 needs one 2-D x, got {len(v.xs)} tensor(s), x[0] shape {list(v.xs[0].shape)}")
        out += [f"group_type=2 needs 2-D weights [K_i, N_i], got weight[{i}] shape {list(m.shape)}"
                for i, m in enumerate(v.ws) if m.ndim != 2]
    elif v.group_type == 0:
        for i, m in enumerate(v.xs):
            if m.ndim != 2:
                out.append(f"group_type=0 needs 2-D x, got x[{i}] shape {list(m.shape)}")
        if len(v.ws) == 1:
            if v.ws[0].ndim not in ((2, 3) if call.op == "npu_grouped_matmul" else (3,)):
                out.append(f"group_type=0 needs weight [E, K, N], got shape {list(v.ws[0].shape)}")
        else:
            out += [f"a weight list needs 2-D entries, got weight[{i}] shape {list(m.shape)}"
                    for i, m in enumerate(v.ws) if m.ndim != 2]
    elif v.group_type == -1:
        out += [f"group_type=-1 needs 2-6-D x, got x[{i}] shape {list(m.shape)}"
                for i, m in enumerate(v.xs) if not 2 <= m.ndim <= 6]
        if v.split_item in (2, 3):
            # one concatenated y: op-plugin sums x[i].shape[0], so batch dims would be lost [I]
            out += [f"group_type=-1 with split_item={v.split_item} needs 2-D x, got x[{i}] shape {list(m.shape)}"
                    for i, m in enumerate(v.xs) if m.ndim != 2]
        out += [f"group_type=-1 needs 2-D weights, got weight[{i}] shape {list(m.shape)}"
                for i, m in enumerate(v.ws) if m.ndim != 2]
        if len(v.ws) != len(v.xs) and not (len(v.ws) == 1 and v.ws[0].ndim == 3 and v.ws[0].shape[0] == len(v.xs)):
            out.append(f"group_type=-1 pairs x and weight: len(x)={len(v.xs)} != len(weight)={len(v.ws)}")
    return out


@rule(ALL, "gmm.k_match", "weight", "x's K equals weight's K for every group (K split with one weight: x's K)",
      source=host("CheckShapeSameLengthTensorList", "CheckShapeDiffLengthTensorList", "CheckCaseSplitK",
                  "CheckCaseNoSplit"), fix="make x.shape[-1] equal weight.shape[-2]")
def _(call):
    v = _v(call)
    out = []
    if v.group_type == 2:
        if len(v.ws) != 1:
            return None  # several weights: gmm.k_split_total
        if v.xs[0].ndim == 2 and v.ws[0].ndim == 2 and v.xs[0].shape[1] != v.ws[0].shape[0]:
            out.append(f"x is [M, K]=[{v.xs[0].shape[0]}, {v.xs[0].shape[1]}] but weight has K={v.ws[0].shape[0]}")
        return out
    for i, xm in enumerate(v.xs):
        wm = v.ws[0] if v.single_w3 else (v.ws[i] if i < len(v.ws) else v.ws[0])
        if xm.ndim >= 1 and wm.ndim >= 2 and xm.shape[-1] != wm.shape[-2]:
            out.append(f"x[{i}] has K={xm.shape[-1]} but weight has K={wm.shape[-2]} (weight shape {list(wm.shape)})")
    return out


@rule(TORCH_NPU, "gmm.m_split_y_list_tensor", "split_item",
      "M split with one x, a weight list and a y list (split_item 0/1) needs the List[int] group list",
      source=host("CheckCaseSplitM", tag="'When grouplist is tensor, split m, single x, separated weight, "
                  "separated y cases do not support'"),
      fix="pass the group list as a Python list of ints (the V1 path), or split_item=2/3 with weights of one N")
def _(call):
    v = _v(call)
    if (v.group_type == 0 and v.single_x and len(v.ws) > 1 and v.split_item in (0, 1)
            and v.gl_given and not v.gl_is_list):
        return (f"one x, {len(v.ws)} weights and split_item={v.split_item} (one y per weight) with a Tensor group "
                f"list: the host's V3/V4/V5 path rejects this form")


@rule(ALL, "gmm.k_split_total", "weight",
      "K split with several weights: the weights' K add up to at most x's K",
      source="aclnnGroupedMatmulV4 doc group_type 2 scenario table; the host checks no shape of this form "
             "(aclnn_grouped_matmul.cpp CheckCaseSplitK returns after the rank checks), so a larger total makes "
             "the kernel read past the end of x (undefined result)",
      fix="make sum(w.shape[0] for w in weight) <= x.shape[1]", kind="kernel", status=None)
def _(call):
    v = _v(call)
    if v.group_type != 2 or len(v.ws) < 2 or not v.xs or v.xs[0].ndim != 2 or any(m.ndim != 2 for m in v.ws):
        return None
    total = sum(m.shape[0] for m in v.ws)
    if total > v.xs[0].shape[1]:
        return (f"the weights' K add up to {total} but x has K={v.xs[0].shape[1]}: the device does not check this, "
                f"its kernel would read past the end of x (undefined result)")


@rule(TORCH_NPU, "gmm.k_split_forms", "weight",
      "K split with several weights: simulated with split_item 0/1 and a group list that is absent or matches "
      "the weights' K", source=SCOPE + " (the host accepts these forms: aclnn_grouped_matmul.cpp CheckCaseSplitK)",
      fix="pass split_item=0 or 1 and no group list (each weight's K gives its group)", severity="not-simulated")
def _(call):
    v = _v(call)
    if v.group_type != 2 or len(v.ws) < 2 or any(m.ndim != 2 for m in v.ws):
        return None
    if v.split_item not in (0, 1):
        return (f"K split with {len(v.ws)} weights and split_item={v.split_item} (one y): ascend-moe does not "
                f"simulate this form")
    ends = v.ends()
    if v.gl_given:
        if ends is None:
            return None if v.gl_values is None else "a multi-dimensional group list is not simulated here"
        want = np.cumsum([m.shape[0] for m in v.ws])
        if ends.shape != want.shape or (ends != want).any():
            return (f"K split with {len(v.ws)} weights and a group list (as cumsum {_short(ends)}) that differs "
                    f"from the weights' K (cumsum {_short(want)}): ascend-moe does not simulate this form")


@rule(ALL, "gmm.bias_shape", "bias", "bias is [E, N] for a 3-D weight, [N_i] per weight in a list",
      source=host("CheckOptionalTensorList"), fix="pass bias of shape [E, N] (or one [N] per weight)")
def _(call):
    v = _v(call)
    if not v.bs or v.group_type == 2:
        return None
    if v.single_w3:
        want = (v.ws[0].shape[0], v.ws[0].shape[2])
        if len(v.bs) != 1 or v.bs[0].shape != want:
            return f"bias must be one tensor of shape {list(want)}, got shapes {[list(m.shape) for m in v.bs]}"
        return None
    out = []
    if len(v.bs) != len(v.ws):
        return f"bias list has {len(v.bs)} entries but weight has {len(v.ws)}"
    for i, (b, w) in enumerate(zip(v.bs, v.ws)):
        if w.ndim >= 1 and b.shape != (w.shape[-1],):
            out.append(f"bias[{i}] must be [{w.shape[-1]}], got {list(b.shape)}")
    return out


@rule(ALL, "gmm.bias_k_split", "bias", "bias must be None for group_type 2 (K split)",
      source=host("CheckParamDifferentGroupType", tag="'When groupType is 2, bias must be empty'"),
      fix="drop the bias for K split (add it after the sum over groups if needed)")
def _(call):
    v = _v(call)
    if v.group_type == 2 and v.bs:
        return f"bias is given (shape {list(v.bs[0].shape)}) with group_type=2; K split takes no bias"


@rule(ALL, "gmm.k_zero", "x", "K == 0 only when M or N is 0", source=host("CheckZeroShape"),
      fix="do not call the grouped matmul with K == 0 (the result would be all zeros)")
def _(call):
    v = _v(call)
    if v.group_type == 2 or not v.xs or not v.ws:
        return None
    out = []
    for i, xm in enumerate(v.xs):
        wm = v.ws[0] if v.single_w3 else (v.ws[i] if i < len(v.ws) else v.ws[0])
        if xm.ndim < 2 or wm.ndim < 2:
            continue
        m, k, n = int(np.prod(xm.shape[:-1])), xm.shape[-1], wm.shape[-1]
        if k == 0 and m > 0 and n > 0:
            out.append(f"x[{i}] has K=0 with M={m}, N={n}: the device does not support K == 0 unless M or N is 0")
    return out


@rule(ALL, "gmm.inner_dim", "x", "every x_i / weight_i storage last dim <= 65535",
      products=A2_A3 | {P310}, source=host("CheckShapeSameLengthTensorList", "CheckShapeDiffLengthTensorList",
                                         "CheckCaseNoSplit", tag="MAX_INNER_AXIS=65535, skipped on DAV_3510 (950)"),
      fix="split the call so the contiguous (last) dimension stays below 65536")
def _(call):
    v = _v(call)
    out = []
    if v.group_type == 2 and len(v.ws) > 1:
        return None  # CheckCaseSplitK checks no shape of the several-weight form
    for name, metas in (("x", v.xs), ("weight", v.ws)):
        for i, m in enumerate(metas):
            if m.ndim >= 2 and _storage_last_dim(m) > MAX_INNER_AXIS:
                out.append(f"{name}[{i}] storage last dim is {_storage_last_dim(m)} (shape {list(m.shape)}), "
                           f"above {MAX_INNER_AXIS}")
    return out


@rule(ALL, "gmm.int32_range", "x", "M, N, K rounded up to 32 bytes stay within int32",
      source="ops-transformer gmm/grouped_matmul/op_host/op_tiling/grouped_matmul_tiling.cpp GMMTiling::CheckMKN",
      fix="split the call into smaller pieces")
def _(call):
    v = _v(call)
    out = []
    for name, metas in (("x", v.xs), ("weight", v.ws)):
        for i, m in enumerate(metas):
            try:
                from ..sim.numerics import ELEMENT_BITS
                per32 = max(1, 256 // ELEMENT_BITS[m.dtype])
            except Exception:
                continue
            limit = (INT32_MAX // per32) * per32
            for d, size in enumerate(m.shape):
                if size > limit:
                    out.append(f"{name}[{i}] dim {d} is {size}, above the 32-byte-aligned int32 limit {limit}")
    return out


@rule(ALL, "gmm.x_transpose", "x", "x must not be transposed for group_type 0/-1 and must be for group_type 2",
      source=host("CheckCaseSplitK", "CheckParamDifferentGroupType", tag="K split: x transposed; M split / "
                  "no split: x not transposed"),
      fix="pass x contiguous for M split; for K split pass x as x_storage.t() of a [K, M] tensor")
def _(call):
    v = _v(call)
    out = []
    for i, m in enumerate(v.xs):
        if m.strides is None or m.ndim != 2:
            continue
        t = m.is_transposed_last_two()
        if v.group_type == 2 and not t and m.shape[0] > 1 and m.shape[1] > 1:
            out.append(f"x[{i}] (shape {list(m.shape)}, strides {list(m.strides)}) must be a transposed view for "
                       f"group_type=2")
        if v.group_type in (0, -1) and t:
            out.append(f"x[{i}] is a transposed view (shape {list(m.shape)}, strides {list(m.strides)}); "
                       f"group_type={v.group_type} does not accept a transposed x")
    return out


@rule(ALL, "gmm.weight_transpose", "weight", "weight transposed: allowed (uniformly) for group_type 0/-1, "
      "not for group_type 2", source=host("CheckDimNumAndFormat", "CheckSpecialTranspose", tag="one transpose "
                                           "state for every weight; CheckParamDifferentGroupType: not both x and weight"),
      fix="pass weight contiguous for K split; transpose all weights of a list the same way")
def _(call):
    v = _v(call)
    flags = [m.is_transposed_last_two() for m in v.ws if m.strides is not None]
    if v.group_type == 2 and any(flags):
        return f"weight (shape {list(v.ws[0].shape)}, strides {list(v.ws[0].strides)}) is transposed; group_type=2 does not allow it"
    if len(set(flags)) > 1:
        return f"weight list mixes transposed and non-transposed tensors (transposed flags {flags})"


@rule(ALL, "gmm.nz_weight", "weight", "FRACTAL_NZ weights: npu_grouped_matmul takes float weights tagged NZ "
      "(aclnnGroupedMatmulWeightNz; same numbers as ND); MindSpeed's npu_gmm takes ND only, and the 5-D NZ "
      "storage form of a float weight is not modelled", source=SCOPE, fix="pass an ND weight, or the "
      "npu_format_cast(w, 29) result of a 3-D weight to npu_grouped_matmul", severity="not-simulated")
def _(call):
    v = _v(call)
    out = []
    for i, m in enumerate(v.ws):
        if not m.format.startswith("FRACTAL_NZ"):
            continue
        if call.op == "npu_grouped_matmul" and m.ndim in (2, 3):
            continue  # a tagged logical weight: WeightNz on the device, the ND numbers in the simulator
        out.append(f"weight[{i}] has format {m.format} (shape {list(m.shape)}); {call.op} takes ND weights"
                   if call.op != "npu_grouped_matmul" else
                   f"weight[{i}] is 5-D NZ storage {list(m.shape)}; pass the tagged 3-D weight instead")
    return out


# ----------------------------------------------------------------------------------------------
# Atlas inference series (310P)
# ----------------------------------------------------------------------------------------------

SRC_310P = "torch_npu doc 'Atlas 推理系列产品' table; MindSpeed doc (310: group_type 0, single tensors)"


@rule(ALL, "gmm.310p_dtype", "x", "310P: float16 only", products={P310},
      source=host("Check310PlatformForFunction", tag="'Only float16 is supported on Ascend310P platforms'"),
      fix="cast x, weight (and bias) to float16")
def _(call):
    v = _v(call)
    if v.xs and v.xs[0].dtype != "float16":
        return f"x dtype must be float16 on the Atlas inference series, got {v.xs[0].dtype}"


@rule(ALL, "gmm.310p_group_type", "group_type", "docs: 310P group_type 0 only", products={P310}, source=SRC_310P,
      fix="use group_type=0 (M split)", severity="warning")
def _(call):
    v = _v(call)
    if v.group_type != 0:
        return f"group_type must be 0 on the Atlas inference series, got group_type={v.group_type!r}"


@rule(ALL, "gmm.310p_single", "split_item", "310P: single x / weight (3-D) / y, split_item 2 or 3",
      products={P310}, source=SRC_310P, fix="pass one x [M, K], one weight [E, K, N] and split_item=3",
      severity="warning")
def _(call):
    v = _v(call)
    if not (len(v.xs) == 1 and v.single_w3 and v.split_item in (2, 3)):
        return (f"Atlas inference series needs single tensors: got len(x)={len(v.xs)}, len(weight)={len(v.ws)}, "
                f"weight rank {v.ws[0].ndim if v.ws else None}, split_item={v.split_item}")


@rule(ALL, "gmm.310p_n_align", "weight", "310P: N is a multiple of 16", products={P310},
      source=host("TransWeightToNz", tag="310P: n aligned to 32 bytes, i.e. 16 float16"),
      fix="pad N to a multiple of 16")
def _(call):
    v = _v(call)
    if v.ws and v.ws[0].ndim >= 2 and v.ws[0].shape[-1] % 16:
        return f"weight N={v.ws[0].shape[-1]} must be a multiple of 16 on the Atlas inference series"


@rule(ALL, "gmm.310p_max_groups", "group_list", "docs: 310P at most 1024 groups", products={P310}, source=SRC_310P,
      fix="use at most 1024 groups", severity="warning")
def _(call):
    e = _v(call).num_groups
    if e is not None and e > MAX_LIST_LEN_TENSOR:
        return f"weight has E={e} groups, at most {MAX_LIST_LEN_TENSOR} on the Atlas inference series"


@rule(TORCH_NPU, "gmm.310p_tuning_config", "tuning_config", "docs: 310P no tuning_config", products={P310},
      source=SRC_310P, fix="omit tuning_config", severity="warning")
def _(call):
    if call.given("tuning_config"):
        return f"tuning_config={list(call['tuning_config'])} is not supported on the Atlas inference series"


# ----------------------------------------------------------------------------------------------
# the quantised forms (A8W8 / A8W4 / A16W8 / A16W4): their own rule set, ascend_moe.rules.gmm_quant;
# the rules above keep the non-quantised calls
# ----------------------------------------------------------------------------------------------

from . import gmm_quant as _gmm_quant  # noqa: E402

_gmm_quant.install(npu_grouped_matmul_spec)
