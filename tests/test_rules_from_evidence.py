"""Calls the public device suites run (op-plugin test_custom_ops, CANN ops-transformer case tables) pass the
checker and compute; release boundaries move with ``cann=``; "not simulated" is not a device verdict; values
no rule can read raise TypeError naming the argument.

Every numeric reference here is a plain loop written in the test (float64 GEMMs, integer math)."""
import warnings

import numpy as np
import pytest

import ascend_moe
from ascend_moe import ConstraintError, ConstraintWarning, NotSimulatedError, TensorSpec
from ascend_moe.formats import set_format
from ascend_moe.model_check import Stage
from ascend_moe.products import CannVersion, UnknownCannVersionWarning, resolve_target
from ascend_moe.rules import Violation
from ascend_moe.sim import finalize_routing as sim_fr
from ascend_moe.sim import gating as sim_gating
from ascend_moe.sim import gmm as sim_gmm
from ascend_moe.sim import swiglu_quant as sim_sq

A2 = dict(product="atlas-a2", cann="9.0.1")


def ids(vs, severity=None):
    return {v.rule_id for v in vs if severity is None or v.severity == severity}


def transposed(a):
    """a [M, K] as the transposed view of a contiguous [K, M] array (what K split needs)."""
    return np.ascontiguousarray(a.T).T


# ------------------------------------------------------------------------------------------------
# grouped matmul, K split with one x and several weights (CANN's split-K case table form)
# ------------------------------------------------------------------------------------------------

def k_split_reference(x, weights):
    out, off = [], 0
    for w in weights:
        k = w.shape[0]
        acc = np.zeros((x.shape[0], w.shape[1]), np.float64)
        for kk in range(k):                                  # plain loop over K in float64
            acc += np.outer(x[:, off + kk].astype(np.float64), w[kk].astype(np.float64))
        out.append(acc)
        off += k
    return out


@pytest.mark.parametrize("split_item", [0, 1])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_k_split_weight_list_passes_and_computes(split_item, dtype):
    rng = np.random.default_rng(split_item)
    M, ks, ns = 5, [3, 0, 7, 4], [6, 2, 5, 3]
    K = sum(ks) + 2                                          # total weight K < x's K: allowed
    x = transposed(rng.standard_normal((M, K)).astype(dtype))
    ws = [rng.standard_normal((k, n)).astype(dtype) for k, n in zip(ks, ns)]
    kw = dict(split_item=split_item, group_type=2)
    for product in ("atlas-a2", "atlas-a3"):
        assert [v for v in ascend_moe.check("npu_grouped_matmul", [x], ws, product=product, cann="9.0.1", **kw)
                if v.severity != "warning"] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)   # fp32 lists: the 9.0.1 docs' single-tensor note
        with ascend_moe.target(**A2):
            ys = sim_gmm.npu_grouped_matmul([x], ws, **kw)
    want = k_split_reference(x, ws)
    assert len(ys) == len(ws)
    for y, r, n in zip(ys, want, ns):
        assert y.shape == (M, n) and y.dtype == np.dtype(dtype)
        if dtype == "float32":
            np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5)
        else:   # fp32 accumulation, one rounding: within one fp16 ulp of the exact result
            ulp = np.spacing(np.abs(r).astype(np.float16)).astype(np.float64)
            assert np.all(np.abs(y.astype(np.float64) - r) <= ulp + 1e-7)


def test_k_split_weight_list_limits():
    x = transposed(np.ones((4, 8), np.float16))
    ws = [np.ones((5, 3), np.float16), np.ones((4, 3), np.float16)]        # 9 > 8: reads past x
    vs = ascend_moe.check("npu_grouped_matmul", [x], ws, split_item=0, group_type=2, **A2)
    v = next(v for v in vs if v.rule_id == "gmm.k_split_total")
    assert v.status is None and v.kind == "kernel" and "does not check" in v.message
    ws = [np.ones((5, 3), np.float16), np.ones((3, 3), np.float16)]
    # a group list that contradicts the weights' K, or one y for several weights: not simulated
    for kw in (dict(split_item=0, group_list=np.array([4, 8])), dict(split_item=3)):
        vs = ascend_moe.check("npu_grouped_matmul", [x], ws, group_type=2, **A2, **kw)
        assert ids(vs, "error") == set() and ids(vs, "not-simulated") == {"gmm.k_split_forms"}
        with pytest.raises(NotSimulatedError) as ei, ascend_moe.target(**A2):
            sim_gmm.npu_grouped_matmul([x], ws, group_type=2, **kw)
        assert not isinstance(ei.value, ConstraintError) and "161002" not in str(ei.value)
    # a matching group list is fine
    vs = ascend_moe.check("npu_grouped_matmul", [x], ws, split_item=1, group_type=2, group_list=np.array([5, 8]),
                          **A2)
    assert ids(vs) == set()


