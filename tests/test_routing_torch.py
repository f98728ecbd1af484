"""The routing / combine ops through torch: public functions equal the simulator bit for bit, the autograd
of permute / unpermute / gating_top_k against independent float64 torch references written here, the torch_npu
drop-in names, a compiled training step, and the MoE layers built from the public torch ops."""
import numpy as np
import pytest
import torch

import ascend_moe
from ascend_moe.sim import routing as R
from ascend_moe.sim.numerics import undefined_policy

pytestmark = pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")
NEW = dict(product="atlas-a2", cann="9.0.0")


def np_of(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def same(a, b):
    a = a.float() if a.dtype == torch.bfloat16 else a
    b = torch.from_numpy(np.asarray(b).astype(np.float32)) if np.asarray(b).dtype.name == "bfloat16" else \
        torch.from_numpy(np.asarray(b))
    return a.shape == b.shape and torch.equal(torch.nan_to_num(a.double(), nan=7.0), torch.nan_to_num(b.double(), nan=7.0))


def test_public_ops_equal_the_simulator():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, generator=g).bfloat16()
    ids = torch.randint(0, 4, (6, 2), generator=g, dtype=torch.int32)
    with ascend_moe.target(**NEW):
        outs = ascend_moe.npu_moe_init_routing_v2(x, ids, expert_num=4, active_num=9, expert_tokens_num_type=1,
                                                  expert_tokens_num_flag=True)
        ref = R.moe_init_routing_v2(x.view(torch.int16).numpy().view(ascend_moe.sim.numerics.np_dtype("bfloat16")),
                                    ids.numpy(), expert_num=4, active_num=9, expert_tokens_num_type=1,
                                    expert_tokens_num_flag=True)
        for o, r in zip(outs, ref):
            assert same(o, r)
        perm, si = ascend_moe.npu_moe_token_permute(x.float(), ids)
        rp, rsi = R.moe_token_permute(x.float().numpy(), ids.numpy())
        assert same(perm, rp) and same(si, rsi)
        probs = torch.rand(6, 2, generator=g)
        out = ascend_moe.npu_moe_token_unpermute(perm, si, probs)
        assert same(out, R.moe_token_unpermute(rp, rsi, probs.numpy()))
        y, idx, row = ascend_moe.npu_moe_gating_top_k_softmax(torch.randn(6, 16, generator=g), None, 3)
        assert row.tolist() == [[j * 6 + r for j in range(3)] for r in range(6)]


# ------------------------------------------------------------------------ autograd

