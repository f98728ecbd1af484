"""Bad input never returns garbage: one regression test per defect found by fuzzing the entry points.

Each test is a minimal reproducer and asserts the behaviour now promised: a defined result, or a
ConstraintError / TypeError / ValueError naming the argument.  References are written out here."""
import concurrent.futures
import contextvars
import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

import ascend_moe as am
from ascend_moe import sim
from ascend_moe.formats import get_format, set_format


# --- 2. K split with an empty Tensor group list ---------------------------------------------------

def test_k_split_empty_tensor_group_list_is_an_empty_result_everywhere():
    x = torch.randn(1, 4).t()            # [4, 1] transposed view: M=4, K=1
    w = torch.randn(1, 8)
    empty = torch.tensor([], dtype=torch.int64)
    for _ in range(2):  # was uninitialised memory that differed run to run
        y, = am.npu_grouped_matmul([x], [w], group_list=empty, group_type=2, split_item=3)
        assert tuple(y.shape) == (0, 4, 8)
    assert am.check("npu_grouped_matmul", [x], [w], group_list=empty, group_type=2, split_item=3) == []
    for fn in (am.npu_gmm, am.npu_gmm_v2):  # raised an internal "out must be C-contiguous" ValueError
        assert tuple(fn(x, w, group_list=empty, group_type=2).shape) == (0, 4, 8)
    ys = sim.gmm.npu_grouped_matmul([x.numpy()], [w.numpy()], group_list=np.array([], np.int64), group_type=2,
                                    split_item=3)
    assert ys[0].shape == (0, 4, 8)
    assert sim.gmm.npu_gmm(x.numpy(), w.numpy(), group_list=np.array([], np.int64), group_type=2).shape == (0, 4, 8)


def test_k_split_group_bounds_of_an_empty_list_have_no_groups():
    starts, ends = sim.gmm.group_bounds([], 0)
    assert starts.size == 0 and ends.size == 0
    starts, ends = sim.gmm.group_bounds([3, 0, 2], 1)
    assert starts.tolist() == [0, 3, 3] and ends.tolist() == [3, 3, 5]


# --- 3. List[int] group list with counts -----------------------------------------------------------

def test_list_group_list_with_counts_is_rejected_on_every_path():
    # bf16: the List[int] path is aclnnGroupedMatmul V1, which rejects fp32 (rule gmm.fp32_v1)
    x, w = torch.randn(10, 16).bfloat16(), torch.randn(3, 16, 8).bfloat16()
    kw = dict(group_list=[4, 2, 4], group_list_type=1, group_type=0, split_item=3)
    with pytest.raises(am.ConstraintError, match="group_list_type") as e:
        am.npu_grouped_matmul([x], [w], **kw)
    assert e.value.violations[0].rule_id == "gmm.list_is_cumsum"
    with pytest.raises(am.ConstraintError, match="gmm.list_is_cumsum"):
        sim.gmm.npu_grouped_matmul([x.float().numpy().astype(ml_dtypes.bfloat16)],
                                   [w.float().numpy().astype(ml_dtypes.bfloat16)], **kw)
    assert [v.rule_id for v in am.check("npu_grouped_matmul", [x], [w], **kw)] == ["gmm.list_is_cumsum"]
    # the same split as a cumsum list, or as counts in a Tensor, computes: rows 0-3 use expert 0, 4-5
    # expert 1, 6-9 expert 2
    xf, wf = x.double(), w.double()
    ref = torch.cat([xf[0:4] @ wf[0], xf[4:6] @ wf[1], xf[6:10] @ wf[2]])
    y_list, = am.npu_grouped_matmul([x], [w], group_list=[4, 6, 10], group_type=0, split_item=3)
    y_tensor, = am.npu_grouped_matmul([x], [w], group_list=torch.tensor([4, 2, 4]), group_list_type=1,
                                      group_type=0, split_item=3)
    # fp32 accumulation, one bf16 rounding: within a bf16 ulp of the exact product
    torch.testing.assert_close(y_list.double(), ref, rtol=2 ** -7, atol=1e-6)
    torch.testing.assert_close(y_tensor.double(), ref, rtol=2 ** -7, atol=1e-6)


