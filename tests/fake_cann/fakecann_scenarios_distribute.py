"""Fake-CANN scenarios of the expert-parallel MC2 ops: each public op with ``backend="aclnn"`` on CPU tensors
goes through the checker and the dispatcher into the fake libopapi, which records every C argument with its C
type.  The scenarios assert what op-plugin passes (MoeDistributeDispatch*KernelOpApi.cpp,
MoeDistributeCombine*OpApi.cpp): the entry point, the HCCL group names verbatim, every int64 scalar in its
place (``global_bs`` 0 replaced by BS * ep_world_size), nullptr for absent optionals, and outputs allocated
with op-plugin's sizes (computed here from the wrapper's formulas).  Registered into fakecann_scenarios'
tables (imported at its end)."""
import pytest
import torch

import ascend_moe
from fakecann_scenarios import BF16, FLOAT, FLOAT16, INT32, Call, begin, nd_tensor, old_cann, out_bytes, scenario

T, I64, S = "aclTensor*", "int64_t", "char*"
H = 1024


def _outs(c: Call, first: int, outs) -> None:
    for k, t in enumerate(outs):
        assert c.tensor(first + k)["data"] == t.untyped_storage().data_ptr()
        out_bytes(t, k)


def _a3_dispatch_inputs():
    torch.manual_seed(0)
    x = torch.randn(4, H).bfloat16()
    ids = torch.tensor([[0, 5], [7, 2], [3, 4], [1, 6]], dtype=torch.int32)
    smooth = torch.rand(2 + 8, H)                  # [shared + routed experts, H]
    weights = torch.rand(4, 2)
    mask = torch.tensor([True, True, True, False])
    return x, ids, smooth, weights, mask


def _dispatch_v2_a3(**extra):
    x, ids, smooth, weights, mask = _a3_dispatch_inputs()
    with ascend_moe.target(product="atlas-a3", cann="8.5.0"):
        outs = ascend_moe.npu_moe_distribute_dispatch_v2(
            x, ids, "hccl_ep_world_7", 4, 2, 8, scales=smooth, x_active_mask=mask, expert_scales=weights,
            group_tp="hccl_tp_3", tp_world_size=1, tp_rank_id=0, shared_expert_num=2, shared_expert_rank_num=2,
            quant_mode=2, global_bs=0, expert_token_nums_type=0, backend="aclnn", **extra)
    return (x, ids, smooth, weights, mask), outs


def _check_dispatch_v2_scalars(c: Call, first: int) -> None:
    # groupEp, epWorldSize, epRankId, moeExpertNum, groupTp, tpWorldSize, tpRankId, expertShardType,
    # sharedExpertNum, sharedExpertRankNum, quantMode, globalBs (0 -> BS * W = 4 * 4), expertTokenNumsType
    assert c.value(first, S) == "hccl_ep_world_7"
    assert [c.value(first + i, I64) for i in (1, 2, 3)] == [4, 2, 8]
    assert c.value(first + 4, S) == "hccl_tp_3"
    assert [c.value(first + i, I64) for i in range(5, 13)] == [1, 0, 0, 2, 2, 2, 16, 0]
    assert c.value(first + 13, S) == ""            # commAlg


def _check_dispatch_v2_outputs(outs) -> None:
    # op-plugin: L = 8 / (4 - 2) = 4 local experts; A = global_bs * min(L, K) = 16 * 2; tp_world_size 1
    # -> expand_x [A * 1, H] int8 (quant_mode 2); assist [max(BS * K, A * 128)]; with expert_scales
    # ep_recv_counts [W * L + 2 * global_bs * K * (W // 8)] = [16]
    assert [tuple(t.shape) for t in outs] == [(32, H), (32,), (4096,), (4,), (16,), (1,), (32,)]
    assert [t.dtype for t in outs] == [torch.int8, torch.float32, torch.int32, torch.int64, torch.int32,
                                       torch.int32, torch.float32]


