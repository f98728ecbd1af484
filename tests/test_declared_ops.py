"""Tests generated from the op declarations (ascend_moe.opdecl): every declared op's sample inputs drive
opcheck, fake and meta shapes, torch.compile(fullgraph=True), the public signature and the error
inputs; the declared schema is checked against torch's own parser."""
from __future__ import annotations

import inspect
import re
from typing import Any, List

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ascend_moe
from ascend_moe.opdecl import all_decls, parse_schema
from ascend_moe.sim import numerics

pytestmark = pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")

DECLS = {d.name: d for d in all_decls()}


def _samples():
    for name, d in DECLS.items():
        for i, s in enumerate(d.samples() if d.samples else []):
            yield pytest.param(name, i, id=f"{name}-{s.name or i}")


def _errors():
    for name, d in DECLS.items():
        for i, e in enumerate(d.error_inputs() if d.error_inputs else []):
            yield pytest.param(name, i, id=f"{name}-err{i}")


def _flat(out: Any) -> List[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _shapes(out: Any):
    return [(tuple(int(s) for s in t.shape), _dtype_name(t)) for t in _flat(out)]


def _torch_args(decl, sample):
    """The sample's public call as the torch.library schema's positional/keyword call."""
    a = decl.bind(sample.args, sample.kwargs, tensor_check=lambda v: isinstance(v, torch.Tensor))
    return decl.to_torch(a)


def _map(v: Any, fn) -> Any:
    if isinstance(v, torch.Tensor):
        return fn(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_map(i, fn) for i in v)
    if isinstance(v, dict):
        return {k: _map(i, fn) for k, i in v.items()}
    return v


@pytest.mark.parametrize("name", list(DECLS))
def test_schema_is_torchs(name):
    """The declared schema parses the same with torch's parser (names, order, keyword-only, defaults)."""
    d = DECLS[name]
    ours = parse_schema(d.schema)
    theirs = torch._C.parse_schema(d.schema)
    assert [a.name for a in ours.args] == [a.name for a in theirs.arguments]
    assert [a.kwarg_only for a in ours.args] == [a.kwarg_only for a in theirs.arguments]
    for a, t in zip(ours.args, theirs.arguments):
        if t.has_default_value():
            assert a.default == t.default_value, a.name
        else:
            assert a.default is inspect.Parameter.empty, a.name
    registered = getattr(torch.ops.ascend_moe, name).default._schema
    assert [a.name for a in registered.arguments] == [a.name for a in d.torch_parsed.args]
    for text in d.overloads:  # overloads parse the same with torch's parser too
        o, t = parse_schema(text), torch._C.parse_schema(text)
        assert [a.name for a in o.args] == [a.name for a in t.arguments]
        assert [a.kwarg_only for a in o.args] == [a.kwarg_only for a in t.arguments]


@pytest.mark.parametrize("name", list(DECLS))
def test_public_signature(name):
    d = DECLS[name]
    fn = getattr(ascend_moe, name)
    sig = inspect.signature(fn)
    assert list(sig.parameters) == [a.name for a in d.public_order()] + ["backend"]
    assert sorted(a.name for a in d.args) == sorted(a.name for a in d.public_order())
    for a in d.args:
        p = sig.parameters[a.name]
        assert (p.kind == inspect.Parameter.KEYWORD_ONLY) == (a.kwarg_only and a.name not in d.legacy_positional)
        assert p.default == a.default or (p.default is inspect.Parameter.empty and a.default is p.empty)
    assert fn.__doc__ and d.schema in fn.__doc__


@pytest.mark.parametrize("name,i", list(_samples()))
def test_sample_shapes_eager_fake_meta(name, i):
    d = DECLS[name]
    s = d.samples()[i]
    with numerics.undefined_policy(s.undefined):
        out = getattr(ascend_moe, name)(*s.args, **s.kwargs)
    assert _shapes(out) == s.expected
    mode = FakeTensorMode()
    with mode:
        fake = getattr(ascend_moe, name)(*_map(s.args, mode.from_tensor), **_map(s.kwargs, mode.from_tensor))
    assert _shapes(fake) == s.expected
    meta = getattr(ascend_moe, name)(*_map(s.args, lambda t: t.to("meta")),
                                     **_map(s.kwargs, lambda t: t.to("meta")))
    assert all(t.device.type == "meta" for t in _flat(meta)) and _shapes(meta) == s.expected


@pytest.mark.parametrize("name,i", list(_samples()))
def test_sample_opcheck(name, i):
    d = DECLS[name]
    s = d.samples()[i]
    with numerics.undefined_policy(s.undefined):
        torch.library.opcheck(getattr(torch.ops.ascend_moe, name).default, _torch_args(d, s))


# ops without samples: the collective EP ops (ascend_moe/ops/distribute.py), tested with gloo processes
@pytest.mark.parametrize("name", [n for n, d in DECLS.items() if d.samples is not None])
@pytest.mark.parametrize("backend", [None, "auto", "sim"])
def test_sample_compiles_fullgraph(name, backend):
    """Every way of choosing a backend for CPU tensors compiles with fullgraph=True and equals eager
    bit for bit (each op's first sample; the reference test compiles the others with references)."""
    d = DECLS[name]
    s = d.samples()[0]
    fresh = d.samples()[0] if d.mutates else s  # an op that writes into an argument gets its own copy
    fn = getattr(ascend_moe, name)
    torch._dynamo.reset()
    with numerics.undefined_policy("zero"):
        eager = fn(*s.args, backend=backend, **s.kwargs)
        compiled = torch.compile(lambda *a: fn(*a, backend=backend, **fresh.kwargs), fullgraph=True,
                                 backend="aot_eager")(*fresh.args)
    for e, c in zip(_flat(eager), _flat(compiled)):
        assert e.dtype == c.dtype and torch.equal(e.view(torch.uint8) if e.dtype.itemsize == 1 else e, c
                                                   if e.dtype.itemsize != 1 else c.view(torch.uint8))


def _samples_with_reference():
    for name, d in DECLS.items():
        for i, s in enumerate(d.samples() if d.samples else []):
            if s.reference is not None:
                yield pytest.param(name, i, id=f"{name}-{s.name or i}")


@pytest.mark.parametrize("name,i", list(_samples_with_reference()))
@pytest.mark.parametrize("path", ["public", "torch.ops", "compiled", "numpy twin"])
def test_sample_reference(name, i, path):
    """The simulator against the sample's independent reference (written with the declaration, in plain
    loops), bit for bit, on every path a CPU call can take."""
    import numpy as np
    d = DECLS[name]
    s = d.samples()[i]
    fn = getattr(ascend_moe, name)
    with numerics.undefined_policy(s.undefined):
        if path == "public":
            out = fn(*s.args, **s.kwargs)
        elif path == "torch.ops":
            out = getattr(torch.ops.ascend_moe, name)(*_torch_args(d, s))
            if d.returns_written is not None:  # the torch op returns nothing: the result is the written argument
                out = d.bind(s.args, s.kwargs, tensor_check=lambda v: isinstance(v, torch.Tensor))[d.returns_written]
        elif path == "compiled":
            torch._dynamo.reset()
            out = torch.compile(lambda *a: fn(*a, **s.kwargs), fullgraph=True, backend="aot_eager")(*s.args)
        else:
            from ascend_moe import numpy_ops
            from ascend_moe.ops._common import from_numpy, to_numpy   # bfloat16 <-> ml_dtypes.bfloat16
            np_args = _map(s.args, to_numpy)
            np_kwargs = _map(s.kwargs, to_numpy)
            # the NZ tag of a tensor stays with it; its NumPy view is tagged like it
            for src, dst in zip(list(s.args) + list(s.kwargs.values()), list(np_args) + list(np_kwargs.values())):
                if isinstance(src, torch.Tensor) and ascend_moe.formats.is_nz(src):
                    ascend_moe.formats.set_format(dst, ascend_moe.formats.get_format(src))
            out = getattr(numpy_ops, name)(*np_args, **np_kwargs)
            out = [from_numpy(np.asarray(o)) for o in out] if isinstance(out, (list, tuple)) else from_numpy(out)
    for got, want in zip(_flat(out), _flat(s.reference(s))):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name,i", list(_errors()))
def test_error_inputs(name, i):
    d = DECLS[name]
    e = d.error_inputs()[i]
    with pytest.raises(e.error_type, match=e.error_regex):
        getattr(ascend_moe, name)(*e.sample.args, **e.sample.kwargs)


def _binding_errors():
    """Error inputs that are binding errors of check() too (check() also takes NumPy arrays and
    TensorSpecs, so 'must be a Tensor' is not one)."""
    for name, d in DECLS.items():
        for i, e in enumerate(d.error_inputs() if d.error_inputs else []):
            if e.error_type is TypeError and "must be a Tensor" not in e.error_regex:
                yield pytest.param(name, i, id=f"{name}-err{i}")


@pytest.mark.parametrize("name,i", list(_binding_errors()))
def test_error_inputs_checker(name, i):
    """check() binds with the same binder: a type error names the argument and shows the torch signature."""
    d = DECLS[name]
    e = d.error_inputs()[i]
    with pytest.raises(TypeError, match=re.escape(d.name)) as info:
        ascend_moe.check(name, *e.sample.args, **e.sample.kwargs)
    assert "signature: (" in str(info.value) and "Tensor" in str(info.value)


def test_meta_mixed_with_cpu_is_refused_not_computed():
    """Regression: a meta tensor among CPU tensors used to run the fake kernel and return uninitialised
    CPU memory; it must raise naming both arguments and their devices."""
    with pytest.raises(RuntimeError, match=r"'x' is on cpu and 'bias' is on meta"):
        ascend_moe.npu_moe_gating_top_k(torch.randn(2, 8), 2, bias=torch.zeros(8, device="meta"))
    with pytest.raises(RuntimeError, match=r"'bias' is on meta"):
        torch.ops.ascend_moe.npu_moe_gating_top_k(torch.randn(2, 8), 2, torch.zeros(8, device="meta"))


@pytest.mark.parametrize("value,expected", [("2", "an int"), (2.0, "an int"), (None, "an int"),
                                            (True, "an int")])
def test_wrong_type_is_type_error_naming_argument(value, expected):
    """Regression: wrongly typed arguments used to reach torch's schema parser (RuntimeError)."""
    with pytest.raises(TypeError, match=rf"argument 'k' must be {expected}"):
        ascend_moe.npu_moe_gating_top_k(torch.randn(2, 8), value)
    with pytest.raises(TypeError, match=r"argument 'k_group' must be an int in the int64 range"):
        ascend_moe.npu_moe_gating_top_k(torch.randn(2, 8), 2, k_group=2 ** 64)
    import numpy as np
    with pytest.raises(TypeError, match=r"argument 'x' must be a Tensor, got numpy.ndarray"):
        ascend_moe.npu_moe_gating_top_k(np.zeros((2, 8), np.float32), 2)


def test_sim_imports_without_torch_or_rules():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; import ascend_moe.sim.gating, ascend_moe.sim.finalize_routing; "
            "bad = [m for m in sys.modules if m.startswith(('ascend_moe.rules', 'ascend_moe.products'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", [None, "auto", "sim"])
