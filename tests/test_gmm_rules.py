"""Every gmm rule has a rejecting case whose message names the argument and the actual value, and
valid calls pass (checker only: nothing is computed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ascend_moe as am
from ascend_moe import TensorSpec
from ascend_moe.rules import get_op

OPS = ("npu_gmm", "npu_gmm_v2", "npu_grouped_matmul")
BF, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def t(*shape, dtype=BF):
    return torch.empty(shape, dtype=dtype)


def xt(m, k, dtype=BF):
    """A K-split x: [M, K] as a transposed view of [K, M]."""
    return torch.empty(k, m, dtype=dtype).t()


def gl(*v):
    return torch.tensor(v, dtype=torch.int64)


X, W = t(10, 16), t(3, 16, 8)
GM = dict(group_type=0, split_item=3)

# (rule id, op, args, kwargs, product, substring of the message that shows the value)
CASES = [
    *[(f"gmm.quant_arg.{a}", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), **GM, **{a: [t(8)]}),
       None, "list of 1 tensor") for a in ("scale", "offset", "antiquant_scale", "antiquant_offset",
                                           "per_token_scale", "activation_input", "activation_quant_scale",
                                           "activation_quant_offset")],
    *[(f"gmm.quant_arg.{a}", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), **GM, **{a: 2}),
       None, f"{a}=2") for a in ("x_dtype", "weight_dtype", "scale_dtype", "per_token_scale_dtype")],
    ("gmm.quant_dtype", "npu_gmm", (t(10, 16, dtype=torch.int8), t(3, 16, 8, dtype=torch.int8)),
     dict(group_list=[2, 5, 10]), None, "dtype int8"),
    ("gmm.quant_dtype", "npu_gmm_v2", (X, t(3, 16, 1, dtype=torch.int32)),
     dict(group_list=gl(2, 3, 5)), None, "dtype int32"),
    ("gmm.group_list_type", "npu_grouped_matmul", ([X], [W]),
     dict(group_list=gl(2, 5, 10), group_type=0, split_item=3, group_list_type=2), None, "group_list_type=2"),
    ("gmm.act_type", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), **GM, act_type=1), None,
     "act_type=1"),
    ("gmm.output_dtype", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), **GM, output_dtype=6),
     None, "output_dtype=6"),
    ("gmm.output_dtype", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), **GM, output_dtype=99),
     None, "output_dtype=99"),
    ("gmm.group_type_required", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), split_item=3), None,
     "group_type=None"),
    ("gmm.group_type_required", "npu_grouped_matmul", ([X], [t(16, 8)]), dict(split_item=0), None,
     "without a group list"),
    ("gmm.group_type", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), group_type=1, split_item=3),
     None, "group_type=1"),
    ("gmm.group_type_mindspeed", "npu_gmm", (X, W), dict(group_list=[2, 5, 10], group_type=1), None,
     "group_type=1"),
    ("gmm.group_type_mindspeed", "npu_gmm_v2", (X, W), dict(group_list=gl(2, 3, 5), group_type=-1), None,
     "group_type=-1"),
    ("gmm.split_item", "npu_grouped_matmul", ([X], [W]), dict(group_list=gl(2, 5, 10), group_type=0, split_item=4),
     None, "split_item=4"),
    ("gmm.x_dtype", "npu_gmm", (t(10, 16, dtype=torch.float64), t(3, 16, 8, dtype=torch.float64)),
     dict(group_list=[2, 5, 10]), None, "got float64"),
    ("gmm.weight_dtype", "npu_gmm", (X, t(3, 16, 8, dtype=F16)), dict(group_list=[2, 5, 10]), None,
     "dtype float16 but x has bfloat16"),
    ("gmm.bias_dtype", "npu_gmm", (X, W), dict(bias=t(3, 8, dtype=BF), group_list=[2, 5, 10]), None,
     "dtype bfloat16, but with x bfloat16 the bias must be float32"),
    ("gmm.bias_dtype", "npu_gmm", (t(10, 16, dtype=F16), t(3, 16, 8, dtype=F16)),
     dict(bias=t(3, 8, dtype=F32), group_list=[2, 5, 10]), None, "dtype float32, but with x float16"),
    ("gmm.fp32_single_doc", "npu_grouped_matmul", ([t(10, 16, dtype=F32)], [t(16, 8, dtype=F32)] * 3),
     dict(group_list=gl(2, 5, 10), group_type=0, split_item=2), None, "len(weight)=3"),
    ("gmm.fp32_v1", "npu_grouped_matmul", ([t(10, 16, dtype=F32)], [t(3, 16, 8, dtype=F32)]),
     dict(group_list=[2, 5, 10], group_type=0, split_item=3), None, "List[int]"),
    ("gmm.group_list_dtype", "npu_gmm", (X, W), dict(group_list=torch.tensor([2, 5, 10], dtype=torch.int32)),
     None, "got dtype int32"),
    ("gmm.v2_tensor_only", "npu_gmm_v2", (X, W), dict(group_list=[2, 3, 5]), None, "got a list [2, 3, 5]"),
    ("gmm.group_list_required", "npu_gmm", (X, W), dict(), None, "group_list=None but group_type=0"),
    ("gmm.group_list_required", "npu_gmm", (xt(10, 16), t(16, 8)), dict(group_type=2), None,
     "group_list=None but group_type=2"),
    ("gmm.group_list_rank", "npu_gmm", (X, W), dict(group_list=torch.zeros(3, 2, dtype=torch.int64)), None,
     "shape [3, 2]"),
    ("gmm.group_list_len", "npu_gmm", (X, W), dict(group_list=[5, 10]), None, "2 entries but weight has E=3"),
    ("gmm.group_list_max_len", "npu_gmm", (t(129, 16), t(129, 16, 8)), dict(group_list=list(range(1, 130))), None,
     "(List[int]) has 129 entries, at most 128"),
    ("gmm.group_list_max_len", "npu_gmm", (TensorSpec((1025, 16), "bfloat16"), TensorSpec((1025, 16, 8), "bfloat16")),
     dict(group_list=TensorSpec((1025,), "int64")), None, "(Tensor) has 1025 entries, at most 1024"),
    ("gmm.group_list_values_list", "npu_gmm", (X, W), dict(group_list=[2, 7, 5]), None, "decreases at index 2: 7 -> 5"),
    ("gmm.group_list_values_list", "npu_grouped_matmul", ([X], [W]),
     dict(group_list=[4, -1, 7], group_type=0, split_item=3, group_list_type=1), None, "group_list[1]=-1"),
    ("gmm.list_is_cumsum", "npu_grouped_matmul", ([X], [W]),
     dict(group_list=[4, 2, 4], group_type=0, split_item=3, group_list_type=1), None,
     "group_list_type=1 with a List[int] group_list"),
    ("gmm.group_list_values_tensor", "npu_gmm", (X, W), dict(group_list=gl(2, 7, 5)), None,
     "decreases at index 2: 7 -> 5"),
    ("gmm.group_list_values_tensor", "npu_gmm_v2", (X, W), dict(group_list=gl(3, -2, 4)), None, "group_list[1]=-2"),
    ("gmm.total_list", "npu_gmm", (X, W), dict(group_list=[2, 5, 9]), None, "total is 9 but x.shape[0] (M) is 10"),
    ("gmm.total_list", "npu_gmm", (xt(10, 16), t(16, 8)), dict(group_list=[2, 5, 15], group_type=2), None,
     "total is 15 but x.shape[1] (K) is 16"),
    ("gmm.total_tensor", "npu_gmm", (X, W), dict(group_list=gl(2, 5, 11)), None, "total is 11 but x.shape[0] (M) is only 10"),
    ("gmm.total_tensor", "npu_gmm_v2", (X, W), dict(group_list=gl(2, 5, 4)), None, "total is 11"),
    ("gmm.group_list_multi_x", "npu_grouped_matmul", ([t(2, 16), t(3, 16)], [t(16, 8), t(16, 8)]),
     dict(group_list=[2, 4], group_type=0, split_item=0), None, "[2, 4]"),
    ("gmm.m_split_y_list_tensor", "npu_grouped_matmul", ([X], [t(16, 8), t(16, 4)]),
     dict(group_list=gl(4, 10), group_type=0, split_item=1), None, "split_item=1"),
    ("gmm.k_split_total", "npu_grouped_matmul", ([xt(10, 16)], [t(9, 8), t(8, 4)]), dict(group_type=2, split_item=0),
     None, "add up to 17 but x has K=16"),
    ("gmm.k_split_forms", "npu_grouped_matmul", ([xt(10, 16)], [t(9, 8), t(7, 4)]), dict(group_type=2, split_item=3),
     None, "split_item=3"),
    ("gmm.k_split_forms", "npu_grouped_matmul", ([xt(10, 16)], [t(9, 8), t(7, 4)]),
     dict(group_type=2, split_item=0, group_list=gl(8, 16)), None, "[8, 16]"),
    ("gmm.ranks", "npu_gmm", (t(10, 16), t(16, 8)), dict(group_list=[2, 5, 10]), None, "weight [E, K, N], got shape [16, 8]"),
    ("gmm.ranks", "npu_gmm", (xt(10, 16), t(2, 16, 8)), dict(group_list=[5, 16], group_type=2), None,
     "weight[0] shape [2, 16, 8]"),
    ("gmm.ranks", "npu_grouped_matmul", ([t(2, 3, 16)], [t(16, 8)]), dict(group_type=-1, split_item=3), None,
     "x[0] shape [2, 3, 16]"),
    ("gmm.k_match", "npu_gmm", (X, t(3, 15, 8)), dict(group_list=[2, 5, 10]), None, "x[0] has K=16 but weight has K=15"),
    ("gmm.bias_shape", "npu_gmm", (X, W), dict(bias=t(3, 7, dtype=F32), group_list=[2, 5, 10]), None, "[[3, 7]]"),
    ("gmm.bias_k_split", "npu_gmm", (xt(10, 16), t(16, 8)), dict(bias=t(2, 8, dtype=F32), group_list=[5, 16],
                                                                 group_type=2), None, "shape [2, 8]"),
    ("gmm.k_zero", "npu_gmm", (t(10, 0), t(3, 0, 8)), dict(group_list=[2, 5, 10]), None, "K=0 with M=10, N=8"),
    ("gmm.inner_dim", "npu_gmm", (t(1, 65536), t(1, 65536, 2)), dict(group_list=[1]), None,
     "storage last dim is 65536"),
    ("gmm.int32_range", "npu_gmm", (TensorSpec((2 ** 31, 16), "bfloat16"), TensorSpec((1, 16, 8), "bfloat16")),
     dict(group_list=TensorSpec((1,), "int64")), None, f"dim 0 is {2 ** 31}"),
    ("gmm.x_transpose", "npu_gmm", (t(16, 10).t(), W), dict(group_list=[2, 5, 10]), None, "strides [1, 10]"),
    ("gmm.x_transpose", "npu_gmm", (t(10, 16), t(16, 8)), dict(group_list=[5, 16], group_type=2), None,
     "strides [16, 1]) must be a transposed view"),
    ("gmm.weight_transpose", "npu_gmm", (xt(10, 16), t(8, 16).t()), dict(group_list=[5, 16], group_type=2), None,
     "strides [1, 16]"),
    ("gmm.weight_transpose", "npu_grouped_matmul", ([t(2, 16), t(3, 16)], [t(16, 8), t(8, 16).t()]),
     dict(group_type=0, split_item=0), None, "[False, True]"),
    ("gmm.310p_dtype", "npu_gmm", (X, W), dict(group_list=[2, 5, 10]), "atlas-inference", "got bfloat16"),
    ("gmm.310p_group_type", "npu_gmm", (xt(10, 16, F16), t(16, 16, dtype=F16)), dict(group_list=[5, 16], group_type=2),
     "atlas-inference", "group_type=2"),
    ("gmm.310p_single", "npu_grouped_matmul", ([t(10, 16, dtype=F16)], [t(3, 16, 16, dtype=F16)]),
     dict(group_list=gl(2, 5, 10), group_type=0, split_item=1), "atlas-inference", "split_item=1"),
    ("gmm.310p_n_align", "npu_gmm", (t(10, 16, dtype=F16), t(3, 16, 8, dtype=F16)), dict(group_list=[2, 5, 10]),
     "atlas-inference", "N=8"),
    ("gmm.310p_max_groups", "npu_gmm", (TensorSpec((2000, 16), "float16"), TensorSpec((1025, 16, 16), "float16")),
     dict(group_list=TensorSpec((1025,), "int64")), "atlas-inference", "E=1025"),
    ("gmm.310p_tuning_config", "npu_grouped_matmul", ([t(10, 16, dtype=F16)], [t(3, 16, 16, dtype=F16)]),
     dict(group_list=gl(2, 5, 10), **GM, tuning_config=[64]), "atlas-inference", "tuning_config=[64]"),
]

WARN_CASES = [
    ("gmm.group_list_len_one_doc", "npu_gmm", (t(4, 16), t(1, 16, 8)), dict(group_list=[4]), None, "list [4]"),
    ("gmm.total_tensor_doc", "npu_gmm", (X, W), dict(group_list=gl(2, 5, 7)), None, "total is 7 < 10"),
]


def _nz_case():
    from ascend_moe.formats import set_format
    w = t(3, 16, 8)
    set_format(w, "FRACTAL_NZ")
    return ("gmm.nz_weight", "npu_gmm", (X, w), dict(group_list=[2, 5, 10]), None, "format FRACTAL_NZ"), w


def _argument_of(rule_id):
    for op in OPS:
        for r in get_op(op).rules:
            if r.id == rule_id:
                return r.argument
    raise KeyError(rule_id)


def _assert_rejects(rule_id, op, args, kwargs, product, value):
    vs = am.check(op, *args, product=product, **kwargs)
    hits = [v for v in vs if v.rule_id == rule_id]
    assert hits, f"{rule_id} did not fire; got {[v.rule_id for v in vs]}"
    arg = _argument_of(rule_id)
    msg = " ".join(str(v) for v in hits)
    assert f"argument '{arg}'" in msg
    assert value in msg, f"value {value!r} not in: {msg}"
    assert hits[0].fix and hits[0].source
    return hits


def _rule(rule_id):
    return next(r for op in OPS for r in get_op(op).rules if r.id == rule_id)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_rejects(case):
    hits = _assert_rejects(*case)
    rule = _rule(case[0])
    assert all(v.severity == rule.severity and v.status == rule.status for v in hits)
    if rule.severity != "error":   # not simulated / doc-level: never a claimed device status
        assert all(v.status is None for v in hits)


@pytest.mark.parametrize("case", WARN_CASES, ids=[c[0] for c in WARN_CASES])
def test_doc_rule_warns(case, monkeypatch):
    hits = _assert_rejects(*case)
    assert all(v.severity == "warning" for v in hits)
    rule_id, op, args, kwargs, product, value = case
    monkeypatch.setenv("ASCEND_MOE_STRICT_DOCS", "1")
    with pytest.raises(am.ConstraintError, match=rule_id):
        am.enforce(op, *args, product=product, **kwargs)


def test_nz_weight_rejected():
    case, _keep_alive = _nz_case()
    _assert_rejects(*case)


def test_every_rule_has_a_rejecting_case():
    from ascend_moe.rules import gmm_quant
    # the quantised forms' rules (gmmq.*) have their cases in test_gmm_quant_rules.py
    covered = {c[0] for c in CASES} | {c[0] for c in WARN_CASES} | {"gmm.nz_weight"} | {
        r.id for r in gmm_quant.quant_rules()}
    declared = {r.id for op in OPS for r in get_op(op).rules}
    assert declared - covered == set()


@pytest.mark.parametrize("product", ["atlas-a2", "atlas-a3", "ascend-950"])
def test_valid_calls_pass(product):
    ok = [
        ("npu_gmm", (X, W), dict(group_list=[2, 5, 10])),
        ("npu_gmm", (X, t(3, 8, 16).transpose(-1, -2)), dict(group_list=gl(2, 5, 10), bias=t(3, 8, dtype=F32))),
        ("npu_gmm_v2", (X, W), dict(group_list=gl(2, 0, 8))),
        ("npu_gmm", (xt(10, 16), t(16, 8)), dict(group_list=[5, 5, 16], group_type=2)),
        ("npu_grouped_matmul", ([X], [W]), dict(group_list=[2, 5, 10], split_item=1)),
        ("npu_grouped_matmul", ([t(2, 16), t(3, 16)], [t(16, 8), t(16, 4)]), dict(group_type=-1, split_item=0)),
        ("npu_grouped_matmul", ([TensorSpec((4096, 7168), "bfloat16")], [TensorSpec((8, 7168, 2048), "bfloat16")]),
         dict(group_list=TensorSpec((8,), "int64"), group_type=0, split_item=3)),
    ]
    for op, args, kw in ok:
        assert am.check(op, *args, product=product, **kw) == [], (op, kw)


def test_all_violations_reported_at_once():
    with pytest.raises(am.ConstraintError) as ei:
        am.enforce("npu_gmm", X, t(3, 15, 8, dtype=F16), bias=t(3, 8, dtype=BF), group_list=[2, 7, 5])
    ids = {v.rule_id for v in ei.value.violations}
    assert {"gmm.weight_dtype", "gmm.k_match", "gmm.bias_dtype", "gmm.group_list_values_list", "gmm.total_list"} <= ids


def test_torch_op_checks_the_quantised_forms():
    """int8 x and weight select the A8W8 form, checked by its own rules (here: int8 output, not modelled)."""
    with pytest.raises(am.ConstraintError, match="A8W8 output int8 is not modelled"):
        am.npu_grouped_matmul([torch.zeros(4, 16, dtype=torch.int8)], [torch.zeros(2, 16, 8, dtype=torch.int8)],
                              group_list=torch.tensor([2, 4]), group_type=0, split_item=3,
                              scale=[torch.ones(2, 8)], per_token_scale=[torch.ones(4)])


def test_npu_kernel_style_args_with_group_list_ints_are_checked():
    """The generic NPU kernel binds by schema names (group_list_ints); the rules read it too."""
    from ascend_moe.rules import check_call
    from ascend_moe.products import resolve_target
    args = dict(x=X, weight=W, bias=None, group_list=None, group_list_ints=[2, 7, 5], group_type=0,
                gemm_fusion=False, original_weight=None)
    ids = {v.rule_id for v in check_call("npu_gmm", args, resolve_target())}
    assert "gmm.group_list_values_list" in ids


def test_strided_weight_computes_as_the_host_makes_it_contiguous():
    """The host makes strided views contiguous (aclnn_grouped_matmul.cpp DataContiguous), so a weight
    that is neither contiguous nor a transposed view is a valid call with the values of its contiguous
    copy; checked against a float64 per-group loop written here."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 16, generator=g).to(BF)
    w_strided = torch.randn(3, 16, 16, generator=g).to(BF)[:, :, :8]
    assert not w_strided.is_contiguous()
    y = am.npu_gmm(x, w_strided, group_list=[2, 5, 10])
    assert torch.equal(y, am.npu_gmm(x, w_strided.contiguous(), group_list=[2, 5, 10]))
    ref = torch.empty(10, 8, dtype=torch.float64)
    for e, (s, end) in enumerate([(0, 2), (2, 5), (5, 10)]):
        ref[s:end] = x[s:end].double() @ w_strided[e].double()
    assert torch.allclose(y.double(), ref, rtol=1e-2, atol=1e-2)
