"""NumPy twin of ``torch_npu.npu_ffn`` / ``aclnnFFNV2``: FFN and MoE-FFN (spec gating-and-ffn.md Part B).

Formula (per expert slice of the rows of ``x`` flattened to ``[M, K1]``; without experts one slice)::

    non-quant : y = act(x @ W1 + b1) @ W2 + b2
    quant     : y = ((quant(act((x @ W1 + b1) * deq1) * scale + offset)) @ W2 + b2) * deq2
    antiquant : y = act(x @ ((W1 + aoff1) * ascale1) + b1) @ ((W2 + aoff2) * ascale2) + b2
    GLU       : h = x @ W1 + b1;  y = (h[:, :N1/2] * act(h[:, N1/2:])) @ W2 + b2

Precision flow per kernel (spec B.4.1; "T-ops" = every elementary vector op rounds to T):

=====================  ===========================  ===================  =======================  =====
scenario               MM1 output                   activation           MM2 input                y
=====================  ===========================  ===================  =======================  =====
fp16, inner_precise=1  fp32 acc + b1 -> fp16 (RNE)  fp16-ops             (already fp16)           fp16
fp16, inner_precise=0  fp32 acc + b1 (fp32)         fp32-ops             CAST_ROUND fp32->fp16    fp16
bf16 (inner_precise 0) fp32 acc + b1 (fp32 bias)    fp32-ops             CAST_ROUND fp32->bf16    bf16
antiquant fp16         fp32 acc + b1 -> fp16        fp16-ops             (already fp16)           fp16
antiquant bf16         fp32 acc + b1 (fp32 bias)    fp32-ops             CAST_ROUND fp32->bf16    bf16
quant, y fp16          int32 acc + b1, fixpipe      fp16-ops             AscendQuant (fp16) int8  fp16
                       dequant -> fp16
quant, y bf16          int32 acc + b1, AscendDequant fp32-ops            fp32->fp16, AscendQuant  bf16
                       -> fp32                                           (fp16) int8
GLU (fp16, ip=1)       fp32 acc + b1 -> fp16        fp32 ops, ->fp16 RNE  (already fp16)          fp16
=====================  ===========================  ===================  =======================  =====

(The CAST_ROUND after an fp32 activation is ``Elewise1Compute`` in the kernels, e.g. ``ffn_antiquant.h``.)
So for fp16 the two ``inner_precise`` flows differ in exactly these places: with 1 the MM1 result is
rounded to fp16 (RNE) before the activation and every activation op (Muls, Exp, Adds, Div, ...) rounds
to fp16; with 0 the MM1 result and the activation stay fp32 and the only rounding is the final
``Cast(fp32 -> fp16, CAST_ROUND)`` - round half **away from zero** (not RNE).  MM2 is identical.

Activations, op by op as the AscendC kernels compute them (spec B.4.2), each op rounding to the
compute dtype T:

* ``fastgelu`` (AscendC ``FasterGelu``): ``x / (1 + exp(-1.702 * x))`` - Muls(-1.702), Exp, Adds(1),
  Div.  Not the tanh GELU, not FasterGeluV2.
* ``gelu`` (AscendC ``Gelu``, tanh form): ``y = 1.5957691216057308 * (x + 0.044715 * x*x*x)``
  (Mul x*x, Mul *x, Muls 0.044715, Add x, Muls), ``out = (x / (exp(-|y|) + 1)) * exp(min(y, 0))``.
* ``relu``: ``max(x, 0)``;  ``silu``: ``x / (1 + exp(-x))`` (Muls(-1), Exp, Adds(1), Div).
* GLU family (fp16 only): the **second** half ``r = h[:, N1/2:]`` goes through the activation and
  gates the first half ``l`` (kernel ``ffn_glu``: two matmuls at W1 column offsets 0 and N1/2):
  ``swiglu: l * (r / (1 + exp(-r)))``, ``geglu: l * (r / (1 + exp(-0.0713548162726 * r * (r*r +
  22.363860002236))))``, ``reglu: l * max(r, 0)``, computed in fp32 from the fp16 halves, rounded to
  fp16 with RNE (CAST_NONE).  Sources: kernel ``ffn_glu`` MM1Compute (left = W1 columns [0, N1/2), right =
  [N1/2, N1)) calls ``SwiGLU(out, left, right, BETA_)``; AscendC ``SwiGLUImpl<half>`` computes
  ``Swish(src1) * src0`` in fp32.  (aclnnSwiGlu uses the opposite half: not the same convention.)

Quantisation details:

* int64 / uint64 / float32 ``deq_scale`` (y fp16): the fixpipe multiplies with the scale's fp32 bits
  from the low word, truncated to FP19 (``bits & 0xFFFFE000``, via :func:`numerics.decode_int64_scale`,
  an **inferred** device behaviour); ``y16 = RNE16(fp32(acc) * s)`` with the int32->fp32 conversion
  and the multiply in fp32 RNE [I].
* bf16 ``deq_scale`` (y bf16): AscendDequant ``fp32(acc) * fp32(deq)`` in fp32; MM2 output rounded
  to bf16 with RNE [I].
* AscendQuant (AscendC ``ascend_quant_pre_impl.h``, CANN 8.1.RC1, v220): the activation (fp32 ->
  fp16 with CAST_NONE), scale and offset are converted to fp16 (RNE); ``t = act * scale`` (Muls / Mul)
  then ``t + offset`` (Adds) in fp16; ``Cast<int8, half>(CAST_NONE)`` = half to even, saturated to
  [-128, 127] (saturation [I]).
* int32 biases are added to the int32 accumulator before dequantisation (cube bias table) [I].
* antiquant weights (kernel ``ffn_antiquant.h`` CastWeightCompute -> AscendAntiQuant): ``W_T = (T(W_int8) +
  offset) * scale`` with fp16 ops for fp16; for bf16 (AscendC ``ascend_antiquant_c220_impl.h``, CANN 8.1.RC1)
  int8 -> fp16 -> fp32, ``+ fp32(offset)``, ``* fp32(scale)``, then ``Cast(bf16, CAST_RINT)``.

Faithfulness contract: integer GEMMs are **exact** (float64 BLAS on int8 operands: every partial sum
is an integer below 2**53, wrapped to int32 like the accumulator); float GEMMs are **fp32-accumulate**
(BLAS order, the cube's K-chunk order is not public: last-bit differences in the MM outputs are
possible); every elementwise step follows the kernel's op order and rounding; the hardware ``exp``
accuracy is not public (NumPy's exp, rounded to T, is used).  Not modelled: the antiquant "MSD" kernel
(tiling key 15, int8 weights with N1 % 512 == 0, N1 > 1024, K1 % 512 == 0, K1 > 2048, M <= 512),
whose int8 decomposition rounds differently: for those shapes this simulator is approximate and says
so with an :class:`ApproximateWarning`.

Undefined regions: valid calls never leave rows unwritten (the host requires the expert tokens to
cover exactly M rows).  :func:`ffn_compute` (unchecked) fills rows past the tokens' total, and the
whole output of a GLU call with K1 == 0, by the undefined-region policy.  N1 == 0 writes ``b2`` (or
zeros) into every covered row (kernel ``ProcessZeroN1``).
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import numerics as nm

__all__ = ["ffn_compute"]

ACTIVATIONS = ("fastgelu", "gelu", "relu", "silu", "geglu", "swiglu", "reglu")
GLU_ACTIVATIONS = ("geglu", "swiglu", "reglu")
MAX_EXPERT_NUM = 256

_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_BF16 = nm.np_dtype("bfloat16")


# ------------------------------------------------------------------------------------------------
# roundings the numerics core does not provide
# ------------------------------------------------------------------------------------------------

def cast_round(x: np.ndarray, dtype: str) -> np.ndarray:
    """fp32 -> fp16/bf16 with the device's ``CAST_ROUND``: nearest, ties **away from zero**.

    numerics.cast is RNE (``CAST_RINT``/``CAST_NONE``); the high-precision FFN flows end with
    CAST_ROUND (spec B.4.1).  bf16: add half an ulp to the magnitude bits and truncate (sign-magnitude
    format, so this rounds half away); fp16: RNE, then move ties that went to the even neighbour
    towards zero one step away from zero (decided exactly in float64).
    """
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):  # overflow to inf is the IEEE result (device saturation: not public)
        return _cast_round(x, dtype)


def _cast_round(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        bits = x.view(np.uint32)
        rounded = ((bits + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32)
        rounded = np.where(np.isnan(x), x, rounded)
        return rounded.astype(_BF16)  # exact: already representable
    if dtype != "float16":
        raise ValueError(f"cast_round supports float16 and bfloat16, got {dtype!r}")
    r = x.astype(_F16)
    x64 = x.astype(np.float64)
    r64 = r.astype(np.float64)
    towards_zero = np.isfinite(r64) & (np.abs(r64) < np.abs(x64))
    if np.any(towards_zero):
        away = np.nextafter(r, np.copysign(np.float16(np.inf), x).astype(_F16))
        tie = towards_zero & (x64 - r64 == away.astype(np.float64) - x64)
        r = np.where(tie, away, r)
    return r


# ------------------------------------------------------------------------------------------------
# activations (op by op, every op rounding to the compute dtype of its input)
# ------------------------------------------------------------------------------------------------

def _c(value: float, dt: np.dtype):
    """A scalar operand of a Muls/Adds as the kernel holds it (``const T c = value``)."""
    return np.asarray(value, dtype=np.float64).astype(dt)


def act_fastgelu(x: np.ndarray) -> np.ndarray:
    """AscendC FasterGelu: ``x / (1 + exp(-1.702 x))`` - Muls, Exp, Adds, Div in x's dtype."""
    dt = x.dtype
    with np.errstate(over="ignore"):
        t = x * _c(-1.702, dt)
        t = np.exp(t)
        t = t + _c(1.0, dt)
        return x / t