# --- 4 and 7. the NumPy twins: None for a float scalar, torch tensors and lists ----------------------

def _gating_args():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 256)).astype(np.float32), rng.standard_normal(256).astype(np.float32)


@pytest.mark.parametrize("name", ["routed_scaling_factor", "eps"])
def test_gating_twin_rejects_none_float_scalars(name):
    x, bias = _gating_args()
    with pytest.raises(TypeError, match=f"'{name}'"):  # was y all NaN
        sim.gating.npu_moe_gating_top_k(x, 8, bias=bias, k_group=4, group_count=8, group_select_mode=1,
                                        norm_type=1, **{name: None})


@pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")  # tiny k/n: the doc lists larger ones
def test_finalize_routing_twin_takes_none_scalars_as_their_defaults_like_the_torch_op():
    # torch_npu declares shared_input_weight / shared_input_offset / output_bs / group_list_type optional;
    # None was NaN shared rows in the twin
    rng = np.random.default_rng(1)
    x = rng.integers(-8, 8, (2, 32)).astype(np.int8)
    w = np.ascontiguousarray(rng.integers(-8, 8, (1, 32, 256)).astype(np.int8))
    set_format(w, "FRACTAL_NZ")
    kw = dict(scale=np.full((1, 256), 0.01, np.float32), pertoken_scale=np.ones(2, np.float32),
              logit=np.ones(2, np.float32), row_index=np.array([0, 1]),
              shared_input=np.full((2, 256), 0.5, ml_dtypes.bfloat16))
    none = sim.finalize_routing.npu_grouped_matmul_finalize_routing(
        x, w, np.array([2]), shared_input_weight=None, shared_input_offset=None, output_bs=None,
        group_list_type=None, **kw)
    default = sim.finalize_routing.npu_grouped_matmul_finalize_routing(x, w, np.array([2]), **kw)
    assert np.isfinite(none).all()
    np.testing.assert_array_equal(none, default)
    ref = (x.astype(np.int64) @ w[0].astype(np.int64)).astype(np.float32) * np.float32(0.01) + np.float32(0.5)
    np.testing.assert_allclose(none, ref, rtol=1e-6)
    with pytest.raises(TypeError, match="'shared_input_weight'"):
        sim.finalize_routing.npu_grouped_matmul_finalize_routing(x, w, np.array([2]), shared_input_weight="1", **kw)


@pytest.mark.parametrize("as_what", ["tensor", "list"])
def test_twins_reject_tensors_and_lists_naming_the_argument(as_what):
    x, bias = _gating_args()
    bad = torch.from_numpy(x) if as_what == "tensor" else x.tolist()
    with pytest.raises(TypeError, match="argument 'x'"):
        sim.gating.npu_moe_gating_top_k(bad, 8)
    w = np.zeros((1, 32, 64), np.int8)
    bad_w = torch.from_numpy(w) if as_what == "tensor" else w.tolist()
    with pytest.raises(TypeError, match="argument 'w'"):  # was AttributeError 'astype'
        sim.finalize_routing.npu_grouped_matmul_finalize_routing(np.zeros((2, 32), np.int8), bad_w, np.array([2]))
    with pytest.raises(TypeError, match="argument 'weight_scale'"):
        sim.swiglu_quant.npu_grouped_matmul_swiglu_quant(
            np.zeros((2, 32), np.int8), np.zeros((1, 32, 64), np.int8), np.array([2]),
            torch.zeros(1, 64) if as_what == "tensor" else [[0.0] * 64], np.zeros(2, np.float32))


