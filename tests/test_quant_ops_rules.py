"""Every rule of npu_swiglu(_backward), npu_dynamic_quant(_asymmetric), npu_dequant_swiglu_quant and
npu_grouped_matmul_add(_) rejects a call naming the argument and its value; valid configurations pass
(TensorSpec only: nothing allocated)."""
import warnings

import numpy as np
import pytest

import ascend_moe
import ascend_moe.rules.quant_ops  # noqa: F401  (registers the ops)
from ascend_moe import TensorSpec as T
from ascend_moe.rules import ConstraintError, enforce, rule_table

T_, H = 16, 64


def gi(values, dtype="int32"):
    return T((len(values),), dtype, values=np.asarray(values, np.int64))


VALID = [
    ("npu_swiglu", dict(self=T((4, 2 * H), "bfloat16")), ("atlas-a2", "atlas-a3", "ascend-950")),
    ("npu_swiglu", dict(self=T((4, 6, 8), "float16"), dim=1), ("atlas-a2", "atlas-inference")),
    ("npu_swiglu_backward", dict(grad_output=T((4, H), "float32"), self=T((4, 2 * H), "float32")), ("atlas-a2",)),
    ("npu_dynamic_quant", dict(input=T((T_, H), "bfloat16")), ("atlas-a2", "atlas-a3")),
    ("npu_dynamic_quant", dict(input=T((T_, H), "float16"), smooth_scales=T((H,), "float16")), ("atlas-a2",)),
    ("npu_dynamic_quant", dict(input=T((T_, H), "bfloat16"), smooth_scales=T((3, H), "bfloat16"),
                               group_index=gi([4, 9, 16])), ("atlas-a2",)),
    ("npu_dynamic_quant", dict(input=T((T_, H), "bfloat16"), dst_type=16), ("atlas-a2",)),
    ("npu_dynamic_quant_asymmetric", dict(input=T((2, T_, H), "float16")), ("atlas-a3",)),
    ("npu_dequant_swiglu_quant", dict(x=T((T_, 2 * H), "int32"), weight_scale=T((3, 2 * H), "float32"),
                                      activation_scale=T((T_,), "float32"), group_index=gi([4, 4, 8], "int64"),
                                      activate_left=True, quant_mode=1), ("atlas-a2", "atlas-a3")),
    ("npu_grouped_matmul_add_", dict(self=T((3, 8, 32), "float32"), x=T((T_, 8), "bfloat16"),
                                     weight=T((T_, 32), "bfloat16"), group_list=gi([5, 5, 16], "int64")),
     ("atlas-a2", "ascend-950")),
]


@pytest.mark.parametrize("op,args,products", VALID)
def test_valid_configs_pass(op, args, products):
    for product in products:
        assert ascend_moe.check(op, **args, product=product) == [], (op, product)


def test_products():
    for op, args, _ in VALID[3:4] + VALID[8:9]:
        v = ascend_moe.check(op, **args, product="ascend-950")
        assert len(v) == 1 and v[0].argument == "(product)" and "not modelled" in v[0].message


X = T((T_, 2 * H), "bfloat16")
DQ = dict(input=T((T_, H), "bfloat16"))
DSQ = dict(x=T((T_, 2 * H), "int32"), weight_scale=T((2 * H,), "float32"), activation_scale=T((T_,), "float32"),
           quant_mode=1)
GMA = dict(self=T((3, 8, 32), "float32"), x=T((T_, 8), "bfloat16"), weight=T((T_, 32), "bfloat16"),
           group_list=gi([5, 5, 16], "int64"))

