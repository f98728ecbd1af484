"""Declaration of ``npu_moe_gating_top_k`` (torch_npu; rules :mod:`ascend_moe.rules.gating`, numerics
and the faithfulness contract :mod:`ascend_moe.sim.gating`).

Defaults are the registered torch_npu schema (``norm_type=0`` softmax).  The torch_npu 7.0.0/7.1.0 doc
prototype printed ``norm_type=1``; that line was stale (its own parameter text says 0), so pass
``norm_type=1`` explicitly for sigmoid routing.

Target-dependent behaviour is decided here, not in the simulator (:func:`semantics`): before CANN
8.3.RC1 only the DeepSeek-V3 kernel exists (group_select_mode is not read; groups score by their
top-2 sum); the without-group softmax divides by the sum from 9.0.0 on (multiplies by its reciprocal
before).  This module does not import torch.
"""
from __future__ import annotations

from typing import Any, Dict, List

from ..opdecl import AclnnEntry, ErrorInput, OpDecl, Out, SampleInput, declare
from ..products import CannVersion

OP = "npu_moe_gating_top_k"

# Version boundaries (spec A.7 "Version history"):
LEGACY_UNTIL = CannVersion("8.3.RC1")      # torch_npu 7.0/7.1 generation: DeepSeek-V3 kernel only
# OT 5dbcb68ba (2026-06-27): softmax e/S instead of e*(1/S); after tag v9.0.1 (2026-06-23), so first in 9.1.0
DIV_SOFTMAX_SINCE = CannVersion("9.1.0")


def semantics(cann: Any):
    """The simulator's target-dependent switches for CANN release ``cann``."""
    from ..sim.gating import Semantics
    v = CannVersion(cann)
    return Semantics(legacy=v < LEGACY_UNTIL, softmax_divide=not v < DIV_SOFTMAX_SINCE)


def _shape(a: Dict[str, Any]) -> List[Any]:
    """op-plugin ``npu_moe_gating_top_k_meta``: y [rows,k] x.dtype, expert_idx [rows,k] int32,
    norm_out [rows,E] float32 (allocated even when out_flag is False)."""
    x, k = a["x"], a["k"]
    rows, experts = x.shape[0], x.shape[1]
    return [((rows, k), x.dtype), ((rows, k), "int32"), ((rows, experts), "float32")]


def _sim(a: Dict[str, Any], target: Any):
    from ..sim.gating import moe_gating_top_k_compute
    return moe_gating_top_k_compute(
        a["x"], a["k"], a["bias"], a["input_ids"], a["tid2eid"], a["k_group"], a["group_count"],
        a["group_select_mode"], a["renorm"], a["norm_type"], a["out_flag"], a["routed_scaling_factor"],
        a["eps"], semantics=semantics(target.cann))


_SCALARS = ("int64_t k, int64_t kGroup, int64_t groupCount, int64_t groupSelectMode, int64_t renorm, "
            "int64_t normType, bool outFlag, double routedScalingFactor, double eps, "
            "aclTensor *yOut, aclTensor *expertIdxOut, aclTensor *outOut")
_OUTS = {"yOut": Out(0), "expertIdxOut": Out(1), "outOut": Out(2), "biasOptional": "bias",
         "inputIdsOptional": "input_ids", "tid2eidOptional": "tid2eid"}


def _family(a: Dict[str, Any]) -> str:
    return "gating_hash" if a.get("input_ids") is not None or a.get("tid2eid") is not None else "gating"


def _samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, 16, generator=g)
    bias = torch.randn(16, generator=g) * 0.1
    kw = dict(bias=bias, k_group=2, group_count=4, group_select_mode=1, renorm=0, norm_type=1,
              routed_scaling_factor=2.5, eps=1e-20)
    exp = [((5, 4), "float32"), ((5, 4), "int32"), ((5, 16), "float32")]
    return [SampleInput((x, 4), dict(kw, out_flag=True), exp, name="grouped_sigmoid"),
            SampleInput((x, 4), dict(kw, out_flag=False), exp, name="norm_out_undefined", undefined="zero"),
            SampleInput((x.to(torch.bfloat16), 2), dict(norm_type=0, out_flag=True),
                        [((5, 2), "bfloat16"), ((5, 2), "int32"), ((5, 16), "float32")], name="softmax_bf16")]


