"""The torch side of the grouped matmul family (declared in :mod:`ascend_moe.ops.gmm`): the simulator
runs into torch-allocated outputs with torch's vectorised fp16<->fp32 conversion, the data-dependent
output sizes under fake tensors, and the autograd formulas (MindSpeed ``GMMFunction``; see the
declaration module's docstring).  The backward calls the registered ops themselves, so it runs on
whichever backend the forward used.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import kernels as machine_kernels
from ..kernels import output_pool
from ..opdecl import get_decl
from ..rules import quiet_doc_warnings
from ..sim import gmm as _sim
from ..sim.numerics import fill_undefined, get_undefined_policy
from ._common import from_numpy, to_numpy
from ._generate import call_op, checked_direct_cpu_call, run_sim, torch_dtype
from .gmm import gmm_shape

Tensor = torch.Tensor
_ERR_GROUP_TYPE = "group_type must be zero to compute gradients of x and weight!"
_ERR_BIAS = "Bias is not supported to compute gradient!"


def _public_group_list(group_list: Optional[Tensor], group_list_ints: Optional[List[int]]):
    return list(group_list_ints) if group_list_ints is not None else group_list


def _group_sizes(gl, group_list_type: int, n: int) -> List[Any]:
    """Rows per group for data-dependent output shapes (split_item 0/1); SymInts under fake tensors."""
    if isinstance(gl, list):
        vals = gl
    elif isinstance(gl, Tensor) and gl.device.type == "cpu" and not _is_fake(gl):
        vals = [int(v) for v in gl.tolist()]
    else:
        ctx = torch.library.get_ctx()
        return [ctx.new_dynamic_size() for _ in range(n)]
    if group_list_type == 0:
        return [int(vals[0])] + [int(vals[i]) - int(vals[i - 1]) for i in range(1, len(vals))] if vals else []
    return [int(v) for v in vals]


def _is_fake(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    return bool(is_fake(t))


_F16, _F32 = np.dtype(np.float16), np.dtype(np.float32)


def _fast_copy_cast(dst: np.ndarray, src: np.ndarray) -> None:
    """The simulator's casts, fp16 <-> fp32 done by torch's vectorised conversion (NumPy's is a
    scalar loop, ~3 s of the E=32 fp16 backward).  Both are IEEE round-to-nearest-even with the same
    overflow/subnormal results (checked on 1.3e8 fp32 patterns; widening is exact); they differ only
    in NaN payload bits, so when the fp32 side holds a NaN (np.max propagates it: one cheap pass) the
    conversion is redone by NumPy and results stay bit-identical to the NumPy-only simulator."""
    if ({dst.dtype, src.dtype} == {_F16, _F32} and src.size and min(src.strides) > 0
            and min(dst.strides) > 0):
        torch.from_numpy(dst).copy_(torch.from_numpy(src))
        if not np.isnan(np.max(src if src.dtype == _F32 else dst)):
            return
    np.copyto(dst, src, casting="unsafe")


def _is_transposed(w: Tensor) -> bool:
    """MindSpeed ``_is_transposed`` / host ``IsTransposeLastTwoDims``."""
    return w.dim() >= 2 and w.stride(-2) == 1 and w.stride(-1) == w.shape[-2] and w.shape[-1] > 1 and w.shape[-2] > 1


def _check_grad_request(x_needs: bool, w_needs: bool, bias: Optional[Tensor], group_type: int) -> None:
    if bias is not None and bias.requires_grad:
        raise ValueError(_ERR_BIAS)
    if (x_needs or w_needs) and group_type != 0:
        raise ValueError(_ERR_GROUP_TYPE)


@functools.lru_cache(maxsize=None)
def _torch_names(op: str) -> Tuple[str, ...]:
    """The torch.library schema's argument names (the positional ``inputs`` autograd sees)."""
    return get_decl(op).torch_parsed.names


def _gmm_setup(ctx, inputs, output):
    kw = dict(zip(_torch_names("npu_gmm"), inputs))
    x, weight = kw["x"], kw["weight"]
    _check_grad_request(x.requires_grad, weight.requires_grad, kw.get("bias"), kw.get("group_type", 0))
    ctx.save_for_backward(x, weight, kw.get("group_list"))
    ctx.group_list_ints = kw.get("group_list_ints")
    ctx.gemm_fusion = bool(kw.get("gemm_fusion", False))
    ctx.original_weight = kw.get("original_weight")
    ctx.weight_obj = weight  # for MindSpeed's zero_out_wgrad attribute lookup at backward time


def _mirror(needs_input_grad, dx, dw) -> tuple:
    """Gradients in the structure of the op's inputs as the dispatcher passed them (trailing
    defaults are dropped there, so the count varies): (dx, dw, None...)."""
    rest = [[None] * len(v) if isinstance(v, (list, tuple)) else None for v in needs_input_grad[2:]]
    return tuple([dx, dw] + rest)


