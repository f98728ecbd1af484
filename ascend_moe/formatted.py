"""A CPU tensor that carries its storage format: what ``npu_format_cast(w, 29)`` returns on the CPU.

On an NPU the format (FRACTAL_NZ, ...) is part of the storage description, so it travels with the
tensor: through ``clone``, views, ``detach``, ``nn.Parameter``, and into traced graphs.  A CPU tensor
has no such field; :class:`FormattedTensor` adds it as a traceable tensor subclass:

* the values live in a plain tensor (``_inner``); the format (and, for the 5-D NZ storage of
  ``npu_format_cast(..., storage=True)``, the logical shape it holds) is subclass metadata, flattened
  into the context of ``__tensor_flatten__`` so that fake tensors, ``make_fx``, ``torch.compile`` and
  ``torch.library.opcheck`` see it (each graph is specialised on it, as on any subclass metadata);
* ``__torch_dispatch__`` keeps the format where torch_npu keeps it and drops it where torch_npu's
  result is a new ND tensor (:data:`FORMAT_KEEPING_OPS`, in-place ops, views);
* a ``torch.ops.ascend_moe`` op receives the plain values plus the formats stated explicitly in its
  trailing ``tensor_formats`` argument (``["w=FRACTAL_NZ"]``), so its fake kernel checks the real
  format at trace time and the compiled graph carries it to the real kernel.

For a real tensor the subclass object holds the storage of its values (``Tensor._make_subclass``), so
``param.data = npu_format_cast(param.data, 29)`` gives the plain Parameter the cast values; the
Parameter object itself stays a plain tensor (torch replaces only its data), and its format is found
through :mod:`ascend_moe.formats`' storage record in eager code.  A fake or meta tensor inside has no
real storage: the subclass is then a wrapper (``Tensor._make_wrapper_subclass``).
"""
from __future__ import annotations

import copy
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils._pytree import tree_map_only

from . import formats as _formats

__all__ = ["FormattedTensor", "with_format", "unwrap", "FORMATS_ARG", "format_entries"]

# The trailing argument of every torch.ops.ascend_moe op: the formats of its tensor arguments
FORMATS_ARG = "tensor_formats"

# NZ storage record: None (a tag on a tensor of logical shape), a tuple (the logical shape that this 5-D
# NZ storage holds), or "unknown" (a view of such a storage: its rank decides, as for untagged arrays)
NzRecord = Union[None, Tuple[int, ...], str]

_aten = torch.ops.aten
# Results that keep their input's format, each as torch_npu does:
# * clone: the simulated device's clone (ascend_moe/device/csrc/npu_sim.cpp ``clone``) keeps the storage
#   format, following torch_npu's ``clone`` "with any npu formats" (torch_npu/csrc/aten/common/
#   TensorFactories.cpp ``NPUNativeFunctions::clone``);
# * empty_like: torch_npu allocates it in the input's npu_format (TensorFactories.cpp ``empty_like_npu``:
#   ``ApplyTensorWithFormat(self.sizes(), options, npu_format)``);
# * detach / alias / lift_fresh and every view: the same storage, whose description holds the format.
FORMAT_KEEPING_OPS = frozenset({
    _aten.clone.default, _aten.detach.default, _aten.alias.default, _aten.lift_fresh.default,
    _aten.empty_like.default,
})


