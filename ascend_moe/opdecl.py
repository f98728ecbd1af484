"""One declaration per op: the single place that holds all that is true of an operator.

An :class:`OpDecl` carries

* ``schema``: the torch_npu / MindSpeed signature exactly as op-plugin's ``op_plugin_functions.yaml``
  spells it (names, order, the ``*`` keyword-only split, defaults, the overload name);
* ``shape``: the output shape/dtype rule from metadata alone (fake kernels, aclnn output allocation);
* ``rules``: the module under :mod:`ascend_moe.rules` that declares the op's constraints;
* ``sim``: the simulator adapter ``(args with NumPy arrays, target) -> outputs`` that decides every
  target-dependent behaviour and calls the pure NumPy compute in :mod:`ascend_moe.sim`;
* ``aclnn``: the aclnn binding, one :class:`AclnnEntry` per entry point (its C parameter list written
  as the C prototype, the inputs it requires, the first CANN release that has it) - the one table the
  checker's entry-point choice and the aclnn argument builder both read;
* ``backward`` / ``setup_context`` where there is a gradient;
* ``samples`` / ``error_inputs``: OpInfo-style tables driving the generated tests.

Everything else is generated from it (:mod:`ascend_moe.ops._generate`): the ``torch.library`` schema,
the fake / CPU / PrivateUse1 kernels, the public Python function (``__signature__``, type hints,
docstring) with one binder, ``ascend_moe.check()``'s binding, the torch_npu / MindSpeed drop-in
names and the test tables.

This module does not import torch: the checker binds calls with it in torch-free processes.  The
schema parser below reads the subset of torch's schema language op-plugin uses; the tests compare
it with ``torch._C.parse_schema``.
"""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = ["SchemaArg", "Schema", "parse_schema", "AclnnEntry", "CParam", "Out", "SampleInput", "ErrorInput",
           "OpDecl", "declare", "get_decl", "all_decls", "BindError"]

NO_DEFAULT = inspect.Parameter.empty
# The trailing argument of every op's torch.library schema: ``["<arg>=<format>", "<arg>[i]=<format>"]``,
# the storage formats of tensor arguments stated explicitly (ascend_moe.formatted fills it for tensors
# that carry a format; fake kernels and compiled graphs thus see the real format).  Not public.
FORMATS_ARG = "tensor_formats"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


# ------------------------------------------------------------------------------------------------
# the schema language (the subset op-plugin's yaml uses)
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SchemaArg:
    """One argument of a schema: ``type`` as written (``Tensor?``, ``int[]?``, ``ScalarType?``...)."""
    name: str
    type: str
    default: Any = NO_DEFAULT
    kwarg_only: bool = False
    # the alias annotation as written, e.g. "a!" for ``Tensor(a!) self`` (the op writes into it)
    alias: str = ""

    @property
    def mutable(self) -> bool:
        """The op writes into this argument (``Tensor(a!)``)."""
        return self.alias.endswith("!")

    # derived from the frozen fields once (every call's binding reads them; plain attributes, which
    # torch.compile traces, unlike functools.cached_property's lock)
    optional: bool = field(init=False, repr=False, compare=False)
    base: str = field(init=False, repr=False, compare=False)
    is_tensor: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # ``base``: the type without ``?`` (and a fixed list size, ``int[2]`` -> ``int[]``): ``Tensor``,
        # ``Tensor[]``, ``int``, ``int[]``, ``float``, ...
        base = _unsized(self.type.rstrip("?"))
        object.__setattr__(self, "optional", self.type.endswith("?"))
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "is_tensor", base in ("Tensor", "Tensor[]"))

    def spelled(self) -> str:
        d = "" if self.default is NO_DEFAULT else "=" + _default_text(self.default)
        typ = self.type
        if self.alias:
            typ = f"{typ.rstrip('?')}({self.alias}){'?' if self.optional else ''}"
        return f"{typ} {self.name}{d}"


def _default_text(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_default_text(i) for i in v) + "]"
    return repr(v)