def test_k_split_single_weight_still_needs_its_group_list():
    x = transposed(np.ones((4, 8), np.float16))
    vs = ascend_moe.check("npu_grouped_matmul", [x], [np.ones((8, 3), np.float16)], split_item=3, group_type=2,
                          **A2)
    assert "gmm.group_list_required" in ids(vs, "error")


# ------------------------------------------------------------------------------------------------
# fp32: the host rejects it only on V1; the docs' single-tensor note is a versioned warning
# ------------------------------------------------------------------------------------------------

def test_fp32_lists_are_a_doc_warning_until_9_1_and_v1_is_a_host_error():
    x = [np.ones((6, 4), np.float32)]
    ws = [np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)]
    gl = np.array([2, 6])
    kw = dict(group_list=gl, split_item=2, group_type=0)
    vs = ascend_moe.check("npu_grouped_matmul", x, ws, **kw, **A2)
    assert ids(vs, "error") == set() and ids(vs, "warning") == {"gmm.fp32_single_doc"}
    assert ids(ascend_moe.check("npu_grouped_matmul", x, ws, **kw, product="atlas-a2", cann="9.1.0")) == set()
    # the List[int] overload goes to aclnnGroupedMatmul (V1), whose host check rejects fp32 on A2/A3
    vs = ascend_moe.check("npu_grouped_matmul", x, ws, group_list=[2, 6], split_item=2, group_type=0, **A2)
    v = next(v for v in vs if v.rule_id == "gmm.fp32_v1")
    assert v.status == 161002 and "CheckFunctionParams" in v.source


# ------------------------------------------------------------------------------------------------
# group_type without a group list (op-plugin 7.1.0), split_item 1 with weights of different N
# ------------------------------------------------------------------------------------------------

def test_group_type_required_without_group_list_from_torch_npu_7_1():
    x = [np.ones((2, 4), np.float16)]
    w = [np.ones((4, 3), np.float16)]
    assert "gmm.group_type_required" in ids(ascend_moe.check("npu_grouped_matmul", x, w, product="atlas-a2",
                                                             cann="8.2.RC1"))
    assert "gmm.group_type_required" not in ids(ascend_moe.check("npu_grouped_matmul", x, w, product="atlas-a2",
                                                                 cann="8.1.RC1"))
    assert ids(ascend_moe.check("npu_grouped_matmul", x, w, group_type=-1, product="atlas-a2", cann="8.2.RC1")) \
        == set()


def test_split_item_1_gives_each_output_its_weights_n():
    rng = np.random.default_rng(3)
    # small integers: every product and sum is exact in fp16, so the loop reference is exact too
    x = rng.integers(-3, 4, (7, 4)).astype(np.float16)
    ws = [rng.integers(-3, 4, (4, n)).astype(np.float16) for n in (3, 5, 2)]
    gl = [2, 2, 7]                                           # List[int]: the V1 path takes a y list
    with ascend_moe.target(**A2):
        ys = sim_gmm.npu_grouped_matmul([x], ws, group_list=gl, split_item=1, group_type=0)
    starts = [0, 2, 2]
    for y, w, s, t in zip(ys, ws, starts, gl):
        ref = np.zeros((t - s, w.shape[1]))
        for r in range(s, t):
            for c in range(w.shape[1]):
                ref[r - s, c] = sum(float(x[r, k]) * float(w[k, c]) for k in range(4))
        assert y.shape == ref.shape
        np.testing.assert_array_equal(y.astype(np.float64), ref)
    # the Tensor group list path rejects this form in the host (CheckCaseSplitM)
    vs = ascend_moe.check("npu_grouped_matmul", [x], ws, group_list=np.array(gl), split_item=1, group_type=0, **A2)
    assert "gmm.m_split_y_list_tensor" in ids(vs, "error")


