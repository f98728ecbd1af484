"""Grouped matmul with the spellings users write: MindSpeed ``npu_gmm`` / ``npu_gmm_v2`` and torch_npu
``npu_grouped_matmul`` (non-quantised).  Numerics and the faithfulness contract:
:mod:`ascend_moe.sim.gmm`; rules: :mod:`ascend_moe.rules.gmm`.

Declared once each (this module imports no torch; the torch side - simulator into torch memory,
autograd - is :mod:`ascend_moe.ops._gmm_torch`).  Each op has a ``.List`` overload whose group_list
is ``int[]?`` (MindSpeed ``npu_gmm`` with ``List[int]`` -> aclnnGroupedMatmulV2, torch_npu
``npu_grouped_matmul.List`` -> V1, values checked by the host); the Tensor form goes to aclnn V3/V4/V5,
values never validated on the device.  torch custom ops cannot take ``Union[List[int], Tensor]``, so
the torch.library schema carries the overload's variant as ``group_list_ints: int[]?``; the generated
binder folds it back, so the checker, the simulator and ``aclnn.call`` see one ``group_list``.  The two paths differ in the rule
for the group-list total (see :mod:`ascend_moe.rules.gmm`): List ``==`` rows, Tensor ``<=`` rows
with the rows past the total undefined.

Autograd (spec 1.7/1.8, MindSpeed ``GMMFunction``), registered with ``register_autograd``:

* only group_type 0; a call with x or weight requiring grad and group_type != 0 raises MindSpeed's
  ``ValueError("group_type must be zero to compute gradients of x and weight!")``; a bias that
  requires grad raises ``ValueError("Bias is not supported to compute gradient!")`` (both at forward
  time, as MindSpeed does);
* ``grad_x = gmm(grad_y, weight^T, group_type=0)`` (same group list and list type);
* ``grad_w = gmm(x^T, grad_y, group_type=2)`` -> [E, K, N] (empty groups zero); with a transposed
  weight view and a Tensor group list: ``gmm(grad_y^T, x, group_type=2)`` -> [E, N, K] transposed
  back (MindSpeed's Tensor-path backward), so grad_w has the weight's transposed layout;
* ``gemm_fusion=True``: grad_x as above; the weight gradient is added in fp32 into
  ``original_weight.main_grad.view(E, K, N)`` (GroupedMatmulInplaceAdd, counts converted with a
  cumsum for v2); the returned weight gradient is a dummy of weight's shape (zeros if
  ``weight.zero_out_wgrad``, else undefined = filled by the undefined-region policy) when
  ``original_weight`` has ``grad_added_to_main_grad`` (which is then set True), else None.
  With a transposed weight view MindSpeed still views main_grad as [E, K, N]; so do we [C: code].

The backward calls the registered ops themselves, so it runs on whichever backend the forward used.
"""
from __future__ import annotations

from typing import Any, Dict, List

from ..opdecl import ALL_OUTPUTS, AclnnEntry, ErrorInput, OpDecl, SampleInput, declare
from ..sim import gmm as _sim

# ------------------------------------------------------------------------------------------------
# aclnn entry points (C prototypes of csrc/acl_abi.h).  Choice, as op-plugin / MindSpeed make it:
# npu_grouped_matmul: FRACTAL_NZ weight -> WeightNz; else V5 when it resolves and x is not fp8, else V4;
# a List[int] group_list (the .List overload) -> aclnnGroupedMatmul (V1: M split only).  npu_gmm /
# npu_gmm_v2: List[int] -> V2 (splitItem 3), Tensor -> V4 (groupListType 0 cumsum / 1 counts).
# ------------------------------------------------------------------------------------------------

_LISTS = ("const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional, "
          "const aclTensorList *scaleOptional, const aclTensorList *offsetOptional, "
          "const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional, ")
_V4_HEAD = (_LISTS + "const aclTensorList *perTokenScaleOptional, const aclTensor *groupListOptional, "
            "const aclTensorList *activationInputOptional, const aclTensorList *activationQuantScaleOptional, "
            "const aclTensorList *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType, "
            "int64_t groupListType, int64_t actType, ")
