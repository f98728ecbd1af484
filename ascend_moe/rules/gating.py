"""Rules of ``npu_moe_gating_top_k`` by product and CANN version (spec gating-and-ffn.md A.7).

Generations:

* CANN < 8.3.RC1 (torch_npu 7.0.0 / 7.1.0 docs, seed 001): only the DeepSeek-V3 configuration -
  256 experts, 1 <= k <= 32, k_group 4, group_count 8, bias required, sigmoid (norm_type 1), renorm 0,
  out_flag False.  The docs state these; vllm-ascend's note "support all size of group_count ...
  depends on 8.3.RC1" says the CANN of that time rejected the rest, so they are errors here [inferred].
* CANN >= 8.3.RC1: the ops-transformer tiling (``CheckInputShape`` / ``CheckAttr`` / ``CheckOutShape``):
  E <= 2048, 1 <= k <= E, 1 <= k_group <= group_count, E % group_count == 0, group size >= 2 for
  group_select_mode 1, k <= k_group * E/group_count, group_count * align32(E/group_count) <= 2048 when
  grouped; renorm must be 0 until tag v9.0.0 (OT 49a816e70 / 80c79c6c7); norm_type 2 (sqrt softplus)
  on Ascend 950 and hash mode (input_ids / tid2eid, aclnnMoeGatingTopKV2) from 9.1.0 (OT 7fc0a9eff /
  58116f817, 9b90f2ddf / 01944da5b: neither is in tags v9.0.0 or v9.0.1).

Rule ids carry the op prefix ``gating.``.
"""
from __future__ import annotations

import numpy as np

from ..ops.gating import DECL as _DECL
from ..products import A2_A3
from ..sim import gating as _sim
from . import register_op

OP = "npu_moe_gating_top_k"
PRODUCTS = A2_A3 | {"ascend-950"}
LEGACY_UNTIL = "8.3.RC1"
V2026 = "9.0.0"       # renorm=1: tiling 80c79c6c7 (2026-02-03) is after tag v8.5.0 (2026-01-22), in v9.0.0
# hash mode (aclnnMoeGatingTopKV2, 2026-07) and the 950's softplus norm (58116f817, 2026-06) are in neither
# v9.0.0 nor v9.0.1 (tagged 2026-06-23); they first ship with the release after it, 9.1.0 (tag v9.1.0.pre)
# the first release of aclnnMoeGatingTopKV2 (hash mode), from the op declaration's entry table
V_HASH = _DECL.entries("gating_hash")[0].since
V_SOFTPLUS = "9.1.0"

TILING = "ops-transformer moe/moe_gating_top_k/op_host/moe_gating_top_k_tiling.cpp"
LEGACY_DOC = ("torch_npu 7.0.0 doc torch_npu.npu_moe_gating_top_k (hiascend Pytorch/700 ptaoplist_002365), "
              "op-plugin 7.1.0 docs/context/torch_npu-npu_moe_gating_top_k.md (seed 001)")
WRAPPER = "op-plugin op_plugin/ops/opapi/MoeGatingTopKKernelNpuOpApi.cpp"

spec = register_op(OP, products=PRODUCTS,
                   source="aclnnMoeGatingTopK docs (A2/A3, Ascend 950); torch_npu docs list A2/A3")


def _semantics(cann):
    from ..ops.gating import semantics  # the declaration decides the target-dependent switches
    return semantics(cann)


def _xshape(call):
    s = call.shape("x")
    return s if s is not None and len(s) == 2 else None


def _experts(call):
    s = _xshape(call)
    return s[1] if s else None


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _grouped(call) -> bool:
    e, g, kg = _experts(call), call["group_count"], call["k_group"]
    return g != 1 and g != e and kg != g


def _hash(call) -> bool:
    return call.given("input_ids") or call.given("tid2eid")


# ---------------------------------------------------------------- tensors ----------------------

@spec.rule("gating.x.rank", argument="x", summary="x is a 2-D tensor [rows, experts]", source=TILING + " CheckInputShape; " + WRAPPER,
           fix="pass the router logits as a 2-D [tokens, experts] tensor")
