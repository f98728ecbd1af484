"""The fastest faithful GEMM kernel on the machine that runs: per-machine selection and injection
into the simulator.

Each GEMM class has several implementations that meet its faithfulness contract
(:mod:`ascend_moe.kernels.impls`; the contracts are in :mod:`ascend_moe.sim.kernels`).  Which one
runs is decided per machine and per shape class:

* shape classes: ``<dtype>.<shape>`` with dtype ``fp32`` / ``bf16`` / ``fp16`` (float GEMM) or
  ``int8`` (exact integer GEMM), and shape ``skinny`` (at most 16 rows: decode-like calls, memory-bound),
  ``narrow`` (17-32 rows: MoE groups of many experts, near the memory bound), ``wide`` (33-256 rows) or
  ``tall`` (more: prefill and training groups of a few experts, where GEMM libraries' large-matrix kernels
  pay off; fp32 here: the compiled GEMM 10-20 % ahead of torch's at 128 rows, 20 % behind at 512); and
  ``fp32.ksplit``, the fp32 K-split product (the backward's weight gradient ``x^T @ dy``, a sum over each
  group's tokens), classed on its own: its operands and blocking are not those of any M-split class (the
  other dtypes' K-split products go by the class of ``x``'s columns);
* the first time a class is needed, each eligible implementation is timed on a representative
  shapes (interleaved, best of several) and the fastest is kept; implementations whose contract
  cannot be verified on this machine (torch's half-precision matmul and oneDNN's packed inner
  product accumulating in fp32 and rounding once, the latter keeping fp32 subnormals;
  ``torch._int_mm`` bit-exact on saturating patterns) are never eligible;
* choices are cached in ``<cache dir>/kernels-<key>.json``, cache dir = ``ASCEND_MOE_CACHE_DIR`` or
  ``$XDG_CACHE_HOME/ascend_moe`` (``~/.cache/ascend_moe``), key = hash of the CPU model and flags,
  torch's CPU capability and version, NumPy's version and the weight check mode (under the content
  check a kept packed weight costs a digest per call, which its measurement includes), so another
  machine or a torch upgrade measures again;
* ``ASCEND_MOE_KERNELS`` forces choices: ``reference`` (the NumPy simulator kernels everywhere),
  ``auto`` (the default), or comma-separated ``class=impl`` where class is a full class name, a
  dtype (all its shapes) or ``float``; e.g. ``ASCEND_MOE_KERNELS=bf16=torch_native,int8=reference``.

The torch ops wrap their simulator calls in ``with sim_kernels.use(for_call(weights...))``; the
simulator alone (``ascend_moe.sim``) always runs its reference kernels.  Besides the per-GEMM
plug-in, ``for_call`` hands the simulator a grouped one (:func:`ascend_moe.kernels.impls.torch_grouped`)
that runs a whole M- or K-split product in torch with one conversion per operand.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..sim import kernels as sim_kernels
from . import impls
from .impls import FLOAT_IMPLS, INT_IMPLS, fast_copy_cast, ieee_subnormals
from .weight_cache import CACHE as WEIGHT_CACHE, check_content, content_digest, source_ranges

__all__ = ["for_call", "choice", "choices", "cpu_description", "cache_path", "reset", "WEIGHT_CACHE",
           "fast_copy_cast", "ieee_subnormals", "CLASSES", "IMPLS_OF"]

ENV = "ASCEND_MOE_KERNELS"
SKINNY_ROWS = 16
NARROW_ROWS = 32
WIDE_ROWS = 256
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NP_NAME = {np.dtype(np.float32): "fp32", impls._BF16: "bf16", np.dtype(np.float16): "fp16"}
KSPLIT_FP32 = "fp32.ksplit"
# the bf16 M split of more than WIDE_ROWS rows times a weight whose k is contiguous (the backward's dy @ w^T): oneDNN
# runs that layout faster than the forward's (dy @ w^T at 512 rows ~7 % ahead of dot_bf16, scans included, against
# level in the forward), so it is measured on its own
TALL_T_BF16 = "bf16.tall_t"
CLASSES = tuple(f"{d}.{s}" for d in ("fp32", "bf16", "fp16", "int8")
                for s in ("tall", "wide", "narrow", "skinny")) + (KSPLIT_FP32, TALL_T_BF16)
# which implementations exist for which operand dtype (each still has to pass its contract check)
_FLOAT_DTYPES_OF = {"torch_native": ("bf16", "fp16"), "torch_packed": ("bf16", "fp32"),
                    "widen_fma": ("bf16", "fp16", "fp32"), "dot_bf16": ("bf16",)}
IMPLS_OF = {c: tuple(INT_IMPLS if c.startswith("int8") else
                     (n for n in FLOAT_IMPLS if c.split(".")[0] in _FLOAT_DTYPES_OF.get(n, FLOAT_DTYPES)))
            for c in CLASSES}
# the K-split product's operands are activations (nothing to pack): torch_packed there would be torch's own GEMM,
# torch_sgemm, which a dtype-wide force of torch_packed gives that class
IMPLS_OF[KSPLIT_FP32] = tuple(n for n in IMPLS_OF[KSPLIT_FP32] if n != "torch_packed")
# a k-contiguous weight is, in a MoE layer, the backward's w^T, changed by every training step: a kept packed copy
# would be made for nothing (a dtype-wide force of torch_packed gives it torch_native, the same GEMM unpacked)
IMPLS_OF[TALL_T_BF16] = tuple(n for n in IMPLS_OF[TALL_T_BF16] if n != "torch_packed")
_SAME_IMPL = {(KSPLIT_FP32, "torch_packed"): "torch_sgemm", (TALL_T_BF16, "torch_packed"): "torch_native"}
# representative (m, k, n) GEMMs per shape class for the one-time measurement, timed together: MoE
# groups of a few hundred rows (GEMM libraries switch algorithms with m, so more than one m is timed);
# for bf16 / fp16 the skinny and narrow classes also with a weight larger than a cache, as MoE experts'
# are, where the compiled kernels (which read a weight once) compete with torch's (a scan or a digest
# besides); fp32 and int8 keep weights of a few MB: NumPy's BLAS, which wins there alone, runs its own
# threads beside torch's, and after a torch call it was seen 10x slower.  An optional fourth entry: that many
# experts, a group of m rows each with its own weight, run as a grouped call runs them (a lone 1 MB weight
# multiplied GEMM by GEMM stays in the L2 cache and pays no per-group work, unlike a MoE layer's experts:
# bf16 wide once chose torch's GEMM by 5 % there and ran the grouped call 25 % slower).  The K-split
# class: (tokens per group, x's columns, dy's columns, groups), the weight gradient of the layer shape.
_PROBE_SHAPES = {"tall": ((512, 1024, 512, 2),), "tall_t": ((512, 2048, 4096, 2),), "wide": ((128, 1024, 512, 8),),
                 "narrow": ((24, 4096, 4096),),
                 "skinny": ((4, 2048, 1024), (8, 4096, 4096))}
_PROBE_SHAPES_SMALL_WEIGHTS = {"tall": ((512, 2048, 1024),), "wide": ((128, 1024, 512),), "narrow": ((24, 2048, 1024),),
                               "skinny": ((4, 2048, 1024),), "ksplit": ((128, 1024, 512, 8),)}
# 2: torch_packed joined the float classes; 3: two probe shapes for wide; 4-6: compiled GEMMs, narrow, probes
# timed after a torch call; 7: the compiled kernels on torch's OpenMP team, NumPy-BLAS candidates timed last;
# 8: widen_fma joined the fp32 classes; 9: bf16 / fp16 wide probes stream several experts' weights; 10: dot_int8
# joined the int8 classes; 11: torch_packed chosen over a compiled GEMM only by a margin; 12: the tall classes;
# 13: the fp32 K-split class (bf16.tall_t, added later, is measured when first needed)
_SCHEMA = 13


# ---------------------------------------------------------------------------------------------
# machine identity and the cache file
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _cpu_info() -> Tuple[str, Tuple[str, ...]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = sorted(val.split())
    except OSError:
        pass
    return model, tuple(flags)


def cpu_description() -> Dict[str, object]:
    """CPU model, the flags that decide GEMM kernels, torch's CPU capability and versions."""
    model, flags = _cpu_info()
    interesting = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "asimd", "sve", "neon", "sse4_2"))]
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        capability = "unknown"
    return {"cpu": model, "flags": interesting, "torch_cpu_capability": capability, "torch": torch.__version__,
            "numpy": np.__version__, "threads": torch.get_num_threads()}


