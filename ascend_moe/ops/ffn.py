"""Declaration of ``npu_ffn`` (torch_npu): FFN / MoE-FFN.  Formula, precision flows and the
faithfulness contract: :mod:`ascend_moe.sim.ffn`; rules: :mod:`ascend_moe.rules.ffn`.

Shape rule = torch_npu's Meta rule (spec aclnn-abi-and-torch.md 4.3): ``x.shape[:-1] +
[weight2.shape[-1]]``, dtype ``x.dtype`` except int8 x -> bfloat16 when ``output_dtype == torch.bfloat16``,
else float16.

Spelling: torch_npu master passes everything after ``activation`` by keyword; the older seed signature
``npu_ffn(x, weight1, weight2, activation, expert_tokens, bias1, bias2, inner_precise=0)`` is accepted
too - those four keep their old positions (``legacy_positional``), so a call in either spelling binds
the same way.  ``inner_precise`` None means 0.  ``expert_tokens`` / ``expert_tokens_index`` may be a list
of ints or a 1-D integer CPU tensor (read as the list).  aclnnFFNV2 receives the token list as an
aclIntArray (an empty one when neither is given, as op-plugin's ``IntArrayRef{}``), tokensIndexFlag =
expert_tokens_index given, innerPrecise default 0.  This module does not import torch.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..opdecl import AclnnEntry, ErrorInput, OpDecl, Out, SampleInput, declare
from ..sim import ffn as _sim
from ..sim.numerics import dtype_name

OP = "npu_ffn"


def _token_list(name: str):
    """int[]? as torch_npu takes it; a 1-D integer CPU tensor (or NumPy array) is read as the list."""
    def convert(v: Any) -> Any:
        if v is None or isinstance(v, (list, tuple)):
            return v
        if hasattr(v, "tolist") and hasattr(v, "dtype"):
            device = str(getattr(v, "device", "cpu"))
            kind = dtype_name(v.dtype)
            if device != "cpu" or not kind.startswith(("int", "uint")) or len(v.shape) > 1:
                raise TypeError(f"{OP}: {name} must be a list of ints (torch_npu int[]), or a 1-D integer "
                                f"CPU tensor; got a {v.dtype} tensor of shape {tuple(v.shape)} on {device}")
            return [int(i) for i in v.tolist()]
        return v
    return convert


def _shape(a: Dict[str, Any]) -> List[Any]:
    """[(shape, dtype)] of the one output, from metadata (torch_npu ``npu_ffn_meta``)."""
    x, w2 = a["x"], a["weight2"]
    out = a.get("output_dtype")
    if dtype_name(x.dtype) == "int8":
        dt = "bfloat16" if out is not None and dtype_name(out) == "bfloat16" else "float16"
    else:
        dt = x.dtype
    return [(tuple(x.shape[:-1]) + (w2.shape[-1],), dt)]


def _sim_compute(a: Dict[str, Any], target: Any):
    args = dict(a)
    args["output_dtype"] = None if a["output_dtype"] is None else str(a["output_dtype"])
    return _sim.ffn_compute(**args)


def _check(a: Dict[str, Any]) -> None:
    from ..backends import BackendError
    if a.get("expert_tokens") is not None and a.get("expert_tokens_index") is not None:
        raise BackendError("npu_ffn: expert_tokens and expert_tokens_index should not have the value "
                           "simultaneously (op-plugin's check)")


def _tokens(a: Dict[str, Any], outs: Any) -> List[int]:
    tokens, index = a.get("expert_tokens"), a.get("expert_tokens_index")
    v: Optional[List[int]] = tokens if tokens is not None else index
    return [int(i) for i in v] if v else []


def _samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(13)

    def rand(*shape, dtype=torch.float16, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    def i8(*shape):
        return torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)
    x, w1, w2 = rand(8, 16), rand(16, 32, scale=0.2), rand(32, 16, scale=0.2)
    w13, w23 = rand(2, 16, 32, scale=0.2), rand(2, 32, 16, scale=0.2)
    xq, w1q, w2q = i8(4, 32), i8(32, 64), i8(64, 32)
    quant = dict(scale=torch.tensor([0.05]), offset=torch.tensor([0.0]))
    d1, d2 = rand(64, dtype=torch.float32, scale=0.01).abs(), rand(32, dtype=torch.float32, scale=0.01).abs()
    return [SampleInput((x, w1, w2, "relu"), {}, [((8, 16), "float16")], name="relu"),
            SampleInput((x, w13, w23, "gelu"), dict(expert_tokens=[3, 5]), [((8, 16), "float16")], name="experts"),
            SampleInput((x, w13, w23, "gelu", [3, 5]), {}, [((8, 16), "float16")], name="seed_spelling"),
            SampleInput((xq, w1q, w2q, "relu"), dict(quant, deq_scale1=d1, deq_scale2=d2), [((4, 32), "float16")],
                        name="quant"),
            SampleInput((xq, w1q, w2q, "relu"), dict(quant, deq_scale1=d1.to(torch.bfloat16),
                                                     deq_scale2=d2.to(torch.bfloat16), output_dtype=torch.bfloat16),
                        [((4, 32), "bfloat16")], name="quant_bf16")]


def _errors() -> List[ErrorInput]:
    s = _samples()[0]
    x, w1, w2, _ = s.args
    return [ErrorInput(SampleInput((x, w1, w2, None)), TypeError, r"argument 'activation' must be a str"),
            ErrorInput(SampleInput((x, w1, w2, "relu"), dict(inner_precise="1")), TypeError,
                       r"argument 'inner_precise' must be an int")]


DECL = declare(OpDecl(
    schema="npu_ffn(Tensor x, Tensor weight1, Tensor weight2, str activation, *, int[]? expert_tokens=None, "
           "int[]? expert_tokens_index=None, Tensor? bias1=None, Tensor? bias2=None, Tensor? scale=None, "
           "Tensor? offset=None, Tensor? deq_scale1=None, Tensor? deq_scale2=None, Tensor? antiquant_scale1=None, "
           "Tensor? antiquant_scale2=None, Tensor? antiquant_offset1=None, Tensor? antiquant_offset2=None, "
           "int? inner_precise=None, ScalarType? output_dtype=None) -> Tensor",
    rules="ffn",
    shape=_shape,
    sim=_sim_compute,
    legacy_positional=("expert_tokens", "bias1", "bias2", "inner_precise"),
    convert={"expert_tokens": _token_list("expert_tokens"), "expert_tokens_index": _token_list("expert_tokens_index")},
    aclnn=(AclnnEntry("aclnnFFNV2", family="ffn", requires=("x", "weight1", "weight2"), check=_check,
                      params="const aclTensor *x, const aclTensor *weight1, const aclTensor *weight2, "
                             "const aclIntArray *expertTokens, const aclTensor *bias1, const aclTensor *bias2, "
                             "const aclTensor *scale, const aclTensor *offset, const aclTensor *deqScale1, "
                             "const aclTensor *deqScale2, const aclTensor *antiquantScale1, "
                             "const aclTensor *antiquantScale2, const aclTensor *antiquantOffset1, "
                             "const aclTensor *antiquantOffset2, const char *activation, int64_t innerPrecise, "
                             "bool tokensIndexFlag, aclTensor *y",
                      bind={"expertTokens": _tokens, "innerPrecise": lambda a, o: a.get("inner_precise") or 0,
                            "tokensIndexFlag": lambda a, o: a.get("expert_tokens_index") is not None,
                            "y": Out(0)}),),
    doc="""``torch_npu.npu_ffn``: ``y = act(x @ W1 + b1) @ W2 + b2`` (FFN), per expert slice with 3-D weights
and ``expert_tokens`` counts or ``expert_tokens_index`` cumulative ends (MoE-FFN); quantised (int8 x,
weights; scale/offset/deq_scale1/2) and anti-quantised (int8 weights; antiquant_scale/offset1/2) variants.

Both spellings bind the same way: torch_npu master (everything after ``activation`` by keyword) and the
older seed signature ``npu_ffn(x, weight1, weight2, activation, expert_tokens, bias1, bias2,
inner_precise)``.  ``inner_precise`` None means 0.  ``expert_tokens`` may be a list of ints or a 1-D integer
CPU tensor.  Output: ``x.shape[:-1] + [weight2.shape[-1]]``; dtype ``x.dtype``, or for int8 x
``output_dtype`` (float16 default, or bfloat16).""",
    samples=_samples,
    error_inputs=_errors,
))
