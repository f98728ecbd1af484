"""Grouped matmul, non-quantised: MindSpeed ``npu_gmm`` / ``npu_gmm_v2`` and torch_npu
``npu_grouped_matmul`` (aclnnGroupedMatmul V1..V5), spec grouped-matmul-family.md section 1.

Formula (spec 1.6), per group ``e``:

* group_type 0 (M split): ``y[s_e:t_e] = x[s_e:t_e] @ w[e] (+ bias[e])``, rows ``[s_e, t_e)`` from
  the group list (type 0 cumsum: ``t_e = group_list[e]``; type 1 counts: ``t_e = cumsum[e]``);
* group_type 2 (K split): ``y[e] = x[:, s_e:t_e] @ w[s_e:t_e, :]`` -> ``[E, M, N]``; with a weight
  list {[K_i, N_i]} (split_item 0/1, no group list) ``y_i = x[:, o_i:o_i+K_i] @ w_i`` -> [M, N_i];
* group_type -1: ``y_i = x_i @ w_i`` for parallel lists.

Faithfulness contract:

* **fp32-accumulate**: every group's product is one fp32 GEMM (``np.matmul`` on float32 operands,
  i.e. BLAS sgemm; fp16/bf16 inputs are widened exactly), the bias is added in fp32 to the fp32
  accumulator [I: spec 1.6 "cube accumulates in fp32 then casts"], and the result is cast ONCE to
  the output dtype with IEEE round-to-nearest-even [I].  The device's accumulation order over K is
  tiling-dependent and not public, so results may differ from the device in the last bits of the
  fp32 accumulator (and hence by one output ulp where that flips a rounding).
* **no copies of x or weight per group**: groups are views; fp32 inputs go to BLAS as views (a
  transposed weight view is handed to BLAS as a transposed operand); fp16/bf16 groups are widened
  to fp32 one group at a time (each element is widened exactly once per call, peak memory stays at
  one group's operands).
* **undefined regions**: for M split with a single output, rows at or past the group-list total
  are never written by the device (outputs are ``at::empty``); they are filled by the
  undefined-region policy (:func:`ascend_moe.sim.numerics.fill_undefined`, ``poison`` = NaN by
  default).  K split is fully defined: a group with ``k_e == 0`` is zero (kernel
  ``EmptyTensorCompute``).
* **float64** is not a device dtype.  Inside :func:`float64_reference` the simulator accepts
  float64 operands and computes in float64 (no fp32 rounding): this exists only so that
  ``torch.autograd.gradcheck`` can run through the registered ops and their backward formulas.
* group lists: a Python ``list`` of ints models the int-array path (MindSpeed ``npu_gmm`` with
  ``List[int]``, aclnnGroupedMatmul V1/V2, whose host checks ``last == rows``); a NumPy array
  models the Tensor path (V3/V4/V5, values never validated on the device; the checker enforces
  ``total <= rows`` and the rows past it are undefined).  See :mod:`ascend_moe.rules.gmm`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import kernels as _kernels
from .numerics import GroupList as GroupListValue, fill_undefined

__all__ = ["grouped_matmul_compute", "grouped_matmul_add_fp32"]

GroupList = Union[None, Sequence[int], np.ndarray]

# ---------------------------------------------------------------------------------------------
# float64 gradient-check mode (not a device feature)
# ---------------------------------------------------------------------------------------------

_FLOAT64 = contextvars.ContextVar("ascend_moe_gmm_float64", default=False)


@contextlib.contextmanager
def float64_reference() -> Iterator[None]:
    """Accept float64 operands (computed in float64) for the calls inside: for gradcheck only."""
    token = _FLOAT64.set(True)
    try:
        yield
    finally:
        _FLOAT64.reset(token)


def float64_enabled() -> bool:
    return _FLOAT64.get()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def group_bounds(group_list: GroupList, group_list_type: int) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of every group along the grouped axis (spec 1.3)."""
    # an empty group list has no groups: no starts either (not one start without an end, which
    # would size a K-split output [1, M, N] that no group writes)
    gl = GroupListValue.of(group_list, group_list_type, validate=False)
    return gl.starts, gl.ends


