"""npu_ffn rules: each rule rejects a call, naming the argument and its value; valid calls pass."""
import warnings

import pytest

from ascend_moe import ConstraintWarning, TensorSpec, check, rule_table

T = TensorSpec


def base(act="relu", xdt="float16", m=8, k1=64, n1=128, e=None, **kw):
    lead = () if e is None else (e,)
    k2 = n1 // 2 if act.lower() in ("geglu", "swiglu", "reglu") else n1
    wdt = xdt
    args = dict(x=T((m, k1), xdt), weight1=T(lead + (k1, n1), wdt), weight2=T(lead + (k2, k1), wdt),
                activation=act)
    if e is not None:
        args["expert_tokens"] = [m // e] * (e - 1) + [m - (m // e) * (e - 1)]
    if act.lower() in ("geglu", "swiglu", "reglu"):
        args["inner_precise"] = 1
    args.update(kw)
    return args


def quant(e=None, ydt="float16", deq="int64", per_channel=False, **kw):
    args = base(xdt="int8", e=e)
    lead = () if e is None else (e,)
    n1, k1 = 128, 64
    sc = lead + (n1,) if per_channel else ((e,) if e else (1,))
    ddt = "bfloat16" if ydt == "bfloat16" else deq
    args.update(scale=T(sc, "float32"), offset=T((e,) if e else (1,), "float32"),
                deq_scale1=T(lead + (n1,), ddt), deq_scale2=T(lead + (k1,), ddt),
                bias1=T(lead + (n1,), "int32"), bias2=T(lead + (k1,), "int32"))
    if ydt == "bfloat16":
        args["output_dtype"] = "bfloat16"
    args.update(kw)
    return args


def anti(xdt="float16", e=None, **kw):
    args = base(xdt=xdt, e=e)
    lead = () if e is None else (e,)
    args["weight1"] = T(lead + (64, 128), "int8")
    args["weight2"] = T(lead + (128, 64), "int8")
    args.update(antiquant_scale1=T(lead + (128,), xdt), antiquant_offset1=T(lead + (128,), xdt),
                antiquant_scale2=T(lead + (64,), xdt), antiquant_offset2=T(lead + (64,), xdt))
    args.update(kw)
    return args


def violations(args, product="atlas-a2", cann=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstraintWarning)
        vs = check("npu_ffn", product=product, cann=cann, **args)
    # the 310P product note (a doc-level warning) accompanies every 310P call: tested on its own below
    return [v for v in vs if v.rule_id != "ffn.310p_docs"]


VALID = {
    "fp16 hp": base(inner_precise=1), "fp16 hprec": base(inner_precise=0), "bf16": base(xdt="bfloat16"),
    "fp16 experts": base(e=4, act="fastgelu"), "experts index": dict(base(e=None), **{
        "weight1": T((2, 64, 128), "float16"), "weight2": T((2, 128, 64), "float16"),
        "expert_tokens_index": [3, 8]}),
    "glu": base(act="swiglu", bias1=T((128,), "float16")), "geglu": base(act="GeGLU"),
    "quant fp16": quant(), "quant fp32 deq": quant(deq="float32"), "quant uint64": quant(deq="uint64"),
    "quant bf16 experts per-channel": quant(e=2, ydt="bfloat16", per_channel=True),
    "antiquant fp16": anti(bias1=T((128,), "float16")), "antiquant bf16 experts": anti("bfloat16", e=2),
    "8-D x": base(x=T((1, 1, 1, 1, 1, 1, 2, 64), "float16")),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_calls_pass(name):
    assert violations(VALID[name]) == []


# (case name, args, rule id, argument, substrings of the message (the value))
REJECT = [
    ("product 910", base(), "npu_ffn.product", "(product)", ["atlas-training"], "atlas-training"),
    ("activation", base(act="tanh"), "ffn.activation", "activation", ["'tanh'"], None),
    ("x rank 1", base(x=T((64,), "float16")), "ffn.x_rank", "x", ["(64,)"], None),
    ("x rank 9", base(x=T((1,) * 8 + (64,), "float16")), "ffn.x_rank", "x", ["9 dims"], None),
    ("x dtype", base(x=T((8, 64), "float32")), "ffn.x_dtype", "x", ["float32"], None),
    ("weight dtype", base(weight1=T((64, 128), "bfloat16"), weight2=T((128, 64), "bfloat16")),
     "ffn.weight_dtype", "weight1", ["weight1.dtype=bfloat16"], None),
    ("weight2 dtype", base(weight2=T((128, 64), "int8")), "ffn.weight2_dtype", "weight2", ["int8"], None),
    ("weight1 rank", base(weight1=T((1, 64, 128), "float16")), "ffn.weight1_rank", "weight1", ["(1, 64, 128)"], None),
    ("weight2 rank experts", base(e=2, weight2=T((128, 64), "float16")), "ffn.weight2_rank", "weight2",
     ["(128, 64)"], None),
    ("K1 match", base(weight1=T((32, 128), "float16")), "ffn.k1_match", "weight1", ["(32, 128)"], None),
    ("K1 max", base(k1=65536, m=2), "ffn.k1_max", "weight1", ["K1=65536"], None),
    ("K2 max", base(n1=65536, m=2, k1=16), "ffn.k2_max", "weight2", ["K2=65536"], None),
    ("N1 vs K2", base(weight2=T((100, 64), "float16")), "ffn.n1_k2", "weight2", ["K2=100"], None),
    ("GLU N1 odd", base(act="swiglu", weight1=T((64, 127), "float16"), weight2=T((63, 64), "float16")),
     "ffn.glu_n1_even", "weight1", ["N1=127"], None),
    ("GLU K2 != N1/2", base(act="reglu", weight2=T((128, 64), "float16")), "ffn.n1_k2", "weight2",
     ["K2=128"], None),
    ("N2 vs K1", base(weight2=T((128, 200), "float16")), "ffn.n2_k1", "weight2", ["N2=200"], None),
    ("tokens exclusive", base(e=2, expert_tokens_index=[4, 8]), "ffn.tokens_exclusive",
     "expert_tokens_index", ["expert_tokens (length 2)"], None),
    ("tokens exclusive empty list", base(expert_tokens=[], expert_tokens_index=[8], weight1=T((1, 64, 128), "float16"),
                                         weight2=T((1, 128, 64), "float16")),
     "ffn.tokens_exclusive", "expert_tokens_index", ["expert_tokens (length 0)"], None),
    ("257 experts", base(m=257, e=257), "ffn.expert_num", "expert_tokens", ["=257"], None),
    ("expert weights2", base(e=2, weight2=T((3, 128, 64), "float16")), "ffn.weight2_experts", "weight2",
     ["(3, 128, 64)", "=2"], None),
    ("expert weights1", base(e=2, weight1=T((1, 64, 128), "float16")), "ffn.weight1_experts", "weight1",
     ["(1, 64, 128)"], None),
    ("token sum", base(e=2, expert_tokens=[3, 4]), "ffn.tokens_sum", "expert_tokens", ["sum=7"], None),
    ("token negative", base(e=2, expert_tokens=[-1, 9]), "ffn.tokens_sum", "expert_tokens", ["[-1, 9]"], None),
    ("index decreasing", dict(base(e=2, expert_tokens=None), expert_tokens_index=[6, 5]), "ffn.tokens_sum",
     "expert_tokens", ["[6, 5]"], None),
    ("index last", dict(base(e=2, expert_tokens=None), expert_tokens_index=[3, 7]), "ffn.tokens_sum",
     "expert_tokens", ["got 7"], None),
    ("inner_precise 2", base(inner_precise=2), "ffn.inner_precise_value", "inner_precise", ["=2"], None),
    ("bf16 high perf", base(xdt="bfloat16", inner_precise=1), "ffn.bf16_inner_precise", "inner_precise",
     ["=1"], None),
    ("GLU bf16", base(act="swiglu", xdt="bfloat16"), "ffn.glu_x_dtype", "x", ["x.dtype=bfloat16"], None),
    ("GLU int8 w1", base(act="swiglu", weight1=T((64, 128), "int8")), "ffn.glu_weight1_dtype", "weight1",
     ["weight1.dtype=int8"], None),
    ("GLU int8 w2", base(act="reglu", weight2=T((64, 64), "int8")), "ffn.glu_weight2_dtype", "weight2",
     ["weight2.dtype=int8"], None),
    ("GLU inner_precise 0", base(act="geglu", inner_precise=0), "ffn.glu_inner_precise", "inner_precise",
     ["=0"], None),
    ("GLU experts", base(act="swiglu", e=2), "ffn.glu_experts", "expert_tokens", ["length 2"], None),
    ("bias1 dtype", base(bias1=T((128,), "float32")), "ffn.bias1_dtype", "bias1", ["float32"], None),
    ("bias2 dtype bf16", base(xdt="bfloat16", bias2=T((64,), "bfloat16")), "ffn.bias2_dtype", "bias2",
     ["bias2.dtype=bfloat16"], None),
    ("bias1 shape", base(bias1=T((64,), "float16")), "ffn.bias1_shape", "bias1", ["(64,)"], None),
    ("bias2 shape experts", base(e=2, bias2=T((64,), "float16")), "ffn.bias2_shape", "bias2", ["(64,)"], None),
    ("quant arg in non-quant", base(scale=T((1,), "float32")), "ffn.nonquant_scale", "scale",
     ["x.dtype=float16"], None),
    ("deq in bf16 non-quant", base(xdt="bfloat16", deq_scale1=T((128,), "bfloat16")),
     "ffn.nonquant_deq_scale1", "deq_scale1", ["x.dtype=bfloat16"], None),
    ("antiquant arg in non-quant", base(antiquant_scale1=T((128,), "float16")),
     "ffn.nonantiquant_antiquant_scale1", "antiquant_scale1", ["weight1.dtype=float16"], None),
    ("antiquant arg in quant", quant(antiquant_offset2=T((64,), "float16")),
     "ffn.nonantiquant_antiquant_offset2", "antiquant_offset2", ["x.dtype=int8"], None),
    ("quant missing offset", quant(offset=None), "ffn.quant_offset_required", "offset", ["offset=None"], None),
    ("quant missing deq2", quant(deq_scale2=None), "ffn.quant_deq_scale2_required", "deq_scale2",
     ["deq_scale2=None"], None),
    ("antiquant missing scale2", anti(antiquant_scale2=None), "ffn.antiquant_antiquant_scale2_required",
     "antiquant_scale2", ["antiquant_scale2=None"], None),
    ("output dtype", quant(output_dtype="float32"), "ffn.output_dtype", "output_dtype", ["'float32'"], None),
    ("deq dtype fp16 y", quant(deq="bfloat16"), "ffn.deq_scale_dtype", "deq_scale1",
     ["deq_scale1.dtype=bfloat16"], None),
    ("deq dtype bf16 y", quant(output_dtype="bfloat16"), "ffn.deq_scale_dtype", "deq_scale1",
     ["deq_scale1.dtype=int64"], None),
    ("deq dtypes differ", quant(deq_scale2=T((64,), "uint64")), "ffn.deq_scale_equal", "deq_scale2",
     ["deq_scale2.dtype=uint64"], None),
    ("scale dtype", quant(scale=T((1,), "float16")), "ffn.scale_dtype", "scale",
     ["scale.dtype=float16"], None),
    ("offset dtype", quant(offset=T((1,), "bfloat16")), "ffn.offset_dtype", "offset",
     ["offset.dtype=bfloat16"], None),
    ("scale shape", quant(scale=T((3,), "float32")), "ffn.scale_shape", "scale", ["scale.shape=(3,)"], None),
    ("offset shape experts", quant(e=2, offset=T((1,), "float32")), "ffn.offset_shape", "offset",
     ["offset.shape=(1,)"], None),
    ("per-channel scale fp32 deq", quant(deq="float32", per_channel=True), "ffn.per_channel_scale_deq", "scale",
     ["(128,)"], None),
    ("deq1 shape", quant(deq_scale1=T((64,), "int64")), "ffn.deq_scale1_shape", "deq_scale1", ["(64,)"], None),
    ("deq2 shape experts", quant(e=2, deq_scale2=T((64,), "int64")), "ffn.deq_scale2_shape", "deq_scale2",
     ["(64,)"], None),
    ("antiquant per-group int8",
     anti(antiquant_scale1=T((4, 128), "float16"), antiquant_offset1=T((4, 128), "float16")),
     "ffn.antiquant_scale1_shape", "antiquant_scale1", ["(4, 128)", "int4"], None),
    ("NZ x", base(x=T((8, 64), "float16", "FRACTAL_NZ")), "ffn.x_format", "x", ["x format=FRACTAL_NZ"], None),
    ("NZ weight1", base(weight1=T((64, 128), "float16", "FRACTAL_NZ")), "ffn.weight1_format", "weight1",
     ["weight1 format=FRACTAL_NZ"], None),
    ("NZ weight2", base(weight2=T((128, 64), "float16", "FRACTAL_NZ")), "ffn.weight2_format", "weight2",
     ["weight2 format=FRACTAL_NZ"], None),
    ("M too large", base(x=T((2 ** 31, 64), "float16")), "ffn.m_max", "x", ["M=2147483648"], None),
    ("310P 3-D x", base(x=T((2, 4, 64), "float16"), inner_precise=1), "ffn.310p_x_rank", "x", ["(2, 4, 64)"],
     "atlas-inference"),
    ("310P bf16", base(xdt="bfloat16", inner_precise=0), "ffn.310p_x_dtype", "x", ["x.dtype=bfloat16"],
     "atlas-inference"),
    ("310P bf16 w1", base(inner_precise=1, weight1=T((64, 128), "bfloat16")), "ffn.310p_weight1_dtype", "weight1",
     ["weight1.dtype=bfloat16"], "atlas-inference"),
    ("310P int8 w2", base(inner_precise=1, weight2=T((128, 64), "int8")), "ffn.310p_weight2_dtype", "weight2",
     ["weight2.dtype=int8"], "atlas-inference"),
    ("310P inner_precise 0", base(), "ffn.310p_inner_precise", "inner_precise", ["=0"], "atlas-inference"),
    ("310P GLU", base(act="swiglu"), "ffn.310p_activation", "activation", ["'swiglu'"], "atlas-inference"),
    ("310P experts", base(e=2, inner_precise=1), "ffn.310p_experts", "expert_tokens", ["length 2"],
     "atlas-inference"),
    ("310P quant args", base(inner_precise=1, deq_scale1=T((128,), "uint64")), "ffn.nonquant_deq_scale1",
     "deq_scale1", ["x.dtype=float16"], "atlas-inference"),
]


for _n, _n_dim in (("antiquant_scale1", 128), ("antiquant_offset1", 128), ("antiquant_scale2", 64),
                   ("antiquant_offset2", 64)):
    REJECT.append((f"{_n} dtype", anti(**{_n: T((_n_dim,), "bfloat16")}), f"ffn.{_n}_dtype", _n,
                   [f"{_n}.dtype=bfloat16"], None))
    REJECT.append((f"{_n} shape", anti(e=2, **{_n: T((_n_dim + 1,), "float16")}), f"ffn.{_n}_shape", _n,
                   [f"({_n_dim + 1},)"], None))


@pytest.mark.parametrize("case", REJECT, ids=[c[0] for c in REJECT])
def test_rule_rejects(case):
    name, args, rule_id, argument, needles, product = case
    vs = violations(args, product=product or "atlas-a2")
    hits = [v for v in vs if v.rule_id == rule_id]
    assert hits, f"{rule_id} not raised; got {[(v.rule_id, v.message) for v in vs]}"
    v = hits[0]
    assert v.argument == argument
    text = " ".join(h.message for h in hits)
    for needle in needles:
        assert needle in text, (needle, text)
    assert argument in text or argument == "(product)"


def test_every_rule_has_a_rejecting_case():
    ids = {r.id for r in rule_table(op="npu_ffn")}
    tested = {c[2] for c in REJECT} | {"ffn.a3_docs", "ffn.glu_quant_args", "ffn.310p_docs"}
    missing = {i for i in ids if i not in tested and not i.startswith(("ffn.quant_", "ffn.antiquant_antiquant_",
                                                                         "ffn.nonquant_", "ffn.nonantiquant_"))}
    assert not missing, missing


@pytest.mark.parametrize("arg", ["scale", "offset", "deq_scale1", "deq_scale2"])
def test_each_quant_arg_required_and_forbidden(arg):
    vs = violations(quant(**{arg: None}))
    assert any(v.rule_id == f"ffn.quant_{arg}_required" and arg in v.message and v.status == 161001 for v in vs)
    extra = quant()[arg]
    vs = violations(base(**{arg: extra}))
    assert any(v.rule_id == f"ffn.nonquant_{arg}" and arg in v.message for v in vs)


@pytest.mark.parametrize("arg", ["antiquant_scale1", "antiquant_scale2", "antiquant_offset1", "antiquant_offset2"])
def test_each_antiquant_arg_required_and_forbidden(arg):
    vs = violations(anti(**{arg: None}))
    assert any(v.rule_id == f"ffn.antiquant_{arg}_required" and arg in v.message for v in vs)
    vs = violations(base(**{arg: anti()[arg]}))
    assert any(v.rule_id == f"ffn.nonantiquant_{arg}" and arg in v.message for v in vs)


def test_a3_is_a_doc_warning_and_strict_error(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        vs = check("npu_ffn", product="atlas-a3", **base())
    assert [v.rule_id for v in vs] == ["ffn.a3_docs"] and vs[0].severity == "warning"
    assert "atlas-a3" in vs[0].message
    import numpy as np
    from ascend_moe import ConstraintError
    from ascend_moe.sim import npu_ffn
    from ascend_moe.products import target
    x = np.ones((2, 4), np.float16)
    w1, w2 = np.ones((4, 4), np.float16), np.ones((4, 4), np.float16)
    with target("atlas-a3"):
        with pytest.warns(ConstraintWarning, match="A3"):
            npu_ffn(x, w1, w2, "relu")
        monkeypatch.setenv("ASCEND_MOE_STRICT_DOCS", "1")
        with pytest.raises(ConstraintError, match="ffn.a3_docs"):
            npu_ffn(x, w1, w2, "relu")


def test_glu_quant_args_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        vs = check("npu_ffn", **base(act="swiglu", scale=T((1,), "float32")))
    assert [(v.rule_id, v.severity) for v in vs] == [("ffn.glu_quant_args", "warning")]
    assert "scale" in vs[0].message


def test_all_violations_reported_at_once():
    vs = violations(base(act="nope", inner_precise=5, x=T((8, 64), "float32")))
    assert {"ffn.activation", "ffn.inner_precise_value", "ffn.x_dtype"} <= {v.rule_id for v in vs}


def test_seed_example_shape_is_rejected_by_k1_n2():
    """The seed's graph-mode example uses weight2 [16, 5120, 200] with K1 = 2560: the host's N2 == K1
    check (CheckFmapWeightShape) rejects it."""
    counts = [227, 62, 78, 126, 178, 27, 122, 1, 19, 182, 166, 118, 66, 217, 122, 243]
    vs = violations(dict(x=T((1954, 2560), "float16"), weight1=T((16, 2560, 5120), "float16"),
                         weight2=T((16, 5120, 200), "float16"), activation="fastgelu",
                         expert_tokens=counts, inner_precise=1))
    assert [v.rule_id for v in vs] == ["ffn.n2_k1"] and "N2=200" in vs[0].message


def test_310p_valid_call_only_carries_the_doc_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        vs = check("npu_ffn", product="atlas-inference", **base(act="gelu", inner_precise=1))
    assert [(v.rule_id, v.severity) for v in vs] == [("ffn.310p_docs", "warning")]
    assert "atlas-inference" in vs[0].message