_V4_TAIL = "aclTensorList *out, aclTensorList *activationFeatureOutOptional, aclTensorList *dynQuantScaleOutOptional"
_GMM_OUTS = {"out": ALL_OUTPUTS, "y": ALL_OUTPUTS, "activationFeatureOutOptional": None,
             "dynQuantScaleOutOptional": None}


def _group_type(a: Dict[str, Any], outs: Any) -> int:
    return _sim.resolve_group_type(a.get("group_type"), a.get("group_list"))


def _no_dtype_overrides(a: Dict[str, Any]) -> None:
    from ..backends.aclnn import _no_dtype_overrides as refuse
    refuse("npu_grouped_matmul", a, ("x_dtype", "weight_dtype", "scale_dtype", "per_token_scale_dtype"))


def _v1_check(a: Dict[str, Any]) -> None:
    from ..backends import BackendError
    _no_dtype_overrides(a)
    gt = _group_type(a, None)
    if gt not in (-1, 0):
        raise BackendError(f"npu_grouped_matmul: group_type={gt} with a List[int] group_list: the .List overload's "
                           "aclnnGroupedMatmul (V1) splits M only; pass group_list as a Tensor")


def _is_quant_form(a: Dict[str, Any]) -> bool:
    """Integer x or weight: one of the quantised forms (ascend_moe.rules.gmm_quant / sim.gmm_quant)."""
    from ..sim.numerics import dtype_name
    return any(dtype_name(t.dtype) in ("int8", "int32") for t in list(a["x"]) + list(a["weight"]))


def _quant_group_size(a: Dict[str, Any], outs: Any = None) -> int:
    """quantGroupSize of aclnnGroupedMatmulWeightNz as op-plugin passes it: 256 for A8W4 (int8 x, int4 packed
    in int32 weight, int64/uint64 scale) without an offset, else 0 (GroupedMatmulKernelNpuOpApi.cpp)."""
    from ..sim.numerics import dtype_name
    xs, ws, scale = list(a["x"]), list(a["weight"]), a.get("scale") or []
    is_a8w4 = (dtype_name(xs[0].dtype) == "int8" and dtype_name(ws[0].dtype) == "int32" and len(scale) > 0
               and dtype_name(scale[0].dtype) in ("int64", "uint64"))
    return 256 if is_a8w4 and not a.get("offset") else 0


_GM_BIND = dict(_GMM_OUTS, groupType=_group_type, quantGroupSize=_quant_group_size,
                tuningConfigOptional=lambda a, o: list(a.get("tuning_config") or []))

GROUPED_MATMUL_ACLNN = (
    AclnnEntry("aclnnGroupedMatmulV5", family="gmm", params=_V4_HEAD + "aclIntArray *tuningConfigOptional, " + _V4_TAIL,
               requires=("x", "weight"), bind=_GM_BIND, check=_no_dtype_overrides),
    AclnnEntry("aclnnGroupedMatmulV4", family=("gmm", "gmm_v4"), params=_V4_HEAD + _V4_TAIL,
               requires=("x", "weight"), bind=_GM_BIND, check=_no_dtype_overrides),
    AclnnEntry("aclnnGroupedMatmulWeightNz", family="gmm_nz",
               params=_V4_HEAD + "aclIntArray *tuningConfigOptional, int64_t quantGroupSize, " + _V4_TAIL,
               requires=("x", "weight"), bind=_GM_BIND, check=_no_dtype_overrides),
    AclnnEntry("aclnnGroupedMatmul", family="gmm_list_v1",
               params=_LISTS + "const aclIntArray *groupListOptional, int64_t splitItem, const aclTensorList *y",
               requires=("x", "weight"), bind=_GM_BIND, check=_v1_check),
)


