"""The elementwise ops of the MoE quantised path: ``npu_swiglu`` (+ backward), ``npu_dynamic_quant``
(symmetric and asymmetric) and ``npu_dequant_swiglu_quant`` (spec moe-quant-path 1-3).

Unchecked NumPy computations; target-dependent behaviour (which kernel recipe a CANN release and a
shape select) is an explicit parameter, chosen by the caller (the torch layer / the rules).

Faithfulness contract (every fp32 step is one IEEE float32 operation, round-to-nearest-even, in the
kernel's order; casts follow the AscendC rules of spec 0.1):

* **SwiGLU** (``swiglu``; kernel ``swi_glu_impl.hpp`` / ``swi_glu_bf16.hpp``): ``out = silu(a) * b`` with
  ``a`` the **first** half along ``dim``.  fp32 kernel: ``t = exp(-a); t = t + 1; t = 1 / t; t = t * a;
  out = t * b`` (reciprocal, then two multiplies).  fp16/bf16 kernel, in fp32 after an exact widening:
  ``t = exp(-a) + 1; t = a / t`` (one division); ``t = t * b``; one RNE cast to the input dtype.
* **SwiGLU backward** (``swi_glu_grad_*.hpp``): ``sig = 1 / (exp(-a) + 1)``; ``grad_b = (sig * a) * g``;
  ``grad_a = (((sig * ((-sig) + 1)) * a) + sig) * b * g`` with the last two factors in the order
  ``* b`` then ``* g`` for fp32 and ``* g`` then ``* b`` for fp16/bf16; one RNE cast per output.
* **dynamic quant, symmetric** (``dynamic_quant*.h``): ``v = fp32(x) [* fp32(smooth)]``;
  ``amax = max|v|``; ``qs = DMAX / amax``; ``q = rint(v * qs)`` (multiply by the reciprocal scale,
  one RNE, saturating); output scale by ``scale_formula``: ``"reciprocal"`` = ``1 / qs`` (keys 0/1/6/7/8,
  and every key of CANN 8.5.0) or ``"multiply"`` = ``amax * fp32(1/DMAX)`` (keys 2/3/10/100 from 9.0.0).
* **dynamic quant, asymmetric**: ``scale = max((max(v) - min(v)) / R, 1e-12)``;
  ``offset = O - max(v) / scale``; ``q = rint(v * (1 / scale) + offset)`` (R, O = 255, 127 for int8;
  15, 7 for int4).
* **dequant-SwiGLU-quant** (group path, ``dequant_swiglu_quant.h``): int32 ``x (+ int32 bias)`` ->
  fp32 (RNE) ``* weight_scale[g]`` ``* activation_scale[row]`` ``(+ float bias)``; the activated half is
  the **second** one unless ``activate_left``; ``S = G * (A / (exp(-A) + 1))``; dynamic:
  ``S = quant_scale[g] * S`` (if given), ``scale = amax * fp32(1/127)``, ``q = rint(S / scale)``
  (a division); static: ``q = rint(S * (1 / quant_scale) + offset)`` for a scalar quant_scale (0 taken
  as 1), ``rint(S / quant_scale + offset)`` per channel.
* **the one deviation: exp** - float64 ``exp`` rounded to float32 (:func:`~ascend_moe.sim.swiglu_quant.exp_f32`);
  the hardware ``Exp`` is not public and may differ by 1-2 ulp.
* **all-zero rows** follow the named all-zero-row policy (:mod:`ascend_moe.sim.zero_rows`, default:
  quantised values 0, as CANN's test tables expect); their output scale is 0, well defined.
* **undefined regions**: rows past ``group_index``'s total (dynamic quant: rows ``>= group_index[-1]``;
  dequant-SwiGLU-quant: rows past the sum of the counts), and the static-mode ``scale`` output, which
  the kernel never writes, follow the undefined-region policy.

Named assumptions [I]: int8 conversions saturate; the non-group dequant-SwiGLU-quant kernels (tiling
keys 1000x/3000x, no ``group_index``) are simulated with the group-path arithmetic (their exact
sequence is not public); ``swiglu_mode`` 1 takes the even columns as the activated half.
"""
from __future__ import annotations

