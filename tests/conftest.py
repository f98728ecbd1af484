"""Shared test fixtures: every test starts from the default target, backend and policy."""
import pytest

from ascend_moe import backends, products
from ascend_moe.sim import numerics


@pytest.fixture(autouse=True)
def _clean_global_state(monkeypatch):
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
