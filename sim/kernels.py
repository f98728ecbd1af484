"""Pluggable GEMM kernels of the simulator (NumPy-only; faster implementations are injected).

The simulator's GEMMs come in two classes, each with a faithfulness contract every implementation
must meet:

* **float GEMM** (:func:`float_gemm_into`): ``out[...] = round_once(a @ b + bias)``, products
  accumulated in fp32 (fp64 inside ``gmm.float64_reference()``), the bias added in fp32, and one
  round-to-nearest-even to ``out``'s dtype.  The summation order is free (the device's is not
  public), so implementations may differ in the last bits of the fp32 accumulator.
* **exact integer GEMM** (:func:`int_gemm`): ``a @ b`` of integer-valued int8 matrices as int32,
  bit-exact (the A8W8 GEMM and the A8W4/MSD hi/lo partials).

The reference implementations here are NumPy (fp32 BLAS; chunked fp32 BLAS for the exact integer
path, see :func:`ascend_moe.sim.quant_gemm.exact_int_matmul`).  Other implementations - the
torch-based ones live in ``ascend_moe.kernels`` because the simulator never imports torch - are
plugged in through a :class:`Kernels` object made current with :func:`use`:

* ``float_gemm(out, a, b, bias_row) -> bool``: compute the whole float GEMM into ``out`` and return
  True, or return False to let the reference path do it (e.g. a shape or dtype it does not cover);
* ``grouped_gemm(out, a, b, runs, k_split) -> bool``: a whole grouped float GEMM without bias in one
  call (fewer per-group steps), under the float GEMM contract for every group: M split
  (``k_split=False``; out [M, N], a [M, K], b [E, K, N]): ``out[s:t] = round_once(a[s:t] @ b[e])``;
  K split (``k_split=True``; out [E, M, N], a [M, K], b [K, N]): ``out[e] = round_once(a[:, s:t] @
  b[s:t])``, for every ``(e, s, t)`` in ``runs`` (non-empty row / column ranges; the caller writes
  everything else).  Return False to let the per-group path compute every run (it may then have
  written part of ``out``, which the per-group path overwrites);
* ``int_gemm(a, b, out=None) -> Optional[ndarray]``: the exact int32 product (written into ``out``, a
  C-contiguous int32 [m, n] array, and returned when given), or None for the reference path;
* ``grouped_int_gemm(out, x, bands, n, runs) -> bool``: the exact grouped int8 GEMM ``out[s:t] = x[s:t] @ w[e]``
  (int32) for every ``(e, s, t)`` in ``runs`` in one call, the weight ``w`` [E, K, N] given as its 32-column
  bands ``bands`` [E, ceil(N/32), K, 32] (``w[e, k, j] = bands[e, j // 32, k, j % 32]``: FRACTAL_NZ int8 storage
  viewed so, read in place, or a strided view of an ND weight); ``x`` int8 [M, K] and ``out`` int32 [M, n]
  C-contiguous.  False (nothing written) to let the per-group path (``int_gemm``, on the weight's logical
  values) do it;
* ``grouped_int_gemm_scatter(y, x, bands, n, runs, index, col, row) -> bool``: the finalize-routing A8W8 GEMM and
  its epilogue at once: for each ``(e, s, t)`` of ``runs`` (in row order) and each row r in s..t-1 in order,
  ``y[index[r]] += (fp32(acc[r]) * col[e]) * row[r]`` with ``acc[r] = x[r] @ w[e]`` exact in int32 (the weight as
  ``grouped_int_gemm`` takes it; ``col`` fp32 [E, n], ``row`` fp32 [M], ``y`` fp32 [batch, n]): each fp32 step
  one IEEE operation rounded to nearest even, each y element's adds in row order, exactly what ``int_gemm`` then
  ``dequant_scatter`` give.  False (nothing written) to let those do it;
* ``widen(a, dtype) -> Optional[ndarray]``: an exact widening of a weight view to ``dtype`` that
  the caller may keep across calls (a cache), or None to widen into the per-call scratch;
* ``copy_cast(dst, src)``: ``dst[...] = src`` converted with NumPy's results (exact widening or the
  one RNE narrowing), possibly faster;
* ``keep(a, name, compute)``: ``compute()``, a pure function of weight ``a``'s values (e.g. its
  logical values from FRACTAL_NZ storage or packed int4), possibly kept from an earlier call while
  ``a`` is unchanged;
* ``rows_add(y, index, v) -> bool``: ``y[index[t]] += v[t]`` for every t, one fp32 add per element,
  where ``index`` holds distinct row numbers (so the order of the adds does not matter); False to
  let the reference (NumPy's gather-add-scatter) do it;
* ``dequant(acc, col, row) -> Optional[ndarray]``: the fp32 array ``(fp32(acc) * col[None, :]) *
  row[:, None]`` of an int32 accumulator ``acc`` [T, N] (int32 to fp32 rounded to nearest even, then
  two fp32 multiplies per element in that order); None to let the reference do it;
* ``dequant_scatter(y, index, acc, col, group, row) -> bool``: ``y[index[t]] += (fp32(acc[t]) * col[group[t]]) *
  row[t]`` for t = 0, 1, ... in that order (the dequant above, then one fp32 add per element, each y element's
  adds in row order), without the fp32 intermediate; False to let the reference (``dequant`` then the
  token-order row adds) do it;
* ``fixpipe_fp16(acc, scale) -> Optional[ndarray]``: the fp16 array ``fp16(float64(acc) * float64(scale))``
  of an int32 ``acc`` [T, N] and a per-column fp32 ``scale`` ([N] or [1, N]): one float64 multiply and one
  rounding to fp16, both to nearest even; None to let the reference do it;
* ``top_k(v, k, excluded) -> Optional[ndarray]``: int64 [rows, k], the indices of the k largest fp32
  ``v`` per row, largest first, in the gate's order (-0.0 == +0.0, NaN above +inf, ties to the lower
  index; ``excluded`` entries never chosen); None to let the reference do it;
* ``top2_sum(a) -> Optional[ndarray]``: fp32 [rows], each row's second largest plus largest value of fp32 ``a``
  [rows, n] (one fp32 add, in that order); None to let the reference (NumPy's partition) do it (e.g. a NaN);
* ``row_max(a) -> Optional[ndarray]``: fp32 [rows, 1], each row's maximum of fp32 ``a`` [rows, n] (the
  sign of a zero maximum is free); None to let the reference do it (e.g. a NaN in ``a``);
* ``tree_sum(a, lanes) -> Optional[ndarray]``: fp32 [rows], each row of fp32 ``a`` summed in the gate's
  ReduceSum order (zero-padded ``lanes``-wide repeats, a pairwise tree in each, then a pairwise tree over
  the repeat partials zero-padded to a power of two), one fp32 add at a time; None for the reference;
* ``swiglu_quant_a8w8(acc, col_scale, row_group, row_scale, kernel, out, out_scale) -> Optional[ndarray]``:
  the whole A8W8 epilogue of the grouped-matmul-swiglu-quant ops (:mod:`ascend_moe.sim.swiglu_quant`,
  ``kernel`` ``"v1"`` or ``"v2"``) for every row of the int32 ``acc`` [R, N]: ``col_scale`` fp32 [E, N],
  ``row_group`` int64 [R] (each row's group), ``row_scale`` fp32 [R]; writes int8 ``out`` [R, N/2] and fp32
  ``out_scale`` [R] with the reference's bits and returns the int64 indices of the rows it could not vouch
  for (the reference computes those), or None to let the reference do every row;
* ``swiglu_quant_f32(c, kernel, out, out_scale) -> Optional[ndarray]``: the same epilogue after its dequant, on
  the fp32 values ``c`` [R, N] (the A8W4 path; ``kernel`` picks the quantisation): writes ``out`` [R, N/2] and
  ``out_scale`` [R] and returns the rows (indices into ``c``) the reference must compute, or None.

Outside any :func:`use` block the reference kernels run, so the simulator alone (no torch) is
unchanged.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Kernels", "REFERENCE", "current", "use", "numpy_copy_cast"]

CopyCast = Callable[[np.ndarray, np.ndarray], None]
FloatGemm = Callable[[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]], bool]
GroupedGemm = Callable[[np.ndarray, np.ndarray, np.ndarray, Sequence[Tuple[int, int, int]], bool], bool]
IntGemm = Callable[..., Optional[np.ndarray]]
GroupedIntGemm = Callable[[np.ndarray, np.ndarray, np.ndarray, int, Sequence[Tuple[int, int, int]]], bool]
Widen = Callable[[np.ndarray, type], Optional[np.ndarray]]
Keep = Callable[[np.ndarray, str, Callable[[], object]], object]
RowsAdd = Callable[[np.ndarray, np.ndarray, np.ndarray], bool]
Dequant = Callable[[np.ndarray, np.ndarray, np.ndarray], Optional[np.ndarray]]
DequantScatter = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], bool]
FixpipeFp16 = Callable[[np.ndarray, np.ndarray], Optional[np.ndarray]]
TopK = Callable[[np.ndarray, int, Optional[np.ndarray]], Optional[np.ndarray]]
RowMax = Callable[[np.ndarray], Optional[np.ndarray]]
Top2Sum = Callable[[np.ndarray], Optional[np.ndarray]]
TreeSum = Callable[[np.ndarray, int], Optional[np.ndarray]]
SwigluQuant = Callable[..., Optional[np.ndarray]]


def compute_now(a: np.ndarray, name: str, compute: Callable[[], object]) -> object:
    """The reference ``keep``: nothing is kept, ``compute()`` runs every time."""
    return compute()


def numpy_copy_cast(dst: np.ndarray, src: np.ndarray) -> None:
    """The reference conversion: NumPy's cast (exact widening, or round-to-nearest-even)."""
    np.copyto(dst, src, casting="unsafe")