def _machine_key() -> str:
    return _machine_key_for(check_content())


@functools.lru_cache(maxsize=None)
def _machine_key_for(content: bool) -> str:
    d = cpu_description()
    _, flags = _cpu_info()
    # the weight check mode too: under the content check a kept packed weight costs a digest per call
    text = json.dumps([_SCHEMA, d["cpu"], list(flags), d["torch_cpu_capability"], d["torch"], d["numpy"],
                       content])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    explicit = os.environ.get("ASCEND_MOE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ascend_moe"


def cache_path() -> Path:
    return cache_dir() / f"kernels-{_machine_key()}.json"


_LOCK = threading.RLock()
_STATE: Dict[str, object] = {}
# (environment, class) -> implementation, so the per-GEMM lookup is one dict access
_RESOLVED: Dict[tuple, str] = {}


def _load() -> Dict[str, object]:
    path = cache_path()
    if _STATE.get("path") == str(path):
        return _STATE["data"]  # type: ignore[return-value]
    data: Dict[str, object] = {}
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != _SCHEMA:
            data = {}
    except (OSError, ValueError):
        data = {}
    data.setdefault("schema", _SCHEMA)
    data.setdefault("machine", cpu_description())
    data.setdefault("choices", {})
    data.setdefault("timings", {})
    data.setdefault("verified", {})
    _STATE.update(path=str(path), data=data)
    return data


def _save(data: Dict[str, object]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".kernels-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still works: the choice is then measured once per process


def reset() -> None:
    """Forget the in-memory choices (the next use re-reads the cache file)."""
    with _LOCK:
        _STATE.clear()
        _RESOLVED.clear()


# ---------------------------------------------------------------------------------------------
# forced choices
# ---------------------------------------------------------------------------------------------

def _forced() -> Dict[str, str]:
    raw = os.environ.get(ENV, "").strip()
    if raw in ("", "auto"):
        return {}
    if raw == "reference":
        return {c: "reference" for c in CLASSES}
    forced: Dict[str, str] = {}
    for item in raw.split(","):
        cls, sep, impl = item.strip().partition("=")
        cls, impl = cls.strip(), impl.strip()
        targets = [c for c in CLASSES if c == cls or c.split(".")[0] == cls
                   or (cls == "float" and not c.startswith("int8"))]
        if not sep or not targets:
            raise ValueError(f"{ENV}: {item!r} is not 'class=impl'; classes are {', '.join(CLASSES)}, a dtype "
                             f"(fp32, bf16, fp16, int8) or 'float'; or set {ENV}=reference / auto")
        for c in targets:
            # a dtype-wide force of an implementation a class lacks: its equivalent there (_SAME_IMPL)
            use = _SAME_IMPL.get((c, impl), impl) if c != cls else impl
            if use not in IMPLS_OF[c]:
                raise ValueError(f"{ENV}: {use!r} is not an implementation of {c}; choose one of "
                                 f"{', '.join(IMPLS_OF[c])}")
            if not _verified(c, use):
                raise ValueError(f"{ENV}: {use!r} does not meet the {c} faithfulness contract on this machine "
                                 f"({cpu_description()['cpu']}), so it cannot be forced; use 'reference'")
            forced[c] = use
    return forced


# ---------------------------------------------------------------------------------------------
# eligibility and measurement
# ---------------------------------------------------------------------------------------------

def _verified(cls: str, impl: str) -> bool:
    """Whether ``impl`` meets the class contract on this machine (checked once, cached)."""
    if impl in ("reference", "torch_sgemm"):
        return True
    dtype = cls.split(".")[0]
    with _LOCK:
        data = _load()
        verified = data["verified"]  # type: ignore[index]
        name = f"{impl}:{dtype}"
        if cls == TALL_T_BF16 and impl == "torch_native":
            name = f"{impl}:{dtype}:k_contiguous"  # oneDNN may run another kernel for that layout: checked on it
        if name not in verified:
            if name == "torch_native:bf16:k_contiguous":
                verified[name] = _verified("bf16.tall", "torch_native") and impls.native_contract_holds_k_contiguous()
            elif impl == "torch_int_mm":
                verified[name] = impls.int_mm_exact_on_this_machine()
            elif impl == "dot_int8":
                verified[name] = impls.dot_int8_contract_holds()
            elif impl == "torch_native" and dtype in ("bf16", "fp16"):
                verified[name] = impls.native_contract_holds(FLOAT_DTYPES[dtype])
            elif impl == "dot_bf16" and dtype == "bf16":
                verified[name] = impls.dot_bf16_contract_holds()
            elif impl == "widen_fma" and dtype in ("bf16", "fp16", "fp32"):
                verified[name] = impls.widen_fma_contract_holds(FLOAT_DTYPES[dtype])
            elif impl == "torch_packed" and dtype in ("bf16", "fp32"):
                # its plain path (first use, changed weight) is torch_native for bf16
                verified[name] = (impls.packed_contract_holds(FLOAT_DTYPES[dtype])
                                  and (dtype == "fp32" or _verified(cls, "torch_native")))
            else:
                verified[name] = False
            _save(data)
        return bool(verified[name])


def _probe_runner(cls: str, impl: str, shape: Tuple[int, ...]) -> Callable[[], None]:
    from ..sim import gmm as sim_gmm
    from ..sim import quant_gemm
    dtype, _ = cls.split(".")
    m, k, n = shape[:3]
    experts = shape[3] if len(shape) > 3 else 1
    rng = np.random.default_rng(7)
    if dtype == "int8":
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        kern = sim_kernels.Kernels(int_gemm=INT_IMPLS[impl], name=impl)

        def run() -> None:
            with sim_kernels.use(kern):
                quant_gemm.exact_int_matmul(a, b, max_abs_a=128, max_abs_b=128)
        return run
    tdt = FLOAT_DTYPES[dtype]
    if cls == KSPLIT_FP32:
        return _ksplit_probe_runner(impl, m, k, n, experts, rng)
    # experts groups of m rows, each with its own weight (k contiguous for the tall_t class: [E, N, K] transposed)
    ta = torch.from_numpy(rng.standard_normal((m * experts, k), dtype=np.float32)).to(tdt)
    if cls == TALL_T_BF16:
        tb = torch.from_numpy(rng.standard_normal((experts, n, k), dtype=np.float32)).to(tdt).transpose(-1, -2)
    else:
        tb = torch.from_numpy(rng.standard_normal((experts, k, n), dtype=np.float32)).to(tdt)
    out = torch.empty((m * experts, n), dtype=tdt)
    from ..ops._common import to_numpy
    a, b3, o = to_numpy(ta), to_numpy(tb), to_numpy(out)
    runs = [(e, e * m, (e + 1) * m) for e in range(experts)]
    fn = FLOAT_IMPLS[impl]
    # the packed implementation's steady state: each probe weight packed once, as a weight reused
    # unchanged is (its first use runs torch_native / torch_sgemm, measured on their own), and under the
    # content check each call's digest of the weight, which proves a kept form current
    packed: Dict[int, torch.Tensor] = {}
    content = check_content()

    def pack(b_: np.ndarray):
        lo = b_.__array_interface__["data"][0]
        if lo not in packed:
            packed[lo] = impls.pack_weight(impls.as_torch(b_))
        if content:
            content_digest(lo, lo + b_.nbytes)
        return packed[lo]
    kern = sim_kernels.Kernels(float_gemm=None if fn is None else (lambda o_, a_, b_, r_: fn(o_, a_, b_, r_, None,
                                                                                            None, pack)),
                               copy_cast=fast_copy_cast, name=impl)

    def run() -> None:
        with sim_kernels.use(kern):
            # several experts: the whole grouped product as a grouped call runs it, where the implementation
            # has that form (one compiled call; torch's GEMM group after group), else GEMM after GEMM
            if experts > 1 and impls.torch_grouped(o, a, b3, runs, False, lambda rows: impl, None, pack):
                return
            for e, s, t in runs:
                sim_gmm._gemm_into(o[s:t], a[s:t], b3[e], None, sim_gmm._Workspace())
    return run


def _ksplit_probe_runner(impl: str, m: int, k: int, n: int, experts: int,
                         rng: np.random.Generator) -> Callable[[], None]:
    """The fp32 K-split product as the backward's weight gradient runs it: ``out[e] = x[s:t]^T @ dy[s:t]`` for
    ``experts`` groups of m tokens, x [tokens, k], dy [tokens, n]; one grouped call where the implementation has
    that form, else group after group (the reference)."""
    from ..sim import gmm as sim_gmm
    x = rng.standard_normal((m * experts, k), dtype=np.float32)
    dy = rng.standard_normal((m * experts, n), dtype=np.float32)
    out = np.empty((experts, k, n), dtype=np.float32)
    runs = [(e, e * m, (e + 1) * m) for e in range(experts)]
    xt = x.T  # the transposed view the backward passes
    kern = sim_kernels.Kernels(float_gemm=None if FLOAT_IMPLS[impl] is None else
                               (lambda o_, a_, b_, r_: FLOAT_IMPLS[impl](o_, a_, b_, r_, None, None, None)),
                               copy_cast=fast_copy_cast, name=impl)

    def run() -> None:
        with sim_kernels.use(kern):
            if impls.torch_grouped(out, xt, dy, runs, True, lambda rows: impl, None, None):
                return
            for e, s, t in runs:
                sim_gmm._gemm_into(out[e], xt[:, s:t], dy[s:t], None, sim_gmm._Workspace())
    return run


# Implementations whose GEMMs run on NumPy's BLAS.  Its threads keep spinning for 0.1-0.2 s after a call (2 cores:
# torch._int_mm at (24, 2048, 1024) took 0.5-8 ms in that time against 0.3 ms alone), so a candidate timed right after
# one of these would be judged on shared cores: they are timed last, on their own.
_ON_NUMPY_BLAS = ("reference",)


def _measure(cls: str, candidates: Sequence[str]) -> Dict[str, float]:
    """Best wall time per candidate at the class's representative shapes: one timed call each (after
    a small warm-up call) drops candidates over 4x slower than the best (a slow one could take
    seconds per call), then interleaved rounds among the rest (the machine may be shared); the
    candidates on NumPy's BLAS after all the others (:data:`_ON_NUMPY_BLAS`)."""
    dtype, shape_class = cls.split(".")
    shapes = (_PROBE_SHAPES if dtype in ("bf16", "fp16") else _PROBE_SHAPES_SMALL_WEIGHTS)[shape_class]
    groups = ([c for c in candidates if c not in _ON_NUMPY_BLAS], [c for c in candidates if c in _ON_NUMPY_BLAS])
    small = (min(shapes[0][0], 8), 64, 32)

    def all_shapes(c: str) -> Callable[[], None]:
        each = [_probe_runner(cls, c, shape) for shape in shapes]

        def run() -> None:
            for one in each:
                one()
        return run
    runners = {c: all_shapes(c) for c in candidates}
    ta, tb = torch.ones(64, 256), torch.ones(256, 64)
    best: Dict[str, float] = {}
    for group in groups:  # the candidates on NumPy's BLAS after every call of the others
        if not group:
            continue
        for c in group:
            _probe_runner(cls, c, small)()  # warm-up: thread pools, first-call dispatch
        # the first call at a shape includes one-time work (oneDNN generates its kernels per shape, a packed
        # weight is made): a second call is the one timed, else a kernel without such work looks 4x faster
        first = {c: _best(runners[c], 2) for c in group}
        floor = min([*first.values(), *best.values()])
        keep = [c for c in group if first[c] <= 4 * floor]
        best.update({c: first[c] for c in keep})
        # each timed right after a small torch GEMM, as an op in a model runs: torch's OpenMP workers keep
        # spinning for a while after it, which slows other threads (NumPy's BLAS pool was seen 10x slower)
        for _ in range(8):  # a shared machine: enough rounds for each candidate to see a quiet moment
            for c in keep:
                torch.mm(ta, tb)
                t0 = time.perf_counter()
                runners[c]()
                best[c] = min(best[c], time.perf_counter() - t0)
    best.update({c: float("inf") for c in candidates if c not in best})
    return best


# how much faster a candidate on NumPy's BLAS must time to be chosen over the fastest other one: its threads keep
# spinning after each call and slow the torch op that follows in a model, which its own timing does not charge
# (fp32 wide here: the reference, torch_packed, torch_sgemm and widen_fma all within 10 %, in any order)
_NUMPY_BLAS_MARGIN = 1.10


# how much faster than dot_int8 another int8 GEMM must time to be chosen: dot_int8 reads an int8 FRACTAL_NZ weight
# in place, where any other needs its logical copy, kept while the weight is unchanged, proven current by a digest
# of the weight per call (the finalize-routing benchmark's 117 MB weight: about 4 ms of a 60 ms call, 7 %) and
# holding as much memory again; the probes time ND weights, which cost neither
_IN_PLACE_MARGIN = 1.10


# how much faster than the fastest compiled GEMM torch_packed must time to be chosen: its probe time is its steady
# state (each weight packed once, reused, a digest per call proving the packed copy current), but a weight changed
# before every call (a training step) runs its plain path, torch's own GEMM, and a kept packed copy holds as much
# memory as the weight again; the compiled GEMMs keep nothing.  fp32 wide here: within 1-4 % on probes of 128 and 512
# rows together, while in the grouped call (16 experts of 128 rows) the compiled GEMM ran 20 % faster than
# torch's sgemm; at 512 rows (tall) the packed weight leads by 20 %, so there it is still chosen
_KEPT_FORM_MARGIN = 1.10


# classes measured between two candidates where both meet the contract here: bf16.tall_t exists because oneDNN runs
# a k-contiguous weight faster than the forward's layout, and its probe streams 32 MB of weights (50 ms a call), so
# the others, 3x slower at the bf16 tall shapes, are not timed 10 times each (they are where either is missing)
_MEASURED_BETWEEN = {TALL_T_BF16: ("dot_bf16", "torch_native")}


def _pick(timings: Dict[str, float]) -> str:
    best = min(timings, key=timings.get)
    others = {c: t for c, t in timings.items() if c not in _ON_NUMPY_BLAS}
    if best in _ON_NUMPY_BLAS and others:
        runner_up = min(others, key=others.get)
        if others[runner_up] <= _NUMPY_BLAS_MARGIN * timings[best]:
            best = runner_up
    compiled = {c: t for c, t in timings.items() if c in impls.COMPILED_GEMMS}
    if best == "torch_packed" and compiled:
        fastest = min(compiled, key=compiled.get)
        if compiled[fastest] <= _KEPT_FORM_MARGIN * timings[best]:
            best = fastest
    if "dot_int8" in timings and timings["dot_int8"] <= _IN_PLACE_MARGIN * timings[best]:
        return "dot_int8"
    return best


def _best(fn: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def choice(cls: str) -> str:
    """The implementation used for shape class ``cls`` on this machine (measured once, cached)."""
    env = (os.environ.get(ENV, ""), os.environ.get("ASCEND_MOE_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME"),
           os.environ.get("ASCEND_MOE_WEIGHT_CACHE_CHECK"))
    known = _RESOLVED.get((env, cls))
    if known is not None:
        return known
    forced = _forced()
    if cls in forced:
        _RESOLVED[(env, cls)] = forced[cls]
        return forced[cls]
    with _LOCK:
        data = _load()
        chosen = data["choices"]  # type: ignore[index]
        if cls not in chosen:
            candidates = [i for i in IMPLS_OF[cls] if _verified(cls, i)]
            between = _MEASURED_BETWEEN.get(cls, ())
            if between and all(i in candidates for i in between):
                candidates = list(between)
            timings = _measure(cls, candidates) if len(candidates) > 1 else {candidates[0]: 0.0}
            chosen[cls] = _pick(timings)
            data["timings"][cls] = {k: (None if v == float("inf") else round(v, 6))  # type: ignore[index]
                                    for k, v in timings.items()}
            _save(data)
        _RESOLVED[(env, cls)] = str(chosen[cls])
        return str(chosen[cls])


def choices() -> Dict[str, str]:
    """Every class's implementation (measuring the classes not measured yet)."""
    return {c: choice(c) for c in CLASSES}


# ---------------------------------------------------------------------------------------------
# the kernels handed to the simulator
# ---------------------------------------------------------------------------------------------

_CLASS_NAMES = {d: (f"{d}.skinny", f"{d}.narrow", f"{d}.wide", f"{d}.tall") for d in (*FLOAT_DTYPES, "int8")}


def _shape_class(dtype_name: str, rows: int, k_split: bool = False, k_contiguous: bool = False) -> str:
    """The class of a GEMM of ``rows`` rows of ``a`` (of the K-split product: x's columns) in ``dtype_name``;
    ``k_contiguous``: an M split's weight has its k contiguous (:func:`_k_contiguous`)."""
    if k_split and dtype_name == "fp32":
        return KSPLIT_FP32
    names = _CLASS_NAMES[dtype_name]
    if rows > WIDE_ROWS:
        return TALL_T_BF16 if k_contiguous and not k_split and dtype_name == "bf16" else names[3]
    return names[0] if rows <= SKINNY_ROWS else names[1] if rows <= NARROW_ROWS else names[2]


def _k_contiguous(b: np.ndarray) -> bool:
    """Whether weight ``b`` ([K, N] or [E, K, N]) has its k contiguous and not its n (a transposed view)."""
    return (b.ndim >= 2 and b.shape[-2] > 1 and b.shape[-1] > 1 and b.strides[-2] == b.itemsize
            and b.strides[-1] != b.itemsize)


def _stand_in(cls: str, fma_fits: bool) -> str:
    """The implementation for operands a compiled GEMM does not take as they are (the K-split
    product, whose ``a`` is a transposed view): the widen-FMA GEMM where it takes them, else torch's
    own GEMM where it meets the contract here (for fp32 its sgemm, which always does)."""
    if fma_fits and _verified(cls, "widen_fma"):
        return "widen_fma"
    if cls.startswith("fp32."):
        return "torch_sgemm"
    return "torch_native" if _verified(cls, "torch_native") else "reference"


def _make_float_gemms(widen, sources):
    """The per-GEMM and grouped float kernels of one call, sharing the call's flush-guard memo."""
    # the flush guard scans each bf16 operand once per call, and a weight once while it is unchanged
    # (under the content check, proving it unchanged reads its bytes once per call, as the scan would)
    memo = impls.ExponentMemo(
        (lambda root, compute: WEIGHT_CACHE.fact(sources, root, "min_bf16_exponent", compute, cheap=True))
        if sources else None)

    def pack(b: np.ndarray):
        return WEIGHT_CACHE.packed(sources, b, lambda: impls.pack_weight(impls.as_torch(b))) if sources else None

    def float_gemm(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias_row: Optional[np.ndarray]) -> bool:
        name = _NP_NAME.get(a.dtype)
        if name is None or a.ndim != 2:
            return False
        fn = FLOAT_IMPLS[choice(_shape_class(name, a.shape[0], k_contiguous=_k_contiguous(b)))]
        return fn is not None and fn(out, a, b, bias_row, widen, memo, pack)

    def grouped_gemm(out: np.ndarray, a: np.ndarray, b: np.ndarray, runs, k_split: bool) -> bool:
        name = _NP_NAME.get(a.dtype)
        if name is None:
            return False
        fits = {"widen_fma": impls.widen_fma_fits(out, a, b, k_split),
                "dot_bf16": impls.dot_bf16_fits(out, a, b, k_split)}

        def resolve(cls: str) -> str:
            """The class's choice, or its stand-in when that is a compiled GEMM not taking these operands."""
            impl = choice(cls)
            return _stand_in(cls, fits["widen_fma"]) if not fits.get(impl, True) else impl
        # one lookup per shape class per call, not per group
        k_contiguous = not k_split and _k_contiguous(b)
        by_shape = {cls: resolve(cls) for cls in {_shape_class(name, a.shape[0] if k_split else t - s, k_split,
                                                               k_contiguous) for _, s, t in runs}}
        # NumPy's BLAS (the reference path) and torch's GEMMs in one call, group after group, run two thread
        # pools that each spin while the other works: a call mixing them was 10-20x slower.  fp32 groups
        # whose class chose the reference then take the same steps in torch (torch_sgemm) in such a call.
        if name == "fp32" and "reference" in by_shape.values() and len(set(by_shape.values())) > 1:
            by_shape = {cls: "torch_sgemm" if impl == "reference" else impl for cls, impl in by_shape.items()}

        def impl_for_rows(rows: int) -> str:
            cls = _shape_class(name, rows, k_split, k_contiguous)
            if cls not in by_shape:  # not a class of this call's groups (asked of a K-split's runs)
                by_shape[cls] = resolve(cls)
            return by_shape[cls]
        return impls.torch_grouped(out, a, b, runs, k_split, impl_for_rows, memo, pack if sources else None)
    return float_gemm, grouped_gemm


def compiled_grouped_gemm_plan(out: np.ndarray, a: np.ndarray, b: np.ndarray, runs: List[Tuple[int, int, int]],
                               k_split: bool) -> Optional[Callable[[], None]]:
    """A whole grouped product by one call of a compiled GEMM, where the grouped kernel :func:`for_call` hands
    the simulator would make exactly that call: the machine's choice for every group's shape class is the same
    compiled GEMM, and it takes the operands as they are (:func:`impls.compiled_grouped_plan`): that call made
    ready, not run.  ``runs``: (group, first row, end row) of the non-empty groups, as the simulator's (M split:
    ``out[s:t] = a[s:t] @ b[g]``; K split: ``out[g] = a[:, s:t] @ b[s:t]``, each group once).  None otherwise."""
    name = _NP_NAME.get(a.dtype)
    if name is None or _reference_forced() or not runs:
        return None
    if k_split:
        classes = {_shape_class(name, a.shape[0], True)}
    else:  # a class is a range of row counts: all groups are in one when the fewest and the most rows are
        sizes = [t - s for _, s, t in runs]
        k_contiguous = _k_contiguous(b)
        classes = {_shape_class(name, min(sizes), k_contiguous=k_contiguous),
                   _shape_class(name, max(sizes), k_contiguous=k_contiguous)}
        if len(classes) > 1:
            classes = {_shape_class(name, r, k_contiguous=k_contiguous) for r in set(sizes)}
    chosen = {choice(c) for c in classes}
    impl = chosen.pop() if len(chosen) == 1 else None
    if impl not in impls.COMPILED_GEMMS:
        return None
    return impls.compiled_grouped_plan(impl, out, a, b, runs, k_split)


def _int_gemm(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    if a.dtype != np.int8 or b.dtype != np.int8 or a.ndim != 2:
        return None
    fn = INT_IMPLS[choice(_shape_class("int8", a.shape[0]))]
    return None if fn is None else fn(a, b, out)


def _dot_int8_chosen(runs: Sequence[Tuple[int, int, int]]) -> bool:
    """Whether every group's shape class chose dot_int8 (then one call of it serves the whole grouped product)."""
    return all(choice(_shape_class("int8", t - s)) == "dot_int8" for _, s, t in runs)


def _grouped_int_gemm(out: np.ndarray, x: np.ndarray, bands: np.ndarray, n: int,
                      runs: Sequence[Tuple[int, int, int]]) -> bool:
    """A whole grouped int8 GEMM by one call of dot_int8 where every group's shape class chose it (the simulator's
    ``grouped_int_gemm``: the weight as 32-column bands, int8 FRACTAL_NZ storage read in place)."""
    return _dot_int8_chosen(runs) and impls.grouped_dot_int8(out, x, bands, n, runs)


def _grouped_int_gemm_scatter(y: np.ndarray, x: np.ndarray, bands: np.ndarray, n: int,
                              runs: Sequence[Tuple[int, int, int]], index: np.ndarray, col: np.ndarray,
                              row: np.ndarray) -> bool:
    """The finalize-routing A8W8 GEMM and epilogue in one compiled pass, where every group's shape class chose
    dot_int8 (the simulator's ``grouped_int_gemm_scatter``)."""
    return _dot_int8_chosen(runs) and impls.grouped_dot_int8_scatter(y, x, bands, n, runs, index, col, row)


def _reference_forced() -> bool:
    """``ASCEND_MOE_KERNELS=reference``: the NumPy reference GEMMs everywhere."""
    return os.environ.get(ENV, "").strip() == "reference"


# the steps handed to the simulator that keep nothing of a call's weights
_STEPS = dict(copy_cast=fast_copy_cast, rows_add=impls.torch_rows_add, dequant=impls.torch_dequant,
              dequant_scatter=impls.compiled_dequant_scatter, fixpipe_fp16=impls.compiled_fixpipe_fp16,
              swiglu_quant_a8w8=impls.compiled_swiglu_quant_a8w8, swiglu_quant_f32=impls.compiled_swiglu_quant_f32,
              top_k=impls.compiled_top_k, row_max=impls.compiled_row_max, tree_sum=impls.compiled_tree_sum,
              top2_sum=impls.compiled_top2_sum)


def for_call(*weights: Optional[torch.Tensor]) -> sim_kernels.Kernels:
    """The simulator kernels for one op call: the machine's chosen implementations, with converted
    copies of ``weights`` (widened fp16/bf16, logical values of NZ / int4 weights) kept in
    :data:`WEIGHT_CACHE` while unchanged.
    ``ASCEND_MOE_KERNELS=reference`` gives the NumPy reference GEMMs, with the other steps below (which
    change no number: the same operations as NumPy, element by element)."""
    sources = source_ranges(weights)

    def widen(a: np.ndarray, dtype) -> Optional[np.ndarray]:
        return WEIGHT_CACHE.widen(sources, a, dtype) if sources else None

    def keep(a: np.ndarray, name: str, compute):
        return WEIGHT_CACHE.fact(sources, a, name, compute) if sources else compute()

    # the weight cache, conversions, epilogue steps and gate selections: the same in both modes
    steps = dict(_STEPS, widen=widen, keep=keep)
    if _reference_forced():
        return sim_kernels.Kernels(**steps, name="reference")
    float_gemm, grouped_gemm = _make_float_gemms(widen, sources)
    return sim_kernels.Kernels(float_gemm=float_gemm, grouped_gemm=grouped_gemm, int_gemm=_int_gemm,
                               grouped_int_gemm=_grouped_int_gemm, grouped_int_gemm_scatter=_grouped_int_gemm_scatter,
                               **steps, name="machine")
