"""Storage formats of tensors that live on the CPU.

On an NPU, ``torch_npu.npu_format_cast(w, 29)`` changes a weight's physical layout to FRACTAL_NZ
while its logical shape stays the same.  A CPU tensor has no such field, so this module keeps the
format a tensor was cast to, keyed by the tensor object (entries vanish when the tensor is freed).
The simulator always computes from the logical values; the format decides which rules apply and
which aclnn entry point the hardware path would choose.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict

ACL_FORMAT_ND = 2
ACL_FORMAT_FRACTAL_NZ = 29
FORMAT_NAMES = {ACL_FORMAT_ND: "ND", ACL_FORMAT_FRACTAL_NZ: "FRACTAL_NZ", 50: "FRACTAL_NZ_C0_16",
                51: "FRACTAL_NZ_C0_32", 0: "NCHW", 1: "NHWC", 3: "NC1HWC0", 4: "FRACTAL_Z"}

_formats: Dict[int, str] = {}


def set_format(tensor: Any, fmt: str) -> None:
    """Record that ``tensor`` is held in ``fmt`` (``"ND"`` or ``"FRACTAL_NZ"``)."""
    key = id(tensor)
    if key not in _formats:
        try:
            weakref.finalize(tensor, _formats.pop, key, None)
        except TypeError:  # not weak-referenceable: nothing can be recorded
            return
    _formats[key] = fmt


def get_format(tensor: Any) -> str:
    """The recorded format of ``tensor``; ``"ND"`` when none was recorded."""
    fmt = getattr(tensor, "format", None)
    if isinstance(fmt, str):  # TensorSpec and similar carry it themselves
        return fmt
    return _formats.get(id(tensor), "ND")


def is_nz(tensor: Any) -> bool:
    return get_format(tensor).startswith("FRACTAL_NZ")
