"""Quantised forms of ``npu_grouped_matmul`` (A8W8, A8W4, A16W8, A16W4) and ``npu_grouped_matmul_add_``
(spec moe-quant-path 4-5; grouped-matmul-family 1.8, 2.6).

Unchecked NumPy computations for the M-split single-tensor form these paths allow (x [M, K], one weight
[E, K, N], group_type 0): rows ``[s_e, t_e)`` of group ``e`` use weight ``e``.  Weights may be given as
logical ``[E, K, N]`` arrays (int8, ml_dtypes int4 values, or int4 packed 8 per int32 as ``[E, K, N/8]``)
or as their 5-D FRACTAL_NZ storage (``[E, N/32, K/16, 16, 32]`` int8, ``[E, N/64, K/16, 16, 8]`` int32);
NZ is a layout only, the numbers are the same.

Faithfulness contract:

* **A8W8** (mixcore kernel ``QUANT_A8W8O16``, ``grouped_matmul_quant_mixcore.h``), per row m of group e and
  column n, exactly: ``acc = sum_k x*w`` in int32 (exact) ``+ bias_int32[e, n]`` (cube, int32);
  ``d = fp32(acc) * scale[e, n]`` (AscendDequant: int32 -> fp32 RNE; bf16 scale widened exactly; fp32 as
  is; int64/uint64: **the low 32 bits as an fp32**, full mantissa - the vector path, no FP19 truncation);
  ``d = d * per_token_scale[m]``; ``d = d + fp32(bias_bf16[e, n])`` (bf16 bias, after the per-token
  multiply, inside the kernel's per-token step: **without per_token_scale a bf16 bias is never read**,
  ``PerTokenQuant`` in ``grouped_matmul_quant_mixcore.h``); optional ``act_type`` 1 relu; one RNE cast to bf16 / fp16.  Bit-exact.
* **A8W8 -> int32** (cube only): ``acc + bias_int32`` written as int32.  Bit-exact.
* **A8W4** (W4A8 as vllm-ascend calls it: int4 weight packed in int32, int64 scale, fp32 ``bias`` = the
  offline ``8 * sum_k w * s`` term, fp32 per-token scale): the MSD data flow of
  :mod:`ascend_moe.sim.quant_gemm` (hi/lo int4 halves of x, fp16 fixpipe dequant with the FP19 scale
  truncation [I], ``fp32(Chi) * 16 + fp32(Clo)``), then ``+ bias``, ``* per_token_scale``, one RNE cast.
  The post-step order is inferred from the MSD kernels of the sibling ops [I].
* **A16W8 / A16W4 antiquant** (``AscendAntiQuant``): each weight element is dequantised into x's dtype -
  fp16: ``half(half(half(w) + offset) * scale)`` (two fp16 roundings); bf16:
  ``bf16(fp32(w) + fp32(offset)) * fp32(scale))`` (one rounding); per-group scales ``[E, G, N]`` take the
  row of ``k // (K / G)``.  The dequantised weight is bit-exact; the GEMM that follows is the float GMM
  (fp32 accumulation, order not public: the last fp32 bits may differ, as for the float
  ``npu_grouped_matmul``), ``+ bias`` in fp32, one RNE cast to x's dtype.
* **grouped_matmul_add**: ``y[e] += x[rows_e]^T @ weight[rows_e]`` in fp32 (fp16/bf16 products are exact
  in fp32; the summation order over tokens is tiling-dependent and not public).
* **undefined regions**: rows past the group-list total are never written (outputs are ``empty``):
  undefined-region policy.

Not simulated (NotImplementedError, the rules reject them first): A8W8 int8 output (fixpipe requant),
A4W4, ``act_type`` other than 0/1 (the AscendC GELU/SiLU sequences of the epilogue were not read),
the fixed-axis A8W8 kernel (its epilogue order was not read).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .gmm import grouped_matmul_add_fp32
from .numerics import GroupList, decode_int64_scale, dtype_name, fill_undefined, np_dtype, nz_to_nd
from .quant_gemm import (
    decode_weight_scale, group_bounds, grouped_int8_matmul, grouped_msd_partials, msd_combine,
    weight_values,
)

__all__ = ["quant_grouped_matmul", "npu_grouped_matmul_quant", "antiquant_weight", "grouped_matmul_add",
           "float_weight_from_nz", "output_dtype_name", "A8W8_OUTPUTS", "ACT_TYPES"]

F32 = np.float32
A8W8_OUTPUTS = ("bfloat16", "float16", "int32")
ACT_TYPES = (0, 1)          # 0 none, 1 relu (the simulated epilogue activations)


def _rows_of_groups(bounds) -> Tuple[int, np.ndarray]:
    total = bounds[-1][1] if bounds else 0
    counts = np.array([t - s for s, t in bounds], dtype=np.int64)
    return total, np.repeat(np.arange(len(bounds)), counts)


def _epilogue_scale(scale: np.ndarray) -> np.ndarray:
    """fp32 per-channel scale as the vector AscendDequant reads it (spec 0.3)."""
    s = np.asarray(scale)
    if dtype_name(s) in ("int64", "uint64"):
        return decode_int64_scale(s, fp19=False)
    return s.astype(F32)


def _activation(d: np.ndarray, act_type: int) -> np.ndarray:
    if act_type == 0:
        return d
    if act_type == 1:
        return np.maximum(d, F32(0.0))
    raise NotImplementedError(f"act_type={act_type} is not simulated (only 0 none and 1 relu)")


def quant_grouped_matmul(x: np.ndarray, weight: np.ndarray, group_list: np.ndarray, *,
                         group_list_type: int = 0, scale: Optional[np.ndarray] = None,
                         per_token_scale: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                         antiquant_scale: Optional[np.ndarray] = None,
                         antiquant_offset: Optional[np.ndarray] = None, output_dtype: Optional[str] = None,
                         act_type: int = 0, fp19: bool = True, undefined: Optional[str] = None) -> np.ndarray:
    """One quantised grouped matmul ``y [M, N]`` (see the module docstring for each path).

    ``x`` int8 [M, K] (A8W8 / A8W4) or fp16/bf16 [M, K] (A16W8 / A16W4); ``weight`` int8 / int4 / int32
    (packed int4), ND or NZ storage; ``scale`` [E, N] (A8W4: [E, N] or [E, G, N] int64); ``per_token_scale``
    fp32 [M]; ``bias`` [E, N] (int32, bf16 or fp32 by path); ``antiquant_scale``/``antiquant_offset``
    [E, N] or [E, G, N] in x's dtype; ``output_dtype`` name (default: x's dtype); ``fp19`` the A8W4
    fixpipe scale truncation [I].
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {x.shape}")
    xdt = dtype_name(x)
    # int8 x: only the grouped int8 GEMM reads an int8 weight
    w_vals, kind = weight_values(weight, bands_ok=xdt == "int8")
    E, K, N = w_vals.shape
    if K != x.shape[1]:
        raise ValueError(f"weight K={K} differs from x's K={x.shape[1]}")
    M = x.shape[0]
    bounds = group_bounds(group_list, group_list_type, M)
    if len(bounds) > E:
        raise ValueError(f"{len(bounds)} groups but only {E} experts in weight")
    total, row_e = _rows_of_groups(bounds)
    out_dt = output_dtype or xdt

    if xdt == "int8":
        if kind == "int8":
            y_cov = _a8w8(x, w_vals, bounds, total, row_e, scale, per_token_scale, bias, out_dt, act_type)
        else:
            y_cov = _a8w4(x, w_vals, bounds, total, row_e, scale, per_token_scale, bias, out_dt, fp19)
    elif xdt in ("float16", "bfloat16"):
        y_cov = _antiquant(x, w_vals, kind, bounds, total, row_e, antiquant_scale, antiquant_offset, bias,
                           out_dt)
    else:
        raise NotImplementedError(f"x dtype {xdt} with a {kind} weight is not a simulated quantised path")
    y = np.empty((M, N), dtype=np_dtype(out_dt))
    y[:total] = y_cov
    fill_undefined(y, slice(total, None), undefined)
    return y


