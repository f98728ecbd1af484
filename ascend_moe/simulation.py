"""Run unmodified torch_npu code on a CPU machine: the simulated npu device plus the drop-ins.

:func:`simulate` (also behind ``python -m ascend_moe run SCRIPT`` and the pytest plugin's
``--ascend-simulate``) puts in place, for this process:

* the simulated ``npu`` device (:mod:`ascend_moe.device`): ``device="npu"``, ``.npu()``,
  ``torch.npu.*``; its SoC is the target product's;
* the torch_npu drop-in (``import torch_npu``; ``torch_npu.npu`` is ``torch.npu``), the MindSpeed
  gmm drop-in (``mindspeed.ops.gmm``; a real MindSpeed's other modules stay importable) and a
  TorchAir stand-in (``import torchair``);
* the checker's target: ``product`` / ``cann`` (else the usual precedence).

Nothing is simulated when a real torch_npu is importable: :class:`~ascend_moe.device.RealNpuPresent`.
"""
from __future__ import annotations

import sys
from typing import Dict, Optional

from .device import RealNpuPresent, activate, real_torch_npu_reason  # noqa: F401

__all__ = ["simulate", "RealNpuPresent", "constraint_error_in"]


def constraint_error_in(exc: BaseException) -> Optional[BaseException]:
    """The checker's verdict an exception was raised from, if any: a ConstraintError (the device
    rejects the call) or a NotSimulatedError (ascend-moe does not model the form).

    torch.compile runs the ops' shape rules (and so the checker) while it traces; Dynamo re-raises a
    failure there as its own ``TorchRuntimeError`` with the verdict as the cause.  ``run`` and the
    pytest plugin give the user the verdict itself, as eager mode would."""
    from .rules import ConstraintError, NotSimulatedError
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (ConstraintError, NotSimulatedError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def simulate(product: Optional[str] = None, cann: Optional[str] = None, devices: Optional[int] = None) -> Dict:
    """Put the simulated npu device and the torch_npu / MindSpeed / TorchAir drop-ins in place.

    ``product`` / ``cann`` select the rules the ops are checked against (and the SoC the device
    reports); ``devices`` is the simulated device count (default 8, an 8-card node).  Returns the
    status of each drop-in.  Raises RealNpuPresent when a real torch_npu is importable.
    """
    from . import compat, products

    reason = real_torch_npu_reason()
    if reason:
        raise RealNpuPresent(f"ascend-moe will not simulate an npu device: {reason}; run the code as it is")
    if product is not None:
        product = products.normalize_product(product)
    if cann is not None:
        cann = str(products.CannVersion(cann))
    activate(devices=devices, product=product)
    if product or cann:
        products.set_target(product, cann)
    status = compat.install(torch_npu=True, mindspeed=True, torchair=True, mindspeed_ops_over_real=True)
    shim = sys.modules.get("torch_npu")
    if compat.is_shim(shim):
        import torch
        shim.npu = torch.npu  # torch_npu.npu is the device module, as with the real package
        sys.modules["torch_npu.npu"] = torch.npu
    return status
