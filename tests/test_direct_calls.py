"""The public functions' direct route: plain eager calls run the op's own kernel without the dispatcher's
Python layers, with the same results and gradients; everything that could observe the dispatcher (modes,
the profiler, tensor subclasses, ops that write an argument) still goes through it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ascend_moe as am
import ascend_moe.ops._generate as generate


def _gmm_inputs(seed: int = 0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 32, generator=g).to(dtype)
    w = (torch.randn(4, 32, 16, generator=g) * 0.25).to(dtype)
    return x, w, torch.tensor([5, 5, 17, 24])


def _reference_gmm(x, w, ends):
    """Per group, fp32 products summed in fp64 then rounded once to x's dtype (an independent loop)."""
    out = torch.empty(x.shape[0], w.shape[-1], dtype=torch.float64)
    start = 0
    for e, end in enumerate(ends):
        out[start:end] = x[start:end].double() @ w[e].double()
        start = end
    return out


class _KernelBindCounter:
    """Counts the kernels' own bindings: the dispatcher route binds the torch schema's arguments once per
    op call inside the kernel; the direct route hands the public binding to the kernel."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = generate.kernel_bind

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(generate, "kernel_bind", counting)


def test_plain_cpu_call_goes_direct_and_matches_the_dispatcher(monkeypatch):
    x, w, gl = _gmm_inputs()
    counter = _KernelBindCounter(monkeypatch)
    direct = am.npu_gmm(x, w, group_list=gl)
    assert counter.calls == 0
    monkeypatch.setenv("ASCEND_MOE_DIRECT_CALLS", "0")
    dispatched = am.npu_gmm(x, w, group_list=gl)
    assert counter.calls == 1
    assert torch.equal(direct.view(torch.int16), dispatched.view(torch.int16))
    ref = _reference_gmm(x, w, gl.tolist())
    assert torch.allclose(direct.double(), ref, rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("group_list", [torch.tensor([5, 5, 17, 24]), [5, 5, 17, 24]])
def test_gradients_match_the_dispatcher_route(monkeypatch, group_list):
    x, w, _ = _gmm_inputs(1)
    dy = torch.randn(24, 16, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)

    def run():
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = am.npu_gmm(xr, wr, group_list=group_list)
        y.backward(dy)
        return y, xr.grad, wr.grad
    counter = _KernelBindCounter(monkeypatch)
    direct = run()
    # the forward hands its binding over; the backward's two products bind their torch-schema arguments
    assert counter.calls == 2
    monkeypatch.setenv("ASCEND_MOE_DIRECT_CALLS", "0")
    dispatched = run()
    assert counter.calls == 2 + 3
    for a, b in zip(direct, dispatched):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    # grad x = dy @ w[e]^T per group: checked against a plain loop
    ends = [5, 5, 17, 24]
    ref_dx = torch.empty(24, 32, dtype=torch.float64)
    start = 0
    for e, end in enumerate(ends):
        ref_dx[start:end] = dy[start:end].double() @ w[e].double().T
        start = end
    assert torch.allclose(direct[1].double(), ref_dx, rtol=2 ** -7, atol=1e-6)


def test_retained_graph_backward_runs_twice_with_the_same_gradients():
    x, w, gl = _gmm_inputs(3, torch.float32)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = am.npu_gmm(xr, wr, group_list=gl)
    dy = torch.ones_like(y)
    first = torch.autograd.grad(y, (xr, wr), dy, retain_graph=True)
    second = torch.autograd.grad(y, (xr, wr), dy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # d(sum y)/dw[e][k, n] = sum of x[rows of e, k]: an independent sum
    start = 0
    for e, end in enumerate(gl.tolist()):
        expected = x[start:end].double().sum(0)[:, None].expand(32, 16)
        assert torch.allclose(first[1][e].double(), expected, rtol=1e-6, atol=1e-5)
        start = end


@pytest.mark.parametrize("kernels", ["reference", "fp32=widen_fma"])
def test_backward_checks_and_sets_up_both_products_before_running_either(monkeypatch, kernels):
    """The gmm backward checks its two calls (dy @ w^T, then x^T @ dy) and sets both up before it runs either;
    the gradients are those of plain loops, on the simulator's path and on the compiled one."""
    import ascend_moe.ops._gmm_torch as gmm_torch
    from ascend_moe import kernels as machine_kernels
    if kernels != "reference" and (machine_kernels.impls._gemm is None
                                   or not machine_kernels.impls.widen_fma_contract_holds(torch.float32)):
        pytest.skip("no compiled widen-FMA GEMM on this machine")
    monkeypatch.setenv("ASCEND_MOE_KERNELS", kernels)
    x, w, gl = _gmm_inputs(4, torch.float32)
    dy = torch.randn(24, 16, generator=torch.Generator().manual_seed(5))
    events = []
    real_enforce, real_run_sim, real_plan = generate._enforce, gmm_torch.run_sim, gmm_torch.gmm_compiled_plan

    def enforce(decl, a):
        events.append(("check", a["group_type"]))
        return real_enforce(decl, a)

    def run_sim(decl, a, target):
        events.append(("simulate", a["group_type"]))
        return real_run_sim(decl, a, target)

    def plan(list_type, a):
        run = real_plan(list_type, a)
        return None if run is None else (lambda: events.append(("compiled", a["group_type"])) or run())
    monkeypatch.setattr(generate, "_enforce", enforce)
    monkeypatch.setattr(gmm_torch, "run_sim", run_sim)
    monkeypatch.setattr(gmm_torch, "gmm_compiled_plan", plan)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = am.npu_gmm(xr, wr, group_list=gl)
    events.clear()
    y.backward(dy)
    how = "simulate" if kernels == "reference" else "compiled"
    assert events == [("check", 0), ("check", 2), (how, 0), (how, 2)]
    start = 0
    for e, end in enumerate(gl.tolist()):
        want_dx = dy[start:end].double() @ w[e].double().T
        want_dw = x[start:end].double().T @ dy[start:end].double()
        assert torch.allclose(xr.grad[start:end].double(), want_dx, rtol=1e-5, atol=1e-5)
        assert torch.allclose(wr.grad[e].double(), want_dw, rtol=1e-5, atol=1e-5)
        start = end


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_op(monkeypatch):
    x, w, gl = _gmm_inputs()
    counter = _KernelBindCounter(monkeypatch)
    with _OpLog() as log:
        am.npu_gmm(x, w, group_list=gl)
    assert any("ascend_moe.npu_gmm" in op for op in log.ops), log.ops
    assert counter.calls == 1


