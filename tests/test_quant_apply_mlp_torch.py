"""vllm-ascend's W8A8 dynamic MoE MLP (``quant_apply_mlp`` in ``vllm_ascend/ops/fused_moe/moe_mlp.py``),
re-expressed here with the torch_npu drop-in, end to end on CPU tensors, against an integer / fp32
reference written in this test, bit for bit:

* unfused: ``npu_dynamic_quant`` -> gmm1 ``npu_grouped_matmul(int8 x, int8 NZ w1, scale, per_token_scale,
  output_dtype=bf16)`` -> ``npu_swiglu`` -> ``npu_dynamic_quant`` -> gmm2 (same form) -> bf16;
* fused (int32 + dequant): gmm1 with ``output_dtype=torch.int32`` -> ``npu_dequant_swiglu_quant(weight_scale,
  activation_scale, group_index=counts, activate_left=True, quant_mode=1)`` -> gmm2.
"""
import ml_dtypes
import numpy as np
import pytest
import torch

from ascend_moe.compat import torch_npu

pytestmark = pytest.mark.filterwarnings("ignore::ascend_moe.ConstraintWarning")

F = np.float32
BF16 = ml_dtypes.bfloat16


# ---------------------------------------------------------------------------------------------
# vllm-ascend's computation, in this test's words (torch_npu names, the drop-in underneath)
# ---------------------------------------------------------------------------------------------

def apply_mlp(hidden, w1, w1_scale, w2, w2_scale, group_list, fused: bool):
    x8, pts = torch_npu.npu_dynamic_quant(hidden)
    if fused:
        h = torch_npu.npu_grouped_matmul(x=[x8], weight=[w1], split_item=3, group_list_type=1, group_type=0,
                                         group_list=group_list, output_dtype=torch.int32)[0]
        h8, pts2 = torch_npu.npu_dequant_swiglu_quant(x=h, weight_scale=w1_scale, activation_scale=pts,
                                                      bias=None, quant_scale=None, quant_offset=None,
                                                      group_index=group_list, activate_left=True, quant_mode=1)
    else:
        h = torch_npu.npu_grouped_matmul(x=[x8], weight=[w1], scale=[w1_scale], per_token_scale=[pts],
                                         split_item=2, group_list_type=1, group_type=0, group_list=group_list,
                                         output_dtype=w2_scale.dtype)[0]
        h = torch_npu.npu_swiglu(h)
        h8, pts2 = torch_npu.npu_dynamic_quant(h)
    return torch_npu.npu_grouped_matmul(x=[h8], weight=[w2], scale=[w2_scale], per_token_scale=[pts2],
                                        split_item=2, group_list_type=1, group_type=0, group_list=group_list,
                                        output_dtype=w2_scale.dtype)[0]


# ---------------------------------------------------------------------------------------------
# the reference: int64 GEMMs, explicit float32 steps
# ---------------------------------------------------------------------------------------------

def ref_exp(v):
    return np.exp(v.astype(np.float64)).astype(F)


def ref_dynamic_quant(v):
    v = v.astype(F)
    amax = np.abs(v).max(axis=1)
    qs = (F(127) / amax).astype(F)
    q = np.clip(np.rint((v * qs[:, None]).astype(F).astype(np.float64)), -128, 127).astype(np.int64)
    return q, (F(1) / qs).astype(F)


def ref_gemm(x8, w, rows):
    return np.stack([x8[r] @ w[e].astype(np.int64) for r, e in enumerate(rows)])


def ref_dequant_bf16(acc, scale, pts, rows):
    d = (acc.astype(F) * scale.astype(F)[rows]).astype(F)
    return (d * pts[:, None]).astype(F).astype(BF16)


