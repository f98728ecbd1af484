"""Shared plumbing of the torch-facing ops: torch <-> NumPy without needless copies."""
from __future__ import annotations

from typing import Optional

import ml_dtypes
import numpy as np
import torch


_TORCH_OF_NUMPY = {
    np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64, np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int16): torch.int16, np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}
# dtypes NumPy lacks natively travel as same-width integers and are re-viewed (no copy).
_VIEWED = {
    torch.bfloat16: (torch.int16, np.dtype(ml_dtypes.bfloat16)),
    torch.float8_e4m3fn: (torch.uint8, np.dtype(ml_dtypes.float8_e4m3fn)),
    torch.float8_e5m2: (torch.uint8, np.dtype(ml_dtypes.float8_e5m2)),
    torch.uint64: (torch.int64, np.dtype(np.uint64)),
    torch.uint32: (torch.int32, np.dtype(np.uint32)),
}
_TORCH_OF_VIEWED = {npdt: (tdt, carrier) for tdt, (carrier, npdt) in _VIEWED.items()}


def to_numpy(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """A NumPy view of a CPU tensor (strides kept, no copy); bfloat16/float8 via ml_dtypes."""
    if t is None:
        return None
    t = getattr(t, "_inner", t).detach()  # a FormattedTensor's values
    if not t.is_cpu:  # (not t.device: a torch.device per call, ~15 us when the caches are cold)
        raise ValueError(f"to_numpy needs a CPU tensor, got one on {t.device}")
    if t.dtype in _VIEWED:
        carrier, npdt = _VIEWED[t.dtype]
        return t.view(carrier).numpy().view(npdt)
    return t.numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing ``a``'s memory when possible (bfloat16/float8 via a same-width view)."""
    a = np.asarray(a)
    if a.dtype in _TORCH_OF_VIEWED:
        tdt, carrier = _TORCH_OF_VIEWED[a.dtype]
        carrier_np = {torch.int16: np.int16, torch.uint8: np.uint8, torch.int64: np.int64,
                      torch.int32: np.int32}[carrier]
        return torch.from_numpy(np.ascontiguousarray(a).view(carrier_np)).view(tdt)
    if a.dtype not in _TORCH_OF_NUMPY:
        raise TypeError(f"no torch dtype for NumPy dtype {a.dtype}")
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)
