"""The torch_npu / MindSpeed drop-ins: names, signatures against torch_npu's schemas, the
NotImplementedError contract, and install() never replacing a real package."""
from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
import warnings
from unittest import mock

import pytest
import torch

import ascend_moe
from ascend_moe import compat
from ascend_moe.compat import mindspeed as ms_shim
from ascend_moe.compat import torch_npu as npu_shim
from ascend_moe.compat._shim import NotImplementedInShim

# torch_npu's schemas (op_plugin_functions.yaml, spec aclnn-abi-and-torch.md 4.2), verbatim.
TORCH_NPU_SCHEMAS = {
    "npu_grouped_matmul": "Tensor[] x, Tensor[] weight, *, Tensor[]? bias=None, Tensor[]? scale=None, Tensor[]? offset=None, Tensor[]? antiquant_scale=None, Tensor[]? antiquant_offset=None, Tensor[]? per_token_scale=None, Tensor? group_list=None, Tensor[]? activation_input=None, Tensor[]? activation_quant_scale=None, Tensor[]? activation_quant_offset=None, int? split_item=0, int? group_type=None, int? group_list_type=0, int? act_type=0, int[]? tuning_config=None, int? output_dtype=None, int? x_dtype=None, int? weight_dtype=None, int? scale_dtype=None, int? per_token_scale_dtype=None",  # noqa: E501
    "npu_moe_gating_top_k": "Tensor x, int k, *, Tensor? bias=None, Tensor? input_ids=None, Tensor? tid2eid=None, int k_group=1, int group_count=1, int group_select_mode=0, int renorm=0, int norm_type=0, bool out_flag=False, float routed_scaling_factor=1.0, float eps=1e-20",  # noqa: E501
    "npu_ffn": "Tensor x, Tensor weight1, Tensor weight2, str activation, *, int[]? expert_tokens=None, int[]? expert_tokens_index=None, Tensor? bias1=None, Tensor? bias2=None, Tensor? scale=None, Tensor? offset=None, Tensor? deq_scale1=None, Tensor? deq_scale2=None, Tensor? antiquant_scale1=None, Tensor? antiquant_scale2=None, Tensor? antiquant_offset1=None, Tensor? antiquant_offset2=None, int? inner_precise=None, ScalarType? output_dtype=None",  # noqa: E501
    "npu_grouped_matmul_swiglu_quant": "Tensor x, Tensor weight, Tensor group_list, Tensor weight_scale, Tensor x_scale, *, Tensor? bias=None, Tensor? offset=None",  # noqa: E501
    "npu_grouped_matmul_swiglu_quant_v2": "Tensor x, Tensor[] weight, Tensor[] weight_scale, Tensor x_scale, Tensor group_list, *, Tensor? smooth_scale=None, Tensor[]? weight_assist_matrix=None, Tensor? bias=None, int? dequant_mode=0, int? dequant_dtype=0, int? quant_mode=0, int? quant_dtype=1, int? group_list_type=0, int[]? tuning_config=None, int? x_dtype=None, int? weight_dtype=None, int? weight_scale_dtype=None, int? x_scale_dtype=None",  # noqa: E501
    "npu_grouped_matmul_finalize_routing": "Tensor x, Tensor w, Tensor group_list, *, Tensor? scale=None, Tensor? bias=None, Tensor? offset=None, Tensor? pertoken_scale=None, Tensor? shared_input=None, Tensor? logit=None, Tensor? row_index=None, ScalarType? dtype=None, float? shared_input_weight=1.0, int? shared_input_offset=0, int? output_bs=0, int? group_list_type=1, int[]? tuning_config=None, int? x_dtype=None, int? w_dtype=None, int? scale_dtype=None, int? pertoken_scale_dtype=None",  # noqa: E501
    # torch_npu: npu_format_cast(Tensor self, int acl_format) -> Tensor
    "npu_format_cast": "Tensor self, int acl_format",
}
# MindSpeed mindspeed/ops/gmm.py (spec grouped-matmul-family 1.1)
MINDSPEED_SIGNATURES = {
    "npu_gmm": "Tensor x, Tensor weight, *, Tensor? bias=None, Any group_list=None, int group_type=0, bool gemm_fusion=False, Any original_weight=None",  # noqa: E501
    "npu_gmm_v2": "Tensor x, Tensor weight, *, Tensor? bias=None, Any group_list=None, int group_type=0, bool gemm_fusion=False, Any original_weight=None",  # noqa: E501
}