def resolve_group_type(group_type: Optional[int], group_list: GroupList) -> int:
    """npu_grouped_matmul's ``group_type=None`` (allowed only with an int-array group list, which
    goes to aclnnGroupedMatmul V1 = M split only): 0 with a group list, else -1 [I]."""
    if group_type is not None:
        # a non-integer (inf, 1.5, "0") is returned as given, for the rules to reject by name
        return int(group_type) if isinstance(group_type, (int, np.integer)) else group_type
    return 0 if group_list is not None else -1


def _acc_dtype(*arrays: np.ndarray) -> type:
    return np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32


# copy_cast(dst, src): dst[...] = src converted to dst's dtype (exact widening, or the one RNE
# narrowing).  The default is the current kernels' (NumPy's cast unless a faster one with identical
# results is plugged in, see ascend_moe.sim.kernels); a caller may also pass one.
CopyCast = Callable[[np.ndarray, np.ndarray], None]
numpy_copy_cast = _kernels.numpy_copy_cast


class _Workspace:
    """fp32 scratch reused across the groups of one call: the widened fp16/bf16 operands and the
    accumulator.  Fresh multi-MB arrays per group would each be new memory (first-touch page faults
    on every group); reusing one buffer per role makes that cost once per call.  Also carries the
    call's ``copy_cast``."""

    def __init__(self, copy_cast: Optional[CopyCast] = None) -> None:
        self._bufs: dict = {}
        self.copy_cast: CopyCast = copy_cast or _kernels.current().copy_cast

    def _flat(self, role: str, size: int, dtype) -> np.ndarray:
        buf = self._bufs.get(role)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self._bufs[role] = np.empty(size, dtype=dtype)
        return buf[:size]

    def like(self, role: str, a: np.ndarray, dtype) -> np.ndarray:
        """An array of a's shape in ``dtype`` with the memory layout ``a.astype(dtype)`` would have
        (C, or F for a transposed view), so the BLAS call (and its summation order) is unchanged."""
        m, n = a.shape
        flat = self._flat(role, m * n, dtype)
        return flat.reshape((n, m)).T if abs(a.strides[0]) < abs(a.strides[1]) else flat.reshape((m, n))

    def c_array(self, role: str, shape: Tuple[int, int], dtype) -> np.ndarray:
        return self._flat(role, shape[0] * shape[1], dtype).reshape(shape)


def _widened(ws: Optional[_Workspace], role: str, a: np.ndarray, acc_dt) -> np.ndarray:
    if a.dtype == acc_dt:
        return a
    widen = _kernels.current().widen
    if widen is not None and role == "b" and a.ndim == 2:
        kept = widen(a, acc_dt)  # e.g. a weight widened once and kept while it is unchanged
        if kept is not None:
            return kept
    if ws is None or a.ndim != 2:
        return a.astype(acc_dt)
    dst = ws.like(role, a, acc_dt)
    ws.copy_cast(dst, a)  # exact widening
    return dst


def _host_contiguous(a: np.ndarray) -> np.ndarray:
    """The operand as the device reads it: the host makes strided views contiguous
    (aclnn_grouped_matmul.cpp DataContiguous); a transposed (F-ordered) 2-D view stays as it is, the
    device takes it with its transpose flag.  Values are unchanged either way."""
    if a.ndim != 2 or a.flags.c_contiguous or a.flags.f_contiguous:
        return a
    return np.ascontiguousarray(a)


def _gemm_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias_row: Optional[np.ndarray],
               ws: Optional[_Workspace] = None) -> None:
    """out[...] = round_once(a @ b + bias) with an fp32 (fp64 in gradcheck mode) accumulator.
    ``ws``: scratch reused across the calls of one grouped product (same results, fewer allocations).
    A plugged-in float GEMM (:mod:`ascend_moe.sim.kernels`) may compute it under the same contract."""
    acc_dt = _acc_dtype(a, b)
    a, b = _host_contiguous(a), _host_contiguous(b)
    fast = _kernels.current().float_gemm
    if fast is not None and acc_dt == np.float32 and fast(out, a, b, bias_row):
        return
    a, b = _widened(ws, "a", a, acc_dt), _widened(ws, "b", b, acc_dt)
    if out.dtype == acc_dt and out.flags.c_contiguous:
        # fp32 output: the accumulator IS the output, no rounding step and no extra pass
        np.matmul(a, b, out=out)
        if bias_row is not None:
            out += bias_row.astype(acc_dt, copy=False)
        return
    if ws is None or a.ndim != 2 or b.ndim != 2:
        acc = np.matmul(a, b)
    else:
        acc = np.matmul(a, b, out=ws.c_array("acc", (a.shape[0], b.shape[1]), acc_dt))
    if bias_row is not None:
        acc += bias_row.astype(acc_dt, copy=False)  # fp32 add before the one rounding [I]
    # the one RNE cast to the output dtype (numerics.cast semantics), written in place
    (ws.copy_cast if ws is not None else _kernels.current().copy_cast)(out, acc)


