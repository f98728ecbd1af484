"""Rules of the quantised npu_grouped_matmul forms: valid vllm-ascend-style calls pass, every rule rejects
a call naming the argument and its value (TensorSpec only)."""
import numpy as np
import pytest

import ascend_moe
from ascend_moe import TensorSpec as T
from ascend_moe.rules import gmm_quant, get_op

OP = "npu_grouped_matmul_quant"
E, M, K, N = 4, 32, 256, 128
BF16 = 15


def gl(values=(8, 8, 8, 8)):
    return T((len(values),), "int64", values=np.asarray(values, np.int64))


def a8w8(**over):
    a = dict(x=[T((M, K), "int8")], weight=[T((E, K, N), "int8", format="FRACTAL_NZ")],
             scale=[T((E, N), "bfloat16")], per_token_scale=[T((M,), "float32")], group_list=gl(),
             split_item=2, group_type=0, group_list_type=1, output_dtype=BF16)
    a.update(over)
    return a


def a8w4(**over):
    a = dict(x=[T((M, K), "int8")], weight=[T((E, K, N // 8), "int32")], scale=[T((E, N), "int64")],
             bias=[T((E, N), "float32")], per_token_scale=[T((M,), "float32")], group_list=gl(), split_item=2,
             group_type=0, group_list_type=1, output_dtype=BF16)
    a.update(over)
    return a


def a16(x="bfloat16", w="int8", **over):
    a = dict(x=[T((M, K), x)], weight=[T((E, K, N) if w == "int8" else (E, K, N // 8), w)],
             antiquant_scale=[T((E, N), x)], antiquant_offset=[T((E, N), x)], group_list=gl(), split_item=2,
             group_type=0, group_list_type=1)
    a.update(over)
    return a


VALID = [a8w8(), a8w8(scale=[T((E, N), "float32")], output_dtype=5),
         a8w8(output_dtype=3, scale=None, per_token_scale=None, bias=[T((E, N), "int32")]),
         a8w8(bias=[T((E, N), "bfloat16")]), a8w4(), a8w4(scale=[T((E, 2, N), "int64")]),
         a16(), a16("float16", "int32", antiquant_scale=[T((E, 4, N), "float16")],
                    antiquant_offset=[T((E, 4, N), "float16")], bias=[T((E, N), "float16")])]


@pytest.mark.parametrize("args", VALID)
def test_valid_forms_pass(args):
    for product in ("atlas-a2", "atlas-a3"):
        assert ascend_moe.check(OP, **args, product=product) == []


def test_is_quant_call_and_form():
    from ascend_moe.rules import Call, bind
    from ascend_moe.products import resolve_target
    c = Call(OP, bind(OP, (), a8w8()), resolve_target("atlas-a2", None))
    assert gmm_quant.is_quant_call(c) and gmm_quant.form(c) == "A8W8"
    f = Call(OP, bind(OP, (), dict(x=[T((M, K), "bfloat16")], weight=[T((E, K, N), "bfloat16")])),
             resolve_target("atlas-a2", None))
    assert not gmm_quant.is_quant_call(f) and gmm_quant.form(f) is None
    assert {r.id for r in gmm_quant.quant_rules()} == {r.id for r in get_op(OP).rules}


CASES = [
    (a8w8(x=[T((M, K), "int8"), T((M, K), "int8")]), "gmmq.form", "2 x"),
    (a8w8(x=[T((M, K), "int4")], weight=[T((E, K, N), "int4")]), "gmmq.form", "not modelled"),
    (a8w8(weight=[T((E, K, N, 2), "int8")]), "gmmq.form", "[4, 256, 128, 2]"),
    (a8w8(x=[T((M, K + 16), "int8")]), "gmmq.layout", "K=272"),
    (a8w8(group_type=2), "gmmq.layout", "group_type"),
    (a8w8(split_item=0), "gmmq.layout", "split_item"),
    (a8w8(group_list=[8, 8, 8, 8]), "gmmq.group_list", "Tensor overload"),
    (a8w8(group_list=T((5,), "int64")), "gmmq.group_list", "E=4"),
    (a8w8(group_list_type=2), "gmmq.group_list", "group_list_type"),
    (a8w8(group_list=gl((8, 8, 8, 9))), "gmmq.group_values", "33"),
    (a8w8(group_list_type=0, group_list=gl((8, 4, 16, 32))), "gmmq.group_values", "non-decreasing"),
    (a8w8(x=[T((M, 40), "int8")], weight=[T((E, 40, N), "int8", format="FRACTAL_NZ")]), "gmmq.nz_shape", "K=40"),
    (a8w8(output_dtype=None), "gmmq.a8w8_output", "int8"),
    (a8w8(scale=None), "gmmq.a8w8_scale", "needs scale"),
    (a8w8(scale=[T((E, N), "float16")]), "gmmq.a8w8_scale", "float16"),
    (a8w8(scale=[T((N,), "bfloat16")]), "gmmq.a8w8_scale", "[128]"),
    (a8w8(output_dtype=3), "gmmq.a8w8_scale", "int32 output"),
    (a8w8(output_dtype=5), "gmmq.a8w8_scale_dtype_doc", "bfloat16"),
    (a8w8(scale=[T((E, N), "float32")], weight=[T((E, K, N), "int8")]), "gmmq.a8w8_scale_dtype_doc", "float32"),
    (a8w8(per_token_scale=[T((M + 1,), "float32")]), "gmmq.per_token_scale", "[33]"),
    (a8w8(per_token_scale=[T((M,), "bfloat16")]), "gmmq.per_token_scale", "bfloat16"),
    (a8w8(bias=[T((E, N), "bfloat16")], per_token_scale=None), "gmmq.a8w8_bias", "never read"),
    (a8w8(bias=[T((E, N), "float16")]), "gmmq.a8w8_bias", "float16"),
    (a8w8(bias=[T((E, N + 1), "int32")]), "gmmq.a8w8_bias", "[4, 129]"),
    (a8w8(act_type=2), "gmmq.act_type", "act_type=2"),
    (a8w8(act_type=3), "gmmq.act_type", "not accepted by the device"),
    (a16(act_type=1), "gmmq.act_type", "only the A8W8"),
    (a8w4(scale=[T((E, N), "float32")]), "gmmq.a8w4", "float32"),
    (a8w4(scale=[T((E, 3, N), "int64")]), "gmmq.a8w4", "[4, 3, 128]"),
    (a8w4(bias=None), "gmmq.a8w4", "needs the fp32 bias"),
    (a8w4(output_dtype=3), "gmmq.a8w4", "int32"),
    (a8w4(x=[T((M, 64), "int8")], weight=[T((E, 64, N // 8), "int32")]), "gmmq.a8w4_doc", "K=64"),
    (a8w4(group_list_type=0, group_list=gl((8, 16, 24, 32))), "gmmq.a8w4_doc", "counts"),
    (a16(antiquant_scale=None, antiquant_offset=None), "gmmq.antiquant", "needs antiquant_scale"),
    (a16(antiquant_scale=[T((E, N), "float16")]), "gmmq.antiquant", "float16"),
    (a16(antiquant_scale=[T((E, 4, N), "bfloat16")], antiquant_offset=None), "gmmq.antiquant", "[4, 4, 128]"),
    (a16(antiquant_offset=[T((E, 2, N), "bfloat16")]), "gmmq.antiquant", "differs"),
    (a16(bias=[T((E, N), "bfloat16")]), "gmmq.antiquant", "float32"),
    (a16(output_dtype=5), "gmmq.antiquant", "float16"),
    (a16(scale=[T((E, N), "bfloat16")]), "gmmq.antiquant", "scale is given"),
    (a8w8(activation_input=[T((M, K), "int8")]), "gmmq.not_modelled_args", "activation_input"),
]


@pytest.mark.parametrize("args,rule_id,text", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_rule_rejects(args, rule_id, text):
    found = [v for v in ascend_moe.check(OP, **args, product="atlas-a2") if v.rule_id == rule_id]
    assert found, [str(v) for v in ascend_moe.check(OP, **args, product="atlas-a2")]
    assert any(text in v.message for v in found), [v.message for v in found]


def test_every_rule_has_a_case_and_other_products_rejected():
    assert {r.id for r in get_op(OP).rules} - {c[1] for c in CASES} == {"gmmq.products"}
    v = ascend_moe.check(OP, **a8w8(), product="ascend-950")
    assert len(v) == 1 and "not modelled" in v[0].message


def test_npu_grouped_matmul_takes_the_quantised_rules_over():
    """npu_grouped_matmul runs the gmmq rules for integer x/weight, its float rules otherwise; the quantised
    forms are refused on the other products."""
    assert ascend_moe.check("npu_grouped_matmul", **a8w8(), product="atlas-a2") == []
    assert ascend_moe.check("npu_grouped_matmul", **a8w4(), product="atlas-a3") == []
    ids = [v.rule_id for v in ascend_moe.check("npu_grouped_matmul", **a8w8(scale=None), product="atlas-a2")]
    assert ids == ["gmmq.a8w8_scale"]
    ids = [v.rule_id for v in ascend_moe.check("npu_grouped_matmul", **a8w8(), product="ascend-950")]
    assert ids == ["gmmq.products"]
    ids = {v.rule_id for v in ascend_moe.check("npu_grouped_matmul", x=[T((M, K), "bfloat16")],
                                               weight=[T((E, K, N), "bfloat16")], group_list=gl(), split_item=2,
                                               group_type=0, group_list_type=1, scale=[T((E, N), "bfloat16")],
                                               product="atlas-a2")}
    assert "gmm.quant_arg.scale" in ids and not any(i.startswith("gmmq.") for i in ids)