from typing import Optional, Tuple

import ml_dtypes
import numpy as np

from .numerics import dtype_name, fill_undefined, float_to_int, np_dtype, pack_int4
from .swiglu_quant import exp_f32
from .zero_rows import apply_zero_rows

__all__ = ["swiglu", "swiglu_backward", "dynamic_quant", "dynamic_quant_asymmetric", "dequant_swiglu_quant",
           "npu_swiglu", "npu_swiglu_backward", "npu_dynamic_quant", "npu_dynamic_quant_asymmetric",
           "npu_dequant_swiglu_quant", "dst_of", "SCALE_FORMULAS", "DYNAMIC_QUANT_DST"]

F32 = np.float32
SWIGLU_DTYPES = ("float32", "float16", "bfloat16")
SCALE_FORMULAS = ("reciprocal", "multiply")
# dst name -> (DMAX of the symmetric recipe, (R, O) of the asymmetric recipe, value range)
DYNAMIC_QUANT_DST = {"int8": (127.0, (255.0, 127.0), (-128, 127)),
                     "int4": (7.0, (15.0, 7.0), (-8, 7)),
                     "int32": (7.0, (15.0, 7.0), (-8, 7))}   # int32 = int4 packed 8 per element
ASYM_MIN_SCALE = F32(1e-12)


# --------------------------------------------------------------------------------------------
# SwiGLU
# --------------------------------------------------------------------------------------------

def _halves(x: np.ndarray, dim: int) -> Tuple[np.ndarray, np.ndarray, int]:
    if x.ndim == 0:
        raise ValueError("swiglu needs at least a 1-D input")
    d = dim + x.ndim if dim < 0 else dim
    if not 0 <= d < x.ndim:
        raise ValueError(f"dim={dim} is out of range for a {x.ndim}-D input")
    size = x.shape[d]
    if size % 2:
        raise ValueError(f"x.shape[{dim}] = {size} must be even (the two SwiGLU halves)")
    h = size // 2
    a = np.take(x, np.arange(h), axis=d)
    b = np.take(x, np.arange(h, size), axis=d)
    return a, b, d


def _check_swiglu_dtype(x: np.ndarray) -> str:
    dt = dtype_name(x)
    if dt not in SWIGLU_DTYPES:
        raise ValueError(f"swiglu takes float32, float16 or bfloat16, got {dt}")
    return dt


def swiglu(x: np.ndarray, dim: int = -1) -> np.ndarray:
    """``silu(first half) * second half`` along ``dim``, in the kernel's per-dtype op order."""
    x = np.asarray(x)
    dt = _check_swiglu_dtype(x)
    a, b, _ = _halves(x, dim)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if dt == "float32":
            t = exp_f32(np.negative(a))
            t = np.add(t, F32(1.0), dtype=F32)
            t = np.divide(F32(1.0), t, dtype=F32)
            t = np.multiply(t, a, dtype=F32)
            return np.multiply(t, b, dtype=F32)
        a32, b32 = a.astype(F32), b.astype(F32)
        t = np.add(exp_f32(np.negative(a32)), F32(1.0), dtype=F32)
        t = np.divide(a32, t, dtype=F32)
        t = np.multiply(t, b32, dtype=F32)
        return t.astype(x.dtype)


