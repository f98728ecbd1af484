"""Rules of the routing / combine ops: every rule has a rejecting case whose message names the argument
and its value, a plain valid call of each op passes, and version-dependent rules flip between releases."""
import numpy as np
import pytest

import ascend_moe
from ascend_moe import TensorSpec as TS
from ascend_moe.rules import get_op
import ascend_moe.rules.routing  # noqa: F401  (registers the routing ops)

NEW = dict(product="atlas-a2", cann="9.0.0")
OLD = dict(product="atlas-a2", cann="8.5.0")

X = TS((8, 16), "bfloat16")
IDX = TS((8, 2), "int32")
INIT_OK = dict(expert_num=4, expert_tokens_num_type=1, expert_tokens_num_flag=True)

# op -> rule id -> (args, kwargs, target, substrings of the message)
CASES = {
    "npu_moe_init_routing_v2": {
        "init.x.rank": ((TS((8,), "bfloat16"), IDX), INIT_OK, NEW, ["1-D"]),
        "init.expert_idx.rank": ((X, TS((7, 2), "int32")), INIT_OK, NEW, ["x.shape[0]=8", "got 7"]),
        "init.x.dtype": ((TS((8, 16), "int8"), IDX), dict(INIT_OK, quant_mode=1, scale=TS((4, 16), "float32")), NEW,
                    ["quant_mode must be -1"]),
        "init.expert_idx.dtype": ((X, TS((8, 2), "int64")), INIT_OK, NEW, ["int64"]),
        "init.expert_idx.values": ((np.zeros((8, 16), np.float32), np.full((8, 2), 1 << 24, np.int32)),
                              dict(INIT_OK, expert_num=1 << 25), NEW, ["16777216"]),
        "init.expert_num.positive": ((X, IDX), dict(INIT_OK, expert_num=-1), NEW, ["-1"]),
        "init.drop_pad_mode.range": ((X, IDX), dict(INIT_OK, drop_pad_mode=2), NEW, ["got 2"]),
        "init.drop_pad_mode.since_9_0": ((X, IDX), dict(INIT_OK, drop_pad_mode=1, expert_capacity=2), OLD, ["8.5.0"]),
        "init.v2_case.overrides": ((TS((8, 2048), "bfloat16"), IDX),
                              dict(expert_num=128, expert_tokens_num_type=1, drop_pad_mode=1, expert_capacity=2),
                              dict(product="atlas-a2", cann="8.3.RC1"),
                              ["aclnnMoeInitRoutingV2", "drop_pad_mode=1", "expert_tokens_num_flag=False"]),
        "init.active_num.range": ((X, IDX), dict(INIT_OK, active_num=-2), NEW, ["-2"]),
        "init.expert_tokens_num_type.range": ((X, IDX), dict(INIT_OK, expert_tokens_num_type=3), NEW, ["got 3"]),
        "init.quant_mode.range": ((X, IDX), dict(INIT_OK, quant_mode=2), NEW, ["got 2", "atlas-a2"]),
        "init.row_idx_type.range": ((X, IDX), dict(INIT_OK, row_idx_type=2), NEW, ["got 2"]),
        "init.active_expert_range.shape": ((X, IDX), dict(INIT_OK, active_expert_range=[3, 2]), NEW, ["[3, 2]"]),
        "init.active_expert_range.max": ((X, IDX), dict(INIT_OK, expert_num=6000, expert_tokens_num_type=2), NEW,
                                    ["5120", "6000"]),
        "init.drop_pad.capacity": ((X, IDX), dict(INIT_OK, drop_pad_mode=1, expert_capacity=9), NEW, ["tokens=8", "9"]),
        "init.drop_pad.gather_index": ((X, IDX), dict(INIT_OK, drop_pad_mode=1, expert_capacity=2, row_idx_type=1), NEW,
                                  ["row_idx_type=0", "got 1"]),
        "init.drop_pad.full_range": ((X, IDX), dict(INIT_OK, drop_pad_mode=1, expert_capacity=2, active_expert_range=[1, 3]),
                                NEW, ["[1, 3]"]),
        "init.drop_pad.count_type": ((X, IDX), dict(INIT_OK, drop_pad_mode=1, expert_capacity=2, expert_tokens_num_type=0),
                                NEW, ["got 0"]),
        "init.drop_pad.nonempty": ((TS((0, 16), "bfloat16"), TS((0, 2), "int32")),
                              dict(INIT_OK, drop_pad_mode=1, expert_capacity=0), NEW, ["no rows"]),
        "init.scale.shape": ((X, IDX), dict(INIT_OK, quant_mode=1, scale=TS((3, 16), "float32")), NEW, ["(3, 16)", "4 or 1"]),
        "init.offset.shape": ((X, IDX), dict(INIT_OK, quant_mode=0, scale=TS((1,), "float32")), NEW, ["offset"]),
        "init.x_dtype.unsupported": ((X, IDX), dict(INIT_OK, x_dtype=1), NEW, ["x_dtype"]),
    },
    "npu_moe_token_permute": {
        "permute.tokens.rank": ((TS((8,), "bfloat16"), IDX), {}, NEW, ["1-D"]),
        "permute.indices.rank": ((X, TS((7, 2), "int32")), {}, NEW, ["tokens.shape[0]=8"]),
        "permute.tokens.dtype": ((TS((8, 16), "int8"), IDX), {}, NEW, ["int8"]),
        "permute.indices.dtype": ((X, TS((8, 2), "float32")), {}, NEW, ["float32"]),
        "permute.indices.values": ((np.zeros((2, 4), np.float32), np.array([[16777215], [0]], np.int32)), {}, NEW,
                           ["16777215"]),
        "permute.num_out_tokens.range": ((X, IDX), dict(num_out_tokens=-17), NEW, ["-17", "-1"]),
        "permute.padded_mode.unsupported": ((X, IDX), dict(padded_mode=True), NEW, ["padded_mode=True"]),
    },
    "npu_moe_token_unpermute": {
        "unpermute.permuted_tokens.rank": ((TS((16,), "bfloat16"), TS((16,), "int32")), {}, NEW, ["1-D"]),
        "unpermute.sorted_indices.rank": ((TS((16, 4), "bfloat16"), TS((16,), "int64")), {}, NEW, ["int64"]),
        "unpermute.probs.shape": ((TS((16, 4), "bfloat16"), TS((16,), "int32")), dict(probs=TS((8, 3), "bfloat16")), NEW,
                        ["24", "16"]),
        "unpermute.dtype": ((TS((16, 4), "int8"), TS((16,), "int32")), {}, NEW, ["int8"]),
        "unpermute.topk.max": ((TS((600, 4), "bfloat16"), TS((600,), "int32")), dict(probs=TS((1, 600), "bfloat16")), NEW,
                     ["600"]),
        "unpermute.padded_mode.unsupported": ((TS((16, 4), "bfloat16"), TS((16,), "int32")), dict(padded_mode=True), NEW,
                                    ["padded_mode=True"]),
        "unpermute.inference.layout": ((TS((16, 100), "float16"), TS((16,), "int32")), {},
                             dict(product="atlas-inference", cann="9.0.0"), ["100"]),
    },
    "npu_moe_finalize_routing": {
        "finalize.expanded.rank": ((TS((16, 16), "bfloat16"), None, None, None, TS((8, 2), "bfloat16"), TS((16,), "int32"),
                           None), dict(drop_pad_mode=1), NEW, ["drop_pad_mode=1", "2-D"]),
        "finalize.drop_pad_mode.range": ((TS((16, 16), "bfloat16"), None, None, None, TS((8, 2), "bfloat16"),
                                 TS((16,), "int32"), None), dict(drop_pad_mode=4), NEW, ["got 4"]),
        "finalize.dtype": ((TS((16, 16), "float16"), TS((8, 16), "bfloat16"), None, None, TS((8, 2), "float16"),
                   TS((16,), "int32"), None), {}, NEW, ["skip1", "bfloat16"]),
        "finalize.scales.half_kernel": ((TS((16, 16), "float16"), None, None, None, TS((8, 2), "float32"),
                                TS((16,), "int32"), None), {}, NEW, ["float32 scales"]),
        "finalize.index.dtype": ((TS((16, 16), "bfloat16"), None, None, None, TS((8, 2), "bfloat16"), TS((16,), "int64"),
                         None), {}, NEW, ["int64"]),
        "finalize.skip2.needs_skip1": ((TS((16, 16), "bfloat16"), None, TS((8, 16), "bfloat16"), None, TS((8, 2), "bfloat16"),
                               TS((16,), "int32"), None), {}, NEW, ["skip2"]),
        "finalize.bias.needs_expert_idx": ((TS((16, 16), "bfloat16"), None, None, TS((4, 16), "bfloat16"),
                                   TS((8, 2), "bfloat16"), TS((16,), "int32"), None), {}, NEW, ["export_for_source_row"]),
        "finalize.shapes": ((TS((16, 16), "bfloat16"), TS((7, 16), "bfloat16"), None, TS((1, 16), "bfloat16"),
                    TS((8, 2), "bfloat16"), TS((15,), "int32"), TS((8, 2), "int32")), {}, NEW,
                   ["(7, 16)", "15", "fewer than K=2"]),
        "finalize.k.needs_v4": ((TS((16, 16), "bfloat16"), None, None, None, None, TS((16,), "int32"), None), dict(k=2), NEW,
                       ["k=2", "9.1.0"]),
        "finalize.k.matches_scales": ((TS((16, 16), "bfloat16"), None, None, None, TS((8, 2), "bfloat16"), TS((16,), "int32"),
                              None), dict(k=3), dict(product="atlas-a2", cann="9.1.0"), ["k=3", "2"]),
        "finalize.index.values": ((np.zeros((4, 2), np.float32), None, None, None, np.ones((2, 2), np.float32),
                          np.array([0, 1, 2, 4], np.int32), None), dict(drop_pad_mode=2), NEW, ["[0, 4)", "[0, 4]"]),
    },
    "npu_moe_gating_top_k_softmax": {
        "softmax.x.rank": ((TS((8,), "float32"),), {}, NEW, ["1-D"]),
        "softmax.x.dtype": ((TS((8, 16), "int32"),), {}, NEW, ["int32"]),
        "softmax.k.range": ((TS((8, 16), "float32"),), dict(k=17), NEW, ["experts=16", "17"]),
        "softmax.finished.shape": ((TS((8, 16), "float32"),), dict(finished=TS((8,), "int32")), NEW, ["bool"]),
    },
    "npu_moe_gating_top_k_softmax_v2": {
        "softmax_v2.x.rank": ((TS((2, 2, 2, 8), "float32"),), {}, NEW, ["4-D"]),
        "softmax_v2.x.dtype": ((TS((8, 16), "int32"),), {}, NEW, ["int32"]),
        "softmax_v2.k.range": ((TS((8, 2000), "float32"),), dict(k=1025), NEW, ["1025"]),
        "softmax_v2.finished.shape": ((TS((8, 16), "float32"),), dict(finished=TS((7,), "bool")), NEW, ["(7,)", "(8,)"]),
        "softmax_v2.renorm.range": ((TS((8, 16), "float32"),), dict(renorm=2), NEW, ["got 2"]),
    },
    "npu_moe_compute_expert_tokens": {
        "cet.sorted.shape": ((TS((4, 2), "int32"), 4), {}, NEW, ["2-D"]),
        "cet.sorted.values": ((np.array([0, 2, 1], np.int32), 4), {}, NEW, ["ascending"]),
        "cet.num_expert.positive": ((TS((4,), "int32"), 0), {}, NEW, ["got 0"]),
    },
    "npu_moe_re_routing": {
        "re_routing.tokens.rank": ((TS((8,), "int8"), TS((2, 2), "int32")), {}, NEW, ["1-D"]),
        "re_routing.dtypes": ((TS((8, 16), "int8"), TS((2, 2), "float32")), {}, NEW, ["float32"]),
        "re_routing.attrs": ((TS((8, 16), "int8"), TS((2, 2), "int32")), dict(idx_type=2), NEW, ["idx_type", "2"]),
        "re_routing.counts.total": ((np.zeros((4, 2), np.int8), np.array([[3, 0], [1, 1]], np.int32)), {}, NEW, ["5", "4"]),
        "re_routing.tokens_dtype.unsupported": ((TS((8, 16), "int8"), TS((2, 2), "int32")), dict(tokens_dtype=291), NEW,
                                     ["tokens_dtype=291"]),
    },
    "npu_moe_token_permute_grad": {
        "permute_grad.grad.spec": ((TS((5, 8), "float32"), TS((10, 8), "float32"), TS((5, 2), "int32"), TS((9,), "int32")), {},
                      NEW, ["10 entries", "got 9"]),
        "permute_grad.padded_mode.unsupported": ((TS((5, 8), "float32"), TS((10, 8), "float32"), TS((5, 2), "int32"),
                                     TS((10,), "int32")), dict(padded_mode=True), NEW, ["padded_mode=True"]),
    },
    "npu_moe_token_unpermute_grad": {
        "unpermute_grad.grad.spec": ((TS((10, 8), "float32"), TS((5, 4), "float32"), TS((10,), "int32")), {}, NEW,
                      ["hidden size 4", "8"]),
        "unpermute_grad.padded_mode.unsupported": ((TS((10, 8), "float32"), TS((10, 8), "float32"), TS((10,), "int32")),
                                    dict(padded_mode=True), NEW, ["padded_mode=True"]),
    },
    "npu_moe_gating_top_k_backward": {
        "gating_bwd.x_norm.spec": ((TS((8, 4000), "float32"), TS((8, 2), "float32"), TS((8, 2), "int32")), {}, NEW, ["4000"]),
        "gating_bwd.grad_y.spec": ((TS((8, 16), "float32"), TS((8, 2), "float32"), TS((8, 3), "int32")), {}, NEW,
                        ["(8, 3)", "(8, 2)"]),
        "gating_bwd.norm_type.sigmoid": ((TS((8, 16), "float32"), TS((8, 2), "float32"), TS((8, 2), "int32")), dict(norm_type=0),
                              NEW, ["norm_type=0"]),
    },
}

