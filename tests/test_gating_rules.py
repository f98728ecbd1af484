"""npu_moe_gating_top_k rules: every rule has a rejecting case whose message names the argument and
its value; calls that differ between the generations pass under one CANN version and fail under the other."""
import numpy as np
import pytest

import ascend_moe
from ascend_moe import TensorSpec as TS
from ascend_moe.rules import get_op

OP = "npu_moe_gating_top_k"


def _x(rows=4, experts=64, dtype="float16"):
    return TS((rows, experts), dtype)


CURRENT = dict(product="atlas-a2", cann="9.1.0")
MID = dict(product="atlas-a2", cann="8.5.0")
LEGACY = dict(product="atlas-a2", cann="8.2.RC1")
DS = dict(bias=TS((256,), "float16"), k_group=4, group_count=8, group_select_mode=1, norm_type=1)


def _hash(rows=4, keys=10, k=4, id_dtype="int32", tab_dtype="int32"):
    return dict(input_ids=TS((rows,), id_dtype), tid2eid=TS((keys, k), tab_dtype))


# rule id -> (args, kwargs, target, substrings the message must contain)
CASES = {
    "gating.x.rank": ((TS((4, 8, 64), "float16"), 4), {}, CURRENT, ["3-D", "(4, 8, 64)"]),
    "gating.x.dtype": ((_x(dtype="int8"), 4), {}, CURRENT, ["int8"]),
    "gating.x.nonempty": ((_x(rows=0), 4), {}, CURRENT, ["(0, 64)"]),
    "gating.bias.shape": ((_x(), 4), dict(bias=TS((32,), "float16")), CURRENT, ["(32,)", "experts=64"]),
    "gating.bias.dtype": ((_x(), 4), dict(bias=TS((64,), "float32")), CURRENT, ["float32", "float16"]),
    "gating.k.range": ((_x(), 0), {}, CURRENT, ["k=0"]),
    "gating.experts.max": ((_x(experts=4096), 4), {}, CURRENT, ["4096"]),
    "gating.group_count.range": ((_x(experts=60), 4), dict(group_count=8, k_group=8), CURRENT, ["experts=60", "group_count=8"]),
    "gating.k_group.range": ((_x(), 4), dict(group_count=4, k_group=5), CURRENT, ["k_group=5", "group_count=4"]),
    "gating.group_select_mode.range": ((_x(), 4), dict(group_select_mode=2), CURRENT, ["2"]),
    "gating.renorm.range": ((_x(), 4), dict(renorm=3), CURRENT, ["3"]),
    "gating.renorm.zero_before_2026": ((_x(), 4), dict(renorm=1), MID, ["renorm=1"]),
    "gating.norm_type.range": ((_x(), 4), dict(norm_type=2), CURRENT, ["got 2", "atlas-a2"]),
    "gating.group_size.min": ((_x(experts=8), 2), dict(group_count=8, k_group=4, group_select_mode=1), CURRENT, ["8/8=1"]),
    "gating.k.per_group_bound": ((_x(), 40), dict(group_count=4, k_group=2), CURRENT, ["k=40", "32"]),
    "gating.group.align32_bound": ((_x(experts=1320), 4), dict(group_count=40, k_group=2), CURRENT, ["40*64", "2560"]),
    "gating.docs.group_size_min": ((_x(experts=8), 2), dict(group_count=8, k_group=4, group_select_mode=1), CURRENT,
                                   ["8/8 = 1", "more than 1"]),
    "gating.docs.align32_bound_always": ((_x(experts=1320), 4), dict(group_count=40, k_group=40), CURRENT, ["2560"]),
    "gating.op.since": ((_x(experts=256), 8), DS, dict(product="atlas-a2", cann="8.0.0"), ["8.0.0"]),
    "gating.legacy.experts_256": ((_x(experts=128), 8), dict(DS, bias=TS((128,), "float16")), LEGACY, ["128"]),
    "gating.legacy.k_max_32": ((_x(experts=256), 40), DS, LEGACY, ["k=40"]),
    "gating.legacy.k_group_4": ((_x(experts=256), 8), dict(DS, k_group=2), LEGACY, ["k_group=2"]),
    "gating.legacy.group_count_8": ((_x(experts=256), 8), dict(DS, group_count=4), LEGACY, ["group_count=4"]),
    "gating.legacy.bias_required": ((_x(experts=256), 8), dict(DS, bias=None), LEGACY, ["bias=None"]),
    "gating.legacy.norm_type_sigmoid": ((_x(experts=256), 8), dict(DS, norm_type=0), LEGACY, ["norm_type=0"]),
    "gating.legacy.out_flag_false": ((_x(experts=256), 8), dict(DS, out_flag=True), LEGACY, ["out_flag=True"]),
    "gating.hash.since": ((_x(), 4), _hash(), MID, ["input_ids=given", "tid2eid=given"]),
    "gating.hash.pair": ((_x(), 4), dict(input_ids=TS((4,), "int32")), CURRENT, ["tid2eid=None"]),
    "gating.input_ids.spec": ((_x(), 4), dict(_hash(), input_ids=TS((5,), "float32")), CURRENT, ["float32", "(5,)"]),
    "gating.tid2eid.spec": ((_x(), 4), dict(_hash(), tid2eid=TS((10, 3), "int16")), CURRENT, ["int16", "(10, 3)"]),
    "gating.hash.values": ((np.zeros((4, 64), np.float16), 4),
                    dict(input_ids=np.array([0, 1, 12, 3], np.int32), tid2eid=np.full((10, 4), 70, np.int32)),
                    CURRENT, ["[0, 12]", "[70, 70]"]),
    "gating.hash.simplified_path": ((_x(), 4), dict(_hash(), group_count=4, k_group=2),
                             dict(product="ascend-950", cann="9.1.0"), ["k_group=2", "group_count=4"]),
    "gating.hash.simplified_path_doc": ((_x(), 4), dict(_hash(), group_count=4, k_group=2), CURRENT, ["k_group=2"]),
    "gating.hash.k_max_64": ((_x(experts=128), 65), dict(_hash(k=65)), dict(product="ascend-950", cann="9.1.0"), ["k=65"]),
    "gating.hash.k_max_64_doc": ((_x(experts=128), 65), dict(_hash(k=65)), CURRENT, ["k=65"]),
}