def test_output_dtype_and_total_messages_say_what_happens():
    # quantised calls: the output dtype is not judged by the non-quantised rule (no claimed 161002); the
    # quantised rule set (gmmq.) judges them: A8W8 with float16 output and its float32 scale is a valid call,
    # without the scale it is rejected by that rule set, with no aclnn status claimed
    quant = dict(group_list=np.array([2, 4]), split_item=3, group_type=0, output_dtype=5, **A2)
    x8, w8 = [np.ones((4, 8), np.int8)], [np.ones((2, 8, 4), np.int8)]
    assert ascend_moe.check("npu_grouped_matmul", x8, w8, scale=[np.ones((2, 4), np.float32)], **quant) == []
    vs = ascend_moe.check("npu_grouped_matmul", x8, w8, **quant)
    assert "gmm.output_dtype" not in ids(vs)
    assert ids(vs) == {"gmmq.a8w8_scale"} and all(v.status is None for v in vs)
    vs = ascend_moe.check("npu_grouped_matmul", [np.ones((4, 8), np.float16)], [np.ones((2, 8, 4), np.float16)],
                          group_list=np.array([2, 9]), split_item=3, group_type=0, **A2)
    v = next(v for v in vs if v.rule_id == "gmm.total_tensor")
    assert v.status is None and "does not check" in v.message and "161002" not in str(v)


# ------------------------------------------------------------------------------------------------
# finalize routing without logit / shared_input (CheckSupportScene's second scene)
# ------------------------------------------------------------------------------------------------

def test_finalize_routing_second_scene_passes_and_computes():
    rng = np.random.default_rng(0)
    M, K, N, E, B = 12, 32, 256, 3, 5
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (E, K, N)).astype(np.int8)
    set_format(w, "FRACTAL_NZ")
    scale = (rng.random((E, N)) * 1e-3).astype(np.float32)
    pt = (rng.random(M) * 1e-2).astype(np.float32)
    gl = np.array([4, 5, 3], np.int64)
    rows = rng.integers(0, B, M).astype(np.int64)
    kw = dict(scale=scale, pertoken_scale=pt, row_index=rows, output_bs=B)
    for cann in ("8.2.RC1", "9.0.1"):                        # WeightNz and WeightNzV2
        vs = ascend_moe.check("npu_grouped_matmul_finalize_routing", x, w, gl, product="atlas-a2", cann=cann, **kw)
        assert ids(vs, "error") == set(), vs
    # the V3 (ND weight) entry point still requires logit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstraintWarning)
        vs = ascend_moe.check("npu_grouped_matmul_finalize_routing", x, np.zeros((E, K, N // 8), np.int32), gl,
                              bias=np.zeros((E, N), np.float32), **dict(kw, scale=np.zeros((E, 1, N), np.int64)),
                              **A2)
    assert "gmmfr.required_inputs" in ids(vs, "error")
    with warnings.catch_warnings(), ascend_moe.target(**A2):
        warnings.simplefilter("ignore", ConstraintWarning)
        y = sim_fr.npu_grouped_matmul_finalize_routing(x, w, gl, **kw)
    ref = np.zeros((B, N), np.float64)
    start = 0
    for e, cnt in enumerate(gl):
        for r in range(start, start + cnt):
            acc = x[r].astype(np.int64) @ w[e].astype(np.int64)          # exact integer GEMM
            ref[rows[r]] += np.float32(acc.astype(np.float32) * scale[e]) * np.float64(pt[r])
        start += cnt
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# swiglu-quant: v2 per-expert lists, dequant_dtype, A4W4, v1 host warnings
# ------------------------------------------------------------------------------------------------

def _swiglu_a8w8_reference(x, w, ws, xs, gl):
    """v2 A8W8 of the stacked [E, K, N] weight: the independent loop reference of tests/test_swiglu_quant.py."""
    from test_swiglu_quant import ref_a8w8
    return ref_a8w8(x, w, ws, xs, gl, 0, "v2")


def test_swiglu_quant_v2_per_expert_lists_pass_and_compute():
    rng = np.random.default_rng(1)
    E, M, K, N = 3, 20, 32, 64
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (E, K, N)).astype(np.int8)
    ws = (rng.standard_normal((E, N)) * 1e-3).astype(np.float32)
    xs = (rng.random(M) * 1e-2).astype(np.float32)
    gl = np.array([6, 13, 20], np.int64)
    w_list = [np.array(w[e]) for e in range(E)]
    for t in w_list:
        set_format(t, "FRACTAL_NZ")
    s_list = [np.array(ws[e]) for e in range(E)]
    for dequant_dtype in (0, 5, 28):                         # the doc's own A2/A3 example values
        vs = ascend_moe.check("npu_grouped_matmul_swiglu_quant_v2", x, w_list, s_list, xs, gl,
                              dequant_dtype=dequant_dtype, **A2)
        assert vs == [], vs
    with ascend_moe.target(**A2):
        got = sim_sq.npu_grouped_matmul_swiglu_quant_v2(x, w_list, s_list, xs, gl, dequant_dtype=28)
    want = _swiglu_a8w8_reference(x, w, ws, xs, gl)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1].view(np.int32), want[1].view(np.int32))
    # lists of different lengths: not simulated (no device verdict)
    vs = ascend_moe.check("npu_grouped_matmul_swiglu_quant_v2", x, w_list, s_list[:2], xs, gl, **A2)
    assert ids(vs, "not-simulated") >= {"gmmsq_v2.expert_lists"}