def test_gmm_twin_non_integer_group_type_is_a_type_error():
    x, w = np.zeros((10, 16), np.float32), np.zeros((3, 16, 8), np.float32)
    with pytest.raises(TypeError, match="argument 'group_type' must be an int"):  # was an internal OverflowError
        sim.gmm.npu_grouped_matmul([x], [w], group_list=[4, 6, 10], group_type=float("inf"), split_item=3)
    with pytest.raises(TypeError, match="argument 'group_list_type' must be an int"):
        sim.gmm.npu_grouped_matmul([x], [w], group_list=np.array([4, 6, 10]), group_type=0,
                                   group_list_type=float("inf"), split_item=3)


# --- 7 and the torch_npu gaps: npu_format_cast ------------------------------------------------------

def test_format_cast_of_a_meta_tensor_gives_meta_results():
    m = torch.empty(2, 40, 20, device="meta")
    nz = am.npu_format_cast(m, 29)             # was a BackendError asking for torch_npu
    assert nz.device.type == "meta" and nz.shape == m.shape and get_format(nz) == "FRACTAL_NZ"
    st = am.npu_format_cast(m, 29, storage=True)
    assert st.device.type == "meta" and tuple(st.shape) == (2, 3, 3, 16, 8)   # ceil(20/8), ceil(40/16)
    assert tuple(am.npu_format_cast(st, 2).shape) == (2, 40, 20)


def test_format_cast_tensor_overload_takes_the_destination_format():
    w = torch.randn(16, 32)
    dst_nz = am.npu_format_cast(torch.zeros(3, 3), 29)
    out = am.npu_format_cast(w, dst_nz)        # was "Boolean value of Tensor ... ambiguous"
    assert get_format(out) == "FRACTAL_NZ" and torch.equal(out, w)
    assert am.npu_format_cast(w, torch.tensor([2, 29])) is w   # an untagged tensor is ND: nothing to do


@pytest.mark.parametrize("bad,exc,arg", [
    (dict(acl_format=29.0), TypeError, "acl_format"), (dict(acl_format=True), TypeError, "acl_format"),
    (dict(acl_format=5), ValueError, "acl_format"), (dict(storage="yes"), TypeError, "storage"),
    (dict(storage=1), TypeError, "storage"), (dict(customize_dtype="nonsense"), TypeError, "customize_dtype"),
    (dict(acl_format=2, storage=True), ValueError, "storage"),
])
def test_format_cast_wrong_arguments_name_the_argument(bad, exc, arg):
    kw = dict(acl_format=29)
    kw.update(bad)
    fmt = kw.pop("acl_format")
    with pytest.raises(exc, match=f"'{arg}'"):
        am.npu_format_cast(torch.randn(16, 32), fmt, **kw)
    with pytest.raises(TypeError, match="'weight'"):
        am.npu_format_cast([[1.0]], 29)


def test_format_cast_rank_one_falls_back_to_nd_and_other_formats_are_tags():
    v = torch.randn(16)
    assert am.npu_format_cast(v, 29) is v and get_format(v) == "ND"     # torch_npu ShouldFallbackNzToNd
    w = torch.randn(2, 3, 4, 4)
    for fid, name in ((0, "NCHW"), (3, "NC1HWC0"), (4, "FRACTAL_Z")):
        out = am.npu_format_cast(w, fid)
        assert get_format(out) == name and torch.equal(out, w) and out.data_ptr() != w.data_ptr()
        assert get_format(w) == "ND"


