"""ascend_moe.model_check: config reading, the deployment mapping (which calls, which arguments),
and --run's layer against an independent NumPy fp32 computation."""
from __future__ import annotations

import io
import json

import ml_dtypes
import numpy as np
import pytest

from ascend_moe import TensorSpec
from ascend_moe import model_check as mc

TINY = {  # DeepSeek-V3 structure at toy size (sizes chosen to meet the A8W8/A8W4 host rules)
    "model_type": "deepseek_v3", "hidden_size": 256, "moe_intermediate_size": 192,
    "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4,
    "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
    "routed_scaling_factor": 2.5, "hidden_act": "silu",
}


def by_op(stages, op):
    return [s for s in stages if s.op == op]


# ------------------------------------------------------------------ configs --------------------

def test_presets_name_their_public_source():
    names = mc.list_presets()
    assert {"deepseek-v3", "qwen3-moe-30b-a3b", "mixtral-8x7b"} <= set(names)
    for name in names:
        cfg = mc.load_model(name)
        assert cfg.source.startswith("https://huggingface.co/"), name


def test_preset_fields():
    ds = mc.load_model("deepseek-v3")
    assert (ds.num_experts, ds.top_k, ds.n_group, ds.topk_group) == (256, 8, 8, 4)
    assert (ds.hidden_size, ds.moe_intermediate_size, ds.shared_intermediate_size) == (7168, 2048, 2048)
    assert ds.scoring_func == "sigmoid" and ds.has_bias and ds.norm_topk_prob
    assert ds.routed_scaling_factor == 2.5
    qw = mc.load_model("qwen3-moe-30b-a3b")
    assert (qw.num_experts, qw.top_k, qw.hidden_size, qw.moe_intermediate_size) == (128, 8, 2048, 768)
    assert qw.scoring_func == "softmax" and not qw.has_bias and qw.norm_topk_prob
    assert qw.shared_intermediate_size == 0
    mx = mc.load_model("mixtral-8x7b")
    assert (mx.num_experts, mx.top_k, mx.moe_intermediate_size) == (8, 2, 14336)
    assert mx.norm_topk_prob          # Mixtral renormalises its top-2 without a config field


def test_hf_config_variants(tmp_path):
    p = tmp_path / "m" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(TINY))
    assert mc.load_model(str(p)).num_experts == 16
    assert mc.load_model(str(p.parent)).num_experts == 16       # a model directory
    assert mc.load_model(dict(TINY)).top_k == 4
    qwen2 = {"model_type": "qwen2_moe", "hidden_size": 2048, "moe_intermediate_size": 1408,
             "num_experts": 60, "num_experts_per_tok": 4, "shared_expert_intermediate_size": 5632}
    assert mc.load_model(qwen2).shared_intermediate_size == 5632
    with pytest.raises(mc.ModelConfigError, match="no MoE block"):
        mc.load_model({"hidden_size": 8})
    with pytest.raises(mc.ModelConfigError, match="scoring_func"):
        mc.load_model(dict(TINY, scoring_func="sqrtsoftplus"))
    with pytest.raises(mc.ModelConfigError, match="unknown model"):
        mc.load_model("deepseek-v9")


# ------------------------------------------------------------------ the mapping ----------------

def test_gating_call_for_deepseek_v3():
    st = mc.plan_layer(mc.load_model("deepseek-v3"), tokens=4)
    (g,) = by_op(st, "npu_moe_gating_top_k")
    assert g.args[0] == TensorSpec((4, 256), "bfloat16") and g.args[1] == 8
    assert g.kwargs["bias"] == TensorSpec((256,), "bfloat16")
    assert {k: g.kwargs[k] for k in ("k_group", "group_count", "group_select_mode", "renorm", "norm_type",
                                     "out_flag", "routed_scaling_factor")} == dict(
        k_group=4, group_count=8, group_select_mode=1, renorm=0, norm_type=1, out_flag=False,
        routed_scaling_factor=2.5)


def test_softmax_renorm_mapping():
    qw = mc.load_model("qwen3-moe-30b-a3b")
    (g,) = by_op(mc.plan_layer(qw), "npu_moe_gating_top_k")
    assert g.kwargs["norm_type"] == 0 and g.kwargs["renorm"] == 1 and g.kwargs["bias"] is None
    assert g.kwargs["group_select_mode"] == 0 and g.kwargs["group_count"] == 1
    st = mc.plan_layer(qw, host_renorm=True)
    assert by_op(st, "npu_moe_gating_top_k")[0].kwargs["renorm"] == 0
    assert [s.name for s in st][:2] == ["gating", "renormalise"]


