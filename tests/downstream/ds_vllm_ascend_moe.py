"""A vllm-ascend-style MoE layer test, written as vllm-ascend writes its model code and CPU tests.

Run with ``pytest -p ascend_moe.pytest_plugin tests/downstream/ds_vllm_ascend_moe.py`` (see README.md
here): ``import torch_npu`` then resolves to the ascend-moe drop-in, every torch_npu call is checked
against the selected product and computed by the simulator.  The references below are plain float64
/ integer NumPy written in this file.  Steps vllm-ascend does with torch_npu ops that ascend-moe does
not provide (npu_moe_init_routing, npu_swiglu, npu_dynamic_quant) are written with plain torch here.
"""
import numpy as np
import pytest
import torch
import torch_npu

ACL_FORMAT_FRACTAL_NZ = 29


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ references

def ref_grouped_topk(logits, bias, k, k_group, group_count, routed_scaling_factor, eps):
    """DeepSeek-V3 routing in float64: sigmoid, biased selection by top-2-sum groups, unbiased weights."""
    s = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    v = s + bias.astype(np.float64)
    rows, experts = v.shape
    gsize = experts // group_count
    group_score = np.sort(v.reshape(rows, group_count, gsize), axis=-1)[..., -2:].sum(-1)
    kept = np.argsort(-group_score, axis=-1, kind="stable")[:, :k_group]
    allowed = np.zeros((rows, group_count), dtype=bool)
    np.put_along_axis(allowed, kept, True, axis=-1)
    masked = np.where(np.repeat(allowed, gsize, axis=-1), v, -np.inf)
    idx = np.argsort(-masked, axis=-1, kind="stable")[:, :k]
    g = np.take_along_axis(s, idx, axis=-1)
    return g / (g.sum(-1, keepdims=True) + eps) * routed_scaling_factor, idx


def ref_bf16(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float32)).to(torch.bfloat16)


# ------------------------------------------------------------------------------------------ model code

def select_experts(router_logits, e_score_correction_bias, top_k, topk_group, num_expert_group):
    """vllm-ascend ``select_experts`` on A2/A3 (fused DeepSeek routing)."""
    topk_weights, topk_ids, _ = torch_npu.npu_moe_gating_top_k(
        router_logits, k=top_k, bias=e_score_correction_bias, k_group=topk_group,
        group_count=num_expert_group, group_select_mode=1, renorm=0, norm_type=1,
        routed_scaling_factor=1, eps=float(1e-20))
    return topk_weights, topk_ids


def permute(hidden_states, topk_ids, num_experts):
    """Stand-in for torch_npu.npu_moe_init_routing (not provided by ascend-moe): expert-sorted rows."""
    top_k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    src_token = order // top_k
    expert_tokens = torch.bincount(flat, minlength=num_experts).to(torch.int64)
    return hidden_states[src_token], src_token, order, expert_tokens


def unquant_fused_experts(hidden_states, w13, w2, topk_weights, topk_ids, num_experts):
    """vllm-ascend ``fused_experts`` (bf16): gmm up, SwiGLU, gmm down, weighted combine."""
    sorted_hidden, src_token, order, expert_tokens = permute(hidden_states, topk_ids, num_experts)
    gate_up = torch_npu.npu_grouped_matmul(x=[sorted_hidden], weight=[w13], split_item=2, group_list_type=1,
                                           group_type=0, group_list=expert_tokens)[0]
    n = gate_up.shape[-1] // 2
    act = torch.nn.functional.silu(gate_up[:, :n]) * gate_up[:, n:]
    down = torch_npu.npu_grouped_matmul(x=[act], weight=[w2], split_item=2, group_list_type=1,
                                        group_type=0, group_list=expert_tokens)[0]
    weights = topk_weights.reshape(-1)[order].to(torch.float32)[:, None]
    out = torch.zeros(hidden_states.shape, dtype=torch.float32)
    out.index_add_(0, src_token, down.to(torch.float32) * weights)
    return out.to(hidden_states.dtype), gate_up, act, down, expert_tokens, src_token, order


