"""Benchmark: grouped matmul forward + backward on the CPU simulator vs torch references, same run.

    python benchmarks/bench_gmm.py            # MoE shapes: E=8,T=4096,K=7168,N=2048 and E=32,T=512,K=7168,N=2048
    python benchmarks/bench_gmm.py --quick    # small shapes (seconds)

For each shape and dtype (fp32, bf16, fp16) it times
  * ours:   ascend_moe.npu_gmm (the machine's chosen GEMM kernels, see ascend_moe.kernels) + its
            registered MindSpeed backward (grad_x = gmm(dy, W^T), grad_w = K-split gmm(x^T, dy)),
            called again with the same weight (kept packed / widened forms of it may be used);
  * ours-changed: the same with the weight updated in place before every call (a training step),
            so nothing kept for the weight applies; its ratios are printed against ours' columns;
  * torch._grouped_mm (if it runs on the CPU for that dtype, else the reason is printed);
  * a torch per-expert loop: cat([x[s:t] @ w[e]]) with torch autograd.
With ``--overhead`` it instead reports the fixed per-call cost of the public op (forward, no autograd)
at a small shape (default E=16, T=256, K=1024, N=512, where the GEMMs are short and the cost shows):

    python benchmarks/bench_gmm.py --overhead [--shapes 16x256x1024x512] [--dtypes bf16,fp32]

  public op time minus the bare GEMM loop (no checker, binding, dispatch, conversion or guard scan):
  the faster of a per-group ``torch.mm(..., out=)`` loop (what ``torch._grouped_mm`` does on the CPU)
  and a per-group oneDNN inner product on weights packed beforehand (what the ``torch_packed`` kernel
  does with a reused weight), each group written into one preallocated output.
Reported: the CPU, its kernel-relevant flags and the GEMM implementation chosen per shape class
(ascend_moe.kernels), best wall time over interleaved rounds, GFLOP/s (forward 2*T*K*N, backward 2x
that), the ratio reference_time / our_time (> 1 means we are faster), and the peak memory of ours
relative to its inputs + outputs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import ascend_moe as am
from ascend_moe.kernels import output_pool
from _timing import best_of, interleaved_best, machine_header, peak_rss_increase

# the issue's shape first (E=16, T=2048, K=1024, N=512), then README's MoE shapes
FULL = [(16, 2048, 1024, 512), (8, 4096, 7168, 2048), (32, 512, 7168, 2048)]
QUICK = [(8, 512, 1024, 512), (32, 256, 1024, 512)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def balanced_counts(e: int, t: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return rng.multinomial(t, np.full(e, 1.0 / e)).tolist()


def best_time(fn, repeats: int) -> float:
    return best_of(fn, repeats)[0]


def run_ours(x, w, gl, g):
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    t0 = time.perf_counter()
    y = am.npu_gmm(xr, wr, group_list=gl)
    t1 = time.perf_counter()
    y.backward(g)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def run_ours_changed(x, w, gl, g):
    """ours with the weight updated in place before the call (a training step: every call meets a
    new version of the weight, so no kept packed / widened form of it is used)."""
    w.add_(0)  # bumps the version counter, outside the timed region
    return run_ours(x, w, gl, g)


def run_grouped_mm(x, w, offs, g):
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    t0 = time.perf_counter()
    y = torch._grouped_mm(xr, wr, offs=offs)
    t1 = time.perf_counter()
    y.backward(g)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def run_loop(x, w, counts, g):
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    t0 = time.perf_counter()
    parts = torch.split(xr, counts)
    y = torch.cat([p @ wr[e] for e, p in enumerate(parts)])
    t1 = time.perf_counter()
    y.backward(g)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def overhead(shapes, dtypes, rounds: int) -> None:
    """Per-call cost of the public op beyond its GEMMs (see the module docstring)."""
    from ascend_moe.kernels import impls
    calls = 20  # calls per timed round: a round is then well above the timer's resolution
    print(f"per-call overhead: best of {rounds} interleaved rounds of {calls} calls each; forward, no autograd; "
          "overhead = public op - the faster bare GEMM loop")
    print(f"{'shape (E,T,K,N)':<22}{'dtype':<6}{'public us':>11}{'_grouped_mm':>13}{'bare mm':>10}"
          f"{'bare packed':>13}{'overhead us':>13}{'_grouped_mm/public':>20}")
    for (e, t, k, n) in shapes:
        cum = np.cumsum(balanced_counts(e, t))
        runs = list(zip(range(e), [0] + cum[:-1].tolist(), cum.tolist()))
        for name in dtypes:
            dt = DTYPES[name]
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(t, k, generator=gen).to(dt)
            w = (torch.randn(e, k, n, generator=gen) / k ** 0.5).to(dt)
            gl = torch.tensor(cum, dtype=torch.int64)
            offs = torch.tensor(cum, dtype=torch.int32)
            out = torch.empty(t, n, dtype=dt)
            packed = [impls.pack_weight(w[i]) for i in range(e)] if dt in (torch.bfloat16, torch.float32) else None

            def bare_mm():
                for i, s, u in runs:
                    torch.mm(x[s:u], w[i], out=out[s:u])

            def bare_packed():
                for i, s, u in runs:
                    impls.packed_mm_into(out[s:u], x[s:u], packed[i])

            fns = {"public": lambda: am.npu_gmm(x, w, group_list=gl),
                   "_grouped_mm": lambda: torch._grouped_mm(x, w, offs=offs),
                   "bare mm": bare_mm}
            if packed is not None:
                fns["bare packed"] = bare_packed
            for fn in fns.values():  # warm-up: the weight's packed form and guard scan are kept from here on
                for _ in range(3):
                    fn()
            many = {label: (lambda fn=fn: [fn() for _ in range(calls)]) for label, fn in fns.items()}
            best = {label: v / calls for label, v in interleaved_best(many, rounds).items()}
            bare = min(best["bare mm"], best.get("bare packed", float("inf")))
            us = {label: v * 1e6 for label, v in best.items()}
            print(f"{e},{t},{k},{n:<16}{name:<6}{us['public']:>11.0f}{us['_grouped_mm']:>13.0f}{us['bare mm']:>10.0f}"
                  f"{us.get('bare packed', float('nan')):>13.0f}{(best['public'] - bare) * 1e6:>13.0f}"
                  f"{best['_grouped_mm'] / best['public']:>20.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small shapes")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (best of)")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    ap.add_argument("--shapes", default=None, help="e.g. 8x4096x7168x2048,32x512x7168x2048")
    ap.add_argument("--impls", default="ours,ours-changed,_grouped_mm,per-expert",
                    help="subset to time (the per-expert loop's backward is slow at large E)")
    ap.add_argument("--overhead", action="store_true",
                    help="report the public op's per-call cost beyond its GEMMs at a small shape")
    args = ap.parse_args()
    if args.overhead:
        print(machine_header())
        shapes = [(16, 256, 1024, 512)]
        if args.shapes:
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        overhead(shapes, args.dtypes.split(","), args.repeats or 30)
        return
    shapes = QUICK if args.quick else FULL
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    repeats = args.repeats or 3
    print(machine_header())
    print(f"rounds {repeats} (interleaved, best of); ratio = reference time / ours (> 1: ours faster); "
          "peak = rise of the process's peak RSS during one forward+backward of ours, / (inputs + outputs)")
    # warm-up (BLAS / oneDNN thread pools, first-call dispatch) so single-repeat timings are fair
    for name in args.dtypes.split(","):
        dt = DTYPES[name]
        xw, ww, gw = torch.randn(64, 32).to(dt), torch.randn(2, 32, 16).to(dt), torch.randn(64, 16).to(dt)
        run_ours(xw, ww, torch.tensor([30, 64]), gw)
        run_loop(xw, ww, [30, 34], gw)
        try:
            run_grouped_mm(xw, ww, torch.tensor([30, 64], dtype=torch.int32), gw)
        except Exception:
            pass
    print(f"{'shape (E,T,K,N)':<22}{'dtype':<6}{'impl':<14}{'fwd s':>9}{'bwd s':>9}{'fwd GF/s':>10}{'bwd GF/s':>10}"
          f"{'ref/ours fwd':>14}{'ref/ours bwd':>14}{'/changed f':>12}{'/changed b':>12}")
    for (e, t, k, n) in shapes:
        counts = balanced_counts(e, t)
        cum = np.cumsum(counts)
        flops = 2.0 * t * k * n
        for name in args.dtypes.split(","):
            dt = DTYPES[name]
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(t, k, generator=gen).to(dt)
            w = (torch.randn(e, k, n, generator=gen) / k ** 0.5).to(dt)
            g = torch.randn(t, n, generator=gen).to(dt)
            w_train = w.clone()  # its own tensor: updating it must not touch what "ours" keeps for w
            gl = torch.tensor(cum, dtype=torch.int64)
            offs = torch.tensor(cum, dtype=torch.int32)
            label = f"{e},{t},{k},{n}"
            fns = {"ours": lambda: run_ours(x, w, gl, g),
                   "ours-changed": lambda: run_ours_changed(x, w_train, gl, g),
                   "_grouped_mm": lambda: run_grouped_mm(x, w, offs, g),
                   "per-expert": lambda: run_loop(x, w, counts, g)}
            fns = {k_: v for k_, v in fns.items() if k_ in args.impls.split(",")}
            best = {name_: [float("inf"), float("inf")] for name_ in fns}
            failed = {}
            for _ in range(repeats):
                for impl, fn in fns.items():
                    if impl in failed:
                        continue
                    try:
                        f, b = fn()
                    except Exception as ex:  # report why a reference does not run
                        failed[impl] = ex
                        continue
                    best[impl] = [min(best[impl][0], f), min(best[impl][1], b)]
            ours = best.get("ours")
            for impl in fns:
                if impl in failed:
                    ex = failed[impl]
                    print(f"{label:<22}{name:<6}{impl:<14}not available on CPU for {name}: "
                          f"{type(ex).__name__}: {str(ex)[:80]}", flush=True)
                    continue
                f, b = best[impl]
                ratio = "" if ours is None or impl.startswith("ours") else f"{f / ours[0]:>14.2f}{b / ours[1]:>14.2f}"
                changed = best.get("ours-changed")
                if changed is not None and "ours-changed" not in failed and not impl.startswith("ours"):
                    ratio += f"{f / changed[0]:>12.2f}{b / changed[1]:>12.2f}"
                print(f"{label:<22}{name:<6}{impl:<14}{f:>9.3f}{b:>9.3f}{flops / f / 1e9:>10.1f}"
                      f"{2 * flops / b / 1e9:>10.1f}{ratio}", flush=True)
            if "ours" in fns:
                io = sum(v.numel() * v.element_size() for v in (x, w, g)) * 2 + t * n * x.element_size()
                kept = output_pool.POOL.stats()["held"]  # the timed rounds' outputs, kept for reuse
                peak = peak_rss_increase(lambda: run_ours(x, w, gl, g))  # (the pool's idle memory given back first)
                if peak is not None:
                    print(f"{label:<22}{name:<6}{'ours peak':<14}{peak / 2**20:>9.1f} MB = {peak / io:.2f} x inputs+outputs "
                          f"({io / 2**20:.1f} MB); output pool held {kept / 2**20:.1f} MB between rounds", flush=True)
            del x, w, g, w_train


if __name__ == "__main__":
    main()