def test_token_permute_backward_against_float64_reference():
    g = torch.Generator().manual_seed(2)
    n, k, h = 6, 3, 5
    x = torch.randn(n, h, generator=g, requires_grad=True)
    ids = torch.randint(0, 4, (n, k), generator=g, dtype=torch.int32)
    perm, si = ascend_moe.npu_moe_token_permute(x, ids, num_out_tokens=-4)
    w = torch.randn(perm.shape, generator=g)
    (perm * w).sum().backward()
    # reference: permuted[i] = x[order[i] // k], with the stable sort written as a Python sort
    flat = ids.reshape(-1).tolist()
    order = sorted(range(n * k), key=lambda f: (flat[f], f))[: n * k - 4]
    xr = x.detach().double().requires_grad_(True)
    ref = torch.stack([xr[f // k] for f in order])
    (ref * w.double()).sum().backward()
    assert torch.allclose(x.grad.double(), xr.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_probs", [True, False])
def test_token_unpermute_backward_against_float64_reference(with_probs):
    g = torch.Generator().manual_seed(3)
    n, k, h = 5, 2, 4
    perm = torch.randn(n * k, h, generator=g, requires_grad=True)
    si = torch.randperm(n * k, generator=g).to(torch.int32)
    probs = torch.rand(n, k, generator=g, requires_grad=True) if with_probs else None
    out = ascend_moe.npu_moe_token_unpermute(perm, si, probs)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    pr = perm.detach().double().requires_grad_(True)
    kk = k if with_probs else 1
    rows = len(si) // kk
    pb = probs.detach().double().requires_grad_(True) if with_probs else None
    ref = torch.stack([sum(pr[int(si[t * kk + j])] * (pb[t, j] if with_probs else 1.0) for j in range(kk))
                       for t in range(rows)])
    (ref * w.double()).sum().backward()
    assert torch.allclose(perm.grad.double(), pr.grad, rtol=1e-6, atol=1e-6)
    if with_probs:
        assert torch.allclose(probs.grad.double(), pb.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("out_flag", [False, True])
def test_gating_top_k_backward_against_float64_reference(out_flag):
    g = torch.Generator().manual_seed(4)
    rows, E, k = 4, 32, 4
    x = torch.randn(rows, E, generator=g, requires_grad=True)
    bias = torch.randn(E, generator=g) * 0.1
    with ascend_moe.target(**NEW):
        y, idx, _ = ascend_moe.npu_moe_gating_top_k(x, k, bias=bias, k_group=2, group_count=4, group_select_mode=1,
                                                    norm_type=1, routed_scaling_factor=2.5, out_flag=out_flag)
        w = torch.randn(y.shape, generator=g)
        (y * w).sum().backward()
    # reference: the renormalised sigmoid gate at the op's selection, float64 autograd
    xr = x.detach().double().requires_grad_(True)
    s = torch.sigmoid(xr).gather(1, idx.long())
    yr = s / (s.sum(-1, keepdim=True) + 1e-20) * 2.5
    (yr * w.double()).sum().backward()
    assert torch.allclose(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)


def test_gating_top_k_softmax_has_no_backward():
    x = torch.randn(3, 8, requires_grad=True)
    y, _, _ = ascend_moe.npu_moe_gating_top_k(x, 2, norm_type=0)
    with pytest.raises(NotImplementedError, match="norm_type=0 has no backward"):
        y.sum().backward()


def test_compiled_training_step_equals_eager():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 8, generator=g)
    ids = torch.randint(0, 3, (6, 2), generator=g, dtype=torch.int32)
    probs0 = torch.rand(6, 2, generator=g)
    w = torch.randn(8, 8, generator=g)

    def step(x, probs):
        perm, si = ascend_moe.npu_moe_token_permute(x, ids)
        return ascend_moe.npu_moe_token_unpermute(perm @ w, si, probs).square().sum()

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        x, probs = x0.clone().requires_grad_(True), probs0.clone().requires_grad_(True)
        loss = fn(x, probs)
        loss.backward()
        grads.append((loss.detach(), x.grad, probs.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_torch_npu_drop_in_names():
    from ascend_moe.compat import torch_npu as mod
    for name in ("npu_moe_init_routing_v2", "npu_moe_token_permute", "npu_moe_token_unpermute",
                 "npu_moe_finalize_routing", "npu_moe_gating_top_k_softmax", "npu_moe_gating_top_k_softmax_v2",
                 "npu_moe_compute_expert_tokens", "npu_moe_re_routing", "npu_moe_token_permute_grad",
                 "npu_moe_token_unpermute_grad", "npu_moe_gating_top_k_backward"):
        assert callable(getattr(mod, name)), name
    x = torch.randn(4, 8)
    ids = torch.randint(0, 4, (4, 2), dtype=torch.int32)
    ex, ri, cnt, _ = mod.npu_moe_init_routing_v2(x, ids, expert_num=4, expert_tokens_num_type=1,
                                                  expert_tokens_num_flag=True)
    assert int(cnt.sum()) == 8 and ri.dtype == torch.int32


# ------------------------------------------------------------------------ layers from the public torch ops

def test_qwen3_style_layer_from_public_torch_ops():
    """Qwen3-MoE style: softmax_v2 renorm -> init_routing_v2 -> npu_grouped_matmul -> npu_swiglu ->
    npu_grouped_matmul -> npu_moe_token_unpermute, against the float32 layer of tests/test_routing_layer.py
    (same bound derivation)."""
    from test_routing_layer import BF16, check_close, expert_weights, reference_layer
    rng = np.random.default_rng(7)
    T, H, I, E, K = 8, 32, 16, 16, 4
    x = torch.from_numpy(rng.standard_normal((T, H)).astype(np.float32)).bfloat16()
    logits = torch.from_numpy((rng.standard_normal((T, E)) * 2).astype(np.float32)).bfloat16()
    wup, wdown = expert_weights(rng, E, H, I)
    wup_t = torch.from_numpy(wup.astype(np.float32)).bfloat16()
    wdown_t = torch.from_numpy(wdown.astype(np.float32)).bfloat16()
    with ascend_moe.target(**NEW):
        w, idx, _ = ascend_moe.npu_moe_gating_top_k_softmax_v2(logits, k=K, renorm=1)
        ex, row_idx, counts, _ = ascend_moe.npu_moe_init_routing_v2(x, idx, expert_num=E, active_num=T * K,
                                                                   expert_tokens_num_type=1, expert_tokens_num_flag=True)
        h = ascend_moe.npu_grouped_matmul([ex], [wup_t], group_list=counts, split_item=2, group_type=0,
                                          group_list_type=1)[0]
        a = ascend_moe.npu_swiglu(h)
        d = ascend_moe.npu_grouped_matmul([a], [wdown_t], group_list=counts, split_item=2, group_type=0,
                                          group_list_type=1)[0]
        out = ascend_moe.npu_moe_token_unpermute(d, row_idx, w)
    probs = torch.softmax(logits.float(), -1)
    ref_w, ref_idx = probs.topk(K, -1)
    ref_w = ref_w / ref_w.sum(-1, keepdim=True)
    assert idx.tolist() == ref_idx.tolist()
    y, bound = reference_layer(np.asarray(x.float().numpy()).astype(BF16), wup, wdown, ref_w.numpy(), idx.numpy())
    check_close(out.float().numpy(), y, bound)


def test_deepseek_style_layer_from_public_torch_ops():
    """DeepSeek-V3 style with npu_moe_finalize_routing combining the routed experts and the shared expert."""
    from test_routing_layer import BF16, check_close, expert_weights, reference_layer
    rng = np.random.default_rng(8)
    T, H, I, E, K = 8, 32, 16, 32, 4
    x = torch.from_numpy(rng.standard_normal((T, H)).astype(np.float32)).bfloat16()
    logits = torch.from_numpy((rng.standard_normal((T, E)) * 2).astype(np.float32)).bfloat16()
    bias = torch.from_numpy((rng.standard_normal(E) * 0.1).astype(np.float32)).bfloat16()
    wup, wdown = expert_weights(rng, E, H, I)
    swup, swdown = expert_weights(rng, 1, H, I)
    t = lambda a: torch.from_numpy(a.astype(np.float32)).bfloat16()  # noqa: E731

    def gmm(a, wt, counts):
        return ascend_moe.npu_grouped_matmul([a], [wt], group_list=counts, split_item=2, group_type=0,
                                             group_list_type=1)[0]

    with ascend_moe.target(**NEW):
        w, idx, _ = ascend_moe.npu_moe_gating_top_k(logits, K, bias=bias, k_group=4, group_count=8,
                                                    group_select_mode=1, norm_type=1, routed_scaling_factor=2.5)
        ex, row_idx, counts, _ = ascend_moe.npu_moe_init_routing_v2(x, idx, expert_num=E, active_num=T * K,
                                                                   expert_tokens_num_type=1, expert_tokens_num_flag=True)
        d = gmm(ascend_moe.npu_swiglu(gmm(ex, t(wup), counts)), t(wdown), counts)
        one = torch.tensor([T], dtype=torch.int64)
        shared = gmm(ascend_moe.npu_swiglu(gmm(x, t(swup), one)), t(swdown), one)
        out = ascend_moe.npu_moe_finalize_routing(d, shared, None, None, w, row_idx, idx, drop_pad_mode=2)
    s = torch.sigmoid(logits.float())
    ref_w = s.gather(1, idx.long())
    ref_w = (ref_w / ref_w.sum(-1, keepdim=True) * 2.5).numpy()
    xb = x.float().numpy().astype(BF16)
    y, bound = reference_layer(xb, wup, wdown, ref_w, idx.numpy())
    ys, bs = reference_layer(xb, swup, swdown, np.ones((T, 1)), np.zeros((T, 1), np.int64))
    check_close(out.float().numpy(), y + ys, bound + bs)