@dataclass(frozen=True)
class Kernels:
    """The GEMM implementations the simulator calls (None = the NumPy reference)."""
    float_gemm: Optional[FloatGemm] = None
    grouped_gemm: Optional[GroupedGemm] = None
    int_gemm: Optional[IntGemm] = None
    grouped_int_gemm: Optional[GroupedIntGemm] = None
    grouped_int_gemm_scatter: Optional[Callable[..., bool]] = None
    widen: Optional[Widen] = None
    copy_cast: CopyCast = field(default=numpy_copy_cast)
    keep: Keep = field(default=compute_now)
    rows_add: Optional[RowsAdd] = None
    dequant: Optional[Dequant] = None
    dequant_scatter: Optional[DequantScatter] = None
    fixpipe_fp16: Optional[FixpipeFp16] = None
    top_k: Optional[TopK] = None
    row_max: Optional[RowMax] = None
    top2_sum: Optional[Top2Sum] = None
    tree_sum: Optional[TreeSum] = None
    swiglu_quant_a8w8: Optional[SwigluQuant] = None
    swiglu_quant_f32: Optional[SwigluQuant] = None
    name: str = "reference"


REFERENCE = Kernels()

_CURRENT: contextvars.ContextVar[Kernels] = contextvars.ContextVar("ascend_moe_sim_kernels", default=REFERENCE)


def current() -> Kernels:
    """The kernels in effect (the reference NumPy kernels outside :func:`use`)."""
    return _CURRENT.get()


class use:
    """``with use(kernels):`` makes ``kernels`` current for the calls inside (None keeps the current ones).
    A plain context manager class (every op call enters one: no generator frame per call)."""

    __slots__ = ("_kernels", "_token")

    def __init__(self, kernels: Optional[Kernels]) -> None:
        self._kernels = kernels
        self._token: Optional[contextvars.Token] = None

    def __enter__(self) -> Kernels:
        if self._kernels is None:
            return _CURRENT.get()
        self._token = _CURRENT.set(self._kernels)
        return self._kernels

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