def test_a_torch_function_mode_sees_the_op():
    seen = []

    class Log(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))
    x, w, gl = _gmm_inputs()
    with Log():
        am.npu_gmm(x, w, group_list=gl)
    assert any("npu_gmm" in s for s in seen), seen


def test_the_profiler_records_the_op(monkeypatch):
    x, w, gl = _gmm_inputs()
    counter = _KernelBindCounter(monkeypatch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        am.npu_gmm(x, w, group_list=gl)
    assert any(e.name == "ascend_moe::npu_gmm" for e in prof.events())
    assert counter.calls == 1


def test_a_tensor_subclass_takes_the_dispatcher(monkeypatch):
    class Sub(torch.Tensor):
        pass
    x, w, gl = _gmm_inputs()
    counter = _KernelBindCounter(monkeypatch)
    y = am.npu_gmm(x.as_subclass(Sub), w, group_list=gl)
    assert counter.calls == 1
    assert torch.equal(y.view(torch.int16), am.npu_gmm(x, w, group_list=gl).view(torch.int16))


def test_inference_mode_goes_direct(monkeypatch):
    x, w, gl = _gmm_inputs()
    counter = _KernelBindCounter(monkeypatch)
    with torch.inference_mode():
        y = am.npu_gmm(x, w, group_list=gl)
    assert counter.calls == 0 and y.is_inference()


def test_ops_that_write_an_argument_take_the_dispatcher():
    kinds = {name: generate._DIRECT_KINDS[name] for name in generate._DIRECT_KINDS}
    for name, (plain, grad) in kinds.items():
        decl = generate.PUBLIC[name].__ascend_moe_decl__
        if decl.mutates or decl.collective:
            assert not plain and not grad, name
        if grad:
            assert decl.backward is not None, name
    assert kinds["npu_gmm"] == (True, True)


def test_a_refused_call_raises_the_same_error_on_both_routes(monkeypatch):
    x, w, _ = _gmm_inputs()
    bad = torch.tensor([5, 3, 17, 24])  # decreasing cumsum
    with pytest.raises(Exception) as direct:
        am.npu_gmm(x, w, group_list=bad)
    monkeypatch.setenv("ASCEND_MOE_DIRECT_CALLS", "0")
    with pytest.raises(Exception) as dispatched:
        am.npu_gmm(x, w, group_list=bad)
    assert type(direct.value) is type(dispatched.value)
    assert str(direct.value) == str(dispatched.value)


def test_float32_bits_unchanged_by_route(monkeypatch):
    """A float32 call (a different kernel class) gives the same bits on both routes."""
    x, w, gl = _gmm_inputs(5, torch.float32)
    a = am.npu_gmm(x, w, group_list=gl)
    monkeypatch.setenv("ASCEND_MOE_DIRECT_CALLS", "0")
    b = am.npu_gmm(x, w, group_list=gl)
    assert np.array_equal(a.numpy().view(np.int32), b.numpy().view(np.int32))
