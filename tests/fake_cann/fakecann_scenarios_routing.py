"""Fake-CANN scenarios of the routing / combine ops: each public op with ``backend="aclnn"`` on CPU tensors goes
through the checker and the dispatcher into the fake libopapi, which records every C argument with its C type;
the scenarios assert the exact arguments op-plugin passes (entry point, order, kinds, values, nullptr for absent
optionals, outputs), the two phases, and that every ACL object is destroyed.  Registered into
fakecann_scenarios' tables (imported at its end)."""
import pytest
import torch

import ascend_moe
from fakecann_scenarios import (BF16, FLOAT, FLOAT16, INT32, INT64, INT8, Call, begin, nd_tensor, old_cann,
                                out_bytes, scenario)

T, I64, B, IA, D = "aclTensor*", "int64_t", "bool", "aclIntArray*", "double"


def _outs(c: Call, first: int, outs) -> None:
    for k, t in enumerate(outs):
        assert c.tensor(first + k)["data"] == t.untyped_storage().data_ptr()
        out_bytes(t, k)


@scenario
def init_routing_v3_arguments(fake):
    begin(fake)
    x = torch.randn(6, 8).bfloat16()
    ids = torch.randint(0, 4, (6, 2), dtype=torch.int32)
    scale = torch.rand(6)
    outs = ascend_moe.npu_moe_init_routing_v2(x, ids, scale=scale, active_num=9, expert_num=4,
                                              expert_tokens_num_type=1, expert_tokens_num_flag=True,
                                              active_expert_range=[1, 3], row_idx_type=1, backend="aclnn")
    c = Call(fake, "aclnnMoeInitRoutingV3")
    assert c.kinds() == [T] * 4 + [I64] * 5 + [B, I64, IA, I64] + [T] * 4
    nd_tensor(c.tensor(0), x, BF16)
    nd_tensor(c.tensor(1), ids, INT32)
    nd_tensor(c.tensor(2), scale, FLOAT)
    assert c.null(3)                                        # offset absent -> nullptr
    assert [c.value(i, I64) for i in range(4, 9)] == [9, -1, 4, 0, 1]
    assert c.value(9, B) is True and c.args[9]["raw"] == 1
    assert c.value(10, I64) == -1
    assert c.value(11, IA) == [1, 3]
    assert c.value(12, I64) == 1
    assert [tuple(t.shape) for t in outs] == [(9, 8), (12,), (2,), (9,)]
    assert [t.dtype for t in outs] == [torch.bfloat16, torch.int32, torch.int64, torch.float32]
    _outs(c, 13, outs)
    c.phases()
    fake.assert_balanced()


@scenario
def init_routing_empty_range_is_an_empty_int_array(fake):
    begin(fake)
    x = torch.randn(4, 8)
    ids = torch.randint(0, 4, (4, 2), dtype=torch.int32)
    outs = ascend_moe.npu_moe_init_routing_v2(x, ids, expert_num=4, quant_mode=1, backend="aclnn")
    c = Call(fake, "aclnnMoeInitRoutingV3")
    assert c.value(11, IA) == [] and not c.null(11)         # op-plugin passes the caller's (empty) list
    assert c.value(10, I64) == 1 and c.value(9, B) is False and c.args[9]["raw"] == 0
    assert outs[0].dtype == torch.int8 and tuple(outs[3].shape) == (8,)
    fake.assert_balanced()


@scenario
def init_routing_v2_case_on_old_release(fake):
    begin(fake)
    x = torch.randn(4, 2048).bfloat16()
    ids = torch.randint(0, 128, (4, 2), dtype=torch.int32)
    with ascend_moe.target(product="atlas-a2", cann="8.3.RC1"):
        outs = ascend_moe.npu_moe_init_routing_v2(x, ids, expert_num=128, active_num=8, expert_tokens_num_type=1,
                                                  expert_tokens_num_flag=True, backend="aclnn")
    c = Call(fake, "aclnnMoeInitRoutingV2")
    assert c.kinds() == [T] * 2 + [I64] * 5 + [B] + [T] * 4
    assert [c.value(i, I64) for i in range(2, 7)] == [8, 0, 128, 0, 2]   # capacity 0, dropless, count flag 2
    assert c.value(7, B) is False
    assert [t.dtype for t in outs] == [torch.bfloat16, torch.int32, torch.int64, torch.int32]
    assert tuple(outs[3].shape) == (128,)                  # expert_tokens_before_capacity, never written
    _outs(c, 8, outs)
    fake.assert_balanced()