def test_grouped_matmul_family_compiles_with_backend_argument(backend):
    """The gmm family (not yet table-declared) sets no ambient state either: backend= compiles."""
    torch._dynamo.reset()
    x, w = torch.randn(6, 16), torch.randn(3, 16, 8)
    calls = [lambda x, w: ascend_moe.npu_gmm(x, w, group_list=[2, 4, 6], backend=backend),
             lambda x, w: ascend_moe.npu_gmm_v2(x, w, group_list=torch.tensor([2, 2, 2]), backend=backend),
             lambda x, w: ascend_moe.npu_grouped_matmul([x], [w], group_list=torch.tensor([2, 4, 6]), split_item=3,
                                                        group_type=0, backend=backend)[0]]
    for fn in calls:
        want = fn(x, w)
        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, w)
        assert torch.equal(want, got)


def test_grouped_matmul_bare_tensor_is_one_type_error():
    x, w = torch.randn(6, 16), torch.randn(3, 16, 8)
    with pytest.raises(TypeError, match=r"argument 'x' must be a list of Tensors \(Tensor\[\]\): wrap a single tensor as \[t\]"):
        ascend_moe.npu_grouped_matmul(x, [w], group_list=torch.tensor([2, 4, 6]), split_item=3)
    with pytest.raises(TypeError, match=r"argument 'weight' must be a list of Tensors"):
        ascend_moe.npu_grouped_matmul([x], w, group_list=torch.tensor([2, 4, 6]), split_item=3)


