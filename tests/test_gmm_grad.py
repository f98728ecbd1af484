"""Backward of npu_gmm / npu_gmm_v2 / npu_grouped_matmul (MindSpeed GMMFunction semantics).

* Gradients are compared with torch autograd through an independent per-group loop in float64,
  with the same fp32-accumulation interval as the forward tests (tests/test_gmm.py docstring):
  grad_x sums over N, grad_w over the group's rows.
* ``torch.autograd.gradcheck`` runs in float64 through the registered custom ops and their
  registered backward.  float64 is not a device dtype: the simulator accepts it only inside
  ``ascend_moe.sim.gmm.float64_reference()`` (and computes in float64 there), which is exactly
  what gradcheck needs to check the backward formulas against finite differences.  Outside that
  context float64 is rejected by the checker (tested below).
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import ascend_moe as am
from ascend_moe.sim import numerics
from ascend_moe.sim.gmm import float64_reference

U32 = 2.0 ** -24


def loop_reference(x, w, groups):
    """float64 per-group loop (torch autograd on float64 leaves): y rows of group e = x_e @ w[e]."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    parts = [x64[s:t] @ w64[e] for e, (s, t) in enumerate(groups)]
    y = torch.cat(parts) if parts else x64[:0] @ w64[0]
    return x64, w64, y


def groups_of(counts):
    ends = np.cumsum(counts).tolist()
    return list(zip([0] + ends[:-1], ends))


def assert_within(out, ref, bound):
    lo = (ref - bound).to(out.dtype).double()
    hi = (ref + bound).to(out.dtype).double()
    o = out.double()
    bad = ~((lo <= o) & (o <= hi))
    assert not bad.any(), f"{int(bad.sum())} outside: out={o[bad][:4].tolist()} ref={ref[bad][:4].tolist()}"


def grad_bounds(x, w, g, groups):
    """Accumulation bounds of grad_x = g @ w^T (over N) and grad_w[e] = x_e^T g_e (over rows)."""
    x64, w64, g64 = x.detach().double().abs(), w.detach().double().abs(), g.double().abs()
    bx = torch.zeros_like(x64)
    bw = torch.zeros_like(w64)
    n = w.shape[-1]
    for e, (s, t) in enumerate(groups):
        bx[s:t] = (n + 4) * U32 * (g64[s:t] @ w64[e].t())
        bw[e] = (t - s + 4) * U32 * (x64[s:t].t() @ g64[s:t])
    return bx, bw


CASES = [  # (dtype, transposed weight, group-list kind)
    (torch.float32, False, "list"), (torch.float32, True, "tensor"), (torch.float32, True, "list"),
    (torch.bfloat16, False, "tensor"), (torch.float16, True, "counts"), (torch.bfloat16, True, "counts"),
]


@pytest.mark.parametrize("dtype,transposed,kind", CASES)
def test_grads_match_per_group_loop(dtype, transposed, kind):
    rng = np.random.default_rng(11)
    e, m, k, n = 5, 37, 19, 13
    counts = [7, 0, 12, 18, 0]
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)).to(dtype).requires_grad_()
    if transposed:
        w_leaf = torch.from_numpy(rng.standard_normal((e, n, k)).astype(np.float32)).to(dtype).requires_grad_()
        w = w_leaf.transpose(-1, -2)
    else:
        w_leaf = torch.from_numpy(rng.standard_normal((e, k, n)).astype(np.float32)).to(dtype).requires_grad_()
        w = w_leaf
    if kind == "list":
        y = am.npu_gmm(x, w, group_list=np.cumsum(counts).tolist())
    elif kind == "tensor":
        y = am.npu_gmm(x, w, group_list=torch.tensor(np.cumsum(counts)))
    else:
        y = am.npu_gmm_v2(x, w, group_list=torch.tensor(counts))
    g = torch.from_numpy(rng.standard_normal((m, n)).astype(np.float32)).to(dtype)
    y.backward(g)

    groups = groups_of(counts)
    x64, w64, y64 = loop_reference(x, w, groups)
    y64.backward(g.double())
    bx, bw = grad_bounds(x, w, g, groups)
    assert x.grad.dtype == dtype and w_leaf.grad.dtype == dtype
    assert_within(x.grad, x64.grad, bx)
    w_grad = w_leaf.grad.transpose(-1, -2) if transposed else w_leaf.grad
    assert_within(w_grad, w64.grad, bw)
    for g_idx, c in enumerate(counts):
        if c == 0:
            assert (w_grad[g_idx] == 0).all(), "experts without rows get an exact zero weight gradient"


