"""Storage formats of tensors that live on the CPU.

On an NPU, ``torch_npu.npu_format_cast(w, 29)`` changes a weight's physical layout to FRACTAL_NZ
while its logical shape stays the same.  A CPU tensor has no such field, so this module keeps the
format a tensor was cast to, keyed by the tensor object (entries vanish when the tensor is freed).
For torch tensors the format is also keyed by the tensor's storage with its view (shape, strides,
offset, dtype), because user code re-wraps cast weights: vllm-ascend's
``param.data = npu_format_cast(param.data, 29)`` and ``nn.Parameter(npu_format_cast(w, 29))`` give
a new Python tensor over the same storage, which must stay NZ.  torch keeps one Python storage
object per storage, alive as long as any tensor uses it, so the entry lives exactly that long.
The simulator always computes from the logical values; the format decides which rules apply and
which aclnn entry point the hardware path would choose.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Optional, Tuple

ACL_FORMAT_ND = 2
ACL_FORMAT_FRACTAL_NZ = 29
FORMAT_NAMES = {ACL_FORMAT_ND: "ND", ACL_FORMAT_FRACTAL_NZ: "FRACTAL_NZ", 50: "FRACTAL_NZ_C0_16",
                51: "FRACTAL_NZ_C0_32", 0: "NCHW", 1: "NHWC", 3: "NC1HWC0", 4: "FRACTAL_Z"}

_formats: Dict[int, str] = {}
# id(untyped storage) -> (format, view signature) for torch tensors
_storage_formats: Dict[int, Tuple[str, Tuple]] = {}


def _torch_view(tensor: Any) -> Optional[Tuple[Any, Tuple]]:
    """(storage object, view signature) of a torch tensor; None for anything else."""
    storage = getattr(tensor, "untyped_storage", None)
    if storage is None or not callable(storage):
        return None
    try:
        st = tensor.untyped_storage()
        sig = (tuple(tensor.shape), tuple(tensor.stride()), int(tensor.storage_offset()), str(tensor.dtype))
    except Exception:  # fake/meta tensors without a real storage: keyed by object only
        return None
    return st, sig


# device type -> (getter(tensor) -> format name, setter(tensor, format name))
_DEVICE_FORMATS: Dict[str, Tuple[Callable[[Any], str], Callable[[Any, str], None]]] = {}


def register_device_formats(device_type: str, getter: Callable[[Any], str],
                            setter: Callable[[Any, str], None]) -> None:
    """Let tensors on ``device_type`` keep their format themselves (e.g. as device metadata that
    survives clone, views and tracing): :func:`get_format` / :func:`set_format` then call these."""
    _DEVICE_FORMATS[device_type] = (getter, setter)


def unregister_device_formats(device_type: str) -> None:
    _DEVICE_FORMATS.pop(device_type, None)


def _device_hooks(tensor: Any):
    if not _DEVICE_FORMATS:
        return None
    device = getattr(tensor, "device", None)
    return _DEVICE_FORMATS.get(getattr(device, "type", None))


def set_format(tensor: Any, fmt: str) -> None:
    """Record that ``tensor`` is held in ``fmt`` (``"ND"`` or ``"FRACTAL_NZ"``)."""
    hooks = _device_hooks(tensor)
    if hooks is not None:
        hooks[1](tensor, fmt)
        return
    key = id(tensor)
    if key not in _formats:
        try:
            weakref.finalize(tensor, _formats.pop, key, None)
        except TypeError:  # not weak-referenceable: nothing can be recorded
            return
    _formats[key] = fmt
    view = _torch_view(tensor)
    if view is not None:
        storage, sig = view
        skey = id(storage)
        if skey not in _storage_formats:
            try:
                weakref.finalize(storage, _storage_formats.pop, skey, None)
            except TypeError:
                return
        _storage_formats[skey] = (fmt, sig)


def get_format(tensor: Any) -> str:
    """The recorded format of ``tensor``; ``"ND"`` when none was recorded."""
    fmt = getattr(tensor, "format", None)
    if isinstance(fmt, str):  # TensorSpec and similar carry it themselves
        return fmt
    hooks = _device_hooks(tensor)
    if hooks is not None:
        return hooks[0](tensor)
    fmt = _formats.get(id(tensor))
    if fmt is not None:
        return fmt
    view = _torch_view(tensor)
    if view is not None:
        storage, sig = view
        entry = _storage_formats.get(id(storage))
        if entry is not None and entry[1] == sig:  # the same view of the same storage
            return entry[0]
    return "ND"


def is_nz(tensor: Any) -> bool:
    return get_format(tensor).startswith("FRACTAL_NZ")
