"""The PrivateUse1 (NPU) kernels of the ``torch.ops.ascend_moe.*`` ops, as registered.

Every op is declared once (:mod:`ascend_moe.opdecl`) and its PrivateUse1 kernel is generated with it
(:func:`ascend_moe.ops._generate.make_npu_kernel`): the checker, then CANN's aclnn for tensors on a real
NPU - or the simulator on :func:`ascend_moe.backends.host_view` of the tensors when the ``npu`` device
is the simulated host-memory one (:func:`ascend_moe.backends.privateuse1_is_simulated`).  NPU tensors
never reach a CPU code path; CPU tensors reach this kernel only through the fake-CANN test hook
(``use_backend("aclnn")``), otherwise it raises :class:`~ascend_moe.BackendError`.

This module records the registration (``REGISTRATION``) and refuses an ``ascend_moe`` op that has no
declaration.  Autograd needs nothing here: ``register_autograd`` registers the ``Autograd`` alias key,
which covers ``AutogradPrivateUse1``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Tuple

import torch

NAMESPACE = "ascend_moe"

# The ops every build must register; ``registered_ops()`` also finds any others.
EXPECTED_OPS: Tuple[str, ...] = (
    "npu_gmm", "npu_gmm_v2", "npu_grouped_matmul", "npu_moe_gating_top_k", "npu_ffn",
    "npu_grouped_matmul_swiglu_quant", "npu_grouped_matmul_swiglu_quant_v2",
    "npu_grouped_matmul_finalize_routing",
)
# npu_format_cast is deliberately a plain function, not a torch op (ascend_moe.ops.format_cast): it
# records FRACTAL_NZ on its CPU result (ascend_moe.formats) and returns its input itself when it is
# already in the target format, which a custom op may not do; NPU tensors go to torch_npu's own op.

# op name -> the function registered for PrivateUse1
NPU_KERNELS: Dict[str, Callable[..., Any]] = {}


def registered_ops() -> List[str]:
    """Names of the ops registered in the ``ascend_moe`` torch.library namespace."""
    names = set()
    for qualified in torch._C._dispatch_get_all_op_names():
        ns, _, rest = qualified.partition("::")
        if ns == NAMESPACE:
            names.add(rest.split(".")[0])
    return sorted(names)


def schema_signature(op: str) -> inspect.Signature:
    """The Python signature of the op's torch.library schema (names, keyword-only split, defaults)."""
    params = []
    for arg in getattr(torch.ops.ascend_moe, op).default._schema.arguments:
        kind = inspect.Parameter.KEYWORD_ONLY if arg.kwarg_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = arg.default_value if arg.has_default_value() else inspect.Parameter.empty
        params.append(inspect.Parameter(arg.name, kind, default=default))
    return inspect.Signature(params)


def register_all() -> Dict[str, str]:
    """``{op: "registered"}`` for every ``ascend_moe`` op: its generated PrivateUse1 kernel is in place."""
    from ._generate import NPU_KERNELS as generated
    status: Dict[str, str] = {}
    for op in registered_ops():
        if op not in generated:
            raise RuntimeError(f"torch.ops.ascend_moe.{op} has no declaration (ascend_moe.opdecl); declare it so "
                               "that its kernels, PrivateUse1 included, are generated")
        NPU_KERNELS[op] = generated[op]
        status[op] = "registered"
    return status


REGISTRATION = register_all()
