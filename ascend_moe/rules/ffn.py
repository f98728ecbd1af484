"""Rules of ``npu_ffn`` (torch_npu wrapper + aclnnFFNV2 host checks + tiling; spec gating-and-ffn.md
B.1.2, B.2, B.3, B.4.3, B.5, B.7).

Scenario of a call (decides which rules apply), as the host's ``CheckOptionalParams`` decides it:
GLU activation -> GLU; x int8 -> quant; int8 weights -> antiquant; else non-quant (fp16 high precision /
high performance by ``inner_precise``, or bf16).  Value rules (expert token counts) pass silently when
the values are not concrete (meta / fake / device tensors), as the V3 device path cannot check them.
"""
from __future__ import annotations

from typing import Optional

from . import register_op
from ..products import A2_A3
from ..sim import ffn as _sim

P310 = frozenset({"atlas-inference"})
_A2A3 = A2_A3

spec = register_op(
    "npu_ffn", products=A2_A3 | P310,
    source="op-plugin op_plugin/ops/opapi/FFNKernelNpuOpApi.cpp; ops-transformer ffn/ffn/op_host "
           "(aclnn_ffn.cpp CheckFmapWeightShape/CheckExpertTokens/CheckOptionalParams/CheckGlu, "
           "ffn_tiling.cpp); docs aclnnFFN*.md, torch_npu-npu_ffn.md")

QUANT_ARGS = ("scale", "offset", "deq_scale1", "deq_scale2")
ANTIQUANT_ARGS = ("antiquant_scale1", "antiquant_scale2", "antiquant_offset1", "antiquant_offset2")
INT32_MAX = 2 ** 31 - 1
DTYPE_SIZE = {"float16": 2, "bfloat16": 2, "int8": 1}


# ------------------------------------------------------------------------------------------------
# facts of a call
# ------------------------------------------------------------------------------------------------

def _act(call) -> Optional[str]:
    a = call.get("activation")
    return a.lower() if isinstance(a, str) else None


def _glu(call) -> bool:
    return _act(call) in _sim.GLU_ACTIVATIONS


def _tokens_arg(call) -> Optional[str]:
    """Which expert-token argument is in use (``expert_tokens`` wins if both are given)."""
    for name in ("expert_tokens", "expert_tokens_index"):
        if _tokens_len(call, name):
            return name
    return None


def _tokens_len(call, name: str) -> int:
    v = call.get(name)
    if v is None:
        return 0
    if isinstance(v, (list, tuple)):
        return len(v)
    m = call.meta(name)
    if m is None:
        return 0
    return m.shape[0] if m.ndim == 1 else m.numel


def _has_experts(call) -> bool:
    return _tokens_arg(call) is not None


def _num_experts(call) -> int:
    name = _tokens_arg(call)
    return _tokens_len(call, name) if name else 0


def _ip(call) -> Optional[int]:
    v = call.get("inner_precise")
    return 0 if v is None else v


def _x_dtype(call) -> Optional[str]:
    return call.dtype("x")


def _w_dtype(call) -> Optional[str]:
    return call.dtype("weight1")


def _is_quant(call) -> bool:
    return _x_dtype(call) == "int8"


def _is_antiquant(call) -> bool:
    return not _glu(call) and _x_dtype(call) in ("float16", "bfloat16") and _w_dtype(call) in ("int8", "int4")


def _y_dtype(call) -> str:
    return _sim.y_dtype(_x_dtype(call) or "", call.given("deq_scale1"), call.get("output_dtype"))


def _m(call) -> Optional[int]:
    s = call.shape("x")
    if s is None or len(s) < 1:
        return None
    m = 1
    for d in s[:-1]:
        m *= d
    return m


def _dims(call, name):
    """(K, N) of a weight (last two dims) or None."""
    s = call.shape(name)
    if s is None or len(s) < 2:
        return None
    return s[-2], s[-1]


# ------------------------------------------------------------------------------------------------
# products
# ------------------------------------------------------------------------------------------------

@spec.rule("ffn.a3_docs", argument="(product)", products={"atlas-a3"}, severity="warning",
           summary="aclnnFFN/V2/V3 docs mark Atlas A3 unsupported (code and torch_npu docs support it)",
           source="ops-transformer ffn/ffn/docs/aclnnFFN*.md product tables (A3 x) vs ffn/ffn/README.md, "
                  "op_host/ffn_def.cpp (ascend910_93 registered) and torch_npu-npu_ffn.md (A3 supported); "
                  "spec B.9.1",
           fix="nothing to do unless you need the aclnn docs' guarantee; ASCEND_MOE_STRICT_DOCS=1 turns "
               "this into an error")
