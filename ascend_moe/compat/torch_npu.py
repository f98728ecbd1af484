"""A CPU drop-in for the parts of ``torch_npu`` that ascend-moe implements.

After :func:`ascend_moe.compat.install` (or under ``pytest -p ascend_moe.pytest_plugin``), on a
machine where the real ``torch_npu`` cannot be imported, ``import torch_npu`` gives this module:

* the MoE operators with torch_npu's names, argument names and defaults, computed by the
  bit-faithful simulator after the constraint checker has run for the selected product / CANN
  version: ``npu_grouped_matmul``, ``npu_moe_gating_top_k``, ``npu_ffn``,
  ``npu_grouped_matmul_swiglu_quant``, ``npu_grouped_matmul_swiglu_quant_v2``,
  ``npu_grouped_matmul_finalize_routing``;
* ``npu_format_cast(tensor, acl_format)`` (records FRACTAL_NZ on the CPU tensor, so the NZ rules
  and the NZ entry points apply) and ``get_npu_format(tensor)``;
* torch_npu's extra dtype codes as the Python ints torch_npu uses: ``hifloat8`` (290),
  ``float4_e2m1fn_x2`` (296), ``float8_e8m0fnu`` (293);
* ``torch_npu.npu.is_available()`` -> False and ``torch_npu.npu.device_count()`` -> 0: the truth on a
  CPU machine.  No NPU device is faked: ``torch.npu`` is not created, ``.npu()`` does not exist,
  streams/events/memory calls are not provided.

Every other public name of the real torch_npu (``torch_npu_names.txt``: op-plugin's custom ops and
torch_npu's own format ops) exists as a function that raises ``NotImplementedError`` naming it when
called, so ``mock.patch("torch_npu.npu_xxx")`` works without ``create=True``; a name the real package
does not have raises ``NotImplementedError`` (an ``AttributeError`` too) on access (see ``_shim``).
A test that reaches an operator we do not compute fails loudly instead of getting a ``MagicMock``.

Under :func:`ascend_moe.simulate` (``python -m ascend_moe run``, the pytest plugin's
``--ascend-simulate``) ``torch_npu.npu`` is ``torch.npu`` of the simulated npu device instead.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from .. import formats as _formats
from ._shim import missing_attribute

# torch_npu name -> ascend_moe.ops module, for the ops not declared in ascend_moe.opdecl yet; every
# declared op whose ``drop_in`` names torch_npu is added by _bind_ops.
OPS: Dict[str, str] = {
    "npu_ffn": "ffn",
    "npu_grouped_matmul_swiglu_quant": "swiglu_quant",
    "npu_grouped_matmul_swiglu_quant_v2": "swiglu_quant",
    "npu_grouped_matmul_finalize_routing": "finalize_routing",
    "npu_format_cast": "format_cast",
}

# torch_npu's custom dtypes are Python ints (spec aclnn-abi-and-torch.md 1.2) [C].
hifloat8 = 290
float4_e2m1fn_x2 = 296
float8_e8m0fnu = 293

# Marks the module as the ascend-moe drop-in (``getattr(torch_npu, "__ascend_moe_shim__", False)``).
__ascend_moe_shim__ = True


def _bind_ops(namespace: Dict[str, Any]) -> None:
    import importlib
    from ..opdecl import all_decls
    import ascend_moe.ops as ops
    for decl in all_decls():
        if "torch_npu" in decl.drop_in and hasattr(ops, decl.name):
            namespace[decl.name] = getattr(ops, decl.name)
            OPS[decl.name] = "opdecl"
    for name, module in OPS.items():
        if module == "opdecl":
            continue
        try:
            mod = importlib.import_module(f"ascend_moe.ops.{module}")
        except ImportError:  # the op family is missing from this build: the name stays unimplemented
            continue
        fn = getattr(mod, name, None)
        if fn is not None:
            namespace[name] = fn


_bind_ops(globals())

_CODE_OF_FORMAT = {name: code for code, name in _formats.FORMAT_NAMES.items()}


def get_npu_format(tensor: Any) -> int:
    """The ACL format code of ``tensor`` (2 = ND, 29 = FRACTAL_NZ), as ``torch_npu.get_npu_format``."""
    return _CODE_OF_FORMAT.get(_formats.get_format(tensor), _formats.ACL_FORMAT_ND)


def npu_format_cast_(tensor: Any, acl_format: int) -> Any:
    """In place: ``tensor`` (and every view of its storage) is now held in ``acl_format``
    (2 ND, 29 FRACTAL_NZ); returns ``tensor``, as ``torch_npu.npu_format_cast_``."""
    if acl_format not in (_formats.ACL_FORMAT_ND, _formats.ACL_FORMAT_FRACTAL_NZ):
        raise ValueError(f"npu_format_cast_: acl_format must be 2 (ND) or 29 (FRACTAL_NZ), got {acl_format!r} "
                         f"({_formats.FORMAT_NAMES.get(acl_format, 'unknown')})")
    _formats.set_format(tensor, _formats.FORMAT_NAMES[acl_format])
    return tensor


# ---- torch_npu.npu: only the truthful answers of a machine without an NPU -------------------------
npu = types.ModuleType(__name__ + ".npu", "ascend-moe CPU drop-in for torch_npu.npu: no NPU here.")


def _is_available() -> bool:
    """False: the drop-in runs where no NPU is usable (it is installed only without torch_npu)."""
    return False


def _device_count() -> int:
    """0: the drop-in runs where no NPU is usable."""
    return 0


npu.is_available = _is_available
npu.device_count = _device_count
npu.__ascend_moe_shim__ = True


def _npu_getattr(name: str) -> Any:
    raise missing_attribute(npu.__name__, "torch_npu.npu", name, ["is_available", "device_count"])


npu.__getattr__ = _npu_getattr  # PEP 562: consulted for names the module lacks
sys.modules.setdefault(npu.__name__, npu)

IMPLEMENTED = tuple(sorted([*[n for n in OPS if n in globals()], "get_npu_format", "npu_format_cast_", "hifloat8",
                            "float4_e2m1fn_x2", "float8_e8m0fnu", "npu"]))


def _real_names() -> Tuple[str, ...]:
    """The public names of the real torch_npu (data file beside this module; it says where they come from)."""
    text = Path(__file__).with_name("torch_npu_names.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


REAL_NAMES = _real_names()


def _not_implemented(name: str) -> Callable[..., Any]:
    """The stand-in for a real torch_npu function ascend-moe does not compute: it exists (so
    ``mock.patch("torch_npu.<name>")`` works without ``create=True``) and raises when called."""
    def not_implemented(*args: Any, **kwargs: Any) -> Any:
        computed = ", ".join(n for n in IMPLEMENTED if n.startswith("npu_") or n == "get_npu_format")
        raise NotImplementedError(
            f"torch_npu.{name} is not implemented by the ascend-moe CPU drop-in for torch_npu; it computes only: "
            f"{computed}. Patch it in your test (mock.patch('torch_npu.{name}', ...)), compute it with plain torch, "
            f"or run on an Ascend machine with the real torch_npu.")
    not_implemented.__name__ = not_implemented.__qualname__ = name
    not_implemented.__doc__ = f"torch_npu.{name}: not computed by ascend-moe (raises NotImplementedError)."
    not_implemented.__ascend_moe_not_implemented__ = True
    return not_implemented


for _name in REAL_NAMES:
    if _name not in globals():
        globals()[_name] = _not_implemented(_name)
del _name

__all__ = sorted(set(IMPLEMENTED) | set(REAL_NAMES))


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "torch_npu", name, IMPLEMENTED)
