"""torch ops ``npu_grouped_matmul_swiglu_quant`` (v1) and ``npu_grouped_matmul_swiglu_quant_v2``.

Signatures, defaults and outputs follow torch_npu (op_plugin_functions.yaml, spec
aclnn-abi-and-torch 4.2/4.3).  Each is one ``torch.library.custom_op`` (``ascend_moe::<name>``) with a
fake kernel (rules + the torch_npu meta shape rule) and a CPU kernel (rules, then the simulator or
aclnn).  An int8 weight must be FRACTAL_NZ: cast it with :func:`ascend_moe.npu_format_cast`
(``(weight, 29)``), or pass the 5-D NZ storage tensor.

Fake tensors carry no format tag (the tag lives on the real CPU tensor object), so the fake kernel
cannot check the NZ-ness of a 3-D int8 weight: it assumes NZ there and the real kernel checks it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import kernels as machine_kernels
from ..backends import use_backend
from ..formats import get_format
from ..rules import TensorSpec
from ..sim import kernels as sim_kernels
from ..sim import swiglu_quant as _sim
from ..sim.numerics import fill_undefined
from ._common import check_only, checked_backend, from_numpy, shape_rule, to_numpy

__all__ = ["npu_grouped_matmul_swiglu_quant", "npu_grouped_matmul_swiglu_quant_v2"]

V1 = "npu_grouped_matmul_swiglu_quant"
V2 = "npu_grouped_matmul_swiglu_quant_v2"


# --------------------------------------------------------------------------------------------
# shape rules (op-plugin meta: n = weight_scale.size(-1))
# --------------------------------------------------------------------------------------------

def _first(v: Any) -> Any:
    return v[0] if isinstance(v, (list, tuple)) and len(v) else v


@shape_rule(V1)
def _v1_shapes(args: Dict[str, Any]) -> List[Tuple[Tuple[int, ...], torch.dtype]]:
    m, n = int(args["x"].shape[0]), int(args["weight_scale"].shape[-1])
    return [((m, n // 2), torch.int8), ((m,), torch.float32), ((), torch.float32)]


@shape_rule(V2)
def _v2_shapes(args: Dict[str, Any]) -> List[Tuple[Tuple[int, ...], torch.dtype]]:
    m, n = int(args["x"].shape[0]), int(_first(args["weight_scale"]).shape[-1])
    return [((m, n // 2), torch.int8), ((m,), torch.float32)]


def _fake_weight(w: Any) -> Any:
    """A fake 3-D int8 weight has no format tag: describe it as NZ for the trace-time check."""
    if isinstance(w, Tensor) and w.dim() == 3 and w.dtype == torch.int8 and get_format(w) == "ND":
        return TensorSpec(tuple(w.shape), "int8", format="FRACTAL_NZ")
    return w


def _alloc(shapes, device) -> Tuple[Tensor, ...]:
    return tuple(torch.empty(s, dtype=d, device=device) for s, d in shapes)


# --------------------------------------------------------------------------------------------
# v1
# --------------------------------------------------------------------------------------------

# Schemas spelled as torch_npu's (op_plugin_functions.yaml, spec aclnn-abi-and-torch 4.2), except that the
# optional tensors are not keyword-only (custom_op rejects kwarg-only Tensor args); the public functions
# keep torch_npu's keyword-only spelling.
V1_SCHEMA = ("(Tensor x, Tensor weight, Tensor group_list, Tensor weight_scale, Tensor x_scale, "
             "Tensor? bias=None, Tensor? offset=None) -> (Tensor, Tensor, Tensor)")
V2_SCHEMA = ("(Tensor x, Tensor[] weight, Tensor[] weight_scale, Tensor x_scale, Tensor group_list, "
             "Tensor? smooth_scale=None, Tensor[]? weight_assist_matrix=None, Tensor? bias=None, "
             "int? dequant_mode=0, int? dequant_dtype=0, int? quant_mode=0, int? quant_dtype=1, "
             "int? group_list_type=0, int[]? tuning_config=None, int? x_dtype=None, int? weight_dtype=None, "
             "int? weight_scale_dtype=None, int? x_scale_dtype=None) -> (Tensor, Tensor)")


@torch.library.custom_op("ascend_moe::npu_grouped_matmul_swiglu_quant", mutates_args=(), schema=V1_SCHEMA)
def _v1_op(x: Tensor, weight: Tensor, group_list: Tensor, weight_scale: Tensor, x_scale: Tensor,
           bias: Optional[Tensor] = None, offset: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    args = dict(x=x, weight=weight, group_list=group_list, weight_scale=weight_scale, x_scale=x_scale,
                bias=bias, offset=offset)
    be = checked_backend(V1, args, [x, weight, group_list, weight_scale, x_scale, bias, offset])
    if be == "aclnn":
        from ..backends import aclnn
        return tuple(aclnn.call(V1, args))
    with sim_kernels.use(machine_kernels.for_call(weight)):  # fastest exact int GEMM; weight values kept
        out, out_scale = _sim.compute(to_numpy(x), to_numpy(weight), to_numpy(weight_scale), to_numpy(x_scale),
                                      to_numpy(group_list), group_list_type=0, assist=to_numpy(bias), kernel="v1")
    out_offset = torch.empty((), dtype=torch.float32)
    fill_undefined(out_offset.numpy(), ())
    return from_numpy(out), from_numpy(out_scale), out_offset


@_v1_op.register_fake
def _v1_fake(x, weight, group_list, weight_scale, x_scale, bias=None, offset=None):
    args = dict(x=x, weight=_fake_weight(weight), group_list=group_list, weight_scale=weight_scale,
                x_scale=x_scale, bias=bias, offset=offset)
    check_only(V1, args)
    return _alloc(_v1_shapes(args), x.device)


def npu_grouped_matmul_swiglu_quant(x: Tensor, weight: Tensor, group_list: Tensor, weight_scale: Tensor,
                                    x_scale: Tensor, *, bias: Optional[Tensor] = None,
                                    offset: Optional[Tensor] = None,
                                    backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """GMM + dequant + SwiGLU + per-token int8 quant, torch_npu v1 spelling.

    x int8 [M, K]; weight int8 [E, K, N] cast to FRACTAL_NZ (or 5-D NZ storage), or A8W4 int4
    packed in int32 [E, K, N/8] with the weight_assist_matrix passed as ``bias``; group_list int64
    cumsum [E]; weight_scale [E, N]; x_scale float32 [M].  Returns ``(out int8 [M, N/2],
    out_scale float32 [M], out_offset float32 [])``; rows past the group total and out_offset are
    undefined (undefined-region policy).  Arithmetic: :mod:`ascend_moe.sim.swiglu_quant` (v1 kernel).
    """
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant(x, weight, group_list, weight_scale, x_scale,
                                                                    bias=bias, offset=offset)


# --------------------------------------------------------------------------------------------
# v2
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("ascend_moe::npu_grouped_matmul_swiglu_quant_v2", mutates_args=(), schema=V2_SCHEMA)
def _v2_op(x: Tensor, weight: List[Tensor], weight_scale: List[Tensor], x_scale: Tensor, group_list: Tensor,
           smooth_scale: Optional[Tensor] = None, weight_assist_matrix: Optional[List[Tensor]] = None,
           bias: Optional[Tensor] = None, dequant_mode: Optional[int] = 0, dequant_dtype: Optional[int] = 0,
           quant_mode: Optional[int] = 0, quant_dtype: Optional[int] = 1, group_list_type: Optional[int] = 0,
           tuning_config: Optional[List[int]] = None, x_dtype: Optional[int] = None,
           weight_dtype: Optional[int] = None, weight_scale_dtype: Optional[int] = None,
           x_scale_dtype: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    args = _v2_args(locals())
    tensors = [x, weight, weight_scale, x_scale, group_list, smooth_scale, weight_assist_matrix, bias]
    be = checked_backend(V2, args, [t for t in tensors if t is not None])
    if be == "aclnn":
        from ..backends import aclnn
        return tuple(aclnn.call(V2, args))
    assist = _first(weight_assist_matrix) if weight_assist_matrix else None
    with sim_kernels.use(machine_kernels.for_call(weight[0])):  # fastest exact int GEMM; weight values kept
        out, out_scale = _sim.compute(to_numpy(x), to_numpy(weight[0]), to_numpy(weight_scale[0]),
                                      to_numpy(x_scale), to_numpy(group_list),
                                      group_list_type=args["group_list_type"], assist=to_numpy(assist), kernel="v2")
    return from_numpy(out), from_numpy(out_scale)


def _v2_args(loc: Dict[str, Any]) -> Dict[str, Any]:
    """Bound argument dict of v2 (``None`` ints restored to their defaults, as torch_npu does)."""
    defaults = dict(dequant_mode=0, dequant_dtype=0, quant_mode=0, quant_dtype=1, group_list_type=0)
    names = ("x", "weight", "weight_scale", "x_scale", "group_list", "smooth_scale", "weight_assist_matrix",
             "bias", "dequant_mode", "dequant_dtype", "quant_mode", "quant_dtype", "group_list_type",
             "tuning_config", "x_dtype", "weight_dtype", "weight_scale_dtype", "x_scale_dtype")
    args = {n: loc[n] for n in names}
    for k, v in defaults.items():
        if args[k] is None:
            args[k] = v
    for k in ("weight", "weight_scale", "weight_assist_matrix", "tuning_config"):
        if args[k] is not None:
            args[k] = list(args[k])
    return args


@_v2_op.register_fake
def _v2_fake(x, weight, weight_scale, x_scale, group_list, smooth_scale=None, weight_assist_matrix=None,
             bias=None, dequant_mode=0, dequant_dtype=0, quant_mode=0, quant_dtype=1, group_list_type=0,
             tuning_config=None, x_dtype=None, weight_dtype=None, weight_scale_dtype=None, x_scale_dtype=None):
    args = _v2_args(locals())
    args["weight"] = [_fake_weight(w) for w in weight]
    check_only(V2, args)
    return _alloc(_v2_shapes(args), x.device)


def npu_grouped_matmul_swiglu_quant_v2(x: Tensor, weight: Sequence[Tensor], weight_scale: Sequence[Tensor],
                                       x_scale: Tensor, group_list: Tensor, *,
                                       smooth_scale: Optional[Tensor] = None,
                                       weight_assist_matrix: Optional[Sequence[Tensor]] = None,
                                       bias: Optional[Tensor] = None, dequant_mode: int = 0, dequant_dtype: int = 0,
                                       quant_mode: int = 0, quant_dtype: int = 1, group_list_type: int = 0,
                                       tuning_config: Optional[List[int]] = None, x_dtype: Optional[int] = None,
                                       weight_dtype: Optional[int] = None, weight_scale_dtype: Optional[int] = None,
                                       x_scale_dtype: Optional[int] = None,
                                       backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """GMM + dequant + SwiGLU + per-token int8 quant, torch_npu v2 spelling (one-element lists).

    A8W8 (int8 NZ weight) uses the v2 fusion kernel's arithmetic (w_scale then x_scale, single
    round-half-even); A8W4 (int32-packed int4 weight, ND or NZ; ``weight_assist_matrix`` required;
    ``dequant_mode`` 1 = per-group [E, G, N] scales) the MSD kernel's.  ``group_list_type`` 0 cumsum,
    1 count.  Returns ``(out int8 [M, N/2], out_scale float32 [M])``.
    """
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant_v2(
            x, list(weight), list(weight_scale), x_scale, group_list, smooth_scale=smooth_scale,
            weight_assist_matrix=list(weight_assist_matrix) if weight_assist_matrix is not None else None,
            bias=bias, dequant_mode=dequant_mode, dequant_dtype=dequant_dtype, quant_mode=quant_mode,
            quant_dtype=quant_dtype, group_list_type=group_list_type,
            tuning_config=list(tuning_config) if tuning_config is not None else None, x_dtype=x_dtype,
            weight_dtype=weight_dtype, weight_scale_dtype=weight_scale_dtype, x_scale_dtype=x_scale_dtype)
