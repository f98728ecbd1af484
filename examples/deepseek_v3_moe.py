"""DeepSeek-V3's MoE layer composed from the public ascend-moe ops, at small dimensions.

    python examples/deepseek_v3_moe.py [--tokens 32] [--path bf16|w8a8|both] [--product atlas-a2 --cann 8.5.0]

The layer (DeepSeek-V3 ``DeepseekV3MoE``): a sigmoid router with a score-correction bias, 8 expert
groups of which the 4 with the largest top-2 sums are kept, top-k experts among them, routing
weights renormalised and scaled by ``routed_scaling_factor``; SwiGLU experts; one shared expert
added to the routed sum.  The sizes here are small (E = 32 experts, hidden 2048, expert
intermediate 256) so it runs on a laptop CPU in about a second; everything else is DeepSeek-V3's
(group structure, top-2 group scores, bias, scaling 2.5).  The hidden / intermediate sizes are ones
the finalize-routing docs list (n = 2048, k = 256), so no doc-only warnings fire.

Two paths, both on the simulator when the tensors are on the CPU (and on aclnn when they are on
an NPU, unchanged):

* **bf16**: ``npu_moe_gating_top_k`` -> sort rows by expert -> ``npu_grouped_matmul`` up
  ``[E, H, 2I]`` -> SwiGLU -> ``npu_grouped_matmul`` down ``[E, I, H]`` -> weighted combine plus the
  shared expert (the combine and the dense shared expert are plain torch, as
  ``npu_moe_finalize_routing`` and ordinary linears would be on the device).
* **W8A8**: weights quantised per output channel to int8 and cast to FRACTAL_NZ with
  ``npu_format_cast(w, 29)``; activations quantised per token (``npu_dynamic_quant``'s formula);
  ``npu_grouped_matmul_swiglu_quant`` (up + SwiGLU + per-token requant) ->
  ``npu_grouped_matmul_finalize_routing`` (down + dequant + routing-weighted scatter + the shared
  expert's bf16 output as ``shared_input``).

Weight layout: DeepSeek/HF store ``gate_proj``/``up_proj`` as ``[I, H]`` and ``down_proj`` as
``[H, I]`` (out, in); the grouped ops take ``[E, K, N]`` (in, out), so the up weight is
``cat(gate, up).T`` -> ``[E, H, 2I]``: its first I columns go through SiLU and multiply the last I,
which is how both ``npu_swiglu`` and ``npu_grouped_matmul_swiglu_quant`` split them.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

import ascend_moe as am


@dataclass(frozen=True)
class MoEConfig:
    hidden: int = 2048
    inter: int = 256                 # expert (and shared-expert) intermediate size
    experts: int = 32
    top_k: int = 4
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    n_shared: int = 1


def make_weights(cfg: MoEConfig, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights in DeepSeek's (HF) layout, bf16 as the checkpoint holds them; the router and
    its score-correction bias are fp32 as in DeepSeek-V3."""
    g = torch.Generator().manual_seed(seed)
    H, I, E, S = cfg.hidden, cfg.inter, cfg.experts, cfg.inter * cfg.n_shared

    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    return {
        "gate": rnd(E, H, scale=H ** -0.5),                                # router [E, H], fp32
        "bias": rnd(E, scale=0.05),                                        # e_score_correction_bias
        "gate_proj": rnd(E, I, H, scale=H ** -0.5).to(torch.bfloat16),     # w1 per expert [I, H]
        "up_proj": rnd(E, I, H, scale=H ** -0.5).to(torch.bfloat16),       # w3
        "down_proj": rnd(E, H, I, scale=I ** -0.5).to(torch.bfloat16),     # w2 [H, I]
        "shared_gate_proj": rnd(S, H, scale=H ** -0.5).to(torch.bfloat16),
        "shared_up_proj": rnd(S, H, scale=H ** -0.5).to(torch.bfloat16),
        "shared_down_proj": rnd(H, S, scale=S ** -0.5).to(torch.bfloat16),
    }


# ----------------------------------------------------------------------------------------------
# pieces shared by both paths
# ----------------------------------------------------------------------------------------------

