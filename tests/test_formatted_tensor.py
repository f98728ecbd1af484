"""The storage format travels with a CPU tensor cast by npu_format_cast, as FRACTAL_NZ does with an NPU
tensor's storage: through clone, views, detach, nn.Parameter, fake tensors, make_fx, torch.compile and
opcheck; value-changing ops give ND results, as torch_npu's op-api kernels allocate them.  The fake kernels
check the real format: an ND 3-D int8 weight is refused at trace time, an NZ one passes."""
import copy
import io

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import ascend_moe
from ascend_moe.formats import get_format, nz_storage_record

M, K, N, E = 6, 32, 64, 2


def weight(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 8, (E, K, N), generator=g, dtype=torch.int8)


def swiglu_args(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 8, (M, K), generator=g, dtype=torch.int8)
    ws = (torch.randn(E, N, generator=g) * 0.01).abs() + 1e-3
    xs = (torch.randn(M, generator=g) * 0.1).abs() + 1e-2
    return x, torch.tensor([2, 6]), ws, xs


def swiglu(w, *rest):
    x, gl, ws, xs = rest or swiglu_args()
    return ascend_moe.npu_grouped_matmul_swiglu_quant(x, w, gl, ws, xs)


def bits_equal(a, b):
    return all(torch.equal(x, y) if not x.is_floating_point() else torch.equal(x.view(torch.int32) if x.dtype ==
               torch.float32 else x, y.view(torch.int32) if y.dtype == torch.float32 else y) for x, y in zip(a, b))


# -- eager: what keeps the format, what drops it ------------------------------------------------------

def test_clone_views_detach_keep_nz_and_the_values():
    w = weight()
    nz = ascend_moe.npu_format_cast(w, 29)
    assert get_format(w) == "ND" and get_format(nz) == "FRACTAL_NZ"
    kept = {"clone": nz.clone(), "detach": nz.detach(), "select": nz[0], "slice": nz[:, 1:], "view": nz.view(E, K * N),
            "transpose": nz.transpose(1, 2), "reshape": nz.reshape(E * K, N), "contiguous": nz.contiguous(),
            "cpu": nz.cpu(), "to(meta)": nz.to("meta"), "empty_like": torch.empty_like(nz)}
    for how, t in kept.items():
        assert get_format(t) == "FRACTAL_NZ", how
    for how in ("clone", "detach", "contiguous", "cpu"):
        assert torch.equal(kept[how].cpu() if how != "cpu" else kept[how], w), how
    assert torch.equal(kept["select"], w[0]) and torch.equal(kept["transpose"], w.transpose(1, 2))
    assert kept["to(meta)"].device.type == "meta" and kept["to(meta)"].shape == w.shape
    # the values' memory is the clone's own: writing it leaves the original alone
    kept["clone"].zero_()
    assert torch.equal(nz, w)


def test_value_changing_ops_give_nd_like_the_device():
    """op-plugin's op-api kernels allocate a new result with apply_tensor_without_format (ND):
    op_plugin/ops/opapi/AddKernelNpuOpApi.cpp ``add``; in-place ops write into self, which keeps its
    storage and so its format."""
    w = weight()
    nz = ascend_moe.npu_format_cast(w, 29)
    for how, t in {"w + 1": nz + 1, "w * 2": nz * 2, "to(int32)": nz.to(torch.int32), "neg": -nz,
                   "sum": nz.sum(0)}.items():
        assert type(t) is torch.Tensor and get_format(t) == "ND", how
    assert torch.equal(nz + 1, w + 1)
    same = nz.add_(1)
    assert same is nz and get_format(nz) == "FRACTAL_NZ" and torch.equal(nz, w + 1)
    nz.copy_(w)
    assert get_format(nz) == "FRACTAL_NZ" and torch.equal(nz, w)


