"""pytest plugin: run a torch_npu / MindSpeed test suite on the CPU with real numbers.

Opt in with ``pytest -p ascend_moe.pytest_plugin`` (or ``pytest_plugins = ["ascend_moe.pytest_plugin"]``
in the suite's top ``conftest.py``).  For the session it

* installs the drop-ins (:func:`ascend_moe.compat.install`): where the real torch_npu / mindspeed
  cannot be imported, ``import torch_npu`` and ``from mindspeed.ops import gmm`` give the ascend-moe
  modules, whose ops run the constraint checker and then the bit-faithful simulator; names they do
  not implement raise ``NotImplementedError`` (no ``MagicMock``);
* adds ``--ascend-product`` (``atlas-a2`` ``atlas-a3`` ``atlas-200i-500-a2`` ``atlas-inference``
  ``atlas-training`` ``ascend-950``, aliases and SoC names accepted) and ``--ascend-cann``
  (``8.0.RC3`` ... ``8.5.0``): the calls are checked against that product's rules, so a call the
  product rejects fails with ``ascend_moe.ConstraintError`` listing every violated rule;
* gives the fixtures ``ascend_target`` (the :class:`ascend_moe.Target` in force) and
  ``ascend_product`` (its product key).

``--ascend-simulate`` (or ``ASCEND_MOE_SIMULATE=1``) also puts the simulated ``npu`` device in place for
the session (:func:`ascend_moe.simulate`): ``device="npu"``, ``.npu()``, ``torch.npu.*``, ``import
torchair`` and ``mindspeed.ops.gmm`` work unchanged, the ascend-moe ops compute with the simulator on
the device's host memory; ``--ascend-devices N`` sets the device count (default 8).  The device's C++
part is compiled once into a cache on first use (see README).  With a real torch_npu importable the
session stops with a usage error: nothing is simulated.  A test that fails because torch.compile
stopped on a constraint violation while tracing reports the ConstraintError itself.

The options set :func:`ascend_moe.set_target` for the session and also hold the target in the
``ascend_moe.target()`` context around each test (setup, call, teardown), so a ``conftest`` that
resets the process-wide target between tests cannot drop it; a test may still narrow it with
``with ascend_moe.target(...)``.  Without the options nothing is forced: the usual precedence applies
(``ASCEND_MOE_PRODUCT`` / ``ASCEND_MOE_CANN``, detection, then the defaults atlas-a2 / CANN 8.5.0).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import pytest

from . import compat, products

_state: dict = {"product": None, "cann": None, "shims": {}, "simulate": False}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ascend-moe", "ascend-moe CPU drop-in for torch_npu / MindSpeed")
    group.addoption("--ascend-product", action="store", default=None, metavar="PRODUCT",
                    help="check every ascend-moe / torch_npu op call against this Atlas product's rules "
                         f"({', '.join(sorted(products.PRODUCTS))}; aliases and SoC names accepted)")
    group.addoption("--ascend-cann", action="store", default=None, metavar="VERSION",
                    help="check against this CANN release (e.g. 8.0.RC3, 8.3.RC1, 8.5.0)")
    group.addoption("--ascend-simulate", action="store_true", default=False,
                    help="run the session on the simulated npu device (device='npu', .npu(), torch.npu, "
                         "torchair); also ASCEND_MOE_SIMULATE=1")
    group.addoption("--ascend-devices", action="store", type=int, default=None, metavar="N",
                    help="number of simulated npu devices with --ascend-simulate (default 8)")
    group.addoption("--ascend-no-shims", action="store_true", default=False,
                    help="do not install the torch_npu / mindspeed drop-ins (target options only)")


def pytest_configure(config: pytest.Config) -> None:
    product: Optional[str] = config.getoption("--ascend-product")
    cann: Optional[str] = config.getoption("--ascend-cann")
    try:  # fail the session at once on a misspelt product / version, naming the choices
        product = products.normalize_product(product) if product else None
        cann = str(products.CannVersion(cann)) if cann else None
    except ValueError as e:
        raise pytest.UsageError(f"ascend-moe: {e}") from None
    _state.update(product=product, cann=cann)
    if product or cann:
        products.set_target(product, cann)
    if config.getoption("--ascend-simulate") or os.environ.get("ASCEND_MOE_SIMULATE") == "1":
        from .simulation import RealNpuPresent, simulate
        try:
            _state["shims"] = simulate(product, cann, devices=config.getoption("--ascend-devices"))
        except (RealNpuPresent, ValueError) as e:
            raise pytest.UsageError(f"ascend-moe: {e}") from None
        _state["simulate"] = True
    elif not config.getoption("--ascend-no-shims"):
        _state["shims"] = compat.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _state["product"] or _state["cann"]:
        products.set_target(None, None)
    if _state["shims"]:
        compat.uninstall()
    _state.update(product=None, cann=None, shims={}, simulate=False)


def pytest_report_header(config: pytest.Config) -> list:
    lines = [f"ascend-moe: target {products.resolve_target(_state['product'], _state['cann'])}"]
    if _state["simulate"]:
        import torch
        lines.append(f"ascend-moe: simulated npu device: {torch.npu.device_count()} x "
                     f"{torch.npu.get_device_name()} (host memory)")
    for status in _state["shims"].values():
        lines.append(f"ascend-moe: {status.name}: {status.reason}")
    return lines


@contextlib.contextmanager
def _selected_target() -> Iterator[None]:
    if _state["product"] or _state["cann"]:
        with products.target(_state["product"], _state["cann"]):
            yield
    else:
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    with _selected_target():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with _selected_target():
        try:
            return (yield)
        except Exception as e:
            if _state["simulate"]:
                from .simulation import constraint_error_in
                found = constraint_error_in(e)
                if found is not None and found is not e:
                    raise found from None
            raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]):
    with _selected_target():
        return (yield)


@pytest.fixture
def ascend_target() -> products.Target:
    """The product / CANN version the ascend-moe checker applies in this test."""
    return products.resolve_target()


@pytest.fixture
def ascend_product(ascend_target: products.Target) -> str:
    """The selected Atlas product key (``--ascend-product``, else the environment / default)."""
    return ascend_target.product
