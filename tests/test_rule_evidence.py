"""The rule table as a whole: what each rule claims is backed by the kind of source it cites.

* a rule that claims an aclnn status (161001 / 161002 ...) is a host rule and cites host code: an
  op_host / op_api / tiling source file and the function in it;
* doc-only rules are warnings and claim no status; "not simulated" rules claim no status and never
  tell the user to move to another product;
* every rule id carries its op's prefix.
"""
import re

import pytest

from ascend_moe.rules import _REGISTRY, RULE_KINDS, all_ops

HOST_FILE = re.compile(r"(op_host|op_api|aclnn_\w+\.cpp|\w*tiling\w*\.cpp|\w+_def\.cpp|infershape\w*\.cpp)")
# a function named in the source: CamelCase (CheckSupportScene, GMMTiling::CheckMKN) or snake_case with ()
FUNCTION = re.compile(r"\b([A-Z][a-z0-9]+[A-Z]\w*|\w+::\w+|[a-z_]+\w*\(\))")
OP_PREFIX = {
    "npu_gmm": "gmm.", "npu_gmm_v2": "gmm.",
    # the quantised forms ride on npu_grouped_matmul's declaration with their own rule set (gmmq.)
    "npu_grouped_matmul": ("gmm.", "gmmq."), "npu_grouped_matmul_quant": "gmmq.",
    "npu_moe_gating_top_k": "gating.", "npu_ffn": "ffn.",
    "npu_grouped_matmul_swiglu_quant": "gmmsq.", "npu_grouped_matmul_swiglu_quant_v2": "gmmsq_v2.",
    "npu_grouped_matmul_finalize_routing": "gmmfr.",
    "npu_moe_init_routing_v2": "init.", "npu_moe_token_permute": "permute.", "npu_moe_token_unpermute": "unpermute.",
    "npu_moe_token_permute_grad": "permute_grad.", "npu_moe_token_unpermute_grad": "unpermute_grad.",
    "npu_moe_finalize_routing": "finalize.", "npu_moe_gating_top_k_softmax": "softmax.",
    "npu_moe_gating_top_k_softmax_v2": "softmax_v2.", "npu_moe_compute_expert_tokens": "cet.",
    "npu_moe_re_routing": "re_routing.", "npu_moe_gating_top_k_backward": "gating_bwd.",
    "npu_swiglu": "swiglu.", "npu_swiglu_backward": "swiglu_grad.",
    "npu_dynamic_quant": "dq.", "npu_dynamic_quant_asymmetric": "dqa.", "npu_dequant_swiglu_quant": "dsq.",
    "npu_grouped_matmul_add_": "gma.", "npu_grouped_matmul_add": "gma_oop.",
    "npu_moe_distribute_dispatch": "dispatch.", "npu_moe_distribute_dispatch_v2": "dispatch_v2.",
    "npu_moe_distribute_combine": "combine.", "npu_moe_distribute_combine_v2": "combine_v2.",
}


def _specs():
    """Every registered rule set: the declared ops, plus the rule sets that bind as one of them
    (registered when their op's module is imported, e.g. npu_grouped_matmul_quant)."""
    all_ops()
    return list(_REGISTRY.values())


def _rules():
    return [(spec.name, r) for spec in _specs() for r in spec.rules]


def test_every_kind_is_known():
    for op, r in _rules():
        assert r.kind in RULE_KINDS, (op, r.id, r.kind)


def test_status_claims_cite_host_code():
    bad = []
    for op, r in _rules():
        if r.status is None:
            continue
        if r.kind != "host" or r.severity != "error":
            bad.append(f"{op} {r.id}: status {r.status} on a {r.kind}/{r.severity} rule")
            continue
        if not HOST_FILE.search(r.source) or not FUNCTION.search(r.source.split("op_host")[-1]):
            bad.append(f"{op} {r.id}: claims {r.status} but its source names no host file + function: {r.source!r}")
    assert not bad, "\n".join(bad)


def test_doc_rules_are_warnings_without_status():
    for op, r in _rules():
        if r.kind == "doc":
            assert r.severity == "warning" and r.status is None, (op, r.id)
        if r.severity == "warning":
            assert r.kind == "doc", (op, r.id)


def test_not_simulated_rules_claim_nothing_of_the_device():
    for op, r in _rules():
        if r.kind == "sim" or r.severity == "not-simulated":
            assert r.kind == "sim" and r.severity == "not-simulated", (op, r.id)
            assert r.status is None, (op, r.id)
            assert "run it on" not in r.fix and "atlas-" not in r.fix, (op, r.id, r.fix)


def test_every_rule_set_has_a_prefix():
    assert {spec.name for spec in _specs()} == set(OP_PREFIX)


def test_rule_ids_carry_the_op_prefix():
    for op, r in _rules():
        assert r.id.startswith(OP_PREFIX[op]), (op, r.id)


def test_product_verdicts_claim_no_status():
    """An op outside its products' list is refused, but with no aclnn status: the lists come from the
    docs' supported-products tables, and no public host code settles which status every op returns."""
    from ascend_moe.products import DEFAULT_CANN, PRODUCTS, Target
    from ascend_moe.rules import check_call
    seen = 0
    for spec in _specs():
        if spec.products is None:
            continue
        for product in sorted(set(PRODUCTS) - set(spec.products)):
            target = Target(product, DEFAULT_CANN)
            [v] = check_call(spec.name, {}, target)
            assert v.rule_id == f"{spec.name}.product" and v.status is None, (spec.name, product, v)
            if v.severity == "error":
                assert v.kind == "product" and "run it on one of" in v.fix, (spec.name, product)
            else:  # the device has the op there; ascend-moe does not model it
                assert v.severity == "not-simulated" and "run it on" not in v.fix, (spec.name, product)
            seen += 1
    assert seen > 30