def test_grouped_matmul_grads_match_loop():
    rng = np.random.default_rng(12)
    counts = [3, 9, 0, 4]
    x = torch.from_numpy(rng.standard_normal((16, 10)).astype(np.float32)).requires_grad_()
    w = torch.from_numpy(rng.standard_normal((4, 10, 6)).astype(np.float32)).requires_grad_()
    y = am.npu_grouped_matmul([x], [w], group_list=torch.tensor(counts), group_type=0, group_list_type=1,
                              split_item=3)[0]
    g = torch.from_numpy(rng.standard_normal((16, 6)).astype(np.float32))
    y.backward(g)
    groups = groups_of(counts)
    x64, w64, y64 = loop_reference(x, w, groups)
    y64.backward(g.double())
    bx, bw = grad_bounds(x, w, g, groups)
    assert_within(x.grad, x64.grad, bx)
    assert_within(w.grad, w64.grad, bw)


def test_grad_x_rows_past_total_are_undefined():
    x = torch.randn(10, 4, requires_grad=True)
    w = torch.randn(2, 4, 3, requires_grad=True)
    with pytest.warns(am.ConstraintWarning):
        y = am.npu_gmm(x, w, group_list=torch.tensor([3, 7]))
    y[:7].sum().backward()
    assert torch.isnan(x.grad[7:]).all() and not torch.isnan(x.grad[:7]).any()
    assert not torch.isnan(w.grad).any()


# ----------------------------------------------------------------------------------------------
# gradcheck in float64
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transposed", [False, True])
def test_gradcheck_float64(transposed):
    torch.manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    w0 = torch.randn(3, 4, 5, dtype=torch.float64) if transposed else torch.randn(3, 5, 4, dtype=torch.float64)
    w0.requires_grad_()
    with float64_reference():
        def f_list(x, w):
            return am.npu_gmm(x, w.transpose(-1, -2) if transposed else w, group_list=[2, 2, 9])

        def f_v2(x, w):
            return am.npu_gmm_v2(x, w.transpose(-1, -2) if transposed else w, group_list=torch.tensor([2, 0, 7]))

        def f_gm(x, w):
            return am.npu_grouped_matmul([x], [w.transpose(-1, -2) if transposed else w],
                                         group_list=torch.tensor([2, 2, 9]), group_type=0, split_item=3)[0]

        for f in (f_list, f_v2, f_gm):
            assert torch.autograd.gradcheck(f, (x, w0))


def test_float64_rejected_outside_gradcheck_mode():
    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, 2, dtype=torch.float64)
    with pytest.raises(am.ConstraintError, match=r"x\[0\] dtype must be float16, bfloat16 or float32, got float64"):
        am.npu_gmm(x, w, group_list=[2, 4])


# ----------------------------------------------------------------------------------------------
# MindSpeed errors
# ----------------------------------------------------------------------------------------------


def test_group_type_2_with_grad_raises_mindspeed_error():
    x = torch.randn(6, 8).t().requires_grad_()  # [8, 6] transposed view... as K split x
    w = torch.randn(6, 3)
    with pytest.raises(ValueError, match="group_type must be zero to compute gradients of x and weight!"):
        am.npu_gmm(x, w, group_list=[2, 6], group_type=2)
    # without grad it runs
    assert am.npu_gmm(x.detach(), w, group_list=[2, 6], group_type=2).shape == (2, 8, 3)


def test_bias_requiring_grad_raises_mindspeed_error():
    x, w = torch.randn(4, 3, requires_grad=True), torch.randn(2, 3, 5)
    b = torch.randn(2, 5, requires_grad=True)
    with pytest.raises(ValueError, match="Bias is not supported to compute gradient!"):
        am.npu_gmm(x, w, bias=b, group_list=[1, 4])
    with pytest.raises(ValueError, match="Bias is not supported to compute gradient!"):
        am.npu_grouped_matmul([x], [w], bias=[b], group_list=torch.tensor([1, 4]), group_type=0, split_item=3)


def test_grouped_matmul_grad_unsupported_form_raises():
    xs = [torch.randn(2, 3, dtype=torch.bfloat16, requires_grad=True), torch.randn(1, 3, dtype=torch.bfloat16)]
    ws = [torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(3, 4, dtype=torch.bfloat16)]
    with pytest.raises(ValueError, match="gradients are implemented for the MindSpeed form only"):
        am.npu_grouped_matmul(xs, ws, group_type=0, split_item=0)


