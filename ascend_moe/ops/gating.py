"""``npu_moe_gating_top_k`` for torch: torch_npu's signature and defaults, one custom op
``torch.ops.ascend_moe.npu_moe_gating_top_k`` (fake kernel = rules + torch_npu's Meta shape rule,
CPU kernel = rules + backend policy -> simulator or aclnn).

Defaults are the registered torch_npu schema (``norm_type=0`` softmax).  The torch_npu 7.0.0/7.1.0 doc
prototype printed ``norm_type=1``; that line was stale (its own parameter text says 0), so pass
``norm_type=1`` explicitly for sigmoid routing.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..backends import use_backend
from ..sim import gating as _sim
from ._common import check_only, checked_backend, from_numpy, shape_rule, to_numpy

__all__ = ["npu_moe_gating_top_k"]

OP = "npu_moe_gating_top_k"


@shape_rule(OP)
def _shapes(args):
    """op-plugin ``npu_moe_gating_top_k_meta``: y [rows,k] x.dtype, expert_idx [rows,k] int32,
    norm_out [rows,E] float32 (allocated even when out_flag is False)."""
    x, k = args["x"], int(args["k"])
    rows, experts = int(x.shape[0]), int(x.shape[1])
    return [((rows, k), x.dtype), ((rows, k), torch.int32), ((rows, experts), torch.float32)]


def _args(x, k, bias, input_ids, tid2eid, k_group, group_count, group_select_mode, renorm, norm_type,
          out_flag, routed_scaling_factor, eps):
    return dict(x=x, k=k, bias=bias, input_ids=input_ids, tid2eid=tid2eid, k_group=k_group,
                group_count=group_count, group_select_mode=group_select_mode, renorm=renorm,
                norm_type=norm_type, out_flag=out_flag, routed_scaling_factor=routed_scaling_factor, eps=eps)


@torch.library.custom_op("ascend_moe::npu_moe_gating_top_k", mutates_args=())
def _op(x: torch.Tensor, k: int, bias: Optional[torch.Tensor] = None, input_ids: Optional[torch.Tensor] = None,
        tid2eid: Optional[torch.Tensor] = None, k_group: int = 1, group_count: int = 1,
        group_select_mode: int = 0, renorm: int = 0, norm_type: int = 0, out_flag: bool = False,
        routed_scaling_factor: float = 1.0, eps: float = 1e-20) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = _args(x, k, bias, input_ids, tid2eid, k_group, group_count, group_select_mode, renorm, norm_type,
                 out_flag, routed_scaling_factor, eps)
    be = checked_backend(OP, args, [x, bias, input_ids, tid2eid])
    if be == "aclnn":
        from ..backends import aclnn
        return aclnn.call(OP, args)
    from ..products import resolve_target
    y, idx, norm = _sim.moe_gating_top_k_compute(
        to_numpy(x), k, to_numpy(bias), to_numpy(input_ids), to_numpy(tid2eid), k_group, group_count,
        group_select_mode, renorm, norm_type, out_flag, routed_scaling_factor, eps, cann=resolve_target().cann)
    return from_numpy(y), from_numpy(idx), from_numpy(norm)


@_op.register_fake
def _fake(x, k, bias=None, input_ids=None, tid2eid=None, k_group=1, group_count=1, group_select_mode=0,
          renorm=0, norm_type=0, out_flag=False, routed_scaling_factor=1.0, eps=1e-20):
    args = _args(x, k, bias, input_ids, tid2eid, k_group, group_count, group_select_mode, renorm, norm_type,
                 out_flag, routed_scaling_factor, eps)
    check_only(OP, args)
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in _shapes(args))


def npu_moe_gating_top_k(x: torch.Tensor, k: int, *, bias: Optional[torch.Tensor] = None,
                         input_ids: Optional[torch.Tensor] = None, tid2eid: Optional[torch.Tensor] = None,
                         k_group: int = 1, group_count: int = 1, group_select_mode: int = 0, renorm: int = 0,
                         norm_type: int = 0, out_flag: bool = False, routed_scaling_factor: float = 1.0,
                         eps: float = 1e-20, backend: Optional[str] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch_npu.npu_moe_gating_top_k: ``(y [rows,k] x.dtype, expert_idx [rows,k] int32,
    norm_out [rows,E] float32)``.  ``norm_out`` holds the unbiased softmax/sigmoid output only when
    ``out_flag`` is True; otherwise the device leaves it unwritten and the simulator fills it by the
    undefined-region policy (NaN by default).  Formula, order and tie rules: :mod:`ascend_moe.sim.gating`."""
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_moe_gating_top_k(
            x, k, bias, input_ids, tid2eid, k_group, group_count, group_select_mode, renorm, norm_type,
            out_flag, routed_scaling_factor, eps)
