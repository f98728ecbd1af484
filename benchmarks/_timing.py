"""Timing shared by the benchmarks (run as ``python benchmarks/<file>.py``, so this imports as ``_timing``)."""
import atexit
import time
from typing import Any, Callable, Dict, Optional, Tuple


def best_of(fn: Callable[[], Any], repeat: int, warmup: bool = False) -> Tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` (after one untimed call if ``warmup``), and the
    last call's result."""
    result = fn() if warmup else None
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def interleaved_best(fns: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, float]:
    """Best wall time of each function over ``rounds`` rounds that call every function once in turn
    (a shared machine's load then hits all of them alike); a function that raises is reported as
    its exception."""
    best: Dict[str, Any] = {name: float("inf") for name in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            if isinstance(best[name], BaseException):
                continue
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as e:  # report why a reference does not run
                best[name] = e
                continue
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _status(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_increase(fn: Callable[[], Any]) -> Optional[int]:
    """Bytes the process's peak resident memory rose above its current size while ``fn`` ran
    (Linux: the high-water mark is reset through /proc/self/clear_refs); None where unsupported.
    Freed heap memory is first handed back to the system (glibc ``malloc_trim``), and so is what the output
    pool keeps idle (:mod:`ascend_moe.kernels.output_pool`), so what ``fn`` allocates shows even where an
    earlier call's freed memory would have been reused."""
    from ascend_moe.kernels import output_pool
    output_pool.release()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status("VmRSS")
    fn()
    peak = _status("VmHWM")
    return None if base is None or peak is None else max(0, peak - base)


def _cpu_jiffies() -> Optional[Tuple[int, int]]:
    """(time stolen by the hypervisor, all time) of every CPU so far, in jiffies (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None


def _report_steal(start: Tuple[int, int]) -> None:
    end = _cpu_jiffies()
    if end is None or end[1] <= start[1]:
        return
    share = (end[0] - start[0]) / (end[1] - start[1])
    print(f"CPU time stolen by the hypervisor during the run: {100 * share:.1f} % (cycles other guests took: above "
          "a few %, this run's times are not comparable with another's)")


def machine_header() -> str:
    """The CPU, the flags that decide kernels, torch's build, and the GEMM implementation chosen per
    shape class on this machine (measured once, cached; ASCEND_MOE_KERNELS overrides)."""
    import torch
    from ascend_moe import kernels
    from ascend_moe.kernels import weight_cache
    d = kernels.cpu_description()
    chosen = kernels.choices()
    lines = [f"cpu: {d['cpu']}; torch {d['torch']} (CPU capability {d['torch_cpu_capability']}), "
             f"{d['threads']} threads, numpy {d['numpy']}",
             f"flags: {' '.join(d['flags'])}",
             "chosen kernels: " + ", ".join(f"{c}={i}" for c, i in chosen.items()),
             f"kernel cache: {kernels.cache_path()}",
             "weight cache check: " + ("content (version counter + XXH3-128 of each weight, once per call)"
                                       if weight_cache.check_content() else "version (the version counter alone)")
             + "; packed weights on a weight's second unchanged use - ASCEND_MOE_WEIGHT_CACHE_CHECK"]
    try:
        with open("/proc/loadavg") as f:
            lines.append(f"load average at start: {' '.join(f.read().split()[:3])} (a shared machine is noisy: "
                         "ratios come from interleaved rounds, best of each)")
    except OSError:
        pass
    start = _cpu_jiffies()
    if start is not None:  # said once the benchmark has run
        atexit.register(_report_steal, start)
    del torch
    return "\n".join(lines)
