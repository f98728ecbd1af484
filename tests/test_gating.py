"""npu_moe_gating_top_k: simulator against independent references written here.

* ``ref_route``: float64, plain per-row loops, straight from the formulas (spec gating-and-ffn A.3).
* explicit float32 step-by-step checks where bits matter (renorm sum order, Div vs reciprocal,
  softmax x(1/S) vs /S by version, padded softmax layout, RNE output cast).
* DeepSeek-V3's public gate (inference/model.py ``Gate.forward``) rewritten here in torch.
"""
import itertools
import zlib

import ml_dtypes
import numpy as np
import pytest

import ascend_moe
from ascend_moe import ConstraintError, ConstraintWarning, TensorSpec
from ascend_moe.sim import gating as simg
from ascend_moe.ops.gating import semantics as gating_semantics
from ascend_moe.sim.gating import npu_moe_gating_top_k as sim_gating

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float16": np.float16, "bfloat16": BF16, "float32": np.float32}
CURRENT = "9.1.0"     # every mode is valid there (hash mode and softplus first ship in 9.1.0)


# ------------------------------------------------------------------------ independent reference

def ref_route(x, k, bias=None, k_group=1, group_count=1, gsm=0, renorm=0, norm_type=0, rsf=1.0, eps=1e-20,
              always_top2=False, tol=1e-5):
    """float64 routing; returns (weights, idx, norm, decidable) where ``decidable`` marks rows whose
    group and expert rankings have no nonzero gap below ``tol`` (float32 rounding cannot flip them;
    exact ties come from equal inputs and resolve by index in both)."""
    xf = np.asarray(x).astype(np.float64)
    if norm_type == 1:
        s = 1.0 / (1.0 + np.exp(-xf))
    elif norm_type == 2:
        s = np.sqrt(np.log1p(np.exp(xf)))
    else:
        e = np.exp(xf - xf.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
    v = s + np.asarray(bias).astype(np.float64) if bias is not None else s.copy()
    rows, n = v.shape
    per = n // group_count
    idx = np.zeros((rows, k), np.int64)
    decidable = np.ones(rows, bool)
    for r in range(rows):
        allowed = list(range(n))
        if group_count > 1 and k_group < group_count and group_count != n:
            scores = []
            for g in range(group_count):
                vals = sorted(v[r, g * per:(g + 1) * per], reverse=True)
                scores.append(vals[0] + vals[1] if (gsm == 1 or always_top2) else vals[0])
            gorder = sorted(range(group_count), key=lambda g: (-scores[g], g))
            ranked = [scores[g] for g in gorder]
            if k_group < group_count and 0 < ranked[k_group - 1] - ranked[k_group] < tol:
                decidable[r] = False
            kept = set(gorder[:k_group])
            allowed = [j for j in range(n) if j // per in kept]
        order = sorted(allowed, key=lambda j: (-v[r, j], j))
        idx[r] = order[:k]
        top = [v[r, j] for j in order[:k + 1]]
        if any(0 < a - b < tol for a, b in zip(top, top[1:])):   # exact ties are decidable
            decidable[r] = False
    g = np.take_along_axis(s, idx, axis=1)
    if norm_type in (1, 2) or renorm == 1:
        g = g / (g.sum(axis=1, keepdims=True) + eps)
    return g * rsf, idx, s, decidable


def _data(rows, experts, dtype, seed, bias=True, scale=2.0, ties=False):
    """Random logits; with ``ties`` exact duplicates (x and bias) inside a group and across groups,
    placed on the rows' largest values so they reach the top-k and the group scores."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, experts)) * scale).astype(DTYPES[dtype])
    b = (rng.standard_normal(experts) * 0.1).astype(DTYPES[dtype]) if bias else None
    if ties and experts >= 16:
        half = experts // 2
        x[:, 1] = x[:, 2] = x[:, half + 3] = np.abs(x).max(axis=1) + 1      # three-way tie at the top
        x[:, 5] = x[:, half + 6] = x[:, 1] - 0.5                            # a cross-group pair
        if b is not None:
            b[[1, 2, half + 3]] = b[1]
            b[[5, half + 6]] = b[5]
    return x, b


RTOL = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2e-6}

GROUPINGS = [  # (experts, group_count, k_group, k): grouped (generalized kernel) and without-group
    (64, 4, 2, 6),
    (48, 1, 1, 5),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("grouping", GROUPINGS, ids=["grouped", "ungrouped"])
@pytest.mark.parametrize("norm_type,gsm,renorm,out_flag,with_bias",
                         list(itertools.product([0, 1], [0, 1], [0, 1], [False, True], [False, True])))
def test_all_modes_against_float64_reference(dtype, grouping, norm_type, gsm, renorm, out_flag, with_bias):
    experts, groups, k_group, k = grouping
    seed = zlib.crc32(repr((dtype, grouping, norm_type, gsm, renorm, out_flag, with_bias)).encode())
    x, b = _data(16, experts, dtype, seed, bias=with_bias, ties=True)
    rsf = 1.5
    y, idx, norm = _call(x, k, b, k_group, groups, gsm, renorm, norm_type, out_flag, rsf)
    w, ridx, s, ok = ref_route(x, k, b, k_group, groups, gsm, renorm, norm_type, rsf)
    assert y.dtype == DTYPES[dtype] and y.shape == (16, k)
    assert idx.dtype == np.int32 and idx.shape == (16, k)
    assert norm.dtype == np.float32 and norm.shape == (16, experts)
    assert ok.mean() >= 0.75, "test data too tie-prone to be meaningful"
    np.testing.assert_array_equal(idx[ok], ridx[ok])
    np.testing.assert_allclose(y[ok].astype(np.float64), w[ok], rtol=RTOL[dtype], atol=1e-7)
    if b is None:   # the crafted three-way tie leads every row, lower index first
        assert (idx[:, :3] == [1, 2, experts // 2 + 3]).all()
    if out_flag:
        np.testing.assert_allclose(norm, s, rtol=2e-6, atol=1e-9)
    else:
        assert np.isnan(norm).all()          # unwritten by the device: poison policy


def _call(x, k, b, k_group, groups, gsm, renorm, norm_type, out_flag, rsf, cann=CURRENT, product=None, **kw):
    with ascend_moe.target(product=product, cann=cann):
        return sim_gating(x, k, bias=b, k_group=k_group, group_count=groups, group_select_mode=gsm,
                          renorm=renorm, norm_type=norm_type, out_flag=out_flag, routed_scaling_factor=rsf, **kw)


def test_sqrt_softplus_on_950():
    x, b = _data(8, 32, "float32", 3)
    y, idx, norm = _call(x, 4, b, 1, 1, 0, 0, 2, True, 2.0, product="ascend-950")
    w, ridx, s, ok = ref_route(x, 4, b, norm_type=2, rsf=2.0)
    np.testing.assert_array_equal(idx[ok], ridx[ok])
    # the kernel computes ln(fl(1 + exp(x))) in float32: a few e-6 relative for small exp(x)
    np.testing.assert_allclose(y[ok], w[ok], rtol=2e-5)
    np.testing.assert_allclose(norm, s, rtol=2e-5)


# ------------------------------------------------------------------------ undefined region policy

def test_norm_out_unwritten_follows_policy():
    x, _ = _data(4, 16, "float16", 1, bias=False)
    _, _, norm = sim_gating(x, 2, undefined="zero")
    assert (norm == 0).all()
    with ascend_moe.undefined_policy("zero"):
        assert (sim_gating(x, 2)[2] == 0).all()
    assert np.isnan(sim_gating(x, 2)[2]).all()


def test_deepseek_kernel_never_writes_norm_out():
    x, b = _data(4, 256, "float32", 2)
    _, _, norm = _call(x, 8, b, 4, 8, 1, 0, 1, False, 1.0)
    assert np.isnan(norm).all()


# ------------------------------------------------------------------------ ties and order

def test_topk_ties_lower_index_first_and_descending():
    x = np.zeros((1, 16), np.float32)
    x[0, [3, 9, 12, 5]] = [1.0, 1.0, 2.0, 1.0]
    y, idx, _ = _call(x, 4, None, 1, 1, 0, 0, 1, False, 1.0)
    assert idx.tolist() == [[12, 3, 5, 9]]
    assert y[0, 0] > y[0, 1] == y[0, 2] == y[0, 3]
    # all equal: the first k experts in index order
    _, idx, _ = _call(np.ones((2, 32), np.float16), 5, None, 1, 1, 0, 0, 0, False, 1.0)
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_group_score_ties_keep_lower_group():
    # 4 groups of 8, equal group maxima in groups 1 and 3, group 0 best: keep {0, 1}
    x = np.full((1, 32), -4.0, np.float32)
    x[0, 2] = 3.0          # group 0
    x[0, 8 + 5] = 1.0      # group 1
    x[0, 24 + 1] = 1.0     # group 3 (same score as group 1)
    _, idx, _ = _call(x, 3, None, 2, 4, 0, 0, 1, False, 1.0)
    assert idx[0, :2].tolist() == [2, 13]
    assert set(idx[0].tolist()) <= set(range(16))          # only groups 0 and 1
    # equal top-2 sums (mode 1) in groups 2 and 3, group 0 best: kept {0, 2}
    x = np.full((1, 32), -4.0, np.float32)
    x[0, [0, 1]] = [3.0, 3.0]
    x[0, [16, 17]] = [1.0, 0.5]
    x[0, [30, 31]] = [0.5, 1.0]
    _, idx, _ = _call(x, 4, None, 2, 4, 1, 0, 1, False, 1.0)
    assert idx[0].tolist() == [0, 1, 16, 17]


def test_cross_group_ties_resolve_to_lower_expert():
    x = np.full((1, 64), -3.0, np.float32)
    x[0, [40, 7, 20]] = 2.0           # groups 2, 0, 1 (of 4 groups of 16); all tie
    _, idx, _ = _call(x, 3, None, 3, 4, 0, 0, 1, False, 1.0)
    assert idx.tolist() == [[7, 20, 40]]


def test_output_order_follows_biased_score_and_y_is_unbiased():
    x = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
    bias = np.array([0.0, 0.0, 0.0, 2.0], np.float32)     # expert 3 ranks first, but its weight is small
    y, idx, _ = _call(x, 2, bias, 1, 1, 0, 0, 1, False, 1.0)
    assert idx.tolist() == [[3, 0]]
    s = 1 / (1 + np.exp(-np.array([-1.0, 2.0])))
    np.testing.assert_allclose(y[0], s / s.sum(), rtol=1e-6)
    assert y[0, 0] < y[0, 1]


def test_negative_zero_ties_with_positive_zero():
    x = np.array([[0.0, -5.0, -0.0, 0.0]], np.float32)
    bias = np.array([0.0, 0.0, 0.0, 0.0], np.float32)
    # softmax of these: experts 0, 2, 3 equal; v = s + 0 keeps them equal
    _, idx, _ = _call(x, 3, bias, 1, 1, 0, 0, 0, False, 1.0)
    assert idx.tolist() == [[0, 2, 3]]


# ------------------------------------------------------------------------ float32 bit behaviour

def _tree(vals):
    """Pairwise adjacent tree of float32 values zero-padded to a power of two (written out)."""
    vals = [np.float32(v) for v in vals]
    while len(vals) & (len(vals) - 1):
        vals.append(np.float32(0))
    while len(vals) > 1:
        vals = [np.float32(vals[i] + vals[i + 1]) for i in range(0, len(vals), 2)]
    return vals[0]


def test_sigmoid_renorm_is_float32_tree_sum_then_divide():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    rsf, eps = np.float32(2.5), np.float32(1e-20)
    y, idx, _ = _call(x, 8, None, 1, 1, 0, 0, 1, False, 2.5)
    for r in range(32):
        s = [np.float32(1) / (np.exp(-x[r, j]) + np.float32(1)) for j in idx[r]]
        den = np.float32(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + eps
        want = np.array([np.float32(np.float32(v / den) * rsf) for v in s], np.float32)
        np.testing.assert_array_equal(y[r].view(np.uint32), want.view(np.uint32))


def _find_recip_mismatch():
    """A float32 softmax row where e*(1/S) and e/S differ in some element."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        x = rng.standard_normal((1, 40)).astype(np.float32)
        e = np.exp(x - x.max())
        s = _tree(list(e[0]))
        if (e * (np.float32(1) / s) != e / s).any():
            return x, e, s
    raise AssertionError("no mismatch found")


def test_softmax_normalisation_depends_on_version():
    x, e, s = _find_recip_mismatch()
    muls = (e * (np.float32(1) / s)).astype(np.float32)
    div = (e / s).astype(np.float32)
    old = _call(x, 2, None, 1, 1, 0, 0, 0, True, 1.0, cann="9.0.1")[2]   # tag v9.0.1 predates the change
    new = _call(x, 2, None, 1, 1, 0, 0, 0, True, 1.0, cann="9.1.0")[2]
    np.testing.assert_array_equal(old, muls)     # before OT 5dbcb68ba: Muls(e, 1.0f/S)
    np.testing.assert_array_equal(new, div)      # after: Div(e, S)
    assert (old != new).any()


def test_generalized_softmax_sums_the_group_padded_layout():
    # 2 groups of 40 experts, each padded to 64 lanes by the generalized kernel; k_group 1 < 2
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 80)).astype(np.float32)
    norm = _call(x, 4, None, 1, 2, 0, 0, 0, True, 1.0)[2]
    for r in range(3):
        e = np.exp(x[r] - x[r].max())
        lay = list(e[:40]) + [0.0] * 24 + list(e[40:]) + [0.0] * 24   # two 64-lane repeats
        total = np.float32(_tree(lay[:64]) + _tree(lay[64:]))
        np.testing.assert_array_equal(norm[r], (e * (np.float32(1) / total)).astype(np.float32))