def _parse(schema: str):
    """[(name, keyword_only, default or inspect.Parameter.empty)] of a schema argument list."""
    out, kw_only = [], False
    for part in (p.strip() for p in schema.split(",")):
        if part == "*":
            kw_only = True
            continue
        decl, _, default = part.partition("=")
        name = decl.split()[-1]
        value = inspect.Parameter.empty
        if default:
            value = {"None": None, "False": False, "True": True}.get(default)
            if value is None and default != "None":
                value = float(default) if re.search(r"[.e]", default) else int(default)
        out.append((name, kw_only, value))
    return out


def _check_signature(fn, schema: str, where: str):
    params = inspect.signature(fn).parameters
    positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, (name, kw_only, default) in enumerate(_parse(schema)):
        if name == "self" and name not in params:  # torch_npu's `self` is positional-only in practice
            assert positional and i == 0, f"{where}: first positional argument missing"
            continue
        assert name in params, f"{where}: argument {name!r} of the real signature is missing"
        p = params[name]
        if not kw_only:
            assert positional.index(name) == i, f"{where}: {name!r} must be positional argument {i}"
        else:
            assert p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD), f"{where}: {name!r} must accept a keyword"
        if default is not inspect.Parameter.empty:
            assert p.default == default, f"{where}: default of {name!r} is {p.default!r}, real one {default!r}"
        else:
            assert p.default is inspect.Parameter.empty, f"{where}: {name!r} is required in the real signature"
    known = {a for a, _, _ in _parse(schema)} | ({positional[0]} if schema.startswith("Tensor self") else set())
    extra = [n for n, p in params.items() if n not in known
             and p.default is inspect.Parameter.empty and p.kind != p.VAR_KEYWORD]
    assert not extra, f"{where}: required arguments the real signature lacks: {extra}"


@pytest.mark.parametrize("name", sorted(TORCH_NPU_SCHEMAS))
def test_torch_npu_shim_has_the_op_with_torch_npus_signature(name):
    fn = getattr(npu_shim, name)  # NotImplementedError here = the op module is missing
    assert fn is getattr(ascend_moe, name), f"torch_npu.{name} must be ascend_moe.{name} (one path)"
    _check_signature(fn, TORCH_NPU_SCHEMAS[name], f"torch_npu.{name}")


@pytest.mark.parametrize("name", sorted(MINDSPEED_SIGNATURES))
def test_mindspeed_shim_has_gmm_with_mindspeeds_signature(name):
    fn = getattr(ms_shim.ops.gmm, name)
    assert fn is getattr(ascend_moe, name)
    _check_signature(fn, MINDSPEED_SIGNATURES[name], f"mindspeed.ops.gmm.{name}")


def test_torch_npu_constants_and_format_helpers():
    assert (npu_shim.hifloat8, npu_shim.float4_e2m1fn_x2, npu_shim.float8_e8m0fnu) == (290, 296, 293)
    w = torch.zeros(2, 32, 64, dtype=torch.int8)
    assert npu_shim.get_npu_format(w) == 2
    assert npu_shim.get_npu_format(npu_shim.npu_format_cast(w, 29)) == 29
    assert npu_shim.npu.is_available() is False and npu_shim.npu.device_count() == 0


@pytest.mark.parametrize("name", ["npu_moe_distribute_combine_add_rms_norm", "npu_rotary_mul", "npu_fusion_attention",
                                  "npu_mla_prolog"])
def test_real_torch_npu_names_exist_and_raise_when_called(name):
    """Names the real torch_npu has exist (mock.patch needs no create=True) and raise when called."""
    fn = getattr(npu_shim, name)
    assert name in npu_shim.__all__
    with pytest.raises(NotImplementedError, match=rf"torch_npu\.{name} is not implemented"):
        fn(torch.zeros(1))
    with mock.patch(f"{npu_shim.__name__}.{name}", return_value="patched"):
        assert getattr(npu_shim, name)() == "patched"


