"""Everything torch-facing that is generated from an :class:`~ascend_moe.opdecl.OpDecl`.

``register(decl)`` defines ``torch.ops.ascend_moe.<name>`` and returns the public function:

* the ``torch.library`` schema: the declared op-plugin schema without its ``*`` (``custom_op`` does
  not take keyword-only tensors, and ``torch.ops`` callers pass them positionally);
* the fake (Meta) kernel: bind, one-device check, checker, shape rule -> ``new_empty``;
* the CPU kernel: bind, one-device check, checker, then the simulator (or, only as the documented
  test hook ``use_backend("aclnn")`` / ``set_backend("aclnn")`` / ``ASCEND_MOE_BACKEND=aclnn`` with the
  fake CANN runtime loaded, aclnn on CPU tensors);
* the PrivateUse1 kernel: checker, then aclnn - or the simulator on :func:`host_view` of the tensors
  when :func:`~ascend_moe.backends.privateuse1_is_simulated` says the device is the simulated one;
* autograd from ``decl.backward`` / ``decl.setup_context``;
* the public function: a real ``__signature__`` (the declared schema + ``backend=None``), type hints,
  the declaration's docstring, one binder that validates names and types (TypeError naming the
  argument and the expected type) and devices, and no ambient state: the device decides the kernel,
  so every public op compiles with ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import backends as _backends
from .. import kernels as machine_kernels
from ..products import resolve_target
from ..rules import enforce_call
from ..sim import kernels as sim_kernels
from ..backends import NPU_DEVICE_TYPES, BackendError, requested_backend, select_backend
from ..opdecl import OpDecl
from ._common import from_numpy, to_numpy

NAMESPACE = "ascend_moe"

# op name -> its CustomOpDef / public function / CPU kernel / PrivateUse1 kernel
OPDEFS: Dict[str, Any] = {}
PUBLIC: Dict[str, Callable[..., Any]] = {}
CPU_KERNELS: Dict[str, Callable[..., Any]] = {}
NPU_KERNELS: Dict[str, Callable[..., Any]] = {}

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8,
           "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8, "int16": torch.int16,
           "bool": torch.bool, "float64": torch.float64}


_DTYPE_OF_NUMPY = {np.dtype(name): dt for name, dt in _DTYPES.items() if name != "bfloat16"}


def torch_dtype(d: Any) -> torch.dtype:
    """A shape rule's dtype (a torch dtype, a NumPy dtype or a dtype name) as a torch dtype."""
    if isinstance(d, torch.dtype):
        return d
    known = _DTYPE_OF_NUMPY.get(d) if isinstance(d, np.dtype) else None
    return known if known is not None else _DTYPES[str(d)]


def _is_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


def torch_schema(decl: OpDecl) -> str:
    """The declared schema without its ``*``, plus the trailing ``str[]? tensor_formats=None``."""
    return decl.torch_parsed.spelled(keyword_split=False, name=False)


def bind(decl: OpDecl, args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Binding of the public spelling (the declared schema, ``*`` included)."""
    return decl.bind(args, kwargs, tensor_check=_is_tensor)


def kernel_bind(decl: OpDecl, args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Binding inside the kernels: the torch.library schema (no ``*``, overload variants folded back).
    The formats stated in its trailing ``tensor_formats`` argument are recorded on the tensors they
    name (:func:`state_formats`), so the checker, the shape rule and aclnn read the real format."""
    args, kwargs, stated = decl.split_formats(args, kwargs)
    a = decl.bind_torch(args, kwargs, tensor_check=_is_tensor)
    if stated:
        state_formats(decl, a, stated)
    return a


def _named_tensor(a: Dict[str, Any], key: str) -> Any:
    name, _, index = key.partition("[")
    v = a.get(name)
    if index:
        i = int(index.rstrip("]")) if index.rstrip("]").isdigit() else -1
        v = v[i] if isinstance(v, (list, tuple)) and 0 <= i < len(v) else None
    return v


def state_formats(decl: OpDecl, a: Dict[str, Any], stated: Dict[str, str]) -> None:
    """Record each format of ``tensor_formats`` on the CPU / meta tensor it names (a FormattedTensor's
    values, unwrapped by its dispatch, or their fake tensor while tracing).  Device tensors keep their
    format on the device and are left alone."""
    from .. import formats
    for key, fmt in stated.items():
        t = _named_tensor(a, key)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{decl.name}: argument 'tensor_formats' names {key!r}, which is not a tensor argument "
                            f"of this call")
        if fmt not in formats.FORMAT_IDS:
            raise ValueError(f"{decl.name}: argument 'tensor_formats': unknown format {fmt!r} for {key!r}; known: "
                             f"{sorted(formats.FORMAT_IDS)}")
        if t.device.type in ("cpu", "meta"):
            formats.set_format(t, fmt)


