"""The simulated npu device itself: tensors live on npu:N, aten ops, views, autograd, save/load,
formats as device metadata, torch.npu's API."""
import io

import pytest
import torch

import ascend_moe
from ascend_moe.device import host_view


def test_tensors_live_on_npu_and_aten_ops_match_cpu():
    a_cpu = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b_cpu = torch.ones(4, 2) * 0.5
    a, b = a_cpu.npu(), b_cpu.to("npu:0")
    assert a.device == torch.device("npu", 0) and a.is_npu
    c = a @ b + 1
    assert c.device.type == "npu"
    # hand-computed: row r of a is 4r..4r+3, times 0.5 summed = 0.5 * (16r + 6), plus 1
    expected = [[0.5 * (16 * r + 6) + 1] * 2 for r in range(3)]
    assert c.cpu().tolist() == expected
    assert torch.empty(2, 3, device="npu").shape == (2, 3)
    assert torch.zeros(2, device=torch.device("npu")).cpu().tolist() == [0.0, 0.0]
    assert a.sum().item() == sum(range(12))


def test_views_share_the_npu_storage_and_in_place_ops_write_through():
    a = torch.zeros(4, 6, device="npu")
    v = a[1:3, ::2]
    assert v.device.type == "npu"
    assert v.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    assert v.storage_offset() == 6
    v.fill_(7.0)
    got = a.cpu()
    for r in range(4):
        for c in range(6):
            assert got[r, c].item() == (7.0 if r in (1, 2) and c % 2 == 0 else 0.0)
    parts = a.split(2)
    assert all(p.device.type == "npu" for p in parts)


def test_out_arguments_are_resized_on_the_device():
    x = torch.tensor([1.0, 2.0, 3.0], device="npu")
    out = torch.empty(0, device="npu")
    torch.add(x, x, out=out)
    assert out.device.type == "npu" and out.cpu().tolist() == [2.0, 4.0, 6.0]


def test_host_view_is_zero_copy():
    x = torch.zeros(5, device="npu")
    h = host_view(x)
    assert h.device.type == "cpu" and h.data_ptr() == x.data_ptr()
    h[2] = 9.0
    assert x.cpu().tolist() == [0.0, 0.0, 9.0, 0.0, 0.0]


def test_autograd_and_modules():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    w, bias = lin.weight.detach().clone(), lin.bias.detach().clone()
    lin = lin.npu()
    assert lin.weight.device.type == "npu"
    x = torch.tensor([[1.0, 2.0, 3.0]], device="npu", requires_grad=True)
    lin(x).sum().backward()
    # d(sum(xW^T + b))/dx = column sums of W
    assert torch.allclose(x.grad.cpu(), w.sum(0, keepdim=True))
    assert lin.bias.grad.device.type == "npu" and lin.bias.grad.cpu().tolist() == [1.0, 1.0]
    assert torch.allclose(lin(x).detach().cpu(), torch.tensor([[1.0, 2.0, 3.0]]) @ w.T + bias)


def test_save_and_load_keep_the_device():
    x = torch.arange(6, dtype=torch.int32, device="npu:1").reshape(2, 3)
    buf = io.BytesIO()
    torch.save({"x": x}, buf)
    buf.seek(0)
    y = torch.load(buf)["x"]
    assert y.device == torch.device("npu", 1) and y.cpu().tolist() == [[0, 1, 2], [3, 4, 5]]


def test_invalid_device_index_is_refused():
    with pytest.raises(RuntimeError, match="npu:9"):
        torch.empty(2, device="npu:9")
    with pytest.raises(RuntimeError, match="invalid device|Invalid device"):
        torch.npu.set_device(9)


def test_torch_npu_module_api():
    assert torch.npu.is_available() and torch.npu.device_count() == 8
    assert torch.npu.get_device_name(0) == "Ascend910B2"  # the default product, atlas-a2
    assert torch.npu.get_device_properties(0).name == "Ascend910B2"
    with torch.npu.device(3):
        assert torch.npu.current_device() == 3
        assert torch.empty(1, device="npu").device.index == 3
    assert torch.npu.current_device() == 0
    free, total = torch.npu.mem_get_info()
    assert 0 < free <= total
    before = torch.npu.memory_allocated()
    keep = torch.empty(1024, dtype=torch.uint8, device="npu")
    assert torch.npu.memory_allocated() - before >= 1024
    assert torch.npu.max_memory_allocated() >= torch.npu.memory_allocated()
    del keep
    torch.npu.synchronize()
    torch.npu.empty_cache()
    torch.npu.config.allow_internal_format = True
    with pytest.raises(NotImplementedError, match="npu.graph_pool_handle"):
        torch.npu.graph_pool_handle