def _(call):
    return ("npu_ffn on atlas-a3: the aclnnFFN/FFNV2/FFNV3 docs list Atlas A3 as unsupported; the kernel "
            "is registered for ascend910_93 and torch_npu documents A3 support")


@spec.rule("ffn.310p_docs", argument="(product)", products=P310, severity="warning",
           summary="torch_npu's npu_ffn doc lists Atlas A2/A3 only; aclnnFFNV2/V3 (which torch_npu calls) "
                   "support the Atlas inference series (310P) with restrictions",
           source="torch_npu-npu_ffn.md 支持的型号 (A2, A3) vs aclnnFFNV2.md/aclnnFFNV3.md and ffn_def.cpp "
                  "(ascend310p registered); aclnnFFN (V1) rejects 310P; spec B.7",
           fix="nothing to do if your torch_npu build dispatches to aclnnFFNV2 on 310P; "
               "ASCEND_MOE_STRICT_DOCS=1 turns this into an error")
def _(call):
    return ("npu_ffn on atlas-inference: torch_npu documents npu_ffn for Atlas A2/A3 only; aclnnFFNV2 "
            "accepts 310P (fp16, 2-D x, inner_precise=1, no experts/quant)")


# ------------------------------------------------------------------------------------------------
# activation, x, weights
# ------------------------------------------------------------------------------------------------

@spec.rule("ffn.activation", argument="activation",
           summary="activation is one of fastgelu, gelu, relu, silu, geglu, swiglu, reglu (case-insensitive)",
           source="aclnn_ffn.cpp GetActiveType (lower-cases the input)",
           fix="pass one of: fastgelu, gelu, relu, silu, geglu, swiglu, reglu")
def _(call):
    a = call.get("activation")
    if not isinstance(a, str) or a.lower() not in _sim.ACTIVATIONS:
        return f"activation must be one of {', '.join(_sim.ACTIVATIONS)}, got activation={a!r}"


@spec.rule("ffn.x_rank", argument="x", summary="2 <= x.dim() <= 8",
           source="FFNKernelNpuOpApi.cpp (TORCH_CHECK x.dim() in [2, 8])",
           fix="reshape x to [..., K1] with 2 to 8 dims")
def _(call):
    s = call.shape("x")
    if s is None:
        return f"x must be a tensor, got x={type(call.get('x')).__name__}"
    if not 2 <= len(s) <= 8:
        return f"x must have 2 to 8 dims, got x.shape={s} ({len(s)} dims)"


@spec.rule("ffn.x_dtype", argument="x", summary="x is float16, bfloat16 or int8",
           source="aclnn_ffn.cpp CheckOptionalParams; aclnnFFNV2.md dtype table",
           fix="pass x as float16, bfloat16, or int8 (quantised)")
def _(call):
    d = _x_dtype(call)
    if d is not None and d not in ("float16", "bfloat16", "int8"):
        return f"x dtype must be float16, bfloat16 or int8, got x.dtype={d}"


@spec.rule("ffn.weight_dtype", argument="weight1",
           summary="weight1 dtype by x: fp16 x -> fp16 or int8 (antiquant); bf16 x -> bf16 or int8; "
                   "int8 x -> int8",
           source="aclnn_ffn.cpp CheckOptionalParams / SelectTilingKey; torch_npu-npu_ffn.md (int8 only "
                  "for antiquant weights on the torch surface; int4 is aclnn-only)",
           fix="use weights of x's dtype, or int8 weights with antiquant_scale/offset, or int8 x and "
               "weights for the quantised path")
def _(call):
    xd, wd = _x_dtype(call), _w_dtype(call)
    allowed = {"float16": ("float16", "int8"), "bfloat16": ("bfloat16", "int8"), "int8": ("int8",)}.get(xd)
    if allowed is None or wd is None:
        return None
    if _glu(call):
        return None  # the GLU rule names its own dtype requirement
    if wd not in allowed:
        return f"with x.dtype={xd} weight1 must be {' or '.join(allowed)}, got weight1.dtype={wd}"


@spec.rule("ffn.weight2_dtype", argument="weight2", summary="weight2 dtype == weight1 dtype",
           source="aclnn_ffn.cpp CheckOptionalParams", fix="give weight2 the dtype of weight1")
