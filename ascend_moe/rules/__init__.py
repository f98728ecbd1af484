"""The constraint engine: rules as data, checked before any backend runs.

Each op module in this package registers an :class:`OpSpec` (its signature, the products it
exists on) and its :class:`Rule` objects.  A rule is data: an id, the argument it constrains, the
products and CANN version range it holds for, a predicate, the doc page or code path it comes
from, a fix hint, and the aclnn status the device would return.  :func:`check` returns every
:class:`Violation` of a call at once; :func:`enforce` raises them together as a
:class:`ConstraintError`.

Each rule has a kind (:data:`RULE_KINDS`): only ``host`` rules, whose source names the host file and
function, claim an aclnn status; ``doc`` rules are warnings (:class:`ConstraintWarning`); ``sim`` rules
mark forms the simulator does not model and raise :class:`NotSimulatedError`, which is no device verdict.

Predicates see a :class:`Call`: the bound arguments, plus accessors that work the same for NumPy
arrays, torch tensors (real, meta or fake) and :class:`TensorSpec` placeholders (for checking a
model config without allocating its weights).  Value-dependent rules (e.g. "group_list is
non-decreasing") read :meth:`Call.values`, which is None when the values are not concrete (meta
or fake tensors, device tensors); such rules then pass and the device-side behaviour applies.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..formats import is_torch_tensor as _is_torch_tensor_type
from ..formats import get_format, nz_storage_record
from ..products import PRODUCTS, CannVersion, Target, resolve_target
from ..sim.numerics import dtype_name

ACLNN_STATUS_NAMES = {
    161001: "ACLNN_ERR_PARAM_NULLPTR",
    161002: "ACLNN_ERR_PARAM_INVALID",
    361001: "ACLNN_ERR_RUNTIME_ERROR",
    561001: "ACLNN_ERR_INNER",
    561103: "ACLNN_ERR_INNER_NULLPTR",
}


def status_name(status: Optional[int]) -> str:
    if status is None:
        return ""
    if status in ACLNN_STATUS_NAMES:
        return ACLNN_STATUS_NAMES[status]
    if 561000 <= status < 562000:
        return "ACLNN_ERR_INNER_*"
    return ""


# --------------------------------------------------------------------------------------------
# tensors as the rules see them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor described by metadata only: enough for the checker, nothing allocated.

    ``values`` may hold small concrete contents (e.g. a group_list) for value rules.
    """
    shape: Tuple[int, ...]
    dtype: str
    format: str = "ND"
    values: Optional[np.ndarray] = None

    def __post_init__(self):
        try:
            dims = tuple(self.shape)
        except TypeError:
            raise TypeError(f"TensorSpec: shape must be a tuple of ints, got {type(self.shape).__name__}") from None
        for i, s in enumerate(dims):
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                raise TypeError(f"TensorSpec: shape[{i}] must be an int, got {type(s).__name__} {s!r}")
            if s < 0:
                raise ValueError(f"TensorSpec: shape[{i}] must be >= 0, got {int(s)} "
                                 f"(shape {tuple(int(d) for d in dims)})")
        object.__setattr__(self, "shape", tuple(int(s) for s in dims))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class TensorMeta:
    """What the checker knows about one tensor argument."""
    shape: Tuple[int, ...]
    dtype: str
    format: str
    strides: Optional[Tuple[int, ...]]
    device: str
    values: Optional[np.ndarray]  # None when not concrete

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def is_transposed_last_two(self) -> bool:
        """The device's transposition test: last two dims swapped in memory
        (``stride[-2] == 1 and stride[-1] == size[-2]``, host ``IsTransposeLastTwoDims``)."""
        if self.strides is None or self.ndim < 2:
            return False
        if self.shape[-1] == 1 or self.shape[-2] == 1:
            return False
        return self.strides[-2] == 1 and self.strides[-1] == self.shape[-2]


def _is_torch_tensor(x: Any) -> bool:
    return _is_torch_tensor_type(x)