def _undefined_like(shape, dtype, device) -> Tensor:
    """An 'uninitialised' tensor made visible by the undefined-region policy (poison NaN / zero)."""
    if get_undefined_policy() == "zero":
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _grouped_matmul_add_(x: Tensor, grad: Tensor, group_list_cumsum, main_grad: Tensor) -> None:
    """MindSpeed npu_groupmatmul_add_fp32: ``main_grad.view(E, K, N)[e] += x[rows_e]^T @ grad[rows_e]``.  CPU
    tensors (and the simulated npu's host memory): the simulator; NPU tensors: aclnnGroupedMatmulAdd (the op
    MindSpeed's A5 path calls; on A2/A3 MindSpeed calls ATB's GroupedMatmulInplaceAdd, the same computation)."""
    from ..backends import NPU_DEVICE_TYPES, privateuse1_is_simulated
    on_npu = [t.device.type in NPU_DEVICE_TYPES for t in (x, grad, main_grad)]
    if any(on_npu) and privateuse1_is_simulated():  # the simulated npu's memory is host memory: compute on it
        from ..backends import host_view
        x, grad, main_grad = (host_view(t) if t.device.type != "cpu" else t for t in (x, grad, main_grad))
        if isinstance(group_list_cumsum, torch.Tensor) and group_list_cumsum.device.type != "cpu":
            group_list_cumsum = host_view(group_list_cumsum)
        return _grouped_matmul_add_(x, grad, group_list_cumsum, main_grad)
    if any(on_npu):
        from ..backends.aclnn import grouped_matmul_add_
        gl = group_list_cumsum if isinstance(group_list_cumsum, Tensor) else torch.tensor(
            list(group_list_cumsum), dtype=torch.int64, device=x.device)
        grouped_matmul_add_(main_grad.view(gl.shape[0], x.shape[1], grad.shape[1]), x, grad, gl.to(torch.int64))
        return
    if any(t.device.type != "cpu" for t in (x, grad, main_grad)):
        raise NotImplementedError(f"npu_gmm(gemm_fusion=True): tensors on {sorted({t.device.type for t in (x, grad, main_grad)})} "
                                  "are neither CPU (simulator) nor NPU (aclnn) tensors")
    if main_grad.dtype != torch.float32 and not (_sim.float64_enabled() and main_grad.dtype == torch.float64):
        raise TypeError(f"npu_gmm(gemm_fusion=True): original_weight.main_grad must be float32, got {main_grad.dtype}")
    if not main_grad.is_contiguous():
        raise ValueError("npu_gmm(gemm_fusion=True): original_weight.main_grad must be contiguous (it is viewed as "
                         "[E, K, N])")
    gl = group_list_cumsum if isinstance(group_list_cumsum, list) else to_numpy(group_list_cumsum)
    _sim.grouped_matmul_add_fp32(to_numpy(x), to_numpy(grad), gl, to_numpy(main_grad))


def _quiet_doc_warnings(fn):
    """The backward re-runs the checker on its own gmm calls; a doc-only warning was already
    reported by the forward call with the same group list, so it is not repeated."""
    def wrapped(*args, **kwargs):
        before = quiet_doc_warnings(True)
        try:
            return fn(*args, **kwargs)
        finally:
            quiet_doc_warnings(before)
    return wrapped


def _ready_product(op_name: str, list_type: int, *args: Any, **kwargs: Any) -> Callable[[], Tensor]:
    """One of the backward's gmm calls, checked and set up now, run when the returned function is called: the
    compiled grouped GEMM ready with its output (:func:`gmm_compiled_plan`), else the simulator, else (another
    route: the dispatcher, the simulated npu, aclnn) the whole call then.  Both products are made ready before
    either runs: right after the forward's (or a layer's) large GEMM the interpreter's state has left the caches,
    and set up there one after the other the second costs a fraction of the first, where it otherwise paid that
    again after the first product (~0.4 ms of a 13 ms backward at 128-row groups)."""
    checked = checked_direct_cpu_call(op_name, *args, **kwargs)
    if checked is None:
        return functools.partial(call_op, op_name, *args, **kwargs)
    decl, a, target = checked
    # the declaration's shortcut (gmm_compiled), made ready; none declared (a test's switch): the simulator
    run = gmm_compiled_plan(list_type, a) if decl.sim_shortcut is not None else None
    if run is not None:
        return run
    return functools.partial(run_sim, decl, a, target)