def test_parameter_and_param_data_keep_nz():
    w = weight()
    p = torch.nn.Parameter(ascend_moe.npu_format_cast(w, 29), requires_grad=False)
    assert isinstance(p, torch.nn.Parameter) and get_format(p) == "FRACTAL_NZ" and torch.equal(p, w)
    # vllm-ascend's post-processing idiom: the Parameter object stays plain, the storage record finds NZ
    layer = torch.nn.Linear(1, 1)
    layer.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    layer.weight.data = ascend_moe.npu_format_cast(layer.weight.data, 29)
    assert get_format(layer.weight) == "FRACTAL_NZ" and torch.equal(layer.weight, w)
    # both are accepted where A8W8 needs NZ, and compute what the 5-D NZ storage computes
    st = ascend_moe.npu_format_cast(w, 29, storage=True)
    assert bits_equal(swiglu(p), swiglu(st)) and bits_equal(swiglu(layer.weight), swiglu(st))


def test_module_state_dict_deepcopy_and_save_keep_nz():
    m = torch.nn.Module()
    m.w = torch.nn.Parameter(ascend_moe.npu_format_cast(weight(), 29), requires_grad=False)
    assert get_format(m.state_dict()["w"]) == "FRACTAL_NZ"
    copied = copy.deepcopy(m)
    assert isinstance(copied.w, torch.nn.Parameter) and get_format(copied.w) == "FRACTAL_NZ"
    assert torch.equal(copied.w, weight())
    # loading into an existing ND parameter copies values into it: it keeps its own format, as copy_ does
    plain = torch.nn.Module()
    plain.w = torch.nn.Parameter(torch.zeros(E, K, N, dtype=torch.int8), requires_grad=False)
    plain.load_state_dict(m.state_dict())
    assert get_format(plain.w) == "ND" and torch.equal(plain.w, weight())
    buf = io.BytesIO()
    torch.save(m.w, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert get_format(back) == "FRACTAL_NZ" and torch.equal(back, weight())


def test_nz_storage_keeps_its_logical_shape_through_clone():
    w = weight()[:, :, :50]                     # N not a multiple of C0: the padded shape differs
    st = ascend_moe.npu_format_cast(w, 29, storage=True)
    assert nz_storage_record(st.clone()) == (E, K, 50)
    assert torch.equal(ascend_moe.npu_format_cast(st.clone(), 2), w)
    assert nz_storage_record(st[:1]) == "unknown"   # another view: its rank decides


def test_cast_back_to_nd_is_a_plain_tensor():
    nz = ascend_moe.npu_format_cast(weight(), 29)
    nd = ascend_moe.npu_format_cast(nz, 2)
    assert type(nd) is torch.Tensor and get_format(nd) == "ND" and torch.equal(nd, weight())


# -- tracing: the fake kernels read the real format ---------------------------------------------------

def test_fake_tensors_carry_the_format_and_the_fake_kernel_checks_it():
    w = weight()
    nz = ascend_moe.npu_format_cast(w, 29)
    mode = FakeTensorMode()
    x, gl, ws, xs = (mode.from_tensor(t) for t in swiglu_args())
    fake_nz = mode.from_tensor(nz)
    assert get_format(fake_nz) == "FRACTAL_NZ"
    with mode:
        assert get_format(fake_nz.clone()) == "FRACTAL_NZ" and get_format(fake_nz + 1) == "ND"
        out = ascend_moe.npu_grouped_matmul_swiglu_quant(x, fake_nz, gl, ws, xs)
        assert [tuple(o.shape) for o in out] == [(M, N // 2), (M,), ()]
        with pytest.raises(ascend_moe.ConstraintError, match=r"int8 weight must be in FRACTAL_NZ format, got format ND"):
            ascend_moe.npu_grouped_matmul_swiglu_quant(x, mode.from_tensor(w), gl, ws, xs)
        with pytest.raises(ascend_moe.ConstraintError, match=r"got format ND"):
            ascend_moe.npu_grouped_matmul_swiglu_quant(x, fake_nz + 0, gl, ws, xs)  # a new value: ND


def test_make_fx_traces_with_the_format():
    w = weight()
    nz = ascend_moe.npu_format_cast(w, 29)
    rest = swiglu_args()
    fn = lambda w_, *r: swiglu(w_.clone(), *r)  # noqa: E731 - a format-keeping op inside the traced code
    gm = make_fx(fn, tracing_mode="fake")(nz, *rest)
    with ascend_moe.undefined_policy("zero"):
        assert bits_equal(gm(nz, *rest), fn(nz, *rest))
    with pytest.raises(ascend_moe.ConstraintError, match="FRACTAL_NZ"):
        make_fx(fn, tracing_mode="fake")(w, *rest)


def test_compiled_graph_states_the_format_to_the_kernel():
    from torch._dynamo.testing import AotEagerAndRecordGraphs
    w = weight()
    nz = ascend_moe.npu_format_cast(w, 29)
    rest = swiglu_args()
    torch._dynamo.reset()
    graphs = AotEagerAndRecordGraphs()
    fn = lambda w_, *r: swiglu(w_[:, :, :].detach(), *r)  # noqa: E731 - views keep the format
    with ascend_moe.undefined_policy("zero"):
        got = torch.compile(fn, fullgraph=True, backend=graphs)(nz, *rest)
        want = swiglu(nz, *rest)
    assert bits_equal(got, want)
    code = graphs.fw_graphs[0].code
    assert "npu_grouped_matmul_swiglu_quant" in code and "['weight=FRACTAL_NZ']" in code
    torch._dynamo.reset()
    with pytest.raises(Exception, match="FRACTAL_NZ") as err:  # the plain ND weight: refused while tracing
        torch.compile(fn, fullgraph=True, backend="aot_eager")(w, *rest)
    assert "ConstraintError" in repr(err.value) or isinstance(err.value, ascend_moe.ConstraintError)


def test_compiled_module_with_nz_parameter():
    class Experts(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w13 = torch.nn.Parameter(ascend_moe.npu_format_cast(w, 29), requires_grad=False)

        def forward(self, x, gl, ws, xs):
            return ascend_moe.npu_grouped_matmul_swiglu_quant(x, self.w13, gl, ws, xs)

    m = Experts(weight(3))
    rest = swiglu_args(4)
    torch._dynamo.reset()
    with ascend_moe.undefined_policy("zero"):
        assert bits_equal(torch.compile(m, fullgraph=True, backend="aot_eager")(*rest), m(*rest))


def test_opcheck_with_a_tagged_nz_weight():
    nz = ascend_moe.npu_format_cast(weight(5), 29)
    x, gl, ws, xs = swiglu_args(6)
    with ascend_moe.undefined_policy("zero"):
        torch.library.opcheck(torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant.default, (x, nz, gl, ws, xs))
        torch.library.opcheck(torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant_v2.default,
                              (x, [nz], [ws], xs, gl), {"group_list_type": 0})


def test_tensor_formats_argument_of_the_torch_op():
    """torch.ops.ascend_moe ops take the formats of plain tensors stated explicitly (what the subclass
    passes); a bad entry names the argument."""
    w = weight(7)
    x, gl, ws, xs = swiglu_args(8)
    op = torch.ops.ascend_moe.npu_grouped_matmul_swiglu_quant.default
    with ascend_moe.undefined_policy("zero"):
        stated = op(x, w.clone(), gl, ws, xs, None, None, ["weight=FRACTAL_NZ"])
        assert bits_equal(stated, op(x, ascend_moe.npu_format_cast(w, 29), gl, ws, xs))
    with pytest.raises(TypeError, match="tensor_formats.*'bias'"):
        op(x, w.clone(), gl, ws, xs, None, None, ["bias=FRACTAL_NZ"])
    with pytest.raises(TypeError, match="tensor_formats"):
        op(x, w.clone(), gl, ws, xs, None, None, ["weight"])
    with pytest.raises(ValueError, match="unknown format 'NZ'"):
        op(x, w.clone(), gl, ws, xs, None, None, ["weight=NZ"])


class _ParamDataExperts(torch.nn.Module):
    """vllm-ascend's post-processing idiom: the Parameter stays plain, its data is the cast values."""

    def __init__(self, w, cast=True):
        super().__init__()
        self.w13 = torch.nn.Parameter(w.clone(), requires_grad=False)
        if cast:
            self.w13.data = ascend_moe.npu_format_cast(self.w13.data, 29)

    def forward(self, x, gl, ws, xs):
        return ascend_moe.npu_grouped_matmul_swiglu_quant(x, self.w13, gl, ws, xs)


def test_compiled_module_with_param_data_cast():
    """The fake torch.compile makes of the plain Parameter finds the storage record of the tensor it was
    made from, so the A8W8 call traces; the result is the A8W8 result of the logical weight."""
    x, gl, ws, xs = swiglu_args(8)
    m = _ParamDataExperts(weight(7))
    with ascend_moe.undefined_policy("zero"):
        for backend in ("eager", "aot_eager"):
            torch._dynamo.reset()
            got = torch.compile(m, fullgraph=True, backend=backend)(x, gl, ws, xs)
            assert bits_equal(got, swiglu(ascend_moe.npu_format_cast(weight(7), 29), x, gl, ws, xs)), backend
    # the integer part, against int64 math: per token, the row of dequantised swiglu quantised to int8
    acc = torch.cat([x[:2].long() @ weight(7)[0].long(), x[2:].long() @ weight(7)[1].long()]).double()
    c = acc * ws.double().repeat_interleave(torch.tensor([2, 4]), 0) * xs.double()[:, None]
    s = c[:, N // 2:] * c[:, :N // 2] / (1 + torch.exp(-c[:, :N // 2]))
    want = s / (s.abs().amax(1, keepdim=True) / 127)
    assert (got[0].double() - want).abs().max() <= 1.0


def test_compiled_refusal_of_a_plain_weight_says_what_to_write():
    x, gl, ws, xs = swiglu_args(9)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"nn\.Parameter\(npu_format_cast\(w, 29\), requires_grad=False\)"):
        torch.compile(_ParamDataExperts(weight(8), cast=False), fullgraph=True, backend="aot_eager")(x, gl, ws, xs)


def test_assigning_data_to_a_cast_parameter_gives_it_the_new_values_and_their_format():
    """``p.data = new`` on a Parameter of a cast tensor: torch swaps the storage; the values the ops and
    torch read, and the format, are ``new``'s (an ND tensor gives ND, as the NPU's storage description)."""
    p = torch.nn.Parameter(ascend_moe.npu_format_cast(weight(1), 29), requires_grad=False)
    p.data = ascend_moe.npu_format_cast(weight(2), 29)
    assert get_format(p) == "FRACTAL_NZ" and torch.equal(p, weight(2)) and torch.equal(p + 0, weight(2))
    p.data = weight(3)
    assert get_format(p) == "ND" and torch.equal(p, weight(3)) and torch.equal(p[1], weight(3)[1])


def test_cast_weight_gets_its_gradient_and_the_same_values_as_a_plain_weight():
    """A call with a FormattedTensor weight goes to the kernel in one dispatch when nothing needs autograd to see
    the FormattedTensor; one that requires grad still gets its gradient (through the subclass dispatch), equal to
    the plain weight's, and a frozen cast weight gives the plain weight's forward values."""
    import warnings
    g = torch.Generator().manual_seed(5)
    w0 = (torch.randn(2, 64, 32, generator=g) * 0.1).bfloat16()
    x0 = torch.randn(16, 64, generator=g).bfloat16()
    gl = torch.tensor([8, 16])

    def run(x, w):
        return ascend_moe.npu_grouped_matmul([x], [w], group_list=gl, split_item=3, group_type=0, group_list_type=0)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, w = x0.clone().requires_grad_(), ascend_moe.npu_format_cast(w0, 29).requires_grad_()
        run(x, w).float().sum().backward()
        x2, w2 = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        run(x2, w2).float().sum().backward()
        assert type(w.grad) is torch.Tensor and torch.equal(w.grad, w2.grad) and torch.equal(x.grad, x2.grad)
        frozen = ascend_moe.npu_format_cast(w0, 29)
        assert torch.equal(run(x0, frozen), run(x0, w0))
        x3 = x0.clone().requires_grad_()                 # a frozen cast weight, activations that need grad
        run(x3, frozen).float().sum().backward()
        assert torch.equal(x3.grad, x2.grad)