VALID = {
    "npu_moe_init_routing_v2": ((X, IDX), INIT_OK),
    "npu_moe_token_permute": ((X, IDX), {}),
    "npu_moe_token_unpermute": ((TS((16, 16), "bfloat16"), TS((16,), "int32")), dict(probs=TS((8, 2), "bfloat16"))),
    "npu_moe_finalize_routing": ((TS((16, 16), "bfloat16"), TS((8, 16), "bfloat16"), None, TS((4, 16), "bfloat16"),
                                  TS((8, 2), "float32"), TS((16,), "int32"), TS((8, 2), "int32")), dict(drop_pad_mode=2)),
    "npu_moe_gating_top_k_softmax": ((TS((8, 16), "bfloat16"),), dict(k=2, finished=TS((8,), "bool"))),
    "npu_moe_gating_top_k_softmax_v2": ((TS((2, 8, 16), "float16"),), dict(k=2, renorm=1)),
    "npu_moe_compute_expert_tokens": ((TS((16,), "int32"), 4), {}),
    "npu_moe_re_routing": ((TS((8, 16), "int8"), TS((2, 4), "int32")), dict(per_token_scales=TS((8,), "float32"))),
    "npu_moe_gating_top_k_backward": ((TS((8, 16), "float32"), TS((8, 2), "bfloat16"), TS((8, 2), "int32")),
                                      dict(routed_scaling_factor=2.5)),
    "npu_moe_token_permute_grad": ((TS((5, 8), "float32"), TS((10, 8), "float32"), TS((5, 2), "int32"),
                                    TS((10,), "int32")), {}),
    "npu_moe_token_unpermute_grad": ((TS((10, 8), "bfloat16"), TS((5, 8), "bfloat16"), TS((10,), "int32")),
                                     dict(probs=TS((5, 2), "bfloat16"))),
}