@scenario
def token_permute_and_grad_arguments(fake):
    begin(fake)
    tok = torch.randn(5, 8, dtype=torch.float16)
    idx = torch.randint(0, 3, (5, 2), dtype=torch.int32)
    perm, si = ascend_moe.npu_moe_token_permute(tok, idx, num_out_tokens=-3, backend="aclnn")
    c = Call(fake, "aclnnMoeTokenPermute")
    assert c.kinds() == [T, T, I64, B, T, T]
    nd_tensor(c.tensor(0), tok, FLOAT16)
    nd_tensor(c.tensor(1), idx, INT32)
    assert c.value(2, I64) == 7 and c.value(3, B) is False   # op-plugin passes the resolved row count
    assert tuple(perm.shape) == (7, 8) and tuple(si.shape) == (10,)
    _outs(c, 4, (perm, si))
    c.phases()
    begin(fake)
    si = torch.randperm(10).to(torch.int32)
    g = torch.randn(7, 8, dtype=torch.float16)
    grad = ascend_moe.npu_moe_token_permute_grad(tok, g, idx, si, backend="aclnn")
    c = Call(fake, "aclnnMoeTokenPermuteGrad")
    assert c.kinds() == [T, T, I64, B, T]
    nd_tensor(c.tensor(0), g, FLOAT16)
    nd_tensor(c.tensor(1), si, INT32)
    assert c.value(2, I64) == 2                             # numTopk from indices.shape[1]
    assert tuple(grad.shape) == (5, 8)
    _outs(c, 4, (grad,))
    fake.assert_balanced()


@scenario
def token_unpermute_and_grad_arguments(fake):
    begin(fake)
    perm = torch.randn(10, 8).bfloat16()
    si = torch.randperm(10).to(torch.int32)
    probs = torch.rand(5, 2).bfloat16()
    out = ascend_moe.npu_moe_token_unpermute(perm, si, probs, backend="aclnn")
    c = Call(fake, "aclnnMoeTokenUnpermute")
    assert c.kinds() == [T, T, T, B, IA, T]
    nd_tensor(c.tensor(0), perm, BF16)
    nd_tensor(c.tensor(1), si, INT32)
    nd_tensor(c.tensor(2), probs, BF16)
    assert c.value(3, B) is False and c.value(4, IA) == [1]   # restore_shape defaults to [1]
    assert tuple(out.shape) == (5, 8)
    _outs(c, 5, (out,))
    c.phases()
    begin(fake)
    out = ascend_moe.npu_moe_token_unpermute(perm, si, backend="aclnn")
    c = Call(fake, "aclnnMoeTokenUnpermute")
    assert c.null(2) and tuple(out.shape) == (10, 8)
    begin(fake)
    gperm, gprobs = ascend_moe.npu_moe_token_unpermute_grad(perm, torch.randn(5, 8).bfloat16(), si, probs,
                                                            restore_shape=[5, 8], backend="aclnn")
    c = Call(fake, "aclnnMoeTokenUnpermuteGrad")
    assert c.kinds() == [T, T, T, T, B, IA, T, T]
    assert c.value(5, IA) == [5, 8]
    assert tuple(gperm.shape) == (10, 8) and tuple(gprobs.shape) == (5, 2)
    _outs(c, 6, (gperm, gprobs))
    fake.assert_balanced()


def _finalize_inputs():
    rows, K, E, H = 4, 2, 3, 8
    ex = torch.randn(rows * K, H)
    skip = torch.randn(rows, H)
    bias = torch.randn(E, H)
    scales = torch.rand(rows, K)
    idx = torch.randperm(rows * K).to(torch.int32)
    ids = torch.randint(0, E, (rows, K), dtype=torch.int32)
    return ex, skip, bias, scales, idx, ids


@scenario
def finalize_routing_prefers_v4(fake):
    begin(fake)
    ex, skip, bias, scales, idx, ids = _finalize_inputs()
    out = ascend_moe.npu_moe_finalize_routing(ex, skip, None, bias, scales, idx, ids, drop_pad_mode=2,
                                              backend="aclnn")
    c = Call(fake, "aclnnMoeFinalizeRoutingV4")
    assert c.kinds() == [T] * 11 + [I64, IA, IA, IA, I64, T]
    nd_tensor(c.tensor(0), ex, FLOAT)
    nd_tensor(c.tensor(1), idx, INT32)
    nd_tensor(c.tensor(2), skip, FLOAT)
    assert c.null(3)                                        # skip2
    nd_tensor(c.tensor(4), bias, FLOAT)
    nd_tensor(c.tensor(5), scales, FLOAT)
    nd_tensor(c.tensor(6), ids, INT32)
    assert all(c.null(i) for i in (7, 8, 9, 10, 12, 13, 14))   # x / alpha1 / alpha2 / v and the ranges
    assert c.value(11, I64) == 2 and c.value(15, I64) == 1
    assert tuple(out.shape) == (4, 8)
    _outs(c, 16, (out,))
    c.phases()
    fake.assert_balanced()


