"""MoE layers composed only of ascend-moe simulator ops equal a plain float32 torch layer written here.

* DeepSeek-V3 style: sigmoid gate with score-correction bias, 8 groups keep 4, top-8, renorm, scaling 2.5
  (``npu_moe_gating_top_k``) -> ``npu_moe_init_routing_v2`` (count mode) -> ``npu_grouped_matmul`` up ->
  SwiGLU -> ``npu_grouped_matmul`` down -> ``npu_moe_finalize_routing`` (drop_pad_mode 2) with the shared expert
  (a one-group ``npu_grouped_matmul`` pair) as ``skip1``.
* Qwen3-MoE style: softmax top-8 renormalised (``npu_moe_gating_top_k_softmax_v2`` renorm=1) ->
  ``npu_moe_init_routing_v2`` -> grouped matmuls -> SwiGLU -> ``npu_moe_token_unpermute`` with the weights.

SwiGLU is ``npu_swiglu`` (its checked NumPy twin).  The reference is an independent float32 torch layer
(per-token loop over its experts).  The bound is derived from the dtypes: every bf16 rounding on the device path contributes a relative
error of at most u = 2^-8 to the quantity it rounds (gate weights, the up projection, the SwiGLU output, the down
projection, the output); their propagation is bounded with the reference's own magnitudes, times a safety
factor of 2 (float32 accumulation and exp differences are far below that).
"""
import numpy as np
import pytest
import torch

import ml_dtypes
from ascend_moe import numpy_ops
from ascend_moe.sim import gating as sim_gating
from ascend_moe.sim import gmm as sim_gmm
from ascend_moe.sim import routing as R

BF16 = np.dtype(ml_dtypes.bfloat16)
U = 2.0 ** -8
TARGET = dict(product="atlas-a2", cann="9.0.0")


def swiglu_bf16(h):
    """npu_swiglu on the simulator: silu(first half) * second half, fp32 inside, one rounding to bf16."""
    return numpy_ops.npu_swiglu(h)


def grouped(x, w, counts):
    return sim_gmm.npu_grouped_matmul([x], [w], group_list=np.asarray(counts, np.int64), group_type=0,
                                      group_list_type=1, split_item=2)[0]


def reference_layer(x, wup, wdown, weights, idx):
    """float32 torch: y[t] = sum_k w[t,k] * down_e(swiglu(up_e(x[t]))), plus the magnitude terms for the bound."""
    xt = torch.from_numpy(x.astype(np.float32))
    T, K = idx.shape
    H = x.shape[1]
    y = torch.zeros(T, H)
    bound = torch.zeros(T, H, dtype=torch.float64)
    for t in range(T):
        for j in range(K):
            e = int(idx[t, j])
            wu = torch.from_numpy(wup[e].astype(np.float32))
            wd = torch.from_numpy(wdown[e].astype(np.float32))
            h = xt[t] @ wu
            g, up = h.chunk(2)
            a = torch.nn.functional.silu(g) * up
            d = a @ wd
            w = float(weights[t, j])
            y[t] += w * d
            # first-order error terms of the bf16 roundings (see the module docstring)
            da = U * (1.1 * g.abs() * up.abs() + torch.nn.functional.silu(g).abs() * up.abs() + a.abs())
            dd = da.double() @ wd.abs().double() + U * d.abs().double()
            bound[t] += abs(w) * dd + U * abs(w) * d.abs().double()
    return y, bound


def expert_weights(rng, E, H, I):
    wup = (rng.standard_normal((E, H, 2 * I)) / np.sqrt(H)).astype(BF16)
    wdown = (rng.standard_normal((E, I, H)) / np.sqrt(I)).astype(BF16)
    return wup, wdown


def check_close(out, ref, bound, extra=None):
    out = torch.from_numpy(out.astype(np.float32)).double()
    ref = ref.double()
    total = 2 * (bound + U * ref.abs()) + (extra if extra is not None else 0)
    err = (out - ref).abs()
    ratio = float((err / total).max())
    assert ratio <= 1, f"max err {float(err.max()):.3g}, worst error/bound {ratio:.3g}"
    return ratio


