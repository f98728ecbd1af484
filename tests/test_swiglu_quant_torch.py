"""The torch-facing ops: same numbers as the NumPy twins (which test_swiglu_quant.py checks against
the independent reference), torch_npu shapes from the fake kernels, schema-clean custom ops."""
import numpy as np
import pytest
import torch

import ascend_moe
from ascend_moe.sim import swiglu_quant as sq
from ascend_moe.sim.numerics import pack_int4

E, M, K, N = 3, 40, 64, 64


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (E, K, N), dtype=torch.int8, generator=g)
    ws = torch.rand(E, N, generator=g) * 1e-2
    xs = torch.rand(M, generator=g) * 1e-2
    gl = torch.tensor([10, 10, 30], dtype=torch.int64)
    return x, w, ws, xs, gl


def test_v1_matches_sim_and_nz_forms_identical():
    x, w, ws, xs, gl = data()
    w_nz = ascend_moe.npu_format_cast(w, 29)
    w_st = ascend_moe.npu_format_cast(w, 29, storage=True)
    assert tuple(w_st.shape) == (E, N // 32, K // 16, 16, 32)
    a = ascend_moe.npu_grouped_matmul_swiglu_quant(x, w_nz, gl, ws, xs)
    b = ascend_moe.npu_grouped_matmul_swiglu_quant(x, w_st, gl, ws, xs, backend="sim")
    ref = sq.npu_grouped_matmul_swiglu_quant(x.numpy(), w_st.numpy(), gl.numpy(), ws.numpy(), xs.numpy())
    assert [t.shape for t in a] == [(M, N // 2), (M,), ()] and a[0].dtype == torch.int8
    for u, v, r in zip(a, b, ref):
        assert torch.equal(u.view(-1).view(torch.uint8) if u.dtype == torch.int8 else u.nan_to_num(7.0),
                           v.view(-1).view(torch.uint8) if v.dtype == torch.int8 else v.nan_to_num(7.0))
        np.testing.assert_array_equal(np.nan_to_num(u.numpy(), nan=7.0), np.nan_to_num(r, nan=7.0))


def test_v1_nd_weight_rejected_with_fix():
    x, w, ws, xs, gl = data()
    with pytest.raises(ascend_moe.ConstraintError, match="npu_format_cast"):
        ascend_moe.npu_grouped_matmul_swiglu_quant(x, w, gl, ws, xs)


def test_v2_a8w8_and_a8w4_match_sim():
    x, w, ws, xs, gl = data(1)
    counts = torch.tensor([10, 0, 30], dtype=torch.int64)
    w_nz = ascend_moe.npu_format_cast(w, 29)
    out, scale = ascend_moe.npu_grouped_matmul_swiglu_quant_v2(x, [w_nz], [ws], xs, counts, group_list_type=1)
    r_out, r_scale = sq.npu_grouped_matmul_swiglu_quant_v2(x.numpy(), [ascend_moe.npu_format_cast(w.numpy(), 29)],
                                                         [ws.numpy()], xs.numpy(), counts.numpy(), group_list_type=1)
    np.testing.assert_array_equal(out.numpy(), r_out)
    np.testing.assert_array_equal(np.nan_to_num(scale.numpy(), nan=7), np.nan_to_num(r_scale, nan=7))

    rng = np.random.default_rng(2)
    w4 = rng.integers(-8, 8, (E, K, N)).astype(np.int8)
    packed = torch.from_numpy(pack_int4(w4))
    s = torch.from_numpy((rng.random((E, 2, N)) * 1e-2).astype(np.float32).view(np.uint32).astype(np.int64))
    assist = torch.randn(E, N)
    out, scale = ascend_moe.npu_grouped_matmul_swiglu_quant_v2(x, [packed], [s], xs, gl, weight_assist_matrix=[assist],
                                                              dequant_mode=1)
    r_out, r_scale = sq.npu_grouped_matmul_swiglu_quant_v2(x.numpy(), [packed.numpy()], [s.numpy()], xs.numpy(),
                                                         gl.numpy(), weight_assist_matrix=[assist.numpy()],
                                                         dequant_mode=1)
    np.testing.assert_array_equal(out.numpy(), r_out)
    np.testing.assert_array_equal(np.nan_to_num(scale.numpy(), nan=7), np.nan_to_num(r_scale, nan=7))


def test_uint64_scale_tensor():
    x, w, ws, xs, gl = data(3)
    rng = np.random.default_rng(3)
    w4 = rng.integers(-8, 8, (E, K, N)).astype(np.int8)
    s64 = (rng.random((E, N)) * 1e-2).astype(np.float32).view(np.uint32).astype(np.uint64)
    s_t = torch.from_numpy(s64.view(np.int64)).view(torch.uint64)
    assist = torch.randn(E, N)
    a = ascend_moe.npu_grouped_matmul_swiglu_quant(x, torch.from_numpy(pack_int4(w4)), gl, s_t, xs, bias=assist)
    b = sq.npu_grouped_matmul_swiglu_quant(x.numpy(), pack_int4(w4), gl.numpy(), s64, xs.numpy(), bias=assist.numpy())
    np.testing.assert_array_equal(a[0].numpy(), b[0])


def test_fake_kernels_give_torch_npu_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(M, K, dtype=torch.int8)
        w_nd = torch.empty(E, K, N, dtype=torch.int8)
        w = ascend_moe.npu_format_cast(w_nd, 29)  # the fake tensor carries its format
        g = torch.empty(E, dtype=torch.int64)
        # an ND int8 weight is refused at trace time, from its real format (nothing is assumed)
        with pytest.raises(ascend_moe.ConstraintError, match="must be in FRACTAL_NZ format, got format ND"):
            torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant(x, w_nd, g, torch.empty(E, N), torch.empty(M))
        o = torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant(x, w, g, torch.empty(E, N), torch.empty(M))
        assert [tuple(t.shape) for t in o] == [(M, N // 2), (M,), ()]
        assert [t.dtype for t in o] == [torch.int8, torch.float32, torch.float32]
        o = torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant_v2(x, [w], [torch.empty(E, N)], torch.empty(M), g)
        assert [tuple(t.shape) for t in o] == [(M, N // 2), (M,)]
        with pytest.raises(ascend_moe.NotSimulatedError, match="quant_mode"):
            torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant_v2(x, [w], [torch.empty(E, N)], torch.empty(M), g,
                                                                    quant_mode=1)


def test_opcheck_schema_clean():
    x, w, ws, xs, gl = data(4)
    w_st = ascend_moe.npu_format_cast(w, 29, storage=True)
    with ascend_moe.undefined_policy("zero"):
        torch.library.opcheck(torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant, (x, w_st, gl, ws, xs))
        torch.library.opcheck(torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant_v2, (x, [w_st], [ws], xs, gl))


def test_undefined_policy_applies_to_all_outputs():
    x, w, ws, xs, gl = data(5)
    gl = torch.tensor([5, 5, 20], dtype=torch.int64)
    w_st = ascend_moe.npu_format_cast(w, 29, storage=True)
    out, scale, off = ascend_moe.npu_grouped_matmul_swiglu_quant(x, w_st, gl, ws, xs)
    assert (out[20:] == -128).all() and scale[20:].isnan().all() and off.isnan()
    with ascend_moe.undefined_policy("zero"):
        out, scale, off = ascend_moe.npu_grouped_matmul_swiglu_quant(x, w_st, gl, ws, xs)
    assert (out[20:] == 0).all() and (scale[20:] == 0).all() and off == 0
