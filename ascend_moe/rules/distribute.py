"""Rules of the expert-parallel MC2 ops ``npu_moe_distribute_dispatch`` / ``_v2`` and
``npu_moe_distribute_combine`` / ``_v2`` on Atlas A2/A3 (spec moe-routing-and-ep.md 7.3, 7.6).

Severity policy (as for the other ops):

* op-plugin wrapper checks (``MoeDistributeDispatchV2KernelOpApi.cpp``, ``MoeDistributeCombine*OpApi.cpp``,
  ``TORCH_CHECK`` before any aclnn call) are errors with no aclnn status (torch raises RuntimeError);
* tiling checks (``moe_distribute_dispatch_v2_tiling.cpp``, ``moe_distribute_dispatch_tiling_helper.cpp``)
  are errors with status 561002 (ACLNN_ERR_INNER_TILING_ERROR);
* what only the docs state (per-product ranges of ep_world_size, H, BS, K, shared experts on A2)
  is a ``ConstraintWarning`` (an error under ``ASCEND_MOE_STRICT_DOCS=1``).

Rules spanning ranks (identical ``moe_expert_num`` etc. on every rank, ``ep_world_size`` equal to
the group size, distinct ``ep_rank_id``) cannot be checked from one rank's arguments; the
torch.distributed transport (:mod:`ascend_moe.distributed`) checks them in its pre-flight
exchange, with the rule ids listed in :data:`CROSS_RANK_RULES`.

The Ascend 950 kernels (arch35: quant modes 1/3/4, other scale layouts) are not modelled.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..products import A2_A3
from . import register_op

WRAPPER_DISPATCH = "op-plugin op_plugin/ops/opapi/MoeDistributeDispatchV2KernelOpApi.cpp"
WRAPPER_COMBINE = "op-plugin op_plugin/ops/opapi/MoeDistributeCombineKernelV2OpApi.cpp"
TILING = "ops-transformer mc2/moe_distribute_dispatch_v2/op_host/op_tiling/moe_distribute_dispatch_v2_tiling.cpp"
HELPER = "ops-transformer mc2/moe_distribute_dispatch_v2/op_host/op_tiling/moe_distribute_dispatch_tiling_helper.cpp"
DOCS = "aclnnMoeDistributeDispatchV2 / aclnnMoeDistributeCombineV2 docs 约束说明; torch_npu npu_moe_distribute_* docs"
NOT_950 = {"ascend-950": "the device has these ops, but ascend-moe does not model the Ascend 950 (arch35) kernels"}
TILING_STATUS = 561002
LOCAL_EXPERT_MAX = 2048

CROSS_RANK_RULES = {
    "ep.world_size_matches_group": "ep_world_size equals the size of the group named by group_ep",
    "ep.rank_matches_group": "ep_rank_id equals this process's rank in that group (so ids are distinct)",
    "ep.identical_arguments": "group_ep, ep_world_size, moe_expert_num, expert_shard_type, shared_expert_num, "
                              "shared_expert_rank_num, global_bs, tp_world_size, quant_mode, H and K are the "
                              "same on every rank [D: docs 约束说明; the kernels size windows from them]",
    "ep.global_bs_covers_ranks": "global_bs is 0 with equal BS on all ranks, or >= max(BS) * ep_world_size",
    "ep.rank_failed": "a rank failed before the exchange (its error is reported on every rank)",
}


DISPATCH_OPS = ("npu_moe_distribute_dispatch", "npu_moe_distribute_dispatch_v2")
COMBINE_OPS = ("npu_moe_distribute_combine", "npu_moe_distribute_combine_v2")
# the signatures are the ops' declarations (ascend_moe/ops/distribute.py)
SPECS = {name: register_op(name, products=A2_A3, source=f"{DOCS}; {WRAPPER_DISPATCH}; {TILING}",
                           product_notes=NOT_950)
         for name in DISPATCH_OPS + COMBINE_OPS}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _x_name(call) -> str:
    return "x" if call.op in DISPATCH_OPS else "expand_x"


def _bs_k(call):
    s = call.shape("expert_ids")
    return (s[0], s[1]) if s is not None and len(s) == 2 else (None, None)


def _h(call) -> Optional[int]:
    s = call.shape(_x_name(call))
    return s[1] if s is not None and len(s) == 2 else None


def _shared_ok(call) -> bool:
    return _is_int(call["shared_expert_rank_num"]) and _is_int(call["shared_expert_num"])


def _local_experts(call) -> Optional[int]:
    w, s, e = call["ep_world_size"], call["shared_expert_rank_num"], call["moe_expert_num"]
    if all(_is_int(v) for v in (w, s, e)) and w - s > 0 and e % (w - s) == 0:
        return e // (w - s)
    return None


# each op's rule ids carry its prefix ("dispatch_v2.x.rank"), as every other op's do
RULE_PREFIX = {
    "npu_moe_distribute_dispatch": "dispatch.",
    "npu_moe_distribute_dispatch_v2": "dispatch_v2.",
    "npu_moe_distribute_combine": "combine.",
    "npu_moe_distribute_combine_v2": "combine_v2.",
}


def _both(rule_id, argument, summary, ops=None, **kw):
    """Register one predicate on several of the four ops (``rule_id`` without the op prefix)."""
    def deco(fn):
        for name in ops or SPECS:
            SPECS[name].rule(RULE_PREFIX[name] + rule_id, argument=argument, summary=summary, **kw)(fn)
        return fn
    return deco


# ---------------------------------------------------------------- tensors --------------------------

@_both("x.rank", "x", "x / expand_x and expert_ids are 2-D", source=WRAPPER_DISPATCH + " TORCH_CHECK; " + HELPER,
       status=None, kind="wrapper", fix="pass x as [BS, H] and expert_ids as [BS, K]")
def _(call):
    out = []
    for name in (_x_name(call), "expert_ids"):
        m = call.meta(name)
        if m is None:
            out.append(f"{name} must be a tensor, got {type(call[name]).__name__}")
        elif m.ndim != 2:
            out.append(f"{name} must be 2-D, got shape {m.shape}")
    return out


@_both("x.dtype", "x", "x is bfloat16 or float16 (dispatch); expand_x bfloat16 or float16 (combine)",
       source=HELPER + " CheckInputTensorDataType; " + WRAPPER_COMBINE, status=TILING_STATUS,
       fix="cast to bfloat16 or float16")
def _(call):
    d = call.dtype(_x_name(call))
    if d is not None and d not in ("bfloat16", "float16"):
        return f"{_x_name(call)} dtype must be bfloat16 or float16, got {d}"


@_both("expert_ids.dtype", "expert_ids", "expert_ids is int32", source=HELPER + " CheckInputTensorDataType",
       status=TILING_STATUS, fix="pass expert_ids.to(torch.int32)")
def _(call):
    d = call.dtype("expert_ids")
    if d is not None and d != "int32":
        return f"expert_ids dtype must be int32, got {d}"


@_both("x.rows", "x", "x has one row per expert_ids row", ops=DISPATCH_OPS, source=TILING + " CheckInputTensorDim",
       status=TILING_STATUS, fix="pass expert_ids with x.shape[0] rows")
def _(call):
    xs, (bs, _) = call.shape("x"), _bs_k(call)
    if xs is not None and len(xs) == 2 and bs is not None and xs[0] != bs:
        return f"x has {xs[0]} rows but expert_ids has {bs}"


@_both("expert_ids.range", "expert_ids", "expert ids lie in [0, moe_expert_num)", status=None,
       source="kernel SendToMoeExpert (an id outside the range addresses a rank that does not exist); docs",
       fix="pass expert ids in [0, moe_expert_num)")
def _(call):
    v, e = call.values("expert_ids"), call["moe_expert_num"]
    if v is not None and v.size and _is_int(e) and (v.min() < 0 or v.max() >= e):
        return f"expert_ids must lie in [0, moe_expert_num={e}), got values in [{int(v.min())}, {int(v.max())}]"


@_both("expert_ids.distinct_per_row", "expert_ids", "the K expert ids of a token are distinct", status=None,
       severity="warning", source="docs (同一行中的K个value不能重复); kernel CalTokenSendExpertCnt gives duplicate ids "
       "of token 0 the same window slot [D]", fix="deduplicate each token's top-k ids")
def _(call):
    v = call.values("expert_ids")
    if v is not None and v.ndim == 2 and v.size:
        s = np.sort(v, axis=1)
        dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if len(dup):
            return f"token {int(dup[0])} repeats an expert id ({v[dup[0]].tolist()})"


@_both("x_active_mask.shape", "x_active_mask", "x_active_mask is bool [BS] or [BS, K]", ops=DISPATCH_OPS[1:] + COMBINE_OPS[1:],
       source=TILING + " CheckTensorDim", status=TILING_STATUS, fix="pass a bool mask of shape [BS] or [BS, K]")
def _(call):
    if not call.given("x_active_mask"):
        return None
    m, (bs, k) = call.meta("x_active_mask"), _bs_k(call)
    if m is None:
        return f"x_active_mask must be a tensor, got {type(call['x_active_mask']).__name__}"
    out = []
    if m.dtype != "bool":
        out.append(f"x_active_mask dtype must be bool, got {m.dtype}")
    if m.ndim not in (1, 2) or (bs is not None and m.shape[0] != bs) or (m.ndim == 2 and k is not None and m.shape[1] != k):
        out.append(f"x_active_mask must have shape [BS={bs}] or [BS={bs}, K={k}], got {m.shape}")
    return out


@_both("x_active_mask.prefix", "x_active_mask", "a 1-D x_active_mask has its true entries first", status=None,
       ops=DISPATCH_OPS[1:] + COMBINE_OPS[1:], severity="warning",
       source="docs (true 需排在 false 之前); the kernel only counts the trues (TokenActiveMaskCal) [D]",
       fix="order tokens so that the active ones come first")
def _(call):
    v = call.values("x_active_mask") if call.given("x_active_mask") else None
    if v is not None and v.ndim == 1 and v.size:
        v = v.astype(bool)
        n = int(v.sum())
        if not v[:n].all():
            return f"x_active_mask has {n} true entries but they are not the first {n}"


@_both("x_active_mask.v1", "x_active_mask", "the v1 dispatch rejects x_active_mask on A3",
       ops=("npu_moe_distribute_dispatch",), products=("atlas-a3",), status=TILING_STATUS,
       source=HELPER + " CheckTensorDim (opVersion 1: only None is supported)", fix="use npu_moe_distribute_dispatch_v2")
def _(call):
    if call.given("x_active_mask"):
        return "x_active_mask must be None for npu_moe_distribute_dispatch (v1) on atlas-a3"


@_both("scales.shape", "scales", "scales is fp32 [shared_expert_num + moe_expert_num, H], only with quant_mode 2",
       ops=DISPATCH_OPS, status=TILING_STATUS, source=TILING + " CheckQuantModeAndScales; " + HELPER +
       " CheckInputTensorDim; kernel SendToMoeExpert reads row expert + shared_expert_num",
       fix="pass scales=None with quant_mode=0, or fp32 smooth scales [shared + moe experts, H] with quant_mode=2")
def _(call):
    if not call.given("scales"):
        return None
    m = call.meta("scales")
    if m is None:
        return f"scales must be a tensor, got {type(call['scales']).__name__}"
    if call["quant_mode"] == 0:
        return "scales must be None when quant_mode is 0 (bf16/fp16 x)"
    out = []
    if m.dtype != "float32":
        out.append(f"scales dtype must be float32, got {m.dtype}")
    shared = call["shared_expert_num"] if call["shared_expert_rank_num"] else 0
    h, e = _h(call), call["moe_expert_num"]
    if _is_int(e) and _is_int(shared) and (m.ndim != 2 or m.shape[0] != shared + e or (h is not None and m.shape[1] != h)):
        out.append(f"scales must have shape [shared_expert_num + moe_expert_num = {shared + e}, H = {h}], got {m.shape}")
    return out


@_both("expert_scales.shape", "expert_scales", "expert_scales is fp32 [BS, K]", status=TILING_STATUS,
       source=TILING + " CheckTensorDim; combine docs", fix="pass topk weights as float32 [BS, K]")
def _(call):
    if not call.given("expert_scales"):
        return None
    m, (bs, k) = call.meta("expert_scales"), _bs_k(call)
    if m is None:
        return f"expert_scales must be a tensor, got {type(call['expert_scales']).__name__}"
    out = []
    if m.dtype != "float32":
        out.append(f"expert_scales dtype must be float32, got {m.dtype}")
    if bs is not None and tuple(m.shape) != (bs, k):
        out.append(f"expert_scales must have shape [BS={bs}, K={k}], got {m.shape}")
    return out


@_both("shared_expert_x.shape", "shared_expert_x", "shared_expert_x is [BS, H] with expand_x's dtype",
       ops=COMBINE_OPS, kind="kernel", status=None,
       source="combine V2 docs; the kernel adds shared_expert_x[t] for every token t (no host check of its shape "
       "was read, so no aclnn status is claimed)",
       fix="pass the shared expert output as [BS, H]")
def _(call):
    if not call.given("shared_expert_x"):
        return None
    m, (bs, _), h = call.meta("shared_expert_x"), _bs_k(call), _h(call)
    if m is not None and (m.ndim != 2 or (bs is not None and m.shape[0] != bs) or (h is not None and m.shape[1] != h)):
        return f"shared_expert_x must have shape [BS={bs}, H={h}], got {m.shape}"


# ---------------------------------------------------------------- attributes -----------------------

@_both("ep_world_size.min", "ep_world_size", "ep_world_size >= 2", status=None,
       source="docs (A2 >= 2, A3 [2, 768]); with one rank there is nothing to exchange", fix="run expert parallelism on at least 2 ranks")
def _(call):
    w = call["ep_world_size"]
    if not _is_int(w) or w < 2:
        return f"ep_world_size must be an int >= 2, got {w!r}"


@_both("ep_rank_id.range", "ep_rank_id", "0 <= ep_rank_id < ep_world_size", source=WRAPPER_DISPATCH + " TORCH_CHECK",
       status=None, kind="wrapper", fix="pass this rank's index in the EP group")
def _(call):
    r, w = call["ep_rank_id"], call["ep_world_size"]
    if not _is_int(r) or (_is_int(w) and not 0 <= r < w):
        return f"ep_rank_id must be in [0, ep_world_size={w}), got {r!r}"


@_both("shared_expert_rank_num.range", "shared_expert_rank_num", "0 <= shared_expert_rank_num < ep_world_size",
       source=WRAPPER_DISPATCH + " TORCH_CHECK", status=None, kind="wrapper", fix="keep at least one MoE expert rank")
def _(call):
    s, w = call["shared_expert_rank_num"], call["ep_world_size"]
    if not _is_int(s) or (_is_int(w) and not 0 <= s < w):
        return f"shared_expert_rank_num must be in [0, ep_world_size={w}), got {s!r}"


@_both("shared_expert_num.config", "shared_expert_num",
       "shared experts: (num, ranks) = (1, 0) or (0, 0), else num > 0 and ranks % num == 0",
       source=WRAPPER_DISPATCH + " TORCH_CHECK; " + TILING, status=None, kind="wrapper",
       fix="pass shared_expert_rank_num a multiple of shared_expert_num (each shared expert on the same number of ranks)")
def _(call):
    n, s = call["shared_expert_num"], call["shared_expert_rank_num"]
    if not _shared_ok(call):
        return f"shared_expert_num and shared_expert_rank_num must be ints, got {n!r}, {s!r}"
    if s == 0 and n not in (0, 1):
        return f"with shared_expert_rank_num=0, shared_expert_num must be 0 or 1, got {n}"
    if s > 0 and (n <= 0 or s % n):
        return f"shared_expert_rank_num={s} must be a positive multiple of shared_expert_num={n}"


@_both("shared_expert_num.max", "shared_expert_num", "shared_expert_num <= 4", products=("atlas-a3",),
       severity="warning", status=None, source="aclnnMoeDistributeDispatchV2 doc (取值范围[0, 4]) [D]",
       fix="use at most 4 shared experts")
def _(call):
    n = call["shared_expert_num"]
    if _is_int(n) and n > 4 and call["shared_expert_rank_num"]:
        return f"shared_expert_num must be <= 4, got {n}"


@_both("shared_expert.a2", "shared_expert_rank_num", "Atlas A2 does not support shared expert ranks",
       products=("atlas-a2",), severity="warning", status=None,
       source="npu_moe_distribute_* docs (A2: 不支持共享专家场景) [D]", fix="pass shared_expert_rank_num=0 on atlas-a2")
def _(call):
    if _is_int(call["shared_expert_rank_num"]) and call["shared_expert_rank_num"] > 0:
        return f"shared_expert_rank_num must be 0 on atlas-a2, got {call['shared_expert_rank_num']}"


@_both("ep_world_size.shared_divisible", "shared_expert_rank_num",
       "ep_world_size % shared_expert_rank_num == 0 when shared ranks exist", status=TILING_STATUS,
       source="ops-transformer mc2/moe_distribute_dispatch/op_host/op_tiling/moe_distribute_dispatch_tiling.cpp "
       "CheckExpertAttrs (\"epWorldSize should be divisible by sharedExpertRankNum\"; the combine tiling's "
       "CheckExpertAttrs has the same test; V2: CheckAttrs -> CheckSharedAttrs); torch_npu combine doc",
       fix="choose shared_expert_rank_num dividing ep_world_size")
def _(call):
    w, s = call["ep_world_size"], call["shared_expert_rank_num"]
    if _is_int(w) and _is_int(s) and 0 < s < w and w % s:
        return f"ep_world_size={w} must be divisible by shared_expert_rank_num={s}"


@_both("moe_expert_num.divisible", "moe_expert_num", "moe_expert_num % (ep_world_size - shared_expert_rank_num) == 0",
       status=TILING_STATUS, source=TILING + " CheckAttrs (\"moeExpertNum should be divisible by (epWorldSize - "
       "sharedExpertRankNum)\"; the combine V2 tiling's CheckAttrs has the same test)", fix="choose an expert count the MoE ranks divide evenly")
def _(call):
    w, s, e = call["ep_world_size"], call["shared_expert_rank_num"], call["moe_expert_num"]
    if not _is_int(e) or e <= 0:
        return f"moe_expert_num must be an int > 0, got {e!r}"
    if _is_int(w) and _is_int(s) and w - s > 0 and e % (w - s):
        return (f"moe_expert_num={e} must be divisible by the {w - s} MoE ranks (ep_world_size={w} - "
                f"shared_expert_rank_num={s})")


@_both("moe_expert_num.max", "moe_expert_num", "moe_expert_num <= 1024 (A2 fullmesh/A3), <= 512 (A2 hierarchy)",
       severity="warning", status=None, source="aclnnMoeDistributeDispatchV2 doc [D]", fix="use at most 1024 experts")
def _(call):
    e = call["moe_expert_num"]
    limit = 512 if call.get("comm_alg") == "hierarchy" else 1024
    if _is_int(e) and e > limit:
        return f"moe_expert_num must be <= {limit}, got {e}"


@_both("local_experts.max", "moe_expert_num", "local experts per rank * ep_world_size <= 2048", status=TILING_STATUS,
       source=TILING + " CheckAttrs (localMoeExpertNum * epWorldSize > LOCAL_EXPERT_MAX_SIZE); A3 doc local_E*W <= 2048",
       fix="use more ranks or fewer experts")
def _(call):
    big_l, w = _local_experts(call), call["ep_world_size"]
    if big_l is not None and big_l * w > LOCAL_EXPERT_MAX:
        return f"moe_expert_num/(W-S) * ep_world_size = {big_l}*{w} = {big_l * w} must be <= {LOCAL_EXPERT_MAX}"


@_both("ep_world_size.product", "ep_world_size", "ep_world_size in the product's documented set", severity="warning",
       status=None, source="aclnnMoeDistributeDispatchV2 doc 约束说明 [D]",
       fix="A2 fullmesh: 2-8, 16, 32, 64, 128, 192, 256, 384 (hierarchy 16, 32, 64); A3: 2-768")
def _(call):
    w = call["ep_world_size"]
    if not _is_int(w):
        return None
    if call.product == "atlas-a2":
        allowed = {16, 32, 64} if call.get("comm_alg") == "hierarchy" else set(range(2, 9)) | {16, 32, 64, 128, 192, 256, 384}
        if w not in allowed:
            return f"ep_world_size={w} is outside atlas-a2's documented set {sorted(allowed)}"
    elif not 2 <= w <= 768:
        return f"ep_world_size={w} is outside atlas-a3's documented range [2, 768]"


@_both("k.range", "expert_ids", "0 < K <= 16 and K <= moe_expert_num", status=None,
       source="docs (0 < K <= 16, K <= moe_expert_num); device check not located", fix="route each token to 1..16 experts")
def _(call):
    _, k = _bs_k(call)
    e = call["moe_expert_num"]
    if k is not None and (k < 1 or k > 16 or (_is_int(e) and k > e)):
        return f"K = expert_ids.shape[1] must be in [1, min(16, moe_expert_num={e})], got {k}"


@_both("bs.range", "expert_ids", "BS in (0, 256] (A2 fullmesh) / (0, 512] (A3, A2 hierarchy)", severity="warning",
       status=None, source="aclnnMoeDistributeDispatchV2 doc [D]", fix="split the batch")
def _(call):
    bs, _ = _bs_k(call)
    limit = 256 if call.product == "atlas-a2" and call.get("comm_alg") != "hierarchy" else 512
    if bs is not None and not 0 < bs <= limit:
        return f"BS = {bs} must be in (0, {limit}] on {call.product}"


@_both("h.range", "x", "H: A2 (0, 10240] multiple of 32; A3 [1024, 8192]", severity="warning", status=None,
       source="aclnnMoeDistributeDispatchV2 doc [D]", fix="use a supported hidden size")
def _(call):
    h = _h(call)
    if h is None:
        return None
    if call.product == "atlas-a2" and not (0 < h <= 10240 and h % 32 == 0):
        return f"H = {h} must be in (0, 10240] and a multiple of 32 on atlas-a2"
    if call.product == "atlas-a3" and not 1024 <= h <= 8192:
        return f"H = {h} must be in [1024, 8192] on atlas-a3"


@_both("quant_mode.range", "quant_mode", "quant_mode 0 (none) or 2 (dynamic int8) on A2/A3", ops=DISPATCH_OPS,
       status=None, source="docs (A2/A3: 0, 2); the A2/A3 kernels instantiate only these", fix="pass quant_mode 0 or 2")
def _(call):
    q = call["quant_mode"]
    if q not in (0, 2) or isinstance(q, bool):
        return f"quant_mode must be 0 or 2 on {call.product}, got {q!r} (1, 3, 4 exist only on Ascend 950)"


@_both("expert_token_nums_type.range", "expert_token_nums_type", "expert_token_nums_type 0 (cumsum) or 1 (count)",
       ops=DISPATCH_OPS, source=WRAPPER_DISPATCH + " TORCH_CHECK", status=None, kind="wrapper", fix="pass 0 or 1")
def _(call):
    t = call["expert_token_nums_type"]
    if t not in (0, 1) or isinstance(t, bool):
        return f"expert_token_nums_type must be 0 or 1, got {t!r}"


@_both("expert_shard_type.zero", "expert_shard_type", "expert_shard_type 0 (shared ranks first)", status=None,
       source="docs (当前仅支持0); the kernels place shared ranks first", fix="pass expert_shard_type=0")
def _(call):
    if call["expert_shard_type"] != 0:
        return f"expert_shard_type must be 0, got {call['expert_shard_type']!r}"


@_both("tp_world_size.range", "tp_world_size", "tp_world_size in {0, 1} (2 only on A3 v1/v2 with one local expert)",
       status=None, source="docs (A2: no TP; A3: 0-2)", fix="pass tp_world_size 0 or 1")
def _(call):
    t = call["tp_world_size"]
    allowed = (0, 1, 2) if call.product == "atlas-a3" else (0, 1)
    if t not in allowed or isinstance(t, bool):
        return f"tp_world_size must be one of {allowed} on {call.product}, got {t!r}"


@_both("global_bs.range", "global_bs", "global_bs is 0 or a multiple of ep_world_size at least BS * ep_world_size",
       status=None, source="docs (globalBS = BS*W or 0, maxBS*W for unequal BS); smaller values overrun the "
       "kernel windows sized from global_bs/W",
       fix="pass 0 (equal BS on all ranks) or max(BS) * ep_world_size")
def _(call):
    g, w = call["global_bs"], call["ep_world_size"]
    bs, _ = _bs_k(call)
    if not _is_int(g) or g < 0:
        return f"global_bs must be an int >= 0, got {g!r}"
    if g and _is_int(w) and w > 0 and (g % w or (bs is not None and g < bs * w)):
        return f"global_bs={g} must be a multiple of ep_world_size={w} and >= BS*ep_world_size={bs}*{w}"


@_both("v3_only_args", "zero_expert_num", "elastic_info / zero/copy/const experts need aclnn V3, performance_info V4",
       ops=("npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine_v2"), status=None, kind="wrapper",
       source=WRAPPER_DISPATCH + " (V2 fallback rejects them); not simulated here",
       fix="pass elastic_info=None, performance_info=None and zero/copy/const_expert_num=0")
def _(call):
    out = [f"{n} is not supported by the simulated dispatch/combine (got a tensor)" for n in
           ("elastic_info", "performance_info", "ori_x", "const_expert_alpha_1", "const_expert_alpha_2", "const_expert_v")
           if n in call.args and call.given(n)]
    out += [f"{n} must be 0, got {call[n]!r}" for n in ("zero_expert_num", "copy_expert_num", "const_expert_num")
            if n in call.args and call[n] != 0]
    return out


@_both("comm_quant_mode.range", "comm_quant_mode", "comm_quant_mode 0 (int8 mode 2 not simulated)", ops=COMBINE_OPS,
       status=None, severity="not-simulated",
       source="combine docs (0, 2); the int8 communication quantisation is not modelled by ascend-moe",
       fix="pass comm_quant_mode=0")
def _(call):
    if call["comm_quant_mode"] != 0:
        return (f"comm_quant_mode={call['comm_quant_mode']!r}: only 0 is simulated (2, int8 communication, exists on "
                "the device but is not modelled)")


@_both("comm_alg.a3", "comm_alg", "comm_alg is \"\" on A3; \"\", fullmesh or hierarchy on A2",
       ops=("npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine_v2"), status=TILING_STATUS,
       source=TILING + " CheckCommAlgAttrs; docs", fix="pass comm_alg=\"\"")
def _(call):
    a = call["comm_alg"]
    allowed = ("", "fullmesh", "hierarchy") if call.product == "atlas-a2" else ("",)
    if a not in allowed:
        return f"comm_alg must be one of {allowed} on {call.product}, got {a!r}"


@_both("group_ep.name", "group_ep", "group_ep is a communicator name of 1..127 characters, different from group_tp",
       status=None, source="docs (字符串长度范围为[1, 128), 不能和group_tp相同)",
       fix="pass the name from get_hccl_comm_name of the EP group")
def _(call):
    g, t = call["group_ep"], call["group_tp"]
    if not isinstance(g, str) or not 1 <= len(g) < 128:
        return f"group_ep must be a string of 1..127 characters, got {g!r}"
    if t and t == g:
        return f"group_tp must differ from group_ep, both are {g!r}"


@_both("x_active_mask.a2_2d", "x_active_mask", "Atlas A2: x_active_mask 1-D only (fullmesh), none with hierarchy",
       ops=DISPATCH_OPS[1:] + COMBINE_OPS[1:], products=("atlas-a2",), severity="warning", status=None,
       source="aclnnMoeDistributeDispatchV2 doc 约束说明 (A2) [D]", fix="pass a 1-D [BS] mask on atlas-a2")
def _(call):
    if not call.given("x_active_mask"):
        return None
    m = call.meta("x_active_mask")
    if m is not None and (m.ndim == 2 or call.get("comm_alg") == "hierarchy"):
        return (f"x_active_mask of shape {m.shape} is not documented on atlas-a2 "
                f"({'no mask with hierarchy' if call.get('comm_alg') == 'hierarchy' else '1-D only'})")
