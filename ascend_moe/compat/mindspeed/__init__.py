"""A CPU drop-in for the part of MindSpeed that ascend-moe implements: ``mindspeed.ops.gmm``.

After :func:`ascend_moe.compat.install` (or under ``pytest -p ascend_moe.pytest_plugin``), on a
machine where the real ``mindspeed`` cannot be imported, ``from mindspeed.ops import gmm;
gmm.npu_gmm(x, weight, bias=None, group_list=..., group_type=0)`` and ``gmm.npu_gmm_v2(...)`` run
the checker and the simulator (with autograd).  Any other public name raises NotImplementedError
naming it (see ``ascend_moe.compat._shim``).
"""
from __future__ import annotations

from typing import Any

from .._shim import missing_attribute
from . import ops  # noqa: F401  (``mindspeed.ops`` must be an attribute of ``mindspeed``)

__ascend_moe_shim__ = True
IMPLEMENTED = ("ops",)


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "mindspeed", name, IMPLEMENTED)
