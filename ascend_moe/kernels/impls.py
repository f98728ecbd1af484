"""The GEMM implementations the torch ops can plug into the simulator, each meeting its class's
faithfulness contract (see :mod:`ascend_moe.sim.kernels`).

Float GEMM ``out = round_once(a @ b + bias)`` with fp32 accumulation:

* ``reference``: the simulator's own path (operands widened exactly to fp32, NumPy sgemm, fp32 bias
  add, one RNE cast);
* ``torch_sgemm``: the same steps with torch's fp32 GEMM (MKL / oneDNN) and torch's vectorised
  conversions (bit-identical to NumPy's, see :func:`fast_copy_cast`);
* ``torch_native`` (bf16 / fp16 without bias): torch's own half-precision matmul, which on the CPU
  (oneDNN, AVX-512 BF16 ``vdpbf16ps`` or fp32 FMA on widened values) multiplies exactly,
  accumulates in fp32 and rounds once to the output dtype.  That is verified on the machine before
  the implementation may be chosen (:func:`native_contract_holds`).  ``vdpbf16ps`` and
  ``vcvtneps2bf16`` flush subnormal inputs and results to zero, so calls whose operands could
  produce a subnormal product or partial sum go to the reference path (:func:`bf16_flush_safe`).

* ``torch_packed`` (bf16 / fp32 without bias): oneDNN's inner product on a weight kept in oneDNN's
  blocked layout (``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``, what
  ``torch.compile`` freezing uses).  A plain GEMM re-blocks the weight on every call; a weight
  used unchanged (same storage, same version counter) by a second call in the same orientation is
  packed once and kept (:meth:`ascend_moe.kernels.weight_cache.WeightCache.packed`), so inference
  and repeated micro-batches skip that work.  A first use, a weight changed since (a training
  step), a bias or an operand that is not a known weight runs the plain path (``torch_native``
  for bf16, ``torch_sgemm`` for fp32).  Verified like ``torch_native`` on the machine
  (:func:`packed_contract_holds`, including fp32 subnormal products kept) before it may be chosen;
  bf16 calls pass the same subnormal guard.

Exact integer GEMM ``a @ b`` (int8 values, int32 result):

* ``reference``: chunked fp32 BLAS (:func:`ascend_moe.sim.quant_gemm.exact_int_matmul`);
* ``torch_int_mm``: ``torch._int_mm`` (oneDNN s8s8s32, VNNI ``vpdpbusd`` where the CPU has it),
  verified bit-exact on this machine against an integer reference with saturating patterns before
  it may be chosen (:func:`int_mm_exact_on_this_machine`: without VNNI some int8 kernels sum
  products pairwise in saturating int16); used while ``K * 128 * 128 < 2**31`` (no int32 wrap);
* ``dot_int8``: the compiled AVX512-VNNI GEMM (``ascend_moe.kernels._gemm``, :func:`grouped_dot_int8`): the
  weight read as 32-column bands, so an int8 FRACTAL_NZ weight is read in place (no logical copy kept, no
  digest proving it current); the weight's bytes offset by 128 for the instruction's unsigned operand and
  128 times x's row sums taken back, in int32 arithmetic that wraps as the device's does.  Verified
  bit-exact on the same patterns (:func:`dot_int8_contract_holds`) where the CPU has the instructions.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from types import ModuleType
from typing import Callable, Dict, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np
import torch

from ..sim import kernels as _simk
from ..sim.quant_gemm import int8_bands

def _compiled(name: str) -> Optional[ModuleType]:
    """A compiled helper of csrc/kernels/, built with the package (setup.py); None in a source tree without a
    build, where NumPy does its work."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:  # pragma: no cover - only in an unbuilt checkout
        return None


_scan = _compiled("_scan")            # the bf16 subnormal guard's scan
_select = _compiled("_select")        # the gate's top-k, row max and ReduceSum tree
_epilogue = _compiled("_epilogue")    # the A8W4 fixpipe rounding, the A8W8 swiglu-quant epilogue
_gemm = _compiled("_gemm")            # the grouped bf16 / fp16 GEMM on exactly widened operands
COMPILED_MODULES = tuple(m for m in (_scan, _select, _epilogue, _gemm) if m is not None)

SHARE_THREADS_ENV = "ASCEND_MOE_SHARE_TORCH_THREADS"


def torch_openmp_library() -> Optional[str]:
    """The file of the OpenMP runtime torch's parallel regions run on, when torch's parallel backend is
    OpenMP and the library is loaded in this process (Linux: read off /proc/self/maps); else None."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    except OSError:  # not Linux
        return None
    runtimes = sorted(p for p in paths if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp")))
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__))
    # torch's own copy first: another copy (a NumPy BLAS built with OpenMP) would be a separate pool
    runtimes.sort(key=lambda p: not os.path.realpath(p).startswith(torch_dir))
    return runtimes[0] if runtimes else None


def _shares_torch_threads() -> bool:
    return bool(COMPILED_MODULES) and COMPILED_MODULES[0].openmp_bound()


def share_torch_threads(enable: bool = True) -> bool:
    """Run the compiled helpers' parallel work on torch's OpenMP worker threads (see
    ``csrc/kernels/helpers.h``, ``bind_openmp``) or, with ``enable=False``, on threads of their own.
    Returns whether they now share torch's threads.  At import it follows ``ASCEND_MOE_SHARE_TORCH_THREADS``
    (default 1; 0 gives each call threads of its own)."""
    path = torch_openmp_library() if enable else None
    # every module bound, or none (a list: each module is asked even after one refuses)
    shared = path is not None and all([module.bind_openmp(path) for module in COMPILED_MODULES])
    if not shared:
        for module in COMPILED_MODULES:
            module.unbind_openmp()
    return shared


share_torch_threads(os.environ.get(SHARE_THREADS_ENV, "1") not in ("0", "false", "False", ""))

_F16, _F32 = np.dtype(np.float16), np.dtype(np.float32)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_TORCH_FLOAT = {_F16: torch.float16, _F32: torch.float32, _BF16: torch.bfloat16}

# int32 accumulation of K int8 x int8 products cannot wrap while K * 2**14 < 2**31.
INT_MM_MAX_K = (1 << 31) // (128 * 128) - 1


def as_torch(a: np.ndarray) -> Optional[torch.Tensor]:
    """A torch view of a NumPy array (no copy), or None when torch cannot view it (negative
    strides, unsupported dtype).  Read-only arrays (e.g. ``np.broadcast_to`` weights) are viewed
    too: the kernels only read their inputs."""
    if not a.flags.writeable:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return _as_torch(a)
    return _as_torch(a)


def _as_torch(a: np.ndarray) -> Optional[torch.Tensor]:
    if a.dtype == _BF16:
        try:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        except (ValueError, RuntimeError):
            return None
    if a.dtype not in (_F16, _F32, np.dtype(np.int8), np.dtype(np.int32)):
        return None
    if any(s < 0 for s in a.strides):
        return None
    try:
        return torch.from_numpy(a)
    except (ValueError, RuntimeError, TypeError):
        return None


def fast_copy_cast(dst: np.ndarray, src: np.ndarray) -> None:
    """The simulator's casts, fp16 <-> fp32 and bf16 -> fp32 done by torch's vectorised conversion
    (NumPy's is a scalar loop).  Both are IEEE round-to-nearest-even with the same overflow/subnormal
    results (widening is exact; checked against NumPy in the tests); they differ only
    in NaN payload bits, so when the fp32 side holds a NaN (np.max propagates it: one cheap pass) the
    conversion is redone by NumPy and results stay bit-identical to the NumPy-only simulator."""
    pair = (src.dtype, dst.dtype)
    if (pair == (_BF16, _F32) and _scan is not None and src.size and src.flags.c_contiguous
            and dst.flags.c_contiguous and dst.flags.writeable):
        # compiled (a shift), no torch parallel region; a NaN leaves the payload question to NumPy below
        if _scan.widen_bf16(src.reshape(-1).view(np.uint16), dst.reshape(-1).view(np.uint32),
                            torch.get_num_threads()):
            return
    # fp16 both ways; bf16 only widening (a shift, exact): a narrowing through vcvtneps2bf16 would flush
    # subnormals, so bf16 rounding stays NumPy's
    if (pair in ((_F16, _F32), (_F32, _F16), (_BF16, _F32)) and src.size and min(src.strides) > 0
            and min(dst.strides) > 0):
        td, ts = as_torch(dst), as_torch(src)
        if td is not None and ts is not None:
            td.copy_(ts)
            if not np.isnan(np.max(src if src.dtype == _F32 else dst)):
                return
    np.copyto(dst, src, casting="unsafe")


def torch_rows_add(y: np.ndarray, index: np.ndarray, v: np.ndarray) -> bool:
    """``y[index] += v`` for distinct row numbers ``index`` (fp32 [R, N] and [T, N]) by torch's
    ``index_add_``: with distinct rows every element gets one fp32 add, as in NumPy, on all of torch's
    threads and without NumPy's gathered copy of ``y[index]``.  When ``v`` holds a NaN (np.max
    propagates it: one cheap pass) NumPy does it: adding two NaNs keeps the payload of the first
    operand, which only NumPy's order pins."""
    if (y.dtype != _F32 or v.dtype != _F32 or y.ndim != 2 or v.ndim != 2 or v.shape[1] != y.shape[1]
            or index.ndim != 1 or index.shape[0] != v.shape[0] or not y.flags.c_contiguous
            or not y.flags.writeable or not v.size):
        return False
    ty, tv = as_torch(y), as_torch(v)
    if ty is None or tv is None or np.isnan(np.max(v)):
        return False
    ty.index_add_(0, torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)), tv)
    return True


