"""NumPy twin of ``npu_grouped_matmul_finalize_routing`` (aclnnGroupedMatmulFinalizeRouting V1/V2/V3,
WeightNz, WeightNzV2 on Atlas A2/A3): quantised grouped matmul + MoE finalize/combine.

Formula (spec grouped-matmul-family 3.3; ``batch = output_bs or m``)::

    y = zeros(batch, n, fp32)
    y[off : off+bsdp] = fp32(shared_input) * shared_input_weight       # if shared_input given
    for each expert e, each row t in [s_e, t_e) (token order):          # rows >= sum(group_list) skipped
        y[row_index[t]] += dequant_row(t, e)                            # fp32 scatter-add

A8W8 (int8 NZ weight, fp32/bf16 scale [e, n], optional fp32 pertoken [m], optional bf16 bias [e, n])::

    acc = int32(x[t] @ W[e]);  d = fp32(acc) * fp32(scale[e])
    lp  = logit[t] * pertoken[t]            (lp = logit[t] without pertoken)
    v   = d * lp                            (+ logit[t] * fp32(bias[e]) when bias is given)

A8W4 (MSD; int4 weight packed in int32, ND or NZ; int64 scale [e, 1, n]; fp32 bias [e, n];
optional fp32 offset [e, 1, n])::

    hi = floor(x / 16) in [-8, 7];  lo = (x & 0xF) - 8 in [-8, 7]     (x = 16*hi + lo + 8)
    H  = fp16(int32(hi @ W[e]) * s[e]);  L = fp16(int32(lo @ W[e]) * s[e])     (fixpipe, cT = half)
    u  = 16 * fp32(H) + fp32(L);  u = u + bias[e];  u = u + fp32(rowsum(x[t])) * offset[e]  (if offset)
    v  = u * (pertoken[t] * logit[t])

Faithfulness contract:

* **exact**: the integer GEMMs (int32 accumulation), and every fp32 step above in the kernel's order
  with IEEE round-to-nearest-even, including the fp16 roundings of the A8W4 partials.
* **scatter order**: contributions are added in token order - the device's *deterministic* mode.
  In the default (non-deterministic) mode the hardware adds with fp32 atomics from many cores, so
  an output row that receives two or more contributions may differ in the last bits run to run.
* **assumptions** [I]: the int64 A8W4 scale holds fp32 bits in the low word and the fixpipe uses only
  its top 19 bits (FP19, ``numerics.decode_int64_scale``; switch with ``fp19=False`` or
  ``with ascend_moe.sim.quant_gemm.fp19_scales(False)``); the fixpipe rounds the exact product
  ``acc * s`` once to fp16, nearest-even (``quant_gemm.fixpipe_dequant_fp16``; the public goldens
  compute ``fp16(fp32(acc) * s)``, which differs only when the fp32 product lands exactly on an
  fp16 rounding midpoint).
* no undefined regions: the device zero-fills ``y`` before the scatter, so every row is defined.
  Rows of ``x`` past the group-list total contribute nothing.

Weights: A8W8 int8 as a logical ``[e, k, n]`` array tagged FRACTAL_NZ (``ascend_moe.formats``) or as
its 5-D NZ storage ``[e, n/32, k/16, 16, 32]``; A8W4 int32 ``[e, k, n/8]`` (ND or tagged NZ) or the
5-D NZ storage int32 ``[e, n/64, k/16, 16, 8]`` (vllm-ascend's int8-NZ-then-view-int32 layout).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from . import kernels as _kernels
from .numerics import decode_int64_scale, twin_arguments
from .quant_gemm import (fp19_enabled, group_bounds, grouped_int8_matmul, grouped_msd_partials, int8_bands,
                         msd_combine, weight_logical_dims, weight_values)

__all__ = ["finalize_routing_compute", "weight_layout", "WeightLayout"]

OP = "npu_grouped_matmul_finalize_routing"


# --------------------------------------------------------------------------------------------
# weight layouts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightLayout:
    """How a weight argument is held: quant scheme, NZ or not, the logical [e, k, n]."""
    quant: Optional[str]      # "a8w8" (int8), "a8w4" (int4 packed in int32), None (other dtypes)
    nz: bool                  # FRACTAL_NZ (tagged 3-D, or 5-D storage)
    storage_5d: bool          # the array is the 5-D NZ storage itself
    e: int
    k: int
    n: int


def weight_layout(shape: Sequence[int], dtype: str, fmt: str = "ND") -> Optional[WeightLayout]:
    """Layout of a weight from its metadata (``quant_gemm.weight_logical_dims``); None when the rank is
    neither 3 nor 5.  Only int8 (A8W8) and int32-packed int4 (A8W4) are quantisation schemes of this op."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 5):
        return None
    quant = {"int8": "a8w8", "int32": "a8w4"}.get(dtype)
    dims = weight_logical_dims(shape, dtype) if quant else None
    if dims is None:   # some other dtype: report the raw dims so shape rules can still speak
        e, k, n = (shape[0], shape[1], shape[2]) if len(shape) == 3 else (shape[0], shape[2] * 16, shape[1] * shape[4])
        return WeightLayout(None, len(shape) == 5 or fmt.startswith("FRACTAL_NZ"), len(shape) == 5, e, k, n)
    e, k, n, _kind, storage = dims
    return WeightLayout(quant, storage or fmt.startswith("FRACTAL_NZ"), storage, e, k, n)