def _output(out: Optional[np.ndarray], shape: Tuple[int, ...], dtype) -> np.ndarray:
    """The array an unchecked compute function writes: a fresh ``np.empty``, or the caller's ``out``
    (C-contiguous, of exactly that shape and dtype; every element is written).  The torch kernels
    pass a view of a ``torch.empty`` tensor: for GB-sized weight gradients, first-touch page faults
    of fresh memory are most of the backward's time, and torch's allocator (ordinary pages) is what
    the reference implementations pay too, whereas NumPy's transparent-huge-page allocations were
    measured 0.2-4 s for the same 1.9 GB depending on the host's page state (see bench_gmm.py)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(dtype)} array of shape {tuple(shape)}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    return out


def _as_list(v) -> List[np.ndarray]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [np.asarray(i) for i in v]
    return [np.asarray(v)]


def _weight_of_group(ws: List[np.ndarray], e: int) -> np.ndarray:
    return ws[0][e] if (len(ws) == 1 and ws[0].ndim == 3) else ws[e]


def _bias_of_group(bs: List[np.ndarray], e: int) -> Optional[np.ndarray]:
    if not bs:
        return None
    return bs[0][e] if (len(bs) == 1 and bs[0].ndim == 2) else bs[e]


def _num_groups(ws: List[np.ndarray]) -> int:
    return ws[0].shape[0] if (len(ws) == 1 and ws[0].ndim == 3) else len(ws)


# ---------------------------------------------------------------------------------------------
# unchecked compute (called by the public twins after the checker, and by the torch kernels)
# ---------------------------------------------------------------------------------------------


def gmm_m_split(x: np.ndarray, weight: Sequence[np.ndarray], bias: Sequence[np.ndarray],
                group_list: GroupList, group_list_type: int, undefined: Optional[str] = None,
                out: Optional[np.ndarray] = None, copy_cast: Optional[CopyCast] = None) -> np.ndarray:
    """Single x [M, K], weight [E, K, N] (or a list of E [K, N]) -> y [M, N]; rows past the
    group-list total are undefined.  ``out``: optional destination (see :func:`_output`);
    ``copy_cast``: optional faster conversion with NumPy's results (see :data:`CopyCast`)."""
    ws, bs = _as_list(weight), _as_list(bias)
    n = ws[0].shape[-1]
    y = _output(out, (x.shape[0], n), x.dtype)
    starts, ends = group_bounds(group_list, group_list_type)
    scratch = _Workspace(copy_cast)
    runs = _runs_sharing_weight(ws, bs, starts.tolist(), ends.tolist())
    if not (runs and not bs and len(ws) == 1 and ws[0].ndim == 3 and _grouped_fast(y, x, ws[0], runs, False)):
        for e, s, t in runs:
            _gemm_into(y[s:t], x[s:t], _weight_of_group(ws, e), _bias_of_group(bs, e), scratch)
    total = int(ends[-1]) if ends.size else 0
    if total < x.shape[0]:
        fill_undefined(y, slice(max(total, 0), None), undefined)
    return y


def _runs_sharing_weight(ws: List[np.ndarray], bs: List[np.ndarray], starts: List[int],
                         ends: List[int]) -> List[Tuple[int, int, int]]:
    """(group, start, end) of the non-empty row ranges to compute, consecutive groups merged into one
    range when they use the same weight and bias memory (a stride-0 expert dimension, as in
    ``check --run``, where every expert shares one weight): one GEMM instead of one per group, each
    row still an fp32-accumulated product with its own group's weight."""
    shared_w = len(ws) == 1 and ws[0].ndim == 3 and ws[0].strides[0] == 0
    shared_b = not bs or (len(bs) == 1 and bs[0].ndim == 2 and bs[0].strides[0] == 0)
    runs: List[Tuple[int, int, int]] = []
    for e, (s, t) in enumerate(zip(starts, ends)):
        if t <= s:
            continue
        if shared_w and shared_b and runs and runs[-1][2] == s:
            runs[-1] = (runs[-1][0], runs[-1][1], t)
        else:
            runs.append((e, s, t))
    return runs


