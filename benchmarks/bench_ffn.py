"""Throughput of the npu_ffn simulator against plain NumPy references measured in the same run.

    python benchmarks/bench_ffn.py [--quick]

References: "numpy fp32" = one float32 BLAS matmul per expert + a float32 activation, no rounding
emulation (the cheapest possible FFN on this CPU); "numpy int64" = the integer GEMMs of the quantised
path done with int64 matmul (exact but slow).  The simulator's ratios show the cost of the device
rounding emulation.
"""
from __future__ import annotations

import argparse

import numpy as np

from ascend_moe.sim import ffn as simffn
from _timing import best_of


def _best(fn, repeat):
    return best_of(fn, repeat)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    a = ap.parse_args()
    from _timing import machine_header
    print(machine_header())
    print("(npu_ffn's simulator runs NumPy kernels; the chosen kernels above serve the grouped-matmul ops)")
    m, k1, n1, e = (256, 256, 512, 4) if a.quick else (2048, 1024, 2048, 8)
    repeat = 1 if a.quick else 3
    rng = np.random.default_rng(0)
    counts = np.full(e, m // e)
    counts[-1] += m - counts.sum()
    x = rng.uniform(-1, 1, (m, k1)).astype(np.float16)
    w1 = (rng.standard_normal((e, k1, n1)) / 32).astype(np.float16)
    w2 = (rng.standard_normal((e, n1, k1)) / 32).astype(np.float16)
    flops = 2 * 2 * m * k1 * n1

    def ref_fp32():
        s = 0
        out = np.empty((m, k1), np.float32)
        for g, c in enumerate(counts):
            h = x[s:s + c].astype(np.float32) @ w1[g].astype(np.float32)
            out[s:s + c] = (h / (1 + np.exp(-1.702 * h))) @ w2[g].astype(np.float32)
            s += c
        return out

    xq = rng.integers(-128, 128, (m, k1)).astype(np.int8)
    wq1 = rng.integers(-128, 128, (e, k1, n1)).astype(np.int8)
    wq2 = rng.integers(-128, 128, (e, n1, k1)).astype(np.int8)
    deq1 = simffn.nm.encode_int64_scale(np.full((e, n1), 1e-4, np.float32))
    deq2 = simffn.nm.encode_int64_scale(np.full((e, k1), 1e-6, np.float32))

    def ref_int64():
        s = 0
        for g, c in enumerate(counts):
            acc = xq[s:s + c].astype(np.int64) @ wq1[g].astype(np.int64)
            q = np.clip(np.rint(acc * 1e-4), -128, 127).astype(np.int64)
            _ = q @ wq2[g].astype(np.int64)
            s += c

    rows = []
    t_ref = _best(ref_fp32, repeat)
    rows.append(("numpy fp32 reference (fastgelu)", t_ref, 1.0))
    for ip in (0, 1):
        t = _best(lambda: simffn.npu_ffn(x, w1, w2, "fastgelu", counts.tolist(), inner_precise=ip), repeat)
        rows.append((f"sim fp16 fastgelu inner_precise={ip}", t, t / t_ref))
    t_int = _best(ref_int64, repeat)
    rows.append(("numpy int64 reference (quant GEMMs)", t_int, t_int / t_ref))
    t = _best(lambda: simffn.npu_ffn(xq, wq1, wq2, "relu", counts.tolist(), scale=np.ones(e, np.float32),
                                     offset=np.zeros(e, np.float32), deq_scale1=deq1, deq_scale2=deq2), repeat)
    rows.append(("sim quant int8 relu (y fp16)", t, t / t_ref))

    print(f"npu_ffn  M={m} K1={k1} N1={n1} E={e}  ({flops / 1e9:.2f} GFLOP per call)")
    print(f"{'variant':<40} {'time [ms]':>10} {'GFLOP/s':>9} {'vs fp32 ref':>12}")
    for name, t, ratio in rows:
        print(f"{name:<40} {t * 1e3:>10.1f} {flops / t / 1e9:>9.2f} {ratio:>11.2f}x")


if __name__ == "__main__":
    main()
