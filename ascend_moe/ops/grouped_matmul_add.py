"""``torch_npu.npu_grouped_matmul_add_`` (in place) and ``npu_grouped_matmul_add`` (out of place):
``y[e] += x[rows_e]^T @ weight[rows_e]`` in fp32, MindSpeed's ``gemm_fusion=True`` main_grad accumulation.

These two mutate their first argument, which the op declarations (:mod:`ascend_moe.opdecl`) do not express
yet, so they are plain functions rather than ``torch.ops.ascend_moe`` ops: the checker runs first (rules
``ascend_moe.rules.quant_ops``, the ``gma.*`` ids), then CPU tensors go to the simulator
(:func:`ascend_moe.sim.gmm_quant.grouped_matmul_add`, writing into ``y``'s memory), tensors of the simulated
npu device to the simulator on their host memory, and real NPU tensors to aclnnGroupedMatmulAdd
(:func:`ascend_moe.backends.aclnn.grouped_matmul_add_`).  They are not traced by ``torch.compile`` as ops.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..backends import NPU_DEVICE_TYPES, privateuse1_is_simulated
from ._common import to_numpy

__all__ = ["npu_grouped_matmul_add_", "npu_grouped_matmul_add"]


def _accumulate(op: str, a: Dict[str, Any]) -> None:
    """The checker, then the accumulation into ``y`` on the backend the tensors' device selects."""
    for name in ("y", "x", "weight", "group_list"):
        if not isinstance(a[name], torch.Tensor):
            raise TypeError(f"{op}: argument '{name}' must be a Tensor, got {type(a[name]).__name__}")
    y, x, weight, group_list = a["y"], a["x"], a["weight"], a["group_list"]
    devices = {t.device.type for t in (y, x, weight, group_list)}
    if devices & set(NPU_DEVICE_TYPES) and not privateuse1_is_simulated():
        from ..backends.aclnn import grouped_matmul_add_  # runs the same rules first
        grouped_matmul_add_(y, x, weight, group_list, transpose_x=a["transpose_x"],
                            transpose_weight=a["transpose_weight"], group_type=a["group_type"],
                            group_list_type=a["group_list_type"])
        return
    from ..rules import enforce_call
    enforce_call(op, a)
    if devices - {"cpu"} - set(NPU_DEVICE_TYPES):
        raise ValueError(f"npu_grouped_matmul_add_: tensors on {sorted(devices)}; pass CPU or NPU tensors")
    from ..backends import host_view
    from ..sim.gmm_quant import grouped_matmul_add

    def host(t: torch.Tensor) -> torch.Tensor:
        return t if t.device.type == "cpu" else host_view(t)
    grouped_matmul_add(to_numpy(host(y)), to_numpy(host(x)), to_numpy(host(weight)), to_numpy(host(group_list)),
                       group_list_type=a["group_list_type"])


def npu_grouped_matmul_add_(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, group_list: torch.Tensor, *,
                            transpose_x: bool = True, transpose_weight: bool = False, group_type: int = 2,
                            group_list_type: int = 0) -> torch.Tensor:
    """In place: ``y.view(E, M, N)[e] += x[rows_e]^T @ weight[rows_e]`` (fp32 accumulation), rows from the
    int64 ``group_list`` (cumsum; counts with ``group_list_type=1`` where the entry point takes it).  ``x``
    fp16/bf16 ``[tokens, M]``, ``weight`` ``[tokens, N]`` of the same dtype, ``y`` fp32.  Returns ``y``."""
    a = dict(y=y, x=x, weight=weight, group_list=group_list, transpose_x=transpose_x,
             transpose_weight=transpose_weight, group_type=group_type, group_list_type=group_list_type)
    _accumulate("npu_grouped_matmul_add_", a)
    return y


def npu_grouped_matmul_add(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, group_list: torch.Tensor, *,
                           transpose_x: bool = True, transpose_weight: bool = False, group_type: int = 2,
                           group_list_type: int = 0) -> torch.Tensor:
    """torch_npu's out-of-place spelling: writes into ``y`` as the in-place op does (op-plugin passes ``y``
    to aclnnGroupedMatmulAdd as both input and output) and returns a clone of it."""
    a = dict(y=y, x=x, weight=weight, group_list=group_list, transpose_x=transpose_x,
             transpose_weight=transpose_weight, group_type=group_type, group_list_type=group_list_type)
    _accumulate("npu_grouped_matmul_add", a)
    return y.clone()
