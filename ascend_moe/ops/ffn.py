"""``npu_ffn``: FFN / MoE-FFN with torch_npu's spelling (formula, precision flows and the
faithfulness contract: :mod:`ascend_moe.sim.ffn`).

Registered once as ``torch.ops.ascend_moe.npu_ffn``; the fake kernel follows torch_npu's Meta rule
(spec aclnn-abi-and-torch.md 4.3): shape ``x.shape[:-1] + [weight2.shape[-1]]``, dtype ``x.dtype``
except int8 x -> bfloat16 when ``output_dtype == torch.bfloat16``, else float16.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..backends import use_backend
from ..sim import ffn as _sim
from ._common import SHAPE_RULES, check_only, checked_backend, from_numpy, shape_rule, to_numpy

__all__ = ["npu_ffn"]

OP = "npu_ffn"
Tensor = torch.Tensor
TokenList = Union[Sequence[int], Tensor, None]

_TENSOR_ARGS = ("x", "weight1", "weight2", "bias1", "bias2", "scale", "offset", "deq_scale1", "deq_scale2",
                "antiquant_scale1", "antiquant_scale2", "antiquant_offset1", "antiquant_offset2")


def _meta_dtype(x_dtype: torch.dtype, output_dtype: Optional[torch.dtype]) -> torch.dtype:
    if x_dtype == torch.int8:
        return torch.bfloat16 if output_dtype == torch.bfloat16 else torch.float16
    return x_dtype


@shape_rule(OP)
def ffn_shape(args: Dict[str, Any]):
    """[(shape, dtype)] of the one output, from metadata (torch_npu ``npu_ffn_meta``)."""
    x, w2 = args["x"], args["weight2"]
    return [(tuple(x.shape[:-1]) + (w2.shape[-1],), _meta_dtype(x.dtype, args.get("output_dtype")))]


def _args(x, weight1, weight2, activation, expert_tokens, expert_tokens_index, bias1, bias2, scale, offset,
          deq_scale1, deq_scale2, antiquant_scale1, antiquant_scale2, antiquant_offset1, antiquant_offset2,
          inner_precise, output_dtype) -> Dict[str, Any]:
    return dict(x=x, weight1=weight1, weight2=weight2, activation=activation, expert_tokens=expert_tokens,
                bias1=bias1, bias2=bias2, inner_precise=inner_precise, expert_tokens_index=expert_tokens_index,
                scale=scale, offset=offset, deq_scale1=deq_scale1, deq_scale2=deq_scale2,
                antiquant_scale1=antiquant_scale1, antiquant_scale2=antiquant_scale2,
                antiquant_offset1=antiquant_offset1, antiquant_offset2=antiquant_offset2,
                output_dtype=output_dtype)


@torch.library.custom_op("ascend_moe::npu_ffn", mutates_args=())
def _npu_ffn_op(x: Tensor, weight1: Tensor, weight2: Tensor, activation: str,
                expert_tokens: Optional[List[int]] = None, expert_tokens_index: Optional[List[int]] = None,
                bias1: Optional[Tensor] = None, bias2: Optional[Tensor] = None,
                scale: Optional[Tensor] = None, offset: Optional[Tensor] = None,
                deq_scale1: Optional[Tensor] = None, deq_scale2: Optional[Tensor] = None,
                antiquant_scale1: Optional[Tensor] = None, antiquant_scale2: Optional[Tensor] = None,
                antiquant_offset1: Optional[Tensor] = None, antiquant_offset2: Optional[Tensor] = None,
                inner_precise: Optional[int] = None, output_dtype: Optional[torch.dtype] = None) -> Tensor:
    args = _args(x, weight1, weight2, activation, expert_tokens, expert_tokens_index, bias1, bias2, scale,
                 offset, deq_scale1, deq_scale2, antiquant_scale1, antiquant_scale2, antiquant_offset1,
                 antiquant_offset2, inner_precise, output_dtype)
    be = checked_backend(OP, args, [args[n] for n in _TENSOR_ARGS if args[n] is not None])
    if be == "aclnn":
        from ..backends import aclnn
        return aclnn.call(OP, args)
    np_args = {k: (to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    np_args["output_dtype"] = None if output_dtype is None else str(output_dtype)
    y = _sim.ffn_compute(**np_args)
    return from_numpy(y)  # freshly allocated by the simulator: never aliases an input


@_npu_ffn_op.register_fake
def _(x, weight1, weight2, activation, expert_tokens=None, expert_tokens_index=None, bias1=None, bias2=None,
      scale=None, offset=None, deq_scale1=None, deq_scale2=None, antiquant_scale1=None, antiquant_scale2=None,
      antiquant_offset1=None, antiquant_offset2=None, inner_precise=None, output_dtype=None):
    args = _args(x, weight1, weight2, activation, expert_tokens, expert_tokens_index, bias1, bias2, scale,
                 offset, deq_scale1, deq_scale2, antiquant_scale1, antiquant_scale2, antiquant_offset1,
                 antiquant_offset2, inner_precise, output_dtype)
    check_only(OP, args)
    (shape, dtype), = SHAPE_RULES[OP](args)
    return x.new_empty(shape, dtype=dtype)


def _token_list(v: TokenList, name: str) -> Optional[List[int]]:
    """int[]? as torch_npu takes it; a 1-D integer CPU tensor is read as the list (V3-style input)."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        if v.device.type != "cpu" or v.dtype.is_floating_point or v.dim() > 1:
            raise TypeError(f"npu_ffn: {name} must be a list of ints (torch_npu int[]), or a 1-D integer "
                            f"CPU tensor; got a {v.dtype} tensor of shape {tuple(v.shape)} on {v.device}")
        return [int(i) for i in v.tolist()]
    if not isinstance(v, (list, tuple)) or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                   for i in v):
        raise TypeError(f"npu_ffn: {name} must be a list of ints (torch_npu int[]), or a 1-D integer CPU tensor; "
                        f"got {type(v).__name__} {v!r}"[:300])
    return [int(i) for i in v]