def torch_dequant(acc: np.ndarray, col: np.ndarray, row: np.ndarray) -> Optional[np.ndarray]:
    """``(fp32(acc) * col) * row[:, None]`` by torch on all its threads: the int32 -> fp32 conversion
    rounds to nearest even and each multiply is one IEEE fp32 operation, as in NumPy.  None (NumPy
    does it) when a scale holds a NaN, whose payload only NumPy's operand order pins."""
    if (acc.dtype != np.int32 or col.dtype != _F32 or row.dtype != _F32 or acc.ndim != 2
            or col.shape != (acc.shape[1],) or row.shape != (acc.shape[0],) or not acc.size):
        return None
    if np.isnan(np.max(col)) or np.isnan(np.max(row)):
        return None
    ta, tc, tr = as_torch(acc), as_torch(col), as_torch(row)
    if ta is None or tc is None or tr is None:
        return None
    v = ta.to(torch.float32)
    v.mul_(tc).mul_(tr[:, None])
    return v.numpy()


def _dequant_cannot_overflow(col: np.ndarray, row: np.ndarray) -> bool:
    """Finite scales (a NaN fails the comparison) and |fp32(acc) * col * row| <= 2^31 * max|col| * max|row| below
    fp32's largest value for any int32 ``acc``: the dequant makes no NaN (whose payload would depend on operand
    order), so a compiled pass may take it."""
    col_max, row_max = float(np.max(np.abs(col))), float(np.max(np.abs(row)))
    return col_max * 2.0 ** 31 * row_max < 3.0e38


def compiled_dequant_scatter(y: np.ndarray, index: np.ndarray, acc: np.ndarray, col: np.ndarray, group: np.ndarray,
                             row: np.ndarray) -> bool:
    """``y[index[t]] += (fp32(acc[t]) * col[group[t]]) * row[t]`` for t in order by the compiled helper: one pass
    over the accumulator on column tiles (the same IEEE operations per element as NumPy's dequant then its
    token-order row adds).  Only when the scales are finite and no product can overflow, so no NaN arises in the
    dequant: then an add meets at most one NaN (from ``y``), whose payload every implementation keeps, whatever
    the operand order.  False (NumPy) otherwise.

    Column tiles over torch's threads (:func:`_threads_after_torch`): it runs on a group's accumulator right after
    torch's GEMM made it (still in cache)."""
    if (_epilogue is None or y.dtype != _F32 or acc.dtype != np.int32 or col.dtype != _F32 or row.dtype != _F32
            or y.ndim != 2 or acc.ndim != 2 or col.ndim != 2 or acc.shape[1] != y.shape[1]
            or col.shape[1] != acc.shape[1] or row.shape != (acc.shape[0],) or index.shape != (acc.shape[0],)
            or group.shape != (acc.shape[0],) or not y.flags.c_contiguous or not y.flags.writeable or not acc.size):
        return False
    if not _dequant_cannot_overflow(col, row):
        return False
    _epilogue.dequant_scatter(y, np.ascontiguousarray(index, dtype=np.int64), np.ascontiguousarray(acc),
                              np.ascontiguousarray(col), np.ascontiguousarray(group, dtype=np.int64),
                              np.ascontiguousarray(row), _threads_after_torch(torch.get_num_threads()))
    return True


def compiled_fixpipe_fp16(acc: np.ndarray, scale: np.ndarray) -> Optional[np.ndarray]:
    """``fp16(float64(acc) * float64(scale))`` per column by the compiled helper (NumPy converts float64 to
    float16 one element at a time in software, about 10x slower): the same double multiply and the same
    direct rounding to nearest even, so the same bits (tested against Python's own rounding).  None for
    NumPy: another layout, or a scale that is not finite (NaN payloads are NumPy's to pin)."""
    if _epilogue is None or acc.dtype != np.int32 or acc.ndim != 2 or not acc.size:
        return None
    if not (scale.ndim == 1 or (scale.ndim == 2 and scale.shape[0] == 1)) or scale.shape[-1] != acc.shape[1]:
        return None
    row = np.ascontiguousarray(scale.reshape(-1), dtype=np.float32)
    if not np.isfinite(row).all():
        return None
    out = np.empty(acc.shape, dtype=np.float16)
    _epilogue.fixpipe_fp16(np.ascontiguousarray(acc), row, out.view(np.uint16))
    return out


