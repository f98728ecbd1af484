"""Products, CANN version ordering, target selection precedence, the rule engine and its
violation format, and the backend policy."""
import random

import numpy as np
import pytest

import ascend_moe
from ascend_moe import products, rules
from ascend_moe.backends import BackendError, requested_backend, select_backend, set_backend, use_backend
from ascend_moe.products import CannVersion, normalize_product, product_from_soc, resolve_target


# ---------------------------------------------------------------- products

@pytest.mark.parametrize("soc,key", [
    ("Ascend910B1", "atlas-a2"), ("Ascend910B2C", "atlas-a2"), ("Ascend910B4", "atlas-a2"),
    ("Ascend910_9391", "atlas-a3"), ("Ascend910_9362", "atlas-a3"),
    ("Ascend310P1", "atlas-inference"), ("Ascend310P3", "atlas-inference"),
    ("Ascend310B1", "atlas-200i-500-a2"), ("Ascend310B4", "atlas-200i-500-a2"),
    ("Ascend910A", "atlas-training"), ("Ascend910ProB", "atlas-training"),
    ("Ascend950PR", "ascend-950"), ("Ascend950DT", "ascend-950"),
])
def test_soc_aliases(soc, key):
    assert product_from_soc(soc) == key
    assert normalize_product(soc) == key


def test_product_names_and_unknown_product_message():
    assert normalize_product("A2") == "atlas-a2"
    assert normalize_product("atlas_a3") == "atlas-a3"
    assert normalize_product("310p") == "atlas-inference"
    with pytest.raises(ValueError, match=r"unknown Atlas product 'Ascend999'.*atlas-a2"):
        normalize_product("Ascend999")


# ---------------------------------------------------------------- versions

ORDERED = ["8.0.RC1", "8.0.RC2", "8.0.RC3", "8.0.0", "8.0.1", "8.1.RC1", "8.2.RC1", "8.3.RC1",
           "8.5.0alpha001", "8.5.0alpha002", "8.5.0beta1", "8.5.0", "9.0.0"]


def test_version_total_order():
    vs = [CannVersion(v) for v in ORDERED]
    shuffled = vs[:]
    random.Random(0).shuffle(shuffled)
    assert [v.text for v in sorted(shuffled)] == ORDERED
    for a, b in zip(vs, vs[1:]):
        assert a < b and b > a and a != b and a <= b
    assert CannVersion("8.5") == CannVersion("8.5.0")
    assert CannVersion("8.0.rc3") == CannVersion("8.0.RC3")
    assert CannVersion("8.0.RC3") < "8.0.0"


def test_version_rejects_garbage():
    with pytest.raises(ValueError, match="not a CANN version"):
        CannVersion("eight")


# ---------------------------------------------------------------- selection precedence

def test_target_precedence(monkeypatch):
    monkeypatch.setattr(products, "detect_product", lambda: ("atlas-a3", "Ascend910_9391"))
    monkeypatch.setattr(products, "detect_cann_version", lambda: (CannVersion("8.0.0"), "/x/info"))
    t = resolve_target()
    assert (t.product, str(t.cann)) == ("atlas-a3", "8.0.0")
    assert t.product_source.startswith("detected") and t.cann_source.startswith("detected")
    monkeypatch.setenv("ASCEND_MOE_PRODUCT", "Ascend310P3")
    monkeypatch.setenv("ASCEND_MOE_CANN", "8.2.RC1")
    t = resolve_target()
    assert (t.product, str(t.cann)) == ("atlas-inference", "8.2.RC1")
    assert "ASCEND_MOE_PRODUCT" in t.product_source
    products.set_target("a2", "8.3.RC1")
    t = resolve_target()
    assert (t.product, str(t.cann)) == ("atlas-a2", "8.3.RC1")
    with products.target("950", "9.0.0"):
        t = resolve_target()
        assert (t.product, str(t.cann)) == ("ascend-950", "9.0.0")
        t = resolve_target("atlas-a3", "8.0.RC3")
        assert (t.product, str(t.cann), t.product_source) == ("atlas-a3", "8.0.RC3", "argument")


def test_defaults_without_anything(monkeypatch):
    monkeypatch.setattr(products, "detect_product", lambda: None)
    monkeypatch.setattr(products, "detect_cann_version", lambda: None)
    t = resolve_target()
    assert (t.product, t.cann) == (products.DEFAULT_PRODUCT, products.DEFAULT_CANN)
    assert t.product_source == t.cann_source == "default"


def test_cann_version_detection_from_install_info(tmp_path, monkeypatch):
    info = tmp_path / "x86_64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir()
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC3\narch=x86_64\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path))
    products.detect_cann_version.cache_clear()
    try:
        found = products.detect_cann_version()
        assert found is not None and found[0] == CannVersion("8.0.RC3") and found[1] == str(info)
    finally:
        products.detect_cann_version.cache_clear()