def test_output_cast_is_round_to_nearest_even():
    # softmax, renorm, k=1: the renormalised weight is exactly 1.0, so y = rne(rsf)
    x = np.zeros((1, 8), np.float16)
    for rsf, want in [(1 + 2 ** -11, 1.0), (1 + 3 * 2 ** -11, 1 + 2 ** -9)]:
        y = _call(x, 1, None, 1, 1, 0, 1, 0, False, rsf)[0]
        assert y.dtype == np.float16 and float(y[0, 0]) == want


def test_eps_is_float32_and_added_to_the_sum():
    x = np.full((1, 4), -30.0, np.float32)       # sigmoid ~9e-14: eps=1 dominates the denominator
    y = _call(x, 2, None, 1, 1, 0, 0, 1, False, 1.0, eps=1.0)[0]
    s = np.float32(1) / (np.exp(np.float32(30)) + np.float32(1))
    assert y[0, 0] == np.float32(s / (np.float32(s + s) + np.float32(1.0)))
    assert y[0, 0] < 1e-12                      # without eps it would be 0.5


# ------------------------------------------------------------------------ DeepSeek-V3

def deepseek_v3_gate(logits, bias, topk=8, n_groups=8, topk_groups=4, route_scale=2.5):
    """DeepSeek-V3 inference/model.py Gate.forward, sigmoid branch, rewritten in torch."""
    import torch
    scores = torch.as_tensor(logits, dtype=torch.float32).sigmoid()
    original = scores
    scores = scores + torch.as_tensor(bias, dtype=torch.float32)
    scores = scores.view(scores.size(0), n_groups, -1)
    group_scores = scores.topk(2, dim=-1)[0].sum(dim=-1)
    keep = group_scores.topk(topk_groups, dim=-1)[1]
    mask = torch.ones(scores.size(0), n_groups, dtype=torch.bool).scatter_(1, keep, False)
    scores = scores.masked_fill(mask.unsqueeze(-1), float("-inf")).flatten(1)
    indices = torch.topk(scores, topk, dim=-1)[1]
    weights = original.gather(1, indices)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (weights * route_scale).numpy(), indices.numpy()


