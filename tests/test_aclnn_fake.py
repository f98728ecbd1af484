"""The aclnn dispatcher end to end against the fake CANN runtime (issue 8).

The fake (tests/fake_cann/*.c) is compiled by the system C compiler into ``lib64/`` of a temp dir used as
ASCEND_HOME_PATH.  The loader runs once per process, so each fake build is driven by its own worker
process (tests/fake_cann/worker.py) that runs the scenarios of tests/fake_cann/fakecann_scenarios.py one by one;
this module turns each scenario into a test.  Two builds: the full one, and an "old CANN" one without
GroupedMatmulV5, FinalizeRoutingV3/WeightNzV2 and GroupedMatmulWeightNzGetWorkspaceSize (fallbacks and
missing symbols), whose aclInit answers 100002.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_DIR = os.path.join(HERE, "fake_cann")
sys.path.insert(0, FAKE_DIR)

import fakecann_harness as harness  # noqa: E402
import fakecann_scenarios as scenarios  # noqa: E402

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no C compiler for the fake CANN runtime")


class Worker:
    """One worker process; started at once, waited for (``ready``) on first use, so that both workers
    import torch in parallel."""

    def __init__(self, root: str, which: str):
        env = dict(os.environ)
        env.update(ASCEND_HOME_PATH=root, LD_LIBRARY_PATH="", TORCH_DEVICE_BACKEND_AUTOLOAD="0")
        for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_MOE_BACKEND", "ASCEND_MOE_PRODUCT", "ASCEND_MOE_CANN"):
            env.pop(var, None)
        self.proc = subprocess.Popen([sys.executable, os.path.join(FAKE_DIR, "worker.py"), root, which],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=HERE)
        self.ready = False

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("fake-CANN worker died:\n" + self.proc.stderr.read())
        return json.loads(line)

    def run(self, name: str) -> dict:
        if not self.ready:
            self._read()
            self.ready = True
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        # the worker has nothing left to do: no need to wait for its interpreter shutdown
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture(scope="session")
def fake_workers(tmp_path_factory):
    workers = {}
    for which, omit in (("main", ()), ("old", scenarios.OLD_CANN_OMIT)):
        root = str(tmp_path_factory.mktemp(f"fake_cann_{which}"))
        harness.build_fake(root, omit=omit)
        workers[which] = Worker(root, which)

    def get(which: str) -> Worker:
        return workers[which]

    yield get
    for w in workers.values():
        w.close()


def _check(res: dict) -> None:
    if not res["ok"]:
        pytest.fail(res["error"], pytrace=False)


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_fake_cann(fake_workers, name):
    _check(fake_workers("main").run(name))


@pytest.mark.parametrize("name", list(scenarios.OLD_CANN_SCENARIOS))
def test_fake_cann_old_release(fake_workers, name):
    _check(fake_workers("old").run(name))
