"""npu_grouped_matmul_finalize_routing numerics: bitwise fp32 agreement with an independent reference
written here from the spec's formulas (grouped-matmul-family 3.3/3.4), plus the torch op.

The reference is a plain per-token loop with int64 dot products, written without the simulator's
helpers (no quant_gemm / numerics imports for the arithmetic).
"""
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

import ascend_moe
from ascend_moe.formats import set_format
from ascend_moe.sim import finalize_routing as sim
from ascend_moe.sim.quant_gemm import fp19_scales

F32 = np.float32
pytestmark = pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")


# --------------------------------------------------------------------------------------------
# independent reference
# --------------------------------------------------------------------------------------------

def ref_bounds(gl, list_type):
    ends = np.cumsum(gl) if list_type == 1 else np.asarray(gl)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(s), int(t)) for s, t in zip(starts, ends)]


def ref_decode_scale(scale_i64, fp19):
    bits = (np.asarray(scale_i64).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
    if fp19:
        bits = bits & np.uint32(0xFFFFE000)
    return bits.view(F32)


def reference(x, w_vals, gl, *, quant, scale, logit, row_index, pertoken=None, bias=None, offset=None,
              shared=None, shared_weight=1.0, shared_offset=0, output_bs=0, list_type=1, fp19=True):
    """Spec 3.3 per token, in token order.  w_vals: logical int weight values [e, k, n]."""
    m, n = x.shape[0], w_vals.shape[2]
    y = np.zeros((output_bs or m, n), F32)
    if shared is not None:
        y[shared_offset:shared_offset + shared.shape[0]] = shared.astype(F32) * F32(shared_weight)
    if quant == "a8w4":
        s = ref_decode_scale(scale, fp19).reshape(w_vals.shape[0], n)
    else:
        s = np.asarray(scale).astype(F32)
    for e, (start, end) in enumerate(ref_bounds(gl, list_type)):
        W = w_vals[e].astype(np.int64)
        for t in range(start, end):
            lg = F32(logit[t])
            if quant == "a8w8":
                acc = x[t].astype(np.int64) @ W
                d = acc.astype(F32) * s[e]
                lp = lg * F32(pertoken[t]) if pertoken is not None else lg
                v = d * lp
                if bias is not None:
                    v = v + lg * bias[e].astype(F32)
            else:
                xt = x[t].astype(np.int64)
                hi, lo = xt // 16, xt % 16 - 8                     # x = 16*hi + lo + 8
                assert np.array_equal(16 * hi + lo + 8, xt)
                # fixpipe: the exact product acc*s rounded once to fp16 (float64 holds it exactly)
                H = ((hi @ W).astype(np.float64) * s[e].astype(np.float64)).astype(np.float16)
                L = ((lo @ W).astype(np.float64) * s[e].astype(np.float64)).astype(np.float16)
                u = H.astype(F32) * F32(16) + L.astype(F32)
                u = u + bias[e].astype(F32)
                if offset is not None:
                    u = u + F32(xt.sum()) * offset.reshape(-1, n)[e].astype(F32)
                v = u * (F32(pertoken[t]) * lg)
            r = int(row_index[t])
            y[r] = y[r] + v
    return y


def bits_equal(a, b):
    return a.shape == b.shape and np.array_equal(np.asarray(a, F32).view(np.uint32), np.asarray(b, F32).view(np.uint32))


# --------------------------------------------------------------------------------------------
# case builders
# --------------------------------------------------------------------------------------------

def a8w8_case(rng, m=40, k=256, n=256, e=5, gl=(9, 0, 14, 7, 3), batch=20, bf16_scale=False, bias=True,
              pertoken=True, shared_rows=6, shared_offset=5, row_dtype=np.int64):
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-128, 128, (e, k, n), dtype=np.int8)
    scale = (rng.random((e, n), dtype=F32) * 1e-3 + 1e-4).astype(F32)
    if bf16_scale:
        scale = scale.astype(ml_dtypes.bfloat16)
    gl = np.asarray(gl, np.int64)
    total = int(gl.sum())
    rows = rng.integers(0, batch, m).astype(row_dtype)
    rows[:4] = 2                                            # duplicate targets
    rows[total:] = 10 ** 6 if row_dtype == np.int64 else 2 ** 30   # past the total: never used
    args = dict(scale=scale, logit=rng.random(m, dtype=F32), row_index=rows, output_bs=batch,
                pertoken_scale=(rng.random(m, dtype=F32) + 0.5) if pertoken else None,
                bias=rng.standard_normal((e, n)).astype(ml_dtypes.bfloat16) if bias else None)
    if shared_rows:
        args.update(shared_input=rng.standard_normal((shared_rows, n)).astype(ml_dtypes.bfloat16),
                    shared_input_weight=0.37, shared_input_offset=shared_offset)
    return x, w, gl, args