def test_sigmoid_without_renorm_cannot_be_expressed():
    rep = mc.check_model(dict(TINY, norm_topk_prob=False), "atlas-a2", "8.5.0")
    g = by_op(rep.stages, "npu_moe_gating_top_k")[0]
    assert [v.rule_id for v in g.errors] == ["model.sigmoid_without_renorm"]
    assert not rep.passed


def test_unquantised_expert_calls():
    st = mc.plan_layer(mc.load_model("deepseek-v3"), tokens=4)
    up, down = by_op(st, "npu_grouped_matmul")
    M = 4 * 8
    assert up.args == ([TensorSpec((M, 7168), "bfloat16")], [TensorSpec((256, 7168, 4096), "bfloat16")])
    assert down.args == ([TensorSpec((M, 2048), "bfloat16")], [TensorSpec((256, 2048, 7168), "bfloat16")])
    for call in (up, down):
        gl = call.kwargs["group_list"]
        assert gl.shape == (256,) and gl.dtype == "int64" and int(gl.values.sum()) == M
        assert (call.kwargs["group_type"], call.kwargs["group_list_type"], call.kwargs["split_item"]) == (0, 1, 2)
    assert [s.name for s in st if s.op is None] == ["shared expert"]
    (act,) = by_op(st, "npu_swiglu")
    assert act.args == (TensorSpec((M, 4096), "bfloat16"),)
    (disp,) = by_op(st, "npu_moe_init_routing_v2")
    assert disp.name == "dispatch"
    assert disp.args == (TensorSpec((4, 7168), "bfloat16"), TensorSpec((4, 8), "int32"))
    assert disp.kwargs == dict(active_num=M, expert_num=256, expert_tokens_num_type=1, expert_tokens_num_flag=True)
    (comb,) = by_op(st, "npu_moe_token_unpermute")
    assert comb.name == "combine"
    assert comb.args == (TensorSpec((M, 7168), "bfloat16"), TensorSpec((M,), "int32"))
    assert comb.kwargs == dict(probs=TensorSpec((4, 8), "bfloat16"))


@pytest.mark.parametrize("model", ["deepseek-v3", "qwen3-moe-30b-a3b", "qwen3-moe-235b-a22b", "mixtral-8x7b",
                                   "kimi-k2"])
@pytest.mark.parametrize("quant", ["none", "w8a8"])
def test_dispatch_and_combine_are_checked_with_a_verdict(model, quant):
    rep = mc.check_model(model, "atlas-a2", "9.0.0", quant=quant)
    names = {s.name: s for s in rep.stages}
    assert names["dispatch"].checked and names["dispatch"].verdict.startswith("PASS"), names["dispatch"].violations
    combine = names["combine"]
    assert combine.checked and combine.verdict.startswith("PASS"), combine.violations


def test_w8a8_calls():
    st = mc.plan_layer(mc.load_model("deepseek-v3"), quant="w8a8", tokens=3)
    M, T = 24, 3
    (sq,) = by_op(st, "npu_grouped_matmul_swiglu_quant")
    x, w, gl, ws, xs = sq.args
    assert x == TensorSpec((M, 7168), "int8") and w == TensorSpec((256, 7168, 4096), "int8", "FRACTAL_NZ")
    assert ws == TensorSpec((256, 4096), "float32") and xs == TensorSpec((M,), "float32")
    assert np.all(np.diff(gl.values) >= 0) and gl.values[-1] == M          # cumsum
    (dq,) = by_op(st, "npu_dynamic_quant")
    assert dq.args == (TensorSpec((M, 7168), "bfloat16"),)
    (down,) = by_op(st, "npu_grouped_matmul")
    (x2,), (w2,) = down.args
    assert x2 == TensorSpec((M, 2048), "int8") and w2 == TensorSpec((256, 2048, 7168), "int8", "FRACTAL_NZ")
    assert down.kwargs["scale"] == [TensorSpec((256, 7168), "bfloat16")]
    assert down.kwargs["per_token_scale"] == [TensorSpec((M,), "float32")] and down.kwargs["bias"] is None
    assert down.kwargs["group_list"].values.sum() == M and down.kwargs["group_list_type"] == 1   # counts
    assert (down.kwargs["split_item"], down.kwargs["group_type"], down.kwargs["output_dtype"]) == (2, 0, 15)
    assert [s.name for s in st if s.op is None] == ["shared expert"]
    assert [s.op for s in st if s.name in ("dispatch", "combine")] == ["npu_moe_init_routing_v2",
                                                                        "npu_moe_token_unpermute"]
    assert not any(s.op == "npu_grouped_matmul_finalize_routing" for s in st)


