"""Forward numerics of npu_gmm / npu_gmm_v2 / npu_grouped_matmul (simulator and torch ops).

Reference: an independent per-group loop in float64, rounded ONCE to the output dtype.

Tolerance (why it is not bit equality): the simulator accumulates each group's dot products in
fp32 (BLAS sgemm) like the device's cube, whose accumulation order is not public.  The fp32 sum of
K products differs from the exact sum by at most ``gamma = (K + 4) * 2**-24`` times
``sum_k |x_k w_k|`` (+ |bias|) (the standard recursive-summation bound, with slack for the product
and bias roundings).  Rounding is monotonic, so the simulator's output must lie between
``round(ref - bound)`` and ``round(ref + bound)`` in the output dtype: for bf16/fp16 that is almost
always the single value ``round(ref)``, and never more than one ulp away; for fp32 it is the fp32
accumulation bound itself.  This is exact up to accumulation order, and nothing looser.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ascend_moe as am
from ascend_moe import sim
from ascend_moe.sim import numerics

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
BIAS_DTYPE = {torch.float16: torch.float16, torch.bfloat16: torch.float32, torch.float32: torch.float32}
U32 = 2.0 ** -24


# ----------------------------------------------------------------------------------------------
# independent reference
# ----------------------------------------------------------------------------------------------


def ref_bounds(gl, list_type):
    vals = [int(v) for v in (gl.tolist() if isinstance(gl, torch.Tensor) else gl)]
    ends, acc = [], 0
    for v in vals:
        acc = v if list_type == 0 else acc + v
        ends.append(acc)
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def ref_m_split(x, w, gl, list_type, bias=None):
    """float64 per-group loop; rows past the total stay NaN; returns (ref, bound)."""
    x64, w64 = x.double(), w.double()
    m, n = x.shape[0], w.shape[-1]
    ref = torch.full((m, n), float("nan"), dtype=torch.float64)
    bound = torch.zeros((m, n), dtype=torch.float64)
    k = x.shape[1]
    for e, (s, t) in enumerate(ref_bounds(gl, list_type)):
        if t <= s:
            continue
        acc = x64[s:t] @ w64[e]
        mag = x64[s:t].abs() @ w64[e].abs()
        if bias is not None:
            acc = acc + bias[e].double()
            mag = mag + bias[e].double().abs()
        ref[s:t] = acc
        bound[s:t] = (k + 4) * U32 * mag
    return ref, bound


def ref_k_split(x, w, gl, list_type):
    x64, w64 = x.double(), w.double()
    groups = ref_bounds(gl, list_type)
    ref = torch.zeros((len(groups), x.shape[0], w.shape[1]), dtype=torch.float64)
    bound = torch.zeros_like(ref)
    for e, (s, t) in enumerate(groups):
        if t > s:
            ref[e] = x64[:, s:t] @ w64[s:t]
            bound[e] = (t - s + 4) * U32 * (x64[:, s:t].abs() @ w64[s:t].abs())
    return ref, bound


def assert_fp32_accumulate(out, ref, bound):
    """out (any float dtype) equals a one-time rounding of some value within ref +- bound."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    defined = ~torch.isnan(ref)
    lo = (ref - bound).to(out.dtype).double()
    hi = (ref + bound).to(out.dtype).double()
    o = out.double()
    bad = defined & ~((lo <= o) & (o <= hi))
    assert not bad.any(), (f"{int(bad.sum())} element(s) outside the fp32-accumulate interval; first: out="
                           f"{o[bad][:4].tolist()} ref={ref[bad][:4].tolist()} bound={bound[bad][:4].tolist()}")
    assert torch.isnan(o[~defined]).all(), "rows past the group-list total must be poisoned (NaN)"


def rand_counts(rng, e, m_total, empty_frac=0.3):
    """Random non-negative counts summing to m_total with some empty groups."""
    if e == 0:
        return []
    live = rng.random(e) >= empty_frac
    if not live.any():
        live[rng.integers(e)] = True
    cuts = np.sort(rng.integers(0, m_total + 1, size=int(live.sum()) - 1))
    sizes = np.diff(np.concatenate([[0], cuts, [m_total]]))
    counts = np.zeros(e, np.int64)
    counts[live] = sizes
    return counts.tolist()


def rand_t(rng, shape, dtype):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)


