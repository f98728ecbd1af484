"""GMM + dequant + SwiGLU + per-token int8 quant: ``npu_grouped_matmul_swiglu_quant`` (v1) and ``_v2``.

Formula (spec grouped-matmul-family 2.3/2.4), rows ``[s_e, t_e)`` of group ``e``::

    C = dequant(x[s:t] @ W[e])                          # [m, N] fp32
    S = silu(C[:, :N/2]) * C[:, N/2:]                   # SwiGLU: first half activated, second half linear
    out_scale = max|S| / 127 ; out = round(S / out_scale) -> int8      # per token

Faithfulness contract (each step is the kernel's, bit for bit, except the one named deviation):

* **exact**: the int32 GEMM (:mod:`ascend_moe.sim.quant_gemm`); every fp32 step below is one IEEE
  float32 operation with round-to-nearest-even, in the kernel's order.
* **A8W8, v1 kernel** (torch v1 = aclnnGroupedMatmulSwigluQuantWeightNZ): ``c = fp32(acc)``;
  ``c = c * x_scale[row]``; ``c = c * w_scale[e, col]``; SwiGLU; ``qs = amax / 127.0f``;
  ``r = 1.0f / qs``; ``v = S * r``; ``q = int8_rint(fp16_rint(v))`` - **double rounding**
  (e.g. v = 101.47 -> fp16 101.5 -> 102, where one rounding gives 101).
* **A8W8, v2 fusion kernel**: ``c = w_scale[e, col] * fp32(acc)``; ``c = x_scale[row] * c``
  (the other association); SwiGLU; ``qs = amax * 0.007874015718698502f`` (fp32(1/127), a multiply);
  ``q = int8(rint(S / qs))`` - a **single** round-half-even of the quotient.
* **A8W4 (MSD)**, v1 and v2: ``Chi``/``Clo`` = fp16 fixpipe dequant of the hi/lo int4 halves
  (per-group scales accumulated in fp16), ``c = fp32(Chi) * 16 + fp32(Clo)``; ``c = c + assist[e]``;
  ``c = c * x_scale[row]``; SwiGLU; the v1 quantisation (double rounding) - both kernels.
  Scales: int64/uint64 (fp32 bits in the low word) decoded with the FP19 truncation by default
  ([I], switch: :func:`ascend_moe.sim.quant_gemm.fp19_scales`); float32 scales go through the same
  truncation (the fixpipe quant vector is the same register) [I].
* **SwiGLU op order** (AscendC ``SwiGLU``, beta = 1): ``t = -a``; ``t = exp(t)``; ``t = t + 1``;
  ``t = a / t``; ``S = g * t`` (``a`` = first N/2 columns, ``g`` = last N/2).
* **the one deviation: exp.**  The hardware vector ``Exp`` is not specified publicly.  The simulator
  uses :func:`exp_f32`: the float64 exponential rounded to float32, which is the correctly rounded
  float32 ``exp`` for every float32 input: the exact ``exp`` of every float32 lies at least 1.27 float64
  ulps from a float32 rounding midpoint (closest: x = -14.56709, then -0.00735258358 at 2.42 and
  1.51990689e-05 at 2.73 ulps; found by a scan of all 2**32 inputs against the 64-bit-significand
  ``expl``), so every float64 ``exp`` within 1.27 ulp gives the same bits, whatever library or CPU
  computes it (NumPy 2.4's AVX-512 ``exp`` was checked equal on all inputs).  The device may differ by
  1-2 ulp in ``exp``, which can move ``S`` by an ulp and, rarely, a quantised value by one.
* **undefined regions**: rows ``[total, M)`` of ``out`` and ``out_scale`` are never written by the
  device; they follow the undefined-region policy (``poison``: int8 -128 / NaN, or ``zero``).  v1's
  third output (``out_offset``, a 0-d fp32 placeholder the device never writes) too.
* **all-zero rows** (amax == 0): the kernel has no guard.  ``out_scale`` is written as 0.0 (0/127 or
  0*c); ``r = 1/0 = inf`` (v1) and ``0 * inf`` or ``0 / 0`` (v2) are NaN, whose int8 conversion
  is not public.  Those ``out`` elements follow the named all-zero-row policy
  (:mod:`ascend_moe.sim.zero_rows`: 0 by default, as CANN's test tables expect; ``"undefined"`` hands
  them to the undefined-region policy) [I].  Any other NaN reaching the int8 conversion follows the
  undefined-region policy.
* Saturation: ``|v|`` cannot exceed 127 by more than rounding noise; conversions saturate to
  [-127, 127] anyway (fp16 127.0x -> 127).
* A4W4 (int4 x, v2) is not simulated (NotImplementedError).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import kernels as _kernels
from .numerics import dtype_name, fill_undefined, float_to_int
from .zero_rows import apply_zero_rows
from .quant_gemm import (
    decode_weight_scale, fp19_enabled, group_bounds, grouped_int8_matmul, grouped_msd_partials,
    msd_combine, weight_values,
)

__all__ = ["compute"]

F32 = np.float32
# The v2 fusion kernel's constant 1.0/127.0 rounded to fp32.
INV_127_F32 = np.float32(0.007874015718698502)
# Rows per block of the epilogue (per-row arithmetic: the block size changes no value)
EPILOGUE_ROWS = 256


# --------------------------------------------------------------------------------------------
# elementwise steps
# --------------------------------------------------------------------------------------------

def exp_f32(x: np.ndarray) -> np.ndarray:
    """float32 exp used for SwiGLU: float64 ``exp`` rounded (RNE) to float32 - the named deviation
    from the hardware ``Exp`` (not public; may differ by 1-2 ulp)."""
    with np.errstate(over="ignore"):
        return np.exp(np.asarray(x, dtype=np.float64)).astype(np.float32)


def swiglu_f32(c: np.ndarray) -> np.ndarray:
    """SwiGLU of fp32 ``c`` [m, N] in the AscendC op order: ``g * (a / (1 + exp(-a)))``."""
    h = c.shape[1] // 2
    a = c[:, :h]
    g = c[:, h:]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        t = np.negative(a)
        t = exp_f32(t)
        t = np.add(t, F32(1.0), dtype=np.float32)
        t = np.divide(a, t, dtype=np.float32)
        return np.multiply(g, t, dtype=np.float32)


def quant_v1(s: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """v1 / A8W4 per-token quant: ``qs = amax/127``, ``r = 1/qs``, ``v = S*r``, fp32->fp16->int8 (RNE).

    Returns ``(q int8, qs float32, nan_mask)``; ``nan_mask`` marks elements whose value is NaN at the
    int8 conversion (all-zero rows), which the caller fills by the undefined-region policy.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        amax = np.max(np.abs(s), axis=1) if s.shape[1] else np.zeros(s.shape[0], F32)
        qs = np.divide(amax, F32(127.0), dtype=np.float32)
        r = np.divide(F32(1.0), qs, dtype=np.float32)
        v = np.multiply(s, r[:, None], dtype=np.float32)
        v16 = v.astype(np.float16)
    nan = np.isnan(v16)
    return float_to_int(v16, "int8", rounding="rint"), qs, nan