def _a8w8(x, w, bounds, total, row_e, scale, pts, bias, out_dt, act_type) -> np.ndarray:
    if out_dt not in A8W8_OUTPUTS:
        raise NotImplementedError(f"A8W8 output dtype {out_dt} is not simulated (bfloat16, float16, int32)")
    acc = grouped_int8_matmul(x, w, bounds)[:total]
    bias_dt = None if bias is None else dtype_name(bias)
    if bias_dt == "int32":
        # the cube adds an int32 bias to the int32 accumulator (wraps like int32)
        acc = (acc.astype(np.int64) + np.asarray(bias).astype(np.int64)[row_e]).astype(np.int32)
    if out_dt == "int32":
        return acc
    with np.errstate(over="ignore", invalid="ignore"):
        d = acc.astype(F32)
        if scale is not None:
            d = np.multiply(d, _epilogue_scale(scale)[row_e], dtype=F32)
        if pts is not None:
            d = np.multiply(d, np.asarray(pts).astype(F32).reshape(-1)[:total, None], dtype=F32)
            if bias is not None and bias_dt != "int32":
                # the float bias is added inside the per-token step only (PerTokenQuant); without a
                # per_token_scale the kernel never reads it
                d = np.add(d, np.asarray(bias).astype(F32)[row_e], dtype=F32)
        d = _activation(d, act_type)
        return d.astype(np_dtype(out_dt))


