"""The simulator's numerics core, each helper against an independent reference."""
import itertools
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ascend_moe.sim import numerics as nm


# ---------------------------------------------------------------- dtypes and rounding casts

def _bits16(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint16)


def _rne_to_bf16_bits(f: float) -> int:
    """Round-to-nearest-even fp32 -> bf16 by integer arithmetic on the bit pattern."""
    (u,) = struct.unpack("<I", struct.pack("<f", f))
    if (u & 0x7F800000) == 0x7F800000 and (u & 0x7FFFFF):  # NaN stays NaN (quiet)
        return (u >> 16) | 0x40
    lsb = (u >> 16) & 1
    return ((u + 0x7FFF + lsb) >> 16) & 0xFFFF


def test_dtype_names_cover_the_needed_kinds():
    for name in ("float16", "bfloat16", "float32", "int8", "int32", "int64", "float8_e4m3fn",
                 "float8_e5m2", "int4", "uint64"):
        assert nm.dtype_name(nm.np_dtype(name)) == name
    assert nm.dtype_name("torch.bfloat16") == "bfloat16"
    assert nm.dtype_name(np.zeros(2, np.float16)) == "float16"
    with pytest.raises(ValueError, match="unknown dtype name"):
        nm.np_dtype("float12")


def test_fp32_to_bf16_is_round_to_nearest_even_bitwise():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 2 ** 32, size=20000, dtype=np.uint64).astype(np.uint32)
    # add exact ties: low 16 bits == 0x8000, with even and odd kept lsb
    ties = (rng.integers(0, 2 ** 16, size=2000, dtype=np.uint32) << 16) | np.uint32(0x8000)
    u = np.concatenate([raw, ties])
    f = u.view(np.float32)
    finite = np.isfinite(f)
    got = _bits16(nm.cast(f[finite], "bfloat16"))
    want = np.array([_rne_to_bf16_bits(float(v)) for v in f[finite]], dtype=np.uint16)
    np.testing.assert_array_equal(got, want)


def test_fp32_to_fp16_ties_go_to_even():
    # 1 + 2**-11 lies exactly between 1 and 1 + 2**-10: even mantissa (1.0) wins.
    assert nm.cast(np.float32(1 + 2 ** -11), "float16") == np.float16(1.0)
    # 1 + 3 * 2**-11 lies between 1 + 2**-10 (odd) and 1 + 2**-9 (even): rounds up.
    assert nm.cast(np.float32(1 + 3 * 2 ** -11), "float16") == np.float16(1 + 2 ** -9)
    # overflow to inf past the largest fp16 + half ulp
    assert np.isinf(nm.cast(np.float32(65520.0), "float16"))
    assert nm.cast(np.float32(65519.0), "float16") == np.float16(65504.0)


def test_float8_casts_match_ml_dtypes_definition():
    vals = np.linspace(-500, 500, 4001, dtype=np.float32)
    for name, ref in (("float8_e4m3fn", ml_dtypes.float8_e4m3fn), ("float8_e5m2", ml_dtypes.float8_e5m2)):
        got = nm.cast(vals, name)
        assert got.dtype == np.dtype(ref)
        # independent check: the cast value is one of the two neighbours and the nearer one
        finfo = ml_dtypes.finfo(ref)
        all_vals = np.unique(np.arange(256, dtype=np.uint8).view(ref).astype(np.float64))
        all_vals = all_vals[np.isfinite(all_vals)]
        for v, g in zip(vals[::97], got[::97].astype(np.float64)):
            if abs(v) > float(finfo.max):
                continue
            nearest = all_vals[np.argmin(np.abs(all_vals - v))]
            assert abs(g - v) <= abs(nearest - v) + 1e-12