def _grouped_matmul_family(a: Dict[str, Any]) -> str:
    from ..formats import is_nz
    if isinstance(a.get("group_list"), (list, tuple)):
        return "gmm_list_v1"
    if is_nz(a["weight"][0]):
        return "gmm_nz"
    # op-plugin: V5 only for native dtypes (no fp8 x); dtype overrides are refused before
    fp8 = str(a["x"][0].dtype).replace("torch.", "").startswith("float8")
    return "gmm_v4" if fp8 else "gmm"


def _gmm_aclnn(list_type: int, int_list: bool):
    """MindSpeed's calls: one x / weight / bias wrapped as lists, splitItem 3, no quantisation."""
    one = {"x": lambda a, o: [a["x"]], "weight": lambda a, o: [a["weight"]],
           "biasOptional": lambda a, o: None if a.get("bias") is None else [a["bias"]],
           "scaleOptional": None, "offsetOptional": None, "antiquantScaleOptional": None,
           "antiquantOffsetOptional": None, "perTokenScaleOptional": None, "activationInputOptional": None,
           "activationQuantScaleOptional": None, "activationQuantOffsetOptional": None, "splitItem": 3,
           "groupType": lambda a, o: int(a.get("group_type") or 0), "groupListType": list_type, "actType": 0}
    v4 = AclnnEntry("aclnnGroupedMatmulV4", family="gmm_v4", params=_V4_HEAD + _V4_TAIL,
                    requires=("x", "weight"), bind=dict(_GMM_OUTS, **one))
    v2 = AclnnEntry("aclnnGroupedMatmulV2", family="gmm_list",
                    params=_LISTS + "const aclIntArray *groupListOptional, int64_t splitItem, int64_t groupType, "
                                    "const aclTensorList *y", requires=("x", "weight"), bind=dict(_GMM_OUTS, **one))
    # npu_gmm_v2 takes no List[int] (MindSpeed rejects it; so does the checker): V4 only
    return (v4, v2) if int_list else (v4,)


def _gmm_family(a: Dict[str, Any]) -> str:
    return "gmm_list" if isinstance(a.get("group_list"), (list, tuple)) else "gmm_v4"

# torch_npu's output_dtype codes of the torch dtypes (a torch dtype is accepted for output_dtype)
OUTPUT_DTYPE_CODES = {"torch.float16": 5, "torch.bfloat16": 15, "torch.float32": 6, "torch.int32": 3, "torch.int8": 1}
_CODE_DTYPE_NAMES = {code: name.replace("torch.", "") for name, code in OUTPUT_DTYPE_CODES.items()}


def _output_dtype_code(v: Any) -> Any:
    if type(v).__module__ == "torch" and type(v).__name__ == "dtype":
        if str(v) not in OUTPUT_DTYPE_CODES:
            raise TypeError(f"npu_grouped_matmul: output_dtype {v} has no torch_npu code; "
                            f"use one of {list(OUTPUT_DTYPE_CODES)}")
        return OUTPUT_DTYPE_CODES[str(v)]
    return v


def gmm_shape(a: Dict[str, Any]) -> List[Any]:
    """MindSpeed: [M, N] x.dtype; K split (group_type 2): [E, M, N]."""
    x, w, gl = a["x"], a["weight"], a["group_list"]
    if a["group_type"] == 2:
        e = len(gl) if isinstance(gl, list) else gl.shape[0]
        return [((e, x.shape[0], w.shape[-1]), x.dtype)]
    return [((x.shape[0], w.shape[-1]), x.dtype)]


def _torch_side(name: str) -> Any:
    """A function of :mod:`ascend_moe.ops._gmm_torch` (which imports this module: imported on first use, then
    kept, since an import statement on every call cost ~35 us once a large GEMM had left the caches)."""
    fn = _TORCH_SIDE.get(name)
    if fn is None:
        from . import _gmm_torch
        fn = _TORCH_SIDE[name] = getattr(_gmm_torch, name)
    return fn


_TORCH_SIDE: Dict[str, Any] = {}


def _gmm_sim(list_type: int):
    def sim(a: Dict[str, Any], target: Any):
        return _sim._gmm_forward(a["x"], a["weight"], a["bias"], a["group_list"], a["group_type"], list_type, None)
    return sim