def act_gelu(x: np.ndarray) -> np.ndarray:
    """AscendC Gelu (GeluCalcSimplifiedAvoid, tanh form): ``x / (exp(-|y|) + 1) * exp(min(y, 0))``,
    ``y = 1.5957691216057308 (x + 0.044715 x^3)``."""
    dt = x.dtype
    with np.errstate(over="ignore", invalid="ignore"):
        a = x * x
        b = x * a
        a = b * _c(0.044715, dt)
        b = x + a
        y = b * _c(1.5957691216057308, dt)
        e_neg = np.exp(np.minimum(y, _c(0.0, dt)))
        t = np.abs(y)
        t = t * _c(-1.0, dt)
        t = np.exp(t)
        t = t + _c(1.0, dt)
        t = x / t
        return t * e_neg


def act_relu(x: np.ndarray) -> np.ndarray:
    """AscendC Relu: ``max(x, 0)``."""
    return np.maximum(x, _c(0.0, x.dtype))


def act_silu(x: np.ndarray) -> np.ndarray:
    """AscendC Silu: ``x / (1 + exp(-x))`` - Muls(-1), Exp, Adds(1), Div."""
    dt = x.dtype
    with np.errstate(over="ignore"):
        t = x * _c(-1.0, dt)
        t = np.exp(t)
        t = t + _c(1.0, dt)
        return x / t


