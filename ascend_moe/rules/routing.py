"""Rules of the MoE routing and combine ops (spec moe-routing-and-ep.md sections 0-6).

Ops: ``npu_moe_init_routing_v2``, ``npu_moe_token_permute``, ``npu_moe_token_unpermute``,
``npu_moe_finalize_routing``, ``npu_moe_gating_top_k_softmax``, ``npu_moe_gating_top_k_softmax_v2``,
``npu_moe_compute_expert_tokens``, ``npu_moe_re_routing``.

Where each rule lives on the device:

* op-plugin wrapper checks (``TORCH_CHECK``) raise RuntimeError before any aclnn call: ``kind="wrapper"``,
  ``status=None`` and the source names the wrapper file.
* aclnn host checks return 161001/161002; the ops-transformer tilings return a failure that surfaces as
  561002 (ACLNN_ERR_INNER_TILING_ERROR, mapping inferred).  A dtype outside an op definition's
  (``*_def.cpp``) registered list is taken as 161002 from the generated aclnn entry [assumption].
  Each such rule names the host file and function.
* rules only the docs state are warnings (``severity="warning"``, :class:`ConstraintWarning`).
* ``padded_mode=True``: the permute tiling rejects it (``GetShapeAttrsInfo``); the unpermute tiling never
  reads it (the kernel ignores it: a kernel rule, no status); for the two grads the A2/A3 behaviour was not
  read, so it is "not simulated" (no device status is claimed).
* every rule id carries its op's prefix (``init.``, ``permute.``, ``unpermute.``, ``finalize.``,
  ``softmax.`` / ``softmax_v2.``, ``cet.``, ``re_routing.``, ``gating_bwd.``, ``permute_grad.``,
  ``unpermute_grad.``).

Deliberate divergences from the op-plugin wrapper of ``npu_moe_init_routing_v2`` (its bugs, spec 9.2):
the wrapper defaults an empty ``active_expert_range`` through a function-local ``static`` initialised
on the first call (so a later call with another ``expert_num`` gets output 3 sized by the first one), and
its V2-path test reads ``active_expert_range[0..1]`` of an empty list.  ascend-moe does what the kernel
does with the arguments the caller passed: the range defaults to ``[0, expert_num]`` on every call.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..products import A2_A3
from . import register_op

OT = "ops-transformer"
INIT_TILING = f"{OT} moe/moe_init_routing_v3/op_host/moe_init_routing_v3_tiling.cpp"
INIT_WRAPPER = "op-plugin op_plugin/ops/opapi/MoeInitRoutingV2KernelNpuOpApi.cpp"
INIT_DOC = f"{OT} moe/moe_init_routing_v3/docs/aclnnMoeInitRoutingV3.md"
PERMUTE_WRAPPER = "op-plugin op_plugin/utils/KernelNpuOutputSize.cpp (npu_moe_token_permute output size)"
PERMUTE_DOC = f"{OT} moe/moe_token_permute/docs/aclnnMoeTokenPermute.md"
UNPERMUTE_WRAPPER = "op-plugin op_plugin/ops/opapi/MoeTokenUnpermuteKernelNpuOpApi.cpp"
UNPERMUTE_DOC = f"{OT} moe/moe_token_unpermute/docs/aclnnMoeTokenUnpermute.md"
UNPERMUTE_TILING = f"{OT} moe/moe_token_unpermute/op_host/moe_token_unpermute_tiling.cpp InputParamCheck"
FINALIZE_WRAPPER = "op-plugin op_plugin/ops/opapi/MoeFinalizeRoutingV2KernelNpuOpApi.cpp"
FINALIZE_DOC = f"{OT} moe/moe_finalize_routing_v2/docs/aclnnMoeFinalizeRoutingV2.md"
FINALIZE_TILING = (f"{OT} moe/moe_finalize_routing_v2/op_host/moe_finalize_routing_v2_tiling_membase.cpp "
                   "DoGetShapeAttrsInfo")
SOFTMAX_WRAPPER = "op-plugin op_plugin/ops/opapi/MoeGatingTopKSoftmaxKernelNpuOpApi.cpp"
SOFTMAX_DOC = "torch_npu docs torch_npu-npu_moe_gating_top_k_softmax.md"
RE_ROUTING_WRAPPER = "op-plugin op_plugin/ops/opapi/MoeReRoutingOpApi.cpp"

TILING_STATUS = 561002
NOT_MODELLED_950 = ("the Ascend 950 kernels (arch35) exist but are not modelled by ascend-moe")
NOT_MODELLED_310P = ("the Atlas inference series runs other kernels (V2 entry / CAST_NONE outputs) that "
                     "ascend-moe does not model")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _shape(call, name) -> Optional[tuple]:
    return call.shape(name)


def _need_rank(call, name: str, ranks: Sequence[int], optional: bool = False) -> Optional[str]:
    if optional and not call.given(name):
        return None
    m = call.meta(name)
    if m is None:
        return f"{name} must be a tensor, got {type(call[name]).__name__}"
    if m.ndim not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        return f"{name} must be {want}, got shape {m.shape} ({m.ndim}-D)"
    return None


def _need_dtype(call, name: str, allowed: Sequence[str], optional: bool = False) -> Optional[str]:
    if optional and not call.given(name):
        return None
    d = call.dtype(name)
    if d is not None and d not in allowed:
        return f"{name} dtype must be one of {', '.join(allowed)}, got {d}"
    return None


# ============================================================================================
# npu_moe_init_routing_v2
# ============================================================================================


INIT = "npu_moe_init_routing_v2"
init_spec = register_op(INIT, products=A2_A3,
                        source=f"{INIT_DOC}; {INIT_WRAPPER}",
                        product_notes={"ascend-950": NOT_MODELLED_950, "atlas-inference": NOT_MODELLED_310P})


def _init_dims(call):
    xs, es = call.shape("x"), call.shape("expert_idx")
    if xs is None or es is None or len(xs) != 2 or len(es) != 2:
        return None
    return xs[0], es[1], xs[1]          # N, K, H


def _entry(call) -> str:
    d = _init_dims(call)
    rng = call.get("active_expert_range") or ()
    if d is None or not _is_int(call["expert_num"]) or (len(rng) not in (0, 2)):
        return "V3"
    return init_routing_entry(call.product, call.cann, expert_num=call["expert_num"], active_expert_range=rng,
                              hidden=d[2], quant_mode=call["quant_mode"],
                              expert_tokens_num_type=call["expert_tokens_num_type"])


def _init_range(call):
    """(s, e) the kernel uses: the caller's range, or [0, expert_num] (tiling default, per call)."""
    r = call.get("active_expert_range")
    if r is None or len(r) == 0:
        return 0, call["expert_num"]
    if len(r) != 2:
        return None
    return int(r[0]), int(r[1])


@init_spec.rule("init.x.rank", argument="x", summary="x is 2-D [tokens, hidden]", status=None, kind="wrapper", source=INIT_WRAPPER,
                fix="pass x as a 2-D [tokens, hidden] tensor")
def _(call):
    return _need_rank(call, "x", (2,))


@init_spec.rule("init.expert_idx.rank", argument="expert_idx", summary="expert_idx is 2-D [tokens, k] with x's rows",
                status=None, kind="wrapper", source=INIT_WRAPPER, fix="pass the top-k expert ids as a [tokens, k] tensor")
