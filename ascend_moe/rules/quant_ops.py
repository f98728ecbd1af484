"""Rules of ``npu_swiglu``, ``npu_swiglu_backward``, ``npu_dynamic_quant``, ``npu_dynamic_quant_asymmetric``,
``npu_dequant_swiglu_quant``, ``npu_grouped_matmul_add`` / ``npu_grouped_matmul_add_`` (spec moe-quant-path 1-3, 5).

Sources, by the evidence order of the project (kernel > host > tests > docs):

* SwiGlu: ops-nn ``activation/swi_glu`` OpDef (dtype lists, ``config_without_bf16`` for 310P), tiling
  ``SetTotalShape`` (dim range, ``prod(shape[dim:])`` even) and ``isSupportSocV`` (no bf16 on DAV_2002),
  infershape (``shape[dim]`` even); the aclnn/torch docs for the rest (doc-level warnings).  SwiGlu has
  no hand-written op_api: the aclnn layer is generated from the OpDef.
* DynamicQuant: ops-nn ``quant/dynamic_quant/op_host/op_api/aclnn_dynamic_quant.cpp``
  (``GetDynamicQuantResultByL0Api`` checks), the kernel OpDef (group_index INT32), op-plugin
  ``DynamicQuantKernelNpuOpApi.cpp`` (``input.dim() > 1``, ``select_version``: non-pertoken modes and
  ``dst_type_max`` go to V3/V4, which A2/A3 reject), the torch doc.
* DequantSwigluQuant: op-plugin ``DequantSwigluQuantOpApi.cpp`` (its TORCH_CHECKs, and on A2/A3 the fixed
  ``dst_type=2, round_mode="rint", activate_dim=-1`` it passes), the aclnn V1/V2 and torch docs.
* GroupedMatmulAdd: ops-transformer ``gmm/grouped_matmul_add/op_api/aclnn_grouped_matmul_add.cpp`` host
  checks, op-plugin ``GroupedMatmulAddNpuOpApi.cpp`` (A2/A3 call the V1 entry point, which takes no
  group_list_type) and the meta registration (group_type 2).

Rules whose status is None are the simulator's or op-plugin's refusals, not a device status.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from . import Call, register_op
from ..products import A2_A3

SWIGLU_PRODUCTS = frozenset({"atlas-a2", "atlas-a3", "ascend-950", "atlas-inference"})
GMM_ADD_PRODUCTS = frozenset({"atlas-a2", "atlas-a3", "ascend-950"})
P310 = "atlas-inference"

SRC_SWIGLU = "ops-nn activation/swi_glu (OpDef swi_glu_def.cpp, swi_glu_tiling.cpp SetTotalShape, swi_glu_infershape.cpp)"
SRC_SWIGLU_DOC = "op-plugin docs torch_npu-npu_swiglu.md; ops-nn aclnnSwiGlu.md"
SRC_DQ_HOST = "ops-nn quant/dynamic_quant/op_host/op_api/aclnn_dynamic_quant.cpp (GetDynamicQuantResultByL0Api)"
SRC_DQ_PLUGIN = "op-plugin op_plugin/ops/opapi/DynamicQuantKernelNpuOpApi.cpp"
SRC_DQ_TILING = "ops-nn quant/dynamic_quant/op_host/dynamic_quant_tiling.cpp"
SRC_DQ_DOC = "op-plugin docs torch_npu-npu_dynamic_quant.md; ops-nn aclnnDynamicQuantV2.md"
SRC_DSQ_PLUGIN = "op-plugin op_plugin/ops/opapi/DequantSwigluQuantOpApi.cpp"
SRC_DSQ_DOC = "op-plugin docs torch_npu-npu_dequant_swiglu_quant.md; ops-nn aclnnDequantSwigluQuant{,V2}.md"
SRC_GMA_HOST = "ops-transformer gmm/grouped_matmul_add/op_host/op_api/aclnn_grouped_matmul_add.cpp"
SRC_GMA_PLUGIN = "op-plugin op_plugin/ops/opapi/GroupedMatmulAddNpuOpApi.cpp; _meta_registrations.py"

# torch ScalarType codes op-plugin receives for dst_type / output dtypes
TORCH_DTYPE_CODES = {1: "int8", 3: "int32", 5: "float16", 6: "float32", 15: "bfloat16", 16: "quint4x2"}


# --------------------------------------------------------------------------------------------
# the ops (signatures come from the declarations in ascend_moe.ops.quant_ops and .grouped_matmul_add)
# --------------------------------------------------------------------------------------------

swiglu_spec = register_op("npu_swiglu", products=SWIGLU_PRODUCTS, source="aclnnSwiGlu")
swiglu_bwd_spec = register_op("npu_swiglu_backward", products=SWIGLU_PRODUCTS, source="aclnnSwiGluGrad")
_DQ_NOTE = {"ascend-950": "the 950 (arch35) dynamic-quant kernels divide by the scale and are not modelled",
            P310: "the 310P dynamic-quant kernels were not read and are not modelled"}
dq_spec = register_op("npu_dynamic_quant", products=A2_A3, source="aclnnDynamicQuantV2",
                      product_notes=_DQ_NOTE)
dqa_spec = register_op("npu_dynamic_quant_asymmetric", products=A2_A3,
                       source="aclnnDynamicQuantV2", product_notes=_DQ_NOTE)
dsq_spec = register_op("npu_dequant_swiglu_quant", products=A2_A3,
                       source="aclnnDequantSwigluQuant / V2",
                       product_notes={"ascend-950": "the 950 kernels of this op are not modelled"})
gma_spec = register_op("npu_grouped_matmul_add_", products=GMM_ADD_PRODUCTS,
                       source="aclnnGroupedMatmulAdd (A2/A3), aclnnGroupedMatmulAddV2 (950)")
gma_oop_spec = register_op("npu_grouped_matmul_add", products=GMM_ADD_PRODUCTS,
                           source="aclnnGroupedMatmulAdd (writes into self as well, returns a clone)")


def _desc(call: Call, name: str) -> str:
    m = call.meta(name)
    return f"{m.dtype}{list(m.shape)}" if m is not None else repr(call.get(name))


def _wrap_dim(dim: int, ndim: int) -> Optional[int]:
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        return None
    d = dim + ndim if dim < 0 else dim
    return d if 0 <= d < ndim else None


def _contiguous(m) -> bool:
    if m.strides is None:
        return True
    want, acc = [], 1
    for s in reversed(m.shape):
        want.append(acc)
        acc *= s
    want = want[::-1]
    return all(sz <= 1 or st == w for sz, st, w in zip(m.shape, m.strides, want))


# --------------------------------------------------------------------------------------------
# npu_swiglu / npu_swiglu_backward
# --------------------------------------------------------------------------------------------

def _swiglu_rules(spec, p: str, x_name: str) -> None:
    @spec.rule(f"{p}.x_dtype", x_name, "x is float32, float16 or bfloat16", source=SRC_SWIGLU + " (OpDef)",
               fix="cast x to float32, float16 or bfloat16")
    def _(call):
        m = call.meta(x_name)
        if m is None:
            return f"{x_name} must be a tensor, got {type(call[x_name]).__name__}"
        if m.dtype not in ("float32", "float16", "bfloat16"):
            return f"{x_name} dtype must be float32, float16 or bfloat16, got {m.dtype}"

    @spec.rule(f"{p}.no_bf16_310p", x_name, "the Atlas inference series has no bfloat16 SwiGlu kernel",
               products={P310}, source=SRC_SWIGLU + " (config_without_bf16; tiling isSupportSocV)",
               fix="cast x to float16 or float32")
    def _(call):
        m = call.meta(x_name)
        if m is not None and m.dtype == "bfloat16":
            return f"{x_name} dtype bfloat16 is not supported on the Atlas inference series"

    @spec.rule(f"{p}.dim_range", "dim", "dim lies in [-x.dim(), x.dim() - 1]", source=SRC_SWIGLU + " (SetTotalShape)",
               fix="pass a dim inside x's rank (-1 = last)")
    def _(call):
        m = call.meta(x_name)
        if m is not None and _wrap_dim(call["dim"], m.ndim) is None:
            return f"dim={call['dim']!r} is out of range for a {m.ndim}-D {x_name} of shape {list(m.shape)}"

    @spec.rule(f"{p}.dim_even", "dim", "x.shape[dim] is even (the two halves)",
               source=SRC_SWIGLU + " (infershape; the tiling checks only prod(shape[dim:]))",
               fix="split along a dim of even size")
    def _(call):
        m = call.meta(x_name)
        d = None if m is None else _wrap_dim(call["dim"], m.ndim)
        if d is not None and m.shape[d] % 2:
            return f"{x_name}.shape[{call['dim']}] = {m.shape[d]} must be even (shape {list(m.shape)})"

    @spec.rule(f"{p}.rank", x_name, "x has 1 to 8 dims", source=SRC_SWIGLU_DOC, severity="warning",
               fix="reshape x to at most 8 dims")
    def _(call):
        m = call.meta(x_name)
        if m is not None and not 1 <= m.ndim <= 8:
            return f"{x_name} must have 1 to 8 dims, got {m.ndim}"

    @spec.rule(f"{p}.contiguous", x_name, "x is contiguous (the docs: non-contiguous tensors not supported)",
               source=SRC_SWIGLU_DOC, severity="warning", fix="pass x.contiguous()")
    def _(call):
        m = call.meta(x_name)
        if m is not None and not _contiguous(m):
            return f"{x_name} (shape {list(m.shape)}, strides {list(m.strides)}) is not contiguous"

    @spec.rule(f"{p}.empty_310p", x_name, "the Atlas inference series does not take empty tensors", products={P310},
               source=SRC_SWIGLU_DOC, severity="warning", fix="skip the call for an empty input")
    def _(call):
        m = call.meta(x_name)
        if m is not None and m.numel == 0:
            return f"{x_name} is empty (shape {list(m.shape)})"


_swiglu_rules(swiglu_spec, "swiglu", "self")
_swiglu_rules(swiglu_bwd_spec, "swiglu_grad", "self")


@swiglu_bwd_spec.rule("swiglu_grad.grad_output", "grad_output",
                      "grad_output has x's dtype and x's shape with dim halved",
                      source="ops-nn activation/swi_glu_grad OpDef (one dtype for both inputs); the kernel reads "
                             "grad_output as [rows, cols/2] of x's layout", status=None,
                      fix="pass the gradient of npu_swiglu's output (same dtype as x)")
def _(call):
    g, x = call.meta("grad_output"), call.meta("self")
    if g is None or x is None:
        return None if x is None else f"grad_output must be a tensor, got {type(call['grad_output']).__name__}"
    errs = []
    if g.dtype != x.dtype:
        errs.append(f"grad_output dtype {g.dtype} must equal self dtype {x.dtype}")
    d = _wrap_dim(call["dim"], x.ndim)
    if d is not None and x.shape[d] % 2 == 0:
        want = list(x.shape)
        want[d] //= 2
        if list(g.shape) != want:
            errs.append(f"grad_output shape {list(g.shape)} must be {want} (self {list(x.shape)} with dim "
                        f"{call['dim']} halved)")
    return errs


# --------------------------------------------------------------------------------------------
# npu_dynamic_quant / npu_dynamic_quant_asymmetric
# --------------------------------------------------------------------------------------------

def dst_type_name(v) -> Optional[str]:
    """Name of a dst_type given as None, a torch ScalarType code or a dtype (None: not recognised)."""
    if v is None:
        return "int8"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return TORCH_DTYPE_CODES.get(int(v))
    name = str(getattr(v, "dtype", v)).replace("torch.", "")
    return name


def _dq_rules(spec, p: str) -> None:
    @spec.rule(f"{p}.input", "input", "input is a float16/bfloat16 tensor with 2 to 8 dims",
               source=SRC_DQ_HOST + " (dtype list for DAV_2201, 2 <= dim <= 8); " + SRC_DQ_PLUGIN + " (dim > 1)",
               fix="pass a float16 or bfloat16 activation [tokens, H]")
    def _(call):
        m = call.meta("input")
        if m is None:
            return f"input must be a tensor, got {type(call['input']).__name__}"
        errs = []
        if m.dtype not in ("float16", "bfloat16"):
            errs.append(f"input dtype must be float16 or bfloat16 on {call.product}, got {m.dtype}")
        if not 2 <= m.ndim <= 8:
            errs.append(f"input must have 2 to 8 dims, got shape {list(m.shape)}")
        return errs

    @spec.rule(f"{p}.quant_mode", "quant_mode", "quant_mode is 'pertoken' (other modes go to V3/V4: 950 only)",
               source=SRC_DQ_PLUGIN + " (select_version); " + SRC_DQ_HOST + " (V3/V4: only socVersion Ascend950)",
               fix="pass quant_mode='pertoken' (the default)")
    def _(call):
        if call["quant_mode"] != "pertoken":
            return f"quant_mode={call['quant_mode']!r} is only supported on Ascend 950 (A2/A3: 'pertoken')"

    @spec.rule(f"{p}.dst_type_max", "dst_type_max", "dst_type_max is 0.0 (non-zero selects V4: 950 only)",
               source=SRC_DQ_PLUGIN + " (select_version routes a non-zero dst_type_max to aclnnDynamicQuantV4; "
               "the A2/A3 host check of V4 was not read, so no aclnn status is claimed)",
               kind="wrapper", status=None, fix="omit dst_type_max")
    def _(call):
        v = call["dst_type_max"]
        if v not in (0, 0.0, None):
            return f"dst_type_max={v!r} selects aclnnDynamicQuantV4, which A2/A3 reject"

    @spec.rule(f"{p}.dst_type", "dst_type", "dst_type is None / torch.int8 (int8) or torch.quint4x2 (int4 packed in "
               "int32)", source=SRC_DQ_HOST + " (y dtype INT8/INT4/INT32 on A2/A3); " + SRC_DQ_PLUGIN,
               fix="pass dst_type=None for int8 or torch.quint4x2 for int4")
    def _(call):
        name = dst_type_name(call["dst_type"])
        if name not in ("int8", "quint4x2"):
            return f"dst_type={call['dst_type']!r} is not supported on {call.product} (int8 or quint4x2)"

    @spec.rule(f"{p}.int4_last_dim", "input", "with dst_type=quint4x2 the last dim is a multiple of 8",
               source=SRC_DQ_PLUGIN + " (TORCH_CHECK); op-plugin _meta_registrations.py", status=None, kind="wrapper",
               fix="pad the last dim to a multiple of 8")
    def _(call):
        m = call.meta("input")
        if m is not None and m.ndim >= 1 and dst_type_name(call["dst_type"]) == "quint4x2" and m.shape[-1] % 8:
            return f"input last dim {m.shape[-1]} must be a multiple of 8 for int4 output packed in int32"

    @spec.rule(f"{p}.smooth", "smooth_scales", "smooth_scales has input's dtype; [H] without group_index, "
               "[E, H] with it (E = len(group_index))",
               source=SRC_DQ_HOST + " (dtype == x dtype; 1-D length H without group); " + SRC_DQ_TILING +
               " (CheckOpInpuShape: MoE smooth 2-D with dim 0 == groups, last dim == x's)",
               fix="pass smooth_scales of input's dtype, shape [H] (or [E, H] with group_index)")
    def _(call):
        s, x = call.meta("smooth_scales"), call.meta("input")
        if s is None or x is None or x.ndim < 1:
            return None
        errs = []
        if s.dtype != x.dtype:
            errs.append(f"smooth_scales dtype {s.dtype} must equal input dtype {x.dtype}")
        H = x.shape[-1]
        g = call.meta("group_index")
        if g is None:
            if list(s.shape) != [H]:
                errs.append(f"smooth_scales shape {list(s.shape)} must be [{H}] (input's last dim)")
        elif g.ndim == 1 and list(s.shape) != [g.shape[0], H]:
            errs.append(f"smooth_scales shape {list(s.shape)} must be [{g.shape[0]}, {H}] "
                        f"(one row per group_index entry)")
        return errs

    @spec.rule(f"{p}.group_index", "group_index", "group_index is a 1-D int32 cumsum and needs smooth_scales",
               source=SRC_DQ_HOST + " (1-D; accepts INT32/INT64); " + SRC_DQ_TILING + " (CheckInputDtype: 'group "
                      "dtype is only support int32'; groupNum is read only when smooth_scales is given)",
               fix="pass group_index as torch.int32 cumulative row ends, with per-expert smooth_scales")
    def _(call):
        g = call.meta("group_index")
        if call.get("group_index") is None:
            return None
        if g is None:
            return f"group_index must be a tensor, got {type(call['group_index']).__name__}"
        errs = []
        if g.ndim != 1:
            errs.append(f"group_index must be 1-D, got shape {list(g.shape)}")
        if g.dtype != "int32":
            errs.append(f"group_index dtype must be int32 (aclnn accepts int64, the tiling rejects it), got {g.dtype}")
        if call.get("smooth_scales") is None:
            errs.append("group_index without smooth_scales is ignored by the kernel (no per-expert smooth rows): "
                        "pass the [E, H] smooth_scales or drop group_index")
        return errs

    @spec.rule(f"{p}.group_values", "group_index", "group_index is non-decreasing (a cumsum)",
               source="ops-nn dynamic_quant_moe.h (forward search of the row's group)", status=None,
               fix="pass cumulative row counts (torch.cumsum of tokens per expert)")
    def _(call):
        v = call.values("group_index")
        if v is None or np.asarray(v).ndim != 1:
            return None
        v = np.asarray(v).astype(np.int64)
        if v.size > 1 and np.any(np.diff(v) < 0):
            return f"group_index must be non-decreasing, got {v.tolist()[:16]}"

    @spec.rule(f"{p}.group_total", "group_index", "group_index[-1] equals the number of rows",
               source=SRC_DQ_DOC, severity="warning",
               fix="make group_index[-1] equal to the row count (rows past it are not written)")
    def _(call):
        v, x = call.values("group_index"), call.meta("input")
        if v is None or x is None or np.asarray(v).ndim != 1 or not np.asarray(v).size:
            return None
        rows = int(np.prod(x.shape[:-1]))
        if int(np.asarray(v)[-1]) != rows:
            return f"group_index[-1] = {int(np.asarray(v)[-1])} differs from the {rows} rows of input"

    @spec.rule(f"{p}.num_groups", "group_index", "at most 1024 groups",
               status=561002, source=SRC_DQ_TILING + " DynamicQuantTiling::CheckOpInpuShape (groupNum > MAX_EXPERT_NUM "
               "1024 fails the tiling); " + SRC_DQ_DOC, fix="use at most 1024 experts per call")
    def _(call):
        g = call.meta("group_index")
        if g is not None and g.ndim == 1 and g.shape[0] > 1024:
            return f"group_index has {g.shape[0]} groups, at most 1024"


_dq_rules(dq_spec, "dq")
_dq_rules(dqa_spec, "dqa")


# --------------------------------------------------------------------------------------------
# npu_dequant_swiglu_quant
# --------------------------------------------------------------------------------------------

def _h2(call: Call) -> Optional[int]:
    m = call.meta("x")
    return m.shape[-1] if m is not None and m.ndim >= 1 else None


def _rows(call: Call) -> Optional[int]:
    m = call.meta("x")
    return int(np.prod(m.shape[:-1])) if m is not None and m.ndim >= 2 else None


@dsq_spec.rule("dsq.x", "x", "x is int32 (GMM output), bfloat16 or float16 with more than 1 dim and an even last dim",
               source=SRC_DSQ_PLUGIN + " (x.dim() > 1, last dim even); " + SRC_DSQ_DOC + " (dtypes)",
               status=None, kind="wrapper", fix="pass the int32 grouped-matmul output [tokens, 2H]")
def _(call):
    m = call.meta("x")
    if m is None:
        return f"x must be a tensor, got {type(call['x']).__name__}"
    errs = []
    if m.dtype not in ("int32", "bfloat16", "float16"):
        errs.append(f"x dtype must be int32, bfloat16 or float16, got {m.dtype}")
    if m.ndim < 2:
        errs.append(f"x must have more than 1 dim, got shape {list(m.shape)}")
    elif m.shape[-1] % 2:
        errs.append(f"x last dim {m.shape[-1]} must be even")
    return errs


@dsq_spec.rule("dsq.x_2d", "x", "x is 2-D [T, 2H]", source=SRC_DSQ_DOC + " (V2: x 2-D)", severity="warning",
               fix="reshape x to [tokens, 2H]")
def _(call):
    m = call.meta("x")
    if m is not None and m.ndim > 2:
        return f"x should be 2-D, got shape {list(m.shape)}"


@dsq_spec.rule("dsq.modes", "quant_mode", "quant_mode in {0, 1}; swiglu_mode in {0, 1, 2}; clamp_limit finite > 0; "
               "glu_alpha, glu_bias finite", source=SRC_DSQ_PLUGIN + " (TORCH_CHECKs)", status=None, kind="wrapper",
               fix="quant_mode 0 (static) or 1 (dynamic); swiglu_mode 0 (SwiGLU), 1 or 2 (clamped variants)")
def _(call):
    errs = []
    if call["quant_mode"] not in (0, 1):
        errs.append(f"quant_mode must be 0 (static) or 1 (dynamic), got {call['quant_mode']!r}")
    if call["swiglu_mode"] not in (0, 1, 2):
        errs.append(f"swiglu_mode must be 0, 1 or 2, got {call['swiglu_mode']!r}")
    cl = call["clamp_limit"]
    if not (isinstance(cl, (int, float)) and math.isfinite(cl) and cl > 0):
        errs.append(f"clamp_limit must be finite and > 0, got {cl!r}")
    for name in ("glu_alpha", "glu_bias"):
        v = call[name]
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            errs.append(f"{name} must be finite, got {v!r}")
    return errs


@dsq_spec.rule("dsq.swiglu_mode1_left", "activate_left", "swiglu_mode 1 (interleaved halves) needs activate_left=True",
               source="ops-nn quant/dequant_swiglu_quant/op_kernel/dequant_swiglu_quant.h (mode 1 gathers even/odd "
                      "columns)", status=None, fix="pass activate_left=True with swiglu_mode=1")
def _(call):
    if call["swiglu_mode"] == 1 and not call["activate_left"]:
        return "swiglu_mode=1 with activate_left=False"


@dsq_spec.rule("dsq.fixed_on_a2a3", "dst_type", "dst_type, round_mode, activate_dim are not passed on A2/A3 "
               "(op-plugin sends dst_type=2 int8, round_mode 'rint', activate_dim -1)",
               source=SRC_DSQ_PLUGIN + " (SoC < 950 branch)", status=None,
               fix="omit dst_type / round_mode / activate_dim (or pass the values op-plugin uses)")
def _(call):
    errs = []
    if call["dst_type"] is not None and dst_type_name(call["dst_type"]) != "int8":
        errs.append(f"dst_type={call['dst_type']!r} would be ignored: the output is int8 on {call.product}")
    if call["round_mode"] not in (None, 0):
        errs.append(f"round_mode={call['round_mode']!r} would be ignored: op-plugin passes 'rint' (0)")
    if call["activate_dim"] not in (None, -1) and not (call.meta("x") and call["activate_dim"] == call.meta("x").ndim - 1):
        errs.append(f"activate_dim={call['activate_dim']!r} would be ignored: op-plugin passes -1 (the last dim)")
    return errs


@dsq_spec.rule("dsq.int32_needs_weight_scale", "weight_scale", "int32 x needs weight_scale (the dequant)",
               source=SRC_DSQ_DOC, severity="warning", fix="pass the per-channel weight scale as weight_scale")
def _(call):
    m = call.meta("x")
    if m is not None and m.dtype == "int32" and call.get("weight_scale") is None:
        return "x is int32 but weight_scale is None (the int32 values would be used unscaled)"


def _groups(call: Call) -> Optional[int]:
    g = call.meta("group_index")
    return g.shape[0] if g is not None and g.ndim >= 1 else None


@dsq_spec.rule("dsq.param_shapes", "weight_scale", "weight_scale / bias [G, 2H] (or [2H]); activation_scale [T]; "
               "quant_scale / quant_offset [G, H], [H] or [1]",
               source="ops-nn dequant_swiglu_quant.h (per-group rows read by group index); " + SRC_DSQ_DOC,
               status=None, fix="shape the scales as the group count (rows) by the channels they scale")
def _(call):
    h2, rows, g = _h2(call), _rows(call), _groups(call)
    if h2 is None:
        return None
    errs = []

    def chk(name, width, allow_scalar=False):
        m = call.meta(name)
        if call.get(name) is None:
            return
        if m is None:
            errs.append(f"{name} must be a tensor, got {type(call[name]).__name__}")
            return
        shp = list(m.shape)
        ok = shp in ([width], [1, width]) or (allow_scalar and shp in ([1], []))
        if g is not None and shp == [g, width]:
            ok = True
        if not ok:
            want = f"[{g}, {width}] or [{width}]" if g is not None else f"[{width}]"
            errs.append(f"{name} shape {shp} must be {want}" + (" or [1]" if allow_scalar else ""))

    chk("weight_scale", h2)
    chk("bias", h2)
    chk("quant_scale", h2 // 2, allow_scalar=True)
    chk("quant_offset", h2 // 2, allow_scalar=True)
    a = call.meta("activation_scale")
    if a is not None and rows is not None and int(np.prod(a.shape)) != rows:
        errs.append(f"activation_scale shape {list(a.shape)} must hold one value per token ({rows})")
    for name in ("weight_scale", "activation_scale", "quant_scale", "quant_offset"):
        m = call.meta(name)
        if m is not None and m.dtype != "float32":
            errs.append(f"{name} dtype must be float32, got {m.dtype}")
    b = call.meta("bias")
    if b is not None and b.dtype not in ("int32", "float32", "float16", "bfloat16"):
        errs.append(f"bias dtype must be int32, float32, float16 or bfloat16, got {b.dtype}")
    return errs


@dsq_spec.rule("dsq.group_index", "group_index", "group_index is a 1-D int64 tensor of token counts",
               source=SRC_DSQ_DOC + " (count mode, int64, 1-D)", status=None,
               fix="pass tokens per expert as a 1-D int64 tensor")
def _(call):
    if call.get("group_index") is None:
        return None
    g = call.meta("group_index")
    if g is None:
        return f"group_index must be a tensor, got {type(call['group_index']).__name__}"
    errs = []
    if g.ndim != 1:
        errs.append(f"group_index must be 1-D (counts), got shape {list(g.shape)}")
    if g.dtype not in ("int64", "int32"):
        errs.append(f"group_index dtype must be int64, got {g.dtype}")
    return errs


@dsq_spec.rule("dsq.group_doc", "group_index", "with group_index: bias None, quant_offset unused, sum(counts) <= rows",
               source=SRC_DSQ_DOC, severity="warning", fix="drop bias / quant_offset when grouping")
def _(call):
    if call.get("group_index") is None:
        return None
    errs = []
    if call.get("bias") is not None:
        errs.append(f"bias ({_desc(call, 'bias')}) must be None with group_index")
    if call.get("quant_offset") is not None:
        errs.append("quant_offset has no effect with group_index")
    v, rows = call.values("group_index"), _rows(call)
    if v is not None and rows is not None and np.asarray(v).ndim == 1:
        tot = int(np.maximum(np.asarray(v).astype(np.int64), 0).sum())
        if tot > rows:
            errs.append(f"sum(group_index) = {tot} exceeds the {rows} rows of x")
    return errs


@dsq_spec.rule("dsq.dynamic_no_offset", "quant_offset", "dynamic mode (quant_mode=1) takes no quant_offset",
               source=SRC_DSQ_DOC, severity="warning", fix="omit quant_offset with quant_mode=1")
def _(call):
    if call["quant_mode"] == 1 and call.get("quant_offset") is not None:
        return "quant_offset is given with quant_mode=1 (dynamic)"


@dsq_spec.rule("dsq.h_limits", "x", "x last dim % 64 == 0 and <= 10496 (torch doc); <= 7232 with group_index "
               "(aclnn V2 doc)", source=SRC_DSQ_DOC, severity="warning",
               fix="pad / split the intermediate size")
def _(call):
    h2 = _h2(call)
    if h2 is None:
        return None
    errs = []
    if h2 % 64:
        errs.append(f"x last dim {h2} is not a multiple of 64")
    if h2 > 10496:
        errs.append(f"x last dim {h2} exceeds 10496")
    elif call.get("group_index") is not None and h2 > 7232:
        errs.append(f"x last dim {h2} exceeds 7232 with group_index")
    return errs


@dsq_spec.rule("dsq.v2_needs_group", "group_index", "aclnnDequantSwigluQuantV2 (which op-plugin calls from CANN 9.0.0) "
               "needs group_index on A2/A3", since="9.0.0", source=SRC_DSQ_DOC + " (V2: '不支持空指针')",
               severity="warning", fix="pass group_index (counts)")
def _(call):
    if call.get("group_index") is None:
        return "group_index is None"


# --------------------------------------------------------------------------------------------
# npu_grouped_matmul_add(_)
# --------------------------------------------------------------------------------------------

def _gma_rules(spec, p: str) -> None:
    @spec.rule(f"{p}.group_type", "group_type", "group_type is 2 (the token axis is split)",
               source=SRC_GMA_PLUGIN + " (meta: group_type == 2)", status=None, kind="wrapper",
               fix="pass group_type=2")
    def _(call):
        if call["group_type"] != 2:
            return f"group_type must be 2, got {call['group_type']!r}"

    @spec.rule(f"{p}.transpose", "transpose_x", "transpose_x=True and transpose_weight=False (x read as [M, tokens])",
               source=SRC_GMA_HOST + " (x viewed as [K, M], K the grouped axis)", status=None,
               fix="pass x as [tokens, M] with transpose_x=True, weight as [tokens, N]")
    def _(call):
        errs = []
        if call["transpose_x"] is not True:
            errs.append(f"transpose_x must be True, got {call['transpose_x']!r}")
        if call["transpose_weight"] is not False:
            errs.append(f"transpose_weight must be False, got {call['transpose_weight']!r}")
        return errs

    @spec.rule(f"{p}.tensors", "x", "x [tokens, M] and weight [tokens, N] float16/bfloat16 of one dtype; group_list "
               "1-D int64; self (y) float32 with E*M*N elements", source=SRC_GMA_HOST + " CheckParams (CheckShape: x/weight 2-D "
               "with equal K, group_list 1-D; CheckDtype: fp16/bf16 x == weight dtype, int64 group_list, float32 y); "
               "the E*M*N size of self is the output size of op-plugin's meta registration",
               fix="pass fp16/bf16 x and weight sharing the token dim, an int64 group_list, a float32 self (y) [E, M, N]")
    def _(call):
        x, w, gl, y = (call.meta(n) for n in ("x", "weight", "group_list", "self"))
        errs = []
        for name, m in (("x", x), ("weight", w), ("group_list", gl), ("self", y)):
            if m is None:
                errs.append(f"{name} must be a tensor, got {type(call[name]).__name__}")
        if errs:
            return errs
        for name, m in (("x", x), ("weight", w)):
            if m.dtype not in ("float16", "bfloat16"):
                errs.append(f"{name} dtype must be float16 or bfloat16, got {m.dtype}")
            if m.ndim != 2:
                errs.append(f"{name} must be 2-D, got shape {list(m.shape)}")
        if x.dtype != w.dtype:
            errs.append(f"x dtype {x.dtype} and weight dtype {w.dtype} differ")
        if x.ndim == 2 and w.ndim == 2 and x.shape[0] != w.shape[0]:
            errs.append(f"x tokens {x.shape[0]} != weight tokens {w.shape[0]}")
        if gl.ndim != 1 or gl.dtype != "int64":
            errs.append(f"group_list must be 1-D int64, got {gl.dtype}{list(gl.shape)}")
        if y.dtype != "float32":
            errs.append(f"self (y) dtype must be float32, got {y.dtype}")
        if not errs and y.numel != gl.shape[0] * x.shape[1] * w.shape[1]:
            errs.append(f"self (y) has {y.numel} elements, must be E*M*N = {gl.shape[0]}*{x.shape[1]}*{w.shape[1]}")
        return errs

    @spec.rule(f"{p}.y_3d_950", "self", "Ascend 950: self (y) is 3-D [E, M, N]", products={"ascend-950"},
               source=SRC_GMA_HOST + " CheckShape (NpuArch DAV_3510: y 3-D, y.shape[0] == len(group_list))",
               fix="view y as [E, M, N]")
    def _(call):
        y, gl = call.meta("self"), call.meta("group_list")
        if y is not None and gl is not None and (y.ndim != 3 or y.shape[0] != gl.shape[0]):
            return f"self (y) shape {list(y.shape)} must be 3-D with E={gl.shape[0]} first"

    @spec.rule(f"{p}.group_list_type", "group_list_type", "group_list_type in {0, 1}; on A2/A3 only 0 (cumsum): "
               "op-plugin calls aclnnGroupedMatmulAdd, which takes none", source=SRC_GMA_PLUGIN + "; " + SRC_GMA_HOST,
               status=None, fix="pass cumulative group ends with group_list_type=0")
    def _(call):
        t = call["group_list_type"]
        if t not in (0, 1, None):
            return f"group_list_type must be 0 or 1, got {t!r}"
        if t == 1 and call.product in A2_A3:
            return f"group_list_type=1 is ignored on {call.product} (cumsum assumed): pass a cumsum"

    @spec.rule(f"{p}.group_values", "group_list", "group_list is a non-decreasing cumsum ending at most at the token "
               "count", source="ops-transformer grouped_matmul_add kernel (group ranges from the cumsum) [inferred]",
               status=None, fix="pass torch.cumsum of tokens per group")
    def _(call):
        v, x = call.values("group_list"), call.meta("x")
        if v is None or x is None or np.asarray(v).ndim != 1 or x.ndim != 2:
            return None
        v = np.asarray(v).astype(np.int64)
        if call["group_list_type"] == 1:
            v = np.cumsum(v)
        if v.size and (np.any(np.diff(v) < 0) or v.min() < 0):
            return f"group_list must be a non-decreasing cumsum, got {v.tolist()[:16]}"
        if v.size and v[-1] > x.shape[0]:
            return f"group_list ends at {int(v[-1])} but x has {x.shape[0]} tokens"


_gma_rules(gma_spec, "gma")
_gma_rules(gma_oop_spec, "gma_oop")


# --------------------------------------------------------------------------------------------
# which dynamic-quant kernel (tiling key) a call gets, and so which output-scale recipe
# --------------------------------------------------------------------------------------------

A2_A3_UB_BYTES = 196608     # 192 KiB unified buffer per vector core on Atlas A2/A3 [I: not in the public sources]
V2026 = "9.0.0"             # keys 10/100 and the amax * (1/127) scale recipe first appear in the 9.0.0 tag


def dynamic_quant_kernel(target, shape, dtype: str, *, has_smooth: bool = False, num_groups: int = 0,
                         dst: str = "int8", symmetric: bool = True,
                         ub_bytes: int = A2_A3_UB_BYTES) -> tuple:
    """``(tiling_key, scale_formula)`` the A2/A3 DynamicQuant tiling (``RunFusionKernelTiling``) selects.

    ``shape``/``dtype`` of the input; ``num_groups`` = len(group_index) when it is given *with* smooth_scales
    (the tiling ignores a group_index without them, so pass 0 then); ``symmetric`` False = the 3-output DynamicQuantV2 op (asymmetric),
    which never takes keys 10/100.  ``scale_formula`` is the recipe of the simulator's ``dynamic_quant``:
    ``"multiply"`` (``amax * fp32(1/DMAX)``) for keys 2/3/10/100 from CANN 9.0.0, else ``"reciprocal"``.
    The UB size of the SKU decides some keys; it is a parameter (default 192 KiB [I]).
    """
    grouped = has_smooth and num_groups > 0
    row_len = int(shape[-1])
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    new = not target.cann < V2026 if hasattr(target, "cann") else True
    key = None
    if new and symmetric and not grouped:
        if dst == "int8" and row_len in (4096, 5120, 10240) and 4 <= rows <= 384:
            key = 100
        else:
            max_ub = ub_bytes - 1024 - (256 + 64 + 12 * 64 * 4)
            max_ub = max_ub // (15 if has_smooth else 11) // 64 * 64
            max_ub = min(max_ub, 255 * 64)
            if 128 <= row_len <= max_ub and row_len % 8 == 0:
                key = 10
    if key is None:
        aligned = -(-row_len // 16) * 16
        max_use = ub_bytes - 1024
        if grouped:
            per_row_new, per_row = -(-num_groups // 8) * 8 * 4 + 17 * aligned, None   # int32 group list
        elif has_smooth:
            per_row_new, per_row = 17 * aligned, 19 * aligned
        else:
            per_row_new, per_row = 11 * aligned, 13 * aligned
        if max_use // per_row_new == 0:
            key = 8 if grouped else 6
        elif grouped:
            key = 7
        elif per_row < max_use:
            key = 2 if dtype == "bfloat16" else 3
        else:
            key = 0 if dtype == "bfloat16" else 1
    formula = "multiply" if new and key in (2, 3, 10, 100) else "reciprocal"
    return key, formula