@dataclass(frozen=True)
class Schema:
    name: str
    overload: str
    args: Tuple[SchemaArg, ...]
    returns: Tuple[str, ...]

    def arg(self, name: str) -> SchemaArg:
        for a in self.args:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(a.name for a in self.args)

    def spelled(self, *, keyword_split: bool = True, name: bool = True) -> str:
        parts: List[str] = []
        star = False
        for a in self.args:
            if keyword_split and a.kwarg_only and not star:
                parts.append("*")
                star = True
            parts.append(a.spelled())
        ret = self.returns[0] if len(self.returns) == 1 else "(" + ", ".join(self.returns) + ")"
        head = (self.name + (f".{self.overload}" if self.overload else "")) if name else ""
        return f"{head}({', '.join(parts)}) -> {ret}"


_SCALAR_TYPES = ("Tensor", "Tensor[]", "int", "int[]", "SymInt", "SymInt[]", "float", "float[]", "bool", "str",
                 "ScalarType", "Scalar")


def _unsized(base: str) -> str:
    """``int[2]`` -> ``int[]``: op-plugin spells some fixed-size lists (the size is not checked by torch)."""
    return re.sub(r"\[\d+\]$", "[]", base)


def _split_top(text: str) -> List[str]:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _parse_default(text: str) -> Any:
    t = text.strip()
    if t == "None":
        return None
    if t in ("True", "False"):
        return t == "True"
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [] if not inner else [_parse_default(i) for i in inner.split(",")]
    if t[:1] in "'\"":
        return t[1:-1]
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    return float(t)


def parse_schema(text: str) -> Schema:
    """Parse ``name[.overload](args) -> returns`` into a :class:`Schema` (torch-free)."""
    m = re.fullmatch(r"\s*([\w.]+)\s*\((.*)\)\s*->\s*(.+?)\s*", text, flags=re.S)
    if not m:
        raise ValueError(f"not a schema: {text!r}")
    full, body, ret = m.groups()
    name, _, overload = full.partition(".")
    args: List[SchemaArg] = []
    kwarg_only = False
    for part in _split_top(body):
        if part == "*":
            kwarg_only = True
            continue
        decl, eq, default = part.partition("=")
        typ, _, aname = decl.strip().rpartition(" ")
        annotated = re.fullmatch(r"(.+?)\((\w+!?)\)(\??)", typ.strip())  # Tensor(a!) / Tensor(a!)?: an alias
        alias = ""
        if annotated:
            typ, alias = annotated.group(1) + annotated.group(3), annotated.group(2)
        if _unsized(typ.rstrip("?")) not in _SCALAR_TYPES or (alias and not typ.startswith("Tensor")):
            raise ValueError(f"schema {full}: unsupported type {typ!r} of {aname!r}")
        args.append(SchemaArg(aname.strip(), typ.strip(), _parse_default(default) if eq else NO_DEFAULT,
                              kwarg_only, alias))
    ret = ret.strip()
    returns = tuple(r.strip() for r in _split_top(ret[1:-1])) if ret.startswith("(") else (ret,)
    return Schema(name, overload, tuple(args), returns)


# ------------------------------------------------------------------------------------------------
# the aclnn binding: one entry per entry point
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Out:
    """A C output parameter bound to the op's output ``index`` (``ALL_OUTPUTS``: the list of all of
    them, for an ``aclTensorList`` output)."""
    index: int


ALL_OUTPUTS = Out(-1)


@dataclass(frozen=True)
class CParam:
    """One parameter of an aclnn ``...GetWorkspaceSize`` prototype."""
    ctype: str      # T (const aclTensor*), L (const aclTensorList*), O / OL (outputs), IA, i64, f32, f64, b, s
    name: str       # the C name, as the prototype writes it


_CTYPES = (
    (r"const\s+aclTensorList\s*\*", "L"), (r"aclTensorList\s*\*", "OL"),
    (r"const\s+aclTensor\s*\*", "T"), (r"aclTensor\s*\*", "O"),
    (r"(const\s+)?aclIntArray\s*\*", "IA"), (r"int64_t", "i64"), (r"float", "f32"), (r"double", "f64"),
    (r"bool", "b"), (r"(const\s+)?char\s*\*", "s"),
)


def parse_c_params(proto: str) -> Tuple[CParam, ...]:
    """``"const aclTensor *x, float sharedInputWeight, aclTensor *out"`` -> CParams."""
    params = []
    for part in _split_top(proto):
        for pattern, kind in _CTYPES:
            m = re.fullmatch(rf"\s*{pattern}\s*(\w+)\s*", part)
            if m:
                params.append(CParam(kind, m.groups()[-1]))
                break
        else:
            raise ValueError(f"unsupported C parameter {part!r}")
    return tuple(params)


