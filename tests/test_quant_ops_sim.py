"""Simulator of npu_swiglu (+ backward), npu_dynamic_quant (+ asymmetric) and npu_dequant_swiglu_quant
against independent references written here: scalar float32 loops in the kernel's op order, Python's
round() (half to even) for the int8 conversion, integer arithmetic for group bookkeeping and int4 packing."""
import math
import struct

import ml_dtypes
import numpy as np
import pytest

from ascend_moe.sim import quant_ops as q
from ascend_moe.sim.numerics import undefined_policy
from ascend_moe.sim.zero_rows import get_zero_row_policy, set_zero_row_policy, zero_row_policy

F = np.float32
BF16 = ml_dtypes.bfloat16


def exp32(v):
    """exp as the simulator's documented deviation defines it: the real exp rounded once to float32."""
    return F(math.exp(float(v)))


def rne_int(v, lo=-128, hi=127):
    return max(lo, min(hi, round(float(v))))       # Python's round() is half-to-even


# --------------------------------------------------------------------------------------------
# npu_swiglu
# --------------------------------------------------------------------------------------------

def swiglu_ref_row(a, b, dtype):
    out = []
    for ai, bi in zip(a, b):
        ai, bi = F(ai), F(bi)
        if dtype == "float32":
            t = F(1) / (exp32(-ai) + F(1))       # reciprocal ...
            out.append((t * ai) * bi)           # ... then two multiplies
        else:
            out.append((ai / (exp32(-ai) + F(1))) * bi)   # one division
    return np.array(out, dtype=F)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_swiglu_matches_kernel_order(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 64)) * 3).astype(F).astype(np.dtype(dtype) if dtype != "bfloat16" else BF16)
    got = q.swiglu(x)
    assert got.dtype == x.dtype and got.shape == (6, 32)
    for r in range(6):
        want = swiglu_ref_row(x[r, :32].astype(F), x[r, 32:].astype(F), dtype)
        if dtype != "float32":
            want = want.astype(x.dtype)
        assert np.array_equal(got[r].view(np.uint8), want.view(np.uint8)), (dtype, r)


def test_swiglu_fp32_and_half_orders_differ_somewhere():
    """The fp32 kernel's reciprocal-then-multiply is not the division the fp16/bf16 kernel uses: over
    random inputs the two fp32 results differ in some elements (so the per-dtype order matters)."""
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(4000) * 4).astype(F)
    recip = np.array([(F(1) / (exp32(-v) + F(1))) * v for v in a], F)
    div = np.array([v / (exp32(-v) + F(1)) for v in a], F)
    assert np.any(recip != div)
    x = np.concatenate([a, np.ones_like(a)])[None, :]
    assert np.array_equal(q.swiglu(x)[0], recip)


def test_swiglu_first_half_is_activated():
    x = np.array([[1.0, 3.0]], F)
    want = 3.0 / (1 + math.exp(-1.0))            # silu(1) * 3, not silu(3) * 1
    assert abs(float(q.swiglu(x)[0, 0]) - want) < 1e-6


@pytest.mark.parametrize("dim", [0, 1, -2, 2, -1])
def test_swiglu_dim(dim):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 8)).astype(np.float16)
    got = q.swiglu(x, dim=dim)
    d = dim % 3
    h = x.shape[d] // 2
    shape = list(x.shape)
    shape[d] = h
    assert got.shape == tuple(shape)
    a = np.take(x, range(h), axis=d).astype(F).ravel()
    b = np.take(x, range(h, 2 * h), axis=d).astype(F).ravel()
    assert np.array_equal(got.ravel(), swiglu_ref_row(a, b, "float16").astype(np.float16))


@pytest.mark.parametrize("bad,msg", [
    (dict(x=np.ones((2, 5), F)), "must be even"),
    (dict(x=np.ones((2, 4), F), dim=2), "out of range"),
    (dict(x=np.ones((2, 4), np.int32)), "float32, float16 or bfloat16"),
])
def test_swiglu_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg):
        q.swiglu(**bad)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_swiglu_backward_matches_kernel_order(dtype):
    rng = np.random.default_rng(3)
    npdt = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    x = (rng.standard_normal((3, 16)) * 2).astype(F).astype(npdt)
    g = rng.standard_normal((3, 8)).astype(F).astype(npdt)
    got = q.swiglu_backward(g, x)
    assert got.shape == x.shape and got.dtype == x.dtype
    for r in range(3):
        for j in range(8):
            a, b, gg = F(x[r, j]), F(x[r, 8 + j]), F(g[r, j])
            sig = F(1) / (exp32(-a) + F(1))
            gb = (sig * a) * gg
            m = ((sig * (-sig + F(1))) * a) + sig
            ga = (m * b) * gg if dtype == "float32" else (m * gg) * b
            assert got[r, j].astype(F) == F(ga).astype(npdt).astype(F), (r, j)
            assert got[r, 8 + j].astype(F) == F(gb).astype(npdt).astype(F), (r, j)


