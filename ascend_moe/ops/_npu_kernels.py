"""The PrivateUse1 (NPU) kernel of every ``torch.ops.ascend_moe.*`` op: checker, then CANN's aclnn.

Each op module registers its op once with ``torch.library.custom_op`` (schema, fake kernel, CPU
kernel = simulator, autograd).  This module adds, for every op in the ``ascend_moe`` namespace, an
explicit kernel for the ``PrivateUse1`` dispatch key - the key of tensors on ``device="npu"`` once
torch_npu is imported - so that NPU tensors never reach a CPU code path:

1. the call's arguments are bound by the op's schema names (the public torch_npu / MindSpeed names);
2. the constraint checker runs for the selected product / CANN version (ops without rules, such as
   ``npu_format_cast``, skip this step) and the backend policy is consulted: for NPU tensors it
   answers ``aclnn`` or raises :class:`~ascend_moe.BackendError` (an explicit ``backend="sim"`` with
   NPU tensors is refused, never served);
3. ``ascend_moe.backends.aclnn.call(op, args)`` runs the op's aclnn two-phase API and returns
   freshly allocated outputs in the op's structure.

The kernel refuses to compute anything itself: if the policy ever answered ``sim`` here (possible
only when the kernel is invoked directly with CPU tensors, e.g. through ``OpOverload._op_dk``) it
raises :class:`~ascend_moe.BackendError` instead of running the simulator.

Autograd needs nothing here: ``register_autograd`` of the gmm family registers the ``Autograd`` alias
key, which covers ``AutogradPrivateUse1``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Tuple

import torch

from ..backends import BackendError, select_backend
from ..rules import OP_MODULES
from ._common import checked_backend

NAMESPACE = "ascend_moe"

# The ops every build must register (issue 9); ``registered_ops()`` also finds any others.
EXPECTED_OPS: Tuple[str, ...] = (
    "npu_gmm", "npu_gmm_v2", "npu_grouped_matmul", "npu_moe_gating_top_k", "npu_ffn",
    "npu_grouped_matmul_swiglu_quant", "npu_grouped_matmul_swiglu_quant_v2",
    "npu_grouped_matmul_finalize_routing", "npu_format_cast",
)

# op name -> the function registered for PrivateUse1 by this module
NPU_KERNELS: Dict[str, Callable[..., Any]] = {}


def registered_ops() -> List[str]:
    """Names of the ops registered in the ``ascend_moe`` torch.library namespace."""
    names = set()
    for qualified in torch._C._dispatch_get_all_op_names():
        ns, _, rest = qualified.partition("::")
        if ns == NAMESPACE:
            names.add(rest.split(".")[0])
    return sorted(names)


def _schema(op: str) -> torch.FunctionSchema:
    return getattr(torch.ops.ascend_moe, op).default._schema


def schema_signature(op: str) -> inspect.Signature:
    """The Python signature of the op's schema (names, keyword-only split, defaults)."""
    params = []
    for arg in _schema(op).arguments:
        kind = inspect.Parameter.KEYWORD_ONLY if arg.kwarg_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = arg.default_value if arg.has_default_value() else inspect.Parameter.empty
        params.append(inspect.Parameter(arg.name, kind, default=default))
    return inspect.Signature(params)


def _tensors(args: Dict[str, Any]) -> List[Any]:
    found: List[Any] = []
    for value in args.values():
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def _aclnn_call(op: str, args: Dict[str, Any]) -> Any:
    try:
        from ..backends import aclnn
    except ImportError as e:  # the dispatcher's Python side is missing from this build
        raise BackendError(f"{op}: the aclnn backend module cannot be imported ({e})") from e
    return aclnn.call(op, args)


def make_npu_kernel(op: str) -> Callable[..., Any]:
    """The PrivateUse1 kernel of ``torch.ops.ascend_moe.<op>`` (see the module docstring)."""
    signature = schema_signature(op)
    returns = _schema(op).returns
    has_rules = op in OP_MODULES

    def npu_kernel(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        call_args = dict(bound.arguments)
        tensors = _tensors(call_args)
        backend = (checked_backend(op, call_args, tensors) if has_rules
                   else select_backend(op, tensors))
        if backend != "aclnn":
            devices = sorted({t.device.type for t in tensors})
            raise BackendError(
                f"{op}: the NPU (PrivateUse1) kernel was reached with tensors on {devices} and the "
                f"backend policy chose {backend!r}; this kernel only runs CANN's aclnn and never the "
                "simulator. Call the op with CPU tensors for the simulator.")
        out = _aclnn_call(op, call_args)
        if len(returns) > 1 and isinstance(out, list):
            out = tuple(out)
        return out

    npu_kernel.__name__ = f"{op}_npu_kernel"
    npu_kernel.__qualname__ = npu_kernel.__name__
    return npu_kernel


def register_all() -> Dict[str, str]:
    """Register the PrivateUse1 kernel of every ``ascend_moe`` op that lacks one; returns
    ``{op: "registered" | "already registered"}``."""
    device = torch._C._get_privateuse1_backend_name()  # "privateuseone", or "npu" under torch_npu
    status: Dict[str, str] = {}
    for op in registered_ops():
        if op in NPU_KERNELS or torch._C._dispatch_has_kernel_for_dispatch_key(
                f"{NAMESPACE}::{op}", "PrivateUse1"):
            status[op] = "already registered"
            continue
        kernel = make_npu_kernel(op)
        torch.library.register_kernel(f"{NAMESPACE}::{op}", device, kernel)
        NPU_KERNELS[op] = kernel
        status[op] = "registered"
    return status


REGISTRATION = register_all()