def _values_read(x: Any) -> bool:
    """Whether the rules are given a torch tensor's values: only small integer tensors' (group lists, token
    counts, indices): cheap.  The verdict key (``_verdict_key``) holds exactly these values too."""
    return x.numel() <= 1 << 20 and not x.dtype.is_floating_point and not x.dtype.is_complex


def tensor_meta(x: Any) -> Optional[TensorMeta]:
    """TensorMeta of a NumPy array, torch tensor or TensorSpec; None for anything else."""
    if isinstance(x, TensorMeta):
        return x
    if isinstance(x, TensorSpec):
        return TensorMeta(x.shape, x.dtype, x.format, None, "spec", x.values)
    if isinstance(x, np.ndarray):
        strides = tuple(s // x.itemsize for s in x.strides) if x.itemsize else None
        return TensorMeta(tuple(x.shape), dtype_name(x), get_format(x), strides, "cpu", x)
    if _is_torch_tensor(x):
        device = x.device.type
        values = None
        host = x if device == "cpu" else _simulated_host_view(x)
        concrete = host is not None and not _is_fake(x)
        if concrete and _values_read(x):
            values = host.detach().cpu().numpy()
        return TensorMeta(tuple(int(s) for s in x.shape), dtype_name(x.dtype), get_format(x),
                          tuple(int(s) for s in x.stride()), device, values)
    return None


def _simulated_host_view(x: Any) -> Any:
    """A tensor of the simulated npu device lives in host memory: its values are read as a CPU tensor's
    (a real NPU's are device data, not read).  None when there is no such view."""
    from ..backends import NPU_DEVICE_TYPES, host_view, privateuse1_is_simulated
    if x.device.type in NPU_DEVICE_TYPES and privateuse1_is_simulated() and not _is_fake(x):
        return host_view(x)
    return None


def _is_fake(x: Any) -> bool:
    try:
        from torch._subclasses.fake_tensor import is_fake
        return bool(is_fake(x))
    except Exception:  # pragma: no cover - torch without fake tensors
        return False


# --------------------------------------------------------------------------------------------
# calls, rules, violations
# --------------------------------------------------------------------------------------------


class Call:
    """One op call as the rules see it: bound arguments (defaults applied) and the target."""

    def __init__(self, op: str, args: Dict[str, Any], target: Target):
        self.op = op
        self.args = args
        self.target = target
        self._metas: Dict[str, Any] = {}
        self._item_metas: Dict[int, Tuple[Any, Optional[TensorMeta]]] = {}

    def tensor_meta(self, item: Any) -> Optional[TensorMeta]:
        """:func:`tensor_meta` of one value of this call, derived once per call (the type check and
        every rule that reads the tensor share it)."""
        hit = self._item_metas.get(id(item))
        if hit is None or hit[0] is not item:
            hit = (item, tensor_meta(item))
            self._item_metas[id(item)] = hit
        return hit[1]

    def __getitem__(self, name: str) -> Any:
        return self.args[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.args.get(name, default)

    def given(self, name: str) -> bool:
        """True when the argument is present (not None and not an empty list)."""
        v = self.args.get(name)
        return v is not None and not (isinstance(v, (list, tuple)) and len(v) == 0)

    def meta(self, name: str) -> Optional[TensorMeta]:
        """TensorMeta of a tensor argument (first element of a one-element list), or None."""
        if name not in self._metas:
            v = self.args.get(name)
            if isinstance(v, (list, tuple)) and len(v) == 1 and self.tensor_meta(v[0]) is not None:
                v = v[0]
            self._metas[name] = self.tensor_meta(v)
        return self._metas[name]

    def metas(self, name: str) -> List[TensorMeta]:
        """TensorMetas of a tensor-list argument (a single tensor counts as a list of one)."""
        v = self.args.get(name)
        if v is None:
            return []
        items = v if isinstance(v, (list, tuple)) else [v]
        return [m for m in (self.tensor_meta(i) for i in items) if m is not None]

    def shape(self, name: str) -> Optional[Tuple[int, ...]]:
        m = self.meta(name)
        return m.shape if m is not None else None

    def dtype(self, name: str) -> Optional[str]:
        m = self.meta(name)
        return m.dtype if m is not None else None

    def values(self, name: str) -> Optional[np.ndarray]:
        """Concrete values of an argument (tensor contents or a list of ints), or None."""
        v = self.args.get(name)
        if isinstance(v, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in v):
            return np.asarray(v, dtype=np.int64)
        m = self.meta(name)
        return m.values if m is not None else None

    @property
    def product(self) -> str:
        return self.target.product

    @property
    def cann(self) -> CannVersion:
        return self.target.cann


Predicate = Callable[[Call], Union[None, str, Sequence[str]]]

# What a rule's verdict rests on (``Rule.kind``):
#   "host"    - host code (op_host / op_api / tiling) rejects the call with ``status``; the source names the
#               file and function (and the release tag where that matters);
#   "wrapper" - the framework wrapper (op-plugin / torch_npu / MindSpeed) refuses the call before aclnn runs:
#               the call fails on the device, but with a Python/C++ error, not an aclnn status;
#   "kernel"  - nothing rejects the call, but the kernel source shows the result is undefined (reads past a
#               buffer, offsets go wrong): reported as an error, never with an aclnn status;
#   "doc"     - only the docs state it: a ConstraintWarning (severity "warning");
#   "sim"     - ascend-moe's simulator does not model this form; says nothing of the device
#               (severity "not-simulated", raised as NotSimulatedError).
RULE_KINDS = ("host", "wrapper", "kernel", "doc", "sim")
SEVERITIES = ("error", "warning", "not-simulated")


@dataclass
class Rule:
    """One constraint.  ``check(call)`` returns None when the call satisfies it, else the message
    (naming the argument and its actual value) or a list of messages."""
    id: str
    op: str
    argument: str
    summary: str
    check: Predicate
    products: Optional[FrozenSet[str]] = None     # None: every product the op exists on
    since: Optional[CannVersion] = None            # inclusive
    until: Optional[CannVersion] = None            # exclusive
    source: str = ""
    fix: str = ""
    status: Optional[int] = 161002
    severity: str = "error"                        # "error", "warning" (doc-only) or "not-simulated"
    kind: str = ""                                 # one of RULE_KINDS; derived when left empty

    def __post_init__(self) -> None:
        if not self.kind:
            if self.severity == "warning":
                self.kind = "doc"
            elif self.severity == "not-simulated":
                self.kind = "sim"
            elif self.status is not None:
                self.kind = "host"
            else:
                self.kind = "kernel"
        if self.kind not in RULE_KINDS:
            raise ValueError(f"rule {self.id}: kind must be one of {RULE_KINDS}, got {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.id}: severity must be one of {SEVERITIES}, got {self.severity!r}")
        # only host code returns aclnn statuses; doc-only and not-simulated rules never claim one
        if self.status is not None and self.kind != "host":
            raise ValueError(f"rule {self.id}: a {self.kind} rule cannot claim aclnn status {self.status}")
        if (self.kind == "doc") != (self.severity == "warning") or (self.kind == "sim") != (
                self.severity == "not-simulated"):
            raise ValueError(f"rule {self.id}: kind {self.kind!r} does not fit severity {self.severity!r}")

    def applies(self, target: Target) -> bool:
        if self.products is not None and target.product not in self.products:
            return False
        if self.since is not None and target.cann < self.since:
            return False
        if self.until is not None and not target.cann < self.until:
            return False
        return True

    def version_range(self) -> str:
        if self.since and self.until:
            return f"CANN {self.since} to before {self.until}"
        if self.since:
            return f"CANN >= {self.since}"
        if self.until:
            return f"CANN < {self.until}"
        return "all CANN versions"

    def products_text(self) -> str:
        return ", ".join(sorted(self.products)) if self.products is not None else "all"


@dataclass(frozen=True)
class Violation:
    """A rule a call breaks, as data."""
    rule_id: str
    op: str
    argument: str
    message: str
    product: str
    cann: str
    version_range: str
    source: str
    fix: str
    status: Optional[int]
    severity: str = "error"
    kind: str = ""

    def __str__(self) -> str:
        status = ""
        if self.severity == "not-simulated":
            status = "; ascend-moe does not simulate this form, which says nothing of the device"
        elif self.kind == "kernel":
            status = "; the device does not reject it, the kernel's result is undefined"
        elif self.kind == "wrapper":
            status = "; the framework wrapper refuses it before aclnn runs"
        elif self.kind == "product":
            status = "; the op is not available there (no aclnn status is claimed)"
        elif self.status is not None:
            name = status_name(self.status)
            status = f"; the device would return aclnn status {self.status}" + (f" ({name})" if name else "")
        lines = [f"[{self.rule_id}] {self.op}: argument '{self.argument}': {self.message} "
                 f"(on {self.product}, CANN {self.cann}; rule holds for {self.version_range}{status})"]
        if self.fix:
            lines.append(f"    fix: {self.fix}")
        if self.source:
            lines.append(f"    source: {self.source}")
        return "\n".join(lines)


class ConstraintError(ValueError):
    """A call breaks one or more product rules; ``.violations`` lists every one of them."""

    def __init__(self, op: str, violations: Sequence[Violation], target: Optional[Target] = None):
        self.op = op
        self.violations = list(violations)
        self.target = target
        where = f" on {target}" if target else ""
        head = f"{op}: {len(self.violations)} constraint violation(s){where}:"
        super().__init__("\n".join([head] + [str(v) for v in self.violations]))


class NotSimulatedError(NotImplementedError):
    """The call uses a form ascend-moe's simulator does not model.  This is not a device verdict: the
    device may well accept the call.  ``.violations`` lists the forms (severity "not-simulated")."""

    def __init__(self, op: str, violations: Sequence[Violation], target: Optional[Target] = None):
        self.op = op
        self.violations = list(violations)
        self.target = target
        where = f" (checked for {target})" if target else ""
        head = f"{op}: not simulated by ascend-moe{where}; the device is not known to reject this call:"
        super().__init__("\n".join([head] + [str(v) for v in self.violations]))


class ConstraintWarning(UserWarning):
    """A rule stated only in the docs (the host code does not enforce it) is broken."""


@dataclass
class OpSpec:
    """What the checker knows of one op: its signature and the products it exists on."""
    name: str
    signature: inspect.Signature
    products: FrozenSet[str]
    source: str = ""
    rules: List[Rule] = field(default_factory=list)
    # why the op is rejected on a product it is not declared for, where "the device lacks it" is
    # not the whole story (e.g. the 950 variants exist on the device but are not modelled here)
    product_notes: Dict[str, str] = field(default_factory=dict)
    # optional: fills a Call's tensor views before the rules run (e.g. a list of per-expert tensors seen
    # as one stacked tensor), so every rule reads the same normalised view
    prepare: Optional[Callable[["Call"], None]] = None
    # a rule set that is not an op of its own binds its calls as this declared op does
    binds_as: Optional[str] = None

    def rule(self, id: str, argument: str, summary: str, *, products: Optional[Iterable[str]] = None,
             since: Optional[str] = None, until: Optional[str] = None, source: str = "", fix: str = "",
             status: Any = "default", severity: str = "error",
             kind: str = "") -> Callable[[Predicate], Predicate]:
        """Decorator registering a predicate as a rule of this op.  ``status`` defaults to 161002 for
        host rules and to None for every other kind (only host code returns aclnn statuses)."""
        if status == "default":
            status = 161002 if severity == "error" and kind in ("", "host") else None

        def deco(fn: Predicate) -> Predicate:
            self.add_rule(Rule(id=id, op=self.name, argument=argument, summary=summary, check=fn,
                               products=frozenset(products) if products is not None else None,
                               since=CannVersion(since) if since else None,
                               until=CannVersion(until) if until else None,
                               source=source or self.source, fix=fix, status=status, severity=severity,
                               kind=kind))
            return fn
        return deco

    def add_rule(self, rule: Rule) -> Rule:
        if any(r.id == rule.id for r in self.rules):
            raise ValueError(f"duplicate rule id {rule.id!r} for {self.name}")
        if rule.products is not None:
            unknown = set(rule.products) - set(PRODUCTS)
            if unknown:
                raise ValueError(f"rule {rule.id}: unknown products {sorted(unknown)}")
        self.rules.append(rule)
        return rule


# Which rule module declares each op: each declaration names its rules module (``OpDecl.rules``).
# Modules are imported on first use, so importing ascend_moe stays cheap.


class _OpModules(Mapping):
    """op name -> its rule module under ascend_moe.rules: the declarations' ``rules`` (read on first use, so
    importing the checker imports no op module)."""

    def _table(self) -> Dict[str, str]:
        table = getattr(self, "_cache", None)
        if table is None:
            from ..opdecl import all_decls
            table = {d.name: d.rules for d in all_decls()}
            self._cache = table
        return table

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


OP_MODULES: Mapping = _OpModules()

_REGISTRY: Dict[str, OpSpec] = {}


def register_op(name: str, signature: Optional[Callable[..., Any]] = None, products: Iterable[str] = (),
                source: str = "", product_notes: Optional[Dict[str, str]] = None,
                binds_as: Optional[str] = None) -> OpSpec:
    """Declare an op's rule set.  The signature comes from the op's declaration
    (:mod:`ascend_moe.opdecl`); ``signature`` (any function with the op's parameter list) serves ops not
    declared there yet.  ``product_notes`` explains, per product outside ``products``, why calls there
    are rejected.  ``binds_as``: a declared op whose signature and binder this rule set uses (a rule set
    that checks part of another op's calls, e.g. npu_grouped_matmul's quantised forms)."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    prods = frozenset(products)
    unknown = prods - set(PRODUCTS)
    if unknown:
        raise ValueError(f"op {name}: unknown products {sorted(unknown)}")
    from ..opdecl import get_decl
    decl = get_decl(binds_as or name)
    sig = decl.signature if decl is not None else inspect.signature(signature)
    sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "undefined"])
    notes = dict(product_notes or {})
    unknown = set(notes) - set(PRODUCTS)
    if unknown:
        raise ValueError(f"op {name}: product notes for unknown products {sorted(unknown)}")
    spec = OpSpec(name, sig, prods, source, product_notes=notes, binds_as=binds_as)
    _REGISTRY[name] = spec
    return spec


class UnknownOpError(ValueError, KeyError):
    """An op name the checker does not know (a ValueError; also a KeyError, as it once was)."""

    __str__ = ValueError.__str__  # the message, not KeyError's quoted repr


def get_op(name: str) -> OpSpec:
    """The OpSpec of ``name``, importing its rule module on first use."""
    if not isinstance(name, str) or name not in _REGISTRY:
        module = OP_MODULES.get(name) if isinstance(name, str) else None
        if module is None:
            raise UnknownOpError(f"unknown op {name!r}; known ops: {', '.join(sorted(OP_MODULES))}")
        importlib.import_module(f"{__name__}.{module}")
        if name not in _REGISTRY:
            raise KeyError(f"rule module {module} did not register {name}")
    return _REGISTRY[name]


def all_ops() -> List[OpSpec]:
    return [get_op(n) for n in OP_MODULES]


def _tensor_like(v: Any) -> bool:
    return isinstance(v, (TensorSpec, TensorMeta, np.ndarray)) or _is_torch_tensor(v)


def bind(op: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Bind a call's arguments to the op's signature (defaults applied); TypeError names the problem
    and shows the op's torch signature.  Tensors may be torch tensors, NumPy arrays or TensorSpecs."""
    from ..opdecl import get_decl
    decl = get_decl(op)
    if decl is None:
        spec = get_op(op)
        decl = get_decl(spec.binds_as) if spec.binds_as else None
    if decl is not None:
        return decl.bind(args, kwargs, tensor_check=_tensor_like, any_dtype=True)
    spec = get_op(op)
    try:
        bound = spec.signature.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{op}{spec.signature}: {e}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _product_violation(spec: OpSpec, target: Target) -> Violation:
    note = spec.product_notes.get(target.product)
    if note:
        # the device has the op there, ascend-moe does not model it: no device verdict
        return Violation(
            rule_id=f"{spec.name}.product", op=spec.name, argument="(product)",
            message=f"{spec.name} on {target.product} ({PRODUCTS[target.product].name}) is not simulated: {note}",
            product=target.product, cann=str(target.cann), version_range="all CANN versions",
            source=spec.source, fix=f"ascend-moe simulates {spec.name} for: {', '.join(sorted(spec.products))}",
            status=None, severity="not-simulated", kind="sim")
    # The product lists come from the docs' "supported products" tables: the op is not shipped for the
    # others, so the call cannot run there, but which status the device returns (op_api's SoC check
    # where there is one, otherwise no kernel binary) is not settled by public host code for every op:
    # an error without a claimed aclnn status.
    return Violation(
        rule_id=f"{spec.name}.product", op=spec.name, argument="(product)",
        message=f"{spec.name} is not supported on {target.product} ({PRODUCTS[target.product].name})",
        product=target.product, cann=str(target.cann), version_range="all CANN versions",
        source=spec.source, fix=f"run it on one of: {', '.join(sorted(spec.products))}", status=None,
        kind="product")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer))


