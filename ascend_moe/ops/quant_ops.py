"""Declarations of the MoE quantised-path elementwise ops: ``npu_swiglu``, ``npu_swiglu_backward``,
``npu_dynamic_quant``, ``npu_dynamic_quant_asymmetric``, ``npu_dequant_swiglu_quant`` (torch_npu; rules
:mod:`ascend_moe.rules.quant_ops`, numerics and the faithfulness contract :mod:`ascend_moe.sim.quant_ops`).

Schemas are op-plugin's ``op_plugin_functions.yaml`` spellings (``npu_swiglu`` names its input ``self``).
Target-dependent behaviour decided here: the dynamic-quant output-scale recipe follows the tiling key the
target's CANN release and the shape select (:func:`ascend_moe.rules.quant_ops.dynamic_quant_kernel`).

Entry points (op-plugin): ``npu_swiglu`` -> aclnnSwiGlu, backward -> aclnnSwiGluGrad; ``npu_dynamic_quant``
-> aclnnDynamicQuantV2 (offset nullptr = symmetric), aclnnDynamicQuant on a CANN without V2 (which cannot
take group_index: refused loudly instead of dropped as op-plugin does); the asymmetric form -> V2 only;
``npu_dequant_swiglu_quant`` -> aclnnDequantSwigluQuantV2 (dstType 2, roundMode "rint", activateDim -1 on
A2/A3), aclnnDequantSwigluQuant when V2 is absent and ``swiglu_mode == 0``.
This module does not import torch.
"""
from __future__ import annotations

from typing import Any, Dict, List

from ..opdecl import AclnnEntry, ErrorInput, OpDecl, Out, SampleInput, declare

# torch ScalarType codes (c10 ScalarType enum) of the dtypes dst_type is given as
_SCALAR_TYPE_CODES = {"int8": 1, "int32": 3, "float16": 5, "float32": 6, "bfloat16": 15, "quint4x2": 16}
QUINT4X2 = 16
INT8 = 1


def _dtype_code(v: Any) -> Any:
    """``dst_type`` given as a torch dtype (``torch.quint4x2``) -> its ScalarType code; ints pass through."""
    if v is None or isinstance(v, int):
        return v
    name = str(v).replace("torch.", "")
    if type(v).__name__ == "dtype" and name in _SCALAR_TYPE_CODES:
        return _SCALAR_TYPE_CODES[name]
    return v


def _dims(t: Any) -> List[int]:
    return [int(d) for d in t.shape]


# --------------------------------------------------------------------------------------------
# npu_swiglu / npu_swiglu_backward
# --------------------------------------------------------------------------------------------

def _swiglu_shape(a: Dict[str, Any]) -> List[Any]:
    """op-plugin ``swiglu_backward_infershape`` (used for the forward): shape[dim] // 2, x's dtype."""
    x = a["self"]
    shape = _dims(x)
    d = a["dim"] + len(shape) if a["dim"] < 0 else a["dim"]
    shape[d] //= 2
    return [(tuple(shape), x.dtype)]


def _swiglu_sim(a: Dict[str, Any], target: Any):
    from ..sim.quant_ops import swiglu
    return swiglu(a["self"], a["dim"])


def _swiglu_bwd_sim(a: Dict[str, Any], target: Any):
    from ..sim.quant_ops import swiglu_backward
    return swiglu_backward(a["grad_output"], a["self"], a["dim"])


def _swiglu_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, generator=g)
    return [SampleInput((x,), {}, [((4, 8), "float32")], name="fp32_last", reference=_swiglu_fp32_reference),
            SampleInput((x.to(torch.bfloat16).reshape(4, 4, 4),), dict(dim=1), [((4, 2, 4), "bfloat16")],
                        name="bf16_dim1")]


def _exp32(v):
    import math
    import numpy as np
    return np.float32(math.exp(float(v)))      # the simulator's documented exp: exact exp rounded to fp32