def _gmm_sim_torch(op: str, list_type: int):
    def sim(a: Dict[str, Any], target: Any):
        return _torch_side("gmm_forward")(op, list_type, a)
    return sim


def _gmm_compiled(list_type: int):
    def shortcut(a: Dict[str, Any]):
        return _torch_side("gmm_compiled")(list_type, a)
    return shortcut


def _gmm_backward(op: str):
    def backward(ctx, grad):
        return _torch_side("gmm_backward")[op](ctx, grad)
    return backward


def _gmm_setup(ctx, inputs, output):
    return _torch_side("gmm_setup")(ctx, inputs, output)


def _gmm_samples(op: str):
    def samples() -> List[SampleInput]:
        import torch
        g = torch.Generator().manual_seed(1)
        x = torch.randn(7, 16, generator=g).to(torch.bfloat16)
        w = (torch.randn(3, 16, 8, generator=g) * 0.25).to(torch.bfloat16)
        if op == "npu_gmm":  # cumsum group lists: List[int] (.List overload) and Tensor
            gls = ([2, 2, 7], torch.tensor([3, 5, 7]))
        else:                # counts, Tensor only
            gls = (torch.tensor([2, 0, 5]),)
        return [SampleInput((x, w), dict(group_list=gl, group_type=0), [((7, 8), "bfloat16")],
                            name=f"group_list_{type(gl).__name__}") for gl in gls]
    return samples


def _gmm_errors(op: str):
    def errors() -> List[ErrorInput]:
        s = _gmm_samples(op)()[0]
        x, w = s.args
        return [ErrorInput(SampleInput((x, w), dict(group_list="1,2")), TypeError,
                           r"argument 'group_list' must be a Tensor or a list of ints"),
                ErrorInput(SampleInput((x, w, None)), TypeError, r"positional argument")]
    return errors


_GMM_DOC = {
    "npu_gmm": """MindSpeed ``npu_gmm``: grouped matmul with a cumsum ``group_list`` (``List[int]`` or int64 Tensor).
group_type 0: x [M, K], weight [E, K, N] (or ``[E, N, K].transpose(-1, -2)``) -> [M, N]; group_type 2: x a
transposed view [M, K], weight [K, N] -> [E, M, N].  Differentiable for group_type 0 (``gemm_fusion`` /
``original_weight`` as MindSpeed; see :mod:`ascend_moe.ops.gmm`).""",
    "npu_gmm_v2": """MindSpeed ``npu_gmm_v2``: as ``npu_gmm`` with per-group counts (an int64 Tensor only; a list
is rejected by the checker as MindSpeed rejects it).""",
}


def _declare_gmm(op: str, list_type: int) -> OpDecl:
    rest = ("Tensor? bias=None, {gl} group_list=None, int? group_type=0, bool gemm_fusion=False, "
            "Tensor? original_weight=None) -> Tensor")
    return declare(OpDecl(
        schema=f"{op}(Tensor x, Tensor weight, *, " + rest.format(gl="Tensor?"),
        overloads=(f"{op}.List(Tensor x, Tensor weight, *, " + rest.format(gl="int[]?"),),
        rules="gmm",
        shape=gmm_shape,
        sim=_gmm_sim(list_type),
        sim_torch=_gmm_sim_torch(op, list_type),
        sim_shortcut=_gmm_compiled(list_type),
        # K split's "weight" is the backward's grad_y: nothing worth keeping
        cached_weights=lambda a: [] if a["group_type"] == 2 else [a["weight"]],
        aclnn=_gmm_aclnn(list_type, int_list=op == "npu_gmm"),
        choose_entry=_gmm_family,
        backward=_gmm_backward(op),
        setup_context=_gmm_setup,
        drop_in=("mindspeed",),
        doc=_GMM_DOC[op],
        samples=_gmm_samples(op),
        error_inputs=_gmm_errors(op),
    ))


DECL_GMM = _declare_gmm("npu_gmm", 0)
DECL_GMM_V2 = _declare_gmm("npu_gmm_v2", 1)