def _is_tensor_like(v: Any) -> bool:
    return isinstance(v, (np.ndarray, TensorSpec, TensorMeta)) or _is_torch_tensor(v)


def _type_problem(name: str, ann: str, v: Any, target: Target,
                  meta: Optional[Callable[[Any], Optional[TensorMeta]]] = None) -> Optional[str]:
    """Why ``v`` cannot be the argument ``name`` annotated ``ann`` (a string annotation of the op's
    signature), or None.  Only what no rule could read is judged here: wrong Python types where a
    scalar belongs, a tensor where a scalar belongs, and tensor dtypes no op knows (complex, ...)."""
    ann = ann.replace(" ", "")
    optional = ann.startswith("Optional[")
    core = ann[len("Optional["):-1] if optional else ann
    if v is None:
        return None  # required tensors left None are reported by the rules that need them

    def got() -> str:  # spelled only for a message (most calls have none)
        return (f"a tensor of shape {list(getattr(v, 'shape', []))}" if _is_tensor_like(v)
                else f"{type(v).__name__} {v!r}")
    if core == "int" and "dtype" not in name:
        if not _is_int(v):
            return f"argument '{name}' must be an int, got {got()}"
    elif core == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return f"argument '{name}' must be a number, got {got()}"
    elif core == "bool":
        if not isinstance(v, (bool, np.bool_, int, np.integer)):
            return f"argument '{name}' must be a bool, got {got()}"
    elif core == "str":
        if not isinstance(v, str):
            return f"argument '{name}' must be a string, got {got()}"
    elif core in ("Sequence[int]", "List[int]"):
        if not isinstance(v, (list, tuple)) or not all(_is_int(i) for i in v):
            return f"argument '{name}' must be a list of ints, got {got()}"
    # tensors (and lists of them): the dtype must be one the checker can name
    items = v if isinstance(v, (list, tuple)) else [v]
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray) or _is_torch_tensor(item):
            try:
                (meta or tensor_meta)(item)
            except (ValueError, TypeError, KeyError) as e:
                where = f"{name}[{i}]" if isinstance(v, (list, tuple)) else name
                dt = getattr(item, "dtype", "?")
                return f"argument '{where}' has dtype {dt}, which no Ascend MoE op takes ({e})"
    return None