def _swiglu_fp32_reference(sample: SampleInput):
    """Plain loop, the fp32 kernel's order: 1 / (exp(-a) + 1), times a, times b."""
    import numpy as np
    import torch
    x = sample.args[0].numpy()
    h = x.shape[1] // 2
    out = np.empty((x.shape[0], h), np.float32)
    for r in range(x.shape[0]):
        for j in range(h):
            a, b = np.float32(x[r, j]), np.float32(x[r, h + j])
            out[r, j] = ((np.float32(1) / (_exp32(-a) + np.float32(1))) * a) * b
    return torch.from_numpy(out)


def _swiglu_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    return [ErrorInput(SampleInput((torch.randn(4, 7),)), ConstraintError, r"must be even"),
            ErrorInput(SampleInput((torch.randn(4, 8),), dict(dim=2)), ConstraintError, r"out of range"),
            ErrorInput(SampleInput((torch.zeros(4, 8, dtype=torch.int32),)), ConstraintError, r"int32"),
            ErrorInput(SampleInput((torch.randn(4, 8),), dict(dim="1")), TypeError, r"argument 'dim' must be an int")]


def _swiglu_backward(ctx, grad):
    import torch
    return torch.ops.ascend_moe.npu_swiglu_backward(grad, ctx.saved_tensors[0], ctx.dim), None


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.dim = inputs[1]


SWIGLU = declare(OpDecl(
    schema="npu_swiglu(Tensor self, int dim=-1) -> Tensor",
    rules="quant_ops",
    shape=_swiglu_shape,
    sim=_swiglu_sim,
    aclnn=(AclnnEntry("aclnnSwiGlu", family="swiglu", requires=("self",),
                      params="const aclTensor *x, int64_t dim, const aclTensor *out",
                      bind={"x": "self", "out": Out(0)}),),
    doc="""torch_npu.npu_swiglu: ``silu(first half) * second half`` along ``dim`` (the output has ``dim`` halved,
x's dtype).  Each dtype's kernel order: :mod:`ascend_moe.sim.quant_ops`.  Differentiable (backward:
``npu_swiglu_backward``).""",
    backward=_swiglu_backward,
    setup_context=_swiglu_setup,
    samples=_swiglu_samples,
    error_inputs=_swiglu_errors,
))

SWIGLU_BACKWARD = declare(OpDecl(
    schema="npu_swiglu_backward(Tensor grad_output, Tensor self, int dim=-1) -> Tensor",
    rules="quant_ops",
    shape=lambda a: [(tuple(_dims(a["self"])), a["self"].dtype)],
    sim=_swiglu_bwd_sim,
    aclnn=(AclnnEntry("aclnnSwiGluGrad", family="swiglu_grad", requires=("grad_output", "self"),
                      params="const aclTensor *yGrad, const aclTensor *x, int64_t dim, const aclTensor *out",
                      bind={"yGrad": "grad_output", "x": "self", "out": Out(0)}),),
    doc="""torch_npu.npu_swiglu_backward: the gradient of ``npu_swiglu`` w.r.t. ``self`` (same shape and dtype).""",
    samples=lambda: _bwd_samples(),
    error_inputs=lambda: _bwd_errors(),
))


def _bwd_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 8, generator=g, dtype=torch.float16)
    return [SampleInput((torch.randn(3, 4, generator=g).half(), x), {}, [((3, 8), "float16")], name="fp16")]


def _bwd_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    return [ErrorInput(SampleInput((torch.randn(3, 8), torch.randn(3, 8))), ConstraintError, r"\[3, 4\]")]


# --------------------------------------------------------------------------------------------
# npu_dynamic_quant / npu_dynamic_quant_asymmetric
# --------------------------------------------------------------------------------------------

