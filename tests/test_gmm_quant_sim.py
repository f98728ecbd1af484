"""Simulator of the quantised npu_grouped_matmul forms and npu_grouped_matmul_add against references
written here: Python-integer dot products, scalar float32 epilogues in the kernel's order, the scale
decodings by bit manipulation, NZ storage built by index loops."""
import struct

import ml_dtypes
import numpy as np
import pytest

from ascend_moe.sim import gmm_quant as gq
from ascend_moe.sim.numerics import undefined_policy

F = np.float32
BF16 = ml_dtypes.bfloat16


def bits_to_f32(bits):
    return F(struct.unpack("<f", struct.pack("<I", int(bits) & 0xFFFFFFFF))[0])


def idot(x_row, w, n):
    return sum(int(a) * int(b) for a, b in zip(x_row, w[:, n]))


def bounds_of(group_list, glt):
    ends, s, out = [], 0, []
    for v in group_list:
        s = s + int(v) if glt == 1 else int(v)
        ends.append(s)
    start = 0
    for e in ends:
        out.append((start, e))
        start = e
    return out


def nz_storage(w, c0):
    """[E, K, N] -> [E, N/c0, K/16, 16, c0] by the FRACTAL_NZ index rule (K % 16 == 0, N % c0 == 0)."""
    E, K, N = w.shape
    out = np.zeros((E, N // c0, K // 16, 16, c0), w.dtype)
    for e in range(E):
        for k in range(K):
            for n in range(N):
                out[e, n // c0, k // 16, k % 16, n % c0] = w[e, k, n]
    return out


def a8w8_case(seed, E=3, M=10, K=32, N=32):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (E, K, N)).astype(np.int8)
    return rng, x, w


@pytest.mark.parametrize("scale_dtype,out_dtype", [("bfloat16", "bfloat16"), ("float32", "float16"),
                                                   ("float32", "bfloat16"), ("int64", "bfloat16")])
@pytest.mark.parametrize("nz", [False, True])
def test_a8w8_per_channel_per_token(scale_dtype, out_dtype, nz):
    rng, x, w = a8w8_case(1)
    E, K, N = w.shape
    sc32 = (rng.random((E, N)) * 1e-3 + 1e-4).astype(F)
    if scale_dtype == "int64":
        scale = sc32.view(np.uint32).astype(np.int64)                 # fp32 bits in the low word
        sc_eff = [[bits_to_f32(scale[e, n]) for n in range(N)] for e in range(E)]
    else:
        scale = sc32.astype(BF16 if scale_dtype == "bfloat16" else F)
        sc_eff = scale.astype(F)
    pts = (rng.random(x.shape[0]) * 0.1).astype(F)
    gl = np.array([4, 0, 6], np.int64)          # counts
    weight = nz_storage(w, 32) if nz else w
    with undefined_policy("poison"):
        y = gq.quant_grouped_matmul(x, weight, gl, group_list_type=1, scale=scale, per_token_scale=pts,
                                    output_dtype=out_dtype)
    odt = BF16 if out_dtype == "bfloat16" else np.float16
    assert y.dtype == odt and y.shape == (10, N)
    for e, (s, t) in enumerate(bounds_of(gl, 1)):
        for m in range(s, t):
            for n in range(N):
                d = (F(idot(x[m], w[e], n)) * F(sc_eff[e][n])) * pts[m]
                assert y[m, n].view(np.uint16) == np.array(d, F).astype(odt).view(np.uint16), (e, m, n)


def test_a8w8_int64_scale_uses_the_full_mantissa():
    """The vector dequant reads all 23 mantissa bits of an int64 scale (no FP19 truncation)."""
    x = np.array([[1]], np.int8)
    w = np.array([[[1]]], np.int8)
    bits = 0x3F801008                         # 1 + 2**-11 + 2**-20: FP19 (bits & 0xFFFFE000) would give 1.0
    y = gq.quant_grouped_matmul(x, w, np.array([1]), scale=np.array([[bits]], np.int64), output_dtype="float16")
    assert F(y[0, 0]) == F(1 + 2 ** -10)      # the full value rounds up; a truncated one would stay 1.0
    y32 = gq.quant_grouped_matmul(x, np.full((1, 1, 1), 100, np.int8), np.array([1]),
                                  scale=np.array([[bits]], np.int64), output_dtype="bfloat16")
    assert y32[0, 0] == np.array(F(100) * bits_to_f32(bits), F).astype(BF16)


def test_a8w8_bias_int32_in_cube_and_bf16_bias_after_per_token():
    rng, x, w = a8w8_case(2, E=2, M=6, K=16, N=32)
    E, K, N = w.shape
    scale = (rng.random((E, N)) * 1e-2).astype(F)
    pts = (rng.random(6) + 0.5).astype(F)
    b32 = rng.integers(-1000, 1000, (E, N)).astype(np.int32)
    bbf = (rng.standard_normal((E, N))).astype(BF16)
    gl = np.array([2, 6], np.int64)          # cumsum
    y1 = gq.quant_grouped_matmul(x, w, gl, scale=scale, per_token_scale=pts, bias=b32, output_dtype="bfloat16")
    y2 = gq.quant_grouped_matmul(x, w, gl, scale=scale, per_token_scale=pts, bias=bbf, output_dtype="bfloat16")
    for e, (s, t) in enumerate(bounds_of(gl, 0)):
        for m in range(s, t):
            for n in range(N):
                acc = idot(x[m], w[e], n)
                d1 = (F(acc + int(b32[e, n])) * scale[e, n]) * pts[m]
                d2 = (F(acc) * scale[e, n]) * pts[m] + F(bbf[e, n])
                assert y1[m, n] == np.array(d1, F).astype(BF16)
                assert y2[m, n] == np.array(d2, F).astype(BF16)


def test_a8w8_int32_output_and_relu():
    rng, x, w = a8w8_case(3, E=2, M=5, K=48, N=32)
    b = rng.integers(-50, 50, (2, 32)).astype(np.int32)
    gl = np.array([3, 2], np.int64)
    with undefined_policy("poison"):
        y = gq.quant_grouped_matmul(x, w, gl, group_list_type=1, bias=b, output_dtype="int32")
    assert y.dtype == np.int32
    for e, (s, t) in enumerate(bounds_of(gl, 1)):
        for m in range(s, t):
            assert [int(v) for v in y[m]] == [idot(x[m], w[e], n) + int(b[e, n]) for n in range(32)]
    scale = np.full((2, 32), 1e-3, F)
    yr = gq.quant_grouped_matmul(x, w, gl, group_list_type=1, scale=scale, output_dtype="float16", act_type=1)
    for m in range(3):
        for n in range(32):
            assert F(yr[m, n]) == F(np.float16(max(F(idot(x[m], w[0], n)) * F(1e-3), F(0))))
    with pytest.raises(NotImplementedError, match="act_type=2"):
        gq.quant_grouped_matmul(x, w, gl, group_list_type=1, scale=scale, output_dtype="float16", act_type=2)


def test_rows_past_total_are_undefined():
    rng, x, w = a8w8_case(4, M=8)
    with undefined_policy("poison"):
        y = gq.quant_grouped_matmul(x, w, np.array([2, 3, 5]), output_dtype="int32")
        yb = gq.quant_grouped_matmul(x, w, np.array([2, 3, 5]), scale=np.ones((3, 32), F),
                                     output_dtype="bfloat16")
    assert (y[5:] == np.iinfo(np.int32).min).all() and np.isnan(yb[5:].astype(F)).all()
    with undefined_policy("zero"):
        assert (gq.quant_grouped_matmul(x, w, np.array([2, 3, 5]), output_dtype="int32")[5:] == 0).all()


# --------------------------------------------------------------------------------------------
# A8W4 (W4A8 as vllm-ascend calls it)
# --------------------------------------------------------------------------------------------

def pack_int32(vals):
    """int4 values [..., N] -> int32 [..., N/8], element 8j+i in nibble i (low first)."""
    *lead, n = vals.shape
    out = np.zeros((*lead, n // 8), np.int64)
    for i in range(8):
        out |= (vals[..., i::8].astype(np.int64) & 0xF) << (4 * i)
    return out.astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("fp19", [True, False])
def test_a8w4_msd(fp19):
    rng = np.random.default_rng(5)
    E, M, K, N = 2, 5, 32, 16
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-8, 8, (E, K, N)).astype(np.int8)
    s32 = (rng.random((E, N)) * 1e-2 + 1e-3).astype(F)
    scale = s32.view(np.uint32).astype(np.int64)
    mask = 0xFFFFE000 if fp19 else 0xFFFFFFFF
    s_eff = np.array([[bits_to_f32(int(b) & mask) for b in row] for row in scale], F)
    bias = np.array([[8 * sum(float(w[e, k, n]) * float(s_eff[e, n]) for k in range(K)) for n in range(N)]
                     for e in range(E)], F)
    pts = (rng.random(M) * 0.1).astype(F)
    gl = np.array([2, 3], np.int64)
    y = gq.quant_grouped_matmul(x, pack_int32(w), gl, group_list_type=1, scale=scale, per_token_scale=pts,
                                bias=bias, output_dtype="bfloat16", fp19=fp19)
    for e, (s, t) in enumerate(bounds_of(gl, 1)):
        for m in range(s, t):
            hi = [int(v) >> 4 for v in x[m]]
            lo = [(int(v) & 0xF) - 8 for v in x[m]]
            for n in range(N):
                chi = np.float16(sum(h * int(w[e, k, n]) for k, h in enumerate(hi)) * float(s_eff[e, n]))
                clo = np.float16(sum(l * int(w[e, k, n]) for k, l in enumerate(lo)) * float(s_eff[e, n]))
                c = ((F(chi) * F(16) + F(clo)) + bias[e, n]) * pts[m]
                assert y[m, n] == np.array(c, F).astype(BF16), (m, n)
                exact = idot(x[m], w[e], n) * float(s_eff[e, n]) * float(pts[m])
                assert abs(float(y[m, n]) - exact) <= 0.02 * abs(exact) + 1e-3   # the MSD split is a decomposition


# --------------------------------------------------------------------------------------------
# A16W8 / A16W4 antiquant
# --------------------------------------------------------------------------------------------

def test_antiquant_weight_fp16_two_roundings_and_bf16_one():
    rng = np.random.default_rng(6)
    K, N = 8, 4
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    sc = (rng.random(N) * 0.05).astype(np.float16)
    off = (rng.standard_normal(N) * 3).astype(np.float16)
    got = gq.antiquant_weight(w, sc, off, "float16")
    for k in range(K):
        for n in range(N):
            t = np.float16(float(np.float16(w[k, n])) + float(off[n]))
            assert got[k, n] == np.float16(float(t) * float(sc[n]))
    scb, offb = sc.astype(F).astype(BF16), off.astype(F).astype(BF16)
    gotb = gq.antiquant_weight(w, scb, offb, "bfloat16")
    for k in range(K):
        for n in range(N):
            assert gotb[k, n] == np.array((F(w[k, n]) + F(offb[n])) * F(scb[n]), F).astype(BF16)


@pytest.mark.parametrize("dtype,kind,groups", [("float16", "int8", 1), ("bfloat16", "int8", 1),
                                              ("float16", "int4", 4), ("bfloat16", "int4", 2)])
def test_antiquant_gmm(dtype, kind, groups):
    rng = np.random.default_rng(7)
    E, M, K, N = 2, 6, 32, 16
    npdt = BF16 if dtype == "bfloat16" else np.float16
    x = rng.standard_normal((M, K)).astype(F).astype(npdt)
    lo, hi = (-128, 128) if kind == "int8" else (-8, 8)
    w = rng.integers(lo, hi, (E, K, N)).astype(np.int8)
    weight = w if kind == "int8" else pack_int32(w)
    shape = (E, N) if groups == 1 else (E, groups, N)
    sc = (rng.random(shape) * 0.05).astype(F).astype(npdt)
    off = rng.standard_normal(shape).astype(F).astype(npdt)
    bias = rng.standard_normal((E, N)).astype(np.float16 if dtype == "float16" else F)
    gl = np.array([4, 6], np.int64)
    y = gq.quant_grouped_matmul(x, weight, gl, antiquant_scale=sc, antiquant_offset=off, bias=bias)
    assert y.dtype == npdt and y.shape == (M, N)
    gk = K // groups
    for e, (s, t) in enumerate(bounds_of(gl, 0)):
        wd = np.zeros((K, N))
        for k in range(K):
            g = k // gk
            for n in range(N):
                scv = sc[e, n] if groups == 1 else sc[e, g, n]
                ofv = off[e, n] if groups == 1 else off[e, g, n]
                if dtype == "float16":
                    wd[k, n] = float(np.float16(float(np.float16(float(w[e, k, n]) + float(ofv))) * float(scv)))
                else:
                    wd[k, n] = float(np.array((F(w[e, k, n]) + F(ofv)) * F(scv), F).astype(BF16))
        ref = x[s:t].astype(np.float64) @ wd + bias[e].astype(np.float64)
        np.testing.assert_allclose(y[s:t].astype(np.float64), ref, rtol=1e-2, atol=1e-2)


def test_float_weight_from_nz_roundtrip():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((2, 32, 48)).astype(BF16)
    storage = nz_storage(w, 16)
    assert np.array_equal(gq.float_weight_from_nz(storage, 32, 48), w)


# --------------------------------------------------------------------------------------------
# grouped_matmul_add
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("glt", [0, 1])
def test_grouped_matmul_add(glt):
    rng = np.random.default_rng(9)
    T, M, N = 12, 8, 6
    x = rng.standard_normal((T, M)).astype(BF16)
    w = rng.standard_normal((T, N)).astype(BF16)
    gl = np.array([5, 5, 12]) if glt == 0 else np.array([5, 0, 7])
    y0 = rng.standard_normal((3, M, N)).astype(F)
    y = y0.copy()
    out = gq.grouped_matmul_add(y, x, w, gl, group_list_type=glt)
    assert out is y
    for e, (s, t) in enumerate(bounds_of(gl, glt)):
        want = y0[e].astype(np.float64)
        for r in range(s, t):
            want = want + np.outer(x[r].astype(np.float64), w[r].astype(np.float64))
        np.testing.assert_allclose(y[e], want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(y[1], y0[1]) if glt == 0 else True
    with pytest.raises(TypeError, match="float32"):
        gq.grouped_matmul_add(y.astype(np.float16), x, w, gl)
    with pytest.raises(ValueError, match="token dim"):
        gq.grouped_matmul_add(y, x, w[:5], gl)


def test_a8w8_bf16_bias_is_read_only_with_a_per_token_scale():
    rng, x, w = a8w8_case(10, E=1, M=3, K=16, N=32)
    scale = np.full((1, 32), 1e-2, F)
    bias = np.full((1, 32), 100.0, F).astype(BF16)
    y = gq.quant_grouped_matmul(x, w, np.array([3]), scale=scale, bias=bias, output_dtype="bfloat16")
    for m in range(3):
        for n in range(32):
            assert y[m, n] == np.array(F(idot(x[m], w[0], n)) * F(1e-2), F).astype(BF16)


def test_torch_signature_twin_unwraps_lists_and_maps_output_codes():
    rng, x, w = a8w8_case(11, E=2, M=4, K=16, N=32)
    scale = (rng.random((2, 32)) * 1e-2).astype(F)
    pts = rng.random(4).astype(F)
    gl = np.array([1, 3], np.int64)
    (y,) = gq.npu_grouped_matmul_quant([x], [w], scale=[scale], per_token_scale=[pts], group_list=gl,
                                       split_item=2, group_type=0, group_list_type=1, output_dtype=5)
    assert y.dtype == np.float16
    for e, (s, t) in enumerate(bounds_of(gl, 1)):
        for m in range(s, t):
            for n in range(32):
                assert y[m, n] == np.float16((F(idot(x[m], w[e], n)) * scale[e, n]) * pts[m])
    (yi,) = gq.npu_grouped_matmul_quant([x], [w], group_list=gl, group_list_type=1, output_dtype=3)
    assert yi.dtype == np.int32 and int(yi[0, 0]) == idot(x[0], w[0], 0)
    with pytest.raises(ValueError, match="one tensor per list"):
        gq.npu_grouped_matmul_quant([x, x], [w], group_list=gl, output_dtype=3)
    with pytest.raises(ValueError, match="code 7"):
        gq.npu_grouped_matmul_quant([x], [w], group_list=gl, output_dtype=7)