def _check_argument_types(spec: "OpSpec", args: Dict[str, Any], target: Target,
                          meta: Optional[Callable[[Any], Optional[TensorMeta]]] = None) -> None:
    """TypeError naming the argument for values no rule can read (see :func:`_type_problem`)."""
    problems = []
    for pname, param in spec.signature.parameters.items():
        ann = param.annotation
        if pname not in args or not isinstance(ann, str):
            continue
        msg = _type_problem(pname, ann, args[pname], target, meta)
        if msg:
            problems.append(msg)
    if problems:
        raise TypeError(f"{spec.name} on {target}: " + "; ".join(problems)
                        + f" (signature: {spec.name}{spec.signature})")


# ---- the verdicts of calls already checked ----
# A model calls the same op with the same shapes again and again; the rules read only what a tensor's
# TensorMeta holds (shape, dtype, format, strides, device, the values of small integer tensors) and the
# scalar arguments, so a call whose key below equals an earlier one's has the same violations.  Keyed only
# for plain CPU torch tensors (exact torch.Tensor / nn.Parameter: no subclass, fake or device tensor) and
# plain scalars; anything else is checked every time.
_VERDICTS_KEPT = 512
_VERDICT_VALUE_BYTES = 1 << 14  # integer tensors' values in a key, at most (group lists; 8 MB for all keys kept)
_VALUES_AS_INTS = 256  # up to this many values a tuple of ints in the key (a few KB), else their bytes
_verdicts: "OrderedDict[Tuple[Any, ...], Tuple[Violation, ...]]" = OrderedDict()
_verdicts_lock = threading.Lock()