def _plain_real(t: torch.Tensor) -> bool:
    """A real CPU tensor (not fake, functional, meta or another subclass) whose memory can be shared."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.device.type != "cpu":
        return False
    try:
        from torch._subclasses.fake_tensor import is_fake
        if is_fake(t):
            return False
    except ImportError:  # pragma: no cover
        pass
    return not torch._is_functional_tensor(t)


class FormattedTensor(torch.Tensor):
    """A tensor whose storage format travels with it (see the module docstring)."""

    _inner: torch.Tensor
    _storage_format: str
    _nz_storage: NzRecord

    @staticmethod
    def __new__(cls, inner: torch.Tensor, storage_format: str, nz_storage: NzRecord = None,
                requires_grad: Optional[bool] = None) -> "FormattedTensor":
        if isinstance(inner, FormattedTensor):
            inner = inner._inner
        rg = inner.requires_grad if requires_grad is None else requires_grad
        if _plain_real(inner):
            # The subclass object holds the values' storage itself, so ``param.data = cast`` (which takes
            # only the storage and sizes) and ``.numpy()`` see the real memory.  The values it flattens to
            # are the same memory under a second storage object (DLPack, no copy): torch's fake-tensor
            # conversion requires a subclass and its inner tensors not to share one storage.
            out = torch.Tensor._make_subclass(cls, inner, rg)
            # a plain tensor over this storage and view (the Parameter of ``param.data = cast``) finds the format
            _formats._format_record.set(inner, storage_format)
            _formats._nz_storage_logical_shape.set(inner, nz_storage if nz_storage != "unknown" else None)
            memory = inner.untyped_storage().data_ptr()
            inner = torch.from_dlpack(inner.detach())
            _register_alias(memory, inner)
            out._memory = memory
        else:
            out = torch.Tensor._make_wrapper_subclass(
                cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
                dtype=inner.dtype, device=inner.device, layout=inner.layout, requires_grad=rg)
        out._inner = inner
        out._storage_format = storage_format
        out._nz_storage = nz_storage
        return out

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # everything happens in __new__
        pass

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def data(self) -> torch.Tensor:  # noqa: D102 - torch's own getter
        return torch._C.TensorBase.data.__get__(self)

    @data.setter
    def data(self, new: torch.Tensor) -> None:
        """``param.data = new``: torch replaces the storage and sizes of this object only; the values ops read
        (``_inner``) and the format follow ``new`` too (``new``'s own format: a plain ND tensor gives ND)."""
        torch._C.TensorBase.data.__set__(self, new)
        if isinstance(new, FormattedTensor):
            self._inner, self._storage_format, self._nz_storage = new._inner, new._storage_format, new._nz_storage
            self._memory = getattr(new, "_memory", None)
            return
        fmt, nz = _formats.get_format(new), _formats.nz_storage_record(new)
        self._storage_format, self._nz_storage = fmt, (None if nz == "unknown" else nz)
        if _plain_real(new):
            self._memory = new.untyped_storage().data_ptr()
            self._inner = torch.from_dlpack(new.detach())
            _register_alias(self._memory, self._inner)
        else:
            self._inner, self._memory = new, None

    def numpy(self, *, force: bool = False) -> Any:
        """The values as a NumPy array (no copy), as for a plain tensor."""
        return self._inner.numpy(force=force)

    def tolist(self) -> Any:  # noqa: D102
        return self._inner.tolist()

    def __repr__(self) -> str:  # noqa: D105
        return f"{self._inner!r}"[:-1] + f", acl_format={self._storage_format})"

    # -- traceable subclass protocol ------------------------------------------------------------
    def __tensor_flatten__(self) -> Tuple[List[str], Tuple[str, NzRecord]]:
        return ["_inner"], (self._storage_format, self._nz_storage)

    @staticmethod
    def __tensor_unflatten__(inner_tensors: Dict[str, torch.Tensor], ctx: Tuple[str, NzRecord],
                             outer_size: Any, outer_stride: Any) -> "FormattedTensor":
        fmt, nz = ctx
        return FormattedTensor(inner_tensors["_inner"], fmt, nz)

    def __deepcopy__(self, memo: Dict[int, Any]) -> "FormattedTensor":
        if id(self) in memo:
            return memo[id(self)]
        out = FormattedTensor(self._inner.clone(), self._storage_format, self._nz_storage, self.requires_grad)
        for key, value in self.__dict__.items():  # e.g. nn.Parameter's _is_param
            if key not in ("_inner", "_storage_format", "_nz_storage", "_memory"):
                setattr(out, key, copy.deepcopy(value, memo))
        memo[id(self)] = out
        return out

    def __reduce_ex__(self, protocol: int):  # pickles as the values plus the format
        return (FormattedTensor, (self._inner, self._storage_format, self._nz_storage, self.requires_grad))

    # -- dispatch -------------------------------------------------------------------------------
    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Optional[dict] = None):
        kwargs = kwargs or {}
        if func.namespace == "ascend_moe":
            return _call_declared_op(func, args, kwargs)
        inners = {}

        def strip(t: "FormattedTensor") -> torch.Tensor:
            inners[id(t._inner)] = t
            return t._inner

        out = func(*tree_map_only(FormattedTensor, strip, args), **tree_map_only(FormattedTensor, strip, kwargs))
        source = next((a for a in args if isinstance(a, FormattedTensor)), None)
        keeps = source is not None and (func in FORMAT_KEEPING_OPS or func.is_view or _same_values_copy(func, args, kwargs))

        def rewrap(t: torch.Tensor) -> torch.Tensor:
            owner = inners.get(id(t))
            if owner is not None and t is owner._inner:  # in place / out=: the tensor itself keeps its format
                return owner
            if keeps:
                same_view = (t.shape == source.shape and t.stride() == source.stride()
                             and t.storage_offset() == source.storage_offset() and t.dtype == source.dtype)
                nz = source._nz_storage if (same_view or source._nz_storage is None) else "unknown"
                return FormattedTensor(t, source._storage_format, nz)
            return t  # a new value: ND, as torch_npu's op-api kernels allocate it (apply_tensor_without_format)

        if func._schema.is_mutable:
            _mark_written(func, args, kwargs)
        return tree_map_only(torch.Tensor, rewrap, out)