def _(call):
    msg = _need_rank(call, "expert_idx", (2,))
    if msg:
        return msg
    xs, es = call.shape("x"), call.shape("expert_idx")
    if xs is not None and len(xs) == 2 and es[0] != xs[0]:
        return f"expert_idx.shape[0] must equal x.shape[0]={xs[0]}, got {es[0]}"


@init_spec.rule("init.x.dtype", argument="x", summary="x dtype int8, float16, bfloat16 or float32; int8 only unquantised",
                status=TILING_STATUS, source=INIT_TILING + " CheckInputDtype",
                fix="cast x to float16/bfloat16/float32 (int8 x only with quant_mode=-1)")
def _(call):
    d = call.dtype("x")
    if d is None:
        return None
    if d not in ("int8", "float16", "bfloat16", "float32"):
        return f"x dtype must be int8, float16, bfloat16 or float32, got {d}"
    if d == "int8" and call["quant_mode"] != -1:
        return f"int8 x cannot be quantised again: quant_mode must be -1, got {call['quant_mode']}"


@init_spec.rule("init.expert_idx.dtype", argument="expert_idx", summary="expert_idx dtype int32", status=TILING_STATUS,
                source=INIT_TILING + " CheckInputDtype", fix="cast expert_idx to int32")
def _(call):
    return _need_dtype(call, "expert_idx", ("int32",))


@init_spec.rule("init.expert_idx.values", argument="expert_idx",
                summary="expert ids below 2^24 (the sort key is float32)", severity="warning", status=None,
                source=INIT_DOC + " (ids converted to float32 sort keys, exact below 2^24) [D]",
                fix="keep expert ids below 16777216")
def _(call):
    v = call.values("expert_idx")
    if v is not None and v.size and int(np.max(v)) >= 1 << 24:
        return f"expert ids must be < 2^24 (float32 sort keys), got max {int(np.max(v))}"


@init_spec.rule("init.expert_num.positive", argument="expert_num", summary="expert_num > 0", status=TILING_STATUS,
                source=INIT_TILING + " CheckAttr", fix="pass expert_num = the number of experts (> 0)")
def _(call):
    v = call["expert_num"]
    if not _is_int(v) or v <= 0:
        return f"expert_num must be an int > 0, got {v!r}"


@init_spec.rule("init.drop_pad_mode.range", argument="drop_pad_mode", summary="drop_pad_mode in {0 dropless, 1 drop/pad}",
                status=TILING_STATUS, source=INIT_TILING + " CheckAttr", fix="pass drop_pad_mode 0 or 1")
def _(call):
    v = call["drop_pad_mode"]
    if v not in (0, 1) or isinstance(v, bool):
        return f"drop_pad_mode must be 0 or 1, got {v!r}"


@init_spec.rule("init.drop_pad_mode.since_9_0", argument="drop_pad_mode", summary="drop/pad mode needs CANN >= 9.0.0",
                until="9.0.0", status=TILING_STATUS,
                source=INIT_TILING + " MoeInitRountingV3TilingBase::CheckAttr at tag v8.5.0 (dropPadMode_ != DROP_LESS: "
                "\"drop_pad_mode currently support 0\"); drop/pad kernels "
                "(moe_v3_gather_out_droppad.h, OT 87b1db69e) first in v9.0.0-beta.1",
                fix="use drop_pad_mode=0 (dropless) or target CANN >= 9.0.0")
def _(call):
    if call["drop_pad_mode"] == 1 and _entry(call) == "V3":
        return f"drop_pad_mode=1 is rejected by the V3 tiling before CANN 9.0.0 (target {call.cann})"


@init_spec.rule("init.v2_case.overrides", argument="drop_pad_mode",
                summary="calls op-plugin sends to aclnnMoeInitRoutingV2 run dropless with a gather index and counts, "
                "whatever drop_pad_mode / row_idx_type / expert_tokens_num_flag say", severity="warning", status=None,
                source=INIT_WRAPPER + " (V2 path: expert_capacity=0, drop_pad_mode=0, count flag forced)",
                fix="use another shape (the V2 case is expert_num 128, hidden 2048, count type) or CANN >= 8.5.0")
def _(call):
    if _entry(call) != "V2":
        return None
    ignored = [f"{n}={call[n]!r}" for n, default in (("drop_pad_mode", 0), ("row_idx_type", 0))
               if call[n] != default]
    if not call["expert_tokens_num_flag"]:
        ignored.append("expert_tokens_num_flag=False")
    if ignored:
        return (f"this call goes to aclnnMoeInitRoutingV2 on CANN {call.cann}, which ignores "
                f"{', '.join(ignored)} (dropless, gather index, counts written)")


@init_spec.rule("init.active_num.range", argument="active_num", summary="dropless: active_num >= -1 (<= 0 means all slots)",
                status=TILING_STATUS, source=INIT_TILING + " CheckAttr (doc says >= 0; the code accepts -1)",
                fix="pass active_num >= 0, or -1 for all N*K slots")
def _(call):
    v = call["active_num"]
    if not _is_int(v) or (call["drop_pad_mode"] == 0 and v < -1):
        return f"active_num must be an int >= -1, got {v!r}"


@init_spec.rule("init.expert_tokens_num_type.range", argument="expert_tokens_num_type",
                summary="expert_tokens_num_type in {0 cumsum, 1 count, 2 key-value}", status=TILING_STATUS,
                source=INIT_TILING + " CheckAttr", fix="pass 0 (cumsum), 1 (count) or 2 (key-value)")
def _(call):
    v = call["expert_tokens_num_type"]
    if v not in (0, 1, 2) or isinstance(v, bool):
        return f"expert_tokens_num_type must be 0, 1 or 2, got {v!r}"


@init_spec.rule("init.quant_mode.range", argument="quant_mode",
                summary="quant_mode in {-1 none, 0 static int8, 1 dynamic int8} on Atlas A2/A3", status=TILING_STATUS,
                source=INIT_TILING + " CheckAttr (A2/A3); modes 2-17 are Ascend 950 only",
                fix="pass quant_mode -1, 0 or 1")
def _(call):
    v = call["quant_mode"]
    if v not in (-1, 0, 1) or isinstance(v, bool):
        return f"quant_mode must be -1, 0 or 1 on {call.product}, got {v!r}"


@init_spec.rule("init.row_idx_type.range", argument="row_idx_type", summary="row_idx_type in {0 gather, 1 scatter}",
                status=TILING_STATUS, source=INIT_TILING + " CheckAttr", fix="pass row_idx_type 0 or 1")
def _(call):
    v = call["row_idx_type"]
    if v not in (0, 1) or isinstance(v, bool):
        return f"row_idx_type must be 0 or 1, got {v!r}"


@init_spec.rule("init.active_expert_range.shape", argument="active_expert_range",
                summary="active_expert_range is empty or [start, end] with 0 <= start < end <= expert_num",
                status=TILING_STATUS, source=INIT_TILING + " CheckAttr; " + INIT_WRAPPER + " (length 2 after defaulting)",
                fix="pass [start, end) of the experts this device owns, within [0, expert_num]")
def _(call):
    r = call.get("active_expert_range")
    if r is None or len(r) == 0:
        return None
    if len(r) != 2 or not all(_is_int(v) for v in r):
        return f"active_expert_range must hold two ints [start, end], got {list(r)!r}"
    s, e = int(r[0]), int(r[1])
    en = call["expert_num"]
    if not (0 <= s < e) or (_is_int(en) and e > en):
        return f"active_expert_range must satisfy 0 <= start < end <= expert_num={en}, got [{s}, {e}]"