@scenario
def distribute_dispatch_v2_arguments(fake):
    begin(fake)
    (x, ids, smooth, weights, mask), outs = _dispatch_v2_a3()
    c = Call(fake, "aclnnMoeDistributeDispatchV4")
    assert c.kinds() == [T] * 7 + [S] + [I64] * 3 + [S] + [I64] * 8 + [S] + [I64] * 3 + [T] * 7
    nd_tensor(c.tensor(0), x, BF16)
    nd_tensor(c.tensor(1), ids, INT32)
    nd_tensor(c.tensor(2), smooth, FLOAT)
    assert c.tensor(3)["data"] == mask.untyped_storage().data_ptr() and c.tensor(3)["dims"] == [4]
    nd_tensor(c.tensor(4), weights, FLOAT)
    assert c.null(5) and c.null(6)                  # elastic_info, performance_info absent -> nullptr
    _check_dispatch_v2_scalars(c, 7)
    assert [c.value(i, I64) for i in (21, 22, 23)] == [0, 0, 0]   # zero / copy / const experts
    _check_dispatch_v2_outputs(outs)
    _outs(c, 24, outs)
    c.phases()
    fake.assert_balanced()


@scenario
def distribute_dispatch_v2_special_experts_reach_v4(fake):
    begin(fake)
    _, outs = _dispatch_v2_a3(zero_expert_num=0, copy_expert_num=0, const_expert_num=0, comm_alg="")
    c = Call(fake, "aclnnMoeDistributeDispatchV4")
    assert c.value(20, S) == "" and [c.value(i, I64) for i in (21, 22, 23)] == [0, 0, 0]
    fake.assert_balanced()


@scenario
def distribute_dispatch_v1_arguments(fake):
    begin(fake)
    x = torch.randn(4, H).half()
    ids = torch.tensor([[0, 5, 9], [15, 2, 11], [3, 4, 10], [1, 6, 12]], dtype=torch.int32)
    weights = torch.rand(4, 3)
    with ascend_moe.target(product="atlas-a2", cann="8.5.0"):
        outs = ascend_moe.npu_moe_distribute_dispatch(
            x, ids, "hccl_ep_5", 8, 5, 16, expert_scales=weights, global_bs=64, expert_token_nums_type=1,
            shared_expert_num=0, backend="aclnn")
    c = Call(fake, "aclnnMoeDistributeDispatch")
    assert c.kinds() == [T] * 5 + [S] + [I64] * 3 + [S] + [I64] * 8 + [T] * 7
    nd_tensor(c.tensor(0), x, FLOAT16)
    nd_tensor(c.tensor(1), ids, INT32)
    assert c.null(2) and c.null(3)                  # scales, x_active_mask absent
    nd_tensor(c.tensor(4), weights, FLOAT)
    assert c.value(5, S) == "hccl_ep_5" and c.value(9, S) == ""
    assert [c.value(i, I64) for i in (6, 7, 8)] == [8, 5, 16]
    # tpWorldSize, tpRankId, expertShardType, sharedExpertNum, sharedExpertRankNum, quantMode, globalBs, type
    assert [c.value(i, I64) for i in range(10, 18)] == [0, 0, 0, 0, 0, 0, 64, 1]
    # op-plugin v1: L = 16 / 8 = 2; A = 64 * min(2, 3) = 128; expand_idx [BS * K]; with expert_scales
    # ep_recv_counts [W * L + 2 * BS * K * (W // 8)] = [16 + 24]
    assert [tuple(t.shape) for t in outs] == [(128, H), (128,), (12,), (2,), (40,), (0,), (128,)]
    assert [t.dtype for t in outs] == [torch.float16, torch.float32, torch.int32, torch.int64, torch.int32,
                                       torch.int32, torch.float32]
    _outs(c, 18, outs)
    c.phases()
    fake.assert_balanced()


def _combine_v2_inputs():
    torch.manual_seed(1)
    expand_x = torch.randn(32, H).bfloat16()
    ids = torch.tensor([[0, 5], [7, 2], [3, 4], [1, 6]], dtype=torch.int32)
    assist = torch.zeros(4096, dtype=torch.int32)
    send = torch.arange(16, dtype=torch.int32)
    weights = torch.rand(4, 2)
    tp_send = torch.ones(1, dtype=torch.int32)
    mask = torch.tensor([True, True, True, False])
    expand_scales = torch.rand(32)
    shared_x = torch.randn(4, H).bfloat16()
    return expand_x, ids, assist, send, weights, tp_send, mask, expand_scales, shared_x


