"""torch face of npu_moe_gating_top_k: same results as the simulator, Meta/fake shapes as torch_npu's
registration, schema-clean custom op, strict backend policy, rules on the torch path."""
import inspect

import numpy as np
import pytest
import torch

import ascend_moe
from ascend_moe.ops._common import to_numpy
from ascend_moe.sim import npu_moe_gating_top_k as sim_gating


def _inputs(dtype=torch.bfloat16, rows=8, experts=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, experts, generator=g).to(dtype)
    b = (torch.randn(experts, generator=g) * 0.05).to(dtype)
    return x, b


def test_signature_and_defaults_match_torch_npu():
    sig = inspect.signature(ascend_moe.npu_moe_gating_top_k)
    want = dict(bias=None, input_ids=None, tid2eid=None, k_group=1, group_count=1, group_select_mode=0, renorm=0,
                norm_type=0, out_flag=False, routed_scaling_factor=1.0, eps=1e-20, backend=None)
    params = sig.parameters
    assert list(params)[:2] == ["x", "k"]
    for name, default in want.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == default


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_flag", [False, True])
def test_torch_equals_simulator_bitwise(dtype, out_flag):
    x, b = _inputs(dtype)
    kw = dict(bias=b, k_group=4, group_count=8, group_select_mode=1, norm_type=1, out_flag=out_flag,
              routed_scaling_factor=2.5)
    y, idx, norm = ascend_moe.npu_moe_gating_top_k(x, 8, **kw)
    sy, sidx, snorm = sim_gating(to_numpy(x), 8, **{**kw, "bias": to_numpy(b)})
    assert y.dtype == dtype and idx.dtype == torch.int32 and norm.dtype == torch.float32
    np.testing.assert_array_equal(to_numpy(y).view(np.uint8), sy.view(np.uint8))
    np.testing.assert_array_equal(idx.numpy(), sidx)
    np.testing.assert_array_equal(norm.numpy(), snorm)     # NaN == NaN here (poison when unwritten)


def test_non_contiguous_input():
    x, b = _inputs(torch.float16, experts=512)
    xs = x[:, ::2]
    assert not xs.is_contiguous()
    y1, i1, _ = ascend_moe.npu_moe_gating_top_k(xs, 8, bias=b[::2], k_group=4, group_count=8, norm_type=1)
    y2, i2, _ = ascend_moe.npu_moe_gating_top_k(xs.contiguous(), 8, bias=b[::2].contiguous(), k_group=4,
                                                group_count=8, norm_type=1)
    assert torch.equal(i1, i2) and torch.equal(y1, y2)


def test_meta_and_fake_shapes_follow_torch_npu_meta():
    x = torch.empty(5, 96, device="meta", dtype=torch.bfloat16)
    y, idx, norm = ascend_moe.npu_moe_gating_top_k(x, 6, k_group=2, group_count=4)
    assert (y.shape, y.dtype) == ((5, 6), torch.bfloat16)
    assert (idx.shape, idx.dtype) == ((5, 6), torch.int32)
    assert (norm.shape, norm.dtype) == ((5, 96), torch.float32)       # allocated even without out_flag
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        xf = torch.empty(3, 64, dtype=torch.float16)
        assert [t.shape for t in ascend_moe.npu_moe_gating_top_k(xf, 4)] == [(3, 4), (3, 4), (3, 64)]


def test_fake_kernel_runs_the_rules():
    x = torch.empty(5, 96, device="meta", dtype=torch.float16)
    with pytest.raises(ascend_moe.ConstraintError, match="k.per_group_bound"):
        ascend_moe.npu_moe_gating_top_k(x, 60, k_group=2, group_count=4)


def test_constraint_error_on_cpu_names_argument_and_value():
    x, b = _inputs(torch.float16, experts=128)
    with ascend_moe.target(cann="8.5.0"):
        with pytest.raises(ascend_moe.ConstraintError) as err:
            ascend_moe.npu_moe_gating_top_k(x, 8, bias=b.to(torch.float32), k_group=4, group_count=8, norm_type=1)
    assert "gating.bias.dtype" in str(err.value) and "float32" in str(err.value) and "'bias'" in str(err.value)


def test_backend_policy_is_strict():
    x, _ = _inputs(torch.float32, experts=32)
    y, _, _ = ascend_moe.npu_moe_gating_top_k(x, 2, backend="sim")
    assert y.shape == (8, 2)
    with pytest.raises(ascend_moe.BackendError):
        ascend_moe.npu_moe_gating_top_k(x, 2, backend="aclnn")


def test_opcheck():
    x, b = _inputs(torch.float16, rows=4, experts=64)
    torch.library.opcheck(torch.ops.ascend_moe.npu_moe_gating_top_k.default,
                          (x, 4, b, None, None, 2, 4, 1, 0, 1, True, 1.0, 1e-20))


def test_torch_compile_fullgraph():
    x, b = _inputs(torch.float32, rows=4, experts=64)

    def f(x, b):
        return ascend_moe.npu_moe_gating_top_k(x, 4, bias=b, k_group=2, group_count=4, norm_type=1, out_flag=True)

    eager = f(x, b)
    compiled = torch.compile(f, fullgraph=True, backend="eager")(x, b)
    for a, c in zip(eager, compiled):
        assert torch.equal(a, c)