ELEMENTWISE = {"fastgelu": act_fastgelu, "gelu": act_gelu, "relu": act_relu, "silu": act_silu}


def glu(h16: np.ndarray, activation: str) -> np.ndarray:
    """GLU of an fp16 ``[rows, N1]`` MM1 output: ``left * act(right)``, the activation on the
    **second** half; fp32 ops, RNE to fp16 (spec B.4.2)."""
    n = h16.shape[-1] // 2
    left = h16[:, :n].astype(_F32)
    r = h16[:, n:].astype(_F32)
    f = np.float32
    with np.errstate(over="ignore", invalid="ignore"):
        if activation == "swiglu":  # beta = 1.0 (ffn.h BETA_)
            t = r * f(-1.0)
            t = np.exp(t)
            t = t + f(1.0)
            a = r / t
        elif activation == "geglu":
            t = r * r
            t = t + f(22.363860002236)
            t = t * r
            t = t * f(-0.0713548162726)
            t = np.exp(t)
            t = t + f(1.0)
            a = r / t
        elif activation == "reglu":
            a = np.maximum(r, f(0.0))
        else:
            raise ValueError(f"not a GLU activation: {activation!r}")
        return (left * a).astype(_F16)


# ------------------------------------------------------------------------------------------------
# matmuls
# ------------------------------------------------------------------------------------------------

