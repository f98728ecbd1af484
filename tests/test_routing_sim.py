"""Routing / combine simulators (ascend_moe.sim.routing) against independent references written here.

The references are plain Python loops over tokens and slots with integer maths (and, where the device
computes in float, one float32/float16 scalar operation at a time in the kernel's order), straight from
the formulas of spec moe-routing-and-ep.md sections 1-6 and the kernels it cites.  They never call the
simulator or its helpers.
"""
import math

import ml_dtypes
import numpy as np
import pytest

from ascend_moe.sim import numerics
from ascend_moe.sim import routing as R

BF16 = np.dtype(ml_dtypes.bfloat16)
I32_POISON = -(2 ** 31)
I64_POISON = -(2 ** 63)


@pytest.fixture(autouse=True)
def _poison():
    with numerics.undefined_policy("poison"):
        yield


def rng(seed):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------ references

def ref_sorted_slots(ids2d, s=0):
    """Sorted slot list: ascending expert id with ids < s last; ties by slot index (plain sort of tuples)."""
    n, k = len(ids2d), len(ids2d[0])
    slots = []
    for f in range(n * k):
        eid = int(ids2d[f // k][f % k])
        group = 1 if eid < s else 0
        slots.append((group, eid if group == 0 else 0, f))
    slots.sort()
    return [f for _, _, f in slots]


def ref_init_routing(x, ids, *, active_num=-1, cap=-1, E=-1, drop_pad=0, tok_type=0, flag=False,
                     rng_=None, row_idx_type=0, scale=None):
    n, k = ids.shape
    s, e = rng_ if rng_ else (0, E)
    order = ref_sorted_slots(ids.tolist(), s)
    in_range = [f for f in order if s <= ids.flat[f] < e]
    avail = len(in_range)
    counts = [0] * (e - s)
    for f in range(n * k):
        if s <= ids.flat[f] < e:
            counts[int(ids.flat[f]) - s] += 1
    out = {}
    if drop_pad == 0:
        R_ = n * k if active_num <= 0 else min(active_num, n * k)
        rows = {}
        for i in range(min(avail, R_)):
            rows[i] = x[order[i] // k]
        out["rows"] = (R_, rows)
        if row_idx_type == 0:
            ri = [-1] * (n * k)
            for i in range(avail):
                ri[order[i]] = i
        else:
            ri = [order[i] if i < avail else None for i in range(n * k)]
        out["row_idx"] = ri
        if scale is not None:
            out["scale"] = {i: float(scale[order[i] // k]) for i in range(min(avail, R_))}
    else:
        ri = [-1] * (n * k)
        seen = [0] * E
        rows = {}
        for f in order:
            eid = int(ids.flat[f])
            if not (0 <= eid < E):
                continue
            j = seen[eid]
            seen[eid] += 1
            if j < cap:
                ri[f] = eid * cap + j
                rows[eid * cap + j] = x[f // k]
        out["rows"] = (E * cap, rows)
        out["row_idx"] = ri
    if tok_type == 1:
        out["tokens"] = counts
    elif tok_type == 0:
        acc, cs = 0, []
        for c in counts:
            acc += c
            cs.append(acc)
        out["tokens"] = cs
    else:
        kv = [[s + i, c] for i, c in enumerate(counts) if c]
        written = min(e - s + 1, E)
        kv += [[0, 0]] * (written - len(kv))
        out["tokens"] = kv
    return out


def check_init(res, ref, x_dtype_float=True, tok_type=0, flag=True, drop_pad=0, h=None):
    ex, ri, tokens, escale = res
    nrows, rows = ref["rows"]
    ex2 = ex.reshape(nrows, -1)
    for i in range(nrows):
        if i in rows:
            np.testing.assert_array_equal(ex2[i], rows[i])
        elif drop_pad == 1:
            assert (ex2[i] == 0).all(), f"padded row {i} must be zeros"
        else:
            assert np.isnan(ex2[i].astype(np.float32)).all(), f"row {i} must be undefined (poison)"
    for f, v in enumerate(ref["row_idx"]):
        if v is None:
            assert ri[f] == I32_POISON
        else:
            assert ri[f] == v, (f, ri[f], v)
    if flag:
        if tok_type == 2:
            kv = ref["tokens"]
            np.testing.assert_array_equal(tokens[: len(kv)], np.array(kv, np.int64).reshape(-1, 2))
            assert (tokens[len(kv):] == I64_POISON).all()
        else:
            assert tokens.dtype == np.int64
            assert tokens.tolist() == ref["tokens"]
    else:
        assert (tokens == I64_POISON).all()


# ------------------------------------------------------------------------ init_routing: dropless

@pytest.mark.parametrize("tok_type", [0, 1, 2])
@pytest.mark.parametrize("row_idx_type", [0, 1])
def test_init_routing_dropless_modes(tok_type, row_idx_type):
    g = rng(1)
    n, k, E, h = 13, 3, 8, 5
    ids = g.integers(0, E, (n, k)).astype(np.int32)
    ids[:4] = 2                      # many ties on one expert
    ids[5, :] = [1, 1, 1]            # duplicates inside a token
    x = g.standard_normal((n, h)).astype(BF16)
    res = R.moe_init_routing_v2(x, ids, expert_num=E, expert_tokens_num_type=tok_type,
                                expert_tokens_num_flag=True, row_idx_type=row_idx_type)
    ref = ref_init_routing(x, ids, E=E, tok_type=tok_type, flag=True, row_idx_type=row_idx_type)
    check_init(res, ref, tok_type=tok_type)
    assert res[0].shape == (n * k, h) and res[1].dtype == np.int32
    assert res[2].shape == ((E, 2) if tok_type == 2 else (E,))


def test_init_routing_empty_experts_and_kv_zero_row():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = np.array([[5], [1], [5], [1]], np.int32)
    ex, ri, tok, _ = R.moe_init_routing_v2(x, ids, expert_num=8, expert_tokens_num_type=1, expert_tokens_num_flag=True)
    assert tok.tolist() == [0, 2, 0, 0, 0, 4 - 2, 0, 0]
    # sorted: expert 1 (slots 1, 3), expert 5 (slots 0, 2)
    assert ri.tolist() == [2, 0, 3, 1]
    np.testing.assert_array_equal(ex, x[[1, 3, 0, 2]])
    _, _, kv, _ = R.moe_init_routing_v2(x, ids, expert_num=8, expert_tokens_num_type=2, expert_tokens_num_flag=True)
    # two packed rows, then zeros up to min(E_range + 1, expert_num) = 8 rows, nothing undefined
    assert kv.tolist() == [[1, 2], [5, 2]] + [[0, 0]] * 6
    _, _, kv, _ = R.moe_init_routing_v2(x, ids, expert_num=8, expert_tokens_num_type=2, expert_tokens_num_flag=True,
                                        active_expert_range=[1, 4])
    # range [1, 4): only expert 1; 4 written rows (E_range + 1), the other 4 undefined
    assert kv[:4].tolist() == [[1, 2], [0, 0], [0, 0], [0, 0]]
    assert (kv[4:] == I64_POISON).all()


def test_init_routing_flag_false_leaves_tokens_unwritten():
    x = np.ones((3, 2), np.float16)
    ids = np.array([[0, 1], [1, 2], [2, 0]], np.int32)
    _, _, tok, _ = R.moe_init_routing_v2(x, ids, expert_num=3, expert_tokens_num_type=1, expert_tokens_num_flag=False)
    assert tok.shape == (3,) and (tok == I64_POISON).all()


@pytest.mark.parametrize("active_num", [-1, 0, 4, 7, 100])
def test_init_routing_active_num(active_num):
    g = rng(2)
    n, k, E = 5, 2, 4
    ids = g.integers(0, E, (n, k)).astype(np.int32)
    x = g.standard_normal((n, 6)).astype(np.float16)
    res = R.moe_init_routing_v2(x, ids, expert_num=E, active_num=active_num, expert_tokens_num_type=1,
                                expert_tokens_num_flag=True)
    ref = ref_init_routing(x, ids, E=E, active_num=active_num, tok_type=1, flag=True)
    check_init(res, ref, tok_type=1)
    # counts ignore active_num: they cover every slot
    assert int(res[2].sum()) == n * k


@pytest.mark.parametrize("row_idx_type", [0, 1])
def test_init_routing_active_expert_range(row_idx_type):
    g = rng(3)
    n, k, E = 11, 4, 16
    ids = g.integers(0, E, (n, k)).astype(np.int32)
    x = g.standard_normal((n, 4)).astype(np.float32)
    rng_ = (4, 9)
    for active_num in (-1, 10):
        res = R.moe_init_routing_v2(x, ids, expert_num=E, active_expert_range=list(rng_), active_num=active_num,
                                    expert_tokens_num_type=0, expert_tokens_num_flag=True, row_idx_type=row_idx_type)
        ref = ref_init_routing(x, ids, E=E, rng_=rng_, active_num=active_num, tok_type=0, flag=True,
                               row_idx_type=row_idx_type)
        check_init(res, ref, tok_type=0)
        assert res[2].shape == (5,)


def test_init_routing_out_of_range_ids_sort_order():
    """ids >= e sort after the in-range ids (ascending), ids < s go last in slot order: visible through
    row_idx_type=1 only up to avail, so check the gather index: out-of-range slots are -1."""
    ids = np.array([[9, 0, 3], [3, 12, 1]], np.int32)
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    ex, ri, tok, _ = R.moe_init_routing_v2(x, ids, expert_num=16, active_expert_range=[1, 10],
                                           expert_tokens_num_type=1, expert_tokens_num_flag=True)
    # in range: 9 (f0), 3 (f2), 3 (f3), 1 (f5) -> order 1(f5), 3(f2), 3(f3), 9(f0)
    assert ri.tolist() == [3, -1, 1, 2, -1, 0]
    np.testing.assert_array_equal(ex[:4], x[[1, 0, 1, 0]])
    assert np.isnan(ex[4:]).all()
    assert tok.tolist() == [1, 0, 2, 0, 0, 0, 0, 0, 1]


def test_init_routing_unquantised_scale_carried():
    g = rng(4)
    n, k, E = 6, 2, 3
    ids = g.integers(0, E, (n, k)).astype(np.int32)
    x = g.standard_normal((n, 3)).astype(np.float32)
    sc = g.standard_normal(n).astype(np.float32)
    ex, ri, _, es = R.moe_init_routing_v2(x, ids, scale=sc, expert_num=E, active_num=9)
    ref = ref_init_routing(x, ids, E=E, active_num=9, scale=sc)
    for i in range(9):
        assert es[i] == np.float32(ref["scale"][i])
    assert es.shape == (9,)
    _, _, _, es2 = R.moe_init_routing_v2(x, ids, expert_num=E)
    assert np.isnan(es2).all()            # no scale, no quant: never written


# ------------------------------------------------------------------------ init_routing: drop/pad

@pytest.mark.parametrize("cap", [1, 2, 5])
def test_init_routing_drop_pad(cap):
    g = rng(5)
    n, k, E, h = 7, 2, 5, 3
    ids = g.integers(0, E - 1, (n, k)).astype(np.int32)     # expert E-1 stays empty
    ids[0] = [0, 0]
    ids[1] = [0, 2]
    x = g.standard_normal((n, h)).astype(BF16)
    res = R.moe_init_routing_v2(x, ids, expert_num=E, expert_capacity=cap, drop_pad_mode=1,
                                expert_tokens_num_type=1, expert_tokens_num_flag=True)
    ref = ref_init_routing(x, ids, E=E, cap=cap, drop_pad=1, tok_type=1, flag=True)
    assert res[0].shape == (E, cap, h)
    check_init(res, ref, tok_type=1, drop_pad=1)
    assert res[2].tolist() == [int((ids == i).sum()) for i in range(E)]     # pre-capacity counts


# ------------------------------------------------------------------------ init_routing: quantisation

def f32(v):
    return np.float32(v)


def round_half_even(v):
    return int(round(float(v)))       # Python's round of a float is half-to-even


def round_half_away(v):
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def trunc_fp16(v):
    """fp32 -> fp16 toward zero with integer maths on the exponent / 10-bit mantissa (normal range)."""
    v = float(v)
    if v == 0:
        return 0.0
    a = abs(v)
    e = math.floor(math.log2(a))
    if 2.0 ** (e + 1) <= a:
        e += 1
    if 2.0 ** e > a:
        e -= 1
    mant = math.floor((a / 2.0 ** e - 1.0) * 1024)
    return math.copysign(2.0 ** e * (1 + mant / 1024), v)


def sat8(v):
    return max(-128, min(127, v))


def test_static_quant_formula():
    x = np.array([[0.5, 1.5, -2.5, 300.0, -300.0, 0.26]], np.float32)
    ids = np.zeros((1, 1), np.int32)
    scale, offset = np.array([2.0], np.float32), np.array([0.25], np.float32)
    ex, _, _, _ = R.moe_init_routing_v2(x, ids, scale=scale, offset=offset, expert_num=1, quant_mode=0)
    ref = []
    for v in x[0]:
        y = f32(f32(v) * f32(2.0)) + f32(0.25)
        ref.append(sat8(round_half_even(f32(y))))
    assert ex.dtype == np.int8
    assert ex[0].tolist() == ref
    # 0.5*2+0.25 = 1.25 -> 1; 1.5*2+.25=3.25 -> 3; -2.5*2+.25=-4.75 -> -5; saturation
    assert ref[:3] == [1, 3, -5] and ref[3] == 127 and ref[4] == -128


def ref_dynamic(row, smooth, path):
    y = [f32(v) * f32(sm) if smooth is not None else f32(v) for v, sm in
         zip(row, smooth if smooth is not None else [None] * len(row))]
    m = f32(0)
    for v in y:
        m = max(m, abs(f32(v)))
    sc = f32(f32(m) / f32(127.0))
    out = []
    for v in y:
        q = f32(f32(v) / sc)
        if path == "full_row":
            out.append(sat8(round_half_even(q)))
        else:
            out.append(sat8(round_half_away(trunc_fp16(q))))
    return out, sc


@pytest.mark.parametrize("path", ["full_row", "h_tiled"])
def test_dynamic_quant_both_roundings(path):
    # max 127 -> scale 1.0 exactly, so q == y and the ties are visible
    x = np.array([[127.0, 100.5, -2.5, 3.5, 0.3, -127.0],
                  [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], np.float32)
    ids = np.array([[0], [1]], np.int32)
    ex, ri, _, es = R.moe_init_routing_v2(x, ids, expert_num=2, quant_mode=1, dynamic_quant_path=path)
    for tok in range(2):
        row_ref, sc_ref = ref_dynamic(x[tok], None, path)
        assert ex[ri[tok]].tolist() == row_ref
        assert es[ri[tok]] == sc_ref
    first = ex[ri[0]].tolist()
    if path == "full_row":
        assert first[1:4] == [100, -2, 4]
    else:
        assert first[1:4] == [101, -3, 4]


def test_dynamic_quant_smooth_per_expert_and_broadcast():
    g = rng(6)
    n, k, E, h = 5, 2, 6, 7
    ids = g.integers(0, E, (n, k)).astype(np.int32)
    x = g.standard_normal((n, h)).astype(BF16)
    rs, re_ = 2, 5
    smooth = (g.random((re_ - rs, h)) + 0.5).astype(np.float32)
    ex, ri, _, es = R.moe_init_routing_v2(x, ids, scale=smooth, expert_num=E, quant_mode=1,
                                          active_expert_range=[rs, re_])
    for f in range(n * k):
        eid = int(ids.flat[f])
        if not (rs <= eid < re_):
            assert ri[f] == -1
            continue
        row_ref, sc_ref = ref_dynamic(x[f // k].astype(np.float32), smooth[eid - rs], "full_row")
        assert ex[ri[f]].tolist() == row_ref
        assert es[ri[f]] == sc_ref
    one = smooth[:1]
    ex, ri, _, es = R.moe_init_routing_v2(x, ids, scale=one, expert_num=E, quant_mode=1)
    for f in range(n * k):
        row_ref, sc_ref = ref_dynamic(x[f // k].astype(np.float32), one[0], "full_row")
        assert ex[ri[f]].tolist() == row_ref and es[ri[f]] == sc_ref


def test_dynamic_quant_zero_row_is_undefined():
    x = np.zeros((2, 4), np.float16)
    x[1] = [1, 2, 3, 4]
    ids = np.array([[0], [1]], np.int32)
    ex, ri, _, es = R.moe_init_routing_v2(x, ids, expert_num=2, quant_mode=1)
    assert (ex[ri[0]] == -128).all() and es[ri[0]] == 0
    assert (ex[ri[1]] != -128).all()


def test_init_routing_v2_entry_outputs():
    ids = np.array([[0, 2], [2, 1]], np.int32)
    x = np.ones((2, 2), np.float32)
    _, _, tok, before = R.moe_init_routing_v2(x, ids, expert_num=4, expert_tokens_num_type=1,
                                              expert_tokens_num_flag=True, entry="V2")
    assert tok.dtype == np.int64 and tok.tolist() == [1, 1, 2, 0]
    assert before.shape == (4,) and (before == I32_POISON).all()
    _, _, tok, _ = R.moe_init_routing_v2(x, ids, expert_num=4, entry="V2", v2_tokens_mode="cumsum")
    assert tok.dtype == np.int32 and tok.tolist() == [1, 2, 4, 4]


# ------------------------------------------------------------------------ permute / unpermute

def ref_permute(tokens, indices, num_out):
    idx2 = indices if indices.ndim == 2 else indices[:, None]
    n, k = idx2.shape
    order = ref_sorted_slots(idx2.tolist())
    sorted_indices = [0] * (n * k)
    for i, f in enumerate(order):
        sorted_indices[f] = i
    nn = num_out or 0
    p = min(nn, n * k) if nn > 0 else n * k + nn
    return [tokens[order[i] // k] for i in range(p)], sorted_indices


@pytest.mark.parametrize("num_out", [None, 0, 5, 100, -3])
@pytest.mark.parametrize("one_d", [False, True])
def test_token_permute(num_out, one_d):
    g = rng(7)
    n, k = 6, 1 if one_d else 3
    idx = g.integers(0, 4, (n, k)).astype(np.int32)
    idx[0] = 2
    if one_d:
        idx = idx[:, 0]
    tok = g.standard_normal((n, 4)).astype(BF16)
    perm, si = R.moe_token_permute(tok, idx, num_out)
    ref_rows, ref_si = ref_permute(tok, idx, num_out)
    assert si.dtype == np.int32 and si.tolist() == ref_si
    assert perm.shape == (len(ref_rows), 4)
    for i, r in enumerate(ref_rows):
        np.testing.assert_array_equal(perm[i], r)


def ref_unpermute(perm, si, probs, out_dtype):
    k = probs.shape[1] if probs is not None else 1
    t = len(si) // k
    P = perm.shape[0]
    out = []
    for tt in range(t):
        acc = [None] * perm.shape[1]
        for j in range(k):
            idx = int(si[tt * k + j])
            p = f32(probs[tt, j]) if probs is not None else None
            if idx < P and (p is None or p != 0):
                for hh in range(perm.shape[1]):
                    v = f32(perm[idx, hh])
                    if p is not None:
                        v = f32(v * p)
                    acc[hh] = v if acc[hh] is None else f32(acc[hh] + v)
        out.append([0.0 if a is None else a for a in acc])
    return np.array(out, np.float32).astype(out_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16])
def test_token_unpermute_with_probs(dtype):
    g = rng(8)
    n, k, E, h = 9, 3, 5, 6
    idx = g.integers(0, E, (n, k)).astype(np.int32)
    tok = g.standard_normal((n, h)).astype(dtype)
    perm, si = R.moe_token_permute(tok, idx)
    perm = (perm.astype(np.float32) * 1.7).astype(dtype)      # "expert output"
    probs = g.random((n, k)).astype(BF16 if dtype == BF16 else np.float32)
    probs[2, 1] = 0
    out = R.moe_token_unpermute(perm, si, probs)
    ref = ref_unpermute(perm, si, probs, dtype)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.astype(np.float32), ref.astype(np.float32))


def test_token_unpermute_skips_zero_prob_slots_and_minus_one():
    perm = np.array([[1.0, 2.0], [np.nan, np.inf], [3.0, 4.0]], np.float32)
    si = np.array([0, 1, -1, 2], np.int32)
    probs = np.array([[0.5, 0.0], [0.0, 2.0]], np.float32)
    out = R.moe_token_unpermute(perm, si, probs)
    assert out.tolist() == [[0.5, 1.0], [6.0, 8.0]]
    # a -1 index with a nonzero prob reads out of bounds on the device: undefined row
    out = R.moe_token_unpermute(perm, si, np.array([[0.5, 0.0], [1.0, 2.0]], np.float32))
    assert out[0].tolist() == [0.5, 1.0] and np.isnan(out[1]).all()
    # indices past the permuted rows (dropped by num_out_tokens) contribute nothing
    out = R.moe_token_unpermute(perm[:2], np.array([0, 2, 1, 0], np.int32), np.array([[1.0, 1.0], [0.0, 1.0]], np.float32))
    assert out.tolist() == [[1.0, 2.0], [1.0, 2.0]]


def test_token_unpermute_without_probs_and_init_routing_index():
    g = rng(9)
    n, k, E = 4, 2, 3
    ids = g.integers(0, E, (n, k)).astype(np.int32)
    x = g.standard_normal((n, 3)).astype(BF16)
    ex, ri, _, _ = R.moe_init_routing_v2(x, ids, expert_num=E)
    out = R.moe_token_unpermute(ex, ri)              # K = 1: out[t] = ex[ri[t]]
    assert out.shape == (n * k, 3)
    for f in range(n * k):
        np.testing.assert_array_equal(out[f], x[f // k])


def test_token_permute_grad_and_unpermute_grad():
    g = rng(10)
    n, k, h = 5, 2, 3
    idx = g.integers(0, 3, (n, k)).astype(np.int32)
    perm_g = g.standard_normal((n * k - 2, h)).astype(np.float32)
    _, si = R.moe_token_permute(np.zeros((n, h), np.float32), idx, -2)
    grad = R.moe_token_permute_grad(perm_g, si, n, k)
    for t in range(n):
        acc = [f32(0)] * h
        for j in range(k):
            p = si[t * k + j]
            if p < perm_g.shape[0]:
                acc = [f32(a + f32(perm_g[p, hh])) for hh, a in enumerate(acc)]
        assert grad[t].tolist() == [float(a) for a in acc]
    probs = g.random((n, k)).astype(np.float32)
    permuted = g.standard_normal((n * k, h)).astype(np.float32)
    _, si = R.moe_token_permute(np.zeros((n, h), np.float32), idx)
    gu = g.standard_normal((n, h)).astype(np.float32)
    gp, gprob = R.moe_token_unpermute_grad(permuted, gu, si, probs)
    for t in range(n):
        for j in range(k):
            p = si[t * k + j]
            assert gp[p].tolist() == [float(f32(gu[t, hh] * probs[t, j])) for hh in range(h)]
            ref = sum(float(gu[t, hh]) * float(permuted[p, hh]) for hh in range(h))
            assert abs(gprob[t, j] - ref) <= 1e-5 * (1 + abs(ref))


# ------------------------------------------------------------------------ finalize_routing

def ref_finalize(ex, skip1, skip2, bias, scales, idx, eid, mode, k, dtype):
    half = np.dtype(dtype) == np.float16
    T = np.float16 if half else np.float32
    ex2 = ex.reshape(-1, ex.shape[-1])
    rows = scales.shape[0] if scales is not None else len(idx) // k
    K = scales.shape[1] if scales is not None else k
    out = np.zeros((rows, ex2.shape[1]), np.float32)
    for i in range(rows):
        for hh in range(ex2.shape[1]):
            acc = T(0)
            if skip1 is not None:
                acc = T(np.float32(skip1[i, hh]))
                if skip2 is not None:
                    acc = T(acc + T(np.float32(skip2[i, hh])))
            for j in range(K):
                r = int(idx[i + j * rows] if mode in (0, 1) else idx[i * K + j])
                if mode in (1, 3) and r == -1:
                    continue
                t = T(np.float32(ex2[r, hh]))
                if bias is not None:
                    t = T(t + T(np.float32(bias[eid[i, j], hh])))
                if scales is not None:
                    t = T(t * T(np.float32(scales[i, j])))
                acc = T(acc + t)
            out[i, hh] = np.float32(acc)
    return out.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_finalize_routing(dtype, mode):
    g = rng(11 + mode)
    rows, K, E, h, cap = 6, 3, 4, 5, 4
    ids = g.integers(0, E, (rows, K)).astype(np.int32)
    scales = g.random((rows, K)).astype(np.float32 if dtype != np.float16 else np.float16)
    skip1 = g.standard_normal((rows, h)).astype(dtype)
    skip2 = g.standard_normal((rows, h)).astype(dtype)
    bias = g.standard_normal((E, h)).astype(dtype)
    if mode in (1, 3):
        ex = g.standard_normal((E, cap, h)).astype(dtype)
        idx = g.integers(-1, E * cap, rows * K).astype(np.int32)
    else:
        ex = g.standard_normal((rows * K, h)).astype(dtype)
        idx = g.permutation(rows * K).astype(np.int32)
    out = R.moe_finalize_routing(ex, skip1, skip2, bias, scales, idx, ids, mode)
    ref = ref_finalize(ex, skip1, skip2, bias, scales, idx, ids, mode, 1, dtype)
    assert out.dtype == np.dtype(dtype) and out.shape == (rows, h)
    np.testing.assert_array_equal(out.astype(np.float32), ref.astype(np.float32))


def test_finalize_routing_fp16_accumulates_in_fp16():
    # 2048 + 1 + 1 in fp16: each add rounds (2049 -> 2048), so the result stays 2048; fp32 would give 2050
    ex = np.array([[1.0], [1.0]], np.float16)
    skip = np.array([[2048.0]], np.float16)
    scales = np.ones((1, 2), np.float16)
    out = R.moe_finalize_routing(ex, skip, None, None, scales, np.array([0, 1], np.int32), None, 2)
    assert out.tolist() == [[2048.0]]
    out32 = R.moe_finalize_routing(ex.astype(np.float32), skip.astype(np.float32), None, None,
                                   scales.astype(np.float32), np.array([0, 1], np.int32), None, 2)
    assert out32.tolist() == [[2050.0]]


def test_finalize_routing_without_skip_and_scales_uses_k():
    ex = np.arange(8, dtype=np.float32).reshape(4, 2)
    idx = np.array([3, 2, 1, 0], np.int32)
    out = R.moe_finalize_routing(ex, None, None, None, None, idx, None, 2, k=2)
    assert out.tolist() == [[6.0 + 4.0, 7.0 + 5.0], [2.0 + 0.0, 3.0 + 1.0]]


# ------------------------------------------------------------------------ gating top-k softmax

def ref_tree_sum(vals):
    """64-lane zero-padded repeats, pairwise adjacent tree in each, then the same over the partials."""
    def tree(v):
        v = list(v)
        while len(v) > 1:
            v = [f32(v[i] + v[i + 1]) for i in range(0, len(v), 2)]
        return v[0]
    blocks = max(1, -(-len(vals) // 64))
    padded = list(vals) + [f32(0)] * (blocks * 64 - len(vals))
    partial = [tree(padded[b * 64:(b + 1) * 64]) for b in range(blocks)]
    if blocks == 1:
        return partial[0]
    width = 1 << (blocks - 1).bit_length()
    return tree(partial + [f32(0)] * (width - blocks))


def ref_softmax_row(row):
    xf = [f32(v) for v in row]
    m = max(xf)
    e = [f32(np.exp(f32(v - m))) for v in xf]
    s = ref_tree_sum(e)
    return [f32(v / s) for v in e]


def ref_topk(vals, k):
    return sorted(range(len(vals)), key=lambda i: (-float(vals[i]), i))[:k]


def bf16_round_away(v):
    bits = int(np.array([v], np.float32).view(np.uint32)[0])
    r = (bits + 0x8000) & 0xFFFF0000
    return np.array([r], np.uint32).view(np.float32)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16])
def test_gating_top_k_softmax(dtype):
    g = rng(12)
    rows, E, k = 7, 80, 4
    x = g.standard_normal((rows, E)).astype(dtype)
    x[1, 10] = x[1, 20] = x[1, 30] = 5.0        # ties -> lower expert first
    finished = np.zeros(rows, bool)
    finished[3] = True
    y, idx, row_idx = R.moe_gating_top_k_softmax(x, finished, k)
    for r in range(rows):
        p = ref_softmax_row(x[r])
        top = ref_topk(p, k)
        want_idx = [E] * k if finished[r] else top
        assert idx[r].tolist() == want_idx
        for j, e in enumerate(top):
            want = p[e]
            if dtype == BF16:
                assert float(y[r, j]) == float(bf16_round_away(want))
            else:
                assert float(y[r, j]) == float(np.array(want).astype(dtype))
        assert row_idx[r].tolist() == [j * rows + r for j in range(k)]
    assert idx[1, :3].tolist() == [10, 20, 30]


def test_gating_top_k_softmax_3d_and_bf16_rounding_direction():
    x = np.zeros((2, 3, 4), np.float32)
    x[..., 0] = 1
    y, idx, row_idx = R.moe_gating_top_k_softmax(x, None, 2)
    assert y.shape == (2, 3, 2) and row_idx.reshape(-1, 2)[:, 1].tolist() == [6 + i for i in range(6)]
    # CAST_ROUND: an fp32 value halfway between two bf16 values rounds away from zero (RNE would go even)
    half_way = np.array([0x3F808000], np.uint32).view(np.float32)     # 1.00390625: between 1.0 and 1.0078125
    assert float(R._gating_y_cast(half_way, "bfloat16")[0]) == 1.0078125
    assert float(half_way.astype(BF16)[0]) == 1.0


@pytest.mark.parametrize("renorm", [0, 1])
def test_gating_top_k_softmax_v2(renorm):
    g = rng(13)
    x = g.standard_normal((5, 16)).astype(np.float32)
    y, idx, soft = R.moe_gating_top_k_softmax_v2(x, 3, renorm=renorm, output_softmax=True)
    for r in range(5):
        if renorm == 0:
            p = ref_softmax_row(x[r])
            top = ref_topk(p, 3)
            assert [float(p[e]) for e in top] == y[r].tolist()
            assert soft[r].tolist() == [float(v) for v in p]
        else:
            top = ref_topk([f32(v) for v in x[r]], 3)
            assert y[r].tolist() == [float(v) for v in ref_softmax_row([x[r, e] for e in top])]
            assert soft.shape == (0,)
        assert idx[r].tolist() == top


# ------------------------------------------------------------------------ gating backward

def test_gating_top_k_backward():
    g = rng(14)
    rows, E, k = 4, 8, 3
    xn = (1 / (1 + np.exp(-g.standard_normal((rows, E))))).astype(np.float32)
    idx = np.stack([g.permutation(E)[:k] for _ in range(rows)]).astype(np.int32)
    gy = g.standard_normal((rows, k)).astype(np.float32)
    out = R.moe_gating_top_k_backward(xn, gy, idx, 2.5, 1e-20)
    for r in range(rows):
        s = [xn[r, e] for e in idx[r]]
        den = f32(0)
        for v in s:
            den = f32(den + v)
        den = f32(den + f32(1e-20))
        gg = [f32(gy[r, j] * f32(2.5)) for j in range(k)]
        beta = f32(0)
        for j in range(k):
            beta = f32(beta + f32(f32(s[j] / den) * gg[j]))
        gn = [f32(0)] * E
        for j in range(k):
            gn[idx[r, j]] = f32(gn[idx[r, j]] + f32(f32(gg[j] - beta) / den))
        want = [f32(f32(xn[r, e] * f32(1 - xn[r, e])) * gn[e]) for e in range(E)]
        assert out[r].tolist() == [float(w) for w in want]


# ------------------------------------------------------------------------ compute_expert_tokens, re_routing

def test_compute_expert_tokens():
    ids = np.array([0, 0, 2, 2, 2, 5], np.int32)
    out = R.moe_compute_expert_tokens(ids, 7)
    ref = []
    for i in range(7):
        ref.append(sum(1 for v in ids if v <= i))
    assert out.dtype == np.int32 and out.tolist() == ref == [2, 2, 5, 5, 5, 6, 6]


@pytest.mark.parametrize("idx_type", [0, 1])
@pytest.mark.parametrize("tok_type", [0, 1])
def test_re_routing(idx_type, tok_type):
    g = rng(15)
    ranks, experts, h = 3, 4, 2
    counts = g.integers(0, 3, (ranks, experts)).astype(np.int32)
    counts[1, 2] = 0
    total = int(counts.sum())
    m = total + 2
    tok = g.integers(-100, 100, (m, h)).astype(np.int8)
    scales = g.random(m).astype(np.float32)
    pt, ps, pidx, etn = R.moe_re_routing(tok, counts, scales, tok_type, idx_type)
    # reference: the op-plugin test's loop
    offs = [0] * experts
    col = [int(counts[:, e].sum()) for e in range(experts)]
    for e in range(1, experts):
        offs[e] = offs[e - 1] + col[e - 1]
    gather = [None] * total
    src = 0
    for r in range(ranks):
        for e in range(experts):
            for i in range(int(counts[r, e])):
                gather[offs[e]] = src
                offs[e] += 1
                src += 1
    for d, s_ in enumerate(gather):
        np.testing.assert_array_equal(pt[d], tok[s_])
        assert ps[d] == scales[s_]
        if idx_type == 0:
            assert pidx[d] == s_
        else:
            assert pidx[s_] == d
    assert (pt[total:] == -128).all() and np.isnan(ps[total:]).all()
    want = col if tok_type == 1 else list(np.cumsum(col))
    assert etn.tolist() == want and etn.dtype == np.int32


# ------------------------------------------------------------------------ empty input, output specs

def test_init_routing_no_tokens_zero_fills_counts():
    x = np.zeros((0, 4), BF16)
    ids = np.zeros((0, 2), np.int32)
    ex, ri, tok, es = R.moe_init_routing_v2(x, ids, expert_num=5, expert_tokens_num_type=1)
    assert ex.shape == (0, 4) and ri.shape == (0,) and es.shape == (0,)
    assert tok.dtype == np.int64 and tok.tolist() == [0] * 5


INIT_SPEC_CASES = [
    # kwargs, expected (expanded_x, row_idx, tokens, 4th) shapes and dtypes, for x bf16 [6, 8], k = 2
    (dict(expert_num=4), [((12, 8), "bfloat16"), ((12,), "int32"), ((4,), "int64"), ((12,), "float32")]),
    (dict(expert_num=4, active_num=5, quant_mode=1, scale=np.ones((4, 8), np.float32)),
     [((5, 8), "int8"), ((12,), "int32"), ((4,), "int64"), ((5,), "float32")]),
    (dict(expert_num=4, expert_tokens_num_type=2, expert_tokens_num_flag=True),
     [((12, 8), "bfloat16"), ((12,), "int32"), ((4, 2), "int64"), ((12,), "float32")]),
    (dict(expert_num=8, active_expert_range=[2, 5], expert_tokens_num_flag=True),
     [((12, 8), "bfloat16"), ((12,), "int32"), ((3,), "int64"), ((12,), "float32")]),
    (dict(expert_num=4, drop_pad_mode=1, expert_capacity=3),
     [((4, 3, 8), "bfloat16"), ((12,), "int32"), ((4,), "int64"), ((12,), "float32")]),
    (dict(expert_num=4, quant_mode=0, scale=np.ones(1, np.float32), offset=np.zeros(1, np.float32)),
     [((12, 8), "int8"), ((12,), "int32"), ((4,), "int64"), ((12,), "float32")]),
    (dict(expert_num=4, entry="V2", expert_tokens_num_type=1, expert_tokens_num_flag=True),
     [((12, 8), "bfloat16"), ((12,), "int32"), ((4,), "int64"), ((4,), "int32")]),
    (dict(expert_num=4, entry="V2", v2_tokens_mode="cumsum"),
     [((12, 8), "bfloat16"), ((12,), "int32"), ((4,), "int32"), ((4,), "int32")]),
]


@pytest.mark.parametrize("case", range(len(INIT_SPEC_CASES)))
def test_init_routing_output_specs(case):
    kwargs, want = INIT_SPEC_CASES[case]
    g = rng(20)
    x = g.standard_normal((6, 8)).astype(BF16)
    ids = g.integers(0, kwargs["expert_num"], (6, 2)).astype(np.int32)
    outs = R.moe_init_routing_v2(x, ids, **kwargs)
    spec_kwargs = {k: v for k, v in kwargs.items() if k not in ("scale", "offset", "expert_tokens_num_flag")}
    specs = R.init_routing_v2_output_specs(6, 2, 8, "bfloat16", **spec_kwargs)
    for out, spec, (shape, dtype) in zip(outs, specs, want):
        assert (out.shape, numerics.dtype_name(out)) == (shape, dtype) == spec


def test_other_output_specs():
    assert R.token_permute_output_specs((6, 8), "float16", (6, 2), -3) == (((9, 8), "float16"), ((12,), "int32"))
    assert R.token_permute_output_specs((6, 8), "float16", (6,), None) == (((6, 8), "float16"), ((6,), "int32"))
    assert R.token_unpermute_output_specs((12, 8), "bfloat16", 12, (4, 3)) == ((4, 8), "bfloat16")
    assert R.token_unpermute_output_specs((12, 8), "bfloat16", 12) == ((12, 8), "bfloat16")
    assert R.finalize_routing_output_specs((4, 3, 8), "float16", 12, (6, 2)) == ((6, 8), "float16")
    assert R.finalize_routing_output_specs((12, 8), "float16", 12, None, k=3) == ((4, 8), "float16")
    assert R.gating_top_k_softmax_output_specs((2, 3, 8), "bfloat16", 2) == \
        (((2, 3, 2), "bfloat16"), ((2, 3, 2), "int32"), ((2, 3, 2), "int32"))
    assert R.gating_top_k_softmax_output_specs((3, 8), "float32", 2, v2=True, output_softmax=True)[2] == ((3, 8), "float32")
    assert R.gating_top_k_softmax_output_specs((3, 8), "float32", 2, v2=True, renorm=1, output_softmax=True)[2] == \
        ((0,), "float32")
    assert R.re_routing_output_specs((10, 4), "int8", (2, 3), "int64") == \
        (((10, 4), "int8"), ((10,), "float32"), ((10,), "int32"), ((3,), "int64"))


def test_init_routing_v2_entry_ignores_drop_pad_and_scatter_index():
    g = rng(21)
    ids = g.integers(0, 4, (5, 2)).astype(np.int32)
    x = g.standard_normal((5, 3)).astype(np.float32)
    ex, ri, tok, _ = R.moe_init_routing_v2(x, ids, expert_num=4, drop_pad_mode=1, expert_capacity=1, row_idx_type=1,
                                           entry="V2")
    ref = ref_init_routing(x, ids, E=4, tok_type=1, flag=True)
    check_init((ex, ri, tok, None), ref, tok_type=1)


@pytest.mark.parametrize("quant_mode", [0, 1])
def test_init_routing_drop_pad_quantised(quant_mode):
    g = rng(22)
    n, k, E, h, cap = 6, 2, 4, 5, 2
    ids = g.integers(0, E - 1, (n, k)).astype(np.int32)       # expert 3 empty
    ids[0] = [0, 0]
    ids[1] = [0, 1]                                            # expert 0 has >= 3 slots: one dropped
    x = (g.standard_normal((n, h)) * 3).astype(np.float32)
    kw = dict(scale=np.array([0.5], np.float32), offset=np.array([1.0], np.float32)) if quant_mode == 0 else {}
    ex, ri, tok, es = R.moe_init_routing_v2(x, ids, expert_num=E, expert_capacity=cap, drop_pad_mode=1,
                                            quant_mode=quant_mode, **kw)
    assert ex.shape == (E, cap, h) and ex.dtype == np.int8 and es.shape == (E * cap,)
    ref = ref_init_routing(x, ids, E=E, cap=cap, drop_pad=1, tok_type=1)
    nrows, rows = ref["rows"]
    flat = ex.reshape(nrows, h)
    for r in range(nrows):
        if r not in rows:
            assert (flat[r] == 0).all() and np.isnan(es[r])     # padding: zero rows, scale unwritten
            continue
        if quant_mode == 0:
            want = [sat8(round_half_even(f32(f32(f32(v) * f32(0.5)) + f32(1.0)))) for v in rows[r]]
        else:
            want, sc = ref_dynamic(rows[r], None, "full_row")
            assert es[r] == sc
        assert flat[r].tolist() == want
    assert ri.tolist() == ref["row_idx"]
    assert sum(1 for v in ref["row_idx"] if v == -1) >= 1      # at least one dropped slot


def test_dynamic_quant_path_switch():
    x = np.array([[127.0, 100.5, -2.5]], np.float32)
    ids = np.zeros((1, 1), np.int32)
    assert R.get_dynamic_quant_path() == "full_row"
    with R.dynamic_quant_path("h_tiled"):
        ex, *_ = R.moe_init_routing_v2(x, ids, expert_num=1, quant_mode=1)
    assert ex[0].tolist() == [127, 101, -3]
    ex, *_ = R.moe_init_routing_v2(x, ids, expert_num=1, quant_mode=1)
    assert ex[0].tolist() == [127, 100, -2]
    with pytest.raises(ValueError, match="dynamic_quant_path"):
        R.set_dynamic_quant_path("nope")


def test_sim_routing_imports_neither_torch_nor_the_checker():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; import ascend_moe.sim.routing; "
            "bad = [m for m in sys.modules if m.startswith(('ascend_moe.rules', 'ascend_moe.products'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