def dynamic_quant(x):
    """Stand-in for torch_npu.npu_dynamic_quant: per-token symmetric int8."""
    scale = x.to(torch.float32).abs().amax(-1) / 127.0
    q = torch.round(x.to(torch.float32) / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale


# ------------------------------------------------------------------------------------------ tests

def test_gating_deepseek_style():
    rows, experts, groups, k_group, k = 5, 64, 8, 4, 6
    logits = torch.randn(rows, experts, generator=_gen(1))
    bias = torch.randn(experts, generator=_gen(2)) * 0.1
    w, ids = select_experts(logits, bias, k, k_group, groups)
    assert w.shape == (rows, k) and w.dtype == torch.float32
    assert ids.shape == (rows, k) and ids.dtype == torch.int32
    ref_w, ref_ids = ref_grouped_topk(logits.numpy(), bias.numpy(), k, k_group, groups, 1.0, 1e-20)
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=2e-6, atol=0)


def test_unquantized_moe_layer_bf16():
    tokens, hidden, inter, experts, top_k = 6, 32, 16, 8, 2
    hidden_states = (torch.randn(tokens, hidden, generator=_gen(3))).to(torch.bfloat16)
    w13 = (torch.randn(experts, hidden, 2 * inter, generator=_gen(4)) * 0.2).to(torch.bfloat16)
    w2 = (torch.randn(experts, inter, hidden, generator=_gen(5)) * 0.2).to(torch.bfloat16)
    logits = torch.randn(tokens, experts, generator=_gen(6))
    topk_weights, topk_ids = select_experts(logits, torch.zeros(experts), top_k, 1, 1)

    out, gate_up, act, down, expert_tokens, src_token, order = unquant_fused_experts(
        hidden_states, w13, w2, topk_weights, topk_ids, experts)

    # stage by stage against float64: each gmm accumulates in fp32 and rounds once to bf16
    ends = np.cumsum(expert_tokens.numpy())
    expert_of_row = np.searchsorted(ends, np.arange(tokens * top_k), side="right")
    xs = hidden_states.float().numpy().astype(np.float64)[src_token.numpy()]
    ref_gate_up = np.einsum("rk,rkn->rn", xs, w13.float().numpy().astype(np.float64)[expert_of_row])
    torch.testing.assert_close(gate_up, ref_bf16(ref_gate_up), rtol=2 ** -7, atol=1e-6)
    ref_down = np.einsum("rk,rkn->rn", act.float().numpy().astype(np.float64),
                         w2.float().numpy().astype(np.float64)[expert_of_row])
    torch.testing.assert_close(down, ref_bf16(ref_down), rtol=2 ** -7, atol=1e-6)
    # end to end: every token is the routing-weighted sum of its experts' outputs
    ref_out = np.zeros((tokens, hidden))
    np.add.at(ref_out, src_token.numpy(), ref_down * topk_weights.reshape(-1).numpy()[order.numpy()][:, None])
    torch.testing.assert_close(out.float(), torch.from_numpy(ref_out).float(), rtol=2e-2, atol=2e-2)


def _nz_int8_weight(e, k, n, seed):
    """An int8 expert weight as vllm-ascend's process_weights_after_loading leaves it (NZ parameter)."""
    w = torch.randint(-8, 8, (e, k, n), generator=_gen(seed), dtype=torch.int8)
    param = torch.nn.Parameter(w.clone(), requires_grad=False)
    param.data = torch_npu.npu_format_cast(param.data, ACL_FORMAT_FRACTAL_NZ)
    return w, param


def _grouped_int_matmul(x, w, e_of):
    """Exact int64 x[rows_e] @ w[e] per expert (the device accumulates in int32 without overflow here)."""
    out = np.zeros((x.shape[0], w.shape[-1]), dtype=np.int64)
    for e in np.unique(e_of):
        rows = e_of == e
        out[rows] = x[rows].astype(np.int64) @ w[e].astype(np.int64)
    return out


