"""npu_ffn numerics: every activation and every mode against independent references written here.

References: float64 formulas for the activations; per-expert loops that apply the kernel's roundings
explicitly (float64 op then a rounding of our own: RNE via NumPy/ml_dtypes, round-half-away and FP19
by hand).  Cases with relu involve no ``exp`` and are compared bit for bit; the others are compared
within the documented allowance (hardware/NumPy ``exp`` accuracy, one ulp of the compute dtype).
"""
import math

import ml_dtypes
import numpy as np
import pytest

from ascend_moe import ConstraintError
from ascend_moe.sim import ffn as simffn
from ascend_moe.sim import npu_ffn

F16, F32, F64 = np.float16, np.float32, np.float64
BF16 = ml_dtypes.bfloat16


# ------------------------------------------------------------------------------------------------
# independent helpers
# ------------------------------------------------------------------------------------------------

def rnd(v, dt):
    """Round float64 values once to dt (RNE) and return float64 (overflow gives inf)."""
    with np.errstate(over="ignore"):
        return np.asarray(v, F64).astype(dt).astype(F64)


def round_half_away(v, mant_bits, min_exp):
    """Round float64 values to a binary float with ``mant_bits`` fraction bits, ties away from zero."""
    out = np.empty_like(np.asarray(v, F64))
    for i, x in np.ndenumerate(np.asarray(v, F64)):
        if x == 0 or not math.isfinite(x):
            out[i] = x
            continue
        e = max(math.frexp(abs(x))[1] - 1, min_exp)
        ulp = 2.0 ** (e - mant_bits)
        out[i] = math.copysign(math.floor(abs(x) / ulp + 0.5) * ulp, x)
    return out


def away16(v):
    return round_half_away(v, 10, -14)


def away_bf16(v):
    return round_half_away(v, 7, -126)


def fp19(deq):
    """FP19 value of an int64/uint64/float32 deq scale: low word's fp32 bits & 0xFFFFE000."""
    d = np.asarray(deq)
    if d.dtype == np.float32:
        bits = d.view(np.uint32)
    else:
        bits = (d.astype(np.int64).view(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32).astype(F64)


def encode_i64(s):
    return np.asarray(s, F32).view(np.uint32).astype(np.int64)


# float64 activations (mathematical definitions, not the kernel's op order)
def fastgelu64(x):
    return x / (1 + np.exp(-1.702 * x))


def gelu_tanh64(x):
    # 0.5 x (1 + tanh(z)) == x / (1 + exp(-2z)); the latter has no cancellation for large negative x
    z = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-2 * z))