# ----------------------------------------------------------------------------------------------
# npu_gmm / npu_gmm_v2, M split
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_gmm_m_split_random(dtype, seed):
    rng = np.random.default_rng(100 + seed)
    e, m, k, n = int(rng.integers(1, 7)), int(rng.integers(0, 50)), int(rng.integers(1, 70)), int(rng.integers(1, 40))
    x = rand_t(rng, (m, k), dtype)
    transposed = bool(seed % 2)
    w = rand_t(rng, (e, n, k), dtype).transpose(-1, -2) if transposed else rand_t(rng, (e, k, n), dtype)
    bias = rand_t(rng, (e, n), BIAS_DTYPE[dtype]) if seed >= 2 else None
    counts = rand_counts(rng, e, m)
    cumsum = np.cumsum(counts).tolist()
    ref, bound = ref_m_split(x, w, cumsum, 0, bias)
    # List[int] (int-array path), Tensor cumsum, Tensor counts (v2)
    assert_fp32_accumulate(am.npu_gmm(x, w, bias=bias, group_list=cumsum), ref, bound)
    assert_fp32_accumulate(am.npu_gmm(x, w, bias=bias, group_list=torch.tensor(cumsum, dtype=torch.int64)), ref, bound)
    assert_fp32_accumulate(am.npu_gmm_v2(x, w, bias=bias, group_list=torch.tensor(counts, dtype=torch.int64)),
                           ref, bound)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gmm_tensor_path_rows_past_total_are_undefined(dtype):
    rng = np.random.default_rng(7)
    x, w = rand_t(rng, (20, 9), dtype), rand_t(rng, (3, 9, 5), dtype)
    gl = torch.tensor([4, 4, 13])
    ref, bound = ref_m_split(x, w, gl, 0)
    with pytest.warns(am.ConstraintWarning, match="13 < 20"):
        y = am.npu_gmm(x, w, group_list=gl)
    assert_fp32_accumulate(y, ref, bound)  # also asserts rows 13.. are NaN (poison default)
    with numerics.undefined_policy("zero"):
        y0 = am.npu_grouped_matmul([x], [w], group_list=gl, group_type=0, split_item=3)[0]
    assert (y0[13:] == 0).all()
    torch.testing.assert_close(y0[:13], y[:13], rtol=0, atol=0)


def test_gmm_matches_spec_example_shapes_and_fp16_rounding():
    # MindSpeed doc example: E=8, seq 32, hidden 256, list group_list
    rng = np.random.default_rng(0)
    x = (torch.from_numpy(rng.random((32, 256), dtype=np.float32)) - 0.5).half()
    w = (torch.from_numpy(rng.random((8, 256, 32), dtype=np.float32)) - 0.5).half()
    gl = [1, 3, 6, 10, 15, 21, 28, 32]
    y = am.npu_gmm(x, w, group_list=gl)
    assert y.dtype == torch.float16 and y.shape == (32, 32)
    ref, bound = ref_m_split(x, w, gl, 0)
    assert_fp32_accumulate(y, ref, bound)


# ----------------------------------------------------------------------------------------------
# K split
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(2))
def test_gmm_k_split_random_with_empty_groups(dtype, seed):
    rng = np.random.default_rng(200 + seed)
    e, m, k, n = int(rng.integers(2, 6)), int(rng.integers(1, 30)), int(rng.integers(1, 60)), int(rng.integers(1, 30))
    x = rand_t(rng, (k, m), dtype).t()  # K split: x must be a transposed view
    w = rand_t(rng, (k, n), dtype)
    counts = rand_counts(rng, e, k, empty_frac=0.4)
    cumsum = np.cumsum(counts).tolist()
    ref, bound = ref_k_split(x, w, cumsum, 0)
    for y in (am.npu_gmm(x, w, group_list=cumsum, group_type=2),
              am.npu_gmm_v2(x, w, group_list=torch.tensor(counts), group_type=2),
              am.npu_grouped_matmul([x], [w], group_list=torch.tensor(counts), group_type=2, group_list_type=1,
                                    split_item=3)[0]):
        assert y.shape == (e, m, n)
        assert_fp32_accumulate(y, ref, bound)
        for g, c in enumerate(counts):
            if c == 0:
                assert (y[g] == 0).all(), "empty K groups are zero (EmptyTensorCompute)"


