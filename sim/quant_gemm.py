"""Exact arithmetic shared by the quantised grouped-GEMM simulators (GMM-SwiGLU-Quant, GMM-FinalizeRouting).

What the device computes on its cube unit for the int8 / int4 paths, and how this module
reproduces it bit for bit (spec grouped-matmul-family 2.3, 2.4, 3.4):

* **A8W8**: ``acc[m, n] = sum_k x[m, k] * w[e, k, n]`` in int32 for the rows of group ``e``.  Exact.
  :func:`exact_int_matmul` computes it with float32 BLAS on K chunks small enough that every partial
  sum is an integer of magnitude <= 2**24 (so every float32 add and FMA is exact whatever the BLAS
  summation order), and sums the chunks in int32.  Never an inexact path.
* **A8W4 (MSD)**: the int8 activation is split into two int4-valued halves
  (:func:`msd_split_int8`: ``hi = x >> 4`` (floor(x/16)), ``lo = (x & 0xF) - 8``, so
  ``x = 16*hi + lo + 8``); each half is multiplied by the int4 weight on the cube (int32 exact) and the
  fixpipe dequantises the int32 result with the (int64-encoded) weight scale straight to **fp16**
  (:func:`fixpipe_dequant_fp16`).  With per-group scales (dequant_mode 1) every K group's fp16
  partial is accumulated into the fp16 output tile (GetTensorC with atomic add, ``fp16(acc + part)``,
  group order 0..G-1).  The vector unit then forms ``fp32(Chi) * 16 + fp32(Clo)`` (:func:`msd_combine`);
  the ``+ 8 * sum_k w * s`` term for the ``+8`` offset comes precomputed as weight_assist_matrix.
* Group rows: ``group_list`` as cumsum (type 0) or counts (type 1) -> row ranges (:func:`group_bounds`).
  Rows outside every group are not computed (the callers mark them undefined).

Named assumptions ([I] in the spec, each switchable or documented here):

* int64/uint64 scales are decoded by :func:`ascend_moe.sim.numerics.decode_int64_scale`, with the
  FP19 truncation (``bits & 0xFFFFE000``) on by default (``fp19=True``).
* fixpipe int32 x scale -> fp16 rounds the **exact** product once, to nearest even
  (:func:`fixpipe_dequant_fp16`).  The public goldens compute ``fp16(fp32(acc) * s)``; the two can
  differ in the last fp16 bit only when the fp32 product lands exactly on an fp16 midpoint.
* fp16 overflow of a partial gives +-inf (IEEE), no saturation (the fixpipe's overflow mode is not public).

Everything is NumPy only.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import kernels as _kernels
from .numerics import GroupList, decode_int64_scale, dtype_name, nd_to_nz, nz_to_nd, pack_int4, unpack_int4

__all__ = [
    "group_bounds", "covered_rows", "exact_int_matmul", "grouped_int8_matmul", "msd_split_int8",
    "fixpipe_dequant_fp16", "decode_weight_scale", "grouped_msd_partials", "msd_combine",
    "fp19_scales", "fp19_enabled", "weight_values", "weight_logical_dims", "weight_to_nz_storage",
    "BandedInt8Weight", "int8_bands",
]

Bounds = List[Tuple[int, int]]

# Every partial sum of a float32 GEMM chunk must stay an integer of magnitude <= 2**24 to be exact.
_F32_EXACT = 1 << 24


# --------------------------------------------------------------------------------------------
# groups
# --------------------------------------------------------------------------------------------

def group_bounds(group_list: Sequence[int], group_list_type: int = 0,
                 num_rows: Optional[int] = None) -> Bounds:
    """Row range ``(start, end)`` of each group, in group order.

    ``group_list_type`` 0: ``group_list`` holds cumulative ends (cumsum), 1: per-group counts.
    ``num_rows`` (M of x) clips the ranges: rows past M do not exist, so a total above M computes only
    up to M (the rules reject such calls before the simulator runs; clipping keeps this helper safe).
    Raises ValueError for a non-1-D list, negative entries, a decreasing cumsum or an unknown type.
    Empty groups give ``(s, s)``.
    """
    return GroupList.of(group_list, group_list_type).bounds(num_rows)


def covered_rows(bounds: Bounds, num_rows: int) -> np.ndarray:
    """Boolean mask [num_rows]: True for rows inside some group (the rows the device writes)."""
    mask = np.zeros(num_rows, dtype=bool)
    for s, t in bounds:
        mask[s:t] = True
    return mask


# --------------------------------------------------------------------------------------------
# exact integer GEMM
# --------------------------------------------------------------------------------------------

def _max_abs(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return int(max(abs(int(a.min())), abs(int(a.max()))))


def exact_int_matmul(a: np.ndarray, b: np.ndarray, *, a_f32: Optional[np.ndarray] = None,
                     b_f32: Optional[np.ndarray] = None, max_abs_a: Optional[int] = None,
                     max_abs_b: Optional[int] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact ``a @ b`` of small integer matrices ([m, K] x [K, n]) as int32 (wrapping like int32).

    Uses float32 BLAS on K chunks of ``floor(2**24 / (max|a| * max|b|))`` columns: every partial sum
    of a chunk is an integer <= 2**24 in magnitude, hence exact in float32 in any summation order;
    the chunk results are converted to int32 and summed in int32.  ``a_f32`` / ``b_f32`` may pass
    float32 copies already made (avoids re-converting); ``max_abs_*`` may pass known bounds
    (e.g. 128 for int8, 8 for int4).  A plugged-in exact integer GEMM
    (:mod:`ascend_moe.sim.kernels`, e.g. int8 dot-product instructions) may compute it instead.
    ``out`` (int32 [m, n], C-contiguous) receives the product and is returned.
    """
    m, k = a.shape
    k2, n = b.shape
    if k != k2:
        raise ValueError(f"inner dims differ: {a.shape} @ {b.shape}")
    fast = _kernels.current().int_gemm
    acc = fast(a, b, out) if fast is not None and m and n and k else None
    if acc is None:
        acc = _reference_int_matmul(a, b, a_f32, b_f32, max_abs_a, max_abs_b)
    if out is None or acc is out:
        return acc
    out[...] = acc
    return out