@pytest.mark.parametrize("cann,gsm", [("8.2.RC1", 1), ("8.2.RC1", 0), ("8.5.0", 1), ("9.0.0", 1)])
def test_deepseek_v3_configuration_reproduces_public_routing(cann, gsm):
    rng = np.random.default_rng(2024)
    logits = rng.standard_normal((64, 256)).astype(np.float32) * 2
    bias = (rng.standard_normal(256) * 0.05).astype(np.float32)
    y, idx, _ = _call(logits, 8, bias, 4, 8, gsm, 0, 1, False, 2.5, cann=cann)
    w_ds, i_ds = deepseek_v3_gate(logits, bias)
    np.testing.assert_array_equal(idx, i_ds)
    np.testing.assert_allclose(y, w_ds, rtol=2e-6)


def test_deepseek_v3_bf16_logits():
    rng = np.random.default_rng(99)
    logits = (rng.standard_normal((32, 256)) * 2).astype(BF16)
    bias = (rng.standard_normal(256) * 0.05).astype(BF16)
    y, idx, _ = _call(logits, 8, bias, 4, 8, 1, 0, 1, False, 2.5, cann="8.5.0")
    w_ds, i_ds = deepseek_v3_gate(logits.astype(np.float32), bias.astype(np.float32))
    _, _, _, ok = ref_route(logits, 8, bias, 4, 8, 1, 0, 1, 2.5)
    assert ok.mean() > 0.75
    np.testing.assert_array_equal(idx[ok], i_ds[ok])
    np.testing.assert_allclose(y[ok].astype(np.float32), w_ds[ok], rtol=2 ** -7)