def _make_gmm_backward(op_name: str, list_type: int):
    @_quiet_doc_warnings
    def backward(ctx, grad):
        x, weight, group_list = ctx.saved_tensors
        ints = ctx.group_list_ints
        grad = grad.contiguous()
        dx = dw = None
        grad_x = grad_wt = grad_w = None  # the products, set up before any runs
        if ctx.needs_input_grad[0]:
            grad_x = _ready_product(op_name, list_type, grad, weight.transpose(-1, -2), group_list=group_list,
                                    group_list_ints=ints, group_type=0)
        if ctx.gemm_fusion:
            ow = ctx.original_weight
            if ow is None or not hasattr(ow, "main_grad"):
                raise ValueError(f"{op_name}(gemm_fusion=True) needs original_weight with a main_grad attribute")
            dx = grad_x() if grad_x is not None else None
            if ints is not None:
                cumsum = list(np.cumsum(ints)) if list_type == 1 else ints
            else:
                cumsum = torch.cumsum(group_list, dim=0) if list_type == 1 else group_list
            _grouped_matmul_add_(x, grad, cumsum, ow.main_grad)
            if hasattr(ow, "grad_added_to_main_grad"):
                if getattr(ctx.weight_obj, "zero_out_wgrad", False):
                    dw = torch.zeros(weight.shape, dtype=x.dtype, device=x.device)
                else:
                    dw = _undefined_like(weight.shape, x.dtype, x.device)
                ow.grad_added_to_main_grad = True
            return _mirror(ctx.needs_input_grad, dx, dw)
        if ctx.needs_input_grad[1]:
            if group_list is not None and _is_transposed(weight):
                # MindSpeed Tensor path: grad^T (K split over M) against x, then transposed back.
                grad_wt = _ready_product(op_name, list_type, grad.t(), x, group_list=group_list, group_type=2)
            else:
                grad_w = _ready_product(op_name, list_type, x.t(), grad, group_list=group_list,
                                        group_list_ints=ints, group_type=2)
        if grad_x is not None:
            dx = grad_x()
        if grad_wt is not None:
            dw = grad_wt().transpose(-1, -2)
        elif grad_w is not None:
            dw = grad_w()  # [E, K, N]; a reshape only for another weight shape (~0.1 ms with cold caches)
            if dw.shape != weight.shape:
                dw = dw.reshape(weight.shape)
        return _mirror(ctx.needs_input_grad, dx, dw)
    return backward


def _gm_setup(ctx, inputs, output):
    kw = dict(zip(_torch_names("npu_grouped_matmul"), inputs))
    xs, ws = kw["x"], kw["weight"]
    x_needs = any(t.requires_grad for t in xs)
    w_needs = any(t.requires_grad for t in ws)
    bias = kw.get("bias")
    for b in bias or []:
        if b.requires_grad:
            raise ValueError(_ERR_BIAS)
    gl = _public_group_list(kw.get("group_list"), kw.get("group_list_ints"))
    gt = _sim.resolve_group_type(kw.get("group_type"), gl)
    _check_grad_request(x_needs, w_needs, None, gt)
    if (x_needs or w_needs) and not (len(xs) == 1 and len(ws) == 1 and ws[0].dim() == 3 and gl is not None
                                     and kw.get("split_item") in (2, 3)):
        raise ValueError("npu_grouped_matmul: gradients are implemented for the MindSpeed form only: one x [M, K], "
                         "one weight [E, K, N], a group_list and split_item 2 or 3 (group_type 0); got "
                         f"len(x)={len(xs)}, len(weight)={len(ws)}, weight rank {ws[0].dim()}, "
                         f"group_list={'None' if gl is None else 'given'}, split_item={kw.get('split_item')}")
    ctx.save_for_backward(xs[0], ws[0], kw.get("group_list"))
    ctx.group_list_ints = kw.get("group_list_ints")
    ctx.group_list_type = kw.get("group_list_type") or 0


@_quiet_doc_warnings
def _gm_backward(ctx, grads):
    x, weight, group_list = ctx.saved_tensors
    ints = ctx.group_list_ints
    grad = grads[0].contiguous()
    op = torch.ops.ascend_moe.npu_grouped_matmul
    common = dict(group_list=group_list, group_list_ints=ints, split_item=3, group_list_type=ctx.group_list_type)
    dx = op([grad], [weight.transpose(-1, -2)], group_type=0, **common)[0] if any(ctx.needs_input_grad[0]) else None
    dw = None
    if any(ctx.needs_input_grad[1]):
        if group_list is not None and _is_transposed(weight):
            dw = op([grad.t()], [x], group_type=2, **common)[0].transpose(-1, -2)
        else:
            dw = op([x.t()], [grad], group_type=2, **common)[0].reshape(weight.shape)
    return _mirror(ctx.needs_input_grad, [dx], [dw])


