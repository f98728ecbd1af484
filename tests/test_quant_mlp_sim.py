"""vllm-ascend's W8A8 dynamic MoE MLP (``quant_apply_mlp``), re-expressed here, through the simulator, against an
integer / fp32 reference written in this test, bit for bit.

The two computations (vllm-ascend ``vllm_ascend/ops/fused_moe/moe_mlp.py``):

* unfused: ``npu_dynamic_quant(x)`` -> gmm1 ``npu_grouped_matmul(int8 x, int8 NZ w1, scale=[w1_scale],
  per_token_scale=[pts], output_dtype=bf16)`` -> ``npu_swiglu`` -> ``npu_dynamic_quant`` -> gmm2 (same form) -> bf16;
* fused (int32 + dequant): ``npu_dynamic_quant(x)`` -> gmm1 with ``output_dtype=int32`` ->
  ``npu_dequant_swiglu_quant(weight_scale=w1_scale fp32, activation_scale=pts, group_index=counts,
  activate_left=True, quant_mode=1)`` -> gmm2 -> bf16.
"""
import ml_dtypes
import numpy as np
import pytest

from ascend_moe.sim import gmm_quant as gq
from ascend_moe.sim import quant_ops as q
from ascend_moe.sim.quant_gemm import weight_to_nz_storage

F = np.float32
BF16 = ml_dtypes.bfloat16


# ---------------------------------------------------------------------------------------------
# the reference: integer GEMMs in int64, every fp32 step an explicit float32 operation
# ---------------------------------------------------------------------------------------------

def ref_exp(v):
    return np.exp(v.astype(np.float64)).astype(F)


def ref_dynamic_quant(x):
    v = x.astype(F)
    amax = np.abs(v).max(axis=1)
    qs = (F(127) / amax).astype(F)
    t = (v * qs[:, None]).astype(F)
    q8 = np.clip(np.rint(t.astype(np.float64)), -128, 127).astype(np.int64)
    return q8, (F(1) / qs).astype(F)


def ref_rows(counts):
    return np.repeat(np.arange(len(counts)), counts)


def ref_int_gemm(x8, w, counts):
    rows = ref_rows(counts)
    out = np.zeros((x8.shape[0], w.shape[2]), np.int64)
    for r, e in enumerate(rows):
        out[r] = x8[r].astype(np.int64) @ w[e].astype(np.int64)
    return out


def ref_dequant_bf16(acc, scale, pts, counts):
    rows = ref_rows(counts)
    d = (acc.astype(F) * scale.astype(F)[rows]).astype(F)
    d = (d * pts[:, None]).astype(F)
    return d.astype(BF16)


def ref_swiglu_bf16(h):
    n = h.shape[1] // 2
    a, b = h[:, :n].astype(F), h[:, n:].astype(F)
    t = (ref_exp(-a) + F(1)).astype(F)
    return ((a / t).astype(F) * b).astype(F).astype(BF16)


def ref_dequant_swiglu_quant(acc, w_scale, pts, counts):
    rows = ref_rows(counts)
    d = (w_scale.astype(F)[rows] * acc.astype(F)).astype(F)
    d = (pts[:, None] * d).astype(F)
    n = d.shape[1] // 2
    a, g = d[:, :n], d[:, n:]                      # activate_left=True: the first half is activated
    s = (g * (a / (ref_exp(-a) + F(1))).astype(F)).astype(F)
    sc = (np.abs(s).max(axis=1) * F(1.0 / 127)).astype(F)
    v = (s / sc[:, None]).astype(F)
    return np.clip(np.rint(v.astype(np.float64)), -128, 127).astype(np.int64), sc