@pytest.mark.parametrize("op", sorted(CASES))
def test_every_rule_has_a_rejecting_case(op):
    ids = {r.id for r in get_op(op).rules}
    assert ids == set(CASES[op]), f"missing: {ids - set(CASES[op])}, stale: {set(CASES[op]) - ids}"


@pytest.mark.parametrize("op,rule_id", [(op, r) for op in sorted(CASES) for r in sorted(CASES[op])])
def test_rule_rejects(op, rule_id):
    args, kwargs, tgt, needles = CASES[op][rule_id]
    violations = ascend_moe.check(op, *args, **tgt, **kwargs)
    hits = [v for v in violations if v.rule_id == rule_id]
    assert hits, f"{rule_id} not reported; got {[(v.rule_id, v.message) for v in violations]}"
    rule = next(r for r in get_op(op).rules if r.id == rule_id)
    assert hits[0].argument == rule.argument and hits[0].severity == rule.severity
    messages = " | ".join(h.message for h in hits)
    for needle in needles:
        assert needle in messages, (needle, messages)
    assert rule.argument in str(hits[0]) and hits[0].fix


@pytest.mark.parametrize("op", sorted(VALID))
@pytest.mark.parametrize("product", ["atlas-a2", "atlas-a3"])
def test_plain_call_passes(op, product):
    args, kwargs = VALID[op]
    assert ascend_moe.check(op, *args, product=product, cann="9.0.0", **kwargs) == []