def swiglu_backward(grad_output: np.ndarray, x: np.ndarray, dim: int = -1) -> np.ndarray:
    """Gradient of :func:`swiglu` w.r.t. ``x`` ([grad_a | grad_b], x's shape and dtype)."""
    x = np.asarray(x)
    g = np.asarray(grad_output)
    dt = _check_swiglu_dtype(x)
    a, b, d = _halves(x, dim)
    if g.shape != a.shape:
        raise ValueError(f"grad_output shape {g.shape} must be x's shape with dim {dim} halved, {a.shape}")
    if dtype_name(g) != dt:
        raise ValueError(f"grad_output dtype {dtype_name(g)} must equal x dtype {dt}")
    a32, b32, g32 = a.astype(F32), b.astype(F32), g.astype(F32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        sig = np.add(exp_f32(np.negative(a32)), F32(1.0), dtype=F32)
        sig = np.divide(F32(1.0), sig, dtype=F32)
        grad_b = np.multiply(np.multiply(sig, a32, dtype=F32), g32, dtype=F32)
        one_minus = np.add(np.negative(sig), F32(1.0), dtype=F32)
        m = np.multiply(sig, one_minus, dtype=F32)
        m = np.multiply(m, a32, dtype=F32)
        m = np.add(m, sig, dtype=F32)
        if dt == "float32":
            m = np.multiply(np.multiply(m, b32, dtype=F32), g32, dtype=F32)
        else:
            m = np.multiply(np.multiply(m, g32, dtype=F32), b32, dtype=F32)
    return np.concatenate([m, grad_b], axis=d).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# dynamic quant
# --------------------------------------------------------------------------------------------

def _smooth_rows(rows: int, smooth: np.ndarray, group_index: Optional[np.ndarray]
                 ) -> Tuple[np.ndarray, int]:
    """Per-row smooth scale [rows, H] (fp32) and the number of rows the kernel covers.

    With ``group_index`` (a cumsum, the MoE kernel's search): row r uses the first group i with
    ``group_index[i] >= r + 1``; rows ``>= group_index[-1]`` have no group (the kernel reads past the
    end: undefined)."""
    sm = np.asarray(smooth).astype(F32)
    if group_index is None:
        return np.broadcast_to(sm.reshape(1, -1), (rows, sm.shape[-1])), rows
    gi = np.asarray(group_index).astype(np.int64).reshape(-1)
    if gi.size == 0:
        return np.zeros((rows, sm.shape[-1]), F32), 0
    if gi.size > 1 and np.any(np.diff(gi) < 0):
        raise ValueError(f"group_index must be non-decreasing (a cumsum), got {gi.tolist()}")
    covered = int(min(max(int(gi[-1]), 0), rows))
    grp = np.searchsorted(gi, np.arange(covered) + 1, side="left")
    out = np.zeros((rows, sm.shape[-1]), F32)
    out[:covered] = sm.reshape(gi.size, -1)[grp]
    return out, covered


def _prepare(x: np.ndarray, smooth_scales, group_index) -> Tuple[np.ndarray, int, Tuple[int, ...]]:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"dynamic quant needs x with at least 2 dims, got shape {x.shape}")
    if dtype_name(x) not in ("float16", "bfloat16"):
        raise ValueError(f"dynamic quant takes float16 or bfloat16 x, got {dtype_name(x)}")
    v = x.reshape(-1, x.shape[-1]).astype(F32)
    covered = v.shape[0]
    if smooth_scales is not None:
        sm, covered = _smooth_rows(v.shape[0], smooth_scales, group_index)
        v = np.multiply(v, sm, dtype=F32)
    elif group_index is not None:
        raise ValueError("group_index needs smooth_scales (the per-expert smooth rows it selects)")
    return v, covered, x.shape


def _finish(q8: np.ndarray, shape: Tuple[int, ...], dst: str) -> np.ndarray:
    q8 = q8.reshape(shape)
    if dst == "int8":
        return q8
    q4 = np.maximum(q8, -8)          # the poison sentinel -128 becomes int4's minimum
    if dst == "int4":
        return q4.astype(ml_dtypes.int4)
    return pack_int4(q4, "int32")