def gmm_forward(op: str, group_list_type: int, a: Dict[str, Any]) -> Tensor:
    """npu_gmm / npu_gmm_v2 on the simulator (``a``: bound arguments, arrays as NumPy).  The output is a
    torch tensor the simulator writes in place, from :mod:`ascend_moe.kernels.output_pool`: the weight gradient
    (K split) is GB-sized, and fresh pages of that size cost more than its product (NumPy's huge-page allocations
    cost less on average but their first-touch time varied 20-fold)."""
    (shape, dtype), = gmm_shape(a)
    y = output_pool.empty(shape, torch_dtype(dtype))
    _sim._gmm_forward(a["x"], a["weight"], a["bias"], a["group_list"], a["group_type"], group_list_type, None,
                      out=to_numpy(y), copy_cast=_fast_copy_cast)
    return y


def _runs_of(values: List[int], group_list_type: int, reach: int) -> Optional[Tuple[List[Tuple[int, int, int]],
                                                                                      List[int], int]]:
    """(the non-empty groups as (group, start, end), the empty groups, the total) of a group list's values, as
    :func:`ascend_moe.sim.gmm.group_bounds` bounds them; None where a group would end before it starts (a
    negative count, a decreasing cumsum) or the total passes ``reach``.  Plain Python on a few ints: right after
    a large GEMM has left the caches, NumPy's calls on small arrays cost tens of microseconds each."""
    runs: List[Tuple[int, int, int]] = []
    empty: List[int] = []
    start = 0
    for group, value in enumerate(values):
        end = start + value if group_list_type == 1 else value
        if end < start:
            return None
        if end > start:
            runs.append((group, start, end))
        else:
            empty.append(group)
        start = end
    return (runs, empty, start) if start <= reach else None


def gmm_compiled_plan(group_list_type: int, a: Dict[str, Any]) -> Optional[Callable[[], Tensor]]:
    """npu_gmm / npu_gmm_v2 of CPU tensors (``a``: the bound call) by one call of the machine's compiled grouped
    GEMM, where :func:`gmm_forward` would end in that same call (the simulator's M / K split runs on the
    kernels of :func:`ascend_moe.kernels.for_call`): the same bits without the simulator's plumbing.  Only the
    plain form: no bias, a Tensor group list of int64 whose groups lie in order within the rows, an M split's
    weight not shared by its experts (a stride-0 expert dimension, whose groups the simulator merges into one
    run).  Returns the call set up (its output taken, its kernel chosen) as a function that runs it and returns
    the output; None for anything else: the general path."""
    x, w, gl, gt = a["x"], a["weight"], a["group_list"], a["group_type"]
    if (a["bias"] is not None or gt not in (0, 2) or type(gl) is not Tensor or gl.dtype != torch.int64
            or gl.dim() != 1 or gl.numel() == 0 or x.dim() != 2 or w.dim() != (3 if gt == 0 else 2)
            or (gt == 0 and w.stride(0) == 0)):
        return None
    found = _runs_of(gl.tolist(), group_list_type, x.shape[0] if gt == 0 else x.shape[1])  # the rows split
    if found is None:
        return None
    runs, empty, total = found
    shape = (x.shape[0], w.shape[-1]) if gt == 0 else (gl.shape[0], x.shape[0], w.shape[-1])
    y = output_pool.empty(shape, x.dtype)
    out = to_numpy(y)
    kernel = machine_kernels.compiled_grouped_gemm_plan(out, to_numpy(x), to_numpy(w), runs, gt == 2)
    if kernel is None:
        return None

    def run() -> Tensor:
        kernel()
        if gt == 0:  # rows past the group list's total are undefined (gmm_m_split)
            if total < x.shape[0]:
                fill_undefined(out, slice(total, None))
        else:  # an empty group's output is zero (gmm_k_split)
            for group in empty:
                out[group] = 0
        return y
    return run


def gmm_compiled(group_list_type: int, a: Dict[str, Any]) -> Optional[Tensor]:
    """:func:`gmm_compiled_plan`, run at once (the ops' ``sim_shortcut``); None: the general path."""
    run = gmm_compiled_plan(group_list_type, a)
    return None if run is None else run()


def grouped_matmul_forward(a: Dict[str, Any]) -> List[Tensor]:
    """npu_grouped_matmul on the simulator.  from_numpy shares memory with the simulator's fresh arrays;
    per-group views of one K-split result are cloned so that no two outputs alias each other."""
    ys = _sim.grouped_matmul_compute(
        a["x"], a["weight"], a["bias"], a["group_list"], a["split_item"],
        _sim.resolve_group_type(a["group_type"], a["group_list"]), a["group_list_type"], None)
    outs = [from_numpy(y) for y in ys]
    if len(outs) > 1 and any(y.base is not None for y in ys):
        outs = [o.clone() for o in outs]
    return outs


gmm_setup = _gmm_setup
gmm_backward = {"npu_gmm": _make_gmm_backward("npu_gmm", 0), "npu_gmm_v2": _make_gmm_backward("npu_gmm_v2", 1)}
grouped_matmul_setup = _gm_setup
grouped_matmul_backward = _gm_backward
