"""Drop-in ``mindspeed.ops``: only the ``gmm`` module (see ``ascend_moe.compat.mindspeed``)."""
from __future__ import annotations

from typing import Any

from ..._shim import missing_attribute
from . import gmm  # noqa: F401

__ascend_moe_shim__ = True
IMPLEMENTED = ("gmm",)


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "mindspeed.ops", name, IMPLEMENTED)