def tensors_of(decl: OpDecl, a: Dict[str, Any]) -> List[Tuple[str, torch.Tensor]]:
    found: List[Tuple[str, torch.Tensor]] = []
    for arg in decl.args:
        v = a.get(arg.name)
        if isinstance(v, torch.Tensor):
            found.append((arg.name, v))
        elif isinstance(v, (list, tuple)):
            found.extend((f"{arg.name}[{i}]", t) for i, t in enumerate(v) if isinstance(t, torch.Tensor))
    return found


def check_one_device(decl: OpDecl, named: List[Tuple[str, torch.Tensor]]) -> Optional[torch.device]:
    """All tensor arguments on one device type, else BackendError naming each argument's device."""
    if not named:
        return None
    first_name, first = named[0]
    if all(t.is_cpu for _, t in named):  # the common case without a torch.device per tensor (~30 us cold)
        return first.device
    for name, t in named[1:]:
        if t.device.type != first.device.type:
            raise BackendError(
                f"{decl.name}: all tensor arguments must be on one device, but '{first_name}' is on "
                f"{first.device} and '{name}' is on {t.device}; move them to one device (CPU for the "
                "simulator, the NPU for aclnn, 'meta' for shape-only tracing)")
    return first.device


# ------------------------------------------------------------------------------------------------
# running the simulator and aclnn
# ------------------------------------------------------------------------------------------------

def _np_args(decl: OpDecl, a: Dict[str, Any], view: Callable[[torch.Tensor], torch.Tensor]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, v in a.items():
        if isinstance(v, torch.Tensor):
            out[name] = to_numpy(view(v))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(t, torch.Tensor) for t in v):
            out[name] = [to_numpy(view(t)) for t in v]
        else:
            out[name] = v
    return out


def _structure(decl: OpDecl, outs: List[torch.Tensor]) -> Any:
    rets = decl.parsed.returns
    if not outs and (decl.returns_written is not None or decl.returns_clone_of is not None):
        return None  # the op wrote into an argument: kernel_result gives what it returns
    if rets == ("Tensor[]",):
        return list(outs)
    if len(rets) == 1:
        return outs[0]
    return tuple(outs)


def kernel_result(decl: OpDecl, a: Dict[str, Any], result: Any) -> Any:
    """What the torch op returns: nothing for an op that returns the argument it wrote (the public
    function returns that argument), a copy of the written argument for ``returns_clone_of``, else the
    computed outputs."""
    if decl.returns_clone_of is not None:
        return a[decl.returns_clone_of].clone()
    if decl.returns_written is not None:
        return None
    return result


