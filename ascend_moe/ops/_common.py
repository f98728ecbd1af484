"""Shared plumbing of the torch-facing ops: torch <-> NumPy without needless copies, and the one
path every op kernel takes (constraint check, then backend selection).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import ml_dtypes
import numpy as np
import torch

from ..backends import select_backend
from ..products import Target
from ..rules import enforce_call

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
    t = t.detach()
    if t.device.type != "cpu":
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


def _required_given(op: str, args: Dict[str, Any]) -> None:
    """A required tensor argument passed as None (torch's custom-op path lets it through) is a
    TypeError naming it, before any rule or kernel sees it."""
    from ..rules import get_op
    import inspect
    for p in get_op(op).signature.parameters.values():
        if p.default is inspect.Parameter.empty and p.name in args and args[p.name] is None:
            raise TypeError(f"{op}: argument '{p.name}' is required, got None")


def checked_backend(op: str, args: Dict[str, Any], tensors: Iterable[Any],
                    backend: Optional[str] = None) -> str:
    """The one path of every kernel: check the call's rules (all violations at once), then pick
    the backend by policy.  Returns ``"sim"`` or ``"aclnn"``."""
    _required_given(op, args)
    enforce_call(op, args)
    return select_backend(op, tensors, backend)


def check_only(op: str, args: Dict[str, Any]) -> Target:
    """The check run by fake (meta) kernels: rules only, values are not concrete there."""
    _required_given(op, args)
    return enforce_call(op, args)


# Shape rules of the ops, by op name: ``fn(args) -> [(shape, torch.dtype), ...]`` for each output,
# from the bound arguments (metadata only).  Used by the fake kernels and by the aclnn backend to
# allocate outputs; each op module registers its own.
SHAPE_RULES: Dict[str, Any] = {}


def shape_rule(op: str):
    """Decorator registering an op's shape rule in :data:`SHAPE_RULES`."""
    def deco(fn):
        SHAPE_RULES[op] = fn
        return fn
    return deco
