"""The downstream-style suite (tests/downstream/ds_*.py) run in a subprocess under
``-p ascend_moe.pytest_plugin``: it passes on the default product with real numbers checked, and fails
with ConstraintError where the selected product's rules reject the calls.

The subprocess starts from the repository root, so tests/conftest.py (which resets the process target
before every test) is loaded too: the plugin's target must survive it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "downstream").glob("ds_*.py"))
VLLM = "tests/downstream/ds_vllm_ascend_moe.py"
MINDSPEED = "tests/downstream/ds_mindspeed_gmm.py"


SESSIONS = {
    "default": [],
    "atlas-inference": ["--ascend-product", "atlas-inference", "--ascend-cann", "8.3.RC1"],
    "atlas-200i-500-a2": ["--ascend-product", "atlas-200i-500-a2"],
}


@pytest.fixture(scope="module")
def sessions() -> Dict[str, Tuple[int, str, Dict[str, str]]]:
    """The suite run as ``pytest -p ascend_moe.pytest_plugin tests/downstream/ds_*.py <options>`` for
    each entry of SESSIONS, all in one subprocess (tests/downstream/run_sessions.py: one torch import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_MOE_")}
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    proc = subprocess.run([sys.executable, "tests/downstream/run_sessions.py", json.dumps(list(SESSIONS.values()))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for name, run in zip(SESSIONS, json.loads(proc.stdout)):
        out = run["output"]
        outcomes = {m.group(2): m.group(1) for m in re.finditer(r"^(PASSED|FAILED|ERROR|SKIPPED) (\S+)", out, re.M)}
        results[name] = (run["rc"], out, outcomes)
    return results


def test_suite_files_are_not_collected_by_the_main_run():
    assert SUITE == [MINDSPEED, VLLM]
    assert not list((ROOT / "tests" / "downstream").glob("test_*.py"))
    assert not any(Path(p).name.startswith("test_") or p.endswith("_test.py") for p in SUITE)
    assert not (ROOT / "tests" / "downstream" / "conftest.py").exists()


def test_downstream_suite_passes_on_the_default_product(sessions):
    rc, out, outcomes = sessions["default"]
    assert rc == 0, out[-6000:]
    assert len(outcomes) == 7 and set(outcomes.values()) == {"PASSED"}, out[-6000:]
    assert "ascend-moe: target atlas-a2 / CANN 8.5.0" in out
    assert "torch_npu: no torch_npu is installed" in out


def test_downstream_suite_fails_with_constraint_errors_on_atlas_inference(sessions):
    rc, out, outcomes = sessions["atlas-inference"]
    assert rc == 1, out[-6000:]
    assert "ascend-moe: target atlas-inference / CANN 8.3.RC1" in out
    failed = {k for k, v in outcomes.items() if v == "FAILED"}
    # 310P: no gating / swiglu-quant / finalize-routing at all, gmm float16 only ...
    assert failed == {f"{VLLM}::test_gating_deepseek_style", f"{VLLM}::test_unquantized_moe_layer_bf16",
                      f"{VLLM}::test_w8a8_dynamic_moe_layer", f"{MINDSPEED}::test_npu_gmm_forward_backward_fp32",
                      f"{MINDSPEED}::test_npu_gmm_v2_counts_bf16"}, out[-6000:]
    # ... while the product-aware FFN test (inner_precise=1 on 310P) passes
    assert outcomes[f"{VLLM}::test_dense_ffn_per_product"] == "PASSED"
    assert out.count("ConstraintError: ") >= len(failed)
    for rule in ("[gmm.310p_dtype]", "[gmm.310p_n_align]", "[npu_moe_gating_top_k.product]"):
        assert rule in out, rule
    assert "atlas-inference / CANN 8.3.RC1" in out


def test_downstream_suite_fails_on_atlas_200i_500_a2(sessions):
    rc, out, outcomes = sessions["atlas-200i-500-a2"]
    assert rc == 1, out[-6000:]
    failed = {k for k, v in outcomes.items() if v == "FAILED"}
    passed = {k for k, v in outcomes.items() if v == "PASSED"}
    assert passed == {f"{VLLM}::test_unimplemented_torch_npu_op_fails_loudly"}, out[-6000:]
    assert len(failed) == 6 and out.count("ConstraintError: ") >= 6
    for op in ("npu_gmm", "npu_gmm_v2", "npu_moe_gating_top_k", "npu_ffn"):
        assert f"{op} is not supported on atlas-200i-500-a2" in out, op
