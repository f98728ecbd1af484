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
    H  = fp16(fp32(int32(hi @ W[e])) * s[e]);  L = fp16(fp32(int32(lo @ W[e])) * s[e])
    u  = fp32(L) + 16 * fp32(H);  u = u + bias[e];  u = u + fp32(rowsum(x[t])) * offset[e]  (if offset)
    v  = u * (pertoken[t] * logit[t])

Faithfulness contract:

* **exact**: the integer GEMMs (int32 accumulation), and every fp32 step above in the kernel's order
  with IEEE round-to-nearest-even, including the fp16 roundings of the A8W4 partials.
* **scatter order**: contributions are added in token order - the device's *deterministic* mode.
  In the default (non-deterministic) mode the hardware adds with fp32 atomics from many cores, so
  an output row that receives two or more contributions may differ in the last bits run to run.
* **assumptions** [I]: the int64 A8W4 scale holds fp32 bits in the low word and the fixpipe uses only
  its top 19 bits (FP19, ``numerics.decode_int64_scale``; switch with ``fp19=False`` or the
  environment ``ASCEND_MOE_FP19=0``); the fixpipe forms ``fp32(acc) * s`` in fp32 and rounds it to
  fp16 (round-to-nearest-even).
* no undefined regions: the device zero-fills ``y`` before the scatter, so every row is defined.
  Rows of ``x`` past the group-list total contribute nothing.

