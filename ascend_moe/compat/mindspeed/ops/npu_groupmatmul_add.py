"""Drop-in ``mindspeed.ops.npu_groupmatmul_add``: ``npu_groupmatmul_add_fp32(x, dy, grouplist, grad)``.

Accumulates each group's weight gradient ``x_g^T @ dy_g`` into the fp32 ``grad`` in place (what
MindSpeed's GroupMatmulAdd kernel does for ``gemm_fusion``), ``grouplist`` being the cumulative
group ends, computed by the simulator (CPU tensors, or the simulated npu's memory).
"""
from __future__ import annotations

from typing import Any

__ascend_moe_shim__ = True
__all__ = ["npu_groupmatmul_add_fp32"]


def npu_groupmatmul_add_fp32(x: Any, dy: Any, grouplist: Any, grad: Any) -> None:
    """``grad[g] += x[rows of g].T @ dy[rows of g]`` for every group ``g`` (``grouplist``: cumulative ends)."""
    from ....ops._gmm_torch import _grouped_matmul_add_
    _grouped_matmul_add_(x, dy, grouplist, grad)