# ---------------------------------------------------------------- the rule engine

def _toy(x, k, *, bias=None, flag=False):
    """A test-only op signature."""


@pytest.fixture
def toy_op():
    spec = rules.register_op("toy_op", _toy, products=products.A2_A3, source="toy doc")

    @spec.rule("toy.k_range", argument="k", summary="1 <= k <= 8", fix="pass 1 <= k <= 8")
    def _(call):
        if not 1 <= call["k"] <= 8:
            return f"k must be in [1, 8], got k={call['k']}"

    @spec.rule("toy.x_2d", argument="x", summary="x is 2-D", fix="reshape x to [rows, cols]")
    def _(call):
        if len(call.shape("x")) != 2:
            return f"x must be 2-D, got shape {call.shape('x')}"

    @spec.rule("toy.cols_old", argument="x", summary="x has 256 columns", until="8.3.RC1",
               products=["atlas-a2"], fix="use 256 experts, or CANN >= 8.3.RC1", status=161002)
    def _(call):
        if call.shape("x")[1] != 256:
            return f"x.shape[1] must be 256, got {call.shape('x')[1]}"

    @spec.rule("toy.bias_doc", argument="bias", summary="bias given (docs only)", severity="warning",
               status=None)
    def _(call):
        if not call.given("bias"):
            return "bias should be given, got None"

    @spec.rule("toy.values", argument="k", summary="x rows sum positive")
    def _(call):
        v = call.values("x")
        if v is not None and v.sum() < 0:
            return f"sum of x must be >= 0, got {v.sum()}"

    yield spec
    del rules._REGISTRY["toy_op"]


def test_check_returns_every_violation_at_once(toy_op):
    vs = ascend_moe.check("toy_op", np.zeros((4, 3), np.int32), 9, product="atlas-a2", cann="8.2.RC1")
    ids = [v.rule_id for v in vs]
    assert ids == ["toy.k_range", "toy.cols_old", "toy.bias_doc"]
    v = vs[0]
    assert (v.argument, v.product, v.cann, v.status) == ("k", "atlas-a2", "8.2.RC1", 161002)
    assert "got k=9" in v.message and v.fix == "pass 1 <= k <= 8" and v.source == "toy doc"


def test_version_and_product_scoping(toy_op):
    x = np.zeros((4, 3), np.int32)
    assert "toy.cols_old" not in [v.rule_id for v in ascend_moe.check("toy_op", x, 2, product="a2", cann="8.3.RC1")]
    assert "toy.cols_old" not in [v.rule_id for v in ascend_moe.check("toy_op", x, 2, product="a3", cann="8.0.0")]
    vs = ascend_moe.check("toy_op", x, 2, product="310p")
    assert [v.rule_id for v in vs] == ["toy_op.product"]
    assert "not supported on atlas-inference" in vs[0].message and "atlas-a2" in vs[0].fix
    toy_op.product_notes["atlas-inference"] = "only its MX variants exist there"
    assert ascend_moe.check("toy_op", x, 2, product="310p")[0].message.endswith(": only its MX variants exist there")


def test_violation_format_names_argument_rule_product_fix_and_status(toy_op):
    with pytest.raises(ascend_moe.ConstraintError) as ei:
        ascend_moe.enforce("toy_op", np.zeros((4, 3), np.int32), 0, bias=1, product="a2", cann="8.0.0")
    err = ei.value
    assert isinstance(err, ValueError)
    assert [v.rule_id for v in err.violations] == ["toy.k_range", "toy.cols_old"]
    text = str(err)
    assert "toy_op: 2 constraint violation(s) on atlas-a2 / CANN 8.0.0" in text
    assert "[toy.k_range] toy_op: argument 'k': k must be in [1, 8], got k=0" in text
    assert "on atlas-a2, CANN 8.0.0; rule holds for all CANN versions" in text
    assert "aclnn status 161002 (ACLNN_ERR_PARAM_INVALID)" in text
    assert "fix: use 256 experts, or CANN >= 8.3.RC1" in text
    assert "rule holds for CANN < 8.3.RC1" in text


def test_doc_only_rules_warn_unless_strict(toy_op, monkeypatch):
    x = np.zeros((4, 256), np.int32)
    with pytest.warns(ascend_moe.ConstraintWarning, match="bias should be given"):
        ascend_moe.enforce("toy_op", x, 2, product="a2")
    monkeypatch.setenv("ASCEND_MOE_STRICT_DOCS", "1")
    with pytest.raises(ascend_moe.ConstraintError, match="toy.bias_doc"):
        ascend_moe.enforce("toy_op", x, 2, product="a2")