def test_format_cast_customize_dtype_sets_c0():
    w = torch.arange(40 * 20, dtype=torch.float32).reshape(40, 20)
    st = am.npu_format_cast(w, 29, customize_dtype=torch.float16, storage=True)
    assert tuple(st.shape) == (2, 3, 16, 16)           # C0 = 32 bytes / 2 = 16: ceil(20/16), ceil(40/16)
    for k in range(40):
        for n in range(20):
            assert st[n // 16, k // 16, k % 16, n % 16] == w[k, n]
    assert torch.equal(am.npu_format_cast(st, 2), w)


# --- 10. NZ storage round trip -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 20), (2, 40, 20), (2, 3, 40, 20), (2, 1, 3, 17, 9)])
def test_nz_storage_round_trip_any_rank(shape):
    w = torch.randn(shape)
    st = am.npu_format_cast(w, 29, storage=True)
    assert st.dim() == len(shape) + 2 and get_format(st) == "FRACTAL_NZ"
    back = am.npu_format_cast(st, 2)                    # 2-D storage came back tagged ND, unconverted
    assert get_format(back) == "ND" and back.shape == w.shape and torch.equal(back, w)


def test_tag_only_5d_nz_tensor_is_not_mistaken_for_storage():
    w = torch.randn(1, 2, 3, 4, 5)
    nz = am.npu_format_cast(w, 29)
    back = am.npu_format_cast(nz, 2)
    assert back.shape == w.shape and torch.equal(back, w)


# --- 8. check() --------------------------------------------------------------------------------------

def test_check_unknown_op_is_a_value_error_listing_the_ops():
    with pytest.raises(ValueError, match="known ops: .*npu_gmm"):
        am.check("npu_nonexistent", 1)
    with pytest.raises(KeyError):  # callers that caught KeyError still do
        am.check("npu_nonexistent", 1)


@pytest.mark.parametrize("shape,exc", [((-1, 16), ValueError), ((4, -16), ValueError), ((4, 1.5), TypeError),
                                       ((4, "16"), TypeError), ((True, 4), TypeError)])
def test_tensor_spec_rejects_bad_dims(shape, exc):
    with pytest.raises(exc, match=r"shape\["):
        am.TensorSpec(shape, "float16")


# --- 9. the CLI ----------------------------------------------------------------------------------

def _cli(capsys, *args):
    """Run the CLI in this process (``python -m ascend_moe`` calls the same ``main``): exit status,
    stdout, stderr."""
    from ascend_moe.cli import main
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse's --help and usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


BASE = {"n_routed_experts": 8, "num_experts_per_tok": 2, "hidden_size": 64, "moe_intermediate_size": 32}


@pytest.mark.parametrize("config,needle", [
    ("null", "JSON object"), ("[1, 2]", "JSON object"), ("[" * 100000 + "]" * 100000, "nested too deeply"),
    (dict(BASE, hidden_size="Infinity"), "hidden_size"), (dict(BASE, hidden_size=1e308), "hidden_size"),
    (dict(BASE, hidden_size={"a": 1}), "hidden_size"), (dict(BASE, hidden_size=-64), "hidden_size"),
    (dict(BASE, moe_intermediate_size=-32), "moe_intermediate_size"),
    (dict(BASE, routed_scaling_factor="Infinity"), "routed_scaling_factor"),
])
def test_cli_bad_config_exits_2_with_a_message(tmp_path, capsys, config, needle):
    text = config if isinstance(config, str) else json.dumps(config).replace('"Infinity"', "Infinity")
    path = tmp_path / "config.json"
    path.write_text(text)
    rc, _, err = _cli(capsys, "check", "--model", str(path))
    assert rc == 2, err
    assert needle in err


def test_cli_huge_tokens_exit_2_without_allocating(capsys):
    rc, _, err = _cli(capsys, "check", "--tokens", "1099511627776")
    assert rc == 2 and "tokens" in err


def test_cli_run_beyond_memory_budget_exits_2(capsys):
    rc, _, err = _cli(capsys, "check", "--tokens", "100000", "--run")
    assert rc == 2 and "fewer --tokens" in err


def test_cli_help_of_every_subcommand_and_option(capsys):
    rc, top, _ = _cli(capsys, "--help")
    assert rc == 0
    for cmd in ("info", "check", "rules"):
        assert cmd in top
        rc, out, _ = _cli(capsys, cmd, "--help")
        assert rc == 0
        lines = out.splitlines()
        # every option row ("  --opt ...", indented two spaces) has help text on it or on the next line
        options = 0
        for i, line in enumerate(lines):
            if line.startswith("  -") and not line.startswith("  -h"):
                options += 1
                rest = line.strip().split("  ", 1)[1].strip() if "  " in line.strip() else ""
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                assert rest or nxt.startswith("     "), f"{cmd}: {line.strip()!r} has no help"
        assert options >= 2
    rc, _, err = _cli(capsys, "info", "--product", "nonsense")
    assert rc == 2 and "unknown Atlas product" in err


def test_cli_subprocess_bad_config_has_no_traceback(tmp_path):
    """The real entry point, once: exit status 2 and a message, no traceback."""
    path = tmp_path / "config.json"
    path.write_text("null")
    r = subprocess.run([sys.executable, "-m", "ascend_moe", "check", "--model", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "JSON object" in r.stderr and "Traceback" not in r.stderr


# --- 11. contexts and thread pools --------------------------------------------------------------

def test_contexts_do_not_carry_into_pool_workers_unless_copied():
    def seen():
        return am.backends.requested_backend(), am.resolve_target().product, am.get_undefined_policy()

    with am.use_backend("sim"), am.target("atlas-a3"), am.undefined_policy("zero"):
        assert seen() == ("sim", "atlas-a3", "zero")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            plain = pool.submit(seen).result()
            carried = pool.submit(contextvars.copy_context().run, seen).result()
    assert plain == ("auto", "atlas-a2", "poison")          # documented: workers start from the defaults
    assert carried == ("sim", "atlas-a3", "zero")


# --- found by the property test (tests/fuzz) -----------------------------------------------------

@pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")  # tiny shapes: doc-only size lists
def test_property_test_findings():
    # a required tensor passed as None reached the kernels (torch's custom-op path lets it through)
    x, w = torch.randn(6, 16), torch.randn(2, 16, 4)
    with pytest.raises(TypeError, match="argument 'weight' must be a Tensor \\(it is not optional\\), got None"):
        am.npu_gmm(x, None, group_list=[2, 6])
    with pytest.raises(TypeError, match="argument 'x' must be a Tensor \\(it is not optional\\), got None"):
        sim.gmm.npu_gmm(None, w.numpy(), group_list=[2, 6])
    # npu_ffn's expert_tokens of the wrong type: "'float' object is not iterable"
    h = torch.float16
    with pytest.raises(TypeError, match="expert_tokens"):
        am.npu_ffn(torch.randn(8, 16, dtype=h), torch.randn(2, 16, 32, dtype=h), torch.randn(2, 32, 16, dtype=h),
                   "relu", expert_tokens=1.5)
    # finalize-routing's optional ints as strings: int("") ValueError naming nothing, int("1") accepted
    fr_w = am.npu_format_cast(torch.zeros(1, 32, 256, dtype=torch.int8), 29)
    for bad in ("", "1"):
        with pytest.raises(TypeError, match="'output_bs'"):
            am.npu_grouped_matmul_finalize_routing(torch.zeros(2, 32, dtype=torch.int8), fr_w, torch.tensor([2]),
                                                   scale=torch.ones(1, 256), logit=torch.ones(2),
                                                   row_index=torch.tensor([0, 1]), output_bs=bad)
    # x's k must fill the 5-D NZ storage's K1*16 rows (was "inner dims differ" from the simulator)
    st = am.npu_format_cast(torch.zeros(1, 32, 256, dtype=torch.int8), 29, storage=True)
    with pytest.raises(am.ConstraintError, match="gmmfr.k_match"):
        am.npu_grouped_matmul_finalize_routing(torch.zeros(2, 31, dtype=torch.int8), st, torch.tensor([2]),
                                               scale=torch.ones(1, 256), logit=torch.ones(2),
                                               row_index=torch.tensor([0, 1]))
    # no split with N == 0: "cannot reshape array of size 0"
    bf = torch.bfloat16
    ys = am.npu_grouped_matmul([torch.randn(3, 16, dtype=bf)], [torch.randn(16, 0, dtype=bf)], split_item=0,
                               group_type=-1)
    assert tuple(ys[0].shape) == (3, 0)