@scenario
def distribute_combine_v2_arguments(fake):
    begin(fake)
    expand_x, ids, assist, send, weights, tp_send, mask, expand_scales, shared_x = _combine_v2_inputs()
    with ascend_moe.target(product="atlas-a3", cann="8.5.0"):
        y = ascend_moe.npu_moe_distribute_combine_v2(
            expand_x, ids, assist, send, weights, "hccl_ep_world_7", 4, 2, 8, tp_send_counts=tp_send,
            x_active_mask=mask, expand_scales=expand_scales, shared_expert_x=shared_x, group_tp="hccl_tp_3",
            tp_world_size=1, tp_rank_id=0, shared_expert_num=2, shared_expert_rank_num=2, global_bs=0,
            comm_quant_mode=0, backend="aclnn")
    c = Call(fake, "aclnnMoeDistributeCombineV4")
    assert c.kinds() == [T] * 18 + [S] + [I64] * 3 + [S] + [I64] * 9 + [S] + [I64] * 3 + [T]
    for i, (t, dt) in enumerate([(expand_x, BF16), (ids, INT32), (assist, INT32), (send, INT32), (weights, FLOAT),
                                 (tp_send, INT32)]):
        nd_tensor(c.tensor(i), t, dt)
    assert c.tensor(6)["data"] == mask.untyped_storage().data_ptr()
    assert c.null(7) and c.null(8) and c.null(9)    # op-plugin: activation/weight scale, group list null
    nd_tensor(c.tensor(10), expand_scales, FLOAT)
    nd_tensor(c.tensor(11), shared_x, BF16)
    assert all(c.null(i) for i in range(12, 18))    # elastic, ori_x, alpha 1/2, v, performance_info
    assert c.value(18, S) == "hccl_ep_world_7" and c.value(22, S) == "hccl_tp_3"
    assert [c.value(i, I64) for i in (19, 20, 21)] == [4, 2, 8]
    # tpWorldSize, tpRankId, expertShardType, sharedExpertNum, sharedExpertRankNum, globalBs (0 -> 4 * 4),
    # outDtype 0, commQuantMode, groupListType 0
    assert [c.value(i, I64) for i in range(23, 32)] == [1, 0, 0, 2, 2, 16, 0, 0, 0]
    assert c.value(32, S) == "" and [c.value(i, I64) for i in (33, 34, 35)] == [0, 0, 0]
    assert tuple(y.shape) == (4, H) and y.dtype == torch.bfloat16
    _outs(c, 36, [y])
    c.phases()
    fake.assert_balanced()


@scenario
def distribute_combine_v1_arguments(fake):
    begin(fake)
    expand_x = torch.randn(64, H).half()
    ids = torch.tensor([[0, 5, 9], [15, 2, 11], [3, 4, 10], [1, 6, 12]], dtype=torch.int32)
    expand_idx = torch.arange(12, dtype=torch.int32)
    send = torch.arange(40, dtype=torch.int32)
    weights = torch.rand(4, 3)
    expand_scales = torch.rand(64)
    with ascend_moe.target(product="atlas-a2", cann="8.5.0"):
        y = ascend_moe.npu_moe_distribute_combine(
            expand_x, ids, expand_idx, send, weights, "hccl_ep_5", 8, 5, 16, expand_scales=expand_scales,
            global_bs=0, shared_expert_num=0, backend="aclnn")
    c = Call(fake, "aclnnMoeDistributeCombine")
    assert c.kinds() == [T] * 11 + [S] + [I64] * 3 + [S] + [I64] * 9 + [T]
    for i, (t, dt) in enumerate([(expand_x, FLOAT16), (ids, INT32), (expand_idx, INT32), (send, INT32),
                                 (weights, FLOAT)]):
        nd_tensor(c.tensor(i), t, dt)
    assert all(c.null(i) for i in range(5, 10))     # tp_send_counts, mask, activation/weight scale, group list
    nd_tensor(c.tensor(10), expand_scales, FLOAT)
    assert c.value(11, S) == "hccl_ep_5" and c.value(15, S) == ""
    assert [c.value(i, I64) for i in (12, 13, 14)] == [8, 5, 16]
    # tpWorldSize, tpRankId, expertShardType, sharedExpertNum, sharedExpertRankNum, globalBs (0 -> 4 * 8),
    # outDtype, commQuantMode, groupListType
    assert [c.value(i, I64) for i in range(16, 25)] == [0, 0, 0, 0, 0, 32, 0, 0, 0]
    assert tuple(y.shape) == (4, H) and y.dtype == torch.float16
    _outs(c, 25, [y])
    c.phases()
    fake.assert_balanced()


