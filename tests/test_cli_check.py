"""``python -m ascend_moe check / rules / info`` run as a user runs them (subprocess), plus the
cheaper cases through ``ascend_moe.cli.main`` in-process.

Verdicts expected here follow from the rules as the spec states them, not from running the code:
DeepSeek-V3 (256 experts, 8 groups keep 4, sigmoid + bias) meets even the older torch_npu 7.0/7.1
gating rules (spec gating-and-ffn A.7: E == 256, k <= 32, k_group == 4, group_count == 8, bias,
sigmoid); a 2048-expert model breaks "E == 256" there and meets "E <= 2048" of the current tiling.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ascend_moe import cli

ROOT = Path(__file__).resolve().parents[1]

# A DeepSeek-V3-style MoE with 2048 experts (the current tiling's maximum), hand-written.
CONFIG_2048 = {
    "model_type": "deepseek_v3", "hidden_size": 4096, "moe_intermediate_size": 512,
    "n_routed_experts": 2048, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8,
    "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
    "routed_scaling_factor": 2.5, "hidden_act": "silu",
}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_MOE_")}
    return subprocess.run([sys.executable, "-m", "ascend_moe", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def config_2048(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG_2048))
    return path


def stage(report: dict, op: str) -> dict:
    return next(s for s in report["stages"] if s["op"] == op)


# ------------------------------------------------------------------ as a user runs it ----------

def test_default_deepseek_v3_on_a2_passes_the_older_gating_rules():
    r = run_cli("check", "--cann", "8.2.RC1")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "deepseek-v3" in out and "atlas-a2" in out and "CANN 8.2.RC1" in out
    # the table: one row per stage, op and verdict, the key arguments under it
    gating = next(line for line in out.splitlines() if "npu_moe_gating_top_k" in line)
    assert gating.split()[-1] == "PASS"
    assert "k_group=4, group_count=8, group_select_mode=1" in out
    assert "norm_type=1" in out and "routed_scaling_factor=2.5" in out
    assert out.count("npu_grouped_matmul ") >= 2
    assert "not checked" in out                       # dispatch / swiglu / combine are listed
    assert "verdict  PASS" in out


def test_2048_experts_warn_on_the_older_generation_with_the_expert_count_rule(config_2048, capsys, monkeypatch):
    # the older generation's 256-expert limit is stated only by the torch_npu docs of that time (no host code of
    # that generation is public): a doc-level warning, an error under ASCEND_MOE_STRICT_DOCS=1
    r = run_cli("check", "--model", str(config_2048), "--product", "atlas-a2", "--cann", "8.2.RC1",
                "--ep", "8", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["passed"] is True and rep["cann"] == "8.2.RC1"
    gating = stage(rep, "npu_moe_gating_top_k")
    assert gating["verdict"].startswith("PASS (")
    expert_rules = [v for v in gating["violations"] if v["argument"] == "x" and "2048" in v["message"]
                    and "256" in v["message"] and v["severity"] == "warning" and v["kind"] == "doc"]
    assert expert_rules, gating["violations"]
    assert all(v["fix"] for v in gating["violations"])
    assert all(s["passed"] for s in rep["stages"] if s["op"] == "npu_grouped_matmul")
    monkeypatch.setenv("ASCEND_MOE_STRICT_DOCS", "1")
    code, rep = check_json(capsys, "--model", str(config_2048), "--product", "atlas-a2", "--cann", "8.2.RC1",
                           "--ep", "8")
    assert code == 1 and stage(rep, "npu_moe_gating_top_k")["verdict"] == "FAIL"


def test_2048_experts_pass_the_current_generation(config_2048):
    r = run_cli("check", "--model", str(config_2048), "--product", "atlas-a2", "--cann", "8.5.0",
                "--ep", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict  PASS" in r.stdout


def test_failing_call_gives_exit_1_and_each_violation_with_its_fix():
    # Qwen3-30B-A3B: softmax + norm_topk_prob -> renorm=1, which the tiling accepts only from the
    # 2026 kernels on (spec A.7 version history, OT 80c79c6c7), so CANN 8.5.0 rejects it.
    r = run_cli("check", "--model", "qwen3-moe-30b-a3b", "--cann", "8.5.0")
    assert r.returncode == 1
    out = r.stdout
    assert "FAIL" in out and "argument 'renorm'" in out and "got renorm=1" in out
    assert "fix:" in out and "--host-renorm" in out
    assert "verdict  FAIL" in out


def test_run_executes_deepseek_v3_through_the_simulator():
    r = run_cli("check", "--tokens", "1", "--run", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    err_lines = [line for line in r.stderr.splitlines() if line.startswith("[")]
    assert len(err_lines) == 8 and err_lines[-1].startswith("[" + "#" * 24 + "] 8/8")
    assert "time per stage" in r.stdout
    for name in ("gating", "up-projection", "down-projection", "combine"):
        assert any(line.strip().startswith(name) and line.rstrip().endswith("ms")
                   for line in r.stdout.splitlines()), name
    assert "output   [1, 7168] bfloat16" in r.stdout and "non-finite 0" in r.stdout


# ------------------------------------------------------------------ in-process -----------------

def check_json(capsys, *argv: str):
    code = cli.main(["check", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


# (model, product, cann, quant) -> passes?  Reasons in the comments.
EXPECTED = [
    ("deepseek-v3", "atlas-a2", "8.2.RC1", "none", True),
    ("deepseek-v3", "atlas-a3", "8.2.RC1", "w8a8", True),
    ("deepseek-v3", "atlas-a2", "8.5.0", "w8a8", True),
    ("deepseek-v3", "atlas-a3", "8.5.0", "w4a8", True),    # k = 2048, n = 7168: the A8W4 doc values
    ("kimi-k2", "atlas-a2", "8.2.RC1", "none", True),      # 384 experts, one group: the old docs' limits warn
    ("kimi-k2", "atlas-a2", "8.5.0", "none", True),
    ("qwen3-moe-30b-a3b", "atlas-a2", "8.2.RC1", "none", False),   # softmax, 128 experts, no bias
    ("qwen3-moe-30b-a3b", "atlas-a3", "9.0.0", "w8a8", True),      # renorm=1 accepted
    ("mixtral-8x7b", "atlas-a3", "9.0.0", "none", True),
    ("mixtral-8x7b", "atlas-a3", "9.0.0", "w8a8", False),  # swiglu-quant N = 2*14336 > 10240
    ("deepseek-v3", "atlas-inference", "8.5.0", "none", False),    # no gating op on 310P
]


@pytest.mark.parametrize("model,product,cann,quant,passes", EXPECTED)
def test_preset_verdicts(capsys, model, product, cann, quant, passes):
    code, rep = check_json(capsys, "--model", model, "--product", product, "--cann", cann, "--quant", quant)
    assert rep["passed"] is passes and code == (0 if passes else 1)
    assert not any(s["error"] for s in rep["stages"]), "the checker itself failed on a call"


def test_specific_failure_reasons(capsys):
    _, rep = check_json(capsys, "--model", "mixtral-8x7b", "--product", "atlas-a3", "--cann", "9.0.0",
                        "--quant", "w8a8")
    sq = stage(rep, "npu_grouped_matmul_swiglu_quant")
    assert not sq["passed"] and any("28672" in v["message"] for v in sq["violations"])
    _, rep = check_json(capsys, "--product", "atlas-inference")
    gating = stage(rep, "npu_moe_gating_top_k")
    assert [v["argument"] for v in gating["violations"]] == ["(product)"]


def test_host_renorm_passes_where_renorm_1_is_not_accepted(capsys):
    code, rep = check_json(capsys, "--model", "qwen3-moe-30b-a3b", "--cann", "8.5.0", "--host-renorm")
    assert code == 0 and rep["passed"]
    assert stage(rep, "npu_moe_gating_top_k")["kwargs"]["renorm"] == 0
    assert any(s["name"] == "renormalise" and s["op"] is None for s in rep["stages"])


def test_2048_experts_without_expert_parallelism_fail_the_grouped_gemm(capsys, config_2048):
    # One device holding all 2048 experts: a Tensor group_list has at most 1024 entries (spec 1.3).
    code, rep = check_json(capsys, "--model", str(config_2048), "--cann", "8.5.0")
    assert code == 1
    assert stage(rep, "npu_moe_gating_top_k")["passed"]
    gmm = stage(rep, "npu_grouped_matmul")
    assert not gmm["passed"] and any(v["argument"] == "group_list" and "2048" in v["message"]
                                     for v in gmm["violations"])


def test_2048_experts_w8a8_on_one_device_pass_with_doc_warnings(capsys, config_2048):
    # swiglu-quant and finalize-routing check only len(group_list) <= E on the host; their docs'
    # e <= 1024 / e <= 256 are doc-only rules (warnings), so the current generation passes.
    code, rep = check_json(capsys, "--model", str(config_2048), "--cann", "8.5.0", "--quant", "w8a8")
    assert code == 0 and rep["passed"]
    warned = [v for s in rep["stages"] for v in s["violations"] if v["severity"] == "warning"]
    assert any("2048" in v["message"] for v in warned)
    code, rep = check_json(capsys, "--model", str(config_2048), "--cann", "8.2.RC1", "--quant", "w8a8")
    gating = stage(rep, "npu_moe_gating_top_k")
    assert gating["passed"] and any(v["rule_id"] == "gating.legacy.experts_256" and v["severity"] == "warning"
                                    for v in gating["violations"])


def test_config_directory_and_nested_text_config(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "kimi_k25", "text_config": CONFIG_2048}))
    code, rep = check_json(capsys, "--model", str(tmp_path), "--cann", "8.5.0", "--ep", "8")
    assert code == 0
    assert stage(rep, "npu_moe_gating_top_k")["args"][0]["shape"] == [4, 2048]


@pytest.mark.parametrize("argv,needle", [
    (["--model", "no-such-model"], "deepseek-v3"),          # names the presets
    (["--model", "/no/such/config.json"], "no such file"),
    (["--product", "atlas-9000"], "unknown Atlas product"),
    (["--ep", "3"], "--ep 3 must divide the expert count 256"),
    (["--cann", "eight"], "not a CANN version"),
])
def test_bad_arguments_exit_2_with_a_message(capsys, argv, needle):
    assert cli.main(["check", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_not_a_moe_config(capsys, tmp_path):
    p = tmp_path / "dense.json"
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008}))
    assert cli.main(["check", "--model", str(p)]) == 2
    assert "no MoE block" in capsys.readouterr().err


def test_list_presets(capsys):
    assert cli.main(["check", "--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in ("deepseek-v3", "qwen3-moe-30b-a3b", "mixtral-8x7b"):
        assert name in out


def test_rules_filtered_by_cann_version(capsys):
    assert cli.main(["rules", "--op", "npu_moe_gating_top_k", "--cann", "8.2.RC1"]) == 0
    old = capsys.readouterr().out
    assert cli.main(["rules", "--op", "npu_moe_gating_top_k", "--cann", "8.5.0"]) == 0
    new = capsys.readouterr().out
    rule_lines = [line for line in old.splitlines()[:-1] if not line.startswith(" ")]
    source_lines = [line for line in old.splitlines()[:-1] if line.startswith(" ")]
    old_ids = {line.split()[0] for line in rule_lines}
    new_ids = {line.split()[0] for line in new.splitlines()[:-1] if not line.startswith(" ")}
    assert old_ids - new_ids                 # rules of the older generation only
    assert all("npu_moe_gating_top_k" in line for line in rule_lines)
    assert len(source_lines) == len(rule_lines) and all("source: " in line for line in source_lines)
    # each rule shows its kind; a host rule its aclnn status and its host source
    host = next(line for line in rule_lines if line.startswith("gating.k.range "))
    assert " host " in host and "aclnn 161002" in host
    assert any(line.startswith("gating.legacy.experts_256 ") and " doc " in line for line in rule_lines)


def test_rules_markdown_and_matrix(capsys):
    assert cli.main(["rules", "--product", "atlas-a2", "--markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| rule | op |") and md[1].startswith("|---")
    assert cli.main(["rules", "--matrix", "--markdown"]) == 0
    mx = capsys.readouterr().out.splitlines()
    assert "atlas-a2" in mx[0] and "atlas-inference" in mx[0]
    gating = next(line for line in mx if line.startswith("| npu_moe_gating_top_k "))
    cells = [c.strip() for c in gating.strip("|").split("|")]
    header = [c.strip() for c in mx[0].strip("|").split("|")]
    assert cells[header.index("atlas-a2")] == "yes" and cells[header.index("atlas-inference")] == "-"
    assert cli.main(["rules", "--op", "npu_nope"]) == 2
    assert cli.main(["rules", "--cann", "x.y"]) == 2


def test_info_still_works(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ascend-moe" in out and "npu_moe_gating_top_k" in out


# a DeepSeek-shaped MoE block small enough for a quick multi-process run
SMALL_EP_MODEL = {"model_type": "deepseek_v3", "hidden_size": 64, "moe_intermediate_size": 32, "n_routed_experts": 16,
                  "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
                  "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
                  "routed_scaling_factor": 2.5, "hidden_act": "silu"}


@pytest.mark.parametrize("quant", ["none", "w4a8"])
def test_check_ep_run_starts_one_process_per_rank(tmp_path, quant):
    """check --ep 2 --run: the report (MC2 stages checked), then the layer on 2 gloo processes with each rank's
    stage times and all-to-all volume.  Every (token, k) pair leaves its rank once: T*k rows sent per rank in
    dispatch and received back in combine; the ranks together receive all T*k*W rows.  Quantised, the
    dispatch sends int8 rows with their fp32 scale (quant_mode=2) and the experts run the quantised path
    (the w8a8 layer's numbers are checked bit for bit in tests/test_distribute_ep.py)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL_EP_MODEL))
    T, k, W = 3, 4, 2
    r = run_cli("check", "--model", str(path), "--ep", str(W), "--tokens", str(T), "--quant", quant, "--run", "--json",
                timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["ep"] == W and rep["quant"] == quant
    assert {"npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine_v2"} <= {s["op"] for s in rep["stages"]}
    dispatch = next(s for s in rep["stages"] if s["op"] == "npu_moe_distribute_dispatch_v2")
    ranks = rep["ranks"]
    assert [x["rank"] for x in ranks] == [0, 1] and all(x["world"] == W and x["local_experts"] == 8 for x in ranks)
    experts = ({"up-projection", "down-projection"} if quant == "none"
               else {"up + swiglu + quant", "down-projection"})
    for x in ranks:
        assert x["finite"] and x["quant"] == quant
        assert {"gating", "dispatch", "combine"} | experts <= set(x["timings"])
        # a dispatched row: H values (bf16, or int8 and its fp32 scale), its (rank, token, k) triple, its weight
        h = SMALL_EP_MODEL["hidden_size"]
        assert x["volume"]["dispatch"]["row_bytes"] == (2 * h if quant == "none" else h) + 4 + 12 + 4
        assert x["volume"]["dispatch"]["sent_rows"] == T * k
        assert x["volume"]["combine"]["recv_rows"] == T * k
        assert x["volume"]["combine"]["sent_rows"] == x["received_rows"]
        assert x["volume"]["dispatch"]["recv_bytes"] == x["received_rows"] * x["volume"]["dispatch"]["row_bytes"]
    assert sum(x["received_rows"] for x in ranks) == T * k * W


def test_check_ep_run_refuses_a_wrong_torchrun_size(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert cli.main(["check", "--model", "deepseek-v3", "--ep", "2", "--run"]) == 2
    assert "torchrun started 4 processes; pass --ep 4" in capsys.readouterr().err


def test_check_ep_run_refuses_a_working_set_over_the_budget_before_starting(monkeypatch, capsys):
    """Each rank may receive every rank's rows: at 200,000 tokens per rank DeepSeek-V3's EP layer would need
    hundreds of GB. The run is refused with exit 2 and the numbers, before any process starts (an OOM kill
    of a worker was the result before)."""
    from ascend_moe import model_check
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    started = []
    monkeypatch.setattr("torch.multiprocessing.start_processes", lambda *a, **k: started.append(a))
    assert cli.main(["check", "--model", "deepseek-v3", "--ep", "2", "--run", "--tokens", "200000"]) == 2
    err = capsys.readouterr().err
    assert "--ep 2 at 200000 tokens per rank" in err and "budget of 4.0 GB" in err and "fewer --tokens" in err
    assert started == []
    # the estimate, from the layer's own sizes: per rank T*(2E + 2H + 3S) + R*(2H + 3I) + 3HI + 3HS fp32 values,
    # R = T * W * min(E/W, k) received rows; H=7168, I=2048, S=2048, E=256, k=8 for DeepSeek-V3
    T, W, E, k, H, I, S = 200000, 2, 256, 8, 7168, 2048, 2048
    per_rank = 4 * (T * (2 * E + 2 * H + 3 * S) + T * W * min(E // W, k) * (2 * H + 3 * I) + 3 * H * I + 3 * H * S)
    assert f"about {W * per_rank / 1e9:.1f} GB" in err
    assert model_check.MEMORY_BUDGET == 4e9
