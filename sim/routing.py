"""NumPy twins of the Ascend MoE routing and combine ops (Atlas A2/A3 kernels).

Ops (torch_npu names; spec moe-routing-and-ep.md sections 1-6):

* ``moe_init_routing_v2``        aclnnMoeInitRoutingV3 (or V2, see ``entry``): sort the (token, k) slots by
  expert, gather / quantise the token rows, count tokens per expert.
* ``moe_token_permute``          aclnnMoeTokenPermute: the same sort, rows copied in expert order.
* ``moe_token_unpermute``        aclnnMoeTokenUnpermute: weighted combine back to token order.
* ``moe_finalize_routing``       aclnnMoeFinalizeRouting V1/V2/V4: skip + bias + scaled combine.
* ``moe_gating_top_k_softmax``   aclnnMoeGatingTopKSoftmax (and ``_v2``): softmax + top-k.
* ``moe_compute_expert_tokens``  aclnnMoeComputeExpertTokens: end offset of each expert in a sorted list.
* ``moe_re_routing``             aclnnMoeReRouting: rank-major -> expert-major re-layout.
* backward twins: ``moe_token_permute_grad``, ``moe_token_unpermute_grad``, ``moe_gating_top_k_backward``.

This module is NumPy-only and target-free: everything that depends on the product, the CANN release
or a kernel choice the public sources do not settle is an explicit keyword argument (``entry``,
``dynamic_quant_path``, ``cast_mode``, ...); the checker / op layer decides those values.  Nothing here
validates arguments beyond what is needed to compute: the rules (``ascend_moe.rules.routing``) run first.

Faithfulness contract (each function's docstring gives its formula):

* **sort key and ties**: the kernels sort ``-float32(expert_id)`` descending with the flat slot index
  ``f = token * K + k`` as payload (AscendC Sort32/MrgSort: equal keys keep the lower index first), i.e.
  ascending expert id, equal ids in ascending ``f``.  init_routing masks ids below the active range with
  the most negative float so they sort last, in ``f`` order.  That the multi-core merge keeps this tie
  order is inferred (op-plugin's golden uses a stable argsort).
* **exact**: every copy, gather, count and integer step; every float step that the kernel performs in
  fp32 (or fp16 for the fp16 finalize kernel) is done here in the same dtype and the same order.
* **undefined regions**: what the kernel leaves unwritten is filled by the undefined-region policy
  (NaN / dtype minimum by default, see ``numerics.fill_undefined``); each function lists its regions.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from .numerics import cast, dtype_name, fill_undefined, float_to_int, np_dtype

__all__ = [
    "routing_sort_order", "moe_init_routing_v2", "moe_token_permute", "moe_token_unpermute",
    "moe_finalize_routing", "moe_gating_top_k_softmax", "moe_gating_top_k_softmax_v2",
    "moe_compute_expert_tokens", "moe_re_routing", "moe_token_permute_grad", "moe_token_unpermute_grad",
    "moe_gating_top_k_backward", "permute_out_rows", "init_routing_out_rows",
    "DYNAMIC_QUANT_PATHS", "set_dynamic_quant_path", "get_dynamic_quant_path",
    "dynamic_quant_path", "init_routing_v2_output_specs", "token_permute_output_specs",
    "token_unpermute_output_specs", "finalize_routing_output_specs", "gating_top_k_softmax_output_specs",
    "re_routing_output_specs",
]

# Which of the two dynamic-quant kernels of init_routing runs is a tiling decision on the UB size
# (threshold not public): "full_row" rounds the fp32 quotient half-to-even (CAST_RINT) in one step;
# "h_tiled" truncates it to fp16 (CAST_TRUNC) and then rounds half away from zero (CAST_ROUND).
DYNAMIC_QUANT_PATHS = ("full_row", "h_tiled")

_dynamic_quant_path: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "ascend_moe_init_routing_dynamic_quant_path", default=None)
_dynamic_quant_path_global = "full_row"


def set_dynamic_quant_path(path: str) -> None:
    """Select the init_routing dynamic-quant rounding process-wide (``"full_row"``, the default, or
    ``"h_tiled"``); also ``ASCEND_MOE_INIT_ROUTING_QUANT_PATH``.  A documented assumption: the tiling's
    choice between the two kernels depends on the UB size and is not public."""
    global _dynamic_quant_path_global
    if path not in DYNAMIC_QUANT_PATHS:
        raise ValueError(f"dynamic_quant_path must be one of {DYNAMIC_QUANT_PATHS}, got {path!r}")
    _dynamic_quant_path_global = path


def get_dynamic_quant_path(override: Optional[str] = None) -> str:
    """The path in effect: per-call override > :func:`dynamic_quant_path` context > environment > global."""
    for p in (override, _dynamic_quant_path.get(), os.environ.get("ASCEND_MOE_INIT_ROUTING_QUANT_PATH"),
              _dynamic_quant_path_global):
        if p:
            if p not in DYNAMIC_QUANT_PATHS:
                raise ValueError(f"dynamic_quant_path must be one of {DYNAMIC_QUANT_PATHS}, got {p!r}")
            return p
    return "full_row"


@contextlib.contextmanager
def dynamic_quant_path(path: str) -> Iterator[None]:
    """Context manager selecting the init_routing dynamic-quant rounding for the calls inside it."""
    if path not in DYNAMIC_QUANT_PATHS:
        raise ValueError(f"dynamic_quant_path must be one of {DYNAMIC_QUANT_PATHS}, got {path!r}")
    token = _dynamic_quant_path.set(path)
    try:
        yield
    finally:
        _dynamic_quant_path.reset(token)


# --------------------------------------------------------------------------------------------
# sort
# --------------------------------------------------------------------------------------------

def routing_sort_order(flat_ids: np.ndarray, range_start: Optional[int] = None) -> np.ndarray:
    """Flat slot indices in the kernels' sorted order: ascending expert id, ties by slot index.

    With ``range_start`` (init_routing's active range), ids below it get the most negative key and go
    last, in slot order.  Ids are compared as float32 keys; they are exact below 2^24 (the rules bound them).
    """
    ids = np.asarray(flat_ids).astype(np.int64).reshape(-1)
    key = ids.astype(np.float64)
    if range_start is not None:
        key = np.where(ids < range_start, np.inf, key)
    return np.argsort(key, kind="stable")


def _f32(a) -> np.ndarray:
    return np.asarray(a).astype(np.float32)


# --------------------------------------------------------------------------------------------
# init_routing_v2
# --------------------------------------------------------------------------------------------

def init_routing_out_rows(num_rows: int, k: int, active_num: int) -> int:
    """Rows of the dropless ``expanded_x``: ``N*K`` when ``active_num <= 0``, else ``min(active_num, N*K)``
    (op-plugin's output size)."""
    nk = num_rows * k
    return nk if active_num <= 0 else min(active_num, nk)


def _trunc_to_fp16(q: np.ndarray) -> np.ndarray:
    """fp32 -> fp16 rounding toward zero (CAST_TRUNC), returned as float32."""
    h = q.astype(np.float16)
    hf = h.astype(np.float32)
    over = np.abs(hf) > np.abs(q)
    toward_zero = np.nextafter(h, np.float16(0)).astype(np.float32)
    return np.where(over, toward_zero, hf).astype(np.float32)


def _static_quant(rows: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """``moe_v3_gather_static_quant``: ``y = fp32(x) * scale + offset`` (Muls, Adds), CAST_RINT to int32,
    int32 -> fp16 (CAST_ROUND), fp16 -> int8 (CAST_TRUNC, saturating [inferred])."""
    y = _f32(rows) * np.float32(scale)
    y = y + np.float32(offset)
    as_int = float_to_int(y, "int32", rounding="rint")
    as_half = as_int.astype(np.float64).astype(np.float16).astype(np.float32)   # exact up to 2048, then fp16
    return float_to_int(as_half, "int8", rounding="trunc")


def _dynamic_quant(rows: np.ndarray, smooth: Optional[np.ndarray], path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``moe_v3_gather_dynamic_quant``: per row ``y = fp32(x) [* smooth]``, ``sc = max|y| / 127`` (scalar
    fp32 division), ``q = y / sc`` (vector fp32 division), then the path's rounding.  Returns
    (int8 rows, fp32 scales, rows whose scale is 0 - their int8 values come from 0/0 and are undefined)."""
    y = _f32(rows)
    if smooth is not None:
        y = y * smooth
    m = np.max(np.abs(y), axis=-1) if y.shape[-1] else np.zeros(y.shape[:-1], np.float32)
    sc = (m / np.float32(127.0)).astype(np.float32)
    zero_rows = sc == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (y / sc[..., None]).astype(np.float32)
    if path == "full_row":
        out = float_to_int(q, "int8", rounding="rint")
    elif path == "h_tiled":
        out = float_to_int(_trunc_to_fp16(q), "int8", rounding="round")
    else:
        raise ValueError(f"dynamic_quant_path must be one of {DYNAMIC_QUANT_PATHS}, got {path!r}")
    return out, sc, zero_rows


def moe_init_routing_v2(
        x: np.ndarray, expert_idx: np.ndarray, *, scale: Optional[np.ndarray] = None,
        offset: Optional[np.ndarray] = None, active_num: int = -1, expert_capacity: int = -1,
        expert_num: int = -1, drop_pad_mode: int = 0, expert_tokens_num_type: int = 0,
        expert_tokens_num_flag: bool = False, quant_mode: int = -1,
        active_expert_range: Sequence[int] = (), row_idx_type: int = 0,
        entry: str = "V3", v2_tokens_mode: str = "count", dynamic_quant_path: Optional[str] = None,
        undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(expanded_x, expanded_row_idx, expert_tokens_count_or_cumsum, expanded_scale)``.

    Notation: ``N, K = expert_idx.shape``, ``f = n*K + k``, ``[s, e) = active_expert_range`` (default
    ``[0, expert_num]``, per call), ``order`` = :func:`routing_sort_order` (ids ``< s`` last),
    ``avail`` = slots with ``s <= id < e``.

    Dropless (``drop_pad_mode=0``), ``R`` = :func:`init_routing_out_rows`:
      ``expanded_x [R, H]``: row ``i < min(avail, R)`` = ``Q(x[order[i] // K])``; the rest is undefined.
      ``expanded_row_idx [N*K]`` int32: ``row_idx_type=0`` (gather): ``-1`` everywhere, then
      ``[order[i]] = i`` for ``i < avail``; ``row_idx_type=1`` (scatter): ``[i] = order[i]`` for
      ``i < avail``, the rest undefined.  [inferred] The ``-1`` pre-fill (``InitGlobalMemory`` in
      ``moe_v3_expert_tokens_count.h``) spans all ``N*K`` entries on the plain sort path; on the
      range-filter ("gather sort") tiling keys of newer kernels it spans only the first ``avail`` entries,
      so slots outside the range might hold stale values there.  Callers should not rely on those ``-1``
      (vllm-ascend does not: it zeroes their weights).
    Drop/pad (``drop_pad_mode=1``, capacity ``C``): the j-th slot (sorted order) of expert x goes to row
    ``x*C + j`` of ``expanded_x [expert_num, C, H]`` if ``j < C``, else it is dropped (row idx ``-1``);
    rows no slot fills are zeros.  ``expanded_row_idx`` (gather) holds ``x*C + j`` or ``-1``.
    ``expert_tokens_count_or_cumsum`` (int64; written only when ``expert_tokens_num_flag``, else undefined):
      type 1 count ``[e-s]`` over all slots (pre-capacity), type 0 inclusive cumsum of it, type 2
      key-value ``[expert_num, 2]``: rows ``(id, count)`` of the experts with tokens in ascending id from
      row 0, zero rows up to ``min(e-s+1, expert_num)`` rows, the rest undefined.
    No rows (``N == 0``): op-plugin returns before calling aclnn, with output 3 zero-filled; so does this twin.
    ``expanded_scale`` fp32 ``[R]`` (``[expert_num*C]`` in drop/pad): dynamic quant = the row's scale;
    unquantised with ``scale`` = ``scale[token]``; otherwise (and for unwritten rows) undefined.

    Quantisation: quant_mode 0 static (``scale[0]``, ``offset[0]``, see ``_static_quant``), 1 dynamic per
    expanded row (``scale`` = smooth ``[e-s or 1, H]`` picked by the row's expert; see ``_dynamic_quant``
    and ``dynamic_quant_path``).  A dynamic row whose max is 0 divides 0/0 on the device: its int8
    values are undefined (its scale is 0).

    ``entry="V2"`` models aclnnMoeInitRoutingV2 as op-plugin calls it (dropless, gather index, count mode
    forced whatever ``drop_pad_mode`` / ``row_idx_type`` / ``expert_tokens_num_flag`` say):
    output 3 is int64 counts (``v2_tokens_mode="count"``, A2/A3) or int32 inclusive cumsum (``"cumsum"``, the
    flag op-plugin passes on the Atlas inference series), ``[expert_num]``, and output 4 is
    ``expert_tokens_before_capacity`` int32 ``[expert_num]``, never written (undefined).
    """
    x = np.asarray(x)
    ids = np.asarray(expert_idx).astype(np.int64)
    n, k = ids.shape
    dynamic_quant_path = get_dynamic_quant_path(dynamic_quant_path)
    if entry == "V2":
        # op-plugin's V2 path: dropless, gather index, no quantisation (forced by the wrapper / the V2 case)
        drop_pad_mode, row_idx_type, quant_mode = 0, 0, -1
    h = x.shape[1]
    nk = n * k
    flat = ids.reshape(-1)
    s, e = (int(active_expert_range[0]), int(active_expert_range[1])) if len(active_expert_range) == 2 \
        else (0, int(expert_num))
    order = routing_sort_order(flat, range_start=s)
    in_range = (flat >= s) & (flat < e)
    avail = int(in_range.sum())
    counts = np.bincount(flat[in_range] - s, minlength=e - s).astype(np.int64)[: e - s]
    quantised = quant_mode in (0, 1)
    x_dtype = "int8" if quantised else dtype_name(x)
    tokens_of = order // k                       # token row of each sorted slot

    if drop_pad_mode == 1:
        cap = int(expert_capacity)
        expanded_x = np.zeros((expert_num, cap, h), dtype=np_dtype(x_dtype))
        expanded_scale = np.empty(expert_num * cap, np.float32)
        scale_written = np.zeros(expert_num * cap, bool)
        row_idx = np.full(nk, -1, np.int32)
        # rank of each sorted in-range slot inside its expert
        sorted_ids = flat[order[:avail]]
        first = np.searchsorted(sorted_ids, sorted_ids, side="left")
        j = np.arange(avail) - first
        keep = j < cap
        dest = sorted_ids[keep] * cap + j[keep]
        src_slots = order[:avail][keep]
        row_idx[src_slots] = dest.astype(np.int32)
        rows = x[src_slots // k]
        flat_x = expanded_x.reshape(expert_num * cap, h)
        if quant_mode == 0:
            flat_x[dest] = _static_quant(rows, _f32(scale).reshape(-1)[0], _f32(offset).reshape(-1)[0])
        elif quant_mode == 1:
            smooth = _smooth_rows(scale, sorted_ids[keep] - s)
            q, sc, zero = _dynamic_quant(rows, smooth, dynamic_quant_path)
            flat_x[dest] = q
            expanded_scale[dest] = sc
            scale_written[dest] = True
            fill_undefined(flat_x, dest[zero], undefined)
        else:
            flat_x[dest] = rows
            if scale is not None:
                expanded_scale[dest] = _f32(scale).reshape(-1)[src_slots // k]
                scale_written[dest] = True
        fill_undefined(expanded_scale, ~scale_written, undefined)
    else:
        r = init_routing_out_rows(n, k, active_num)
        written = min(avail, r)
        expanded_x = np.empty((r, h), dtype=np_dtype(x_dtype))
        expanded_scale = np.empty(r, np.float32)
        scale_written = np.zeros(r, bool)
        rows = x[tokens_of[:written]]
        if quant_mode == 0:
            expanded_x[:written] = _static_quant(rows, _f32(scale).reshape(-1)[0], _f32(offset).reshape(-1)[0])
        elif quant_mode == 1:
            smooth = _smooth_rows(scale, flat[order[:written]] - s)
            q, sc, zero = _dynamic_quant(rows, smooth, dynamic_quant_path)
            expanded_x[:written] = q
            expanded_scale[:written] = sc
            scale_written[:written] = True
            fill_undefined(expanded_x, np.nonzero(zero)[0], undefined)
        else:
            expanded_x[:written] = rows
            if scale is not None:
                expanded_scale[:written] = _f32(scale).reshape(-1)[tokens_of[:written]]
                scale_written[:written] = True
        fill_undefined(expanded_x, slice(written, None), undefined)
        fill_undefined(expanded_scale, ~scale_written, undefined)
        if row_idx_type == 1:
            row_idx = np.empty(nk, np.int32)
            row_idx[:avail] = order[:avail]
            fill_undefined(row_idx, slice(avail, None), undefined)
        else:
            row_idx = np.full(nk, -1, np.int32)
            row_idx[order[:avail]] = np.arange(avail, dtype=np.int32)

    if n == 0:
        # op-plugin returns before any aclnn call with output 3 zero-filled (its bs == 0 branch)
        specs = init_routing_v2_output_specs(0, k, h, dtype_name(x), expert_num=expert_num,
                                             expert_tokens_num_type=expert_tokens_num_type,
                                             active_expert_range=active_expert_range, entry=entry,
                                             v2_tokens_mode=v2_tokens_mode)
        last = expanded_scale if entry != "V2" else np.zeros(specs[3][0], np.int32)
        return expanded_x, row_idx, np.zeros(specs[2][0], np_dtype(specs[2][1])), last
    if entry == "V2":
        # the wrapper's allocation: int64 [E_range] on A2/A3 (count), int32 on the inference series (cumsum)
        tokens = np.cumsum(counts).astype(np.int32) if v2_tokens_mode == "cumsum" else counts.astype(np.int64)
        before_capacity = np.empty(int(expert_num), np.int32)
        fill_undefined(before_capacity, slice(None), undefined)
        return expanded_x, row_idx, tokens, before_capacity

    if expert_tokens_num_type == 2:
        tokens = np.empty((int(expert_num), 2), np.int64)
        if expert_tokens_num_flag:
            written_rows = min(e - s + 1, int(expert_num))
            tokens[:written_rows] = 0
            nz = np.nonzero(counts)[0]
            tokens[: len(nz), 0] = nz + s
            tokens[: len(nz), 1] = counts[nz]
            fill_undefined(tokens, slice(written_rows, None), undefined)
        else:
            fill_undefined(tokens, slice(None), undefined)
    else:
        tokens = np.empty(e - s, np.int64)
        if expert_tokens_num_flag:
            tokens[:] = np.cumsum(counts) if expert_tokens_num_type == 0 else counts
        else:
            fill_undefined(tokens, slice(None), undefined)
    return expanded_x, row_idx, tokens, expanded_scale


def _smooth_rows(scale: Optional[np.ndarray], local_expert: np.ndarray) -> Optional[np.ndarray]:
    """The dynamic-quant smooth scale row of each expanded row: ``scale[local expert]`` (``[E_range, H]``)
    or the single row of a ``[1, H]`` scale; None without scale."""
    if scale is None:
        return None
    sm = _f32(scale)
    if sm.shape[0] == 1:
        return np.broadcast_to(sm[0], (len(local_expert), sm.shape[1]))
    return sm[local_expert]


# --------------------------------------------------------------------------------------------
# token permute / unpermute
# --------------------------------------------------------------------------------------------

def permute_out_rows(num_slots: int, num_out_tokens: Optional[int]) -> int:
    """Rows of ``permuted_tokens`` as op-plugin sizes them: ``min(n, slots)`` for ``n > 0``, otherwise
    ``slots + n`` (0 or None = all slots, a negative n drops the last ``|n|``)."""
    nn = int(num_out_tokens or 0)
    return min(nn, num_slots) if nn > 0 else nn + num_slots


def moe_token_permute(tokens: np.ndarray, indices: np.ndarray, num_out_tokens: Optional[int] = None,
                      padded_mode: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """``(permuted_tokens [P, H], sorted_indices [N*K] int32)``, aclnnMoeTokenPermute (padded_mode False).

    ``K = indices.shape[1]`` (1 for 1-D indices), ``order`` = :func:`routing_sort_order` (no range),
    ``sorted_indices[order[i]] = i`` (complete), ``permuted[i] = tokens[order[i] // K]`` for
    ``i < P`` = :func:`permute_out_rows`.  Every output row is written (``P <= N*K``).
    """
    if padded_mode:
        raise ValueError("moe_token_permute: padded_mode=True is documented as unsupported and is not modelled")
    tokens = np.asarray(tokens)
    idx = np.asarray(indices)
    k = idx.shape[1] if idx.ndim == 2 else 1
    flat = idx.reshape(-1)
    order = routing_sort_order(flat)
    sorted_indices = np.empty(flat.size, np.int32)
    sorted_indices[order] = np.arange(flat.size, dtype=np.int32)
    p = permute_out_rows(flat.size, num_out_tokens)
    permuted = tokens[order[:p] // k]
    return np.ascontiguousarray(permuted), sorted_indices


def moe_token_unpermute(permuted_tokens: np.ndarray, sorted_indices: np.ndarray,
                        probs: Optional[np.ndarray] = None, padded_mode: bool = False,
                        restore_shape: Optional[Sequence[int]] = None, *,
                        undefined: Optional[str] = None) -> np.ndarray:
    """``out [len(sorted_indices) // K, H]`` (dtype of permuted_tokens), aclnnMoeTokenUnpermute.

    Per output token t, in fp32 (``K = probs.shape[1]``, 1 without probs, ``P = permuted.shape[0]``)::

        acc = 0
        for j in 0..K-1:  idx = sorted_indices[t*K + j];  p = fp32(probs[t, j])
            if idx < P and (no probs or p != 0):  acc = acc + fp32(permuted[idx]) * p    (Muls, Add)
        out[t] = cast(acc)        # CAST_RINT on A2/A3; CAST_NONE on the inference series (fp16 only there,
                                  # where it is round-to-nearest-even too [inferred])

    ``idx`` is compared signed, so ``-1`` passes ``idx < P``: with a nonzero prob the device reads the row
    before the buffer (out of bounds).  Here such a token's output row is an undefined region.  Slots with
    ``p == 0`` are skipped entirely (NaN/Inf in their rows do not propagate).  ``restore_shape`` is
    ignored when ``padded_mode`` is False (the only mode the kernels support).
    """
    if padded_mode:
        raise ValueError("moe_token_unpermute: padded_mode=True is documented as unsupported and is not modelled")
    perm = np.asarray(permuted_tokens)
    si = np.asarray(sorted_indices).astype(np.int64)
    out_dtype = dtype_name(perm)
    k = np.asarray(probs).shape[1] if probs is not None else 1
    t = si.size // k
    p_rows = perm.shape[0]
    idx = si[: t * k].reshape(t, k)
    pf = _f32(probs) if probs is not None else None
    acc = np.zeros((t, perm.shape[1]), np.float32)
    started = np.zeros(t, bool)      # the first used slot initialises acc (keeps a -0.0 product's sign)
    bad = np.zeros(t, bool)
    for j in range(k):
        col = idx[:, j]
        use = col < p_rows
        if pf is not None:
            use &= pf[:, j] != 0
        oob = use & (col < 0)
        bad |= oob
        use &= ~oob
        rows = np.nonzero(use)[0]
        v = _f32(perm[col[rows]])
        if pf is not None:
            v = v * pf[rows, j][:, None]
        first = ~started[rows]
        acc[rows] = np.where(first[:, None], v, acc[rows] + v)
        started[rows] = True
    out = acc if out_dtype == "float32" else cast(acc, out_dtype)
    if bad.any():
        fill_undefined(out, np.nonzero(bad)[0], undefined)
    return out


def moe_token_permute_grad(grad_permuted_tokens: np.ndarray, sorted_indices: np.ndarray, num_tokens: int,
                           num_topk: int) -> np.ndarray:
    """``grad_tokens [num_tokens, H]``: ``sum_j grad_permuted[sorted_indices[t*K + j]]`` over the K slots of
    token t whose position is ``< P`` (rows beyond ``num_out_tokens`` got no copy, hence no gradient),
    fp32 accumulation in j order, rounded half-to-even to the gradient dtype (MoeTokenPermuteGrad doc
    formula; its kernel's accumulation order is inferred to be j order)."""
    g = np.asarray(grad_permuted_tokens)
    si = np.asarray(sorted_indices).astype(np.int64).reshape(num_tokens, num_topk)
    p = g.shape[0]
    acc = np.zeros((num_tokens, g.shape[1]), np.float32)
    for j in range(num_topk):
        col = si[:, j]
        rows = np.nonzero(col < p)[0]
        acc[rows] = acc[rows] + _f32(g[col[rows]])
    d = dtype_name(g)
    return acc if d == "float32" else cast(acc, d)


def moe_token_unpermute_grad(permuted_tokens: np.ndarray, grad_unpermuted: np.ndarray,
                             sorted_indices: np.ndarray, probs: Optional[np.ndarray] = None
                             ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(grad_permuted [P, H], grad_probs [T, K] or None)`` (MoeTokenUnpermuteGrad doc formula):
    ``grad_permuted[sorted_indices[t*K+j]] = grad[t] * p[t,j]`` (fp32 multiply, rounded to the dtype; rows
    no slot maps to are zero), ``grad_probs[t,j] = sum_h grad[t,h] * permuted[idx,h]`` (fp32 sum, order
    of the hidden-dim reduction not public)."""
    perm = np.asarray(permuted_tokens)
    g = np.asarray(grad_unpermuted)
    si = np.asarray(sorted_indices).astype(np.int64)
    k = np.asarray(probs).shape[1] if probs is not None else 1
    t = g.shape[0]
    idx = si[: t * k].reshape(t, k)
    gf = _f32(g)
    d = dtype_name(perm)
    grad_perm = np.zeros(perm.shape, np.float32)
    grad_probs = np.zeros((t, k), np.float32) if probs is not None else None
    pf = _f32(probs) if probs is not None else None
    for j in range(k):
        col = idx[:, j]
        ok = (col >= 0) & (col < perm.shape[0])
        rows = np.nonzero(ok)[0]
        contrib = gf[rows] * pf[rows, j][:, None] if pf is not None else gf[rows]
        grad_perm[col[rows]] = contrib
        if grad_probs is not None:
            grad_probs[rows, j] = np.sum(gf[rows] * _f32(perm[col[rows]]), axis=-1, dtype=np.float32)
    grad_perm = grad_perm if d == "float32" else cast(grad_perm, d)
    if grad_probs is not None and dtype_name(probs) != "float32":
        grad_probs = cast(grad_probs, dtype_name(probs))
    return grad_perm, grad_probs


# --------------------------------------------------------------------------------------------
# finalize_routing
# --------------------------------------------------------------------------------------------

def moe_finalize_routing(expanded_permuted_rows: np.ndarray, skip1: Optional[np.ndarray],
                         skip2: Optional[np.ndarray], bias: Optional[np.ndarray], scales: Optional[np.ndarray],
                         expanded_src_to_dst_row: np.ndarray, export_for_source_row: Optional[np.ndarray],
                         drop_pad_mode: int = 0, k: int = 1, *, undefined: Optional[str] = None) -> np.ndarray:
    """``out [rows, H]`` (dtype of the expanded rows), aclnnMoeFinalizeRouting V2/V4 kernels.

    ``rows = scales.shape[0]`` (else ``len(idx) // k``), ``K = scales.shape[1]`` (else ``k``).  Row index of
    (i, k): modes 0/1 column-major ``idx[i + k*rows]``, modes 2/3 row-major ``idx[i*K + k]``; modes 1/3
    read ``expanded_permuted_rows`` as ``[E*C, H]`` and skip ``-1`` entries.  Per row i::

        acc = skip1 + skip2 (whichever are given; 0 when none)
        for k in 0..K-1:  r = idx(i, k); if r == -1 (drop/pad modes): skip
            t = rows[r] (+ bias[export_for_source_row[i, k]]);  t = t * scales[i, k];  acc = acc + t
        out = cast(acc)    # RINT

    Precision: fp32 for fp32 and bf16 inputs (every operand widened); **fp16 inputs are computed in fp16**
    (the Fp kernels run Add / Muls / Add on half vectors, the scale read as half), each op rounded to fp16.
    A ``-1`` index in a dropless mode (or any index outside the rows) reads out of bounds on the device:
    that output row is an undefined region here.
    """
    ex = np.asarray(expanded_permuted_rows)
    d = dtype_name(ex)
    h = ex.shape[-1]
    ex2 = ex.reshape(-1, h)
    idx = np.asarray(expanded_src_to_dst_row).astype(np.int64).reshape(-1)
    if scales is not None:
        rows, kk = np.asarray(scales).shape
    else:
        kk = int(k)
        rows = idx.size // kk
    work = np.float16 if d == "float16" else np.float32

    def w(a):
        return np.asarray(a).astype(np.float32).astype(work)

    acc = np.zeros((rows, h), work)
    if skip1 is not None:
        acc = w(skip1).reshape(rows, h)
        if skip2 is not None:
            acc = (acc + w(skip2).reshape(rows, h)).astype(work)
    sc = w(scales) if scales is not None else None
    eid = np.asarray(export_for_source_row).astype(np.int64).reshape(rows, -1) if export_for_source_row is not None else None
    bias_w = w(bias) if bias is not None else None
    bad = np.zeros(rows, bool)
    for j in range(kk):
        col = idx[np.arange(rows) + j * rows] if drop_pad_mode in (0, 1) else idx[np.arange(rows) * kk + j]
        use = np.ones(rows, bool)
        if drop_pad_mode in (1, 3):
            use &= col != -1
        oob = use & ((col < 0) | (col >= ex2.shape[0]))
        bad |= oob
        use &= ~oob
        r = np.nonzero(use)[0]
        t = w(ex2[col[r]])
        if bias_w is not None:
            t = (t + bias_w[eid[r, j]]).astype(work)
        if sc is not None:
            t = (t * sc[r, j][:, None]).astype(work)
        acc[r] = (acc[r] + t).astype(work)
    out = acc.astype(np.float32)
    out = out if d == "float32" else cast(out, d)
    if bad.any():
        fill_undefined(out, np.nonzero(bad)[0], undefined)
    return out


# --------------------------------------------------------------------------------------------
# gating top-k softmax
# --------------------------------------------------------------------------------------------

REDUCE_LANES = 64      # float32 lanes of one 256-byte vector repeat


def _tree_sum(a: np.ndarray) -> np.ndarray:
    """Pairwise adjacent-lane tree over the last axis (a power of two long), float32 throughout."""
    while a.shape[-1] > 1:
        a = a[..., 0::2] + a[..., 1::2]
    return a[..., 0]


def _reduce_sum_f32(a: np.ndarray) -> np.ndarray:
    """AscendC ReduceSum over the last axis as the simulator models it (same model as the gating op):
    zero-padded 64-lane repeats, a pairwise tree inside each repeat, then a tree over the repeat
    partials (padded to a power of two) - float32 [inferred order]."""
    a = np.asarray(a, dtype=np.float32)
    n = a.shape[-1]
    blocks = max(1, -(-n // REDUCE_LANES))
    if blocks * REDUCE_LANES != n:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (blocks * REDUCE_LANES - n,), np.float32)], axis=-1)
    partial = _tree_sum(a.reshape(a.shape[:-1] + (blocks, REDUCE_LANES)))
    if blocks == 1:
        return partial[..., 0]
    width = 1 << (blocks - 1).bit_length()
    if width != blocks:
        partial = np.concatenate([partial, np.zeros(partial.shape[:-1] + (width - blocks,), np.float32)], axis=-1)
    return _tree_sum(partial)


def _softmax_rows_f32(xf: np.ndarray) -> np.ndarray:
    """fp32 softmax over the last axis in the perf kernel's order: max, ``exp(x - m)``, ReduceSum, Div.
    The sum order is :func:`_reduce_sum_f32` [inferred]; hardware ``Exp`` accuracy is not public."""
    m = xf.max(axis=-1, keepdims=True)
    ex = np.exp((xf - m).astype(np.float32)).astype(np.float32)
    s = _reduce_sum_f32(ex)
    return np.divide(ex, s[..., None], dtype=np.float32)


def _top_k_desc(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, descending, ties -> lower index (Sort32 rule)."""
    order = np.argsort(-v.astype(np.float64), axis=-1, kind="stable")
    return order[..., :k]


def _gating_y_cast(p: np.ndarray, out_dtype: str) -> np.ndarray:
    """y rounding of the perf kernel: bf16 CAST_ROUND (half away from zero), fp16 CAST_NONE (nearest
    even [inferred]), fp32 as is."""
    if out_dtype == "bfloat16":
        bits = p.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x8000) & 0xFFFF0000).astype(np.uint32)
        finite = np.isfinite(p)
        r = np.where(finite, rounded.view(np.float32), p)
        return r.astype(np_dtype("bfloat16"))
    return p if out_dtype == "float32" else cast(p, out_dtype)


def moe_gating_top_k_softmax(x: np.ndarray, finished: Optional[np.ndarray] = None, k: int = 1
                             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y [..., k] x.dtype, expert_idx [..., k] int32, row_idx [..., k] int32)``.

    fp32 softmax per row (:func:`_softmax_rows_f32`), top-k descending with ties to the lower expert;
    ``finished[row]`` true sets that row's ``expert_idx`` to ``num_experts`` (y unchanged);
    ``row_idx[row, j] = j * rows + row`` (rows = product of the leading dims); y rounded as
    :func:`_gating_y_cast`.
    """
    x = np.asarray(x)
    lead = x.shape[:-1]
    e = x.shape[-1]
    x2 = x.reshape(-1, e)
    rows = x2.shape[0]
    p = _softmax_rows_f32(x2.astype(np.float32))
    idx = _top_k_desc(p, k)
    yv = np.take_along_axis(p, idx, axis=-1)
    idx = idx.astype(np.int32)
    if finished is not None:
        fin = np.asarray(finished).reshape(-1).astype(bool)
        idx[fin] = e
    row_idx = (np.arange(k, dtype=np.int32)[None, :] * rows + np.arange(rows, dtype=np.int32)[:, None])
    y = _gating_y_cast(yv, dtype_name(x))
    return y.reshape(*lead, k), idx.reshape(*lead, k), row_idx.astype(np.int32).reshape(*lead, k)


def moe_gating_top_k_softmax_v2(x: np.ndarray, k: int = 1, finished: Optional[np.ndarray] = None,
                                renorm: int = 0, output_softmax: bool = False, *,
                                undefined: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, expert_idx, softmax_result)``.  renorm 0: as :func:`moe_gating_top_k_softmax` and, when
    ``output_softmax``, ``softmax_result`` = the fp32 softmax of x (else a ``[0]`` tensor); renorm 1: top-k
    on the raw x (ties to the lower expert), then the fp32 softmax over those k values (doc formula).
    ``finished`` sets ``expert_idx`` of its rows to ``num_experts``."""
    x = np.asarray(x)
    lead = x.shape[:-1]
    e = x.shape[-1]
    x2 = x.reshape(-1, e).astype(np.float32)
    if renorm == 0:
        p = _softmax_rows_f32(x2)
        idx = _top_k_desc(p, k)
        yv = np.take_along_axis(p, idx, axis=-1)
    else:
        p = None
        idx = _top_k_desc(x2, k)
        yv = _softmax_rows_f32(np.take_along_axis(x2, idx, axis=-1))
    idx = idx.astype(np.int32)
    if finished is not None:
        idx[np.asarray(finished).reshape(-1).astype(bool)] = e
    y = _gating_y_cast(yv, dtype_name(x)).reshape(*lead, k)
    if renorm == 0 and output_softmax:
        soft = p.reshape(x.shape)
    else:
        soft = np.empty((0,), np.float32)
    return y, idx.reshape(*lead, k), soft


def moe_gating_top_k_backward(x_norm: np.ndarray, grad_y: np.ndarray, expert_idx: np.ndarray,
                              routed_scaling_factor: float = 1.0, eps: float = 1e-20) -> np.ndarray:
    """``grad_x [rows, E]`` of the sigmoid + renormalised top-k gate (aclnnMoeGatingTopKBackward; the op's
    golden), everything fp32 and the result rounded to ``grad_y``'s dtype::

        s = x_norm[idx];  d = sum(s) + eps;  w = s / d;  g = grad_y * routed_scaling_factor
        beta = sum(w * g);  gs = (g - beta) / d;  grad_norm[idx] += gs;  grad_x = x_norm*(1-x_norm)*grad_norm

    The reduction orders (k-long sums) follow the k order [inferred]."""
    xn = _f32(x_norm)
    g = _f32(grad_y) * np.float32(routed_scaling_factor)
    idx = np.asarray(expert_idx).astype(np.int64)
    s = np.take_along_axis(xn, idx, axis=-1)
    den = np.zeros(s.shape[0], np.float32)
    for j in range(s.shape[1]):
        den = den + s[:, j]
    den = den + np.float32(eps)
    wgt = s / den[:, None]
    beta = np.zeros(s.shape[0], np.float32)
    for j in range(s.shape[1]):
        beta = beta + wgt[:, j] * g[:, j]
    gs = (g - beta[:, None]) / den[:, None]
    grad_norm = np.zeros_like(xn)
    for j in range(idx.shape[1]):
        np.add.at(grad_norm, (np.arange(xn.shape[0]), idx[:, j]), gs[:, j])
    grad_x = xn * (np.float32(1) - xn) * grad_norm
    d = dtype_name(grad_y)
    return grad_x.astype(np.float32) if d == "float32" else cast(grad_x.astype(np.float32), d)


# --------------------------------------------------------------------------------------------
# compute_expert_tokens, re_routing
# --------------------------------------------------------------------------------------------

def moe_compute_expert_tokens(sorted_expert_for_source_row: np.ndarray, num_expert: int) -> np.ndarray:
    """``out [num_expert]`` int32: ``out[i]`` = the (exclusive) end of expert i's run in the ascending sorted
    expert list = number of entries ``<= i`` (the doc's binary search for the last row of expert i)."""
    ids = np.asarray(sorted_expert_for_source_row).astype(np.int64).reshape(-1)
    return np.searchsorted(ids, np.arange(num_expert), side="right").astype(np.int32)


def moe_re_routing(tokens: np.ndarray, expert_token_num_per_rank: np.ndarray, per_token_scales: Optional[np.ndarray] = None,
                   expert_token_num_type: int = 1, idx_type: int = 0, *, undefined: Optional[str] = None
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(permute_tokens, permute_per_token_scales, permute_token_idx, expert_token_num)``.

    ``tokens`` arrive rank-major then expert (``counts [ranks, experts]``); the output is expert-major then
    rank.  Block (r, e) starts at source offset ``sum of counts before (r, e) in rank-major order`` and lands
    at ``sum of counts before (e, r) in expert-major order``.  ``permute_token_idx[dst] = src`` for
    ``idx_type=0`` (gather index); ``idx_type=1`` gives the scatter index ``[src] = dst``.
    ``expert_token_num [experts]`` = column sums (type 1 count; type 0 inclusive cumsum), in the counts'
    dtype.  Rows past the counts' total are not written (undefined).
    """
    tok = np.asarray(tokens)
    counts = np.asarray(expert_token_num_per_rank)
    c = counts.astype(np.int64)
    ranks, experts = c.shape
    total = int(c.sum())
    src_start = np.concatenate([[0], np.cumsum(c.reshape(-1))[:-1]]).reshape(ranks, experts)
    dst_start = np.concatenate([[0], np.cumsum(c.T.reshape(-1))[:-1]]).reshape(experts, ranks).T
    gather = np.empty(total, np.int64)
    for e in range(experts):
        for r in range(ranks):
            n = c[r, e]
            gather[dst_start[r, e]: dst_start[r, e] + n] = np.arange(src_start[r, e], src_start[r, e] + n)
    m = tok.shape[0]
    out = np.empty_like(tok)
    out[:total] = tok[gather]
    fill_undefined(out, slice(total, None), undefined)
    if per_token_scales is not None:
        ps = np.asarray(per_token_scales)
        out_scales = np.empty_like(ps)
        out_scales[:total] = ps[gather]
        fill_undefined(out_scales, slice(total, None), undefined)
    else:
        out_scales = np.empty(m, np.float32)
        fill_undefined(out_scales, slice(None), undefined)
    idx = np.empty(m, np.int32)
    if idx_type == 0:
        idx[:total] = gather
    else:
        idx[gather] = np.arange(total, dtype=np.int32)
    fill_undefined(idx, slice(total, None), undefined)
    col = c.sum(axis=0)
    expert_token_num = (np.cumsum(col) if expert_token_num_type == 0 else col).astype(counts.dtype)
    return out, out_scales, idx, expert_token_num


# --------------------------------------------------------------------------------------------
# output shapes and dtypes (what the device path allocates; used by fake / meta kernels)
# --------------------------------------------------------------------------------------------

Spec = Tuple[Tuple[int, ...], str]


def init_routing_v2_output_specs(num_rows: int, k: int, hidden: int, x_dtype: str, *, active_num: int = -1,
                                 expert_capacity: int = -1, expert_num: int = -1, drop_pad_mode: int = 0,
                                 expert_tokens_num_type: int = 0, quant_mode: int = -1,
                                 active_expert_range: Sequence[int] = (), entry: str = "V3",
                                 v2_tokens_mode: str = "count") -> Tuple[Spec, Spec, Spec, Spec]:
    """Shapes/dtypes op-plugin allocates for ``npu_moe_init_routing_v2`` (device path, spec 1.3 item 5).

    Unlike op-plugin's meta function, output 3 is ``[E_range]`` even when ``expert_tokens_num_flag`` is False
    and ``expanded_scale`` is ``[R]`` for static quantisation: these are the tensors code receives on the NPU."""
    s, e = (int(active_expert_range[0]), int(active_expert_range[1])) if len(active_expert_range) == 2 \
        else (0, int(expert_num))
    xd = "int8" if quant_mode in (0, 1) else x_dtype
    if drop_pad_mode == 1:
        ex = ((int(expert_num), int(expert_capacity), hidden), xd)
        sc = ((int(expert_num) * int(expert_capacity),), "float32")
    else:
        r = init_routing_out_rows(num_rows, k, active_num)
        ex = ((r, hidden), xd)
        sc = ((r,), "float32")
    row = ((num_rows * k,), "int32")
    if entry == "V2":
        tok = ((int(expert_num),), "int32" if v2_tokens_mode == "cumsum" else "int64")
        return ex, row, tok, ((int(expert_num),), "int32")
    tok = ((int(expert_num), 2), "int64") if expert_tokens_num_type == 2 else ((e - s,), "int64")
    return ex, row, tok, sc


def token_permute_output_specs(tokens_shape: Sequence[int], tokens_dtype: str, indices_shape: Sequence[int],
                               num_out_tokens: Optional[int] = None) -> Tuple[Spec, Spec]:
    slots = int(np.prod(indices_shape)) if len(indices_shape) else 1
    return ((permute_out_rows(slots, num_out_tokens), int(tokens_shape[1])), tokens_dtype), ((slots,), "int32")


def token_unpermute_output_specs(permuted_shape: Sequence[int], permuted_dtype: str, num_indices: int,
                                 probs_shape: Optional[Sequence[int]] = None) -> Spec:
    topk = int(probs_shape[1]) if probs_shape is not None else 1
    return (num_indices // topk, int(permuted_shape[-1])), permuted_dtype


def finalize_routing_output_specs(expanded_shape: Sequence[int], expanded_dtype: str, num_indices: int,
                                  scales_shape: Optional[Sequence[int]] = None, k: int = 1) -> Spec:
    rows = int(scales_shape[0]) if scales_shape is not None else num_indices // int(k)
    return (rows, int(expanded_shape[-1])), expanded_dtype


def gating_top_k_softmax_output_specs(x_shape: Sequence[int], x_dtype: str, k: int, *, v2: bool = False,
                                      renorm: int = 0, output_softmax: bool = False) -> Tuple[Spec, Spec, Spec]:
    lead = tuple(int(v) for v in x_shape[:-1])
    y = (lead + (k,), x_dtype)
    idx = (lead + (k,), "int32")
    if not v2:
        return y, idx, (lead + (k,), "int32")
    soft = (tuple(int(v) for v in x_shape), "float32") if renorm == 0 and output_softmax else ((0,), "float32")
    return y, idx, soft


def re_routing_output_specs(tokens_shape: Sequence[int], tokens_dtype: str, counts_shape: Sequence[int],
                            counts_dtype: str, scales_shape: Optional[Sequence[int]] = None,
                            scales_dtype: str = "float32") -> Tuple[Spec, Spec, Spec, Spec]:
    m = int(tokens_shape[0])
    sc = (tuple(scales_shape), scales_dtype) if scales_shape is not None else ((m,), "float32")
    return (tuple(tokens_shape), tokens_dtype), sc, ((m,), "int32"), ((int(counts_shape[1]),), counts_dtype)