def test_swiglu_quant_v2_a4w4_is_not_simulated_not_rejected():
    vs = ascend_moe.check("npu_grouped_matmul_swiglu_quant_v2", TensorSpec((8, 64), "int32"),
                          [TensorSpec((2, 64, 8), "int32")], [TensorSpec((2, 64), "float32")],
                          TensorSpec((8,), "float32"), TensorSpec((2,), "int64"),
                          weight_assist_matrix=[TensorSpec((2, 64), "float32")], **A2)
    assert "gmmsq_v2.a4w4" in ids(vs, "not-simulated")
    assert not any(v.argument == "x" and v.severity == "error" for v in vs)


def test_swiglu_quant_v1_a8w8_bias_and_offset_are_host_warnings():
    x = TensorSpec((8, 32), "int8")
    w = TensorSpec((2, 32, 64), "int8", "FRACTAL_NZ")
    args = (x, w, TensorSpec((2,), "int64", values=np.array([3, 8])), TensorSpec((2, 64), "float32"),
            TensorSpec((8,), "float32"))
    vs = ascend_moe.check("npu_grouped_matmul_swiglu_quant", *args, bias=TensorSpec((2, 64), "float32"),
                          offset=TensorSpec((2, 64), "float32"), **A2)
    assert ids(vs) == {"gmmsq.assist_a8w8", "gmmsq.offset"}
    assert all(v.severity == "warning" and v.status is None for v in vs)
    assert all("CheckNotNull" in v.source for v in vs)


# ------------------------------------------------------------------------------------------------
# release boundaries
# ------------------------------------------------------------------------------------------------

def test_softmax_divide_hash_and_softplus_first_ship_in_9_1_0():
    from ascend_moe.ops.gating import semantics as gating_semantics
    assert not gating_semantics("9.0.1").softmax_divide
    assert not gating_semantics("9.0.0").softmax_divide
    assert gating_semantics("9.1.0").softmax_divide
    x = TensorSpec((4, 16), "float32")
    hash_kw = dict(input_ids=TensorSpec((4,), "int64"), tid2eid=TensorSpec((32, 2), "int64"))
    for cann, blocked in (("9.0.1", True), ("9.1.0", False)):
        vs = ascend_moe.check("npu_moe_gating_top_k", x, 2, product="atlas-a2", cann=cann, **hash_kw)
        assert ("gating.hash.since" in ids(vs, "error")) == blocked
        vs = ascend_moe.check("npu_moe_gating_top_k", x, 2, norm_type=2, product="ascend-950", cann=cann)
        assert ("gating.norm_type.range" in ids(vs, "error")) == blocked


def test_group_size_warning_follows_group_select_mode():
    x = TensorSpec((4, 16), "float32")
    # 2 experts per group with group_select_mode 1: above the mode's minimum (> 1), no warning
    vs = ascend_moe.check("npu_moe_gating_top_k", x, 2, k_group=4, group_count=8, group_select_mode=1,
                          product="atlas-a2", cann="9.0.1")
    assert not any(v.rule_id.startswith("gating.docs.group_size") for v in vs)


