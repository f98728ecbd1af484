"""Large outputs reuse memory a previous output of their size gave back (ascend_moe.kernels.output_pool), and only
memory nothing refers to any more: a gradient kept in ``.grad``, a NumPy view, any tensor sharing the storage keeps
it from the next call.  Every value is checked against integer math written here (small integers, exact in bf16
and fp32), so an output written over by a later call would show."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ascend_moe as am
from ascend_moe.kernels import output_pool

# weight gradient [E, K, N] of 8 x 256 x 1024 bf16: 4 MB, the smallest pooled size
E, K, N, ROWS = 8, 256, 1024, 4


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    monkeypatch.delenv("ASCEND_MOE_OUTPUT_POOL_MB", raising=False)
    output_pool.release()
    yield
    output_pool.release()


def small_ints(shape, seed):
    return np.random.default_rng(seed).integers(-2, 3, size=shape)


def weight_grad_reference(x, g):
    """dw[e] = x_e^T @ g_e over each group's ROWS rows, in int64."""
    dw = np.zeros((E, x.shape[1], g.shape[1]), dtype=np.int64)
    for e in range(E):
        for r in range(e * ROWS, (e + 1) * ROWS):
            dw[e] += np.outer(x[r], g[r])
    return dw


def train_step(seed):
    """One forward + backward of npu_gmm; returns the weight leaf (its .grad the pooled output) and the reference."""
    x, w, g = small_ints((E * ROWS, K), seed), small_ints((E, K, N), seed + 1), small_ints((E * ROWS, N), seed + 2)
    xt = torch.tensor(x, dtype=torch.bfloat16, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.bfloat16, requires_grad=True)
    gl = torch.tensor([ROWS * (e + 1) for e in range(E)], dtype=torch.int64)
    am.npu_gmm(xt, wt, group_list=gl).backward(torch.tensor(g, dtype=torch.bfloat16))
    return wt, weight_grad_reference(x, g)


def as_ints(t):
    return t.detach().float().numpy().astype(np.int64)


def test_a_kept_gradient_is_never_reused_and_a_dropped_one_is():
    w1, ref1 = train_step(1)
    w2, ref2 = train_step(10)
    assert w2.grad.data_ptr() != w1.grad.data_ptr()  # w1.grad still in use
    np.testing.assert_array_equal(as_ints(w1.grad), ref1)
    np.testing.assert_array_equal(as_ints(w2.grad), ref2)
    first = w1.grad.data_ptr()
    del w1  # its gradient is given back: the next output of its size takes that memory
    w3, ref3 = train_step(20)
    assert w3.grad.data_ptr() == first
    np.testing.assert_array_equal(as_ints(w3.grad), ref3)
    np.testing.assert_array_equal(as_ints(w2.grad), ref2)


def test_a_numpy_view_keeps_its_output_from_the_next_call():
    w1, ref1 = train_step(2)
    bits = w1.grad.view(torch.int16).numpy()  # shares the gradient's memory
    kept = bits.copy()
    first = w1.grad.data_ptr()
    del w1
    w2, ref2 = train_step(30)
    assert w2.grad.data_ptr() != first
    np.testing.assert_array_equal(bits, kept)
    np.testing.assert_array_equal(as_ints(w2.grad), ref2)
    del bits
    w2b, ref2b = train_step(40)
    assert w2b.grad.data_ptr() == first
    np.testing.assert_array_equal(as_ints(w2b.grad), ref2b)


def test_a_view_or_a_second_tensor_on_the_storage_keeps_it_in_use():
    a = output_pool.empty((E, K, N), torch.bfloat16)
    view = a[1:3]
    shared = torch.empty(0, dtype=torch.bfloat16).set_(a.untyped_storage(), 0, (4,))
    p = a.data_ptr()
    del a
    b = output_pool.empty((E, K, N), torch.bfloat16)
    assert b.data_ptr() != p
    del view
    c = output_pool.empty((E, K, N), torch.bfloat16)
    assert c.data_ptr() not in (p, b.data_ptr())
    del shared
    d = output_pool.empty((E, K, N), torch.bfloat16)
    assert d.data_ptr() == p


def test_the_budget_bounds_the_memory_kept_and_zero_turns_the_pool_off(monkeypatch):
    mb = 4 << 20
    monkeypatch.setenv("ASCEND_MOE_OUTPUT_POOL_MB", "6")  # room for one 4 MB output, not two
    a = output_pool.empty((mb,), torch.uint8)
    b = output_pool.empty((mb,), torch.uint8)
    assert output_pool.POOL.stats()["held"] == mb
    del a, b
    assert output_pool.POOL.stats() == {"held": mb, "idle": mb, "entries": 1}
    # a new size: the idle entry makes way for it
    c = output_pool.empty((mb + 2,), torch.uint8)
    assert output_pool.POOL.stats() == {"held": mb + 2, "idle": 0, "entries": 1}
    del c
    monkeypatch.setenv("ASCEND_MOE_OUTPUT_POOL_MB", "0")
    output_pool.release()
    w1, ref1 = train_step(3)
    np.testing.assert_array_equal(as_ints(w1.grad), ref1)
    assert output_pool.POOL.stats()["held"] == 0


def test_small_outputs_are_not_pooled():
    a = output_pool.empty((output_pool.MIN_BYTES // 2 - 1,), torch.bfloat16)
    assert a.numel() == output_pool.MIN_BYTES // 2 - 1 and a.dtype == torch.bfloat16 and a.is_contiguous()
    assert output_pool.POOL.stats()["held"] == 0


def test_release_and_the_simulated_device_empty_cache_give_idle_memory_back():
    w1, _ = train_step(4)
    w2, _ = train_step(5)
    size = w1.grad.numel() * 2
    del w1
    assert output_pool.POOL.stats() == {"held": 2 * size, "idle": size, "entries": 2}
    assert output_pool.release() == size
    assert output_pool.POOL.stats() == {"held": size, "idle": 0, "entries": 1}
    del w2
    from ascend_moe.device import npu
    npu.empty_cache()
    assert output_pool.POOL.stats()["held"] == 0


@pytest.mark.parametrize("raw", ["lots", "-1", "nan", "inf"])
def test_a_bad_budget_is_refused_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("ASCEND_MOE_OUTPUT_POOL_MB", raw)
    with pytest.raises(ValueError, match="ASCEND_MOE_OUTPUT_POOL_MB"):
        train_step(6)


def test_the_default_budget_is_a_quarter_of_physical_memory():
    import os
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert output_pool.budget_bytes() == physical // 4