def _flat_outputs(result: Any) -> List[Any]:
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def run_sim(decl: OpDecl, a: Dict[str, Any], target: Any, device: Optional[torch.device] = None) -> Any:
    """The simulator on the bound arguments; outputs on ``device`` (CPU when None)."""
    on_device = device is not None and device.type != "cpu"
    view = _backends.host_view if on_device else _same
    # this machine's fastest faithful GEMMs (ascend_moe.kernels); converted copies of the declared
    # weights of CPU tensors are kept while those tensors are unchanged
    weights = [] if on_device or decl.cached_weights is None else list(decl.cached_weights(a))
    # IEEE subnormals on this thread too (the device keeps them; torch.set_flush_denormal may have switched them off)
    with sim_kernels.use(machine_kernels.for_call(*weights)), machine_kernels.ieee_subnormals():
        result = (decl.sim_torch or decl.sim)(_np_args(decl, a, view), target)
    # the adapter may return torch tensors it allocated itself (e.g. grouped matmul's output memory)
    outs = [r if isinstance(r, torch.Tensor) else from_numpy(np.asarray(r)) for r in _flat_outputs(result)]
    if on_device:
        placed = []
        for o in outs:
            d = torch.empty(o.shape, dtype=o.dtype, device=device)
            view(d).copy_(o)
            placed.append(d)
        outs = placed
    return _structure(decl, outs)


def _aclnn(decl: OpDecl, a: Dict[str, Any]) -> Any:
    try:
        from ..backends import aclnn
    except ImportError as e:  # the dispatcher's Python side is missing from this build
        raise BackendError(f"{decl.name}: the aclnn backend module cannot be imported ({e})") from e
    return aclnn.call(decl.name, a)


def _collective_target():
    return resolve_target()


def _enforce(decl: OpDecl, a: Dict[str, Any]):
    return enforce_call(decl.name, a)


# ------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------

