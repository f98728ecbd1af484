"""Which backend computes a call: the NumPy simulator (``sim``) or CANN's aclnn (``aclnn``).

Policy (design.md, "Backend selection"):

* the choice comes from the ``backend=`` argument of a public op, else :func:`use_backend` /
  :func:`set_backend`, else ``ASCEND_MOE_BACKEND``, else ``auto``;
* ``auto``: tensors on the NPU go to aclnn, CPU tensors to the simulator;
* an explicit choice is strict: if it cannot be served a :class:`BackendError` says why; nothing is
  ever substituted, and tensors that live on an NPU are never computed on the CPU;
* ``aclnn`` with CPU tensors is accepted only by the fake CANN runtime used in the tests (its
  libascendcl exports ``ascend_moe_fake_runtime``); a real CANN refuses.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterable, Iterator, Optional

BACKENDS = ("auto", "sim", "aclnn")
NPU_DEVICE_TYPES = ("npu", "privateuseone")


class BackendError(RuntimeError):
    """The requested backend cannot serve this call (the message says why)."""


_context_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("ascend_moe_backend", default=None)
_process_backend: Optional[str] = None


def _valid(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Select the backend for this process (None restores the environment / ``auto``)."""
    global _process_backend
    _process_backend = None if name is None else _valid(name, "backend")


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Context manager selecting the backend for the calls inside it; None keeps the current choice
    (so the ops' ``backend=None`` argument needs no special case)."""
    if name is None:
        yield
        return
    token = _context_backend.set(_valid(name, "backend"))
    try:
        yield
    finally:
        _context_backend.reset(token)


def requested_backend(backend: Optional[str] = None) -> str:
    """The requested backend name after the precedence argument > context > process > env > auto."""
    if backend is not None:
        return _valid(backend, "backend argument")
    for name, where in ((_context_backend.get(), "use_backend()"), (_process_backend, "set_backend()"),
                        (os.environ.get("ASCEND_MOE_BACKEND") or None, "ASCEND_MOE_BACKEND")):
        if name:
            return _valid(name, where)
    return "auto"


def _device_types(tensors: Iterable[Any]) -> set:
    types = set()
    for t in tensors:
        if isinstance(t, (list, tuple)):
            types |= _device_types(t)
        elif hasattr(t, "device") and hasattr(getattr(t, "device"), "type"):
            types.add(t.device.type)
    return types


def select_backend(op: str, tensors: Iterable[Any], backend: Optional[str] = None) -> str:
    """``"sim"`` or ``"aclnn"`` for a call whose tensor arguments are ``tensors``; raises
    :class:`BackendError` when the request cannot be honoured."""
    req = requested_backend(backend)
    devices = _device_types(tensors)
    on_npu = bool(devices & set(NPU_DEVICE_TYPES))
    if on_npu and devices - set(NPU_DEVICE_TYPES):
        raise BackendError(f"{op}: tensors are on several devices ({sorted(devices)}); move them all to "
                           "the NPU (or all to the CPU for the simulator)")
    if on_npu:
        if req == "sim":
            raise BackendError(f"{op}: backend 'sim' was requested but the tensors live on the NPU; the "
                               "simulator never computes NPU tensors. Move them to the CPU with .cpu(), "
                               "or use backend 'auto'/'aclnn'")
        _require_aclnn(op)
        return "aclnn"
    if req == "aclnn":
        from .aclnn_status import fake_runtime_loaded
        if fake_runtime_loaded():
            _require_aclnn(op)
            return "aclnn"
        raise BackendError(f"{op}: backend 'aclnn' was requested but the tensors are on "
                           f"{sorted(devices) or ['cpu']}; aclnn computes NPU tensors only. Move them to "
                           "the NPU, or use backend 'sim' for the CPU simulator")
    return "sim"


def _require_aclnn(op: str) -> None:
    from .aclnn_status import aclnn_unavailable_reason
    reason = aclnn_unavailable_reason(op)
    if reason:
        raise BackendError(f"{op}: the aclnn hardware path is unavailable: {reason}")


# ------------------------------------------------------------------------------------------------
# the PrivateUse1 device: real NPU (aclnn) or the simulated host-memory device
# ------------------------------------------------------------------------------------------------

_privateuse1_simulated = False


def set_privateuse1_simulated(flag: bool) -> None:
    """Declare whether PrivateUse1 tensors live in host memory on a simulated device (True: their
    kernels run checker + simulator on :func:`host_view` of the tensors) or on a real NPU (False, the
    default: checker + aclnn)."""
    global _privateuse1_simulated
    _privateuse1_simulated = bool(flag)


def privateuse1_is_simulated() -> bool:
    """The one switch the PrivateUse1 kernels read (see :func:`set_privateuse1_simulated`)."""
    return _privateuse1_simulated


def _cpu_alias(t: Any) -> Any:
    """A CPU tensor sharing ``t``'s memory: ``t`` itself on the CPU, ``t.cpu()`` for a simulated
    device whose to-CPU copy is zero-copy (the device module may replace :data:`host_view`)."""
    if t.device.type == "cpu":
        return t
    return t.cpu()


# ``host_view(t)``: the CPU alias through which the simulator reads and writes a PrivateUse1 tensor of
# the simulated device.  One function, so the device implementation can replace it.
host_view = _cpu_alias


def set_host_view(fn: Any) -> None:
    """Install the device's zero-copy ``tensor -> CPU alias`` function used by the simulated path."""
    global host_view
    host_view = fn