def test_name_list_covers_the_moe_ops_and_format_ops():
    # a hand-picked sample of torch_npu's public names (op-plugin custom ops and torch_npu's format ops)
    for name in ("npu_grouped_matmul", "npu_moe_gating_top_k", "npu_ffn", "npu_moe_distribute_dispatch",
                 "npu_format_cast", "npu_format_cast_", "get_npu_format", "npu_fusion_attention"):
        assert name in npu_shim.REAL_NAMES


@pytest.mark.parametrize("module,real,name", [
    (npu_shim, "torch_npu", "npu_not_a_real_op"),
    (npu_shim.npu, "torch_npu.npu", "current_stream"),
    (ms_shim, "mindspeed", "megatron_adaptor"),
    (ms_shim.ops, "mindspeed.ops", "npu_rotary_position_embedding"),
    (ms_shim.ops.gmm, "mindspeed.ops.gmm", "GMMFunction"),
])
def test_unimplemented_names_raise_not_implemented_naming_them(module, real, name):
    with pytest.raises(NotImplementedError, match=rf"{re.escape(real)}\.{name} is not implemented"):
        getattr(module, name)
    # ... and are absent for feature probes, as on an older torch_npu (never a mock object)
    assert not hasattr(module, name)
    assert getattr(module, name, None) is None
    assert issubclass(NotImplementedInShim, AttributeError)


def test_dunder_probes_are_plain_attribute_errors():
    for attr in ("__path__", "__wrapped__", "_private_thing"):
        with pytest.raises(AttributeError) as info:
            getattr(npu_shim, attr)
        assert not isinstance(info.value, NotImplementedError)


