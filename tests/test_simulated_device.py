"""The simulated npu device, seen from outside: the tests in tests/simulated run in their own pytest
session under the plugin's --ascend-simulate (the first run compiles the device's C++ part into the
cache, once per torch version); `python -m ascend_moe run` runs an unmodified script; nothing is
loaded by a plain import, and a real torch_npu turns the simulation off."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd=ROOT, env_extra=None, timeout=1200):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_plain_import_loads_no_device():
    import torch
    import ascend_moe  # noqa: F401
    assert "ascend_moe_npu_sim" not in sys.modules
    assert torch._C._get_privateuse1_backend_name() == "privateuseone"
    assert "npu" not in torch.__dict__


def test_simulated_suite_under_the_pytest_plugin():
    """Device basics, the seed examples, MindSpeed's gmm unit test, a vllm-ascend-style MoE layer and MC2
    dispatch/combine on the device in 2 processes."""
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "ascend_moe.pytest_plugin",
                   "--ascend-simulate", "tests/simulated"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1]


def test_run_command_runs_an_unmodified_script(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent("""
        import sys
        import torch
        import torch_npu
        torch.npu.set_device(3)
        x = torch.ones(2, 2, device="npu") * float(sys.argv[1])
        print("RESULT", torch.npu.get_device_name(), torch.npu.device_count(), x.device, (x @ x).sum().item())
        torch.empty(1, device="npu:4")
    """))
    result = _run(["-m", "ascend_moe", "run", "--product", "atlas-a3", "--devices", "4", str(script), "3"])
    # 2x2 of threes squared: every element 18, sum 72; then npu:4 does not exist on a 4-device node
    assert "RESULT Ascend910_9391 4 npu:3 72.0" in result.stdout, result.stderr[-3000:]
    assert result.returncode == 1 and "npu:4" in result.stderr


def test_run_refuses_when_a_real_torch_npu_is_importable(tmp_path):
    fake = tmp_path / "site" / "torch_npu"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")  # imports fine, as a real torch_npu on an NPU host does
    marker = tmp_path / "ran"
    script = tmp_path / "s.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    result = _run(["-m", "ascend_moe", "run", str(script)],
                  env_extra={"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])})
    assert result.returncode == 2
    assert "will not simulate" in result.stderr and not marker.exists()


def test_run_command_reports_the_constraint_error_a_compiled_seed_stops_on():
    """torch.compile traces the FFN graph example and stops on the weight2 rule: the user sees the
    ConstraintError itself (the seeds all run in-process in tests/simulated/test_seed_examples.py)."""
    result = _run(["-m", "ascend_moe", "run", "--product", "atlas-a2",
                   str(ROOT / "examples" / "seeds" / "ffn_graph.py")])
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("ascend_moe.rules.ConstraintError") for line in lines), result.stderr[-3000:]
    assert "argument 'weight2'" in result.stderr