def ref_a8w8(x, w, gl, args, list_type=1):
    return reference(x, w, gl, quant="a8w8", scale=args["scale"], logit=args["logit"],
                     row_index=args["row_index"], pertoken=args.get("pertoken_scale"), bias=args.get("bias"),
                     shared=args.get("shared_input"), shared_weight=args.get("shared_input_weight", 1.0),
                     shared_offset=args.get("shared_input_offset", 0), output_bs=args.get("output_bs", 0),
                     list_type=list_type)


def pack_int4_ref(vals):
    """Own packer (spec 2.7): element j of each 8 along the last dim -> bits [4j, 4j+4), low nibble first."""
    v = (vals.astype(np.int64) & 0xF).reshape(*vals.shape[:-1], vals.shape[-1] // 8, 8)
    word = np.zeros(v.shape[:-1], np.uint64)
    for j in range(8):
        word |= v[..., j].astype(np.uint64) << np.uint64(4 * j)
    return word.astype(np.uint32).view(np.int32)


def a8w4_case(rng, m=40, k=256, n=256, e=5, gl=(9, 0, 14, 7, 3), batch=20, offset=False, low_bits=True):
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    wv = rng.integers(-8, 8, (e, k, n), dtype=np.int8)
    s = (rng.random((e, 1, n), dtype=F32) * 2e-3 + 1e-4).astype(F32)
    bits = s.view(np.uint32)
    if low_bits:                                            # make the FP19 truncation matter
        bits = bits | np.uint32(0x1FFF)
    scale = bits.astype(np.int64)                           # fp32 bits in the low word
    s_eff = ref_decode_scale(scale, True).reshape(e, n)
    bias = (F32(8) * (wv.astype(F32) * s_eff[:, None, :]).sum(axis=1)).astype(F32)
    gl = np.asarray(gl, np.int64)
    rows = rng.integers(0, batch, m).astype(np.int64)
    rows[:3] = 0
    args = dict(scale=scale, bias=bias, pertoken_scale=(rng.random(m, dtype=F32) + 0.5),
                logit=rng.random(m, dtype=F32), row_index=rows, output_bs=batch,
                shared_input=rng.standard_normal((4, n)).astype(ml_dtypes.bfloat16),
                shared_input_weight=1.5, shared_input_offset=batch - 4)
    if offset:
        args["offset"] = (rng.standard_normal((e, 1, n)).astype(F32) * 1e-3).astype(F32)
    return x, wv, pack_int4_ref(wv), gl, args


def ref_a8w4(x, wv, gl, args, fp19=True, list_type=1):
    return reference(x, wv, gl, quant="a8w4", scale=args["scale"], logit=args["logit"],
                     row_index=args["row_index"], pertoken=args["pertoken_scale"], bias=args["bias"],
                     offset=args.get("offset"), shared=args["shared_input"],
                     shared_weight=args["shared_input_weight"], shared_offset=args["shared_input_offset"],
                     output_bs=args["output_bs"], list_type=list_type, fp19=fp19)


def nz_storage_ref(vals, c0):
    """Own ND -> FRACTAL_NZ (spec 2.6): [e, k, n] -> [e, n/c0, k/16, 16, c0] (k % 16 == 0, n % c0 == 0)."""
    e, k, n = vals.shape
    return np.ascontiguousarray(vals.reshape(e, k // 16, 16, n // c0, c0).transpose(0, 3, 1, 2, 4))


def tagged(w):
    set_format(w, "FRACTAL_NZ")
    return w


# --------------------------------------------------------------------------------------------
# A8W8
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["nz_tag", "nz_5d", "bf16_scale", "no_pertoken_no_bias", "int32_rows",
                                     "no_shared", "output_bs_0"])
def test_a8w8_bitwise(variant):
    rng = np.random.default_rng(sum(map(ord, variant)))   # stable across processes
    kw = {}
    if variant == "bf16_scale":
        kw["bf16_scale"] = True
    if variant == "no_pertoken_no_bias":
        kw.update(pertoken=False, bias=False)
    if variant == "int32_rows":
        kw["row_dtype"] = np.int32
    if variant == "no_shared":
        kw["shared_rows"] = 0
    if variant == "output_bs_0":
        kw.update(batch=40)
    x, w, gl, args = a8w8_case(rng, **kw)
    if variant == "output_bs_0":
        args["output_bs"] = 0
    want = ref_a8w8(x, w, gl, args)
    weight = nz_storage_ref(w, 32) if variant == "nz_5d" else tagged(w.copy())
    got = sim.npu_grouped_matmul_finalize_routing(x, weight, gl, **args)
    assert got.dtype == F32 and got.shape == want.shape
    assert bits_equal(got, want)


def test_a8w8_layout_of_output_regions():
    rng = np.random.default_rng(1)
    x, w, gl, args = a8w8_case(rng, gl=(0, 0, 0, 0, 0))          # no grouped rows at all
    got = sim.npu_grouped_matmul_finalize_routing(x, tagged(w), gl, **args)
    si = args["shared_input"].astype(F32) * F32(0.37)
    assert bits_equal(got[5:11], si)                                 # shared region at the offset
    assert not got[:5].any() and not got[11:].any()                  # zeroed, never poisoned


def test_duplicate_targets_add_in_token_order():
    """All grouped rows land on one output row: the result is the token-order fp32 running sum,
    which differs from other summation orders (so the order is really pinned)."""
    rng = np.random.default_rng(2)
    x, w, gl, args = a8w8_case(rng, shared_rows=0, bias=False)
    args["row_index"] = np.zeros(40, np.int64)
    args["logit"] = (rng.random(40, dtype=F32) * 10.0 ** rng.integers(-3, 3, 40)).astype(F32)
    got = sim.npu_grouped_matmul_finalize_routing(x, tagged(w), gl, **args)
    want = ref_a8w8(x, w, gl, args)
    assert bits_equal(got, want)
    # reverse-order accumulation of the same contributions: differs somewhere in the last bits
    contrib = []
    for e, (s, t) in enumerate(ref_bounds(gl, 1)):
        for r in range(s, t):
            acc = (x[r].astype(np.int64) @ w[e].astype(np.int64)).astype(F32) * args["scale"][e]
            contrib.append(acc * (args["logit"][r] * args["pertoken_scale"][r]))
    rev = np.zeros(w.shape[2], F32)
    for c in reversed(contrib):
        rev = rev + c
    assert not bits_equal(rev, want[0])
    assert not got[1:].any()


def test_duplicate_targets_through_the_torch_op():
    """The torch op (this machine's plugged-in dequant and row adds) on the same token-order case."""
    rng = np.random.default_rng(2)
    x, w, gl, args = a8w8_case(rng, shared_rows=0, bias=False)
    args["row_index"] = rng.integers(0, 3, 40)
    args["logit"] = (rng.random(40, dtype=F32) * 10.0 ** rng.integers(-3, 3, 40)).astype(F32)
    y = ascend_moe.npu_grouped_matmul_finalize_routing(torch.from_numpy(x), torch.from_numpy(nz_storage_ref(w, 32)),
                                                       torch.from_numpy(gl), **_torch_args(args))
    assert bits_equal(y.numpy(), ref_a8w8(x, w, gl, args))


@pytest.mark.parametrize("kernels", ["reference", "machine"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scatter_add_keeps_each_rows_token_order(seed, kernels):
    """The vectorised scatter-add against a plain token-order loop, with rows hit 0, 1 or many times
    in any pattern and values of very different magnitudes (so the order shows in the last bits); with
    the NumPy reference and with this machine's plugged-in row adds."""
    import contextlib
    from ascend_moe import kernels as machine_kernels
    from ascend_moe.sim import kernels as sim_kernels
    from ascend_moe.sim.finalize_routing import scatter_add_in_order
    with sim_kernels.use(machine_kernels.for_call()) if kernels == "machine" else contextlib.nullcontext():
        _check_scatter_add(seed, scatter_add_in_order)


def _check_scatter_add(seed, scatter_add_in_order):
    rng = np.random.default_rng(seed)
    index = rng.integers(0, 9, 60) if seed else np.arange(60)[::-1].copy()
    v = (rng.standard_normal((60, 5)) * 10.0 ** rng.integers(-6, 6, (60, 1))).astype(F32)
    y = rng.standard_normal((60, 5)).astype(F32)
    want = y.copy()
    for t in range(60):
        for j in range(5):
            want[index[t], j] = F32(want[index[t], j] + v[t, j])
    scatter_add_in_order(y, index, v)
    assert bits_equal(y, want)


def test_group_list_total_below_m_and_empty_groups():
    rng = np.random.default_rng(3)
    x, w, gl, args = a8w8_case(rng, gl=(0, 5, 0, 0, 2), shared_rows=0)
    got = sim.npu_grouped_matmul_finalize_routing(x, tagged(w), gl, **args)
    assert bits_equal(got, ref_a8w8(x, w, gl, args))
    x2 = x.copy()
    x2[7:] = rng.integers(-128, 128, x2[7:].shape, dtype=np.int8)   # rows past the total: no effect
    got2 = sim.npu_grouped_matmul_finalize_routing(x2, tagged(w), gl, **args)
    assert bits_equal(got, got2)


def test_cumsum_group_list():
    rng = np.random.default_rng(4)
    x, w, gl, args = a8w8_case(rng)
    got = sim.npu_grouped_matmul_finalize_routing(x, tagged(w), np.cumsum(gl), group_list_type=0, **args)
    assert bits_equal(got, ref_a8w8(x, w, gl, args))


def test_output_bs_above_m_is_rejected():
    rng = np.random.default_rng(5)
    x, w, gl, args = a8w8_case(rng)
    args["output_bs"] = 41
    with pytest.raises(ascend_moe.ConstraintError, match="output_bs=41"):
        sim.npu_grouped_matmul_finalize_routing(x, tagged(w), gl, **args)


@pytest.mark.parametrize("seed", range(6))
def test_a8w8_random_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    e = int(rng.integers(1, 6))
    m = int(rng.integers(1, 50))
    k = 16 * int(rng.integers(1, 20))
    n = 32 * int(rng.integers(8, 12))
    cuts = np.sort(rng.integers(0, m + 1, e))
    gl = np.diff(np.concatenate([[0], cuts])).astype(np.int64)       # counts incl. zeros, total <= m
    batch = int(rng.integers(1, m + 1))
    shared = int(rng.integers(0, batch + 1))
    x, w, gl, args = a8w8_case(rng, m=m, k=k, n=n, e=e, gl=gl, batch=batch, shared_rows=shared,
                               shared_offset=int(rng.integers(0, batch - shared + 1)),
                               bf16_scale=bool(seed % 2), bias=bool(seed % 3))
    rows = args["row_index"]
    rows[: int(gl.sum())] = rng.integers(0, batch, int(gl.sum()))
    rows[: min(3, int(gl.sum()))] = 0
    got = sim.npu_grouped_matmul_finalize_routing(x, tagged(w), gl, **args)
    assert bits_equal(got, ref_a8w8(x, w, gl, args))


# --------------------------------------------------------------------------------------------
# A8W4
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["nd", "nz_5d", "nz_tag", "offset", "cumsum"])
def test_a8w4_bitwise(variant):
    rng = np.random.default_rng(10 + len(variant))
    x, wv, w32, gl, args = a8w4_case(rng, offset=variant == "offset")
    want = ref_a8w4(x, wv, gl, args)
    if variant == "nz_5d":
        w32 = pack_int4_ref(nz_storage_ref(wv, 64))                  # [e, n/64, k/16, 16, 8] int32
    elif variant == "nz_tag":
        w32 = tagged(w32)
    if variant == "cumsum":
        got = sim.npu_grouped_matmul_finalize_routing(x, w32, np.cumsum(gl), group_list_type=0, **args)
    else:
        got = sim.npu_grouped_matmul_finalize_routing(x, w32, gl, **args)
    assert bits_equal(got, want)


def test_a8w4_fp19_switch():
    rng = np.random.default_rng(20)
    x, wv, w32, gl, args = a8w4_case(rng)
    on = sim.npu_grouped_matmul_finalize_routing(x, w32, gl, **args)
    off = sim.npu_grouped_matmul_finalize_routing(x, w32, gl, fp19=False, **args)
    with fp19_scales(False):
        off_ctx = sim.npu_grouped_matmul_finalize_routing(x, w32, gl, **args)
    assert bits_equal(on, ref_a8w4(x, wv, gl, args, fp19=True))
    assert bits_equal(off, ref_a8w4(x, wv, gl, args, fp19=False))
    assert bits_equal(off, off_ctx) and not bits_equal(on, off)


def test_a8w4_fp16_rounding_is_visible():
    """The fp16 partials are part of the contract: a reference without them differs."""
    rng = np.random.default_rng(21)
    x, wv, w32, gl, args = a8w4_case(rng)
    got = sim.npu_grouped_matmul_finalize_routing(x, w32, gl, **args)
    s = ref_decode_scale(args["scale"], True).reshape(5, -1)
    # algebraic value: logit * pertoken * (x @ W * s), computed in float64
    approx = np.zeros_like(got, dtype=np.float64)
    approx[16:20] = args["shared_input"].astype(np.float64) * 1.5
    for e, (st, en) in enumerate(ref_bounds(gl, 1)):
        for t in range(st, en):
            val = (x[t].astype(np.int64) @ wv[e].astype(np.int64)) * s[e].astype(np.float64)
            approx[args["row_index"][t]] += val * float(args["logit"][t]) * float(args["pertoken_scale"][t])
    np.testing.assert_allclose(got, approx, rtol=2e-2, atol=5e-2)   # MSD is an approximation ...
    assert not np.array_equal(got, approx.astype(F32))              # ... with fp16 partials


def test_a8w4_asymmetric_offset_matches_shifted_weight():
    """offset = antiquant_offset * scale makes the result approximate x @ (W + off_w) * s."""
    rng = np.random.default_rng(22)
    x, wv, w32, gl, args = a8w4_case(rng, offset=False)
    s = ref_decode_scale(args["scale"], True).reshape(5, -1)
    off_w = rng.integers(-3, 4, (5, 1, 256)).astype(F32)
    args["offset"] = (off_w[:, 0, :] * s).astype(F32)[:, None, :]
    got = sim.npu_grouped_matmul_finalize_routing(x, w32, gl, **args)
    assert bits_equal(got, ref_a8w4(x, wv, gl, args))
    approx = ref_a8w4(x, wv, gl, dict(args, offset=None)) * 0
    approx[16:20] = args["shared_input"].astype(F32) * F32(1.5)
    for e, (st, en) in enumerate(ref_bounds(gl, 1)):
        for t in range(st, en):
            val = (x[t].astype(np.float64) @ (wv[e] + off_w[e]).astype(np.float64)) * s[e]
            approx[args["row_index"][t]] += val * args["logit"][t] * args["pertoken_scale"][t]
    np.testing.assert_allclose(got, approx, rtol=2e-2, atol=5e-2)


# --------------------------------------------------------------------------------------------
# torch op
# --------------------------------------------------------------------------------------------

def _torch_args(args):
    out = {}
    for key, v in args.items():
        if isinstance(v, np.ndarray):
            out[key] = ascend_moe.ops._common.from_numpy(v.copy())
        else:
            out[key] = v
    return out


def test_torch_op_matches_reference_a8w8_and_a8w4():
    rng = np.random.default_rng(30)
    x, w, gl, args = a8w8_case(rng)
    wt = torch.from_numpy(w.copy())
    set_format(wt, "FRACTAL_NZ")
    y = ascend_moe.npu_grouped_matmul_finalize_routing(torch.from_numpy(x), wt, torch.from_numpy(gl),
                                                       **_torch_args(args))
    assert y.dtype == torch.float32 and bits_equal(y.numpy(), ref_a8w8(x, w, gl, args))
    x, wv, w32, gl, args = a8w4_case(rng, offset=True)
    y = ascend_moe.npu_grouped_matmul_finalize_routing(torch.from_numpy(x), torch.from_numpy(w32),
                                                       torch.from_numpy(gl), backend="sim", **_torch_args(args))
    assert bits_equal(y.numpy(), ref_a8w4(x, wv, gl, args))
    with fp19_scales(False):                              # the torch op follows the FP19 switch too
        y = ascend_moe.npu_grouped_matmul_finalize_routing(torch.from_numpy(x), torch.from_numpy(w32),
                                                           torch.from_numpy(gl), **_torch_args(args))
    assert bits_equal(y.numpy(), ref_a8w4(x, wv, gl, args, fp19=False))


def test_torch_op_rejects_bad_call():
    rng = np.random.default_rng(31)
    x, w, gl, args = a8w8_case(rng)
    args = _torch_args(args)
    args["logit"] = None
    with pytest.raises(ascend_moe.ConstraintError, match="logit=None"):
        ascend_moe.npu_grouped_matmul_finalize_routing(torch.from_numpy(x), torch.from_numpy(w),
                                                       torch.from_numpy(gl), **args)


def test_fake_kernel_shape_and_opcheck():
    from torch._subclasses.fake_tensor import FakeTensorMode
    rng = np.random.default_rng(32)
    x, wv, w32, gl, args = a8w4_case(rng, m=24, gl=(5, 0, 7, 4, 2), batch=12)
    targs = _torch_args(args)
    op = torch.ops.ascend_moe.npu_grouped_matmul_finalize_routing
    pos = (torch.from_numpy(x), torch.from_numpy(w32), torch.from_numpy(gl), targs["scale"], targs["bias"], None,
           targs["pertoken_scale"], targs["shared_input"], targs["logit"], targs["row_index"], None,
           1.5, 8, 12)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in pos]
        out = op(*fake)
        assert tuple(out.shape) == (12, 256) and out.dtype == torch.float32
    torch.library.opcheck(op, pos)
    # A8W8 with the 5-D NZ storage weight
    x, w, gl, args = a8w8_case(rng, m=24, gl=(5, 0, 7, 4, 2), batch=12)
    targs = _torch_args(args)
    pos = (torch.from_numpy(x), torch.from_numpy(nz_storage_ref(w, 32)), torch.from_numpy(gl), targs["scale"],
           targs["bias"], None, targs["pertoken_scale"], targs["shared_input"], targs["logit"],
           targs["row_index"], None, 0.37, 5, 12)
    torch.library.opcheck(op, pos)
    assert bits_equal(op(*pos).numpy(), ref_a8w8(x, w, gl, args))


def test_fake_kernel_checks_the_weights_real_format():
    """The cast weight carries FRACTAL_NZ into fake tensors; an ND 3-D int8 weight is refused at trace time
    (A8W8 needs NZ on every entry point), from its real format: nothing is assumed."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    args = lambda w, logit_dtype=torch.float32: (  # noqa: E731
        torch.empty(24, 256, dtype=torch.int8), w, torch.empty(4, dtype=torch.int64), torch.empty(4, 512), None, None,
        None, None, torch.empty(24, dtype=logit_dtype), torch.empty(24, dtype=torch.int64), None, 1.0, 0, 0)
    with FakeTensorMode():
        w_nd = torch.empty(4, 256, 512, dtype=torch.int8)
        w = ascend_moe.npu_format_cast(w_nd, 29)
        out = torch.ops.ascend_moe.npu_grouped_matmul_finalize_routing(*args(w))
        assert tuple(out.shape) == (24, 512) and out.dtype == torch.float32
        with pytest.raises(ascend_moe.ConstraintError, match="FRACTAL_NZ"):
            torch.ops.ascend_moe.npu_grouped_matmul_finalize_routing(*args(w_nd))
        with pytest.raises(ascend_moe.ConstraintError, match="gmmfr.logit"):
            torch.ops.ascend_moe.npu_grouped_matmul_finalize_routing(*args(w, torch.float16))


@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.parametrize("seed", range(3))
def test_a8w8_compiled_dequant_scatter_gives_the_reference_bits(monkeypatch, seed, chunk_rows):
    """With the compiled dequant + token-order scatter plugged in (as the torch op runs it), per group and on
    7-row accumulator pieces of groups: repeated target rows (within and across groups), an empty group and
    a shared-expert input with a NaN and infinities.  Bits equal the per-token reference of this file; a NaN
    scale leaves the work to NumPy, with the same bits."""
    from ascend_moe.kernels import impls
    from ascend_moe.sim import finalize_routing as fr
    from ascend_moe.sim import kernels as sim_kernels
    taken = []

    def spy(*a):
        ok = impls.compiled_dequant_scatter(*a)
        taken.append(ok)
        return ok

    if chunk_rows:
        monkeypatch.setattr(fr, "A8W8_ACC_BYTES", chunk_rows * 4 * 256)
    rng = np.random.default_rng(500 + seed)
    gl = np.array([12, 0, 15, 11, 10], np.int64)
    x, w, gl, args = a8w8_case(rng, m=48, k=128, n=256, gl=gl, batch=20, bias=False, shared_rows=8, shared_offset=3)
    args["row_index"][12:15] = 7                               # a row repeated inside group 2 (and elsewhere)
    shared = args["shared_input"].astype(F32)
    shared[1, 2], shared[2, 3], shared[3, 4] = np.nan, np.inf, -np.inf
    args["shared_input"] = shared.astype(ml_dtypes.bfloat16)
    with sim_kernels.use(sim_kernels.Kernels(dequant_scatter=spy)):
        got = sim.npu_grouped_matmul_finalize_routing(x, tagged(w), gl, **args)
        assert bits_equal(got, ref_a8w8(x, w, gl, args))
        pieces = sum(-(-int(c) // (chunk_rows or 10**9)) for c in gl if c)     # per group, in chunk_rows pieces
        assert all(taken) and len(taken) == pieces
        args["scale"] = args["scale"].copy()
        args["scale"][3, 5] = np.nan
        taken.clear()
        got = sim.npu_grouped_matmul_finalize_routing(x, tagged(w), gl, **args)
        assert bits_equal(got, ref_a8w8(x, w, gl, args)) and not any(taken)


@pytest.mark.parametrize("flush_denormal", [False, True])
@pytest.mark.parametrize("storage", ["nz", "tagged"])
def test_a8w8_gemm_and_epilogue_in_one_compiled_pass(monkeypatch, storage, flush_denormal):
    """The machine's kernels with int8 forced to dot_int8: the GEMM and the dequant-scatter in one compiled pass
    over FRACTAL_NZ storage read in place (and the bands of logical values tagged NZ): repeated target rows within and across groups,
    an empty group, a shared-expert input with a NaN and infinities, scales that make subnormal fp32 values (kept,
    also while torch's flush-denormal mode is on).  Bits equal the per-token reference of this file; a NaN scale
    leaves the work to the separate steps, with the same bits."""
    from ascend_moe import kernels as mk
    from ascend_moe.kernels import impls
    from ascend_moe.sim import kernels as sim_kernels
    from ascend_moe.sim import numerics as nm
    if impls._gemm is None or not impls._gemm.has_dot_int8():
        pytest.skip("no AVX512-VNNI / VBMI on this CPU: dot_int8 is never chosen")
    monkeypatch.setenv("ASCEND_MOE_KERNELS", "int8=dot_int8")
    taken = []
    fused = impls.grouped_dot_int8_scatter

    def spy(*a):
        ok = fused(*a)
        taken.append(ok)
        return ok
    monkeypatch.setattr(impls, "grouped_dot_int8_scatter", spy)
    rng = np.random.default_rng(77)
    gl = np.array([12, 0, 15, 11, 10], np.int64)
    x, w, gl, args = a8w8_case(rng, m=48, k=128, n=256, gl=gl, batch=20, bias=False, shared_rows=8, shared_offset=3)
    args["row_index"][12:15] = 7
    # group 4 alone adds into row 19, its first 16 columns with a subnormal scale: subnormal values throughout
    rows = args["row_index"]
    rows[:38][rows[:38] == 19] = 18
    rows[38:48] = 19
    args["scale"][4, :16] = np.float32(2.0 ** -149)
    shared = args["shared_input"].astype(F32)
    shared[1, 2], shared[2, 3], shared[3, 4] = np.nan, np.inf, -np.inf
    args["shared_input"] = shared.astype(ml_dtypes.bfloat16)
    weight = nm.nd_to_nz(w) if storage == "nz" else tagged(w.copy())  # 5-D storage, or logical values tagged NZ
    want = ref_a8w8(x, w, gl, args)  # computed with IEEE subnormals (the flush mode is this thread's)
    assert np.all((want[19, :16] != 0) & (np.abs(want[19, :16]) < np.finfo(F32).tiny))
    with sim_kernels.use(mk.for_call()):
        torch.set_flush_denormal(flush_denormal)
        try:
            got = sim.npu_grouped_matmul_finalize_routing(x, weight, gl, **args)
        finally:
            torch.set_flush_denormal(False)
        assert bits_equal(got, want) and taken == [True]
        args["scale"] = args["scale"].copy()
        args["scale"][3, 5] = np.nan
        taken.clear()
        got = sim.npu_grouped_matmul_finalize_routing(x, weight, gl, **args)
        assert bits_equal(got, ref_a8w8(x, w, gl, args)) and taken == [False]