# --------------------------------------------------------------------------------------------------
# install(): only where the real package cannot be imported
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def clean_modules(monkeypatch):
    """sys.modules / sys.path / the install registry restored after the test."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("torch_npu", "mindspeed")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(compat, "_installed", {})
    yield
    for k in [k for k in sys.modules if k.split(".")[0] in ("torch_npu", "mindspeed")]:
        del sys.modules[k]
    sys.modules.update(saved)
    importlib.invalidate_caches()


def test_install_without_real_packages(clean_modules):
    assert importlib.util.find_spec("torch_npu") is None and importlib.util.find_spec("mindspeed") is None
    status = compat.install()
    assert status["torch_npu"].installed and status["mindspeed"].installed
    import torch_npu
    from mindspeed.ops import gmm
    import torch_npu.npu as torch_npu_npu
    assert torch_npu is npu_shim and gmm is ms_shim.ops.gmm and torch_npu_npu is npu_shim.npu
    assert compat.install()["torch_npu"] == status["torch_npu"]  # idempotent
    assert [s.name for s in compat.installed()] == ["torch_npu", "mindspeed"]
    compat.uninstall()
    assert "torch_npu" not in sys.modules and "mindspeed.ops.gmm" not in sys.modules
    with pytest.raises(ImportError):
        import torch_npu  # noqa: F401,F811


def _package(root, name, body):
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    importlib.invalidate_caches()


def test_install_never_replaces_an_importable_real_package(clean_modules, tmp_path):
    _package(tmp_path, "torch_npu", "REAL = True\n")
    _package(tmp_path, "mindspeed", "REAL = True\n")
    sys.path.insert(0, str(tmp_path))
    status = compat.install()
    assert not status["torch_npu"].installed and "real torch_npu is importable" in status["torch_npu"].reason
    assert not status["mindspeed"].installed
    import torch_npu
    import mindspeed
    assert torch_npu.REAL and mindspeed.REAL and not compat.is_shim(torch_npu)
    compat.uninstall()
    assert sys.modules["torch_npu"] is torch_npu  # uninstall never removes a real module


def test_install_never_replaces_an_already_imported_module(clean_modules):
    import types
    real = types.ModuleType("torch_npu")
    real.__file__ = "/usr/local/lib/python3.11/site-packages/torch_npu/__init__.py"
    sys.modules["torch_npu"] = real
    assert not compat.install(mindspeed=False)["torch_npu"].installed
    assert sys.modules["torch_npu"] is real


def test_install_over_a_real_package_that_cannot_load(clean_modules, tmp_path):
    """The CPU container with torch_npu installed but no CANN: the import fails, the drop-in stands in."""
    _package(tmp_path, "torch_npu", """
        import torch_npu._half_loaded  # a submodule that imports fine before the failure
        raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")
    """)
    (tmp_path / "torch_npu" / "_half_loaded.py").write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = compat.install(mindspeed=False)
    assert status["torch_npu"].installed and "libhccl.so" in status["torch_npu"].reason
    assert any(issubclass(w.category, compat.ShimWarning) and "libhccl.so" in str(w.message) for w in caught)
    assert "torch_npu._half_loaded" not in sys.modules  # the partial import is dropped
    import torch_npu
    assert torch_npu is npu_shim


def test_shim_calls_compute_and_check(clean_modules):
    """Through the shim a call computes real numbers and is checked against the target product."""
    compat.install(mindspeed=False)
    import torch_npu
    x = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    y, idx, _ = torch_npu.npu_moe_gating_top_k(x, 2, norm_type=0, out_flag=True)
    assert idx.tolist() == [[1, 3]]
    e = torch.exp(x - 3.0)
    torch.testing.assert_close(y, (e / e.sum())[:, [1, 3]], rtol=1e-6, atol=0)
    with ascend_moe.target("atlas-200i-500-a2"), pytest.raises(ascend_moe.ConstraintError, match="atlas-200i-500-a2"):
        torch_npu.npu_moe_gating_top_k(x, 2, norm_type=0, out_flag=True)


# --------------------------------------------------------------------------------------------------
# the pytest plugin's configure step (the subprocess runs are in test_compat_downstream.py)
# --------------------------------------------------------------------------------------------------

class _Config:
    def __init__(self, **options):
        self.options = {"--ascend-product": None, "--ascend-cann": None, "--ascend-no-shims": False,
                        "--ascend-simulate": False, "--ascend-devices": None, **options}

    def getoption(self, name):
        return self.options[name]


def test_plugin_sets_the_target_for_the_session(clean_modules):
    from ascend_moe import products, pytest_plugin
    config = _Config(**{"--ascend-product": "310P", "--ascend-cann": "8.2.RC1"})
    pytest_plugin.pytest_configure(config)
    try:
        t = products.resolve_target()
        assert (t.product, str(t.cann)) == ("atlas-inference", "8.2.RC1")
        assert compat.is_shim(sys.modules["torch_npu"])
        products.set_target(None, None)  # a conftest resetting the process target between tests ...
        with pytest_plugin._selected_target():  # ... cannot drop the plugin's per-test context
            assert products.resolve_target().product == "atlas-inference"
            with ascend_moe.target("atlas-a3"):  # a test may still narrow it
                assert products.resolve_target().product == "atlas-a3"
        assert any("atlas-inference / CANN 8.2.RC1" in line for line in pytest_plugin.pytest_report_header(config))
    finally:
        pytest_plugin.pytest_unconfigure(config)
    assert "torch_npu" not in sys.modules
    assert products.resolve_target(detect=False).product == "atlas-a2"


@pytest.mark.parametrize("option,value,message", [
    ("--ascend-product", "atlas-9000", "unknown Atlas product 'atlas-9000'"),
    ("--ascend-cann", "eight", "not a CANN version"),
])
def test_plugin_rejects_a_misspelt_option(clean_modules, option, value, message):
    from ascend_moe import pytest_plugin
    with pytest.raises(pytest.UsageError, match=message):
        pytest_plugin.pytest_configure(_Config(**{option: value}))
    assert "torch_npu" not in sys.modules


def test_vllm_ascend_weight_postprocessing_keeps_nz():
    """vllm-ascend's process_weights_after_loading idioms keep the NZ format the ops check."""
    w = torch.nn.Parameter(torch.randint(-8, 8, (2, 32, 64), dtype=torch.int8), requires_grad=False)
    w.data = npu_shim.npu_format_cast(w.data, 29)
    assert npu_shim.get_npu_format(w) == 29
    p = torch.nn.Parameter(npu_shim.npu_format_cast(torch.zeros(2, 32, 64, dtype=torch.int8), 29), requires_grad=False)
    assert npu_shim.get_npu_format(p) == 29