def _reference_int_matmul(a: np.ndarray, b: np.ndarray, a_f32: Optional[np.ndarray], b_f32: Optional[np.ndarray],
                          max_abs_a: Optional[int], max_abs_b: Optional[int]) -> np.ndarray:
    """The chunked fp32 BLAS path of :func:`exact_int_matmul`."""
    m, k = a.shape
    n = b.shape[1]
    acc = np.zeros((m, n), dtype=np.int32)
    if m == 0 or n == 0 or k == 0:
        return acc
    ma = _max_abs(a) if max_abs_a is None else max_abs_a
    mb = _max_abs(b) if max_abs_b is None else max_abs_b
    if ma == 0 or mb == 0:
        return acc
    chunk = max(1, _F32_EXACT // (ma * mb))
    af = a.astype(np.float32) if a_f32 is None else a_f32
    bf = b.astype(np.float32) if b_f32 is None else b_f32
    if chunk >= k:
        return np.matmul(af, bf).astype(np.int32)
    part = np.empty((m, n), dtype=np.float32)
    for k0 in range(0, k, chunk):
        np.matmul(af[:, k0:k0 + chunk], bf[k0:k0 + chunk], out=part)
        acc += part.astype(np.int32)
    return acc


def grouped_int8_matmul(x: np.ndarray, w: np.ndarray, bounds: Bounds,
                        out: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact grouped integer GEMM: ``acc[s:t] = x[s:t] @ w[e]`` (int32) for each group ``e = (s, t)``.

    ``x`` [M, K] and ``w`` [E, K, N] hold integers (int8, or int4 values in an int8 array; or a
    :class:`BandedInt8Weight`, read in place where the kernels' grouped int8 GEMM takes it); ``bounds``
    comes from :func:`group_bounds` (len <= E).  Rows outside every group are left 0 (use
    :func:`covered_rows` for the mask).  Returns int32 [M, N] (``out`` if given, zero-filled first).
    """
    M, K = x.shape
    E, K2, N = w.shape
    if K != K2:
        raise ValueError(f"x has K={K} but weight has K={K2}")
    if len(bounds) > E:
        raise ValueError(f"{len(bounds)} groups but only {E} experts in weight")
    if out is None:
        out = np.empty((M, N), dtype=np.int32)
    rows = [(e, s, t) for e, (s, t) in enumerate(bounds) if t > s]
    # zero the rows no group covers; each group writes its own rows in place
    covered = np.zeros(M, dtype=bool)
    for _, s, t in rows:
        covered[s:t] = True
    out[~covered] = 0
    if not rows:
        return out
    if w.strides[0] == 0:
        # every expert shares one weight (a stride-0 view, as ``check --run`` builds): one exact GEMM
        # over all covered rows gives the same integers as one per group
        rows = [(rows[0][0], rows[0][1], rows[-1][2])]
    grouped = _kernels.current().grouped_int_gemm
    if grouped is not None and x.flags.c_contiguous:
        bands = int8_bands(w)
        if bands is not None and grouped(out, x, bands, N, rows):
            return out
    if isinstance(w, BandedInt8Weight):
        w = w.values()
    # convert only the rows some group covers (once, shared by all groups)
    lo, hi = min(s for _, s, _ in rows), max(t for _, _, t in rows)
    xs = x[lo:hi]
    # the bound and the float32 copy only serve the reference (chunked fp32 BLAS) path
    reference = _kernels.current().int_gemm is None
    mx = _max_abs(xs) if reference else None
    xf = xs.astype(np.float32) if reference else None
    for e, s, t in rows:
        exact_int_matmul(x[s:t], w[e], a_f32=None if xf is None else xf[s - lo:t - lo], max_abs_a=mx, out=out[s:t])
    return out


# --------------------------------------------------------------------------------------------
# A8W4 (MSD)
# --------------------------------------------------------------------------------------------

def msd_split_int8(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split int8 values into the two int4-valued halves the MSD pre-kernel feeds to the cube.

    ``hi = floor(x / 16)`` (arithmetic shift; the kernel does Muls(1/16) then CAST_FLOOR in fp16, exact),
    ``lo = (x & 0x0F) - 8``; both lie in [-8, 7] and ``x == 16 * hi + lo + 8``.  Returns int8 arrays.
    """
    xi = np.asarray(x).astype(np.int16)
    hi = (xi >> 4).astype(np.int8)
    lo = ((xi & 0x0F) - 8).astype(np.int8)
    return hi, lo


def decode_weight_scale(scale: np.ndarray, fp19: bool = True) -> np.ndarray:
    """float32 weight scale for the fixpipe: int64/uint64 encoded scales via
    :func:`~ascend_moe.sim.numerics.decode_int64_scale` (FP19 truncation when ``fp19``); float
    scales are cast to float32 (RNE) and also pass through the FP19 truncation when ``fp19`` - the
    fixpipe quant vector is the same register either way [I]."""
    s = np.asarray(scale)
    if s.dtype in (np.int64, np.uint64):
        return decode_int64_scale(s, fp19=fp19)
    return decode_int64_scale(s.astype(np.float32), fp19=fp19)


def fixpipe_dequant_fp16(acc: np.ndarray, scale_f32: np.ndarray) -> np.ndarray:
    """fp16 result of the fixpipe dequant ``acc * scale``: the exact product rounded once (RNE) [I].

    ``acc`` int32, ``scale_f32`` float32 broadcastable to it.  The float64 product is exact whenever
    ``|acc| < 2**29`` (29 + 24 significant bits <= 53); MSD accumulators are < 2**24, so always here.
    NumPy's float64 -> float16 conversion rounds directly (no double rounding).
    """
    acc = np.asarray(acc)
    fast = _kernels.current().fixpipe_fp16
    if fast is not None:
        done = fast(acc, np.asarray(scale_f32, dtype=np.float32))
        if done is not None:
            return done
    scale64 = np.asarray(scale_f32, dtype=np.float32).astype(np.float64)
    shape = np.broadcast_shapes(acc.shape, scale64.shape)
    if len(shape) != 2 or acc.shape != shape:
        return (acc.astype(np.float64) * scale64).astype(np.float16)
    # row blocks through one float64 buffer: the same two steps per element (exact int32 -> float64,
    # float64 multiply, one float64 -> float16 rounding) without two float64 copies of the whole tile
    out = np.empty(shape, dtype=np.float16)
    rows = max(1, (1 << 19) // max(1, shape[1]))
    buf = np.empty((min(rows, shape[0]), shape[1]), dtype=np.float64)
    for i in range(0, shape[0], rows):
        j = min(i + rows, shape[0])
        part = buf[:j - i]
        np.multiply(acc[i:j], scale64 if scale64.ndim < 2 or scale64.shape[0] == 1 else scale64[i:j], out=part)
        np.copyto(out[i:j], part, casting="unsafe")
    return out


def grouped_msd_partials(x: np.ndarray, w_int4: np.ndarray, w_scale_f32: np.ndarray,
                         bounds: Bounds) -> Tuple[np.ndarray, np.ndarray]:
    """fp16 dequantised MSD partials ``(Chi, Clo)``, each [M, N], for the rows of each group.

    ``x`` int8 [M, K]; ``w_int4`` int4 values (int8 array, [-8, 7]) [E, K, N]; ``w_scale_f32``
    decoded float32 scale [E, N] (per-channel) or [E, G, N] (per-group: K split into G equal groups,
    G must divide K).  For per-group scales each group's partial is rounded to fp16 and accumulated
    into the fp16 tile in group order: ``acc = fp16(acc + fp16(part_g))`` (an fp32 add then RNE to fp16
    equals the correctly rounded fp16 sum, since 24 >= 2*11 + 2).  Rows outside every group stay 0.
    """
    M, K = x.shape
    E, K2, N = w_int4.shape
    if K != K2:
        raise ValueError(f"x has K={K} but weight has K={K2}")
    s = np.asarray(w_scale_f32, dtype=np.float32)
    if s.ndim == 2:
        s = s[:, None, :]
    G = s.shape[1]
    if K % G:
        raise ValueError(f"K={K} is not divisible by the number of scale groups {G}")
    gk = K // G
    chi = np.zeros((M, N), dtype=np.float16)
    clo = np.zeros((M, N), dtype=np.float16)
    hi, lo = msd_split_int8(x)
    runs = [(e, st, en) for e, (st, en) in enumerate(bounds) if en > st]
    if (runs and w_int4.strides[0] == 0
            and all(np.array_equal(s[e], s[runs[0][0]]) for e, _, _ in runs[1:])):
        # one shared weight (a stride-0 view) and equal scales: one pass over all covered rows gives
        # each row the same exact partials and fp16 roundings as its own group's pass
        runs = [(runs[0][0], runs[0][1], runs[-1][2])]
    for e, st, en in runs:
        m = en - st
        # hi and lo rows go through the cube together (the kernel interleaves them: 2 rows per token).
        both = np.concatenate([hi[st:en], lo[st:en]], axis=0)
        both_f = both.astype(np.float32) if _kernels.current().int_gemm is None else None
        acc16 = None
        for g in range(G):
            k0, k1 = g * gk, (g + 1) * gk
            part = exact_int_matmul(both[:, k0:k1], w_int4[e, k0:k1],
                                    a_f32=None if both_f is None else both_f[:, k0:k1],
                                    max_abs_a=8, max_abs_b=8)
            p16 = fixpipe_dequant_fp16(part, s[e, g][None, :])
            acc16 = p16 if acc16 is None else (acc16.astype(np.float32) + p16.astype(np.float32)).astype(np.float16)
        chi[st:en] = acc16[:m]
        clo[st:en] = acc16[m:]
    return chi, clo


def msd_combine(chi: np.ndarray, clo: np.ndarray) -> np.ndarray:
    """``fp32(Chi) * 16 + fp32(Clo)`` in float32 (the post-kernel's Cast, Muls(16), Add; the widenings are
    exact, the multiply by 16 too, the add rounds once)."""
    cast = _kernels.current().copy_cast
    v = np.empty(chi.shape, dtype=np.float32)
    cast(v, chi)
    v *= np.float32(16.0)
    lo = np.empty(clo.shape, dtype=np.float32)
    cast(lo, clo)
    v += lo
    return v


# --------------------------------------------------------------------------------------------
# the FP19 switch (spec 3.4, inferred device behaviour; default on)
# --------------------------------------------------------------------------------------------

_fp19: contextvars.ContextVar[bool] = contextvars.ContextVar("ascend_moe_fp19_scale", default=True)


@contextlib.contextmanager
def fp19_scales(enabled: bool) -> Iterator[None]:
    """Context manager switching the FP19 truncation of fixpipe (int64/uint64) scales on or off.

    On (the default) the simulators decode scales as ``bits & 0xFFFFE000`` (10 mantissa bits), the
    inferred fixpipe precision; off uses the full fp32 value.
    """
    token = _fp19.set(bool(enabled))
    try:
        yield
    finally:
        _fp19.reset(token)


def fp19_enabled() -> bool:
    """Whether the FP19 scale truncation is in effect (see :func:`fp19_scales`)."""
    return _fp19.get()


# --------------------------------------------------------------------------------------------
# weight forms: logical ND arrays, int4 packed in int32, FRACTAL_NZ 5-D storage
# --------------------------------------------------------------------------------------------

def weight_logical_dims(shape: Sequence[int], dtype: str) -> Optional[Tuple[int, int, int, str, bool]]:
    """``(E, K, N, kind, is_storage)`` of a grouped weight from its shape and dtype, or None when the
    shape is none of the accepted forms.  ``kind`` is ``"int8"`` or ``"int4"``.

    Accepted forms (spec 2.2, 2.6): int8 ``[E, K, N]`` or NZ storage ``[E, N/32, K/16, 16, 32]``;
    int4 values ``[E, K, N]`` or ``[E, N/64, K/16, 16, 64]``; int4 packed 8 per int32
    ``[E, K, N/8]`` or ``[E, N/64, K/16, 16, 8]``.  Only the rank and the dtype decide the form; the
    inner NZ dims (16, C0) are checked by the rules.
    """
    shape = tuple(int(d) for d in shape)
    if dtype == "int8":
        kind, per = "int8", 1
    elif dtype == "int4":
        kind, per = "int4", 1
    elif dtype in ("int32", "uint32"):
        kind, per = "int4", 8
    else:
        return None
    c0 = 32 if kind == "int8" else 64
    if len(shape) == 3:
        return shape[0], shape[1], shape[2] * per, kind, False
    if len(shape) == 5:
        return shape[0], shape[2] * 16, shape[1] * c0, kind, True
    return None


def int8_bands(w: "np.ndarray | BandedInt8Weight") -> Optional[np.ndarray]:
    """The 32-column bands ``[E, N/32, K, 32]`` of an int8 ``[E, K, N]`` (or ``[K, N]``: E = 1) weight as a view
    (``bands[e, j, k, c] = w[e, k, 32 j + c]``), or None when it is not one (N not a multiple of 32, columns not
    contiguous); a :class:`BandedInt8Weight`'s own bands."""
    if isinstance(w, BandedInt8Weight):
        return w.bands
    w3 = w[None] if w.ndim == 2 else w
    if w3.ndim != 3 or w3.dtype != np.int8 or w3.shape[2] % 32 or (w3.shape[2] > 1 and w3.strides[2] != 1):
        return None
    e, k, n = w3.shape
    return np.lib.stride_tricks.as_strided(w3, (e, n // 32, k, 32), (w3.strides[0], 32, w3.strides[1], 1),
                                           writeable=False)


class BandedInt8Weight:
    """An int8 FRACTAL_NZ grouped weight held as it is: its storage ``[E, N/32, K/16, 16, 32]`` viewed as
    32-column bands ``[E, N/32, K, 32]`` (``w[e, k, n] = bands[e, n // 32, k, n % 32]``), for kernels whose
    grouped int8 GEMM reads it in place (no logical copy, so nothing kept or proven current).  ``shape`` is
    the logical ``[E, K, N]``, ``strides[0]`` the storage's expert stride (0: one weight shared by every
    expert); :meth:`values` gives the logical array, as :func:`weight_values` does."""

    __slots__ = ("storage", "bands", "shape", "strides")

    def __init__(self, storage: np.ndarray) -> None:
        e, nb, kb, _, _ = storage.shape
        self.storage = storage
        self.bands = storage.reshape(e, nb, kb * 16, 32)
        self.shape = (e, kb * 16, nb * 32)
        self.strides = (storage.strides[0],)

    def values(self) -> np.ndarray:
        return weight_values(self.storage)[0]


def weight_values(w: np.ndarray, bands_ok: bool = False) -> Tuple[np.ndarray, str]:
    """Logical integer values ``[E, K, N]`` (int8 array) and kind (``"int8"``/``"int4"``) of a weight
    in any form :func:`weight_logical_dims` accepts (NZ storage is converted back, int4 unpacked).
    A conversion may be kept across calls while the weight is unchanged (:mod:`ascend_moe.sim.kernels`).
    ``bands_ok``: the caller only hands the values to :func:`grouped_int8_matmul`, so int8 NZ storage may
    come back as a :class:`BandedInt8Weight` (where the current kernels have a grouped int8 GEMM)."""
    w = np.asarray(w)
    dt = dtype_name(w)
    dims = weight_logical_dims(w.shape, dt)
    if dims is None:
        raise ValueError(f"weight of shape {w.shape} and dtype {dt} is not a grouped int8/int4 weight")
    if bands_ok and dt == "int8" and dims[4] and _kernels.current().grouped_int_gemm is not None:
        return BandedInt8Weight(w), "int8"
    if (dt != "int8" or dims[4]) and not (dims[0] > 1 and w.strides[0] == 0):
        return _kernels.current().keep(w, "weight_values", lambda: _weight_values(w, dt, dims))
    return _weight_values(w, dt, dims)


def _weight_values(w: np.ndarray, dt: str, dims) -> Tuple[np.ndarray, str]:
    E, K, N, kind, storage = dims
    if E > 1 and w.strides[0] == 0 and (dt != "int8" or storage):
        # every expert shares one weight (a stride-0 view, as ``check --run`` builds): convert it once
        one, kind = weight_values(w[:1])
        return np.broadcast_to(one, (E,) + one.shape[1:]), kind
    if dt in ("int32", "uint32"):
        vals = unpack_int4(w.view(np.int32))
    elif dt == "int4":
        vals = w.astype(np.int8)
    else:
        vals = w
    if storage:
        vals = nz_to_nd(vals, (E, K, N))
    return vals, kind


def weight_to_nz_storage(w: np.ndarray) -> np.ndarray:
    """The 5-D FRACTAL_NZ storage array of a logical grouped weight (the aclnn docs' form).

    int8 ``[E, K, N]`` -> ``[E, ceil(N/32), ceil(K/16), 16, 32]``; int4 values -> ``[..., 64]`` int4 values
    (same container dtype as given); int32-packed int4 ``[E, K, N/8]`` -> ``[E, ceil(N/64), ceil(K/16), 16, 8]``
    int32 (the vllm-ascend form: NZ of the byte-packed weight viewed as int32).  Zero padded.
    """
    w = np.asarray(w)
    dt = dtype_name(w)
    if w.ndim != 3:
        raise ValueError(f"weight_to_nz_storage needs a logical [E, K, N] weight, got shape {w.shape}")
    if dt in ("int32", "uint32"):
        vals = unpack_int4(w.view(np.int32))
        nz = nd_to_nz(vals, dtype="int4")
        return pack_int4(nz, "int32").view(w.dtype)
    if dt == "int4":
        return nd_to_nz(w, dtype="int4")
    if dt == "int8":
        return nd_to_nz(w)
    raise ValueError(f"weight_to_nz_storage supports int8, int4 and int32-packed int4 weights, got {dt}")
