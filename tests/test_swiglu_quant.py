"""Bit-exactness of the GMM-SwiGLU-Quant simulators (v1, v2; A8W8 and A8W4) against an independent
reference written here from the spec's listed arithmetic (grouped-matmul-family 2.3/2.4): a plain
per-group loop, int64 accumulation, and every fp32 step spelled out with explicit np.float32 values.

The reference shares exactly one definition with the simulator, the named deviation: exp is the
float64 exponential rounded to float32.
"""
import numpy as np
import pytest

import ascend_moe
from ascend_moe.formats import set_format
from ascend_moe.sim import swiglu_quant as sq
from ascend_moe.sim.quant_gemm import (
    fp19_scales, group_bounds, grouped_int8_matmul, msd_split_int8, weight_to_nz_storage,
)
from ascend_moe.sim.numerics import pack_int4

f32 = np.float32


# ------------------------------------------------------------------------------------------------
# the independent reference
# ------------------------------------------------------------------------------------------------

def ref_bounds(group_list, gtype, M):
    ends = np.cumsum(group_list) if gtype == 1 else np.asarray(group_list)
    starts = [0] + list(ends[:-1])
    return [(int(s), min(int(t), M)) for s, t in zip(starts, ends)]


def ref_swiglu(c):
    h = c.shape[1] // 2
    a, g = c[:, :h].astype(f32), c[:, h:].astype(f32)
    with np.errstate(over="ignore"):
        e = np.exp((-a).astype(np.float64)).astype(f32)      # the named deviation (exp)
    den = (e + f32(1)).astype(f32)
    sw = (a / den).astype(f32)
    return (g * sw).astype(f32)


def ref_quant_v1(S):
    amax = np.abs(S).max(axis=1).astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        qs = (amax / f32(127)).astype(f32)
        r = (f32(1) / qs).astype(f32)
        v = (S * r[:, None]).astype(f32)
    v16 = v.astype(np.float16)                               # fp32 -> fp16 RNE
    q = np.rint(v16.astype(np.float64))                      # fp16 -> int8 RNE
    return q, qs


def ref_quant_v2(S):
    amax = np.abs(S).max(axis=1).astype(f32)
    qs = (amax * f32(1.0 / 127.0)).astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (S / qs[:, None]).astype(f32)
    return np.rint(v.astype(np.float64)), qs


def finish(q, qs, M, total, undefined):
    """int8 out / out_scale arrays with the documented undefined regions (NaN -> policy value)."""
    bad = -128 if undefined == "poison" else 0
    out = np.full((M, q.shape[1]), bad, np.int64)
    outs = np.full(M, np.nan if undefined == "poison" else 0.0, np.float32)
    zero_row = (qs == 0)[:, None]                             # amax == 0: the all-zero-row policy, 0 by default
    qq = np.where(np.isnan(q), np.where(zero_row, 0, bad), q)
    out[:total] = np.clip(qq, -128, 127)
    outs[:total] = qs
    return out.astype(np.int8), outs


def ref_a8w8(x, w, ws, xs, group_list, gtype, kernel, undefined="poison"):
    M, N = x.shape[0], w.shape[2]
    rows_c = []
    for e, (s, t) in enumerate(ref_bounds(group_list, gtype, M)):
        if t <= s:
            continue
        acc = x[s:t].astype(np.int64) @ w[e].astype(np.int64)
        assert np.abs(acc).max(initial=0) < 2 ** 31
        c = acc.astype(f32)
        wse = ws[e].astype(f32)[None, :]
        xse = xs[s:t].astype(f32)[:, None]
        if kernel == "v1":
            c = (c * xse).astype(f32)
            c = (c * wse).astype(f32)
        else:
            c = (wse * c).astype(f32)
            c = (xse * c).astype(f32)
        rows_c.append(c)
    total = sum(c.shape[0] for c in rows_c)
    C = np.concatenate(rows_c) if rows_c else np.zeros((0, N), f32)
    S = ref_swiglu(C)
    q, qs = (ref_quant_v1 if kernel == "v1" else ref_quant_v2)(S)
    return finish(q, qs, M, total, undefined)