def _a8w4(x, w, bounds, total, row_e, scale, pts, bias, out_dt, fp19) -> np.ndarray:
    if out_dt not in ("bfloat16", "float16"):
        raise NotImplementedError(f"A8W4 output dtype {out_dt} is not simulated (bfloat16, float16)")
    if scale is None:
        raise ValueError("A8W4 needs the int64 weight scale")
    ws = decode_weight_scale(scale, fp19=fp19)
    chi, clo = grouped_msd_partials(x, w, ws, bounds)
    with np.errstate(over="ignore", invalid="ignore"):
        c = msd_combine(chi[:total], clo[:total])
        if bias is not None:
            c = np.add(c, np.asarray(bias).astype(F32)[row_e], dtype=F32)
        if pts is not None:
            c = np.multiply(c, np.asarray(pts).astype(F32).reshape(-1)[:total, None], dtype=F32)
        return c.astype(np_dtype(out_dt))


def antiquant_weight(w: np.ndarray, scale: np.ndarray, offset: Optional[np.ndarray], dtype: str) -> np.ndarray:
    """One expert's dequantised weight ``[K, N]`` in ``dtype`` (AscendAntiQuant, spec 0.4).

    ``w`` integer values [K, N] (int8 or int4 values); ``scale``/``offset`` [N] (per channel) or [G, N]
    (per group, G divides K) in ``dtype``.
    """
    K, N = w.shape
    s = np.asarray(scale)
    s = s.reshape(1, -1) if s.ndim == 1 else s
    G = s.shape[0]
    if K % G:
        raise ValueError(f"K={K} is not divisible by the {G} antiquant groups")
    rows = np.arange(K) // (K // G)
    s_k = s[rows]
    o_k = None if offset is None else (np.asarray(offset).reshape(G, -1))[rows]
    if dtype == "float16":
        wh = w.astype(np.float16)
        if o_k is not None:
            # fp16 + fp16 is exact in float64: one RNE rounding to fp16, as the half Adds
            wh = (wh.astype(np.float64) + o_k.astype(np.float64)).astype(np.float16)
        return (wh.astype(F32) * s_k.astype(F32)).astype(np.float16)   # fp16*fp16 exact in fp32
    if dtype == "bfloat16":
        wf = w.astype(F32)
        if o_k is not None:
            wf = np.add(wf, o_k.astype(F32), dtype=F32)
        return np.multiply(wf, s_k.astype(F32), dtype=F32).astype(np_dtype("bfloat16"))
    raise ValueError(f"antiquant dtype must be float16 or bfloat16, got {dtype}")


def _antiquant(x, w, kind, bounds, total, row_e, a_scale, a_offset, bias, out_dt) -> np.ndarray:
    xdt = dtype_name(x)
    if a_scale is None:
        raise ValueError(f"A16W{8 if kind == 'int8' else 4} needs antiquant_scale")
    if out_dt != xdt:
        raise NotImplementedError(f"antiquant output dtype {out_dt} differs from x's {xdt}")
    a_scale = np.asarray(a_scale)
    N = w.shape[2]
    y = np.empty((total, N), dtype=F32)
    for e, (s, t) in enumerate(bounds):
        if t <= s:
            continue
        off = None if a_offset is None else np.asarray(a_offset)[e]
        wd = antiquant_weight(w[e], a_scale[e], off, xdt).astype(F32)
        acc = np.matmul(x[s:t].astype(F32), wd)
        if bias is not None:
            acc = np.add(acc, np.asarray(bias)[e].astype(F32), dtype=F32)
        y[s:t] = acc
    return y.astype(np_dtype(out_dt))


def float_weight_from_nz(w: np.ndarray, k: int, n: int) -> np.ndarray:
    """Logical fp16/bf16/fp32 grouped weight ``[E, K, N]`` from its FRACTAL_NZ storage
    ``[E, ceil(N/C0), ceil(K/16), 16, C0]`` (C0 = 16 for fp16/bf16, 8 for fp32); the numbers are those of
    the ND weight (NZ is a layout only)."""
    w = np.asarray(w)
    if w.ndim != 5:
        raise ValueError(f"NZ storage of a grouped weight is 5-D, got shape {w.shape}")
    return nz_to_nd(w, (w.shape[0], k, n))