def _plain_torch_tensor_types() -> Tuple[type, ...]:
    torch = sys.modules.get("torch")
    return () if torch is None else (torch.Tensor, torch.nn.Parameter)


def _verdict_key_of(v: Any, tensor_types: Tuple[type, ...], budget: List[int]) -> Any:
    """The part of a call's key for one argument value, or None when the value cannot be keyed."""
    kind = type(v)
    if v is None or kind in (bool, int, float, str):
        return (kind.__name__, repr(v))  # repr: -0.0 and nan kept apart from 0.0 and each other's equality
    if kind in (list, tuple):
        items = tuple(_verdict_key_of(i, tensor_types, budget) for i in v)
        return None if any(i is None for i in items) else (kind.__name__, items)
    if kind not in tensor_types or not v.is_cpu:
        return None
    values = None
    if _values_read(v):  # tensor_meta hands these values to the rules
        count = v.numel()
        budget[0] -= count * v.element_size()
        if budget[0] < 0:
            return None
        try:
            if count <= _VALUES_AS_INTS and v.dim() == 1:  # a group list: its ints (no NumPy view, ~2x cheaper)
                values = tuple(v.tolist())
            else:
                values = v.detach().numpy().tobytes()
        except (TypeError, RuntimeError):  # a dtype NumPy or tolist has no counterpart of: checked every time
            return None
    return ("tensor", str(v.dtype), tuple(v.shape), tuple(v.stride()), int(v.storage_offset()), get_format(v),
            nz_storage_record(v), values)


