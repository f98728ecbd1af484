"""The torch.library surface of every op: registration completeness, opcheck, fake-tensor / meta
tracing, and the PrivateUse1 (NPU) kernel plumbing.

Expected output shapes/dtypes are written here by hand from torch_npu's Meta rules (spec
aclnn-abi-and-torch.md 4.3), never read from the ops' own shape rules.  An op that is missing
fails its tests (no skips): every op of issue 9 must be registered.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ascend_moe
from ascend_moe import BackendError, ConstraintError
from ascend_moe.ops import _npu_kernels
from ascend_moe.sim import numerics

# The samples are tiny on purpose; doc-only rules (ConstraintWarning: e.g. the WeightNz doc's list of
# k/n sizes, a group_list total below the rows of x) warn about that and are not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")

OPS = _npu_kernels.EXPECTED_OPS
GMM_FAMILY = ("npu_gmm", "npu_gmm_v2", "npu_grouped_matmul")


def _op(name: str) -> torch._ops.OpOverload:
    assert hasattr(torch.ops.ascend_moe, name), f"torch.ops.ascend_moe.{name} is not registered"
    return getattr(torch.ops.ascend_moe, name).default


def _nz(t: torch.Tensor) -> torch.Tensor:
    """A weight in FRACTAL_NZ, as the 5-D NZ storage tensor (npu_format_cast(w, 29, storage=True)).

    The other NZ form - a tensor of the logical shape carrying FRACTAL_NZ, npu_format_cast(w, 29), what
    torch_npu users write - is exercised by tests/test_formatted_tensor.py and tests/downstream."""
    return ascend_moe.npu_format_cast(t, 29, storage=True)


class Sample(NamedTuple):
    """One call of an op: ``args``/``kwargs`` for ``torch.ops.ascend_moe.<op>`` (schema names) and
    the outputs torch_npu's Meta rule gives: [(shape, dtype)] in return order."""
    args: tuple
    kwargs: dict
    expected: List[Tuple[Tuple[int, ...], torch.dtype]]
    undefined: str = "poison"   # undefined-region policy for opcheck (NaN != NaN in its comparisons)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=_gen(seed)) * scale).to(dtype)


def _randint8(*shape, seed=0, lo=-8, hi=8):
    return torch.randint(lo, hi, shape, generator=_gen(seed), dtype=torch.int8)


# --------------------------------------------------------------------------------------------------
# sample inputs, tiny shapes; expected shapes from spec 4.3 / MindSpeed docs
# --------------------------------------------------------------------------------------------------

def _samples_gmm() -> List[Sample]:
    # MindSpeed npu_gmm: x [M,K], weight [E,K,N], cumulative group_list, y [M,N] x.dtype
    x = _rand(7, 16, dtype=torch.bfloat16, seed=1)
    w = _rand(3, 16, 8, dtype=torch.bfloat16, seed=2, scale=0.25)
    # the op's schema carries a List[int] group list as group_list_ints (the public function maps it)
    # K split (group_type 2): x a transposed view [M, K] of a [K, M] tensor, weight [K, N], y [E, M, N]
    xt = _rand(16, 5, dtype=torch.bfloat16, seed=35).t()
    wk = _rand(16, 8, dtype=torch.bfloat16, seed=36, scale=0.25)
    return [Sample((x, w), dict(group_list_ints=[2, 2, 7], group_type=0), [((7, 8), torch.bfloat16)]),
            Sample((x.float(), w.float()), dict(group_list=torch.tensor([3, 5, 7]), group_type=0),
                   [((7, 8), torch.float32)]),
            Sample((xt, wk), dict(group_list=torch.tensor([4, 4, 16]), group_type=2),
                   [((3, 5, 8), torch.bfloat16)])]


def _samples_gmm_v2() -> List[Sample]:
    x = _rand(6, 16, dtype=torch.float16, seed=3)
    w = _rand(2, 16, 4, dtype=torch.float16, seed=4, scale=0.25)
    # counts summing to fewer rows than x: the unwritten tail is undefined (poison NaN)
    return [Sample((x, w), dict(group_list=torch.tensor([4, 2]), group_type=0), [((6, 4), torch.float16)]),
            Sample((x, w), dict(group_list=torch.tensor([1, 3]), group_type=0), [((6, 4), torch.float16)],
                   undefined="zero")]