def test_streams_and_events():
    s = torch.npu.Stream()
    assert torch.npu.current_stream().stream_id == 0
    with torch.npu.stream(s):
        assert torch.npu.current_stream().stream_id == s.stream_id
    assert torch.npu.current_stream().stream_id == 0
    start, end = torch.npu.Event(enable_timing=True), torch.npu.Event(enable_timing=True)
    start.record()
    y = torch.ones(64, 64, device="npu") @ torch.ones(64, 64, device="npu")
    end.record()
    end.synchronize()
    s.wait_event(end)
    torch.npu.current_stream().wait_stream(s)
    assert end.query() and start.elapsed_time(end) >= 0.0
    assert y.cpu()[0, 0].item() == 64.0


def test_format_is_device_metadata_kept_through_views_clone_and_param_data():
    import torch_npu
    w = torch.zeros(2, 32, 64, dtype=torch.int8, device="npu")
    assert torch_npu.get_npu_format(w) == 2
    nz = torch_npu.npu_format_cast(w, 29)
    assert torch_npu.get_npu_format(nz) == 29 and torch_npu.get_npu_format(w) == 2
    assert torch_npu.get_npu_format(nz[0]) == 29
    assert torch_npu.get_npu_format(nz.clone()) == 29
    p = torch.nn.Parameter(torch.zeros(2, 32, 64, device="npu"), requires_grad=False)
    p.data = torch_npu.npu_format_cast(p.data, 29)
    assert torch_npu.get_npu_format(p) == 29
    torch_npu.npu_format_cast_(w, 29)
    assert torch_npu.get_npu_format(w) == 29


def test_traced_npu_weight_format_is_checked_by_the_kernel():
    """Fake tensors of an npu weight carry no format (the storage metadata stays with the real tensor, as on
    torch_npu), so the trace accepts an int8 weight that would be valid in ND or in NZ; the kernel of the
    compiled graph then checks the real format."""
    import torch_npu
    g = torch.Generator().manual_seed(3)
    m, k, n, e = 6, 32, 64, 2
    w = torch.randint(-8, 8, (e, k, n), generator=g, dtype=torch.int8)
    args = [torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8).npu(), None, torch.tensor([2, 6]).npu(),
            ((torch.rand(e, n, generator=g) + 1) * 1e-2).npu(), ((torch.rand(m, generator=g) + 1) * 1e-1).npu()]
    fn = torch.compile(lambda *a: torch_npu.npu_grouped_matmul_swiglu_quant(*a), fullgraph=True, backend="aot_eager")
    args[1] = torch_npu.npu_format_cast(w.npu(), 29)
    with ascend_moe.undefined_policy("zero"):
        got = fn(*args)
        want = ascend_moe.npu_grouped_matmul_swiglu_quant(*[t.cpu() for t in args[:1]],
                                                          ascend_moe.npu_format_cast(w, 29),
                                                          *[t.cpu() for t in args[2:]])
    assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want))
    torch._dynamo.reset()
    args[1] = w.npu()  # ND on the device
    with pytest.raises(Exception, match="must be in FRACTAL_NZ format, got format ND"):
        fn(*args)


def test_grouped_matmul_add_writes_into_the_npu_tensor():
    """The in-place declared op on npu tensors writes into self's npu memory and returns self."""
    import torch_npu
    g = torch.Generator().manual_seed(5)
    x, w = (torch.randint(-3, 4, (10, n), generator=g).to(torch.bfloat16) for n in (4, 6))
    y = torch.ones(2, 4, 6)
    y_npu = y.npu()
    assert torch_npu.npu_grouped_matmul_add_(y_npu, x.npu(), w.npu(), torch.tensor([4, 10]).npu()) is y_npu
    # hand check: y[e, i, j] = 1 + sum over the rows of group e of x[r, i] * w[r, j]
    for e, rows in enumerate((range(0, 4), range(4, 10))):
        assert y_npu[e, 1, 2].item() == 1 + sum(float(x[r, 1]) * float(w[r, 2]) for r in rows)


def test_autocast_runs():
    a = torch.ones(2, 2, device="npu")
    with torch.autocast("npu", dtype=torch.bfloat16):
        assert (a @ a).device.type == "npu"


def test_ops_return_npu_tensors_computed_by_the_simulator():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float16)
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]], dtype=torch.float16)
    y = ascend_moe.npu_gmm(x.npu(), w.npu(), group_list=[1, 3])
    assert y.device.type == "npu"
    assert y.cpu().float().tolist() == [[1.0, 2.0], [6.0, 8.0], [10.0, 12.0]]