def test_swiglu_backward_is_the_derivative():
    """Against the analytic derivative in float64 (an independent check of the formula itself)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 12)).astype(F)
    g = rng.standard_normal((5, 6)).astype(F)
    a, b = x[:, :6].astype(np.float64), x[:, 6:].astype(np.float64)
    s = 1 / (1 + np.exp(-a))
    want = np.concatenate([g * b * (s + a * s * (1 - s)), g * a * s], axis=1)
    np.testing.assert_allclose(q.swiglu_backward(g, x), want, rtol=2e-5, atol=1e-6)


def test_swiglu_backward_dim0_and_rejects():
    x = np.arange(8, dtype=F).reshape(4, 2) / 4
    g = np.ones((2, 2), F)
    out = q.swiglu_backward(g, x, dim=0)
    assert out.shape == (4, 2)
    with pytest.raises(ValueError, match="grad_output shape"):
        q.swiglu_backward(np.ones((3, 1), F), x)
    with pytest.raises(ValueError, match="dtype"):
        q.swiglu_backward(g.astype(np.float16), x, dim=0)


# --------------------------------------------------------------------------------------------
# npu_dynamic_quant
# --------------------------------------------------------------------------------------------

def dq_ref_row(v, dmax=127, formula="reciprocal", lo=-128, hi=127):
    v = [F(t) for t in v]
    amax = max(abs(t) for t in v)
    if amax == 0:
        return [0] * len(v), F(0)
    qs = F(dmax) / amax
    qv = [rne_int(t * qs, lo, hi) for t in v]
    scale = F(1) / qs if formula == "reciprocal" else amax * F(1.0 / dmax)
    return qv, F(scale)


@pytest.mark.parametrize("dtype", [np.float16, BF16])
@pytest.mark.parametrize("formula", ["reciprocal", "multiply"])
def test_dynamic_quant_symmetric(dtype, formula):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 48)) * 5).astype(dtype)
    y, s = q.dynamic_quant(x, scale_formula=formula)
    assert y.dtype == np.int8 and y.shape == x.shape and s.shape == (2, 3) and s.dtype == F
    for i in range(2):
        for j in range(3):
            qv, sc = dq_ref_row(x[i, j].astype(F), formula=formula)
            assert y[i, j].tolist() == qv
            assert s[i, j].view(np.uint32) == F(sc).view(np.uint32)


def test_dynamic_quant_half_rounds_to_even_and_formulas_differ():
    # amax 2 -> qs = 63.5: 1 * 63.5 = 63.5 -> 64 (even), 3/4 * 63.5 = 47.625 -> 48, -1 -> -64
    y, s = q.dynamic_quant(np.array([[2.0, 1.0, -1.0, 0.75]], np.float16))
    assert y.tolist() == [[127, 64, -64, 48]]
    # some amax where 1/(127/amax) and amax*fp32(1/127) differ in the last bit
    found = False
    for amax in np.linspace(0.5, 4, 2001).astype(np.float16):
        a = F(amax)
        if F(1) / (F(127) / a) != a * F(1.0 / 127):
            x = np.array([[amax, 0]], np.float16)
            r, m = q.dynamic_quant(x)[1], q.dynamic_quant(x, scale_formula="multiply")[1]
            assert r[0] == F(1) / (F(127) / a) and m[0] == a * F(1.0 / 127) and r[0] != m[0]
            found = True
            break
    assert found


def test_dynamic_quant_smooth_and_group_index():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 16)).astype(np.float16)
    smooth = (rng.random(16) + 0.5).astype(np.float16)
    y, s = q.dynamic_quant(x, smooth)
    for r in range(7):
        qv, sc = dq_ref_row([F(a) * F(b) for a, b in zip(x[r].astype(F), smooth.astype(F))])
        assert y[r].tolist() == qv and s[r] == sc
    # per-expert smooth rows, group_index a cumsum [2, 2, 5]: rows 0-1 -> 0, rows 2-4 -> 2, rows 5-6 undefined
    sm = (rng.random((3, 16)) + 0.5).astype(np.float16)
    gi = np.array([2, 2, 5], np.int32)
    with undefined_policy("poison"):
        y, s = q.dynamic_quant(x, sm, gi)
    for r in range(5):
        e = next(i for i, end in enumerate(gi) if end >= r + 1)
        qv, sc = dq_ref_row([F(a) * F(b) for a, b in zip(x[r].astype(F), sm[e].astype(F))])
        assert y[r].tolist() == qv and s[r] == sc, r
    assert (y[5:] == -128).all() and np.isnan(s[5:]).all()


def test_dynamic_quant_zero_rows_policy():
    x = np.zeros((3, 8), np.float16)
    x[1] = np.arange(8)
    assert get_zero_row_policy() == "zero"
    y, s = q.dynamic_quant(x)
    assert (y[0] == 0).all() and (y[2] == 0).all() and s[0] == 0 and s[2] == 0
    assert y[1].tolist() == dq_ref_row(np.arange(8))[0]
    with zero_row_policy("undefined"), undefined_policy("poison"):
        y, s = q.dynamic_quant(x)
    assert (y[0] == -128).all() and s[0] == 0 and y[1].tolist() == dq_ref_row(np.arange(8))[0]
    set_zero_row_policy("undefined")
    try:
        with undefined_policy("zero"):
            assert (q.dynamic_quant(x)[0][0] == 0).all()
    finally:
        set_zero_row_policy(None)
    with pytest.raises(ValueError, match="all-zero-row policy"):
        q.dynamic_quant(x, zero_row="nan")


def test_dynamic_quant_int4_and_packed_int32():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 16)).astype(BF16)
    y4, s4 = q.dynamic_quant(x, dst="int4")
    y32, s32 = q.dynamic_quant(x, dst="int32")
    assert y4.dtype == ml_dtypes.int4 and y32.dtype == np.int32 and y32.shape == (3, 2)
    for r in range(3):
        qv, sc = dq_ref_row(x[r].astype(F), dmax=7, lo=-8, hi=7)
        assert y4[r].astype(np.int8).tolist() == qv and s4[r] == sc and s32[r] == sc
        for w in range(2):   # 8 nibbles per int32, element 8w+i in bits 4i..4i+3
            word = sum((qv[8 * w + i] & 0xF) << (4 * i) for i in range(8))
            assert int(y32[r, w]) & 0xFFFFFFFF == word
    with pytest.raises(ValueError, match="multiple of 8"):
        q.dynamic_quant(np.ones((2, 12), np.float16), dst="int32")


@pytest.mark.parametrize("bad,msg", [
    (dict(x=np.ones(8, np.float16)), "at least 2 dims"),
    (dict(x=np.ones((2, 8), F)), "float16 or bfloat16"),
    (dict(x=np.ones((2, 8), np.float16), group_index=np.array([2])), "needs smooth_scales"),
    (dict(x=np.ones((2, 8), np.float16), dst="int16"), "dst must be"),
    (dict(x=np.ones((2, 8), np.float16), scale_formula="x"), "scale_formula"),
    (dict(x=np.ones((2, 8), np.float16), smooth_scales=np.ones((2, 8), np.float16),
          group_index=np.array([2, 1])), "non-decreasing"),
])
def test_dynamic_quant_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg):
        q.dynamic_quant(**bad)


def test_dynamic_quant_asymmetric():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((4, 32)) * 3 + 1).astype(np.float16)
    x[3] = 0
    for dst, (R, O, lo, hi) in (("int8", (255, 127, -128, 127)), ("int4", (15, 7, -8, 7))):
        y, s, o = q.dynamic_quant_asymmetric(x, dst=dst)
        for r in range(4):
            v = [F(t) for t in x[r].astype(F)]
            mx, mn = max(v), min(v)
            sc = max((mx - mn) / F(R), F(1e-12))
            off = F(O) - mx / sc
            rec = F(1) / sc
            want = [rne_int(t * rec + off, lo, hi) for t in v]
            assert y[r].astype(np.int8).tolist() == want and s[r] == sc and o[r] == off, (dst, r)
    # an all-zero row is well defined here: scale 1e-12, offset 127, q = 127 (dequantises to 0)
    y, s, o = q.dynamic_quant_asymmetric(x)
    assert (y[3] == 127).all() and s[3] == F(1e-12) and o[3] == 127


# --------------------------------------------------------------------------------------------
# npu_dequant_swiglu_quant
# --------------------------------------------------------------------------------------------

def dsq_ref(x, ws, act, counts, activate_left, qscale=None, bias_i32=None):
    """Group path, dynamic quant: rows processed group by group from the counts."""
    T, H2 = x.shape
    H = H2 // 2
    out = {}
    r0 = 0
    for g, c in enumerate(counts):
        c = max(int(c), 0)
        for r in range(r0, min(r0 + c, T)):
            xi = [int(v) for v in x[r]]
            if bias_i32 is not None:
                xi = [v + int(b) for v, b in zip(xi, bias_i32[g])]
            d = [F(act[r]) * (F(ws[g][k]) * F(v)) for k, v in enumerate(xi)]
            A, G = (d[:H], d[H:]) if activate_left else (d[H:], d[:H])
            S = [gg * (a / (exp32(-a) + F(1))) for a, gg in zip(A, G)]
            if qscale is not None:
                S = [F(qscale[g][k]) * v for k, v in enumerate(S)]
            amax = max(abs(v) for v in S)
            sc = amax * F(1.0 / 127)
            out[r] = ([rne_int(v / sc) for v in S] if amax else [0] * H, sc)
        r0 += c
    return out


@pytest.mark.parametrize("activate_left", [True, False])
def test_dequant_swiglu_quant_dynamic_groups(activate_left):
    rng = np.random.default_rng(9)
    T, H2 = 9, 32
    x = rng.integers(-30000, 30000, (T, H2)).astype(np.int32)
    ws = (rng.random((3, H2)) * 1e-3).astype(F)
    act = (rng.random(T) * 0.1).astype(F)
    counts = np.array([3, 0, 4], np.int64)
    qs = (rng.random((3, H2 // 2)) + 0.5).astype(F)
    bias = rng.integers(-100, 100, (3, H2)).astype(np.int32)
    with undefined_policy("poison"):
        y, s = q.dequant_swiglu_quant(x, ws, act, bias=bias, quant_scale=qs, group_index=counts,
                                      activate_left=activate_left, quant_mode=1)
    ref = dsq_ref(x, ws, act, counts, activate_left, qscale=qs, bias_i32=bias)
    assert sorted(ref) == list(range(7))
    for r, (qv, sc) in ref.items():
        assert y[r].tolist() == qv and s[r] == sc, r
    assert (y[7:] == -128).all() and np.isnan(s[7:]).all()


def test_dequant_swiglu_quant_default_activates_second_half():
    x = np.array([[1, 3]], np.int32)
    y, s = q.dequant_swiglu_quant(x, np.ones(2, F), quant_mode=1)      # silu(3) * 1
    assert abs(float(s[0]) * 127 - 3 / (1 + math.exp(-3))) < 1e-5 and y.tolist() == [[127]]
    y2, s2 = q.dequant_swiglu_quant(x, np.ones(2, F), quant_mode=1, activate_left=True)   # silu(1) * 3
    assert abs(float(s2[0]) * 127 - 3 / (1 + math.exp(-1))) < 1e-5


def test_dequant_swiglu_quant_static_modes_and_zero_rows():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 16)).astype(BF16)
    x[2] = 0
    with undefined_policy("poison"):
        y, s = q.dequant_swiglu_quant(x, quant_scale=np.array([0.02], F), quant_offset=np.array([3.0], F))
    assert np.isnan(s).all()      # static mode never writes scale
    for r in range(4):
        v = [F(t) for t in x[r].astype(F)]
        A, G = v[8:], v[:8]
        S = [g * (a / (exp32(-a) + F(1))) for a, g in zip(A, G)]
        assert y[r].tolist() == [rne_int(t * (F(1) / F(0.02)) + F(3)) for t in S], r
    # per-channel static scale: a division; a zero scalar scale is replaced by 1
    qsc = (rng.random(8) + 0.1).astype(F)
    y, _ = q.dequant_swiglu_quant(x, quant_scale=qsc)
    v = [F(t) for t in x[0].astype(F)]
    S = [g * (a / (exp32(-a) + F(1))) for a, g in zip(v[8:], v[:8])]
    assert y[0].tolist() == [rne_int(t / qq) for t, qq in zip(S, qsc)]
    y0, _ = q.dequant_swiglu_quant(x, quant_scale=np.array([0.0], F))
    assert y0[0].tolist() == [rne_int(t) for t in S]
    # dynamic all-zero row: 0 by the all-zero-row policy, scale 0
    y, s = q.dequant_swiglu_quant(x, quant_mode=1)
    assert (y[2] == 0).all() and s[2] == 0
    with zero_row_policy("undefined"), undefined_policy("poison"):
        assert (q.dequant_swiglu_quant(x, quant_mode=1)[0][2] == -128).all()


def test_dequant_swiglu_quant_swigluoai_mode2():
    x = np.array([[2.0, -9.0, 8.0, 0.5]], F).astype(BF16)
    y, s = q.dequant_swiglu_quant(x, quant_mode=1, activate_left=True, swiglu_mode=2,
                                  clamp_limit=7.0, glu_alpha=1.702, glu_bias=1.0)
    v = [F(t) for t in x[0].astype(F)]
    A, G = v[:2], v[2:]
    S = []
    for a, g in zip(A, G):
        g = F(min(max(g, F(-7)), F(7))) + F(1)
        a = min(a, F(7))
        S.append(g * (a / (exp32(a * F(-1.702)) + F(1))))
    sc = max(abs(t) for t in S) * F(1.0 / 127)
    assert s[0] == sc and y[0].tolist() == [rne_int(t / sc) for t in S]


def test_dequant_swiglu_quant_rejects():
    with pytest.raises(ValueError, match="at least 2 dims"):
        q.dequant_swiglu_quant(np.ones(4, np.int32))
    with pytest.raises(ValueError, match="even"):
        q.dequant_swiglu_quant(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="quant_mode"):
        q.dequant_swiglu_quant(np.ones((2, 4), np.int32), quant_mode=2)


def test_dequant_swiglu_quant_flattens_leading_dims():
    rng = np.random.default_rng(11)
    x = rng.integers(-1000, 1000, (2, 3, 8)).astype(np.int32)
    act = rng.random((2, 3)).astype(F)
    y, s = q.dequant_swiglu_quant(x, np.full(8, 0.01, F), act, quant_mode=1)
    y2, s2 = q.dequant_swiglu_quant(x.reshape(6, 8), np.full(8, 0.01, F), act.reshape(6), quant_mode=1)
    assert y.shape == (2, 3, 4) and s.shape == (2, 3)
    assert np.array_equal(y.reshape(6, 4), y2) and np.array_equal(s.reshape(6), s2)


def test_torch_signature_twins():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 16)).astype(BF16)
    y, s = q.npu_dynamic_quant(x)
    assert y.dtype == np.int8 and y[0].tolist() == dq_ref_row(x[0].astype(F))[0]
    y32, _ = q.npu_dynamic_quant(x, dst_type=16)                 # torch.quint4x2
    assert y32.dtype == np.int32 and y32.shape == (3, 2)
    ya, sa, oa = q.npu_dynamic_quant_asymmetric(x)
    assert ya.shape == (3, 16) and sa.shape == oa.shape == (3,)
    with pytest.raises(NotImplementedError, match="pertoken"):
        q.npu_dynamic_quant(x, quant_mode="pertensor")
    with pytest.raises(ValueError, match="dst_type=5"):
        q.npu_dynamic_quant(x, dst_type=5)
    assert np.array_equal(q.npu_swiglu(x, dim=-1), q.swiglu(x))
    xi = rng.integers(-100, 100, (4, 8)).astype(np.int32)
    yd, sd = q.npu_dequant_swiglu_quant(xi, weight_scale=np.full(8, 0.1, F), quant_mode=1, activate_left=True)
    assert yd.shape == (4, 4) and sd.shape == (4,)
    with pytest.raises(NotImplementedError, match="round_mode"):
        q.npu_dequant_swiglu_quant(xi, round_mode=2)


def test_sim_modules_import_without_torch_or_the_checker():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; "
            "import ascend_moe.sim.quant_ops, ascend_moe.sim.gmm_quant, ascend_moe.sim.zero_rows; "
            "bad = [m for m in sys.modules if m.startswith(('ascend_moe.rules', 'ascend_moe.products'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