def quant_v2(s: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """v2 fusion-kernel per-token quant: ``qs = amax * fp32(1/127)``, ``q = rint(S / qs)`` (single RNE)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        amax = np.max(np.abs(s), axis=1) if s.shape[1] else np.zeros(s.shape[0], F32)
        qs = np.multiply(amax, INV_127_F32, dtype=np.float32)
        v = np.divide(s, qs[:, None], dtype=np.float32)
    nan = np.isnan(v)
    return float_to_int(v, "int8", rounding="rint"), qs, nan


# --------------------------------------------------------------------------------------------
# the shared compute
# --------------------------------------------------------------------------------------------

def _rows_per_group(bounds) -> Tuple[int, np.ndarray]:
    total = bounds[-1][1] if bounds else 0
    counts = np.array([t - s for s, t in bounds], dtype=np.int64)
    return total, np.repeat(np.arange(len(bounds)), counts)


def compute(x: np.ndarray, weight: np.ndarray, weight_scale: np.ndarray, x_scale: np.ndarray,
            group_list: np.ndarray, *, group_list_type: int = 0, assist: Optional[np.ndarray] = None,
            kernel: str = "v1", undefined: Optional[str] = None,
            zero_row: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Unchecked compute shared by both ops and the torch kernels.

    ``weight`` in any form :func:`~ascend_moe.sim.quant_gemm.weight_values` accepts (int8 => A8W8,
    int4/int32 => A8W4 MSD); ``weight_scale`` [E, N] (or [E, G, N] for A8W4 per-group);
    ``assist`` the A8W4 weight_assist_matrix [E, N]; ``kernel`` ``"v1"`` or ``"v2"`` picks the A8W8
    arithmetic (A8W4 is the same in both).  Returns ``(out int8 [M, N/2], out_scale fp32 [M])``.
    """
    x = np.asarray(x)
    if dtype_name(x) != "int8":
        raise NotImplementedError(f"only int8 x (A8W8 / A8W4) is simulated, got x dtype {dtype_name(x)} (A4W4)")
    M = x.shape[0]
    w_vals, kind = weight_values(weight, bands_ok=True)   # int8: only the grouped GEMM reads it
    N = w_vals.shape[2]
    bounds = group_bounds(group_list, group_list_type, M)
    total, row_e = _rows_per_group(bounds)
    xs = np.asarray(x_scale).astype(np.float32)[:total, None]
    out = np.empty((M, N // 2), dtype=np.int8)
    out_scale = np.empty((M,), dtype=np.float32)

    assist_f32 = None
    if kind == "int8":
        ws = np.asarray(weight_scale).astype(np.float32)          # fp16/bf16 -> fp32 is exact
        acc = grouped_int8_matmul(x, w_vals, bounds)
    else:
        ws = decode_weight_scale(weight_scale, fp19=fp19_enabled())
        chi, clo = grouped_msd_partials(x, w_vals, ws, bounds)
        assist_f32 = None if assist is None else np.asarray(assist, dtype=np.float32)
    quant = quant_v2 if (kind == "int8" and kernel == "v2") else quant_v1

    finish_fast = _kernels.current().swiglu_quant_f32 if kind != "int8" else None

    def finish(rows, c: np.ndarray) -> None:
        """SwiGLU and the quantisation of the dequantised ``c`` of ``rows``: writes their outputs."""
        s = swiglu_f32(c)
        q, qs, nan = quant(s)
        if nan.any():
            zero_rows = ~np.any(s != 0, axis=1)          # amax == 0 (NaN rows are not zero rows)
            apply_zero_rows(q, nan, zero_rows, zero_row, undefined)
        out[rows] = q
        out_scale[rows] = qs

    def epilogue(rows) -> None:
        """The epilogue of ``rows`` (a slice or an index array): writes their ``out`` and ``out_scale``."""
        e_rows = row_e[rows]
        if kind == "int8":
            c = acc[rows].astype(np.float32)                      # int32 -> fp32, RNE
            if kernel == "v1":
                c *= xs[rows]
                c *= ws[e_rows]
            else:
                c = np.multiply(ws[e_rows], c, dtype=np.float32)
                c *= xs[rows]
        else:
            c = msd_combine(chi[rows], clo[rows])
            if assist_f32 is not None:
                c += assist_f32[e_rows]
            c *= xs[rows]
            if finish_fast is not None and isinstance(rows, slice):
                # a plugged-in SwiGLU + quantisation; the rows it hands back run below
                redo = finish_fast(c, "v1", out[rows], out_scale[rows])
                if redo is not None:
                    if redo.size:
                        finish(np.arange(rows.start, rows.stop)[redo], c[redo])
                    return
        finish(rows, c)

    # A8W8: a faster implementation of the whole epilogue may be plugged in (sim.kernels); it hands back the
    # rows it cannot vouch for (a NaN, an exp too near a rounding midpoint), which run below.
    redo = None
    fused = _kernels.current().swiglu_quant_a8w8
    if kind == "int8" and fused is not None and total:
        redo = fused(acc[:total], ws, row_e, xs[:, 0], kernel, out[:total], out_scale[:total])
    if redo is not None:
        for i in range(0, len(redo), EPILOGUE_ROWS):
            epilogue(redo[i:i + EPILOGUE_ROWS])
    else:
        # The epilogue is per row (each row's own scale), so it runs on row blocks that stay in cache: the
        # same operations on the same values as on the whole array, a fraction of the memory traffic.
        # (Blocks on two threads were no faster on a shared 2-core machine: the GIL between NumPy calls.)
        for r0 in range(0, total, EPILOGUE_ROWS):
            epilogue(slice(r0, min(total, r0 + EPILOGUE_ROWS)))
    fill_undefined(out, slice(total, None), undefined)
    fill_undefined(out_scale, slice(total, None), undefined)
    return out, out_scale


def _first(v):
    if isinstance(v, (list, tuple)):
        return v[0] if len(v) else None
    return v


def stack_experts(v):
    """A v2 list argument as one array: a one-element list gives its tensor; a list of E per-expert
    tensors (``{E x (K, N)}`` weights, ``{E x (N)}`` scales / assist rows, or their NZ storages) gives
    them stacked on a new leading expert axis, the single-tensor form the kernels index."""
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            return None
        if len(v) == 1:
            return v[0]
        return np.stack([np.asarray(t) for t in v])
    return v


# --------------------------------------------------------------------------------------------
# public twins
# --------------------------------------------------------------------------------------------

def __getattr__(name: str):
    """The checked NumPy twins ``npu_grouped_matmul_swiglu_quant`` / ``_v2`` are generated from the op
    declarations (:mod:`ascend_moe.numpy_ops`); these aliases keep the old names without the simulator
    importing the checker."""
    if name in ("npu_grouped_matmul_swiglu_quant", "npu_grouped_matmul_swiglu_quant_v2"):
        from ascend_moe import numpy_ops
        return getattr(numpy_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
