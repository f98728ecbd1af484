"""The run-time CANN loader (issue 2 item 7): library search, per-library errors with dlerror(), symbol
probing, split opapi layouts, environment precedence, thread safety, and no crash without CANN.

Each configuration runs in a fresh process (the loader is run-once per process) that loads only the
extension module, not torch, so these tests take milliseconds each.  The libraries are the fake CANN
runtime's (tests/fake_cann) or tiny .so files built here.
"""
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fake_cann"))
import fakecann_harness as harness  # noqa: E402

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no C compiler")


def _extension() -> str:
    pkg = importlib.util.find_spec("ascend_moe").submodule_search_locations[0]
    found = glob.glob(os.path.join(pkg, "_C*.so"))
    assert found, "ascend_moe._C is not built"
    return found[0]


def probe(tmp_path, *actions, **env_vars):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "LD_LIBRARY_PATH")}
    env["HOME"] = str(tmp_path)  # no $HOME/Ascend default root from the real home
    env.update(env_vars)
    res = subprocess.run([sys.executable, os.path.join(HERE, "fake_cann", "loader_probe.py"), _extension(),
                          *actions], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr  # never a crash
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return harness.build_fake(str(tmp_path_factory.mktemp("fake_cann_loader")))


def copy_root(src: str, dst) -> str:
    shutil.copytree(os.path.join(src, "lib64"), os.path.join(str(dst), "lib64"))
    return str(dst)


def build_so(path: str, source: str) -> None:
    c = path + ".c"
    with open(c, "w") as f:
        f.write(source)
    subprocess.run([harness.compiler(), "-shared", "-fPIC", "-o", path, c], check=True)


def lib(report, name):
    return next(entry for entry in report["libraries"] if entry["name"] == name)


def test_without_cann_everything_reports_cleanly(tmp_path):
    empty = tmp_path / "empty"
    (empty / "lib64").mkdir(parents=True)
    out = probe(tmp_path, "report", "families", "soc", "fake", "run", ASCEND_HOME_PATH=str(empty))
    rep = out["report"]
    assert rep["ok"] is False and rep["fake_runtime"] is False
    assert rep["reason"].startswith("libascendcl.so could not be loaded: not found in")
    assert str(empty / "lib64") in rep["search_dirs"]
    assert rep["search_dirs"][-3:-1] == ["/usr/local/Ascend/ascend-toolkit/latest/lib64",
                                         "/usr/local/Ascend/cann/lib64"]
    for name in ("libascendcl.so", "libnnopbase.so", "libopapi.so"):
        entry = lib(rep, name)
        assert entry["loaded"] is False and str(empty / "lib64") in entry["error"]
        assert "cannot open shared object file" in entry["error"]  # dlerror() of the last attempt
    for fam, (chosen, candidates) in out["families"].items():
        assert chosen is None and candidates, fam
        assert all(not found and "no aclnn operator library loaded" in detail for _, found, detail in candidates)
    assert out["soc"] is None and out["fake"] is False
    assert out["run"]["type"] == "AclnnError" and out["run"]["status"] == -1
    assert "hardware path is unavailable" in out["run"]["message"]


def test_missing_library(tmp_path, fake_root):
    root = copy_root(fake_root, tmp_path / "cann")
    os.remove(os.path.join(root, "lib64", "libnnopbase.so"))
    rep = probe(tmp_path, "report", ASCEND_HOME_PATH=root)["report"]
    assert rep["ok"] is False
    assert rep["reason"].startswith("libnnopbase.so could not be loaded: not found in")
    assert lib(rep, "libascendcl.so")["loaded"] is True
    assert lib(rep, "libascendcl.so")["path"] == os.path.join(root, "lib64", "libascendcl.so")
    assert lib(rep, "libopapi.so")["loaded"] is True


def test_library_missing_a_symbol(tmp_path, fake_root):
    root = copy_root(fake_root, tmp_path / "cann")
    # a libnnopbase.so that lacks aclCreateTensor (every other object-API symbol is there)
    build_so(os.path.join(root, "lib64", "libnnopbase.so"), "\n".join(
        f"int {name}(void) {{ return 0; }}" for name in (
            "aclCreateIntArray", "aclCreateTensorList", "aclDestroyTensor", "aclDestroyIntArray",
            "aclDestroyTensorList")))
    out = probe(tmp_path, "report", "run", ASCEND_HOME_PATH=root)
    rep = out["report"]
    assert rep["ok"] is False
    assert rep["reason"].startswith("a required symbol is missing: libnnopbase.so: aclCreateTensor: ")
    assert "undefined symbol: aclCreateTensor" in rep["reason"]  # dlerror()
    assert rep["missing_symbols"] == [rep["reason"][len("a required symbol is missing: "):]]
    assert lib(rep, "libnnopbase.so")["loaded"] is True
    assert out["run"]["type"] == "AclnnError" and "aclCreateTensor" in out["run"]["message"]


def test_entry_point_symbol_missing(tmp_path):
    root = harness.build_fake(str(tmp_path / "cann"), omit=("aclnnFFNV2",))
    out = probe(tmp_path, "report", "probe:aclnnFFNV2", ASCEND_HOME_PATH=root)
    assert out["report"]["ok"] is True
    p = out["probe"]
    assert p["found"] is False
    assert p["detail"].startswith("symbol aclnnFFNV2 missing: ") and "undefined symbol: aclnnFFNV2" in p["detail"]


def test_split_opapi_layout_and_fake_flag(tmp_path, fake_root):
    root = copy_root(fake_root, tmp_path / "cann")
    lib64 = os.path.join(root, "lib64")
    os.rename(os.path.join(lib64, "libopapi.so"), os.path.join(lib64, "libopapi_transformer.so"))
    build_so(os.path.join(lib64, "libopapi_math.so"), "int aclnnAdd(void) { return 0; }")
    out = probe(tmp_path, "report", "probe:aclnnFFNV2", "fake", "soc", ASCEND_HOME_PATH=root)
    rep = out["report"]
    assert rep["ok"] is True and rep["reason"] == "" and rep["fake_runtime"] is True and out["fake"] is True
    names = [entry["name"] for entry in rep["libraries"]]
    assert names == ["libascendcl.so", "libnnopbase.so", "libopapi_math.so", "libopapi_transformer.so",
                     "libopapi.so"]
    assert lib(rep, "libopapi.so")["loaded"] is False and lib(rep, "libopapi.so")["required"] is False
    assert out["probe"]["found"] is True
    assert out["probe"]["detail"] == "found in " + os.path.join(lib64, "libopapi_transformer.so")
    assert out["soc"] == "Ascend910B2"


def test_search_order_and_toolkit_home(tmp_path, fake_root):
    a = copy_root(fake_root, tmp_path / "a")
    empty = tmp_path / "b"
    (empty / "lib64").mkdir(parents=True)
    # LD_LIBRARY_PATH comes before ASCEND_HOME_PATH
    rep = probe(tmp_path, "report", LD_LIBRARY_PATH=os.path.join(a, "lib64"), ASCEND_HOME_PATH=str(empty))["report"]
    assert rep["ok"] and lib(rep, "libascendcl.so")["path"] == os.path.join(a, "lib64", "libascendcl.so")
    assert rep["search_dirs"][:2] == [os.path.join(a, "lib64"), str(empty / "lib64")]
    # ASCEND_TOOLKIT_HOME when ASCEND_HOME_PATH is unset
    rep = probe(tmp_path, "report", ASCEND_TOOLKIT_HOME=a)["report"]
    assert rep["ok"] and rep["search_dirs"][0] == os.path.join(a, "lib64")


def test_failed_load_is_retried_after_the_environment_changes_and_is_thread_safe(tmp_path, fake_root):
    out = probe(tmp_path, "report", f"setenv:ASCEND_HOME_PATH={fake_root}", "report2", "threads")
    assert out["report"]["ok"] is False
    assert out["report2"]["ok"] is True  # a failed load is recomputed when the search environment changed
    assert out["threads_identical"] is True


def test_standalone_init_failure_raises_and_is_retried(tmp_path, fake_root):
    """aclInit failing with a real error (not 100002) raises AclnnError naming aclInit and the status;
    nothing is created; the next call initialises again and succeeds; aclrtSetDevice likewise."""
    out = probe(tmp_path, "fail:aclInit:500004:driver not installed", "run1", "counts1", "unfail",
                "fail:aclrtSetDevice:200002:no such device", "run2", "unfail", "run3", "counts3",
                ASCEND_HOME_PATH=fake_root)
    r1 = out["run1"]
    assert r1["type"] == "AclnnError" and r1["entry"] == "aclInit" and r1["status"] == 500004
    assert "ACL_ERROR_DRV_FAILURE" in r1["message"] and "driver not installed" in r1["message"]
    r2 = out["run2"]
    assert r2["entry"] == "aclrtSetDevice" and r2["status"] == 200002 and "ACL_ERROR_INVALID_DEVICE" in r2["message"]
    assert out["run3"] == "returned"
    assert out["counts1"]["init"] == 1 and out["counts1"]["executor_create"] == 0
    c = out["counts3"]  # after the reset before run3: one successful call, everything released
    assert c["init"] == 0 and c["set_device"] == 1  # aclInit succeeded once (run2) and is never repeated
    assert c["executor_create"] == c["executor_destroy"] == 1 and c["malloc"] == c["free"] == 1


def test_python_status_without_cann():
    """In this process (no CANN expected): the status module answers cleanly and the policy refuses."""
    from ascend_moe.backends import BackendError, aclnn_status, select_backend
    rep = aclnn_status.loader_report()
    if rep["ok"]:
        pytest.skip("a CANN runtime is installed on this machine")
    assert rep["reason"] and rep["libraries"] and not rep["fake_runtime"]
    assert not rep["symbols"]["aclnnFFNV2"]["found"]
    assert aclnn_status.fake_runtime_loaded() is False
    assert aclnn_status.aclnn_unavailable_reason("npu_ffn") == rep["reason"]
    eps = aclnn_status.entry_points("npu_grouped_matmul")
    assert [n for n, _, _ in eps] == ["aclnnGroupedMatmulV5", "aclnnGroupedMatmulV4", "aclnnGroupedMatmulWeightNz",
                                      "aclnnGroupedMatmul"]
    assert not any(found for _, found, _ in eps)
    import torch
    with pytest.raises(BackendError, match="CPU simulator"):
        select_backend("npu_ffn", [torch.zeros(1)], "aclnn")
    from ascend_moe.backends import aclnn
    with pytest.raises(BackendError, match="unavailable"):
        aclnn.call("npu_ffn", {"x": torch.zeros(1)})