def _verdict_key(op: str, args: Dict[str, Any], target: Target) -> Optional[Tuple[Any, ...]]:
    tensor_types = _plain_torch_tensor_types()
    budget = [_VERDICT_VALUE_BYTES]
    parts: List[Any] = [op, target.product, str(target.cann)]
    for name, v in args.items():
        part = _verdict_key_of(v, tensor_types, budget)
        if part is None:
            return None
        parts.append((name, part))
    return tuple(parts)


def check_call(op: str, args: Dict[str, Any], target: Target) -> List[Violation]:
    """Every violation of a call whose arguments are already bound (see :func:`bind`).  Values no rule
    can read (a float where an int belongs, a complex tensor, ...) raise TypeError naming the argument.
    A call like one checked before (same op, target and argument key, see ``_verdict_key``) gets that
    call's verdict without running the rules again."""
    key = _verdict_key(op, args, target)
    if key is not None:
        with _verdicts_lock:
            kept = _verdicts.get(key)
            if kept is not None:
                _verdicts.move_to_end(key)
                return list(kept)
    found = _check_call_uncached(op, args, target)
    if key is not None:
        with _verdicts_lock:
            _verdicts[key] = tuple(found)
            while len(_verdicts) > _VERDICTS_KEPT:
                _verdicts.popitem(last=False)
    return found