# (op, args, product, rule id, text that must appear in the message)
CASES = [
    ("npu_swiglu", dict(self=T((4, 8), "int8")), "atlas-a2", "swiglu.x_dtype", "int8"),
    ("npu_swiglu", dict(self=T((4, 8), "bfloat16")), "atlas-inference", "swiglu.no_bf16_310p", "bfloat16"),
    ("npu_swiglu", dict(self=X, dim=2), "atlas-a2", "swiglu.dim_range", "dim=2"),
    ("npu_swiglu", dict(self=T((4, 7), "float16")), "atlas-a2", "swiglu.dim_even", "= 7"),
    ("npu_swiglu", dict(self=T((1,) * 9 + (4,), "float16")), "atlas-a2", "swiglu.rank", "got 10"),
    ("npu_swiglu", dict(self=T((0, 8), "float16")), "atlas-inference", "swiglu.empty_310p", "[0, 8]"),
    ("npu_swiglu_backward", dict(grad_output=T((4, 8), "float16"), self=T((4, 16), "float32")), "atlas-a2",
     "swiglu_grad.grad_output", "float16"),
    ("npu_swiglu_backward", dict(grad_output=T((4, 16), "float32"), self=T((4, 16), "float32")), "atlas-a2",
     "swiglu_grad.grad_output", "[4, 8]"),
    ("npu_dynamic_quant", dict(input=T((T_, H), "float32")), "atlas-a2", "dq.input", "float32"),
    ("npu_dynamic_quant", dict(input=T((H,), "float16")), "atlas-a2", "dq.input", f"[{H}]"),
    ("npu_dynamic_quant", dict(DQ, quant_mode="pertensor"), "atlas-a2", "dq.quant_mode", "pertensor"),
    ("npu_dynamic_quant", dict(DQ, dst_type_max=448.0), "atlas-a2", "dq.dst_type_max", "448"),
    ("npu_dynamic_quant", dict(DQ, dst_type=5), "atlas-a2", "dq.dst_type", "dst_type=5"),
    ("npu_dynamic_quant", dict(input=T((T_, 12), "float16"), dst_type=16), "atlas-a2", "dq.int4_last_dim", "12"),
    ("npu_dynamic_quant", dict(DQ, smooth_scales=T((H,), "float16")), "atlas-a2", "dq.smooth", "float16"),
    ("npu_dynamic_quant", dict(DQ, smooth_scales=T((H + 1,), "bfloat16")), "atlas-a2", "dq.smooth", "[65]"),
    ("npu_dynamic_quant", dict(DQ, smooth_scales=T((H,), "bfloat16"), group_index=gi([8, 16])), "atlas-a2",
     "dq.smooth", "[2, 64]"),
    ("npu_dynamic_quant", dict(DQ, smooth_scales=T((2, H), "bfloat16"), group_index=gi([8, 16], "int64")),
     "atlas-a2", "dq.group_index", "int64"),
    ("npu_dynamic_quant", dict(DQ, group_index=gi([8, 16])), "atlas-a2", "dq.group_index", "without smooth_scales"),
    ("npu_dynamic_quant", dict(DQ, smooth_scales=T((2, H), "bfloat16"), group_index=gi([9, 8])), "atlas-a2",
     "dq.group_values", "[9, 8]"),
    ("npu_dynamic_quant", dict(DQ, smooth_scales=T((2, H), "bfloat16"), group_index=gi([8, 12])), "atlas-a2",
     "dq.group_total", "12"),
    ("npu_dynamic_quant", dict(DQ, smooth_scales=T((1025, H), "bfloat16"), group_index=gi([16] * 1025)),
     "atlas-a2", "dq.num_groups", "1025"),
    ("npu_dynamic_quant_asymmetric", dict(DQ, quant_mode="perchannel"), "atlas-a3", "dqa.quant_mode", "perchannel"),
    ("npu_dequant_swiglu_quant", dict(DSQ, x=T((T_, 2 * H), "float32")), "atlas-a2", "dsq.x", "float32"),
    ("npu_dequant_swiglu_quant", dict(DSQ, x=T((T_, 2 * H + 1), "int32")), "atlas-a2", "dsq.x", "129"),
    ("npu_dequant_swiglu_quant", dict(DSQ, x=T((2, T_, 2 * H), "int32"), activation_scale=T((2, T_), "float32")),
     "atlas-a2", "dsq.x_2d", "[2, 16, 128]"),
    ("npu_dequant_swiglu_quant", dict(DSQ, quant_mode=2), "atlas-a2", "dsq.modes", "quant_mode"),
    ("npu_dequant_swiglu_quant", dict(DSQ, swiglu_mode=3), "atlas-a2", "dsq.modes", "swiglu_mode"),
    ("npu_dequant_swiglu_quant", dict(DSQ, clamp_limit=float("inf")), "atlas-a2", "dsq.modes", "inf"),
    ("npu_dequant_swiglu_quant", dict(DSQ, swiglu_mode=1), "atlas-a2", "dsq.swiglu_mode1_left", "activate_left=False"),
    ("npu_dequant_swiglu_quant", dict(DSQ, round_mode=2), "atlas-a2", "dsq.fixed_on_a2a3", "round_mode=2"),
    ("npu_dequant_swiglu_quant", dict(DSQ, dst_type=5), "atlas-a2", "dsq.fixed_on_a2a3", "dst_type=5"),
    ("npu_dequant_swiglu_quant", dict(DSQ, activate_dim=0), "atlas-a2", "dsq.fixed_on_a2a3", "activate_dim=0"),
    ("npu_dequant_swiglu_quant", dict(DSQ, weight_scale=None), "atlas-a2", "dsq.int32_needs_weight_scale", "None"),
    ("npu_dequant_swiglu_quant", dict(DSQ, weight_scale=T((H,), "float32")), "atlas-a2", "dsq.param_shapes", "[64]"),
    ("npu_dequant_swiglu_quant", dict(DSQ, activation_scale=T((T_ + 1,), "float32")), "atlas-a2",
     "dsq.param_shapes", "[17]"),
    ("npu_dequant_swiglu_quant", dict(DSQ, weight_scale=T((2 * H,), "bfloat16")), "atlas-a2", "dsq.param_shapes",
     "bfloat16"),
    ("npu_dequant_swiglu_quant", dict(DSQ, group_index=T((1, 2), "int64")), "atlas-a2", "dsq.group_index", "[1, 2]"),
    ("npu_dequant_swiglu_quant", dict(DSQ, group_index=gi([4, 4], "float32")), "atlas-a2", "dsq.group_index",
     "float32"),
    ("npu_dequant_swiglu_quant", dict(DSQ, group_index=gi([10, 10], "int64")), "atlas-a2", "dsq.group_doc", "20"),
    ("npu_dequant_swiglu_quant", dict(DSQ, quant_offset=T((H,), "float32")), "atlas-a2", "dsq.dynamic_no_offset",
     "quant_mode=1"),
    ("npu_dequant_swiglu_quant", dict(DSQ, x=T((T_, 100), "int32"), weight_scale=T((100,), "float32")), "atlas-a2",
     "dsq.h_limits", "100"),
    ("npu_dequant_swiglu_quant", DSQ, ("atlas-a2", "9.0.0"), "dsq.v2_needs_group", "None"),
    ("npu_grouped_matmul_add_", dict(GMA, group_type=0), "atlas-a2", "gma.group_type", "0"),
    ("npu_grouped_matmul_add_", dict(GMA, transpose_x=False), "atlas-a2", "gma.transpose", "False"),
    ("npu_grouped_matmul_add_", dict(GMA, x=T((T_, 8), "float16")), "atlas-a2", "gma.tensors", "differ"),
    ("npu_grouped_matmul_add_", dict(GMA, weight=T((T_ + 1, 32), "bfloat16")), "atlas-a2", "gma.tensors", "17"),
    ("npu_grouped_matmul_add_", dict(GMA, self=T((3, 8, 32), "bfloat16")), "atlas-a2", "gma.tensors", "bfloat16"),
    ("npu_grouped_matmul_add_", dict(GMA, self=T((3, 8, 31), "float32")), "atlas-a2", "gma.tensors", "744"),
    ("npu_grouped_matmul_add_", dict(GMA, self=T((24, 32), "float32")), "ascend-950", "gma.y_3d_950", "[24, 32]"),
    ("npu_grouped_matmul_add_", dict(GMA, group_list_type=1, group_list=gi([5, 0, 11], "int64")), "atlas-a2",
     "gma.group_list_type", "ignored"),
    ("npu_grouped_matmul_add_", dict(GMA, group_list=gi([5, 3, 16], "int64")), "atlas-a2", "gma.group_values",
     "[5, 3, 16]"),
    ("npu_grouped_matmul_add", dict(GMA, group_list=gi([5, 5, 17], "int64")), "atlas-a3", "gma_oop.group_values",
     "17"),
]