def _(call):
    m = call.meta("x")
    if m is None:
        return f"x must be a tensor, got {type(call['x']).__name__}"
    if m.ndim != 2:
        return f"x must be 2-D [rows, experts], got shape {m.shape} ({m.ndim}-D)"


@spec.rule("gating.x.dtype", argument="x", summary="x dtype float16, bfloat16 or float32",
           source="aclnn_moe_gating_top_k.cpp CheckDtypeValid; " + WRAPPER, fix="cast x to float16, bfloat16 or float32")
def _(call):
    d = call.dtype("x")
    if d is not None and d not in ("float16", "bfloat16", "float32"):
        return f"x dtype must be float16, bfloat16 or float32, got {d}"


@spec.rule("gating.x.nonempty", argument="x", summary="x has at least one row and one expert (no empty tensors)",
           source="ascend-moe scope: empty tensors are not simulated (the aclnnMoeGatingTopK doc says they are "
                  "not supported; no host check of them is public)",
           fix="skip the call when there are no tokens", severity="not-simulated")
def _(call):
    s = _xshape(call)
    if s and (s[0] == 0 or s[1] == 0):
        return f"x has shape {s}: empty tensors are not simulated"


@spec.rule("gating.bias.shape", argument="bias", summary="bias is 1-D [experts]", source=TILING + " CheckInputShape; " + WRAPPER,
           fix="pass bias as a 1-D tensor with one entry per expert (x.shape[1])")
def _(call):
    if not call.given("bias"):
        return None
    m = call.meta("bias")
    if m is None:
        return f"bias must be a tensor, got {type(call['bias']).__name__}"
    e = _experts(call)
    if m.ndim != 1 or (e is not None and m.shape[0] != e):
        return f"bias must be 1-D of length experts={e}, got shape {m.shape}"


@spec.rule("gating.bias.dtype", argument="bias", summary="bias has x's dtype",
           source=TILING + " GetShapeAttrsInfo; aclnn CheckDtypeValid; " + WRAPPER, fix="cast bias to x's dtype")
def _(call):
    if call.given("bias") and call.dtype("bias") is not None and call.dtype("bias") != call.dtype("x"):
        return f"bias dtype must equal x dtype {call.dtype('x')}, got {call.dtype('bias')}"


# ---------------------------------------------------------------- attributes (current tiling) ---

@spec.rule("gating.k.range", argument="k", summary="1 <= k <= experts", source=TILING + " CheckAttr/CheckInputShape",
           fix="pass 1 <= k <= x.shape[1]")
def _(call):
    k, e = call["k"], _experts(call)
    if not _is_int(k):
        return f"k must be an int, got {k!r}"
    if k < 1:
        return f"k must be >= 1, got k={k}"
    if e is not None and k > e:
        return f"k must be <= the number of experts {e}, got k={k}"


@spec.rule("gating.experts.max", argument="x", summary="experts (x.shape[1]) <= 2048", source=TILING + " CheckAttr MAX_EXPERT_COUNT",
           fix="use at most 2048 experts")
def _(call):
    e = _experts(call)
    if e is not None and e > 2048:
        return f"x.shape[1] (experts) must be <= 2048, got {e}"


@spec.rule("gating.group_count.range", argument="group_count", summary="group_count >= 1 and divides experts",
           source=TILING + " CheckAttr", fix="choose a group_count that divides the number of experts")
def _(call):
    g, e = call["group_count"], _experts(call)
    if not _is_int(g) or g < 1:
        return f"group_count must be an int >= 1, got group_count={g!r}"
    if e is not None and e % g:
        return f"experts={e} must be divisible by group_count={g}"


@spec.rule("gating.k_group.range", argument="k_group", summary="1 <= k_group <= group_count", source=TILING + " CheckAttr",
           fix="pass 1 <= k_group <= group_count")
def _(call):
    kg, g = call["k_group"], call["group_count"]
    if not _is_int(kg) or kg < 1:
        return f"k_group must be an int >= 1, got k_group={kg!r}"
    if _is_int(g) and kg > g:
        return f"k_group must be <= group_count={g}, got k_group={kg}"