def _check_call_uncached(op: str, args: Dict[str, Any], target: Target) -> List[Violation]:
    spec = get_op(op)
    if target.product not in spec.products:
        return [_product_violation(spec, target)]
    call = Call(op, args, target)
    _check_argument_types(spec, args, target, call.tensor_meta)
    if spec.prepare is not None:
        spec.prepare(call)
    found: List[Violation] = []
    crashed: List[Tuple[Rule, BaseException]] = []
    for rule in spec.rules:
        if not rule.applies(target):
            continue
        try:
            result = rule.check(call)
        except Exception as e:  # a rule whose precondition another rule already rejects
            crashed.append((rule, e))
            continue
        if not result:
            continue
        for msg in [result] if isinstance(result, str) else list(result):
            found.append(Violation(rule.id, op, rule.argument, msg, target.product, str(target.cann),
                                   rule.version_range(), rule.source, rule.fix, rule.status, rule.severity,
                                   rule.kind))
    if crashed and not any(v.severity in ("error", "not-simulated") for v in found):
        rule, e = crashed[0]
        raise RuntimeError(f"internal error: rule {rule.id} of {op} failed on a call no other rule "
                           f"rejects: {type(e).__name__}: {e}") from e
    return found


def check(op_name: str, *args: Any, product: Optional[str] = None, cann: Optional[str] = None,
          **kwargs: Any) -> List[Violation]:
    """All violations of ``op_name(*args, **kwargs)`` on ``product`` / ``cann`` (see
    :func:`ascend_moe.products.resolve_target` for the defaults).  Nothing is computed."""
    target = resolve_target(product, cann)
    return check_call(op_name, bind(op_name, args, kwargs), target)


