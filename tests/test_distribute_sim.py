"""The per-rank EP functions of ascend_moe.sim.distribute on hand-computed cases (no processes), and
the rules of the four dispatch/combine ops."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ascend_moe import rules
from ascend_moe.rules import TensorSpec
from ascend_moe.sim import distribute as D

BF16 = np.dtype(ml_dtypes.bfloat16)
f32 = np.float32


def _combine_one_token(rows_y, weights, shared_rows=(), shared_x=None):
    """Run combine_receive for one token whose routed outputs are ``rows_y`` (k order)."""
    k = len(rows_y)
    n_shared = len(shared_rows)
    cfg = D.ep_config(1, k, 2 + n_shared, 0, 2, shared_expert_num=max(n_shared, 1), shared_expert_rank_num=n_shared)
    rows = np.array([[v] for v in list(rows_y) + list(shared_rows)], dtype=np.float32).astype(BF16)
    token_k = np.array([[0, i] for i in range(k + n_shared)], np.int32)
    ids = np.arange(k, dtype=np.int32)[None, :]
    sx = None if shared_x is None else np.array([[shared_x]], np.float32).astype(BF16)
    out = D.combine_receive(cfg, rows, token_k, ids, np.array([weights], np.float32), shared_expert_x=sx)
    return float(out[0, 0].astype(np.float32))


def test_combine_rounds_product_then_sum_in_fp32():
    # 1*(1+2^-8) = 1+2^-8 exactly; 3*w2 rounds to 2^-24 in fp32; 1+2^-8+2^-24 is an fp32 tie -> even
    # (1+2^-8), a bf16 tie -> even (1.0).  A fused multiply-add would keep 3*w2 > 2^-24 and give 1+2^-7.
    w2 = f32(2.0 ** -24 / 3)
    assert f32(f32(3) * w2) == f32(2.0 ** -24) and 3 * np.float64(w2) > 2.0 ** -24
    assert _combine_one_token([1.0, 3.0], [f32(1 + 2 ** -8), w2]) == 1.0


def test_combine_adds_shared_rows_after_routed_and_unweighted():
    # routed 2^-8 + 2^-24 + 2^-24 = 2^-8 + 2^-23 exactly, then + shared 1.0 -> 1+2^-8+2^-23 -> bf16 1+2^-7.
    # Adding the shared row first would round both 2^-24 away (ties to even) and give 1.0.
    got = _combine_one_token([2 ** -8, 2 ** -24, 2 ** -24], [1.0, 1.0, 1.0], shared_rows=[1.0])
    assert got == 1 + 2 ** -7
    # unweighted: the shared row counts fully even with small routing weights
    assert _combine_one_token([4.0], [0.25], shared_rows=[2.0]) == 3.0
    assert _combine_one_token([4.0], [0.25], shared_x=2.0) == 3.0


def test_dynamic_quant_rows_rounds_half_to_even_and_returns_the_inverse_scale():
    row = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], np.float32).astype(BF16)
    q, scale = D.dynamic_quant_rows(row)
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]]
    assert scale[0] == f32(1.0)
    q, scale = D.dynamic_quant_rows(np.array([[2.0, -1.0, 0.5]], np.float32).astype(BF16),
                                    smooth=np.array([[0.5, 1.0, 4.0]], np.float32))
    # xf = [1, -1, 2]; ds = 127/2 = 63.5; xf*ds = [63.5, -63.5, 127] -> half-even [64, -64, 127]
    assert q.tolist() == [[64, -64, 127]] and scale[0] == f32(1) / f32(63.5)


def test_zero_row_quantises_to_zero_with_scale_zero():
    q, scale = D.dynamic_quant_rows(np.zeros((1, 4), BF16))
    assert q.tolist() == [[0, 0, 0, 0]] and scale.tolist() == [0.0]
    assert "zero_row_quant" in D.ASSUMPTIONS


def test_slots_count_earlier_pairs_of_the_same_expert_except_token_zero():
    ids = np.array([[3, 3], [1, 3], [3, 0]], np.int32)  # token 0 repeats expert 3 (documented collision)
    pairs, _ = D.valid_pairs(3, 2, None)
    assert D.pair_slots(ids, pairs).tolist() == [0, 0, 0, 2, 3, 0]


def test_active_pairs_for_1d_and_2d_masks():
    pairs, tokens = D.valid_pairs(3, 2, np.array([True, True, False]))
    assert pairs.tolist() == [0, 1, 2, 3] and tokens.tolist() == [0, 1]
    pairs, tokens = D.valid_pairs(3, 2, np.array([[False, False], [False, True], [True, True]]))
    assert pairs.tolist() == [3, 4, 5] and tokens.tolist() == [1, 2]


def test_receive_sizes_follow_the_wrapper():
    cfg = D.ep_config(8, 8, 16, 5, 252, shared_expert_num=1, shared_expert_rank_num=2, global_bs=0)
    assert cfg.experts_per_rank == 18 and cfg.max_recv_rows == 8 * 16 * 8   # global_bs * min(L, K)
    shared = D.ep_config(8, 8, 16, 1, 252, shared_expert_num=1, shared_expert_rank_num=2)
    assert shared.local_expert_num() == 1 and shared.max_recv_rows == 8 * 8  # (gbs/W) * ceil(W/(S/num))
    assert D.ep_config(4, 2, 4, 0, 8).shared_expert_num == 0               # default 1 -> 0 without shared ranks


# ------------------------------------------------------------------ rules ---------------------------

def _dispatch(product="atlas-a3", **kw):
    args = dict(x=TensorSpec((8, 7168), "bfloat16"), expert_ids=TensorSpec((8, 8), "int32"), group_ep="g",
                ep_world_size=16, ep_rank_id=0, moe_expert_num=256)
    args.update(kw)
    x, ids, g, w, r, e = (args.pop(n) for n in ("x", "expert_ids", "group_ep", "ep_world_size", "ep_rank_id",
                                                 "moe_expert_num"))
    return {v.rule_id for v in rules.check("npu_moe_distribute_dispatch_v2", x, ids, g, w, r, e, product=product,
                                           **args)}


def test_deepseek_v3_dispatch_passes_on_a3():
    assert not _dispatch()


@pytest.mark.parametrize("kw, rule_id", [
    (dict(moe_expert_num=250), "dispatch_v2.moe_expert_num.divisible"),
    (dict(ep_rank_id=16), "dispatch_v2.ep_rank_id.range"),
    (dict(shared_expert_rank_num=3, shared_expert_num=2), "dispatch_v2.shared_expert_num.config"),
    (dict(shared_expert_rank_num=16), "dispatch_v2.shared_expert_rank_num.range"),
    (dict(quant_mode=1), "dispatch_v2.quant_mode.range"),
    (dict(expert_token_nums_type=2), "dispatch_v2.expert_token_nums_type.range"),
    (dict(global_bs=100), "dispatch_v2.global_bs.range"),
    (dict(scales=TensorSpec((256, 7168), "float32")), "dispatch_v2.scales.shape"),
    (dict(x=TensorSpec((8, 7168), "float32")), "dispatch_v2.x.dtype"),
    (dict(moe_expert_num=1032, shared_expert_rank_num=8), "dispatch_v2.local_experts.max"),
])
def test_dispatch_rules_reject(kw, rule_id):
    assert rule_id in _dispatch(**kw)


def test_a2_shared_experts_are_a_doc_warning_only():
    found = rules.check("npu_moe_distribute_dispatch_v2", TensorSpec((8, 7168), "bfloat16"), TensorSpec((8, 8), "int32"),
                        "g", 16, 0, 252, shared_expert_rank_num=2, product="atlas-a2")
    by_id = {v.rule_id: v for v in found}
    assert by_id["dispatch_v2.shared_expert.a2"].severity == "warning"
    assert all(v.severity == "warning" for v in found)


def test_v1_dispatch_rejects_x_active_mask_on_a3_only():
    args = (TensorSpec((8, 7168), "bfloat16"), TensorSpec((8, 8), "int32"), "g", 16, 0, 256)
    mask = TensorSpec((8,), "bool")
    a3 = {v.rule_id for v in rules.check("npu_moe_distribute_dispatch", *args, x_active_mask=mask, product="atlas-a3")}
    a2 = {v.rule_id for v in rules.check("npu_moe_distribute_dispatch", *args, x_active_mask=mask, product="atlas-a2")}
    assert "dispatch.x_active_mask.v1" in a3 and "dispatch.x_active_mask.v1" not in a2


def test_combine_rules():
    found = {v.rule_id for v in rules.check(
        "npu_moe_distribute_combine_v2", TensorSpec((64, 7168), "int8"), TensorSpec((8, 8), "int32"),
        TensorSpec((8192,), "int32"), TensorSpec((128,), "int32"), TensorSpec((8, 8), "float32"), "g", 16, 0, 256,
        comm_quant_mode=2, product="atlas-a3")}
    assert {"combine_v2.x.dtype", "combine_v2.comm_quant_mode.range"} <= found


def test_ascend_950_is_not_modelled():
    found = rules.check("npu_moe_distribute_dispatch_v2", TensorSpec((8, 7168), "bfloat16"),
                        TensorSpec((8, 8), "int32"), "g", 16, 0, 256, product="ascend-950")
    assert [v.rule_id for v in found] == ["npu_moe_distribute_dispatch_v2.product"]
    assert "does not model" in found[0].message
