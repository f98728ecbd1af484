"""Widened copies of weights kept while the source tensor is unchanged, within a memory budget.

The float GEMM reference path widens each fp16/bf16 weight view to fp32 before BLAS.  Without a
cache that happens again for every group that uses the view and for every call: ``check --run``
shares one weight across all experts (a stride-0 view), and a training loop calls the same weight
every step.  An entry is keyed by the source storage (held by a weak reference, so an entry never
outlives its tensor nor matches a new tensor at a reused address), the storage's version counter
(bumped by every in-place write to the tensor or any view of it), and the view's byte offset, shape,
strides and dtypes.  A transposed view shares the entry of its untransposed form.  The copy has the
memory layout the per-call scratch would have had (C, or F for a transposed view), so BLAS sees the
same operands and results are bit-identical with and without the cache.

Budget: ``ASCEND_MOE_WEIGHT_CACHE_MB`` (default 512; 0 disables); least recently used entries go
first, and a single copy larger than the budget is never kept.

Writes that move no version counter: ``param.data.copy_(new)`` (``.data`` is a new tensor with a counter
of its own: weight loaders and distributed optimizers write parameters this way), writes through
``.numpy()``.  So by default an entry also records an XXH3-128 digest of the bytes its source tensor
spans, and is used only while the digest is unchanged.  A call digests a weight at most once
(:class:`Source`), at memory speed (about the cost of the bf16 subnormal guard's scan of the same
bytes, which a kept fact then saves), and only when the weight is met again at a version, so packed
weights and kept facts pay for it and a weight changed before every call never pays it.
``ASCEND_MOE_WEIGHT_CACHE_CHECK=version`` trusts the version counter alone, for code that writes its
weights only through torch in-place ops on them.
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
import xxhash

DEFAULT_BUDGET_MB = 512


def megabytes_from_env(name: str, default_bytes: int, what: str) -> int:
    """Bytes of a budget set in megabytes by environment variable ``name`` (``default_bytes`` when unset; 0
    disables ``what``); ValueError naming the variable for anything but a finite number >= 0."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default_bytes
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of megabytes (0 disables {what}), got {raw!r}") from None
    if not (math.isfinite(mb) and mb >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (0 disables {what}), got {raw!r}")
    return int(mb * (1 << 20))


def budget_bytes() -> int:
    return megabytes_from_env("ASCEND_MOE_WEIGHT_CACHE_MB", DEFAULT_BUDGET_MB << 20, "the weight cache")


def check_content() -> bool:
    raw = os.environ.get("ASCEND_MOE_WEIGHT_CACHE_CHECK", "").strip() or "content"
    if raw not in ("content", "version"):
        raise ValueError(f"ASCEND_MOE_WEIGHT_CACHE_CHECK must be 'content' (a kept copy is used while the version "
                         f"counter and an XXH3-128 digest of its source tensor's bytes are unchanged; the default) "
                         f"or 'version' (the version counter alone), got {raw!r}")
    return raw == "content"


def tensor_span(t: torch.Tensor) -> Tuple[int, int]:
    """[lo, hi) of the bytes CPU tensor ``t`` spans (every byte between its first and last element)."""
    lo = hi = t.data_ptr()
    if t.numel() == 0:
        return lo, lo
    item = t.element_size()
    for n, step in zip(t.shape, t.stride()):
        if step < 0:
            lo += (n - 1) * step * item
        else:
            hi += (n - 1) * step * item
    return lo, hi + item


def content_digest(lo: int, hi: int) -> bytes:
    """XXH3-128 of the bytes in [lo, hi) (memory-speed; 128 bits: no accidental match in practice)."""
    return xxhash.xxh3_128_digest((ctypes.c_char * (hi - lo)).from_address(lo)) if hi > lo else b""


class Source:
    """One weight tensor of a call: the bytes it spans (its arrays lie there), its version counter, and
    under the content check its digest, taken at most once per call and only when needed: to verify an
    entry made at the same version, or to keep an entry for a weight met again at the same version.  A
    weight whose version moves on every call (a training step's forward) is never digested."""

    __slots__ = ("lo", "hi", "tensor", "version", "_digest", "_content")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.lo, self.hi = tensor_span(tensor)
        self.tensor = tensor
        self.version = tensor._version
        self._digest: Optional[bytes] = None
        self._content = check_content()

    def digested(self) -> bool:
        return self._digest is not None

    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = content_digest(self.lo, self.hi)
        return self._digest

    def holds(self, version: int, digest: Optional[bytes]) -> bool:
        """Whether an entry made at ``(version, digest)`` is still valid for this call's tensor (an entry
        kept without a digest under the content check cannot be verified: it is not)."""
        if version != self.version:
            return False
        return not self._content or (digest is not None and digest == self.digest())

    def digest_to_keep(self, met_before: bool) -> Optional[bytes]:
        """The digest a new entry records: None under the version check; under the content check the
        digest when this weight was met before at this version (it is being reused) or is already
        digested this call, else None (an entry that will not verify, made without a digest pass)."""
        if not self._content:
            return None
        return self.digest() if met_before or self.digested() else None


def _source_of(sources: Sequence[Source], a: np.ndarray) -> Optional[Source]:
    ptr = a.__array_interface__["data"][0]
    return next((src for src in sources if src.lo <= ptr < src.hi), None)


class WeightCache:
    """LRU maps (storage, view, dtype) -> (source storage, version, digest or None, widened copy / fact / packed form)."""

    def __init__(self) -> None:
        self._entries: "OrderedDict[tuple, Tuple[Any, np.ndarray]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.conversions = 0  # number of widenings done (for tests and benchmarks)
        self.hits = 0
        self._facts: "OrderedDict[tuple, Tuple[Any, int, Any]]" = OrderedDict()
        self._fact_bytes: dict = {}
        self.facts_computed = 0

    def fact(self, sources: Sequence[Source], a: np.ndarray, name: str, compute, cheap: bool = False) -> Any:
        """``compute()`` for array ``a`` (e.g. the logical values of an NZ weight), kept while the source
        tensor ``a`` lies in is unchanged; computed afresh for arrays outside every source.  ``cheap``: a
        fact costing about a digest pass (the flush guard's scan) is kept with a digest only from the
        weight's second use at a version, so a weight changed before every call pays the scan alone."""
        src = _source_of(sources, a)
        if src is None:
            return compute()
        storage = src.tensor.untyped_storage()
        key = (name, storage.data_ptr(), a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
        with self._lock:
            hit = self._facts.get(key)
        met_before = hit is not None and hit[0]() is storage and hit[1] == src.version
        if met_before and src.holds(hit[1], hit[2]):
            with self._lock:
                if key in self._facts:
                    self._facts.move_to_end(key)
            return hit[3]
        value = compute()
        self.facts_computed += 1
        arrays = [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, np.ndarray)]
        owned = [v for v in arrays if not np.shares_memory(v, a)]
        size = sum(v.nbytes for v in owned)
        for v in owned:
            v.flags.writeable = False  # shared by later calls: never written in place
        if size > budget_bytes():
            return value  # a converted copy larger than the whole budget is not kept
        with self._lock:
            if key in self._facts:
                self._drop_fact(key)
            self._facts[key] = (weakref.ref(storage), src.version, src.digest_to_keep(met_before or not cheap),
                                value)
            self._fact_bytes[key] = size
            self._bytes += size
            while len(self._facts) > 4096:
                self._drop_fact(next(iter(self._facts)))
            self._evict(budget_bytes())
        return value

    def packed(self, sources: Sequence[Source], a: np.ndarray, compute) -> Optional[Any]:
        """``compute()`` (a weight view's packed GEMM form) kept while the source tensor is unchanged,
        made only on the view's second use at the same version: packing costs several plain GEMMs,
        so a weight used once per version (a training step's forward, its backward's transposed
        view) never pays it, and a weight used again unchanged (inference, micro-batches) pays it
        once.  None: use the plain path this time (first use, not a known weight, no room left in the
        budget: packed weights never evict each other)."""
        limit = budget_bytes()
        if limit <= 0:
            return None
        src = _source_of(sources, a)
        if src is None or (src._content and not src.digested() and src.hi - src.lo > limit):
            # a weight larger than the budget is only partly packed: not worth a digest pass of its own (a
            # bf16 weight's is paid for by its kept subnormal-guard fact, so it is packed in part)
            return None
        storage = src.tensor.untyped_storage()
        key = ("packed", storage.data_ptr(), a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
        with self._lock:
            hit = self._facts.get(key)
        same_version = hit is not None and hit[0]() is storage and hit[1] == src.version
        if same_version and hit[3] is not None and src.holds(hit[1], hit[2]):
            with self._lock:
                if key in self._facts:
                    self._facts.move_to_end(key)
                self.hits += 1
            return hit[3]
        # met before unchanged: a use recorded at this version (and, when it was digested, with these bytes);
        # a packed form whose bytes changed under it counts as a first use, so a weight rewritten through
        # .data on every step is never repacked on every step
        met_before = same_version and hit[3] is None and (
            not src._content or hit[2] is None or hit[2] == src.digest())
        size = a.size * a.itemsize
        with self._lock:
            self._evict(limit)  # entries of tensors that are gone
            # no room: the plain path, instead of evicting another packed weight that the next call
            # needs again (groups cycling through a budget smaller than their weights would repack
            # every weight on every call)
            full = self._bytes + size > limit
            if not met_before or full:   # remember the use (no bytes held) for the next call
                if not met_before:
                    if key in self._facts:
                        self._drop_fact(key)
                    self._facts[key] = (weakref.ref(storage), src.version,
                                        src.digest_to_keep(False), None)
                    self._fact_bytes[key] = 0
                    while len(self._facts) > 4096:
                        self._drop_fact(next(iter(self._facts)))
                return None
        # met before at this version: packed now, from the current bytes, with their digest
        digest = src.digest_to_keep(True)
        value = compute()
        with self._lock:
            self.conversions += 1
            if key in self._facts:
                self._drop_fact(key)
            self._facts[key] = (weakref.ref(storage), src.version, digest, value)
            self._fact_bytes[key] = size
            self._bytes += size
            self._evict(limit)
        return value

    def _drop_fact(self, key) -> None:
        self._facts.pop(key)
        self._bytes -= self._fact_bytes.pop(key, 0)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._facts.clear()
            self._fact_bytes.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def widen(self, sources: Sequence[Source], a: np.ndarray, dtype) -> Optional[np.ndarray]:
        """The exact widening of view ``a`` to ``dtype`` if ``a`` lies in one of the call's weight
        ``sources`` (else None: not a known weight)."""
        limit = budget_bytes()
        if limit <= 0 or a.ndim != 2:
            return None
        src = _source_of(sources, a)
        if src is None:
            return None
        transposed = abs(a.strides[0]) < abs(a.strides[1])
        view = a.T if transposed else a
        storage = src.tensor.untyped_storage()
        key = (storage.data_ptr(), a.__array_interface__["data"][0], view.shape, view.strides, a.dtype.str,
               np.dtype(dtype).str)
        with self._lock:
            hit = self._entries.get(key)
        met_before = hit is not None and hit[0]() is storage and hit[1] == src.version
        if met_before and src.holds(hit[1], hit[2]):
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                self.hits += 1
            arr = hit[3]
            return arr.T if transposed else arr
        size = view.size * np.dtype(dtype).itemsize
        if size > limit:
            return None
        from .impls import fast_copy_cast
        arr = np.empty(view.shape, dtype=dtype)
        fast_copy_cast(arr, view)
        with self._lock:
            self.conversions += 1
            if key in self._entries:
                self._drop(key)
            # widening costs more than a digest pass: kept verifiable from the first use
            self._entries[key] = (weakref.ref(storage), src.version, src.digest_to_keep(True), arr)
            self._bytes += arr.nbytes
            self._evict(limit)
        return arr.T if transposed else arr

    def _drop(self, key) -> None:
        arr = self._entries.pop(key)[3]
        self._bytes -= arr.nbytes

    def _evict(self, limit: int) -> None:
        for key in [k for k, entry in self._entries.items() if entry[0]() is None]:
            self._drop(key)  # the source tensor is gone
        for key in [k for k, entry in self._facts.items() if entry[0]() is None]:
            self._drop_fact(key)
        while self._bytes > limit and (self._entries or self._fact_bytes):
            if self._entries:
                self._drop(next(iter(self._entries)))
            else:
                self._drop_fact(next(k for k in self._facts if self._fact_bytes.get(k)))


CACHE = WeightCache()


def source_ranges(tensors: Sequence[Optional[torch.Tensor]]) -> List[Source]:
    """The CPU tensors among ``tensors`` (the weights whose converted copies may be kept) as
    :class:`Source` s of one call."""
    return [Source(t) for t in tensors if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