def strict_docs() -> bool:
    """Doc-only rules (severity "warning") become errors when ``ASCEND_MOE_STRICT_DOCS=1``."""
    return os.environ.get("ASCEND_MOE_STRICT_DOCS", "0") not in ("", "0", "false", "False")


_doc_warnings = threading.local()


def quiet_doc_warnings(quiet: bool) -> bool:
    """Whether :func:`enforce_call` keeps its doc-only warnings to itself on this thread (for calls whose
    warnings an earlier call already gave: the backward's own gmm calls); returns the previous setting.  A
    thread-local flag, where ``warnings.catch_warnings`` edits the process's filters (not thread-safe) and cost
    ~60 us a call with cold caches."""
    before = getattr(_doc_warnings, "quiet", False)
    _doc_warnings.quiet = quiet
    return before


def enforce_call(op: str, args: Dict[str, Any], target: Optional[Target] = None) -> Target:
    """Raise :class:`ConstraintError` with every error of the call, or :class:`NotSimulatedError` when
    the only obstacles are forms the simulator does not model; warn for doc-only rules."""
    target = target or resolve_target()
    violations = check_call(op, args, target)
    strict = strict_docs()
    errors = [v for v in violations if v.severity == "error" or (strict and v.severity == "warning")]
    unsimulated = [v for v in violations if v.severity == "not-simulated"]
    for v in violations:
        if v.severity == "warning" and v not in errors and not getattr(_doc_warnings, "quiet", False):
            warnings.warn(str(v), ConstraintWarning, stacklevel=3)
    if errors:
        raise ConstraintError(op, errors + unsimulated, target)
    if unsimulated:
        raise NotSimulatedError(op, unsimulated, target)
    return target


def enforce(op_name: str, *args: Any, product: Optional[str] = None, cann: Optional[str] = None,
            **kwargs: Any) -> Target:
    """Like :func:`check` but raises :class:`ConstraintError` listing every violation."""
    return enforce_call(op_name, bind(op_name, args, kwargs), resolve_target(product, cann))


def rule_table(product: Optional[str] = None, op: Optional[str] = None) -> List[Rule]:
    """The declared rules, optionally only those of one op and/or one product."""
    from ..products import normalize_product
    prod = normalize_product(product) if product else None
    rows = []
    for spec in all_ops():
        if op and spec.name != op:
            continue
        if prod and prod not in spec.products:
            continue
        for r in spec.rules:
            if prod and r.products is not None and prod not in r.products:
                continue
            rows.append(r)
    return rows