def _snake(name: str) -> str:
    """The op argument a C parameter takes by default: ``pertokenScaleOptional`` -> ``pertoken_scale``."""
    if name.endswith("Optional") and len(name) > len("Optional"):
        name = name[: -len("Optional")]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class AclnnEntry:
    """One aclnn entry point of an op.

    ``params``: the C parameter list of ``<name>GetWorkspaceSize`` without the trailing
    ``uint64_t *workspaceSize, aclOpExecutor **executor``, as the C prototype writes it.  Each C
    parameter takes the op argument of the same name in snake_case (``pertokenScale`` ->
    ``pertoken_scale``), unless ``bind`` maps it to another argument name, a constant, an
    :class:`Out`, or a function ``(args, outs) -> value``.  ``requires``: the inputs the host code
    rejects as null.  ``since``: the first CANN release that has it (None: every modelled release).
    ``family``: the dispatcher's call family (``ascend_moe._C.choose``); entries of one family are
    listed in op-plugin's preference order.
    """
    name: str
    family: Any          # a family name, or a tuple of them when the dispatcher lists the entry in several
    params: str
    requires: Tuple[str, ...] = ()
    since: Optional[str] = None
    bind: Mapping[str, Any] = field(default_factory=dict)
    # optional ``(args) -> None`` run before the call is built: raise (BackendError) for a call this
    # entry point cannot express, or warn for an argument it drops
    check: Optional[Callable[[Dict[str, Any]], None]] = None

    @property
    def c_params(self) -> Tuple[CParam, ...]:
        return parse_c_params(self.params)

    @property
    def short(self) -> str:
        """The name without the op's aclnn prefix, e.g. ``V3`` / ``WeightNz``, set by the decl."""
        return self.name


# ------------------------------------------------------------------------------------------------
# OpInfo-style test tables
# ------------------------------------------------------------------------------------------------

@dataclass
class SampleInput:
    """One call of an op in the public spelling: ``args`` / ``kwargs``; ``expected``: the outputs'
    ``[(shape, dtype name)]`` in return order; ``undefined``: the undefined-region policy under which
    opcheck compares results; ``reference``: an optional independent NumPy/plain-loop reference
    ``(sample) -> outputs`` the simulator is compared against bit for bit."""
    args: tuple
    kwargs: dict = field(default_factory=dict)
    expected: Optional[List[Tuple[Tuple[int, ...], str]]] = None
    name: str = ""
    undefined: str = "poison"
    reference: Optional[Callable[["SampleInput"], Any]] = None


@dataclass
class ErrorInput:
    """A call that must fail: ``error_type`` with a message matching ``error_regex``."""
    sample: SampleInput
    error_type: type
    error_regex: str


# ------------------------------------------------------------------------------------------------
# the declaration
# ------------------------------------------------------------------------------------------------

class BindError(TypeError):
    """A call's arguments do not fit the op's schema (names, count or types)."""