def _samples_grouped_matmul() -> List[Sample]:
    x = _rand(6, 16, dtype=torch.bfloat16, seed=5)
    w = _rand(3, 16, 8, dtype=torch.bfloat16, seed=6, scale=0.25)
    gl = torch.tensor([2, 0, 4])
    # vllm-ascend's MoE call: split_item=2 (one output), group_type=0, counts (group_list_type=1)
    moe = Sample(([x], [w]), dict(group_list=gl, split_item=2, group_type=0, group_list_type=1),
                 [((6, 8), torch.bfloat16)])
    # group_type -1 (no grouping), split_item 0: one output per x
    bf = torch.bfloat16
    xs = [_rand(3, 16, dtype=bf, seed=7), _rand(5, 16, dtype=bf, seed=8)]
    ws = [_rand(16, 4, dtype=bf, seed=9), _rand(16, 6, dtype=bf, seed=10)]
    lists = Sample((xs, ws), dict(split_item=0, group_type=-1), [((3, 4), bf), ((5, 6), bf)])
    return [moe, lists]


def _samples_gating() -> List[Sample]:
    # DeepSeek-style grouped routing in miniature: 16 experts in 4 groups, top-2 groups, k=4, sigmoid
    x = _rand(5, 16, seed=11)
    bias = _rand(16, seed=12, scale=0.1)
    kw = dict(bias=bias, k_group=2, group_count=4, group_select_mode=1, renorm=0, norm_type=1,
              routed_scaling_factor=2.5, eps=1e-20)
    exp = [((5, 4), torch.float32), ((5, 4), torch.int32), ((5, 16), torch.float32)]
    return [Sample((x, 4), dict(kw, out_flag=True), exp),
            # out_flag False leaves norm_out unwritten: NaN under 'poison', compared under 'zero'
            Sample((x, 4), dict(kw, out_flag=False), exp, undefined="zero"),
            Sample((x.to(torch.bfloat16), 2), dict(bias=None, norm_type=0, out_flag=True),
                   [((5, 2), torch.bfloat16), ((5, 2), torch.int32), ((5, 16), torch.float32)])]


def _samples_ffn() -> List[Sample]:
    x = _rand(8, 16, dtype=torch.float16, seed=13)
    w1 = _rand(16, 32, dtype=torch.float16, seed=14, scale=0.2)
    w2 = _rand(32, 16, dtype=torch.float16, seed=15, scale=0.2)
    w13 = _rand(2, 16, 32, dtype=torch.float16, seed=16, scale=0.2)
    w23 = _rand(2, 32, 16, dtype=torch.float16, seed=17, scale=0.2)
    # quantised: int8 x gives float16 unless output_dtype is bfloat16 (spec 4.3)
    xq, w1q, w2q = _randint8(4, 32, seed=37), _randint8(32, 64, seed=38), _randint8(64, 32, seed=39)
    quant = dict(scale=torch.tensor([0.05]), offset=torch.tensor([0.0]))
    d1, d2 = _rand(64, seed=40, scale=0.01).abs(), _rand(32, seed=41, scale=0.01).abs()
    return [Sample((x, w1, w2, "relu"), {}, [((8, 16), torch.float16)]),
            Sample((x, w13, w23, "gelu"), dict(expert_tokens=[3, 5]), [((8, 16), torch.float16)]),
            Sample((xq, w1q, w2q, "relu"), dict(quant, deq_scale1=d1, deq_scale2=d2), [((4, 32), torch.float16)]),
            Sample((xq, w1q, w2q, "relu"), dict(quant, deq_scale1=d1.to(torch.bfloat16),
                                                deq_scale2=d2.to(torch.bfloat16), output_dtype=torch.bfloat16),
                   [((4, 32), torch.bfloat16)])]