@pytest.mark.parametrize("op,args,target,rule_id,text", CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_rule_rejects(op, args, target, rule_id, text):
    product, cann = (target, None) if isinstance(target, str) else target
    found = [v for v in ascend_moe.check(op, **args, product=product, cann=cann) if v.rule_id == rule_id]
    assert found, (rule_id, [str(v) for v in ascend_moe.check(op, **args, product=product, cann=cann)])
    assert any(text in v.message for v in found), [v.message for v in found]
    assert all(v.fix for v in found) and all(v.source for v in found)


def test_every_rule_has_a_rejecting_case():
    ops = {"npu_swiglu", "npu_swiglu_backward", "npu_dynamic_quant", "npu_dynamic_quant_asymmetric",
           "npu_dequant_swiglu_quant", "npu_grouped_matmul_add_", "npu_grouped_matmul_add"}
    from ascend_moe.rules import get_op
    declared = {r.id for op in ops for r in get_op(op).rules}
    covered = {c[3] for c in CASES} | {"swiglu.contiguous"}
    prefixed_twins = {i for i in declared if i.split(".")[0] in ("swiglu_grad", "dqa", "gma_oop")}
    assert declared - covered - prefixed_twins == set()


def test_contiguity_warning_and_enforce():
    from ascend_moe.rules import TensorMeta
    m = TensorMeta((4, 8), "float16", "ND", (1, 4), "cpu", None)
    v = ascend_moe.check("npu_swiglu", m, product="atlas-a2")
    assert [x.rule_id for x in v] == ["swiglu.contiguous"] and v[0].severity == "warning"
    with pytest.raises(ConstraintError) as e:
        enforce("npu_dynamic_quant", T((T_, H), "float32"), product="atlas-a2")
    assert "float32" in str(e.value) and "dq.input" in str(e.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        enforce("npu_dynamic_quant", T((T_, H), "float16"), smooth_scales=T((2, H), "float16"),
                group_index=gi([8, 12]), product="atlas-a2")
    assert any("dq.group_total" in str(x.message) for x in w)


def test_dynamic_quant_kernel_selection():
    """The tiling's key choice (dynamic_quant_tiling.cpp RunFusionKernelTiling), 192 KiB UB."""
    from ascend_moe.products import resolve_target
    from ascend_moe.rules.quant_ops import dynamic_quant_kernel as k
    new, old = resolve_target("atlas-a2", "9.0.0"), resolve_target("atlas-a2", "8.5.0")
    # key 100: int8, row length 4096/5120/10240, 4..384 rows, no groups, symmetric
    assert k(new, (16, 7168 - 2048), "bfloat16") == (100, "multiply")
    assert k(new, (3, 4096), "bfloat16")[0] != 100 and k(new, (385, 4096), "float16")[0] != 100
    # key 10: 128 <= H <= max UB length (no smooth: (196608-1024-3392)//11//64*64 = 17472 -> capped at 16320), H % 8 == 0
    assert k(new, (1000, 7168), "bfloat16") == (10, "multiply")
    assert k(new, (1000, 16320), "bfloat16")[0] == 10 and k(new, (1000, 16328), "bfloat16")[0] != 10
    # with smooth: (196608-1024-3392)//15//64*64 = 12800
    assert k(new, (1000, 12800), "float16", has_smooth=True)[0] == 10
    assert k(new, (1000, 12808), "float16", has_smooth=True)[0] != 10
    # otherwise: double-buffered (2 bf16 / 3 fp16) when 13 * align16(H) < UB - 1024, else 0 / 1
    assert k(new, (1000, 120), "bfloat16") == (2, "multiply") and k(new, (1000, 120), "float16")[0] == 3
    # H % 8 != 0 leaves key 10: db iff 13 * align16(H) < 196608 - 1024 = 195584, i.e. align16(H) <= 15040
    assert k(new, (1000, 15036), "bfloat16") == (2, "multiply")
    assert k(new, (1000, 15044), "bfloat16") == (0, "reciprocal")
    assert k(new, (1000, 17776), "bfloat16") == (0, "reciprocal")          # 13*17776 > 195584, 11*17776 <= 195584
    assert k(new, (1000, 17792), "float16") == (6, "reciprocal")           # 11*17792 > 195584: large shape
    # groups (with smooth): 7, or 8 when a row does not fit; always the reciprocal recipe
    assert k(new, (64, 7168), "bfloat16", has_smooth=True, num_groups=8) == (7, "reciprocal")
    assert k(new, (64, 12000), "bfloat16", has_smooth=True, num_groups=8) == (8, "reciprocal")
    # a group_index without smooth is ignored by the tiling
    assert k(new, (64, 7168), "bfloat16", num_groups=8)[0] == 10
    # asymmetric (DynamicQuantV2 op): never 10/100
    assert k(new, (16, 4096), "bfloat16", symmetric=False)[0] == 2
    # CANN 8.5.0: no keys 10/100 and every key uses the reciprocal recipe
    assert k(old, (16, 4096), "bfloat16") == (2, "reciprocal")
    assert k(old, (1000, 7168), "float16") == (3, "reciprocal")
