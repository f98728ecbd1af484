"""A MindSpeed-style grouped-matmul test (the shape of MindSpeed's ``tests_extend/unit_tests/ops/test_npu_gmm.py``),
run on the CPU through ``-p ascend_moe.pytest_plugin``: ``from mindspeed.ops import gmm`` resolves to the
ascend-moe drop-in; forward and backward are checked against float64 per-group references.
"""
import numpy as np
import torch
import torch_npu  # noqa: F401  (MindSpeed code imports it first)
from mindspeed.ops import gmm


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def ref_gmm(x, w, ends):
    """y[rows_e] = x[rows_e] @ w[e] in float64; rows past the last end stay zero (not compared)."""
    x64, w64 = x.detach().double().numpy(), w.detach().double().numpy()
    y = np.zeros((x.shape[0], w.shape[-1]))
    start = 0
    for e, end in enumerate(ends):
        y[start:end] = x64[start:end] @ w64[e]
        start = end
    return y


def ref_gmm_grads(x, w, ends, dy):
    x64, w64, dy64 = x.detach().double().numpy(), w.detach().double().numpy(), dy.double().numpy()
    dx, dw = np.zeros_like(x64), np.zeros_like(w64)
    start = 0
    for e, end in enumerate(ends):
        dx[start:end] = dy64[start:end] @ w64[e].T
        dw[e] = x64[start:end].T @ dy64[start:end]
        start = end
    return dx, dw


def test_npu_gmm_forward_backward_fp32():
    num_expert, seq_len, hidden_dim, out_dim = 4, 16, 32, 8
    group_list = [1, 3, 6, 16]  # cumulative, as MindSpeed's npu_gmm takes it
    x = (torch.rand(seq_len, hidden_dim, generator=_gen(1)) - 0.5).requires_grad_()
    weight = (torch.rand(num_expert, hidden_dim, out_dim, generator=_gen(2)) - 0.5).requires_grad_()
    y = gmm.npu_gmm(x, weight, bias=None, group_list=group_list, group_type=0)
    assert y.shape == (seq_len, out_dim) and y.dtype == torch.float32
    np.testing.assert_allclose(y.detach().numpy(), ref_gmm(x, weight, group_list), rtol=1e-5, atol=1e-6)

    dy = torch.randn(seq_len, out_dim, generator=_gen(3))
    y.backward(dy)
    dx, dw = ref_gmm_grads(x, weight, group_list, dy)
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weight.grad.numpy(), dw, rtol=1e-5, atol=1e-6)


def test_npu_gmm_v2_counts_bf16():
    num_expert, seq_len, hidden_dim, out_dim = 3, 12, 16, 16
    counts = torch.tensor([5, 0, 7], dtype=torch.int64)  # npu_gmm_v2 takes group sizes, an empty group included
    x = (torch.rand(seq_len, hidden_dim, generator=_gen(4)) - 0.5).to(torch.bfloat16).requires_grad_()
    weight = (torch.rand(num_expert, hidden_dim, out_dim, generator=_gen(5)) - 0.5).to(torch.bfloat16)
    weight.requires_grad_()
    y = gmm.npu_gmm_v2(x, weight, bias=None, group_list=counts, group_type=0)
    assert y.dtype == torch.bfloat16
    ends = np.cumsum(counts.numpy())
    ref = torch.from_numpy(ref_gmm(x, weight, ends)).float().to(torch.bfloat16)
    torch.testing.assert_close(y, ref, rtol=2 ** -7, atol=1e-6)  # fp32 accumulate, one rounding to bf16

    y.float().sum().backward()
    dx, dw = ref_gmm_grads(x, weight, ends, torch.ones(seq_len, out_dim))
    torch.testing.assert_close(x.grad.float(), torch.from_numpy(dx).float(), rtol=2 ** -7, atol=1e-6)
    torch.testing.assert_close(weight.grad.float(), torch.from_numpy(dw).float(), rtol=2 ** -7, atol=1e-6)
    assert torch.count_nonzero(weight.grad[1]) == 0  # the empty group gets a zero gradient