@dataclass
class OpDecl:
    schema: str
    rules: str
    shape: Callable[[Dict[str, Any]], List[Tuple[Tuple[Any, ...], Any]]]
    sim: Callable[[Dict[str, Any], Any], Any]
    aclnn: Tuple[AclnnEntry, ...] = ()
    choose_entry: Optional[Callable[[Dict[str, Any]], str]] = None   # args -> family
    doc: str = ""
    drop_in: Tuple[str, ...] = ("torch_npu",)      # torch_npu and/or mindspeed
    normalize: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
    backward: Optional[Callable[..., Any]] = None
    setup_context: Optional[Callable[..., Any]] = None
    samples: Optional[Callable[[], List[SampleInput]]] = None
    error_inputs: Optional[Callable[[], List[ErrorInput]]] = None
    # public-only conversions ``{arg: fn(value) -> value}`` applied by the binder before type checks
    # (e.g. a torch dtype accepted where the schema says int)
    convert: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    # other overloads of the op as op-plugin spells them (e.g. ``npu_grouped_matmul.List``, whose
    # group_list is ``int[]?``): an argument whose type differs is one public argument taking either type,
    # and travels in the torch.library schema as an extra argument ``<name>_ints`` (one schema can hold
    # no union type)
    overloads: Tuple[str, ...] = ()
    # keyword-only schema arguments that an older published spelling passed positionally, in that
    # order, after the schema's positional ones (e.g. npu_ffn's seed signature); the public function
    # accepts both spellings (an unambiguous superset)
    legacy_positional: Tuple[str, ...] = ()
    # the CPU kernel's simulator entry when it allocates torch outputs itself (same numbers as ``sim``,
    # which stays the NumPy-only entry of the NumPy twin)
    sim_torch: Optional[Callable[[Dict[str, Any], Any], Any]] = None
    # a shortcut of ``sim_torch`` for plain CPU calls (bound args of CPU torch tensors -> the same outputs,
    # bit for bit, by a compiled kernel of the machine's choice), or None from it to take the general path
    sim_shortcut: Optional[Callable[[Dict[str, Any]], Any]] = None
    # simulator-only keyword options of the NumPy twin, passed to ``sim(args, target, **options)``
    sim_options: Tuple[str, ...] = ()
    # the weights (bound args -> tensors) whose converted copies the CPU kernel may keep across calls
    # while they are unchanged (ascend_moe.kernels' weight cache: widened fp16/bf16, decoded NZ / int4)
    cached_weights: Optional[Callable[[Dict[str, Any]], Sequence[Any]]] = None
    # arguments the op writes into that the schema does not mark ``(a!)`` (op-plugin's out-of-place
    # npu_grouped_matmul_add writes into self as well); the torch op marks them
    writes: Tuple[str, ...] = ()
    # the op returns a copy of this written argument, taken after the write (op-plugin's
    # ``return self.clone()``); the shape rule then lists no outputs
    returns_clone_of: Optional[str] = None
    # the op communicates across processes (every rank of a group calls it together): its simulator
    # adapter runs the checker itself, agreed across the ranks, so the generated CPU / simulated-device
    # kernels do not check first (a rank failing alone would leave its peers waiting in the exchange)
    collective: bool = False
    parsed: Schema = field(init=False)

    def __post_init__(self) -> None:
        self.parsed = parse_schema(self.schema)
        names = set(self.parsed.names)
        # argument name -> (the overload's variant of it, the torch-schema name that carries it)
        self.alternatives: Dict[str, Tuple[SchemaArg, str]] = {}
        for text in self.overloads:
            other = parse_schema(text)
            if other.names != self.parsed.names:
                raise ValueError(f"{self.name}: overload {other.overload} must have the same argument names")
            for a, b in zip(self.args, other.args):
                if a.type != b.type:
                    if not b.base.startswith("int"):
                        raise ValueError(f"{self.name}.{other.overload}: only int[] variants are supported")
                    self.alternatives[a.name] = (b, f"{a.name}_ints")
        for name in tuple(self.writes) + ((self.returns_clone_of,) if self.returns_clone_of else ()):
            if name not in names:
                raise ValueError(f"{self.name}: writes / returns_clone_of name {name!r}, which is not an argument")
        letters = iter("abcdefgh")
        torch_args: List[SchemaArg] = []
        for a in self.args:
            if a.name in self.mutates:  # the torch op marks every argument it writes, each its own alias set
                a = SchemaArg(a.name, a.type, a.default, a.kwarg_only, next(letters) + "!")
            torch_args.append(a)
            if a.name in self.alternatives:
                alt, extra = self.alternatives[a.name]
                torch_args.append(SchemaArg(extra, alt.type if alt.optional else alt.type + "?", None, a.kwarg_only))
        # the formats of the tensor arguments, stated explicitly (ascend_moe.formatted.FormattedTensor fills it)
        torch_args.append(SchemaArg(FORMATS_ARG, "str[]?", None, False))
        # torch.library ops may not return an alias of an input: an op that returns the argument it wrote
        # (``-> Tensor(a!)``) returns nothing there, and its public function returns the argument
        returns = () if self.returns_written else self.parsed.returns
        self.torch_parsed = Schema(self.parsed.name, "", tuple(torch_args), returns)
        self._torch_spec = self.torch_parsed.args[:-1]  # what the kernels bind (no tensor_formats)
        self._bindings: Dict[Tuple[bool, bool], Tuple[Tuple[SchemaArg, ...], FrozenSet[str]]] = {}
        for e in self.aclnn:
            for p in e.c_params:
                if p.ctype in ("O", "OL") and (p.name not in e.bind or not (
                        e.bind[p.name] is None or isinstance(e.bind[p.name], (Out, str)))):
                    raise ValueError(f"{self.name}: {e.name}: output {p.name} must bind to Out(i), ALL_OUTPUTS or "
                                     "None (an optional output not produced; or, for a non-const input pointer, "
                                     "to an argument name)")
                if p.ctype in ("O", "OL"):
                    continue
                if p.name not in e.bind and _snake(p.name) not in names:
                    raise ValueError(f"{self.name}: {e.name}: C parameter {p.name!r} matches no argument "
                                     f"({_snake(p.name)!r}); map it in bind=")
            for r in e.requires:
                if r not in names:
                    raise ValueError(f"{self.name}: {e.name}: required input {r!r} is not an argument")

    # cached: read on every call of the op (a plain attribute after the first read, no Python frame)
    @functools.cached_property
    def name(self) -> str:
        return self.parsed.name

    @property
    def mutates(self) -> Tuple[str, ...]:
        """The arguments the op writes into: those the schema marks (``Tensor(a!)``) and :attr:`writes`;
        torch.library's ``mutates_args``."""
        return tuple(a.name for a in self.args if a.mutable or a.name in self.writes)

    @functools.cached_property
    def returns_written(self) -> Optional[str]:
        """The argument the op returns itself (``-> Tensor(a!)`` of ``Tensor(a!) self``), or None."""
        if len(self.parsed.returns) != 1:
            return None
        m = re.fullmatch(r"Tensor\((\w+)!\)", self.parsed.returns[0])
        if not m:
            return None
        return next((a.name for a in self.args if a.alias == m.group(1) + "!"), None)

    @property
    def args(self) -> Tuple[SchemaArg, ...]:
        return self.parsed.args

    def entry(self, name: str) -> AclnnEntry:
        for e in self.aclnn:
            if e.name == name or e.name.endswith(name) and e.name[: -len(name)].endswith(
                    _common_prefix(self.aclnn)):
                return e
        raise KeyError(f"{self.name}: no aclnn entry point {name!r}")

    def short_name(self, entry: AclnnEntry) -> str:
        """``aclnnGroupedMatmulFinalizeRoutingV3`` -> ``V3`` (relative to the family's common prefix)."""
        prefix = _common_prefix(self.aclnn)
        return entry.name[len(prefix):] or "V1"

    def entries(self, family: Optional[str] = None) -> List[AclnnEntry]:
        return [e for e in self.aclnn if family is None or family in _families(e)]

    def families(self, every: bool = False) -> Tuple[str, ...]:
        """The call families, each entry's first (primary) one in table order; ``every``: also the
        families an entry is listed in besides (e.g. V4 as the fp8 fallback family of its own)."""
        return tuple(dict.fromkeys(f for e in self.aclnn for f in (_families(e) if every else _families(e)[:1])))

    @property
    def signature(self) -> inspect.Signature:
        """The Python signature of the declared schema (keyword-only split and defaults as written)."""
        params = []
        for a in self.public_order():
            kind = inspect.Parameter.KEYWORD_ONLY if a.kwarg_only and a.name not in self.legacy_positional \
                else inspect.Parameter.POSITIONAL_OR_KEYWORD
            params.append(inspect.Parameter(a.name, kind, default=a.default,
                                            annotation=_PY_TYPE_TEXT.get(a.type, a.type)))
        return inspect.Signature(params)

    def public_order(self) -> List[SchemaArg]:
        """The schema's arguments in the public function's order: the positional ones, then
        :attr:`legacy_positional`, then the other keyword-only ones in schema order."""
        pos = [a for a in self.args if not a.kwarg_only]
        legacy = [self.parsed.arg(n) for n in self.legacy_positional]
        rest = [a for a in self.args if a.kwarg_only and a.name not in self.legacy_positional]
        return pos + legacy + rest

    # -- binding -----------------------------------------------------------------------------------

    def to_torch(self, a: Dict[str, Any]) -> Tuple[Any, ...]:
        """A bound public call as the torch.library schema's positional arguments (an overload's variant
        of an argument goes to its ``<name>_ints`` slot)."""
        out: List[Any] = []
        for arg in self.args:
            v = a[arg.name]
            if arg.name in self.alternatives:
                is_list = isinstance(v, (list, tuple))
                out.extend([None if is_list else v, list(v) if is_list else None])
            else:
                out.append(v)
        return tuple(out)

    def split_formats(self, args: Sequence[Any], kwargs: Mapping[str, Any]
                      ) -> Tuple[Sequence[Any], Mapping[str, Any], Dict[str, str]]:
        """A call of the torch.library schema without its :data:`FORMATS_ARG`, and that argument as
        ``{"<arg>" or "<arg>[i]": format}``."""
        entries = None
        if FORMATS_ARG in kwargs:
            kwargs = dict(kwargs)
            entries = kwargs.pop(FORMATS_ARG)
        elif len(args) == len(self.torch_parsed.args):
            args, entries = args[:-1], args[-1]
        stated: Dict[str, str] = {}
        for e in entries or ():
            name, sep, fmt = str(e).partition("=")
            if not sep or not fmt:
                raise self._error(f"argument '{FORMATS_ARG}' entries must be '<argument>=<format>', got {e!r}", "")
            stated[name] = fmt
        return args, kwargs, stated

    def bind_torch(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, tensor_check: Optional[
            Callable[[Any], bool]] = None) -> Dict[str, Any]:
        """Bind a call of the torch.library schema (what the kernels receive) to the public argument
        dict: each ``<name>_ints`` folded back into ``<name>``.  The trailing :data:`FORMATS_ARG` is not
        part of it (:meth:`split_formats`)."""
        args, kwargs, _ = self.split_formats(args, kwargs)
        if not self.alternatives:
            return self.bind(args, kwargs, tensor_check=tensor_check, keyword_split=False)
        a = self._bind(self._torch_spec, args, kwargs, tensor_check, " (torch schema)", False, False)
        for name, (_, extra) in self.alternatives.items():
            ints = a.pop(extra)
            if ints is not None:
                if a[name] is not None:
                    raise self._error(f"'{name}' and '{extra}' are both given; pass one", "")
                a[name] = ints
        if self.normalize is not None:
            a = self.normalize(a)
        return a

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, tensor_check: Optional[
            Callable[[Any], bool]] = None, where: str = "", keyword_split: bool = True,
             any_dtype: bool = False) -> Dict[str, Any]:
        """Bind ``args`` / ``kwargs`` to the declared schema: names, count, defaults, then each value's
        type (``tensor_check`` says what counts as a tensor).  ``keyword_split=False`` binds as the
        torch.library schema does (it has no ``*``: the kernels receive every argument positionally).
        ``any_dtype``: a ``ScalarType`` may also be a dtype name or a NumPy dtype (the checker).  Raises :class:`BindError` (a TypeError)
        naming the argument, the expected type and the torch signature."""
        out = self._bind(self.args, args, kwargs, tensor_check, where, keyword_split, any_dtype)
        if self.normalize is not None:
            out = self.normalize(out)
        return out

    def _bind(self, spec: Sequence[SchemaArg], args: Sequence[Any], kwargs: Mapping[str, Any], tensor_check: Any,
              where: str, keyword_split: bool, any_dtype: bool) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        positional, names = self._binding_of(spec, keyword_split)
        if len(args) > len(positional):
            raise self._error(f"takes {len(positional)} positional argument(s) but {len(args)} were given "
                              f"(arguments after the '*' are keyword-only)", where)
        for a, v in zip(positional, args):
            out[a.name] = v
        for k, v in kwargs.items():
            if k in out:
                raise self._error(f"got multiple values for argument '{k}'", where)
            if k not in names:
                raise self._error(f"got an unexpected keyword argument '{k}'", where)
            out[k] = v
        for a in spec:
            if a.name not in out:
                if a.default is NO_DEFAULT:
                    raise self._error(f"missing required argument '{a.name}' ({a.type})", where)
                out[a.name] = list(a.default) if isinstance(a.default, list) else a.default
        for a in spec:
            conv = self.convert.get(a.name)
            if conv is not None:
                out[a.name] = conv(out[a.name])
            v = out[a.name]
            if v is None and a.optional and a.default is not None and a.default is not NO_DEFAULT \
                    and not a.is_tensor:
                v = a.default  # op-plugin's value_or(default): None means the schema default
            alt = self.alternatives.get(a.name)
            if alt is not None and isinstance(v, (list, tuple)):
                out[a.name] = _check_type(self, alt[0], v, tensor_check, where, any_dtype)
            else:
                try:
                    out[a.name] = _check_type(self, a, v, tensor_check, where, any_dtype)
                except BindError:
                    if alt is None:
                        raise
                    raise self._error(f"argument '{a.name}' must be {_expected(a).split(' (')[0]} or "
                                      f"{_expected(alt[0]).split(' (')[0]} (the .{_overload_of(self, a.name)} "
                                      f"overload), got {_type_name(v)}", where) from None
        return out

    def _binding_of(self, spec: Tuple[SchemaArg, ...], keyword_split: bool
                    ) -> Tuple[Tuple[SchemaArg, ...], FrozenSet[str]]:
        """The arguments ``spec`` (the declared schema's or the kernels' :attr:`_torch_spec`) binds
        positionally, and all its names: worked out once per form."""
        if spec is not self.parsed.args and spec is not self._torch_spec:
            raise ValueError(f"{self.name}: binding against an argument list of neither schema")
        key = (spec is self.parsed.args, keyword_split)
        known = self._bindings.get(key)
        if known is None:
            if keyword_split:
                positional = tuple(a for a in spec if not a.kwarg_only) + tuple(
                    self.parsed.arg(n) for n in self.legacy_positional)
            else:
                positional = spec
            known = self._bindings[key] = (positional, frozenset(a.name for a in spec))
        return known

    def _error(self, what: str, where: str) -> BindError:
        return BindError(f"{self.name}{where}: {what}; signature: {self.parsed.spelled(name=False)}")


