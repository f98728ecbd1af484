"""Converted copies of a weight (widened bf16, decoded FRACTAL_NZ storage) are kept while the weight is
unchanged; a weight cast by npu_format_cast must still be seen changed after every in-place write a user
can make: through the cast tensor, its views, ``.data``, ``detach()``, an ``nn.Parameter`` of it, the plain
Parameter of ``param.data = npu_format_cast(param.data, 29)``, an optimizer step, and after a save/load round
trip.  Each call is checked against the test's own integer / fp64 arithmetic on the logical values."""
import io

import pytest
import torch

import ascend_moe
import ascend_moe.kernels as mk

E, K, N, M = 2, 32, 32, 8
NI = 256  # the int8 weights' n: A8W8 finalize-routing needs n >= 256
COUNTS = [3, 5]


@pytest.fixture(autouse=True)
def default_cache_check(monkeypatch):
    monkeypatch.delenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", raising=False)  # content checked, the default


# -- the weights a user holds ----------------------------------------------------------------------

def hold(w, how):
    """(tensor passed to the op, tensor written by the user) for a logical ND weight ``w``."""
    if how == "cast":
        t = ascend_moe.npu_format_cast(w.clone(), 29)
        return t, t
    if how == "cast_storage":  # the 5-D NZ storage form
        t = ascend_moe.npu_format_cast(w.clone(), 29, storage=True)
        return t, t
    if how == "parameter":
        p = torch.nn.Parameter(ascend_moe.npu_format_cast(w.clone(), 29), requires_grad=w.is_floating_point())
        return p, p
    if how == "parameter_storage":
        p = torch.nn.Parameter(ascend_moe.npu_format_cast(w.clone(), 29, storage=True), requires_grad=False)
        return p, p
    if how == "param_data":  # vllm-ascend's post-processing idiom
        p = torch.nn.Parameter(w.clone(), requires_grad=w.is_floating_point())
        p.data = ascend_moe.npu_format_cast(p.data, 29)
        return p, p
    raise AssertionError(how)


def as_held(values, held):
    """``values`` (logical ND) in the layout of ``held`` (5-D NZ storage or the logical shape)."""
    if held.dim() == 5:
        return ascend_moe.npu_format_cast(values, 29, storage=True)
    return values


def write(route, held, logical, new):
    """Change ``held`` in place by ``route``; returns the new logical values (computed on ``logical``)."""
    with torch.no_grad():
        if route == "copy_":
            held.copy_(as_held(new, held))
            return new.clone()
        if route == "add_":
            held.add_(1)
            return logical + 1
        if route == "mul_":
            held.mul_(-1)
            return -logical
        if route == "setitem":  # expert 0 (dim 0 is the expert in both layouts)
            held[0] = 1
            out = logical.clone()
            out[0] = 1
            return out
        if route == "view_add_":
            held[1:].add_(2)
            out = logical.clone()
            out[1:] += 2
            return out
        if route == "data.copy_":
            held.data.copy_(as_held(new, held))
            return new.clone()
        if route == "data=":  # new values assigned to the holder (vllm-ascend's weight post-processing)
            held.data = ascend_moe.npu_format_cast(new.clone(), 29, storage=held.dim() == 5)
            assert ascend_moe.formats.get_format(held) == "FRACTAL_NZ"
            return new.clone()
        if route == "data.add_":
            held.data.add_(1)
            return logical + 1
        if route == "detach().sub_":
            held.detach().sub_(1)
            return logical - 1
        if route == "numpy":  # no version counter moves: the kept copy's source CRC-32 tells
            held.detach().numpy()[0] = 1
            out = logical.clone()
            out[0] = 1
            return out
        if route == "isub":
            held -= torch.ones(held.shape, dtype=held.dtype)
            return logical - 1
    raise AssertionError(route)


ROUTES = ["copy_", "add_", "mul_", "setitem", "view_add_", "data.copy_", "data=", "data.add_", "detach().sub_", "isub"]


# -- bf16 grouped matmul: widened / packed copies of the weight --------------------------------------

def gmm_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    # small integers: every product and sum is exact in bf16 / fp32, so the reference is exact
    x = torch.randint(-2, 3, (M, K), generator=g).bfloat16()
    w = torch.randint(-2, 3, (E, K, N), generator=g).bfloat16()
    new = torch.randint(-2, 3, (E, K, N), generator=g).bfloat16()
    return x, w, new


def gmm(x, w):
    return ascend_moe.npu_grouped_matmul([x], [w], group_list=[3, 8], split_item=3, group_type=0)[0]


def gmm_reference(x, w_logical):
    xs, ws = x.double(), w_logical.double()
    out, row = [], 0
    for e, c in enumerate(COUNTS):
        out.append(xs[row:row + c] @ ws[e])
        row += c
    return torch.cat(out).bfloat16()


