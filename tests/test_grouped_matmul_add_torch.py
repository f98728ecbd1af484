"""npu_grouped_matmul_add_ / npu_grouped_matmul_add on torch tensors: the in-place fp32 accumulation
``y[e] += x[rows_e]^T @ w[rows_e]`` against a float64 loop written here, the checker first, and the
torch_npu drop-in names."""
import numpy as np
import pytest
import torch

import ascend_moe as am


def _case(seed=0, T=16, M=8, N=32, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, M, generator=g).to(dtype)
    w = torch.randn(T, N, generator=g).to(dtype)
    y = torch.randn(3, M, N, generator=g)
    return x, w, y


def _reference(y, x, w, bounds):
    ref = y.double().clone()
    for e, (s, t) in enumerate(bounds):
        for r in range(s, t):  # one token's outer product at a time
            ref[e] += torch.outer(x[r].double(), w[r].double())
    return ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_in_place_accumulation_with_an_empty_group(dtype):
    x, w, y = _case(dtype=dtype)
    ref = _reference(y, x, w, [(0, 5), (5, 5), (5, 16)])
    out = am.npu_grouped_matmul_add_(y, x, w, torch.tensor([5, 5, 16]))
    assert out is y
    # products of fp16/bf16 values are exact in fp32; only the fp32 summation over <= 11 tokens rounds
    bound = 16 * 2.0 ** -24 * (ref.abs() + _reference(torch.zeros_like(y), x.abs(), w.abs(), [(0, 5), (5, 5), (5, 16)]))
    assert ((y.double() - ref).abs() <= bound + 1e-30).all()
    assert torch.equal(y[1], torch.from_numpy(ref[1].numpy()).float())   # the empty group adds nothing


def test_out_of_place_spelling_writes_y_and_returns_a_clone():
    x, w, y = _case(seed=1)
    ref = _reference(y, x, w, [(0, 4), (4, 9), (9, 16)])
    out = am.npu_grouped_matmul_add(y, x, w, torch.tensor([4, 9, 16]))
    assert out is not y and torch.equal(out, y)
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-5)


def test_checker_runs_first_and_nothing_is_written():
    x, w, y = _case(seed=2)
    before = y.clone()
    with pytest.raises(am.ConstraintError, match="gma.transpose"):
        am.npu_grouped_matmul_add_(y, x, w, torch.tensor([5, 5, 16]), transpose_x=False)
    with pytest.raises(TypeError, match="argument 'weight' must be a Tensor"):
        am.npu_grouped_matmul_add_(y, x, w.float().numpy(), torch.tensor([5, 5, 16]))
    assert torch.equal(y, before)


def test_torch_npu_drop_in_computes_it():
    from ascend_moe.compat import torch_npu as npu_shim
    x, w, y = _case(seed=3)
    ref = _reference(y, x, w, [(0, 8), (8, 12), (12, 16)])
    npu_shim.npu_grouped_matmul_add_(y, x, w, torch.tensor([8, 12, 16]))
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-5)