def _error_inputs() -> List[ErrorInput]:
    import numpy as np
    import torch
    from ..rules import ConstraintError
    x = torch.randn(4, 16)
    return [
        ErrorInput(SampleInput((x, 17)), ConstraintError, r"k"),
        ErrorInput(SampleInput((x, "2")), TypeError, r"argument 'k' must be an int"),
        ErrorInput(SampleInput((x, 2.0)), TypeError, r"argument 'k' must be an int"),
        ErrorInput(SampleInput((x, None)), TypeError, r"argument 'k' must be an int"),
        ErrorInput(SampleInput((x, 2), dict(k_group=2 ** 64)), TypeError, r"argument 'k_group' must be an int in the int64"),
        ErrorInput(SampleInput((np.zeros((4, 16), np.float32), 2)), TypeError, r"argument 'x' must be a Tensor"),
        ErrorInput(SampleInput((x, 2), dict(out_flag="yes")), TypeError, r"argument 'out_flag' must be a bool"),
        ErrorInput(SampleInput((x, 2), dict(bias=torch.zeros(16, device="meta"))), RuntimeError,
                   r"'x' is on cpu and 'bias' is on meta"),
        ErrorInput(SampleInput((x, 2, torch.zeros(16))), TypeError, r"positional argument"),
    ]


def _setup_context(ctx: Any, inputs: Any, output: Any) -> None:
    x = inputs[0]
    norm_type, out_flag, rsf, eps = inputs[9], inputs[10], inputs[11], inputs[12]
    y, expert_idx, norm_out = output
    ctx.norm_type, ctx.out_flag, ctx.rsf, ctx.eps = norm_type, out_flag, rsf, eps
    ctx.x_dtype = x.dtype
    ctx.save_for_backward(x, expert_idx, norm_out)


def _backward(ctx: Any, grad_y: Any, grad_idx: Any, grad_norm: Any):
    """op-plugin's autograd: ``npu_moe_gating_top_k_backward(x_norm, grad_y, expert_idx, renorm=0, norm_type=1,
    routed_scaling_factor, eps)``; x_norm is norm_out when the forward wrote it (out_flag), else the float32
    sigmoid of x.  Only the sigmoid gate has a backward (aclnnMoeGatingTopKBackward: normType 1 only);
    the bias only steers the selection and gets no gradient.  A gradient of norm_out adds its sigmoid
    derivative."""
    import torch
    x, expert_idx, norm_out = ctx.saved_tensors
    if ctx.norm_type != 1:
        raise NotImplementedError(
            f"npu_moe_gating_top_k backward: norm_type={ctx.norm_type} has no backward; "
            "aclnnMoeGatingTopKBackward (torch_npu.npu_moe_gating_top_k_backward) supports the sigmoid gate "
            "(norm_type=1) only")
    x_norm = norm_out if ctx.out_flag else torch.sigmoid(x.float())
    grad = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    if grad_y is not None:
        grad = grad + torch.ops.ascend_moe.npu_moe_gating_top_k_backward(
            x_norm, grad_y.contiguous(), expert_idx, 0, 1, float(ctx.rsf), float(ctx.eps)).float()
    if grad_norm is not None and ctx.out_flag:
        grad = grad + grad_norm.float() * x_norm * (1 - x_norm)
    return (grad.to(ctx.x_dtype),) + (None,) * 12


DECL = declare(OpDecl(
    schema="npu_moe_gating_top_k(Tensor x, int k, *, Tensor? bias=None, Tensor? input_ids=None, "
           "Tensor? tid2eid=None, int k_group=1, int group_count=1, int group_select_mode=0, int renorm=0, "
           "int norm_type=0, bool out_flag=False, float routed_scaling_factor=1.0, float eps=1e-20) "
           "-> (Tensor, Tensor, Tensor)",
    rules="gating",
    shape=_shape,
    sim=_sim,
    aclnn=(
        AclnnEntry("aclnnMoeGatingTopK", family="gating", requires=("x",),
                   params="const aclTensor *x, const aclTensor *biasOptional, " + _SCALARS, bind=_OUTS),
        # OT 9b90f2ddf/aba4d1372/01944da5b (2026-07): absent from tags v9.0.0 / v9.0.1, first in 9.1.0;
        # rules.gating's hash rules read this value
        AclnnEntry("aclnnMoeGatingTopKV2", family="gating_hash", requires=("x",), since="9.1.0",
                   params="const aclTensor *x, const aclTensor *biasOptional, const aclTensor *inputIdsOptional, "
                          "const aclTensor *tid2eidOptional, " + _SCALARS, bind=_OUTS),
    ),
    choose_entry=_family,
    backward=_backward,
    setup_context=_setup_context,
    doc="""torch_npu.npu_moe_gating_top_k: ``(y [rows,k] x.dtype, expert_idx [rows,k] int32, norm_out [rows,E]
float32)``.  ``norm_out`` holds the unbiased softmax/sigmoid output only when ``out_flag`` is True;
otherwise the device leaves it unwritten and the simulator fills it by the undefined-region policy (NaN
by default).  Formula, order and tie rules: :mod:`ascend_moe.sim.gating`.""",
    samples=_samples,
    error_inputs=_error_inputs,
))