@spec.rule("gating.group_select_mode.range", argument="group_select_mode", summary="group_select_mode in {0 (max), 1 (top-2 sum)}",
           source=TILING + " CheckAttr", fix="pass 0 (group max) or 1 (sum of the group's top 2)")
def _(call):
    v = call["group_select_mode"]
    if v not in (0, 1) or isinstance(v, bool):
        return f"group_select_mode must be 0 or 1, got {v!r}"


@spec.rule("gating.renorm.range", argument="renorm", summary="renorm in {0, 1}", source=TILING + " CheckAttr",
           fix="pass renorm 0 or 1")
def _(call):
    v = call["renorm"]
    if v not in (0, 1) or isinstance(v, bool):
        return f"renorm must be 0 or 1, got {v!r}"


@spec.rule("gating.renorm.zero_before_2026", argument="renorm", summary="renorm must be 0 before the 2026 kernels",
           until=V2026, source=TILING + " CheckAttr at init b122ed222 (renorm only 0); renorm=1 with softmax arrived with "
           "OT 49a816e70 (2026-01-19, kernel) and 80c79c6c7 (2026-02-03, tiling), first in tag v9.0.0",
           fix="pass renorm=0 and renormalise softmax weights yourself, or target CANN >= 9.0.0")
def _(call):
    if call["renorm"] == 1:
        return f"renorm must be 0 on CANN < {V2026} (renorm=1 softmax renormalisation is newer), got renorm=1"


@spec.rule("gating.norm_type.range", argument="norm_type",
           summary="norm_type in {0 softmax, 1 sigmoid}; 2 (sqrt softplus) only on Ascend 950 from CANN 9.1.0",
           source=TILING + " CheckAttr (A2/A3: 0 or 1); moe_gating_top_k_tiling_arch35.cpp CheckAttr (950: 0, 1, 2) "
           "since OT 7fc0a9eff/58116f817 (2026-04/06): absent from tags v9.0.0 and v9.0.1, first in v9.1.0",
           fix="pass norm_type 0 (softmax) or 1 (sigmoid)")
def _(call):
    v = call["norm_type"]
    allowed = (0, 1, 2) if call.product == "ascend-950" and not call.cann < V_SOFTPLUS else (0, 1)
    if v not in allowed or isinstance(v, bool):
        extra = f"; 2 (sqrt softplus) needs Ascend 950 with CANN >= {V_SOFTPLUS}" if v == 2 else ""
        return f"norm_type must be one of {allowed} on {call.product} CANN {call.cann}, got {v!r}{extra}"


@spec.rule("gating.group_size.min", argument="group_count", summary="experts/group_count >= 2 when group_select_mode is 1",
           source=TILING + " CheckAttr (group expert count should be greater than 1)",
           fix="use fewer groups (at least 2 experts per group) or group_select_mode=0")
def _(call):
    e, g = _experts(call), call["group_count"]
    if e and _is_int(g) and g >= 1 and e % g == 0 and call["group_select_mode"] == 1 and e // g < 2:
        return f"group_select_mode=1 sums each group's top 2, so experts/group_count must be >= 2, got {e}/{g}={e // g}"


@spec.rule("gating.k.per_group_bound", argument="k", summary="k <= k_group * experts/group_count",
           source=TILING + " CheckAttr", fix="raise k_group or lower k")