@init_spec.rule("init.active_expert_range.max", argument="active_expert_range",
                summary="range end <= 5120 in key-value mode, else <= 10240", status=TILING_STATUS,
                source=INIT_TILING + " CheckAttr", fix="use fewer experts per call")
def _(call):
    rg = _init_range(call)
    if rg is None or not _is_int(rg[1]):
        return None
    limit = 5120 if call["expert_tokens_num_type"] == 2 else 10240
    if rg[1] > limit:
        return f"the expert range end must be <= {limit} (expert_tokens_num_type={call['expert_tokens_num_type']}), got {rg[1]}"


@init_spec.rule("init.drop_pad.capacity", argument="expert_capacity", summary="drop/pad: 0 < expert_capacity <= tokens",
                status=TILING_STATUS, source=INIT_TILING + " CheckAttr (doc says < tokens; the code allows equality; "
                "check first in v9.0.0)", fix="pass 0 < expert_capacity <= x.shape[0]")
def _(call):
    if call["drop_pad_mode"] != 1:
        return None
    c, d = call["expert_capacity"], _init_dims(call)
    if not _is_int(c) or c <= 0 or (d is not None and c > d[0]):
        return f"drop/pad mode needs 0 < expert_capacity <= tokens={d[0] if d else '?'}, got {c!r}"


@init_spec.rule("init.drop_pad.gather_index", argument="row_idx_type", summary="drop/pad: row_idx_type must be 0 (gather)",
                status=TILING_STATUS, source=INIT_TILING + " CheckAttr", fix="pass row_idx_type=0 with drop_pad_mode=1")
def _(call):
    if call["drop_pad_mode"] == 1 and call["row_idx_type"] != 0:
        return f"drop/pad mode needs row_idx_type=0, got {call['row_idx_type']}"


@init_spec.rule("init.drop_pad.full_range", argument="active_expert_range",
                summary="drop/pad: active_expert_range must be [0, expert_num]", status=TILING_STATUS,
                source=INIT_TILING + " CheckAttr", fix="omit active_expert_range with drop_pad_mode=1")
def _(call):
    rg = _init_range(call)
    if call["drop_pad_mode"] == 1 and rg is not None and rg != (0, call["expert_num"]):
        return f"drop/pad mode needs the full range [0, {call['expert_num']}], got [{rg[0]}, {rg[1]}]"


@init_spec.rule("init.drop_pad.count_type", argument="expert_tokens_num_type",
                summary="drop/pad with expert_tokens_num_flag: expert_tokens_num_type must be 1 (count)",
                status=TILING_STATUS, source=INIT_TILING + " CheckAttr", fix="pass expert_tokens_num_type=1")
def _(call):
    if call["drop_pad_mode"] == 1 and call["expert_tokens_num_flag"] and call["expert_tokens_num_type"] != 1:
        return f"drop/pad mode counts tokens only as counts: expert_tokens_num_type must be 1, got {call['expert_tokens_num_type']}"


@init_spec.rule("init.drop_pad.nonempty", argument="x", summary="empty x (0 tokens) only in dropless mode",
                severity="warning", status=None, source=INIT_DOC + " [D]",
                fix="use drop_pad_mode=0 when there may be no tokens")
def _(call):
    d = _init_dims(call)
    if d is not None and d[0] == 0 and call["drop_pad_mode"] == 1:
        return "x has no rows; the docs allow empty x only with drop_pad_mode=0"


@init_spec.rule("init.scale.shape", argument="scale",
                summary="scale: unquantised 1-D [tokens] fp32; static [1] fp32 (required); dynamic 2-D [E_range or 1, H] fp32",
                status=TILING_STATUS, source=INIT_TILING + " CheckInputShape",
                fix="shape scale for the quant_mode (see summary)")
def _(call):
    q, d = call["quant_mode"], _init_dims(call)
    if not call.given("scale"):
        if q == 0:
            return "static quantisation (quant_mode=0) needs scale [1] and offset [1]"
        return None
    m = call.meta("scale")
    if m is None:
        return f"scale must be a tensor, got {type(call['scale']).__name__}"
    if m.dtype != "float32":
        return f"scale dtype must be float32, got {m.dtype}"
    if d is None:
        return None
    if q == -1 and m.shape != (d[0],):
        return f"unquantised scale must be 1-D [tokens={d[0]}], got {m.shape}"
    if q == 0 and m.shape != (1,):
        return f"static-quant scale must be [1], got {m.shape}"
    if q == 1:
        rg = _init_range(call)
        er = rg[1] - rg[0] if rg is not None else None
        if m.ndim != 2 or m.shape[1] != d[2] or m.shape[0] not in (1, er):
            return f"dynamic-quant smooth scale must be 2-D [{er} or 1, H={d[2]}], got {m.shape}"


@init_spec.rule("init.offset.shape", argument="offset", summary="offset: only with static quantisation, fp32 [1]",
                status=TILING_STATUS, source=INIT_TILING + " CheckInputShape",
                fix="pass offset [1] with quant_mode=0, nothing otherwise")
def _(call):
    q = call["quant_mode"]
    if q == 0 and not call.given("offset"):
        return "static quantisation (quant_mode=0) needs offset [1]"
    if not call.given("offset"):
        return None
    m = call.meta("offset")
    if q != 0:
        return f"offset is only used with quant_mode=0, got quant_mode={q}"
    if m is None or m.shape != (1,) or m.dtype != "float32":
        return f"static-quant offset must be float32 [1], got {None if m is None else (m.shape, m.dtype)}"


@init_spec.rule("init.x_dtype.unsupported", argument="x_dtype", summary="x_dtype (int4 / fp8 inputs) only on Ascend 950",
                status=None, kind="wrapper", source=INIT_WRAPPER + " (x_dtype selects the 950 low-bit formats)",
                fix="leave x_dtype None on Atlas A2/A3")
def _(call):
    if call.get("x_dtype") is not None:
        return f"x_dtype is for the Ascend 950 low-bit formats, not {call.product}; got {call['x_dtype']!r}"


# ============================================================================================
# npu_moe_token_permute / npu_moe_token_unpermute
# ============================================================================================


PERMUTE = "npu_moe_token_permute"
UNPERMUTE = "npu_moe_token_unpermute"
permute_spec = register_op(PERMUTE, products=A2_A3, source=f"{PERMUTE_DOC}; {PERMUTE_WRAPPER}",
                           product_notes={"ascend-950": "on the 950 aclnn re-routes to the MoeInitRoutingV2/V3 "
                                          "kernels, which ascend-moe does not model there"})
unpermute_spec = register_op(UNPERMUTE, products=A2_A3 | {"atlas-inference"},
                             source=f"{UNPERMUTE_DOC}; {UNPERMUTE_WRAPPER}",
                             product_notes={"ascend-950": "on the 950 aclnn re-routes to MoeFinalizeRoutingV2, "
                                            "which ascend-moe does not model there"})

FLOATS = ("float16", "bfloat16", "float32")


@permute_spec.rule("permute.tokens.rank", argument="tokens", summary="tokens is 2-D [tokens, hidden]", status=None, kind="wrapper",
                   source=PERMUTE_WRAPPER, fix="pass tokens as [tokens, hidden]")
def _(call):
    return _need_rank(call, "tokens", (2,))


@permute_spec.rule("permute.indices.rank", argument="indices", summary="indices is 1-D [tokens] or 2-D [tokens, k]",
                   status=None, kind="wrapper", source=PERMUTE_WRAPPER, fix="pass the expert ids as [tokens] or [tokens, k]")
