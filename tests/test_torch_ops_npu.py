"""The PrivateUse1 (NPU) kernels end to end on the fake CANN runtime (tests/fake_cann): the kernel
registered by ascend_moe.ops._npu_kernels runs the checker, then the real C++ aclnn dispatcher, which
calls the fake libopapi's two-phase entry points.  No NPU exists here, so the kernel is entered with
CPU tensors through ``OpOverload._op_dk(DispatchKey.PrivateUse1, ...)`` and ``backend="aclnn"`` (the
only way the fake runtime accepts CPU tensors).  The loader runs once per process, so this runs in one
subprocess with ASCEND_HOME_PATH pointing at a fresh fake build.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_DIR = os.path.join(HERE, "fake_cann")


def _load_harness():
    """tests/fake_cann/fakecann_harness.py, loaded by path (independent of sys.path during collection)."""
    spec = importlib.util.spec_from_file_location("_fake_cann_harness_for_npu_kernels",
                                                  os.path.join(FAKE_DIR, "fakecann_harness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()

pytestmark = pytest.mark.skipif(harness.compiler() is None, reason="no C compiler for the fake CANN runtime")

WORKER = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import torch
    sys.path.insert(0, sys.argv[2])
    from fakecann_harness import Fake, expected_pattern
    import ascend_moe
    from ascend_moe.ops import _npu_kernels

    fake = Fake(sys.argv[1])
    report = {}
    op = torch.ops.ascend_moe.npu_moe_gating_top_k.default
    npu = lambda *a, **k: op._op_dk(torch._C.DispatchKey.PrivateUse1, *a, **k)
    x = torch.randn(5, 16, dtype=torch.float16)
    bias = torch.randn(16, dtype=torch.float16)
    kw = dict(bias=bias, k_group=2, group_count=4, group_select_mode=1, norm_type=1, routed_scaling_factor=2.5)

    # 1. the checker runs before anything reaches aclnn
    fake.reset()
    with ascend_moe.use_backend("aclnn"), ascend_moe.target("atlas-inference"):
        try:
            npu(x, 4, **kw)
            report["check_first"] = "no error"
        except ascend_moe.ConstraintError as e:
            report["check_first"] = "ConstraintError" if "atlas-inference" in str(e) else str(e)
    report["events_after_rejection"] = len([e for e in fake.events() if e["ev"] in ("gws", "run")])

    # 2. a valid call: one two-phase aclnnMoeGatingTopK, outputs allocated by the shape rule and
    #    filled by the fake (its byte pattern), returned in the op's structure
    fake.reset()
    with ascend_moe.use_backend("aclnn"):
        y, idx, norm = npu(x, 4, **kw)
    runs = [e for e in fake.events() if e["ev"] == "run"]
    report["apis"] = [e["api"] for e in runs]
    report["statuses"] = [e["status"] for e in runs]
    report["meta"] = [[list(t.shape), str(t.dtype)] for t in (y, idx, norm)]
    report["pattern"] = [bool((t.contiguous().view(-1).view(torch.uint8).numpy()
                                == expected_pattern(k, t.numel(), t.element_size())).all())
                         for k, t in enumerate((y, idx, norm))]

    # 3. without an explicit aclnn request the NPU kernel refuses CPU tensors (never the simulator)
    fake.reset()
    try:
        npu(x, 4, **kw)
        report["auto"] = "computed"
    except ascend_moe.BackendError as e:
        report["auto"] = "BackendError" if "never the simulator" in str(e) else str(e)
    report["events_after_refusal"] = len([e for e in fake.events() if e["ev"] in ("gws", "run")])
    print(json.dumps(report))
''')


def test_npu_kernel_reaches_aclnn_through_the_dispatcher(tmp_path):
    root = harness.build_fake(str(tmp_path))
    env = dict(os.environ, ASCEND_HOME_PATH=root, LD_LIBRARY_PATH="", TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_MOE_BACKEND", "ASCEND_MOE_PRODUCT", "ASCEND_MOE_CANN"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", WORKER, root, FAKE_DIR], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["check_first"] == "ConstraintError" and report["events_after_rejection"] == 0
    assert report["apis"] == ["aclnnMoeGatingTopK"] and report["statuses"] == [0]
    assert report["meta"] == [[[5, 4], "torch.float16"], [[5, 4], "torch.int32"], [[5, 16], "torch.float32"]]
    assert report["pattern"] == [True, True, True]
    assert report["auto"] == "BackendError" and report["events_after_refusal"] == 0