def _dq_shapes(a: Dict[str, Any], n_scales: int) -> List[Any]:
    """op-plugin ``npu_dynamic_quant`` output sizes: y int8 like input (quint4x2: int32 [..., H/8]); scale
    (and offset) fp32 input.shape[:-1] (pertoken), [1] (pertensor), shape[:-2] + [H] (perchannel)."""
    shape = _dims(a["input"])
    if a["dst_type"] == QUINT4X2:
        y = ((*shape[:-1], shape[-1] // 8), "int32")
    else:
        y = (tuple(shape), "int8")
    mode = a["quant_mode"]
    s = (1,) if mode == "pertensor" else tuple(shape[:-2] + shape[-1:]) if mode == "perchannel" else tuple(shape[:-1])
    return [y] + [(s, "float32")] * n_scales


def _dq_formula(a: Dict[str, Any], target: Any, symmetric: bool) -> str:
    from ..rules.quant_ops import dynamic_quant_kernel
    from ..sim.numerics import dtype_name
    x = a["input"]
    smooth, gi = a["smooth_scales"], a["group_index"]
    groups = int(gi.shape[0]) if (gi is not None and smooth is not None) else 0
    dst = "int8" if a["dst_type"] in (None, INT8) else "int4"
    return dynamic_quant_kernel(target, tuple(x.shape), dtype_name(x), has_smooth=smooth is not None,
                                num_groups=groups, dst=dst, symmetric=symmetric)[1]


def _dq_sim(a: Dict[str, Any], target: Any):
    from ..sim.quant_ops import npu_dynamic_quant
    return npu_dynamic_quant(a["input"], smooth_scales=a["smooth_scales"], group_index=a["group_index"],
                             dst_type=a["dst_type"], quant_mode=a["quant_mode"], dst_type_max=a["dst_type_max"],
                             scale_formula=_dq_formula(a, target, True))


def _dqa_sim(a: Dict[str, Any], target: Any):
    from ..sim.quant_ops import npu_dynamic_quant_asymmetric
    return npu_dynamic_quant_asymmetric(a["input"], smooth_scales=a["smooth_scales"], group_index=a["group_index"],
                                        dst_type=a["dst_type"], quant_mode=a["quant_mode"],
                                        dst_type_max=a["dst_type_max"])


def _acl_dst(a: Dict[str, Any], outs: Any) -> int:
    """dstType as op-plugin passes it: the aclDataType of y (INT8 2; quint4x2 travels as INT32 3)."""
    return 3 if a["dst_type"] == QUINT4X2 else 2


def _v1_smooth(a: Dict[str, Any], outs: Any) -> Any:
    if a["group_index"] is not None:
        from ..backends import BackendError
        raise BackendError("npu_dynamic_quant: this CANN has no aclnnDynamicQuantV2, and aclnnDynamicQuant takes no "
                           "group_index (op-plugin would drop it silently); update CANN or drop group_index")
    return a["smooth_scales"]


_DQ_V2 = ("const aclTensor *x, const aclTensor *smoothScalesOptional, const aclTensor *groupIndexOptional, "
          "int64_t dstType, const aclTensor *yOut, const aclTensor *scaleOut, const aclTensor *offsetOut")
_DQ_BIND = {"x": "input", "smoothScalesOptional": "smooth_scales", "groupIndexOptional": "group_index",
            "dstType": _acl_dst, "yOut": Out(0), "scaleOut": Out(1)}

_DQ_SCHEMA_ARGS = ("Tensor input, *, Tensor? smooth_scales=None, Tensor? group_index=None, int? dst_type=None, "
                   "str quant_mode=\"pertoken\", float dst_type_max=0.0")


def _dq_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 32, generator=g).to(torch.bfloat16)
    sm = (torch.rand(2, 32, generator=g) + 0.5).to(torch.bfloat16)
    return [SampleInput((x,), {}, [((6, 32), "int8"), ((6,), "float32")], name="int8",
                        reference=_dq_int8_reference),
            SampleInput((x.reshape(2, 3, 32),), dict(dst_type=QUINT4X2), [((2, 3, 4), "int32"), ((2, 3), "float32")],
                        name="int4_packed"),
            SampleInput((x,), dict(smooth_scales=sm, group_index=torch.tensor([2, 6], dtype=torch.int32)),
                        [((6, 32), "int8"), ((6,), "float32")], name="moe_smooth")]


def _dq_int8_reference(sample: SampleInput):
    """Plain loop (CANN 8.5.0, the default target: every key takes the reciprocal recipe): qs = 127/amax,
    q = round-half-even(v * qs), scale = 1/qs."""
    import numpy as np
    import torch
    x = sample.args[0].float().numpy()
    q = np.empty(x.shape, np.int8)
    sc = np.empty(x.shape[0], np.float32)
    for r in range(x.shape[0]):
        v = [np.float32(t) for t in x[r]]
        qs = np.float32(127) / max(abs(t) for t in v)
        q[r] = [max(-128, min(127, round(float(t * qs)))) for t in v]
        sc[r] = np.float32(1) / qs
    return torch.from_numpy(q), torch.from_numpy(sc)


def _dq_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    x = torch.randn(4, 16).to(torch.float16)
    return [ErrorInput(SampleInput((torch.randn(4, 16),)), ConstraintError, r"float32"),
            ErrorInput(SampleInput((x,), dict(quant_mode="pertensor")), ConstraintError, r"pertensor"),
            ErrorInput(SampleInput((x,), dict(smooth_scales=torch.ones(16, dtype=torch.float16),
                                              group_index=torch.tensor([4]))), ConstraintError, r"int64"),
            ErrorInput(SampleInput((x,), dict(dst_type="int8")), TypeError, r"argument 'dst_type' must be an int")]


DYNAMIC_QUANT = declare(OpDecl(
    schema=f"npu_dynamic_quant({_DQ_SCHEMA_ARGS}) -> (Tensor, Tensor)",
    rules="quant_ops",
    shape=lambda a: _dq_shapes(a, 1),
    sim=_dq_sim,
    aclnn=(AclnnEntry("aclnnDynamicQuantV2", family="dynamic_quant", requires=("input",), params=_DQ_V2,
                      bind=dict(_DQ_BIND, offsetOut=None)),
           AclnnEntry("aclnnDynamicQuant", family="dynamic_quant", requires=("input",),
                      params="const aclTensor *x, const aclTensor *smoothScalesOptional, const aclTensor *yOut, "
                             "const aclTensor *scaleOut",
                      bind={"x": "input", "smoothScalesOptional": _v1_smooth, "yOut": Out(0), "scaleOut": Out(1)})),
    doc="""torch_npu.npu_dynamic_quant: per-token symmetric quantisation ``(y int8 (or int4 packed in int32 for
dst_type=torch.quint4x2), scale fp32 [...])``; ``smooth_scales`` [H] (or [E, H] per expert with
``group_index``, an int32 cumsum).  The output-scale recipe follows the kernel the target selects;
all-zero rows give 0 (the all-zero-row policy).  Arithmetic: :mod:`ascend_moe.sim.quant_ops`.""",
    samples=_dq_samples,
    error_inputs=_dq_errors,
    convert={"dst_type": _dtype_code},
))

DYNAMIC_QUANT_ASYMMETRIC = declare(OpDecl(
    schema=f"npu_dynamic_quant_asymmetric({_DQ_SCHEMA_ARGS}) -> (Tensor, Tensor, Tensor)",
    rules="quant_ops",
    shape=lambda a: _dq_shapes(a, 2),
    sim=_dqa_sim,
    aclnn=(AclnnEntry("aclnnDynamicQuantV2", family="dynamic_quant_v2", requires=("input",), params=_DQ_V2,
                      bind=dict(_DQ_BIND, offsetOut=Out(2))),),
    doc="""torch_npu.npu_dynamic_quant_asymmetric: per-token asymmetric quantisation ``(y, scale, offset)``,
``y = rint(x * (1/scale) + offset)``.  Arithmetic: :mod:`ascend_moe.sim.quant_ops`.""",
    samples=lambda: [SampleInput((_dq_samples()[0].args[0],), {}, [((6, 32), "int8"), ((6,), "float32"),
                                                                  ((6,), "float32")], name="int8")],
    error_inputs=lambda: [ErrorInput(SampleInput((_dq_samples()[0].args[0],), dict(dst_type_max=1.0)),
                                     _constraint_error(), r"dst_type_max")],
    convert={"dst_type": _dtype_code},
))


def _constraint_error():
    from ..rules import ConstraintError
    return ConstraintError


# --------------------------------------------------------------------------------------------
# npu_dequant_swiglu_quant
# --------------------------------------------------------------------------------------------

def _dsq_shape(a: Dict[str, Any]) -> List[Any]:
    """op-plugin (SoC < 950): y int8 x.shape[:-1] + [H], scale fp32 x.shape[:-1]."""
    shape = _dims(a["x"])
    return [((*shape[:-1], shape[-1] // 2), "int8"), (tuple(shape[:-1]), "float32")]


def _dsq_sim(a: Dict[str, Any], target: Any):
    from ..sim.quant_ops import npu_dequant_swiglu_quant
    kw = {k: a[k] for k in ("weight_scale", "activation_scale", "bias", "quant_scale", "quant_offset", "group_index",
                            "activate_left", "quant_mode", "dst_type", "round_mode", "activate_dim", "swiglu_mode",
                            "clamp_limit", "glu_alpha", "glu_bias")}
    return npu_dequant_swiglu_quant(a["x"], **kw)


_DSQ_IN = ("const aclTensor *x, const aclTensor *weightScaleOptional, const aclTensor *activationScaleOptional, "
           "const aclTensor *biasOptional, const aclTensor *quantScaleOptional, const aclTensor *quantOffsetOptional, "
           "const aclTensor *groupIndexOptional, bool activateLeft, char *quantModeOptional")
_DSQ_BIND = {"weightScaleOptional": "weight_scale", "activationScaleOptional": "activation_scale",
             "biasOptional": "bias", "quantScaleOptional": "quant_scale", "quantOffsetOptional": "quant_offset",
             "groupIndexOptional": "group_index",
             "quantModeOptional": lambda a, o: "dynamic" if a["quant_mode"] == 1 else "static",
             "yOut": Out(0), "scaleOut": Out(1)}


def _RINT(a: Dict[str, Any], outs: Any) -> str:
    """roundMode: op-plugin passes "rint" on A2/A3 (a string constant; a plain string in bind names an argument)."""
    return "rint"


def _dsq_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(6)
    x = torch.randint(-2000, 2000, (6, 16), generator=g, dtype=torch.int32)
    ws = torch.rand(2, 16, generator=g) * 1e-2
    act = torch.rand(6, generator=g)
    kw = dict(weight_scale=ws, activation_scale=act, group_index=torch.tensor([2, 4]), activate_left=True,
              quant_mode=1)
    return [SampleInput((x,), kw, [((6, 8), "int8"), ((6,), "float32")], name="vllm_dynamic_groups",
                        reference=_dsq_reference),
            SampleInput((x.to(torch.float32).to(torch.bfloat16),), dict(quant_scale=torch.tensor([0.05])),
                        [((6, 8), "int8"), ((6,), "float32")], name="bf16_static", undefined="zero")]


def _dsq_reference(sample: SampleInput):
    """Plain loop of the group path: groups by counts, (ws * fp32(x)) then * act, first half activated
    (activate_left), S = G * (A / (exp(-A) + 1)), scale = amax * fp32(1/127), q = rint(S / scale)."""
    import numpy as np
    import torch
    x = sample.args[0].numpy()
    kw = sample.kwargs
    ws, act, counts = kw["weight_scale"].numpy(), kw["activation_scale"].numpy(), kw["group_index"].tolist()
    T, h = x.shape[0], x.shape[1] // 2
    q = np.empty((T, h), np.int8)
    sc = np.empty(T, np.float32)
    r = 0
    for g, c in enumerate(counts):
        for _ in range(c):
            d = [np.float32(act[r]) * (np.float32(ws[g, k]) * np.float32(int(x[r, k]))) for k in range(2 * h)]
            s_ = [d[h + j] * (d[j] / (_exp32(-d[j]) + np.float32(1))) for j in range(h)]
            sc[r] = max(abs(t) for t in s_) * np.float32(1.0 / 127)
            q[r] = [max(-128, min(127, round(float(t / sc[r])))) for t in s_]
            r += 1
    return torch.from_numpy(q), torch.from_numpy(sc)


def _dsq_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    x = torch.zeros(4, 16, dtype=torch.int32)
    return [ErrorInput(SampleInput((x,), dict(weight_scale=torch.ones(16), quant_mode=2)), ConstraintError,
                       r"quant_mode"),
            ErrorInput(SampleInput((torch.zeros(4, 15, dtype=torch.int32),), dict(weight_scale=torch.ones(15))),
                       ConstraintError, r"even"),
            ErrorInput(SampleInput((x,), dict(activate_left=1)), TypeError, r"argument 'activate_left' must be a bool")]


DEQUANT_SWIGLU_QUANT = declare(OpDecl(
    schema="npu_dequant_swiglu_quant(Tensor x, *, Tensor? weight_scale=None, Tensor? activation_scale=None, "
           "Tensor? bias=None, Tensor? quant_scale=None, Tensor? quant_offset=None, Tensor? group_index=None, "
           "bool activate_left=False, int quant_mode=0, int? dst_type=None, int? round_mode=None, "
           "int? activate_dim=None, int swiglu_mode=0, float clamp_limit=7.0, float glu_alpha=1.702, "
           "float glu_bias=1.0) -> (Tensor, Tensor)",
    rules="quant_ops",
    shape=_dsq_shape,
    sim=_dsq_sim,
    aclnn=(
        AclnnEntry("aclnnDequantSwigluQuantV2", family="dequant_swiglu_quant", requires=("x",), since="9.0.0",
                   params=_DSQ_IN + ", int64_t dstType, char *roundModeOptional, int64_t activateDim, "
                                    "int64_t swigluMode, double clampLimit, double gluAlpha, double gluBias, "
                                    "const aclTensor *yOut, const aclTensor *scaleOut",
                   bind=dict(_DSQ_BIND, dstType=2, roundModeOptional=_RINT, activateDim=-1)),
        AclnnEntry("aclnnDequantSwigluQuant", family="dequant_swiglu_quant", requires=("x",),
                   params=_DSQ_IN + ", const aclTensor *yOut, const aclTensor *scaleOut", bind=_DSQ_BIND),
        AclnnEntry("aclnnDequantSwigluQuantV2", family="dequant_swiglu_quant_v2", requires=("x",), since="9.0.0",
                   params=_DSQ_IN + ", int64_t dstType, char *roundModeOptional, int64_t activateDim, "
                                    "int64_t swigluMode, double clampLimit, double gluAlpha, double gluBias, "
                                    "const aclTensor *yOut, const aclTensor *scaleOut",
                   bind=dict(_DSQ_BIND, dstType=2, roundModeOptional=_RINT, activateDim=-1)),
    ),
    choose_entry=lambda a: "dequant_swiglu_quant" if a["swiglu_mode"] == 0 else "dequant_swiglu_quant_v2",
    doc="""torch_npu.npu_dequant_swiglu_quant: int32 GMM output -> dequant (weight/activation scales, bias) ->
SwiGLU (the second half activated unless ``activate_left``) -> int8 ``(y [..., H], scale fp32 [...])``, static
(``quant_mode=0``) or dynamic per token (1); ``group_index`` holds token counts per group.  Arithmetic:
:mod:`ascend_moe.sim.quant_ops`.""",
    samples=_dsq_samples,
    error_inputs=_dsq_errors,
))