@pytest.fixture(params=["reference", "machine"])
def kernels(request, monkeypatch):
    if request.param == "reference":
        monkeypatch.setenv("ASCEND_MOE_KERNELS", "reference")
    else:
        monkeypatch.delenv("ASCEND_MOE_KERNELS", raising=False)
    mk.WEIGHT_CACHE.clear()
    return request.param


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("how", ["cast", "parameter", "param_data"])
def test_bf16_gmm_sees_every_in_place_write(kernels, how, route):
    x, w, new = gmm_inputs(1)
    arg, held = hold(w, how)
    for _ in range(3):  # the third call at the latest uses kept copies
        assert torch.equal(gmm(x, arg), gmm_reference(x, w))
    logical = write(route, held, w, new)
    assert torch.equal(gmm(x, arg), gmm_reference(x, logical)), (how, route)
    assert torch.equal(gmm(x, arg), gmm_reference(x, logical)), (how, route)


def test_bf16_gmm_cast_weight_is_kept_while_unchanged(monkeypatch):
    """The cache still works for a cast weight: the second call widens nothing and hits."""
    monkeypatch.setenv("ASCEND_MOE_KERNELS", "reference")
    mk.WEIGHT_CACHE.clear()
    x, w, _ = gmm_inputs(2)
    arg, _ = hold(w, "parameter")
    gmm(x, arg)
    conversions, hits = mk.WEIGHT_CACHE.conversions, mk.WEIGHT_CACHE.hits
    assert torch.equal(gmm(x, arg), gmm_reference(x, w))
    assert mk.WEIGHT_CACHE.conversions == conversions and mk.WEIGHT_CACHE.hits > hits


@pytest.mark.parametrize("how", ["cast", "parameter", "param_data"])
def test_bf16_gmm_after_an_optimizer_step(kernels, how):
    x, w, _ = gmm_inputs(3)
    arg, held = hold(w, how)
    if how == "cast":
        held = arg = torch.nn.Parameter(arg)
    assert held.requires_grad
    opt = torch.optim.SGD([held], lr=1.0)
    for _ in range(2):
        assert torch.equal(gmm(x, arg), gmm_reference(x, w))
    held.grad = torch.ones(held.shape, dtype=held.dtype)
    opt.step()
    assert torch.equal(gmm(x, arg), gmm_reference(x, w - 1))
    held.grad = torch.full(held.shape, -2.0, dtype=held.dtype)
    opt.step()
    assert torch.equal(gmm(x, arg), gmm_reference(x, w + 1))


@pytest.mark.parametrize("how", ["cast", "parameter", "param_data"])
def test_bf16_gmm_after_save_and_load(kernels, how):
    x, w, new = gmm_inputs(4)
    arg, held = hold(w, how)
    for _ in range(2):
        assert torch.equal(gmm(x, arg), gmm_reference(x, w))
    buf = io.BytesIO()
    torch.save(arg, buf)
    del arg, held
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    for _ in range(2):
        assert torch.equal(gmm(x, back), gmm_reference(x, w))
    with torch.no_grad():
        back.copy_(new)
    assert torch.equal(gmm(x, back), gmm_reference(x, new))


# -- A8W8 with an int8 FRACTAL_NZ weight: decoded storage kept while unchanged ------------------------

def int8_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 8, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-8, 8, (E, K, NI), generator=g, dtype=torch.int8)
    new = torch.randint(-8, 8, (E, K, NI), generator=g, dtype=torch.int8)
    return x, w, new


def int_acc(x, w_logical):
    xs, ws = x.long(), w_logical.long()
    out, row = [], 0
    for e, c in enumerate(COUNTS):
        out.append(xs[row:row + c] @ ws[e])
        row += c
    return torch.cat(out)


SCALE = torch.full((E, NI), 1e-3)
PTS = torch.full((M,), 1e-2)


def swiglu(x, w):
    return ascend_moe.npu_grouped_matmul_swiglu_quant(x, w, torch.tensor([3, 8]), SCALE, PTS)


def assert_swiglu_matches(out, x, w_logical):
    """The test's own fp64 epilogue: within one int8 step of the fp32 kernel."""
    c = int_acc(x, w_logical).double() * 1e-3 * 1e-2
    a, b = c[:, :NI // 2], c[:, NI // 2:]
    s = b * a / (1 + torch.exp(-a))
    amax = s.abs().amax(1, keepdim=True)
    want = torch.where(amax > 0, s / (amax / 127), torch.zeros_like(s))
    assert (out[0].double() - want).abs().max() <= 1.0


LOGIT = torch.linspace(0.5, 1.5, M)
ROW_INDEX = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def finalize(x, w):
    return ascend_moe.npu_grouped_matmul_finalize_routing(
        x, w, torch.tensor(COUNTS), scale=SCALE, pertoken_scale=PTS, logit=LOGIT, row_index=ROW_INDEX,
        output_bs=4, group_list_type=1)


def assert_finalize_matches(out, x, w_logical):
    contrib = int_acc(x, w_logical).double() * 1e-3 * (LOGIT.double() * 1e-2)[:, None]
    want = torch.zeros(4, NI, dtype=torch.float64).index_add_(0, ROW_INDEX, contrib)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)


INT8_OPS = {"swiglu_quant": (swiglu, assert_swiglu_matches), "finalize_routing": (finalize, assert_finalize_matches)}