def test_every_rule_has_a_rejecting_case():
    ids = {r.id for r in get_op(OP).rules}
    assert ids == set(CASES), f"missing cases: {ids - set(CASES)}, stale cases: {set(CASES) - ids}"


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_rejects(rule_id):
    args, kwargs, tgt, needles = CASES[rule_id]
    violations = ascend_moe.check(OP, *args, **tgt, **kwargs)
    hits = [v for v in violations if v.rule_id == rule_id]
    assert hits, f"{rule_id} not reported; got {[v.rule_id for v in violations]}"
    v = hits[0]
    rule = next(r for r in get_op(OP).rules if r.id == rule_id)
    assert v.argument == rule.argument and v.severity == rule.severity
    messages = " | ".join(h.message for h in hits)      # a rule may report several problems
    for needle in needles:
        assert needle in messages, (needle, messages)
    text = str(v)
    assert rule.argument in text and v.fix


def test_warnings_raise_only_in_strict_mode(monkeypatch):
    args, kwargs, tgt, _ = CASES["gating.docs.align32_bound_always"]
    with pytest.warns(ascend_moe.ConstraintWarning, match="gating.docs.align32_bound_always"):
        ascend_moe.enforce(OP, *args, **tgt, **kwargs)
    monkeypatch.setenv("ASCEND_MOE_STRICT_DOCS", "1")
    with pytest.raises(ascend_moe.ConstraintError, match="gating.docs.align32_bound_always"):
        ascend_moe.enforce(OP, *args, **tgt, **kwargs)