# The values of a real FormattedTensor are a DLPack alias of its memory: a second storage object with its
# own version counter.  Ops run on that alias, and the weight cache (ascend_moe.kernels.weight_cache) keeps
# converted copies of a weight while its version counter stands still.  A write through a FormattedTensor
# (in __torch_dispatch__, below autograd) moves neither that alias's counter nor those of the other aliases
# of the same memory (views, ``.data``, ``detach()``, an ``nn.Parameter`` of it each hold their own), so
# every write moves the counters of all live aliases of the memory written.
_ALIASES: Dict[int, Dict[int, "weakref.ref[torch.Tensor]"]] = {}  # memory address -> id(alias) -> alias


def _register_alias(memory: int, alias: torch.Tensor) -> None:
    group = _ALIASES.setdefault(memory, {})
    key = id(alias)

    def forget(_ref: Any, memory: int = memory, key: int = key) -> None:
        members = _ALIASES.get(memory)
        if members is not None:
            members.pop(key, None)
            if not members:
                _ALIASES.pop(memory, None)
    group[key] = weakref.ref(alias, forget)


def _bump_aliases(t: "FormattedTensor") -> None:
    memory = getattr(t, "_memory", None)
    if memory is None:
        return
    for ref in list(_ALIASES.get(memory, {}).values()):
        alias = ref()
        if alias is not None and not alias.is_inference():
            torch.autograd.graph.increment_version(alias)