def gelu_erf64(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def silu64(x):
    return x / (1 + np.exp(-x))


def relu64(x):
    return np.maximum(x, 0)


ACT64 = {"fastgelu": fastgelu64, "gelu": gelu_tanh64, "silu": silu64, "relu": relu64}


def act_ops(x, name, dt):
    """The kernel's op order with every op rounded to dt (float64 op, then RNE to dt)."""
    r = lambda v: rnd(v, dt)  # noqa: E731
    c = lambda v: float(rnd(v, dt))  # noqa: E731  scalar operand held in dt
    x = np.asarray(x, F64)
    if name == "relu":
        return np.maximum(x, 0)
    if name in ("fastgelu", "silu"):
        t = r(x * c(-1.702 if name == "fastgelu" else -1.0))
        t = r(np.exp(t))
        t = r(t + 1)
        return r(x / t)
    if name == "gelu":
        a = r(x * x)
        b = r(x * a)
        a = r(b * c(0.044715))
        b = r(x + a)
        y = r(b * c(1.5957691216057308))
        en = r(np.exp(np.minimum(y, 0)))
        t = r(np.abs(y) * -1)
        t = r(np.exp(t))
        t = r(t + 1)
        t = r(x / t)
        return r(t * en)
    raise ValueError(name)


def ulp_diff(a, b, dt):
    """Distance in units of the dt spacing at b (element-wise, float64)."""
    a, b = np.asarray(a, F64), np.asarray(b, F64)
    spacing = np.abs(rnd(np.nextafter(b.astype(dt), np.array(np.inf, dt)), dt) - b)
    spacing = np.where(spacing == 0, np.finfo(F64).tiny, spacing)
    return np.abs(a - b) / spacing


def groups(m, counts):
    if counts is None:
        return [(0, m, None)]
    out, s = [], 0
    for e, c in enumerate(counts):
        out.append((s, s + c, e))
        s += c
    return out


# ------------------------------------------------------------------------------------------------
# activations against float64
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fastgelu", "gelu", "silu", "relu"])
def test_activation_fp32_matches_float64(name):
    x = np.linspace(-12, 12, 4001).astype(F32)
    got = simffn.ELEMENTWISE[name](x).astype(F64)
    x64 = x.astype(F64)
    want = ACT64[name](x64)
    # fp32 op chain: a handful of fp32 roundings (<= 0.5 ulp each); exp(z) turns the argument's
    # rounding into a relative error of |z| * 2**-24, so the allowance grows with the exp argument.
    z = {"fastgelu": 1.702 * x64, "gelu": 1.6 * (x64 + 0.044715 * x64 ** 3), "silu": x64, "relu": 0 * x64}[name]
    # (results below fp32's normal range lose relative precision: absolute allowance there)
    assert (np.abs(got - want) <= 2 ** -24 * (40 + 2 * np.abs(z)) * np.abs(want) + 1e-37).all()


@pytest.mark.parametrize("name", ["fastgelu", "gelu", "silu", "relu"])
def test_activation_fp16_ops_match_kernel_order(name):
    x = np.linspace(-10, 10, 2001).astype(F16)
    got = simffn.ELEMENTWISE[name](x)
    assert got.dtype == F16
    want = act_ops(x, name, F16)
    d = ulp_diff(got, want, F16)
    # only exp's last-bit accuracy may differ (NumPy fp32 exp vs correctly rounded)
    assert d.max() <= 1 and (d > 0).mean() < 0.01
    # and the fp16 chain is close to the float64 function
    np.testing.assert_allclose(got.astype(F64), ACT64[name](x.astype(F64)), rtol=8e-3, atol=2e-3)


def test_fastgelu_is_not_tanh_gelu_and_gelu_is_tanh_not_erf():
    x = np.array([1.0, -1.0, 2.0, 0.5], F32)
    fg = simffn.act_fastgelu(x).astype(F64)
    g = simffn.act_gelu(x).astype(F64)
    np.testing.assert_allclose(fg, fastgelu64(x.astype(F64)), rtol=1e-6)
    assert np.abs(fg - gelu_tanh64(x.astype(F64))).max() > 1e-3
    np.testing.assert_allclose(g, gelu_tanh64(x.astype(F64)), rtol=1e-6)
    xg = np.array([-2.7], F32)  # tanh vs erf GELU differ most (~4.7e-4) near x = -2.7
    assert abs(float(simffn.act_gelu(xg)[0]) - float(gelu_erf64(xg.astype(F64))[0])) > 1e-4


def test_gelu_large_inputs_do_not_overflow():
    x = np.array([-200.0, 200.0, -30.0], F32)
    np.testing.assert_allclose(simffn.act_gelu(x).astype(F64), [0.0, 200.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("name,fn", [
    ("swiglu", lambda l, r: l * silu64(r)),
    ("geglu", lambda l, r: l * gelu_tanh64(r)),
    ("reglu", lambda l, r: l * relu64(r)),
])
def test_glu_gates_first_half_with_activation_of_second_half(name, fn):
    rng = np.random.default_rng(1)
    left = rng.uniform(-3, 3, (6, 8))
    right = rng.uniform(-3, 3, (6, 8))
    h = np.concatenate([left, right], axis=1).astype(F16)
    got = simffn.glu(h, name).astype(F64)
    l64, r64 = h[:, :8].astype(F64), h[:, 8:].astype(F64)
    want = rnd(fn(l64, r64), F16)
    assert ulp_diff(got, want, F16).max() <= 1
    swapped = rnd(fn(r64, l64), F16)
    assert np.abs(got - swapped).max() > 0.1  # the other half convention is clearly different


# ------------------------------------------------------------------------------------------------
# rounding helpers used by the high-precision flows
# ------------------------------------------------------------------------------------------------

def test_cast_round_is_half_away_from_zero():
    ties16 = np.array([1 + 2 ** -11, -(1 + 2 ** -11), 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25,
                       1.3, -7.77, 65519.0, 65520.0, 0.0], F64).astype(F32)
    got = simffn.cast_round(ties16, "float16").astype(F64)
    want = away16(ties16.astype(F64))
    want[-2] = np.inf  # 65520 rounds up past the largest fp16
    np.testing.assert_array_equal(got, want)
    assert got[0] == 1 + 2 ** -10 and ties16[:1].astype(F16)[0] == 1.0  # RNE would go to even
    tiesbf = np.array([1 + 2 ** -8, -(1 + 2 ** -8), 1 + 3 * 2 ** -8, 3.14159, -0.0], F32)
    gotb = simffn.cast_round(tiesbf, "bfloat16")
    assert gotb.dtype == BF16
    np.testing.assert_array_equal(gotb.astype(F64), away_bf16(tiesbf.astype(F64)))
    assert np.isnan(simffn.cast_round(np.array([np.nan], F32), "bfloat16").astype(F32)[0])


def test_cast_round_random_against_reference():
    rng = np.random.default_rng(7)
    v = (rng.standard_normal(3000) * 10).astype(F32)
    # plant exact fp16 ties: midpoints of neighbouring fp16 values
    a = rng.standard_normal(500).astype(F16)
    b = np.nextafter(a, np.array(np.inf, F16))
    mids = ((a.astype(F64) + b.astype(F64)) / 2).astype(F32)
    v = np.concatenate([v, mids])
    np.testing.assert_array_equal(simffn.cast_round(v, "float16").astype(F64), away16(v.astype(F64)))
    np.testing.assert_array_equal(simffn.cast_round(v, "bfloat16").astype(F64), away_bf16(v.astype(F64)))


# ------------------------------------------------------------------------------------------------
# inner_precise: where fp16 rounding happens
# ------------------------------------------------------------------------------------------------

def test_inner_precise_hand_case_relu():
    """x @ W1 = 1 + 2**-11 exactly (an fp16 tie).  inner_precise=1 rounds the MM1 output to fp16
    (RNE -> 1.0); inner_precise=0 keeps it fp32 through relu and then CAST_ROUNDs half away -> 1+2**-10."""
    x = np.array([[1.0, 1.0]], F16)
    w1 = np.array([[1.0], [2 ** -11]], F16)
    w2 = np.array([[1.0, 0.0]], F16)
    hp = npu_ffn(x, w1, w2, "relu", inner_precise=1)
    hq = npu_ffn(x, w1, w2, "relu", inner_precise=0)
    assert hp.dtype == hq.dtype == F16
    assert hp.tolist() == [[1.0, 0.0]]
    assert hq.tolist() == [[1 + 2 ** -10, 0.0]]
    assert npu_ffn(x, w1, w2, "relu").tolist() == hq.tolist()  # None means 0


def _rand_fp16_case(rng, m=24, k1=32, n1=48):
    x = rng.uniform(-1, 1, (m, k1)).astype(F16)
    w1 = (rng.standard_normal((k1, n1)) / 4).astype(F16)
    w2 = (rng.standard_normal((n1, k1)) / 4).astype(F16)
    b1 = (rng.standard_normal(n1) / 4).astype(F16)
    b2 = (rng.standard_normal(k1) / 4).astype(F16)
    return x, w1, w2, b1, b2


def ref_fp16(x, w1, w2, b1, b2, act, inner_precise, counts=None):
    """Per-expert reference of the fp16 flows (spec B.4.1 / B.4.3)."""
    m = x.shape[0]
    y = np.full((m, w2.shape[-1]), np.nan)
    for s, t, e in groups(m, counts):
        W1, W2 = (w1, w2) if e is None else (w1[e], w2[e])
        B1, B2 = (b1, b2) if e is None else (b1[e], b2[e])
        acc = (x[s:t].astype(F32) @ W1.astype(F32)).astype(F64) + B1.astype(F64)  # fp32 accumulate
        acc = rnd(acc, F32)
        if inner_precise == 1:
            a = act_ops(rnd(acc, F16), act, F16)
        else:
            a = away16(act_ops(acc, act, F32))
        acc2 = rnd((a.astype(F32) @ W2.astype(F32)).astype(F64) + B2.astype(F64), F32)
        y[s:t] = rnd(acc2, F16)
    return y


@pytest.mark.parametrize("act", ["relu", "fastgelu", "gelu", "silu"])
@pytest.mark.parametrize("ip", [0, 1])
def test_fp16_flows_against_reference(act, ip):
    rng = np.random.default_rng(11 + ip)
    x, w1, w2, b1, b2 = _rand_fp16_case(rng)
    got = npu_ffn(x, w1, w2, act, bias1=b1, bias2=b2, inner_precise=ip).astype(F64)
    want = ref_fp16(x, w1, w2, b1, b2, act, ip)
    if act == "relu":
        np.testing.assert_array_equal(got, want)
    else:
        d = ulp_diff(got, want, F16)
        assert d.max() <= 2 and (d > 0).mean() < 0.05


def test_inner_precise_differs_where_the_spec_says():
    """relu commutes with rounding, so for relu the flows differ only on fp16 ties (hand case above).
    With silu the fp16 rounding of the MM1 output and of each activation op (inner_precise=1) shows:
    the two flows differ, each matches its own reference, and 0 is closer to the float64 truth."""
    rng = np.random.default_rng(3)
    x, w1, w2, b1, b2 = _rand_fp16_case(rng, m=64)
    hp = npu_ffn(x, w1, w2, "silu", bias1=b1, bias2=b2, inner_precise=1).astype(F64)
    hq = npu_ffn(x, w1, w2, "silu", bias1=b1, bias2=b2, inner_precise=0).astype(F64)
    assert (hp != hq).mean() > 0.05
    assert ulp_diff(hp, ref_fp16(x, w1, w2, b1, b2, "silu", 1), F16).max() <= 2
    assert ulp_diff(hq, ref_fp16(x, w1, w2, b1, b2, "silu", 0), F16).max() <= 2
    # where the flows differ, it is because the MM1 output / activation were rounded to fp16 first:
    h32 = x.astype(F32) @ w1.astype(F32) + b1.astype(F32)
    a_hp = simffn.act_silu(h32.astype(F16)).astype(F64)
    a_hq = simffn.cast_round(simffn.act_silu(h32), "float16").astype(F64)
    assert (a_hp != a_hq).mean() > 0.05
    truth = silu64(x.astype(F64) @ w1.astype(F64) + b1) @ w2.astype(F64) + b2
    assert np.abs(hq - truth).mean() < np.abs(hp - truth).mean()


# ------------------------------------------------------------------------------------------------
# bf16
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "silu"])
def test_bf16_flow_against_reference(act):
    rng = np.random.default_rng(5)
    m, k1, n1 = 16, 24, 40
    x = rng.uniform(-2, 2, (m, k1)).astype(BF16)
    w1 = (rng.standard_normal((k1, n1)) / 4).astype(BF16)
    w2 = (rng.standard_normal((n1, k1)) / 4).astype(BF16)
    b1 = rng.standard_normal(n1).astype(F32)
    b2 = rng.standard_normal(k1).astype(F32)
    got = npu_ffn(x, w1, w2, act, bias1=b1, bias2=b2)
    assert got.dtype == BF16
    acc = rnd((x.astype(F32) @ w1.astype(F32)).astype(F64) + b1, F32)
    a = away_bf16(act_ops(acc, act, F32))
    want = rnd(rnd((a.astype(F32) @ w2.astype(F32)).astype(F64) + b2, F32), BF16)
    if act == "relu":
        np.testing.assert_array_equal(got.astype(F64), want)
    else:
        assert ulp_diff(got.astype(F64), want, BF16).max() <= 1


# ------------------------------------------------------------------------------------------------
# experts
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ip", [0, 1])
def test_experts_counts_and_index_split_rows(ip):
    rng = np.random.default_rng(9)
    counts = [3, 0, 7, 1, 0, 5]  # empty experts and unaligned sizes
    e, m, k1, n1 = len(counts), sum(counts), 20, 36
    x = rng.uniform(-1, 1, (2, m // 2, k1)).astype(F16)  # 3-D x: rows are flattened
    w1 = (rng.standard_normal((e, k1, n1)) / 4).astype(F16)
    w2 = (rng.standard_normal((e, n1, k1)) / 4).astype(F16)
    b1 = (rng.standard_normal((e, n1)) / 4).astype(F16)
    b2 = (rng.standard_normal((e, k1)) / 4).astype(F16)
    by_counts = npu_ffn(x, w1, w2, "relu", counts, b1, b2, ip)  # seed spelling, positional
    by_index = npu_ffn(x, w1, w2, "relu", bias1=b1, bias2=b2, inner_precise=ip,
                       expert_tokens_index=np.cumsum(counts).tolist())
    assert by_counts.shape == x.shape
    np.testing.assert_array_equal(by_counts, by_index)
    want = ref_fp16(x.reshape(m, k1), w1, w2, b1, b2, "relu", ip, counts)
    np.testing.assert_array_equal(by_counts.reshape(m, k1).astype(F64), want)


def test_rows_past_the_tokens_total_follow_the_undefined_policy():
    # Unreachable through the checked twin (the host requires sum == M); the unchecked compute fills them.
    x = np.ones((5, 4), F16)
    w1 = np.ones((2, 4, 4), F16) / 8
    w2 = np.ones((2, 4, 4), F16) / 8
    y = simffn.ffn_compute(x, w1, w2, "relu", expert_tokens=[2, 1], inner_precise=1)
    assert np.isfinite(y[:3].astype(F64)).all() and np.isnan(y[3:].astype(F64)).all()
    yz = simffn.ffn_compute(x, w1, w2, "relu", expert_tokens=[2, 1], inner_precise=1, undefined="zero")
    assert (yz[3:] == 0).all()
    with pytest.raises(ConstraintError, match="sum"):
        npu_ffn(x, w1, w2, "relu", [2, 1])


def test_zero_n1_writes_bias2():
    x = np.ones((3, 4), F16)
    w1 = np.zeros((4, 0), F16)
    w2 = np.zeros((0, 4), F16)
    b2 = np.array([1.5, -2, 0, 3], F16)
    y = npu_ffn(x, w1, w2, "relu", bias1=np.zeros(0, F16), bias2=b2, inner_precise=1)
    np.testing.assert_array_equal(y, np.broadcast_to(b2, (3, 4)))
    assert (npu_ffn(x, w1, w2, "relu", inner_precise=1) == 0).all()


# ------------------------------------------------------------------------------------------------
# GLU through the whole op
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act,fn", [("swiglu", lambda l, r: l * silu64(r)), ("geglu", lambda l, r: l * gelu_tanh64(r)),
                                    ("reglu", lambda l, r: l * relu64(r))])
def test_glu_ffn_against_reference(act, fn):
    rng = np.random.default_rng(13)
    m, k1, k2, n2 = 10, 16, 12, 20  # GLU: N1 = 2*K2, N2 free (no K1 == N2 check on this path)
    x = rng.uniform(-1, 1, (m, k1)).astype(F16)
    w1 = (rng.standard_normal((k1, 2 * k2)) / 3).astype(F16)
    w2 = (rng.standard_normal((k2, n2)) / 3).astype(F16)
    b1 = (rng.standard_normal(2 * k2) / 4).astype(F16)
    got = npu_ffn(x, w1, w2, act, bias1=b1, inner_precise=1).astype(F64)
    h = rnd(rnd((x.astype(F32) @ w1.astype(F32)).astype(F64) + b1, F32), F16)
    g = rnd(fn(h[:, :k2], h[:, k2:]), F16)
    want = rnd(rnd((g.astype(F32) @ w2.astype(F32)).astype(F64), F32), F16)
    d = ulp_diff(got, want, F16)
    if act == "reglu":
        assert d.max() == 0
    else:
        assert d.max() <= 2 and (d > 0).mean() < 0.05


# ------------------------------------------------------------------------------------------------
# quant
# ------------------------------------------------------------------------------------------------

def test_quant_hand_case_fp16_output():
    """Hand-computed: acc1 = [3, -2] (bias [1, 1]), *0.5 -> [1.5, -1], relu -> [1.5, 0];
    quant with scale 1, offset 0.5 -> fp16 [2.0, 0.5] -> rint (half to even) -> [2, 0];
    acc2 = [2, 2] + b2 [0, 4] = [2, 6]; * 0.25 -> [0.5, 1.5]."""
    x = np.array([[2, -3]], np.int8)
    w1 = np.array([[1, 0], [0, 1]], np.int8)
    w2 = np.array([[1, 1], [1, -1]], np.int8)
    kw = dict(bias1=np.array([1, 1], np.int32), bias2=np.array([0, 4], np.int32),
              scale=np.array([1.0], F32), offset=np.array([0.5], F32))
    for dt in ("int64", "uint64", "float32"):
        d1 = np.array([0.5, 0.5], F32)
        d2 = np.array([0.25, 0.25], F32)
        if dt != "float32":
            d1, d2 = encode_i64(d1).astype(dt), encode_i64(d2).astype(dt)
        y = npu_ffn(x, w1, w2, "relu", deq_scale1=d1, deq_scale2=d2, **kw)
        assert y.dtype == F16 and y.tolist() == [[0.5, 1.5]], dt


def test_quant_deq_scale_is_fp19_truncated():
    """deq2 = 1 + 2**-11 loses its last kept bit in FP19: 1536 * deq2 -> 1536 (not 1537)."""
    x = np.array([[96, 0]], np.int8)
    w1 = np.array([[1, 0], [0, 1]], np.int8)
    w2 = np.array([[16, 0], [0, 1]], np.int8)
    y = npu_ffn(x, w1, w2, "relu", scale=np.array([1.0], F32), offset=np.array([0.0], F32),
                deq_scale1=encode_i64([1.0, 1.0]), deq_scale2=encode_i64([1 + 2 ** -11, 1.0]))
    assert y.tolist() == [[1536.0, 0.0]]
    assert float(np.float16(1536 * (1 + 2 ** -11))) == 1537.0


def _quant_case(rng, e=None, per_channel=False, ydt="float16", deq_dtype="int64"):
    m, k1, n1 = 12, 32, 24
    x = rng.integers(-128, 128, (m, k1)).astype(np.int8)
    lead = () if e is None else (e,)
    w1 = rng.integers(-128, 128, lead + (k1, n1)).astype(np.int8)
    w2 = rng.integers(-128, 128, lead + (n1, k1)).astype(np.int8)
    b1 = rng.integers(-5000, 5000, lead + (n1,)).astype(np.int32)
    b2 = rng.integers(-5000, 5000, lead + (k1,)).astype(np.int32)
    scale = rng.uniform(0.5, 2.0, lead + ((n1,) if per_channel else ((1,) if e is None else ()))).astype(F32)
    offset = rng.uniform(-3, 3, (1,) if e is None else (e,)).astype(F32)
    d1 = rng.uniform(1e-3, 2e-3, lead + (n1,)).astype(F32)
    d2 = rng.uniform(1e-5, 2e-5, lead + (k1,)).astype(F32)
    if ydt == "bfloat16":
        d1, d2 = d1.astype(BF16), d2.astype(BF16)
    elif deq_dtype != "float32":
        d1, d2 = encode_i64(d1).astype(deq_dtype), encode_i64(d2).astype(deq_dtype)
    return x, w1, w2, b1, b2, scale, offset, d1, d2


def ref_quant(x, w1, w2, b1, b2, scale, offset, d1, d2, act, ydt, counts=None):
    m = x.shape[0]
    y = np.full((m, w2.shape[-1]), np.nan)
    for s, t, e in groups(m, counts):
        pick = (lambda a: a) if e is None else (lambda a: a[e])
        W1, W2, B1, B2, D1, D2 = map(pick, (w1, w2, b1, b2, d1, d2))
        sc = scale if e is None else (scale[e] if scale.ndim == 2 else scale[e:e + 1])
        off = offset if e is None else offset[e:e + 1]
        acc1 = x[s:t].astype(np.int64) @ W1.astype(np.int64) + B1  # exact integer GEMM
        if ydt == "float16":
            h = rnd(rnd(rnd(acc1, F32) * fp19(D1), F32), F16)
            a = act_ops(h, act, F16)
        else:
            h = rnd(rnd(acc1, F32) * D1.astype(F64), F32)
            a = rnd(act_ops(h, act, F32), F16)
        tq = rnd(a * rnd(sc.astype(F64), F16), F16)
        tq = rnd(tq + rnd(off.astype(F64), F16), F16)
        q = np.clip(np.rint(tq), -128, 127).astype(np.int64)
        acc2 = q @ W2.astype(np.int64) + B2
        if ydt == "float16":
            y[s:t] = rnd(rnd(rnd(acc2, F32) * fp19(D2), F32), F16)
        else:
            y[s:t] = rnd(rnd(rnd(acc2, F32) * D2.astype(F64), F32), BF16)
    return y


@pytest.mark.parametrize("deq_dtype", ["int64", "uint64", "float32"])
def test_quant_fp16_against_reference(deq_dtype):
    rng = np.random.default_rng(21)
    args = _quant_case(rng, deq_dtype=deq_dtype)
    x, w1, w2, b1, b2, scale, offset, d1, d2 = args
    y = npu_ffn(x, w1, w2, "relu", bias1=b1, bias2=b2, scale=scale, offset=offset, deq_scale1=d1, deq_scale2=d2)
    assert y.dtype == F16
    np.testing.assert_array_equal(y.astype(F64), ref_quant(*args, "relu", "float16"))


@pytest.mark.parametrize("per_channel", [False, True])
def test_quant_bf16_experts_against_reference(per_channel):
    rng = np.random.default_rng(22)
    counts = [5, 0, 7]
    args = _quant_case(rng, e=3, per_channel=per_channel, ydt="bfloat16")
    x, w1, w2, b1, b2, scale, offset, d1, d2 = args
    y = npu_ffn(x, w1, w2, "relu", counts, b1, b2, scale=scale, offset=offset, deq_scale1=d1,
                deq_scale2=d2, output_dtype="bfloat16")
    assert y.dtype == BF16
    np.testing.assert_array_equal(y.astype(F64), ref_quant(*args, "relu", "bfloat16", counts))


@pytest.mark.parametrize("act", ["gelu", "fastgelu", "silu"])
def test_quant_fp16_per_channel_experts_other_activations(act):
    rng = np.random.default_rng(23)
    counts = [4, 8]
    args = _quant_case(rng, e=2, per_channel=True)
    x, w1, w2, b1, b2, scale, offset, d1, d2 = args
    y = npu_ffn(x, w1, w2, act, counts, b1, b2, scale=scale, offset=offset, deq_scale1=d1, deq_scale2=d2)
    want = ref_quant(*args, act, "float16", counts)
    d = ulp_diff(y.astype(F64), want, F16)
    # an exp difference can flip one int8 rounding: allow a few ulps on a few elements
    assert (d > 0).mean() < 0.05 and np.abs(y.astype(F64) - want).max() < 0.05 * np.abs(want).max()


# ------------------------------------------------------------------------------------------------
# antiquant
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("xdt", ["float16", "bfloat16"])
def test_antiquant_against_reference(xdt):
    rng = np.random.default_rng(31)
    T = F16 if xdt == "float16" else BF16
    counts = [6, 0, 4]
    e, m, k1, n1 = 3, 10, 24, 40
    x = rng.uniform(-1, 1, (m, k1)).astype(T)
    w1 = rng.integers(-128, 128, (e, k1, n1)).astype(np.int8)
    w2 = rng.integers(-128, 128, (e, n1, k1)).astype(np.int8)
    s1 = rng.uniform(1e-3, 4e-3, (e, n1)).astype(T)
    s2 = rng.uniform(1e-3, 4e-3, (e, k1)).astype(T)
    o1 = rng.uniform(-2, 2, (e, n1)).astype(T)
    o2 = rng.uniform(-2, 2, (e, k1)).astype(T)
    bdt = F16 if xdt == "float16" else F32
    b1 = (rng.standard_normal((e, n1)) / 4).astype(bdt)
    b2 = (rng.standard_normal((e, k1)) / 4).astype(bdt)
    y = npu_ffn(x, w1, w2, "relu", counts, b1, b2, 1, antiquant_scale1=s1, antiquant_scale2=s2,
                antiquant_offset1=o1, antiquant_offset2=o2)
    assert y.dtype == T
    want = np.full((m, k1), np.nan)
    for s, t, g in groups(m, counts):
        if xdt == "float16":
            W1 = rnd(rnd(w1[g] + o1[g].astype(F64), F16) * s1[g].astype(F64), F16)
            W2 = rnd(rnd(w2[g] + o2[g].astype(F64), F16) * s2[g].astype(F64), F16)
            h = rnd(rnd((x[s:t].astype(F32) @ W1.astype(F32)).astype(F64) + b1[g], F32), F16)
            a = relu64(h)
        else:
            W1 = rnd(rnd((w1[g] + o1[g].astype(F64)) * s1[g].astype(F64), F32), BF16)
            W2 = rnd(rnd((w2[g] + o2[g].astype(F64)) * s2[g].astype(F64), F32), BF16)
            a = away_bf16(relu64(rnd((x[s:t].astype(F32) @ W1.astype(F32)).astype(F64) + b1[g], F32)))
        acc2 = rnd((a.astype(F32) @ W2.astype(F32)).astype(F64) + b2[g], F32)
        want[s:t] = rnd(acc2, T)
    np.testing.assert_array_equal(y.astype(F64), want)


def test_activation_name_is_case_insensitive():
    rng = np.random.default_rng(2)
    x, w1, w2, b1, b2 = _rand_fp16_case(rng, m=4, k1=8, n1=8)
    np.testing.assert_array_equal(npu_ffn(x, w1, w2, "FastGelu"), npu_ffn(x, w1, w2, "fastgelu"))


def test_msd_shapes_are_flagged_approximate():
    assert simffn.uses_msd_kernel("float16", "int8", m=4, k1=2560, n1=1536, num_experts=1)
    assert not simffn.uses_msd_kernel("float16", "int8", m=4, k1=2048, n1=1536, num_experts=1)  # K1 > 2048
    assert not simffn.uses_msd_kernel("float16", "int8", m=64, k1=2560, n1=1536, num_experts=1)  # tokens
    assert not simffn.uses_msd_kernel("float16", "float16", m=4, k1=2560, n1=1536, num_experts=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 2560)).astype(F16)
    w1 = rng.integers(-8, 8, (2560, 1536)).astype(np.int8)
    w2 = rng.integers(-8, 8, (1536, 2560)).astype(np.int8)
    aq = dict(antiquant_scale1=np.full(1536, 1e-3, F16), antiquant_offset1=np.zeros(1536, F16),
              antiquant_scale2=np.full(2560, 1e-3, F16), antiquant_offset2=np.zeros(2560, F16))
    with pytest.warns(simffn.ApproximateWarning, match="MSD"):
        npu_ffn(x, w1, w2, "relu", **aq)


