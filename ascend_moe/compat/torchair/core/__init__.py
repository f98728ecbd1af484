"""``torchair.core`` of the TorchAir stand-in."""
from . import utils  # noqa: F401

__ascend_moe_shim__ = True
