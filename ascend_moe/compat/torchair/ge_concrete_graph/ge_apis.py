"""``torchair.ge_concrete_graph.ge_apis`` of the TorchAir stand-in.

Importable, since user code imports it; the GE operator builders it would hold raise
NotImplementedError naming them (graph-mode code here compiles through torch.compile instead).
"""
from typing import Any

from ..._shim import missing_attribute

__ascend_moe_shim__ = True


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "torchair.ge_concrete_graph.ge_apis", name, ())