def npu_ffn(x: Tensor, weight1: Tensor, weight2: Tensor, activation: str,
            expert_tokens: TokenList = None, bias1: Optional[Tensor] = None, bias2: Optional[Tensor] = None,
            inner_precise: Optional[int] = None, *, expert_tokens_index: TokenList = None,
            scale: Optional[Tensor] = None, offset: Optional[Tensor] = None,
            deq_scale1: Optional[Tensor] = None, deq_scale2: Optional[Tensor] = None,
            antiquant_scale1: Optional[Tensor] = None, antiquant_scale2: Optional[Tensor] = None,
            antiquant_offset1: Optional[Tensor] = None, antiquant_offset2: Optional[Tensor] = None,
            output_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None) -> Tensor:
    """``torch_npu.npu_ffn``: ``y = act(x @ W1 + b1) @ W2 + b2`` (FFN), per expert slice with 3-D
    weights and ``expert_tokens`` counts or ``expert_tokens_index`` cumulative ends (MoE-FFN);
    quantised (int8 x, weights; scale/offset/deq_scale1/2) and anti-quantised (int8 weights;
    antiquant_scale/offset1/2) variants.

    Spelling: torch_npu master passes everything after ``activation`` by keyword; the older seed
    signature ``npu_ffn(x, weight1, weight2, activation, expert_tokens, bias1, bias2, inner_precise=0)``
    is accepted too - those four keep their old positions, the rest are keyword-only, so any call in
    either spelling binds the same way.  ``inner_precise`` None means 0.  ``expert_tokens`` may be a
    list of ints or a 1-D integer CPU tensor.  ``backend``: ``"sim"``, ``"aclnn"`` or None (policy).
    Output: ``x.shape[:-1] + [weight2.shape[-1]]``; dtype ``x.dtype``, or for int8 x ``output_dtype``
    (float16 default, or bfloat16).
    """
    call = (x, weight1, weight2, activation, _token_list(expert_tokens, "expert_tokens"),
            _token_list(expert_tokens_index, "expert_tokens_index"), bias1, bias2, scale, offset,
            deq_scale1, deq_scale2, antiquant_scale1, antiquant_scale2, antiquant_offset1, antiquant_offset2,
            inner_precise, output_dtype)
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_ffn(*call)
