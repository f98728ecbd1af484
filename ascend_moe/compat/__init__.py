"""Drop-in torch_npu / MindSpeed spellings for CPU CI.

``install()`` makes ``import torch_npu`` and ``from mindspeed.ops import gmm`` resolve to the
ascend-moe modules :mod:`ascend_moe.compat.torch_npu` and :mod:`ascend_moe.compat.mindspeed`
**only when the real package cannot be imported**; a real torch_npu / mindspeed is never replaced.
The drop-ins compute with the simulator after the constraint checker (product / CANN version from
``ascend_moe.set_target``, ``ASCEND_MOE_PRODUCT`` / ``ASCEND_MOE_CANN``, or the pytest plugin's
``--ascend-product`` / ``--ascend-cann``).  A name they do not implement raises
``NotImplementedError`` naming it - never a mock.  No NPU device is faked (``torch.npu`` is not
created); see :mod:`ascend_moe.compat.torch_npu` for exactly what is covered.

A real package that is installed but fails to import (the CPU container whose torch_npu cannot find
``libascendcl.so``) counts as "cannot be imported": the drop-in is installed and a
:class:`ShimWarning` carries the import error.

Usage::

    import ascend_moe.compat
    ascend_moe.compat.install()      # before the code under test imports torch_npu
    import torch_npu                 # -> ascend_moe.compat.torch_npu on a CPU machine

Notes for suites that mocked torch_npu before:

* remove (or guard with ``ascend_moe.compat.is_shim``) a conftest block that puts a ``MagicMock``
  module into ``sys.modules["torch_npu"]``: it would replace the drop-in;
* where a broken torch_npu is installed, torch's device-backend autoload fails inside ``import torch``
  before anything here runs: set ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` for the CPU job;
* ``torch.ops.npu.<op>`` (torch_npu's op namespace) is not registered: call ``torch_npu.<op>`` or
  ``torch.ops.ascend_moe.<op>``;
* ``unittest.mock.patch("torch_npu.npu_grouped_matmul", ...)`` keeps working for the names the
  drop-in implements (they are ordinary module attributes).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ["install", "uninstall", "installed", "is_shim", "ShimStatus", "ShimWarning", "SHIMS"]

# real top-level name -> {module name in sys.modules: the drop-in module that answers for it}
SHIMS: Dict[str, Dict[str, str]] = {
    "torch_npu": {
        "torch_npu": "ascend_moe.compat.torch_npu",
        "torch_npu.npu": "ascend_moe.compat.torch_npu.npu",
    },
    "mindspeed": {
        "mindspeed": "ascend_moe.compat.mindspeed",
        "mindspeed.ops": "ascend_moe.compat.mindspeed.ops",
        "mindspeed.ops.gmm": "ascend_moe.compat.mindspeed.ops.gmm",
        "mindspeed.ops.npu_groupmatmul_add": "ascend_moe.compat.mindspeed.ops.npu_groupmatmul_add",
    },
    "torchair": {
        "torchair": "ascend_moe.compat.torchair",
        "torchair.configs": "ascend_moe.compat.torchair.configs",
        "torchair.configs.compiler_config": "ascend_moe.compat.torchair.configs.compiler_config",
        "torchair.core": "ascend_moe.compat.torchair.core",
        "torchair.core.utils": "ascend_moe.compat.torchair.core.utils",
        "torchair.ge_concrete_graph": "ascend_moe.compat.torchair.ge_concrete_graph",
        "torchair.ge_concrete_graph.ge_apis": "ascend_moe.compat.torchair.ge_concrete_graph.ge_apis",
    },
}
# With a real MindSpeed installed, only these modules are replaced (its own gmm needs torch_npu's
# C++ build); every other ``mindspeed.*`` module stays the real one.
MINDSPEED_OPS_ONLY = ("mindspeed.ops.gmm", "mindspeed.ops.npu_groupmatmul_add")


class ShimWarning(UserWarning):
    """An installed real package failed to import, so the CPU drop-in stands in for it."""


@dataclass(frozen=True)
class ShimStatus:
    name: str          # "torch_npu" or "mindspeed"
    installed: bool    # True: ``import <name>`` now gives the ascend-moe drop-in
    reason: str        # why (shown in the pytest report header)


_installed: Dict[str, ShimStatus] = {}


def is_shim(module: object) -> bool:
    """True for the ascend-moe drop-in modules (they carry ``__ascend_moe_shim__``)."""
    return bool(getattr(module, "__dict__", {}).get("__ascend_moe_shim__", False))


def _drop_partial_import(name: str, before: set) -> None:
    for key in [k for k in sys.modules if (k == name or k.startswith(name + ".")) and k not in before]:
        del sys.modules[key]


def _real_status(name: str) -> Optional[str]:
    """None when a real ``name`` is importable (or already imported); otherwise why not."""
    present = sys.modules.get(name)
    if present is not None:
        if is_shim(present):
            return "already installed by ascend-moe"
        if getattr(present, "__file__", None) is None:  # a types.ModuleType / MagicMock stand-in
            warnings.warn(f"sys.modules[{name!r}] is a stand-in without __file__ (a MagicMock-style fake "
                          f"module?); it is left in place, so `import {name}` does not give the ascend-moe "
                          f"drop-in: remove the code that installs it", ShimWarning, stacklevel=3)
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as e:
        spec, err = None, e
    else:
        err = None
    if spec is None:
        return f"no {name} is installed" + (f" ({err})" if err else "")
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except Exception as e:  # a real one that cannot load here (missing CANN libraries, no device)
        _drop_partial_import(name, before)
        msg = (f"the installed {name} ({spec.origin}) cannot be imported here: "
               f"{type(e).__name__}: {e}")
        warnings.warn(f"{msg}; using the ascend-moe CPU drop-in instead", ShimWarning, stacklevel=3)
        return msg
    return None


def _install_mindspeed_ops() -> ShimStatus:
    """A real MindSpeed is importable: replace only its gmm modules, keep the rest of it."""
    for alias in MINDSPEED_OPS_ONLY:
        sys.modules[alias] = importlib.import_module(SHIMS["mindspeed"][alias])
    ops = sys.modules.get("mindspeed.ops")
    if ops is not None:
        for alias in MINDSPEED_OPS_ONLY:
            setattr(ops, alias.rsplit(".", 1)[1], sys.modules[alias])
    return ShimStatus("mindspeed", True, "the real mindspeed is importable; only "
                      f"{', '.join(MINDSPEED_OPS_ONLY)} are the ascend-moe drop-ins")


def install(torch_npu: bool = True, mindspeed: bool = True, torchair: bool = False,
            mindspeed_ops_over_real: bool = False) -> Dict[str, ShimStatus]:
    """Make ``import torch_npu`` / ``import mindspeed`` (and, with ``torchair=True``, ``import
    torchair``) give the CPU drop-ins where the real packages cannot be imported.  With
    ``mindspeed_ops_over_real=True`` a real, importable MindSpeed keeps all its modules but
    ``mindspeed.ops.gmm`` / ``npu_groupmatmul_add`` (the simulated device needs them).  Returns the
    status of each requested drop-in; idempotent."""
    wanted = [n for n, on in (("torch_npu", torch_npu), ("mindspeed", mindspeed), ("torchair", torchair)) if on]
    result: Dict[str, ShimStatus] = {}
    for name in wanted:
        why_not_real = _real_status(name)
        if why_not_real is None:
            if name == "mindspeed" and mindspeed_ops_over_real:
                result[name] = _installed[name] = _install_mindspeed_ops()
                continue
            result[name] = ShimStatus(name, False, f"the real {name} is importable; it is used as is")
            continue
        if name in _installed and _installed[name].installed:
            result[name] = _installed[name]
            continue
        importlib.import_module(SHIMS[name][name])  # the top drop-in imports its submodules
        for alias, target in SHIMS[name].items():
            sys.modules[alias] = sys.modules[target] if target in sys.modules else importlib.import_module(target)
        status = ShimStatus(name, True, f"{why_not_real}; `import {name}` gives {SHIMS[name][name]}")
        _installed[name] = status
        result[name] = status
    return result


def uninstall() -> None:
    """Undo :func:`install`: remove the drop-ins from ``sys.modules`` (never a real module)."""
    for name, status in list(_installed.items()):
        if status.installed:
            for alias in SHIMS[name]:
                if is_shim(sys.modules.get(alias)):
                    del sys.modules[alias]
        del _installed[name]


def installed() -> List[ShimStatus]:
    """The drop-ins :func:`install` has put in place in this process."""
    return [s for s in _installed.values() if s.installed]
