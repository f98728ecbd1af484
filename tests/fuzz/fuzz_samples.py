"""Valid sample calls of every public op, in the public spelling ``ascend_moe.<op>(*args, **kwargs)``.

Small shapes and small finite values, so that every valid call's result is finite (no fp16 overflow):
the property test mutates these into hostile calls (fuzz_mutations.py).  Each generator takes a
seeded ``torch.Generator`` and returns a list of :class:`Sample`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import torch

import ascend_moe


@dataclass
class Sample:
    op: str
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    name: str = ""


def _rand(g: torch.Generator, *shape: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _int8(g: torch.Generator, *shape: int, lo: int = -8, hi: int = 8) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)


def _nz_storage(w: torch.Tensor) -> torch.Tensor:
    return ascend_moe.npu_format_cast(w, 29, storage=True)


def gmm(g: torch.Generator) -> List[Sample]:
    bf = torch.bfloat16
    x, w = _rand(g, 7, 16, dtype=bf), _rand(g, 3, 16, 8, dtype=bf, scale=0.25)
    xt, wk = _rand(g, 16, 5, dtype=bf).t(), _rand(g, 16, 8, dtype=bf, scale=0.25)
    return [Sample("npu_gmm", (x, w), dict(group_list=[2, 2, 7]), "list cumsum"),
            Sample("npu_gmm", (x.float(), w.float()), dict(group_list=torch.tensor([3, 5, 7])), "tensor fp32"),
            Sample("npu_gmm", (xt, wk), dict(group_list=torch.tensor([4, 4, 16]), group_type=2), "K split")]


def gmm_v2(g: torch.Generator) -> List[Sample]:
    x, w = _rand(g, 6, 16, dtype=torch.float16), _rand(g, 2, 16, 4, dtype=torch.float16, scale=0.25)
    return [Sample("npu_gmm_v2", (x, w), dict(group_list=torch.tensor([4, 2])), "counts"),
            Sample("npu_gmm_v2", (x, w), dict(group_list=torch.tensor([1, 3])), "rows past the total")]


def grouped_matmul(g: torch.Generator) -> List[Sample]:
    bf = torch.bfloat16
    x, w = _rand(g, 6, 16, dtype=bf), _rand(g, 3, 16, 8, dtype=bf, scale=0.25)
    xs = [_rand(g, 3, 16, dtype=bf), _rand(g, 5, 16, dtype=bf)]
    ws = [_rand(g, 16, 4, dtype=bf, scale=0.25), _rand(g, 16, 6, dtype=bf, scale=0.25)]
    xt, wk = _rand(g, 16, 4, dtype=bf).t(), _rand(g, 16, 8, dtype=bf, scale=0.25)
    return [
        Sample("npu_grouped_matmul", ([x], [w]),
               dict(group_list=torch.tensor([2, 0, 4]), split_item=2, group_type=0, group_list_type=1), "vllm MoE"),
        Sample("npu_grouped_matmul", ([x], [w]), dict(group_list=[2, 2, 6], split_item=1, group_type=0), "List"),
        Sample("npu_grouped_matmul", (xs, ws), dict(split_item=0, group_type=-1), "no split"),
        Sample("npu_grouped_matmul", ([xt], [wk]), dict(group_list=torch.tensor([8, 16]), split_item=3, group_type=2),
               "K split"),
    ]


def gating(g: torch.Generator) -> List[Sample]:
    x, bias = _rand(g, 5, 16), _rand(g, 16, scale=0.1)
    kw = dict(bias=bias, k_group=2, group_count=4, group_select_mode=1, renorm=0, norm_type=1,
              routed_scaling_factor=2.5, eps=1e-20)
    return [Sample("npu_moe_gating_top_k", (x, 4), dict(kw, out_flag=True), "grouped sigmoid"),
            Sample("npu_moe_gating_top_k", (x, 4), dict(kw, out_flag=False), "norm_out undefined"),
            Sample("npu_moe_gating_top_k", (x.to(torch.bfloat16), 2), dict(norm_type=0, out_flag=True), "softmax")]


def ffn(g: torch.Generator) -> List[Sample]:
    h = torch.float16
    x = _rand(g, 8, 16, dtype=h)
    w1, w2 = _rand(g, 16, 32, dtype=h, scale=0.2), _rand(g, 32, 16, dtype=h, scale=0.2)
    w13, w23 = _rand(g, 2, 16, 32, dtype=h, scale=0.2), _rand(g, 2, 32, 16, dtype=h, scale=0.2)
    xq, w1q, w2q = _int8(g, 4, 32), _int8(g, 32, 64), _int8(g, 64, 32)
    d1, d2 = _rand(g, 64, scale=0.01).abs() + 1e-4, _rand(g, 32, scale=0.01).abs() + 1e-4
    quant = dict(scale=torch.tensor([0.05]), offset=torch.tensor([0.0]), deq_scale1=d1, deq_scale2=d2)
    return [Sample("npu_ffn", (x, w1, w2, "relu"), {}, "fp16 relu"),
            Sample("npu_ffn", (x, w13, w23, "gelu"), dict(expert_tokens=[3, 5]), "experts"),
            Sample("npu_ffn", (xq, w1q, w2q, "relu"), quant, "quant")]


def swiglu_quant(g: torch.Generator) -> List[Sample]:
    m, k, n, e = 6, 32, 64, 2
    x, w = _int8(g, m, k), _nz_storage(_int8(g, e, k, n))
    ws, xs = _rand(g, e, n, scale=0.01).abs() + 1e-3, _rand(g, m, scale=0.1).abs() + 1e-2
    return [Sample("npu_grouped_matmul_swiglu_quant", (x, w, torch.tensor([2, 6]), ws, xs), {}, "A8W8")]


def swiglu_quant_v2(g: torch.Generator) -> List[Sample]:
    m, k, n, e = 6, 32, 64, 2
    x, w = _int8(g, m, k), _nz_storage(_int8(g, e, k, n))
    ws, xs = _rand(g, e, n, scale=0.01).abs() + 1e-3, _rand(g, m, scale=0.1).abs() + 1e-2
    return [Sample("npu_grouped_matmul_swiglu_quant_v2", (x, [w], [ws], xs, torch.tensor([4, 2])),
                   dict(group_list_type=1), "A8W8 counts")]


def finalize_routing(g: torch.Generator) -> List[Sample]:
    m, k, n, e, bs = 6, 32, 256, 2, 3
    x, w = _int8(g, m, k), _nz_storage(_int8(g, e, k, n))
    kw = dict(scale=_rand(g, e, n, scale=0.01).abs() + 1e-3, pertoken_scale=_rand(g, m, scale=0.1).abs() + 1e-2,
              logit=_rand(g, m).abs(), row_index=torch.tensor([0, 1, 2, 0, 1, 2]), group_list_type=1)
    shared = dict(kw, output_bs=bs, shared_input=_rand(g, bs, n, dtype=torch.bfloat16), shared_input_weight=0.5)
    return [Sample("npu_grouped_matmul_finalize_routing", (x, w, torch.tensor([3, 3])), dict(kw, output_bs=bs),
                   "combine"),
            Sample("npu_grouped_matmul_finalize_routing", (x, w, torch.tensor([3, 3])), shared, "shared expert")]


GENERATORS: Dict[str, Callable[[torch.Generator], List[Sample]]] = {
    "npu_gmm": gmm,
    "npu_gmm_v2": gmm_v2,
    "npu_grouped_matmul": grouped_matmul,
    "npu_moe_gating_top_k": gating,
    "npu_ffn": ffn,
    "npu_grouped_matmul_swiglu_quant": swiglu_quant,
    "npu_grouped_matmul_swiglu_quant_v2": swiglu_quant_v2,
    "npu_grouped_matmul_finalize_routing": finalize_routing,
}


def declared_samples(op: str) -> List[Sample]:
    """The op declaration's own sample inputs (``OpDecl.samples``, ascend_moe.opdecl), public spelling."""
    from ascend_moe.opdecl import get_decl
    decl = get_decl(op)
    if decl is None or decl.samples is None:
        return []
    return [Sample(op, tuple(s.args), dict(s.kwargs), f"declared {s.name}") for s in decl.samples()]


def fuzzed_ops() -> List[str]:
    """Every declared op (the property test covers the whole public surface the declarations generate)."""
    from ascend_moe.opdecl import all_decls
    return sorted(d.name for d in all_decls() if d.samples is not None)


def samples(op: str, seed: int) -> List[Sample]:
    """The declaration's samples, then this module's extra ones (seeded) where it has a generator."""
    extra = GENERATORS[op](torch.Generator().manual_seed(seed)) if op in GENERATORS else []
    return declared_samples(op) + extra