def _mm_f32(a: np.ndarray, w: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """Cube float matmul: fp32 accumulation, bias (any float dtype) added in fp32; fp32 result."""
    acc = np.matmul(a.astype(_F32, copy=False), w.astype(_F32, copy=False))
    if bias is not None:
        acc += bias.astype(_F32)
    return acc


def _mm_int(a: np.ndarray, w: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """Cube int8 x int8 matmul with int32 bias: exact (float64 BLAS is exact here: |partial sums|
    <= 65535 * 128 * 128 < 2**53), result wrapped to int32 like the accumulator."""
    acc = np.matmul(a.astype(np.float64), w.astype(np.float64)).astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64)
    return acc.astype(np.int32)  # wraps modulo 2**32 like an int32 accumulator


def _fixpipe_dequant_f16(acc: np.ndarray, s_eff: np.ndarray) -> np.ndarray:
    """int32 accumulator -> fp16 with the fixpipe's FP19 scale: fp32(acc) * s (fp32 RNE), RNE16 [I]."""
    return (acc.astype(_F32) * s_eff).astype(_F16)


def _ascend_quant(act: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """AscendQuant: src, scale, offset to fp16; ``rint(src * scale + offset)`` in fp16; int8."""
    t = act.astype(_F16) * scale.astype(_F32).astype(_F16)
    t = t + offset.astype(_F32).astype(_F16)
    return nm.float_to_int(t, "int8", rounding="rint", saturate=True)


def _antiquant_weight(w: np.ndarray, scale: np.ndarray, offset: np.ndarray, dt: str) -> np.ndarray:
    """AscendAntiQuant per channel: ``(W + offset) * scale`` in T (fp16 ops; bf16 via fp32) [C/I]."""
    if dt == "float16":
        return (w.astype(_F16) + offset.astype(_F16)) * scale.astype(_F16)
    t = (w.astype(_F32) + offset.astype(_F32)) * scale.astype(_F32)
    return t.astype(_BF16)


# ------------------------------------------------------------------------------------------------
# scenario selection and the expert split
# ------------------------------------------------------------------------------------------------

class ApproximateWarning(UserWarning):
    """The call selects a device kernel whose rounding this simulator does not model."""


def uses_msd_kernel(x_dtype: str, w_dtype: str, m: int, k1: int, n1: int, num_experts: int) -> bool:
    """True when the tiling would pick the antiquant MSD kernel (key 15, spec B.6, ``CheckMSD``): fp16/bf16
    x, int8 weights, N1 % 512 == 0 and N1 > 1024, K1 % 512 == 0 and K1 > 2048, M <= 512 and mean tokens
    per expert <= N1 / 2560 * 16."""
    if x_dtype not in ("float16", "bfloat16") or w_dtype != "int8":
        return False
    e = max(num_experts, 1)
    return (n1 % 512 == 0 and n1 > 1024 and k1 % 512 == 0 and k1 > 2048 and m <= 512
            and m / e <= n1 / 2560 * 16)


def scenario(x_dtype: str, w_dtype: str, activation: str, inner_precise: int, quant: bool) -> str:
    """The kernel template a valid call runs (spec B.5): one of ``glu``, ``fp16_high_performance``,
    ``fp16_high_precision``, ``bf16``, ``antiquant_fp16``, ``antiquant_bf16``, ``quant``."""
    if activation in GLU_ACTIVATIONS:
        return "glu"
    if x_dtype == "int8" or quant:
        return "quant"
    if w_dtype in ("int8", "int4"):
        return "antiquant_" + ("bf16" if x_dtype == "bfloat16" else "fp16")
    if x_dtype == "bfloat16":
        return "bf16"
    return "fp16_high_performance" if inner_precise == 1 else "fp16_high_precision"


def expert_bounds(m: int, expert_tokens: Optional[Sequence[int]],
                  expert_tokens_index: Optional[Sequence[int]]) -> Optional[List[Tuple[int, int]]]:
    """Row ranges ``[(start, end), ...]`` per expert, or None without experts.

    Counts: expert e gets rows ``[sum(c[:e]), sum(c[:e+1]))``; index mode: inclusive cumulative end
    offsets (``cumsum(counts)``).  Ranges are clipped to ``[0, m]``.
    """
    def as_list(v):
        if v is None:
            return None
        arr = np.asarray(v, dtype=np.int64).reshape(-1)
        return arr if arr.size else None
    counts = as_list(expert_tokens)
    ends = as_list(expert_tokens_index)
    if counts is None and ends is None:
        return None
    if counts is not None:
        ends = np.cumsum(counts)
    bounds = []
    start = 0
    for end in ends.tolist():
        s, t = min(max(start, 0), m), min(max(int(end), 0), m)
        bounds.append((s, max(s, t)))
        start = int(end)
    return bounds


def _per_expert(a: Optional[np.ndarray], e: int, has_experts: bool) -> Optional[np.ndarray]:
    if a is None:
        return None
    return a[e] if has_experts else a


def _quant_param(a: np.ndarray, e: int, has_experts: bool) -> np.ndarray:
    """scale / offset of expert e: per-tensor ``[1]``/``[E]`` -> scalar, per-channel ``[N]``/``[E,N]``."""
    a = np.asarray(a)
    if has_experts:
        return a[e] if a.ndim == 2 else a[e:e + 1]
    return a


def _norm_activation(activation: str) -> str:
    return str(activation).lower()


def _out_dtype_name(output_dtype: Any) -> Optional[str]:
    if output_dtype is None:
        return None
    if isinstance(output_dtype, (int, np.integer)) and not isinstance(output_dtype, bool):
        return {-1: "float16", 0: "float16", 1: "bfloat16"}.get(int(output_dtype), str(output_dtype))
    return nm.dtype_name(output_dtype)


def y_dtype(x_dtype: str, deq_scale1_given: bool, output_dtype: Any) -> str:
    """torch_npu eager rule: ``x.dtype``, except with ``deq_scale1``: ``output_dtype or float16``."""
    if deq_scale1_given or x_dtype == "int8":
        return _out_dtype_name(output_dtype) or "float16"
    return x_dtype


# ------------------------------------------------------------------------------------------------
# the computation
# ------------------------------------------------------------------------------------------------

def ffn_compute(x: np.ndarray, weight1: np.ndarray, weight2: np.ndarray, activation: str,
                expert_tokens: Optional[Sequence[int]] = None,
                expert_tokens_index: Optional[Sequence[int]] = None,
                bias1: Optional[np.ndarray] = None, bias2: Optional[np.ndarray] = None,
                scale: Optional[np.ndarray] = None, offset: Optional[np.ndarray] = None,
                deq_scale1: Optional[np.ndarray] = None, deq_scale2: Optional[np.ndarray] = None,
                antiquant_scale1: Optional[np.ndarray] = None, antiquant_scale2: Optional[np.ndarray] = None,
                antiquant_offset1: Optional[np.ndarray] = None, antiquant_offset2: Optional[np.ndarray] = None,
                inner_precise: Optional[int] = None, output_dtype: Any = None,
                undefined: Optional[str] = None) -> np.ndarray:
    """Unchecked FFN computation on NumPy arrays (the torch CPU kernel calls this after the rules).

    Overflow of a float conversion gives inf (IEEE); whether the device saturates instead is not public.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _ffn_compute(x, weight1, weight2, activation, expert_tokens, expert_tokens_index, bias1, bias2,
                            scale, offset, deq_scale1, deq_scale2, antiquant_scale1, antiquant_scale2,
                            antiquant_offset1, antiquant_offset2, inner_precise, output_dtype, undefined)


def _ffn_compute(x, weight1, weight2, activation, expert_tokens, expert_tokens_index, bias1, bias2, scale,
                 offset, deq_scale1, deq_scale2, antiquant_scale1, antiquant_scale2, antiquant_offset1,
                 antiquant_offset2, inner_precise, output_dtype, undefined) -> np.ndarray:
    activation = _norm_activation(activation)
    inner_precise = 0 if inner_precise is None else int(inner_precise)
    x = np.asarray(x)
    weight1, weight2 = np.asarray(weight1), np.asarray(weight2)
    xd, wd = nm.dtype_name(x), nm.dtype_name(weight1)
    k1 = x.shape[-1]
    n2 = weight2.shape[-1]
    m = int(np.prod(x.shape[:-1], dtype=np.int64))
    x2 = x.reshape(m, k1)
    quant = xd == "int8"
    ydt = y_dtype(xd, deq_scale1 is not None, output_dtype)
    y = np.empty((m, n2), dtype=nm.np_dtype(ydt))

    bounds = expert_bounds(m, expert_tokens, expert_tokens_index)
    has_experts = bounds is not None
    if not has_experts:
        bounds = [(0, m)]
    covered = np.zeros(m, dtype=bool)
    kind = scenario(xd, wd, activation, inner_precise, quant)
    n1 = weight1.shape[-1]
    if kind.startswith("antiquant") and uses_msd_kernel(xd, wd, m, k1, n1, len(bounds) if has_experts else 1):
        warnings.warn(f"npu_ffn: M={m}, K1={k1}, N1={n1} with int8 weights selects the device's antiquant MSD "
                      "kernel (int8 decomposition); this simulator computes dequantise-then-matmul, so its "
                      "result is approximate for this call", ApproximateWarning, stacklevel=3)

    for e, (s, t) in enumerate(bounds):
        if t <= s:
            continue
        covered[s:t] = True
        w1 = weight1[e] if has_experts else weight1
        w2 = weight2[e] if has_experts else weight2
        b1 = _per_expert(bias1, e, has_experts)
        b2 = _per_expert(bias2, e, has_experts)
        xs = x2[s:t]
        if k1 == 0:
            covered[s:t] = False  # block dim 0: nothing is written (only reachable with N2 > 0 for GLU)
            continue
        if n1 == 0:  # ProcessZeroN1: y = b2 broadcast (quant: AscendDequant(b2, deq2)), or zeros
            if b2 is None:
                y[s:t] = 0
            elif kind == "quant":
                d2 = _per_expert(np.asarray(deq_scale2), e, has_experts)
                # vector AscendDequant: the deq value is used as fp32 (no fixpipe FP19 here) [I]
                dv = nm.decode_int64_scale(d2, fp19=False) if d2.dtype.kind in "iu" else d2.astype(_F32)
                y[s:t] = (b2.astype(_F32) * dv).astype(y.dtype)
            else:
                y[s:t] = b2.astype(_F32).astype(y.dtype)
            continue
        if kind == "glu":
            h = _mm_f32(xs, w1, b1).astype(_F16)
            a = glu(h, activation)
            y[s:t] = _mm_f32(a, w2, b2).astype(_F16)
        elif kind == "fp16_high_performance":
            h = _mm_f32(xs, w1, b1).astype(_F16)
            a = ELEMENTWISE[activation](h)
            y[s:t] = _mm_f32(a, w2, b2).astype(_F16)
        elif kind in ("fp16_high_precision", "bf16"):
            h = _mm_f32(xs, w1, b1)
            a = cast_round(ELEMENTWISE[activation](h), xd)
            y[s:t] = _mm_f32(a, w2, b2).astype(nm.np_dtype(xd))
        elif kind.startswith("antiquant"):
            wq1 = _antiquant_weight(w1, _per_expert(antiquant_scale1, e, has_experts),
                                    _per_expert(antiquant_offset1, e, has_experts), xd)
            wq2 = _antiquant_weight(w2, _per_expert(antiquant_scale2, e, has_experts),
                                    _per_expert(antiquant_offset2, e, has_experts), xd)
            if xd == "float16":
                h = _mm_f32(xs, wq1, b1).astype(_F16)
                a = ELEMENTWISE[activation](h)
            else:
                a = cast_round(ELEMENTWISE[activation](_mm_f32(xs, wq1, b1)), xd)
            y[s:t] = _mm_f32(a, wq2, b2).astype(nm.np_dtype(xd))
        else:  # quant
            sc = _quant_param(scale, e, has_experts)
            off = _quant_param(offset, e, has_experts)
            d1 = _per_expert(np.asarray(deq_scale1), e, has_experts)
            d2 = _per_expert(np.asarray(deq_scale2), e, has_experts)
            acc1 = _mm_int(xs, w1, b1)
            if ydt == "float16":
                h = _fixpipe_dequant_f16(acc1, nm.decode_int64_scale(d1))
                a = ELEMENTWISE[activation](h)
            else:  # bf16 output: AscendDequant to fp32, fp32 activation, fp32->fp16 before quant
                h = acc1.astype(_F32) * d1.astype(_F32)
                a = ELEMENTWISE[activation](h).astype(_F16)
            q = _ascend_quant(a, sc, off)
            acc2 = _mm_int(q, w2, b2)
            if ydt == "float16":
                y[s:t] = _fixpipe_dequant_f16(acc2, nm.decode_int64_scale(d2))
            else:
                y[s:t] = (acc2.astype(_F32) * d2.astype(_F32)).astype(_BF16)

    if not covered.all():
        nm.fill_undefined(y, ~covered, policy=undefined)
    return y.reshape(*x.shape[:-1], n2)


def __getattr__(name: str):
    """The checked NumPy twin ``npu_ffn`` is generated from the op's declaration
    (:mod:`ascend_moe.numpy_ops`); this alias keeps the old name without the simulator importing the
    checker."""
    if name == "npu_ffn":
        from ascend_moe import numpy_ops
        return getattr(numpy_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
