"""``torchair.ge_concrete_graph`` of the TorchAir stand-in (no GE graph is built here)."""
from . import ge_apis  # noqa: F401

__ascend_moe_shim__ = True