def _(call):
    d1, d2 = _w_dtype(call), call.dtype("weight2")
    if d1 is not None and d2 is not None and d1 != d2:
        return f"weight2.dtype must equal weight1.dtype={d1}, got weight2.dtype={d2}"


def _weight_rank_rule(name: str):
    @spec.rule(f"ffn.{name}_rank", argument=name,
               summary=f"{name} is 2-D [K, N] without experts, 3-D [E, K, N] with expert tokens",
               source="aclnn_ffn.cpp CheckFmapWeightShape",
               fix="pass 2-D weights, or 3-D weights with expert_tokens")
    def _(call):
        want = 3 if _has_experts(call) else 2
        s = call.shape(name)
        if s is None:
            return f"{name} must be a tensor, got {name}={type(call.get(name)).__name__}"
        if len(s) != want:
            mode = "with expert tokens" if want == 3 else "without expert tokens"
            return f"{name} must be {want}-D {mode}, got {name}.shape={s}"


_weight_rank_rule("weight1")
_weight_rank_rule("weight2")


@spec.rule("ffn.k1_match", argument="weight1", summary="x.shape[-1] == weight1.shape[-2] (K1)",
           source="FFNKernelNpuOpApi.cpp; aclnn_ffn.cpp CheckFmapWeightShape",
           fix="weight1 must be [K1, N1] (or [E, K1, N1]) with K1 = x.shape[-1]")
def _(call):
    s, d = call.shape("x"), _dims(call, "weight1")
    if s and d and s[-1] != d[0]:
        return f"weight1.shape[-2] must equal x.shape[-1]={s[-1]}, got weight1.shape={call.shape('weight1')}"


@spec.rule("ffn.k1_max", argument="weight1", summary="K1 = weight1.shape[-2] < 65536",
           source="aclnn_ffn.cpp CheckFmapWeightShape (K <= 65535)", fix="use K1 <= 65535")
def _(call):
    d = _dims(call, "weight1")
    if d and d[0] > 65535:
        return f"K1 = weight1.shape[-2] must be < 65536, got K1={d[0]}"


@spec.rule("ffn.k2_max", argument="weight2", summary="K2 = weight2.shape[-2] < 65536",
           source="aclnn_ffn.cpp CheckFmapWeightShape (K <= 65535)", fix="use K2 <= 65535")
def _(call):
    d = _dims(call, "weight2")
    if d and d[0] > 65535:
        return f"K2 = weight2.shape[-2] must be < 65536, got K2={d[0]}"


@spec.rule("ffn.glu_n1_even", argument="weight1",
           summary="geglu/swiglu/reglu: N1 = weight1.shape[-1] is even (two halves)",
           source="aclnn_ffn.cpp CheckGlu", fix="use an even N1 with a gated activation")
def _(call):
    d1 = _dims(call, "weight1")
    if d1 and _glu(call) and d1[1] % 2:
        return f"with activation={_act(call)} N1 = weight1.shape[-1] must be even, got N1={d1[1]}"


@spec.rule("ffn.n1_k2", argument="weight2",
           summary="K2 == N1 (fastgelu/gelu/relu/silu); K2 == N1/2 (geglu/swiglu/reglu)",
           source="aclnn_ffn.cpp CheckFmapWeightShape / CheckGlu",
           fix="weight2.shape[-2] must be N1 (or N1/2 for the gated activations)")
def _(call):
    d1, d2 = _dims(call, "weight1"), _dims(call, "weight2")
    if not d1 or not d2 or _act(call) not in _sim.ACTIVATIONS:
        return None
    n1, k2 = d1[1], d2[0]
    if _glu(call):
        if n1 % 2 == 0 and k2 != n1 // 2:
            return (f"with activation={_act(call)} K2 = weight2.shape[-2] must be N1/2={n1 // 2}, "
                    f"got K2={k2}")
    elif k2 != n1:
        return f"with activation={_act(call)} K2 = weight2.shape[-2] must equal N1={n1}, got K2={k2}"


@spec.rule("ffn.n2_k1", argument="weight2",
           summary="N2 == K1 (weight2.shape[-1] == x.shape[-1]) for fastgelu/gelu/relu/silu",
           source="aclnn_ffn.cpp CheckFmapWeightShape (the GLU branch returns before this check)",
           fix="weight2 must be [N1, K1]: the FFN output has x's hidden size")