def test_round_to_returns_float32_of_rounded_value():
    x = np.float32([1 + 2 ** -11, 3.14159265])
    r = nm.round_to(x, "float16")
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("rounding,expected", [
    ("rint", [0, 2, 2, -2, -4, 127, -128, 0]),
    ("round", [1, 2, 3, -3, -4, 127, -128, 0]),
    ("trunc", [0, 1, 2, -2, -3, 127, -128, 0]),
])
def test_float_to_int_rounding_modes_and_saturation(rounding, expected):
    x = np.float32([0.5, 1.5, 2.5, -2.5, -3.5, 300.0, -1000.0, np.nan])
    np.testing.assert_array_equal(nm.float_to_int(x, "int8", rounding), np.int8(expected))


def test_float_to_int_rejects_unknown_rounding():
    with pytest.raises(ValueError, match="rounding must be"):
        nm.float_to_int(np.float32([1.0]), "int8", rounding="stochastic")


def test_int64_scale_decoding_low_word_and_fp19():
    s = np.float32([0.1, 1.0, 3.3e-5, -2.75])
    enc = nm.encode_int64_scale(s)
    assert enc.dtype == np.int64
    # independent: the low 32 bits are the IEEE bits, the high bits zero
    for e, v in zip(enc, s):
        assert int(e) == struct.unpack("<I", struct.pack("<f", float(v)))[0]
    np.testing.assert_array_equal(nm.decode_int64_scale(enc, fp19=False), s)
    fp19 = nm.decode_int64_scale(enc)
    for e, v in zip(fp19, s):
        bits = struct.unpack("<I", struct.pack("<f", float(v)))[0] & 0xFFFFE000
        assert e == struct.unpack("<f", struct.pack("<I", bits))[0]
    # bit 46 set by npu_trans_quant_param does not disturb the low word
    np.testing.assert_array_equal(nm.decode_int64_scale(enc | (1 << 46), fp19=False), s)
    # uint64 carriers decode the same way
    np.testing.assert_array_equal(nm.decode_int64_scale(enc.view(np.uint64), fp19=False), s)


# ---------------------------------------------------------------- int4 packing

def test_int4_pack_layout_low_nibble_first():
    vals = np.array([[1, 2, 3, 4, 5, 6, 7, -8]], dtype=np.int8)
    word = nm.pack_int4(vals, "int32").view(np.uint32)[0, 0]
    assert word == sum(((v & 0xF) << (4 * j)) for j, v in enumerate([1, 2, 3, 4, 5, 6, 7, -8]))
    b = nm.pack_int4(vals, "int8").view(np.uint8)[0]
    assert list(b) == [0x21, 0x43, 0x65, 0x87]


def test_int4_round_trip_exhaustive_int8_container():
    # every pair of int4 values -> every byte value, and back
    pairs = np.array(list(itertools.product(range(-8, 8), repeat=2)), dtype=np.int8).reshape(1, -1)
    packed = nm.pack_int4(pairs, "int8")
    assert sorted(packed.view(np.uint8).ravel().tolist()) == list(range(256))
    np.testing.assert_array_equal(nm.unpack_int4(packed), pairs)
    # and every byte unpacks to the two nibbles given by plain arithmetic
    every = np.arange(256, dtype=np.uint8).view(np.int8).reshape(1, -1)
    un = nm.unpack_int4(every).reshape(-1, 2)
    for byte, (lo, hi) in zip(range(256), un):
        assert lo == ((byte & 0xF) ^ 8) - 8 and hi == ((byte >> 4) ^ 8) - 8


def test_int4_round_trip_exhaustive_int32_container_per_position():
    # each of the 16 values at each of the 8 positions of a word
    vals = np.zeros((16 * 8, 8), dtype=np.int8)
    for v in range(-8, 8):
        for pos in range(8):
            vals[(v + 8) * 8 + pos, pos] = v
    packed = nm.pack_int4(vals, "int32")
    np.testing.assert_array_equal(nm.unpack_int4(packed), vals)
    for row, p in zip(vals, packed.view(np.uint32)[:, 0]):
        assert int(p) == sum((int(v) & 0xF) << (4 * j) for j, v in enumerate(row))


