"""Benchmark: npu_moe_gating_top_k (public op, checker included) against a vectorised torch gate.

    python benchmarks/bench_gating.py [--quick]

Routing of 4096x256 and 16384x256 bf16 logits in two configurations: DeepSeek-V3 (sigmoid, bias,
top-2 group score, 4 of 8 groups, k=8, x2.5) and plain softmax top-8 (no groups).  The torch
reference is the DeepSeek-V3 gate formula (sigmoid / softmax, topk, gather, normalise) in float32,
vectorised over tokens.  The torch gate is timed with torch's default threads and with one
thread, and the faster counts; interleaved rounds (best of); ratio = torch time / ours (> 1: ours
faster).
"""
from __future__ import annotations

import argparse

import ml_dtypes
import numpy as np
import torch

import ascend_moe as am
from _timing import interleaved_best, machine_header


def torch_gate(x: torch.Tensor, bias, k, n_groups, topk_groups, sigmoid: bool, scale: float):
    """The straightforward reference (DeepSeek-V3 inference/model.py Gate.forward)."""
    x = x.float()
    scores = x.sigmoid() if sigmoid else x.softmax(dim=-1)
    original = scores
    if bias is not None:
        scores = scores + bias.float()
    if n_groups > 1:
        scores = scores.view(x.size(0), n_groups, -1)
        group_scores = scores.topk(2, dim=-1)[0].sum(dim=-1) if bias is not None else scores.amax(dim=-1)
        keep = group_scores.topk(topk_groups, dim=-1)[1]
        mask = torch.ones(x.size(0), n_groups, dtype=torch.bool).scatter_(1, keep, False)
        scores = scores.masked_fill(mask.unsqueeze(-1), float("-inf")).flatten(1)
    idx = torch.topk(scores, k, dim=-1)[1]
    w = original.gather(1, idx)
    if sigmoid:
        w = w / w.sum(dim=-1, keepdim=True)
    return (w * scale).to(x.dtype), idx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else 9
    print(machine_header())
    rng = np.random.default_rng(0)
    print(f"{'config':<28}{'rows':>7}{'ours ms':>10}{'torch ms':>10}{'ours Mrows/s':>14}{'torch/ours':>12}")
    for rows in (4096, 16384):
        x = (rng.standard_normal((rows, 256)) * 2).astype(ml_dtypes.bfloat16)
        bias = (rng.standard_normal(256) * 0.05).astype(ml_dtypes.bfloat16)
        xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
        bt = torch.from_numpy(bias.view(np.int16)).view(torch.bfloat16)
        configs = [
            ("deepseek-v3 sigmoid grouped", dict(bias=bt, k_group=4, group_count=8, group_select_mode=1,
                                                  norm_type=1, routed_scaling_factor=2.5),
             lambda: torch_gate(xt, bt, 8, 8, 4, True, 2.5)),
            ("softmax top-8 ungrouped", dict(norm_type=0),
             lambda: torch_gate(xt, None, 8, 1, 1, False, 1.0)),
        ]
        for name, kw, ref in configs:
            ours = lambda: am.npu_moe_gating_top_k(xt, 8, **kw)  # noqa: E731

            def ref_one_thread(ref=ref):
                n = torch.get_num_threads()
                torch.set_num_threads(1)  # small elementwise work: often faster on one thread
                try:
                    return ref()
                finally:
                    torch.set_num_threads(n)
            ours(), ref(), ref_one_thread()  # warm-up
            best = interleaved_best({"ours": ours, "torch": ref}, rounds)
            # timed apart: switching torch's thread count rebuilds its OpenMP pool, which slowed whichever call
            # came next in an interleaved round (ours: 7 ms -> 9-10 ms at 4096 rows)
            best.update(interleaved_best({"torch 1 thread": ref_one_thread}, rounds))
            t_ours, t_ref = best["ours"], min(best["torch"], best["torch 1 thread"])  # the better torch
            print(f"{name:<28}{rows:>7}{t_ours * 1e3:>10.2f}{t_ref * 1e3:>10.2f}{rows / t_ours / 1e6:>14.3f}"
                  f"{t_ref / t_ours:>12.2f}")


if __name__ == "__main__":
    main()