@old_cann
def old_finalize_routing_falls_back_to_v2_and_k_needs_v4(fake):
    begin(fake)
    ex, skip, bias, scales, idx, ids = _finalize_inputs()
    out = ascend_moe.npu_moe_finalize_routing(ex, skip, None, bias, scales, idx, ids, drop_pad_mode=2,
                                              backend="aclnn")
    c = Call(fake, "aclnnMoeFinalizeRoutingV2")
    assert c.kinds() == [T] * 7 + [I64, T]
    assert c.value(7, I64) == 2
    _outs(c, 8, (out,))
    fake.assert_balanced()
    from ascend_moe.backends import BackendError
    with ascend_moe.target(product="atlas-a2", cann="9.1.0"):
        with pytest.raises(BackendError, match="aclnnMoeFinalizeRoutingV4"):
            ascend_moe.npu_moe_finalize_routing(ex, None, None, None, None, idx, None, drop_pad_mode=2, k=2,
                                                backend="aclnn")


@scenario
def gating_softmax_v1_v2_and_backward_arguments(fake):
    begin(fake)
    x = torch.randn(6, 16, dtype=torch.float16)
    fin = torch.zeros(6, dtype=torch.bool)
    y, idx, row = ascend_moe.npu_moe_gating_top_k_softmax(x, fin, 3, backend="aclnn")
    c = Call(fake, "aclnnMoeGatingTopKSoftmax")
    assert c.kinds() == [T, T, I64, T, T, T]
    nd_tensor(c.tensor(0), x, FLOAT16)
    assert c.tensor(1)["dtype"] == 12                       # bool finished
    assert c.value(2, I64) == 3
    _outs(c, 3, (y, idx, row))
    c.phases()
    begin(fake)
    outs = ascend_moe.npu_moe_gating_top_k_softmax_v2(x, k=2, renorm=0, output_softmax=True, backend="aclnn")
    c = Call(fake, "aclnnMoeGatingTopKSoftmaxV2")
    assert c.kinds() == [T, T, I64, I64, B, T, T, T]
    assert c.null(1) and c.value(2, I64) == 2 and c.value(3, I64) == 0 and c.value(4, B) is True
    assert tuple(outs[2].shape) == (6, 16)
    _outs(c, 5, outs)
    begin(fake)
    xn = torch.sigmoid(torch.randn(4, 16))
    gy = torch.randn(4, 2).bfloat16()
    eidx = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]], dtype=torch.int32)
    gx = ascend_moe.npu_moe_gating_top_k_backward(xn, gy, eidx, routed_scaling_factor=2.5, backend="aclnn")
    c = Call(fake, "aclnnMoeGatingTopKBackward")
    assert c.kinds() == [T, T, T, I64, I64, D, D, T]
    nd_tensor(c.tensor(0), xn, FLOAT)
    nd_tensor(c.tensor(1), gy, BF16)
    assert [c.value(3, I64), c.value(4, I64)] == [0, 1]
    assert c.value(5, D) == 2.5 and c.value(6, D) == 1e-20
    assert gx.dtype == torch.bfloat16 and tuple(gx.shape) == (4, 16)
    _outs(c, 7, (gx,))
    fake.assert_balanced()


@scenario
def compute_expert_tokens_and_re_routing_arguments(fake):
    begin(fake)
    srt = torch.tensor([0, 0, 1, 3], dtype=torch.int32)
    out = ascend_moe.npu_moe_compute_expert_tokens(srt, 5, backend="aclnn")
    c = Call(fake, "aclnnMoeComputeExpertTokens")
    assert c.kinds() == [T, I64, T]
    nd_tensor(c.tensor(0), srt, INT32)
    assert c.value(1, I64) == 5 and out.dtype == torch.int32 and tuple(out.shape) == (5,)
    _outs(c, 2, (out,))
    begin(fake)
    tok = torch.randint(-5, 5, (6, 4), dtype=torch.int8)
    counts = torch.tensor([[1, 2], [3, 0]], dtype=torch.int64)
    scales = torch.rand(6)
    outs = ascend_moe.npu_moe_re_routing(tok, counts, per_token_scales=scales, expert_token_num_type=0, idx_type=1,
                                         backend="aclnn")
    c = Call(fake, "aclnnMoeReRouting")
    assert c.kinds() == [T, T, T, I64, I64, T, T, T, T]
    nd_tensor(c.tensor(0), tok, INT8)
    nd_tensor(c.tensor(1), counts, INT64)
    nd_tensor(c.tensor(2), scales, FLOAT)
    assert c.value(3, I64) == 0 and c.value(4, I64) == 1
    assert [t.dtype for t in outs] == [torch.int8, torch.float32, torch.int32, torch.int64]
    _outs(c, 5, outs)
    fake.assert_balanced()
