"""Large op outputs made from memory a previous output of the same size gave back, within a budget.

A fresh buffer of tens of megabytes or more comes from the kernel as new pages, and every page is zeroed on its
first write: the weight gradient of a MoE layer (``x^T @ dy``, [E, K, N]) is such an output, made anew on every
backward, and at E = 32, K = 7168, N = 2048 in bf16 (940 MB) those page faults took 170-250 ms of a ~75 ms
product (2 cores).  Torch's CPU allocator keeps nothing; torch_npu's caching allocator keeps freed device memory
for the next allocation of its size, and this pool does the same for the simulator's large CPU outputs.

An entry is a storage the pool made and holds.  It is handed out again only while nothing else refers to it: its
storage's reference count is the pool's one (a tensor, a view, a NumPy array or a DLPack capsule of it each hold
one more), so an output in use - a gradient kept in ``.grad``, an activation saved for the backward - is never
given to a second call.  What a handed-out buffer holds before the op writes it is unspecified, as with
``torch.empty``: the ops write every element of their outputs (the "undefined" regions with their fill).

Budget: ``ASCEND_MOE_OUTPUT_POOL_MB`` (default: a quarter of the machine's physical memory, 1024 MB where that
is unknown; 0 disables) bounds the bytes of all entries, in use or not; a new output that would pass it first drops the least recently used idle entries, and is not kept when that
is not enough.  Outputs under :data:`MIN_BYTES` are not pooled (the C allocator reuses such blocks itself).  The
idle entries are memory the process keeps between calls: :func:`release` (and ``torch.npu.empty_cache()`` on the
simulated device) gives them back.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Dict, Sequence

import torch

from .weight_cache import megabytes_from_env

FALLBACK_BUDGET_MB = 1024
MIN_BYTES = 4 << 20

_use_count = torch._C._storage_Use_Count


def _idle(storage: torch.UntypedStorage) -> bool:
    """Nothing but the pool refers to ``storage`` (a tensor, view, NumPy array or capsule of it would add one)."""
    return _use_count(storage._cdata) == 1


def _default_budget() -> int:
    """A quarter of physical memory: the fp32 weight gradient at E = 32, K = 7168, N = 2048 is 1.9 GB."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (AttributeError, ValueError, OSError):
        return FALLBACK_BUDGET_MB << 20


_DEFAULT_BUDGET = _default_budget()


def budget_bytes() -> int:
    return megabytes_from_env("ASCEND_MOE_OUTPUT_POOL_MB", _DEFAULT_BUDGET, "the output pool")


class OutputPool:
    """Storages of large outputs, reused once idle (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(storage) -> storage (held, so its id stays its own), least recently handed out first
        self._entries: "OrderedDict[int, torch.UntypedStorage]" = OrderedDict()

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous CPU tensor of ``shape`` and ``dtype``, its contents unspecified (``torch.empty``)."""
        shape = tuple(int(d) for d in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < MIN_BYTES:
            return torch.empty(shape, dtype=dtype)
        budget = budget_bytes()
        with self._lock:
            storage = self._take_idle(nbytes)
            if storage is None:
                storage = self._make(nbytes, budget)
            # the tensor's reference is taken before the lock is let go: no other call can see this entry idle
            return torch.empty(0, dtype=dtype).set_(storage, 0, shape)

    def _take_idle(self, nbytes: int):
        for key, storage in self._entries.items():
            if storage.nbytes() == nbytes and _idle(storage):
                self._entries.move_to_end(key)
                return storage
        return None

    def _make(self, nbytes: int, budget: int) -> torch.UntypedStorage:
        storage = torch.UntypedStorage(nbytes)
        if nbytes > budget:
            return storage
        held = self._held()
        for key in [k for k, s in self._entries.items() if _idle(s)]:
            if held + nbytes <= budget:
                break
            held -= self._entries.pop(key).nbytes()
        if held + nbytes <= budget:
            self._entries[id(storage)] = storage
        return storage

    def _held(self) -> int:
        return sum(s.nbytes() for s in self._entries.values())

    def release(self) -> int:
        """Drop the idle entries (their memory goes back to the system); returns the bytes dropped."""
        with self._lock:
            idle = [k for k, s in self._entries.items() if _idle(s)]
            freed = sum(self._entries[k].nbytes() for k in idle)
            for k in idle:
                del self._entries[k]
        return freed

    def stats(self) -> Dict[str, int]:
        """``held``: bytes of all entries; ``idle``: of those no tensor refers to; ``entries``: their number."""
        with self._lock:
            idle = sum(s.nbytes() for s in self._entries.values() if _idle(s))
            return {"held": self._held(), "idle": idle, "entries": len(self._entries)}


POOL = OutputPool()


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """:meth:`OutputPool.empty` of the process's pool."""
    return POOL.empty(shape, dtype)


def release() -> int:
    """Give the pool's idle memory back (:meth:`OutputPool.release`)."""
    return POOL.release()
