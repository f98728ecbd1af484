"""npu_ffn torch surface: spellings, custom-op registration, fake kernel (torch_npu Meta rule), errors."""
import ml_dtypes
import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ascend_moe
from ascend_moe import BackendError, ConstraintError


def _case(e=None, m=6, k1=16, n1=24, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = () if e is None else (e,)
    x = torch.rand(m, k1, generator=g).sub(0.5).to(dtype)
    w1 = (torch.randn(*lead, k1, n1, generator=g) / 4).to(dtype)
    w2 = (torch.randn(*lead, n1, k1, generator=g) / 4).to(dtype)
    return x, w1, w2


def test_hand_case_relu_through_torch():
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float16)
    w1 = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float16)   # h = [-1, 1]
    w2 = torch.tensor([[2.0, 0.0], [3.0, 0.5]], dtype=torch.float16)   # relu -> [0, 1] -> [3, 0.5]
    b2 = torch.tensor([0.25, 0.0], dtype=torch.float16)
    y = ascend_moe.npu_ffn(x, w1, w2, "relu", bias2=b2)
    assert y.dtype == torch.float16 and y.tolist() == [[3.25, 0.5]]


def test_seed_spelling_and_master_spelling_agree():
    x, w1, w2 = _case(e=3)
    counts = [1, 3, 2]
    old = ascend_moe.npu_ffn(x, w1, w2, "fastgelu", counts, inner_precise=1)            # seed example
    old_pos = ascend_moe.npu_ffn(x, w1, w2, "fastgelu", counts, None, None, 1)         # all positional
    new = ascend_moe.npu_ffn(x, w1, w2, "fastgelu", expert_tokens=counts, inner_precise=1)
    idx = ascend_moe.npu_ffn(x, w1, w2, "fastgelu", expert_tokens_index=[1, 4, 6], inner_precise=1)
    tens = ascend_moe.npu_ffn(x, w1, w2, "fastgelu", torch.tensor(counts), inner_precise=1)
    for other in (old_pos, new, idx, tens):
        assert torch.equal(old, other)
    with pytest.raises(TypeError):  # quant/antiquant arguments stay keyword-only
        ascend_moe.npu_ffn(x, w1, w2, "relu", None, None, None, 0, [1])


def test_torch_matches_sim_twin_bf16_and_3d_x():
    x, w1, w2 = _case(dtype=torch.bfloat16, m=8)
    x3 = x.reshape(2, 4, -1)
    b1 = torch.randn(w1.shape[-1])
    y = ascend_moe.npu_ffn(x3, w1, w2, "silu", bias1=b1)
    assert y.shape == x3.shape and y.dtype == torch.bfloat16
    np_bf = lambda t: t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # noqa: E731
    want = ascend_moe.sim.npu_ffn(np_bf(x3), np_bf(w1), np_bf(w2), "silu", bias1=b1.numpy())
    np.testing.assert_array_equal(np_bf(y).astype(np.float32), want.astype(np.float32))


def test_quant_output_dtype_torch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (4, 32), generator=g, dtype=torch.int8)
    w1 = torch.randint(-128, 128, (32, 16), generator=g, dtype=torch.int8)
    w2 = torch.randint(-128, 128, (16, 32), generator=g, dtype=torch.int8)
    kw = dict(scale=torch.tensor([1.0]), offset=torch.tensor([0.0]))
    y16 = ascend_moe.npu_ffn(x, w1, w2, "relu", deq_scale1=torch.full((16,), 1e-3).view(torch.int32)
                             .to(torch.int64), deq_scale2=torch.full((32,), 1e-5).view(torch.int32)
                             .to(torch.int64), **kw)
    assert y16.dtype == torch.float16 and y16.shape == (4, 32)
    ybf = ascend_moe.npu_ffn(x, w1, w2, "relu", deq_scale1=torch.full((16,), 1e-3, dtype=torch.bfloat16),
                             deq_scale2=torch.full((32,), 1e-5, dtype=torch.bfloat16),
                             output_dtype=torch.bfloat16, **kw)
    assert ybf.dtype == torch.bfloat16
    # same data path up to the output conversion: close, and the int64 path applied FP19
    torch.testing.assert_close(ybf.float(), y16.float(), rtol=0.05, atol=0.05)


def test_fake_kernel_follows_torch_npu_meta_rule():
    with FakeTensorMode():
        x = torch.empty(3, 5, 64, dtype=torch.float16)
        y = torch.ops.ascend_moe.npu_ffn(x, torch.empty(64, 128, dtype=torch.float16),
                                          torch.empty(128, 64, dtype=torch.float16), "gelu")
        assert y.shape == (3, 5, 64) and y.dtype == torch.float16
        xq = torch.empty(4, 64, dtype=torch.int8)
        wq1, wq2 = torch.empty(64, 32, dtype=torch.int8), torch.empty(32, 64, dtype=torch.int8)
        q = dict(scale=torch.empty(1), offset=torch.empty(1))
        yq = torch.ops.ascend_moe.npu_ffn(xq, wq1, wq2, "relu", deq_scale1=torch.empty(32, dtype=torch.int64),
                                           deq_scale2=torch.empty(64, dtype=torch.int64), **q)
        assert yq.dtype == torch.float16
        with pytest.raises(ConstraintError, match="ffn.n2_k1"):
            torch.ops.ascend_moe.npu_ffn(x, torch.empty(64, 128, dtype=torch.float16),
                                         torch.empty(128, 32, dtype=torch.float16), "gelu")


def test_compile_and_opcheck():
    x, w1, w2 = _case(e=2)
    torch.library.opcheck(torch.ops.ascend_moe.npu_ffn.default, (x, w1, w2, "silu", [2, 4]),
                          {"inner_precise": 1})
    x, w1, w2 = _case(n1=32)
    w2g = w2[:16]
    torch.library.opcheck(torch.ops.ascend_moe.npu_ffn.default, (x, w1, w2g, "swiglu"), {"inner_precise": 1})


def test_errors_are_constraint_errors_naming_arguments():
    x, w1, w2 = _case()
    with pytest.raises(ConstraintError) as ei, pytest.warns(ascend_moe.ConstraintWarning, match="scale"):
        ascend_moe.npu_ffn(x, w1, w2, "swiglu", inner_precise=0, scale=torch.ones(1))
    msg = str(ei.value)
    assert "inner_precise=0" in msg and "ffn.glu_inner_precise" in msg
    with pytest.raises(ConstraintError, match="atlas-training"):
        with ascend_moe.target("atlas-training"):
            ascend_moe.npu_ffn(x, w1, w2, "relu")
    with pytest.raises(TypeError, match="expert_tokens"):
        ascend_moe.npu_ffn(x, w1, w2, "relu", torch.ones(2, 2, dtype=torch.int64))


def test_aclnn_backend_refuses_cpu_tensors():
    x, w1, w2 = _case()
    with pytest.raises(BackendError):
        ascend_moe.npu_ffn(x, w1, w2, "relu", backend="aclnn")
    y = ascend_moe.npu_ffn(x, w1, w2, "relu", backend="sim")
    assert y.shape == x.shape