def _device_weights_in_nz(decl: OpDecl, a: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The call with its weights (``decl.cached_weights``) described as FRACTAL_NZ, when they are fake
    tensors of an NPU: there the format is device metadata (torch_npu's storage description) that fake
    tensors do not carry, so the trace cannot know it.  None when no weight is such a tensor."""
    if decl.cached_weights is None:
        return None
    from torch._subclasses.fake_tensor import is_fake
    from ..rules import TensorSpec
    from ..sim.numerics import dtype_name
    weights = [w for v in decl.cached_weights(a) for w in (v if isinstance(v, (list, tuple)) else [v])]
    unknown = {id(w) for w in weights if isinstance(w, torch.Tensor) and w.device.type in NPU_DEVICE_TYPES
               and is_fake(w)}
    if not unknown:
        return None

    def as_nz(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and id(v) in unknown:
            return TensorSpec(tuple(int(s) for s in v.shape), dtype_name(v.dtype), "FRACTAL_NZ")
        if isinstance(v, (list, tuple)) and any(id(t) in unknown for t in v):
            return [as_nz(t) for t in v]
        return v
    return {k: as_nz(v) for k, v in a.items()}


def _enforce_traced(decl: OpDecl, a: Dict[str, Any]) -> None:
    """The checker at trace time.  CPU tensors carry their format (FormattedTensor, stated to the kernel
    in ``tensor_formats``), so it is checked exactly.  The weights of an NPU are fake tensors without
    their format: a call valid with them in ND or in FRACTAL_NZ passes the trace, and the NPU kernel
    checks the real format (no format is assumed: a call invalid in both is refused here)."""
    import warnings
    from ..rules import ConstraintError
    try:
        _enforce(decl, a)
        return
    except ConstraintError as e:
        first = e
        as_nz = _device_weights_in_nz(decl, a)
        if as_nz is None:
            if decl.cached_weights is None:
                raise
            from ..formatted import explain_traced_refusal
            raise explain_traced_refusal(e, a, decl.cached_weights(a)) from None
    try:
        with warnings.catch_warnings():  # the doc-level warnings were given by the first attempt
            warnings.simplefilter("ignore")
            _enforce(decl, as_nz)
    except ConstraintError as second:
        # invalid in both formats: report what holds whatever the weights' format is, when there is such
        common = {v.rule_id for v in second.violations}
        kept = [v for v in first.violations if v.rule_id in common]
        if kept and len(kept) < len(first.violations):
            raise ConstraintError(first.op, kept, first.target) from None
        raise first from None


def make_fake_kernel(decl: OpDecl) -> Callable[..., Any]:
    def fake(*args: Any, **kwargs: Any) -> Any:
        a = kernel_bind(decl, args, kwargs)
        named = tensors_of(decl, a)
        device = check_one_device(decl, named)
        _enforce_traced(decl, a)
        outs = [named[0][1].new_empty(tuple(shape), dtype=torch_dtype(dt), device=device)
                for shape, dt in decl.shape(a)]
        return kernel_result(decl, a, _structure(decl, outs))
    fake.__name__ = f"{decl.name}_fake"
    return fake


def make_cpu_kernel(decl: OpDecl) -> Callable[..., Any]:
    def cpu_kernel(*args: Any, **kwargs: Any) -> Any:
        a = kernel_bind(decl, args, kwargs)
        named = tensors_of(decl, a)
        check_one_device(decl, named)
        return cpu_kernel_bound(decl, a, named)
    cpu_kernel.__name__ = f"{decl.name}_cpu_kernel"
    return cpu_kernel


def cpu_kernel_bound(decl: OpDecl, a: Dict[str, Any], named: List[Tuple[str, torch.Tensor]]) -> Any:
    """The CPU kernel after binding (``a``, the public argument dict) and the one-device check."""
    tensors = [t for _, t in named]
    if decl.collective and select_backend(decl.name, tensors) != "aclnn":
        # the adapter checks, agreed across the ranks
        return kernel_result(decl, a, run_sim(decl, a, _collective_target()))
    target = _enforce(decl, a)
    if select_backend(decl.name, tensors) == "aclnn":  # the fake-CANN test hook only
        return kernel_result(decl, a, _aclnn(decl, a))
    if decl.sim_shortcut is not None:
        result = decl.sim_shortcut(a)
        if result is not None:
            return kernel_result(decl, a, result)
    return kernel_result(decl, a, run_sim(decl, a, target))


def make_npu_kernel(decl: OpDecl) -> Callable[..., Any]:
    def npu_kernel(*args: Any, **kwargs: Any) -> Any:
        a = kernel_bind(decl, args, kwargs)
        named = tensors_of(decl, a)
        return npu_kernel_bound(decl, a, named, check_one_device(decl, named))
    npu_kernel.__name__ = f"{decl.name}_npu_kernel"
    return npu_kernel


def npu_kernel_bound(decl: OpDecl, a: Dict[str, Any], named: List[Tuple[str, torch.Tensor]],
                     device: Optional[torch.device]) -> Any:
    """The PrivateUse1 kernel after binding and the one-device check (``device``: the tensors')."""
    tensors = [t for _, t in named]
    on_npu = device is not None and device.type in NPU_DEVICE_TYPES
    if on_npu and _backends.privateuse1_is_simulated():
        if requested_backend() == "aclnn":
            raise BackendError(f"{decl.name}: backend 'aclnn' was requested but the NPU device is the "
                               "simulated host-memory one; use backend 'auto' or 'sim'")
        target = _collective_target() if decl.collective else _enforce(decl, a)
        return kernel_result(decl, a, run_sim(decl, a, target, device))
    if not on_npu and requested_backend() != "aclnn":
        raise BackendError(
            f"{decl.name}: the NPU (PrivateUse1) kernel was reached with tensors on "
            f"{sorted({t.device.type for t in tensors})}; it only runs CANN's aclnn and never the "
            "simulator. Call the op with CPU tensors for the simulator, or with NPU tensors for aclnn.")
    if not (decl.collective and on_npu):  # a collective op's aclnn entry check agrees across the ranks
        _enforce(decl, a)
    select_backend(decl.name, tensors)  # refuses an explicit 'sim' and a missing aclnn, saying why
    return kernel_result(decl, a, _aclnn(decl, a))


# ------------------------------------------------------------------------------------------------
# the public function
# ------------------------------------------------------------------------------------------------

_BACKENDS = (None, "auto", "sim", "aclnn")


def public_backend(op: str, backend: Optional[str], device: Optional[torch.device]) -> bool:
    """Validate the ``backend=`` argument against the tensors' device (no ambient state is set).
    Returns True when the call must take the fake-CANN test route (CPU tensors through aclnn)."""
    if backend not in _BACKENDS:
        raise ValueError(f"{op}: backend must be one of ('auto', 'sim', 'aclnn') or None, got {backend!r}")
    dev = device.type if device is not None else "cpu"
    if dev in NPU_DEVICE_TYPES:
        if backend == "sim" and not _backends.privateuse1_is_simulated():
            raise BackendError(f"{op}: backend 'sim' was requested but the tensors live on the NPU; the "
                               "simulator never computes NPU tensors. Move them to the CPU with .cpu(), "
                               "or use backend 'auto'/'aclnn'")
        if backend == "aclnn" and _backends.privateuse1_is_simulated():
            raise BackendError(f"{op}: backend 'aclnn' was requested but the NPU device is the "
                               "simulated host-memory one; use backend 'auto' or 'sim'")
        return False
    if backend == "aclnn" and dev == "cpu":
        return True
    return False


def _formatted_call_in_one_dispatch(op: Any, targs: Sequence[Any], named: List[Tuple[str, torch.Tensor]]) -> Any:
    """A call with FormattedTensor arguments, made with their plain values and ``tensor_formats`` at once (what
    FormattedTensor.__torch_dispatch__ would do after a first trip through the dispatcher: ~0.03-0.1 ms saved per
    call); None to go through the dispatcher: no FormattedTensor, one that requires grad (autograd must see it),
    another tensor subclass, a dispatch mode, or torch.compile tracing."""
    from ..formatted import FormattedTensor, _call_declared_op
    found = False
    for _, t in named:
        kind = type(t)
        if kind is FormattedTensor:
            if t.requires_grad or type(t._inner) is not torch.Tensor:
                return None
            found = True
        elif kind is not torch.Tensor and kind is not torch.nn.Parameter:
            return None
    if not found or torch.compiler.is_compiling():
        return None
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    if _get_current_dispatch_mode() is not None:
        return None
    return _call_declared_op(op, targs, {})


# ------------------------------------------------------------------------------------------------
# the direct route: a plain eager call without the dispatcher's Python layers
# ------------------------------------------------------------------------------------------------
# A custom op's eager call on CPU tensors goes dispatcher -> torch's Python autograd layer -> its
# redispatch -> the kernel's wrapper -> our kernel: about 0.2-0.3 ms per call right after a large GEMM has
# evicted the interpreter's working set, as much as a small expert GEMM.  Where nothing could observe the
# difference, the public function calls the same kernel itself (and, when a gradient is needed, through an
# autograd.Function built from the same backward and setup_context torch's layer is given).  Everything
# else - any tensor subclass, a dispatch or torch-function mode, torch.compile, jit tracing, functorch
# transforms, the profiler, an op that writes an argument or is collective, tensor-list autograd - takes
# the dispatcher as before.  ASCEND_MOE_DIRECT_CALLS=0 sends every call through the dispatcher.

_DISPATCH = object()  # "go through the dispatcher"


def direct_calls_enabled() -> bool:
    return os.environ.get("ASCEND_MOE_DIRECT_CALLS", "1") != "0"


def _direct_route_kinds(decl: OpDecl) -> Tuple[bool, bool]:
    """(may the op's eager calls go direct, may its gradient-recording calls) - fixed per declaration."""
    plain = not decl.mutates and decl.returns_written is None and decl.returns_clone_of is None \
        and not decl.collective
    lists = any(a.base == "Tensor[]" for a in decl.torch_parsed.args) or "Tensor[]" in decl.parsed.returns
    return plain, plain and decl.backward is not None and not lists


# read on every call: the C entry points themselves (no module attribute chains)
_dispatch_modes = torch._C._len_torch_dispatch_stack         # user and infra (fake, proxy) modes
_torch_function_mode = torch._C._is_torch_function_mode_enabled
_functorch_interpreters = torch._C._functorch.peek_interpreter_stack
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead
_jit_tracing = torch._C._get_tracing_state
_profiler = torch.autograd.profiler


def _ambient_state_needs_dispatcher() -> bool:
    return (torch.compiler.is_compiling() or _dispatch_modes() > 0 or _torch_function_mode()
            or _functorch_interpreters() is not None or _jit_tracing() is not None
            or _profiler._is_profiler_enabled)


def _direct_function(decl: OpDecl) -> Any:
    """The autograd.Function of a gradient-recording direct call, made as torch's custom-op layer makes its
    own: forward runs the kernel then the registered setup_context on the torch schema's inputs (formats
    included), backward is the registered backward.  forward's first argument is the call's kernel (the
    bound arguments in it), not an input of the op: its gradient slot is dropped."""
    backward, setup_context = _autograd_without_formats(decl)

    def forward(ctx: Any, run: Callable[[], Any], *args: Any) -> Any:
        output = run()
        setup_context(ctx, args, output)
        return output

    def backward_of(ctx: Any, *grads: Any) -> Any:
        whole = ctx.needs_input_grad  # restored after: a retained graph's backward runs again on this ctx
        ctx.needs_input_grad = whole[1:]  # the schema's inputs, as torch's layer passes them
        try:
            result = backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = whole
        return (None,) + (tuple(result) if isinstance(result, (list, tuple)) else (result,))

    return type(f"Direct_{decl.name}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward_of)})


_DIRECT_FUNCTIONS: Dict[str, Any] = {}
_DIRECT_KINDS: Dict[str, Tuple[bool, bool]] = {}


def _direct_kernel(decl: OpDecl, tensors: Sequence[torch.Tensor]) -> Optional[str]:
    """``"cpu"`` / ``"npu"`` (the simulated device): the kernel a direct call of these tensors runs; None
    where the dispatcher is needed."""
    if not _DIRECT_KINDS[decl.name][0] or not tensors:
        return None
    for t in tensors:
        kind = type(t)
        if kind is not torch.Tensor and kind is not torch.nn.Parameter:
            return None
    if all(t.is_cpu for t in tensors):  # (no torch.device per tensor: ~50 us when the caches are cold)
        where = "cpu"
    else:
        device = tensors[0].device
        if any(t.device != device for t in tensors):
            return None
        if device.type in NPU_DEVICE_TYPES and _backends.privateuse1_is_simulated():
            where = "npu"
        else:
            return None
    if not direct_calls_enabled() or _ambient_state_needs_dispatcher():
        return None
    return where


def _needs_grad(tensors: Sequence[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _direct_public_call(decl: OpDecl, a: Dict[str, Any], named: List[Tuple[str, torch.Tensor]],
                        device: Optional[torch.device], targs: Tuple[Any, ...]) -> Any:
    """A public call's kernel on its bound arguments (no second binding), or _DISPATCH."""
    tensors = [t for _, t in named]
    where = _direct_kernel(decl, tensors)
    if where is None:
        return _DISPATCH

    def run() -> Any:
        return cpu_kernel_bound(decl, a, named) if where == "cpu" else npu_kernel_bound(decl, a, named, device)
    if not _needs_grad(tensors):
        return run()
    if not _DIRECT_KINDS[decl.name][1]:
        return _DISPATCH
    fn = _DIRECT_FUNCTIONS.get(decl.name)
    if fn is None:
        fn = _DIRECT_FUNCTIONS[decl.name] = _direct_function(decl)
    # torch's C apply itself: Function.apply's Python layer adds ~10 us a call, for setup_context binding and
    # functorch transforms that a direct call never has (_direct_kernel refuses any transform); its unwrapping of
    # dead functorch wrappers among the tensor arguments is kept
    args = tuple(_unwrap_if_dead(t) if isinstance(t, torch.Tensor) else t for t in targs)
    return super(torch.autograd.Function, fn).apply(run, *args, None)  # None: the trailing tensor_formats


def _tensors_in(args: Sequence[Any], kwargs: Dict[str, Any]) -> List[torch.Tensor]:
    """The tensors of a torch-schema call, in tensor lists too."""
    return [t for v in (*args, *kwargs.values())
            for t in (v if isinstance(v, (list, tuple)) else (v,)) if isinstance(t, torch.Tensor)]


def call_op(name: str, *args: Any, **kwargs: Any) -> Any:
    """``torch.ops.ascend_moe.<name>(*args, **kwargs)`` (the torch schema's spelling), by the direct route
    where it is open and no gradient is recorded: what the ops' own backward formulas call."""
    decl = PUBLIC[name].__ascend_moe_decl__
    tensors = _tensors_in(args, kwargs)
    where = _direct_kernel(decl, tensors)
    if where is not None and not _needs_grad(tensors):
        return (CPU_KERNELS if where == "cpu" else NPU_KERNELS)[name](*args, **kwargs)
    return getattr(torch.ops.ascend_moe, name)(*args, **kwargs)


def checked_direct_cpu_call(name: str, *args: Any, **kwargs: Any) -> Optional[Tuple[OpDecl, Dict[str, Any], Any]]:
    """:func:`call_op` up to its kernel, where it would run the CPU kernel directly: (the declaration, the bound
    arguments, the checker's target), the checker having run (a ConstraintError raised as the kernel would).  None
    where call_op would take another route (the dispatcher, the simulated npu, a gradient recorded, the fake-CANN
    aclnn hook): call call_op then.  For a backward formula with two products, which checks and sets up both
    before running either: right after a large GEMM the interpreter's state has left the caches, and the second
    set-up costs a fraction of the first when it follows it at once."""
    decl = PUBLIC[name].__ascend_moe_decl__
    tensors = _tensors_in(args, kwargs)
    # (a collective op never goes direct: _direct_kernel says None)
    if _direct_kernel(decl, tensors) != "cpu" or _needs_grad(tensors) or requested_backend() == "aclnn":
        return None
    a = kernel_bind(decl, args, kwargs)
    check_one_device(decl, tensors_of(decl, a))
    return decl, a, _enforce(decl, a)


def make_public(decl: OpDecl, op: Any) -> Callable[..., Any]:
    _DIRECT_KINDS[decl.name] = _direct_route_kinds(decl)

    def public(*args: Any, backend: Optional[str] = None, **kwargs: Any) -> Any:
        a = bind(decl, args, kwargs)
        named = tensors_of(decl, a)
        device = check_one_device(decl, named)
        if public_backend(decl.name, backend, device):
            result = _fake_cann_route(decl, a, [t for _, t in named])
        else:
            targs = decl.to_torch(a)
            result = _direct_public_call(decl, a, named, device, targs)
            if result is _DISPATCH:
                result = _formatted_call_in_one_dispatch(op, targs, named)
                if result is None:
                    result = op(*targs)
        # an op that returns the argument it wrote returns that very tensor (torch_npu's Tensor(a!))
        return a[decl.returns_written] if decl.returns_written is not None else result

    public.__name__ = public.__qualname__ = decl.name
    public.__module__ = "ascend_moe"
    public.__doc__ = (decl.doc or "").strip() + (
        "\n\n``backend``: None / ``'auto'`` (the device decides: CPU tensors run the simulator, NPU tensors "
        "aclnn), ``'sim'`` or ``'aclnn'`` (strict: a request the tensors' device cannot serve raises "
        "BackendError).  ``backend='aclnn'`` with CPU tensors is the fake-CANN test route (eager only).\n\n"
        f"Schema: ``{decl.schema}``")
    sig = decl.signature
    params = [p.replace(annotation=_annotation(decl, p.name)) for p in sig.parameters.values()]
    params.append(inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Optional[str]))
    ret = _return_annotation(decl)
    public.__signature__ = inspect.Signature(params, return_annotation=ret)
    public.__annotations__ = {p.name: p.annotation for p in params}
    public.__annotations__["return"] = ret
    public.__ascend_moe_decl__ = decl
    return public


def refuse_fake_cann_route_when_compiling(op: str) -> None:
    if torch.compiler.is_compiling():
        raise BackendError(f"{op}: backend='aclnn' with CPU tensors (the fake-CANN test route) runs "
                           "eagerly only; inside torch.compile wrap the call in ascend_moe.use_backend('aclnn')")


def _fake_cann_route(decl: OpDecl, a: Dict[str, Any], tensors: List[torch.Tensor]) -> Any:
    """``backend='aclnn'`` with CPU tensors: the checker then aclnn, accepted by the tests' fake CANN
    runtime alone (a real CANN refuses CPU tensors).  A test hook, eager only."""
    refuse_fake_cann_route_when_compiling(decl.name)
    _enforce(decl, a)
    select_backend(decl.name, tensors, "aclnn")  # refuses unless the fake runtime is loaded
    return kernel_result(decl, a, _aclnn(decl, a))


_ANN = {"Tensor": torch.Tensor, "Tensor?": Optional[torch.Tensor], "Tensor[]": List[torch.Tensor],
        "Tensor[]?": Optional[List[torch.Tensor]], "int": int, "int?": Optional[int], "int[]": List[int],
        "int[]?": Optional[List[int]], "float": float, "float?": Optional[float], "bool": bool,
        "bool?": Optional[bool], "str": str, "str?": Optional[str], "ScalarType": torch.dtype,
        "ScalarType?": Optional[torch.dtype], "SymInt": int}


def _annotation(decl: OpDecl, name: str) -> Any:
    ann = _ANN.get(decl.parsed.arg(name).type, Any)
    if name in decl.alternatives:  # one argument, two overloads (e.g. Tensor or the .List overload's int[])
        ann = Union[ann, _ANN.get(decl.alternatives[name][0].type, Any)]
    return ann


def _return_annotation(decl: OpDecl) -> Any:
    rets = decl.parsed.returns
    if rets == ("Tensor[]",):
        return List[torch.Tensor]
    if len(rets) == 1:
        return torch.Tensor
    return Tuple[tuple(torch.Tensor for _ in rets)]


# ------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------

def _autograd_without_formats(decl: OpDecl) -> Tuple[Callable[..., Any], Callable[..., Any]]:
    """The declaration's backward and setup_context, which know the declared arguments: the trailing
    ``tensor_formats`` input is dropped from what setup_context sees, and gets no gradient."""
    n_inputs = len(decl.torch_parsed.args)

    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> Any:
        return decl.setup_context(ctx, tuple(inputs)[:n_inputs - 1], output)

    def backward(ctx: Any, *grads: Any) -> Any:
        passed = len(ctx.needs_input_grad)  # the dispatcher drops trailing defaults: the count varies
        result = decl.backward(ctx, *grads)
        if passed < n_inputs:  # no tensor_formats passed: the declaration's structure as it is
            return result
        result = tuple(result) if isinstance(result, (list, tuple)) else (result,)
        result = result[:n_inputs - 1]
        return result + (None,) * (passed - len(result))

    return backward, setup_context


def register(decl: OpDecl) -> Callable[..., Any]:
    """Define ``torch.ops.ascend_moe.<name>`` from ``decl``; returns the public function."""
    if decl.name in PUBLIC:
        return PUBLIC[decl.name]
    cpu_kernel = make_cpu_kernel(decl)
    CPU_KERNELS[decl.name] = cpu_kernel
    opdef = torch.library.custom_op(f"{NAMESPACE}::{decl.name}", cpu_kernel, mutates_args=decl.mutates,
                                    device_types="cpu", schema=torch_schema(decl))
    opdef.register_fake(make_fake_kernel(decl))
    npu_kernel = make_npu_kernel(decl)
    torch.library.register_kernel(f"{NAMESPACE}::{decl.name}", torch._C._get_privateuse1_backend_name(),
                                  npu_kernel)
    NPU_KERNELS[decl.name] = npu_kernel
    if decl.backward is not None:
        backward, setup_context = _autograd_without_formats(decl)
        opdef.register_autograd(backward, setup_context=setup_context)
    OPDEFS[decl.name] = opdef
    public = make_public(decl, getattr(torch.ops.ascend_moe, decl.name).default)
    PUBLIC[decl.name] = public
    return public