def _(call):
    s, d2 = call.shape("x"), _dims(call, "weight2")
    if s and d2 and not _glu(call) and d2[1] != s[-1]:
        return f"N2 = weight2.shape[-1] must equal K1 = x.shape[-1]={s[-1]}, got N2={d2[1]}"


@spec.rule("ffn.m_max", argument="x",
           summary="M (rows of x) aligned to 32 bytes is below INT32_MAX",
           source="ffn tiling ('M轴在32Byte对齐后小于INT32的最大值')", fix="split the call into fewer rows")
def _(call):
    m, d = _m(call), _x_dtype(call)
    if m is None or d not in DTYPE_SIZE:
        return None
    per = 32 // DTYPE_SIZE[d]
    if m > (INT32_MAX // per) * per:
        return f"M = prod(x.shape[:-1]) must be <= {(INT32_MAX // per) * per}, got M={m}"


def _format_rule(name: str):
    @spec.rule(f"ffn.{name}_format", argument=name, products=_A2A3,
               summary=f"{name} is ND (FRACTAL_NZ is rejected on A2/A3)",
               source="aclnn_ffn.cpp (private formats rejected)",
               fix=f"pass {name} in ND (npu_format_cast({name}, 2))")
    def _(call):
        m = call.meta(name)
        if m is not None and m.format != "ND":
            return f"{name} must be ND, got {name} format={m.format}"


for _n in ("x", "weight1", "weight2"):
    _format_rule(_n)


# ------------------------------------------------------------------------------------------------
# expert tokens
# ------------------------------------------------------------------------------------------------

@spec.rule("ffn.tokens_exclusive", argument="expert_tokens_index",
           summary="expert_tokens and expert_tokens_index are not both given",
           source="FFNKernelNpuOpApi.cpp TORCH_CHECK", fix="pass either counts (expert_tokens) or "
                                                          "cumulative ends (expert_tokens_index)")
def _(call):
    # torch_npu checks has_value() of both optionals: an explicit empty list counts as given
    if call.get("expert_tokens") is not None and call.get("expert_tokens_index") is not None:
        return ("expert_tokens and expert_tokens_index must not both be given, got "
                f"expert_tokens (length {_tokens_len(call, 'expert_tokens')}) and expert_tokens_index "
                f"(length {_tokens_len(call, 'expert_tokens_index')})")


@spec.rule("ffn.expert_num", argument="expert_tokens", summary="at most 256 experts",
           source="ffn tiling ('tokenNum > MAX_EXPERT_NUM (256)'); aclnnFFN.md",
           fix="use at most 256 experts per call")
def _(call):
    name = _tokens_arg(call)
    if name and _tokens_len(call, name) > _sim.MAX_EXPERT_NUM:
        return f"{name} may list at most 256 experts, got len({name})={_tokens_len(call, name)}"


def _expert_weights_rule(name: str):
    @spec.rule(f"ffn.{name}_experts", argument=name,
               summary=f"{name}.shape[0] == number of experts (length of the expert tokens)",
               source="aclnn_ffn.cpp CheckFmapWeightShape", fix="stack one [K, N] weight per expert")
    def _(call):
        e = _num_experts(call)
        s = call.shape(name)
        if e and s is not None and len(s) == 3 and s[0] != e:
            return (f"{name}.shape[0] must equal the number of experts len({_tokens_arg(call)})={e}, "
                    f"got {name}.shape={s}")


_expert_weights_rule("weight1")
_expert_weights_rule("weight2")


@spec.rule("ffn.tokens_sum", argument="expert_tokens",
           summary="expert_tokens counts >= 0 and sum to M; expert_tokens_index non-negative, "
                   "non-decreasing, last == M",
           source="aclnn_ffn.cpp CheckExpertTokens; op-plugin test_npu_ffn_expert_tokens_index (cumsum)",
           fix="counts must cover every row of x exactly once (sum == M); the index form is cumsum(counts)")
def _(call):
    name = _tokens_arg(call)
    m = _m(call)
    if not name or m is None:
        return None
    v = call.values(name)
    if v is None:
        return None
    v = [int(i) for i in v.reshape(-1)]
    if name == "expert_tokens":
        neg = [i for i in v if i < 0]
        if neg:
            return f"expert_tokens counts must be >= 0, got expert_tokens={v}"
        if sum(v) != m:
            return f"sum(expert_tokens) must equal M = prod(x.shape[:-1])={m}, got sum={sum(v)} ({v})"
        return None
    if any(i < 0 for i in v):
        return f"expert_tokens_index values must be >= 0, got expert_tokens_index={v}"
    if any(b < a for a, b in zip(v, v[1:])):
        return f"expert_tokens_index must be non-decreasing (cumulative ends), got expert_tokens_index={v}"
    if v[-1] != m:
        return f"expert_tokens_index[-1] must equal M = prod(x.shape[:-1])={m}, got {v[-1]} ({v})"


# ------------------------------------------------------------------------------------------------
# inner_precise, GLU
# ------------------------------------------------------------------------------------------------

@spec.rule("ffn.inner_precise_value", argument="inner_precise",
           summary="inner_precise is 0 (high precision) or 1 (high performance)",
           source="ffn tiling (values other than 0/1 fail)", fix="pass inner_precise=0 or 1")
def _(call):
    ip = _ip(call)
    if ip not in (0, 1) or isinstance(ip, bool):
        return f"inner_precise must be 0 or 1, got inner_precise={ip!r}"


@spec.rule("ffn.bf16_inner_precise", argument="inner_precise",
           summary="bf16 (non-quantised) runs only in high precision: inner_precise == 0",
           source="aclnn_ffn.cpp ('FFN bfloat16 is only support high precision now!')",
           fix="pass inner_precise=0 (or leave it None) for bfloat16")
def _(call):
    if _x_dtype(call) == "bfloat16" and _w_dtype(call) == "bfloat16" and _ip(call) != 0:
        return f"bfloat16 FFN supports only inner_precise=0, got inner_precise={_ip(call)!r}"


def _glu_dtype_rule(name: str):
    @spec.rule(f"ffn.glu_{name}_dtype", argument=name,
               summary=f"geglu/swiglu/reglu: {name} is float16",
               source="aclnn_ffn.cpp CheckGlu", fix="use float16 x and weights with a gated activation")
    def _(call):
        d = call.dtype(name)
        if _glu(call) and d is not None and d != "float16":
            return f"activation={_act(call)} needs float16 {name}, got {name}.dtype={d}"


for _n in ("x", "weight1", "weight2"):
    _glu_dtype_rule(_n)


@spec.rule("ffn.glu_inner_precise", argument="inner_precise",
           summary="geglu/swiglu/reglu: high performance only (inner_precise == 1)",
           source="aclnn_ffn.cpp CheckGlu; tiling rejects GEGLU with inner_precise != 1",
           fix="pass inner_precise=1 with a gated activation")
def _(call):
    if _glu(call) and _ip(call) != 1:
        return f"activation={_act(call)} needs inner_precise=1, got inner_precise={_ip(call)!r}"


@spec.rule("ffn.glu_experts", argument="expert_tokens",
           summary="geglu/swiglu/reglu: no expert tokens (plain FFN only)",
           source="aclnn_ffn.cpp CheckGlu", fix="drop expert_tokens, or use fastgelu/gelu/relu/silu")
def _(call):
    name = _tokens_arg(call)
    if _glu(call) and name:
        return f"activation={_act(call)} does not support experts, got {name} of length {_tokens_len(call, name)}"


@spec.rule("ffn.glu_quant_args", argument="scale", severity="warning",
           summary="geglu/swiglu/reglu take no quant/antiquant arguments (docs; the host does not check: "
                   "the GLU kernel ignores them)",
           source="aclnnFFNV2.md GLU scenario; aclnn_ffn.cpp CheckGlu does not check them (spec B.5)",
           fix="drop the quant/antiquant arguments with a gated activation")
def _(call):
    if not _glu(call):
        return None
    given = [n for n in QUANT_ARGS + ANTIQUANT_ARGS if call.given(n)]
    if given:
        return f"activation={_act(call)} ignores quant/antiquant arguments, got {', '.join(given)}"


# ------------------------------------------------------------------------------------------------
# bias
# ------------------------------------------------------------------------------------------------

def _bias_dtype_expected(call) -> Optional[str]:
    xd = _x_dtype(call)
    if xd == "int8":
        return "int32"
    if xd == "bfloat16":
        return "float32"
    if xd == "float16":
        return "float16"
    return None


def _bias_rule(idx: int):
    name = f"bias{idx}"

    @spec.rule(f"ffn.{name}_dtype", argument=name,
               summary=f"{name} dtype: float16 (fp16 x, incl. antiquant and GLU), float32 (bf16 x), "
                       "int32 (int8 x)",
               source="aclnn_ffn.cpp CheckOptionalParams / CheckGlu; aclnnFFNV2.md dtype table",
               fix="float16 bias for float16 x, float32 bias for bfloat16 x, int32 bias for int8 x")
    def _(call):
        d = call.dtype(name)
        want = _bias_dtype_expected(call)
        if d is not None and want is not None and d != want:
            return f"with x.dtype={_x_dtype(call)} {name} must be {want}, got {name}.dtype={d}"

    @spec.rule(f"ffn.{name}_shape", argument=name,
               summary=f"{name} is [N{idx}] without experts, [E, N{idx}] with experts",
               source="aclnn_ffn.cpp CheckBiasDimNum", fix=f"shape {name} like weight{idx}'s N (per expert)")
    def _(call):
        s = call.shape(name)
        d = _dims(call, f"weight{idx}")
        if s is None or d is None:
            return None
        e = _num_experts(call)
        want = (e, d[1]) if e else (d[1],)
        if tuple(s) != want:
            return f"{name} must have shape {list(want)}, got {name}.shape={s}"


_bias_rule(1)
_bias_rule(2)


# ------------------------------------------------------------------------------------------------
# quant / antiquant argument presence
# ------------------------------------------------------------------------------------------------

def _quant_absent_rule(arg: str):
    @spec.rule(f"ffn.nonquant_{arg}", argument=arg,
               summary=f"{arg} is given only with int8 x (quantised mode)",
               source="aclnn_ffn.cpp CheckOptionalParams (non-quant and antiquant paths reject quant params)",
               fix=f"drop {arg}, or pass int8 x and weights for the quantised path")
    def _(call):
        if call.given(arg) and not _is_quant(call) and not _glu(call) and _x_dtype(call) is not None:
            return f"{arg} is only for int8 x (quantised mode), got {arg} with x.dtype={_x_dtype(call)}"


def _quant_required_rule(arg: str):
    @spec.rule(f"ffn.quant_{arg}_required", argument=arg, status=161001,
               summary=f"int8 x (quantised mode) requires {arg}",
               source="aclnn_ffn.cpp CheckOptionalParams (scale, offset, deqScale1, deqScale2 all required)",
               fix=f"pass {arg} for the quantised path")
    def _(call):
        if _is_quant(call) and not call.given(arg):
            return f"int8 x (quantised mode) requires {arg}, got {arg}=None"


def _antiquant_absent_rule(arg: str):
    @spec.rule(f"ffn.nonantiquant_{arg}", argument=arg,
               summary=f"{arg} is given only with int8 weights and float16/bfloat16 x (antiquant mode)",
               source="aclnn_ffn.cpp CheckOptionalParams", fix=f"drop {arg}, or pass int8 weights")
    def _(call):
        if call.given(arg) and not _is_antiquant(call) and not _glu(call) and _x_dtype(call) is not None:
            return (f"{arg} is only for int8 weights with float x (antiquant mode), got {arg} with "
                    f"x.dtype={_x_dtype(call)}, weight1.dtype={_w_dtype(call)}")


def _antiquant_required_rule(arg: str):
    @spec.rule(f"ffn.antiquant_{arg}_required", argument=arg, status=161001,
               summary=f"int8 weights with float x (antiquant mode) require {arg}",
               source="aclnn_ffn.cpp CheckOptionalParams (all four antiquant tensors present)",
               fix=f"pass {arg} for int8 weights")
    def _(call):
        if _is_antiquant(call) and not call.given(arg):
            return f"int8 weights (antiquant mode) require {arg}, got {arg}=None"


for _a in QUANT_ARGS:
    _quant_absent_rule(_a)
    _quant_required_rule(_a)
for _a in ANTIQUANT_ARGS:
    _antiquant_absent_rule(_a)
    _antiquant_required_rule(_a)


# ------------------------------------------------------------------------------------------------
# quant dtypes and shapes
# ------------------------------------------------------------------------------------------------

@spec.rule("ffn.output_dtype", argument="output_dtype",
           summary="quantised mode: output_dtype is None, float16 or bfloat16",
           source="FFNKernelNpuOpApi.cpp / ffn_def.cpp output_dtype attr (fp16 or bf16)",
           fix="pass output_dtype=torch.float16 or torch.bfloat16")
def _(call):
    if not _is_quant(call):
        return None
    try:
        y = _y_dtype(call)
    except ValueError:
        y = None
    if y not in ("float16", "bfloat16"):
        return f"output_dtype must be float16 or bfloat16 with int8 x, got output_dtype={call.get('output_dtype')!r}"


@spec.rule("ffn.deq_scale_dtype", argument="deq_scale1",
           summary="y float16: deq_scale uint64, int64 or float32; y bfloat16: deq_scale bfloat16",
           source="aclnn_ffn.cpp CheckOptionalParams (quant); aclnnFFNV2.md",
           fix="for float16 output pass uint64/int64 (fp32 bits in the low word) or float32 deq scales; "
               "for bfloat16 output pass bfloat16 deq scales")
def _(call):
    if not _is_quant(call):
        return None
    d = call.dtype("deq_scale1")
    try:
        y = _y_dtype(call)
    except ValueError:
        return None
    allowed = {"float16": ("uint64", "int64", "float32"), "bfloat16": ("bfloat16",)}.get(y)
    if d is not None and allowed and d not in allowed:
        return f"with output dtype {y} deq_scale1 must be {' or '.join(allowed)}, got deq_scale1.dtype={d}"


@spec.rule("ffn.deq_scale_equal", argument="deq_scale2", summary="deq_scale2 dtype == deq_scale1 dtype",
           source="aclnn_ffn.cpp CheckOptionalParams", fix="give both deq scales the same dtype")
def _(call):
    d1, d2 = call.dtype("deq_scale1"), call.dtype("deq_scale2")
    if _is_quant(call) and d1 and d2 and d1 != d2:
        return f"deq_scale2.dtype must equal deq_scale1.dtype={d1}, got deq_scale2.dtype={d2}"


def _f32_rule(name: str):
    @spec.rule(f"ffn.{name}_dtype", argument=name, summary=f"quantised mode: {name} is float32",
               source="aclnnFFNV2.md dtype table; aclnn_ffn.cpp CheckOptionalParams", fix=f"pass float32 {name}")
    def _(call):
        d = call.dtype(name)
        if _is_quant(call) and d is not None and d != "float32":
            return f"{name} must be float32, got {name}.dtype={d}"


_f32_rule("scale")
_f32_rule("offset")


def _per_channel_scale(call) -> bool:
    s = call.shape("scale")
    if s is None:
        return False
    return len(s) == 2 if _has_experts(call) else (len(s) == 1 and s[0] != 1)


@spec.rule("ffn.scale_shape", argument="scale",
           summary="scale: per-tensor [1] / [E], per-channel [N1] / [E, N1]",
           source="aclnn_ffn.cpp CheckOptionalParams (quant)",
           fix="shape scale [1] or [N1] (with experts [E] or [E, N1])")
def _(call):
    d1, s = _dims(call, "weight1"), call.shape("scale")
    if not _is_quant(call) or s is None or d1 is None:
        return None
    e = _num_experts(call)
    ok = [(e,), (e, d1[1])] if e else [(1,), (d1[1],)]
    if tuple(s) not in ok:
        return f"scale must have shape {' or '.join(str(list(o)) for o in ok)}, got scale.shape={s}"


@spec.rule("ffn.offset_shape", argument="offset", summary="offset: [1] without experts, [E] with experts",
           source="aclnn_ffn.cpp CheckOptionalParams (quant)", fix="shape offset [1] (with experts [E])")
def _(call):
    o = call.shape("offset")
    if not _is_quant(call) or o is None:
        return None
    e = _num_experts(call)
    want = (e,) if e else (1,)
    if tuple(o) != want:
        return f"offset must have shape {list(want)}, got offset.shape={o}"


@spec.rule("ffn.per_channel_scale_deq", argument="scale",
           summary="a per-channel scale needs uint64/int64/bfloat16 deq scales (not float32)",
           source="aclnn_ffn.cpp CheckOptionalParams (quant smooth scale)",
           fix="use a per-tensor scale with float32 deq scales, or pass deq scales as int64/uint64")
def _(call):
    if _is_quant(call) and _per_channel_scale(call) and call.dtype("deq_scale1") == "float32":
        return f"a per-channel scale (scale.shape={call.shape('scale')}) cannot be used with float32 deq_scale1"


def _deq_shape_rule(i: int):
    name = f"deq_scale{i}"

    @spec.rule(f"ffn.{name}_shape", argument=name, summary=f"{name} is [N{i}] / [E, N{i}]",
               source="aclnn_ffn.cpp CheckOptionalParams (quant)",
               fix="one deq scale per output channel (per expert)")
    def _(call):
        s, d = call.shape(name), _dims(call, f"weight{i}")
        if not _is_quant(call) or s is None or d is None:
            return None
        e = _num_experts(call)
        want = (e, d[1]) if e else (d[1],)
        if tuple(s) != want:
            return f"{name} must have shape {list(want)}, got {name}.shape={s}"


_deq_shape_rule(1)
_deq_shape_rule(2)


# ------------------------------------------------------------------------------------------------
# antiquant dtypes and shapes
# ------------------------------------------------------------------------------------------------

def _antiquant_rules(name: str):
    i = int(name[-1])

    @spec.rule(f"ffn.{name}_dtype", argument=name,
               summary=f"{name} has x's dtype (float16 or bfloat16)",
               source="aclnn_ffn.cpp CheckOptionalParams (antiquant)", fix=f"cast {name} to x.dtype")
    def _(call):
        d, xd = call.dtype(name), _x_dtype(call)
        if _is_antiquant(call) and d is not None and d != xd:
            return f"{name} must have x's dtype {xd}, got {name}.dtype={d}"

    @spec.rule(f"ffn.{name}_shape", argument=name,
               summary=f"{name}: per-channel [N{i}] / [E, N{i}] (per-group [G, N{i}] needs int4 weights, "
                       "which torch_npu's npu_ffn does not take)",
               source="aclnn_ffn.cpp CheckOptionalParams (antiquant: ranks, last dim N, first dim E, "
                      "scale/offset shapes equal, per-group requires INT4); torch_npu-npu_ffn.md (int8, "
                      "per-channel only)",
               fix=f"pass a per-channel {name} of shape [N{i}] (with experts [E, N{i}])")
    def _(call):
        s, d = call.shape(name), _dims(call, f"weight{i}")
        if not _is_antiquant(call) or s is None or d is None:
            return None
        e = _num_experts(call)
        want = (e, d[1]) if e else (d[1],)
        if tuple(s) == want:
            return None
        if len(s) == len(want) + 1:
            return (f"{name} looks per-group ({name}.shape={s}); per-group antiquant needs int4 weights, "
                    f"got weight{i}.dtype={call.dtype(f'weight{i}')}; expected shape {list(want)}")
        return f"{name} must have shape {list(want)}, got {name}.shape={s}"


for _n in ANTIQUANT_ARGS:
    _antiquant_rules(_n)


# ------------------------------------------------------------------------------------------------
# 310P (Atlas inference series, aclnnFFNV2/V3 only)
# ------------------------------------------------------------------------------------------------

@spec.rule("ffn.310p_x_rank", argument="x", products=P310, summary="310P: x is 2-D",
           source="aclnn_ffn.cpp CheckParam (310P)", fix="reshape x to [M, K1] on 310P")
def _(call):
    s = call.shape("x")
    if s is not None and len(s) != 2:
        return f"on atlas-inference x must be 2-D, got x.shape={s}"


def _p310_dtype_rule(name: str):
    @spec.rule(f"ffn.310p_{name}_dtype", argument=name, products=P310, summary=f"310P: {name} is float16",
               source="aclnn_ffn.cpp CheckParam (310P: fp16 high performance only)",
               fix="use float16 x and weights on 310P")
    def _(call):
        d = call.dtype(name)
        if d is not None and d != "float16":
            return f"on atlas-inference {name} must be float16, got {name}.dtype={d}"


for _n in ("x", "weight1", "weight2"):
    _p310_dtype_rule(_n)


@spec.rule("ffn.310p_inner_precise", argument="inner_precise", products=P310,
           summary="310P: inner_precise == 1", source="aclnn_ffn.cpp CheckParam (310P)",
           fix="pass inner_precise=1 on 310P")
def _(call):
    if _ip(call) != 1:
        return f"on atlas-inference inner_precise must be 1, got inner_precise={_ip(call)!r}"


@spec.rule("ffn.310p_activation", argument="activation", products=P310,
           summary="310P: activation fastgelu, gelu, relu or silu", source="aclnn_ffn.cpp CheckParam (310P)",
           fix="use fastgelu, gelu, relu or silu on 310P")
def _(call):
    if _glu(call):
        return f"on atlas-inference the gated activations are unsupported, got activation={call.get('activation')!r}"


@spec.rule("ffn.310p_experts", argument="expert_tokens", products=P310,
           summary="310P: no expert tokens", source="aclnn_ffn.cpp CheckParam (310P)",
           fix="drop expert_tokens on 310P (loop over experts instead)")
def _(call):
    name = _tokens_arg(call)
    if name:
        return f"on atlas-inference experts are unsupported, got {name} of length {_tokens_len(call, name)}"
