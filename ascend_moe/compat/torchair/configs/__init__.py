"""``torchair.configs`` of the TorchAir stand-in."""
from . import compiler_config  # noqa: F401

__ascend_moe_shim__ = True