def _(call):
    msg = _need_rank(call, "indices", (1, 2))
    if msg:
        return msg
    ts, ix = call.shape("tokens"), call.shape("indices")
    if ts is not None and len(ts) == 2 and ix[0] != ts[0]:
        return f"indices.shape[0] must equal tokens.shape[0]={ts[0]}, got {ix[0]}"


@permute_spec.rule("permute.tokens.dtype", argument="tokens", summary="tokens dtype float16, bfloat16 or float32 (int8 on the 950)",
                   severity="warning", status=None, source=PERMUTE_DOC + " [D]", fix="cast tokens to a float dtype")
def _(call):
    return _need_dtype(call, "tokens", FLOATS)


@permute_spec.rule("permute.indices.dtype", argument="indices", summary="indices dtype int32 or int64", status=161002,
                   source=f"{OT} moe/moe_token_permute/op_host/moe_token_permute_def.cpp MoeTokenPermute (indices "
                   "registered as DT_INT64/DT_INT32 only; the generated aclnnInnerMoeTokenPermute rejects other "
                   "dtypes); " + PERMUTE_DOC + " (dtype table)", fix="cast indices to int32")
def _(call):
    return _need_dtype(call, "indices", ("int32", "int64"))


@permute_spec.rule("permute.indices.values", argument="indices", summary="indices below 16777215 (float32 sort key)",
                   severity="warning", status=None, source=PERMUTE_DOC + " [D]", fix="keep expert ids below 16777215")
def _(call):
    v = call.values("indices")
    if v is not None and v.size and int(np.max(v)) >= 16777215:
        return f"indices must be < 16777215, got max {int(np.max(v))}"


@permute_spec.rule("permute.num_out_tokens.range", argument="num_out_tokens",
                   summary="num_out_tokens >= -numel(indices) (0/None keep all, negative drops the last |n|)",
                   status=None, kind="wrapper", source=PERMUTE_WRAPPER + " (a negative first dim fails allocation)",
                   fix="pass 0/None (all slots), a positive count, or a negative n with |n| <= indices.numel()")
def _(call):
    n = call.get("num_out_tokens")
    ix = call.shape("indices")
    if n is None or ix is None:
        return None
    if not _is_int(n):
        return f"num_out_tokens must be an int or None, got {n!r}"
    numel = int(np.prod(ix)) if ix else 1
    if n < 0 and n + numel < 0:
        return f"num_out_tokens={n} would give {n + numel} output rows (indices has {numel} entries)"


@permute_spec.rule("permute.padded_mode.unsupported", argument="padded_mode", summary="padded_mode must be False",
                   status=TILING_STATUS, source=f"{OT} moe/moe_token_permute/op_host/moe_token_permute_tiling.cpp "
                   "MoeTokenPermuteTilingBase::GetShapeAttrsInfo (\"Currently only support padded_mode is false\"); "
                   "the 950 aclnn returns 161002; " + PERMUTE_DOC + " (\"暂不支持\")",
                   fix="pass padded_mode=False")
def _(call):
    if call["padded_mode"]:
        return "padded_mode=True is rejected by the tiling (only padded_mode=False is supported)"


@unpermute_spec.rule("unpermute.permuted_tokens.rank", argument="permuted_tokens", summary="permuted_tokens is 2-D", status=None, kind="wrapper",
                     source=UNPERMUTE_WRAPPER, fix="pass permuted_tokens as [rows, hidden]")
def _(call):
    return _need_rank(call, "permuted_tokens", (2,))


@unpermute_spec.rule("unpermute.sorted_indices.rank", argument="sorted_indices", summary="sorted_indices is 1-D int32",
                     status=None, kind="wrapper", source=UNPERMUTE_WRAPPER, fix="pass the 1-D int32 index from permute/init_routing")
def _(call):
    return _need_rank(call, "sorted_indices", (1,)) or _need_dtype(call, "sorted_indices", ("int32",))


@unpermute_spec.rule("unpermute.probs.shape", argument="probs",
                     summary="probs is 2-D [tokens, k] with tokens*k == len(sorted_indices)", status=None, kind="wrapper",
                     source=UNPERMUTE_WRAPPER + " (topk = probs.size(1), output rows = len // topk)",
                     fix="pass probs as [tokens, k] matching sorted_indices")
def _(call):
    if not call.given("probs"):
        return None
    msg = _need_rank(call, "probs", (2,))
    if msg:
        return msg
    ps, si = call.shape("probs"), call.shape("sorted_indices")
    if ps[1] <= 0:
        return f"probs.shape[1] (top-k) must be > 0, got {ps}"
    if si is not None and len(si) == 1 and ps[0] * ps[1] != si[0]:
        return f"probs {ps} covers {ps[0] * ps[1]} slots, sorted_indices has {si[0]}"


@unpermute_spec.rule("unpermute.dtype", argument="permuted_tokens", summary="permuted_tokens and probs float16, bfloat16 or float32",
                     status=161002, source=f"{OT} moe/moe_token_unpermute/op_host/moe_token_unpermute_def.cpp "
                     "MoeTokenUnpermute (permuted_tokens / probs registered as DT_BF16/DT_FLOAT16/DT_FLOAT only; the "
                     "generated aclnnInnerMoeTokenUnpermute rejects other dtypes); " + UNPERMUTE_DOC + " (dtype table)",
                     fix="cast to a float dtype")
def _(call):
    return _need_dtype(call, "permuted_tokens", FLOATS) or _need_dtype(call, "probs", FLOATS, optional=True)


@unpermute_spec.rule("unpermute.topk.max", argument="probs", summary="top-k <= 512", status=TILING_STATUS,
                     source=UNPERMUTE_TILING + " (topK > 512 fails the tiling); " + UNPERMUTE_DOC, fix="use k <= 512")
def _(call):
    ps = call.shape("probs") if call.given("probs") else None
    if ps is not None and len(ps) == 2 and ps[1] > 512:
        return f"top-k must be <= 512, got {ps[1]}"


@unpermute_spec.rule("unpermute.padded_mode.unsupported", argument="padded_mode", summary="padded_mode must be False",
                     status=None, kind="kernel", source=UNPERMUTE_DOC + " (only False is supported); the A2/A3 "
                     "tiling (TilingCompute) never reads padded_mode, so the kernel computes the unpadded result "
                     "whatever it says", fix="pass padded_mode=False")
def _(call):
    if call["padded_mode"]:
        return "padded_mode=True is documented as unsupported; the A2/A3 kernel would ignore it"


@unpermute_spec.rule("unpermute.inference.layout", argument="permuted_tokens",
                     summary="Atlas inference series: float16/float32 tokens and probs, hidden a multiple of 128 and "
                     "<= 10240", products=("atlas-inference",), status=TILING_STATUS,
                     source=UNPERMUTE_TILING + " (ASCEND310P: hidden % 128, hidden > 10240, BF16 tokens or probs "
                     "fail the tiling); " + UNPERMUTE_DOC + " (the doc says < 10240)",
                     fix="use fp16/fp32 and a hidden size that is a multiple of 128, at most 10240")
def _(call):
    s, d = call.shape("permuted_tokens"), call.dtype("permuted_tokens")
    if d == "bfloat16" or (call.given("probs") and call.dtype("probs") == "bfloat16"):
        return "bfloat16 permuted_tokens / probs are not supported on the Atlas inference series"
    if s is not None and len(s) == 2 and (s[1] % 128 or s[1] > 10240):
        return f"hidden size must be a multiple of 128 and <= 10240, got {s[1]}"


