"""Benchmark of the GMM-SwiGLU-Quant simulator's exact integer GEMM (and the whole op).

Shapes (default): E=8 experts, M=4096 tokens split evenly, K=7168, N=4096, int8 x and weights.
Reports, measured in the same run:

* GOP/s of the exact grouped int32 GEMM (``ascend_moe.sim.quant_gemm.grouped_int8_matmul``:
  float32 BLAS on K chunks of 1024, exact) - 2*M*K*N operations;
* GOP/s of ``torch._int_mm`` (int8 x int8 -> int32) on the same per-group shapes, and the ratio
  (each group timed back to back with the simulator's GEMM on that group);
* wall time of the whole v1 and v2 simulator ops (GEMM + dequant + SwiGLU + quant).

``torch._int_mm`` on the CPU is slow (well under 1 GOP/s on a 2-core machine), so by default it is
timed on ``--ref-groups`` of the groups (default 1; each group has exactly the per-group shape) and
its rate is extrapolated; ``--ref-groups 8`` times all of them.

Usage: ``python benchmarks/bench_swiglu_quant.py [--quick] [--ref-groups G]``
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ascend_moe.formats import set_format
from ascend_moe.sim import swiglu_quant as sq
from ascend_moe.sim.quant_gemm import group_bounds, grouped_int8_matmul
from _timing import best_of


def best_time(fn, repeat):
    return best_of(fn, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (E=8, M=512, K=1024, N=512)")
    ap.add_argument("--ref-groups", type=int, default=1, help="groups timed with torch._int_mm (default 1)")
    ap.add_argument("--repeat", type=int, default=None)
    a = ap.parse_args()
    E, M, K, N = (8, 512, 1024, 512) if a.quick else (8, 4096, 7168, 4096)
    repeat = a.repeat or (3 if a.quick else 1)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (E, K, N), dtype=np.int8)
    ws = (rng.random((E, N)) * 1e-3).astype(np.float32)
    xs = (rng.random(M) * 1e-2).astype(np.float32)
    gl = np.cumsum(np.full(E, M // E)).astype(np.int64)
    bounds = group_bounds(gl, 0, M)
    ops = 2.0 * M * K * N
    print(f"shapes: E={E} M={M} K={K} N={N} int8, threads: torch {torch.get_num_threads()}")

    t_sim, acc = best_time(lambda: grouped_int8_matmul(x, w, bounds), repeat)
    print(f"exact grouped int GEMM (sim, fp32 BLAS K-chunks): {t_sim:8.3f} s  {ops / t_sim / 1e9:8.2f} GOP/s")

    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    G = max(1, min(a.ref_groups, E))
    # The ratio is taken group by group, the sim and torch._int_mm timed back to back on the same
    # group, so that load from other processes hits both alike.
    t_sim_g = t_ref_g = 0.0
    for e in range(G):
        s, t = bounds[e]
        one = [(0, 0)] * e + [(s, t)]
        ts, acc_g = best_time(lambda: grouped_int8_matmul(x, w, one), repeat)
        tr, ref_g = best_time(lambda: torch._int_mm(xt[s:t], wt[e]), repeat)
        assert np.array_equal(ref_g.numpy(), acc_g[s:t]), "sim GEMM differs from torch._int_mm"
        t_sim_g += ts
        t_ref_g += tr
    g_ops = sum(2.0 * (t - s) * K * N for s, t in bounds[:G])
    extra = "" if G == E else f", on {G} of {E} groups (same per-group shape)"
    print(f"per group, back to back{extra}:")
    print(f"  sim exact GEMM  {t_sim_g:8.3f} s  {g_ops / t_sim_g / 1e9:8.2f} GOP/s")
    print(f"  torch._int_mm   {t_ref_g:8.3f} s  {g_ops / t_ref_g / 1e9:8.2f} GOP/s")
    print(f"ratio sim / torch._int_mm: {t_ref_g / t_sim_g:.2f}x  (target >= 0.6x)")

    set_format(w, "FRACTAL_NZ")
    t1, _ = best_time(lambda: sq.npu_grouped_matmul_swiglu_quant(x, w, gl, ws, xs), repeat)
    t2, _ = best_time(lambda: sq.npu_grouped_matmul_swiglu_quant_v2(x, [w], [ws], xs, gl), repeat)
    print(f"whole op, sim v1: {t1:8.3f} s ({ops / t1 / 1e9:.2f} GOP/s); v2: {t2:8.3f} s ({ops / t2 / 1e9:.2f} GOP/s)")


if __name__ == "__main__":
    main()