def test_w8a8_dynamic_moe_layer():
    """vllm-ascend w8a8_dynamic: GMM+SwiGLU+quant (NZ int8 w13), then GMM+finalize-routing (NZ int8 w2).
    Sizes from the WeightNz docs' list (k 256, n 2048)."""
    tokens, hidden, inter, experts, top_k = 6, 2048, 256, 4, 2
    hidden_states = torch.randn(tokens, hidden, generator=_gen(7)).to(torch.bfloat16)
    w13, w13_nz = _nz_int8_weight(experts, hidden, 2 * inter, seed=8)
    w2, w2_nz = _nz_int8_weight(experts, inter, hidden, seed=9)
    w13_scale = torch.rand(experts, 2 * inter, generator=_gen(10)) * 0.01 + 0.001
    w2_scale = torch.rand(experts, hidden, generator=_gen(11)) * 0.01 + 0.001
    topk_weights, topk_ids = select_experts(torch.randn(tokens, experts, generator=_gen(12)),
                                            torch.zeros(experts), top_k, 1, 1)
    sorted_hidden, src_token, order, expert_tokens = permute(hidden_states, topk_ids, experts)
    xq, x_scale = dynamic_quant(sorted_hidden)

    out, out_scale, _ = torch_npu.npu_grouped_matmul_swiglu_quant(
        x=xq, weight=w13_nz, group_list=torch.cumsum(expert_tokens, 0), weight_scale=w13_scale, x_scale=x_scale)
    logit = topk_weights.reshape(-1)[order].float()
    y = torch_npu.npu_grouped_matmul_finalize_routing(
        out, w2_nz, expert_tokens, scale=w2_scale, pertoken_scale=out_scale, logit=logit,
        row_index=src_token.to(torch.int64), output_bs=tokens, group_list_type=1)

    # reference, kernel order (spec grouped-matmul-family 2.3 v1 and 3.3): exact int GEMMs, fp32 steps
    e_of = np.searchsorted(np.cumsum(expert_tokens.numpy()), np.arange(tokens * top_k), side="right")
    acc = _grouped_int_matmul(xq.numpy(), w13.numpy(), e_of)
    c = acc.astype(np.float32) * x_scale.numpy()[:, None]
    c = c * w13_scale.numpy()[e_of]
    a, g = c[:, :inter], c[:, inter:]
    s = g * (a / (np.float32(1) + np.exp(-a)))
    qs = np.abs(s).max(-1) / np.float32(127)
    q = np.rint((s * (np.float32(1) / qs)[:, None]).astype(np.float16)).astype(np.int8)
    np.testing.assert_allclose(out_scale.numpy(), qs, rtol=1e-6)
    assert out.dtype == torch.int8 and out.shape == (tokens * top_k, inter)
    diff = np.abs(out.numpy().astype(np.int32) - q.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.02  # exp() accuracy is the one allowed difference

    acc2 = _grouped_int_matmul(out.numpy(), w2.numpy(), e_of)
    v = acc2.astype(np.float32) * w2_scale.numpy()[e_of]
    v = v * (logit.numpy() * out_scale.numpy())[:, None]
    ref_y = np.zeros((tokens, hidden), dtype=np.float32)
    for t in range(tokens * top_k):  # token order, fp32 (deterministic mode)
        ref_y[src_token[t]] += v[t]
    assert y.dtype == torch.float32 and y.shape == (tokens, hidden)
    np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-5, atol=1e-6)


def test_dense_ffn_per_product(ascend_product):
    """A dense FFN that picks the precision mode per product (310P runs high performance only)."""
    x = (torch.randn(4, 32, generator=_gen(13)) * 0.5).to(torch.float16)
    w1 = (torch.randn(32, 64, generator=_gen(14)) * 0.1).to(torch.float16)
    w2 = (torch.randn(64, 32, generator=_gen(15)) * 0.1).to(torch.float16)
    inner_precise = 1 if ascend_product == "atlas-inference" else 0
    y = torch_npu.npu_ffn(x, w1, w2, "relu", inner_precise=inner_precise)
    h = np.maximum(x.double().numpy() @ w1.double().numpy(), 0)
    ref = h @ w2.double().numpy()
    assert y.dtype == torch.float16 and y.shape == (4, 32)
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=1e-2, atol=1e-2)


def test_unimplemented_torch_npu_op_fails_loudly():
    """What MagicMock hid: an op ascend-moe does not compute raises, naming it."""
    with pytest.raises(NotImplementedError, match="npu_moe_distribute_combine_add_rms_norm"):
        torch_npu.npu_moe_distribute_combine_add_rms_norm(torch.zeros(2, 2))
    assert not torch_npu.npu.is_available()
