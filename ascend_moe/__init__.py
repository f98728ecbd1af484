"""ascend-moe: one API for the Ascend MoE operators.

* ``ascend_moe.npu_*``: the ops with torch_npu / MindSpeed spellings (torch tensors in and out);
  NPU tensors go to CANN's aclnn, CPU tensors to the bit-faithful simulator.
* ``ascend_moe.sim``: the NumPy simulator (importable without torch).
* ``ascend_moe.check``: the per-product, per-CANN-version constraint checker.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .backends import BackendError, set_backend, use_backend  # noqa: F401
from .products import CannVersion, Target, resolve_target, set_target, target  # noqa: F401
from .rules import (  # noqa: F401
    ConstraintError, ConstraintWarning, TensorSpec, Violation, check, enforce, rule_table,
)
from .sim.numerics import get_undefined_policy, set_undefined_policy, undefined_policy  # noqa: F401

try:  # the torch-facing ops need torch; the simulator and the checker do not
    import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without torch
    _torch = None

if _torch is not None:
    from .ops import *  # noqa: F401,F403


def simulate(product: "str | None" = None, cann: "str | None" = None, devices: "int | None" = None) -> dict:
    """Run unmodified torch_npu code here: the simulated ``npu`` device plus the torch_npu, MindSpeed gmm
    and TorchAir drop-ins (see :mod:`ascend_moe.simulation`).  Loads nothing until called."""
    from .simulation import simulate as _simulate
    return _simulate(product=product, cann=cann, devices=devices)