@pytest.mark.parametrize("op", sorted(VALID))
def test_unmodelled_products_are_rejected_with_a_reason(op):
    args, kwargs = VALID[op]
    v = ascend_moe.check(op, *args, product="atlas-training", cann="9.0.0", **kwargs)
    assert [x.rule_id for x in v] == [f"{op}.product"]
    v = ascend_moe.check(op, *args, product="ascend-950", cann="9.0.0", **kwargs)
    assert [x.rule_id for x in v] == [f"{op}.product"]
    if op == "npu_moe_gating_top_k_backward":
        assert "does not support the 950" in v[0].message
    elif op not in ("npu_moe_compute_expert_tokens", "npu_moe_re_routing"):
        assert "not model" in v[0].message


def test_drop_pad_flips_at_9_0():
    args = (X, IDX)
    kw = dict(INIT_OK, drop_pad_mode=1, expert_capacity=3)
    assert ascend_moe.check("npu_moe_init_routing_v2", *args, **NEW, **kw) == []
    assert [v.rule_id for v in ascend_moe.check("npu_moe_init_routing_v2", *args, **OLD, **kw)] == \
        ["init.drop_pad_mode.since_9_0"]


def test_empty_range_defaults_per_call():
    """The wrapper's function-local static default would keep the first call's expert_num; the checker (like
    the kernel) defaults [0, expert_num] on every call: a smooth scale sized for the second call's experts passes."""
    for e in (4, 8):
        kw = dict(expert_num=e, quant_mode=1, scale=TS((e, 16), "float32"))
        assert ascend_moe.check("npu_moe_init_routing_v2", X, IDX, **NEW, **kw) == []


