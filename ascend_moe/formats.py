"""Storage formats of tensors: one API (:func:`get_format` / :func:`set_format`) over three carriers.

On an NPU, ``torch_npu.npu_format_cast(w, 29)`` changes a weight's physical layout to FRACTAL_NZ
while its logical shape stays the same; the format is part of the storage description.  Here:

* a CPU (or meta) tensor returned by ``npu_format_cast`` is an
  :class:`ascend_moe.formatted.FormattedTensor`, which carries the format itself (attribute
  ``_storage_format``) through clone, views, ``nn.Parameter``, fake tensors, compiled graphs and opcheck;
* a device type can keep formats itself (:func:`register_device_formats`; the simulated ``npu`` keeps
  them as storage metadata, as torch_npu does);
* anything else (plain tensors tagged with :func:`set_format`, NumPy arrays, and the plain Parameter of
  ``param.data = npu_format_cast(param.data, 29)``) is recorded here, keyed by the object (entries
  vanish when it is freed) and, for torch tensors, by the storage with its view (shape, strides,
  offset, dtype), so a new Python tensor over the same storage and view stays NZ.  torch keeps one
  Python storage object per storage, alive as long as any tensor uses it, so the entry lives exactly
  that long.  A fake tensor that torch.compile made from such a plain tensor (a parameter or an input of
  the compiled code) finds the record through the tensor it was made from.

The simulator always computes from the logical values; the format decides which rules apply and
which aclnn entry point the hardware path would choose.  This module imports no torch.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Optional, Tuple

ACL_FORMAT_ND = 2
ACL_FORMAT_FRACTAL_NZ = 29
# CANN's aclFormat ids (acl_base.h) that torch_npu's npu_format_cast takes
FORMAT_NAMES = {0: "NCHW", 1: "NHWC", ACL_FORMAT_ND: "ND", 3: "NC1HWC0", 4: "FRACTAL_Z", 12: "NC1HWC0_C04",
                16: "HWCN", 27: "NDHWC", ACL_FORMAT_FRACTAL_NZ: "FRACTAL_NZ", 30: "NCDHW", 32: "NDC1HWC0",
                33: "FRACTAL_Z_3D", 35: "NC", 47: "NCL", 50: "FRACTAL_NZ_C0_16", 51: "FRACTAL_NZ_C0_32"}
FORMAT_IDS = {name: fid for fid, name in FORMAT_NAMES.items()}
# torch_npu FormatHelper::IsBaseFormatType: a cast between these only re-tags (no data movement)
BASE_FORMATS = frozenset({0, 1, ACL_FORMAT_ND, 30})

def is_torch_tensor(x: Any) -> bool:
    """A torch tensor, subclasses (FormattedTensor, Parameter, fake tensors) included, told without
    importing torch."""
    return hasattr(x, "untyped_storage") and any(c.__module__.startswith("torch") for c in type(x).__mro__[:-1])


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
    if getattr(tensor, "is_cpu", False) is True:  # (a torch.device made per call cost ~15 us with cold caches)
        return _DEVICE_FORMATS.get("cpu")
    device = getattr(tensor, "device", None)
    return _DEVICE_FORMATS.get(getattr(device, "type", None))


class _TensorRecord:
    """A value recorded per tensor: keyed by the object, and for torch tensors also by the storage
    with its view (see the module docstring); entries vanish with the object / storage."""

    def __init__(self) -> None:
        self._by_object: Dict[int, Any] = {}
        self._by_storage: Dict[int, Tuple[Any, Tuple]] = {}  # id(untyped storage) -> (value, view)

    def set(self, tensor: Any, value: Any) -> None:
        key = id(tensor)
        if key not in self._by_object:
            try:
                weakref.finalize(tensor, self._by_object.pop, key, None)
            except TypeError:  # not weak-referenceable: nothing can be recorded
                return
        self._by_object[key] = value
        view = _torch_view(tensor)
        if view is not None:
            storage, sig = view
            skey = id(storage)
            if skey not in self._by_storage:
                try:
                    weakref.finalize(storage, self._by_storage.pop, skey, None)
                except TypeError:
                    return
            self._by_storage[skey] = (value, sig)

    def get(self, tensor: Any, default: Any = None) -> Any:
        key = id(tensor)
        if key in self._by_object:
            return self._by_object[key]
        if not self._by_storage:  # nothing recorded by storage: no view or fake lookup can find a record
            return default
        view = _torch_view(tensor)
        if view is not None:
            storage, sig = view
            entry = self._by_storage.get(id(storage))
            if entry is not None and entry[1] == sig:  # the same view of the same storage
                return entry[0]
        if self._by_storage:
            real = _real_of_fake(tensor)
            if real is not None:
                return self.get(real, default)
        return default


def _real_of_fake(tensor: Any) -> Any:
    """The real tensor a fake tensor was made from, while its fake mode lives (torch.compile makes one fake
    per parameter and input before tracing), so a plain tensor's record holds in the traced code too; None for
    anything else.  A fake made later (a view taken inside the traced code) has no real counterpart."""
    converter = getattr(getattr(tensor, "fake_mode", None), "fake_tensor_converter", None)
    if converter is None:
        return None
    try:
        made = [tid for tid, fake in list(converter.tensor_memo.items()) if fake is tensor]
        if not made:  # an alias made by the tracer (detach, a lifted parameter): the same fake storage and view
            view = _torch_view(tensor)
            made = [tid for tid, fake in list(converter.tensor_memo.items())
                    if view is not None and _torch_view(fake) == view]
        if not made:
            return None
        real = next((t for t, tid in list(converter.meta_converter.describer.lookup_tensor.items())
                     if tid == made[0]), None)
    except Exception:  # the internals of another torch release: no record, as before tracing existed
        return None
    return None if real is None or getattr(real, "fake_mode", None) is not None else real


_format_record = _TensorRecord()
_formats = _format_record._by_object            # id(tensor) -> format
_storage_formats = _format_record._by_storage   # id(untyped storage) -> (format, view signature)
# physical NZ storage made by npu_format_cast(..., storage=True): the logical shape it holds
_nz_storage_logical_shape = _TensorRecord()


def set_format(tensor: Any, fmt: str) -> None:
    """Record that ``tensor`` is held in ``fmt`` (``"ND"`` or ``"FRACTAL_NZ"``)."""
    if isinstance(getattr(tensor, "_storage_format", None), str):  # a tensor that carries its format
        tensor._storage_format = fmt
        return
    hooks = _device_hooks(tensor)
    if hooks is not None:
        hooks[1](tensor, fmt)
        return
    _format_record.set(tensor, fmt)


def get_format(tensor: Any) -> str:
    """The recorded format of ``tensor``; ``"ND"`` when none was recorded."""
    fmt = getattr(tensor, "format", None)
    if isinstance(fmt, str):  # TensorSpec and similar carry it themselves
        return fmt
    fmt = getattr(tensor, "_storage_format", None)
    if isinstance(fmt, str):  # ascend_moe.formatted.FormattedTensor
        return fmt
    hooks = _device_hooks(tensor)
    if hooks is not None:
        return hooks[0](tensor)
    return _format_record.get(tensor, "ND")


def set_nz_storage(tensor: Any, logical_shape: Optional[Tuple[int, ...]]) -> None:
    """Record whether ``tensor`` is the physical FRACTAL_NZ storage of a logical weight (its shape),
    or (None) a tensor tagged NZ whose shape is the logical one."""
    if isinstance(getattr(tensor, "_storage_format", None), str):
        tensor._nz_storage = None if logical_shape is None else tuple(int(s) for s in logical_shape)
        return
    _nz_storage_logical_shape.set(tensor, None if logical_shape is None else tuple(int(s) for s in logical_shape))


def nz_storage_record(tensor: Any) -> Any:
    """The logical shape recorded by :func:`set_nz_storage`, None for a tag-only NZ tensor, or the
    string ``"unknown"`` when nothing was recorded."""
    if isinstance(getattr(tensor, "_storage_format", None), str):
        return tensor._nz_storage
    return _nz_storage_logical_shape.get(tensor, "unknown")


def is_nz(tensor: Any) -> bool:
    return get_format(tensor).startswith("FRACTAL_NZ")
