"""Drop-in ``mindspeed.ops.gmm``: ``npu_gmm`` (cumulative group_list) and ``npu_gmm_v2`` (group
sizes), MindSpeed's argument names and defaults, forward by the simulator after the checker,
backward by the registered autograd formulas of ``torch.ops.ascend_moe.npu_gmm*``."""
from __future__ import annotations

from typing import Any

from ..._shim import missing_attribute

__ascend_moe_shim__ = True

try:  # the ops whose declaration names MindSpeed as a drop-in (npu_gmm, npu_gmm_v2)
    from .... import ops as _ops
    from ....opdecl import all_decls
    IMPLEMENTED = tuple(d.name for d in all_decls() if "mindspeed" in d.drop_in and hasattr(_ops, d.name))
    globals().update({_name: getattr(_ops, _name) for _name in IMPLEMENTED})
except ImportError:  # no torch: the names stay unimplemented
    IMPLEMENTED = ()
__all__ = list(IMPLEMENTED)


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "mindspeed.ops.gmm", name, IMPLEMENTED)
