"""Every GEMM implementation the machine may choose meets its op's faithfulness contract.

* float GEMMs (each implementation forced through ``ASCEND_MOE_KERNELS``, through the public ops,
  forward and backward): every output is the round-to-nearest-even of some value within the fp32
  summation bound ``(K + 4) * 2**-24 * sum |a b|`` of the float64 product (+ bias); subnormal
  operands and products are handled as IEEE does (an instruction that flushes them is not used for
  such operands);
* exact integer GEMMs: bit-exact against int64 math on saturating patterns, random values and odd
  shapes, directly and through the A8W8 / A8W4 ops;
* the selection: measured once per machine and cached in the cache directory, forced by the
  environment variable, never a kernel that fails its contract check; measurements are replaced by
  fixed numbers here (no timing in tests);
* the weight cache: a widened weight is made once and reused while the tensor is unchanged.
"""
from __future__ import annotations

import json
import math
import time

import ml_dtypes
import numpy as np
import pytest
import torch

import ascend_moe as am
from ascend_moe import kernels as mk
from ascend_moe.kernels import impls
from ascend_moe.sim import kernels as sim_kernels
from ascend_moe.sim import quant_gemm

U32 = 2.0 ** -24
FLOAT_IMPLS = ["reference", "torch_sgemm", "torch_native", "torch_packed", "widen_fma", "dot_bf16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _native_ok(dtype_name):
    return dtype_name != "fp32" and mk._verified(f"{dtype_name}.wide", "torch_native")


def _packed_ok(dtype_name):
    return dtype_name != "fp16" and mk._verified(f"{dtype_name}.wide", "torch_packed")


def _skip_unless_eligible(impl, dtype_name):
    if impl == "dot_bf16" and dtype_name != "bf16":
        pytest.skip("dot_bf16 is a bf16 kernel")
    if impl == "dot_bf16" and not mk._verified("bf16.wide", "dot_bf16"):
        pytest.skip("dot_bf16 needs AVX512-BF16 (or does not meet the bf16 contract on this machine)")
    if impl == "widen_fma" and not mk._verified(f"{dtype_name}.wide", "widen_fma"):
        pytest.skip(f"widen_fma does not meet the {dtype_name} contract on this machine (or is not built)")
    if impl == "torch_native" and dtype_name == "fp32":
        pytest.skip("torch_native is the half-precision kernel (fp32 runs torch_sgemm or the reference)")
    if impl == "torch_packed" and dtype_name == "fp16":
        pytest.skip("torch_packed covers bf16 and fp32")
    if (impl == "torch_native" and not _native_ok(dtype_name)) or (impl == "torch_packed" and not _packed_ok(dtype_name)):
        pytest.skip(f"{impl} does not meet the {dtype_name} contract on this machine: never chosen")


def force(monkeypatch, spec):
    monkeypatch.setenv("ASCEND_MOE_KERNELS", spec)


# ----------------------------------------------------------------------------------------------
# float GEMM contract, per implementation, through the public ops
# ----------------------------------------------------------------------------------------------

def assert_round_once_within_fp32_bound(out, ref, bound):
    lo = (ref - bound).to(out.dtype).double()
    hi = (ref + bound).to(out.dtype).double()
    o = out.double()
    bad = ~((lo <= o) & (o <= hi))
    assert not bad.any(), f"{int(bad.sum())} outside; out={o[bad][:3].tolist()} ref={ref[bad][:3].tolist()}"


def ref_gmm(x, w, counts, bias=None):
    x64, w64 = x.double(), w.double()
    ref = torch.zeros(x.shape[0], w.shape[-1], dtype=torch.float64)
    bound = torch.zeros_like(ref)
    s = 0
    for e, c in enumerate(counts):
        acc, mag = x64[s:s + c] @ w64[e], x64[s:s + c].abs() @ w64[e].abs()
        if bias is not None:
            acc, mag = acc + bias[e].double(), mag + bias[e].double().abs()
        ref[s:s + c], bound[s:s + c] = acc, (x.shape[1] + 4) * U32 * mag
        s += c
    return ref, bound


@pytest.mark.parametrize("impl", FLOAT_IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("rows", [40, 5])  # wide and skinny shape classes
def test_float_impl_forward_backward_contract(monkeypatch, impl, dtype_name, rows):
    """Two forward + backward calls with the same tensors: the second may use kept forms of the
    weight (widened copies, packed weights for the forward's w and the backward's w^T)."""
    _skip_unless_eligible(impl, dtype_name)
    force(monkeypatch, f"{dtype_name}={impl}")
    dt = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(rows)
    e, k, n = 3, 300, 24
    counts = [rows // 2, 0, rows - rows // 2]
    x = torch.randn(rows, k, generator=g).to(dt).requires_grad_()
    w = torch.randn(e, k, n, generator=g).to(dt).requires_grad_()
    dy = torch.randn(rows, n, generator=g).to(dt)
    for _ in range(2):
        x.grad = w.grad = None
        y = am.npu_gmm(x, w, group_list=list(np.cumsum(counts)))
        assert_round_once_within_fp32_bound(y, *ref_gmm(x.detach(), w.detach(), counts))
        y.backward(dy)
        # grad_x = dy @ w^T per group; grad_w[e] = x_e^T @ dy_e (empty group: zero)
        ref_dx, b_dx = ref_gmm(dy, w.detach().transpose(-1, -2), counts)
        assert_round_once_within_fp32_bound(x.grad, ref_dx, b_dx)
        s = 0
        for i, c in enumerate(counts):
            xs, ds = x.detach()[s:s + c].double(), dy[s:s + c].double()
            ref, bound = xs.t() @ ds, (c + 4) * U32 * (xs.abs().t() @ ds.abs())
            assert_round_once_within_fp32_bound(w.grad[i], ref, bound)
            s += c


@pytest.mark.parametrize("impl", FLOAT_IMPLS)
def test_float_impl_with_bias_rounds_once_after_the_fp32_bias_add(monkeypatch, impl):
    _skip_unless_eligible(impl, "bf16")
    force(monkeypatch, f"bf16={impl}")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 64, generator=g).bfloat16()
    w = torch.randn(2, 64, 8, generator=g).bfloat16()
    bias = torch.randn(2, 8, generator=g) * 100
    y = am.npu_gmm(x, w, bias=bias, group_list=[20, 32])
    assert_round_once_within_fp32_bound(y, *ref_gmm(x, w, [20, 12], bias))


def _bf16(v):
    return torch.tensor(v, dtype=torch.float32).bfloat16()


@pytest.mark.parametrize("impl", FLOAT_IMPLS)
def test_bf16_subnormal_products_and_inputs_are_not_flushed(monkeypatch, impl):
    """2**-63 * 2**-64 = 2**-127 is an fp32 subnormal: two of them sum to 2**-126.  A flushing
    dot-product instruction would give 0.  A subnormal bf16 input (2**-130) times 2**10 is 2**-120."""
    _skip_unless_eligible(impl, "bf16")
    force(monkeypatch, f"bf16={impl}")
    x = torch.stack([_bf16([2.0 ** -63, 2.0 ** -63] + [0.0] * 30), _bf16([2.0 ** -130] + [0.0] * 31)])
    w = torch.zeros(1, 32, 2)
    w[0, 0, 0] = w[0, 1, 0] = 2.0 ** -64
    w[0, 0, 1] = 2.0 ** 10
    w = w.bfloat16()
    for _ in range(3):  # a reused weight may be kept packed from the second call on
        y = am.npu_gmm(x, w, group_list=[2]).float()
        assert y[0, 0].item() == 2.0 ** -126
        assert y[1, 1].item() == 2.0 ** -120
        assert y[1, 0].item() == 0.0  # 2**-194 is below the bf16 range: zero in IEEE too


@pytest.mark.parametrize("impl", ["torch_native", "dot_bf16"])
def test_bf16_subnormals_kept_in_the_tall_backward_of_a_k_contiguous_weight(monkeypatch, impl):
    """bf16.tall_t's choice (the backward's dy @ w^T at 300 rows): dy's 2**-63 times w's 2**-64, twice, sums to the
    fp32 subnormal 2**-126, which a flushing instruction would give as 0; the other rows' zeros stay zeros."""
    _skip_unless_eligible(impl, "bf16")
    if impl == "torch_native" and not mk._verified("bf16.tall_t", "torch_native"):
        pytest.skip("torch's bf16 matmul of a k-contiguous weight does not meet the contract here")
    force(monkeypatch, f"bf16=widen_fma,bf16.tall_t={impl}" if mk._verified("bf16.wide", "widen_fma")
          else f"bf16.tall_t={impl}")
    x = torch.zeros(300, 4, dtype=torch.bfloat16, requires_grad=True)
    w = torch.zeros(2, 4, 32)
    w[0, 1, 0] = w[0, 1, 1] = 2.0 ** -64
    w = w.bfloat16().requires_grad_()
    dy = torch.zeros(300, 32)
    dy[7, 0] = dy[7, 1] = 2.0 ** -63
    am.npu_gmm(x, w, group_list=[300, 300]).backward(dy.bfloat16())  # the second expert: no rows
    want = torch.zeros(300, 4)
    want[7, 1] = 2.0 ** -126
    assert torch.equal(x.grad.float(), want)


@pytest.mark.parametrize("impl", ["torch_sgemm", "torch_packed", "widen_fma"])
def test_fp32_subnormal_products_and_inputs_are_not_flushed(monkeypatch, impl):
    """fp32: 2**-70 * 2**-70 = 2**-140 (subnormal) twice sums to 2**-139; a subnormal input 1e-40
    times 1 stays 1e-40 (a flush-to-zero mode would give 0)."""
    _skip_unless_eligible(impl, "fp32")
    force(monkeypatch, f"fp32={impl}")
    x = torch.zeros(20, 16)
    x[:, 0] = x[:, 1] = 2.0 ** -70
    x[1, 2] = 1e-40
    w = torch.zeros(1, 16, 3)
    w[0, 0, 0] = w[0, 1, 0] = 2.0 ** -70
    w[0, 2, 1] = 1.0
    for _ in range(3):
        y = am.npu_gmm(x, w, group_list=[20])
        assert y[0, 0].item() == 2.0 ** -139 and y[1, 1].item() == torch.tensor(1e-40).item() != 0.0


def test_bf16_flush_guard_rejects_only_what_could_flush():
    t = lambda *v: np.array(v, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(1, -1)  # noqa: E731
    assert impls.bf16_flush_safe(t(1.0, -3.0, 0.0), t(2.0 ** -100, 0.0, 5.0))   # quantum 2**-7 * 2**-107
    assert not impls.bf16_flush_safe(t(2.0 ** -63), t(2.0 ** -64))             # product subnormal
    assert not impls.bf16_flush_safe(t(2.0 ** -130), t(1.0))                   # subnormal input
    assert impls.bf16_flush_safe(t(0.0, 0.0), t(2.0 ** -130))                  # all-zero operand: nothing to flush
    assert impls.bf16_flush_safe(t(2.0 ** -56), t(2.0 ** -56))                 # quanta 2**-63: q = 2**-126
    assert not impls.bf16_flush_safe(t(2.0 ** -57), t(2.0 ** -56))             # q = 2**-127
    big = np.ones((300, 700), np.float32)
    big[123, 456] = -(2.0 ** -100)                                               # found past the first chunk
    big = big.astype(ml_dtypes.bfloat16)
    assert not impls.bf16_flush_safe(big, t(2.0 ** -40)) and impls.bf16_flush_safe(big, t(2.0 ** -1))
    assert not impls.bf16_flush_safe(big.T, t(2.0 ** -40))


@pytest.mark.parametrize("size", ["large", "small"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_min_exponent_scan_over_chunks_and_layouts(layout, size, monkeypatch):
    """The guard's scan (NumPy, chunk by chunk) against a plain reference: the smallest biased
    exponent of the nonzero values, found past the first chunk, with negative zeros and subnormals."""
    # large: a weight-sized array (past 48 chunks); small: past the first three chunks
    n = 5 * (3 * (1 << 20) // 5 + 2) if size == "large" else 5 * (3 * impls._CHUNK // 5 + 2)
    v = np.full(n, 3.0, np.float32)
    v[::7] = -0.0
    v[-2] = -(2.0 ** -120)
    a = v.astype(ml_dtypes.bfloat16).reshape(-1, 5)
    a = {"C": a, "F": np.asfortranarray(a), "strided": a[::2]}[layout]

    def reference(arr):
        mags = np.abs(arr.astype(np.float64)).ravel()
        mags = mags[mags > 0]
        return None if mags.size == 0 else max(0, int(np.floor(np.log2(mags.min()))) + 127)
    native = impls._scan
    assert impls._scan is not None, "the compiled scan (ascend_moe.kernels._scan) was not built"
    for compiled in (True, False):   # the compiled scan, then the NumPy one of an unbuilt checkout
        monkeypatch.setattr(impls, "_scan", native if compiled else None)
        assert impls.min_nonzero_bf16_exponent(a) == reference(a), compiled
        a2 = a.copy()
        a2[a2.shape[0] - 1, 4] = 2.0 ** -130  # subnormal: exponent 0
        assert impls.min_nonzero_bf16_exponent(a2) == 0, compiled
        assert impls.min_nonzero_bf16_exponent(np.zeros((4, 3), ml_dtypes.bfloat16)) is None, compiled


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_compiled_scan_finds_each_magnitude_at_any_position(offset):
    """Every magnitude class at every position of odd-length, unaligned views (the vector loop's head and
    tail): the smallest nonzero biased exponent, against integer bit arithmetic written here."""
    native = impls._scan
    assert native is not None
    rng = np.random.default_rng(5)
    for n in (1, 2, 15, 33, 64, 257):
        base = rng.integers(0x3F80, 0x4100, size=n + offset, dtype=np.uint16)  # normal values, exponents 127-130
        base[rng.random(n + offset) < 0.3] = 0x8000                              # negative zeros
        view = base[offset:]
        for pos in {0, n // 2, n - 1}:
            for bits in (0x0001, 0x807F, 0x0080, 0x7F80, 0xFFC1, 0x3F00):  # subnormals, min normal, inf, NaN
                arr = view.copy()
                arr[pos] = bits
                mags = [int(v) & 0x7FFF for v in arr if int(v) & 0x7FFF]
                want = None if not mags else min(mags) >> 7
                got = native.min_magnitude_minus_one(arr)
                assert (None if got == 0xFFFF else (got + 1) >> 7) == want, (n, offset, pos, hex(bits))
    assert native.min_magnitude_minus_one(np.zeros(7, np.uint16)) == 0xFFFF
    assert native.min_magnitude_minus_one(np.array([0x8000, 0x0000], np.uint16)) == 0xFFFF
    with pytest.raises(ValueError, match="contiguous 1-D buffer of 2-byte elements"):
        native.min_magnitude_minus_one(np.zeros(4, np.uint16)[::2])
    with pytest.raises(ValueError, match="2-byte elements"):
        native.min_magnitude_minus_one(np.zeros(4, np.float32))


def test_native_contract_check_rejects_a_half_precision_accumulator(monkeypatch):
    """A matmul that accumulates in bf16 fails the machine check (so it is never eligible)."""
    def bf16_accumulating_mm(a, b, **kw):
        acc = torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)
        for i in range(a.shape[1]):
            acc = (acc.float() + a[:, i:i + 1].float() * b[i:i + 1].float()).to(a.dtype)
        return acc
    monkeypatch.setattr(impls.torch, "mm", bf16_accumulating_mm)
    assert not impls.native_contract_holds(torch.bfloat16)


def test_k_contiguous_native_contract_check_rejects_a_half_precision_accumulator(monkeypatch):
    """The check of torch's bf16 matmul on a k-contiguous weight (bf16.tall_t) fails for a matmul that accumulates
    in bf16, and holds for an fp32 accumulation rounded once (an independent float64 product rounded to fp32)."""
    def bf16_accumulating_mm(a, b, **kw):
        acc = torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)
        for i in range(0, a.shape[1], 64):
            acc = (acc.float() + a[:, i:i + 64].float() @ b[i:i + 64].float()).to(a.dtype)
        return acc
    real_mm = torch.mm
    monkeypatch.setattr(impls.torch, "mm", bf16_accumulating_mm)
    assert not impls.native_contract_holds_k_contiguous()
    monkeypatch.setattr(impls.torch, "mm", lambda a, b, **kw: (a.double() @ b.double()).float().to(a.dtype))
    assert impls.native_contract_holds_k_contiguous()
    monkeypatch.setattr(impls.torch, "mm", real_mm)


@pytest.mark.parametrize("impl", ["torch_sgemm", "torch_packed"])
def test_fp32_stays_fp32_when_torch_is_set_to_reduced_precision(monkeypatch, impl):
    """torch.set_float32_matmul_precision("medium") lets oneDNN compute fp32 GEMMs in bf16: the fp32
    kernels then leave the call to the reference path, and the result stays within the fp32 bound
    (a bf16 product would miss it by far)."""
    _skip_unless_eligible(impl, "fp32")
    force(monkeypatch, f"fp32={impl}")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(40, 512, generator=g)
    w = torch.randn(2, 512, 24, generator=g)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        for _ in range(3):
            y = am.npu_gmm(x, w, group_list=[25, 40])
            assert_round_once_within_fp32_bound(y, *ref_gmm(x, w, [25, 15]))
    finally:
        torch.set_float32_matmul_precision(before)


def test_packed_contract_check_rejects_reduced_precision(monkeypatch):
    """A packed GEMM that rounds its fp32 operands to bf16 (a reduced-precision fp32 mode) fails the
    machine check, as does one that accumulates bf16 in bf16."""
    real = impls.packed_mm_into

    def bf16_operands(tout, ta, packed):
        real(tout, ta.bfloat16().float(), packed)
    monkeypatch.setattr(impls, "packed_mm_into", bf16_operands)
    assert not impls.packed_contract_holds(torch.float32)

    def bf16_accumulator(tout, ta, packed):
        bmat = torch.empty(ta.shape[1], tout.shape[1], dtype=ta.dtype)
        real(bmat, torch.eye(ta.shape[1], dtype=ta.dtype), packed)  # b back from its packed form (exact)
        acc = torch.zeros(tout.shape, dtype=torch.bfloat16)
        for i in range(ta.shape[1]):
            acc = (acc.float() + ta[:, i:i + 1].float() * bmat[i:i + 1].float()).bfloat16()
        tout.copy_(acc)
    monkeypatch.setattr(impls, "packed_mm_into", bf16_accumulator)
    assert not impls.packed_contract_holds(torch.bfloat16)


@pytest.mark.parametrize("check", ["content", "version"])
def test_packed_weight_made_on_second_unchanged_use_and_dropped_after_a_change(monkeypatch, check):
    """A weight is packed only when a call meets it again unchanged (same version); an in-place
    update makes the next call use the plain path with the new values, and the one after packs the
    new values (all checked against float64 references)."""
    if not _packed_ok("fp32"):
        pytest.skip("torch_packed not eligible on this machine")
    monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", check)
    force(monkeypatch, "fp32=torch_packed")
    mk.WEIGHT_CACHE.clear()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 64, generator=g)
    w = torch.randn(2, 64, 16, generator=g)
    gl, counts = [30, 48], [30, 18]
    packs = []
    for step in range(5):
        if step == 3:
            w.mul_(-0.5)  # in place: the version counter moves
        before = mk.WEIGHT_CACHE.conversions
        y = am.npu_gmm(x, w, group_list=gl)
        packs.append(mk.WEIGHT_CACHE.conversions - before)
        assert_round_once_within_fp32_bound(y, *ref_gmm(x, w, counts))
    assert packs == [0, 2, 0, 0, 2]


@pytest.mark.parametrize("check", ["content", "version"])
def test_packed_weights_never_evict_each_other(monkeypatch, check):
    """A budget with room for one of two experts' packed weights: one is packed once and kept, the
    other runs the plain path on every call (no repacking churn), results within the fp32 bound.  Under
    the content check an fp32 weight larger than the budget is not packed at all: proving it unchanged
    would cost a digest pass over all of it for the part that fits."""
    if not _packed_ok("fp32"):
        pytest.skip("torch_packed not eligible on this machine")
    monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", check)
    force(monkeypatch, "fp32=torch_packed")
    mk.WEIGHT_CACHE.clear()
    monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_MB", str(6000 / 2 ** 20))  # one 64x16 fp32 view is 4096 bytes
    g = torch.Generator().manual_seed(4)
    x = torch.randn(48, 64, generator=g)
    w = torch.randn(2, 64, 16, generator=g)
    packs = []
    for _ in range(5):
        before = mk.WEIGHT_CACHE.conversions
        y = am.npu_gmm(x, w, group_list=[30, 48])
        packs.append(mk.WEIGHT_CACHE.conversions - before)
        assert_round_once_within_fp32_bound(y, *ref_gmm(x, w, [30, 18]))
    assert packs == ([0, 1, 0, 0, 0] if check == "version" else [0, 0, 0, 0, 0])
    mk.WEIGHT_CACHE.clear()


def test_fast_widening_equals_numpy_on_every_bf16_and_fp16_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    for dt in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
        src = bits.view(np.int16).view(dt)
        mine, ref = np.empty(src.shape, np.float32), src.astype(np.float32)
        impls.fast_copy_cast(mine, src)
        same = (mine.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(mine) & np.isnan(ref))
        assert same.all(), f"{dt}: {int((~same).sum())} patterns differ"


# ----------------------------------------------------------------------------------------------
# the compiled widen-FMA GEMM (ascend_moe.kernels._gemm), directly
# ----------------------------------------------------------------------------------------------

def _fp32_in_k_order(a16, b16):
    """Plain fp32 accumulation in k order: acc = fp32(acc + fp32(a) * fp32(b)) one k at a time (each
    product of two bf16 / fp16 values is exact in fp32, so each step rounds once), then RNE to the
    operands' dtype by ml_dtypes / NumPy."""
    a32, b32 = a16.astype(np.float32), b16.astype(np.float32)
    acc = np.zeros((a16.shape[0], b16.shape[1]), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for k in range(a16.shape[1]):
            acc = (acc + a32[:, k:k + 1] * b32[k:k + 1, :]).astype(np.float32)
    return acc.astype(a16.dtype)


def _gemm_module():
    if impls._gemm is None:
        pytest.skip("the compiled GEMM is not built")
    return impls._gemm


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [141, 300])
def test_compiled_widen_fma_is_fp32_accumulation_in_k_order_bit_for_bit(dtype, threads, n):
    """Rows 0-19 per group (the 8 / 4 / 2 / 1-row tiles), 141 columns (four 32-column strips and 13
    after them) or 300 (each group in two column halves when threads share the groups), K = 600 (blocks
    of 64 and a partial one), an empty group, a weight view whose rows are longer than N, groups visited
    in any order and one expert used twice; large enough (3.6M multiply-adds) that more than one thread
    runs."""
    g = np.random.default_rng(11)
    rows = [3, 0, 19, 8, 1, 12]
    experts = [2, 0, 1, 3, 2, 0]
    t, k, e = sum(rows), 600, 4
    a = (g.standard_normal((t, k)) * 2).astype(dtype)
    full = (g.standard_normal((e, k, n + 9)) * 2).astype(dtype)
    b = full[:, :, 5:5 + n]  # rows of n + 9 elements, columns contiguous
    ends = np.cumsum(rows)
    groups = np.array([(x, s - r, s) for x, s, r in zip(experts, ends, rows)], dtype=np.int64)
    out = np.full((t, n), np.nan, dtype=dtype)
    _gemm_module().grouped_widen_fma(out.view(np.uint16), a.view(np.uint16), b.view(np.uint16), groups,
                                     dtype == np.float16, threads)
    for ex, s, f in groups:
        want = _fp32_in_k_order(a[s:f], b[ex])
        assert np.array_equal(out[s:f].view(np.uint16), want.view(np.uint16)), (ex, s, f)


def _widen_fma_case(seed: int = 11):
    """Groups of 0-19 rows, one expert used twice, K = 600, N = 141: 3.6M multiply-adds, so threads run."""
    g = np.random.default_rng(seed)
    rows, experts = [3, 0, 19, 8, 1, 12], [2, 0, 1, 3, 2, 0]
    a = (g.standard_normal((sum(rows), 600)) * 2).astype(ml_dtypes.bfloat16)
    b = (g.standard_normal((4, 600, 141)) * 2).astype(ml_dtypes.bfloat16)
    ends = np.cumsum(rows)
    groups = np.array([(x, s - r, s) for x, s, r in zip(experts, ends, rows)], dtype=np.int64)
    return a, b, groups


@pytest.mark.skipif(impls.torch_openmp_library() is None, reason="torch's parallel backend here is not OpenMP")
@pytest.mark.parametrize("shared", [True, False])
def test_compiled_kernels_on_torch_openmp_threads_or_their_own_give_the_reference_bits(shared):
    """The compiled helpers run their parallel work on torch's OpenMP team by default (bound at import), or on
    threads of their own: each way, every row is computed, in the reference order."""
    mod = _gemm_module()
    assert all(m.openmp_bound() for m in impls.COMPILED_MODULES)  # the default
    try:
        assert impls.share_torch_threads(shared) is shared
        assert all(m.openmp_bound() is shared for m in impls.COMPILED_MODULES)
        a, b, groups = _widen_fma_case()
        torch.mm(torch.ones(64, 64), torch.ones(64, 64))  # torch's workers spinning as the call starts
        for threads in (2, 3, 8):
            out = np.full((a.shape[0], b.shape[2]), np.nan, dtype=a.dtype)
            mod.grouped_widen_fma(out.view(np.uint16), a.view(np.uint16), b.view(np.uint16), groups, False, threads)
            for ex, s, f in groups:
                assert np.array_equal(out[s:f].view(np.uint16), _fp32_in_k_order(a[s:f], b[ex]).view(np.uint16))
    finally:
        impls.share_torch_threads(True)


_FORK_CHILD = """
import os, sys
import numpy as np
from ascend_moe.kernels import impls
sys.path.insert(0, {tests!r})
from test_kernels import _widen_fma_case, _fp32_in_k_order
a, b, groups = _widen_fma_case()

def run():
    out = np.zeros((a.shape[0], b.shape[2]), dtype=a.dtype)
    impls._gemm.grouped_widen_fma(out.view(np.uint16), a.view(np.uint16), b.view(np.uint16), groups, False, 2)
    return all(np.array_equal(out[s:f].view(np.uint16), _fp32_in_k_order(a[s:f], b[ex]).view(np.uint16))
               for ex, s, f in groups)

assert impls._gemm.openmp_bound() and run()  # the parent's team has run
pid = os.fork()
if pid == 0:  # the child: an OpenMP pool does not survive fork(), so threads of its own
    os._exit(0 if (not impls._gemm.openmp_bound()) and run() else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), "parent again", run())
"""


@pytest.mark.skipif(impls.torch_openmp_library() is None or not hasattr(__import__("os"), "fork"),
                    reason="needs fork() and torch's OpenMP backend")
def test_compiled_kernels_in_a_forked_child_run_on_threads_of_their_own():
    """After fork() the parent's OpenMP team does not exist in the child (a region there would wait for it
    forever): the child's calls start threads of their own and still give the reference bits."""
    import os
    import subprocess
    import sys
    tests = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", _FORK_CHILD.format(tests=tests)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "child 0 parent again True", done.stdout + done.stderr


def test_sharing_torch_threads_can_be_switched_off_by_the_environment():
    import os
    import subprocess
    import sys
    env = dict(os.environ, ASCEND_MOE_SHARE_TORCH_THREADS="0")
    code = ("from ascend_moe.kernels import impls; "
            "print([m.openmp_bound() for m in impls.COMPILED_MODULES])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "True" not in done.stdout and "False" in done.stdout, done.stdout


def _fp32_in_16_lanes_then_tree(a16, bt16):
    """The transposed-weight order: lane l sums the products of k = l, l + 16, ... (below K rounded down to
    16) in k order in fp32; lanes i and i + 8 are added, then i and i + 4, then (0 + 2) + (1 + 3); the
    last K mod 16 products are added one at a time; RNE to the operands' dtype."""
    a32, b32 = a16.astype(np.float32), bt16.astype(np.float32)
    k = a16.shape[1]
    k16 = k - k % 16
    lanes = np.zeros((16, a16.shape[0], bt16.shape[0]), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for k0 in range(0, k16, 16):
            for lane in range(16):
                lanes[lane] = (lanes[lane] + np.outer(a32[:, k0 + lane], b32[:, k0 + lane])).astype(np.float32)
        h8 = lanes[:8] + lanes[8:]
        h4 = h8[:4] + h8[4:]
        total = (h4[0] + h4[2]) + (h4[1] + h4[3])
        for kk in range(k16, k):
            total = (total + np.outer(a32[:, kk], b32[:, kk])).astype(np.float32)
    return total.astype(a16.dtype)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_widen_fma_of_a_transposed_weight_in_its_lane_order_bit_for_bit(dtype, threads):
    """A weight whose k is contiguous (the backward's ``dy @ w^T``): rows 0-11 per group (the 4 / 2 /
    1-row tiles), 102 output columns (4-column tiles, the rest one by one, blocks of 64), K = 1043 (65
    16-lane steps and 3 after them); 2.6M multiply-adds, so more than one thread runs."""
    g = np.random.default_rng(12)
    rows = [5, 0, 11, 1, 7]
    experts = [1, 2, 0, 1, 2]
    t, k, n, e = sum(rows), 1043, 102, 3
    a = (g.standard_normal((t, k)) * 2).astype(dtype)
    w = (g.standard_normal((e, n, k + 4)) * 2).astype(dtype)[:, :, 2:2 + k]  # w[e] is [N, K], rows padded
    ends = np.cumsum(rows)
    groups = np.array([(x, s - r, s) for x, s, r in zip(experts, ends, rows)], dtype=np.int64)
    out = np.full((t, n), np.nan, dtype=dtype)
    bt = w.transpose(0, 2, 1)  # [E, K, N] with K contiguous
    _gemm_module().grouped_widen_fma(out.view(np.uint16), a.view(np.uint16), bt.view(np.uint16), groups,
                                     dtype == np.float16, threads)
    for ex, s, f in groups:
        want = _fp32_in_16_lanes_then_tree(a[s:f], w[ex])
        assert np.array_equal(out[s:f].view(np.uint16), want.view(np.uint16)), (ex, s, f)


def _assert_fp32_accumulation_within_bound(out, a, b):
    """Every output within the fp32 summation bound of the exact sum: |out - a @ b| <= (K + 4) u |a| @ |b|
    (float64 products of fp32 values are exact; u = 2**-24)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    err = np.abs(out.astype(np.float64) - a64 @ b64)
    assert np.all(err <= (a.shape[1] + 4) * U32 * (np.abs(a64) @ np.abs(b64))), float(err.max())


@pytest.mark.parametrize("transposed", [False, True])
def test_compiled_fma_fp32_is_fp32_accumulation_within_the_bound_and_thread_independent(transposed):
    """fp32 operands in the widen-FMA loops: the 8 / 4 / 2 / 1-row tiles, 141 columns (strips and the 13
    after them), K = 600 (blocks of 64 and a partial one; 37 16-lane steps and 8 after), an empty group, a
    weight view with padded rows, groups in any order and one expert twice.  Each output is within the fp32
    summation bound, and the bits do not depend on the number of threads (a fixed order per output)."""
    g = np.random.default_rng(21)
    rows = [3, 0, 19, 8, 1, 12]
    experts = [2, 0, 1, 3, 2, 0]
    t, k, n, e = sum(rows), 600, 141, 4
    a = (g.standard_normal((t, k)) * 2).astype(np.float32)
    if transposed:
        w = (g.standard_normal((e, n, k + 4)) * 2).astype(np.float32)[:, :, 2:2 + k]
        b = w.transpose(0, 2, 1)  # [E, K, N] with K contiguous
    else:
        b = (g.standard_normal((e, k, n + 9)) * 2).astype(np.float32)[:, :, 5:5 + n]
    ends = np.cumsum(rows)
    groups = np.array([(x, s - r, s) for x, s, r in zip(experts, ends, rows)], dtype=np.int64)
    outs = []
    for threads in (1, 2, 3):
        out = np.full((t, n), np.nan, dtype=np.float32)
        _gemm_module().grouped_fma_fp32(out, a, b, groups, threads)
        for ex, s, f in groups:
            _assert_fp32_accumulation_within_bound(out[s:f], a[s:f], b[ex])
        outs.append(out)
    assert np.array_equal(outs[0].view(np.int32), outs[1].view(np.int32))
    assert np.array_equal(outs[0].view(np.int32), outs[2].view(np.int32))


def test_compiled_fma_fp32_keeps_subnormals_with_flush_mode_on():
    """2**-70 * 2**-70 = 2**-140 (subnormal) twice sums to 2**-139; a subnormal input 1e-40 times 1 stays."""
    a = np.zeros((2, 16), dtype=np.float32)
    a[0, 0] = a[0, 1] = 2.0 ** -70
    a[1, 2] = 1e-40
    b = np.zeros((1, 16, 3), dtype=np.float32)
    b[0, 0, 0] = b[0, 1, 0] = 2.0 ** -70
    b[0, 2, 1] = 1.0
    out = np.empty((2, 3), dtype=np.float32)
    try:
        torch.set_flush_denormal(True)
        _gemm_module().grouped_fma_fp32(out, a, b, np.array([[0, 0, 2]], dtype=np.int64), 2)
    finally:
        torch.set_flush_denormal(False)
    assert out[0, 0] == np.float32(2.0 ** -139) and out[1, 1] == np.float32(1e-40) != 0


def test_compiled_fma_fp32_refuses_other_element_sizes():
    mod = _gemm_module()
    ok = np.array([[0, 0, 4]], dtype=np.int64)
    with pytest.raises(ValueError, match="4-byte"):
        mod.grouped_fma_fp32(np.zeros((4, 5), np.float32), np.zeros((4, 8), np.uint16),
                             np.zeros((1, 8, 5), np.float32), ok, 1)
    with pytest.raises(ValueError, match="4-byte"):
        mod.grouped_fma_fp32(np.zeros((4, 5), np.float32), np.zeros((4, 8), np.float32),
                             np.zeros((1, 8, 5), np.uint16), ok, 1)


def _ksplit_groups(rows, outputs):
    ends = np.cumsum(rows)
    return np.array([(e, s - r, s) for e, s, r in zip(outputs, ends, rows)], dtype=np.int64)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_fma_fp32_k_split_sums_exactly_what_integer_math_sums(threads):
    """The fp32 K-split product (the weight gradient ``x[s:t]^T @ dy[s:t]``) on small integers, whose every partial
    sum is exact in fp32, so each output must equal the integer sum: 0-600 tokens per group (more than one
    128-token block and one 512-token panel copy, odd counts), M = 263 (three 128-row units, the last panel's 7
    rows in 4 / 2 / 1-row tiles), N = 300 (a second 256-column band with a full strip and 12 columns after it),
    outputs written in any order; an empty group writes +0; an output no group names is left as it was."""
    mod = _gemm_module()
    g = np.random.default_rng(31)
    rows, outputs = [5, 0, 600, 1, 40, 129], [3, 0, 1, 6, 2, 4]
    t, m, n = sum(rows), 263, 300
    x = g.integers(-7, 8, (t, m))
    y = g.integers(-7, 8, (t, n))
    groups = _ksplit_groups(rows, outputs)
    out = np.full((7, m, n), np.nan, dtype=np.float32)
    mod.grouped_fma_fp32_ksplit(out, x.astype(np.float32), y.astype(np.float32), groups, threads)
    for e, s, f in groups:
        want = np.zeros((m, n), dtype=np.int64)
        for tok in range(s, f):  # the sum over the group's tokens, one outer product at a time
            want += np.outer(x[tok], y[tok])
        assert np.array_equal(out[e], want.astype(np.float32)), e
        if s == f:
            assert not np.signbit(out[e]).any()
    assert np.isnan(out[5]).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_fma_fp32_k_split_is_fp32_accumulation_within_the_bound_and_thread_independent(threads):
    """Random fp32 operands, including a group of one token, M = 1030 (eight full 128-row units and a partial
    one), N = 520: every output within the fp32 summation bound of the exact sum, and the same bits on 1, 2 and
    3 threads (each output's sum in token order whatever the units' order)."""
    mod = _gemm_module()
    g = np.random.default_rng(32)
    rows, outputs = [70, 1, 300], [1, 0, 2]
    t, m, n = sum(rows), 1030, 520
    x = (g.standard_normal((t, m)) * 2).astype(np.float32)
    y = g.standard_normal((t, n)).astype(np.float32)
    groups = _ksplit_groups(rows, outputs)
    out = np.full((3, m, n), np.nan, dtype=np.float32)
    mod.grouped_fma_fp32_ksplit(out, x, y, groups, threads)
    for e, s, f in groups:
        _assert_fp32_accumulation_within_bound(out[e], x[s:f].T, y[s:f])
    again = np.full_like(out, np.nan)
    mod.grouped_fma_fp32_ksplit(again, x, y, groups, 3)
    assert np.array_equal(out.view(np.int32), again.view(np.int32))


def test_compiled_fma_fp32_k_split_keeps_subnormals_with_flush_mode_on():
    """2**-70 * 2**-70 = 2**-140 (subnormal) twice sums to 2**-139; a subnormal input 1e-40 times 1 stays."""
    x = np.zeros((3, 2), dtype=np.float32)  # tokens x columns: x^T = [[2^-70, 2^-70, 0], [0, 0, 1e-40]]
    x[0, 0] = x[1, 0] = 2.0 ** -70
    x[2, 1] = 1e-40
    y = np.zeros((3, 33), dtype=np.float32)
    y[0, 0] = y[1, 0] = 2.0 ** -70
    y[2, 32] = 1.0  # in the columns after the first strip
    out = np.empty((1, 2, 33), dtype=np.float32)
    try:
        torch.set_flush_denormal(True)
        _gemm_module().grouped_fma_fp32_ksplit(out, x, y, np.array([[0, 0, 3]], dtype=np.int64), 2)
    finally:
        torch.set_flush_denormal(False)
    assert out[0, 0, 0] == np.float32(2.0 ** -139) and out[0, 1, 32] == np.float32(1e-40) != 0


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_compiled_widen_fma_keeps_subnormals_with_flush_mode_on_and_rounds_nan_inf(dtype):
    bf16 = dtype == ml_dtypes.bfloat16
    tiny, sub = (2.0 ** -63, 2.0 ** -130) if bf16 else (2.0 ** -12, 2.0 ** -24)
    a = np.array([[tiny, tiny, 0, 0], [sub, 0, 0, 0], [np.inf, 1, 0, 0], [-np.nan, 0, 0, 0]], dtype=dtype)
    b = np.zeros((1, 4, 3), dtype=dtype)
    b[0, 0, 0] = b[0, 1, 0] = (2.0 ** -127 if bf16 else 2.0 ** -25) / tiny
    b[0, 0, 1] = 16.0
    b[0, 1, 2] = 1.0
    want = _fp32_in_k_order(a, b[0])   # computed while no flush mode is on
    assert float(want[0, 0]) == (2.0 ** -126 if bf16 else 2.0 ** -24) and float(want[1, 1]) == sub * 16
    out = np.empty((4, 3), dtype=dtype)
    try:
        torch.set_flush_denormal(True)
        _gemm_module().grouped_widen_fma(out.view(np.uint16), a.view(np.uint16), b.view(np.uint16),
                                         np.array([[0, 0, 4]], dtype=np.int64), not bf16, 2)
    finally:
        torch.set_flush_denormal(False)
    assert np.array_equal(out.view(np.uint16), want.view(np.uint16)), (out, want)
    # row [inf, 1, 0, 0]: inf * 2**-64 and inf * 16 are inf; inf * 0 + 1 * 1 is NaN
    assert float(out[2, 0]) == float(out[2, 1]) == np.inf and np.isnan(float(out[2, 2]))


def _dot_module():
    mod = _gemm_module()
    if not mod.has_dot_bf16():
        pytest.skip("this CPU has no AVX512-BF16 instructions")
    return mod


def _assert_round_once_within_bound_np(out, a, b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref, mag = a64 @ b64, np.abs(a64) @ np.abs(b64)
    bound = (a.shape[1] + 4) * U32 * mag
    lo = (ref - bound).astype(ml_dtypes.bfloat16).astype(np.float64)
    hi = (ref + bound).astype(ml_dtypes.bfloat16).astype(np.float64)
    o = out.astype(np.float64)
    bad = ~((lo <= o) & (o <= hi))
    assert not bad.any(), f"{int(bad.sum())} outside the fp32 summation bound"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("transposed", [False, True])
def test_compiled_dot_bf16_rounds_once_within_the_fp32_bound(threads, transposed):
    """Groups of 0-300 rows (the 8 / 4 / 2 / 1-row tiles; up to 32 rows whole weight rows per block, up to
    256 rows 256-column bands of 128-row blocks, more rows 512-column bands of 256-row blocks), K = 601
    (several blocks, an odd last one), N = 600 (bands, a partial 32-column strip), a weight view with
    padded rows; the weight with its columns contiguous or (``transposed``, the backward's ``w^T``) its k."""
    mod = _dot_module()
    g = np.random.default_rng(13)
    rows = [5, 0, 70, 33, 1, 12, 300]
    experts = [1, 0, 1, 2, 2, 0, 1]
    t, k, n = sum(rows), 601, 600
    a = (g.standard_normal((t, k)) * 3).astype(ml_dtypes.bfloat16)
    if transposed:
        b = (g.standard_normal((3, n, k + 8))).astype(ml_dtypes.bfloat16)[:, :, 3:3 + k].transpose(0, 2, 1)
    else:
        b = (g.standard_normal((3, k, n + 8))).astype(ml_dtypes.bfloat16)[:, :, 3:3 + n]
    ends = np.cumsum(rows)
    groups = np.array([(x, s - r, s) for x, s, r in zip(experts, ends, rows)], dtype=np.int64)
    out = np.full((t, n), np.nan, dtype=ml_dtypes.bfloat16)
    mod.grouped_dot_bf16(out.view(np.uint16), a.view(np.uint16), b.view(np.uint16), groups, threads)
    for ex, s, f in groups:
        _assert_round_once_within_bound_np(out[s:f], a[s:f], b[ex])


@pytest.mark.parametrize("rows", [3, 40])
@pytest.mark.parametrize("transposed", [False, True])
def test_compiled_dot_bf16_gives_ieee_results_where_the_instruction_would_flush(rows, transposed):
    """Products and partial sums that are fp32 subnormals (2**-63 * 2**-64 = 2**-127, twice: 2**-126; a
    subnormal bf16 input 2**-130 times 2**10), in a weight block after blocks of ordinary values: the
    instruction would give 0 (it flushes them); the result is the IEEE one, the same bits as fp32
    accumulation in k order, also with torch's flush-denormal mode on."""
    mod = _dot_module()
    lead = 700  # blocks of ordinary values first (256 / 64 rows per block)
    k = lead + 3
    a = np.zeros((rows, k), dtype=np.float32)
    w = np.zeros((1, k, 35), dtype=np.float32)
    a[:, :lead] = 1.0
    w[0, :lead, :] = np.where(np.arange(lead) % 2 == 0, 1.0, -1.0)[:, None]
    a[0, lead] = a[0, lead + 1] = 2.0 ** -63
    a[1, lead] = 2.0 ** -130
    w[0, lead, 0] = w[0, lead + 1, 0] = 2.0 ** -64
    w[0, lead, 1] = 2.0 ** 10
    a, w = a.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16)
    want = _fp32_in_k_order(a, w[0])
    assert float(want[0, 0]) == 2.0 ** -126 and float(want[1, 1]) == 2.0 ** -120
    out = np.empty((rows, 35), dtype=ml_dtypes.bfloat16)
    try:
        torch.set_flush_denormal(True)
        wv = np.ascontiguousarray(w.transpose(0, 2, 1)).transpose(0, 2, 1) if transposed else w
        mod.grouped_dot_bf16(out.view(np.uint16), a.view(np.uint16), wv.view(np.uint16),
                             np.array([[0, 0, rows]], dtype=np.int64), 2)
    finally:
        torch.set_flush_denormal(False)
    assert np.array_equal(out.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_dot_bf16_k_split_rounds_once_within_the_fp32_bound(threads):
    """The K-split product (the weight gradient ``x[s:t]^T @ dy[s:t]``) per group: 0-300 tokens (more than one
    256-token block, odd counts), M = 300 (more than one 256-row unit, a partial 32-row strip), N = 600 (more
    than one 256-column band, a partial strip), groups writing outputs in any order; an empty group writes
    zeros; an output no group names is left as it was."""
    mod = _dot_module()
    g = np.random.default_rng(17)
    rows, outputs = [5, 0, 300, 1, 40, 257], [3, 0, 1, 6, 2, 4]
    t, m, n = sum(rows), 300, 600
    x = (g.standard_normal((t, m)) * 3).astype(ml_dtypes.bfloat16)
    y = g.standard_normal((t, n)).astype(ml_dtypes.bfloat16)
    ends = np.cumsum(rows)
    groups = np.array([(e, s - r, s) for e, s, r in zip(outputs, ends, rows)], dtype=np.int64)
    out = np.full((7, m, n), np.nan, dtype=ml_dtypes.bfloat16)
    mod.grouped_dot_bf16_ksplit(out.view(np.uint16), x.view(np.uint16), y.view(np.uint16), groups, threads)
    for e, s, f in groups:
        if s == f:
            assert not out[e].astype(np.float32).any() and not np.signbit(out[e].astype(np.float32)).any()
        else:
            _assert_round_once_within_bound_np(out[e], x[s:f].T, y[s:f])
    assert np.isnan(out[5].astype(np.float32)).all()


def test_compiled_dot_bf16_k_split_gives_ieee_results_where_the_instruction_would_flush():
    """As for the M-split form: subnormal products and partial sums placed after 700 tokens of ordinary values
    (two safe 256-token blocks) give the IEEE result, the same bits as fp32 accumulation in token order, also
    with torch's flush-denormal mode on."""
    mod = _dot_module()
    lead = 700
    k = lead + 3
    a = np.zeros((2, k), dtype=np.float32)  # a = x^T: x is [k tokens, 2]
    w = np.zeros((k, 35), dtype=np.float32)
    a[:, :lead] = 1.0
    w[:lead, :] = np.where(np.arange(lead) % 2 == 0, 1.0, -1.0)[:, None]
    a[0, lead] = a[0, lead + 1] = 2.0 ** -63
    a[1, lead] = 2.0 ** -130
    w[lead, 0] = w[lead + 1, 0] = 2.0 ** -64
    w[lead, 1] = 2.0 ** 10
    a, w = a.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16)
    want = _fp32_in_k_order(a, w)
    assert float(want[0, 0]) == 2.0 ** -126 and float(want[1, 1]) == 2.0 ** -120
    out = np.empty((1, 2, 35), dtype=ml_dtypes.bfloat16)
    try:
        torch.set_flush_denormal(True)
        mod.grouped_dot_bf16_ksplit(out.view(np.uint16), np.ascontiguousarray(a.T).view(np.uint16),
                                    w.view(np.uint16), np.array([[0, 0, k]], dtype=np.int64), 2)
    finally:
        torch.set_flush_denormal(False)
    assert np.array_equal(out[0].view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("kernel", ["dot_bf16", "fma_fp32"])
def test_compiled_k_split_refusals(kernel):
    """Both K-split products refuse an output named twice, a group out of range, mismatched shapes, other element
    sizes and a non-contiguous operand, each naming what is wrong."""
    mod, dtype, fn = ((_dot_module(), np.uint16, "grouped_dot_bf16_ksplit") if kernel == "dot_bf16" else
                      (_gemm_module(), np.float32, "grouped_fma_fp32_ksplit"))
    run = getattr(mod, fn)
    x = np.zeros((6, 4), dtype=dtype)
    y = np.zeros((6, 5), dtype=dtype)
    out = np.zeros((2, 4, 5), dtype=dtype)
    whole = np.array([[0, 0, 6]], dtype=np.int64)
    for bad in ([[0, 0, 3], [0, 3, 6]], [[2, 0, 3]], [[0, 4, 3]], [[0, 0, 7]]):  # an output twice, out of range
        with pytest.raises(ValueError, match="group"):
            run(out, x, y, np.array(bad, dtype=np.int64), 1)
    with pytest.raises(ValueError, match="shapes"):
        run(np.zeros((2, 4, 6), dtype=dtype), x, y, whole, 1)
    with pytest.raises(ValueError, match=f"{dtype().itemsize}-byte"):
        run(out, x.astype(np.float64), y, whole, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        run(out, np.zeros((4, 6), dtype=dtype).T, y, whole, 1)


@pytest.mark.parametrize("entry", ["widen_bf16", "fma_fp32", "dot_bf16", "ksplit_fp32", "ksplit_bf16"])
def test_compiled_entries_take_groups_as_a_list(entry):
    """The grouped entries read their groups from a list of (group, start, end) tuples (what the Python side
    passes: no NumPy array made per call) as from a [G, 3] int64 array: small integer operands, so every sum is
    exact, against integer math; rows / outputs no group names are left alone; a malformed row is refused."""
    mod = _dot_module() if entry in ("dot_bf16", "ksplit_bf16") else _gemm_module()
    dtype = np.float32 if entry in ("fma_fp32", "ksplit_fp32") else ml_dtypes.bfloat16
    bits = (lambda v: v) if dtype == np.float32 else (lambda v: v.view(np.uint16))
    rng = np.random.default_rng(5)
    t, k, n, e = 11, 6, 35, 3
    ks = entry.startswith("ksplit")
    x = rng.integers(-3, 4, size=(t, k)).astype(dtype)
    w = rng.integers(-3, 4, size=(e, k, n)).astype(dtype)
    y = rng.integers(-3, 4, size=(t, n)).astype(dtype)
    groups = [(1, 0, 4), (0, 4, 10)]  # M split: row 10 unnamed; K split: output 2 unnamed
    xi, wi, yi = x.astype(np.int64), w.astype(np.int64), y.astype(np.int64)
    want = np.full((e, k, n) if ks else (t, n), 7, dtype=np.int64)  # 7: the sentinel left where nothing is named
    for g, s, f in groups:
        if ks:
            want[g] = xi[s:f].T @ yi[s:f]
        else:
            want[s:f] = xi[s:f] @ wi[g]

    def run(table):
        out = np.full(want.shape, 7, dtype=dtype)
        if entry == "widen_bf16":
            mod.grouped_widen_fma(bits(out), bits(x), bits(w), table, False, 2)
        elif entry == "fma_fp32":
            mod.grouped_fma_fp32(out, x, w, table, 2)
        elif entry == "dot_bf16":
            mod.grouped_dot_bf16(bits(out), bits(x), bits(w), table, 2)
        elif entry == "ksplit_fp32":
            mod.grouped_fma_fp32_ksplit(out, x, y, table, 2)
        else:
            mod.grouped_dot_bf16_ksplit(bits(out), bits(x), bits(y), table, 2)
        return out

    for table in (groups, [list(g) for g in groups], [tuple(np.int64(v) for v in g) for g in groups],
                  np.array(groups, dtype=np.int64)):
        assert np.array_equal(run(table).astype(np.int64), want)
    for bad in ([(0, 0)], [(0, 0, 4, 1)], [3], [(0, 0.5, 4)], "abc", 5):
        with pytest.raises(ValueError, match="group"):
            run(bad)
    with pytest.raises(ValueError, match="out of range"):
        run([(0, 0, t + 1)])


@pytest.mark.parametrize("transposed", [False, True])
def test_compiled_dot_bf16_reads_nothing_a_previous_call_left(transposed):
    """dot_bf16 keeps a worker's scratch buffers from one unit of work to the next: a call right after one that
    filled them with NaN (a larger K and N, every operand NaN) reads none of that - its padding (an odd K: a
    half-filled last pair; 35 columns: a partial strip) is written afresh, and rows of whole vectors (K = 64) are
    read in place.  Small integers, exact sums, against integer math, on the calling thread alone (threads=1: the
    same thread's buffers)."""
    mod = _dot_module()
    nan = np.full((300, 100), np.nan, dtype=ml_dtypes.bfloat16)
    wnan = np.full((1, 100, 70), np.nan, dtype=ml_dtypes.bfloat16)
    rng = np.random.default_rng(11)
    # a few, a mid-size and a many-row group; K = 64: rows of a read in place (whole vectors), no padding
    for rows, k, n in ((40, 37, 35), (300, 37, 35), (5, 33, 3), (300, 64, 35), (5, 64, 35)):
        mod.grouped_dot_bf16(np.empty((300, 70), np.uint16), nan.view(np.uint16), wnan.view(np.uint16),
                             [(0, 0, 300)], 1)
        a = rng.integers(-2, 3, size=(rows, k))  # |sums| <= 64 * 4: integers bf16 holds exactly
        w = rng.integers(-2, 3, size=(1, k, n))
        b = np.ascontiguousarray(w.transpose(0, 2, 1)).astype(ml_dtypes.bfloat16).transpose(0, 2, 1) \
            if transposed else w.astype(ml_dtypes.bfloat16)
        out = np.empty((rows, n), dtype=ml_dtypes.bfloat16)
        mod.grouped_dot_bf16(out.view(np.uint16), a.astype(ml_dtypes.bfloat16).view(np.uint16), b.view(np.uint16),
                             [(0, 0, rows)], 1)
        assert np.array_equal(out.astype(np.int64), a @ w[0])


@pytest.mark.parametrize("k_split", [False, True])
@pytest.mark.parametrize("rows", [3, 40, 300])
def test_compiled_dot_bf16_rounds_exact_sums_to_nearest_even(rows, k_split):
    """Sums exact in fp32 (1 + j 2^-9, their negatives, the largest bf16 plus half its ulp) rounded once to bf16:
    ties to even, the top tie to inf, in every column of a 35-column output (a partial strip) and whatever block
    path the group's rows take (``k_split``: the same sums as the weight gradient x^T @ y of two tokens, ``rows``
    output rows); the reference is ml_dtypes' rounding of the exact sums."""
    mod = _dot_module()
    top = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    firsts = [1.0, -1.0, top] * ((rows + 2) // 3)
    a = np.zeros((rows, 2), dtype=np.float64)
    for r in range(rows):
        a[r, 0] = firsts[r]
        a[r, 1] = 2.0 ** 119 if firsts[r] == top else np.sign(firsts[r]) * (r % 7) * 2.0 ** -9
    b = np.ones((1, 2, 35), dtype=ml_dtypes.bfloat16)
    a16 = a.astype(ml_dtypes.bfloat16)
    assert np.array_equal(a16.astype(np.float64), a)  # every input exact in bf16
    want = (a[:, 0] + a[:, 1]).astype(np.float32)  # exact: at most 9 significant bits
    assert np.array_equal(want.astype(np.float64), a[:, 0] + a[:, 1])
    want16 = np.repeat(want.astype(ml_dtypes.bfloat16)[:, None], 35, axis=1)
    assert np.isinf(float(want16[2, 0]))  # the top tie
    out = np.empty((rows, 35), dtype=ml_dtypes.bfloat16)
    if k_split:  # out[0] = x^T @ y over the two tokens: x = a^T [2, rows], y = b[0] [2, 35]
        mod.grouped_dot_bf16_ksplit(out[None].view(np.uint16), np.ascontiguousarray(a16.T).view(np.uint16),
                                    np.ascontiguousarray(b[0]).view(np.uint16), np.array([[0, 0, 2]], dtype=np.int64),
                                    2)
    else:
        mod.grouped_dot_bf16(out.view(np.uint16), a16.view(np.uint16), b.view(np.uint16),
                             np.array([[0, 0, rows]], dtype=np.int64), 2)
    assert np.array_equal(out.view(np.uint16), want16.view(np.uint16))


def test_compiled_dot_bf16_nan_inf_and_refusals():
    mod = _dot_module()
    a = np.array([[np.inf, 1, 0], [-np.nan, 0, 0], [1, 2, 3]], dtype=ml_dtypes.bfloat16)
    b = np.array([[[2.0 ** -64, 16.0, 0.0], [1.0, 0.0, 1.0], [0.5, 0.0, 0.0]]], dtype=ml_dtypes.bfloat16)
    out = np.empty((3, 3), dtype=ml_dtypes.bfloat16)
    mod.grouped_dot_bf16(out.view(np.uint16), a.view(np.uint16), b.view(np.uint16),
                         np.array([[0, 0, 3]], dtype=np.int64), 1)
    o = out.astype(np.float64)
    assert o[0, 0] == o[0, 1] == np.inf and np.isnan(o[0, 2])  # inf * 0 + 1 * 1 is NaN
    assert np.isnan(o[1]).all()
    assert o[2].tolist() == [2.0 + 1.5, 16.0, 2.0]
    assert out.view(np.uint16)[1, 0] in (0x7FC0, 0xFFC0)  # a NaN rounds to the quiet NaN of its sign
    with pytest.raises(ValueError, match="N or K contiguous"):
        strided = np.zeros((1, 4, 6), dtype=np.uint16)[:, ::2, ::3]  # neither N nor K contiguous
        mod.grouped_dot_bf16(out[:, :2].copy().view(np.uint16), a.view(np.uint16)[:, :2].copy(), strided,
                             np.array([[0, 0, 3]], dtype=np.int64), 1)


def test_compiled_widen_fma_refuses_what_it_cannot_read():
    mod = _gemm_module()
    a = np.zeros((4, 8), dtype=np.uint16)
    b = np.zeros((2, 8, 5), dtype=np.uint16)
    out = np.zeros((4, 5), dtype=np.uint16)
    ok = np.array([[0, 0, 4]], dtype=np.int64)
    with pytest.raises(ValueError, match="group 0 .*expert 2.* out of range"):
        mod.grouped_widen_fma(out, a, b, np.array([[2, 0, 4]], dtype=np.int64), False, 1)
    with pytest.raises(ValueError, match="out of range"):
        mod.grouped_widen_fma(out, a, b, np.array([[0, 3, 5]], dtype=np.int64), False, 1)
    with pytest.raises(ValueError, match="shapes do not match"):
        mod.grouped_widen_fma(out, a, np.zeros((2, 7, 5), dtype=np.uint16), ok, False, 1)
    with pytest.raises(ValueError, match="N or K contiguous"):
        mod.grouped_widen_fma(out, a, np.zeros((2, 8, 10), dtype=np.uint16)[:, :, ::2], ok, False, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.grouped_widen_fma(out, np.zeros((8, 4), dtype=np.uint16).T, b, ok, False, 1)


def test_compiled_bf16_widening_is_exact_and_reports_nans():
    """The compiled bf16 -> fp32 widening (no torch parallel region) on every non-NaN pattern, eight times over
    (more than one thread's share), against NumPy's; a NaN anywhere is reported, and fast_copy_cast then gives
    NumPy's bits, NaNs included."""
    assert impls._scan is not None, "the compiled scans (ascend_moe.kernels._scan) were not built"
    bits = np.arange(1 << 16, dtype=np.uint16)
    plain = bits[(bits & 0x7FFF) <= 0x7F80]                    # every pattern but the NaNs
    src = np.tile(plain, 8).view(np.int16).view(ml_dtypes.bfloat16)
    mine = np.empty(src.shape, np.float32)
    assert impls._scan.widen_bf16(src.view(np.uint16), mine.view(np.uint32), 2)
    assert np.array_equal(mine.view(np.uint32), src.astype(np.float32).view(np.uint32))
    with_nan = src.copy().reshape(8, -1)
    with_nan.view(np.uint16)[5, 7] = 0x7FC1
    assert not impls._scan.widen_bf16(with_nan.reshape(-1).view(np.uint16), mine.view(np.uint32), 2)
    impls.fast_copy_cast(mine.reshape(8, -1), with_nan)
    assert np.array_equal(mine.view(np.uint32), with_nan.reshape(-1).astype(np.float32).view(np.uint32))


# ----------------------------------------------------------------------------------------------
# the quantised epilogues' plugged-in steps: the same fp32 operations as NumPy, element by element
# ----------------------------------------------------------------------------------------------

def _special_f32(rng, shape):
    """fp32 values of every kind: zeros of both signs, subnormals, tiny / huge normals, infinities."""
    pool = np.array([0.0, -0.0, 1e-45, -3e-42, 1.1754942e-38, 1e-30, 0.5, 1.0, -3.25, 7e5, 3.4e38, -3.4e38,
                     np.inf, -np.inf], dtype=np.float32)
    v = (rng.standard_normal(shape) * 10.0 ** rng.integers(-40, 38, shape)).astype(np.float32)
    mask = rng.random(shape) < 0.3
    v[mask] = rng.choice(pool, int(mask.sum()))
    return v


def test_rows_add_is_one_fp32_add_per_element():
    rng = np.random.default_rng(5)
    y = _special_f32(rng, (40, 33))
    v = _special_f32(rng, (25, 33))
    index = rng.permutation(40)[:25]
    want = y.copy()
    with np.errstate(all="ignore"):   # inf + -inf is one of the cases
        for t in range(25):
            for j in range(33):
                want[index[t], j] = np.float32(want[index[t], j]) + np.float32(v[t, j])   # IEEE fp32 add
    got = y.copy()
    assert impls.torch_rows_add(got, index, v)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all()
    # a NaN in v: NumPy's order decides the payload, so the plug-in declines
    v[3, 4] = np.nan
    assert not impls.torch_rows_add(y.copy(), index, v)


def test_dequant_rounds_the_int32_to_nearest_even_then_multiplies_twice():
    rng = np.random.default_rng(6)
    acc = rng.integers(-2**31, 2**31, (17, 29), dtype=np.int64).astype(np.int32)
    acc[0, :6] = [2**31 - 1, -2**31, 2**24 + 1, 2**24 + 3, -(2**25 + 2), 0]   # ties and non-ties of the cast
    col = _special_f32(rng, 29)
    row = _special_f32(rng, 17)
    col[col != col] = 1.0
    got = impls.torch_dequant(acc, col, row)
    assert got is not None and got.dtype == np.float32
    with np.errstate(all="ignore"):   # inf * 0 and overflow are part of the cases
        want_all = [[(np.float32(float(int(acc[t, j]))) * col[j]) * row[t] for j in range(29)] for t in range(17)]
    for t in range(17):
        for j in range(29):
            a = int(acc[t, j])
            # float(a) exact (|a| < 2**53), then one RNE rounding to fp32, then the two fp32 multiplies
            want = want_all[t][j]
            g = got[t, j]
            assert g.view(np.uint32) == want.view(np.uint32) or (np.isnan(g) and np.isnan(want)), (t, j)
    col[2] = np.nan
    assert impls.torch_dequant(acc, col, row) is None


def _half_bits_reference(p: float) -> int:
    """IEEE binary16 bits of the Python float p, rounded to nearest even (struct's 'e' packing rounds the
    double directly; it refuses values that round past the largest half, which are infinities here)."""
    import struct
    try:
        return struct.unpack("<H", struct.pack("<e", p))[0]
    except OverflowError:
        return 0xFC00 if p < 0 else 0x7C00


def _fixpipe_cases(rng):
    """int32 accumulators and fp32 scales whose double products fall on fp16 ties, just beside them (beyond
    fp32's precision, where rounding to fp32 first would go wrong), in the fp16 subnormal range and at
    its top (65504 ... 65520 ... 65536), plus random ones over the whole int32 and fp32 ranges."""
    acc, scale = [], []
    pairs = [(2**11 + 1, 2.0**-11), (2**11 + 3, 2.0**-11), (2**30 + 2**19 + 1, 2.0**-30),
             (2**30 + 2**19 - 1, 2.0**-30), (-(2**30 + 2**19 + 1), 2.0**-30), (2**24 + 1, 2.0**-20),
             (65504, 1.0), (65519, 1.0), (65520, 1.0), (2**31 - 1, 2.0**-15), (-2**31, 2.0**-15),
             (1, 2.0**-24), (1, 2.0**-25), (3, 2.0**-26), (2**29 + 1, 2.0**-54), (2**29 + 1, 2.0**-53),
             (0, 1.0), (-5, 0.0), (7, 1e-45), (2**31 - 1, 3.4e38), (12345, -0.0)]
    for a, sc in pairs:
        acc.append(a)
        scale.append(sc)
    n = 4096 - len(pairs)
    acc.extend(rng.integers(-2**31, 2**31, n).tolist())
    scale.extend((rng.standard_normal(n) * 2.0 ** rng.integers(-60, 20, n)).tolist())
    return np.array(acc, np.int64).astype(np.int32), np.array(scale, np.float32)


@pytest.mark.parametrize("vectorized", [True, False])
def test_compiled_fixpipe_rounds_the_double_product_once_to_fp16(vectorized):
    assert impls._epilogue is not None, "the compiled fixpipe (ascend_moe.kernels._epilogue) was not built"
    _epilogue = impls._epilogue
    rng = np.random.default_rng(8)
    acc, scale = _fixpipe_cases(rng)
    cols = 64                                            # [64, 64] tiles; every column meets every row
    acc2 = acc.reshape(-1, cols)
    scale_rows = scale.reshape(-1, cols)
    for r in range(scale_rows.shape[0]):
        sc = np.ascontiguousarray(scale_rows[r])
        out = np.empty(acc2.shape, np.float16)
        _epilogue.fixpipe_fp16(acc2, sc, out.view(np.uint16), vectorized, 2)
        got = out.view(np.uint16)
        for i in range(acc2.shape[0]):
            for j in range(cols):
                p = float(int(acc2[i, j])) * float(sc[j])   # Python's double multiply: nearest even
                assert got[i, j] == _half_bits_reference(p), (int(acc2[i, j]), float(sc[j]), p)


def test_compiled_helpers_keep_subnormals_in_every_thread_with_flush_mode_on():
    """torch.set_flush_denormal(True) sets the calling thread's FTZ / DAZ only; the compiled helpers compute IEEE
    values (as Atlas A2/A3 keep subnormals) on the caller and on every worker: the dequant-scatter over 1,024
    columns (several tiles, two threads) with subnormal products and a subnormal y, and the row maximum of rows of
    subnormals, against Python's float arithmetic (doubles: each fp32 step below is exact or rounded once)."""
    rows, n = 6, 1024
    acc = np.ones((rows, n), dtype=np.int32) * np.arange(1, n + 1, dtype=np.int32)
    col = np.full((1, n), 2.0 ** -70, dtype=np.float32)
    row = np.full(rows, 2.0 ** -70, dtype=np.float32)  # products (j + 1) * 2^-140: subnormal fp32
    index = np.arange(rows, dtype=np.int64) % 3       # two adds into each target row
    group = np.zeros(rows, dtype=np.int64)
    y0 = np.full((3, n), 2.0 ** -149, dtype=np.float32)  # the smallest subnormal
    m = np.tile(np.arange(1, 3001, dtype=np.int64), (16, 1)) * 2 ** 3  # multiples of 2^-146: exact sums below
    small = (m * 2.0 ** -149).astype(np.float32)
    want = np.array([[(2 * (j + 1) * 2 ** 9 + 1) * 2.0 ** -149 for j in range(n)]] * 3, dtype=np.float64)
    flushing = torch.set_flush_denormal(True)
    try:
        if not flushing:
            pytest.skip("no flush-denormal mode on this CPU")
        y = y0.copy()
        assert impls.compiled_dequant_scatter(y, index, acc, col, group, row)
        got_max = impls.compiled_row_max(small)
    finally:
        torch.set_flush_denormal(False)
    assert np.array_equal(y.astype(np.float64), want)
    assert got_max is not None and np.array_equal(got_max.reshape(-1).astype(np.float64), np.full(16, 3000 * 2.0 ** -146))


@pytest.mark.parametrize("compiled_switch", [True, False])
def test_simulator_keeps_subnormals_with_flush_mode_on_and_restores_the_mode(monkeypatch, compiled_switch):
    """The NumPy reference path of a public op (ASCEND_MOE_KERNELS=reference: NumPy's sgemm) under
    torch.set_flush_denormal(True): 2^-70 * 2^-70 summed twice is 2^-139 (subnormal fp32) and a subnormal input
    times 1 stays, as on the device; the caller's flush mode is on again after the call.  Also by torch's switch,
    as a build without the compiled helpers does it."""
    force(monkeypatch, "reference")
    if not compiled_switch:
        monkeypatch.setattr(impls, "_scan", None)
    x = torch.tensor([[2.0 ** -70, 2.0 ** -70, 0.0], [0.0, 0.0, 1e-40]], dtype=torch.float32)
    w = torch.tensor([[[2.0 ** -70, 0.0], [2.0 ** -70, 0.0], [0.0, 1.0]]], dtype=torch.float32)
    if not torch.set_flush_denormal(True):
        pytest.skip("no flush-denormal mode on this CPU")
    try:
        y = am.npu_gmm(x, w, group_list=torch.tensor([2]))
        still_flushing = impls._flush_denormal_on()
    finally:
        torch.set_flush_denormal(False)
    assert float(y[0, 0]) == 2.0 ** -139 and float(y[1, 1]) == float(torch.tensor(1e-40)) != 0.0
    assert still_flushing


def test_compiled_dequant_scatter_matches_scalar_fp32_in_row_order():
    """for t in order: y[index[t]] += (fp32(acc[t]) * col[group[t]]) * row[t] by the compiled helper, element by
    element against np.float32 scalar arithmetic in the same order: repeated targets, int32 extremes and ties of
    the int32 -> fp32 rounding, a NaN and infinities already in y (a shared-expert input), zero and negative
    scales, more columns than one tile on two threads; refused when a scale is not finite or a product could
    overflow; an out-of-range row is an error."""
    rng = np.random.default_rng(30)
    batch, rows, n, groups = 12, 40, 600, 3
    y = rng.standard_normal((batch, n)).astype(np.float32)
    y[3, 2], y[4, 5], y[5, 6] = np.float32("nan"), np.inf, -np.inf
    index = rng.integers(0, batch, rows).astype(np.int64)       # repeats: the order matters
    index[:3] = [3, 4, 5]
    group = np.sort(rng.integers(0, groups, rows)).astype(np.int64)
    acc = rng.integers(-2**31, 2**31, (rows, n), dtype=np.int64).astype(np.int32)
    acc[0, :6] = [2**31 - 1, -2**31, 2**24 + 1, 2**24 + 3, -(2**25 + 2), 0]      # fp32 rounding ties
    col = (rng.standard_normal((groups, n)) * 1e-3).astype(np.float32)
    col[1, 1] = 0.0
    row = (rng.standard_normal(rows) * 1e-2).astype(np.float32)
    row[2] = -0.0
    want = y.copy()
    for t in range(rows):
        for j in range(n):
            want[index[t], j] = want[index[t], j] + (np.float32(int(acc[t, j])) * col[group[t], j]) * row[t]
    got = y.copy()
    _compiled_epilogue().dequant_scatter(got, index, acc, col, group, row, 2)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    got = y.copy()
    assert impls.compiled_dequant_scatter(got, index, acc, col, group, row)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    bad = col.copy()
    bad[2, 3] = np.nan
    assert not impls.compiled_dequant_scatter(y.copy(), index, acc, bad, group, row)
    huge = np.full((groups, n), 3e38, np.float32)
    assert not impls.compiled_dequant_scatter(y.copy(), index, acc, huge, group, row)
    outside = index.copy()
    outside[0] = batch
    with pytest.raises(ValueError, match="out of range"):
        _compiled_epilogue().dequant_scatter(y.copy(), outside, acc, col, group, row, 1)


def _compiled_epilogue():
    assert impls._epilogue is not None, "the compiled epilogue (ascend_moe.kernels._epilogue) was not built"
    return impls._epilogue


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60, reason="needs a long double with a 64-bit significand")
def test_compiled_exp_double_is_within_4_ulps():
    """The swiglu-quant epilogue's double exp: its refusal margin (64 ulps) rests on this bound."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.uniform(-87, 88, 1 << 20), rng.uniform(-0.02, 0.02, 1 << 18),
                        np.linspace(-87, 88, 1 << 18), [-87.0, 88.0, 0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32).astype(np.float64)          # the epilogue feeds it fp32 values
    got = np.empty_like(x)
    _compiled_epilogue().exp_f64(x, got)
    exact = np.exp(x.astype(np.longdouble))              # 64-bit significand: 2^-11 double ulps
    err_ulps = np.abs((got.astype(np.longdouble) - exact) / np.spacing(got).astype(np.longdouble))
    assert float(err_ulps.max()) < 4.0


def test_compiled_exp_f32_is_correctly_rounded_where_it_says_so():
    """Every result marked certain is the float64 exp rounded to fp32 (NumPy's, within 1.27 ulps: the
    correctly rounded fp32 exp); refusals are rare and include the closest known near-midpoint inputs."""
    rng = np.random.default_rng(12)
    near_midpoint = np.array([-14.56709, -0.00735258358, 1.51990689e-05], np.float32)
    x = np.concatenate([
        rng.uniform(-87, 88, 1 << 21).astype(np.float32),
        np.arange(0x3F800000, 0x3F800000 + (1 << 20), dtype=np.uint32).view(np.float32),     # from 1.0 up
        np.arange(0xBC000000, 0xBC000000 + (1 << 20), dtype=np.uint32).view(np.float32),     # near -2^-7
        np.linspace(-110, 95, 20001, dtype=np.float32),                                      # both edges
        near_midpoint, np.array([np.inf, -np.inf, 0.0, -0.0, 89.0, -104.0, 88.72, -87.5], np.float32)])
    got = np.empty_like(x)
    certain = np.empty(x.shape, np.uint8)
    _compiled_epilogue().exp_f32(x, got, certain)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)
    sure = certain.astype(bool)
    assert np.array_equal(got[sure].view(np.uint32), want[sure].view(np.uint32))
    in_range = (x > -87) & (x < 88)
    assert (~sure[in_range]).mean() < 1e-4                # refusals are rare where results are normal
    assert not sure[np.isin(x, near_midpoint)].any()      # 1.27 - 2.73 ulps from a midpoint: refused
    nan_x = np.array([np.nan], np.float32)
    out1, c1 = np.empty(1, np.float32), np.empty(1, np.uint8)
    _compiled_epilogue().exp_f32(nan_x, out1, c1)
    assert np.isnan(out1[0])


def _swiglu_quant_row_reference(acc_row, col_scale, row_scale, kernel):
    """One row of the A8W8 swiglu-quant epilogue, one fp32 operation at a time (np.float32 scalars), exp as
    Python's double exp rounded to fp32; (q, qs) or None where a NaN reaches the int8 conversion."""
    f32 = np.float32
    n = len(acc_row)
    with np.errstate(all="ignore"):
        if kernel == 1:
            c = [(f32(int(acc_row[j])) * f32(row_scale)) * f32(col_scale[j]) for j in range(n)]
        else:
            c = [f32(row_scale) * (f32(col_scale[j]) * f32(int(acc_row[j]))) for j in range(n)]
    return _swiglu_quant_from_values(c, kernel)


def _swiglu_quant_from_values(c, kernel):
    """SwiGLU and the per-token quantisation of one row of fp32 values, as above."""
    f32 = np.float32
    h = len(c) // 2
    with np.errstate(all="ignore"):
        s = []
        for j in range(h):
            a, g = c[j], c[h + j]
            t = -a
            try:
                t = f32(math.exp(float(t)))
            except OverflowError:
                t = f32(np.inf)
            t = t + f32(1.0)
            t = a / t
            s.append(g * t)
        if any(np.isnan(v) for v in s):
            return None
        amax = max([abs(v) for v in s], default=f32(0))
        if kernel == 1:
            qs = amax / f32(127.0)
            r = f32(1.0) / qs
            vs = [np.float16(v * r) for v in s]
        else:
            qs = amax * f32(0.007874015718698502)
            vs = [v / qs for v in s]
        if any(np.isnan(v) for v in vs):
            return None
        q = [int(np.clip(np.rint(float(v)), -128, 127)) for v in vs]
    return np.array(q, np.int8), f32(qs)


@pytest.mark.parametrize("kernel", [1, 2])
def test_compiled_swiglu_quant_of_fp32_values_matches_a_scalar_reference(kernel):
    """The A8W4 entry (dequantised fp32 values in): ordinary rows, activations past exp's overflow and underflow
    edges and in its subnormal range (refused or certain), huge values; an all-zero row and a NaN row are handed
    back."""
    rng = np.random.default_rng(40 + kernel)
    rows, n = 40, 96
    c = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
    c[3] = 0.0                                               # all-zero: 0/0 at the quantisation
    c[4, 7] = np.nan
    c[5, : n // 2] = 1e6                                     # exp(-a) underflows to 0
    c[6, : n // 4] = -1e6                                    # exp(-a) overflows to inf (S = -0.0 there)
    c[7, : n // 2] = rng.uniform(-104, -87, n // 2)          # exp's subnormal range: refused or certain
    c[8, n // 2:] = 1e30                                     # huge S, still finite
    out = np.empty((rows, n // 2), np.int8)
    out_scale = np.empty(rows, np.float32)
    redo = np.empty(rows, np.uint8)
    _compiled_epilogue().swiglu_quant_f32(c, kernel, out, out_scale, redo, 2)
    assert {3, 4} <= set(np.flatnonzero(redo).tolist())
    for r in range(rows):
        if redo[r]:
            continue
        want = _swiglu_quant_from_values([np.float32(v) for v in c[r]], kernel)
        assert want is not None, r
        assert np.array_equal(out[r], want[0]), r
        assert out_scale[r].view(np.uint32) == want[1].view(np.uint32), r
    assert set(np.flatnonzero(redo).tolist()) <= {3, 4, 7}   # and rarely an ordinary row's exp


@pytest.mark.parametrize("kernel", [1, 2])
def test_compiled_swiglu_quant_matches_a_scalar_reference(kernel):
    """The fused A8W8 epilogue against a scalar fp32 reference: ordinary rows, rows whose activations reach
    exp's overflow and underflow edges, saturating rows; an all-zero row and rows with a NaN scale are handed
    back (redo), never answered."""
    rng = np.random.default_rng(20 + kernel)
    rows, n, groups = 48, 64, 3
    acc = rng.integers(-2**20, 2**20, (rows, n)).astype(np.int32)
    col_scale = (rng.random((groups, n)) * 1e-4).astype(np.float32)
    row_scale = (rng.random(rows) * 1e-1).astype(np.float32)
    group = np.repeat(np.arange(groups), rows // groups).astype(np.int64)
    acc[5] = 0                                            # all-zero row: 0/0 at the quantisation
    acc[7, : n // 2] = 2**30                              # activations far past exp's range (both signs)
    acc[8, : n // 2] = -2**30
    acc[9, : n // 2] = rng.integers(-2**27, 2**27, n // 2)   # |a| around 87-104: exp's subnormal edge
    row_scale[9] = 1.0 / 8.0
    col_scale[2, 3] = np.nan                              # every row of group 2
    out = np.empty((rows, n // 2), np.int8)
    out_scale = np.empty(rows, np.float32)
    redo = np.empty(rows, np.uint8)
    _compiled_epilogue().swiglu_quant_a8w8(acc, col_scale, group, row_scale, kernel, out, out_scale, redo, 2)
    must_redo = {5} | set(np.flatnonzero(group == 2).tolist())
    assert must_redo <= set(np.flatnonzero(redo).tolist())
    answered = 0
    for r in range(rows):
        if redo[r]:
            continue
        want = _swiglu_quant_row_reference(acc[r], col_scale[group[r]], row_scale[r], kernel)
        assert want is not None, r
        assert np.array_equal(out[r], want[0]), r
        assert out_scale[r].view(np.uint32) == want[1].view(np.uint32), r
        answered += 1
    assert answered >= rows - len(must_redo) - 2          # refusals are the NaN rows (and rarely an exp)
    with pytest.raises(ValueError, match="group"):
        bad = group.copy()
        bad[0] = groups
        _compiled_epilogue().swiglu_quant_a8w8(acc, col_scale, bad, row_scale, kernel, out, out_scale, redo, 1)


# ----------------------------------------------------------------------------------------------
# exact integer GEMM, per implementation
# ----------------------------------------------------------------------------------------------

INT_CASES = [
    ("all -128", lambda r: (np.full((17, 1024), -128, np.int8), np.full((1024, 24), -128, np.int8))),
    ("127 x -128", lambda r: (np.full((3, 4100), 127, np.int8), np.full((4100, 5), -128, np.int8))),
    ("random", lambda r: (r.integers(-128, 128, (33, 2049), dtype=np.int8),
                          r.integers(-128, 128, (2049, 40), dtype=np.int8))),
    ("one row", lambda r: (r.integers(-128, 128, (1, 7), dtype=np.int8), r.integers(-128, 128, (7, 3), dtype=np.int8))),
    ("int4 values", lambda r: (r.integers(-8, 8, (20, 256), dtype=np.int8), r.integers(-8, 8, (256, 9), dtype=np.int8))),
]


def _has_vnni_kernel() -> bool:
    return impls._gemm is not None and impls._gemm.has_dot_int8()


def _int_impl_runs_here(impl: str) -> bool:
    """torch's int8 GEMM may be inexact on a CPU without VNNI (never chosen there); ours must be exact wherever the
    CPU has its instructions, so a broken build fails these tests instead of skipping them."""
    if impl == "torch_int_mm":
        return mk._verified("int8.wide", impl)
    return impl != "dot_int8" or _has_vnni_kernel()


def test_dot_int8_contract_holds_where_the_cpu_has_its_instructions():
    if not _has_vnni_kernel():
        pytest.skip("no AVX512-VNNI / VBMI on this CPU")
    assert impls.dot_int8_contract_holds()


@pytest.mark.parametrize("impl", list(impls.INT_IMPLS))
@pytest.mark.parametrize("case", [c[0] for c in INT_CASES])
def test_exact_int_impl_bit_exact(impl, case):
    if not _int_impl_runs_here(impl):
        pytest.skip(f"{impl} cannot run exact on this machine: never chosen")
    a, b = dict(INT_CASES)[case](np.random.default_rng(3))
    want = a.astype(np.int64) @ b.astype(np.int64)
    with sim_kernels.use(sim_kernels.Kernels(int_gemm=impls.INT_IMPLS[impl])):
        got = quant_gemm.exact_int_matmul(a, b[:, :], max_abs_a=128, max_abs_b=128)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got.astype(np.int64), want)


@pytest.mark.parametrize("impl", list(impls.INT_IMPLS))
def test_a8w4_partials_exact_per_impl(impl):
    """MSD hi/lo partials through each integer kernel: fp16(exact int32 product * scale), RNE."""
    if not _int_impl_runs_here(impl):
        pytest.skip(f"{impl} cannot run exact on this machine: never chosen")
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (12, 64), dtype=np.int8)
    w = rng.integers(-8, 8, (2, 64, 16), dtype=np.int8)
    scale = rng.uniform(0.001, 0.01, (2, 16)).astype(np.float32)
    bounds = [(0, 5), (5, 12)]
    with sim_kernels.use(sim_kernels.Kernels(int_gemm=impls.INT_IMPLS[impl])):
        chi, clo = quant_gemm.grouped_msd_partials(x, w, scale, bounds)
    xi = x.astype(np.int64)
    hi, lo = np.floor_divide(xi, 16), np.mod(xi, 16) - 8
    for e, (s, t) in enumerate(bounds):
        for half, got in ((hi, chi), (lo, clo)):
            acc = half[s:t] @ w[e].astype(np.int64)
            want = (acc.astype(np.float64) * scale[e].astype(np.float64)).astype(np.float16)
            np.testing.assert_array_equal(got[s:t].view(np.uint16), want.view(np.uint16))


def test_swiglu_quant_v2_a8w8_same_bits_with_every_int_impl(monkeypatch):
    """The op's int8 output and scale do not depend on the exact integer kernel (both exact)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-128, 128, (48, 256), generator=g, dtype=torch.int8)
    w = am.npu_format_cast(torch.randint(-128, 128, (2, 256, 64), generator=g, dtype=torch.int8), 29)
    ws = torch.rand(2, 64, generator=g) * 0.01
    xs = torch.rand(48, generator=g) * 0.1
    gl = torch.tensor([20, 48])
    outs = {}
    for impl in impls.INT_IMPLS:
        if not _int_impl_runs_here(impl):
            continue
        force(monkeypatch, f"int8={impl}")
        outs[impl] = am.npu_grouped_matmul_swiglu_quant_v2(x, [w], [ws], xs, gl)
    ref = outs.pop("reference")
    for impl, out in outs.items():
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]), impl


# ----------------------------------------------------------------------------------------------
# selection, cache file, forcing
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_selection(monkeypatch, tmp_path):
    monkeypatch.setenv("ASCEND_MOE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ASCEND_MOE_KERNELS", raising=False)
    mk.reset()
    yield tmp_path
    mk.reset()


def test_check_run_makes_the_machine_choice_of_its_shape_classes_while_setting_up(monkeypatch, fresh_selection):
    """``check --run`` makes the choices of the classes its grouped stages use (rows up to tokens x top-k) in its
    setup, so a new machine's one-time measurement is not counted in the first grouped stage; no other class."""
    from ascend_moe import model_check
    monkeypatch.setattr(mk, "_measure", lambda cls, candidates: {c: float(c != "reference") for c in candidates})

    def chosen():
        return sorted(json.loads(mk.cache_path().read_text())["choices"])
    model_check.select_machine_kernels("bf16", 4 * 8)
    assert chosen() == ["bf16.narrow", "bf16.skinny"]
    model_check.select_machine_kernels("int8", 4)
    assert chosen() == ["bf16.narrow", "bf16.skinny", "int8.skinny"]
    model_check.select_machine_kernels("bf16", 100)
    assert chosen() == ["bf16.narrow", "bf16.skinny", "bf16.wide", "int8.skinny"]
    model_check.select_machine_kernels("bf16", 257)
    assert chosen() == ["bf16.narrow", "bf16.skinny", "bf16.tall", "bf16.wide", "int8.skinny"]


def test_measurement_times_candidates_on_numpy_blas_after_the_others(monkeypatch):
    """NumPy's BLAS threads keep spinning after a reference GEMM, slowing whatever runs next on the same cores.
    Modelled here: for 0.2 s after the reference runs, the other candidate takes 20x longer.  Timed after it, the
    faster candidate would look 5x slower than the reference and be cut; the reference is timed last instead."""
    clock = {"spin_until": 0.0}
    calls = []

    def runner(cls, impl, shape):
        def run():
            calls.append(impl)
            if impl == "reference":
                time.sleep(0.004)
                clock["spin_until"] = time.perf_counter() + 0.2
            else:
                time.sleep(0.02 if time.perf_counter() < clock["spin_until"] else 0.001)
        return run
    monkeypatch.setattr(mk, "_probe_runner", runner)
    timings = mk._measure("int8.narrow", ["reference", "torch_int_mm"])
    assert min(timings, key=timings.get) == "torch_int_mm", timings
    assert timings["torch_int_mm"] < 0.005
    # every call of the other candidate came before the reference's first call
    assert "torch_int_mm" not in calls[calls.index("reference"):]


def test_numpy_blas_candidate_needs_a_margin_to_be_chosen(monkeypatch, fresh_selection):
    """The reference's spinning BLAS threads slow the next torch op, which its own timing does not show: it is
    chosen only when more than 10 % faster than every other candidate."""
    timings = {"fp32.wide": {"reference": 1.00, "torch_packed": 1.06, "torch_sgemm": 1.08},
               "fp32.narrow": {"reference": 1.00, "torch_sgemm": 1.25, "widen_fma": 1.15}}
    monkeypatch.setattr(mk, "_measure", lambda cls, candidates: {c: timings[cls][c] for c in candidates
                                                                  if c in timings[cls]})
    monkeypatch.setattr(mk, "_verified", lambda cls, impl: impl in timings.get(cls, {}))
    assert mk.choice("fp32.wide") == "torch_packed"
    assert mk.choice("fp32.narrow") == "reference"


def test_choice_measured_once_and_cached_per_machine(monkeypatch, fresh_selection):
    calls = []

    def fake_measure(cls, candidates):
        calls.append(cls)
        return {c: (1.0 if c == "reference" else 2.0) for c in candidates}
    monkeypatch.setattr(mk, "_measure", fake_measure)
    assert mk.choice("fp32.wide") == "reference"
    assert mk.choice("fp32.wide") == "reference" and calls == ["fp32.wide"]
    path = mk.cache_path()
    assert path.parent == fresh_selection and path.name.startswith("kernels-")
    data = json.loads(path.read_text())
    assert data["choices"]["fp32.wide"] == "reference"
    assert data["machine"]["torch"] == torch.__version__ and "cpu" in data["machine"]
    mk.reset()  # a new process: reads the file, measures nothing
    monkeypatch.setattr(mk, "_measure", lambda cls, c: pytest.fail("measured again"))
    assert mk.choice("fp32.wide") == "reference"


def test_unverified_implementation_never_chosen_nor_forced(monkeypatch, fresh_selection):
    monkeypatch.setattr(impls, "int_mm_exact_on_this_machine", lambda: False)
    monkeypatch.setattr(impls, "dot_int8_contract_holds", lambda: False)
    monkeypatch.setattr(mk, "_measure", lambda cls, cands: {c: (0.0 if c == "torch_int_mm" else 1.0) for c in cands})
    assert mk.choice("int8.wide") == "reference"
    force(monkeypatch, "int8=torch_int_mm")
    with pytest.raises(ValueError, match="ASCEND_MOE_KERNELS.*faithfulness contract"):
        mk.choice("int8.wide")


def test_forcing_by_class_dtype_and_float(monkeypatch, fresh_selection):
    monkeypatch.setattr(mk, "_measure", lambda cls, c: pytest.fail("a forced class is not measured"))
    force(monkeypatch, "float=torch_sgemm,int8.skinny=reference")
    assert mk.choice("bf16.wide") == "torch_sgemm" and mk.choice("fp32.skinny") == "torch_sgemm"
    assert mk.choice("int8.skinny") == "reference"
    force(monkeypatch, "reference")
    assert all(mk.choice(c) == "reference" for c in mk.CLASSES)


@pytest.mark.parametrize("spec, match", [("bf16", "class=impl"), ("bogus=reference", "classes are"),
                                         ("fp32=torch_native", "not an implementation of fp32")])
def test_bad_forcing_names_the_variable_and_the_choices(monkeypatch, fresh_selection, spec, match):
    force(monkeypatch, spec)
    with pytest.raises(ValueError, match=match):
        mk.choice("fp32.wide")


# ----------------------------------------------------------------------------------------------
# weight cache
# ----------------------------------------------------------------------------------------------

def test_widened_weight_reused_across_calls_until_modified(monkeypatch):
    force(monkeypatch, "reference")
    mk.WEIGHT_CACHE.clear()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 64, generator=g).half()
    w = torch.randn(3, 64, 16, generator=g).half()
    gl = [8, 16, 24]
    before = mk.WEIGHT_CACHE.conversions
    y1 = am.npu_gmm(x, w, group_list=gl)
    assert mk.WEIGHT_CACHE.conversions - before == 3
    y2 = am.npu_gmm(x, w, group_list=gl)
    assert mk.WEIGHT_CACHE.conversions - before == 3 and torch.equal(y1, y2)
    w.mul_(2)  # in place: the version counter moves, the kept copies are stale
    y3 = am.npu_gmm(x, w, group_list=gl)
    assert mk.WEIGHT_CACHE.conversions - before == 6
    assert_round_once_within_fp32_bound(y3, *ref_gmm(x, w, [8, 8, 8]))


def test_shared_stride0_weight_converted_once(monkeypatch):
    """check --run shares one weight across experts (a stride-0 view the public ops reject): the
    simulator computes the groups in one GEMM and the weight is widened once, then kept."""
    from ascend_moe.ops._common import to_numpy
    from ascend_moe.sim import gmm as sim_gmm
    force(monkeypatch, "reference")
    mk.WEIGHT_CACHE.clear()
    one = torch.randn(1, 64, 16).bfloat16()
    w = one.expand(8, 64, 16)
    x = torch.randn(40, 64).bfloat16()
    counts = [5] * 8
    before = mk.WEIGHT_CACHE.conversions
    for _ in range(2):
        with sim_kernels.use(mk.for_call(w)):
            y = sim_gmm.gmm_m_split(to_numpy(x), [to_numpy(w)], [], np.array(counts), 1)
    assert mk.WEIGHT_CACHE.conversions - before == 1
    y = torch.from_numpy(y.view(np.int16)).view(torch.bfloat16)
    assert_round_once_within_fp32_bound(y, *ref_gmm(x, w, counts))


def test_weight_cache_budget(monkeypatch):
    force(monkeypatch, "reference")
    mk.WEIGHT_CACHE.clear()
    monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_MB", "0")
    am.npu_gmm(torch.randn(4, 8).half(), torch.randn(1, 8, 4).half(), group_list=[4])
    assert len(mk.WEIGHT_CACHE) == 0
    for raw in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv("ASCEND_MOE_WEIGHT_CACHE_MB", raw)
        with pytest.raises(ValueError, match="ASCEND_MOE_WEIGHT_CACHE_MB"):
            am.npu_gmm(torch.randn(4, 8).half(), torch.randn(1, 8, 4).half(), group_list=[4])


def test_shared_stride0_int_weights_exact():
    """A shared (stride-0) weight is computed in one GEMM over all groups: still exact per row."""
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (30, 96), dtype=np.int8)
    one8 = rng.integers(-128, 128, (1, 96, 8), dtype=np.int8)
    one4 = rng.integers(-8, 8, (1, 96, 8), dtype=np.int8)
    bounds = [(0, 7), (7, 7), (7, 30)]
    got = quant_gemm.grouped_int8_matmul(x, np.broadcast_to(one8, (3, 96, 8)), bounds)
    np.testing.assert_array_equal(got.astype(np.int64), x.astype(np.int64) @ one8[0].astype(np.int64))
    scale = np.full((3, 8), 0.003, np.float32)
    chi, clo = quant_gemm.grouped_msd_partials(x, np.broadcast_to(one4, (3, 96, 8)), scale, bounds)
    xi = x.astype(np.int64)
    for half, part in ((np.floor_divide(xi, 16), chi), (np.mod(xi, 16) - 8, clo)):
        want = ((half @ one4[0].astype(np.int64)).astype(np.float64) * np.float64(np.float32(0.003))).astype(np.float16)
        np.testing.assert_array_equal(part.view(np.uint16), want.view(np.uint16))


def test_flush_guard_of_a_weight_follows_in_place_changes(monkeypatch):
    """The guard's scan of a weight is kept while the weight is unchanged; an in-place write that
    brings in a value whose products could be subnormal is seen on the next call."""
    if not _native_ok("bf16"):
        pytest.skip("torch_native not eligible on this machine")
    force(monkeypatch, "bf16=torch_native")
    x = torch.zeros(20, 32).bfloat16()
    x[:, 0] = 2.0 ** -63
    x[:, 1] = 2.0 ** -63
    w = torch.ones(1, 32, 4).bfloat16()
    assert am.npu_gmm(x, w, group_list=[20]).float()[0, 0].item() == 2.0 ** -62
    w[0, :2] = 2.0 ** -64  # products 2**-127: subnormal in fp32
    assert am.npu_gmm(x, w, group_list=[20]).float()[0, 0].item() == 2.0 ** -126


def _dot_int8_or_skip():
    if not _has_vnni_kernel():
        pytest.skip("no AVX512-VNNI / VBMI on this CPU: dot_int8 is never chosen")


def _int32_wrap(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.int64) + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)


@pytest.mark.parametrize("k, n", [(64, 64), (7, 32), (300, 96), (1100, 40)])
def test_grouped_dot_int8_over_nz_storage_matches_integer_math(k, n):
    """The compiled VNNI GEMM reading FRACTAL_NZ int8 storage in place: groups out of order, an empty group, two
    groups of one expert, rows no group covers left as they were, K not a multiple of 4 (padded rows of x), N not a
    multiple of 32 (the storage's last band half padding), 1-9 rows (every tile height), more than 256 rows."""
    _dot_int8_or_skip()
    rng = np.random.default_rng(k * 1000 + n)
    e, kp, npad = 3, (k + 15) // 16 * 16, (n + 31) // 32 * 32
    w = rng.integers(-128, 128, (e, kp, npad), dtype=np.int8)
    storage = np.ascontiguousarray(w.reshape(e, kp // 16, 16, npad // 32, 32).transpose(0, 3, 1, 2, 4))
    bands = storage.reshape(e, npad // 32, kp, 32)
    runs = [(2, 300, 309), (0, 0, 1), (1, 1, 1), (0, 1, 9), (1, 9, 300)]
    x = rng.integers(-128, 128, (320, kp), dtype=np.int8)
    out = np.full((320, n), 12345, dtype=np.int32)
    assert impls.grouped_dot_int8(out, x, bands, n, runs)
    want = np.full((320, n), 12345, dtype=np.int64)
    for ex, s0, t in runs:
        for r in range(s0, t):  # a plain loop over rows, int64 math
            want[r] = x[r].astype(np.int64) @ w[ex, :, :n].astype(np.int64)
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_dot_int8_wraps_like_int32_and_takes_strided_weights():
    """K = 140000 products of -128 * -128 sum past 2^31: the int32 result wraps as the device's int32
    accumulation does; a weight view with N not a multiple of 32 and a column step (copied into bands first)."""
    _dot_int8_or_skip()
    k = 140000
    a = np.full((2, k), -128, dtype=np.int8)
    b = np.full((k, 32), -128, dtype=np.int8)
    b[:, 1] = 127
    got = impls.dot_int8(a, b)
    col = np.array([k * 16384, -k * 128 * 127] + [k * 16384] * 30, dtype=np.int64)
    np.testing.assert_array_equal(got, _int32_wrap(np.tile(col, (2, 1))))
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (5, 33), dtype=np.int8)
    full = rng.integers(-128, 128, (33, 70), dtype=np.int8)
    view = full[:, ::2]  # 35 columns, 2 bytes apart
    np.testing.assert_array_equal(impls.dot_int8(a, view).astype(np.int64), a.astype(np.int64) @ view.astype(np.int64))


def test_pick_prefers_the_in_place_int8_gemm_within_its_margin():
    assert mk._pick({"torch_int_mm": 1.0, "dot_int8": 1.05, "reference": 3.0}) == "dot_int8"
    assert mk._pick({"torch_int_mm": 1.0, "dot_int8": 1.2, "reference": 3.0}) == "torch_int_mm"
    assert mk._pick({"torch_int_mm": 1.0, "reference": 0.5}) == "reference"


def test_shape_classes_by_rows():
    expected = {1: "skinny", 16: "skinny", 17: "narrow", 32: "narrow", 33: "wide", 128: "wide", 256: "wide",
                257: "tall", 4096: "tall"}
    for rows, shape in expected.items():
        for dtype in ("fp32", "bf16", "fp16", "int8"):
            assert mk._shape_class(dtype, rows) == f"{dtype}.{shape}"
            assert f"{dtype}.{shape}" in mk.CLASSES
            # the K-split product: fp32's has a class of its own, the others go by x's columns
            assert mk._shape_class(dtype, rows, k_split=True) == ("fp32.ksplit" if dtype == "fp32" else
                                                                  f"{dtype}.{shape}")
    assert "fp32.ksplit" in mk.CLASSES and "torch_packed" not in mk.IMPLS_OF["fp32.ksplit"]


def test_a_tall_bf16_product_of_a_k_contiguous_weight_has_a_class_of_its_own():
    """bf16 groups of more than 256 rows times a weight whose k is contiguous (the backward's w^T): bf16.tall_t;
    any other dtype, size, layout or the K split: the class by rows."""
    w = np.zeros((3, 40, 24), dtype=np.float32)
    wt = np.zeros((3, 24, 40), dtype=np.float32).transpose(0, 2, 1)
    assert not mk._k_contiguous(w) and mk._k_contiguous(wt) and mk._k_contiguous(wt[1])
    assert not mk._k_contiguous(np.zeros((40, 1), dtype=np.float32))  # one column: both layouts
    assert mk._shape_class("bf16", 257, k_contiguous=True) == "bf16.tall_t" in mk.CLASSES
    assert mk._shape_class("bf16", 256, k_contiguous=True) == "bf16.wide"
    assert mk._shape_class("bf16", 257, k_split=True, k_contiguous=True) == "bf16.tall"
    for dtype in ("fp32", "fp16", "int8"):
        assert mk._shape_class(dtype, 4096, k_contiguous=True) == f"{dtype}.tall"
    assert "torch_packed" not in mk.IMPLS_OF["bf16.tall_t"]


def test_tall_k_contiguous_class_measured_between_the_dot_product_gemm_and_torch(monkeypatch, fresh_selection):
    """Where dot_bf16 and torch_native both meet the contract, only they are timed for bf16.tall_t, on a weight
    whose k is contiguous; where one is missing, every verified candidate is."""
    seen = {}

    def measure(cls, candidates):
        seen[cls] = list(candidates)
        return {c: (1.0 if c == "torch_native" else 2.0) for c in candidates}
    monkeypatch.setattr(mk, "_measure", measure)
    monkeypatch.setattr(mk, "_verified", lambda cls, impl: True)
    assert mk.choice("bf16.tall_t") == "torch_native" and sorted(seen["bf16.tall_t"]) == ["dot_bf16", "torch_native"]
    mk.reset()
    fresh = fresh_selection / "second"
    monkeypatch.setenv("ASCEND_MOE_CACHE_DIR", str(fresh))
    monkeypatch.setattr(mk, "_verified", lambda cls, impl: impl != "dot_bf16")
    mk.choice("bf16.tall_t")
    assert sorted(seen["bf16.tall_t"]) == ["reference", "torch_native", "torch_sgemm", "widen_fma"]
    # the probe's weight is a transposed view
    layouts = []
    real = impls.torch_grouped
    monkeypatch.setattr(impls, "torch_grouped", lambda out, a, b, *rest: layouts.append(mk._k_contiguous(b))
                        or real(out, a, b, *rest))
    mk._probe_runner("bf16.tall_t", "torch_native", (300, 64, 32, 2))()
    mk._probe_runner("bf16.tall", "torch_native", (300, 64, 32, 2))()
    assert layouts == [True, False]


def test_forcing_a_dtype_gives_the_k_split_class_the_same_gemm(monkeypatch, fresh_selection):
    """``fp32=torch_packed``: the K-split product's operands are activations, so its class gets torch's own GEMM
    (torch_sgemm); naming that class with torch_packed is refused."""
    monkeypatch.setattr(mk, "_measure", lambda cls, c: pytest.fail("a forced class is not measured"))
    force(monkeypatch, "fp32=torch_packed")
    assert mk.choice("fp32.wide") == "torch_packed" and mk.choice("fp32.ksplit") == "torch_sgemm"
    force(monkeypatch, "fp32=torch_sgemm")
    assert mk.choice("fp32.ksplit") == "torch_sgemm"
    force(monkeypatch, "fp32.ksplit=torch_packed")
    with pytest.raises(ValueError, match="not an implementation of fp32.ksplit"):
        mk.choice("fp32.ksplit")


def test_k_split_class_probe_runs_each_candidate_on_the_weight_gradient(monkeypatch, fresh_selection):
    """The fp32.ksplit probe times x^T @ dy per group for every candidate (the compiled one in one call)."""
    calls = []
    if impls._gemm is not None:
        real = impls._gemm.grouped_fma_fp32_ksplit
        monkeypatch.setattr(impls._gemm, "grouped_fma_fp32_ksplit", lambda *a: calls.append(a) or real(*a))
    candidates = [c for c in mk.IMPLS_OF["fp32.ksplit"] if mk._verified("fp32.ksplit", c)]
    assert "torch_sgemm" in candidates and "reference" in candidates
    timings = mk._measure("fp32.ksplit", candidates)
    assert set(timings) == set(candidates) and all(0 < v < float("inf") for v in timings.values())
    if "widen_fma" in candidates:
        assert calls and calls[-1][0].shape == (8, 1024, 512)


def test_pick_prefers_a_compiled_gemm_to_a_kept_packed_weight_within_its_margin():
    """torch_packed's probe time assumes its packed copy reused; within 10 % a compiled GEMM (nothing kept) wins."""
    assert mk._pick({"torch_packed": 1.0, "widen_fma": 1.08, "torch_sgemm": 1.2}) == "widen_fma"
    assert mk._pick({"torch_packed": 1.0, "widen_fma": 1.15, "dot_bf16": 1.09, "torch_native": 1.3}) == "dot_bf16"
    assert mk._pick({"torch_packed": 1.0, "widen_fma": 1.2, "torch_sgemm": 1.1}) == "torch_packed"
    assert mk._pick({"torch_packed": 1.0, "torch_sgemm": 1.05}) == "torch_packed"
    assert mk._pick({"torch_sgemm": 1.0, "widen_fma": 1.05}) == "torch_sgemm"  # only a kept form pays the margin


def test_nz_weight_read_in_place_by_dot_int8(monkeypatch):
    """Under dot_int8 a FRACTAL_NZ storage weight is not converted (no logical copy computed nor kept) and an
    in-place write is seen by the next call (checked against int64 math)."""
    _dot_int8_or_skip()
    from ascend_moe.sim import numerics
    force(monkeypatch, "int8=dot_int8")
    mk.WEIGHT_CACHE.clear()
    g = torch.Generator().manual_seed(19)
    x = torch.randint(-128, 128, (40, 64), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (2, 64, 96), generator=g, dtype=torch.int8)
    w_nz = torch.from_numpy(numerics.nd_to_nz(w.numpy()))  # 5-D NZ storage
    scale = torch.full((2, 96), 2.0 ** -10)
    gl = torch.tensor([17, 23])  # counts

    def check(out, w_nd):
        acc = torch.cat([x[:17].long() @ w_nd[0].long(), x[17:].long() @ w_nd[1].long()])
        # |acc| < 2^21 and a power-of-two scale: fp32(acc) * scale is exact, bf16 rounds once
        want = (acc.double() * 2.0 ** -10).to(torch.bfloat16)
        assert torch.equal(out, want)
    before = mk.WEIGHT_CACHE.facts_computed
    kw = dict(group_list=gl, group_list_type=1, scale=[scale], output_dtype=torch.bfloat16)
    check(am.npu_grouped_matmul([x], [w_nz], split_item=3, group_type=0, **kw)[0], w)
    w2 = torch.randint(-128, 128, (2, 64, 96), generator=g, dtype=torch.int8)
    w_nz.copy_(torch.from_numpy(numerics.nd_to_nz(w2.numpy())))
    check(am.npu_grouped_matmul([x], [w_nz], split_item=3, group_type=0, **kw)[0], w2)
    assert mk.WEIGHT_CACHE.facts_computed == before


def test_nz_weight_values_kept_until_the_weight_changes(monkeypatch):
    """The logical values of a FRACTAL_NZ storage weight are computed once while it is unchanged;
    after an in-place write the op sees the new values (checked against int64 math)."""
    from ascend_moe.sim import numerics
    force(monkeypatch, "int8=reference")
    mk.WEIGHT_CACHE.clear()
    g = torch.Generator().manual_seed(9)
    x = torch.randint(-128, 128, (32, 64), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (2, 64, 64), generator=g, dtype=torch.int8)
    w_nz = torch.from_numpy(numerics.nd_to_nz(w.numpy()))  # 5-D NZ storage
    ws, xs, gl = torch.full((2, 64), 1e-3), torch.full((32,), 1e-2), torch.tensor([16, 32])

    def check(out, w_nd):
        acc = torch.cat([x[:16].long() @ w_nd[0].long(), x[16:].long() @ w_nd[1].long()]).double()
        c = acc * 1e-3 * 1e-2  # the test's own fp64 epilogue: close to the fp32 kernel, not bit-equal
        a, b = c[:, :32], c[:, 32:]
        s = b * a / (1 + torch.exp(-a))
        want = s / (s.abs().amax(1, keepdim=True) / 127)
        assert (out[0].double() - want).abs().max() <= 1.0
    before = mk.WEIGHT_CACHE.facts_computed
    check(am.npu_grouped_matmul_swiglu_quant_v2(x, [w_nz], [ws], xs, gl), w)
    check(am.npu_grouped_matmul_swiglu_quant_v2(x, [w_nz], [ws], xs, gl), w)
    assert mk.WEIGHT_CACHE.facts_computed - before == 1
    w2 = torch.randint(-128, 128, (2, 64, 64), generator=g, dtype=torch.int8)
    w_nz.copy_(torch.from_numpy(numerics.nd_to_nz(w2.numpy())))
    check(am.npu_grouped_matmul_swiglu_quant_v2(x, [w_nz], [ws], xs, gl), w2)
    assert mk.WEIGHT_CACHE.facts_computed - before == 2


@pytest.mark.parametrize("kind", ["fp32", "bf16"])
def test_packed_weight_is_not_used_after_writes_that_move_no_version_counter(monkeypatch, kind):
    """Under the default content check a packed weight (made on its second unchanged use) is dropped after
    ``w.data.copy_(new)`` and a write through ``.numpy()``, neither of which moves ``w``'s version counter:
    each next call computes with the new values (small integers: every product and sum is exact, so the
    reference is int64 math)."""
    if not _packed_ok(kind):
        pytest.skip("torch_packed not eligible on this machine")
    monkeypatch.delenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", raising=False)
    force(monkeypatch, f"{kind}=torch_packed")
    mk.WEIGHT_CACHE.clear()
    dtype = torch.float32 if kind == "fp32" else torch.bfloat16
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (64, 48), generator=g).to(dtype)
    w = torch.randint(-3, 4, (2, 48, 40), generator=g).to(dtype)

    def want(wv):
        xi, wi = x.long(), wv.long()
        return torch.cat([xi[:32] @ wi[0], xi[32:] @ wi[1]]).to(dtype)
    packs = []
    for _ in range(3):
        before = mk.WEIGHT_CACHE.conversions
        assert torch.equal(am.npu_gmm(x, w, group_list=[32, 64]), want(w))
        packs.append(mk.WEIGHT_CACHE.conversions - before)
    assert packs == [0, 2, 0]   # packed on the second call, used on the third
    version = w._version
    w.data.copy_(torch.randint(-3, 4, (2, 48, 40), generator=g).to(dtype))
    assert w._version == version
    assert torch.equal(am.npu_gmm(x, w, group_list=[32, 64]), want(w))
    # a write through NumPy (bf16 has no .numpy(): its bits through an int16 view of the same storage)
    nine = 9.0 if kind == "fp32" else torch.tensor(9.0, dtype=dtype).view(torch.int16).item()
    (w if kind == "fp32" else w.view(torch.int16)).numpy()[1, 5, 7] = nine
    assert w._version == version and w[1, 5, 7].item() == 9
    for _ in range(2):
        assert torch.equal(am.npu_gmm(x, w, group_list=[32, 64]), want(w))


def test_content_digest_taken_only_for_reused_weights(monkeypatch):
    """Under the content check a weight is digested at most once per call, and only once it is reused at a
    version: a weight updated in place before every call (a training step) is never digested; one reused
    unchanged is digested from its second call on (to keep, then to verify, its entries).  Results equal
    int64 math throughout."""
    from ascend_moe.kernels import weight_cache
    monkeypatch.delenv("ASCEND_MOE_WEIGHT_CACHE_CHECK", raising=False)
    if not _native_ok("bf16"):
        pytest.skip("torch_native not eligible for bf16 on this machine (the reference path widens instead)")
    force(monkeypatch, "bf16=torch_native")   # the flush guard's scan is the weight's one kept fact
    mk.WEIGHT_CACHE.clear()
    digests = []
    real = weight_cache.content_digest
    monkeypatch.setattr(weight_cache, "content_digest", lambda lo, hi: digests.append(hi - lo) or real(lo, hi))
    g = torch.Generator().manual_seed(8)
    x = torch.randint(-3, 4, (64, 48), generator=g).bfloat16()
    w = torch.randint(-3, 4, (2, 48, 40), generator=g).bfloat16()

    def check():
        xi, wi = x.long(), w.long()
        want = torch.cat([xi[:32] @ wi[0], xi[32:] @ wi[1]]).bfloat16()
        assert torch.equal(am.npu_gmm(x, w, group_list=[32, 64]), want)
    per_call = []
    for _ in range(3):
        with torch.no_grad():
            w.add_(1)   # the version moves
        before = len(digests)
        check()
        per_call.append(len(digests) - before)
    assert per_call == [0, 0, 0]
    for _ in range(3):
        before = len(digests)
        check()
        per_call.append(len(digests) - before)
    assert per_call[3:] == [1, 1, 1] and set(digests) == {w.numel() * 2}


# ----------------------------------------------------------------------------------------------
# npu_gmm's compiled shortcut: the same bits as the general simulator path
# ----------------------------------------------------------------------------------------------

_SHORTCUT_CASES = [("bf16", "dot_bf16"), ("bf16", "widen_fma"), ("fp16", "widen_fma"), ("fp32", "widen_fma")]


@pytest.mark.parametrize("impl", ["widen_fma", "torch_sgemm"])
def test_fp32_weight_gradient_by_the_chosen_k_split_gemm(monkeypatch, impl):
    """npu_gmm's K split (group_type 2: the weight gradient x^T @ dy) in fp32 with fp32.ksplit's choice: the
    compiled K-split product in one call where widen_fma is chosen, torch's GEMM otherwise; on small integers
    (every partial sum exact) both give the integer sums, an empty group zeros."""
    _skip_unless_eligible(impl, "fp32")
    force(monkeypatch, f"fp32={impl}")
    calls = []
    if impls._gemm is not None:
        real = impls._gemm.grouped_fma_fp32_ksplit
        monkeypatch.setattr(impls._gemm, "grouped_fma_fp32_ksplit", lambda *a: calls.append(a) or real(*a))
    g = torch.Generator().manual_seed(8)
    x = torch.randint(-7, 8, (90, 70), generator=g).float()
    dy = torch.randint(-7, 8, (90, 45), generator=g).float()
    counts = [30, 0, 60]
    got = am.npu_gmm(x.t(), dy, group_list=torch.tensor(counts).cumsum(0), group_type=2)
    assert bool(calls) == (impl == "widen_fma")
    s = 0
    for e, c in enumerate(counts):
        want = torch.zeros(70, 45, dtype=torch.int64)
        for tok in range(s, s + c):
            want += torch.outer(x[tok].long(), dy[tok].long())
        assert torch.equal(got[e], want.float()), e
        s += c


def _gmm_both_ways(monkeypatch, call):
    """``call()`` with npu_gmm's compiled shortcut, then with the general path; both results."""
    taken = []
    decl = am.npu_gmm.__ascend_moe_decl__
    shortcut = decl.sim_shortcut

    def counting(a):
        result = shortcut(a)
        taken.append(result is not None)
        return result
    monkeypatch.setattr(decl, "sim_shortcut", counting)
    fast = call()
    monkeypatch.setattr(decl, "sim_shortcut", None)
    slow = call()
    return fast, slow, taken


def _same_bits(x, y):
    return torch.equal(x.contiguous().view(-1).view(torch.uint8), y.contiguous().view(-1).view(torch.uint8))


@pytest.mark.parametrize("impl", ["torch_native", "dot_bf16", "widen_fma"])
def test_tall_bf16_backward_by_the_k_contiguous_class_choice(monkeypatch, impl):
    """bf16 groups of more than 256 rows: the backward's dy @ w^T (a k-contiguous weight) runs bf16.tall_t's
    choice, torch's matmul where that is torch_native, while the forward keeps bf16.tall's (widen_fma; the weight
    gradient, which widen_fma does not take in bf16, its stand-in); every gradient rounds
    once within the fp32 summation bound of a float64 loop."""
    _skip_unless_eligible(impl, "bf16")
    if impl == "torch_native" and not mk._verified("bf16.tall_t", "torch_native"):
        pytest.skip("torch's bf16 matmul of a k-contiguous weight does not meet the contract here")
    _skip_unless_eligible("widen_fma", "bf16")
    force(monkeypatch, f"bf16=widen_fma,bf16.tall_t={impl}")
    mms = []  # torch GEMMs of a k-contiguous weight
    real_mm = torch.mm
    monkeypatch.setattr(impls.torch, "mm", lambda a, b, **kw: (b.stride(0) == 1 and mms.append(b.stride()))
                        or real_mm(a, b, **kw))
    g = torch.Generator().manual_seed(12)
    counts = [300, 0, 280]
    x = torch.randn(580, 96, generator=g).to(torch.bfloat16).requires_grad_()
    w = torch.randn(3, 96, 40, generator=g).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(580, 40, generator=g).to(torch.bfloat16)
    y = am.npu_gmm(x, w, group_list=list(np.cumsum(counts)))
    assert mms == []  # the forward: bf16.tall's compiled GEMM
    y.backward(dy)
    # torch's GEMM ran exactly for dy @ w^T's two groups (w[e]^T: [40, 96] with k contiguous) where it is chosen
    assert mms == ([(1, 40)] * 2 if impl == "torch_native" else [])
    assert_round_once_within_fp32_bound(y, *ref_gmm(x.detach(), w.detach(), counts))
    assert_round_once_within_fp32_bound(x.grad, *ref_gmm(dy, w.detach().transpose(-1, -2), counts))
    s = 0
    for i, c in enumerate(counts):
        xs, ds = x.detach()[s:s + c].double(), dy[s:s + c].double()
        assert_round_once_within_fp32_bound(w.grad[i], xs.t() @ ds, (c + 4) * U32 * (xs.abs().t() @ ds.abs()))
        s += c


@pytest.mark.parametrize("dtype_name,impl", _SHORTCUT_CASES)
def test_gmm_shortcut_gives_the_general_paths_bits_forward_and_backward(monkeypatch, dtype_name, impl):
    """Groups with an empty one and rows past the group list's total (undefined: the policy's value in both), a
    forward and its backward (the transposed-weight M split and, for dot_bf16 and fp32's widen_fma, the K split
    with an empty group's zero output)."""
    _skip_unless_eligible(impl, dtype_name)
    force(monkeypatch, f"{dtype_name}={impl}")
    dt = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(50, 300, generator=g).to(dt)
    w = torch.randn(4, 300, 70, generator=g).to(dt)
    dy = torch.randn(50, 70, generator=g).to(dt)
    gl = torch.tensor([7, 7, 30, 44])  # an empty group; rows 44-49 undefined

    def run():
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = am.npu_gmm(xr, wr, group_list=gl)
        y.backward(dy)
        return y.detach(), xr.grad, wr.grad
    fast, slow, taken = _gmm_both_ways(monkeypatch, run)
    assert taken[0], "the forward took the shortcut"
    for a, b in zip(fast, slow):
        assert _same_bits(a, b)
    ref, bound = ref_gmm(x, w, [7, 0, 23, 14])
    assert_round_once_within_fp32_bound(fast[0][:44], ref[:44], bound[:44])
    assert _same_bits(fast[2][1], torch.zeros(300, 70, dtype=dt))  # the empty group's weight gradient


def test_gmm_shortcut_counts_form_and_what_it_leaves_to_the_general_path(monkeypatch):
    """npu_gmm_v2's counts take it (not a negative count or a total past the rows); a bias, a list group list, a
    shared stride-0 weight, a group list past the rows do not (same results either way)."""
    _skip_unless_eligible("widen_fma", "fp32")
    force(monkeypatch, "fp32=widen_fma")
    g = torch.Generator().manual_seed(6)
    x, w = torch.randn(20, 40, generator=g), torch.randn(3, 40, 8, generator=g)
    decl2 = am.npu_gmm_v2.__ascend_moe_decl__
    got = decl2.sim_shortcut({"x": x, "weight": w, "bias": None, "group_list": torch.tensor([5, 0, 15]),
                              "group_type": 0})
    ref, bound = ref_gmm(x, w, [5, 0, 15])
    assert_round_once_within_fp32_bound(got, ref, bound)
    counts = {"x": x, "weight": w, "bias": None, "group_type": 0}
    for bad in ([5, -1, 16], [5, 0, 16]):  # a negative count; a total past the 20 rows
        assert decl2.sim_shortcut({**counts, "group_list": torch.tensor(bad)}) is None, bad
    shortcut = am.npu_gmm.__ascend_moe_decl__.sim_shortcut
    base = {"x": x, "weight": w, "bias": None, "group_list": torch.tensor([5, 5, 20]), "group_type": 0}
    assert shortcut(base) is not None
    for change in ({"bias": torch.zeros(3, 8)}, {"group_list": [5, 5, 20]},
                   {"weight": w[:1].expand(3, 40, 8)}, {"group_list": torch.tensor([5, 5, 21])},
                   {"group_list": torch.tensor([5, 4, 20])}):
        assert shortcut({**base, **change}) is None, change
    monkeypatch.setenv("ASCEND_MOE_KERNELS", "reference")
    assert shortcut(base) is None
