"""The PrivateUse1 (NPU) kernel of every ``torch.ops.ascend_moe.*`` op: checker, then CANN's aclnn.

Each op module registers its op once with ``torch.library.custom_op`` (schema, fake kernel, CPU
kernel = checker -> backend policy -> simulator or aclnn, autograd).  This module adds, for every op
in the ``ascend_moe`` namespace, an explicit kernel for the ``PrivateUse1`` dispatch key - the key of
tensors on ``device="npu"`` once torch_npu is imported - so that NPU tensors never reach a CPU code
path:

1. guard: the kernel runs only for calls the backend policy sends to aclnn - NPU tensors, or (the
   tests' fake CANN runtime) CPU tensors with ``backend="aclnn"`` requested explicitly; anything else
   raises :class:`~ascend_moe.BackendError`, it never runs the simulator;
2. the op module's own kernel function then runs unchanged: it binds the public argument dict (the
   same dict the CPU path builds, e.g. ``npu_gmm``'s ``group_list`` re-joined from the schema's
   ``group_list`` / ``group_list_ints``), runs the constraint checker for the selected product / CANN
   version, asks the backend policy (which answers ``aclnn`` for NPU tensors, or raises - an
   explicit ``backend="sim"`` with NPU tensors is refused) and calls
   ``ascend_moe.backends.aclnn.call(op, args)``, which returns freshly allocated outputs.

One path: the NPU kernel and the CPU kernel share the argument binding, the checker call and the
aclnn call; only the guard differs.  Ops declared in :mod:`ascend_moe.opdecl` get their generated
PrivateUse1 kernel (:mod:`ascend_moe.ops._generate`) instead; this module serves the rest.

Autograd needs nothing here: ``register_autograd`` registers the ``Autograd`` alias key, which covers
``AutogradPrivateUse1``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..backends import NPU_DEVICE_TYPES, BackendError, requested_backend, select_backend

NAMESPACE = "ascend_moe"

# The ops every build must register (issue 9); ``registered_ops()`` also finds any others.
EXPECTED_OPS: Tuple[str, ...] = (
    "npu_gmm", "npu_gmm_v2", "npu_grouped_matmul", "npu_moe_gating_top_k", "npu_ffn",
    "npu_grouped_matmul_swiglu_quant", "npu_grouped_matmul_swiglu_quant_v2",
    "npu_grouped_matmul_finalize_routing",
)
# npu_format_cast is deliberately a plain function, not a torch op (ascend_moe.ops.format_cast): it
# records FRACTAL_NZ on its CPU result (ascend_moe.formats) and returns its input itself when it is
# already in the target format, which a custom op may not do; NPU tensors go to torch_npu's own op.

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


def _op_function(op: str) -> Optional[Callable[..., Any]]:
    """The op module's kernel function (what ``custom_op`` decorated), or None."""
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:  # pragma: no cover - torch without custom_op
        return None
    opdef = OPDEFS.get(f"{NAMESPACE}::{op}")
    return None if opdef is None else getattr(opdef, "_init_fn", None)


def _guard(op: str, tensors: List[Any]) -> None:
    """Refuse calls the policy would not send to aclnn (never run the simulator here)."""
    devices = sorted({t.device.type for t in tensors})
    if set(devices) & set(NPU_DEVICE_TYPES):
        return  # the op's kernel asks the policy, which answers aclnn or raises
    if requested_backend() == "aclnn" and select_backend(op, tensors) == "aclnn":
        return  # CPU tensors on the tests' fake CANN runtime, aclnn requested explicitly
    raise BackendError(
        f"{op}: the NPU (PrivateUse1) kernel was reached with tensors on {devices}; it only runs CANN's "
        "aclnn and never the simulator. Call the op with CPU tensors for the simulator, or with NPU "
        "tensors for aclnn.")


def make_npu_kernel(op: str) -> Callable[..., Any]:
    """The PrivateUse1 kernel of ``torch.ops.ascend_moe.<op>`` (see the module docstring)."""
    inner = _op_function(op)
    if inner is None:
        raise RuntimeError(f"{op}: neither declared in ascend_moe.opdecl nor defined with custom_op; declare it")

    def npu_kernel(*args: Any, **kwargs: Any) -> Any:
        _guard(op, _tensors(dict(enumerate(args), **kwargs)))
        return inner(*args, **kwargs)

    npu_kernel.__name__ = f"{op}_npu_kernel"
    npu_kernel.__qualname__ = npu_kernel.__name__
    npu_kernel.__wrapped__ = inner
    return npu_kernel


def register_all() -> Dict[str, str]:
    """Register the PrivateUse1 kernel of every ``ascend_moe`` op that lacks one; returns
    ``{op: "registered" | "already registered"}``."""
    device = torch._C._get_privateuse1_backend_name()  # "privateuseone", or "npu" under torch_npu
    status: Dict[str, str] = {}
    from ._generate import NPU_KERNELS as generated
    for op in registered_ops():
        if op in generated:  # generated from the op's declaration (checker + aclnn, or the simulated device)
            NPU_KERNELS[op] = generated[op]
            status[op] = "registered"
            continue
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