def route(x: torch.Tensor, w: Dict[str, torch.Tensor], cfg: MoEConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Router logits (fp32, as DeepSeek-V3 computes them) -> ``npu_moe_gating_top_k`` in DeepSeek-V3
    mode: sigmoid (norm_type=1, always renormalised), bias for selection, group score = top-2 sum
    (group_select_mode=1), routed_scaling_factor.  Returns (weights [T, k] fp32, expert ids [T, k])."""
    logits = x.float() @ w["gate"].T
    y, idx, _ = am.npu_moe_gating_top_k(
        logits, cfg.top_k, bias=w["bias"], k_group=cfg.topk_group, group_count=cfg.n_group,
        group_select_mode=1, renorm=0, norm_type=1, out_flag=False,
        routed_scaling_factor=cfg.routed_scaling_factor, eps=1e-20)
    return y.float(), idx


def dispatch(idx: torch.Tensor, cfg: MoEConfig):
    """What ``npu_moe_init_routing_v2`` does: order the T*k (token, expert) pairs by expert (stable,
    so token order within an expert), and count rows per expert."""
    flat = idx.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    rows_token = order // cfg.top_k                       # expanded row -> its token
    counts = torch.bincount(flat, minlength=cfg.experts).to(torch.int64)
    return order, rows_token, counts


def swiglu_bf16(h: torch.Tensor) -> torch.Tensor:
    """``npu_swiglu``: silu(first half) * second half in fp32, rounded once to bf16."""
    n = h.shape[-1] // 2
    hf = h.float()
    return (torch.nn.functional.silu(hf[:, :n]) * hf[:, n:]).to(torch.bfloat16)


def shared_expert(x: torch.Tensor, w: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense shared expert in bf16 (fp32 accumulation, bf16 outputs), as the device's linears."""
    gate = (x.float() @ w["shared_gate_proj"].float().T).to(torch.bfloat16)
    up = (x.float() @ w["shared_up_proj"].float().T).to(torch.bfloat16)
    h = (torch.nn.functional.silu(gate.float()) * up.float()).to(torch.bfloat16)
    return (h.float() @ w["shared_down_proj"].float().T).to(torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# bf16 path
# ----------------------------------------------------------------------------------------------

def prepare_bf16(w: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Grouped-op layout: w13 [E, H, 2I] (gate columns first), w2 [E, I, H]."""
    w13 = torch.cat([w["gate_proj"], w["up_proj"]], dim=1).transpose(1, 2).contiguous()
    w2 = w["down_proj"].transpose(1, 2).contiguous()
    return {"w13": w13, "w2": w2}


def moe_bf16(x: torch.Tensor, w: Dict[str, torch.Tensor], prepared: Dict[str, torch.Tensor],
             cfg: MoEConfig) -> torch.Tensor:
    weights, idx = route(x, w, cfg)
    order, rows_token, counts = dispatch(idx, cfg)
    xs = x[rows_token]
    h = am.npu_grouped_matmul([xs], [prepared["w13"]], group_list=counts, split_item=2, group_type=0,
                              group_list_type=1)[0]
    a = swiglu_bf16(h)
    o = am.npu_grouped_matmul([a], [prepared["w2"]], group_list=counts, split_item=2, group_type=0,
                              group_list_type=1)[0]
    # combine (npu_moe_finalize_routing): fp32 weighted scatter-add, plus the shared expert
    acc = torch.zeros(x.shape[0], cfg.hidden)
    acc.index_add_(0, rows_token, o.float() * weights.reshape(-1)[order][:, None])
    acc += shared_expert(x, w).float()
    return acc.to(torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# W8A8 path
# ----------------------------------------------------------------------------------------------

def quantize_per_channel(w_kn: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel of ``[E, K, N]``: scale[e, n] = max_k |w| / 127."""
    wf = w_kn.float()
    scale = wf.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(wf / scale[:, None, :]).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


def dynamic_quant(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``npu_dynamic_quant``: per-token symmetric int8, scale = max|x| / 127, round half to even."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp_min(1e-12) / 127.0
    return torch.round(xf / scale[:, None]).clamp(-128, 127).to(torch.int8), scale


def prepare_w8a8(w: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Offline: quantise the grouped weights and cast them to FRACTAL_NZ (format 29)."""
    p = prepare_bf16(w)
    q13, s13 = quantize_per_channel(p["w13"])
    q2, s2 = quantize_per_channel(p["w2"])
    return {"w13": am.npu_format_cast(q13, 29), "w13_scale": s13,
            "w2": am.npu_format_cast(q2, 29), "w2_scale": s2, "w13_int8": q13, "w2_int8": q2}


def moe_w8a8(x: torch.Tensor, w: Dict[str, torch.Tensor], prepared: Dict[str, torch.Tensor],
             cfg: MoEConfig) -> torch.Tensor:
    weights, idx = route(x, w, cfg)
    order, rows_token, counts = dispatch(idx, cfg)
    xq, x_scale = dynamic_quant(x[rows_token])
    a, a_scale, _ = am.npu_grouped_matmul_swiglu_quant(
        xq, prepared["w13"], torch.cumsum(counts, 0), prepared["w13_scale"], x_scale)
    out = am.npu_grouped_matmul_finalize_routing(
        a, prepared["w2"], counts, scale=prepared["w2_scale"], pertoken_scale=a_scale,
        shared_input=shared_expert(x, w), logit=weights.reshape(-1)[order].contiguous(),
        row_index=rows_token.to(torch.int64), shared_input_weight=1.0, shared_input_offset=0,
        output_bs=x.shape[0], group_list_type=1)
    return out.to(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--path", choices=("bf16", "w8a8", "both"), default="both")
    ap.add_argument("--product", default=None)
    ap.add_argument("--cann", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = MoEConfig()
    w = make_weights(cfg, args.seed)
    x = torch.randn(args.tokens, cfg.hidden, generator=torch.Generator().manual_seed(args.seed + 1)
                    ).to(torch.bfloat16)
    with am.target(args.product, args.cann) as t:
        print(f"DeepSeek-V3 MoE layer, {cfg}, {args.tokens} tokens, on {t}")
        outs = {}
        for name, prep, fn in (("bf16", prepare_bf16, moe_bf16), ("w8a8", prepare_w8a8, moe_w8a8)):
            if args.path not in (name, "both"):
                continue
            p = prep(w)
            t0 = time.perf_counter()
            outs[name] = fn(x, w, p, cfg)
            print(f"  {name:<5} out {list(outs[name].shape)} {outs[name].dtype}, "
                  f"rms {outs[name].float().pow(2).mean().sqrt():.4f}, {time.perf_counter() - t0:.2f} s")
        if len(outs) == 2:
            a, b = outs["bf16"].float(), outs["w8a8"].float()
            print(f"  w8a8 vs bf16: relative error {float((a - b).norm() / a.norm()):.4f}")


if __name__ == "__main__":
    main()