def test_group_select_mode_0_means_top2_before_8_3_and_max_after():
    # DeepSeek-shaped call with group_select_mode=0: a group whose max is high but second value low
    x = np.full((1, 256), -6.0, np.float32)
    x[0, 0] = 6.0                                       # group 0: max 6, top-2 sum small
    for g in range(1, 8):
        x[0, 32 * g: 32 * g + 2] = [3.0 - 0.1 * g, 3.0 - 0.1 * g]   # strong pairs
    bias = np.zeros(256, np.float32)
    legacy = _call(x, 8, bias, 4, 8, 0, 0, 1, False, 1.0, cann="8.2.RC1")[1]
    current = _call(x, 8, bias, 4, 8, 0, 0, 1, False, 1.0, cann="8.5.0")[1]
    _, want_top2, _, _ = ref_route(x, 8, bias, 4, 8, 0, 0, 1, always_top2=True)
    _, want_max, _, _ = ref_route(x, 8, bias, 4, 8, 0, 0, 1)
    np.testing.assert_array_equal(legacy, want_top2)
    np.testing.assert_array_equal(current, want_max)
    assert 0 not in legacy[0] and 0 in current[0]


# ------------------------------------------------------------------------ hash mode

@pytest.mark.parametrize("id_dtype,tab_dtype", [(np.int32, np.int64), (np.int64, np.int32)])
def test_hash_mode_routes_by_table(id_dtype, tab_dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 32)).astype(np.float16)
    table = np.stack([rng.permutation(32)[:4] for _ in range(10)]).astype(tab_dtype)
    ids = rng.integers(0, 10, 6).astype(id_dtype)
    bias = np.full(32, 5.0, np.float16)       # bias never steers hash routing
    y, idx, _ = _call(x, 4, bias, 1, 1, 0, 0, 1, False, 2.0, input_ids=ids, tid2eid=table)
    want_idx = table[ids].astype(np.int32)
    np.testing.assert_array_equal(idx, want_idx)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    g = np.take_along_axis(s, want_idx.astype(np.int64), 1)
    np.testing.assert_allclose(y.astype(np.float64), 2.0 * g / g.sum(1, keepdims=True), rtol=2 ** -10)