Weights: A8W8 int8 as a logical ``[e, k, n]`` array tagged FRACTAL_NZ (``ascend_moe.formats``) or as
its 5-D NZ storage ``[e, n/32, k/16, 16, 32]``; A8W4 int32 ``[e, k, n/8]`` (ND or tagged NZ) or the
5-D NZ storage int32 ``[e, n/64, k/16, 16, 8]`` (vllm-ascend's int8-NZ-then-view-int32 layout).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .numerics import decode_int64_scale, dtype_name, nz_to_nd, unpack_int4

__all__ = ["npu_grouped_matmul_finalize_routing"]

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
    """Layout of a weight from its metadata; None when the rank is neither 3 nor 5."""
    shape = tuple(int(s) for s in shape)
    quant = {"int8": "a8w8", "int32": "a8w4"}.get(dtype)
    per = 8 if dtype == "int32" else 1   # int4 values per container element
    if len(shape) == 3:
        e, k, nc = shape
        return WeightLayout(quant, fmt.startswith("FRACTAL_NZ"), False, e, k, nc * per)
    if len(shape) == 5:
        e, n1, k1, k0, n0 = shape
        return WeightLayout(quant, True, True, e, k1 * k0, n1 * n0 * per)
    return None


def expected_nz_storage(layout: WeightLayout) -> Tuple[int, ...]:
    """The 5-D storage shape the host expects (``GetWeightNzShape``; int4 counted in int32)."""
    if layout.quant == "a8w4":
        return (layout.e, -(-layout.n // 64), -(-layout.k // 16), 16, 8)
    return (layout.e, -(-layout.n // 32), -(-layout.k // 16), 16, 32)


def logical_weight(w: np.ndarray, layout: WeightLayout) -> np.ndarray:
    """The logical int8 weight values [e, k, n] (int4 unpacked to int8 in [-8, 7])."""
    w = np.asarray(w)
    if layout.quant == "a8w4":
        vals = unpack_int4(w)           # ND: [e, k, n]; NZ storage: [e, n/64, k/16, 16, 64]
    else:
        vals = w.astype(np.int8, copy=False)
    if layout.storage_5d:
        vals = nz_to_nd(vals, (layout.e, layout.k, layout.n))
    return vals


# --------------------------------------------------------------------------------------------
# exact integer arithmetic
# --------------------------------------------------------------------------------------------


def group_bounds(group_list: np.ndarray, group_list_type: int, m: int) -> List[Tuple[int, int]]:
    """(start, end) row range of each expert; count (1) or cumsum (0) lists.

    The checker rejects negative counts, decreasing cumsums and totals above m before this runs;
    the clamp only keeps the arithmetic in range for unchecked calls.
    """
    gl = np.asarray(group_list, dtype=np.int64).reshape(-1)
    ends = np.cumsum(gl) if group_list_type == 1 else gl
    bounds, start = [], 0
    for end in ends.tolist():
        end = min(max(int(end), start), m)
        bounds.append((start, end))
        start = end
    return bounds


def _int_gemm_f32(a: np.ndarray, b_f32: np.ndarray, amax: int, bmax: int) -> np.ndarray:
    """Exact int32 a @ b via float32 BLAS: exact while k * amax * bmax < 2**24 (every partial sum
    is then an integer below 2**24); otherwise float64 BLAS (exact below 2**53)."""
    k = a.shape[-1]
    if k * amax * bmax < (1 << 24):
        return (a.astype(np.float32) @ b_f32).astype(np.int32)
    return (a.astype(np.float64) @ b_f32.astype(np.float64)).astype(np.int64).astype(np.int32)


def int8_gemm_exact(x: np.ndarray, w_f32: np.ndarray) -> np.ndarray:
    """int32(x @ w) for int8 x [t, k] and int8-valued w (given as float32 [k, n]).

    x is split as 16*x_hi + x_lo (x_hi in [-8, 7], x_lo in [0, 15]) so both float32 GEMMs stay
    exact for k <= 8738; the combination is done in int32 (the device accumulator width).
    """
    x = np.asarray(x, dtype=np.int8)
    k = x.shape[-1]
    if k * 15 * 128 >= (1 << 24):
        return (x.astype(np.float64) @ w_f32.astype(np.float64)).astype(np.int64).astype(np.int32)
    hi = (x >> 4).astype(np.float32)
    lo = (x & 0xF).astype(np.float32)
    acc_hi = (hi @ w_f32).astype(np.int32)
    acc_lo = (lo @ w_f32).astype(np.int32)
    return acc_hi * np.int32(16) + acc_lo


def msd_split(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The A8W4 MSD split of int8 x: hi = floor(x/16), lo = (x & 0xF) - 8, both in [-8, 7]."""
    x = np.asarray(x, dtype=np.int8)
    return (x >> 4).astype(np.int8), ((x & 0xF).astype(np.int16) - 8).astype(np.int8)


# --------------------------------------------------------------------------------------------
# the op
# --------------------------------------------------------------------------------------------


def _fp19_default() -> bool:
    return os.environ.get("ASCEND_MOE_FP19", "1") not in ("0", "false", "False", "off")


def _f32(a: Any) -> Optional[np.ndarray]:
    return None if a is None else np.asarray(a).astype(np.float32)


def finalize_routing_compute(x: np.ndarray, w: np.ndarray, group_list: np.ndarray, *,
                             w_format: str = "ND", scale: Optional[np.ndarray] = None,
                             bias: Optional[np.ndarray] = None, offset: Optional[np.ndarray] = None,
                             pertoken_scale: Optional[np.ndarray] = None,
                             shared_input: Optional[np.ndarray] = None, logit: Optional[np.ndarray] = None,
                             row_index: Optional[np.ndarray] = None, shared_input_weight: float = 1.0,
                             shared_input_offset: int = 0, output_bs: int = 0, group_list_type: int = 1,
                             fp19: Optional[bool] = None) -> np.ndarray:
    """The unchecked computation (the torch kernel calls this after the checker)."""
    x = np.asarray(x, dtype=np.int8)
    w = np.asarray(w)
    m = x.shape[0]
    layout = weight_layout(w.shape, dtype_name(w), w_format)
    n = layout.n
    batch = int(output_bs) if output_bs else m
    f32 = np.float32

    # 1. zero-init, then the shared-expert region (PreProcess; before any scatter).
    y = np.zeros((batch, n), dtype=f32)
    if shared_input is not None:
        si = np.asarray(shared_input)
        off = int(shared_input_offset)
        y[off:off + si.shape[0]] = si.astype(f32) * f32(shared_input_weight)

    logit32 = _f32(logit).reshape(-1)
    pt32 = None if pertoken_scale is None else _f32(pertoken_scale).reshape(-1)
    rows = np.asarray(row_index).astype(np.int64).reshape(-1)
    weights = logical_weight(w, layout)
    bounds = group_bounds(group_list, group_list_type, m)

    if layout.quant == "a8w4":
        s = decode_int64_scale(np.asarray(scale), fp19=_fp19_default() if fp19 is None else fp19)
        s = s.reshape(layout.e, n)
        bias32 = _f32(bias).reshape(layout.e, n)
        off32 = None if offset is None else _f32(offset).reshape(layout.e, n)
        hi_all, lo_all = msd_split(x)
    else:
        s = _f32(scale).reshape(layout.e, n)
        bias32 = None if bias is None else _f32(bias).reshape(layout.e, n)

    for e, (start, end) in enumerate(bounds):
        if end <= start:
            continue
        w_f32 = weights[e].astype(f32)
        lg = logit32[start:end, None]
        if layout.quant == "a8w4":
            acc_h = _int_gemm_f32(hi_all[start:end], w_f32, 8, 8)
            acc_l = _int_gemm_f32(lo_all[start:end], w_f32, 8, 8)
            # fixpipe dequant of the int32 accumulators to fp16 (cT = half)
            h16 = (acc_h.astype(f32) * s[e]).astype(np.float16)
            l16 = (acc_l.astype(f32) * s[e]).astype(np.float16)
            u = l16.astype(f32) + f32(16) * h16.astype(f32)
            u = u + bias32[e]
            if off32 is not None:
                rowsum = x[start:end].astype(np.int32).sum(axis=1).astype(f32)
                u = u + rowsum[:, None] * off32[e]
            v = u * (pt32[start:end, None] * lg)
        else:
            acc = int8_gemm_exact(x[start:end], w_f32)
            d = acc.astype(f32) * s[e]
            lp = lg * pt32[start:end, None] if pt32 is not None else lg
            v = d * lp
            if bias32 is not None:
                v = v + lg * bias32[e]
        # scatter-add in token order (deterministic mode); np.add.at applies repeats in order
        np.add.at(y, rows[start:end], v.astype(f32, copy=False))
    return y


def npu_grouped_matmul_finalize_routing(
        x: np.ndarray, w: np.ndarray, group_list: np.ndarray, *, scale: Optional[np.ndarray] = None,
        bias: Optional[np.ndarray] = None, offset: Optional[np.ndarray] = None,
        pertoken_scale: Optional[np.ndarray] = None, shared_input: Optional[np.ndarray] = None,
        logit: Optional[np.ndarray] = None, row_index: Optional[np.ndarray] = None, dtype: Any = None,
        shared_input_weight: float = 1.0, shared_input_offset: int = 0, output_bs: int = 0,
        group_list_type: int = 1, tuning_config: Optional[Sequence[int]] = None,
        x_dtype: Optional[int] = None, w_dtype: Optional[int] = None, scale_dtype: Optional[int] = None,
        pertoken_scale_dtype: Optional[int] = None, fp19: Optional[bool] = None) -> np.ndarray:
    """GMM + MoE finalize-routing on the CPU: fp32 ``[output_bs or m, n]`` (see the module doc).

    ``fp19`` (simulator only): use the FP19-truncated A8W4 scale (default: on, or the environment
    ``ASCEND_MOE_FP19``).  ``tuning_config`` is a tiling hint with no numerical effect.
    """
    from ..rules import enforce
    from ..formats import get_format
    enforce(OP, x, w, group_list, scale=scale, bias=bias, offset=offset, pertoken_scale=pertoken_scale,
            shared_input=shared_input, logit=logit, row_index=row_index, dtype=dtype,
            shared_input_weight=shared_input_weight, shared_input_offset=shared_input_offset,
            output_bs=output_bs, group_list_type=group_list_type, tuning_config=tuning_config,
            x_dtype=x_dtype, w_dtype=w_dtype, scale_dtype=scale_dtype,
            pertoken_scale_dtype=pertoken_scale_dtype, fp19=fp19)
    return finalize_routing_compute(
        x, w, group_list, w_format=get_format(w), scale=scale, bias=bias, offset=offset,
        pertoken_scale=pertoken_scale, shared_input=shared_input, logit=logit, row_index=row_index,
        shared_input_weight=shared_input_weight, shared_input_offset=shared_input_offset,
        output_bs=output_bs, group_list_type=group_list_type, fp19=fp19)