# ============================================================================================
# npu_moe_finalize_routing
# ============================================================================================


FINALIZE = "npu_moe_finalize_routing"
finalize_spec = register_op(FINALIZE, products=A2_A3,
                            source=f"{FINALIZE_DOC}; {FINALIZE_WRAPPER}",
                            product_notes={"ascend-950": NOT_MODELLED_950, "atlas-inference": NOT_MODELLED_310P})


def _fin_dims(call):
    """(rows, K, H, slots) or None."""
    ex, idx = call.shape("expanded_permuted_rows"), call.shape("expanded_src_to_dst_row")
    if ex is None or idx is None or len(idx) != 1 or len(ex) not in (2, 3):
        return None
    h = ex[-1]
    if call.given("scales") and call.shape("scales") is not None and len(call.shape("scales")) == 2:
        rows, kk = call.shape("scales")
    else:
        kk = call["k"] if _is_int(call["k"]) and call["k"] > 0 else 1
        rows = idx[0] // kk
    return rows, kk, h, idx[0]


@finalize_spec.rule("finalize.expanded.rank", argument="expanded_permuted_rows",
                    summary="expanded rows 2-D in modes 0/2, 3-D [E, C, H] in the drop/pad modes 1/3",
                    status=TILING_STATUS, source=FINALIZE_TILING,
                    fix="pass [N*K, H] rows in modes 0/2, or [E, C, H] in modes 1/3")
def _(call):
    msg = _need_rank(call, "expanded_permuted_rows", (2, 3))
    if msg:
        return msg
    nd, mode = call.meta("expanded_permuted_rows").ndim, call["drop_pad_mode"]
    if mode in (0, 2) and nd != 2:
        return f"drop_pad_mode={mode} needs 2-D expanded rows, got {nd}-D {call.shape('expanded_permuted_rows')}"
    if mode in (1, 3) and nd != 3:
        return f"drop_pad_mode={mode} needs 3-D [E, C, H] expanded rows, got {nd}-D {call.shape('expanded_permuted_rows')}"


@finalize_spec.rule("finalize.drop_pad_mode.range", argument="drop_pad_mode", summary="drop_pad_mode in {0, 1, 2, 3}",
                    status=TILING_STATUS, source=FINALIZE_TILING, fix="0/1: column-major index (init_routing v1), 2/3: row-major")
def _(call):
    v = call["drop_pad_mode"]
    if v not in (0, 1, 2, 3) or isinstance(v, bool):
        return f"drop_pad_mode must be 0, 1, 2 or 3, got {v!r}"


@finalize_spec.rule("finalize.dtype", argument="expanded_permuted_rows",
                    summary="float16/bfloat16/float32; skip1/skip2/bias the same dtype; scales the same or float32 "
                    "(bfloat16 rows: the mixed-precision kernels)", severity="warning", status=None,
                    source=FINALIZE_DOC + " (dtype table) [D]; tiling keys *_MIX_PRECISION exist for bfloat16 rows "
                    "with float32 scales only; no host dtype check was read",
                    fix="cast the float inputs to one dtype")
def _(call):
    d = call.dtype("expanded_permuted_rows")
    if d is None:
        return None
    if d not in FLOATS:
        return f"expanded_permuted_rows dtype must be one of {FLOATS}, got {d}"
    for name in ("skip1", "skip2", "bias"):
        if call.given(name) and call.dtype(name) not in (None, d):
            return f"{name} dtype must equal expanded_permuted_rows dtype {d}, got {call.dtype(name)}"
    if call.given("scales") and call.dtype("scales") not in (None, d, "float32"):
        return f"scales dtype must be {d} or float32, got {call.dtype('scales')}"


@finalize_spec.rule("finalize.scales.half_kernel", argument="scales", summary="float16 rows need float16 scales",
                    status=None, source=f"{OT} moe/moe_finalize_routing_v2/op_kernel/moe_finalize_routing_v2.cpp (the "
                    "float16 tiling keys instantiate the kernel with half scales; no host check of the scale dtype "
                    "was found, so float32 scales would be read as half: ascend-moe rejects them)",
                    fix="cast scales to float16 (or compute in bfloat16/float32)")
def _(call):
    if call.dtype("expanded_permuted_rows") == "float16" and call.given("scales") and call.dtype("scales") == "float32":
        return "float16 rows with float32 scales: the float16 kernel reads the scales as half"


@finalize_spec.rule("finalize.index.dtype", argument="expanded_src_to_dst_row", summary="row index 1-D int32",
                    severity="warning", status=None, source=FINALIZE_DOC + " [D] (no host check of the index "
                    "rank / dtype was read)", fix="pass the 1-D int32 row index of init_routing")
def _(call):
    return _need_rank(call, "expanded_src_to_dst_row", (1,)) or _need_dtype(call, "expanded_src_to_dst_row", ("int32",))


@finalize_spec.rule("finalize.skip2.needs_skip1", argument="skip2", summary="skip2 requires skip1", status=TILING_STATUS,
                    source=FINALIZE_TILING, fix="pass skip1 as well, or move the residual into skip1")
def _(call):
    if call.given("skip2") and not call.given("skip1"):
        return "skip2 is given without skip1"


@finalize_spec.rule("finalize.bias.needs_expert_idx", argument="bias", summary="bias requires export_for_source_row (expert ids)",
                    status=TILING_STATUS, source=FINALIZE_TILING, fix="pass export_for_source_row = the top-k expert ids")
def _(call):
    if call.given("bias") and not call.given("export_for_source_row"):
        return "bias is added per expert, so export_for_source_row (the expert ids) is required"


@finalize_spec.rule("finalize.shapes", argument="scales",
                    summary="scales 2-D [rows, K>0]; skip1/skip2 [rows, H]; export_for_source_row [rows, K]; bias "
                    "[E, H] with E >= K (E = expanded.shape[0] in drop/pad modes); len(index) == rows*K",
                    status=TILING_STATUS, source=FINALIZE_TILING,
                    fix="shape the inputs as the summary says (rows = tokens, K = top-k)")
def _(call):
    if call.given("scales"):
        sc = call.shape("scales")
        if sc is None or len(sc) != 2 or sc[1] == 0:
            return f"scales must be 2-D [rows, K] with K > 0, got {sc}"
    d = _fin_dims(call)
    if d is None:
        return None
    rows, kk, h, slots = d
    out = []
    for name in ("skip1", "skip2"):
        if call.given(name) and call.shape(name) != (rows, h):
            out.append(f"{name} must be [rows={rows}, H={h}], got {call.shape(name)}")
    if call.given("export_for_source_row") and call.shape("export_for_source_row") != (rows, kk):
        out.append(f"export_for_source_row must be [rows={rows}, K={kk}], got {call.shape('export_for_source_row')}")
    if call.given("bias"):
        b, ex = call.shape("bias"), call.shape("expanded_permuted_rows")
        if b is None or len(b) != 2 or b[1] != h or b[0] == 0:
            out.append(f"bias must be [experts > 0, H={h}], got {b}")
        elif b[0] < kk:
            out.append(f"bias has {b[0]} experts, fewer than K={kk}")
        elif call["drop_pad_mode"] in (1, 3) and ex is not None and len(ex) == 3 and b[0] != ex[0]:
            out.append(f"bias.shape[0] must equal the expanded rows' experts {ex[0]} in drop/pad mode, got {b[0]}")
    if slots != rows * kk:
        out.append(f"expanded_src_to_dst_row must have rows*K = {rows}*{kk} = {rows * kk} entries, got {slots}")
    return out


