"""The declared quantised-path ops through torch: the public functions and the torch_npu drop-in give the
simulator's numbers (checked against independent references in test_quant_ops_sim.py), npu_swiglu is
differentiable through npu_swiglu_backward, dst_type accepts torch.quint4x2, and the dynamic-quant scale
recipe follows the target CANN release."""
import math

import numpy as np
import pytest
import torch

import ascend_moe
from ascend_moe.compat import torch_npu as torch_npu_drop_in

pytestmark = pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")
F = np.float32


def test_swiglu_matches_reference_and_drop_in():
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    y = ascend_moe.npu_swiglu(x)
    want = [1.0 / (1 + math.exp(-1.0)) * 3.0, -2.0 / (1 + math.exp(2.0)) * 0.5]   # first half activated
    assert torch.allclose(y, torch.tensor([want]), rtol=1e-6)
    torch_npu = torch_npu_drop_in
    assert torch.equal(torch_npu.npu_swiglu(x, dim=-1), y)
    assert torch.equal(torch_npu.npu_dynamic_quant(x.half())[0], ascend_moe.npu_dynamic_quant(x.half())[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_autograd_uses_the_backward_op(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, generator=g).to(dtype).requires_grad_()
    y = ascend_moe.npu_swiglu(x, dim=-1)
    go = torch.randn(y.shape, generator=g).to(dtype)
    (dx,) = torch.autograd.grad(y, x, go)
    assert torch.equal(dx, ascend_moe.npu_swiglu_backward(go, x.detach(), dim=-1))
    # and it is the derivative (float64 analytic)
    a, b = x.detach().double()[..., :4], x.detach().double()[..., 4:]
    s = torch.sigmoid(a)
    want = torch.cat([go.double() * b * (s + a * s * (1 - s)), go.double() * a * s], -1)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(dx.double(), want, rtol=tol, atol=tol)


def test_dynamic_quant_quint4x2_and_rules_through_torch():
    x = torch.randn(4, 16).half()
    y, s = ascend_moe.npu_dynamic_quant(x, dst_type=torch.quint4x2)
    assert y.dtype == torch.int32 and tuple(y.shape) == (4, 2)
    # the packed nibbles are the int4 values of rint(x * 7/amax), low nibble first
    v = x.float().numpy()
    amax = np.abs(v).max(1)
    for r in range(4):
        qs = F(7) / F(amax[r])
        q = [max(-8, min(7, round(float(F(t) * qs)))) for t in v[r]]
        word = int(y[r, 0]) & 0xFFFFFFFF
        assert [((word >> (4 * i)) & 0xF) - (16 if (word >> (4 * i)) & 0x8 else 0) for i in range(8)] == q[:8]
    with pytest.raises(ascend_moe.ConstraintError, match="float32"):
        ascend_moe.npu_dynamic_quant(torch.randn(4, 16))
    with pytest.raises(TypeError, match="argument 'group_index' must be a Tensor"):
        ascend_moe.npu_dynamic_quant(x, group_index=[4])


def test_dynamic_quant_scale_recipe_follows_the_release():
    """Key 2 (bf16, double-buffered, H % 8 != 0): CANN 8.5.0 returns 1/(127/amax), 9.0.0 amax * fp32(1/127)."""
    H = 100
    for amax in np.linspace(0.5, 8, 4001).astype(np.float32):
        a = F(torch.tensor(float(amax)).to(torch.bfloat16).item())
        if F(1) / (F(127) / a) != a * F(1.0 / 127):
            break
    else:
        pytest.fail("no amax where the recipes differ")
    x = torch.zeros(2, H, dtype=torch.bfloat16)
    x[:, 0] = float(a)
    x[:, 1] = -0.25
    with ascend_moe.target(cann="8.5.0"):
        s85 = ascend_moe.npu_dynamic_quant(x)[1]
    with ascend_moe.target(cann="9.0.0"):
        s90 = ascend_moe.npu_dynamic_quant(x)[1]
    assert s85[0].item() == F(1) / (F(127) / a) and s90[0].item() == a * F(1.0 / 127)


def test_dequant_swiglu_quant_through_torch_and_check_binding():
    x = torch.randint(-500, 500, (5, 128), dtype=torch.int32)
    ws = torch.rand(128) * 1e-2
    y, s = ascend_moe.npu_dequant_swiglu_quant(x, weight_scale=ws, quant_mode=1, activate_left=True)
    from ascend_moe.sim.quant_ops import dequant_swiglu_quant
    ry, rs = dequant_swiglu_quant(x.numpy(), ws.numpy(), activate_left=True, quant_mode=1)
    assert np.array_equal(y.numpy(), ry) and np.array_equal(s.numpy(), rs)
    v = ascend_moe.check("npu_swiglu", ascend_moe.TensorSpec((4, 7), "float16"), product="atlas-a2")
    assert [x.rule_id for x in v] == ["swiglu.dim_even"]