def test_hash_mode_ignored_by_a2_grouped_kernel_with_warning():
    x, b = _data(2, 64, "float32", 4)
    table = np.zeros((3, 4), np.int32)
    ids = np.zeros(2, np.int32)
    with pytest.warns(ascend_moe.ConstraintWarning, match="hash.simplified_path_doc"):
        y, idx, _ = _call(x, 4, b, 2, 4, 0, 0, 1, False, 1.0, input_ids=ids, tid2eid=table)
    _, ridx, _, ok = ref_route(x, 4, b, 2, 4, 0, 0, 1)
    np.testing.assert_array_equal(idx[ok], ridx[ok])


# ------------------------------------------------------------------------ misc data-flow facts

def test_non_contiguous_and_views():
    x, b = _data(8, 128, "bfloat16", 8)
    xs = x[:, ::2]
    y1, i1, _ = _call(xs, 4, b[::2], 2, 4, 1, 0, 1, False, 1.0)
    y2, i2, _ = _call(np.ascontiguousarray(xs), 4, np.ascontiguousarray(b[::2]), 2, 4, 1, 0, 1, False, 1.0)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(y1.view(np.uint16), y2.view(np.uint16))


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2, 4, 8]))
    per = int(rng.integers(3, 40))
    experts = groups * per
    k_group = int(rng.integers(1, groups + 1))
    k = int(rng.integers(1, min(k_group * per, 16) + 1))
    rows = int(rng.integers(1, 9))
    dtype = ["float16", "bfloat16", "float32"][seed % 3]
    x, b = _data(rows, experts, dtype, seed + 100, bias=bool(seed % 2))
    gsm, norm_type = seed % 2, (seed // 2) % 2
    y, idx, _ = _call(x, k, b, k_group, groups, gsm, 1, norm_type, False, 1.0)
    w, ridx, _, ok = ref_route(x, k, b, k_group, groups, gsm, 1, norm_type, 1.0)
    np.testing.assert_array_equal(idx[ok], ridx[ok])
    np.testing.assert_allclose(y[ok].astype(np.float64), w[ok], rtol=RTOL[dtype], atol=1e-7)


def test_kernel_path_selection():
    sem = gating_semantics("8.5.0")
    assert simg.kernel_path(256, 8, True, 4, 8, 1, 0, 1, False, sem) == simg.PATH_DEEPSEEK
    assert simg.kernel_path(256, 8, True, 4, 8, 0, 0, 1, False, sem) == simg.PATH_GENERALIZED
    assert simg.kernel_path(256, 8, True, 8, 8, 0, 0, 1, False, sem) == simg.PATH_WITHOUT_GROUP
    assert simg.kernel_path(64, 8, False, 1, 64, 0, 0, 0, False, sem) == simg.PATH_WITHOUT_GROUP
    assert simg.kernel_path(64, 8, False, 1, 4, 0, 0, 0, False, gating_semantics("8.2.RC1")) \
        == simg.PATH_DEEPSEEK


def test_tensorspec_config_check():
    assert ascend_moe.check("npu_moe_gating_top_k", TensorSpec((4096, 256), "bfloat16"), 8,
                            bias=TensorSpec((256,), "bfloat16"), k_group=4, group_count=8, group_select_mode=1,
                            norm_type=1, routed_scaling_factor=2.5, cann="8.2.RC1") == []
    # the older generation's 256-expert limit is stated only by the docs of that time: a warning
    with pytest.warns(ConstraintWarning, match="gating.legacy.experts_256"):
        ascend_moe.enforce("npu_moe_gating_top_k", TensorSpec((16, 128), "bfloat16"), 8,
                           bias=TensorSpec((128,), "bfloat16"), k_group=4, group_count=8, group_select_mode=1,
                           norm_type=1, cann="8.2.RC1")


# ------------------------------------------------------------------------ selection edge cases

def test_large_k_against_reference():
    x, b = _data(12, 64, "float32", 21)
    y, idx, _ = _call(x, 24, b, 2, 4, 1, 0, 1, False, 1.0)
    w, ridx, _, ok = ref_route(x, 24, b, 2, 4, 1, 0, 1)
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(idx[ok], ridx[ok])
    np.testing.assert_allclose(y[ok], w[ok], rtol=2e-6)


def test_nan_ranks_first():   # inferred hardware order (AscendC TopK doc: NaN first)
    x = np.arange(16, dtype=np.float32)[None, :] / 4
    x[0, 5] = np.nan
    _, idx, _ = _call(x, 3, None, 1, 1, 0, 0, 1, False, 1.0)
    assert idx.tolist() == [[5, 15, 14]]


def test_minus_inf_scores_inside_kept_groups_beat_excluded_groups():
    # 4 groups of 4; only group 2 is kept (k_group 1); 3 of its experts have bias -inf
    x = np.zeros((1, 16), np.float32)
    bias = np.zeros(16, np.float32)
    bias[8] = 1.0
    bias[[9, 10, 11]] = -np.inf
    _, idx, _ = _call(x, 3, bias, 1, 4, 0, 0, 1, False, 1.0)
    assert idx.tolist() == [[8, 9, 10]]


@pytest.mark.parametrize("kernels", ["reference", "machine"])
@pytest.mark.parametrize("k", [1, 3, 8, 16, 20])
def test_top_k_selection_against_a_sorted_python_list(k, kernels):
    """The selection (NaN first, then value descending, equal values by lower index, -0.0 == +0.0, -inf last)
    on rows full of ties, against Python's sort of (NaN?, -value, index), with and without excluded entries;
    with the NumPy reference and with this machine's compiled selection (rows split over threads)."""
    import contextlib
    from ascend_moe import kernels as machine_kernels
    from ascend_moe.sim import gating as gating_sim
    from ascend_moe.sim import kernels as sim_kernels
    rng = np.random.default_rng(k)
    rows, n = 600, 32
    v = rng.integers(-3, 4, (rows, n)).astype(np.float32)          # many ties at every rank
    v[rng.random((rows, n)) < 0.05] = -0.0
    v[rng.random((rows, n)) < 0.03] = -np.inf
    v[rng.random((rows, n)) < 0.02] = np.inf
    v[:20] = rng.standard_normal((20, n)).astype(np.float32)        # rows without ties
    v[20:40][rng.random((20, n)) < 0.1] = np.nan                    # NaN ranks above +inf
    excluded = rng.random((rows, n)) < 0.2
    excluded[:, :k] = False                                        # every row keeps at least k candidates
    use = sim_kernels.use(machine_kernels.for_call()) if kernels == "machine" else contextlib.nullcontext()
    with use:
        for exc in (None, excluded):
            got = gating_sim._select_top(v, k, exc)
            for r in range(rows):
                cand = [(0 if np.isnan(v[r, j]) else 1, 0.0 if np.isnan(v[r, j]) else -float(v[r, j]) + 0.0, j)
                        for j in range(n) if exc is None or not exc[r, j]]
                want = [j for _, _, j in sorted(cand)[:k]]
                assert got[r].tolist() == want, (r, exc is not None)


def _python_tree_sum(row, lanes):
    """The ReduceSum order written out: zero-padded repeats, a pairwise tree in each, a tree over the repeats."""
    vals = [np.float32(x) for x in row]
    blocks = max(1, -(-len(vals) // lanes))
    vals += [np.float32(0.0)] * (blocks * lanes - len(vals))

    def tree(xs):
        while len(xs) > 1:
            xs = [np.float32(xs[2 * i] + xs[2 * i + 1]) for i in range(len(xs) // 2)]
        return xs[0]
    partial = [tree(vals[b * lanes:(b + 1) * lanes]) for b in range(blocks)]
    width = 1 << (blocks - 1).bit_length()
    return tree(partial + [np.float32(0.0)] * (width - blocks))


@pytest.mark.parametrize("n", [1, 5, 64, 100, 256, 300])
def test_compiled_tree_sum_and_row_max(n):
    from ascend_moe.kernels import impls
    assert impls._select is not None, "the compiled selections (ascend_moe.kernels._select) were not built"
    rng = np.random.default_rng(n)
    rows = 520                                              # more than one thread's share
    a = (rng.standard_normal((rows, n)) * 10.0 ** rng.integers(-30, 30, (rows, n))).astype(np.float32)
    a[rng.random((rows, n)) < 0.05] = -0.0
    a[rng.random((rows, n)) < 0.02] = np.float32(1e-44)
    a[0, 0] = np.inf
    got = impls.compiled_tree_sum(a, 64)
    with np.errstate(over="ignore", invalid="ignore"):
        for r in range(rows):
            want = _python_tree_sum(a[r], 64)
            assert got[r].view(np.uint32) == want.view(np.uint32) or (np.isnan(got[r]) and np.isnan(want)), r
    m = impls.compiled_row_max(a)
    assert m.shape == (rows, 1) and (m[:, 0] == np.array([max(float(x) for x in row) for row in a])).all()
    a[7, n // 2] = np.nan
    assert impls.compiled_row_max(a) is None                 # NaN: left to NumPy


@pytest.mark.parametrize("n", [2, 3, 32, 33])
def test_compiled_top2_sum(n):
    """The grouped gate's group score (second largest + largest) by the compiled helper against Python's sort on
    tie-heavy rows, infinities, tiny and huge values; a NaN or a -0.0 anywhere hands the call back to NumPy."""
    from ascend_moe.kernels import impls
    assert impls._select is not None, "the compiled selections (ascend_moe.kernels._select) were not built"
    rng = np.random.default_rng(40 + n)
    rows = 5000                                             # more than one thread's share
    a = rng.integers(-3, 4, (rows, n)).astype(np.float32)   # many ties
    wide = rng.random(rows) < 0.5
    a[wide] = (rng.standard_normal((int(wide.sum()), n)) * 10.0 ** rng.integers(-40, 38, (int(wide.sum()), n))
               ).astype(np.float32)
    a[1, :] = -np.inf
    a[2, 0], a[3, -1] = np.inf, -np.inf
    a[4, :2] = np.inf
    got = impls.compiled_top2_sum(a)
    with np.errstate(over="ignore", invalid="ignore"):
        for r in range(rows):
            second, first = sorted(float(v) for v in a[r])[-2:]
            want = np.float32(np.float32(second) + np.float32(first))
            assert got[r].view(np.uint32) == want.view(np.uint32) or (np.isnan(got[r]) and np.isnan(want)), r
    a[rows - 1, 0] = np.nan
    assert impls.compiled_top2_sum(a) is None
    a[rows - 1, 0] = -0.0
    assert impls.compiled_top2_sum(a) is None