def test_unknown_cann_version_warns_which_release_it_is_treated_as():
    with pytest.warns(UnknownCannVersionWarning, match=r"10\.2\.0.*checked as CANN 9\.1\.0"):
        t = resolve_target(cann="10.2.0")
    assert t.cann == CannVersion("10.2.0")
    with pytest.warns(UnknownCannVersionWarning, match=r"8\.4\.0.*checked as CANN 8\.3\.RC1"):
        resolve_target(cann="8.4.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownCannVersionWarning)
        resolve_target(cann="9.0.1")


# ------------------------------------------------------------------------------------------------
# "not simulated" is its own outcome; check --model shows it, not FAIL
# ------------------------------------------------------------------------------------------------

def test_not_simulated_is_not_a_device_rejection():
    assert not issubclass(NotSimulatedError, ConstraintError)
    with pytest.raises(NotSimulatedError) as ei, ascend_moe.target(**A2):
        sim_gmm.npu_grouped_matmul([np.ones((2, 4), np.float16)], [np.ones((2, 4, 3), np.float16)],
                                   group_list=np.array([1, 2]), split_item=3, group_type=0,
                                   scale=[np.ones((2, 3), np.float32)])
    text = str(ei.value)
    assert "not simulated" in text and "aclnn status" not in text and "run it on" not in text
    v = Violation("gmm.quant_arg.scale", "npu_grouped_matmul", "scale", "not simulated", "atlas-a2", "9.0.1",
                  "all CANN versions", "scope", "fix", None, "not-simulated", "sim")
    stage = Stage("up-projection", "npu_grouped_matmul", violations=[v])
    assert stage.verdict == "not simulated" and stage.passed


# ------------------------------------------------------------------------------------------------
# values no rule can read: TypeError naming the argument, never an internal error
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,args,kwargs,argname", [
    ("npu_moe_gating_top_k", (np.zeros((4, 8), np.complex64), 2), {}, "x"),
    ("npu_gmm", (np.zeros((4, 8), np.complex128), np.zeros((2, 8, 4), np.complex128)),
     dict(group_list=[2, 4]), "x"),
    ("npu_ffn", (np.zeros((4, 8), np.complex64), np.zeros((8, 16), np.float16), np.zeros((16, 8), np.float16),
                 "relu"), {}, "x"),
    ("npu_grouped_matmul", ([np.zeros((4, 8), np.float16)], [np.zeros((2, 8, 4), np.float16)]),
     dict(group_list=np.array([2, 4]), group_type=float("nan"), split_item=3), "group_type"),
    ("npu_grouped_matmul_finalize_routing", (np.zeros((4, 8), np.int8), np.zeros((1, 8, 256), np.int8),
                                             np.array([4])), dict(output_bs="abc"), "output_bs"),
    ("npu_grouped_matmul_finalize_routing", (np.zeros((4, 8), np.int8), np.zeros((1, 8, 256), np.int8),
                                             np.array([4])), dict(output_bs=TensorSpec((2,), "int64")), "output_bs"),
    ("npu_grouped_matmul_swiglu_quant", (np.zeros((4, 8), np.complex64), TensorSpec((1, 8, 64), "int8"),
                                         np.array([4]), np.zeros((1, 64), np.float32), np.zeros(4, np.float32)),
     {}, "x"),
])
def test_unreadable_values_raise_type_error_naming_the_argument(op, args, kwargs, argname):
    with pytest.raises(TypeError, match=rf"argument '{argname}'"):
        ascend_moe.check(op, *args, **A2, **kwargs)


def test_swiglu_quant_v2_per_expert_lists_through_the_torch_op():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    E, M, K, N = 2, 9, 32, 64
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (E, K, N)).astype(np.int8)
    ws = (rng.standard_normal((E, N)) * 1e-3).astype(np.float32)
    xs = (rng.random(M) * 1e-2).astype(np.float32)
    gl = np.array([4, 9], np.int64)
    w_list = [ascend_moe.npu_format_cast(torch.from_numpy(np.array(w[e])), 29) for e in range(E)]
    with ascend_moe.target(**A2):
        out, scale = ascend_moe.npu_grouped_matmul_swiglu_quant_v2(
            torch.from_numpy(x), w_list, [torch.from_numpy(np.array(ws[e])) for e in range(E)],
            torch.from_numpy(xs), torch.from_numpy(gl))
    want = _swiglu_a8w8_reference(x, w, ws, xs, gl)
    np.testing.assert_array_equal(out.numpy(), want[0])
    np.testing.assert_array_equal(scale.numpy().view(np.int32), want[1].view(np.int32))


def test_check_model_reports_not_simulated_stages(capsys):
    from ascend_moe import cli
    import json
    code = cli.main(["check", "--model", "deepseek-v3", "--product", "ascend-950", "--cann", "9.1.0", "--quant",
                     "w8a8", "--json"])
    rep = json.loads(capsys.readouterr().out)
    # the 950's routing, dynamic-quant and quantised GEMM kernels exist on the device but are not modelled
    unsimulated = [s for s in rep["stages"] if s["verdict"] == "not simulated"]
    assert {s["op"] for s in unsimulated} >= {"npu_moe_init_routing_v2", "npu_dynamic_quant", "npu_grouped_matmul",
                                              "npu_moe_token_unpermute"}
    for st in unsimulated:
        assert st["passed"]
        assert all(v["severity"] == "not-simulated" and v["status"] is None for v in st["violations"])
    assert code == (0 if rep["passed"] else 1)