# ----------------------------------------------------------------------------------------------
# npu_grouped_matmul: split_item 0-3, group_type -1/0, list forms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("list_type", [0, 1])
def test_grouped_matmul_split_items(dtype, list_type):
    rng = np.random.default_rng(300 + list_type)
    e, m, k, n = 4, 23, 17, 11
    x = rand_t(rng, (m, k), dtype)
    w = rand_t(rng, (e, k, n), dtype)
    bias = rand_t(rng, (e, n), BIAS_DTYPE[dtype])
    counts = [5, 0, 11, 7]
    gl_vals = counts if list_type == 1 else np.cumsum(counts).tolist()
    ref, bound = ref_m_split(x, w, gl_vals, list_type, bias)
    gl_t = torch.tensor(gl_vals)
    # split_item 3: single x, single y
    y3 = am.npu_grouped_matmul([x], [w], bias=[bias], group_list=gl_t, group_type=0, group_list_type=list_type,
                               split_item=3)
    assert len(y3) == 1
    assert_fp32_accumulate(y3[0], ref, bound)
    # split_item 1: single x split by the group list, one y per group (Tensor and List overloads; the
    # List overload reads cumulative split points only, so counts in a list are rejected)
    if list_type == 1:
        with pytest.raises(am.ConstraintError, match="gmm.list_is_cumsum"):
            am.npu_grouped_matmul([x], [w], bias=[bias], group_list=gl_vals, group_type=0, group_list_type=1,
                                  split_item=1)
    for gl in ((gl_t, gl_vals) if list_type == 0 else (gl_t,)):
        ys = am.npu_grouped_matmul([x], [w], bias=[bias], group_list=gl, group_type=0, group_list_type=list_type,
                                   split_item=1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        assert [tuple(t.shape) for t in ys] == [(c, n) for c in counts]
        for g, (s, c) in enumerate(zip(starts, counts)):
            assert_fp32_accumulate(ys[g], ref[s:s + c], bound[s:s + c])
    # split_item 0 / 2: a list of x (one per group) and a list of weights
    xs = list(torch.split(x, counts))
    ws = [w[g] for g in range(e)]
    bs = [bias[g] for g in range(e)]
    y0 = am.npu_grouped_matmul(xs, ws, bias=bs, group_type=0, split_item=0)
    assert [tuple(t.shape) for t in y0] == [(c, n) for c in counts]
    assert_fp32_accumulate(torch.cat(y0), ref, bound)
    y2 = am.npu_grouped_matmul(xs, ws, bias=bs, group_type=0, split_item=2)
    assert len(y2) == 1
    assert_fp32_accumulate(y2[0], ref, bound)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grouped_matmul_no_split_lists(dtype):
    rng = np.random.default_rng(400)
    xs = [rand_t(rng, (2, 3, 13), dtype), rand_t(rng, (5, 7), dtype), rand_t(rng, (0, 4), dtype)]
    ws = [rand_t(rng, (13, 6), dtype), rand_t(rng, (7, 9), dtype), rand_t(rng, (4, 3), dtype)]
    ys = am.npu_grouped_matmul(xs, ws, group_type=-1, split_item=0)
    for xi, wi, yi in zip(xs, ws, ys):
        assert yi.shape == (*xi.shape[:-1], wi.shape[-1])
        x2 = xi.reshape(-1, xi.shape[-1])
        ref = x2.double() @ wi.double()
        bound = (xi.shape[-1] + 4) * U32 * (x2.double().abs() @ wi.double().abs())
        assert_fp32_accumulate(yi.reshape(-1, wi.shape[-1]), ref, bound)


def test_grouped_matmul_output_dtype_code_and_dtype_accepted():
    x, w = torch.randn(6, 8, dtype=torch.bfloat16), torch.randn(2, 8, 4, dtype=torch.bfloat16)
    a = am.npu_grouped_matmul([x], [w], group_list=[3, 6], split_item=3, output_dtype=15)[0]
    b = am.npu_grouped_matmul([x], [w], group_list=[3, 6], split_item=3, output_dtype=torch.bfloat16)[0]
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# NumPy twins
# ----------------------------------------------------------------------------------------------


def test_sim_twins_list_vs_array_group_list():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 10)).astype(np.float32)
    w = rng.standard_normal((3, 10, 4)).astype(np.float32)
    ref, bound = ref_m_split(torch.from_numpy(x), torch.from_numpy(w), [3, 3, 12], 0)
    a = sim.npu_gmm(x, w, group_list=[3, 3, 12])
    b = sim.npu_gmm(x, w, group_list=np.array([3, 3, 12]))
    c = sim.npu_gmm_v2(x, w, group_list=np.array([3, 0, 9]))
    # .List: group_type None -> 0; it calls aclnnGroupedMatmul (V1), which rejects fp32 on A2/A3 only
    with am.target(product="ascend-950"):
        d = sim.npu_grouped_matmul([x], [w], group_list=[3, 3, 12], split_item=3)[0]
    for y in (a, b, c, d):
        assert isinstance(y, np.ndarray) and y.dtype == np.float32
        assert_fp32_accumulate(torch.from_numpy(y), ref, bound)
    # List path: the total must equal the rows; Tensor path: <= rows, rest undefined
    with pytest.raises(am.ConstraintError, match="group_list total is 9 but x.shape"):
        sim.npu_gmm(x, w, group_list=[3, 3, 9])
    y = sim.npu_grouped_matmul([x], [w], group_list=np.array([3, 3, 9]), group_type=0, split_item=3,
                               undefined="zero")[0]
    assert (y[9:] == 0).all()
    y = sim.npu_grouped_matmul([x], [w], group_list=np.array([3, 3, 9]), group_type=0, split_item=3)[0]
    assert np.isnan(y[9:]).all()