@scenario
def distribute_combine_v1_ignores_shared_expert_x(fake):
    """aclnnMoeDistributeCombine has no sharedExpertX parameter and op-plugin does not pass shared_expert_x: the
    call is the one without it (same kinds, nothing in its place), and a RuntimeWarning says it is ignored."""
    import warnings
    begin(fake)
    with ascend_moe.target(product="atlas-a2", cann="8.5.0"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ascend_moe.npu_moe_distribute_combine(
            torch.randn(64, H).half(), torch.zeros(4, 3, dtype=torch.int32), torch.zeros(12, dtype=torch.int32),
            torch.zeros(40, dtype=torch.int32), torch.rand(4, 3), "hccl_ep_5", 8, 5, 16,
            shared_expert_x=torch.randn(4, H).half(), shared_expert_num=0, backend="aclnn")
    assert any(w.category is RuntimeWarning and "shared_expert_x is ignored" in str(w.message) for w in caught)
    c = Call(fake, "aclnnMoeDistributeCombine")
    assert c.kinds() == [T] * 11 + [S] + [I64] * 3 + [S] + [I64] * 9 + [T]
    assert all(c.null(i) for i in range(5, 11))     # nothing optional was given except shared_expert_x
    fake.assert_balanced()


@old_cann
def old_distribute_ops_fall_back_to_v2(fake):
    """Without V3/V4 (omitted from this build) op-plugin calls V2, which has no elastic/special-expert
    parameters; a call that needs them is refused before any aclnn call."""
    from ascend_moe.backends import BackendError
    begin(fake)
    _, outs = _dispatch_v2_a3()
    c = Call(fake, "aclnnMoeDistributeDispatchV2")
    assert c.kinds() == [T] * 5 + [S] + [I64] * 3 + [S] + [I64] * 8 + [S] + [T] * 7
    assert c.null(4) is False and c.tensor(0)["dtype"] == BF16
    _check_dispatch_v2_scalars(c, 5)
    _check_dispatch_v2_outputs(outs)
    _outs(c, 19, outs)
    begin(fake)
    with pytest.raises(ascend_moe.ConstraintError, match="zero_expert_num"):   # the rules refuse it first
        _dispatch_v2_a3(zero_expert_num=1)
    # the dispatcher's own refusal (the call built without the checker): V2 has no zeroExpertNum parameter
    from ascend_moe.backends import aclnn
    from ascend_moe.opdecl import get_decl
    x, ids, smooth, weights, mask = _a3_dispatch_inputs()
    bound = get_decl("npu_moe_distribute_dispatch_v2").bind(
        (x, ids, "hccl_ep_world_7", 4, 2, 8), dict(zero_expert_num=1, shared_expert_num=0))
    with pytest.raises(BackendError, match="zero_expert_num cannot be passed to aclnnMoeDistributeDispatchV2"):
        aclnn.call("npu_moe_distribute_dispatch_v2", bound)
    assert fake.gws() == []
    expand_x, ids, assist, send, weights, tp_send, mask, expand_scales, shared_x = _combine_v2_inputs()
    with ascend_moe.target(product="atlas-a3", cann="8.5.0"):
        y = ascend_moe.npu_moe_distribute_combine_v2(
            expand_x, ids, assist, send, weights, "hccl_ep_world_7", 4, 2, 8, shared_expert_x=shared_x,
            shared_expert_num=2, shared_expert_rank_num=2, backend="aclnn")
    c = Call(fake, "aclnnMoeDistributeCombineV2")
    assert c.kinds() == [T] * 12 + [S] + [I64] * 3 + [S] + [I64] * 9 + [S] + [T]
    nd_tensor(c.tensor(11), shared_x, BF16)
    assert c.value(12, S) == "hccl_ep_world_7" and c.value(16, S) == ""
    assert [c.value(i, I64) for i in range(17, 26)] == [0, 0, 0, 2, 2, 16, 0, 0, 0]
    _outs(c, 27, [y])
    fake.assert_balanced()
