"""Benchmark: the public ``npu_grouped_matmul_finalize_routing`` (torch tensors, the CPU simulator with
this machine's chosen exact integer GEMM) against a plain-torch equivalent of the whole op, same run.

    python benchmarks/bench_finalize_routing.py [--quick] [--m M] [--experts E] [--repeats R]

Shape: k=2048, n=7168 (DeepSeek-V3 down projection), m routed rows (default 2048), output batch = m/8
(top-8: each token's rows go to distinct experts, as a gate routes them).  Experts: a subset (default 8) of DeepSeek-V3's 256: the integer GEMM work, 2*m*k*n, does not
depend on e (only the group sizes do), while 256 int8 [2048, 7168] weights would need 3.8 GB of RAM.

Timed, interleaved rounds (best of each):
* A8W8, ours: int8 FRACTAL_NZ weight (5-D storage), fp32 scale [e, n], per-token scale, logit,
  row_index; its logical weight values are kept while the weight is unchanged, as in a serving loop;
* A8W8, torch: the same computation written in torch by hand, weight held as ND int8 [e, k, n]:
  per group ``torch._int_mm`` (int32), ``acc.float() * scale[e] * (logit * pertoken)``, and
  ``index_add_`` into a zeroed fp32 output (no ordering promise: the best torch can do, not a
  faithful twin);
* A8W4, ours (int4 packed in int32, int64 scale, bias) and its torch equivalent: x split into its
  high / low nibbles, two ``torch._int_mm`` per group on the int8 weight values, the fp16 fixpipe
  rounding of each partial, ``16 * hi + lo + bias``, the row scale, ``index_add_``.
Ratio = torch time / ours (> 1: ours faster).  Outputs of ours and torch are compared (max abs
difference printed; the int GEMMs are exact in both, the epilogue order may differ in the last bits).
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

import ascend_moe as am
from ascend_moe.sim import numerics
from _timing import interleaved_best, machine_header, peak_rss_increase


def torch_a8w8(x, w, counts, scale, pertoken, logit, rows, batch):
    y = torch.zeros(batch, w.shape[-1])
    s = 0
    for e, c in enumerate(counts):
        if c:
            acc = torch._int_mm(x[s:s + c], w[e])
            v = acc.float().mul_(scale[e]).mul_((logit[s:s + c] * pertoken[s:s + c])[:, None])
            y.index_add_(0, rows[s:s + c], v)
        s += c
    return y


def torch_a8w4(x, w4v, counts, s4, bias, pertoken, logit, rows, batch):
    hi = torch.div(x, 16, rounding_mode="floor").to(torch.int8)
    lo = (x - hi * 16 - 8).to(torch.int8)
    y = torch.zeros(batch, w4v.shape[-1])
    s = 0
    for e, c in enumerate(counts):
        if c:
            ph = (torch._int_mm(hi[s:s + c], w4v[e]).double() * s4[e].double()).half().float()
            pl = (torch._int_mm(lo[s:s + c], w4v[e]).double() * s4[e].double()).half().float()
            u = ph.mul_(16).add_(pl).add_(bias[e])
            y.index_add_(0, rows[s:s + c], u.mul_((pertoken[s:s + c] * logit[s:s + c])[:, None]))
        s += c
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="m=256, 2 experts (a smoke run)")
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=7168)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=4, help="interleaved rounds (best of)")
    args = ap.parse_args()
    m, k, n, e = args.m, args.k, args.n, args.experts
    if args.quick:
        m, e = 256, 2
    print(machine_header())
    g = torch.Generator().manual_seed(0)
    # routing as a top-8 gate produces it: every token picks min(8, e) distinct experts; the routed
    # rows are sorted by expert (tokens in order within an expert), row_index = the token of each row
    top_k = min(8, e)
    batch = max(1, m // top_k)
    m = batch * top_k
    rng = np.random.default_rng(0)
    picks = np.stack([rng.choice(e, top_k, replace=False) for _ in range(batch)])      # [batch, top_k]
    order = np.argsort(picks.reshape(-1), kind="stable")
    counts = np.bincount(picks.reshape(-1), minlength=e).tolist()
    rows = torch.from_numpy(order // top_k)
    x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    logit = torch.rand(m, generator=g)
    pertoken = torch.rand(m, generator=g) * 1e-2
    gl = torch.tensor(counts, dtype=torch.int64)
    print(f"shape: m={m} k={k} n={n} experts={e} (group size ~{m // e}) batch={batch}; "
          f"integer GEMM work {2 * m * k * n / 1e9:.1f} GOP")

    w8 = torch.randint(-128, 128, (e, k, n), generator=g, dtype=torch.int8)
    w8_nz = torch.from_numpy(numerics.nd_to_nz(w8.numpy()))          # 5-D FRACTAL_NZ storage
    scale = torch.rand(e, n, generator=g) * 1e-3
    w4v = torch.randint(-8, 8, (e, k, n), generator=g, dtype=torch.int8)
    w4 = torch.from_numpy(numerics.pack_int4(w4v.numpy()))
    s4 = torch.rand(e, 1, n, generator=g) * 1e-2
    scale4 = torch.from_numpy(numerics.encode_int64_scale(s4.numpy()))
    s4_dec = torch.from_numpy(numerics.decode_int64_scale(scale4.numpy()).reshape(e, n))   # FP19, as the op
    bias4 = (8 * (w4v.float() * s4_dec[:, None, :]).sum(1))

    def ours8():
        return am.npu_grouped_matmul_finalize_routing(x, w8_nz, gl, scale=scale, pertoken_scale=pertoken,
                                                      logit=logit, row_index=rows, output_bs=batch)

    def ours4():
        return am.npu_grouped_matmul_finalize_routing(x, w4, gl, scale=scale4, bias=bias4, pertoken_scale=pertoken,
                                                      logit=logit, row_index=rows, output_bs=batch)
    fns = {"A8W8 ours": ours8,
           "A8W8 torch": lambda: torch_a8w8(x, w8, counts, scale, pertoken, logit, rows, batch),
           "A8W4 ours": ours4,
           "A8W4 torch": lambda: torch_a8w4(x, w4v, counts, s4_dec, bias4, pertoken, logit, rows, batch)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = {name: fn() for name, fn in fns.items()}      # warm-up; ours keeps the weights' values
        best = interleaved_best(fns, args.repeats)
        peaks = {name: peak_rss_increase(fns[name]) for name in ("A8W8 ours", "A8W4 ours")}
    gop = 2 * m * k * n / 1e9
    for scheme in ("A8W8", "A8W4"):
        o, t = best[f"{scheme} ours"], best[f"{scheme} torch"]
        diff = (outs[f"{scheme} ours"] - outs[f"{scheme} torch"]).abs().max().item()
        scale_ = outs[f"{scheme} torch"].abs().max().item()
        print(f"{scheme}: ours {o * 1e3:8.1f} ms ({gop / o:6.1f} GOP/s), torch {t * 1e3:8.1f} ms ({gop / t:6.1f} GOP/s); "
              f"torch / ours = {t / o:5.2f}; max |ours - torch| = {diff:.3g} (of max |y| {scale_:.3g})")
        io = sum(v.numel() * v.element_size() for v in (x, w8 if scheme == "A8W8" else w4, logit, pertoken, rows)) \
            + batch * n * 4
        if peaks[f"{scheme} ours"] is not None:
            print(f"{scheme}: ours peak {peaks[f'{scheme} ours'] / 2**20:.1f} MB = "
                  f"{peaks[f'{scheme} ours'] / io:.2f} x inputs + outputs ({io / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