def dynamic_quant(x: np.ndarray, smooth_scales: Optional[np.ndarray] = None,
                  group_index: Optional[np.ndarray] = None, *, dst: str = "int8",
                  scale_formula: str = "reciprocal", zero_row: Optional[str] = None,
                  undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Per-token symmetric dynamic quantisation (A2/A3 kernels).

    ``x`` fp16/bf16 [..., H]; ``smooth_scales`` [H] (or [E, H] with ``group_index``, a cumsum of rows per
    expert); ``dst`` ``"int8"``, ``"int4"`` (ml_dtypes int4 values) or ``"int32"`` (int4 packed 8 per
    int32, low nibble first, last dim / 8); ``scale_formula`` picks the output-scale recipe of the kernel
    the target selects (module docstring).  Returns ``(y, scale fp32 [...])``.
    """
    if dst not in DYNAMIC_QUANT_DST:
        raise ValueError(f"dst must be one of {sorted(DYNAMIC_QUANT_DST)}, got {dst!r}")
    if scale_formula not in SCALE_FORMULAS:
        raise ValueError(f"scale_formula must be one of {SCALE_FORMULAS}, got {scale_formula!r}")
    v, covered, shape = _prepare(x, smooth_scales, group_index)
    dmax, _, (lo, hi) = DYNAMIC_QUANT_DST[dst]
    if dst == "int32" and shape[-1] % 8:
        raise ValueError(f"int4 packed in int32 needs the last dim to be a multiple of 8, got {shape[-1]}")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        amax = np.max(np.abs(v), axis=1) if v.shape[1] else np.zeros(v.shape[0], F32)
        qs = np.divide(F32(dmax), amax, dtype=F32)
        t = np.multiply(v, qs[:, None], dtype=F32)
        if scale_formula == "reciprocal":
            scale = np.divide(F32(1.0), qs, dtype=F32)
        else:
            scale = np.multiply(amax, F32(1.0 / dmax), dtype=F32)
    nan = np.isnan(t)
    q = np.clip(float_to_int(t, "int8", rounding="rint"), lo, hi).astype(np.int8)
    apply_zero_rows(q, nan, amax == 0, zero_row, undefined)
    if covered < q.shape[0]:
        fill_undefined(q, slice(covered, None), undefined)
        fill_undefined(scale, slice(covered, None), undefined)
    return _finish(q, shape, dst), scale.reshape(shape[:-1])


def dynamic_quant_asymmetric(x: np.ndarray, smooth_scales: Optional[np.ndarray] = None,
                             group_index: Optional[np.ndarray] = None, *, dst: str = "int8",
                             undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token asymmetric dynamic quantisation (A2/A3 ``DynamicQuantV2`` kernel).

    Returns ``(y, scale fp32, offset fp32)``; ``y = rint(v * (1/scale) + offset)``, so
    ``v ~ (y - offset) * scale``.  An all-equal row (all zero included) gets scale 1e-12 (well defined).
    """
    if dst not in DYNAMIC_QUANT_DST:
        raise ValueError(f"dst must be one of {sorted(DYNAMIC_QUANT_DST)}, got {dst!r}")
    v, covered, shape = _prepare(x, smooth_scales, group_index)
    _, (r, o), (lo, hi) = DYNAMIC_QUANT_DST[dst]
    if dst == "int32" and shape[-1] % 8:
        raise ValueError(f"int4 packed in int32 needs the last dim to be a multiple of 8, got {shape[-1]}")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if v.shape[1]:
            mx, mn = np.max(v, axis=1), np.min(v, axis=1)
        else:
            mx = mn = np.zeros(v.shape[0], F32)
        scale = np.maximum(np.divide(np.subtract(mx, mn, dtype=F32), F32(r), dtype=F32), ASYM_MIN_SCALE)
        offset = np.subtract(F32(o), np.divide(mx, scale, dtype=F32), dtype=F32)
        recip = np.divide(F32(1.0), scale, dtype=F32)
        t = np.add(np.multiply(v, recip[:, None], dtype=F32), offset[:, None], dtype=F32)
    nan = np.isnan(t)
    q = np.clip(float_to_int(t, "int8", rounding="rint"), lo, hi).astype(np.int8)
    if nan.any():
        fill_undefined(q, nan, undefined)
    if covered < q.shape[0]:
        for arr in (q, scale, offset):
            fill_undefined(arr, slice(covered, None), undefined)
    return _finish(q, shape, dst), scale.reshape(shape[:-1]), offset.reshape(shape[:-1])


# --------------------------------------------------------------------------------------------
# dequant + SwiGLU + quant
# --------------------------------------------------------------------------------------------

INV_127_F32 = np.float32(1.0 / 127.0)


def _row_groups(rows: int, group_index: Optional[np.ndarray]) -> Tuple[np.ndarray, int]:
    """Group of each covered row and the covered-row count (counts; negative counts are 0; a group is
    processed only while the running offset is below ``rows``)."""
    if group_index is None:
        return np.zeros(rows, np.int64), rows
    counts = np.maximum(np.asarray(group_index).astype(np.int64).reshape(-1), 0)
    ends = np.minimum(np.cumsum(counts), rows)
    covered = int(ends[-1]) if ends.size else 0
    grp = np.searchsorted(ends, np.arange(covered), side="right")
    return grp, covered


def _per_group(t: Optional[np.ndarray], grp: np.ndarray, width: int) -> Optional[np.ndarray]:
    """Per-row values [covered, width] of a parameter given per group ([G, width]) or shared by all
    groups ([width], [1, width], or one value); float parameters as fp32, int32 kept."""
    if t is None:
        return None
    a = np.asarray(t)
    a = a if dtype_name(a) == "int32" else a.astype(F32)
    if a.ndim <= 1 or (a.ndim == 2 and a.shape[0] == 1):
        row = a.reshape(-1)
        if row.size == 1:
            row = np.full(width, row[0], dtype=row.dtype)
        return np.broadcast_to(row[None, :], (grp.size, row.size))
    return a.reshape(a.shape[0], -1)[grp]


def dequant_swiglu_quant(x: np.ndarray, weight_scale: Optional[np.ndarray] = None,
                         activation_scale: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                         quant_scale: Optional[np.ndarray] = None, quant_offset: Optional[np.ndarray] = None,
                         group_index: Optional[np.ndarray] = None, *, activate_left: bool = False,
                         quant_mode: int = 0, swiglu_mode: int = 0, clamp_limit: float = 7.0,
                         glu_alpha: float = 1.702, glu_bias: float = 1.0, zero_row: Optional[str] = None,
                         undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``npu_dequant_swiglu_quant`` arithmetic: ``x`` int32 (GMM output) or fp16/bf16 [T, 2H];
    ``weight_scale`` [G, 2H] / [2H] fp32; ``activation_scale`` [T] fp32; ``bias`` int32 or float [G, 2H] /
    [2H]; ``quant_scale`` [G, H] / [H] / [1] fp32; ``quant_offset`` like quant_scale (static mode);
    ``group_index`` [G] token **counts**; ``quant_mode`` 0 static, 1 dynamic.
    Returns ``(y int8 [T, H], scale fp32 [T])``.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims [..., 2H], got shape {x.shape}")
    if x.shape[-1] % 2:
        raise ValueError(f"x's last dim {x.shape[-1]} must be even")
    if x.ndim > 2:     # leading dims are tokens
        y, scale = dequant_swiglu_quant(
            x.reshape(-1, x.shape[-1]), weight_scale,
            None if activation_scale is None else np.asarray(activation_scale).reshape(-1), bias, quant_scale,
            quant_offset, group_index, activate_left=activate_left, quant_mode=quant_mode,
            swiglu_mode=swiglu_mode, clamp_limit=clamp_limit, glu_alpha=glu_alpha, glu_bias=glu_bias,
            zero_row=zero_row, undefined=undefined)
        return y.reshape(*x.shape[:-1], -1), scale.reshape(x.shape[:-1])
    if quant_mode not in (0, 1):
        raise ValueError(f"quant_mode must be 0 (static) or 1 (dynamic), got {quant_mode}")
    if swiglu_mode not in (0, 1, 2):
        raise ValueError(f"swiglu_mode must be 0, 1 or 2, got {swiglu_mode}")
    T, H2 = x.shape
    H = H2 // 2
    grp, covered = _row_groups(T, group_index)
    xi = x[:covered]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if dtype_name(x) == "int32":
            if bias is not None and dtype_name(bias) == "int32":
                xi = (xi.astype(np.int64) + _per_group(bias, grp, H2).astype(np.int64)).astype(np.int32)
            d = xi.astype(F32)
            if weight_scale is not None:
                d = np.multiply(_per_group(weight_scale, grp, H2), d, dtype=F32)
            if activation_scale is not None:
                act = np.asarray(activation_scale).astype(F32).reshape(-1)[:covered]
                d = np.multiply(act[:, None], d, dtype=F32)
        else:
            d = xi.astype(F32)
        if bias is not None and dtype_name(bias) != "int32":
            d = np.add(d, _per_group(bias, grp, H2), dtype=F32)

        if swiglu_mode == 1:
            a, g = d[:, 0::2], d[:, 1::2]
        elif activate_left:
            a, g = d[:, :H], d[:, H:]
        else:
            a, g = d[:, H:], d[:, :H]
        if swiglu_mode == 0:
            e = np.add(exp_f32(np.negative(a)), F32(1.0), dtype=F32)
        else:
            lim = F32(clamp_limit)
            g = np.add(np.clip(g, -lim, lim), F32(glu_bias), dtype=F32)
            a = np.minimum(a, lim)
            e = np.add(exp_f32(np.multiply(a, F32(-glu_alpha), dtype=F32)), F32(1.0), dtype=F32)
        s = np.multiply(g, np.divide(a, e, dtype=F32), dtype=F32)

        y = np.empty((T, H), dtype=np.int8)
        scale = np.empty((T,), dtype=F32)
        if quant_mode == 1:
            if quant_scale is not None:
                s = np.multiply(_per_group(quant_scale, grp, H), s, dtype=F32)
            amax = np.max(np.abs(s), axis=1) if H else np.zeros(covered, F32)
            sc = np.multiply(amax, INV_127_F32, dtype=F32)
            v = np.divide(s, sc[:, None], dtype=F32)
            scale[:covered] = sc
            zero_rows = amax == 0
        else:
            qs = np.asarray(quant_scale if quant_scale is not None else np.ones(1, F32)).astype(F32)
            qo = None if quant_offset is None else np.asarray(quant_offset).astype(F32)
            if qs.size == 1:
                q0 = F32(1.0) if qs.reshape(-1)[0] == 0 else qs.reshape(-1)[0]
                v = np.multiply(s, np.divide(F32(1.0), q0, dtype=F32), dtype=F32)
                if qo is not None:
                    v = np.add(v, F32(qo.reshape(-1)[0]), dtype=F32)
            else:
                v = np.divide(s, _per_group(qs, grp, H), dtype=F32)
                if qo is not None:
                    v = np.add(v, _per_group(qo, grp, H), dtype=F32)
            zero_rows = np.zeros(covered, bool)
            fill_undefined(scale, slice(None), undefined)   # static mode never writes scale
    nan = np.isnan(v)
    q = float_to_int(v, "int8", rounding="rint")
    apply_zero_rows(q, nan, zero_rows, zero_row, undefined)
    y[:covered] = q
    fill_undefined(y, slice(covered, None), undefined)
    if quant_mode == 1:
        fill_undefined(scale, slice(covered, None), undefined)
    return y, scale


# --------------------------------------------------------------------------------------------
# torch_npu-signature twins (unchecked: the torch layer runs the rules first)
# --------------------------------------------------------------------------------------------

# torch ScalarType codes op-plugin receives for dst_type: 1 int8, 16 quint4x2 (int4 packed in int32)
_DST_CODES = {None: "int8", 1: "int8", 16: "int32", "int8": "int8", "quint4x2": "int32", "int4": "int4",
              "int32": "int32"}


def dst_of(dst_type) -> str:
    """The simulator's ``dst`` for a torch_npu ``dst_type`` (None / code / dtype / name)."""
    key = dst_type
    if dst_type is not None and not isinstance(dst_type, (int, np.integer, str)):
        key = str(getattr(dst_type, "dtype", dst_type)).replace("torch.", "")
    elif isinstance(dst_type, np.integer):
        key = int(dst_type)
    if key not in _DST_CODES:
        raise ValueError(f"dst_type={dst_type!r} is not simulated (None/int8 or quint4x2)")
    return _DST_CODES[key]


def npu_swiglu(x: np.ndarray, dim: int = -1) -> np.ndarray:
    """``torch_npu.npu_swiglu`` arithmetic (see :func:`swiglu`)."""
    return swiglu(x, dim)


def npu_swiglu_backward(grad_output: np.ndarray, x: np.ndarray, dim: int = -1) -> np.ndarray:
    """``torch_npu.npu_swiglu_backward`` arithmetic (see :func:`swiglu_backward`)."""
    return swiglu_backward(grad_output, x, dim)


def npu_dynamic_quant(input: np.ndarray, *, smooth_scales: Optional[np.ndarray] = None,
                      group_index: Optional[np.ndarray] = None, dst_type=None, quant_mode: str = "pertoken",
                      dst_type_max: float = 0.0, scale_formula: str = "reciprocal",
                      zero_row: Optional[str] = None, undefined: Optional[str] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """``torch_npu.npu_dynamic_quant`` arithmetic on A2/A3 (pertoken only); ``scale_formula`` is the target's
    (``ascend_moe.rules.quant_ops.dynamic_quant_kernel``).  quint4x2 gives int32 ``[..., H/8]``."""
    if quant_mode != "pertoken" or dst_type_max not in (0, 0.0, None):
        raise NotImplementedError(f"quant_mode={quant_mode!r} / dst_type_max={dst_type_max!r}: only the A2/A3 "
                                  "pertoken path is simulated")
    return dynamic_quant(input, smooth_scales, group_index, dst=dst_of(dst_type), scale_formula=scale_formula,
                         zero_row=zero_row, undefined=undefined)


def npu_dynamic_quant_asymmetric(input: np.ndarray, *, smooth_scales: Optional[np.ndarray] = None,
                                 group_index: Optional[np.ndarray] = None, dst_type=None,
                                 quant_mode: str = "pertoken", dst_type_max: float = 0.0,
                                 undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``torch_npu.npu_dynamic_quant_asymmetric`` arithmetic on A2/A3 (pertoken only)."""
    if quant_mode != "pertoken" or dst_type_max not in (0, 0.0, None):
        raise NotImplementedError(f"quant_mode={quant_mode!r} / dst_type_max={dst_type_max!r}: only the A2/A3 "
                                  "pertoken path is simulated")
    return dynamic_quant_asymmetric(input, smooth_scales, group_index, dst=dst_of(dst_type), undefined=undefined)


def npu_dequant_swiglu_quant(x: np.ndarray, *, weight_scale=None, activation_scale=None, bias=None,
                             quant_scale=None, quant_offset=None, group_index=None, activate_left: bool = False,
                             quant_mode: int = 0, dst_type=None, round_mode=None, activate_dim=None,
                             swiglu_mode: int = 0, clamp_limit: float = 7.0, glu_alpha: float = 1.702,
                             glu_bias: float = 1.0, zero_row: Optional[str] = None,
                             undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``torch_npu.npu_dequant_swiglu_quant`` arithmetic on A2/A3 (``dst_type``/``round_mode``/``activate_dim``
    are fixed there to int8 / rint / last dim: other values are refused)."""
    if dst_type not in (None, 1) or round_mode not in (None, 0) or activate_dim not in (None, -1):
        raise NotImplementedError("dst_type / round_mode / activate_dim other than int8 / rint / -1 are not "
                                  "simulated (op-plugin fixes them on A2/A3)")
    return dequant_swiglu_quant(x, weight_scale, activation_scale, bias, quant_scale, quant_offset, group_index,
                                activate_left=activate_left, quant_mode=quant_mode, swiglu_mode=swiglu_mode,
                                clamp_limit=clamp_limit, glu_alpha=glu_alpha, glu_bias=glu_bias,
                                zero_row=zero_row, undefined=undefined)