def test_empty_rows_and_glu_without_k1():
    x = np.zeros((0, 8), F16)
    w1, w2 = np.ones((8, 8), F16), np.ones((8, 8), F16)
    assert npu_ffn(x, w1, w2, "gelu").shape == (0, 8)
    assert npu_ffn(x, w1[None].repeat(2, 0), w2[None].repeat(2, 0), "gelu", [0, 0]).shape == (0, 8)
    # GLU with K1 == 0: block dim 0, nothing written although y has elements -> undefined policy
    y = npu_ffn(np.zeros((3, 0), F16), np.zeros((0, 4), F16), np.ones((2, 5), F16), "swiglu", inner_precise=1)
    assert y.shape == (3, 5) and np.isnan(y.astype(F64)).all()


def test_zero_n1_quant_writes_dequantised_bias2():
    x = np.ones((2, 3), np.int8)
    w1, w2 = np.zeros((3, 0), np.int8), np.zeros((0, 3), np.int8)
    b2 = np.array([4, -6, 10], np.int32)
    kw = dict(scale=np.array([1.0], F32), offset=np.array([0.0], F32), bias1=np.zeros(0, np.int32), bias2=b2)
    y = npu_ffn(x, w1, w2, "relu", deq_scale1=encode_i64(np.zeros(0)), deq_scale2=encode_i64([0.5, 0.25, 2.0]), **kw)
    assert y.tolist() == [[2.0, -1.5, 20.0]] * 2
    yb = npu_ffn(x, w1, w2, "relu", deq_scale1=np.zeros(0, BF16), deq_scale2=np.array([0.5, 0.25, 2.0], BF16),
                 output_dtype="bfloat16", **kw)
    assert yb.dtype == BF16 and yb.astype(F64).tolist() == [[2.0, -1.5, 20.0]] * 2


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=6), k1=st.integers(1, 40),
       n1=st.integers(1, 40), ip=st.sampled_from([0, 1]), seed=st.integers(0, 2 ** 16))
def test_random_shapes_and_groups_relu_bit_exact(counts, k1, n1, ip, seed):
    """Random expert splits (empty experts, unaligned sizes): each expert's rows go through its own
    weights, bit for bit against the per-expert reference; both token spellings agree."""
    rng = np.random.default_rng(seed)
    e, m = len(counts), sum(counts)
    x = rng.uniform(-1, 1, (m, k1)).astype(F16)
    w1 = (rng.standard_normal((e, k1, n1)) / 3).astype(F16)
    w2 = (rng.standard_normal((e, n1, k1)) / 3).astype(F16)
    b1 = (rng.standard_normal((e, n1)) / 4).astype(F16)
    b2 = (rng.standard_normal((e, k1)) / 4).astype(F16)
    got = npu_ffn(x, w1, w2, "relu", counts, b1, b2, ip)
    np.testing.assert_array_equal(got.astype(F64), ref_fp16(x, w1, w2, b1, b2, "relu", ip, counts))
    by_index = npu_ffn(x, w1, w2, "relu", bias1=b1, bias2=b2, inner_precise=ip,
                       expert_tokens_index=np.cumsum(counts).tolist())
    np.testing.assert_array_equal(got, by_index)