def ref_decode_scale(scale, fp19=True):
    s = np.asarray(scale)
    bits = s.view(np.uint32) if s.dtype == np.float32 else (s.view(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    if fp19:
        bits = bits & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def ref_a8w4(x, w4, scale, assist, xs, group_list, gtype, fp19=True, undefined="poison"):
    M, K = x.shape
    N = w4.shape[2]
    sc = ref_decode_scale(scale, fp19)
    if sc.ndim == 2:
        sc = sc[:, None, :]
    G = sc.shape[1]
    gk = K // G
    rows_c = []
    for e, (s, t) in enumerate(ref_bounds(group_list, gtype, M)):
        if t <= s:
            continue
        xe = x[s:t].astype(np.int64)
        hi = xe // 16
        lo = xe % 16 - 8
        assert np.array_equal(16 * hi + lo + 8, xe)
        halves = []
        for part in (hi, lo):
            acc16 = None
            for g in range(G):
                p = part[:, g * gk:(g + 1) * gk] @ w4[e, g * gk:(g + 1) * gk].astype(np.int64)
                d = (p.astype(np.float64) * sc[e, g].astype(np.float64)).astype(np.float16)
                acc16 = d if acc16 is None else (acc16.astype(np.float64) + d.astype(np.float64)).astype(np.float16)
            halves.append(acc16)
        c = (halves[0].astype(f32) * f32(16)).astype(f32)
        c = (c + halves[1].astype(f32)).astype(f32)
        c = (c + assist[e].astype(f32)[None, :]).astype(f32)
        c = (c * xs[s:t].astype(f32)[:, None]).astype(f32)
        rows_c.append(c)
    total = sum(c.shape[0] for c in rows_c)
    C = np.concatenate(rows_c) if rows_c else np.zeros((0, N), f32)
    q, qs = ref_quant_v1(ref_swiglu(C))
    return finish(q, qs, M, total, undefined)


def assert_bits(got, want):
    out, outs = got[0], got[1]
    np.testing.assert_array_equal(out, want[0])
    np.testing.assert_array_equal(outs.view(np.uint32), want[1].view(np.uint32))


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

def random_group_list(rng, E, M, count):
    counts = rng.multinomial(int(rng.integers(0, M + 1)), np.ones(E) / E)
    counts[rng.random(E) < 0.3] = 0                           # empty groups
    if counts.sum() > M:
        counts[:] = 0
    return counts.astype(np.int64) if count else np.cumsum(counts).astype(np.int64)


def a8w8_case(seed):
    rng = np.random.default_rng(seed)
    E = int(rng.integers(1, 5))
    M = int(rng.integers(1, 48))
    K = 16 * int(rng.integers(1, 9))
    N = 32 * int(rng.integers(1, 4))
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    x[rng.random(M) < 0.15] = 0                               # all-zero rows
    w = rng.integers(-128, 128, (E, K, N)).astype(np.int8)
    ws = (rng.standard_normal((E, N)) * 1e-3).astype(f32)
    xs = (rng.random(M) * 1e-2).astype(f32)
    return rng, E, M, K, N, x, w, ws, xs


# ------------------------------------------------------------------------------------------------
# A8W8
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_a8w8_v1_v2_random_bit_exact(seed):
    rng, E, M, K, N, x, w, ws, xs = a8w8_case(seed)
    gl = random_group_list(rng, E, M, count=False)
    storage = weight_to_nz_storage(w)
    got1 = sq.npu_grouped_matmul_swiglu_quant(x, storage, gl, ws, xs)
    assert_bits(got1, ref_a8w8(x, w, ws, xs, gl, 0, "v1"))
    assert np.isnan(got1[2]) and got1[2].shape == ()
    gtype = seed % 2
    gl2 = np.diff(np.concatenate([[0], gl])).astype(np.int64) if gtype else gl
    got2 = sq.npu_grouped_matmul_swiglu_quant_v2(x, [storage], [ws], xs, gl2, group_list_type=gtype)
    assert_bits(got2, ref_a8w8(x, w, ws, xs, gl, 0, "v2"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a8w8_v1_half_scales(dtype):
    from ascend_moe.sim.numerics import np_dtype
    rng, E, M, K, N, x, w, ws, xs = a8w8_case(100)
    ws_h = ws.astype(np_dtype(dtype))
    gl = np.array([M // 2] * (E - 1) + [M], np.int64)
    got = sq.npu_grouped_matmul_swiglu_quant(x, weight_to_nz_storage(w), gl, ws_h, xs)
    assert_bits(got, ref_a8w8(x, w, ws_h.astype(f32), xs, gl, 0, "v1"))


def test_nz_tag_and_storage_identical():
    rng, E, M, K, N, x, w, ws, xs = a8w8_case(7)
    gl = np.array([M] * E, np.int64)
    w_tag = w.copy()
    set_format(w_tag, "FRACTAL_NZ")
    a = sq.npu_grouped_matmul_swiglu_quant(x, w_tag, gl, ws, xs)
    b = sq.npu_grouped_matmul_swiglu_quant(x, weight_to_nz_storage(w), gl, ws, xs)
    for u, v in zip(a[:2], b[:2]):
        np.testing.assert_array_equal(u.view(np.uint8), v.view(np.uint8))


def crafted_rows(targets_per_row):
    """x, weight (E=1), scales such that S = exact integers T (one T row per x row) and amax = 4064,
    so v1's v = T / 32 exactly (fp16 ties when T is odd and |T| >= 2048).

    x row: 32 ones; a-columns sum to 32 (silu(32) == 32 exactly), g-columns sum to T with
    weight_scale 1/32, so S = (T/32) * 32 = T.  Column 0 carries T = 4064 to pin amax.
    """
    h = 32
    rows = len(targets_per_row)
    K, N = 32, 2 * h
    x = np.zeros((rows, K), np.int8)
    x[:, :32] = 1
    # one expert per row so every row can have its own weight
    w = np.zeros((rows, K, N), np.int8)
    for r, T in enumerate(targets_per_row):
        Ts = [4064] + list(T) + [0] * (h - 1 - len(T))
        w[r, :, :h] = 1
        for j, t in enumerate(Ts):
            base, rem = divmod(int(t), 32)
            col = np.full(32, base, np.int64)
            col[:rem] += 1
            w[r, :, h + j] = col
    ws = np.ones((rows, N), f32)
    ws[:, h:] = f32(1 / 32)
    xs = np.ones(rows, f32)
    gl = np.arange(1, rows + 1, dtype=np.int64)
    return x, w, ws, xs, gl


def test_double_rounding_crafted_101_47():
    # T = 3247 -> v = 101.46875: fp16 rounds the tie to 101.5, then int8 RNE gives 102 (v1);
    # a single rounding gives 101 (v2 fusion kernel; its qs = 4064 * fp32(1/127) is a hair above 32).
    x, w, ws, xs, gl = crafted_rows([[3247, -3247, 3245]])
    nz = weight_to_nz_storage(w)
    out1, s1, _ = sq.npu_grouped_matmul_swiglu_quant(x, nz, gl, ws, xs)
    assert s1[0] == f32(32.0)
    assert out1[0, 0] == 127 and out1[0, 1] == 102 and out1[0, 2] == -102
    assert np.rint(3247 / 32) == 101                          # what one rounding of v would give
    assert out1[0, 3] == 101                                  # 101.40625 -> fp16 101.375 -> 101
    out2, s2 = sq.npu_grouped_matmul_swiglu_quant_v2(x, [nz], [ws], xs, gl)
    assert out2[0, 1] == 101 and out2[0, 2] == -101
    assert_bits((out1, s1), ref_a8w8(x, w, ws, xs, gl, 0, "v1"))
    assert_bits((out2, s2), ref_a8w8(x, w, ws, xs, gl, 0, "v2"))


def test_fp16_ties_sweep():
    # every odd T in [2049, 4063] and its negation: v = T/32 lies exactly on an fp16 tie
    ts = [t for t in range(2049, 4064, 2)] + [-t for t in range(2049, 4064, 2)]
    chunks = [ts[i:i + 31] for i in range(0, len(ts), 31)]
    x, w, ws, xs, gl = crafted_rows(chunks)
    nz = weight_to_nz_storage(w)
    got1 = sq.npu_grouped_matmul_swiglu_quant(x, nz, gl, ws, xs)
    want1 = ref_a8w8(x, w, ws, xs, gl, 0, "v1")
    assert_bits(got1, want1)
    # double rounding differs from a single rounding on a good share of the ties
    v = np.array([c + [0] * (31 - len(c)) for c in chunks], np.float64) / 32
    single = np.rint(v)
    assert (got1[0][:, 1:].astype(np.int64) != single).sum() > 100
    assert_bits(sq.npu_grouped_matmul_swiglu_quant_v2(x, [nz], [ws], xs, gl), ref_a8w8(x, w, ws, xs, gl, 0, "v2"))


@pytest.mark.parametrize("policy", ["poison", "zero"])
def test_zero_rows_and_rows_past_total(policy):
    rng = np.random.default_rng(3)
    E, M, K, N = 3, 20, 32, 64
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    x[[2, 5]] = 0
    w = rng.integers(-128, 128, (E, K, N)).astype(np.int8)
    ws = (rng.standard_normal((E, N)) * 1e-3).astype(f32)
    xs = np.ones(M, f32)
    gl = np.array([0, 4, 12], np.int64)                      # an empty group, rows 12.. past the total
    nz = weight_to_nz_storage(w)
    out, s, off = sq.npu_grouped_matmul_swiglu_quant(x, nz, gl, ws, xs, undefined=policy)
    assert_bits((out, s), ref_a8w8(x, w, ws, xs, gl, 0, "v1", undefined=policy))
    bad = -128 if policy == "poison" else 0
    assert s[2] == 0.0 and (out[2] == 0).all()                # amax == 0: scale 0, int8 0 (all-zero-row policy)
    assert (out[12:] == bad).all()
    assert np.isnan(s[12:]).all() if policy == "poison" else (s[12:] == 0).all()
    out2, s2 = sq.npu_grouped_matmul_swiglu_quant_v2(x, [nz], [ws], xs, gl, undefined=policy)
    assert_bits((out2, s2), ref_a8w8(x, w, ws, xs, gl, 0, "v2", undefined=policy))


def test_empty_group_list_total_zero():
    rng, E, M, K, N, x, w, ws, xs = a8w8_case(5)
    gl = np.zeros(E, np.int64)
    out, s, _ = sq.npu_grouped_matmul_swiglu_quant(x, weight_to_nz_storage(w), gl, ws, xs)
    assert (out == -128).all() and np.isnan(s).all()


# ------------------------------------------------------------------------------------------------
# A8W4 (MSD)
# ------------------------------------------------------------------------------------------------

def a8w4_case(seed, G=1):
    rng = np.random.default_rng(1000 + seed)
    E = int(rng.integers(1, 4))
    M = int(rng.integers(1, 40))
    K = 16 * G * int(rng.integers(1, 5))
    N = 64 * int(rng.integers(1, 3))
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    x[rng.random(M) < 0.1] = 0
    w4 = rng.integers(-8, 8, (E, K, N)).astype(np.int8)
    s = (rng.random((E, G, N) if G > 1 else (E, N)) * 1e-2 + 1e-4).astype(f32)
    assist = (rng.standard_normal((E, N)) * 3).astype(f32)
    xs = (rng.random(M) * 1e-1).astype(f32)
    return rng, E, M, K, N, x, w4, s, assist, xs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("G", [1, 2, 4])
def test_a8w4_v1_v2_random_bit_exact(seed, G):
    rng, E, M, K, N, x, w4, s, assist, xs = a8w4_case(seed, G)
    enc = s.view(np.uint32).astype(np.int64)                  # vllm-ascend's int64 scale encoding
    if seed % 2:
        enc = enc.astype(np.uint64)
    gl = random_group_list(rng, E, M, count=False)
    packed = pack_int4(w4)                                    # int32 [E, K, N/8]
    form = seed % 3
    weight = packed if form == 0 else weight_to_nz_storage(packed) if form == 1 else packed.copy()
    if form == 2:
        set_format(weight, "FRACTAL_NZ")
    want = ref_a8w4(x, w4, enc, assist, xs, gl, 0)
    assert_bits(sq.npu_grouped_matmul_swiglu_quant(x, weight, gl, enc, xs, bias=assist), want)
    counts = np.diff(np.concatenate([[0], gl])).astype(np.int64)
    got2 = sq.npu_grouped_matmul_swiglu_quant_v2(x, [weight], [enc], xs, counts, weight_assist_matrix=[assist],
                                                 dequant_mode=1 if G > 1 else 0, group_list_type=1)
    assert_bits(got2, want)


def test_a8w4_fp19_switch_and_int4_values():
    import ml_dtypes
    rng, E, M, K, N, x, w4, s, assist, xs = a8w4_case(11, G=2)
    s = (s * f32(1.2345678)).astype(f32)                      # scales with low mantissa bits set
    enc = s.view(np.uint32).astype(np.int64)
    gl = np.array([M] * E, np.int64)
    w_i4 = w4.astype(ml_dtypes.int4)
    on = sq.npu_grouped_matmul_swiglu_quant(x, w_i4, gl, enc, xs, bias=assist)
    assert_bits(on, ref_a8w4(x, w4, enc, assist, xs, gl, 0, fp19=True))
    with fp19_scales(False):
        off = sq.npu_grouped_matmul_swiglu_quant(x, w_i4, gl, enc, xs, bias=assist)
    assert_bits(off, ref_a8w4(x, w4, enc, assist, xs, gl, 0, fp19=False))
    assert not np.array_equal(on[1], off[1])


def test_a8w4_assist_from_formula_matches_signed_gemm():
    # with assist = 8 * sum_k w * s (the offline formula) and scales exactly representable, the MSD
    # result dequantises x @ w: check against the plain int8 GEMM within fp16 partial rounding
    rng, E, M, K, N, x, w4, s, _, xs = a8w4_case(4)
    s = np.full_like(s, f32(2.0 ** -6))
    assist = (8 * np.einsum("ekn,en->en", w4.astype(np.float64), s.astype(np.float64))).astype(f32)
    enc = s.view(np.uint32).astype(np.int64)
    gl = np.array([M] * E, np.int64)
    from ascend_moe.sim.quant_gemm import grouped_msd_partials, msd_combine
    chi, clo = grouped_msd_partials(x, w4, s, [(0, M)] + [(M, M)] * (E - 1))
    c = msd_combine(chi, clo) + assist[0]
    exact = (x.astype(np.int64) @ w4[0].astype(np.int64)) * 2.0 ** -6
    np.testing.assert_allclose(c, exact, rtol=0, atol=np.abs(exact).max() * 2 ** -9 + 1e-3)
    assert_bits(sq.npu_grouped_matmul_swiglu_quant(x, pack_int4(w4), gl, enc, xs, bias=assist),
                ref_a8w4(x, w4, enc, assist, xs, gl, 0))


# ------------------------------------------------------------------------------------------------
# shared helpers (quant_gemm)
# ------------------------------------------------------------------------------------------------

def test_msd_split_all_int8():
    v = np.arange(-128, 128).astype(np.int8)
    hi, lo = msd_split_int8(v)
    assert hi.min() >= -8 and hi.max() <= 7 and lo.min() >= -8 and lo.max() <= 7
    np.testing.assert_array_equal(16 * hi.astype(np.int64) + lo + 8, v)


def test_group_bounds_forms_and_errors():
    assert group_bounds([2, 2, 5], 0, 10) == [(0, 2), (2, 2), (2, 5)]
    assert group_bounds([2, 0, 3], 1, 10) == [(0, 2), (2, 2), (2, 5)]
    assert group_bounds([4, 9], 0, 6) == [(0, 4), (4, 6)]
    for bad, t in (([3, 1], 0), ([-1, 2], 1), ([[1]], 0), ([1], 2)):
        with pytest.raises(ValueError):
            group_bounds(bad, t, 10)


def test_grouped_int8_matmul_exact_extremes():
    # all -128 operands: the largest partial sums; K past one float32-exact chunk (1024)
    rng = np.random.default_rng(0)
    K = 3000
    x = np.full((5, K), -128, np.int8)
    x[1] = rng.integers(-128, 128, K)
    w = np.full((2, K, 7), -128, np.int8)
    w[1, :, 3] = 127
    acc = grouped_int8_matmul(x, w, [(0, 2), (2, 4)])
    ref = np.zeros((5, 7), np.int64)
    ref[:2] = x[:2].astype(np.int64) @ w[0].astype(np.int64)
    ref[2:4] = x[2:4].astype(np.int64) @ w[1].astype(np.int64)
    np.testing.assert_array_equal(acc, ref)
    assert acc[0, 0] == K * 16384


def test_exp_deviation_is_documented():
    assert "exp" in sq.__doc__ and "deviation" in sq.__doc__
    a = np.array([-100, -17, 0, 1, 17, 88.7], f32)
    np.testing.assert_array_equal(sq.exp_f32(a), np.exp(a.astype(np.float64)).astype(f32))


def test_exp_f32_is_the_correctly_rounded_float32_exp():
    """The model's exp equals Python's own ``math.exp`` (the C library's, a different implementation from
    NumPy's vector one) rounded once to float32: both are within 1.27 float64 ulps, closer than any float32
    input's exp lies to a float32 rounding midpoint, so both give the correctly rounded result.  The three
    inputs closest to a midpoint (1.27, 2.42, 2.73 ulps), the ends of the finite range and random inputs."""
    import math
    rng = np.random.default_rng(11)
    hard = np.array([-14.56709, -0.00735258358, 1.51990689e-05], f32)
    ends = np.array([88.72283, 88.7228394, -87.33654, -103.27893, -103.97208, -104.0, 1e-30, -1e-30], f32)
    rand = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-8, 2, 100_000)).astype(f32)
    rand = rand[np.abs(rand) < 88]
    x = np.concatenate([hard, ends, rand])
    with np.errstate(all="ignore"):
        got = sq.exp_f32(x)
        want = np.array([np.float32(math.exp(float(v))) if float(v) < 89 else np.float32(np.inf) for v in x], f32)
    assert (got.view(np.uint32) == want.view(np.uint32)).all(), x[got.view(np.uint32) != want.view(np.uint32)][:5]


def test_zero_rows_follow_the_zero_row_policy():
    """All-zero rows: 0 by default (CANN's test tables); "undefined" hands them to the undefined policy."""
    from ascend_moe.sim.zero_rows import zero_row_policy
    rng = np.random.default_rng(4)
    E, M, K, N = 2, 6, 32, 64
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    x[1] = 0
    w = rng.integers(-128, 128, (E, K, N)).astype(np.int8)
    ws = (rng.standard_normal((E, N)) * 1e-3).astype(f32)
    gl = np.array([3, 6], np.int64)
    nz = weight_to_nz_storage(w)
    for kernel in ("v1", "v2"):
        def run():
            if kernel == "v1":
                return sq.npu_grouped_matmul_swiglu_quant(x, nz, gl, ws, np.ones(M, f32), undefined="poison")[:2]
            return sq.npu_grouped_matmul_swiglu_quant_v2(x, [nz], [ws], np.ones(M, f32), gl, undefined="poison")
        out, s = run()
        assert (out[1] == 0).all() and s[1] == 0 and (out[0] != 0).any()
        with zero_row_policy("undefined"):
            out, s = run()
        assert (out[1] == -128).all() and s[1] == 0


@pytest.mark.parametrize("seed", range(4))
def test_epilogue_row_blocks_do_not_change_a_bit(monkeypatch, seed):
    """The dequant / SwiGLU / per-token quant epilogue runs on row blocks: with blocks of 5 rows (a block
    boundary inside groups, all-zero rows in several blocks, rows past the total) A8W8 v1/v2 and A8W4 still
    equal the row-by-row references of this file."""
    monkeypatch.setattr(sq, "EPILOGUE_ROWS", 5)
    rng, E, M, K, N, x, w, ws, xs = a8w8_case(200 + seed)
    gl = random_group_list(rng, E, M, count=False)
    storage = weight_to_nz_storage(w)
    assert_bits(sq.npu_grouped_matmul_swiglu_quant(x, storage, gl, ws, xs), ref_a8w8(x, w, ws, xs, gl, 0, "v1"))
    assert_bits(sq.npu_grouped_matmul_swiglu_quant_v2(x, [storage], [ws], xs, gl),
                ref_a8w8(x, w, ws, xs, gl, 0, "v2"))
    rng, E, M, K, N, x, w4, s, assist, xs = a8w4_case(300 + seed, 2)
    enc = s.view(np.uint32).astype(np.int64)
    gl = random_group_list(rng, E, M, count=False)
    assert_bits(sq.npu_grouped_matmul_swiglu_quant(x, pack_int4(w4), gl, enc, xs, bias=assist),
                ref_a8w4(x, w4, enc, assist, xs, gl, 0))


@pytest.mark.parametrize("seed", range(6))
def test_compiled_a8w8_epilogue_gives_the_reference_bits(seed):
    """With the compiled A8W8 epilogue plugged in (as the torch ops run it), v1 and v2 still equal the row-by-row
    references of this file; the all-zero rows it hands back go through the NumPy path and its policy."""
    from ascend_moe.kernels import impls
    from ascend_moe.sim import kernels as sim_kernels
    answered = []

    def spy(acc, *args):
        redo = impls.compiled_swiglu_quant_a8w8(acc, *args)
        answered.append(acc.shape[0] - len(redo))
        return redo

    rng, E, M, K, N, x, w, ws, xs = a8w8_case(400 + seed)
    x[0] = 0                                                  # at least one all-zero row
    gl = random_group_list(rng, E, M, count=False)
    storage = weight_to_nz_storage(w)
    with sim_kernels.use(sim_kernels.Kernels(swiglu_quant_a8w8=spy)):
        assert_bits(sq.npu_grouped_matmul_swiglu_quant(x, storage, gl, ws, xs), ref_a8w8(x, w, ws, xs, gl, 0, "v1"))
        assert_bits(sq.npu_grouped_matmul_swiglu_quant_v2(x, [storage], [ws], xs, gl),
                    ref_a8w8(x, w, ws, xs, gl, 0, "v2"))
    total = int(gl[-1]) if len(gl) else 0
    if x[:total].any():
        assert len(answered) == 2 and min(answered) > 0       # the compiled path did answer rows


@pytest.mark.parametrize("seed", range(4))
def test_compiled_a8w4_swiglu_and_quant_give_the_reference_bits(monkeypatch, seed):
    """With the compiled SwiGLU + quantisation plugged in for A8W4 (as the torch ops run it), on 5-row blocks (row
    blocks inside groups): the row-by-row reference of this file, bit for bit."""
    from ascend_moe.kernels import impls
    from ascend_moe.sim import kernels as sim_kernels
    monkeypatch.setattr(sq, "EPILOGUE_ROWS", 5)
    answered = []

    def spy(c, *args):
        redo = impls.compiled_swiglu_quant_f32(c, *args)
        answered.append(c.shape[0] - len(redo))
        return redo

    rng, E, M, K, N, x, w4, s, assist, xs = a8w4_case(600 + seed, 2)
    x[0] = 0                                                  # an all-zero row
    enc = s.view(np.uint32).astype(np.int64)
    gl = random_group_list(rng, E, M, count=False)
    with sim_kernels.use(sim_kernels.Kernels(swiglu_quant_f32=spy)):
        assert_bits(sq.npu_grouped_matmul_swiglu_quant(x, pack_int4(w4), gl, enc, xs, bias=assist),
                    ref_a8w4(x, w4, enc, assist, xs, gl, 0))
    if int(gl[-1]) > 1:
        assert answered and sum(answered) > 0                 # the compiled path did answer rows