def grouped_matmul_add(y: np.ndarray, x: np.ndarray, weight: np.ndarray, group_list: np.ndarray, *,
                       group_list_type: int = 0) -> np.ndarray:
    """``aclnnGroupedMatmulAdd``: ``y[e] += x[rows_e]^T @ weight[rows_e]`` in fp32, in place.

    ``x`` fp16/bf16 [tokens, M] (read as the transposed [M, tokens]), ``weight`` [tokens, N] of the same
    dtype, ``group_list`` int64 [E] (cumsum, or counts with ``group_list_type`` 1), ``y`` fp32 with
    ``E * M * N`` elements (viewed as [E, M, N]).  Groups without rows add nothing.  Returns ``y``.
    """
    y = np.asarray(y)
    if y.dtype != np.float32:
        raise TypeError(f"y must be float32, got {y.dtype}")
    x = np.asarray(x)
    w = np.asarray(weight)
    if x.ndim != 2 or w.ndim != 2 or x.shape[0] != w.shape[0]:
        raise ValueError(f"x [tokens, M] and weight [tokens, N] must share the token dim, got {x.shape} and "
                         f"{w.shape}")
    ends = GroupList.of(group_list, group_list_type).ends
    if y.size and not np.shares_memory(y.reshape(ends.size, x.shape[1], w.shape[1]), y):
        raise ValueError("y must be contiguous so it can be viewed as [E, M, N]")
    # the same computation as MindSpeed's npu_groupmatmul_add_fp32 (sim.gmm), which takes a cumsum
    return grouped_matmul_add_fp32(x, w, ends, y)


def _first(v):
    if isinstance(v, (list, tuple)):
        if len(v) > 1:
            raise ValueError(f"the quantised forms take one tensor per list argument, got {len(v)}")
        return v[0] if len(v) else None
    return v


# torch ScalarType codes op-plugin maps output_dtype from
OUTPUT_DTYPE_CODES = {1: "int8", 3: "int32", 5: "float16", 6: "float32", 15: "bfloat16"}


def output_dtype_name(output_dtype, x_dtype: str) -> str:
    """Name of npu_grouped_matmul's ``output_dtype`` (None: x's dtype; a torch code, dtype or name)."""
    if output_dtype is None:
        return x_dtype
    if isinstance(output_dtype, (int, np.integer)) and not isinstance(output_dtype, bool):
        if int(output_dtype) not in OUTPUT_DTYPE_CODES:
            raise ValueError(f"output_dtype code {output_dtype} is not one of {sorted(OUTPUT_DTYPE_CODES)}")
        return OUTPUT_DTYPE_CODES[int(output_dtype)]
    return dtype_name(output_dtype)


def npu_grouped_matmul_quant(x, weight, *, bias=None, scale=None, offset=None, antiquant_scale=None,
                             antiquant_offset=None, per_token_scale=None, group_list=None, activation_input=None,
                             activation_quant_scale=None, activation_quant_offset=None, split_item: int = 0,
                             group_type: Optional[int] = None, group_list_type: int = 0, act_type: int = 0,
                             tuning_config=None, output_dtype=None, x_dtype=None, weight_dtype=None,
                             scale_dtype=None, per_token_scale_dtype=None, fp19: Optional[bool] = None,
                             undefined: Optional[str] = None) -> list:
    """``torch_npu.npu_grouped_matmul`` arithmetic for the quantised single-tensor forms (unchecked): the
    one-element lists are unwrapped, ``output_dtype`` mapped from its torch code, and the result returned as a
    one-element list.  ``fp19`` defaults to :func:`ascend_moe.sim.quant_gemm.fp19_enabled`."""
    from .quant_gemm import fp19_enabled
    x0, w0 = _first(x), _first(weight)
    if group_list is None:
        raise ValueError("the quantised forms need a group_list")
    if offset is not None and _first(offset) is not None:
        raise NotImplementedError("offset (the A8W4 per-group offset form) is not simulated")
    out = output_dtype_name(output_dtype, dtype_name(np.asarray(x0)))
    y = quant_grouped_matmul(np.asarray(x0), w0, np.asarray(group_list), group_list_type=group_list_type,
                             scale=_first(scale), per_token_scale=_first(per_token_scale), bias=_first(bias),
                             antiquant_scale=_first(antiquant_scale), antiquant_offset=_first(antiquant_offset),
                             output_dtype=out, act_type=act_type,
                             fp19=fp19_enabled() if fp19 is None else fp19, undefined=undefined)
    return [y]
