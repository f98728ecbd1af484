"""ascend-moe: one API for the Ascend MoE operators.

* ``ascend_moe.npu_*``: the ops with torch_npu / MindSpeed spellings (torch tensors in and out);
  NPU tensors go to CANN's aclnn, CPU tensors to the bit-faithful simulator.
* ``ascend_moe.sim``: the NumPy simulator (importable without torch, and without the checker).
* ``ascend_moe.check``: the per-product, per-CANN-version constraint checker.

With torch installed, ``import ascend_moe`` registers the torch ops.  Without it, the checker and the
other names load on first use, so ``import ascend_moe.sim.<op>`` stays NumPy-only.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the submodule that defines it (loaded on first use when torch is absent)
_LAZY = {
    **dict.fromkeys(("BackendError", "set_backend", "use_backend", "privateuse1_is_simulated",
                     "set_privateuse1_simulated"), "backends"),
    **dict.fromkeys(("CannVersion", "Target", "resolve_target", "set_target", "target"), "products"),
    **dict.fromkeys(("ConstraintError", "ConstraintWarning", "TensorSpec", "Violation", "check", "enforce",
                     "rule_table"), "rules"),
    **dict.fromkeys(("get_undefined_policy", "set_undefined_policy", "undefined_policy"), "sim.numerics"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


try:  # the torch-facing ops need torch; the simulator and the checker do not
    import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without torch
    _torch = None

if _torch is not None:
    from .backends import BackendError, set_backend, use_backend  # noqa: F401,E402
    from .products import CannVersion, Target, resolve_target, set_target, target  # noqa: F401,E402
    from .rules import (  # noqa: F401,E402
        ConstraintError, ConstraintWarning, TensorSpec, Violation, check, enforce, rule_table,
    )
    from .sim.numerics import get_undefined_policy, set_undefined_policy, undefined_policy  # noqa: F401,E402
    from .ops import *  # noqa: F401,F403,E402