def test_mock_patch_of_an_implemented_name_still_works(clean_modules):
    """Suites may keep a targeted mock.patch on top of the drop-in (restored afterwards)."""
    from unittest import mock
    compat.install(mindspeed=False)
    import torch_npu
    real = torch_npu.npu_grouped_matmul
    with mock.patch("torch_npu.npu_grouped_matmul", return_value=["patched"]) as patched:
        assert torch_npu.npu_grouped_matmul([], []) == ["patched"] and patched.called
    assert torch_npu.npu_grouped_matmul is real


def test_install_warns_about_a_magicmock_stand_in(clean_modules):
    """vllm-ascend's old conftest puts a fake module into sys.modules: left alone, but said loudly."""
    import types
    from unittest import mock
    fake = types.ModuleType("torch_npu")
    fake.npu_grouped_matmul = mock.MagicMock()
    sys.modules["torch_npu"] = fake
    with pytest.warns(compat.ShimWarning, match="stand-in without __file__"):
        status = compat.install(mindspeed=False)
    assert not status["torch_npu"].installed and sys.modules["torch_npu"] is fake


def test_gmm_drop_in_over_a_real_mindspeed_keeps_its_other_modules(clean_modules, tmp_path):
    """With a real, importable MindSpeed, only mindspeed.ops.gmm / npu_groupmatmul_add are replaced
    (what the simulated npu device needs); mindspeed.core and the package itself stay the real ones."""
    root = tmp_path / "mindspeed"
    (root / "core").mkdir(parents=True)
    (root / "ops").mkdir()
    (root / "__init__.py").write_text("REAL = True\n")
    (root / "core" / "__init__.py").write_text("CORE = 'real core'\n")
    (root / "ops" / "__init__.py").write_text("")
    (root / "ops" / "gmm.py").write_text("raise ImportError('the real gmm needs torch_npu')\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    status = compat.install(torch_npu=False, mindspeed=True, mindspeed_ops_over_real=True)
    assert status["mindspeed"].installed
    import mindspeed
    from mindspeed.core import CORE
    from mindspeed.ops import gmm
    from mindspeed.ops.npu_groupmatmul_add import npu_groupmatmul_add_fp32
    assert mindspeed.REAL is True and CORE == "real core"
    assert compat.is_shim(gmm) and not compat.is_shim(mindspeed)
    # the drop-in computes: grad[g] += x_g^T dy_g, groups given by cumulative ends [1, 3]
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    dy = torch.tensor([[1.0], [1.0], [2.0]])
    grad = torch.zeros(2, 2, 1)
    npu_groupmatmul_add_fp32(x, dy, [1, 3], grad)
    assert grad[:, :, 0].tolist() == [[1.0, 2.0], [3.0 + 10.0, 4.0 + 12.0]]


def test_torchair_stand_in(monkeypatch):
    """CompilerConfig keeps what user code sets, the backend is a real torch.compile backend that
    runs the graph, inductor is refused with its reason, and GE builders raise naming themselves."""
    from ascend_moe.compat import torchair as tng
    from ascend_moe.compat.torchair.configs.compiler_config import CompilerConfig
    from ascend_moe.compat.torchair.ge_concrete_graph import ge_apis
    config = CompilerConfig()
    config.debug.graph_dump.type = "pbtxt"
    config.experimental_config.frozen_parameter = True
    assert config.debug.graph_dump.type == "pbtxt" and config.experimental_config.frozen_parameter is True
    assert tng.CompilerConfig is CompilerConfig
    backend = tng.get_npu_backend(compiler_config=config)
    compiled = torch.compile(lambda a, b: (a * b).sum(dim=0), backend=backend, fullgraph=True)
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert compiled(a, a).tolist() == [1.0 + 9.0, 4.0 + 16.0]
    monkeypatch.setenv("ASCEND_MOE_TORCHAIR_BACKEND", "inductor")
    with pytest.raises(ValueError, match="no code generator"):
        tng.get_npu_backend(compiler_config=config)
    with pytest.raises(NotImplementedError, match="ge_apis.Cast is not implemented"):
        ge_apis.Cast