def test_all_violations_at_once():
    with pytest.raises(ascend_moe.ConstraintError) as err:
        ascend_moe.enforce("npu_moe_init_routing_v2", X, TS((8, 2), "int64"), expert_num=4, quant_mode=5,
                           row_idx_type=3, **NEW)
    ids = {v.rule_id for v in err.value.violations}
    assert {"init.expert_idx.dtype", "init.quant_mode.range", "init.row_idx_type.range"} <= ids



def test_init_routing_entry_choice():
    from ascend_moe.rules.routing import init_routing_entry
    v2_case = dict(expert_num=128, active_expert_range=[0, 128], hidden=2048, quant_mode=-1, expert_tokens_num_type=1)
    assert init_routing_entry("atlas-a2", "8.3.RC1", **v2_case) == "V2"
    assert init_routing_entry("atlas-a2", "8.5.0alpha002", **v2_case) == "V2"
    assert init_routing_entry("atlas-a2", "8.5.0alpha003", **v2_case) == "V3"
    assert init_routing_entry("atlas-a2", "8.5.0", **v2_case) == "V3"
    assert init_routing_entry("atlas-a2", "8.3.RC1", **dict(v2_case, hidden=7168)) == "V3"
    assert init_routing_entry("atlas-a2", "8.3.RC1", **dict(v2_case, expert_tokens_num_type=0)) == "V3"
    assert init_routing_entry("atlas-a2", "8.3.RC1", **dict(v2_case, active_expert_range=[])) == "V2"
    assert init_routing_entry("atlas-inference", "9.0.0", **dict(v2_case, hidden=64)) == "V2"


def test_finalize_entry_choice():
    from ascend_moe.rules.routing import finalize_routing_entry
    all3 = ["aclnnMoeFinalizeRouting", "aclnnMoeFinalizeRoutingV2", "aclnnMoeFinalizeRoutingV4"]
    assert finalize_routing_entry(all3) == "aclnnMoeFinalizeRoutingV4"
    assert finalize_routing_entry(all3[:2]) == "aclnnMoeFinalizeRoutingV2"
    assert finalize_routing_entry(all3[:1]) == "aclnnMoeFinalizeRouting"
    with pytest.raises(ValueError, match="k=2 needs aclnnMoeFinalizeRoutingV4"):
        finalize_routing_entry(all3[:2], k=2)


def test_v2_case_is_not_rejected_for_drop_pad_but_warned():
    kw = dict(expert_num=128, expert_tokens_num_type=1, expert_tokens_num_flag=True, drop_pad_mode=1,
              expert_capacity=2)
    v = ascend_moe.check("npu_moe_init_routing_v2", TS((8, 2048), "bfloat16"), IDX, product="atlas-a2",
                         cann="8.3.RC1", **kw)
    assert [(x.rule_id, x.severity) for x in v] == [("init.v2_case.overrides", "warning")]
    v = ascend_moe.check("npu_moe_init_routing_v2", TS((8, 2048), "bfloat16"), IDX, **OLD, **kw)
    assert [x.rule_id for x in v] == ["init.drop_pad_mode.since_9_0"]