# --------------------------------------------------------------------------------------------
# the op
# --------------------------------------------------------------------------------------------


def _f32(a: Any) -> Optional[np.ndarray]:
    return None if a is None else np.asarray(a).astype(np.float32)


def finalize_routing_compute(x: np.ndarray, w: np.ndarray, group_list: np.ndarray, *,
                             scale: Optional[np.ndarray] = None,
                             bias: Optional[np.ndarray] = None, offset: Optional[np.ndarray] = None,
                             pertoken_scale: Optional[np.ndarray] = None,
                             shared_input: Optional[np.ndarray] = None, logit: Optional[np.ndarray] = None,
                             row_index: Optional[np.ndarray] = None, shared_input_weight: float = 1.0,
                             shared_input_offset: int = 0, output_bs: int = 0, group_list_type: int = 1,
                             fp19: Optional[bool] = None) -> np.ndarray:
    """The unchecked computation (the torch kernel calls this after the checker).

    The weight's storage format does not change the values (a tagged NZ array holds its logical
    values; a 5-D array is converted back), so no format argument is needed here.
    """
    x = np.asarray(x, dtype=np.int8)
    m = x.shape[0]
    # logical int8 values [e, k, n] (int8 NZ storage possibly as it is: only the grouped GEMM reads it)
    weights, kind = weight_values(np.asarray(w), bands_ok=True)
    e_count, _, n = weights.shape
    batch = int(output_bs) if output_bs else m
    f32 = np.float32

    # 1. zero-init, then the shared-expert region (PreProcess, before any scatter; SyncAll).
    y = np.zeros((batch, n), dtype=f32)
    if shared_input is not None:
        si = np.asarray(shared_input)
        off = int(shared_input_offset)
        y[off:off + si.shape[0]] = si.astype(f32) * f32(shared_input_weight)

    # logit None: the host's second scene (CheckSupportScene: logit and shared_input both null) - the
    # rows are combined unweighted, i.e. with weight 1 [I: the kernel skips the logit multiply]
    logit32 = np.ones(m, dtype=f32) if logit is None else _f32(logit).reshape(-1)
    pt32 = None if pertoken_scale is None else _f32(pertoken_scale).reshape(-1)
    rows = np.asarray(row_index).astype(np.int64).reshape(-1)
    bounds = group_bounds(np.asarray(group_list).reshape(-1), group_list_type, m)

    if kind == "int4":   # A8W4 (MSD): fp16 fixpipe partials of the hi/lo halves, then the epilogue
        use_fp19 = fp19_enabled() if fp19 is None else bool(fp19)
        s = decode_int64_scale(np.asarray(scale), fp19=use_fp19).reshape(e_count, n)
        bias32 = _f32(bias).reshape(e_count, n)
        off32 = None if offset is None else _f32(offset).reshape(e_count, n)
        # a shared (stride-0) weight: all groups' partials in one pass; otherwise each group's partials
        # are made in the loop below, so only one group's [rows, n] fp16 pair is alive at a time
        chi, clo = grouped_msd_partials(x, weights, s, bounds) if weights.strides[0] == 0 else (None, None)
    else:                # A8W8: AscendDequant with the fp32 (or bf16 -> fp32) per-channel scale
        s = _f32(scale).reshape(e_count, n)
        bias32 = None if bias is None else _f32(bias).reshape(e_count, n)

    if kind != "int4":
        _a8w8_epilogue(y, x, weights, bounds, s, bias32, logit32, pt32, rows)
        return y

    for e, (start, end) in enumerate(bounds):
        if end <= start:
            continue
        lg = logit32[start:end, None]
        # each step one fp32 operation per element, in place on the group's fresh fp32 buffer (the
        # same roundings as the out-of-place expressions, without a new array per step)
        if chi is None:
            part_hi, part_lo = grouped_msd_partials(x[start:end], weights[e:e + 1], s[e:e + 1], [(0, end - start)])
        else:
            part_hi, part_lo = chi[start:end], clo[start:end]
        v = msd_combine(part_hi, part_lo)                      # fp32(Chi) * 16 + fp32(Clo)
        v += bias32[e]
        if off32 is not None:
            rowsum = x[start:end].astype(np.int32).sum(axis=1).astype(f32)   # exact (|sum| < 2**24)
            v += rowsum[:, None] * off32[e]
        v *= pt32[start:end, None] * lg
        # scatter-add in token order (deterministic mode)
        scatter_add_in_order(y, rows[start:end], v)
    return y


# Rows of int32 accumulator made at a time by the A8W8 path: one group's rows (a group larger than this many bytes
# in pieces), so the epilogue reads the accumulator while it is still in cache; the token order of the scatter-adds
# does not depend on the cuts
A8W8_ACC_BYTES = 32 << 20


