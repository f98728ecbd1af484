"""Import cost of ascend_moe beyond torch: ``python benchmarks/bench_import.py [--repeat N]``.

Each measurement is a fresh interpreter; the ratio compares ``import torch; import ascend_moe``
against ``import torch`` alone in the same run.
"""
import argparse
import statistics
import subprocess
import sys
import time


def _time(code: str, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    base = _time("import torch", args.repeat)
    full = _time("import torch, ascend_moe", args.repeat)
    sim = _time("import ascend_moe.sim", args.repeat)
    print(f"import torch               {base * 1000:8.1f} ms (median of {args.repeat})")
    print(f"import torch, ascend_moe   {full * 1000:8.1f} ms  -> ascend_moe adds {(full - base) * 1000:.1f} ms")
    print(f"import ascend_moe.sim      {sim * 1000:8.1f} ms  (includes torch if installed)")
    from _timing import machine_header  # after the measurement: it imports ascend_moe here
    print(machine_header())


if __name__ == "__main__":
    main()