def _mark_written(func: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
    """Every FormattedTensor argument an op writes (``Tensor(a!)``, ``Tensor(a!)[]``, ``out=``): the version
    counters of all aliases of its memory move, as a plain tensor's counter moves on an in-place write."""
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
        for t in (value if isinstance(value, (list, tuple)) else (value,)):
            if isinstance(t, FormattedTensor):
                _bump_aliases(t)


def _same_values_copy(func: Any, args: Sequence[Any], kwargs: dict) -> bool:
    """``.to(...)`` that changes neither dtype nor values: to the meta device (a shape-only stand-in of the
    same tensor) or a plain copy on the CPU.  A dtype change computes new values (ND); a copy to an NPU is
    torch_npu's host-to-device copy, which allocates the base format (cast after ``.npu()``, as torch_npu
    code does)."""
    if func is not _aten._to_copy.default:
        return False
    src = args[0]
    dtype = kwargs.get("dtype")
    device = kwargs.get("device")
    if dtype is not None and dtype != src.dtype:
        return False
    return device is None or torch.device(device).type in ("cpu", "meta")


def with_format(t: torch.Tensor, storage_format: str, nz_storage: NzRecord = None) -> torch.Tensor:
    """``t``'s values with ``storage_format``: a :class:`FormattedTensor`, or the plain tensor for ND.
    The storage record of :mod:`ascend_moe.formats` is kept too (``param.data = result`` in eager code)."""
    if isinstance(t, FormattedTensor):
        t = t._inner
    if storage_format == "ND" and nz_storage is None:
        return t
    return FormattedTensor(t, storage_format, nz_storage)


def unwrap(t: Any) -> Any:
    """The plain values of a :class:`FormattedTensor`; anything else unchanged."""
    return t._inner if isinstance(t, FormattedTensor) else t


def format_entries(schema: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> List[str]:
    """``["<arg>=<format>", "<arg>[i]=<format>"]`` for the FormattedTensor arguments of a call."""
    entries: List[str] = []
    values = dict(zip([a.name for a in schema.arguments], args))
    values.update(kwargs)
    for arg in schema.arguments:
        v = values.get(arg.name)
        if isinstance(v, FormattedTensor):
            entries.append(f"{arg.name}={v._storage_format}")
        elif isinstance(v, (list, tuple)):
            entries.extend(f"{arg.name}[{i}]={t._storage_format}" for i, t in enumerate(v)
                           if isinstance(t, FormattedTensor))
    return entries


def _call_declared_op(func: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    """A ``torch.ops.ascend_moe`` op on FormattedTensor arguments: the plain values, and the formats
    stated in its ``tensor_formats`` argument (appended to any the caller gave)."""
    schema = func._schema
    names = [a.name for a in schema.arguments]
    if FORMATS_ARG not in names:
        raise TypeError(f"{schema.name}: a tensor with a storage format ({FormattedTensor.__name__}) can only be passed "
                        f"to an op that takes '{FORMATS_ARG}'")
    entries = format_entries(schema, args, kwargs)
    args = list(tree_map_only(FormattedTensor, unwrap, tuple(args)))
    kwargs = dict(tree_map_only(FormattedTensor, unwrap, kwargs))
    pos = names.index(FORMATS_ARG)
    given = kwargs.pop(FORMATS_ARG, None) if FORMATS_ARG in kwargs else (args[pos] if len(args) > pos else None)
    merged = list(given or []) + [e for e in entries if e not in (given or [])]
    if len(args) > pos:
        args[pos] = merged
    else:
        args.extend(schema.arguments[i].default_value for i in range(len(args), pos))
        args.append(merged)
    return func(*args, **kwargs)


# What to write instead, when a compiled call is refused for a weight format that a plain tensor lost
COMPILE_FORMAT_HINT = ("under torch.compile hold the cast tensor itself, "
                       "layer.w = nn.Parameter(npu_format_cast(w, 29), requires_grad=False), not "
                       "param.data = npu_format_cast(param.data, 29): a plain tensor's format is a record kept "
                       "beside it, which the tensors torch.compile makes while tracing do not always find "
                       "(a view taken inside the compiled code, inductor's lowering)")


def explain_traced_refusal(error: Exception, bound: Dict[str, Any], weights: Sequence[Any]) -> Exception:
    """``error`` (a checker refusal at trace time) with :data:`COMPILE_FORMAT_HINT` added to the fix of each
    violation that names FRACTAL_NZ for an argument holding a plain fake CPU weight (whose format may be a
    record that tracing lost); ``error`` itself otherwise."""
    import dataclasses
    from torch._subclasses.fake_tensor import is_fake
    flat = [w for v in weights for w in (v if isinstance(v, (list, tuple)) else [v])]
    plain = {id(w) for w in flat if isinstance(w, torch.Tensor) and not isinstance(w, FormattedTensor)
             and w.device.type == "cpu" and is_fake(w) and _formats.get_format(w) == "ND"}
    names = {k for k, v in bound.items()
             if id(v) in plain or (isinstance(v, (list, tuple)) and any(id(t) in plain for t in v))}
    violations = getattr(error, "violations", None)
    if not names or not violations:
        return error
    changed = [dataclasses.replace(v, fix=f"{v.fix}; {COMPILE_FORMAT_HINT}")
               if v.argument in names and "FRACTAL_NZ" in f"{v.message} {v.fix}" else v for v in violations]
    if all(a is b for a, b in zip(changed, violations)):
        return error
    return type(error)(error.op, changed, error.target)