def _families(e: AclnnEntry) -> Tuple[str, ...]:
    return tuple(e.family) if isinstance(e.family, (tuple, list)) else (e.family,)


def _overload_of(decl: "OpDecl", name: str) -> str:
    for text in decl.overloads:
        other = parse_schema(text)
        if other.arg(name).type != decl.parsed.arg(name).type:
            return other.overload
    return ""


def _common_prefix(entries: Sequence[AclnnEntry]) -> str:
    names = [e.name for e in entries]
    if not names:
        return ""
    p = names[0]
    for n in names[1:]:
        while not n.startswith(p):
            p = p[:-1]
    return p


_PY_TYPE_TEXT = {
    "Tensor": "Tensor", "Tensor?": "Optional[Tensor]", "Tensor[]": "List[Tensor]",
    "Tensor[]?": "Optional[List[Tensor]]", "int": "int", "int?": "Optional[int]", "int[]": "List[int]",
    "int[]?": "Optional[List[int]]", "float": "float", "float?": "Optional[float]", "bool": "bool",
    "bool?": "Optional[bool]", "str": "str", "str?": "Optional[str]", "ScalarType?": "Optional[torch.dtype]",
    "ScalarType": "torch.dtype",
}


def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return type(v).__module__ == "numpy" and hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu" \
        and getattr(v, "ndim", 1) == 0