@pytest.mark.parametrize("route", ROUTES + ["numpy"])
@pytest.mark.parametrize("how", ["cast", "cast_storage", "parameter", "parameter_storage", "param_data"])
@pytest.mark.parametrize("op", sorted(INT8_OPS))
def test_int8_nz_weight_sees_every_in_place_write(op, how, route):
    call, check = INT8_OPS[op]
    x, w, new = int8_inputs(5)
    arg, held = hold(w, how)
    for _ in range(2):
        check(call(x, arg), x, w)
    logical = write(route, held, w, new)
    check(call(x, arg), x, logical)
    check(call(x, arg), x, logical)


@pytest.mark.parametrize("op", sorted(INT8_OPS))
def test_int8_nz_storage_decoded_once_while_unchanged(op):
    call, check = INT8_OPS[op]
    x, w, _ = int8_inputs(6)
    arg, _ = hold(w, "parameter_storage")
    mk.WEIGHT_CACHE.clear()
    check(call(x, arg), x, w)
    computed = mk.WEIGHT_CACHE.facts_computed
    check(call(x, arg), x, w)
    assert mk.WEIGHT_CACHE.facts_computed == computed


def test_plain_weight_written_through_data_is_seen(monkeypatch):
    """``.data`` is a new tensor with a version counter of its own (weight loaders, distributed optimizers
    write parameters this way): the kept copy is checked against its source bytes too."""
    monkeypatch.setenv("ASCEND_MOE_KERNELS", "reference")
    mk.WEIGHT_CACHE.clear()
    x, w, new = gmm_inputs(7)
    p = torch.nn.Parameter(w.clone())
    for _ in range(2):
        assert torch.equal(gmm(x, p), gmm_reference(x, w))
    version = p._version
    p.data.copy_(new)
    assert p._version == version  # nothing but the bytes tells
    assert torch.equal(gmm(x, p), gmm_reference(x, new))


def test_bad_cache_check_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", "sometimes")
    x, w, _ = gmm_inputs(8)
    with pytest.raises(ValueError, match="ASCEND_MOE_WEIGHT_CACHE_CHECK.*'content'.*'version'"):
        gmm(x, w)


def test_cast_weight_written_through_the_plain_parameter_holding_its_values(kernels):
    """After ``p.data = cast``, ``p`` (plain) and ``cast`` share memory: a write through ``p`` moves
    neither ``cast`` nor its alias's counter, and a call with ``cast`` still sees it."""
    x, w, _ = gmm_inputs(9)
    cast = ascend_moe.npu_format_cast(w.clone(), 29)
    p = torch.nn.Parameter(torch.zeros_like(w), requires_grad=False)
    p.data = cast
    for _ in range(3):
        assert torch.equal(gmm(x, cast), gmm_reference(x, w))
    p.add_(1)
    assert torch.equal(gmm(x, cast), gmm_reference(x, w + 1))


def test_compiled_call_sees_eager_writes_to_a_cast_weight(kernels):
    """A compiled graph receives the cast weight's values (its alias); a write between calls is seen."""
    x, w, new = gmm_inputs(10)
    arg = torch.nn.Parameter(ascend_moe.npu_format_cast(w.clone(), 29), requires_grad=False)
    torch._dynamo.reset()
    compiled = torch.compile(gmm, fullgraph=True, backend="aot_eager")
    for _ in range(3):
        assert torch.equal(compiled(x, arg), gmm_reference(x, w))
    with torch.no_grad():
        arg[0] = new[0]
    want = torch.cat([new[:1], w[1:]])
    assert torch.equal(compiled(x, arg), gmm_reference(x, want))


def test_deep_copied_cast_weight_sees_its_own_writes(kernels, monkeypatch):
    import copy
    monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", "version")  # the alias counters alone
    x, w, new = gmm_inputs(11)
    m = torch.nn.Module()
    m.w = torch.nn.Parameter(ascend_moe.npu_format_cast(w.clone(), 29), requires_grad=False)
    c = copy.deepcopy(m)
    for _ in range(3):
        assert torch.equal(gmm(x, c.w), gmm_reference(x, w)) and torch.equal(gmm(x, m.w), gmm_reference(x, w))
    with torch.no_grad():
        c.w.copy_(new)
    assert torch.equal(gmm(x, c.w), gmm_reference(x, new)) and torch.equal(gmm(x, m.w), gmm_reference(x, w))


def test_cast_weight_writes_move_the_version_counter_the_op_reads(monkeypatch):
    """Every write through a cast tensor is seen by the version counter alone (the content check off)."""
    monkeypatch.setenv("ASCEND_MOE_KERNELS", "reference")
    monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", "version")
    for how in ("cast", "parameter"):
        for route in ROUTES:
            mk.WEIGHT_CACHE.clear()
            x, w, new = gmm_inputs(12)
            arg, held = hold(w, how)
            for _ in range(2):
                assert torch.equal(gmm(x, arg), gmm_reference(x, w))
            logical = write(route, held, w, new)
            assert torch.equal(gmm(x, arg), gmm_reference(x, logical)), (how, route)