def layer(seed, H=64, I=32, E=4):
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(24, np.ones(E) / E).astype(np.int64)
    T = int(counts.sum())
    x = (rng.standard_normal((T, H)) * 2).astype(F).astype(BF16)
    w1 = rng.integers(-128, 128, (E, H, 2 * I)).astype(np.int8)
    w2 = rng.integers(-128, 128, (E, I, H)).astype(np.int8)
    w1_scale = (rng.random((E, 2 * I)) * 2e-4 + 1e-5).astype(F)
    w2_scale = (rng.random((E, H)) * 2e-3 + 1e-4).astype(F).astype(BF16)
    return x, w1, w2, w1_scale, w2_scale, counts


@pytest.mark.parametrize("seed", range(4))
def test_unfused_w8a8_mlp_bit_exact(seed):
    x, w1, w2, w1_scale, w2_scale, counts = layer(seed)
    # the simulator, as vllm-ascend calls the ops (weights in NZ storage, group_list counts)
    x8, pts = q.dynamic_quant(x)
    h = gq.quant_grouped_matmul(x8, weight_to_nz_storage(w1), counts, group_list_type=1,
                                scale=w1_scale.astype(BF16), per_token_scale=pts, output_dtype="bfloat16")
    h = q.swiglu(h)
    h8, pts2 = q.dynamic_quant(h)
    y = gq.quant_grouped_matmul(h8, weight_to_nz_storage(w2), counts, group_list_type=1, scale=w2_scale,
                                per_token_scale=pts2, output_dtype="bfloat16")
    # the reference
    rx8, rpts = ref_dynamic_quant(x)
    rh = ref_dequant_bf16(ref_int_gemm(rx8, w1, counts), w1_scale.astype(BF16), rpts, counts)
    rh = ref_swiglu_bf16(rh)
    rh8, rpts2 = ref_dynamic_quant(rh)
    ry = ref_dequant_bf16(ref_int_gemm(rh8, w2, counts), w2_scale, rpts2, counts)
    assert np.array_equal(x8, rx8) and np.array_equal(h8, rh8)
    assert np.array_equal(y.view(np.uint16), ry.view(np.uint16))


@pytest.mark.parametrize("seed", range(4))
def test_fused_int32_dequant_swiglu_quant_mlp_bit_exact(seed):
    x, w1, w2, w1_scale, w2_scale, counts = layer(seed + 10)
    x8, pts = q.dynamic_quant(x)
    acc = gq.quant_grouped_matmul(x8, weight_to_nz_storage(w1), counts, group_list_type=1, output_dtype="int32")
    h8, pts2 = q.dequant_swiglu_quant(acc, weight_scale=w1_scale, activation_scale=pts, group_index=counts,
                                      activate_left=True, quant_mode=1)
    y = gq.quant_grouped_matmul(h8, weight_to_nz_storage(w2), counts, group_list_type=1, scale=w2_scale,
                                per_token_scale=pts2, output_dtype="bfloat16")
    rx8, rpts = ref_dynamic_quant(x)
    racc = ref_int_gemm(rx8, w1, counts)
    rh8, rpts2 = ref_dequant_swiglu_quant(racc, w1_scale, rpts, counts)
    ry = ref_dequant_bf16(ref_int_gemm(rh8, w2, counts), w2_scale, rpts2, counts)
    assert np.array_equal(acc, racc) and np.array_equal(h8, rh8) and np.array_equal(pts2, rpts2)
    assert np.array_equal(y.view(np.uint16), ry.view(np.uint16))
    # both paths approximate the float MLP (a sanity check of the wiring, not of the bits)
    xf = x.astype(np.float64)
    rows = ref_rows(counts)
    hf = np.stack([xf[r] @ (w1[e] * w1_scale[e]) for r, e in enumerate(rows)])
    a, b = hf[:, :32], hf[:, 32:]
    sf = a / (1 + np.exp(-a)) * b
    yf = np.stack([sf[r] @ (w2[e] * w2_scale[e].astype(np.float64)) for r, e in enumerate(rows)])
    assert np.abs(y.astype(np.float64) - yf).max() <= 0.05 * np.abs(yf).max()