def gmm_m_split_list(x: np.ndarray, weight: Sequence[np.ndarray], bias: Sequence[np.ndarray],
                     group_list: GroupList, group_list_type: int) -> List[np.ndarray]:
    """Single x split by the group list, one output per group (split_item 1)."""
    ws, bs = _as_list(weight), _as_list(bias)
    starts, ends = group_bounds(group_list, group_list_type)
    out = []
    for e, (s, t) in enumerate(zip(starts.tolist(), ends.tolist())):
        # each output has its own weight's N (a weight list may mix N, as op-plugin sizes each y_i)
        y = np.empty((max(t - s, 0), _weight_of_group(ws, e).shape[-1]), dtype=x.dtype)
        if t > s:
            _gemm_into(y, x[s:t], _weight_of_group(ws, e), _bias_of_group(bs, e))
        out.append(y)
    return out


def gmm_k_split(x: np.ndarray, weight: np.ndarray, group_list: GroupList, group_list_type: int,
                out: Optional[np.ndarray] = None, copy_cast: Optional[CopyCast] = None) -> np.ndarray:
    """x [M, K] (a transposed view), weight [K, N] -> y [E, M, N]; groups with k_e == 0 are zero.
    ``out`` / ``copy_cast``: as :func:`gmm_m_split`."""
    starts, ends = group_bounds(group_list, group_list_type)
    y = _output(out, (starts.size, x.shape[0], weight.shape[-1]), x.dtype)
    scratch = _Workspace(copy_cast)
    bounds = list(zip(starts.tolist(), ends.tolist()))
    runs = [(e, s, t) for e, (s, t) in enumerate(bounds) if t > s]
    for e, (s, t) in enumerate(bounds):
        if t <= s:
            y[e] = 0  # EmptyTensorCompute writes zeros
    if not (runs and _grouped_fast(y, x, weight, runs, True)):
        for e, s, t in runs:
            _gemm_into(y[e], x[:, s:t], weight[s:t], None, scratch)
    return y


def _grouped_fast(out: np.ndarray, a: np.ndarray, b: np.ndarray, runs: List[Tuple[int, int, int]],
                  k_split: bool) -> bool:
    """The whole grouped product by a plugged-in grouped GEMM (same contract per group), if one is
    plugged in and covers the call; False leaves every run to the per-group path."""
    fast = _kernels.current().grouped_gemm
    if fast is None or _acc_dtype(a, b) != np.float32 or not (a.dtype == b.dtype == out.dtype):
        return False
    return bool(fast(out, a, b, runs, k_split))


def gmm_k_split_list(x: np.ndarray, weights: Sequence[np.ndarray]) -> List[np.ndarray]:
    """K split with one x [M, K] (a transposed view) and several weights [K_i, N_i]: the weights' K
    partition x's columns in order, ``y_i = x[:, o_i:o_i + K_i] @ w_i`` -> [M, N_i]; columns past the
    weights' total are not read.  A group with K_i == 0 is zero, as in :func:`gmm_k_split`."""
    out, offset = [], 0
    for w in weights:
        k = w.shape[0]
        y = np.empty((x.shape[0], w.shape[-1]), dtype=x.dtype)
        if k > 0:
            _gemm_into(y, x[:, offset:offset + k], w, None)
        else:
            y[...] = 0
        out.append(y)
        offset += k
    return out


