"""npu_format_cast on the CPU (tag alias or 5-D NZ storage) and the int4 packing / NZ layouts the
GMM-SwiGLU-Quant weights use, checked against layouts written out element by element here."""
import itertools

import ml_dtypes
import numpy as np
import pytest
import torch

import ascend_moe
from ascend_moe.formats import get_format
from ascend_moe.sim.numerics import pack_int4, unpack_int4
from ascend_moe.sim.quant_gemm import weight_to_nz_storage, weight_values


def test_cast_29_tags_a_copy_with_same_values():
    w = torch.randint(-128, 128, (2, 32, 64), dtype=torch.int8)
    nz = ascend_moe.npu_format_cast(w, 29)
    assert get_format(nz) == "FRACTAL_NZ" and get_format(w) == "ND"
    assert nz.shape == w.shape and torch.equal(nz, w) and nz.data_ptr() != w.data_ptr()
    assert ascend_moe.npu_format_cast(nz, 29) is nz
    nd = ascend_moe.npu_format_cast(nz, 2)
    assert get_format(nd) == "ND" and torch.equal(nd, w)
    a = np.arange(64 * 32, dtype=np.float16).reshape(64, 32)
    a_nz = ascend_moe.npu_format_cast(a, 29)
    assert get_format(a_nz) == "FRACTAL_NZ" and np.array_equal(a, a_nz) and not np.shares_memory(a, a_nz)


@pytest.mark.parametrize("dtype,c0", [(torch.int8, 32), (torch.float16, 16), (torch.float32, 8)])
def test_storage_layout_elementwise(dtype, c0):
    E, K, N = 2, 40, 3 * c0 + 5                              # unaligned: zero padding
    w = (torch.arange(E * K * N) % 101 - 50).to(dtype).reshape(E, K, N)
    st = ascend_moe.npu_format_cast(w, 29, storage=True)
    n1, k1 = -(-N // c0), -(-K // 16)
    assert tuple(st.shape) == (E, n1, k1, 16, c0) and get_format(st) == "FRACTAL_NZ"
    for e, k, n in itertools.product(range(E), range(k1 * 16), range(n1 * c0)):
        want = w[e, k, n] if (k < K and n < N) else 0
        assert st[e, n // c0, k // 16, k % 16, n % c0] == want
    back = ascend_moe.npu_format_cast(st, 2)
    assert torch.equal(back[:, :K, :N], w) and (back[:, K:] == 0).all() and (back[:, :, N:] == 0).all()


def test_int32_packed_int4_storage_is_int4_nz():
    rng = np.random.default_rng(0)
    w4 = rng.integers(-8, 8, (2, 32, 128)).astype(np.int8)
    packed = pack_int4(w4)                                   # [2, 32, 16] int32
    st = weight_to_nz_storage(packed)
    assert st.shape == (2, 2, 2, 16, 8) and st.dtype == np.int32
    vals = unpack_int4(st)                                   # [2, 2, 2, 16, 64]
    for e, k, n in itertools.product(range(2), range(32), range(0, 128, 7)):
        assert vals[e, n // 64, k // 16, k % 16, n % 64] == w4[e, k, n]
    # the generic int32 NZ cast (C0 = 8 int32) lays out the same bytes
    np.testing.assert_array_equal(ascend_moe.npu_format_cast(packed, 29, storage=True), st)
    got, kind = weight_values(st)
    assert kind == "int4" and np.array_equal(got, w4)
    i4 = w4.astype(ml_dtypes.int4)
    got, kind = weight_values(weight_to_nz_storage(i4))
    assert kind == "int4" and np.array_equal(got, w4)


def test_int4_pack_unpack_exhaustive():
    # int8 container: all 256 (low, high) nibble pairs
    pairs = np.array(list(itertools.product(range(-8, 8), repeat=2)), np.int8)   # [256, 2]
    packed = pack_int4(pairs, "int8")
    assert packed.shape == (256, 1)
    for (lo, hi), b in zip(pairs, packed[:, 0].view(np.uint8)):
        assert b == ((int(lo) & 0xF) | ((int(hi) & 0xF) << 4))                   # low nibble first
    np.testing.assert_array_equal(unpack_int4(packed), pairs)
    assert sorted(set(unpack_int4(np.arange(256, dtype=np.uint8).view(np.int8)[:, None]).ravel())) == list(range(-8, 8))
    np.testing.assert_array_equal(pack_int4(unpack_int4(np.arange(256, dtype=np.uint8).view(np.int8)[:, None]), "int8"),
                                  np.arange(256, dtype=np.uint8).view(np.int8)[:, None])
    # int32 container: every value at every one of the 8 positions, and every 16-bit half pattern
    vals = np.zeros((16 * 8, 8), np.int8)
    for i, (v, pos) in enumerate(itertools.product(range(-8, 8), range(8))):
        vals[i, pos] = v
    words = pack_int4(vals, "int32")[:, 0].view(np.uint32)
    for i, (v, pos) in enumerate(itertools.product(range(-8, 8), range(8))):
        assert words[i] == (v & 0xF) << (4 * pos)
    all16 = np.arange(1 << 16, dtype=np.uint32)
    words = (all16 | (all16[::-1] << 16)).view(np.int32)[:, None]
    np.testing.assert_array_equal(pack_int4(unpack_int4(words), "int32"), words)


def test_bad_format_and_dtype_arguments():
    # torch_npu takes every aclFormat id (format 3 = NC1HWC0 is a tag on the CPU: values unchanged),
    # customize_dtype is a dtype, and rank-1 tensors fall back to ND (ShouldFallbackNzToNd)
    w = torch.zeros(2, 32, 32, dtype=torch.int8)
    nc1hwc0 = ascend_moe.npu_format_cast(w, 3)
    assert get_format(nc1hwc0) == "NC1HWC0" and torch.equal(nc1hwc0, w)
    with pytest.raises(ValueError, match="got 7"):
        ascend_moe.npu_format_cast(w, 7)
    with pytest.raises(TypeError, match="customize_dtype"):
        ascend_moe.npu_format_cast(w, 29, 1)
    v = torch.zeros(5)
    assert ascend_moe.npu_format_cast(v, 29) is v and get_format(v) == "ND"