# ----------------------------------------------------------------------------------------------
# gemm_fusion: dW accumulated into original_weight.main_grad in fp32
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("zero_out", [False, True])
def test_gemm_fusion_main_grad(v2, zero_out):
    rng = np.random.default_rng(3)
    e, m, k, n = 3, 14, 6, 5
    counts = [4, 0, 10]
    weight = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((e, k, n)).astype(np.float32)).bfloat16())
    init = torch.from_numpy(rng.standard_normal((e, k, n)).astype(np.float32))
    weight.main_grad = init.clone()
    weight.grad_added_to_main_grad = False
    if zero_out:
        weight.zero_out_wgrad = True
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)).bfloat16().requires_grad_()
    gl = torch.tensor(counts) if v2 else torch.tensor(np.cumsum(counts))
    fn = am.npu_gmm_v2 if v2 else am.npu_gmm
    y = fn(x, weight, group_list=gl, gemm_fusion=True, original_weight=weight)
    g = torch.from_numpy(rng.standard_normal((m, n)).astype(np.float32)).bfloat16()
    y.backward(g)

    groups = groups_of(counts)
    x64, w64, y64 = loop_reference(x, weight, groups)
    y64.backward(g.double())
    _, bw = grad_bounds(x, weight, g, groups)
    ref = init.double() + w64.grad
    bound = bw + init.double().abs() * U32 * 2
    assert weight.main_grad.dtype == torch.float32
    assert_within(weight.main_grad, ref, bound)
    assert weight.grad_added_to_main_grad is True
    assert weight.grad.shape == weight.shape and weight.grad.dtype == torch.bfloat16
    if zero_out:
        assert (weight.grad == 0).all()
    else:
        assert torch.isnan(weight.grad.float()).all(), "the dummy (torch.empty) grad is undefined -> poisoned"
    bx, _ = grad_bounds(x, weight, g, groups)
    assert_within(x.grad, x64.grad, bx)


def test_gemm_fusion_without_grad_added_attribute_returns_no_weight_grad():
    weight = torch.nn.Parameter(torch.randn(2, 3, 4))
    weight.main_grad = torch.zeros(2, 3, 4)
    x = torch.randn(5, 3, requires_grad=True)
    y = am.npu_gmm(x, weight, group_list=[2, 5], gemm_fusion=True, original_weight=weight)
    y.sum().backward()
    assert weight.grad is None
    assert weight.main_grad.abs().sum() > 0


def test_gemm_fusion_zero_policy_dummy_grad():
    weight = torch.nn.Parameter(torch.randn(2, 3, 4))
    weight.main_grad = torch.zeros(2, 3, 4)
    weight.grad_added_to_main_grad = False
    x = torch.randn(5, 3, requires_grad=True)
    with numerics.undefined_policy("zero"):
        am.npu_gmm(x, weight, group_list=[2, 5], gemm_fusion=True, original_weight=weight).sum().backward()
    assert (weight.grad == 0).all()


def test_a_call_keeps_none_of_its_tensors_alive_without_the_garbage_collector():
    """A first call of a shape (the checker's verdict not cached yet) left its tensors in a reference cycle of the
    checker's call objects: a weight and its gradient lived on until the garbage collector ran."""
    gc.collect()
    gc.disable()
    try:
        rows = 3  # a shape no other test uses
        x = torch.randn(2 * rows, 40, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(2, 40, 24, dtype=torch.bfloat16, requires_grad=True)
        y = am.npu_gmm(x, w, group_list=torch.tensor([rows, 2 * rows]))
        y.backward(torch.ones_like(y))
        refs = [weakref.ref(t) for t in (x, w, y, w.grad, x.grad)]
        del x, w, y
        assert [r() is None for r in refs] == [True] * len(refs)
    finally:
        gc.enable()


def test_a_doc_warning_is_given_by_the_forward_and_not_repeated_by_the_backward():
    """The backward's own gmm calls meet the same group list: the forward's warning is not given again, and the
    next forward (on this thread) gives it again."""
    import warnings
    x = torch.ones(10, 16, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(3, 16, 8, dtype=torch.bfloat16, requires_grad=True)
    gl = torch.tensor([2, 5, 7])  # total 7 < 10 rows: a doc-only rule
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        y = am.npu_gmm(x, w, group_list=gl)
        forward_warnings = len(seen)
        y.backward(torch.ones_like(y))
        after_backward = len(seen)
        am.npu_gmm(x.detach(), w.detach(), group_list=gl)
    assert forward_warnings >= 1
    assert after_backward == forward_warnings
    assert len(seen) == 2 * forward_warnings
    assert all(issubclass(s.category, am.ConstraintWarning) for s in seen)
