"""The checked NumPy twins of the declared ops: ``npu_<op>(numpy arrays...)`` binds the call to the op's
declared torch_npu signature, runs the checker for the selected product / CANN release, then the
simulator (``undefined=`` selects the undefined-region policy for this call).  Generated from the
declarations (:mod:`ascend_moe.opdecl`); ``ascend_moe.sim.npu_*`` forwards here.  No torch needed.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

from .opdecl import DECL_MODULES, OpDecl, get_decl
from .rules import TensorSpec, enforce_call
from .sim.numerics import undefined_policy


def _tensor_like(v: Any) -> bool:
    return isinstance(v, (np.ndarray, TensorSpec))


def twin(decl: OpDecl) -> Callable[..., Any]:
    def fn(*args: Any, undefined: Optional[str] = None, **kwargs: Any) -> Any:
        options = {k: kwargs.pop(k) for k in decl.sim_options if k in kwargs}
        a: Dict[str, Any] = decl.bind(args, kwargs, tensor_check=_tensor_like, any_dtype=True)
        target = enforce_call(decl.name, a)
        if undefined is None:
            result = decl.sim(a, target, **options)
        else:
            with undefined_policy(undefined):
                result = decl.sim(a, target, **options)
        if decl.returns_clone_of is not None:  # the op wrote into an argument and returns a copy of it
            return np.array(a[decl.returns_clone_of], copy=True)
        if decl.returns_written is not None:   # ... or the argument itself
            return a[decl.returns_written]
        return result
    fn.__name__ = fn.__qualname__ = decl.name
    fn.__doc__ = f"NumPy twin of ``{decl.schema}`` (checked, then simulated).\n\n{decl.doc}"
    return fn


def __getattr__(name: str) -> Any:
    if name in DECL_MODULES:
        fn = twin(get_decl(name))
        globals()[name] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