def test_finalize_routing_fake_kernel_w_none_is_type_error():
    """Regression: w=None reached the fake kernel's shape rule (AttributeError)."""
    with FakeTensorMode():
        x = torch.empty(6, 32, dtype=torch.int8)
        with pytest.raises(TypeError, match=r"argument 'w' must be a Tensor"):
            torch.ops.ascend_moe.npu_grouped_matmul_finalize_routing(x, None, torch.empty(2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"argument 'w' must be a Tensor"):
        ascend_moe.npu_grouped_matmul_finalize_routing(torch.empty(6, 32, dtype=torch.int8), None,
                                                       torch.tensor([3, 3]))


@pytest.mark.parametrize("name", [n for n, d in DECLS.items() if d.aclnn])
def test_aclnn_table_matches_the_dispatcher(name):
    """The declaration's entry points per family are the dispatcher's, in its (op-plugin's) order, and
    each C parameter list has as many parameters as the entry point's kind in the C++ table."""
    from ascend_moe import _C
    from ascend_moe.backends.aclnn_status import OP_FAMILIES
    d = DECLS[name]
    families = _C.families()
    for fam in d.families(every=True):
        assert [e.name for e in d.entries(fam)] == list(families[fam]), fam
    assert OP_FAMILIES[name] == d.families()
    kind = {"T": "T", "O": "T", "L": "L", "OL": "L", "IA": "I", "i64": "i", "f32": "f", "f64": "d", "b": "b",
            "s": "s"}
    for e in d.aclnn:
        assert "".join(kind[p.ctype] for p in e.c_params) == _C.entry_kinds(e.name), e.name


def test_privateuse1_kernel_runs_the_simulator_on_host_views_when_simulated(monkeypatch):
    """The PrivateUse1 kernel of the simulated device: checker + simulator on host_view(t), outputs
    allocated on the tensors' device and filled through host_view.  Modelled here with meta tensors as
    the device's tensors and a dict of CPU tensors as its host memory (the kernel is called directly)."""
    from ascend_moe import backends
    from ascend_moe.ops import _generate
    memory = {}

    def host_view(t):
        if t.device.type == "cpu":
            return t
        if id(t) not in memory:
            memory[id(t)] = (t, torch.empty(t.shape, dtype=t.dtype))
        return memory[id(t)][1]

    def to_device(t):
        d = torch.empty(t.shape, dtype=t.dtype, device="meta")
        memory[id(d)] = (d, t)
        return d

    monkeypatch.setattr(_generate, "NPU_DEVICE_TYPES", ("meta",))
    monkeypatch.setattr(backends, "host_view", host_view)
    backends.set_privateuse1_simulated(True)
    try:
        assert backends.privateuse1_is_simulated()
        d = DECLS["npu_moe_gating_top_k"]
        s = d.samples()[0]
        want = ascend_moe.npu_moe_gating_top_k(*s.args, **s.kwargs)
        dev_args = _map(_torch_args(d, s), to_device)
        got = _generate.NPU_KERNELS["npu_moe_gating_top_k"](*dev_args)
        assert all(t.device.type == "meta" for t in got)
        for g, w in zip(got, want):
            assert torch.equal(host_view(g), w)
        with ascend_moe.target("atlas-inference"), pytest.raises(ascend_moe.ConstraintError):
            _generate.NPU_KERNELS["npu_moe_gating_top_k"](*dev_args)  # the checker runs first
    finally:
        backends.set_privateuse1_simulated(False)
    assert not backends.privateuse1_is_simulated()


def test_every_registered_op_is_declared_and_names_its_rule_module():
    from ascend_moe.ops import _npu_kernels
    from ascend_moe.rules import OP_MODULES
    assert set(_npu_kernels.registered_ops()) == set(DECLS)
    for name, d in DECLS.items():
        assert OP_MODULES[name] == d.rules, name
        assert _npu_kernels.REGISTRATION[name] == "registered"
