"""The ops: one declaration per op (:mod:`ascend_moe.opdecl`), one module per op family.

The declaration modules import no torch (the checker binds calls with them in torch-free processes).
When torch is importable, importing this package registers ``torch.ops.ascend_moe.*`` from the
declarations (:mod:`ascend_moe.ops._generate`) and exports the public functions.
"""
from ..opdecl import DECL_MODULES, get_decl

try:
    import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without torch
    _torch = None

__all__ = []

if _torch is not None:
    from ._generate import register as _register

    for _name in DECL_MODULES:
        _fn = _register(get_decl(_name))
        globals()[_name] = _fn
        __all__.append(_name)

    from .format_cast import *  # noqa: F401,F403,E402
    from . import _npu_kernels  # noqa: F401,E402  (records the generated PrivateUse1 kernels; keep last)
    from . import format_cast as _fc
    __all__.extend(n for n in _fc.__all__ if n not in __all__)