def test_all_violations_reported_at_once():
    vs = ascend_moe.check(OP, _x(experts=128), 40, bias=TS((128,), "float32"), renorm=1, out_flag=True, **LEGACY)
    ids = {v.rule_id for v in vs}
    assert {"gating.legacy.experts_256", "gating.legacy.k_max_32", "gating.legacy.k_group_4",
            "gating.legacy.group_count_8", "gating.bias.dtype", "gating.legacy.norm_type_sigmoid",
            "gating.legacy.out_flag_false", "gating.renorm.zero_before_2026"} <= ids
    # the legacy limits come from the docs of that generation only: warnings; the host checks stay errors
    assert {v.rule_id for v in vs if v.severity == "error"} == {"gating.bias.dtype", "gating.renorm.zero_before_2026"}
    with pytest.raises(ascend_moe.ConstraintError) as err, pytest.warns(ascend_moe.ConstraintWarning):
        ascend_moe.enforce(OP, _x(experts=128), 40, bias=TS((128,), "float32"), renorm=1, out_flag=True, **LEGACY)
    assert {v.rule_id for v in err.value.violations} == {"gating.bias.dtype", "gating.renorm.zero_before_2026"}


@pytest.mark.parametrize("product", ["atlas-200i-500-a2", "atlas-inference", "atlas-training"])
def test_unsupported_products(product):
    v = ascend_moe.check(OP, _x(), 4, product=product, cann="8.5.0")
    assert [x.rule_id for x in v] == [f"{OP}.product"] and product in v[0].message


@pytest.mark.parametrize("product", ["atlas-a2", "atlas-a3", "ascend-950"])
def test_supported_products_accept_a_plain_call(product):
    assert ascend_moe.check(OP, _x(), 4, group_count=4, k_group=2, product=product, cann="8.5.0") == []


# ------------------------------------------------------------------------ generation differences

DIFFERS = [
    # (kwargs, old target, new target): passes on the new one, fails on the old one
    (dict(x=_x(experts=128), k=8, bias=TS((128,), "float16"), k_group=4, group_count=8, group_select_mode=1,
          norm_type=1), LEGACY, MID),
    (dict(x=_x(experts=256), k=40, **DS), LEGACY, MID),
    (dict(x=_x(experts=256), k=8, **dict(DS, bias=None)), LEGACY, MID),
    (dict(x=_x(experts=256), k=8, **dict(DS, norm_type=0)), LEGACY, MID),
    (dict(x=_x(experts=256), k=8, **dict(DS, out_flag=True)), LEGACY, MID),
    (dict(x=_x(experts=256), k=8, **dict(DS, k_group=2, group_count=4)), LEGACY, MID),
    (dict(x=_x(), k=4, renorm=1), MID, CURRENT),
    (dict(x=_x(), k=4, **_hash()), MID, CURRENT),
    (dict(x=_x(), k=4, norm_type=2), dict(product="ascend-950", cann="9.0.1"), dict(product="ascend-950", cann="9.1.0")),
]
LEGACY_DOC_CASES = range(6)   # the older generation's limits are doc-level: warnings, not errors


@pytest.mark.parametrize("case", range(len(DIFFERS)))
def test_same_call_fails_on_old_and_passes_on_new(case):
    kwargs, old, new = DIFFERS[case]
    assert ascend_moe.check(OP, **kwargs, **new) == []
    old_vs = ascend_moe.check(OP, **kwargs, **old)
    want = "warning" if case in LEGACY_DOC_CASES else "error"
    assert [v for v in old_vs if v.severity == want], old_vs


def test_group_select_mode_0_accepted_by_both_generations():
    # the seed's default 0 is accepted before 8.3.RC1 (the kernel scores top-2 sums regardless)
    for tgt in (LEGACY, MID):
        assert ascend_moe.check(OP, _x(experts=256), 8, **dict(DS, group_select_mode=0), **tgt) == []


def test_norm_type_2_rejected_on_a2_even_when_current():
    v = ascend_moe.check(OP, _x(), 4, norm_type=2, **CURRENT)
    assert [x.rule_id for x in v] == ["gating.norm_type.range"]
