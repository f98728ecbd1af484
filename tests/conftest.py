"""Shared test fixtures: every test starts from the default target, backend and policy.

GEMM kernels: tests run the simulator's reference kernels (``ASCEND_MOE_KERNELS=reference``) so that
results do not depend on the machine's kernel choice; tests/test_kernels.py checks every other
implementation's contract explicitly.  Kernel choices are cached in a per-session temporary directory,
never in the user's cache.
"""
import pytest

from ascend_moe import backends, products
from ascend_moe.sim import numerics


@pytest.fixture(scope="session")
def _kernel_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kernel-cache")


@pytest.fixture(autouse=True)
def _clean_global_state(monkeypatch, _kernel_cache_dir):
    monkeypatch.setenv("ASCEND_MOE_KERNELS", "reference")
    monkeypatch.setenv("ASCEND_MOE_CACHE_DIR", str(_kernel_cache_dir))
    for var in ("ASCEND_MOE_PRODUCT", "ASCEND_MOE_CANN", "ASCEND_MOE_BACKEND", "ASCEND_MOE_UNDEFINED",
                "ASCEND_MOE_STRICT_DOCS"):
        monkeypatch.delenv(var, raising=False)
    products.set_target(None, None)
    backends.set_backend(None)
    numerics.set_undefined_policy(None)
    yield
    products.set_target(None, None)
    backends.set_backend(None)
    numerics.set_undefined_policy(None)
