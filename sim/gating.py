"""NumPy twin of ``torch_npu.npu_moe_gating_top_k`` (aclnnMoeGatingTopK / aclnnMoeGatingTopKV2).

Formula (spec gating-and-ffn.md A.3; every step float32, in the kernels' order)::

    xf   = float32(x)                       # widening cast, exact
    s    = norm(xf)                         # 0 softmax, 1 sigmoid, 2 sqrt(softplus) (950 only)
    v    = s + float32(bias)  (or s)        # bias steers the selection only
    if grouped: score_g = max(v_g) (group_select_mode 0) | top1(v_g) + top2(v_g) (mode 1)
                keep the k_group best groups, the other experts cannot be selected
    idx  = the k largest v, descending, ties -> lower expert index      (or tid2eid[input_ids] in hash mode)
    g    = s[idx]                           # gathered from the UNBIASED norm
    if norm_type in (1, 2) or renorm == 1:  g = g / (ReduceSum(g) + float32(eps))
    y    = cast_rne(g * float32(routed_scaling_factor), x.dtype);  expert_idx = int32(idx)
    norm_out = s (float32 [rows, E]) when out_flag, else left unwritten by the device

Faithfulness contract:

* **exact** given the device's ``exp``/``ln``/``sqrt``: every add, multiply, divide and reduction is
  a float32 operation in the kernel's order.  The vector-unit ``Exp`` accuracy is not public, so
  softmax / sigmoid / softplus values may differ from the device in the last bits, and ``expert_idx``
  may then differ at near-ties (the vendor's own golden accepts index swaps within 4 output ULP).
* **kernel path** (``kernel_path``): the DeepSeek-V3 fast kernel, the without-group kernel and the
  generalized (grouped) kernel are modelled separately because their float32 data flows differ:
  the generalized kernel runs the softmax over a layout where each group is padded to a multiple of
  32 with ``-inf`` (zeros after ``exp``), which changes the pairing of the sum, and it normalises by
  ``Muls(e, 1.0f/S)``; the without-group kernel normalises by ``Muls(e, 1.0f/S)`` before ops-transformer
  commit 5dbcb68ba (2026-06-27) and by ``Div(e, S)`` after it.  Which one applies follows the target
  CANN version (``ascend_moe.products.resolve_target``): ``Div`` from 9.1.0 on (the commit is after tag
  v9.0.1, see products.KNOWN_RELEASES).
* **ReduceSum order** [inferred]: pairwise (adjacent lanes) tree inside each 64-lane repeat of zero
  padded data, then the same tree over the repeat partials (asc-devkit dav_c220 ``ReduceSumSecondStep``
  runs a second ``vcadd`` over them).  ReduceMax is order-free.
* **ties / order**: the k outputs are in descending order of the biased score v, equal v -> the
  lower expert index first (AscendC Sort32/MrgSort rule); equal group scores -> the lower group index
  is kept.  ``-0.0`` ranks equal to ``+0.0``; NaN ranks above everything (AscendC TopK doc) [inferred].
* **group_select_mode by version**: from CANN 8.3.RC1 on 0 = max, 1 = top1 + top2 (tiling constants
  and kernels).  Before 8.3.RC1 (torch_npu 7.0/7.1 generation) only the DeepSeek-V3 configuration
  ran, on the ``e_k_fullload`` kernel, which never reads ``group_select_mode`` and always scores a
  group by its top-2 sum - which is why the seed doc calls the default 0 "top-2 sum" [inferred from the
  kernel; documented and tested].
* **Ascend 950** (regbase kernel ``moe_gating_top_k_regbase.h``, not modelled separately): the same
  float32 data flow as the A2/A3 kernels of the target version is assumed [inferred].
* **undefined region**: ``norm_out`` when ``out_flag`` is False (the device allocates it
  uninitialised and never writes it): filled by the undefined-region policy (NaN by default).
* **hash mode** (``input_ids`` + ``tid2eid``, aclnnMoeGatingTopKV2): ``expert_idx = tid2eid[input_ids]``
  (int64 entries cast to int32), ``y`` is the renormalised / scaled gather of the unbiased norm at those
  ids.  Only the without-group kernel reads the hash tables; on A2/A3 the DeepSeek and generalized
  kernels ignore them (top-k routing instead), and so does this twin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import kernels as _kernels
from .numerics import cast, dtype_name, fill_undefined

__all__ = ["moe_gating_top_k_compute", "Semantics"]

OP = "npu_moe_gating_top_k"

SORT_ALIGN = 32        # Sort32 / per-group padding granule
REDUCE_LANES = 64      # float32 lanes of one 256-byte vector repeat

PATH_DEEPSEEK = "deepseek_fullload"
PATH_WITHOUT_GROUP = "without_group"
PATH_GENERALIZED = "generalized"


@dataclass(frozen=True)
class Semantics:
    """What depends on the target: decided above the simulator (``ascend_moe.ops.gating.semantics``
    maps a CANN release to it) and passed in explicitly."""
    legacy: bool              # only the e_k_fullload (DeepSeek-V3) kernel exists (CANN < 8.3.RC1)
    softmax_divide: bool      # without-group softmax normalises by Div(e, S) (else Muls(e, 1/S))


# what the simulator does when no semantics are passed (the default target, CANN 8.5.0)
DEFAULT_SEMANTICS = Semantics(legacy=False, softmax_divide=False)


def kernel_path(num_experts: int, k: int, has_bias: bool, k_group: int, group_count: int,
                group_select_mode: int, renorm: int, norm_type: int, out_flag: bool,
                semantics: Semantics) -> str:
    """The A2/A3 kernel the tiling picks (``MoeGatingTopKTilingBase::GetTilingKey``)."""
    if semantics.legacy:
        return PATH_DEEPSEEK
    if (num_experts == 256 and group_count == 8 and k_group == 4 and k <= 32 and has_bias
            and group_select_mode == 1 and renorm == 0 and norm_type == 1 and not out_flag):
        return PATH_DEEPSEEK
    if group_count == 1 or group_count == num_experts or k_group == group_count:
        return PATH_WITHOUT_GROUP
    return PATH_GENERALIZED


# --------------------------------------------------------------------------------------------
# float32 building blocks
# --------------------------------------------------------------------------------------------

def _tree_sum_lanes(a: np.ndarray) -> np.ndarray:
    """Pairwise adjacent-lane tree over the last axis (a power of two long), float32 throughout."""
    while a.shape[-1] > 1:
        a = a[..., 0::2] + a[..., 1::2]
    return a[..., 0]


def reduce_sum_f32(a: np.ndarray) -> np.ndarray:
    """AscendC ReduceSum over the last axis as modelled here: zero-padded 64-lane repeats, a tree in
    each repeat, then a tree over the repeat partials (module docstring) - float32."""
    a = np.asarray(a, dtype=np.float32)
    fast = _kernels.current().tree_sum
    if fast is not None and a.ndim == 2:
        done = fast(a, REDUCE_LANES)
        if done is not None:
            return done
    n = a.shape[-1]
    blocks = max(1, -(-n // REDUCE_LANES))
    if blocks * REDUCE_LANES != n:
        pad = np.zeros(a.shape[:-1] + (blocks * REDUCE_LANES - n,), dtype=np.float32)
        a = np.concatenate([a, pad], axis=-1)
    partial = _tree_sum_lanes(a.reshape(a.shape[:-1] + (blocks, REDUCE_LANES)))
    if blocks == 1:
        return partial[..., 0]
    width = 1 << (blocks - 1).bit_length()
    if width != blocks:
        partial = np.concatenate(
            [partial, np.zeros(partial.shape[:-1] + (width - blocks,), dtype=np.float32)], axis=-1)
    return _tree_sum_lanes(partial)


def _sigmoid_f32(xf: np.ndarray) -> np.ndarray:
    """AscendC Sigmoid: Muls(-1), Exp, Adds(+1), Div(1, .), computed in ``xf``'s memory (the caller's fresh
    fp32 copy, which is returned): the same operations without new [rows, n] arrays."""
    t = np.negative(xf, out=xf)
    np.exp(t, out=t)
    t += np.float32(1.0)
    return np.divide(np.float32(1.0), t, out=t, dtype=np.float32)


def _softplus_sqrt_f32(xf: np.ndarray) -> np.ndarray:
    # without_group kernel (950 path): Exp, Adds(+1), Ln, Sqrt
    t = np.exp(xf)
    t += np.float32(1.0)
    np.log(t, out=t)
    return np.sqrt(t)


def _softmax_f32(xf: np.ndarray, divide: bool, group_count: int = 1, padded_group: int = 0) -> np.ndarray:
    """ReduceMax, Adds(-max), Exp, ReduceSum, then Div(e, S) or Muls(e, 1.0f/S), computed in ``xf``'s
    memory (which is returned).

    With ``padded_group`` > group size the sum runs over the generalized kernel's layout: each group
    followed by -inf pads (exp -> 0) up to ``padded_group`` lanes."""
    fast = _kernels.current().row_max
    m = fast(xf) if fast is not None else None
    if m is None:
        m = xf.max(axis=-1, keepdims=True)
    # in place on xf (the caller's fresh fp32 copy): the same operations without two more [rows, n]
    # arrays; a zero max of either sign gives the same x - m for every x
    e = np.subtract(xf, m, out=xf)
    np.exp(e, out=e)
    rows, n = e.shape
    if padded_group and padded_group * group_count != n:
        p = n // group_count
        lay = np.zeros((rows, group_count, padded_group), dtype=np.float32)
        lay[:, :, :p] = e.reshape(rows, group_count, p)
        s = reduce_sum_f32(lay.reshape(rows, group_count * padded_group))
    else:
        s = reduce_sum_f32(e)
    s = s[:, None]
    if divide:
        return np.divide(e, s, out=e, dtype=np.float32)
    inv = np.divide(np.float32(1.0), s, dtype=np.float32)   # scalar-unit 1.0f / S
    return np.multiply(e, inv, out=e, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# ordering
# --------------------------------------------------------------------------------------------

_EXCLUDED = np.iinfo(np.int64).min + 1   # +1: stays the smallest after negation


def _rank_keys(v: np.ndarray) -> np.ndarray:
    """int64 keys over the last axis, larger = ranked first: float order, then the lower index
    (keys are unique within a row).  -0.0 ranks as +0.0 and NaN above +inf [inferred hardware
    behaviour: Sort32 is silent, the AscendC TopK doc puts NaN first]."""
    v = np.asarray(v, dtype=np.float32) + np.float32(0.0)          # -0.0 -> +0.0
    bits = v.view(np.int32).astype(np.int64)
    ordered = np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)         # monotone in the float value
    ordered = np.where(np.isnan(v), np.int64(0x7F800001), ordered)  # every NaN just above +inf
    n = v.shape[-1]
    return ordered * 4096 + (4095 - np.arange(n, dtype=np.int64))


def _top_indices(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest keys per row, largest first (keys unique per row)."""
    n = keys.shape[-1]
    if k < n:
        part = np.argpartition(-keys, k - 1, axis=-1)[..., :k]
    else:
        part = np.broadcast_to(np.arange(n), keys.shape).copy()
    sel = np.take_along_axis(keys, part, axis=-1)
    order = np.argsort(-sel, axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def _group_top2_sum(gv: np.ndarray) -> np.ndarray:
    """top2 + top1 of each group (``gv`` [rows, groups, per_group] fp32): one float32 add, second largest first
    (a plugged-in kernel may do it)."""
    rows, groups, per_group = gv.shape
    fast = _kernels.current().top2_sum
    total = fast(gv.reshape(rows * groups, per_group)) if fast is not None else None
    if total is not None:
        return total.reshape(rows, groups)
    two = np.partition(gv, per_group - 2, axis=-1)[..., -2:]
    return two[..., 0] + two[..., 1]


def _select_top(v: np.ndarray, k: int, excluded: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of the k largest v per row, largest first, ties -> lower index; ``excluded`` entries
    are never chosen.  Fast path for small k: k passes of argmax (first maximum = lower index,
    -0.0 == +0.0); rows with NaN or a -inf pick (where excluded / taken entries would look alike)
    take the exact composite-key path."""
    fast = _kernels.current().top_k
    if fast is not None:
        picked = fast(v, k, excluded)
        if picked is not None:
            return picked
    rows = v.shape[0]
    if k > 16 or np.isnan(v).any():
        keys = _rank_keys(v)
        if excluded is not None:
            keys = np.where(excluded, _EXCLUDED, keys)
        return _top_indices(keys, k)
    work = np.where(excluded, np.float32(-np.inf), v) if excluded is not None else v.copy()
    row = np.arange(rows)
    out = np.empty((rows, k), dtype=np.int64)
    for i in range(k):
        j = work.argmax(axis=-1)
        out[:, i] = j
        work[row, j] = -np.inf
    ambiguous = np.isneginf(np.take_along_axis(v, out, axis=-1)).any(axis=-1)
    if excluded is not None:
        ambiguous |= np.take_along_axis(excluded, out, axis=-1).any(axis=-1)
    if ambiguous.any():
        keys = _rank_keys(v[ambiguous])
        if excluded is not None:
            keys = np.where(excluded[ambiguous], _EXCLUDED, keys)
        out[ambiguous] = _top_indices(keys, k)
    return out


# --------------------------------------------------------------------------------------------
# compute
# --------------------------------------------------------------------------------------------

def moe_gating_top_k_compute(
        x: np.ndarray, k: int, bias: Optional[np.ndarray] = None, input_ids: Optional[np.ndarray] = None,
        tid2eid: Optional[np.ndarray] = None, k_group: int = 1, group_count: int = 1,
        group_select_mode: int = 0, renorm: int = 0, norm_type: int = 0, out_flag: bool = False,
        routed_scaling_factor: float = 1.0, eps: float = 1e-20, *, semantics: Semantics = DEFAULT_SEMANTICS,
        undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unchecked computation (the rules must have accepted the call); ``semantics`` carries the
    target-dependent behaviour (:class:`Semantics`), decided by the caller."""
    sem = semantics
    x = np.asarray(x)
    out_dtype = dtype_name(x)
    rows, num_experts = x.shape
    xf = np.empty(x.shape, dtype=np.float32)        # widening is exact (the kernels may do it faster)
    _kernels.current().copy_cast(xf, x)
    path = kernel_path(num_experts, k, bias is not None, k_group, group_count, group_select_mode,
                       renorm, norm_type, bool(out_flag), sem)
    per_group = num_experts // group_count
    per_group_align = -(-per_group // SORT_ALIGN) * SORT_ALIGN

    # 1. norm
    if path == PATH_DEEPSEEK or norm_type == 1:
        s = _sigmoid_f32(xf)
    elif norm_type == 2:
        s = _softplus_sqrt_f32(xf)
    elif path == PATH_GENERALIZED:
        s = _softmax_f32(xf, divide=False, group_count=group_count, padded_group=per_group_align)
    else:
        s = _softmax_f32(xf, divide=sem.softmax_divide)

    # 2. bias (selection only)
    v = s + np.asarray(bias).astype(np.float32) if bias is not None else s

    # 3./4. selection
    hash_mode = input_ids is not None and tid2eid is not None and path == PATH_WITHOUT_GROUP
    if hash_mode:
        ids = np.asarray(input_ids).astype(np.int64)
        idx = np.asarray(tid2eid)[ids].astype(np.int32)      # int64 table entries -> int32
    else:
        excluded = None
        if path != PATH_WITHOUT_GROUP:
            gv = v.reshape(rows, group_count, per_group)
            if path == PATH_DEEPSEEK or group_select_mode == 1:
                gscore = _group_top2_sum(gv)
            else:
                gscore = gv.max(axis=-1)
            kept = _select_top(gscore, k_group)
            keep_mask = np.zeros((rows, group_count), dtype=bool)
            np.put_along_axis(keep_mask, kept, True, axis=-1)
            excluded = ~np.repeat(keep_mask, per_group, axis=-1)
        idx = _select_top(v, k, excluded).astype(np.int32)

    # 5.-8. gather the unbiased norm, renormalise, scale, round to x's dtype
    flat = np.ascontiguousarray(s).reshape(-1)           # the gather as one flat take (take_along_axis is slow)
    g = flat[idx.astype(np.int64) + (np.arange(rows, dtype=np.int64) * num_experts)[:, None]]
    if path == PATH_DEEPSEEK or norm_type in (1, 2) or renorm == 1:
        den = reduce_sum_f32(g) + np.float32(eps)            # vector ReduceSum, scalar + eps
        g = np.divide(g, den[:, None], dtype=np.float32)
    g = np.multiply(g, np.float32(routed_scaling_factor), dtype=np.float32)
    y = cast(g, out_dtype) if out_dtype != "float32" else g

    # 9. norm_out
    write_norm = bool(out_flag) and path != PATH_DEEPSEEK
    norm_out = np.ascontiguousarray(s, dtype=np.float32) if write_norm else np.empty((rows, num_experts), np.float32)
    if not write_norm:
        fill_undefined(norm_out, (slice(None), slice(None)), undefined)
    return y, idx, norm_out


def __getattr__(name: str):
    """``npu_moe_gating_top_k`` (the checked NumPy twin) is generated from the op's declaration and
    lives in :mod:`ascend_moe.numpy_ops`; this alias keeps ``ascend_moe.sim.gating.<name>`` working
    without the simulator importing the checker."""
    if name == "npu_moe_gating_top_k":
        from ascend_moe import numpy_ops
        return getattr(numpy_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
