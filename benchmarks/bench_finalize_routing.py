"""Benchmark of the npu_grouped_matmul_finalize_routing simulator on the DeepSeek-V3 combine shape.

    python benchmarks/bench_finalize_routing.py [--quick] [--m M] [--experts E] [--intmm-rows R]

Shape: k=2048, n=7168 (DeepSeek-V3 down projection), m=8192 routed rows, output batch = m/8 (top-8).
Experts: a subset (default 8) of DeepSeek-V3's 256: the integer GEMM work, 2*m*k*n, does not depend on
e (only the group sizes do), while 256 int8 [2048, 7168] weights would need 3.8 GB of RAM.

Reports, measured in the same run:
* the full op (A8W8 with an int8 NZ weight; A8W4 with int4-in-int32 weight, MSD), with the exact
  integer GEMM this machine chose (``ascend_moe.kernels``, printed in the header);
* the integer GEMM part alone (the exact int32 grouped GEMM the simulator runs: one x @ W per group for
  A8W8, the hi and lo halves for A8W4 incl. the fp16 fixpipe rounding);
* ``torch._int_mm`` (int8 x int8 -> int32, CPU) on the same per-group problems.  It is slow on CPU, so
  by default it runs on the first ``--intmm-rows`` rows of every group and is scaled to the full row
  count (printed as "extrapolated"); ``--intmm-rows 0`` runs it on every row.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from ascend_moe.sim import finalize_routing as fr
from ascend_moe.sim import numerics, quant_gemm
from _timing import best_of, machine_header


def timed(fn, repeat=1):
    """Best time of fn run with this machine's chosen GEMM kernels (ascend_moe.kernels), as the
    public op runs it."""
    from ascend_moe import kernels as machine
    from ascend_moe.sim import kernels as sim_kernels

    def with_machine_kernels():
        with sim_kernels.use(machine.for_call()):
            return fn()
    return best_of(with_machine_kernels, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="m=256, 2 experts (a smoke run)")
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=7168)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--intmm-rows", type=int, default=0,
                    help="rows per group timed with torch._int_mm (0 = all rows, the default; a positive "
                         "value scales the time by rows, which overstates _int_mm's cost when its per-call "
                         "weight packing dominates)")
    ap.add_argument("--no-intmm", action="store_true", help="skip the (slow) torch._int_mm reference")
    args = ap.parse_args()
    m, k, n, e = args.m, args.k, args.n, args.experts
    if args.quick:
        m, e = 256, 2
    print(machine_header())
    rng = np.random.default_rng(0)
    counts = np.full(e, m // e, np.int64)
    counts[: m - counts.sum()] += 1
    bounds = quant_gemm.group_bounds(counts, 1, m)
    batch = max(1, m // 8)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    logit = rng.random(m, dtype=np.float32)
    pertoken = rng.random(m, dtype=np.float32) * 1e-2
    rows = rng.permutation(np.repeat(np.arange(batch), -(-m // batch))[:m]).astype(np.int64)
    print(f"shape: m={m} k={k} n={n} experts={e} (group size ~{m // e}) batch={batch}; "
          f"integer GEMM work {2 * m * k * n / 1e9:.1f} GOP per GEMM")

    # A8W8 -------------------------------------------------------------------------------------
    w8 = rng.integers(-128, 128, (e, k, n), dtype=np.int8)
    w8_nz = numerics.nd_to_nz(w8)                         # 5-D FRACTAL_NZ storage
    scale = (rng.random((e, n), dtype=np.float32) * 1e-3).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_op8, _ = timed(lambda: fr.npu_grouped_matmul_finalize_routing(
            x, w8_nz, counts, scale=scale, pertoken_scale=pertoken, logit=logit, row_index=rows, output_bs=batch))

    def int_gemm_a8w8():
        for g, (s, t) in enumerate(bounds):
            quant_gemm.exact_int_matmul(x[s:t], w8[g], max_abs_a=128, max_abs_b=128)
    t_gemm8, _ = timed(int_gemm_a8w8)

    # A8W4 -------------------------------------------------------------------------------------
    w4v = rng.integers(-8, 8, (e, k, n), dtype=np.int8)
    w4 = numerics.pack_int4(w4v)
    s4 = (rng.random((e, 1, n), dtype=np.float32) * 1e-2).astype(np.float32)
    scale4 = numerics.encode_int64_scale(s4)
    bias4 = (8 * (w4v.astype(np.float32) * numerics.decode_int64_scale(scale4)).sum(1)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_op4, _ = timed(lambda: fr.npu_grouped_matmul_finalize_routing(
            x, w4, counts, scale=scale4, bias=bias4, pertoken_scale=pertoken, logit=logit, row_index=rows,
            output_bs=batch))
    s4_dec = numerics.decode_int64_scale(scale4).reshape(e, n)
    t_gemm4, _ = timed(lambda: quant_gemm.grouped_msd_partials(x, w4v, s4_dec, bounds))

    # torch._int_mm reference --------------------------------------------------------------------
    t_intmm = None
    note = "skipped (--no-intmm)"
    try:
        if args.no_intmm:
            raise RuntimeError("skipped (--no-intmm)")
        import torch
        torch.set_num_threads(max(1, torch.get_num_threads()))
        xt = torch.from_numpy(x)
        wt = [torch.from_numpy(w8[g]) for g in range(e)]
        r = args.intmm_rows
        timed_rows = 0

        def intmm():
            nonlocal timed_rows
            timed_rows = 0
            for g, (s, t) in enumerate(bounds):
                rr = (t - s) if r <= 0 else min(t - s, max(r, 17))
                rr = max(17, -(-rr // 8) * 8)             # _int_mm needs m > 16, multiples of 8
                a = xt[s:s + rr] if s + rr <= m else xt[m - rr:m]
                torch._int_mm(a.contiguous(), wt[g])
                timed_rows += rr
        torch._int_mm(xt[:32].contiguous(), wt[0][:, :256].contiguous())   # warm-up
        t_meas, _ = timed(intmm)
        t_intmm = t_meas * m / timed_rows
        note = "measured" if timed_rows >= m else f"extrapolated from {timed_rows} rows"
    except Exception as exc:  # torch missing, no _int_mm, or skipped
        note = str(exc) if args.no_intmm else f"unavailable ({exc})"

    gop = 2 * m * k * n / 1e9
    print(f"A8W8 full op (sim)                : {t_op8:8.2f} s")
    print(f"A8W8 integer GEMM part (sim)      : {t_gemm8:8.2f} s  ({gop / t_gemm8:6.1f} GOP/s)")
    print(f"A8W4 full op (sim)                : {t_op4:8.2f} s")
    print(f"A8W4 integer GEMM part (hi+lo+fp16): {t_gemm4:8.2f} s  ({2 * gop / t_gemm4:6.1f} GOP/s over both halves)")
    if t_intmm is not None:
        print(f"torch._int_mm same groups          : {t_intmm:8.2f} s  ({gop / t_intmm:6.1f} GOP/s, {note})")
        print(f"ratio sim A8W8 int GEMM / torch._int_mm : {t_gemm8 / t_intmm:6.3f}  (< 1: the simulator is faster)")
        print(f"ratio sim A8W4 int GEMM / torch._int_mm : {t_gemm4 / t_intmm:6.3f}")
    else:
        print(f"torch._int_mm: {note}")


if __name__ == "__main__":
    main()