def _default_tensor_check(v: Any) -> bool:
    from .formats import is_torch_tensor
    return is_torch_tensor(v)


def _type_name(v: Any) -> str:
    t = type(v)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def _check_type(decl: OpDecl, a: SchemaArg, v: Any, tensor_check, where: str, any_dtype: bool = False) -> Any:
    """The value converted to the schema type (numpy ints -> int, int -> float), or BindError."""
    is_tensor = tensor_check or _default_tensor_check

    def bad(expected: str) -> BindError:
        shown = repr(v) if isinstance(v, (int, float, str, bool, type(None))) else _type_name(v)
        return decl._error(f"argument '{a.name}' must be {expected}, got {shown}", where)

    if v is None:
        if a.optional:
            return None
        raise bad(_expected(a))
    base = a.base
    if base == "Tensor":
        if not is_tensor(v):
            raise bad("a Tensor" + (" or None" if a.optional else ""))
        return v
    if base == "Tensor[]":
        if is_tensor(v):
            raise bad("a list of Tensors (Tensor[]): wrap a single tensor as [t]")
        if not isinstance(v, (list, tuple)) or not all(is_tensor(t) for t in v):
            raise bad("a list of Tensors (Tensor[])")
        return list(v)
    if base in ("int", "SymInt"):
        if not _is_int(v):
            if type(v).__module__.startswith("torch") and "SymInt" in type(v).__name__:
                return v
            raise bad("an int")
        v = int(v)
        if not INT64_MIN <= v <= INT64_MAX:
            raise bad("an int in the int64 range")
        return v
    if base in ("int[]", "SymInt[]"):
        if not isinstance(v, (list, tuple)) or not all(_is_int(i) for i in v):
            raise bad("a list of ints (int[])")
        vals = [int(i) for i in v]
        if any(not INT64_MIN <= i <= INT64_MAX for i in vals):
            raise bad("a list of ints in the int64 range")
        return vals
    if base == "float":
        if isinstance(v, bool) or not (isinstance(v, float) or _is_int(v) or (
                type(v).__module__ == "numpy" and getattr(getattr(v, "dtype", None), "kind", "") == "f"
                and getattr(v, "ndim", 1) == 0)):
            raise bad("a float")
        return float(v)
    if base == "bool":
        if not (isinstance(v, bool) or type(v).__name__ == "bool_"):
            raise bad("a bool")
        return bool(v)
    if base == "str":
        if not isinstance(v, str):
            raise bad("a str")
        return v
    if base == "ScalarType":
        if any_dtype and (isinstance(v, str) or type(v).__module__.startswith("numpy")):
            return v
        if type(v).__name__ != "dtype" or not type(v).__module__.startswith("torch"):
            raise bad("a torch.dtype")
        return v
    return v


