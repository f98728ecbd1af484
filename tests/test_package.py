"""Packaging promises: the simulator imports without torch, and importing ascend_moe stays light."""
import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_sim_imports_without_torch():
    r = _run("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked for this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import ascend_moe.sim as sim
        from ascend_moe.sim import numerics
        assert "torch" not in sys.modules
        packed = numerics.pack_int4(np.arange(-8, 8).reshape(2, 8), "int32")
        assert (numerics.unpack_int4(packed).ravel() == np.arange(-8, 8)).all()
        import ascend_moe
        assert not hasattr(ascend_moe, "npu_gmm")  # torch-facing ops need torch
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_import_does_not_touch_cann_or_torch_npu():
    r = _run("""
        import sys
        import ascend_moe
        assert "torch_npu" not in sys.modules
        assert "ascend_moe._C" not in sys.modules, "the C++ loader must load lazily"
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