def gmm_no_split(xs: Sequence[np.ndarray], ws: Sequence[np.ndarray], bs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """group_type -1: y_i = x_i @ w_i (x_i may be 2-6-D; batch dims flattened)."""
    out = []
    for i, xi in enumerate(xs):
        w = _weight_of_group(list(ws), i)
        y = np.empty((*xi.shape[:-1], w.shape[-1]), dtype=xi.dtype)
        rows = int(np.prod(xi.shape[:-1], dtype=np.int64))  # explicit: reshape(-1, 0) is ambiguous when N == 0
        _gemm_into(y.reshape(rows, w.shape[-1]), xi.reshape(rows, xi.shape[-1]), w, _bias_of_group(list(bs), i))
        out.append(y)
    return out


def grouped_matmul_compute(x, weight, bias, group_list: GroupList, split_item: int, group_type: int,
                           group_list_type: int, undefined: Optional[str] = None) -> List[np.ndarray]:
    """npu_grouped_matmul on already-checked arguments; returns the list of outputs."""
    xs, ws, bs = _as_list(x), _as_list(weight), _as_list(bias)
    single_y = split_item in (2, 3)
    if group_type == 2 and len(ws) > 1:
        # K split with a weight list: each weight's K is its group (split_item 0/1, one y per weight)
        return gmm_k_split_list(xs[0], ws)
    if group_type == 2:
        # K split: x [M, K] transposed view, weight [K, N] single, group list partitions K.
        y = gmm_k_split(xs[0], ws[0], group_list, group_list_type)
        return [y] if single_y else [y[e] for e in range(y.shape[0])]
    if group_type == 0 and len(xs) == 1 and group_list is not None:
        if single_y:
            return [gmm_m_split(xs[0], ws, bs, group_list, group_list_type, undefined)]
        return gmm_m_split_list(xs[0], ws, bs, group_list, group_list_type)
    if group_type == 0 and len(xs) == 1 and _num_groups(ws) == 1:
        ys = gmm_no_split(xs, ws, bs)
        return ys
    # A list of x (one per group) or group_type -1: parallel products.
    ys = gmm_no_split(xs, ws, bs)
    if single_y:
        n = ys[0].shape[-1]
        return [np.concatenate([y.reshape(-1, n) for y in ys], axis=0)]
    return ys


def grouped_matmul_add_fp32(x: np.ndarray, grad_y: np.ndarray, group_list: GroupList,
                            main_grad: np.ndarray) -> np.ndarray:
    """MindSpeed ``npu_groupmatmul_add_fp32`` (ATB GroupedMatmulInplaceAdd, transposeA=True):
    ``main_grad.view(E, K, N)[e] += x[rows_e]^T @ grad_y[rows_e]`` in fp32, in place (spec 1.8).

    ``group_list`` is a cumsum.  The product is one fp32-accumulated GEMM per group added once to
    the fp32 buffer [I: ATB accumulates in L0C then adds]; groups without rows add nothing.
    """
    if main_grad.dtype != np.float32 and not (float64_enabled() and main_grad.dtype == np.float64):
        raise TypeError(f"main_grad must be float32, got {main_grad.dtype}")
    k, n = x.shape[1], grad_y.shape[1]
    starts, ends = group_bounds(group_list, 0)
    view = main_grad.reshape(starts.size, k, n)  # raises if main_grad cannot be viewed so
    if not np.shares_memory(view, main_grad):
        raise ValueError("main_grad must be contiguous so it can be viewed as [E, K, N]")
    acc_dt = _acc_dtype(x, grad_y, main_grad)
    for e, (s, t) in enumerate(zip(starts.tolist(), ends.tolist())):
        if t > s:
            view[e] += np.matmul(x[s:t].astype(acc_dt, copy=False).T, grad_y[s:t].astype(acc_dt, copy=False))
    return main_grad


# ---------------------------------------------------------------------------------------------
# public twins (checked)
# ---------------------------------------------------------------------------------------------


def _gmm_forward(x, weight, bias, group_list, group_type, group_list_type, undefined, out=None, copy_cast=None):
    x, weight = np.asarray(x), np.asarray(weight)
    if group_type == 2:
        return gmm_k_split(x, weight, group_list, group_list_type, out, copy_cast)
    return gmm_m_split(x, [weight], [] if bias is None else [np.asarray(bias)], group_list,
                       group_list_type, undefined, out, copy_cast)


def __getattr__(name: str):
    """The checked NumPy twins ``npu_gmm`` / ``npu_gmm_v2`` / ``npu_grouped_matmul`` are generated from the
    op declarations (:mod:`ascend_moe.numpy_ops`); these aliases keep the old names without the
    simulator importing the checker."""
    if name in ("npu_gmm", "npu_gmm_v2", "npu_grouped_matmul"):
        from ascend_moe import numpy_ops
        return getattr(numpy_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