def _a8w8_epilogue(y: np.ndarray, x: np.ndarray, weights: np.ndarray, bounds, s: np.ndarray,
                   bias32: Optional[np.ndarray], logit32: np.ndarray, pt32: Optional[np.ndarray],
                   rows: np.ndarray) -> None:
    """A8W8: the exact GEMM of row chunks, then per row ``v = (fp32(acc) * scale[e]) * (logit * pertoken)``
    (``+ logit * bias[e]``) scatter-added into ``y`` in token order."""
    total = bounds[-1][1] if bounds else 0
    if total <= 0:
        return
    n = weights.shape[2]
    row_scale = logit32[:total] * pt32[:total] if pt32 is not None else logit32[:total]   # one fp32 multiply
    whole = _kernels.current().grouped_int_gemm_scatter if bias32 is None else None
    if whole is not None:
        # the GEMM and this epilogue in one pass, where the kernels have it (no int32 accumulator written)
        bands = int8_bands(weights)
        runs = [(e, s0, t) for e, (s0, t) in enumerate(bounds) if t > s0]
        if (bands is not None and x.flags.c_contiguous
                and whole(y, x[:total], bands, n, runs, rows[:total], s, row_scale)):
            return
    row_group = np.repeat(np.arange(len(bounds)), [t - s0 for s0, t in bounds])
    fused = _kernels.current().dequant_scatter if bias32 is None else None
    step = max(1, A8W8_ACC_BYTES // (4 * max(1, n)))
    if weights.strides[0] == 0:
        # every expert shares one weight (a stride-0 view, as ``check --run`` builds): chunks across groups
        # make one GEMM each
        chunks = [(c0, min(total, c0 + step)) for c0 in range(0, total, step)]
    else:
        chunks = [(c0, min(t, c0 + step)) for s0, t in bounds for c0 in range(s0, t, step)]
    for c0, c1 in chunks:
        # the chunk's groups, clipped to it (an expert's position in the list is its weight)
        sub = [(min(max(s0, c0), c1) - c0, min(max(t, c0), c1) - c0) for s0, t in bounds]
        acc = grouped_int8_matmul(x[c0:c1], weights, sub)
        if fused is not None and fused(y, rows[c0:c1], acc, s, row_group[c0:c1], row_scale[c0:c1]):
            continue
        for e, (start, end) in enumerate(sub):
            if end <= start:
                continue
            v = dequant_rows(acc[start:end], s[e], row_scale[c0 + start:c0 + end])
            if bias32 is not None:
                v += logit32[c0 + start:c0 + end, None] * bias32[e]
            scatter_add_in_order(y, rows[c0 + start:c0 + end], v)     # deterministic mode: token order


def scatter_add_in_order(y: np.ndarray, index: np.ndarray, v: np.ndarray) -> None:
    """``y[index[t]] += v[t]`` for t = 0, 1, ... in that order, each add one fp32 operation.  Only
    the order of the adds into the same row matters, so the rows are added in rounds: round r adds
    every row's (r+1)-th occurrence (index values unique within a round: one vectorised
    gather-add-scatter), which keeps each row's token order; usually a single round (np.add.at, the
    element-wise equivalent, is several times slower)."""
    if index.size == 0:
        return
    order = np.argsort(index, kind="stable")            # equal rows stay in token order
    sorted_index = index[order]
    first = np.empty(index.size, dtype=bool)
    first[0] = True
    np.not_equal(sorted_index[1:], sorted_index[:-1], out=first[1:])
    if first.all():
        _add_distinct_rows(y, index, v)                  # every row at most once: one round
        return
    run_starts = np.flatnonzero(first)
    run_lengths = np.diff(np.append(run_starts, index.size))
    occurrence = np.empty(index.size, dtype=np.int64)
    occurrence[order] = np.arange(index.size) - np.repeat(run_starts, run_lengths)
    for r in range(int(run_lengths.max())):
        sel = np.flatnonzero(occurrence == r)
        _add_distinct_rows(y, index[sel], np.ascontiguousarray(v[sel]))


def dequant_rows(acc: np.ndarray, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``(fp32(acc) * col) * row[:, None]``: the A8W8 dequant, one fp32 operation per step, in place
    on a fresh fp32 buffer (a plugged-in kernel may compute it, e.g. on more cores)."""
    fast = _kernels.current().dequant
    v = fast(acc, col, row) if fast is not None else None
    if v is None:
        v = acc.astype(np.float32)
        v *= col
        v *= row[:, None]
    return v


def _add_distinct_rows(y: np.ndarray, index: np.ndarray, v: np.ndarray) -> None:
    """``y[index] += v`` for distinct ``index`` values (a plugged-in kernel may do it, e.g. on more cores)."""
    fast = _kernels.current().rows_add
    if fast is None or not fast(y, index, v):
        y[index] += v


def __getattr__(name: str):
    """The checked NumPy twin ``npu_grouped_matmul_finalize_routing`` is generated from the op's
    declaration (:mod:`ascend_moe.numpy_ops`); this alias keeps the old name without the simulator
    importing the checker."""
    if name == OP:
        from ascend_moe import numpy_ops
        return getattr(numpy_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
