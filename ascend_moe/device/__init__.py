"""The simulated ``npu`` device: torch_npu user code runs unchanged on a CPU machine.

:func:`activate` registers a PrivateUse1 backend named ``npu`` whose memory is host memory (a C++
extension compiled once against the installed torch, see :mod:`ascend_moe.device._build`): tensors
really live on ``npu:N``, every aten op works on them (the CPU kernels run on the same memory, no
copy), ``torch.npu`` answers as torch_npu's module does, and the ascend-moe ops run the checker and
the simulator on that memory and return ``npu`` tensors.  It never activates when a real torch_npu is
importable (the real device is then the only ``npu``), and nothing here is loaded by ``import
torch`` or ``import ascend_moe``.

What is not simulated: collective communication (HCCL), graph capture, profiling, asynchronous
execution (kernels finish before the call returns).
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Optional

__all__ = ["activate", "is_active", "host_view", "device_view", "simulated_product", "RealNpuPresent",
           "DEFAULT_DEVICE_COUNT"]

DEFAULT_DEVICE_COUNT = 8

_state = {"active": False, "product": None, "methods": False}


class RealNpuPresent(RuntimeError):
    """A real torch_npu is importable here: the simulated device stays off."""


def real_torch_npu_reason() -> Optional[str]:
    """Where the real torch_npu comes from when it is importable, else None."""
    from ..compat import is_shim
    import sys
    present = sys.modules.get("torch_npu")
    if present is not None:
        return None if is_shim(present) else f"torch_npu is already imported from {getattr(present, '__file__', present)}"
    try:
        spec = importlib.util.find_spec("torch_npu")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    try:
        importlib.import_module("torch_npu")
    except Exception:  # installed but unusable here (no CANN libraries): not a real device
        for key in [k for k in sys.modules if k == "torch_npu" or k.startswith("torch_npu.")]:
            del sys.modules[key]
        return None
    return f"a real torch_npu is importable ({spec.origin})"


def is_active() -> bool:
    """True once :func:`activate` has put the simulated device in place in this process."""
    return _state["active"]


def simulated_product() -> str:
    """The product whose SoC the simulated device reports (the checker's target when unset)."""
    from ..products import resolve_target
    return _state["product"] or resolve_target(detect=False).product


def activate(devices: Optional[int] = None, product: Optional[str] = None) -> None:
    """Put the simulated npu device in place (idempotent; ``devices`` and ``product`` may change later).

    Raises :class:`RealNpuPresent` when a real torch_npu is importable.
    """
    import torch

    reason = real_torch_npu_reason()
    if reason:
        raise RealNpuPresent(f"ascend-moe will not simulate an npu device: {reason}; the real device is used")
    from ..products import normalize_product
    from ._build import load_extension

    ext = load_extension()
    if devices is not None:
        if not isinstance(devices, int) or devices < 1:
            raise ValueError(f"devices must be a positive int (the simulated npu count), got {devices!r}")
        ext.set_device_count(devices)
    if product is not None:
        _state["product"] = normalize_product(product)
    if _state["active"]:
        return
    name = torch._C._get_privateuse1_backend_name()
    if name == "privateuseone":
        torch.utils.rename_privateuse1_backend("npu")
    elif name != "npu":
        raise RuntimeError(f"ascend-moe cannot simulate npu: torch's PrivateUse1 backend is already named {name!r}")
    from . import npu as npu_module
    if getattr(torch, "npu", None) is not npu_module:
        torch._register_device_module("npu", npu_module)
    if not _state["methods"]:
        torch.utils.generate_methods_for_privateuse1_backend(
            for_tensor=True, for_module=True, for_packed_sequence=True, for_storage=True)
        _state["methods"] = True
    from .. import backends, formats
    formats.register_device_formats("npu", _get_format, _set_format)
    backends.set_host_view(host_view)  # zero-copy: the ops' simulated kernels read and write npu memory
    backends.set_privateuse1_simulated(True)
    _state["active"] = True


def host_view(tensor: Any) -> Any:
    """A CPU tensor over the same memory as the npu ``tensor`` (no copy; it keeps that memory alive)."""
    from ._build import load_extension
    return load_extension().host_view(tensor)


def device_view(tensor: Any, index: int = 0) -> Any:
    """An ``npu:index`` tensor over the same memory as the CPU ``tensor`` (no copy; keeps it alive)."""
    from ._build import load_extension
    return load_extension().device_view(tensor, index)


def _get_format(tensor: Any) -> str:
    """The format name of an npu tensor, from the aclFormat id its storage keeps (as torch_npu does)."""
    from ..formats import FORMAT_NAMES
    from ._build import load_extension
    return FORMAT_NAMES.get(int(load_extension().storage_format(tensor)), "ND")


def _set_format(tensor: Any, name: str) -> None:
    from ..formats import FORMAT_IDS
    from ._build import load_extension
    load_extension().set_storage_format(tensor, int(FORMAT_IDS[name]))