def _(call):
    e, g, kg, k = _experts(call), call["group_count"], call["k_group"], call["k"]
    if e and _is_int(g) and g >= 1 and e % g == 0 and _is_int(kg) and _is_int(k) and k > kg * (e // g):
        return f"k must be <= k_group*experts/group_count = {kg}*{e // g} = {kg * (e // g)}, got k={k}"


@spec.rule("gating.group.align32_bound", argument="group_count",
           summary="grouped mode: group_count * align32(experts/group_count) <= 2048",
           source=TILING + " CheckAttr (checked only when group_count not in {1, experts} and k_group != group_count)",
           fix="use fewer groups or fewer experts per group so that group_count*ceil32(experts/group_count) <= 2048")
def _(call):
    e, g = _experts(call), call["group_count"]
    if e and _is_int(g) and g >= 1 and e % g == 0 and _grouped(call):
        a = -(-(e // g) // 32) * 32
        if g * a > 2048:
            return f"group_count*align32(experts/group_count) = {g}*{a} = {g * a} must be <= 2048 (experts={e})"


# ---------------------------------------------------------------- doc-only (warnings) ----------

@spec.rule("gating.docs.group_size_min", argument="group_count",
           summary="docs: experts/group_count > group_select_mode-dependent minimum (mode 0: > 0, mode 1: > 1)",
           since=LEGACY_UNTIL, severity="warning",
           source="aclnnMoeGatingTopK doc and moe_gating_top_k_tiling.cpp CheckAttr (group expert count > 1 for "
                  "group_select_mode 1); the older '> 2' sentence is not what the tiling enforces",
           fix="use more experts per group")
def _(call):
    e, g, mode = _experts(call), call["group_count"], call["group_select_mode"]
    if e and _is_int(g) and g >= 1 and e % g == 0 and mode in (0, 1) and e // g <= mode:
        return (f"experts/group_count = {e}/{g} = {e // g}; the docs ask for more than {mode} expert(s) per group "
                f"with group_select_mode={mode}")


@spec.rule("gating.docs.align32_bound_always", argument="group_count",
           summary="docs: group_count * align32(experts/group_count) <= 2048 in every mode", since=LEGACY_UNTIL,
           severity="warning", status=None, source="aclnnMoeGatingTopK / torch_npu docs (unconditional); tiling checks it only "
           "in grouped mode [D]", fix="use fewer groups")
def _(call):
    e, g = _experts(call), call["group_count"]
    if e and _is_int(g) and g >= 1 and e % g == 0 and not _grouped(call):
        a = -(-(e // g) // 32) * 32
        if g * a > 2048:
            return f"the docs require group_count*align32(experts/group_count) <= 2048, got {g}*{a}={g * a}"


@spec.rule("gating.op.since", argument="(op)", summary="npu_moe_gating_top_k first documented with torch_npu 7.0.0 (CANN 8.1.RC1)",
           until="8.1.RC1", severity="warning", status=None,
           source="op-plugin op_plugin_functions.yaml: absent on branch 6.0.0, present from 7.0.0 [D for CANN]",
           fix="target CANN >= 8.1.RC1")
def _(call):
    return f"npu_moe_gating_top_k is not documented before CANN 8.1.RC1 (target CANN {call.cann})"


# ---------------------------------------------------------------- legacy generation -----------

def _legacy(rule_id, argument, summary, fix):
    # the kernels of that generation were not public: only the torch_npu docs state these limits, so they are
    # doc-level (vllm-ascend's note that other group counts need 8.3.RC1 is the only hint the device enforced them)
    return spec.rule(rule_id, argument=argument, summary="docs: " + summary, until=LEGACY_UNTIL,
                     source=LEGACY_DOC + "; no host code of that generation is public", fix=fix, severity="warning")


@_legacy("gating.legacy.experts_256", "x", "experts (x.shape[1]) == 256", "use 256 experts or target CANN >= 8.3.RC1")
def _(call):
    e = _experts(call)
    if e is not None and e != 256:
        return f"the docs of CANN < 8.3.RC1 allow only 256 experts (x.shape[1]), got {e}"


@_legacy("gating.legacy.k_max_32", "k", "1 <= k <= 32", "pass 1 <= k <= 32 or target CANN >= 8.3.RC1")
def _(call):
    k = call["k"]
    if _is_int(k) and not 1 <= k <= 32:
        return f"the docs of CANN < 8.3.RC1 say k must satisfy 1 <= k <= 32, got k={k}"


@_legacy("gating.legacy.k_group_4", "k_group", "k_group == 4", "pass k_group=4 or target CANN >= 8.3.RC1")
def _(call):
    if call["k_group"] != 4:
        return f"the docs of CANN < 8.3.RC1 say k_group must be 4, got k_group={call['k_group']!r}"


@_legacy("gating.legacy.group_count_8", "group_count", "group_count == 8", "pass group_count=8 or target CANN >= 8.3.RC1")
def _(call):
    if call["group_count"] != 8:
        return f"the docs of CANN < 8.3.RC1 say group_count must be 8, got group_count={call['group_count']!r}"


@_legacy("gating.legacy.bias_required", "bias", "bias must not be None", "pass the score-correction bias, or target CANN >= 8.3.RC1")
def _(call):
    if not call.given("bias"):
        return "the docs of CANN < 8.3.RC1 say bias must not be None, got bias=None"


@_legacy("gating.legacy.norm_type_sigmoid", "norm_type", "norm_type == 1 (sigmoid)", "pass norm_type=1 or target CANN >= 8.3.RC1")
def _(call):
    if call["norm_type"] != 1:
        return f"the docs of CANN < 8.3.RC1 say norm_type must be 1 (sigmoid), got norm_type={call['norm_type']!r}"


@_legacy("gating.legacy.out_flag_false", "out_flag", "out_flag must be False", "pass out_flag=False or target CANN >= 8.3.RC1")
def _(call):
    if call["out_flag"]:
        return f"the docs of CANN < 8.3.RC1 say out_flag must be False, got out_flag={call['out_flag']!r}"


# ---------------------------------------------------------------- hash mode (V2) ---------------

HASH_SRC = ("aclnnMoeGatingTopKV2 (OT 9b90f2ddf/aba4d1372/01944da5b, 2026-07: absent from tags v9.0.0 and "
            "v9.0.1, first in v9.1.0); op-plugin master " + WRAPPER)


@spec.rule("gating.hash.since", argument="input_ids",
           summary=f"input_ids / tid2eid (hash mode) need CANN >= {V_HASH}", until=V_HASH,
           source=HASH_SRC, fix=f"drop input_ids/tid2eid or target CANN >= {V_HASH}", kind="wrapper",
           status=None)
def _(call):
    if _hash(call):
        return (f"hash mode (input_ids/tid2eid) needs aclnnMoeGatingTopKV2 (CANN >= {V_HASH}); target CANN "
                f"{call.cann}, got input_ids={'given' if call.given('input_ids') else 'None'}, "
                f"tid2eid={'given' if call.given('tid2eid') else 'None'}")


@spec.rule("gating.hash.pair", argument="input_ids", summary="input_ids and tid2eid are given both or neither",
           source=WRAPPER + " and the meta registration", fix="pass both input_ids and tid2eid, or neither",
           kind="wrapper", status=None)
def _(call):
    a, b = call.given("input_ids"), call.given("tid2eid")
    if a != b:
        return (f"input_ids and tid2eid must be given together, got input_ids={'given' if a else 'None'}, "
                f"tid2eid={'given' if b else 'None'}")


@spec.rule("gating.input_ids.spec", argument="input_ids", summary="input_ids int32/int64, 1-D [rows]",
           source=WRAPPER + "; " + TILING + " CheckInputShape", fix="pass input_ids as a 1-D int32/int64 tensor of length x.shape[0]")
def _(call):
    if not call.given("input_ids"):
        return None
    m = call.meta("input_ids")
    if m is None:
        return f"input_ids must be a tensor, got {type(call['input_ids']).__name__}"
    msgs = []
    if m.dtype not in ("int32", "int64"):
        msgs.append(f"input_ids dtype must be int32 or int64, got {m.dtype}")
    s = _xshape(call)
    if m.ndim != 1 or (s is not None and m.shape[0] != s[0]):
        msgs.append(f"input_ids must be 1-D of length rows={s[0] if s else '?'}, got shape {m.shape}")
    return msgs


@spec.rule("gating.tid2eid.spec", argument="tid2eid", summary="tid2eid int32/int64, 2-D [num_keys, k]",
           source=WRAPPER + "; " + TILING + " CheckInputShape", fix="pass tid2eid as a 2-D int32/int64 table [num_keys, k]")
def _(call):
    if not call.given("tid2eid"):
        return None
    m = call.meta("tid2eid")
    if m is None:
        return f"tid2eid must be a tensor, got {type(call['tid2eid']).__name__}"
    msgs = []
    if m.dtype not in ("int32", "int64"):
        msgs.append(f"tid2eid dtype must be int32 or int64, got {m.dtype}")
    if m.ndim != 2 or m.shape[1] != call["k"]:
        msgs.append(f"tid2eid must be 2-D [num_keys, k={call['k']}], got shape {m.shape}")
    return msgs


@spec.rule("gating.hash.values", argument="input_ids",
           summary="input_ids in [0, num_keys) and tid2eid entries in [0, experts) (checked when concrete)",
           status=None, source="aclnnMoeGatingTopKV2 doc; no code checks it - the kernel would read out of bounds [I]",
           fix="keep token ids below tid2eid.shape[0] and table entries below the number of experts")
def _(call):
    if not (call.given("input_ids") and call.given("tid2eid")):
        return None
    ids, tab, tm = call.values("input_ids"), call.values("tid2eid"), call.meta("tid2eid")
    msgs = []
    if ids is not None and tm is not None and tm.ndim == 2 and ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= tm.shape[0]:
            msgs.append(f"input_ids values must lie in [0, {tm.shape[0] - 1}], got range [{lo}, {hi}]")
    e = _experts(call)
    if tab is not None and e is not None and tab.size:
        lo, hi = int(tab.min()), int(tab.max())
        if lo < 0 or hi >= e:
            msgs.append(f"tid2eid values must lie in [0, {e - 1}], got range [{lo}, {hi}]")
    return msgs


@spec.rule("gating.hash.simplified_path", argument="tid2eid",
           summary="hash mode only without grouping (k_group == group_count or group_count in {1, experts})",
           products={"ascend-950"}, since=V_HASH,
           source="ascend-moe scope: the 950 hash kernels are modelled for the ungrouped path only "
                  "(moe_gating_top_k_tiling_arch35.cpp on master routes hash mode there; the rejecting function is "
                  "not in a released tag)",
           fix="use k_group == group_count (or group_count 1) with hash routing", severity="not-simulated")
def _(call):
    if _hash(call) and _experts(call) and _grouped(call):
        return (f"hash mode with grouping is not simulated, got k_group={call['k_group']}, group_count={call['group_count']}, "
                f"experts={_experts(call)}")


@spec.rule("gating.hash.simplified_path_doc", argument="tid2eid",
           summary="docs: hash mode only without grouping; A2/A3 grouped kernels ignore the hash tables",
           products=A2_A3, since=V_HASH, severity="warning", status=None,
           source="aclnnMoeGatingTopKV2 doc [D]; A2/A3 tiling GetTilingKey sends grouped calls to kernels that never read "
           "input_ids/tid2eid (the twin then routes by top-k too)",
           fix="use k_group == group_count (or group_count 1) with hash routing")
def _(call):
    if _hash(call) and _experts(call) and (_grouped(call) or _sim.kernel_path(
            _experts(call), call["k"], call.given("bias"), call["k_group"], call["group_count"],
            call["group_select_mode"], call["renorm"], call["norm_type"], bool(call["out_flag"]),
            _semantics(call.cann)) != _sim.PATH_WITHOUT_GROUP):
        return (f"hash mode is documented for the ungrouped path only; with k_group={call['k_group']}, "
                f"group_count={call['group_count']} the A2/A3 kernel ignores input_ids/tid2eid")


@spec.rule("gating.hash.k_max_64", argument="k", summary="hash mode: k <= 64", products={"ascend-950"}, since=V_HASH,
           source="ascend-moe scope: moe_gating_top_k_tiling_arch35.cpp (master) caps hash mode at MAX_K_FOR_HASH = 64; "
                  "the checking function is not in a released tag, so the simulator only declines k > 64",
           fix="use k <= 64 with hash routing", severity="not-simulated")
def _(call):
    if _hash(call) and _is_int(call["k"]) and call["k"] > 64:
        return f"hash mode with k={call['k']} > 64 is not simulated"


@spec.rule("gating.hash.k_max_64_doc", argument="k", summary="docs: hash mode k <= 64", products=A2_A3, since=V_HASH,
           severity="warning", status=None, source="aclnnMoeGatingTopKV2 doc [D] (the A2/A3 tiling does not check it)",
           fix="use k <= 64 with hash routing")
def _(call):
    if _hash(call) and _is_int(call["k"]) and call["k"] > 64:
        return f"the docs limit hash mode to k <= 64, got k={call['k']}"