def _expected(a: SchemaArg) -> str:
    return {"Tensor": "a Tensor", "Tensor[]": "a list of Tensors (Tensor[])", "int": "an int",
            "int[]": "a list of ints (int[])", "float": "a float", "bool": "a bool", "str": "a str",
            "ScalarType": "a torch.dtype"}.get(a.base, a.base) + " (it is not optional)"


# ------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------

_DECLS: Dict[str, OpDecl] = {}

# The op index: op name -> the module under ascend_moe.ops that declares it (imported on first use;
# declaration modules import no torch).  Adding an op adds one line here.
DECL_MODULES: Dict[str, str] = {
    "npu_gmm": "gmm",
    "npu_gmm_v2": "gmm",
    "npu_grouped_matmul": "gmm",
    "npu_moe_gating_top_k": "gating",
    "npu_grouped_matmul_finalize_routing": "finalize_routing",
    "npu_grouped_matmul_swiglu_quant": "swiglu_quant",
    "npu_grouped_matmul_swiglu_quant_v2": "swiglu_quant",
    "npu_ffn": "ffn",
    "npu_moe_init_routing_v2": "routing",
    "npu_moe_token_permute": "routing",
    "npu_moe_token_unpermute": "routing",
    "npu_moe_token_permute_grad": "routing",
    "npu_moe_token_unpermute_grad": "routing",
    "npu_moe_finalize_routing": "routing",
    "npu_moe_gating_top_k_softmax": "routing",
    "npu_moe_gating_top_k_softmax_v2": "routing",
    "npu_moe_compute_expert_tokens": "routing",
    "npu_moe_re_routing": "routing",
    "npu_moe_gating_top_k_backward": "routing",
    "npu_swiglu": "quant_ops",
    "npu_swiglu_backward": "quant_ops",
    "npu_dynamic_quant": "quant_ops",
    "npu_dynamic_quant_asymmetric": "quant_ops",
    "npu_dequant_swiglu_quant": "quant_ops",
    "npu_grouped_matmul_add_": "grouped_matmul_add",
    "npu_grouped_matmul_add": "grouped_matmul_add",
    "npu_moe_distribute_dispatch": "distribute",
    "npu_moe_distribute_dispatch_v2": "distribute",
    "npu_moe_distribute_combine": "distribute",
    "npu_moe_distribute_combine_v2": "distribute",
}


def declare(decl: OpDecl) -> OpDecl:
    """Register a declaration (once per op name)."""
    if decl.name in _DECLS:
        raise ValueError(f"op {decl.name!r} declared twice")
    _DECLS[decl.name] = decl
    return decl


def get_decl(name: str) -> Optional[OpDecl]:
    """The declaration of ``name``, importing its module on first use; None for ops not (yet) declared."""
    if name not in _DECLS and name in DECL_MODULES:
        import importlib
        importlib.import_module(f"ascend_moe.ops.{DECL_MODULES[name]}")
    return _DECLS.get(name)


def all_decls() -> Iterator[OpDecl]:
    for name in list(DECL_MODULES):
        get_decl(name)
    return iter(list(_DECLS.values()))