def test_w4a8_calls():
    st = mc.plan_layer(mc.load_model("deepseek-v3"), quant="w4a8", tokens=2)
    (sq,) = by_op(st, "npu_grouped_matmul_swiglu_quant")
    assert sq.args[1] == TensorSpec((256, 7168, 4096 // 8), "int32")
    assert sq.args[3] == TensorSpec((256, 4096), "int64")
    assert sq.kwargs["bias"] == TensorSpec((256, 4096), "float32")
    (down,) = by_op(st, "npu_grouped_matmul")
    assert down.args[1] == [TensorSpec((256, 2048, 7168 // 8), "int32")]
    assert down.kwargs["scale"] == [TensorSpec((256, 7168), "int64")]
    assert down.kwargs["bias"] == [TensorSpec((256, 7168), "float32")]
    with pytest.raises(mc.ModelConfigError, match="multiple of 8"):
        mc.plan_layer(mc.load_model(dict(TINY, moe_intermediate_size=190)), quant="w4a8")


def test_expert_parallel_local_experts():
    st = mc.plan_layer(mc.load_model("deepseek-v3"), tokens=4, ep=32)
    assert not by_op(st, "npu_moe_init_routing_v2") and not by_op(st, "npu_moe_token_unpermute")
    up = by_op(st, "npu_grouped_matmul")[0]
    assert up.args[1][0].shape == (8, 7168, 4096) and up.kwargs["group_list"].values.sum() == 32
    assert by_op(st, "npu_moe_gating_top_k")[0].args[0].shape == (4, 256)   # gating sees all experts
    with pytest.raises(ValueError, match="must divide"):
        mc.plan_layer(mc.load_model("deepseek-v3"), ep=3)


def test_report_text_lists_violations_with_fixes():
    rep = mc.check_model("qwen3-moe-30b-a3b", "atlas-a2", "8.2.RC1")
    text = mc.format_report(rep)
    assert not rep.passed and "verdict  FAIL" in text
    g = by_op(rep.stages, "npu_moe_gating_top_k")[0]
    for v in g.errors:
        assert f"[{v.rule_id}] argument '{v.argument}'" in text
    assert text.count("fix:") >= len(g.errors)


# ------------------------------------------------------------------ --run ----------------------

def bf16(a):
    return np.asarray(a, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def swiglu_mlp(x, w13, w2):
    h = x @ w13
    n = h.shape[1] // 2
    g = h[:, :n]
    return (g / (1 + np.exp(-g)) * h[:, n:]) @ w2


def reference_output(res, cfg, w13, w2):
    """Every expert shares one weight in --run, so out[t] = (sum_j weight_tj) * mlp(x_t) + shared(x_t)."""
    inp = res["inputs"]
    x = np.asarray(inp["x"], dtype=np.float32)
    routed = swiglu_mlp(x, w13, w2) * res["routing_weights"].sum(-1, keepdims=True)
    shared = swiglu_mlp(x, np.asarray(inp["shared_w13"], np.float32), np.asarray(inp["shared_w2"], np.float32))
    return routed + shared


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float32) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("quant", ["none", "w8a8", "w4a8"])
def test_run_layer_matches_an_independent_computation(quant):
    rep = mc.check_model(dict(TINY), "atlas-a2", "8.5.0", quant=quant, tokens=6)
    assert rep.passed, mc.format_report(rep)
    stream = io.StringIO()
    res = mc.run_layer(rep, seed=1, progress=mc.Progress(1 + len(rep.stages), stream))
    out = np.asarray(res["output"]).astype(np.float32)
    assert out.shape == (6, 256) and np.isfinite(out).all()
    # every stage timed, one progress line each
    assert all(s.seconds is not None for s in rep.stages)
    assert len(stream.getvalue().splitlines()) == 1 + len(rep.stages)
    # routing weights: sigmoid always renormalised, times routed_scaling_factor (bf16 y)
    np.testing.assert_allclose(res["routing_weights"].sum(-1), 2.5, rtol=2 ** -7)
    inp = res["inputs"]
    if quant == "none":
        # bf16 weights, bf16 roundings after each GEMM / the SwiGLU / the output: <= 1e-2 (see the
        # example's test for the derivation)
        ref = reference_output(res, rep.config, bf16(inp["w13"]), bf16(inp["w2"]))
        assert rel(out, ref) < 1e-2          # measured 0.4%
    else:
        # against the dequantised weights: what remains is the int8 quantisation of x and of the
        # SwiGLU output per token (~1% each), fp16 partials / FP19 scales (A8W4, < 0.1%), bf16 output
        w13 = inp["q13"].astype(np.float32) * inp["s13"]
        w2 = inp["q2"].astype(np.float32) * inp["s2"]
        ref = reference_output(res, rep.config, w13, w2)
        assert rel(out, ref) < 4e-2          # measured 1.5% (w8a8) / 1.4% (w4a8)


def test_run_refuses_a_rejected_plan_and_an_oversized_w4a8_run():
    rep = mc.check_model("qwen3-moe-30b-a3b", "atlas-a2", "8.5.0")
    with pytest.raises(RuntimeError, match="every call to pass"):
        mc.run_report(rep)
    rep = mc.check_model(dict(TINY), "atlas-a2", "8.5.0", quant="w4a8", tokens=2)
    with pytest.raises(MemoryError, match="fewer --tokens"):
        mc.run_layer(rep, memory_budget=1e3)


def test_expert_parallel_uses_the_mc2_dispatch_and_combine():
    """ep > 1: vllm-ascend's MC2 path, rank 0's calls; the combine takes the dispatch's outputs with op-plugin's
    sizes (written out here from MoeDistributeDispatchV2KernelOpApi.cpp: A = global_bs * min(E_l, k))."""
    T, E, k, H, ep = 4, 256, 8, 7168, 32
    st = mc.plan_layer(mc.load_model("deepseek-v3"), tokens=T, ep=ep)
    names = [s.name for s in st]
    assert names.index("ep dispatch") == 1 and names[-1] == "ep combine"
    d = by_op(st, "npu_moe_distribute_dispatch_v2")[0]
    assert d.args[0] == TensorSpec((T, H), "bfloat16") and d.args[1] == TensorSpec((T, k), "int32")
    assert d.args[3:] == (ep, 0, E)
    assert d.kwargs["global_bs"] == T * ep and d.kwargs["quant_mode"] == 0
    assert d.kwargs["expert_scales"] == TensorSpec((T, k), "float32")
    c = by_op(st, "npu_moe_distribute_combine_v2")[0]
    a_rows = T * ep * min(E // ep, k)
    assert c.args[0] == TensorSpec((a_rows, H), "bfloat16")
    assert c.args[2] == TensorSpec((max(T * k, a_rows * 128),), "int32")              # assist_info_for_combine
    assert c.args[3] == TensorSpec((ep * (E // ep) + 2 * T * ep * k * (ep // 8),), "int32")   # ep_recv_counts
    assert c.args[5] == d.args[2] and c.args[6:] == (ep, 0, E)
    assert c.kwargs["expand_scales"] == TensorSpec((a_rows,), "float32")
    # quantised experts: the dispatch quantises (quant_mode 2), so there is no separate npu_dynamic_quant
    q = mc.plan_layer(mc.load_model("deepseek-v3"), tokens=T, ep=ep, quant="w8a8")
    assert by_op(q, "npu_moe_distribute_dispatch_v2")[0].kwargs["quant_mode"] == 2
    assert not by_op(q, "npu_dynamic_quant")
    rep = mc.check_model("deepseek-v3", "atlas-a3", "8.5.0", tokens=T, ep=ep)
    assert rep.passed and {s.op for s in rep.checked} >= {"npu_moe_distribute_dispatch_v2",
                                                          "npu_moe_distribute_combine_v2"}


def test_expert_parallel_stages_are_checked_by_the_distribute_rules(monkeypatch):
    # the A2 docs limit an MC2 dispatch to 256 tokens per rank: a doc-level warning on the MC2 stage itself,
    # an error under ASCEND_MOE_STRICT_DOCS=1
    rep = mc.check_model("deepseek-v3", "atlas-a2", "8.5.0", tokens=300, ep=8)
    stage = next(s for s in rep.stages if s.op == "npu_moe_distribute_dispatch_v2")
    assert stage.passed and [v.rule_id for v in stage.warnings] == ["dispatch_v2.bs.range"]
    assert "300" in stage.warnings[0].message
    monkeypatch.setenv("ASCEND_MOE_STRICT_DOCS", "1")
    rep = mc.check_model("deepseek-v3", "atlas-a2", "8.5.0", tokens=300, ep=8)
    failed = [s.op for s in rep.checked if not s.passed]
    assert "npu_moe_distribute_dispatch_v2" in failed and not rep.passed
    assert mc.check_model("deepseek-v3", "atlas-a3", "8.5.0", tokens=300, ep=8).passed   # A3: BS up to 512