def test_tensor_specs_and_value_rules(toy_op):
    spec = ascend_moe.TensorSpec((4, 256), "int32")
    assert ascend_moe.check("toy_op", spec, 2, bias=1, product="a2") == []
    neg = -np.ones((4, 256), np.int32)
    assert [v.rule_id for v in ascend_moe.check("toy_op", neg, 2, bias=1, product="a2")] == ["toy.values"]
    # the same values as a spec with values, and without (value rules then pass silently)
    assert ascend_moe.check("toy_op", ascend_moe.TensorSpec((4, 256), "int32", values=neg), 2, bias=1,
                            product="a2")[0].rule_id == "toy.values"


def test_torch_tensors_meta_and_real(toy_op):
    import torch
    assert ascend_moe.check("toy_op", torch.zeros(4, 256, dtype=torch.int32), 2, bias=1, product="a2") == []
    assert ascend_moe.check("toy_op", -torch.ones(4, 256, dtype=torch.int32), 2, bias=1,
                            product="a2")[0].rule_id == "toy.values"
    meta = -torch.ones(4, 256, dtype=torch.int32, device="meta")
    assert ascend_moe.check("toy_op", meta, 2, bias=1, product="a2") == []


def test_binding_errors_name_the_signature(toy_op):
    with pytest.raises(TypeError, match=r"toy_op\(x, k, \*, bias=None, flag=False\)"):
        ascend_moe.check("toy_op", np.zeros((4, 3)), 2, bogus=1)


def test_a_rule_that_crashes_alone_is_an_internal_error(toy_op):
    # x of rank 1: toy.x_2d reports it, toy.cols_old crashes on shape[1] and is tolerated
    vs = ascend_moe.check("toy_op", np.zeros(4, np.int32), 2, bias=1, product="a2", cann="8.0.0")
    assert [v.rule_id for v in vs] == ["toy.x_2d"]

    @toy_op.rule("toy.buggy", argument="k", summary="buggy")
    def _(call):
        raise KeyError("oops")

    with pytest.raises(RuntimeError, match="internal error: rule toy.buggy"):
        ascend_moe.check("toy_op", np.zeros((4, 256), np.int32), 2, bias=1, product="a2")


def test_rule_registration_rejects_duplicates_and_unknown_products(toy_op):
    with pytest.raises(ValueError, match="duplicate rule id"):
        toy_op.rule("toy.k_range", argument="k", summary="again")(lambda call: None)
    with pytest.raises(ValueError, match="unknown products"):
        toy_op.rule("toy.p", argument="k", summary="p", products=["atlas-a9"])(lambda call: None)


def test_unknown_op():
    with pytest.raises(KeyError, match="unknown op 'npu_nothing'"):
        ascend_moe.check("npu_nothing")


# ---------------------------------------------------------------- backend policy

class _Dev:
    def __init__(self, type_):
        self.type = type_


class _T:
    def __init__(self, dev):
        self.device = _Dev(dev)


def test_backend_request_precedence(monkeypatch):
    assert requested_backend() == "auto"
    monkeypatch.setenv("ASCEND_MOE_BACKEND", "aclnn")
    assert requested_backend() == "aclnn"
    set_backend("sim")
    assert requested_backend() == "sim"
    with use_backend("auto"):
        assert requested_backend() == "auto"
        assert requested_backend("aclnn") == "aclnn"
        with use_backend(None):  # None keeps the current choice
            assert requested_backend() == "auto"
    monkeypatch.setenv("ASCEND_MOE_BACKEND", "gpu")
    set_backend(None)
    with pytest.raises(ValueError, match="ASCEND_MOE_BACKEND must be one of"):
        requested_backend()


def test_cpu_tensors_go_to_the_simulator():
    assert select_backend("npu_x", [_T("cpu"), None, [_T("cpu")]]) == "sim"
    assert select_backend("npu_x", [_T("cpu")], "sim") == "sim"


def test_explicit_aclnn_with_cpu_tensors_is_refused(monkeypatch):
    from ascend_moe.backends import aclnn_status
    monkeypatch.setattr(aclnn_status, "fake_runtime_loaded", lambda: False)
    with pytest.raises(BackendError, match="aclnn computes NPU tensors only"):
        select_backend("npu_x", [_T("cpu")], "aclnn")


def test_npu_tensors_are_never_computed_on_cpu(monkeypatch):
    from ascend_moe.backends import aclnn_status
    with pytest.raises(BackendError, match="never computes NPU tensors"):
        select_backend("npu_x", [_T("npu")], "sim")
    monkeypatch.setattr(aclnn_status, "aclnn_unavailable_reason", lambda op: "libopapi.so not found")
    with pytest.raises(BackendError, match="hardware path is unavailable: libopapi.so not found"):
        select_backend("npu_x", [_T("npu")])
    monkeypatch.setattr(aclnn_status, "aclnn_unavailable_reason", lambda op: None)
    assert select_backend("npu_x", [_T("npu"), _T("privateuseone")]) == "aclnn"
    with pytest.raises(BackendError, match="several devices"):
        select_backend("npu_x", [_T("npu"), _T("cpu")])