@finalize_spec.rule("finalize.k.needs_v4", argument="k", summary="k != 1 needs aclnnMoeFinalizeRoutingV4", until="9.1.0",
                    status=None, kind="wrapper", source=FINALIZE_WRAPPER + " (k != 1 only through V4); V4 header (OT 03aa612a7, "
                    "2026-06-30) is on master after v9.1.0.pre [I: release mapping 9.1.0]",
                    fix="pass scales [rows, K] (K comes from its shape) and k=1, or target CANN >= 9.1.0")
def _(call):
    if call["k"] != 1:
        return f"k={call['k']} needs aclnnMoeFinalizeRoutingV4, absent before CANN 9.1.0 (target {call.cann})"


@finalize_spec.rule("finalize.k.matches_scales", argument="k", summary="k equals scales.shape[1] when both are given",
                    severity="warning", status=None, source=FINALIZE_DOC + " (V4 k attribute) [D]; the V4 host "
                    "check was not read", fix="pass k = scales.shape[1]")
def _(call):
    s = call.shape("scales") if call.given("scales") else None
    if s is not None and len(s) == 2 and call["k"] != 1 and call["k"] != s[1]:
        return f"k={call['k']} must equal scales.shape[1]={s[1]}"


@finalize_spec.rule("finalize.index.values", argument="expanded_src_to_dst_row",
                    summary="index values in [0, rows*K) (modes 0/2) or [-1, E*C) (modes 1/3)", severity="warning",
                    status=None, source=FINALIZE_DOC + " [D]; an index outside reads out of bounds on the device",
                    fix="mask dropped slots with -1 only in drop/pad modes")
def _(call):
    v = call.values("expanded_src_to_dst_row")
    ex = call.shape("expanded_permuted_rows")
    if v is None or ex is None or not v.size:
        return None
    limit = int(np.prod(ex[:-1]))
    lo = -1 if call["drop_pad_mode"] in (1, 3) else 0
    if int(v.min()) < lo or int(v.max()) >= limit:
        return f"index values must be in [{lo}, {limit}), got [{int(v.min())}, {int(v.max())}]"


# ============================================================================================
# npu_moe_gating_top_k_softmax (+ _v2)
# ============================================================================================


SOFTMAX = "npu_moe_gating_top_k_softmax"
SOFTMAX_V2 = "npu_moe_gating_top_k_softmax_v2"
softmax_spec = register_op(SOFTMAX, products=A2_A3, source=f"{SOFTMAX_DOC}; {SOFTMAX_WRAPPER}",
                           product_notes={"ascend-950": NOT_MODELLED_950, "atlas-inference": NOT_MODELLED_310P})
softmax_v2_spec = register_op(SOFTMAX_V2, products=A2_A3,
                              source=f"{OT} moe/moe_gating_top_k_softmax_v2/docs; op-plugin MoeGatingTopKSoftmaxV2 wrapper",
                              product_notes={"ascend-950": NOT_MODELLED_950})


def _softmax_rules(spec):
    p = "softmax_v2." if spec is softmax_v2_spec else "softmax."
    @spec.rule(p + "x.rank", argument="x", summary="x is 2-D or 3-D", status=None, kind="wrapper", source=SOFTMAX_WRAPPER,
               fix="pass router logits as [tokens, experts] or [batch, seq, experts]")
    def _(call):
        return _need_rank(call, "x", (2, 3))

    @spec.rule(p + "x.dtype", argument="x", summary="x dtype float16, bfloat16 or float32", status=None, kind="wrapper",
               source=SOFTMAX_WRAPPER, fix="cast x to float16, bfloat16 or float32")
    def _(call):
        return _need_dtype(call, "x", FLOATS)

    @spec.rule(p + "k.range", argument="k", summary="0 < k <= experts and k <= 1024", status=None, kind="wrapper",
               source=SOFTMAX_WRAPPER + " (0 <= k <= experts); " + SOFTMAX_DOC + " (0 < k, k <= 1024)",
               fix="pass 1 <= k <= min(experts, 1024)")
    def _(call):
        k, s = call["k"], call.shape("x")
        if not _is_int(k):
            return f"k must be an int, got {k!r}"
        e = s[-1] if s else None
        if k < 1 or k > 1024 or (e is not None and k > e):
            return f"k must satisfy 1 <= k <= min(experts={e}, 1024), got {k}"

    @spec.rule(p + "finished.shape", argument="finished", summary="finished is bool with x's leading shape",
               status=None, kind="wrapper", source=SOFTMAX_WRAPPER, fix="pass finished as a bool tensor of shape x.shape[:-1]")
    def _(call):
        if not call.given("finished"):
            return None
        m, s = call.meta("finished"), call.shape("x")
        if m is None:
            return f"finished must be a tensor, got {type(call['finished']).__name__}"
        if m.dtype != "bool":
            return f"finished dtype must be bool, got {m.dtype}"
        if s is not None and m.shape != tuple(s[:-1]):
            return f"finished must have shape x.shape[:-1]={tuple(s[:-1])}, got {m.shape}"


_softmax_rules(softmax_spec)
_softmax_rules(softmax_v2_spec)


@softmax_v2_spec.rule("softmax_v2.renorm.range", argument="renorm", summary="renorm in {0, 1}", status=None, kind="wrapper",
                      source="op-plugin MoeGatingTopKSoftmaxV2 wrapper", fix="pass renorm 0 or 1")
def _(call):
    v = call["renorm"]
    if v not in (0, 1) or isinstance(v, bool):
        return f"renorm must be 0 or 1, got {v!r}"


# ============================================================================================
# npu_moe_compute_expert_tokens, npu_moe_re_routing
# ============================================================================================


CET = "npu_moe_compute_expert_tokens"
CET_TILING = f"{OT} moe/moe_compute_expert_tokens/op_host/moe_compute_expert_tokens_tiling.cpp CheckParamsShape"
RE_ROUTING = "npu_moe_re_routing"
cet_spec = register_op(CET, products=A2_A3,
                       source=f"{OT} moe/moe_compute_expert_tokens docs; op-plugin yaml gen_opapi")
re_spec = register_op(RE_ROUTING, products=A2_A3,
                      source=f"{OT} moe/moe_re_routing/README.md; {RE_ROUTING_WRAPPER}")


@cet_spec.rule("cet.sorted.shape", argument="sorted_expert_for_source_row", summary="1-D int32 ascending expert ids",
               status=TILING_STATUS, source=CET_TILING + " (1-D, DT_INT32)",
               fix="pass the sorted expert ids as 1-D int32")
def _(call):
    return _need_rank(call, "sorted_expert_for_source_row", (1,)) or \
        _need_dtype(call, "sorted_expert_for_source_row", ("int32",))


@cet_spec.rule("cet.sorted.values", argument="sorted_expert_for_source_row", summary="ids ascending (the op binary-searches)",
               severity="warning", status=None, source=f"{OT} moe/moe_compute_expert_tokens docs [D]",
               fix="sort the expert ids first")
def _(call):
    v = call.values("sorted_expert_for_source_row")
    if v is not None and v.size > 1 and (np.diff(v.astype(np.int64)) < 0).any():
        return "sorted_expert_for_source_row must be ascending"


