"""torch-facing ``npu_grouped_matmul_finalize_routing`` (torch_npu spelling and defaults).

GMM + MoE finalize/combine on Atlas A2/A3: A8W8 (int8 FRACTAL_NZ weight) and A8W4 (int4 packed in
int32, ND or NZ).  Returns fp32 ``[output_bs or m, n]``.  CPU tensors run the bit-faithful simulator
(:mod:`ascend_moe.sim.finalize_routing`), NPU tensors the aclnn entry point torch_npu would call
(WeightNzV2/WeightNz for NZ weights, V3/V2 otherwise).  Every call is checked first.

Registered once as ``torch.ops.ascend_moe.npu_grouped_matmul_finalize_routing`` with a fake kernel
matching op-plugin's meta rule (spec aclnn-abi-and-torch 4.3): ``[output_bs or x.shape[0], n]`` fp32
with ``n = w.shape[-1]`` (x8 for an int32 weight).  Extension: a 5-D NZ storage weight is accepted
too (its logical n is derived from the storage shape).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from .. import kernels as machine_kernels
from ..backends import use_backend
from ..formats import get_format
from ..rules import TensorSpec
from ..sim import finalize_routing as _sim
from ..sim import kernels as sim_kernels
from ..sim.numerics import dtype_name
from ._common import SHAPE_RULES, check_only, checked_backend, from_numpy, shape_rule, to_numpy

__all__ = ["npu_grouped_matmul_finalize_routing"]

OP = "npu_grouped_matmul_finalize_routing"
_TENSORS = ("x", "w", "group_list", "scale", "bias", "offset", "pertoken_scale", "shared_input", "logit",
            "row_index")


@shape_rule(OP)
def _shape(args: Dict[str, Any]):
    """op-plugin meta: x 2-D, w 3-D; M = output_bs or x.shape[0]; N = w.shape[-1] (x8 for int32)."""
    x, w = args["x"], args["w"]
    if x.dim() != 2:
        raise ValueError(f"{OP}: x must be 2-D [m, k], got x.shape={list(x.shape)}")
    lay = _sim.weight_layout(tuple(w.shape), dtype_name(w.dtype), get_format(w))
    if lay is None:
        raise ValueError(f"{OP}: w must be 3-D [e, k, n] (or 5-D NZ storage), got w.shape={list(w.shape)}")
    dt = args.get("dtype")
    if dt is not None and dt != torch.float32:
        raise ValueError(f"{OP}: dtype must be None or torch.float32, got dtype={dt}")
    m = args.get("output_bs") or x.shape[0]
    return [((int(m), int(lay.n)), torch.float32)]


def _args(x, w, group_list, scale, bias, offset, pertoken_scale, shared_input, logit, row_index, dtype,
          shared_input_weight, shared_input_offset, output_bs, group_list_type, tuning_config,
          x_dtype, w_dtype, scale_dtype, pertoken_scale_dtype) -> Dict[str, Any]:
    return dict(x=x, w=w, group_list=group_list, scale=scale, bias=bias, offset=offset,
                pertoken_scale=pertoken_scale, shared_input=shared_input, logit=logit, row_index=row_index,
                dtype=dtype, shared_input_weight=shared_input_weight, shared_input_offset=shared_input_offset,
                output_bs=output_bs, group_list_type=group_list_type, tuning_config=tuning_config,
                x_dtype=x_dtype, w_dtype=w_dtype, scale_dtype=scale_dtype,
                pertoken_scale_dtype=pertoken_scale_dtype)


@torch.library.custom_op("ascend_moe::npu_grouped_matmul_finalize_routing", mutates_args=())
def _op(x: torch.Tensor, w: torch.Tensor, group_list: torch.Tensor, scale: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None,
        pertoken_scale: Optional[torch.Tensor] = None, shared_input: Optional[torch.Tensor] = None,
        logit: Optional[torch.Tensor] = None, row_index: Optional[torch.Tensor] = None,
        dtype: Optional[torch.dtype] = None, shared_input_weight: float = 1.0, shared_input_offset: int = 0,
        output_bs: int = 0, group_list_type: int = 1, tuning_config: Optional[List[int]] = None,
        x_dtype: Optional[int] = None, w_dtype: Optional[int] = None, scale_dtype: Optional[int] = None,
        pertoken_scale_dtype: Optional[int] = None) -> torch.Tensor:
    args = _args(x, w, group_list, scale, bias, offset, pertoken_scale, shared_input, logit, row_index, dtype,
                 shared_input_weight, shared_input_offset, output_bs, group_list_type, tuning_config,
                 x_dtype, w_dtype, scale_dtype, pertoken_scale_dtype)
    be = checked_backend(OP, args, [args[n] for n in _TENSORS])
    if be == "aclnn":
        from ..backends import aclnn
        return aclnn.call(OP, args)
    with sim_kernels.use(machine_kernels.for_call(w)):  # fastest exact int GEMM; weight values kept
        y = _sim.finalize_routing_compute(
            to_numpy(x), to_numpy(w), to_numpy(group_list), scale=to_numpy(scale), bias=to_numpy(bias),
            offset=to_numpy(offset), pertoken_scale=to_numpy(pertoken_scale), shared_input=to_numpy(shared_input),
            logit=to_numpy(logit), row_index=to_numpy(row_index), shared_input_weight=shared_input_weight,
            shared_input_offset=shared_input_offset, output_bs=output_bs, group_list_type=group_list_type)
    return from_numpy(y)


@_op.register_fake
def _fake(x, w, group_list, scale=None, bias=None, offset=None, pertoken_scale=None, shared_input=None,
          logit=None, row_index=None, dtype=None, shared_input_weight=1.0, shared_input_offset=0, output_bs=0,
          group_list_type=1, tuning_config=None, x_dtype=None, w_dtype=None, scale_dtype=None,
          pertoken_scale_dtype=None):
    args = _args(x, w, group_list, scale, bias, offset, pertoken_scale, shared_input, logit, row_index, dtype,
                 shared_input_weight, shared_input_offset, output_bs, group_list_type, tuning_config,
                 x_dtype, w_dtype, scale_dtype, pertoken_scale_dtype)
    # Fake tensors carry no NZ tag (it is keyed by the real tensor object).  A 3-D int8 weight can
    # only be an NZ weight on this op, so the fake check assumes it; the real kernel checks the tag.
    if w.dim() == 3 and w.dtype == torch.int8 and get_format(w) == "ND":
        args["w"] = TensorSpec(tuple(w.shape), "int8", "FRACTAL_NZ")
    check_only(OP, args)
    (shape, dt), = SHAPE_RULES[OP](dict(args, w=w))
    return x.new_empty(shape, dtype=dt)


def npu_grouped_matmul_finalize_routing(
        x: torch.Tensor, w: torch.Tensor, group_list: torch.Tensor, *, scale: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None,
        pertoken_scale: Optional[torch.Tensor] = None, shared_input: Optional[torch.Tensor] = None,
        logit: Optional[torch.Tensor] = None, row_index: Optional[torch.Tensor] = None,
        dtype: Optional[torch.dtype] = None, shared_input_weight: Optional[float] = 1.0,
        shared_input_offset: Optional[int] = 0, output_bs: Optional[int] = 0, group_list_type: Optional[int] = 1,
        tuning_config: Optional[List[int]] = None, x_dtype: Optional[int] = None, w_dtype: Optional[int] = None,
        scale_dtype: Optional[int] = None, pertoken_scale_dtype: Optional[int] = None,
        backend: Optional[str] = None) -> torch.Tensor:
    """GMM + MoE finalize-routing: fp32 ``[output_bs or m, n]``.

    ``y`` is zeroed, the shared-expert rows ``y[shared_input_offset : +bsdp] = fp32(shared_input) *
    shared_input_weight`` are written, then each grouped row t adds its dequantised result (times
    ``logit[t]``) into ``y[row_index[t]]`` in token order.  A8W8: int8 NZ ``w``, fp32/bf16 ``scale``
    [e, n], optional ``pertoken_scale`` [m] and bf16 ``bias`` [e, n].  A8W4: int32-packed int4 ``w``,
    int64 ``scale`` [e, 1, n], fp32 ``bias`` [e, n] (= 8 * sum_k w * scale), ``pertoken_scale`` [m],
    optional fp32 ``offset`` [e, 1, n].  ``backend``: "sim", "aclnn" or None (policy).
    """
    kwargs = dict(scale=scale, bias=bias, offset=offset, pertoken_scale=pertoken_scale, shared_input=shared_input,
                  logit=logit, row_index=row_index, dtype=dtype,
                  shared_input_weight=1.0 if shared_input_weight is None else float(shared_input_weight),
                  shared_input_offset=0 if shared_input_offset is None else int(shared_input_offset),
                  output_bs=0 if output_bs is None else int(output_bs),
                  group_list_type=1 if group_list_type is None else int(group_list_type),
                  tuning_config=None if tuning_config is None else [int(v) for v in tuning_config],
                  x_dtype=x_dtype, w_dtype=w_dtype, scale_dtype=scale_dtype,
                  pertoken_scale_dtype=pertoken_scale_dtype)
    # the registered schema is positional (torch.library does not allow kwarg-only tensors)
    positional = (x, w, group_list, *kwargs.values())
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_grouped_matmul_finalize_routing(*positional)