def _swiglu_quant_outputs(rows: int, cols: int, kernel: str, out: np.ndarray, out_scale: np.ndarray) -> bool:
    """Whether the compiled swiglu-quant entries can write these outputs for [rows, cols] inputs."""
    return (_epilogue is not None and kernel in ("v1", "v2") and cols % 2 == 0
            and out.shape == (rows, cols // 2) and out.dtype == np.int8 and out.flags.c_contiguous
            and out_scale.shape == (rows,) and out_scale.dtype == _F32 and out_scale.flags.c_contiguous)


def _run_swiglu_quant(entry: Callable[..., None], inputs: Tuple[np.ndarray, ...], kernel: str, out: np.ndarray,
                      out_scale: np.ndarray) -> np.ndarray:
    """Call a compiled swiglu-quant entry; the rows it hands back to NumPy.

    It runs right after torch's threaded GEMM: see :func:`_threads_after_torch`."""
    rows = out.shape[0]
    redo = np.empty(rows, dtype=np.uint8)
    entry(*inputs, 1 if kernel == "v1" else 2, out, out_scale, redo, _threads_after_torch(_threads_for(rows)))
    return np.flatnonzero(redo)


def compiled_swiglu_quant_a8w8(acc: np.ndarray, col_scale: np.ndarray, row_group: np.ndarray, row_scale: np.ndarray,
                               kernel: str, out: np.ndarray, out_scale: np.ndarray) -> Optional[np.ndarray]:
    """The A8W8 swiglu-quant epilogue (dequant, SwiGLU, per-token int8 quantisation) by the compiled helper, one
    pass per row: the simulator's fp32 operations in its order, and its exp (the correctly rounded fp32 exp; a row
    where the helper's double exp lies too near an fp32 rounding midpoint to be sure is handed back).  Rows with
    a NaN anywhere (NaN payloads, the all-zero-row policy) are handed back too.  Returns the rows for NumPy, or
    None (no helper, another layout)."""
    if (acc.dtype != np.int32 or acc.ndim != 2 or not _swiglu_quant_outputs(*acc.shape, kernel, out, out_scale)
            or col_scale.ndim != 2 or col_scale.shape[1] != acc.shape[1] or row_group.shape != (acc.shape[0],)
            or row_scale.shape != (acc.shape[0],)):
        return None
    inputs = (np.ascontiguousarray(acc), np.ascontiguousarray(col_scale, dtype=np.float32),
              np.ascontiguousarray(row_group, dtype=np.int64), np.ascontiguousarray(row_scale, dtype=np.float32))
    return _run_swiglu_quant(_epilogue.swiglu_quant_a8w8, inputs, kernel, out, out_scale)


def compiled_swiglu_quant_f32(values: np.ndarray, kernel: str, out: np.ndarray,
                              out_scale: np.ndarray) -> Optional[np.ndarray]:
    """SwiGLU and the per-token int8 quantisation of dequantised fp32 ``values`` [rows, N] (the A8W4 path) by the
    compiled helper: the same steps and refusals as :func:`compiled_swiglu_quant_a8w8` after its dequant.
    Returns the rows for NumPy, or None (no helper, another layout)."""
    if values.dtype != _F32 or values.ndim != 2 or not _swiglu_quant_outputs(*values.shape, kernel, out, out_scale):
        return None
    return _run_swiglu_quant(_epilogue.swiglu_quant_f32, (np.ascontiguousarray(values),), kernel, out, out_scale)


def _threads_after_torch(threads: int) -> int:
    """Threads for a compiled step that runs right after a torch op, whose OpenMP workers keep spinning for about a
    millisecond: all of them on torch's own team (the spinning workers take the work up at once; 2 cores, right
    after torch._int_mm: swiglu-quant epilogue of 2048 x 1024 1.2 ms on two against 3.0 on one, dequant-scatter
    1.0 against 1.9), half on threads of our own, which would share the cores with the spinners (2.4 / 2.0 ms on
    two against 2.3 / 1.3 on one)."""
    return threads if _shares_torch_threads() else max(1, threads // 2)


def _threads_for(rows: int) -> int:
    """Threads for a row-parallel compiled helper: torch's intra-op count (the user's setting), one per
    256 rows at most."""
    return max(1, min(torch.get_num_threads(), rows // 256))


def compiled_top_k(v: np.ndarray, k: int, excluded: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The gate's top-k by the compiled helper: one pass per row keeping the k best in the same total order
    as the NumPy path (-0.0 == +0.0, NaN above +inf, ties to the lower index), so the same indices.  None
    (NumPy) for another layout or when a row has fewer than k entries that are not excluded."""
    if _select is None or v.dtype != _F32 or v.ndim != 2 or not 1 <= k <= v.shape[1]:
        return None
    if excluded is not None and excluded.shape != v.shape:
        return None
    out = np.empty((v.shape[0], k), dtype=np.int64)
    if not v.shape[0]:
        return out
    ex = None if excluded is None else np.ascontiguousarray(excluded, dtype=np.bool_).view(np.uint8)
    ok = _select.top_k_rows(np.ascontiguousarray(v), k, ex, out, _threads_for(v.shape[0]))
    return out if ok else None


def compiled_top2_sum(a: np.ndarray) -> Optional[np.ndarray]:
    """Each row's second largest + largest value (the grouped gate's group score) by the compiled helper: one
    pass per row, one fp32 add in NumPy's order.  None (NumPy) for another layout, or a row with a NaN or a
    -0.0 (where the sum could depend on which equal value the selection calls second)."""
    if _select is None or a.dtype != _F32 or a.ndim != 2 or a.shape[1] < 2:
        return None
    out = np.empty(a.shape[0], dtype=np.float32)
    if not a.shape[0]:
        return out
    if not _select.top2_sum_f32(np.ascontiguousarray(a), out, _threads_for(a.shape[0])):
        return None
    return out


def compiled_row_max(a: np.ndarray) -> Optional[np.ndarray]:
    """Each row's maximum ([rows, 1], fp32) by the compiled helper; None (NumPy) for another layout or when
    ``a`` holds a NaN, whose payload NumPy's reduction pins."""
    if _select is None or a.dtype != _F32 or a.ndim != 2 or not a.shape[0] or not a.shape[1]:
        return None
    out = np.empty((a.shape[0], 1), dtype=np.float32)
    if not _select.row_max_f32(np.ascontiguousarray(a), out.reshape(-1), _threads_for(a.shape[0])):
        return None
    return out


def compiled_tree_sum(a: np.ndarray, lanes: int) -> Optional[np.ndarray]:
    """The gate's ReduceSum per row by the compiled helper: the same fp32 adds in the same tree order."""
    if _select is None or a.dtype != _F32 or a.ndim != 2 or not a.shape[0] or not a.shape[1]:
        return None
    out = np.empty(a.shape[0], dtype=np.float32)
    _select.tree_sum_f32(np.ascontiguousarray(a), out, lanes, _threads_for(a.shape[0]))
    return out


# ---------------------------------------------------------------------------------------------
# float GEMM implementations: fn(out, a, b, bias_row, widen) -> bool (False = not covered)
# ---------------------------------------------------------------------------------------------

def _widen_torch(a: np.ndarray, widen: Optional[_simk.Widen]) -> Optional[torch.Tensor]:
    """fp32 torch operand of a (exact widening), from the weight cache when it holds it."""
    if a.dtype == _F32:
        return as_torch(a)
    if widen is not None:
        kept = widen(a, np.float32)
        if kept is not None:
            return as_torch(kept)
    t = as_torch(a)
    return None if t is None else t.float()


def torch_sgemm(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias_row: Optional[np.ndarray],
                widen: Optional[_simk.Widen] = None, memo: Optional["ExponentMemo"] = None,
                pack: Optional["Pack"] = None) -> bool:
    if a.ndim != 2 or b.ndim != 2 or not out.flags.c_contiguous or not torch_fp32_gemm_is_ieee():
        return False
    ta = as_torch(a) if a.dtype == _F32 else (None if as_torch(a) is None else as_torch(a).float())
    tb = _widen_torch(b, widen)
    tout = as_torch(out)
    if ta is None or tb is None or tout is None:
        return False
    if out.dtype == _F32:
        torch.mm(ta, tb, out=tout)
        if bias_row is not None:
            tout += torch.from_numpy(np.asarray(bias_row, dtype=np.float32))
        return True
    acc = torch.mm(ta, tb)
    if bias_row is not None:
        acc += torch.from_numpy(np.asarray(bias_row, dtype=np.float32))  # fp32 add before the one rounding
    fast_copy_cast(out, acc.numpy())
    return True


_CHUNK = 1 << 16


def min_nonzero_bf16_exponent(a: np.ndarray) -> Optional[int]:
    """Smallest biased exponent among the nonzero elements of bf16 array ``a`` (0: a subnormal is
    present; None: all zero).  Magnitude bits minus one, as unsigned 16-bit, map zero to the largest
    value, so one minimum finds the smallest nonzero magnitude.  One thread: this scan runs on every
    bf16 operand of a call, and threaded scans are 20-100x slower when the cores are shared."""
    bits = a.ravel(order="K").view(np.uint16)  # a view for C, F and other dense layouts
    if _scan is not None:   # the compiled single pass (ascend_moe.kernels._scan)
        smallest = _scan.min_magnitude_minus_one(bits)
    else:
        smallest = _min_magnitude_minus_one_numpy(bits)
    return None if smallest == 0xFFFF else (smallest + 1) >> 7


def _min_magnitude_minus_one_numpy(bits: np.ndarray) -> int:
    """The scan in NumPy, one cache-sized chunk at a time (a build without the compiled helper)."""
    buf = np.empty(min(bits.size, _CHUNK), dtype=np.uint16)
    smallest = 0xFFFF
    for i in range(0, bits.size, _CHUNK):
        chunk = bits[i:i + _CHUNK]
        part = buf[:chunk.size]
        np.bitwise_and(chunk, np.uint16(0x7FFF), out=part)
        np.subtract(part, np.uint16(1), out=part)  # 0 wraps to 0xFFFF
        smallest = min(smallest, int(part.min()))
    return smallest


def _root(a: np.ndarray) -> np.ndarray:
    """The outermost NumPy array ``a`` is a view of (its whole tensor, in the ops)."""
    while isinstance(a.base, np.ndarray) and a.base.dtype.itemsize == 2:
        a = a.base
    return a


class ExponentMemo:
    """Per-call memo of :func:`min_nonzero_bf16_exponent` over the whole array a group's slice is a
    view of: the minimum over the whole array bounds the slice's from below, so the guard stays
    conservative, and each operand is scanned once per call instead of once per group."""

    def __init__(self, persistent: Optional[Callable[[np.ndarray, Callable[[], Optional[int]]], Optional[int]]] = None
                 ) -> None:
        self._memo: Dict[int, Tuple[np.ndarray, Optional[int]]] = {}
        self._persistent = persistent  # e.g. a weight's value kept while the tensor is unchanged

    def __call__(self, a: np.ndarray) -> Optional[int]:
        root = _root(a)
        hit = self._memo.get(id(root))
        if hit is None or hit[0] is not root:
            compute = lambda: min_nonzero_bf16_exponent(root)  # noqa: E731
            value = compute() if self._persistent is None else self._persistent(root, compute)
            hit = (root, value)
            self._memo[id(root)] = hit
        return hit[1]


def bf16_flush_safe(a: np.ndarray, b: np.ndarray, exponent=min_nonzero_bf16_exponent) -> bool:
    """True when no product or partial sum of ``a @ b`` (bf16) can be an fp32 subnormal, so an
    instruction that flushes subnormals (``vdpbf16ps``, ``vcvtneps2bf16``) gives the IEEE result.

    Every nonzero bf16 value is a multiple of its quantum ``2**(e - 7)`` (``e`` its unbiased
    exponent), so every product and every fp32-rounded partial sum is a multiple of
    ``q = quantum_min(a) * quantum_min(b)`` and, when nonzero, at least ``q`` in magnitude.  Safe iff
    neither operand holds a subnormal and ``q >= 2**-126``, i.e. biased exponents ``Ea + Eb >= 142``.
    Costs one pass over each operand."""
    ea = exponent(a)
    if ea is None:
        return True
    if ea == 0:
        return False
    eb = exponent(b)
    return eb is None or (eb > 0 and ea + eb >= 142)


def torch_native(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias_row: Optional[np.ndarray],
                 widen: Optional[_simk.Widen] = None, memo: Optional[ExponentMemo] = None,
                 pack: Optional["Pack"] = None) -> bool:
    if (bias_row is not None or a.ndim != 2 or b.ndim != 2 or not (a.dtype == b.dtype == out.dtype)
            or a.dtype not in (_BF16, _F16) or not out.flags.c_contiguous):
        return False
    ta, tb, tout = as_torch(a), as_torch(b), as_torch(out)
    if ta is None or tb is None or tout is None:
        return False
    if a.dtype == _BF16 and not bf16_flush_safe(a, b, memo or min_nonzero_bf16_exponent):
        return False
    torch.mm(ta, tb, out=tout)
    return True


# ---------------------------------------------------------------------------------------------
# prepacked weights (oneDNN blocked layout)
# ---------------------------------------------------------------------------------------------

# pack(b) -> the packed form of weight view b (kept while unchanged), or None: use the plain path
Pack = Callable[[np.ndarray], Optional[torch.Tensor]]


def pack_weight(tb: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked form of the GEMM operand ``tb`` [K, N] (as a linear weight [N, K])."""
    return torch.ops.mkldnn._reorder_linear_weight(tb.t())


def packed_mm_into(tout: torch.Tensor, ta: torch.Tensor, packed: torch.Tensor) -> None:
    """``tout = ta @ b`` for ``packed = pack_weight(b)``: one fp32-accumulated inner product, one
    rounding to the output dtype (verified by :func:`packed_contract_holds`)."""
    tout.copy_(torch.ops.mkldnn._linear_pointwise(ta, packed, None, "none", [], ""))


def torch_fp32_gemm_is_ieee() -> bool:
    """Whether torch's fp32 GEMMs compute in fp32 now: a user may switch oneDNN to bf16 / tf32
    arithmetic for fp32 at any time (``torch.set_float32_matmul_precision("medium")`` or
    ``torch.backends.mkldnn.matmul.fp32_precision``), which would break the fp32 contract; such
    calls take the NumPy reference path."""
    try:
        precision = torch.backends.mkldnn.matmul.fp32_precision
    except AttributeError:  # pragma: no cover - older torch
        precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "other"
    return precision in ("ieee", "none")


def packed_supported(dtype: torch.dtype) -> bool:
    """Calls that may use the packed path now: bf16, or fp32 while torch's fp32 GEMMs are IEEE."""
    return dtype == torch.bfloat16 or (dtype == torch.float32 and torch_fp32_gemm_is_ieee())


def torch_packed(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias_row: Optional[np.ndarray],
                 widen: Optional[_simk.Widen] = None, memo: Optional[ExponentMemo] = None,
                 pack: Optional[Pack] = None) -> bool:
    plain = torch_native if a.dtype == _BF16 else torch_sgemm
    tdt = _TORCH_FLOAT.get(a.dtype)
    if (bias_row is not None or pack is None or a.ndim != 2 or b.ndim != 2 or not (a.dtype == b.dtype == out.dtype)
            or tdt not in (torch.bfloat16, torch.float32) or not out.flags.c_contiguous or not packed_supported(tdt)):
        return plain(out, a, b, bias_row, widen, memo)
    if a.dtype == _BF16 and not bf16_flush_safe(a, b, memo or min_nonzero_bf16_exponent):
        return False
    packed = pack(b)
    ta, tout = as_torch(a), as_torch(out)
    if packed is None or ta is None or tout is None:
        return plain(out, a, b, bias_row, widen, memo)
    packed_mm_into(tout, ta, packed)
    return True


def widen_fma_fits(out: np.ndarray, a: np.ndarray, b: np.ndarray, k_split: bool) -> bool:
    """Whether the compiled widen-FMA GEMM takes these operands as they are: bf16 / fp16 / fp32 throughout,
    ``a`` and ``out`` C-contiguous, the weight's columns contiguous or its k contiguous (a transposed
    weight, as the backward's ``dy @ w^T``); and for fp32 the K-split product (the weight gradient
    ``x^T @ dy``) in the layout :func:`ksplit_layout` names."""
    if _gemm is None or not (a.dtype == b.dtype == out.dtype):
        return False
    if k_split:
        return a.dtype == _F32 and ksplit_layout(out, a, b)
    return (a.dtype in (_BF16, _F16, _F32) and a.flags.c_contiguous and out.flags.c_contiguous and b.ndim in (2, 3)
            and (b.shape[-1] <= 1 or b.strides[-1] == b.itemsize or b.shape[-2] <= 1 or b.strides[-2] == b.itemsize)
            and all(st % b.itemsize == 0 for st in b.strides))


def ksplit_layout(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """The layout the compiled K-split products take (``out[e] = a[:, s:t] @ b[s:t]``): ``a`` the
    transpose of a C-contiguous [T, M] array (``x.t()``, as the backward passes it), ``b`` C-contiguous
    [T, N], ``out`` C-contiguous [E, M, N]."""
    return (a.ndim == 2 and b.ndim == 2 and out.ndim == 3 and a.T.flags.c_contiguous and b.flags.c_contiguous
            and out.flags.c_contiguous and a.shape[1] == b.shape[0] and out.shape[1:] == (a.shape[0], b.shape[1]))


def dot_bf16_fits(out: np.ndarray, a: np.ndarray, b: np.ndarray, k_split: bool) -> bool:
    """Whether the compiled AVX512-BF16 GEMM takes these operands as they are, bf16 only, on a CPU with the
    instruction: what :func:`widen_fma_fits` takes (a weight with its columns or its k contiguous); and the
    K-split product ``out[e] = a[:, s:t] @ b[s:t]`` (the weight gradient ``x^T @ dy``) in the layout
    :func:`ksplit_layout` names."""
    if a.dtype != _BF16 or _gemm is None or not _gemm.has_dot_bf16():
        return False
    if not k_split:
        return widen_fma_fits(out, a, b, k_split)
    return b.dtype == out.dtype == _BF16 and ksplit_layout(out, a, b)


def _compiled_call(impl: str, out: np.ndarray, a: np.ndarray, b3: np.ndarray,
                   groups: Sequence[Tuple[int, int, int]]) -> Callable[[], None]:
    """The compiled M-split entry of ``impl`` bound to its operands (views and thread count taken now)."""
    bits = np.uint16
    threads = torch.get_num_threads()
    if impl == "dot_bf16":
        return functools.partial(_gemm.grouped_dot_bf16, out.view(bits), a.view(bits), b3.view(bits), groups,
                                 threads)
    if a.dtype == _F32:
        return functools.partial(_gemm.grouped_fma_fp32, out, a, b3, groups, threads)
    return functools.partial(_gemm.grouped_widen_fma, out.view(bits), a.view(bits), b3.view(bits), groups,
                             a.dtype == _F16, threads)


def _run_compiled(impl: str, out: np.ndarray, a: np.ndarray, b3: np.ndarray,
                  groups: Sequence[Tuple[int, int, int]]) -> None:
    _compiled_call(impl, out, a, b3, groups)()


def _compiled_gemm(impl: str, fits: Callable[..., bool], out: np.ndarray, a: np.ndarray, b: np.ndarray,
                   bias_row: Optional[np.ndarray]) -> bool:
    """One GEMM by a compiled grouped kernel (one group), or False when it does not take the operands."""
    if bias_row is not None or a.ndim != 2 or b.ndim != 2 or not fits(out, a, b, False):
        return False
    if a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        return False
    _run_compiled(impl, out, a, b[None], [(0, 0, a.shape[0])])
    return True


def widen_fma(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias_row: Optional[np.ndarray],
              widen: Optional[_simk.Widen] = None, memo: Optional[ExponentMemo] = None,
              pack: Optional["Pack"] = None) -> bool:
    """``out = round(a @ b)`` by the compiled GEMM (``ascend_moe.kernels._gemm``): bf16 / fp16 operands
    widened exactly to fp32, one fp32 multiply-add per product in k order (exact products, so the same
    as a multiply then an add), one round-to-nearest-even; fp32 operands in the same loops (fp32
    accumulation within the summation bound, no rounding after); subnormals kept (flush-to-zero modes
    off during the call), so no operand scan and nothing kept of the weight (no digest proving a kept
    form current either).  Reads the weight once, in its own layout: made for memory-bound calls of a
    few rows."""
    return _compiled_gemm("widen_fma", widen_fma_fits, out, a, b, bias_row)


def dot_bf16(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias_row: Optional[np.ndarray],
             widen: Optional[_simk.Widen] = None, memo: Optional[ExponentMemo] = None,
             pack: Optional["Pack"] = None) -> bool:
    """``out = round(a @ b)`` for bf16 by the compiled AVX512-BF16 GEMM (``ascend_moe.kernels._gemm``):
    the dot-product instruction accumulates exact products in fp32 (one rounding at the end) where
    no product or partial sum can be subnormal, which it checks on the operands as it copies them
    (the instruction would flush those); from a weight block where one could, the widen-FMA order.
    Nothing is kept of the weight, so nothing needs proving current: made to compete with torch's
    own bf16 GEMM, which needs a scan or a kept fact of each operand for the same guarantee."""
    return _compiled_gemm("dot_bf16", dot_bf16_fits, out, a, b, bias_row)


COMPILED_GEMMS = ("widen_fma", "dot_bf16")
_COMPILED = frozenset(COMPILED_GEMMS)
# what torch_grouped runs, per operand dtype
_GROUPED_FP32 = frozenset({"torch_native", "torch_packed", "torch_sgemm", "widen_fma"})
_GROUPED_HALF = frozenset({"torch_native", "torch_packed"}) | _COMPILED


def compiled_grouped_plan(impl: str, out: np.ndarray, a: np.ndarray, b: np.ndarray,
                          runs: Sequence[Tuple[int, int, int]], k_split: bool) -> Optional[Callable[[], None]]:
    """The call of the compiled GEMM ``impl`` (``widen_fma`` / ``dot_bf16``) that computes every run of a grouped
    product (see :func:`torch_grouped`), made ready but not run; None where it does not take the operands as they
    are or (K split) two runs would write one output.  Ready first so that a caller with two products (the gmm
    backward) can set both up while the interpreter's state is still in the caches, then run them back to back."""
    if not (dot_bf16_fits if impl == "dot_bf16" else widen_fma_fits)(out, a, b, k_split):  # (dtypes, layouts)
        return None
    # the compiled entries read the (group, start, end) rows from the list itself (no NumPy array made per call)
    if not k_split:
        return _compiled_call(impl, out, a, b, runs)
    if len({run[0] for run in runs}) != len(runs):
        return None  # two runs writing one output: the per-group path
    if impl == "dot_bf16":
        bits = np.uint16
        return functools.partial(_gemm.grouped_dot_bf16_ksplit, out.view(bits), a.T.view(bits), b.view(bits), runs,
                                 torch.get_num_threads())
    # widen_fma takes the K-split product in fp32 only (its fits)
    return functools.partial(_gemm.grouped_fma_fp32_ksplit, out, a.T, b, runs, torch.get_num_threads())


def compiled_grouped(impl: str, out: np.ndarray, a: np.ndarray, b: np.ndarray, runs: Sequence[Tuple[int, int, int]],
                     k_split: bool) -> bool:
    """Every run of a grouped product by one call of the compiled GEMM ``impl`` (:func:`compiled_grouped_plan`,
    run at once); False, with nothing written, where it does not take the operands."""
    run = compiled_grouped_plan(impl, out, a, b, runs, k_split)
    if run is None:
        return False
    run()
    return True


def torch_grouped(out: np.ndarray, a: np.ndarray, b: np.ndarray, runs, k_split: bool,
                  impl_for_rows: Callable[[int], str], memo: Optional[ExponentMemo] = None,
                  pack: Optional[Pack] = None) -> bool:
    """A whole grouped GEMM (the ``grouped_gemm`` plug-in point of :mod:`ascend_moe.sim.kernels`):
    one torch view of each operand, then per group a torch slice and the chosen implementation's
    GEMM written straight into the output (no per-group NumPy round trip).  Covers the
    implementations that compute in the operands' dtype (``torch_native``, ``torch_packed``;
    ``torch_sgemm`` for fp32) and the compiled GEMMs (``widen_fma``, ``dot_bf16``); anything else
    returns False before writing, for the per-group path."""
    tdt = _TORCH_FLOAT.get(a.dtype)
    if tdt is None or not out.flags.c_contiguous:
        return False
    run_impls = [impl_for_rows(a.shape[0] if k_split else t - s) for _, s, t in runs]
    names = set(run_impls)
    allowed = _GROUPED_FP32 if tdt == torch.float32 else _GROUPED_HALF
    if (not names <= allowed or ("torch_native" in names and tdt == torch.float32)
            or (tdt == torch.float32 and names - {"widen_fma"} and not torch_fp32_gemm_is_ieee())):
        return False
    if (("widen_fma" in names and not widen_fma_fits(out, a, b, k_split))
            or ("dot_bf16" in names and not dot_bf16_fits(out, a, b, k_split))):
        return False  # the caller maps a compiled GEMM to another implementation for such operands
    # the subnormal guard: torch's bf16 kernels flush subnormals (the compiled GEMMs guard themselves)
    if (tdt == torch.bfloat16 and names - _COMPILED
            and not bf16_flush_safe(a, b, memo or min_nonzero_bf16_exponent)):
        return False
    if k_split and names and names <= _COMPILED:  # (one class: every run has a's rows)
        return compiled_grouped(names.pop(), out, a, b, runs, True)
    if names & _COMPILED:  # an M-split
        for impl in sorted(names & _COMPILED):  # each compiled GEMM's groups in one call
            mine = [run for run, used in zip(runs, run_impls) if used == impl]
            _run_compiled(impl, out, a, b, mine)
        runs = [run for run, used in zip(runs, run_impls) if used not in _COMPILED]
        if not runs:  # nothing for torch: no torch views needed
            return True
    ta, tb, tout = as_torch(a), as_torch(b), as_torch(out)
    if ta is None or tb is None or tout is None:
        return False
    if k_split:
        for e, s, t in runs:
            torch.mm(ta[:, s:t], tb[s:t], out=tout[e])
        return True
    # per group only the views its GEMM uses (a packed weight needs no torch view of its plain form)
    packing = pack is not None and "torch_packed" in names and packed_supported(tdt)
    for e, s, t in runs:
        if packing and impl_for_rows(t - s) == "torch_packed":
            packed = pack(b[e])
            if packed is not None:
                packed_mm_into(tout[s:t], ta[s:t], packed)
                continue
        torch.mm(ta[s:t], tb[e], out=tout[s:t])
    return True


def _within_fp32_bound_at_rows(mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dtype: torch.dtype,
                               k: int, n: int, rows: Tuple[int, ...], seed: int) -> bool:
    """``mm(a, b)`` for random ``a`` [m, k] and ``b`` [k, n] at each m of ``rows``: every output the RNE
    rounding of a value within the fp32 summation bound ``(k + 4) 2^-24 sum |a b|`` of the float64 product."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(k, n, generator=g).to(dtype)
    for m in rows:
        a = torch.randn(m, k, generator=g).to(dtype)
        got = mm(a, b).double()
        ref = a.double() @ b.double()
        bound = (k + 4) * 2.0 ** -24 * (a.double().abs() @ b.double().abs())
        lo, hi = (ref - bound).to(dtype).double(), (ref + bound).to(dtype).double()
        if not bool(((lo <= got) & (got <= hi)).all()):
            return False
    return True


def packed_contract_holds(dtype: torch.dtype) -> bool:
    """The packed path on this machine: the checks of :func:`native_contract_holds` (fp32
    accumulation, one rounding; a reduced-precision fp32 mode fails the random-operand bound), at
    several row counts (the blocked layout does not depend on them), plus for fp32 subnormal
    products and inputs kept exactly (no flush-to-zero)."""
    if not packed_supported(dtype):
        return False

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.empty(a.shape[0], b.shape[1], dtype=dtype)
        packed_mm_into(out, a, pack_weight(b))
        return out
    try:
        if not (native_contract_holds(dtype, mm)
                and _within_fp32_bound_at_rows(mm, dtype, 256, 40, (1, 5, 64, 300), 77)):
            return False
        if dtype == torch.float32:
            tiny = torch.tensor([[2.0 ** -70, 1e-40]], dtype=dtype)  # a subnormal product, a subnormal input
            got = mm(tiny, torch.tensor([[2.0 ** -70], [0.0]], dtype=dtype))
            got2 = mm(torch.tensor([[1e-40, 0.0]], dtype=dtype), torch.tensor([[1.0], [1.0]], dtype=dtype))
            if float(got) != 2.0 ** -140 or float(got2) != float(torch.tensor(1e-40, dtype=dtype)):
                return False
        return True
    except (RuntimeError, AttributeError):
        return False


class ieee_subnormals:
    """``with ieee_subnormals():`` the x86 flush-to-zero and denormals-are-zero modes off in this thread, restored
    after: the simulator's NumPy and torch arithmetic then keeps subnormals, as Atlas A2/A3 do, whatever
    ``torch.set_flush_denormal`` set (that mode is the calling thread's; the compiled helpers switch it off in
    each of their threads themselves)."""

    __slots__ = ("_bits", "_torch")

    def __enter__(self) -> "ieee_subnormals":
        self._torch = False
        if _scan is not None:
            self._bits = _scan.subnormal_modes_off()
        else:  # a build without the compiled helpers: torch's switch (no getter: a probe multiply)
            self._bits = 0
            self._torch = _flush_denormal_on()
            if self._torch:
                torch.set_flush_denormal(False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bits:
            _scan.subnormal_modes_restore(self._bits)
        elif self._torch:
            torch.set_flush_denormal(True)


def _flush_denormal_on() -> bool:
    """Whether torch's flush-denormal mode is on in this thread (torch has no getter: a subnormal
    operand of a multiply reads as zero then)."""
    return float(torch.tensor([1e-40], dtype=torch.float32).mul(1.0)) == 0.0


def _compiled_check_mm(fn: Callable[..., bool], dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                torch.Tensor]:
    """``mm(a, b)`` of torch tensors by the compiled GEMM ``fn`` (``widen_fma`` / ``dot_bf16``), for its contract
    check; a refusal of the check's own operands is an error (the check then fails)."""
    from ..ops._common import to_numpy

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.empty(a.shape[0], b.shape[1], dtype=dtype)
        if not fn(to_numpy(out), to_numpy(a.contiguous()), to_numpy(b.contiguous()), None):
            raise RuntimeError(f"{fn.__name__} refused its own check operands")
        return out
    return mm


def _ksplit_check_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` by the compiled K-split product of a's dtype (bf16: dot_bf16's, fp32: widen_fma's; one group,
    ``(a^T)^T @ b``, as :func:`compiled_grouped` runs the weight gradient), for its contract check; a refusal of
    the check's own operands is an error (the check then fails)."""
    from ..ops._common import to_numpy
    impl = "widen_fma" if a.dtype == torch.float32 else "dot_bf16"
    out = torch.empty(1, a.shape[0], b.shape[1], dtype=a.dtype)
    x = a.t().contiguous()  # [k, m]: the product runs over x's rows, as the weight gradient's over tokens
    if not compiled_grouped(impl, to_numpy(out), to_numpy(x).T, to_numpy(b.contiguous()), [(0, 0, a.shape[1])],
                            True):
        raise RuntimeError(f"{impl}'s K-split product refused its own check operands")
    return out[0]


def dot_bf16_contract_holds() -> bool:
    """The compiled AVX512-BF16 GEMM on this machine, its M-split and its K-split forms: the CPU has the
    instruction; the checks of :func:`native_contract_holds` (fp32 accumulation, one rounding) at row
    counts covering its 8 / 4 / 2 / 1-row tiles and its few-row blocking, an odd K over more than one
    block and columns past a 32-column strip; subnormal products and inputs give the IEEE result (its
    guard hands such blocks to the IEEE order), also after a first block that was safe."""
    if _gemm is None or not _gemm.has_dot_bf16():
        return False
    try:
        for mm in (_compiled_check_mm(dot_bf16, torch.bfloat16), _ksplit_check_mm):
            if not (native_contract_holds(torch.bfloat16, mm)
                    and _within_fp32_bound_at_rows(mm, torch.bfloat16, 301, 40, (1, 7, 15, 40, 64), 79)):
                return False
            # 2**-63 * 2**-64 twice sums to 2**-126; a subnormal input 2**-130 times 2**10 is 2**-120; the same
            # products placed after 300 rows of ordinary values (a first weight block that is safe)
            for lead in (0, 300):
                a = torch.zeros(2, lead + 3)
                w = torch.zeros(lead + 3, 2)
                if lead:
                    a[:, :lead] = 1.0
                    w[:lead, 0] = w[:lead, 1] = torch.tensor([(-1.0) ** i for i in range(lead)])
                a[0, lead] = a[0, lead + 1] = 2.0 ** -63
                a[1, lead] = 2.0 ** -130
                w[lead, 0] = w[lead + 1, 0] = 2.0 ** -64
                w[lead, 1] = 2.0 ** 10
                y = mm(a.bfloat16(), w.bfloat16()).double()
                if float(y[0, 0]) != 2.0 ** -126 or float(y[1, 1]) != 2.0 ** -120:
                    return False
        return True
    except (RuntimeError, ValueError):
        return False


def widen_fma_contract_holds(dtype: torch.dtype) -> bool:
    """The compiled widen-FMA GEMM on this machine (for fp32 its M-split and its K-split forms): the checks
    of :func:`native_contract_holds` (fp32 accumulation, one rounding), at row counts covering its 8 / 4 /
    2 / 1-row tiles and a column count covering its 32-column strips and the columns after them, plus
    subnormal products and inputs kept, also while torch's flush-denormal mode is on."""
    if _gemm is None or dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    forms = (_compiled_check_mm(widen_fma, dtype),) + ((_ksplit_check_mm,) if dtype == torch.float32 else ())
    try:
        return all(_widen_fma_form_holds(mm, dtype) for mm in forms)
    except (RuntimeError, ValueError):
        return False


def _widen_fma_form_holds(mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], dtype: torch.dtype) -> bool:
    """:func:`widen_fma_contract_holds` for one form of the GEMM (``mm``)."""
    if not (native_contract_holds(dtype, mm)
            and _within_fp32_bound_at_rows(mm, dtype, 256, 40, (1, 7, 15, 64), 78)):
        return False
    # two products of the smallest normal's half sum to it; a subnormal input times a power of two
    # (bf16 and fp32 share the exponent range: the same values)
    small, sub, up = (2.0 ** -12, 2.0 ** -24, 2.0 ** 4) if dtype == torch.float16 else (2.0 ** -63, 2.0 ** -130,
                                                                                        2.0 ** 10)
    half_normal = 2.0 ** -25 if dtype == torch.float16 else 2.0 ** -127
    a = torch.tensor([[small, small, 0.0], [sub, 0.0, 0.0]], dtype=dtype)
    w = torch.tensor([[half_normal / small, up], [half_normal / small, 0.0], [0.0, 0.0]], dtype=dtype)
    flushing = _flush_denormal_on()
    try:
        for flush in (False, True):
            if not torch.set_flush_denormal(flush) and flush:
                continue  # no flush mode on this CPU
            y = mm(a, w).double()
            if float(y[0, 0]) != 2 * half_normal or float(y[1, 1]) != float(torch.tensor(sub * up, dtype=dtype)):
                return False
    finally:
        torch.set_flush_denormal(flushing)
    return True


FLOAT_IMPLS: Dict[str, Optional[Callable[..., bool]]] = {
    "reference": None, "torch_sgemm": torch_sgemm, "torch_native": torch_native, "torch_packed": torch_packed,
    "widen_fma": widen_fma, "dot_bf16": dot_bf16,
}


def native_contract_holds(dtype: torch.dtype,
                          mm: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> bool:
    """Whether torch's half-precision matmul on this machine accumulates in fp32 and rounds once:
    (1) 4096 ones summed (a half-precision accumulator stalls at 256 / 2048); (2) random operands at
    K = 1024: every output equals the RNE rounding of a value within the fp32 summation bound of the
    float64 product; (3) a sum cancelling to one low bit (fp32 keeps it, a rounding per step would not).
    ``mm``: the GEMM to check (torch.mm by default)."""
    mm = mm or torch.mm
    try:
        k = 4096
        ones = torch.ones(4, k, dtype=dtype)
        if not bool((mm(ones, torch.ones(k, 4, dtype=dtype)) == k).all()):
            return False
        g = torch.Generator().manual_seed(1234)
        a = torch.randn(32, 1024, generator=g).to(dtype)
        b = torch.randn(1024, 24, generator=g).to(dtype)
        got = mm(a, b).double()
        ref = a.double() @ b.double()
        bound = (1024 + 4) * 2.0 ** -24 * (a.double().abs() @ b.double().abs())
        lo, hi = (ref - bound).to(dtype).double(), (ref + bound).to(dtype).double()
        if not bool(((lo <= got) & (got <= hi)).all()):
            return False
        big = 2.0 ** 10 if dtype == torch.float16 else 2.0 ** 20
        x = torch.tensor([[big, 1.0, -big]], dtype=dtype)
        y = torch.ones(3, 1, dtype=dtype)
        return float(mm(x, y)) == 1.0
    except RuntimeError:
        return False


def native_contract_holds_k_contiguous() -> bool:
    """:func:`native_contract_holds`' bound check for torch's bf16 matmul of a weight whose k is contiguous (the
    backward's ``dy @ w^T``, a transposed view; oneDNN may run another kernel for it), at 300 and 512 rows,
    K = 2048: every output the RNE rounding of a value within the fp32 summation bound."""
    try:
        return _within_fp32_bound_at_rows(lambda a, b: torch.mm(a, b.t().contiguous().t()), torch.bfloat16,
                                          2048, 64, (300, 512), 4321)
    except RuntimeError:
        return False


# ---------------------------------------------------------------------------------------------
# exact integer GEMM implementations: fn(a, b) -> int32 ndarray or None
# ---------------------------------------------------------------------------------------------

def torch_int_mm(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    if a.dtype != np.int8 or b.dtype != np.int8 or a.shape[1] > INT_MM_MAX_K:
        return None
    ta, tb = as_torch(a), as_torch(b)
    if ta is None or tb is None:
        return None
    # strided operands (e.g. unpacked int4 views) take a slow generic path inside _int_mm: one
    # dense copy (the reference path copies too, to float32) is far cheaper
    if not (ta.is_contiguous() or ta.t().is_contiguous()):
        ta = ta.contiguous()
    if not (tb.is_contiguous() or tb.t().is_contiguous()):
        tb = tb.contiguous()
    tout = as_torch(out) if out is not None and out.dtype == np.int32 and out.flags.c_contiguous else None
    if tout is not None and tuple(tout.shape) == (ta.shape[0], tb.shape[1]):
        torch._int_mm(ta, tb, out=tout)   # straight into the caller's rows: no second copy
        return out
    return torch._int_mm(ta, tb).numpy()


def _dot_int8_takes(x: np.ndarray, bands: np.ndarray) -> bool:
    """Whether the compiled VNNI GEMM runs here and takes these operands: x int8 [M, K] C-contiguous, the weight's
    bands int8 [E, ceil(N/32), K, 32] with the last dimension contiguous."""
    return (_gemm is not None and _gemm.has_dot_int8() and x.dtype == np.int8 and x.flags.c_contiguous
            and bands.dtype == np.int8 and bands.ndim == 4 and bands.shape[3] == 32 and bands.strides[3] == 1
            and bands.shape[2] == x.shape[1])


def grouped_dot_int8(out: np.ndarray, x: np.ndarray, bands: np.ndarray, n: int, runs) -> bool:
    """``out[s:t] = x[s:t] @ w[e]`` (exact int32) for each ``(e, s, t)`` of ``runs`` by the compiled AVX512-VNNI
    GEMM, the weight given as its 32-column bands (FRACTAL_NZ storage viewed ``[E, N/32, K, 32]``, or
    :func:`int8_bands` of an ND weight); False (nothing written) when the CPU or the operands do not suit it."""
    if (not _dot_int8_takes(x, bands) or out.dtype != np.int32 or not out.flags.c_contiguous
            or out.shape != (x.shape[0], n)):
        return False
    _gemm.grouped_dot_int8(out, x, bands, n, runs, torch.get_num_threads())  # the runs as they are (no NumPy array)
    return True


def grouped_dot_int8_scatter(y: np.ndarray, x: np.ndarray, bands: np.ndarray, n: int, runs, index: np.ndarray,
                             col: np.ndarray, row: np.ndarray) -> bool:
    """The finalize-routing A8W8 GEMM and epilogue in one compiled pass: for each ``(e, s, t)`` of ``runs`` (in row
    order) ``y[index[r]] += (fp32(x[r] @ w[e]) * col[e]) * row[r]`` for r in s..t-1 in order, the exact int32 product
    as :func:`grouped_dot_int8` makes it, never written out (each fp32 step as :func:`compiled_dequant_scatter`
    takes it).  Under the same condition: finite scales and no product that could overflow, so no NaN is made
    whose payload would depend on operand order.  False (nothing written) otherwise."""
    if (not _dot_int8_takes(x, bands) or y.dtype != _F32 or not y.flags.c_contiguous or not y.flags.writeable
            or col.dtype != _F32 or row.dtype != _F32 or y.ndim != 2 or y.shape[1] != n
            or col.shape != (bands.shape[0], n) or row.shape != (x.shape[0],) or index.shape != (x.shape[0],)):
        return False
    if not runs:
        return True
    if not _dequant_cannot_overflow(col, row):
        return False
    _gemm.grouped_dot_int8_scatter(y, x, bands, n, runs,
                                   np.ascontiguousarray(index, dtype=np.int64), np.ascontiguousarray(col),
                                   np.ascontiguousarray(row), torch.get_num_threads())
    return True


def dot_int8(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """``a @ b`` (int8, exact int32) by the compiled AVX512-VNNI GEMM; a weight that is not a band view as it is
    (N not a multiple of 32, a strided view) is copied into zero-padded bands first."""
    if a.dtype != np.int8 or b.dtype != np.int8 or a.ndim != 2 or b.ndim != 2 or _gemm is None:
        return None
    m, n = a.shape[0], b.shape[1]
    bands = int8_bands(b)
    if bands is None:
        padded = np.zeros((b.shape[0], (n + 31) // 32 * 32), dtype=np.int8)
        padded[:, :n] = b
        bands = int8_bands(padded)
    if out is None or out.dtype != np.int32 or not out.flags.c_contiguous or out.shape != (m, n):
        out = np.empty((m, n), dtype=np.int32)
    if not grouped_dot_int8(out, np.ascontiguousarray(a), bands, n, [(0, 0, m)]):
        return None
    return out


INT_IMPLS: Dict[str, Optional[Callable[..., Optional[np.ndarray]]]] = {
    "reference": None, "torch_int_mm": torch_int_mm, "dot_int8": dot_int8,
}


def int_mm_exact_on_this_machine() -> bool:
    """``torch._int_mm`` bit-exact against int64 math (:func:`_int8_gemm_exact`)."""
    if not hasattr(torch, "_int_mm"):
        return False
    return _int8_gemm_exact(torch._int_mm)


def dot_int8_contract_holds() -> bool:
    """The compiled AVX512-VNNI GEMM on this machine bit-exact against int64 math (:func:`_int8_gemm_exact`), as
    a single GEMM (its padded copy of a weight whose N is not a multiple of 32 among them) and grouped over
    FRACTAL_NZ storage read in place (rows of two experts, given out of order)."""
    if _gemm is None or not _gemm.has_dot_int8():
        return False

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = dot_int8(a.numpy(), b.numpy())
        if out is None:
            raise RuntimeError("dot_int8 declined its operands")
        return torch.from_numpy(out)

    def grouped_nz(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # the weight as FRACTAL_NZ storage [E, N/32, K, 32] of two experts, the second all -128, whose rows
        # (three rows of ones) come first in the group list
        k, n = b.shape
        kp, npad = (k + 15) // 16 * 16, (n + 31) // 32 * 32
        w = np.full((2, kp, npad), -128, dtype=np.int8)
        w[0] = 0
        w[0, :k, :n] = b.numpy()
        nz = np.ascontiguousarray(w.reshape(2, kp, npad // 32, 32).transpose(0, 2, 1, 3))
        rows = a.shape[0]
        x = np.zeros((rows + 3, kp), dtype=np.int8)
        x[:rows, :k] = a.numpy()
        x[rows:, :k] = 1
        out = np.full((rows + 3, npad), 7, dtype=np.int32)
        if not grouped_dot_int8(out, x, nz, npad, [(1, rows, rows + 3), (0, 0, rows)]):
            raise RuntimeError("grouped_dot_int8 declined its operands")
        if not (out[rows:] == -128 * k).all():
            return torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32)  # wrong: fails the comparison
        return torch.from_numpy(out[:rows, :n].copy())
    return _int8_gemm_exact(mm) and _int8_gemm_exact(grouped_nz)


def _int8_gemm_exact(mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``mm`` (int8 x int8 -> int32) bit-exact against int64 math on patterns that saturate an int16 pairwise sum
    (-128 * -128 + -128 * -128 = 32768), mixed extremes, random values and odd shapes."""
    try:
        g = torch.Generator().manual_seed(99)
        cases = [
            (torch.full((17, 1024), -128, dtype=torch.int8), torch.full((1024, 24), -128, dtype=torch.int8)),
            (torch.full((8, 512), 127, dtype=torch.int8), torch.full((512, 8), -128, dtype=torch.int8)),
            (torch.randint(-128, 128, (33, 2048), generator=g, dtype=torch.int8),
             torch.randint(-128, 128, (2048, 40), generator=g, dtype=torch.int8)),
            (torch.randint(-128, 128, (1, 7), generator=g, dtype=torch.int8),
             torch.randint(-128, 128, (7, 3), generator=g, dtype=torch.int8)),
            (torch.randint(-128, 128, (13, 1100), generator=g, dtype=torch.int8),
             torch.randint(-128, 128, (1100, 96), generator=g, dtype=torch.int8)),
        ]
        alt = torch.tensor([-128, 127], dtype=torch.int8).repeat(256)
        cases.append((alt.repeat(5, 1), alt.flip(0).repeat(9, 1).t().contiguous()))
        for a, b in cases:
            if not torch.equal(mm(a, b).long(), a.long() @ b.long()):
                return False
        return True
    except RuntimeError:
        return False
