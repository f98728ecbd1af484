"""Every rule of npu_grouped_matmul_swiglu_quant (v1) and _v2 rejects a call, naming the argument and
its value; valid A8W8/A8W4 configurations pass (TensorSpec only: nothing allocated)."""
import numpy as np
import pytest

import ascend_moe
from ascend_moe import TensorSpec as T
from ascend_moe.rules import rule_table

V1 = "npu_grouped_matmul_swiglu_quant"
V2 = "npu_grouped_matmul_swiglu_quant_v2"
E, M, K, N = 4, 64, 256, 128


def gl(values=(16, 32, 48, 64)):
    return T((len(values),), "int64", values=np.asarray(values, np.int64))


def a8w8(**over):
    args = dict(x=T((M, K), "int8"), weight=T((E, K, N), "int8", format="FRACTAL_NZ"), group_list=gl(),
                weight_scale=T((E, N), "float32"), x_scale=T((M,), "float32"))
    args.update(over)
    return args


def a8w4(**over):
    args = dict(x=T((M, K), "int8"), weight=T((E, K, N // 8), "int32"), group_list=gl(),
                weight_scale=T((E, N), "int64"), x_scale=T((M,), "float32"), bias=T((E, N), "float32"))
    args.update(over)
    return args


def v2_of(args, **over):
    a = dict(args)
    a["weight"] = [a["weight"]]
    a["weight_scale"] = [a["weight_scale"]]
    if a.pop("bias", None) is not None:
        a["weight_assist_matrix"] = [T((E, N), "float32")]
    a.update(over)
    return a


def violations(op, args, **target):
    return ascend_moe.check(op, **args, **target)


@pytest.mark.parametrize("op,args", [
    (V1, a8w8()), (V1, a8w4()), (V1, a8w8(weight=T((E, N // 32, K // 16, 16, 32), "int8"))),
    (V1, a8w4(weight=T((E, N // 64, K // 16, 16, 8), "int32"))),
    (V1, a8w4(weight_scale=T((E, 4, N), "uint64"))),
    (V2, v2_of(a8w8())), (V2, v2_of(a8w4(), group_list_type=1, group_list=gl((16, 16, 16, 16)))),
    (V2, v2_of(a8w4(weight_scale=T((E, 2, N), "int64")), dequant_mode=1, quant_dtype=0, dequant_dtype=6)),
    (V2, v2_of(a8w8(), tuning_config=[8])),
])
def test_valid_configs_pass(op, args):
    for product in ("atlas-a2", "atlas-a3"):
        assert violations(op, args, product=product) == []


def test_other_products_rejected():
    for op, args in ((V1, a8w8()), (V2, v2_of(a8w8()))):
        v = violations(op, args, product="atlas-inference")
        assert len(v) == 1 and v[0].argument == "(product)" and "atlas-inference" in v[0].message


# (op, args, rule id, text that must appear in the message: the offending value)
CASES = [
    (V1, a8w8(x=T((M, K), "float16")), "gmmsq.x_dtype_rank", "float16"),
    (V1, a8w8(x=T((M, K, 1), "int8")), "gmmsq.x_dtype_rank", "(64, 256, 1)"),
    (V1, a8w8(weight=T((E, K, N), "float16")), "gmmsq.weight_form", "float16"),
    (V1, a8w8(weight=T((E, K + 16, N), "int8", format="FRACTAL_NZ")), "gmmsq.weight_form", "K=272"),
    (V1, a8w8(weight=T((E, K, N), "int8")), "gmmsq.a8w8_weight_nz", "format ND"),
    (V1, a8w8(weight=T((E, N // 32, K // 16, 16, 16), "int8")), "gmmsq.nz_shape", "[4, 4, 16, 16, 16]"),
    (V1, a8w8(x=T((M, 40), "int8"), weight=T((E, 40, N), "int8", format="FRACTAL_NZ")), "gmmsq.nz_shape", "K=40"),
    (V1, a8w4(weight=T((E, K, 96 // 8), "int32", format="FRACTAL_NZ"), weight_scale=T((E, 96), "int64"),
              bias=T((E, 96), "float32")), "gmmsq.nz_shape", "N=96"),
    (V1, a8w8(weight=T((E, K, 10272), "int8", format="FRACTAL_NZ"), weight_scale=T((E, 10272), "float32")),
     "gmmsq.n_even_max", "N=10272"),
    (V1, a8w8(x=T((M, 65536), "int8"), weight=T((E, 65536, N), "int8", format="FRACTAL_NZ")),
     "gmmsq.k_limit", "K=65536"),
    (V1, a8w4(x=T((M, 20000), "int8"), weight=T((E, 20000, N // 8), "int32")), "gmmsq.k_limit", "K=20000"),
    (V1, a8w8(weight_scale=T((E, N), "int32")), "gmmsq.weight_scale", "int32"),
    (V1, a8w8(weight_scale=T((E, N + 32), "float32")), "gmmsq.weight_scale", "(4, 160)"),
    (V1, a8w4(weight_scale=T((E, 3, N), "int64")), "gmmsq.weight_scale", "G=3"),
    (V1, a8w4(weight_scale=T((E, N), "float16")), "gmmsq.weight_scale", "float16"),
    (V1, a8w8(x_scale=T((M,), "float16")), "gmmsq.x_scale", "float16"),
    (V1, a8w8(x_scale=T((M + 1,), "float32")), "gmmsq.x_scale", "[65]"),
    (V1, a8w8(group_list=T((E,), "int32")), "gmmsq.group_list", "int32"),
    (V1, a8w8(group_list=gl((1, 2, 3, 4, 5))), "gmmsq.group_list", "got 5"),
    (V1, a8w8(group_list=gl((16, 8, 32, 64))), "gmmsq.group_list_values", "[16, 8, 32, 64]"),
    (V1, a8w8(group_list=gl((16, 32, 48, 65))), "gmmsq.group_list_values", "total 65"),
    (V1, a8w8(group_list=gl((-1, 32, 48, 64))), "gmmsq.group_list_values", "[-1, 32, 48, 64]"),
    (V1, a8w8(bias=T((E, N), "float32")), "gmmsq.assist_a8w8", "[4, 128]"),
    (V1, a8w4(bias=None), "gmmsq.assist", "got None"),
    (V1, a8w4(bias=T((E, N), "float16")), "gmmsq.assist", "float16"),
    (V1, a8w8(offset=T((E, N), "float32")), "gmmsq.offset", "[4, 128]"),
    (V1, a8w8(weight=T((1025, K, N), "int8", format="FRACTAL_NZ"), weight_scale=T((1025, N), "float32")),
     "gmmsq.experts_doc", "e=1025"),
    (V2, v2_of(a8w8(x=T((M, K), "float16"))), "gmmsq_v2.x_dtype_rank", "float16"),
    (V2, v2_of(a8w8(x=T((M, K), "int32"))), "gmmsq_v2.a4w4", "int32"),
    (V2, v2_of(a8w8(weight=T((E, K, N), "uint8"))), "gmmsq_v2.weight_form", "uint8"),
    (V2, v2_of(a8w8(weight=T((E, K, N), "int8"))), "gmmsq_v2.a8w8_weight_nz", "format ND"),
    (V2, v2_of(a8w4(weight=T((E, N // 64, K // 16, 16, 4), "int32"))), "gmmsq_v2.nz_shape", "[4, 2, 16, 16, 4]"),
    (V2, v2_of(a8w8(weight_scale=T((E, 63), "float32"))), "gmmsq_v2.n_even_max", "N=63"),
    (V2, v2_of(a8w4(x=T((M, 20016), "int8"), weight=T((E, 20016, N // 8), "int32"))), "gmmsq_v2.k_limit", "K=20016"),
    (V2, v2_of(a8w8(weight_scale=T((E + 1, N), "float32"))), "gmmsq_v2.weight_scale", "(5, 128)"),
    (V2, v2_of(a8w8(x_scale=T((M,), "bfloat16"))), "gmmsq_v2.x_scale", "bfloat16"),
    (V2, v2_of(a8w8(group_list=T((E, 1), "int64"))), "gmmsq_v2.group_list", "(4, 1)"),
    (V2, v2_of(a8w8(group_list=gl((16, 16, 16, 17))), group_list_type=1), "gmmsq_v2.group_list_values", "total 65"),
    (V2, v2_of(a8w4(), weight_assist_matrix=None), "gmmsq_v2.assist", "got None"),
    (V2, v2_of(a8w4(), weight_assist_matrix=[T((E, N + 64), "float32")]), "gmmsq_v2.assist", "[4, 192]"),
    (V2, v2_of(a8w8(), weight_assist_matrix=[T((E, N), "float32")]), "gmmsq_v2.assist_a8w8", "[4, 128]"),
    (V2, v2_of(a8w8(weight=T((2000, K, N), "int8", format="FRACTAL_NZ"), weight_scale=T((2000, N), "float32"))),
     "gmmsq_v2.experts_doc", "e=2000"),
    (V2, v2_of(a8w8(), weight=[T((E, K, N), "int8", format="FRACTAL_NZ")] * 2), "gmmsq_v2.expert_lists", "rank"),
    (V2, v2_of(a8w8(), weight=[T((K, N), "int8", format="FRACTAL_NZ")] * E, weight_scale=[T((N,), "float32")] * 3),
     "gmmsq_v2.expert_lists", "differ in length"),
    (V2, v2_of(a8w8(), bias=T((E, N), "int32")), "gmmsq_v2.reserved_none", "int32 tensor of shape [4, 128]"),
    (V2, v2_of(a8w8(), smooth_scale=T((E, N // 2), "float32")), "gmmsq_v2.reserved_none", "[4, 64]"),
    (V2, v2_of(a8w8(), x_dtype=1), "gmmsq_v2.mx_dtype_args", "x_dtype=1"),
    (V2, v2_of(a8w8(), weight_scale_dtype=44), "gmmsq_v2.mx_dtype_args", "weight_scale_dtype=44"),
    (V2, v2_of(a8w8(), dequant_mode=2), "gmmsq_v2.dequant_mode", "dequant_mode=2"),
    (V2, v2_of(a8w8(), dequant_mode=1), "gmmsq_v2.dequant_mode", "dequant_mode=1"),
    (V2, v2_of(a8w4(), dequant_mode=1), "gmmsq_v2.dequant_mode", "(4, 128)"),
    (V2, v2_of(a8w8(), dequant_dtype=3), "gmmsq_v2.dequant_dtype", "dequant_dtype=3"),
    (V2, v2_of(a8w8(), quant_mode=1), "gmmsq_v2.quant_mode", "quant_mode=1"),
    (V2, v2_of(a8w8(), quant_dtype=2), "gmmsq_v2.quant_dtype", "quant_dtype=2"),
    (V2, v2_of(a8w8(), group_list_type=2), "gmmsq_v2.group_list_type", "group_list_type=2"),
    (V2, v2_of(a8w8(), tuning_config=[-3]), "gmmsq_v2.tuning_config", "got -3"),
]


@pytest.mark.parametrize("op,args,rule_id,text", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_rule_rejects_naming_argument_and_value(op, args, rule_id, text):
    found = [v for v in violations(op, args) if v.rule_id == rule_id]
    assert found, f"{rule_id} did not fire; got {[v.rule_id for v in violations(op, args)]}"
    v = found[0]
    assert text in v.message, v.message
    assert v.argument in str(v) and v.fix and v.source


def test_every_rule_has_a_rejecting_case():
    covered = {c[2] for c in CASES}
    for op in (V1, V2):
        ids = {r.id for r in rule_table(op=op)}
        assert ids - covered == set(), f"rules without a rejecting test: {sorted(ids - covered)}"


def test_all_violations_reported_at_once_and_enforced():
    args = v2_of(a8w8(x_scale=T((M,), "float16")), quant_mode=1, dequant_mode=5)
    ids = {v.rule_id for v in violations(V2, args)}
    assert {"gmmsq_v2.x_scale", "gmmsq_v2.quant_mode", "gmmsq_v2.dequant_mode"} <= ids
    with pytest.raises(ascend_moe.ConstraintError) as ei:
        ascend_moe.enforce(V2, **args)
    assert len(ei.value.violations) >= 3


def test_doc_only_rule_is_a_warning():
    args = a8w8(weight=T((1025, K, N), "int8", format="FRACTAL_NZ"), weight_scale=T((1025, N), "float32"))
    (v,) = violations(V1, args)
    assert v.severity == "warning"
    with pytest.warns(ascend_moe.ConstraintWarning):
        ascend_moe.enforce(V1, **args)
