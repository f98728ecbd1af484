"""Rules of npu_grouped_matmul_finalize_routing: every rule rejects a call, naming the argument and
its actual value; valid calls pass; doc-only rules warn (errors under ASCEND_MOE_STRICT_DOCS=1)."""
import warnings

import numpy as np
import pytest

import ascend_moe
from ascend_moe import ConstraintError, ConstraintWarning, TensorSpec
from ascend_moe.rules import get_op

OP = "npu_grouped_matmul_finalize_routing"
M, K, N, E = 32, 256, 256, 4
GL = np.array([8, 0, 12, 6], np.int64)          # total 26 < m
ROWS = np.arange(M, dtype=np.int64) % 16


def a8w8(**over):
    call = dict(x=TensorSpec((M, K), "int8"), w=TensorSpec((E, K, N), "int8", "FRACTAL_NZ"),
                group_list=TensorSpec((E,), "int64", values=GL), scale=TensorSpec((E, N), "float32"),
                pertoken_scale=TensorSpec((M,), "float32"), logit=TensorSpec((M,), "float32"),
                row_index=TensorSpec((M,), "int64", values=ROWS), output_bs=16)
    call.update(over)
    return call


def a8w4(**over):
    call = dict(x=TensorSpec((M, K), "int8"), w=TensorSpec((E, K, N // 8), "int32"),
                group_list=TensorSpec((E,), "int64", values=GL), scale=TensorSpec((E, 1, N), "int64"),
                bias=TensorSpec((E, N), "float32"), pertoken_scale=TensorSpec((M,), "float32"),
                logit=TensorSpec((M,), "float32"), row_index=TensorSpec((M,), "int64", values=ROWS), output_bs=16)
    call.update(over)
    return call


def violations(call, product="atlas-a2", cann="8.5.0"):
    call = dict(call)
    x, w, gl = call.pop("x"), call.pop("w"), call.pop("group_list")
    return ascend_moe.check(OP, x, w, gl, product=product, cann=cann, **call)


DOC_WARNINGS = {"gmmfr.kn_doc_a8w8", "gmmfr.kn_doc_a8w4"}


@pytest.mark.parametrize("make", [a8w8, a8w4])
@pytest.mark.parametrize("product", ["atlas-a2", "atlas-a3"])
def test_valid_calls_have_only_doc_warnings(make, product):
    for cann in ("8.2.RC1", "8.3.RC1", "8.5.0"):
        call = make()
        vs = violations(call, product, cann)
        assert {v.rule_id for v in vs} <= DOC_WARNINGS, vs
        assert all(v.severity == "warning" for v in vs)


def test_documented_shapes_are_clean():
    assert violations(a8w8(x=TensorSpec((M, 2048), "int8"), w=TensorSpec((E, 2048, 7168), "int8", "FRACTAL_NZ"),
                           scale=TensorSpec((E, 7168), "bfloat16"))) == []
    assert violations(a8w4(x=TensorSpec((M, 2048), "int8"), w=TensorSpec((E, 2048, 896), "int32"),
                           scale=TensorSpec((E, 1, 7168), "int64"), bias=TensorSpec((E, 7168), "float32"))) == []


NZ5_INT8 = TensorSpec((E, N // 32, K // 16, 16, 32), "int8")
NZ5_INT4 = TensorSpec((E, N // 64, K // 16, 16, 8), "int32")
GL_BIG = TensorSpec((E,), "int64", values=np.array([10, 10, 10, 10], np.int64))

# (rule id, call, product, cann, argument, text that must appear in the message)
CASES = [
    ("gmmfr.x_dtype", a8w8(x=TensorSpec((M, K), "float8_e4m3fn")), None, None, "x", "x.dtype=float8_e4m3fn"),
    ("gmmfr.x_rank", a8w8(x=TensorSpec((1, M, K), "int8")), None, None, "x", "x.shape=[1, 32, 256]"),
    ("gmmfr.w_dtype", a8w8(w=TensorSpec((E, K, N), "float16")), None, None, "w", "w.dtype=float16"),
    ("gmmfr.w_rank", a8w8(w=TensorSpec((E, K, N, 1), "int8")), None, None, "w", "w.shape=[4, 256, 256, 1]"),
    ("gmmfr.dtype_args_950", a8w8(x_dtype=23), None, None, "x_dtype", "x_dtype=23"),
    ("gmmfr.w_format_a8w8", a8w8(w=TensorSpec((E, K, N), "int8")), None, None, "w", "ND format"),
    ("gmmfr.w_nz_storage", a8w8(w=TensorSpec((E, N // 16, K // 16, 16, 16), "int8")), None, None, "w",
     "w.shape=[4, 16, 16, 16, 16]"),
    # logit is optional on the NZ entry points only together with shared_input (CheckSupportScene's 2nd scene)
    ("gmmfr.required_inputs", a8w8(logit=None, shared_input=TensorSpec((4, N), "bfloat16")), None, None, "(inputs)",
     "logit=None"),
    ("gmmfr.required_inputs", a8w4(pertoken_scale=None), None, None, "(inputs)", "pertoken_scale=None"),
    ("gmmfr.required_inputs", a8w4(w=NZ5_INT4, pertoken_scale=None), None, None, "(inputs)",
     "pertoken_scale=None"),
    ("gmmfr.required_inputs", a8w8(scale=None), None, "8.2.RC1", "(inputs)", "scale=None"),
    ("gmmfr.required_inputs", a8w4(bias=None), None, "8.2.RC1", "(inputs)", "bias=None"),
    ("gmmfr.a8w4_bias_required", a8w4(bias=None), None, None, "bias", "bias=None"),
    ("gmmfr.int4_nz_needs_v2", a8w4(w=NZ5_INT4), None, "8.2.RC1", "w", "w.dtype=int32"),
    ("gmmfr.offset_entry", a8w8(offset=TensorSpec((E, 1, N), "float32")), None, "8.2.RC1", "offset",
     "offset is given"),
    ("gmmfr.offset_a8w8_ignored", a8w8(offset=TensorSpec((E, 1, N), "float32")), None, None, "offset",
     "offset=<tensor>"),
    ("gmmfr.dtype", a8w8(dtype="float16"), None, None, "dtype", "dtype=float16"),
    ("gmmfr.k_match", a8w8(x=TensorSpec((M, 512), "int8")), None, None, "w", "k=512"),
    ("gmmfr.kn_align_a8w8", a8w8(w=TensorSpec((E, K, 224), "int8", "FRACTAL_NZ"),
                                 scale=TensorSpec((E, 224), "float32")), None, None, "w", "n=224"),
    ("gmmfr.kn_align_a8w4", a8w4(x=TensorSpec((M, 160), "int8"), w=TensorSpec((E, 160, N // 8), "int32")),
     None, None, "w", "k=160"),
    ("gmmfr.kn_doc_a8w4", a8w4(), None, None, "w", "k=256, n=256"),
    ("gmmfr.kn_doc_a8w8", a8w8(), None, None, "w", "k=256, n=256"),
    ("gmmfr.not_empty", a8w8(x=TensorSpec((0, K), "int8"), pertoken_scale=None, logit=TensorSpec((0,), "float32"),
                             row_index=TensorSpec((0,), "int64"), group_list=TensorSpec((E,), "int64"),
                             output_bs=0), None, None, "x", "x.shape=[0, 256]"),
    ("gmmfr.m_max", a8w8(x=TensorSpec((131073, K), "int8"), pertoken_scale=None,
                         logit=TensorSpec((131073,), "float32"), row_index=TensorSpec((131073,), "int64")),
     None, None, "x", "m=131073"),
    ("gmmfr.e_max", a8w8(w=TensorSpec((257, K, N), "int8", "FRACTAL_NZ"), scale=TensorSpec((257, N), "float32"),
                         group_list=TensorSpec((257,), "int64")), None, None, "w", "e=257"),
    ("gmmfr.scale", a8w8(scale=TensorSpec((E, N), "int64")), None, None, "scale", "scale.dtype=int64"),
    ("gmmfr.scale", a8w4(scale=TensorSpec((E, N), "int64")), None, None, "scale", "scale.shape=[4, 256]"),
    ("gmmfr.bias", a8w8(bias=TensorSpec((E, N), "float32")), None, None, "bias", "bias.dtype=float32"),
    ("gmmfr.bias", a8w4(bias=TensorSpec((E, 1, N), "float32")), None, None, "bias", "bias.shape=[4, 1, 256]"),
    ("gmmfr.offset", a8w4(offset=TensorSpec((E, 1, N), "float16")), None, None, "offset", "offset.dtype=float16"),
    ("gmmfr.pertoken_scale", a8w8(pertoken_scale=TensorSpec((M + 1,), "float32")), None, None,
     "pertoken_scale", "pertoken_scale.shape=[33]"),
    ("gmmfr.logit", a8w8(logit=TensorSpec((M,), "float16")), None, None, "logit", "logit.dtype=float16"),
    ("gmmfr.row_index", a8w4(row_index=TensorSpec((M,), "int32")), None, None, "row_index", "row_index.dtype=int32"),
    ("gmmfr.row_index", a8w8(row_index=TensorSpec((M,), "float32")), None, None, "row_index",
     "row_index.dtype=float32"),
    ("gmmfr.row_index_range", a8w8(row_index=TensorSpec((M,), "int64", values=np.where(ROWS == 3, 16, ROWS))),
     None, None, "row_index", "row_index[3]=16"),
    ("gmmfr.group_list", a8w8(group_list=TensorSpec((E,), "int32")), None, None, "group_list", "group_list.dtype=int32"),
    ("gmmfr.group_list", a8w8(group_list=TensorSpec((E + 1,), "int64")), None, None, "group_list",
     "group_list.shape=[5]"),
    ("gmmfr.group_list_values", a8w8(group_list=GL_BIG), None, None, "group_list", "total 40 exceeds m=32"),
    ("gmmfr.group_list_values", a8w8(group_list=TensorSpec((E,), "int64", values=np.array([3, -1, 2, 2]))),
     None, None, "group_list", "group_list[1]=-1"),
    ("gmmfr.group_list_values", a8w8(group_list=TensorSpec((E,), "int64", values=np.array([3, 9, 5, 20])),
                                     group_list_type=0), None, None, "group_list", "[3, 9, 5, 20]"),
    ("gmmfr.group_list_type", a8w8(group_list_type=2), None, None, "group_list_type", "group_list_type=2"),
    ("gmmfr.group_list_type_count_only", a8w8(group_list=TensorSpec((E,), "int64", values=np.cumsum(GL)),
                                              group_list_type=0), None, "8.3.RC1", "group_list_type",
     "group_list_type=0"),
    ("gmmfr.output_bs", a8w8(output_bs=M + 1), None, None, "output_bs", "output_bs=33"),
    ("gmmfr.output_bs", a8w8(output_bs=-1), None, None, "output_bs", "output_bs=-1"),
    ("gmmfr.batch_doc", a8w8(x=TensorSpec((20000, K), "int8"), pertoken_scale=None,
                             logit=TensorSpec((20000,), "float32"), row_index=TensorSpec((20000,), "int64"),
                             output_bs=0), None, None, "output_bs", "batch=20000"),
    ("gmmfr.batch_doc", a8w8(x=TensorSpec((4096, K), "int8"), pertoken_scale=None,
                             logit=TensorSpec((4096,), "float32"), row_index=TensorSpec((4096,), "int64"),
                             output_bs=0, shared_input=TensorSpec((3000, N), "bfloat16")), None, None,
     "output_bs", "shared_input.shape[0]=3000"),
    ("gmmfr.shared_input", a8w8(shared_input=TensorSpec((4, N), "float32")), None, None, "shared_input",
     "shared_input.dtype=float32"),
    ("gmmfr.shared_input", a8w8(shared_input=TensorSpec((4, N + 32), "bfloat16")), None, None, "shared_input",
     "shared_input.shape=[4, 288]"),
    ("gmmfr.shared_input_offset", a8w8(shared_input=TensorSpec((4, N), "bfloat16"), shared_input_offset=13),
     None, None, "shared_input_offset", "shared_input_offset=13, bsdp=4"),
    ("gmmfr.shared_input_offset", a8w8(shared_input_offset=-2), None, None, "shared_input_offset",
     "shared_input_offset=-2"),
    ("gmmfr.tuning_config", a8w8(tuning_config=[M + 1]), None, None, "tuning_config", "tuning_config=[33]"),
]


@pytest.mark.parametrize("rule_id,call,product,cann,argument,text", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_rejects_naming_argument_and_value(rule_id, call, product, cann, argument, text):
    vs = violations(call, product or "atlas-a2", cann or "8.5.0")
    hits = [v for v in vs if v.rule_id == rule_id]
    assert hits, f"{rule_id} did not fire; got {[str(v) for v in vs]}"
    assert any(v.argument == argument and text in v.message for v in hits), [str(v) for v in hits]


def test_every_rule_has_a_rejecting_case():
    covered = {c[0] for c in CASES} | {"gmmfr.no_transposed_views"}
    assert {r.id for r in get_op(OP).rules} <= covered


def test_transposed_view_rejected():
    x = np.zeros((K, M), np.int8).T                      # [m, k] view with swapped strides
    vs = violations(a8w8(x=x))
    hit = [v for v in vs if v.rule_id == "gmmfr.no_transposed_views"]
    assert hit and hit[0].argument == "x" and "strides=[1, 32]" in hit[0].message


@pytest.mark.parametrize("product", ["ascend-950", "atlas-inference", "atlas-training", "atlas-200i-500-a2"])
def test_other_products_rejected(product):
    vs = violations(a8w8(), product=product)
    assert len(vs) == 1 and vs[0].rule_id == f"{OP}.product" and product in vs[0].message
    if product == "ascend-950":
        # the device has the op (its MX/fp8 variants): not simulated, no claimed status, no "run it on"
        assert "950" in vs[0].source and "MX" in vs[0].source
        assert vs[0].severity == "not-simulated" and vs[0].status is None and "run it on" not in vs[0].fix
    else:
        # not shipped there per the docs: an error, but no aclnn status (no public host code settles it)
        assert vs[0].severity == "error" and vs[0].status is None and vs[0].kind == "product"
        assert "no aclnn status is claimed" in str(vs[0]) and "atlas-a2" in vs[0].fix


def test_cumsum_accepted_from_8_5_0():
    call = a8w8(group_list=TensorSpec((E,), "int64", values=np.cumsum(GL)), group_list_type=0)
    assert not [v for v in violations(call, cann="8.5.0") if v.severity == "error"]
    assert [v for v in violations(call, cann="8.3.RC1") if v.rule_id == "gmmfr.group_list_type_count_only"]


def test_rows_past_total_are_not_range_checked():
    rows = ROWS.copy()
    rows[26:] = 10 ** 6                                  # rows >= sum(group_list) are never scattered
    assert not [v for v in violations(a8w8(row_index=TensorSpec((M,), "int64", values=rows)))
                if v.severity == "error"]


def test_all_violations_reported_at_once_and_error_lists_them():
    call = a8w8(logit=None, shared_input=TensorSpec((4, N), "bfloat16"), output_bs=M + 5, group_list_type=7)
    ids = {v.rule_id for v in violations(call)}
    assert {"gmmfr.required_inputs", "gmmfr.output_bs", "gmmfr.group_list_type"} <= ids
    x, w, gl = call.pop("x"), call.pop("w"), call.pop("group_list")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        with pytest.raises(ConstraintError) as ei:
            ascend_moe.enforce(OP, x, w, gl, **call)
    assert "output_bs=37" in str(ei.value) and "logit=None" in str(ei.value)


def test_doc_rules_warn_or_error_in_strict_mode(monkeypatch):
    call = a8w4()
    x, w, gl = call.pop("x"), call.pop("w"), call.pop("group_list")
    with pytest.warns(ConstraintWarning, match="k=2048, n=7168"):
        ascend_moe.enforce(OP, x, w, gl, **call)
    monkeypatch.setenv("ASCEND_MOE_STRICT_DOCS", "1")
    with pytest.raises(ConstraintError, match="gmmfr.kn_doc_a8w4"):
        ascend_moe.enforce(OP, x, w, gl, **call)


def test_entry_point_selection():
    from ascend_moe.rules import Call
    from ascend_moe.rules.finalize_routing import entry_point
    from ascend_moe.products import Target, CannVersion
    for w, cann, want in [(TensorSpec((E, K, N), "int8", "FRACTAL_NZ"), "8.5.0", "WeightNzV2"),
                          (NZ5_INT8, "8.2.RC1", "WeightNz"), (TensorSpec((E, K, N // 8), "int32"), "8.3.RC1", "V3"),
                          (TensorSpec((E, K, N // 8), "int32"), "8.2.RC1", "V2")]:
        assert entry_point(Call(OP, {"w": w}, Target("atlas-a2", CannVersion(cann)))) == want
