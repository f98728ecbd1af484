"""A stand-in for TorchAir (``import torchair``) on the simulated npu device.

TorchAir compiles a torch.compile graph into a GE graph for the NPU.  Here
``torchair.get_npu_backend(compiler_config=...)`` returns a real torch.compile backend (``aot_eager``
by default, ``eager`` with ``ASCEND_MOE_TORCHAIR_BACKEND=eager``; inductor has no code generator for
the simulated npu device, so it is refused with that reason), so graph-mode code
really traces (Dynamo, AOTAutograd, the ops' fake kernels) and then runs the same kernels as eager
mode on the simulated device.  ``CompilerConfig`` accepts and keeps the options user code sets
(``config.debug.graph_dump.type = "pbtxt"``, ``config.experimental_config.frozen_parameter = True``,
...); they change nothing here, since no GE graph is built.  Other TorchAir names raise
NotImplementedError naming them.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from .._shim import missing_attribute
from . import configs, core, ge_concrete_graph  # noqa: F401  (torchair.configs... must resolve)
from .configs.compiler_config import CompilerConfig

__ascend_moe_shim__ = True
BACKENDS = ("aot_eager", "eager")


def get_npu_backend(*, compiler_config: Optional[CompilerConfig] = None, custom_decompositions: Any = None,
                    **kwargs: Any) -> Callable:
    """A torch.compile backend for the simulated npu (``aot_eager`` unless the environment asks for
    ``ASCEND_MOE_TORCHAIR_BACKEND=eager``)."""
    if compiler_config is not None and not isinstance(compiler_config, CompilerConfig):
        raise TypeError(f"compiler_config must be a torchair CompilerConfig, got {type(compiler_config).__name__}")
    name = os.environ.get("ASCEND_MOE_TORCHAIR_BACKEND", "aot_eager")
    if name == "inductor":
        raise ValueError("ASCEND_MOE_TORCHAIR_BACKEND=inductor: torch's inductor has no code generator for the "
                         "simulated npu device (it fails with KeyError 'npu'); use aot_eager (the default) or eager")
    if name not in BACKENDS:
        raise ValueError(f"ASCEND_MOE_TORCHAIR_BACKEND must be one of {BACKENDS}, got {name!r}")
    from torch._dynamo.backends.registry import lookup_backend
    backend = lookup_backend(name)

    def npu_backend(gm: Any, example_inputs: Any, **kw: Any) -> Any:
        return backend(gm, example_inputs, **kw)

    npu_backend.compiler_config = compiler_config or CompilerConfig()
    npu_backend.torch_backend = name
    return npu_backend


def get_compiler(compiler_config: Optional[CompilerConfig] = None) -> Callable:
    """The compiler torchair would hand to AOTAutograd; here the graph module itself runs."""
    def compiler(gm: Any, example_inputs: Any) -> Any:
        return gm.forward
    return compiler


IMPLEMENTED = ("CompilerConfig", "get_npu_backend", "get_compiler", "configs", "core", "ge_concrete_graph")
__all__ = list(IMPLEMENTED)


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "torchair", name, IMPLEMENTED)
