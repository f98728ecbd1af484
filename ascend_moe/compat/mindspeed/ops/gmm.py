"""Drop-in ``mindspeed.ops.gmm``: ``npu_gmm`` (cumulative group_list) and ``npu_gmm_v2`` (group
sizes), MindSpeed's argument names and defaults, forward by the simulator after the checker,
backward by the registered autograd formulas of ``torch.ops.ascend_moe.npu_gmm*``."""
from __future__ import annotations

from typing import Any

from ..._shim import missing_attribute

__ascend_moe_shim__ = True

try:
    from ....ops import npu_gmm, npu_gmm_v2  # noqa: F401
    IMPLEMENTED = ("npu_gmm", "npu_gmm_v2")
except ImportError:  # the gmm family is missing from this build: both names stay unimplemented
    IMPLEMENTED = ()
__all__ = list(IMPLEMENTED)


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "mindspeed.ops.gmm", name, IMPLEMENTED)