def grouped_matmul_shapes(a: Dict[str, Any]) -> List[Any]:
    """[(shape, dtype), ...] of the outputs (op-plugin kernel / meta rules, spec 1.5 and 4.3).

    split_item 0/1 with a single x and a group list gives one output per group whose row counts are
    the group-list values (read on the host, as op-plugin does; SymInts under fake tensors)."""
    if _is_quant_form(a):
        return _quant_shapes(a)
    xs, ws, gl = a["x"], a["weight"], a["group_list"]
    gt = _sim.resolve_group_type(a["group_type"], gl)
    split = a["split_item"]
    dtype = xs[0].dtype
    single_w3 = len(ws) == 1 and len(ws[0].shape) == 3

    def n_of(i):
        return ws[0].shape[-1] if (single_w3 or len(ws) == 1) else ws[i].shape[-1]

    if gt == 2:
        e = len(gl) if isinstance(gl, list) else gl.shape[0]
        if split in (2, 3):
            return [((e, xs[0].shape[0], ws[0].shape[-1]), dtype)]
        return [((xs[0].shape[0], ws[0].shape[-1]), dtype) for _ in range(e)]
    if gt == 0 and len(xs) == 1 and gl is not None:
        if split in (2, 3):
            return [((xs[0].shape[0], n_of(0)), dtype)]
        e = len(gl) if isinstance(gl, list) else gl.shape[0]
        from ._gmm_torch import _group_sizes
        sizes = _group_sizes(gl, a["group_list_type"], e)
        return [((sizes[i], n_of(i)), dtype) for i in range(e)]
    outs = [((*xi.shape[:-1], n_of(i)), dtype) for i, xi in enumerate(xs)]
    if split in (2, 3):
        rows = 0
        for xi in xs:
            r = 1
            for s in xi.shape[:-1]:
                r = r * s
            rows = rows + r
        return [((rows, n_of(0)), dtype)]
    return outs


def _quant_shapes(a: Dict[str, Any]) -> List[Any]:
    """The quantised forms' single output [M, N]: N from the weight's logical dims (int4 packed in int32:
    8 per element; NZ storage), dtype ``output_dtype`` (torch_npu's int code) or x's."""
    from ..sim.numerics import dtype_name
    from ..sim.quant_gemm import weight_logical_dims
    x, w = a["x"][0], a["weight"][0]
    dims = weight_logical_dims(tuple(w.shape), dtype_name(w.dtype))
    n = dims[2] if dims is not None else w.shape[-1]
    od = a.get("output_dtype")
    dtype = x.dtype if od is None else _CODE_DTYPE_NAMES.get(int(od), x.dtype)
    return [((x.shape[0], n), dtype)]


def _gm_quant_sim(a: Dict[str, Any]) -> List[Any]:
    from ..sim.gmm_quant import npu_grouped_matmul_quant
    kw = {k: a[k] for k in ("bias", "scale", "offset", "antiquant_scale", "antiquant_offset", "per_token_scale")}
    return list(npu_grouped_matmul_quant(list(a["x"]), list(a["weight"]), group_list=a["group_list"],
                                         group_list_type=a["group_list_type"], act_type=a["act_type"],
                                         output_dtype=a["output_dtype"], **kw))


def _gm_sim(a: Dict[str, Any], target: Any):
    if _is_quant_form(a):
        return _gm_quant_sim(a)
    return _sim.grouped_matmul_compute(a["x"], a["weight"], a["bias"], a["group_list"], a["split_item"],
                                       _sim.resolve_group_type(a["group_type"], a["group_list"]),
                                       a["group_list_type"], None)


def _gm_sim_torch(a: Dict[str, Any], target: Any):
    if _is_quant_form(a):
        return _gm_quant_sim(a)  # the NumPy simulator computes the quantised forms
    return _torch_side("grouped_matmul_forward")(a)


def _gm_backward(ctx, grads):
    return _torch_side("grouped_matmul_backward")(ctx, grads)