def reference(x, w1, w1_scale, w2, w2_scale, counts, fused):
    rows = np.repeat(np.arange(len(counts)), counts)
    x8, pts = ref_dynamic_quant(x.astype(F))
    acc = ref_gemm(x8, w1, rows)
    n = acc.shape[1] // 2
    if fused:
        d = (pts[:, None] * (w1_scale[rows] * acc.astype(F)).astype(F)).astype(F)
        a, g = d[:, :n], d[:, n:]
        s = (g * (a / (ref_exp(-a) + F(1))).astype(F)).astype(F)
        sc = (np.abs(s).max(axis=1) * F(1.0 / 127)).astype(F)
        h8 = np.clip(np.rint((s / sc[:, None]).astype(F).astype(np.float64)), -128, 127).astype(np.int64)
        pts2 = sc
    else:
        h = ref_dequant_bf16(acc, w1_scale, pts, rows).astype(F)
        a, b = h[:, :n], h[:, n:]
        h = ((a / (ref_exp(-a) + F(1))).astype(F) * b).astype(F).astype(BF16)
        h8, pts2 = ref_dynamic_quant(h.astype(F))
    return ref_dequant_bf16(ref_gemm(h8, w2, rows), w2_scale.astype(F), pts2, rows)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_quant_apply_mlp_w8a8_through_the_drop_in_bit_exact(fused, seed):
    rng = np.random.default_rng(seed)
    E, H, I = 4, 64, 64
    counts = rng.multinomial(20, np.ones(E) / E).astype(np.int64)
    T = int(counts.sum())
    x = (rng.standard_normal((T, H)) * 2).astype(F).astype(BF16)
    w1 = rng.integers(-128, 128, (E, H, 2 * I)).astype(np.int8)
    w2 = rng.integers(-128, 128, (E, I, H)).astype(np.int8)
    w1_scale = (rng.random((E, 2 * I)) * 2e-4 + 1e-5).astype(F)
    w2_scale = (rng.random((E, H)) * 2e-3 + 1e-4).astype(F).astype(BF16)

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    hidden = t(x.view(np.int16)).view(torch.bfloat16)
    w1_nz = torch_npu.npu_format_cast(t(w1), 29)
    w2_nz = torch_npu.npu_format_cast(t(w2), 29)
    s2 = t(w2_scale.view(np.int16)).view(torch.bfloat16)
    out = apply_mlp(hidden, w1_nz, t(w1_scale), w2_nz, s2, t(counts), fused)
    want = reference(x, w1, w1_scale, w2, w2_scale, counts, fused)
    assert out.dtype == torch.bfloat16 and tuple(out.shape) == (T, H)
    assert np.array_equal(out.view(torch.int16).numpy(), want.view(np.int16))


def test_quantised_grouped_matmul_fake_and_meta_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    x = torch.zeros(6, 32, dtype=torch.int8)
    w = torch_npu.npu_format_cast(torch.zeros(2, 32, 64, dtype=torch.int8), 29)
    kw = dict(scale=[torch.ones(2, 64, dtype=torch.bfloat16)], per_token_scale=[torch.ones(6)], split_item=2,
              group_list_type=1, group_type=0, group_list=torch.tensor([2, 4]), output_dtype=torch.bfloat16)
    with FakeTensorMode() as mode:
        (y,) = torch_npu.npu_grouped_matmul([mode.from_tensor(x)], [mode.from_tensor(w)], **{
            k: ([mode.from_tensor(i) for i in v] if isinstance(v, list) else mode.from_tensor(v)
                if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert tuple(y.shape) == (6, 64) and y.dtype == torch.bfloat16
    (yi,) = torch_npu.npu_grouped_matmul([x], [w], split_item=3, group_type=0, group_list=torch.tensor([2, 6]),
                                         output_dtype=torch.int32)
    assert yi.dtype == torch.int32 and tuple(yi.shape) == (6, 64)
    w4 = torch.zeros(2, 32, 8, dtype=torch.int32)                     # int4 packed: N = 8 * 8
    (y4,) = torch_npu.npu_grouped_matmul([x], [w4], scale=[torch.zeros(2, 64, dtype=torch.int64)],
                                         bias=[torch.zeros(2, 64)], per_token_scale=[torch.ones(6)],
                                         split_item=2, group_type=0, group_list_type=1,
                                         group_list=torch.tensor([2, 4]), output_dtype=torch.bfloat16)
    assert tuple(y4.shape) == (6, 64) and y4.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float_weights_after_format_cast_29_give_the_nd_numbers(dtype):
    """bf16/fp16 weights after npu_format_cast(w, 29) (as vllm-ascend formats float MoE weights): accepted by
    npu_grouped_matmul, same numbers as the ND weight; MindSpeed's npu_gmm with an NZ weight is not simulated
    (no public source says what the device does with it)."""
    import ascend_moe
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 32, generator=g).to(dtype)
    w = torch.randn(2, 32, 48, generator=g).to(dtype)
    gl = torch.tensor([2, 4])
    kw = dict(group_list=gl, split_item=2, group_type=0, group_list_type=1)
    (y_nd,) = torch_npu.npu_grouped_matmul([x], [w], **kw)
    (y_nz,) = torch_npu.npu_grouped_matmul([x], [torch_npu.npu_format_cast(w, 29)], **kw)
    assert torch.equal(y_nd, y_nz)
    with pytest.raises(ascend_moe.NotSimulatedError, match="takes ND weights"):
        ascend_moe.npu_gmm(x, ascend_moe.npu_format_cast(w, 29), group_list=[2, 6])