def test_int4_pack_rejects_out_of_range_and_bad_length():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        nm.pack_int4(np.array([[8, 0]]), "int8")
    with pytest.raises(ValueError, match="multiple of 8"):
        nm.pack_int4(np.zeros((2, 12), np.int8), "int32")
    with pytest.raises(ValueError, match="container"):
        nm.pack_int4(np.zeros((2, 8), np.int8), "int16")


@given(st.lists(st.integers(-8, 7), min_size=8, max_size=64).filter(lambda v: len(v) % 8 == 0))
@settings(max_examples=50, deadline=None)
def test_int4_property_round_trip(values):
    a = np.array(values, dtype=np.int8).reshape(1, -1)
    for container in ("int32", "int8"):
        np.testing.assert_array_equal(nm.unpack_int4(nm.pack_int4(a, container)), a)


# ---------------------------------------------------------------- FRACTAL_NZ

def _nz_reference(w: np.ndarray, c0: int) -> np.ndarray:
    """Element-by-element NZ placement: (r, c) -> [c // C0, r // 16, r % 16, c % C0], zero padding."""
    *batch, r, c = w.shape
    out = np.zeros((*batch, -(-c // c0), -(-r // 16), 16, c0), dtype=w.dtype)
    for idx in np.ndindex(*batch, r, c):
        *b, i, j = idx
        out[(*b, j // c0, i // 16, i % 16, j % c0)] = w[idx]
    return out


@pytest.mark.parametrize("dtype,c0", [("float16", 16), ("bfloat16", 16), ("int8", 32), ("int4", 64),
                                      ("float32", 8)])
@pytest.mark.parametrize("shape", [(17, 33), (2, 40, 70), (3, 16, 32), (1, 5, 3)])
def test_nd_to_nz_matches_elementwise_placement(dtype, c0, shape):
    assert nm.nz_c0(dtype) == c0
    rng = np.random.default_rng(1)
    if dtype == "int4":
        w = rng.integers(-8, 8, size=shape).astype(np.int8)
    elif dtype == "int8":
        w = rng.integers(-128, 128, size=shape).astype(np.int8)
    else:
        w = rng.standard_normal(shape).astype(nm.np_dtype(dtype))
    nz = nm.nd_to_nz(w, dtype)
    ref = _nz_reference(w, c0)
    assert nz.shape == ref.shape == nm.nz_storage_shape(shape, dtype)
    np.testing.assert_array_equal(nz, ref)
    back = nm.nz_to_nd(nz, shape)
    np.testing.assert_array_equal(back, w)
    # padding: everything outside the logical matrix is zero
    mask = np.ones(shape, dtype=bool)
    covered = _nz_reference(mask, c0)
    assert not np.any(nz[~covered.astype(bool)].astype(np.float64))


def test_nz_transposed_weight_variant():
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, size=(2, 48, 40)).astype(np.int8)  # logical [E, K, N]
    nz = nm.nd_to_nz(w, "int8", transposed=True)
    # storage is the [E, N, K] matrix in NZ: [E, ceil(K/32), ceil(N/16), 16, 32]
    assert nz.shape == (2, 2, 3, 16, 32) == nm.nz_storage_shape(w.shape, "int8", transposed=True)
    np.testing.assert_array_equal(nz, _nz_reference(np.swapaxes(w, -1, -2), 32))
    np.testing.assert_array_equal(nm.nz_to_nd(nz, w.shape, transposed=True), w)


def test_nz_spec_example_and_st_executor_inverse():
    # ATB doc: ND {8,100,30} fp16 -> NZ {8,2,112,16} (flattened [8, 2, 7*16, 16])
    w = np.zeros((8, 100, 30), np.float16)
    assert nm.nz_storage_shape(w.shape, "float16") == (8, 2, 7, 16, 16)
    # aligned int8: the spec's reshape/transposes
    rng = np.random.default_rng(3)
    E, K, N = 2, 32, 64
    w8 = rng.integers(-128, 128, size=(E, K, N)).astype(np.int8)
    nz = nm.nd_to_nz(w8)
    np.testing.assert_array_equal(nz, w8.reshape(E, K // 16, 16, N // 32, 32).transpose(0, 3, 1, 2, 4))
    np.testing.assert_array_equal(nz.transpose(0, 2, 3, 1, 4).reshape(E, K, N), w8)


def test_nz_to_nd_rejects_mismatched_storage():
    nz = np.zeros((2, 1, 16, 32), np.int8)
    with pytest.raises(ValueError, match="cannot hold"):
        nm.nz_to_nd(nz, (20, 40))
    with pytest.raises(ValueError, match="must have 5 dims"):
        nm.nz_to_nd(nz, (2, 16, 32))


# ---------------------------------------------------------------- undefined regions

def test_poison_is_default_and_zero_is_selectable():
    out = np.ones((4, 3), np.float32)
    nm.fill_undefined(out, slice(2, None))
    assert np.isnan(out[2:]).all() and (out[:2] == 1).all()
    i8 = np.ones((4, 3), np.int8)
    nm.fill_undefined(i8, slice(1, None))
    assert (i8[1:] == -128).all()
    i32 = np.ones(3, np.int32)
    nm.fill_undefined(i32, slice(None), policy="zero")
    assert (i32 == 0).all()


def test_policy_precedence_call_context_global_env(monkeypatch):
    monkeypatch.setenv("ASCEND_MOE_UNDEFINED", "zero")
    assert nm.get_undefined_policy() == "zero"
    nm.set_undefined_policy("poison")
    assert nm.get_undefined_policy() == "poison"
    with nm.undefined_policy("zero"):
        assert nm.get_undefined_policy() == "zero"
        assert nm.get_undefined_policy("poison") == "poison"
    assert nm.get_undefined_policy() == "poison"
    with pytest.raises(ValueError, match="undefined-region policy"):
        nm.set_undefined_policy("garbage")


def _int_reference(v: float, rounding: str, lo: int, hi: int) -> int:
    """One value by Python's exact arithmetic: NaN -> 0, then the rounding, then saturation."""
    import math
    if math.isnan(v):
        return 0
    if math.isinf(v):
        return hi if v > 0 else lo
    if rounding == "rint":
        r = round(v)                       # Python rounds halves to even
    elif rounding == "round":
        r = math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)
    else:
        r = {"trunc": math.trunc, "floor": math.floor, "ceil": math.ceil}[rounding](v)
    return min(max(int(r), lo), hi)


@pytest.mark.parametrize("rounding", ["rint", "round", "trunc", "floor", "ceil"])
@pytest.mark.parametrize("target", ["int8", "int4", "int16"])
def test_float_to_int_on_every_float16_and_edge_float32(rounding, target):
    """Every float16 bit pattern and float32 edges (halves, bounds +-0.5, huge, inf, NaN) against exact
    Python arithmetic, for each rounding and integer width (the float16/32 inputs skip the float64 detour
    where that is exact)."""
    lo, hi = {"int8": (-128, 127), "int4": (-8, 7), "int16": (-32768, 32767)}[target]
    f16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    edges = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, lo - 0.5, lo - 0.49, hi + 0.5, hi + 0.49, hi - 0.5, 1e30, -1e30,
             np.inf, -np.inf, np.nan, -0.0, 2.0 ** -140, 16777215.5, 8388607.5, 8388608.5]
    f32 = np.array(edges + list(np.random.default_rng(3).normal(0, 200, 4000)), dtype=np.float32)
    for arr in (f16, f32):
        got = nm.float_to_int(arr, target, rounding)
        want = [_int_reference(float(v), rounding, lo, hi) for v in arr]
        np.testing.assert_array_equal(got.astype(np.int64), np.array(want, dtype=np.int64),
                                      err_msg=f"{arr.dtype} {rounding} {target}")