def test_sim_weight_view_is_not_copied_per_group(monkeypatch):
    """fp32 groups reach np.matmul as views of x and weight (no per-group copies)."""
    from ascend_moe.sim import gmm as simgmm
    x = np.random.default_rng(1).standard_normal((9, 6)).astype(np.float32)
    w = np.random.default_rng(2).standard_normal((3, 5, 6)).astype(np.float32).transpose(0, 2, 1)
    seen = []
    real = np.matmul

    def spy(a, b, *args, **kw):
        seen.append((np.shares_memory(a, x), np.shares_memory(b, w)))
        return real(a, b, *args, **kw)

    monkeypatch.setattr(simgmm.np, "matmul", spy)
    simgmm.gmm_m_split(x, [w], [], [2, 5, 9], 0)
    assert seen and all(a and b for a, b in seen)


# ----------------------------------------------------------------------------------------------
# fake kernels / opcheck
# ----------------------------------------------------------------------------------------------


def test_fake_kernels_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x, w = torch.empty(10, 16, dtype=torch.bfloat16), torch.empty(3, 16, 8, dtype=torch.bfloat16)
        gl = torch.empty(3, dtype=torch.int64)
        assert am.npu_gmm(x, w, group_list=gl).shape == (10, 8)
        assert am.npu_gmm_v2(x, w, group_list=gl).shape == (10, 8)
        xt = torch.empty(16, 10, dtype=torch.bfloat16).t()
        assert am.npu_gmm(xt, torch.empty(16, 8, dtype=torch.bfloat16), group_list=[4, 9, 16],
                          group_type=2).shape == (3, 10, 8)
        ys = am.npu_grouped_matmul([x], [w], group_list=[2, 5, 10], split_item=1)
        assert [tuple(t.shape) for t in ys] == [(2, 8), (3, 8), (5, 8)]
        ys = am.npu_grouped_matmul([x], [w], group_list=gl, group_type=0, split_item=3)
        assert [tuple(t.shape) for t in ys] == [(10, 8)] and ys[0].dtype == torch.bfloat16


def test_opcheck():
    x, w = torch.randn(10, 16), torch.randn(3, 16, 8)
    torch.library.opcheck(torch.ops.ascend_moe.npu_gmm.default, (x, w), dict(group_list=torch.tensor([2, 2, 10])),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    # the int-array overload calls aclnnGroupedMatmul (V1): float32 is rejected there on A2/A3, so bf16
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    torch.library.opcheck(torch.ops.ascend_moe.npu_grouped_matmul.default, ([xb], [wb]),
                          dict(group_list_ints=[2, 2, 10], split_item=3),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_grouped_matmul_k_split_list_outputs():
    """K split with split_item 0/1 (V5 table): one [M, N] output per group, empty groups zero."""
    rng = np.random.default_rng(9)
    x = rand_t(rng, (20, 7), torch.bfloat16).t()  # [7, 20] view of a [20, 7] tensor: K=20 split
    w = rand_t(rng, (20, 5), torch.bfloat16)
    counts = [6, 0, 14]
    ref, bound = ref_k_split(x, w, counts, 1)
    ys = am.npu_grouped_matmul([x], [w], group_list=torch.tensor(counts), group_type=2, group_list_type=1,
                               split_item=1)
    assert len(ys) == 3 and all(tuple(y.shape) == (7, 5) for y in ys)
    assert ys[0].data_ptr() != ys[2].data_ptr()
    for e in range(3):
        assert_fp32_accumulate(ys[e], ref[e], bound[e])
    assert (ys[1] == 0).all()