def _a8w8_weights(e: int, k: int, n: int, seed: int):
    w = _randint8(e, k, n, seed=seed)
    return _nz(w)


def _samples_swiglu_quant() -> List[Sample]:
    # A8W8: int8 x [M,K], int8 NZ weight [E,K,N], fp32 weight_scale [E,N], fp32 x_scale [M]
    m, k, n, e = 6, 32, 64, 2
    x = _randint8(m, k, seed=18)
    w = _a8w8_weights(e, k, n, seed=19)
    ws = _rand(e, n, seed=20, scale=0.01).abs() + 1e-3
    xs = _rand(m, seed=21, scale=0.1).abs() + 1e-2
    gl = torch.tensor([2, 6])  # cumsum
    # out_offset (0-d) is never written by the device: NaN under 'poison', so opcheck compares under 'zero'
    return [Sample((x, w, gl, ws, xs), {},
                   [((m, n // 2), torch.int8), ((m,), torch.float32), ((), torch.float32)], undefined="zero")]


def _samples_swiglu_quant_v2() -> List[Sample]:
    m, k, n, e = 6, 32, 64, 2
    x = _randint8(m, k, seed=22)
    w = _a8w8_weights(e, k, n, seed=23)
    ws = _rand(e, n, seed=24, scale=0.01).abs() + 1e-3
    xs = _rand(m, seed=25, scale=0.1).abs() + 1e-2
    return [Sample((x, [w], [ws], xs, torch.tensor([4, 2])), dict(group_list_type=1),
                   [((m, n // 2), torch.int8), ((m,), torch.float32)])]


def _samples_finalize_routing() -> List[Sample]:
    # A8W8 combine: 3 tokens x top-2 = 6 rows, 2 experts, y [output_bs, N] float32 (A8W8 needs N >= 256)
    m, k, n, e, bs = 6, 32, 256, 2, 3
    x = _randint8(m, k, seed=26)
    w = _a8w8_weights(e, k, n, seed=27)
    scale = _rand(e, n, seed=28, scale=0.01).abs() + 1e-3
    pts = _rand(m, seed=29, scale=0.1).abs() + 1e-2
    logit = _rand(m, seed=30).abs()
    row_index = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int64)
    kw = dict(scale=scale, pertoken_scale=pts, logit=logit, row_index=row_index, group_list_type=1)
    return [Sample((x, w, torch.tensor([3, 3])), dict(kw, output_bs=bs), [((bs, n), torch.float32)]),
            # output_bs 0: M = x.shape[0]
            Sample((x, w, torch.tensor([3, 3])), kw, [((m, n), torch.float32)])]


SAMPLES: Dict[str, Callable[[], List[Sample]]] = {
    "npu_gmm": _samples_gmm,
    "npu_gmm_v2": _samples_gmm_v2,
    "npu_grouped_matmul": _samples_grouped_matmul,
    "npu_moe_gating_top_k": _samples_gating,
    "npu_ffn": _samples_ffn,
    "npu_grouped_matmul_swiglu_quant": _samples_swiglu_quant,
    "npu_grouped_matmul_swiglu_quant_v2": _samples_swiglu_quant_v2,
    "npu_grouped_matmul_finalize_routing": _samples_finalize_routing,
}


def _flat(out: Any) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    flat: List[torch.Tensor] = []
    for o in out:
        flat.extend(_flat(o))
    return flat


def _meta_of(out: Any) -> List[Tuple[Tuple[int, ...], torch.dtype]]:
    return [(tuple(t.shape), t.dtype) for t in _flat(out)]


def test_samples_cover_every_op():
    assert set(SAMPLES) == set(OPS)


# --------------------------------------------------------------------------------------------------
# registration completeness
# --------------------------------------------------------------------------------------------------

def _has(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"ascend_moe::{name}", key)


@pytest.mark.parametrize("name", OPS)
def test_registration_is_complete(name):
    _op(name)
    dump = torch._C._dispatch_dump(f"ascend_moe::{name}")
    assert _has(name, "Meta"), f"{name}: no fake (Meta) kernel\n{dump}"
    assert _has(name, "CPU") or "CompositeExplicitAutograd[alias]" in dump, f"{name}: no CPU kernel\n{dump}"
    assert _has(name, "PrivateUse1"), f"{name}: no PrivateUse1 kernel\n{dump}"
    assert _npu_kernels.REGISTRATION.get(name) == "registered", \
        f"{name}: the PrivateUse1 kernel is not the checker + aclnn kernel of _npu_kernels"
    if name in GMM_FAMILY:
        assert "Autograd[alias]" in dump or _has(name, "AutogradCPU"), f"{name}: no autograd\n{dump}"


def test_only_expected_ops_in_namespace():
    """Every op in the namespace is one the issue names or a declared op (tests/test_declared_ops.py
    generates the declared ops' tests); a stray op would miss its tests."""
    from ascend_moe.opdecl import all_decls
    assert set(_npu_kernels.registered_ops()) <= set(OPS) | {d.name for d in all_decls()}


# --------------------------------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake tensor, AOT dispatch (dynamic shapes)
# --------------------------------------------------------------------------------------------------

def _cases():
    for name in OPS:
        n = len(SAMPLES[name]()) if hasattr(torch.ops.ascend_moe, name) else 1
        for i in range(n):
            yield pytest.param(name, i, id=f"{name}-{i}")


def _sample(name: str, i: int) -> Sample:
    _op(name)
    return SAMPLES[name]()[i]


@pytest.mark.parametrize("name,i", list(_cases()))
def test_opcheck(name, i):
    s = _sample(name, i)
    with numerics.undefined_policy(s.undefined):
        torch.library.opcheck(_op(name), s.args, s.kwargs)


def test_opcheck_with_autograd_inputs():
    """opcheck's autograd tests run when inputs require grad (the gmm family has a backward)."""
    for name in ("npu_gmm", "npu_gmm_v2"):
        s = _sample(name, 0)
        x, w = (a.detach().float().requires_grad_() for a in s.args[:2])
        torch.library.opcheck(_op(name), (x, w), s.kwargs)
    # npu_grouped_matmul's differentiable (MindSpeed) form: one x, one [E, K, N] weight, a group list
    x = _rand(6, 16, seed=33).requires_grad_()
    w = _rand(3, 16, 8, seed=34, scale=0.25).requires_grad_()
    torch.library.opcheck(_op("npu_grouped_matmul"), ([x], [w]),
                          dict(group_list=torch.tensor([2, 0, 4]), split_item=3, group_type=0, group_list_type=1))


# --------------------------------------------------------------------------------------------------
# fake tensors and the meta device: shapes without computing, rules still enforced
# --------------------------------------------------------------------------------------------------

def _to_fake(mode: FakeTensorMode, v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return mode.from_tensor(v)  # a cast weight's fake tensor carries its format itself
    if isinstance(v, (list, tuple)):
        return type(v)(_to_fake(mode, a) for a in v)
    if isinstance(v, dict):
        return {k: _to_fake(mode, a) for k, a in v.items()}
    return v


@pytest.fixture
def no_compute(monkeypatch):
    """Every op module's CPU kernel reads its inputs through to_numpy: make that fail, so a shape test
    that computed anything would fail."""
    import importlib

    def refuse(*a, **k):
        raise AssertionError("a CPU kernel ran while tracing with fake / meta tensors")
    # the generated kernels of the declared ops convert in ascend_moe.ops._generate
    for mod in ("_generate", "gmm", "ffn", "swiglu_quant", "finalize_routing"):
        module = importlib.import_module(f"ascend_moe.ops.{mod}")
        if hasattr(module, "to_numpy"):
            monkeypatch.setattr(module, "to_numpy", refuse)


@pytest.mark.parametrize("name,i", list(_cases()))
def test_fake_tensor_shapes(name, i, no_compute):
    s = _sample(name, i)
    mode = FakeTensorMode()
    args, kwargs = _to_fake(mode, s.args), _to_fake(mode, s.kwargs)
    with mode:
        out = _op(name)(*args, **kwargs)
    assert _meta_of(out) == s.expected


def _to_meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.to("meta")  # a cast weight's meta copy keeps its format
    if isinstance(v, (list, tuple)):
        return type(v)(_to_meta(a) for a in v)
    if isinstance(v, dict):
        return {k: _to_meta(a) for k, a in v.items()}
    return v


@pytest.mark.parametrize("name,i", list(_cases()))
def test_meta_device_shapes(name, i, no_compute):
    s = _sample(name, i)
    out = _op(name)(*_to_meta(s.args), **_to_meta(s.kwargs))
    assert all(t.device.type == "meta" for t in _flat(out))
    assert _meta_of(out) == s.expected


def test_meta_tracing_does_not_compute(no_compute):
    """A DeepSeek-V3-sized gating call (64k tokens x 256 experts) on the meta device returns at once."""
    x = torch.empty(65536, 256, device="meta")
    bias = torch.empty(256, device="meta")
    y, idx, norm = torch.ops.ascend_moe.npu_moe_gating_top_k(
        x, 8, bias=bias, k_group=4, group_count=8, group_select_mode=1, norm_type=1)
    assert (y.shape, idx.shape, norm.shape) == ((65536, 8), (65536, 8), (65536, 256))
    assert (y.dtype, idx.dtype, norm.dtype) == (torch.float32, torch.int32, torch.float32)


def test_fake_kernel_runs_the_checker():
    """A call the product rejects fails while tracing, before any computation."""
    mode = FakeTensorMode()
    with mode:
        x = torch.empty(4, 16)
        with pytest.raises(ConstraintError, match=r"k"):
            torch.ops.ascend_moe.npu_moe_gating_top_k(x, 17)  # k > experts
    x = torch.empty(4, 16, device="meta")
    with ascend_moe.target("atlas-inference"), pytest.raises(ConstraintError, match="atlas-inference"):
        torch.ops.ascend_moe.npu_moe_gating_top_k(x, 2)


# --------------------------------------------------------------------------------------------------
# the PrivateUse1 kernel: checker first, then aclnn only (never the simulator)
# --------------------------------------------------------------------------------------------------

def _call_npu_kernel(name: str, s: Sample):
    return _op(name)._op_dk(torch._C.DispatchKey.PrivateUse1, *s.args, **s.kwargs)


@pytest.mark.parametrize("name", OPS)
def test_npu_kernel_refuses_cpu_tensors(name):
    """Reached with CPU tensors (only possible by direct dispatch) it refuses instead of simulating."""
    s = _sample(name, 0)
    with pytest.raises(BackendError, match=rf"{name}.*(never the simulator|aclnn)"):
        _call_npu_kernel(name, s)


def test_npu_kernel_checks_before_dispatch(monkeypatch):
    s = _sample("npu_moe_gating_top_k", 0)
    _SIM_RESULT["npu_moe_gating_top_k"] = None
    with _recording_aclnn(monkeypatch) as calls, ascend_moe.use_backend("aclnn"):
        with ascend_moe.target("atlas-inference"), pytest.raises(ConstraintError, match="atlas-inference"):
            _call_npu_kernel("npu_moe_gating_top_k", s)
    assert calls == []


@contextlib.contextmanager
def _recording_aclnn(monkeypatch):
    """Stand-in for the aclnn dispatcher, as if a CANN runtime were present: records the calls and
    returns the simulator's result (the plumbing under test is the kernel, not aclnn)."""
    from ascend_moe.backends import aclnn, aclnn_status
    calls: List[Tuple[str, Dict[str, Any]]] = []

    def call(op, args):
        calls.append((op, args))
        with ascend_moe.use_backend("sim"):
            return _SIM_RESULT[op]

    monkeypatch.setattr(aclnn_status, "fake_runtime_loaded", lambda: True)
    monkeypatch.setattr(aclnn_status, "aclnn_unavailable_reason", lambda op: None)
    monkeypatch.setattr(aclnn, "call", call)
    yield calls


_SIM_RESULT: Dict[str, Any] = {}


@pytest.mark.parametrize("name", OPS)
def test_npu_kernel_forwards_bound_arguments_to_aclnn(name, monkeypatch):
    s = _sample(name, 0)
    _SIM_RESULT[name] = _op(name)(*s.args, **s.kwargs)
    public_names = [n for n in inspect.signature(getattr(ascend_moe, name)).parameters if n != "backend"]
    with _recording_aclnn(monkeypatch) as calls, ascend_moe.use_backend("aclnn"):
        out = _call_npu_kernel(name, s)
    assert len(calls) == 1 and calls[0][0] == name
    # the public argument dict (the public function's names), every argument present
    assert sorted(calls[0][1]) == sorted(public_names)
    first, got = s.args[0], calls[0][1][public_names[0]]
    assert got is first or (isinstance(first, list) and all(a is b for a, b in zip(got, first)))
    assert _meta_of(out) == s.expected
    for a, b in zip(_flat(out), _flat(_SIM_RESULT[name])):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)


def test_npu_kernel_honours_explicit_sim_refusal(monkeypatch):
    """backend='sim' requested while the tensors would be NPU tensors: refused by the policy."""
    s = _sample("npu_moe_gating_top_k", 0)
    with _recording_aclnn(monkeypatch) as calls, ascend_moe.use_backend("sim"):
        with pytest.raises(BackendError):
            _call_npu_kernel("npu_moe_gating_top_k", s)
    assert calls == []


# --------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) of a DeepSeek-style MoE block built from the ops
# --------------------------------------------------------------------------------------------------

class DeepSeekStyleMoE(torch.nn.Module):
    """Grouped sigmoid routing with a score-correction bias (npu_moe_gating_top_k), expert-sorted
    tokens, gate/up projection (torch_npu-style npu_grouped_matmul), SwiGLU, down projection
    (MindSpeed-style npu_gmm_v2), weighted combine, plus a shared expert (npu_ffn); then the W8A8
    variant of the routed experts (GMM+SwiGLU+quant and GMM+finalize-routing with NZ int8 weights)."""

    E, H, I, K, GROUPS, K_GROUP = 16, 32, 16, 2, 4, 2
    QH, QI = 256, 256  # A8W8 finalize-routing needs n >= 256

    def __init__(self):
        super().__init__()
        g = _gen(40)
        E, H, I, bf = self.E, self.H, self.I, torch.bfloat16
        self.register_buffer("gate", torch.randn(H, E, generator=g) * 0.3)
        self.register_buffer("bias", torch.randn(E, generator=g) * 0.1)
        self.register_buffer("w13", (torch.randn(E, H, 2 * I, generator=g) * 0.2).to(bf))
        self.register_buffer("w2", (torch.randn(E, I, H, generator=g) * 0.2).to(bf))
        self.register_buffer("shared_w1", (torch.randn(H, 2 * I, generator=g) * 0.2).to(bf))
        self.register_buffer("shared_w2", (torch.randn(2 * I, H, generator=g) * 0.2).to(bf))
        QH, QI = self.QH, self.QI
        self.register_buffer("qw13", _nz(torch.randint(-8, 8, (E, QH, 2 * QI), generator=g, dtype=torch.int8)))
        self.register_buffer("qw13_scale", torch.rand(E, 2 * QI, generator=g) * 0.01 + 1e-3)
        self.register_buffer("qw2", _nz(torch.randint(-8, 8, (E, QI, QH), generator=g, dtype=torch.int8)))
        self.register_buffer("qw2_scale", torch.rand(E, QH, generator=g) * 0.01 + 1e-3)

    def route(self, x):
        w, ids, _ = ascend_moe.npu_moe_gating_top_k(
            x.float() @ self.gate, self.K, bias=self.bias, k_group=self.K_GROUP, group_count=self.GROUPS,
            group_select_mode=1, renorm=0, norm_type=1, routed_scaling_factor=2.5)
        flat = ids.reshape(-1).long()
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(self.E, dtype=torch.int64).scatter_add_(0, flat, torch.ones_like(flat))
        return w.reshape(-1)[order], order // self.K, counts

    def forward(self, x, xq_hidden):
        weights, src, counts = self.route(x)
        h = ascend_moe.npu_grouped_matmul([x[src]], [self.w13], group_list=counts, split_item=3, group_type=0,
                                          group_list_type=1)[0]
        act = torch.nn.functional.silu(h[:, :self.I].float()) * h[:, self.I:].float()
        y = ascend_moe.npu_gmm_v2(act.to(torch.bfloat16), self.w2, group_list=counts)
        out = torch.zeros(x.shape, dtype=torch.float32).index_add(0, src, y.float() * weights[:, None])
        out = out + ascend_moe.npu_ffn(x, self.shared_w1, self.shared_w2, "relu").float()

        # W8A8 routed experts on a wider hidden size, same routing
        rows = xq_hidden[src].float()
        x_scale = rows.abs().amax(-1) / 127.0
        xq = torch.round(rows / x_scale[:, None]).clamp(-128, 127).to(torch.int8)
        q, q_scale, _ = ascend_moe.npu_grouped_matmul_swiglu_quant(xq, self.qw13, torch.cumsum(counts, 0),
                                                                   self.qw13_scale, x_scale)
        yq = ascend_moe.npu_grouped_matmul_finalize_routing(
            q, self.qw2, counts, scale=self.qw2_scale, pertoken_scale=q_scale, logit=weights.float(),
            row_index=src, output_bs=x.shape[0], group_list_type=1)
        return out, yq


def test_compile_fullgraph_moe_block_equals_eager():
    """Dynamo traces the whole block without a graph break (fake kernels, shape rules, checks at trace
    time) and the compiled block gives bit-identical results to eager.  Backend aot_eager (dynamo +
    AOTAutograd + functionalization, what our ops see of torch.compile): inductor calls our ops through
    the same fake kernels and runs their real kernels as fallbacks, and only changes the generated code
    of the plain torch glue.  Checked by hand (not in CI: ~25 CPU-seconds per compile): with
    backend="inductor" the block equals eager bit for bit once
    torch._inductor.config.emulate_precision_casts = True (without it inductor keeps the bf16 glue's
    intermediates in fp32, a difference of the glue, not of the ops)."""
    torch._dynamo.reset()
    block = DeepSeekStyleMoE()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    for seed in (41, 42):  # the second call reuses the compiled graph
        x = torch.randn(6, block.H, generator=_gen(seed)).to(torch.bfloat16)
        xq = torch.randn(6, block.QH, generator=_gen(seed + 10)).to(torch.bfloat16)
        eager_out, eager_q = block(x, xq)
        out, q = compiled(x, xq)
        torch.testing.assert_close(out, eager_out, rtol=0, atol=0)
        torch.testing.assert_close(q, eager_q, rtol=0, atol=0)
    assert torch.isfinite(out).all() and torch.isfinite(q).all() and q.abs().sum() > 0


def test_compile_fullgraph_gmm_training_step_equals_eager():
    """MindSpeed training: forward and the registered backward of npu_gmm / npu_gmm_v2 under
    torch.compile(fullgraph=True) give the eager gradients bit for bit."""
    torch._dynamo.reset()

    def loss_fn(x, w, counts):
        h = ascend_moe.npu_gmm(x, w, group_list=torch.cumsum(counts, 0), group_type=0)
        y = ascend_moe.npu_gmm_v2(torch.nn.functional.silu(h), w.transpose(1, 2), group_list=counts)
        return y.float().square().sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    counts = torch.tensor([3, 0, 5])
    x0 = _rand(8, 16, dtype=torch.bfloat16, seed=50)
    w0 = _rand(3, 16, 16, dtype=torch.bfloat16, seed=51, scale=0.25)
    grads = []
    for fn in (loss_fn, compiled):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = fn(x, w, counts)
        loss.backward()
        grads.append((loss.detach(), x.grad, w.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.count_nonzero(grads[1][2][1]) == 0  # the empty expert gets no weight gradient