@cet_spec.rule("cet.num_expert.positive", argument="num_expert", summary="num_expert > 0", status=TILING_STATUS,
               source=CET_TILING + " (numOfExpert == 0; a negative count is rejected here as well, the tiling "
               "reads it as int32 and does not test the sign)", fix="pass the number of experts")
def _(call):
    v = call["num_expert"]
    if not _is_int(v) or v <= 0:
        return f"num_expert must be an int > 0, got {v!r}"


@re_spec.rule("re_routing.tokens.rank", argument="tokens", summary="tokens 2-D, counts 2-D [ranks, experts]", status=None, kind="wrapper",
              source=RE_ROUTING_WRAPPER, fix="pass tokens [rows, H] and counts [ranks, experts]")
def _(call):
    return _need_rank(call, "tokens", (2,)) or _need_rank(call, "expert_token_num_per_rank", (2,))


@re_spec.rule("re_routing.dtypes", argument="expert_token_num_per_rank",
              summary="counts int32 or int64; tokens int8/float16/bfloat16; per_token_scales float32 [rows]",
              status=161002, source=f"{OT} moe/moe_re_routing/op_host/moe_re_routing_def.cpp MoeReRouting (A2/A3 "
              "config: tokens DT_FLOAT16/DT_BF16/DT_INT8, counts DT_INT32/DT_INT64, per_token_scales DT_FLOAT; the "
              "generated aclnnMoeReRouting rejects other dtypes); the [rows] shape of the scales: "
              f"{OT} moe/moe_re_routing/README.md",
              fix="cast the counts to int32/int64 and the scales to float32")
def _(call):
    out = _need_dtype(call, "expert_token_num_per_rank", ("int32", "int64"))
    out = out or _need_dtype(call, "tokens", ("int8", "float16", "bfloat16"))
    if out:
        return out
    if call.given("per_token_scales"):
        m, t = call.meta("per_token_scales"), call.shape("tokens")
        if m is None or m.dtype != "float32" or (t is not None and m.shape != (t[0],)):
            return f"per_token_scales must be float32 [rows={t[0] if t else '?'}], got {None if m is None else (m.shape, m.dtype)}"


@re_spec.rule("re_routing.attrs", argument="idx_type", summary="expert_token_num_type in {0 cumsum, 1 count}, idx_type in {0 gather, 1 scatter}",
              severity="warning", status=None, source=f"{OT} moe/moe_re_routing/README.md [D] (the host check of "
              "the attribute values was not read)", fix="pass 0 or 1")
def _(call):
    out = []
    for name in ("expert_token_num_type", "idx_type"):
        v = call[name]
        if v not in (0, 1) or isinstance(v, bool):
            out.append(f"{name} must be 0 or 1, got {v!r}")
    return out


@re_spec.rule("re_routing.counts.total", argument="expert_token_num_per_rank", summary="the counts sum to at most the token rows",
              severity="warning", status=None, source=f"{OT} moe/moe_re_routing/README.md [D]",
              fix="pass the counts the all-to-all delivered")
def _(call):
    v, t = call.values("expert_token_num_per_rank"), call.shape("tokens")
    if v is not None and t is not None and (int(v.sum()) > t[0] or (v < 0).any()):
        return f"the counts must be >= 0 and sum to <= {t[0]} rows, got sum {int(v.sum())}"


# ============================================================================================
# npu_moe_gating_top_k_backward (the autograd backward of npu_moe_gating_top_k)
# ============================================================================================


GATING_BWD = "npu_moe_gating_top_k_backward"
GATING_BWD_DOC = f"{OT} moe/moe_gating_top_k_backward/docs/aclnnMoeGatingTopKBackward.md"
gating_bwd_spec = register_op(GATING_BWD, products=A2_A3, source=GATING_BWD_DOC,
                              product_notes={"ascend-950": "aclnnMoeGatingTopKBackward does not support the 950 (doc)"})


# the grad ops' documented shapes/dtypes: no host check of them was read, but outside them the kernel reads and
# writes its buffers with the wrong geometry or dtype, so these are kernel rules (undefined result, no status)
UNDEFINED_OUTSIDE = "outside them the kernel indexes its buffers with the wrong geometry or dtype (undefined result) [I]"


@gating_bwd_spec.rule("gating_bwd.x_norm.spec", argument="x_norm", summary="x_norm float32 2-D [M, N] with 2 <= N <= 2048",
                      severity="error", status=None, kind="kernel",
                      source=GATING_BWD_DOC + " (return codes table) [D]; " + UNDEFINED_OUTSIDE + "; no "
                      "public host code of aclnnMoeGatingTopKBackward was found",
                      fix="pass the float32 norm_out of the forward (out_flag=True)")
def _(call):
    msg = _need_rank(call, "x_norm", (2,)) or _need_dtype(call, "x_norm", ("float32",))
    if msg:
        return msg
    n = call.shape("x_norm")[1]
    if not 2 <= n <= 2048:
        return f"x_norm.shape[1] (experts) must be in [2, 2048], got {n}"


@gating_bwd_spec.rule("gating_bwd.grad_y.spec", argument="grad_y",
                      summary="grad_y float16/bfloat16/float32 [M, K], 1 <= K <= N; expert_idx int32 of the same shape",
                      severity="error", status=None, kind="kernel",
                      source=GATING_BWD_DOC + " (return codes table) [D]; " + UNDEFINED_OUTSIDE + "; no "
                      "public host code of aclnnMoeGatingTopKBackward was found",
                      fix="pass the gradient of y and the forward's expert_idx")
def _(call):
    msg = _need_rank(call, "grad_y", (2,)) or _need_dtype(call, "grad_y", FLOATS) or \
        _need_rank(call, "expert_idx", (2,)) or _need_dtype(call, "expert_idx", ("int32",))
    if msg:
        return msg
    g, i, x = call.shape("grad_y"), call.shape("expert_idx"), call.shape("x_norm")
    if g != i:
        return f"expert_idx shape {i} must equal grad_y shape {g}"
    if x is not None and len(x) == 2 and (g[0] != x[0] or not 1 <= g[1] <= x[1]):
        return f"grad_y must be [M={x[0]}, K] with 1 <= K <= {x[1]}, got {g}"


@gating_bwd_spec.rule("gating_bwd.norm_type.sigmoid", argument="norm_type", summary="norm_type must be 1 (sigmoid); renorm is reserved (0)",
                      status=None, severity="not-simulated",
                      source=GATING_BWD_DOC + " (\"当前仅支持1\": the docs state norm_type 1 only; host check not "
                      "read); the simulator computes the sigmoid-gate backward only",
                      fix="use the sigmoid gate (norm_type=1, renorm=0)")
def _(call):
    if call["norm_type"] != 1:
        return f"only the sigmoid gate (norm_type=1) has a backward, got norm_type={call['norm_type']!r}"
    if call["renorm"] != 0:
        return f"renorm is a reserved parameter and must be 0, got {call['renorm']!r}"


# ============================================================================================
# entry-point selection (what op-plugin calls)
# ============================================================================================

# op-plugin sends the "V2 case" to aclnnMoeInitRoutingV2 only before this release
INIT_V2_CASE_UNTIL = "8.5.0alpha003"


