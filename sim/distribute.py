"""Expert-parallel dispatch and combine (``npu_moe_distribute_dispatch(_v2)`` / ``_combine(_v2)``),
one rank at a time.

On the device these ops are MC2 kernels: every rank writes its tokens straight into its peers'
HCCL windows.  Here the computation of one rank is split into pure functions around the two
exchanges, so that any transport (torch.distributed all_to_all, or a loop over ranks in one
process) can run them and get the device's outputs value for value:

    dispatch:  dispatch_send (per rank) -> exchange -> dispatch_receive (per rank)
    combine:   combine_send  (per rank) -> exchange -> combine_receive  (per rank)

Each ``*_send`` returns the rows for every destination rank concatenated in destination order
plus the per-destination split sizes; each ``*_receive`` takes what arrived, rank-major (source
rank 0 first), which is exactly what ``all_to_all_single`` delivers.

What the kernels do (ops-transformer ``mc2/moe_distribute_dispatch_v2/op_kernel``:
``moe_distribute_dispatch_v2.h``, ``moe_distribute_dispatch_v2_quant.h``; ``mc2/moe_distribute_combine_v2/
op_kernel/arch22/moe_distribute_combine_v2.h``; tiling ``moe_distribute_dispatch_v2_tiling.cpp``):

* Ranks ``0 .. S-1`` (S = shared_expert_rank_num, ``expert_shard_type`` 0) hold shared experts,
  the others ``L = moe_expert_num / (W - S)`` routed experts each: expert ``e`` lives on rank
  ``e // L + S`` as local expert ``e % L``.  The tiling turns the default ``shared_expert_num=1``
  into 0 when S is 0, so the effective shared count is 0 then.
* Valid (token, k) pairs: all, the first ``sum(mask)`` tokens for a 1-D ``x_active_mask``, or the
  true entries of a 2-D ``[BS, K]`` mask.  A pair's slot inside its (source, expert) block is the
  number of earlier valid pairs with the same expert id (``CalTokenSendExpertCnt``); the kernel
  forces 0 for token 0 (a duplicate id inside token 0's row collides there; callers must pass
  distinct ids per row, the docs require it).
* Shared experts: every active token goes once to each shared expert ``s``, on rank
  ``(rank % (S / shared_num)) + s * (S / shared_num)``, carrying ``k = K + s``.
* Each row carries the triple ``(source rank, token, k)`` and, with ``expert_scales``, its weight.
* Dynamic int8 quantisation (``quant_mode`` 2), per destination copy
  (``QuantDynamicPerToken``): ``xf = f32(x)``; with ``scales``: ``xf *= scales[row]`` (row
  ``shared_num + e`` for routed expert e, row ``s`` for shared expert s); ``ds = 127 / max|xf|``
  (fp32 division); ``xf *= ds``; int32 by CAST_RINT, then int32 -> fp16 -> int8 (exact for
  |v| <= 127); the row's scale is ``1 / ds`` (fp32).
* Receive layout (``LocalWindowCopy``): for local expert j, then source rank r, the rows r sent
  to expert j in r's (token, k) order.  ``ep_recv_counts[j*W + r]`` is the inclusive running
  count in that order; ``expert_token_nums`` per local expert (type 1) or its running sum
  (type 0).  Rows past the received total are never written (undefined).
* Combine, on the source rank, per active token (``ProcessExpert``/``LocalWindowCopy``):
  ``acc = 0f``; for k ascending (pairs masked out by a 2-D mask skipped): ``acc = acc + v * w``
  (fp32 multiply, then fp32 add; ``acc = acc + v`` without expert_scales); then each shared
  expert's row unweighted; then ``shared_expert_x[t]`` unweighted; cast to the output dtype
  with round-half-even.  Rows of inactive tokens are never written (undefined).  The doc
  formula weights the shared part by expert_scales; the kernel does not (followed here).

Outputs the docs declare implementation-defined (must only be passed on to combine):
``assist_info_for_combine`` / ``expand_idx``, ``ep_recv_counts``, ``tp_recv_counts`` and
``expand_scales``.  This module writes the A3 encodings for them on every product (see
:data:`ASSUMPTIONS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .numerics import dtype_name, fill_undefined, float_to_int, np_dtype

__all__ = [
    "ASSUMPTIONS", "EpConfig", "ep_config", "valid_pairs", "pair_slots", "dynamic_quant_rows",
    "DispatchSend", "dispatch_send", "DispatchOutputs", "dispatch_receive",
    "CombineSend", "combine_send", "combine_receive", "combine_expected_rows",
    "UnsupportedBySimulator", "dispatch_all_ranks", "combine_all_ranks",
]

TRIPLE_WIDTH = 3  # (source rank, token index, k) per row, EXPAND_IDX_INFO in moe_distribute_v2_constant.h
ASSIST_ROW_STRIDE = 128  # assist_info_for_combine holds A*128 int32 (op-plugin wrapper)
INT8_MAX = np.float32(127.0)

# Named choices where no public source settles the device's behaviour.
ASSUMPTIONS: Dict[str, str] = {
    "zero_row_quant": "a row whose max |x| is 0 quantises to int8 zeros with scale 0: the kernel computes "
                      "127/0 = inf, 0*inf = NaN, and the NaN -> int32 conversion result is not public",
    "opaque_outputs": "assist_info_for_combine holds the A3 triples (rank, token, k) and ep_recv_counts the "
                      "A3 running counts on every product; the docs declare both implementation-defined "
                      "(A2 fullmesh encodes them differently) and only combine reads them",
    "tp_recv_counts": "with tp_world_size 0/1 tp_recv_counts (shape [tp_world_size]) holds the received row "
                      "total; its value is implementation-defined",
    "expand_idx_v1": "v1 expand_idx[t*K+k] holds the pair's slot inside its (source, expert) block (the "
                     "design note's expandIdx); invalid pairs are left undefined",
}


class UnsupportedBySimulator(NotImplementedError):
    """A configuration the device supports but this simulator does not model (never a device error)."""


# --------------------------------------------------------------------------------------------
# configuration shared by both ops
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpConfig:
    """Derived sizes of one rank's dispatch/combine (op-plugin ``MoeDistributeDispatchV2KernelOpApi.cpp``)."""
    ep_world_size: int
    ep_rank_id: int
    moe_expert_num: int
    shared_expert_num: int        # effective: 0 when shared_expert_rank_num is 0 (tiling)
    shared_expert_rank_num: int
    bs: int
    k: int
    global_bs: int                # global_bs or BS * W
    tp_world_size: int

    @property
    def moe_rank_num(self) -> int:
        return self.ep_world_size - self.shared_expert_rank_num

    @property
    def experts_per_rank(self) -> int:
        """Routed experts on each MoE rank (L)."""
        return self.moe_expert_num // self.moe_rank_num

    @property
    def ranks_per_shared_expert(self) -> int:
        return self.shared_expert_rank_num // self.shared_expert_num if self.shared_expert_num else 0

    def is_shared_rank(self, rank: Optional[int] = None) -> bool:
        rank = self.ep_rank_id if rank is None else rank
        return rank < self.shared_expert_rank_num

    def local_expert_num(self, rank: Optional[int] = None) -> int:
        return 1 if self.is_shared_rank(rank) else self.experts_per_rank

    def owner(self, expert: np.ndarray) -> np.ndarray:
        return np.asarray(expert) // self.experts_per_rank + self.shared_expert_rank_num

    @property
    def slot_stride(self) -> int:
        """Combine slots per token: K routed plus the shared experts."""
        return self.k + self.shared_expert_num

    @property
    def max_recv_rows(self) -> int:
        """A: rows of expand_x / dynamic_scales / expand_scales on this rank (wrapper formula)."""
        w = self.ep_world_size
        if self.is_shared_rank():
            per_expert_ranks = self.shared_expert_rank_num // max(self.shared_expert_num, 1)
            return (self.global_bs // w) * (-(-w // per_expert_ranks))
        return self.global_bs * min(self.local_expert_num(), self.k)


def ep_config(bs: int, k: int, ep_world_size: int, ep_rank_id: int, moe_expert_num: int,
              shared_expert_num: int = 1, shared_expert_rank_num: int = 0, global_bs: int = 0,
              tp_world_size: int = 0) -> EpConfig:
    """The EpConfig of one rank's call, with the tiling's and the wrapper's defaults applied."""
    shared = 0 if shared_expert_rank_num == 0 else shared_expert_num
    return EpConfig(int(ep_world_size), int(ep_rank_id), int(moe_expert_num), int(shared),
                    int(shared_expert_rank_num), int(bs), int(k),
                    int(global_bs) if global_bs else int(bs) * int(ep_world_size), int(tp_world_size))


# --------------------------------------------------------------------------------------------
# pairs, slots, quantisation
# --------------------------------------------------------------------------------------------


def valid_pairs(bs: int, k: int, x_active_mask: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(flat indices t*K+k of the valid pairs in order, token indices of the active tokens).

    1-D mask: the first ``sum(mask)`` tokens (the docs require trues before falses; the kernel only
    counts them).  2-D mask: the true pairs; a token is active if any of its pairs is.
    """
    if x_active_mask is None:
        return np.arange(bs * k, dtype=np.int64), np.arange(bs, dtype=np.int64)
    m = np.asarray(x_active_mask).astype(bool)
    if m.ndim == 1:
        n = int(m.sum())
        return np.arange(n * k, dtype=np.int64), np.arange(n, dtype=np.int64)
    flat = np.flatnonzero(m.reshape(-1)).astype(np.int64)
    return flat, np.flatnonzero(m.any(axis=1)).astype(np.int64)


def pair_slots(expert_ids: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Slot of each valid pair inside its (source, expert) block: earlier valid pairs with the same
    expert id; 0 for token 0's pairs (the kernel's ``tokenIndex > 0`` guard)."""
    k = expert_ids.shape[1]
    ids = np.asarray(expert_ids).reshape(-1)[pairs]
    slots = np.zeros(len(pairs), dtype=np.int64)
    seen: Dict[int, int] = {}
    for i, (p, e) in enumerate(zip(pairs.tolist(), ids.tolist())):
        c = seen.get(e, 0)
        slots[i] = c if p // k > 0 else 0
        seen[e] = c + 1
    return slots


def dynamic_quant_rows(rows: np.ndarray, smooth: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row dynamic int8 quantisation as the dispatch kernel does it: (int8 rows, fp32 scales).

    ``smooth``: one fp32 row of smooth scales per input row (or None).
    """
    xf = np.asarray(rows).astype(np.float32)
    if smooth is not None:
        xf = xf * np.asarray(smooth, dtype=np.float32)
    absmax = np.abs(xf).max(axis=1) if xf.shape[1] else np.zeros(len(xf), np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ds = (INT8_MAX / absmax).astype(np.float32)
        q = xf * ds[:, None]
        scale = (np.float32(1.0) / ds).astype(np.float32)
    # int32 by round-half-even, then int32 -> fp16 -> int8 (exact in range); NaN (0 * inf) -> 0
    q8 = float_to_int(q, "int32", rounding="rint").clip(-128, 127).astype(np.int8)
    zero = absmax == 0
    if zero.any():
        q8[zero] = 0
        scale[zero] = 0.0
    return q8, scale


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


@dataclass
class DispatchSend:
    """One rank's dispatch send side: rows for every destination, destination-major.

    ``counts[q, j]``: rows for local expert j of rank q (j = 0 for a shared rank's one expert).
    Within a destination the rows are ordered by local expert, then the sender's (token, k)
    order (shared destinations: token order).
    """
    counts: np.ndarray            # int64 [W, Lmax]
    payload: np.ndarray           # [rows, H], x dtype (quant 0) or int8
    row_scales: np.ndarray        # fp32 [rows] (1/ds for quant 2, else 0)
    triples: np.ndarray           # int32 [rows, 3] (source rank, token, k)
    weights: np.ndarray           # fp32 [rows] (expert_scales[t, k] or 0; shared rows 0)
    slots: np.ndarray             # int32 [BS*K] slot per pair (v1 expand_idx); -1 for invalid pairs
    quantised: bool = False       # row_scales are meaningful (quant_mode 2)
    weighted: bool = False        # weights are meaningful (expert_scales given)

    @property
    def splits(self) -> List[int]:
        return [int(c) for c in self.counts.sum(axis=1)]


def dispatch_send(cfg: EpConfig, x: np.ndarray, expert_ids: np.ndarray, *, scales: Optional[np.ndarray] = None,
                  x_active_mask: Optional[np.ndarray] = None, expert_scales: Optional[np.ndarray] = None,
                  quant_mode: int = 0) -> DispatchSend:
    """Build this rank's send rows (``SendToMoeExpert`` / ``SendToSharedExpert``)."""
    if quant_mode not in (0, 2):
        raise UnsupportedBySimulator(f"quant_mode {quant_mode} is not simulated (0 and 2 are; 1/3/4 exist on "
                                     "Ascend 950 only)")
    x = np.asarray(x)
    ids = np.asarray(expert_ids).astype(np.int64)
    bs, k = ids.shape
    w, big_l = cfg.ep_world_size, cfg.experts_per_rank
    lmax = max(big_l, 1)
    pairs, tokens = valid_pairs(bs, k, x_active_mask)
    slots = pair_slots(ids, pairs)
    flat_ids = ids.reshape(-1)[pairs]
    dest = cfg.owner(flat_ids)
    local = flat_ids % big_l

    # routed rows: destination, local expert, then (token, k) order == stable sort on (dest, local)
    order = np.lexsort((pairs, local, dest))
    r_pairs, r_dest, r_local, r_ids = pairs[order], dest[order], local[order], flat_ids[order]
    r_tok, r_k = r_pairs // k, r_pairs % k
    # shared rows: shared expert s, token order
    s_tok_l, s_k_l, s_dest_l, s_row_l = [], [], [], []
    if cfg.shared_expert_num:
        per = cfg.ranks_per_shared_expert
        for s in range(cfg.shared_expert_num):
            s_tok_l.append(tokens)
            s_k_l.append(np.full(len(tokens), k + s, np.int64))
            s_dest_l.append(np.full(len(tokens), cfg.ep_rank_id % per + s * per, np.int64))
            s_row_l.append(np.full(len(tokens), s, np.int64))
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64))
    s_tok, s_k, s_dest, s_srow = cat(s_tok_l), cat(s_k_l), cat(s_dest_l), cat(s_row_l)

    # all rows, destination-major (shared ranks are lower numbered than MoE ranks, and a rank is
    # either shared or MoE, so a stable sort on destination keeps each destination's order)
    all_dest = np.concatenate([s_dest, r_dest])
    all_tok = np.concatenate([s_tok, r_tok])
    all_k = np.concatenate([s_k, r_k])
    all_local = np.concatenate([np.zeros(len(s_dest), np.int64), r_local])
    scale_row = np.concatenate([s_srow, r_ids + cfg.shared_expert_num])
    order = np.argsort(all_dest, kind="stable")
    all_dest, all_tok, all_k, all_local, scale_row = (a[order] for a in (all_dest, all_tok, all_k, all_local,
                                                                          scale_row))

    counts = np.zeros((w, lmax), dtype=np.int64)
    np.add.at(counts, (all_dest, all_local), 1)
    rows = x[all_tok] if len(all_tok) else np.zeros((0, x.shape[1]), x.dtype)
    if quant_mode == 2:
        smooth = None
        if scales is not None:
            smooth = np.asarray(scales, dtype=np.float32)[scale_row]
        payload, row_scales = dynamic_quant_rows(rows, smooth)
    else:
        payload, row_scales = np.ascontiguousarray(rows), np.zeros(len(all_tok), np.float32)
    triples = np.stack([np.full(len(all_tok), cfg.ep_rank_id, np.int64), all_tok, all_k], axis=1).astype(np.int32)
    weights = np.zeros(len(all_tok), np.float32)
    if expert_scales is not None:
        routed = all_k < k
        weights[routed] = np.asarray(expert_scales, dtype=np.float32)[all_tok[routed], all_k[routed]]
    slot_out = np.full(bs * k, -1, dtype=np.int32)
    slot_out[pairs] = slots
    return DispatchSend(counts, payload, row_scales.astype(np.float32), triples, weights, slot_out,
                        quantised=quant_mode == 2, weighted=expert_scales is not None)


@dataclass
class DispatchOutputs:
    """One rank's dispatch outputs, in torch_npu's order (v1 returns ``expand_idx`` third)."""
    expand_x: np.ndarray
    dynamic_scales: np.ndarray
    assist_info_for_combine: np.ndarray
    expert_token_nums: np.ndarray
    ep_recv_counts: np.ndarray
    tp_recv_counts: np.ndarray
    expand_scales: np.ndarray

    def as_tuple(self) -> tuple:
        return (self.expand_x, self.dynamic_scales, self.assist_info_for_combine, self.expert_token_nums,
                self.ep_recv_counts, self.tp_recv_counts, self.expand_scales)


def dispatch_receive(cfg: EpConfig, recv_counts: np.ndarray, payload: np.ndarray, row_scales: np.ndarray,
                     triples: np.ndarray, weights: np.ndarray, *, h: int, out_dtype: str,
                     expert_token_nums_type: int = 1, v1_expand_idx: Optional[np.ndarray] = None,
                     quantised: bool = False, weighted: bool = True,
                     ep_recv_counts_size: Optional[int] = None, a_rows: Optional[int] = None) -> DispatchOutputs:
    """Lay out what this rank received (rank-major, as sent) in the kernel's order.

    ``recv_counts[r, j]``: rows source r sent to this rank's local expert j.  With
    ``v1_expand_idx`` (this rank's own dispatch slots) the third output is the v1 ``expand_idx``.
    ``quantised`` / ``weighted``: whether ``dynamic_scales`` / ``expand_scales`` are written at all
    (the kernel leaves them unwritten without quant_mode 2 / expert_scales); shared-expert rows of
    ``expand_scales`` are left undefined too (no routing weight belongs to them).
    ``ep_recv_counts_size``: the length op-plugin allocates (longer with expert_scales, the tail
    holding A2 combine metadata; left undefined here).  ``a_rows``: A, the rows op-plugin allocates
    per TP rank (default: the v2 wrapper's formula, ``cfg.max_recv_rows``).
    """
    w = cfg.ep_world_size
    n_local = cfg.local_expert_num()
    counts = np.asarray(recv_counts, dtype=np.int64)[:, :n_local]           # [W, L]
    total = int(counts.sum())
    # rank-major blocks (r, j) -> device order (j, r)
    starts = np.concatenate([[0], np.cumsum(counts.reshape(-1))])[:-1].reshape(w, n_local)
    order = np.concatenate([np.arange(starts[r, j], starts[r, j] + counts[r, j])
                            for j in range(n_local) for r in range(w)] or [np.zeros(0, np.int64)]).astype(np.int64)
    a_rows = cfg.max_recv_rows if a_rows is None else int(a_rows)
    out_rows = max(a_rows, a_rows * cfg.tp_world_size)
    if total > out_rows:
        raise ValueError(f"rank {cfg.ep_rank_id} received {total} rows but expand_x holds only {out_rows} "
                         f"(A = {a_rows}); global_bs={cfg.global_bs} is smaller than the ranks' real batch sizes "
                         f"imply")
    expand_x = np.empty((out_rows, h), dtype=np_dtype(out_dtype))
    expand_x[:total] = np.asarray(payload)[order]
    fill_undefined(expand_x, slice(total, None))
    dynamic_scales = np.empty(a_rows, np.float32)
    expand_scales = np.empty(a_rows, np.float32)
    n = min(total, a_rows) if quantised else 0
    dynamic_scales[:n] = np.asarray(row_scales, np.float32)[order][:n]
    fill_undefined(dynamic_scales, slice(n, None))
    n = min(total, a_rows) if weighted else 0
    expand_scales[:n] = np.asarray(weights, np.float32)[order][:n]
    fill_undefined(expand_scales, slice(n, None))
    if n:
        shared_rows = np.flatnonzero(np.asarray(triples)[order][:n, 2] >= cfg.k)
        fill_undefined(expand_scales, shared_rows)

    per_expert = counts.sum(axis=0)                                         # [L]
    expert_token_nums = (per_expert if expert_token_nums_type == 1 else np.cumsum(per_expert)).astype(np.int64)
    running = np.cumsum(counts.T.reshape(-1)).astype(np.int32)               # index j*W + r
    ep_recv_counts = np.empty(max(ep_recv_counts_size or 0, len(running)), np.int32)
    ep_recv_counts[:len(running)] = running
    fill_undefined(ep_recv_counts, slice(len(running), None))
    tp_recv_counts = np.full(cfg.tp_world_size, total, dtype=np.int32)

    if v1_expand_idx is not None:
        assist = np.asarray(v1_expand_idx, dtype=np.int32).copy()
        fill_undefined(assist, assist < 0)
    else:
        assist = np.empty(max(cfg.bs * cfg.k, a_rows * ASSIST_ROW_STRIDE), np.int32)
        assist[:total * TRIPLE_WIDTH] = np.asarray(triples, np.int32)[order].reshape(-1)
        fill_undefined(assist, slice(total * TRIPLE_WIDTH, None))
    return DispatchOutputs(expand_x, dynamic_scales, assist, expert_token_nums, ep_recv_counts,
                           tp_recv_counts, expand_scales)


# --------------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------------


@dataclass
class CombineSend:
    """One rank's combine send side: expert outputs grouped by the source rank they go back to."""
    splits: List[int]             # rows per destination rank
    payload: np.ndarray           # [rows, H] in expand_x's dtype
    token_k: np.ndarray           # int32 [rows, 2] (token, k) of each row (v2: from assist_info)


def combine_send(cfg: EpConfig, expand_x: np.ndarray, ep_send_counts: np.ndarray,
                 assist_info_for_combine: Optional[np.ndarray]) -> CombineSend:
    """Group this rank's expert rows by the rank that sent them.

    v2 (``assist_info_for_combine`` given): each row i goes to the rank in its triple
    ``assist[3i]`` with (token, k) = ``assist[3i+1 : 3i+3]`` (``ExpertAlltoAllDispatchInnerCopyAdd``).
    v1 (None): the row's source follows from the block layout in ``ep_send_counts``; (token, k) is
    resolved by the receiver from its own ``expand_idx``.
    """
    w = cfg.ep_world_size
    n_local = cfg.local_expert_num()
    cum = np.asarray(ep_send_counts, dtype=np.int64).reshape(-1)[:w * n_local]
    total = int(cum[-1]) if len(cum) else 0
    block_counts = np.diff(np.concatenate([[0], cum])).reshape(n_local, w)  # [j, r]
    if (block_counts < 0).any():
        raise ValueError("ep_send_counts must be a non-decreasing running count (pass dispatch's ep_recv_counts)")
    if total > len(expand_x):
        raise ValueError(f"ep_send_counts says {total} rows were received but expand_x has {len(expand_x)}")
    src_of_row = np.repeat(np.tile(np.arange(w), n_local), block_counts.reshape(-1))
    token_k = np.full((total, 2), -1, np.int32)
    if assist_info_for_combine is not None:
        tri = np.asarray(assist_info_for_combine, np.int64).reshape(-1)[:total * TRIPLE_WIDTH].reshape(total, 3)
        bad = (tri[:, 0] < 0) | (tri[:, 0] >= w)
        if bad.any():
            raise ValueError(f"assist_info_for_combine row {int(np.flatnonzero(bad)[0])} names rank "
                             f"{int(tri[bad][0, 0])}, outside [0, {w}); pass dispatch's assist_info_for_combine")
        src_of_row = tri[:, 0]
        token_k = tri[:, 1:].astype(np.int32)
    order = np.argsort(src_of_row, kind="stable")
    splits = np.bincount(src_of_row, minlength=w).astype(np.int64)
    return CombineSend([int(s) for s in splits], np.ascontiguousarray(np.asarray(expand_x)[:total][order]),
                       token_k[order])


def combine_expected_rows(cfg: EpConfig, expert_ids: np.ndarray, x_active_mask: Optional[np.ndarray],
                          slots_v1: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """What this rank gets back in combine: rows per source rank q ([W]), and for v1 the
    (token, k) of each arriving row in arrival order (rank-major, as ``combine_send`` orders them)."""
    w = cfg.ep_world_size
    ids = np.asarray(expert_ids).astype(np.int64)
    bs, k = ids.shape
    pairs, tokens = valid_pairs(bs, k, x_active_mask)
    flat_ids = ids.reshape(-1)[pairs]
    dest = cfg.owner(flat_ids)
    per_rank = np.bincount(dest, minlength=w).astype(np.int64)[:w]
    if cfg.shared_expert_num:
        per = cfg.ranks_per_shared_expert
        for s in range(cfg.shared_expert_num):
            per_rank[cfg.ep_rank_id % per + s * per] += len(tokens)
    if slots_v1 is None:
        return per_rank, None
    # v1: rows from routed rank q arrive as blocks of local experts, each in slot order; from a
    # shared rank in active-token order
    big_l = cfg.experts_per_rank
    slots = np.asarray(slots_v1, np.int64)[pairs]
    expert_total = np.bincount(flat_ids, minlength=cfg.moe_expert_num)
    token_k = []
    for q in range(w):
        if cfg.is_shared_rank(q):
            for s in range(cfg.shared_expert_num):
                if cfg.ep_rank_id % cfg.ranks_per_shared_expert + s * cfg.ranks_per_shared_expert == q:
                    token_k.append(np.stack([tokens, np.full(len(tokens), k + s)], axis=1))
            continue
        first = (q - cfg.shared_expert_rank_num) * big_l
        offs = np.concatenate([[0], np.cumsum(expert_total[first:first + big_l])])
        block = np.full((int(offs[-1]), 2), -1, np.int64)
        sel = dest == q
        pos = offs[flat_ids[sel] - first] + slots[sel]
        block[pos, 0] = pairs[sel] // k
        block[pos, 1] = pairs[sel] % k
        token_k.append(block)
    return per_rank, (np.concatenate(token_k).astype(np.int32) if token_k else np.zeros((0, 2), np.int32))


def combine_receive(cfg: EpConfig, rows: np.ndarray, token_k: np.ndarray, expert_ids: np.ndarray,
                    expert_scales: Optional[np.ndarray], *, x_active_mask: Optional[np.ndarray] = None,
                    shared_expert_x: Optional[np.ndarray] = None, out_dtype: Optional[str] = None) -> np.ndarray:
    """Reduce the returned rows into ``x [BS, H]`` in the kernel's order (see module doc)."""
    ids = np.asarray(expert_ids)
    bs, k = ids.shape
    rows = np.asarray(rows)
    h = rows.shape[1] if rows.ndim == 2 else (shared_expert_x.shape[1] if shared_expert_x is not None else 0)
    out_dtype = out_dtype or dtype_name(rows)
    stride = cfg.slot_stride
    slots = np.zeros((bs, stride, h), np.float32)
    have = np.zeros((bs, stride), bool)
    tk = np.asarray(token_k, np.int64)
    ok = (tk[:, 0] >= 0) & (tk[:, 0] < bs) & (tk[:, 1] >= 0) & (tk[:, 1] < stride)
    slots[tk[ok, 0], tk[ok, 1]] = rows[ok].astype(np.float32)
    have[tk[ok, 0], tk[ok, 1]] = True

    pairs, tokens = valid_pairs(bs, k, x_active_mask)
    pair_ok = np.zeros(bs * k, bool)
    pair_ok[pairs] = True
    pair_ok = pair_ok.reshape(bs, k)
    w = None if expert_scales is None else np.asarray(expert_scales, np.float32)
    acc = np.zeros((len(tokens), h), np.float32)
    for kk in range(k):
        use = pair_ok[tokens, kk]
        v = slots[tokens, kk]
        term = v * w[tokens, kk][:, None] if w is not None else v       # fp32 multiply
        acc = np.where(use[:, None], acc + term, acc)                   # then fp32 add
    for s in range(cfg.shared_expert_num):
        acc = acc + slots[tokens, k + s]
    if shared_expert_x is not None:
        acc = acc + np.asarray(shared_expert_x).astype(np.float32)[tokens]
    out = np.empty((bs, h), np_dtype(out_dtype))
    fill_undefined(out, slice(None))
    out[tokens] = acc.astype(np_dtype(out_dtype))
    return out


# --------------------------------------------------------------------------------------------
# all ranks in one process (no transport): the exchange is a loop over the per-rank functions
# --------------------------------------------------------------------------------------------


def dispatch_all_ranks(configs: List[EpConfig], xs: List[np.ndarray], expert_ids: List[np.ndarray], *,
                       scales: Optional[np.ndarray] = None, x_active_masks: Optional[List[Optional[np.ndarray]]] = None,
                       expert_scales: Optional[List[Optional[np.ndarray]]] = None, quant_mode: int = 0,
                       expert_token_nums_type: int = 1, v1: bool = False) -> Tuple[List[DispatchOutputs], List[DispatchSend]]:
    """Dispatch of every rank at once (``configs[r]`` is rank r's); returns each rank's outputs and
    its send side (whose ``slots`` a v1 combine needs)."""
    w = len(configs)
    masks = x_active_masks or [None] * w
    weights = expert_scales or [None] * w
    sends = [dispatch_send(configs[r], xs[r], expert_ids[r], scales=scales, x_active_mask=masks[r],
                           expert_scales=weights[r], quant_mode=quant_mode) for r in range(w)]
    outs = []
    for q in range(w):
        parts = []
        for r in range(w):
            off = sum(sends[r].splits[:q])
            parts.append(slice(off, off + sends[r].splits[q]))
        cat = (lambda field: np.concatenate([getattr(sends[r], field)[parts[r]] for r in range(w)]))
        out_dtype = "int8" if quant_mode == 2 else dtype_name(xs[q])
        outs.append(dispatch_receive(configs[q], np.stack([sends[r].counts[q] for r in range(w)]), cat("payload"),
                                     cat("row_scales"), cat("triples"), cat("weights"), h=xs[q].shape[1],
                                     out_dtype=out_dtype, expert_token_nums_type=expert_token_nums_type,
                                     v1_expand_idx=sends[q].slots if v1 else None, quantised=sends[q].quantised,
                                     weighted=sends[q].weighted))
    return outs, sends


def combine_all_ranks(configs: List[EpConfig], expert_outputs: List[np.ndarray], dispatched: List[DispatchOutputs],
                      expert_ids: List[np.ndarray], expert_scales: List[Optional[np.ndarray]], *,
                      x_active_masks: Optional[List[Optional[np.ndarray]]] = None,
                      shared_expert_x: Optional[List[Optional[np.ndarray]]] = None,
                      v1_sends: Optional[List[DispatchSend]] = None) -> List[np.ndarray]:
    """Combine of every rank at once: ``expert_outputs[q]`` replaces rank q's expand_x rows."""
    w = len(configs)
    masks = x_active_masks or [None] * w
    shared = shared_expert_x or [None] * w
    v1 = v1_sends is not None
    sends = [combine_send(configs[q], expert_outputs[q], dispatched[q].ep_recv_counts,
                          None if v1 else dispatched[q].assist_info_for_combine) for q in range(w)]
    outs = []
    for r in range(w):
        rows, token_k = [], []
        for q in range(w):
            off = sum(sends[q].splits[:r])
            rows.append(sends[q].payload[off:off + sends[q].splits[r]])
            token_k.append(sends[q].token_k[off:off + sends[q].splits[r]])
        tk = np.concatenate(token_k)
        if v1:
            _, tk = combine_expected_rows(configs[r], expert_ids[r], masks[r], v1_sends[r].slots)
        outs.append(combine_receive(configs[r], np.concatenate(rows), tk, expert_ids[r], expert_scales[r],
                                    x_active_mask=masks[r], shared_expert_x=shared[r]))
    return outs