def test_deepseek_v3_style_layer():
    rng = np.random.default_rng(0)
    T, H, I, E, K = 12, 64, 32, 64, 8
    x = rng.standard_normal((T, H)).astype(BF16)
    logits = (rng.standard_normal((T, E)) * 2).astype(BF16)
    bias = (rng.standard_normal(E) * 0.1).astype(BF16)
    wup, wdown = expert_weights(rng, E, H, I)
    swup, swdown = expert_weights(rng, 1, H, I)

    # ---- ascend-moe ops
    w, idx, _ = sim_gating.npu_moe_gating_top_k(logits, K, bias=bias, k_group=4, group_count=8, group_select_mode=1,
                                                 renorm=0, norm_type=1, routed_scaling_factor=2.5, eps=1e-20)
    ex, row_idx, counts, _ = R.moe_init_routing_v2(x, idx, expert_num=E, active_num=T * K, expert_tokens_num_type=1,
                                                   expert_tokens_num_flag=True)
    h = grouped(ex, wup, counts)
    d = grouped(swiglu_bf16(h), wdown, counts)
    shared = grouped(swiglu_bf16(grouped(x, swup, [T])), swdown, [T])
    out = R.moe_finalize_routing(d, shared, None, None, w, row_idx, idx, drop_pad_mode=2)
    assert out.dtype == BF16 and out.shape == (T, H)

    # ---- independent float32 reference: DeepSeek-V3's gate, then the experts
    lt = torch.from_numpy(logits.astype(np.float32))
    scores = torch.sigmoid(lt)
    biased = scores + torch.from_numpy(bias.astype(np.float32))
    group_scores = biased.view(T, 8, -1).topk(2, dim=-1)[0].sum(-1)
    keep = group_scores.topk(4, dim=-1)[1]
    mask = torch.ones(T, 8, dtype=torch.bool).scatter_(1, keep, False)
    masked = biased.masked_fill(mask.repeat_interleave(E // 8, dim=1), float("-inf"))
    ref_idx = masked.topk(K, dim=-1)[1]
    ref_w = scores.gather(1, ref_idx)
    ref_w = ref_w / ref_w.sum(-1, keepdim=True) * 2.5
    assert [set(r) for r in idx.tolist()] == [set(r) for r in ref_idx.tolist()]
    # align the reference weights to the op's expert order
    order = [[ref_idx[t].tolist().index(e) for e in idx[t]] for t in range(T)]
    ref_w_aligned = np.array([[float(ref_w[t, o]) for o in order[t]] for t in range(T)])
    assert np.all(np.abs(w.astype(np.float32) - ref_w_aligned) <= U * np.abs(ref_w_aligned) + 1e-6)

    y, bound = reference_layer(x, wup, wdown, ref_w_aligned, idx)
    ys, bs = reference_layer(x, swup, swdown, np.ones((T, 1)), np.zeros((T, 1), np.int64))
    check_close(out, y + ys, bound + bs)


def test_qwen3_moe_style_layer():
    rng = np.random.default_rng(1)
    T, H, I, E, K = 10, 64, 32, 32, 8
    x = rng.standard_normal((T, H)).astype(BF16)
    logits = (rng.standard_normal((T, E)) * 2).astype(BF16)
    wup, wdown = expert_weights(rng, E, H, I)

    w, idx, _ = R.moe_gating_top_k_softmax_v2(logits, K, renorm=1)
    ex, row_idx, counts, _ = R.moe_init_routing_v2(x, idx, expert_num=E, active_num=T * K, expert_tokens_num_type=1,
                                                   expert_tokens_num_flag=True)
    d = grouped(swiglu_bf16(grouped(ex, wup, counts)), wdown, counts)
    out = R.moe_token_unpermute(d, row_idx, w)
    assert out.dtype == BF16 and out.shape == (T, H)

    # reference: Qwen3-MoE's router (softmax, top-k, renormalise when norm_topk_prob), float32
    probs = torch.softmax(torch.from_numpy(logits.astype(np.float32)), dim=-1)
    ref_w, ref_idx = probs.topk(K, dim=-1)
    ref_w = ref_w / ref_w.sum(-1, keepdim=True)
    assert idx.tolist() == ref_idx.tolist()
    assert np.all(np.abs(w.astype(np.float32) - ref_w.numpy()) <= U * ref_w.numpy() + 1e-6)
    y, bound = reference_layer(x, wup, wdown, ref_w.numpy(), idx)
    check_close(out, y, bound)


def test_layer_with_expert_parallel_range_and_masked_weights():
    """vllm-ascend's all-gather path on one of 4 EP ranks: active_expert_range = this rank's experts, weights of
    other experts zeroed, so the -1 row indices of foreign slots are skipped by unpermute."""
    rng = np.random.default_rng(2)
    T, H, I, E, K, ranks = 9, 32, 16, 16, 4, 4
    local = E // ranks
    x = rng.standard_normal((T, H)).astype(BF16)
    wup, wdown = expert_weights(rng, E, H, I)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    w, idx, _ = R.moe_gating_top_k_softmax_v2(logits, K, renorm=1)
    total = None
    for rank in range(ranks):
        s, e = rank * local, (rank + 1) * local
        ex, row_idx, counts, _ = R.moe_init_routing_v2(x, idx, expert_num=E, active_num=T * K,
                                                       expert_tokens_num_type=1, expert_tokens_num_flag=True,
                                                       active_expert_range=[s, e])
        assert counts.shape == (local,)
        n = int(counts.sum())
        d = grouped(swiglu_bf16(grouped(ex[:n], wup[s:e], counts)), wdown[s:e], counts)
        masked = np.where((idx >= s) & (idx < e), w.astype(np.float32), 0).astype(np.float32)
        part = R.moe_token_unpermute(d, row_idx, masked).astype(np.float32)
        total = part if total is None else total + part
    y, bound = reference_layer(x, wup, wdown, w.astype(np.float32), idx)
    # each rank's partial adds one more bf16 rounding of its output
    check_close(total, y, bound, extra=2 * ranks * U * y.abs().double())