def init_routing_entry(product: str, cann, *, expert_num: int, active_expert_range: Sequence[int] = (),
                       hidden: int, quant_mode: int = -1, expert_tokens_num_type: int = 0) -> str:
    """``"V2"`` or ``"V3"``: the aclnn entry op-plugin's npu_moe_init_routing_v2 calls (spec 0 / 1.3).

    V2 on the Atlas inference series, or in the "V2 case" (expert_num 128, range [0, 128], hidden 2048,
    unquantised, count type) before CANN 8.5.0alpha003; V3 otherwise.  The V2 path forces dropless count mode
    (drop_pad_mode and the flag are overridden).  An empty range counts as the defaulted [0, expert_num] here
    (the wrapper reads the empty list out of bounds; its intent is the default)."""
    from ..products import CannVersion
    if product == "atlas-inference":
        return "V2"
    rng = tuple(int(v) for v in active_expert_range) if len(active_expert_range) == 2 else (0, int(expert_num))
    v2_case = (expert_num == 128 and rng == (0, 128) and hidden == 2048 and quant_mode == -1
               and expert_tokens_num_type == 1)
    return "V2" if v2_case and CannVersion(cann) < CannVersion(INIT_V2_CASE_UNTIL) else "V3"


FINALIZE_ENTRIES = ("aclnnMoeFinalizeRoutingV4", "aclnnMoeFinalizeRoutingV2", "aclnnMoeFinalizeRouting")


def finalize_routing_entry(available: Sequence[str], k: int = 1) -> str:
    """The finalize entry op-plugin calls: V4 > V2 > V1 by availability; ``k != 1`` needs V4.  Raises
    ValueError naming what is missing when no usable entry point is available."""
    have = set(available)
    for name in FINALIZE_ENTRIES:
        if name in have and (k == 1 or name == "aclnnMoeFinalizeRoutingV4"):
            return name
    need = "aclnnMoeFinalizeRoutingV4" if k != 1 else " or ".join(FINALIZE_ENTRIES)
    raise ValueError(f"npu_moe_finalize_routing: k={k} needs {need}; the loaded CANN provides none of them")


# ============================================================================================
# the backward ops of permute / unpermute
# ============================================================================================

PERMUTE_GRAD = "npu_moe_token_permute_grad"
UNPERMUTE_GRAD = "npu_moe_token_unpermute_grad"
PERMUTE_GRAD_DOC = f"{OT} moe/moe_token_permute_grad/docs/aclnnMoeTokenPermuteGrad.md"
UNPERMUTE_GRAD_DOC = f"{OT} moe/moe_token_unpermute_grad/docs/aclnnMoeTokenUnpermuteGrad.md"
permute_grad_spec = register_op(PERMUTE_GRAD, products=A2_A3, source=PERMUTE_GRAD_DOC,
                                product_notes={"ascend-950": NOT_MODELLED_950})
unpermute_grad_spec = register_op(UNPERMUTE_GRAD, products=A2_A3, source=UNPERMUTE_GRAD_DOC,
                                  product_notes={"ascend-950": NOT_MODELLED_950})


@permute_grad_spec.rule("permute_grad.grad.spec", argument="grad_permuted_tokens",
                        summary="grad_permuted_tokens 2-D float16/bfloat16/float32; sorted_indices 1-D int32 with "
                        "tokens*k entries", severity="error", status=None, kind="kernel",
                        source=PERMUTE_GRAD_DOC + " (parameter table) [D]; " + UNDEFINED_OUTSIDE
                        + "; aclnn_moe_token_permute_grad.cpp "
                        "forwards A2/A3 calls unchecked to the generated aclnnInnerMoeTokenPermuteGrad and its tiling "
                        "checks were not read",
                        fix="pass the gradient of permuted_tokens and the forward's sorted_indices")
def _(call):
    msg = _need_rank(call, "grad_permuted_tokens", (2,)) or _need_dtype(call, "grad_permuted_tokens", FLOATS) or \
        _need_rank(call, "sorted_indices", (1,)) or _need_dtype(call, "sorted_indices", ("int32",))
    if msg:
        return msg
    t, ix, si = call.shape("tokens"), call.shape("indices"), call.shape("sorted_indices")
    if t is not None and ix is not None and ix[0] != t[0]:
        return f"indices.shape[0] must equal tokens.shape[0]={t[0]}, got {ix[0]}"
    if ix is not None and si[0] != int(np.prod(ix)):
        return f"sorted_indices must have indices.numel()={int(np.prod(ix))} entries, got {si[0]}"


def _padded_mode_unsupported(call):
    if call["padded_mode"]:
        return "padded_mode=True is documented as unsupported; ascend-moe does not model it"


permute_grad_spec.rule("permute_grad.padded_mode.unsupported", argument="padded_mode", summary="padded_mode must be False",
                       status=None, severity="not-simulated", source=PERMUTE_GRAD_DOC + " (only False); not modelled",
                       fix="pass padded_mode=False")(_padded_mode_unsupported)


@unpermute_grad_spec.rule("unpermute_grad.grad.spec", argument="grad_unpermuted_tokens",
                          summary="permuted_tokens / grad 2-D float with one hidden size; sorted_indices 1-D int32 with "
                          "grad rows * k entries; probs 2-D [rows, k]", severity="error", status=None, kind="kernel",
                          source=UNPERMUTE_GRAD_DOC + " (parameter table) [D]; " + UNDEFINED_OUTSIDE
                          + "; aclnn_moe_token_unpermute_grad.cpp forwards A2/A3 calls unchecked to the generated "
                          "aclnnInnerMoeTokenUnpermuteGrad and its tiling checks were not read",
                          fix="pass the forward's tensors and the gradient of its output")
def _(call):
    msg = _need_rank(call, "permuted_tokens", (2,)) or _need_dtype(call, "permuted_tokens", FLOATS) or \
        _need_rank(call, "grad_unpermuted_tokens", (2,)) or _need_dtype(call, "grad_unpermuted_tokens", FLOATS) or \
        _need_rank(call, "sorted_indices", (1,)) or _need_dtype(call, "sorted_indices", ("int32",)) or \
        _need_rank(call, "probs", (2,), optional=True)
    if msg:
        return msg
    p, g, si = call.shape("permuted_tokens"), call.shape("grad_unpermuted_tokens"), call.shape("sorted_indices")
    if p[1] != g[1]:
        return f"grad_unpermuted_tokens hidden size {g[1]} must equal permuted_tokens' {p[1]}"
    k = call.shape("probs")[1] if call.given("probs") else 1
    if call.given("probs") and call.shape("probs")[0] != g[0]:
        return f"probs must have grad rows {g[0]} rows, got {call.shape('probs')}"
    if si[0] != g[0] * k:
        return f"sorted_indices must have rows*k = {g[0]}*{k} = {g[0] * k} entries, got {si[0]}"


unpermute_grad_spec.rule("unpermute_grad.padded_mode.unsupported", argument="padded_mode",
                         summary="padded_mode must be False", status=None, severity="not-simulated",
                         source=UNPERMUTE_GRAD_DOC + " (only False); not modelled",
                         fix="pass padded_mode=False")(_padded_mode_unsupported)


@re_spec.rule("re_routing.tokens_dtype.unsupported", argument="tokens_dtype",
              summary="tokens_dtype (re-typing for low-bit formats) is not modelled", status=None, severity="not-simulated",
              source=RE_ROUTING_WRAPPER + " (TensorWrapper re-typing of tokens)",
              fix="leave tokens_dtype None and pass tokens in their element dtype")
def _(call):
    if call.get("tokens_dtype") is not None:
        return f"tokens_dtype={call['tokens_dtype']!r}: the low-bit re-typing is not modelled by ascend-moe"