def _gm_setup(ctx, inputs, output):
    return _torch_side("grouped_matmul_setup")(ctx, inputs, output)


def _gm_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(5)
    bf = torch.bfloat16
    x = torch.randn(6, 16, generator=g).to(bf)
    w = (torch.randn(3, 16, 8, generator=g) * 0.25).to(bf)
    xs = [torch.randn(3, 16, generator=g).to(bf), torch.randn(5, 16, generator=g).to(bf)]
    ws = [torch.randn(16, 4, generator=g).to(bf), torch.randn(16, 6, generator=g).to(bf)]
    # vllm-ascend's MoE call: split_item=2 (one output), group_type=0, counts (group_list_type=1)
    return [SampleInput(([x], [w]), dict(group_list=torch.tensor([2, 0, 4]), split_item=2, group_type=0,
                                         group_list_type=1), [((6, 8), "bfloat16")], name="moe_counts"),
            SampleInput(([x], [w]), dict(group_list=[2, 2, 6], split_item=3), [((6, 8), "bfloat16")],
                        name="list_overload"),
            # group_type -1 (no grouping), split_item 0: one output per x
            SampleInput((xs, ws), dict(split_item=0, group_type=-1), [((3, 4), "bfloat16"), ((5, 6), "bfloat16")],
                        name="lists")]


def _gm_errors() -> List[ErrorInput]:
    s = _gm_samples()[0]
    (x,), (w,) = s.args
    return [ErrorInput(SampleInput((x, [w]), s.kwargs), TypeError,
                       r"argument 'x' must be a list of Tensors \(Tensor\[\]\): wrap a single tensor"),
            ErrorInput(SampleInput(([x], [w]), dict(s.kwargs, split_item="2")), TypeError,
                       r"argument 'split_item' must be an int")]


_GM_REST = ("Tensor[]? bias=None, Tensor[]? scale=None, Tensor[]? offset=None, Tensor[]? antiquant_scale=None, "
            "Tensor[]? antiquant_offset=None, Tensor[]? per_token_scale=None, {gl} group_list=None, "
            "Tensor[]? activation_input=None, Tensor[]? activation_quant_scale=None, "
            "Tensor[]? activation_quant_offset=None, int? split_item=0, int? group_type=None, "
            "int? group_list_type=0, int? act_type=0, int[]? tuning_config=None, int? output_dtype=None, "
            "int? x_dtype=None, int? weight_dtype=None, int? scale_dtype=None, int? per_token_scale_dtype=None) "
            "-> Tensor[]")

DECL_GROUPED_MATMUL = declare(OpDecl(
    schema="npu_grouped_matmul(Tensor[] x, Tensor[] weight, *, " + _GM_REST.format(gl="Tensor?"),
    overloads=("npu_grouped_matmul.List(Tensor[] x, Tensor[] weight, *, " + _GM_REST.format(gl="int[]?"),),
    rules="gmm",
    shape=grouped_matmul_shapes,
    sim=_gm_sim,
    sim_torch=_gm_sim_torch,
    cached_weights=lambda a: ([] if _sim.resolve_group_type(a["group_type"], a["group_list"]) == 2
                              else list(a["weight"])),
    aclnn=GROUPED_MATMUL_ACLNN,
    choose_entry=_grouped_matmul_family,
    backward=_gm_backward,
    setup_context=_gm_setup,
    convert={"output_dtype": _output_dtype_code},
    doc="""``torch_npu.npu_grouped_matmul`` (non-quantised): lists of x / weight (/ bias), split_item 0-3,
group_type -1/0/2, group_list_type 0/1, ``group_list`` as a Tensor (Tensor overload) or a ``List[int]`` (the
``.List`` overload).  ``output_dtype`` may be torch's int code or a torch dtype.  Quantised arguments are
rejected by the checker, naming the ops that model them.  Returns a list of tensors.  Differentiable
(group_type 0) in the single-x / 3-D-weight / split_item 2-3 form.""",
    samples=_gm_samples,
    error_inputs=_gm_errors,
))
