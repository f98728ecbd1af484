"""Grouped matmul with the spellings users write: MindSpeed ``npu_gmm`` / ``npu_gmm_v2`` and torch_npu
``npu_grouped_matmul`` (non-quantised).  Numerics and the faithfulness contract:
:mod:`ascend_moe.sim.gmm`; rules: :mod:`ascend_moe.rules.gmm`.

Registered once each as ``torch.ops.ascend_moe.npu_gmm`` / ``npu_gmm_v2`` / ``npu_grouped_matmul``.

group_list schema (one path): torch custom ops cannot take ``Union[List[int], Tensor]``, so every op
has two optional schema arguments, ``group_list: Tensor?`` (the Tensor path: aclnn V3/V4/V5, values
never validated on the device) and ``group_list_ints: int[]?`` (the int-array path: MindSpeed
``npu_gmm`` with ``List[int]`` -> aclnnGroupedMatmulV2, torch_npu ``npu_grouped_matmul.List`` -> V1,
values checked by the host).  The public functions take ``group_list`` as either and route it to
exactly one of the two; the kernels rebuild the public argument dict (``group_list`` = the list or
the tensor) for the checker, the simulator and ``aclnn.call``.  The two paths differ in the rule
for the group-list total (see :mod:`ascend_moe.rules.gmm`): List ``==`` rows, Tensor ``<=`` rows
with the rows past the total undefined.

Autograd (spec 1.7/1.8, MindSpeed ``GMMFunction``), registered with ``register_autograd``:

* only group_type 0; a call with x or weight requiring grad and group_type != 0 raises MindSpeed's
  ``ValueError("group_type must be zero to compute gradients of x and weight!")``; a bias that
  requires grad raises ``ValueError("Bias is not supported to compute gradient!")`` (both at forward
  time, as MindSpeed does);
* ``grad_x = gmm(grad_y, weight^T, group_type=0)`` (same group list and list type);
* ``grad_w = gmm(x^T, grad_y, group_type=2)`` -> [E, K, N] (empty groups zero); with a transposed
  weight view and a Tensor group list: ``gmm(grad_y^T, x, group_type=2)`` -> [E, N, K] transposed
  back (MindSpeed's Tensor-path backward), so grad_w has the weight's transposed layout;
* ``gemm_fusion=True``: grad_x as above; the weight gradient is added in fp32 into
  ``original_weight.main_grad.view(E, K, N)`` (GroupedMatmulInplaceAdd, counts converted with a
  cumsum for v2); the returned weight gradient is a dummy of weight's shape (zeros if
  ``weight.zero_out_wgrad``, else undefined = filled by the undefined-region policy) when
  ``original_weight`` has ``grad_added_to_main_grad`` (which is then set True), else None.
  With a transposed weight view MindSpeed still views main_grad as [E, K, N]; so do we [C: code].

The backward calls the registered ops themselves, so it runs on whichever backend the forward used.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import kernels as machine_kernels
from ..backends import use_backend
from ..rules import ConstraintWarning
from ..sim import gmm as _sim
from ..sim import kernels as sim_kernels
from ..sim.numerics import get_undefined_policy
from ._common import SHAPE_RULES, check_only, checked_backend, from_numpy, shape_rule, to_numpy

__all__ = ["npu_gmm", "npu_gmm_v2", "npu_grouped_matmul"]

Tensor = torch.Tensor
GroupListArg = Union[None, Sequence[int], Tensor]

_OUTPUT_DTYPE_CODES = {torch.float16: 5, torch.bfloat16: 15, torch.float32: 6, torch.int32: 3}
_ERR_GROUP_TYPE = "group_type must be zero to compute gradients of x and weight!"
_ERR_BIAS = "Bias is not supported to compute gradient!"


def _split_group_list(group_list: GroupListArg, op: str) -> Tuple[Optional[Tensor], Optional[List[int]]]:
    """Route a public group_list to the schema's (Tensor, int[]) pair."""
    if group_list is None:
        return None, None
    if isinstance(group_list, Tensor):
        return group_list, None
    if isinstance(group_list, (list, tuple)) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                     for i in group_list):
        return None, [int(i) for i in group_list]
    raise TypeError(f"{op}: group_list must be a List[int], a torch.Tensor or None, got {type(group_list).__name__}")


def _public_group_list(group_list: Optional[Tensor], group_list_ints: Optional[List[int]]):
    return list(group_list_ints) if group_list_ints is not None else group_list


def _np_group_list(gl):
    if gl is None or isinstance(gl, list):
        return gl
    return to_numpy(gl)


def _np_list(ts):
    return None if ts is None else [to_numpy(t) for t in ts]


def _tensors_of(args: Dict[str, Any]) -> List[Any]:
    out: List[Any] = []
    for v in args.values():
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(t for t in v if isinstance(t, Tensor))
    return out


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


# ============================================================================================
# npu_gmm / npu_gmm_v2 (MindSpeed)
# ============================================================================================


def _gmm_args(x, weight, bias, group_list, group_list_ints, group_type, gemm_fusion, original_weight):
    return dict(x=x, weight=weight, bias=bias, group_list=_public_group_list(group_list, group_list_ints),
                group_type=group_type, gemm_fusion=gemm_fusion, original_weight=original_weight)


def _gmm_shape(args: Dict[str, Any]):
    x, w, gl = args["x"], args["weight"], args["group_list"]
    if args["group_type"] == 2:
        e = len(gl) if isinstance(gl, list) else gl.shape[0]
        return [((e, x.shape[0], w.shape[-1]), x.dtype)]
    return [((x.shape[0], w.shape[-1]), x.dtype)]


shape_rule("npu_gmm")(_gmm_shape)
shape_rule("npu_gmm_v2")(_gmm_shape)


def _gmm_kernel(op: str, group_list_type: int, x, weight, bias, group_list, group_list_ints, group_type,
                gemm_fusion, original_weight) -> Tensor:
    args = _gmm_args(x, weight, bias, group_list, group_list_ints, group_type, gemm_fusion, original_weight)
    be = checked_backend(op, args, [t for t in (x, weight, bias, group_list) if t is not None])
    if be == "aclnn":
        from ..backends import aclnn
        return aclnn.call(op, args)
    # The output is a fresh torch.empty the simulator writes in place: the weight gradient (K split)
    # is GB-sized, and first-touch cost of torch's ordinary pages is steady where NumPy's huge-page
    # allocations are not (see _sim._output).
    (shape, dtype), = SHAPE_RULES[op](args)
    y = torch.empty(shape, dtype=dtype)
    # this machine's fastest faithful GEMMs; the weight's widened copy is kept while it is unchanged
    # (not in the K split, whose "weight" is the backward's grad_y)
    with sim_kernels.use(machine_kernels.for_call(weight if group_type != 2 else None)):
        _sim._gmm_forward(to_numpy(x), to_numpy(weight), to_numpy(bias), _np_group_list(args["group_list"]),
                          group_type, group_list_type, None, out=to_numpy(y))
    return y


@torch.library.custom_op("ascend_moe::npu_gmm", mutates_args=())
def _npu_gmm_op(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, group_list: Optional[Tensor] = None,
                group_list_ints: Optional[List[int]] = None, group_type: int = 0, gemm_fusion: bool = False,
                original_weight: Optional[Tensor] = None) -> Tensor:
    return _gmm_kernel("npu_gmm", 0, x, weight, bias, group_list, group_list_ints, group_type, gemm_fusion,
                       original_weight)


@torch.library.custom_op("ascend_moe::npu_gmm_v2", mutates_args=())
def _npu_gmm_v2_op(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   group_list: Optional[Tensor] = None, group_list_ints: Optional[List[int]] = None,
                   group_type: int = 0, gemm_fusion: bool = False,
                   original_weight: Optional[Tensor] = None) -> Tensor:
    return _gmm_kernel("npu_gmm_v2", 1, x, weight, bias, group_list, group_list_ints, group_type, gemm_fusion,
                       original_weight)


def _gmm_fake(op):
    def fake(x, weight, bias=None, group_list=None, group_list_ints=None, group_type=0, gemm_fusion=False,
             original_weight=None):
        args = _gmm_args(x, weight, bias, group_list, group_list_ints, group_type, gemm_fusion, original_weight)
        check_only(op, args)
        (shape, dtype), = SHAPE_RULES[op](args)
        return x.new_empty(shape, dtype=dtype)
    return fake


_npu_gmm_op.register_fake(_gmm_fake("npu_gmm"))
_npu_gmm_v2_op.register_fake(_gmm_fake("npu_gmm_v2"))


def _is_transposed(w: Tensor) -> bool:
    """MindSpeed ``_is_transposed`` / host ``IsTransposeLastTwoDims``."""
    return w.dim() >= 2 and w.stride(-2) == 1 and w.stride(-1) == w.shape[-2] and w.shape[-1] > 1 and w.shape[-2] > 1


def _check_grad_request(x_needs: bool, w_needs: bool, bias: Optional[Tensor], group_type: int) -> None:
    if bias is not None and bias.requires_grad:
        raise ValueError(_ERR_BIAS)
    if (x_needs or w_needs) and group_type != 0:
        raise ValueError(_ERR_GROUP_TYPE)


_GMM_PARAMS = ("x", "weight", "bias", "group_list", "group_list_ints", "group_type", "gemm_fusion", "original_weight")


def _gmm_setup(ctx, inputs, output):
    kw = dict(zip(_GMM_PARAMS, inputs))
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
    """MindSpeed npu_groupmatmul_add_fp32 on CPU tensors (the simulator); NPU tensors are refused."""
    if any(t.device.type != "cpu" for t in (x, grad, main_grad)):
        raise NotImplementedError(
            "gemm_fusion=True with NPU tensors needs the GroupedMatmulAdd (ATB / npu_grouped_matmul_add_) path, "
            "which ascend_moe does not bind yet; use gemm_fusion=False on the NPU")
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstraintWarning)
            return fn(*args, **kwargs)
    return wrapped


def _make_gmm_backward(op_name: str, list_type: int):
    @_quiet_doc_warnings
    def backward(ctx, grad):
        x, weight, group_list = ctx.saved_tensors
        ints = ctx.group_list_ints
        op = getattr(torch.ops.ascend_moe, op_name)
        grad = grad.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = op(grad, weight.transpose(-1, -2), group_list=group_list, group_list_ints=ints, group_type=0)
        if ctx.gemm_fusion:
            ow = ctx.original_weight
            if ow is None or not hasattr(ow, "main_grad"):
                raise ValueError(f"{op_name}(gemm_fusion=True) needs original_weight with a main_grad attribute")
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
                dwt = op(grad.t(), x, group_list=group_list, group_type=2)
                dw = dwt.transpose(-1, -2)
            else:
                dw = op(x.t(), grad, group_list=group_list, group_list_ints=ints, group_type=2).reshape(weight.shape)
        return _mirror(ctx.needs_input_grad, dx, dw)
    return backward


_npu_gmm_op.register_autograd(_make_gmm_backward("npu_gmm", 0), setup_context=_gmm_setup)
_npu_gmm_v2_op.register_autograd(_make_gmm_backward("npu_gmm_v2", 1), setup_context=_gmm_setup)


def npu_gmm(x: Tensor, weight: Tensor, *, bias: Optional[Tensor] = None, group_list: GroupListArg = None,
            group_type: int = 0, gemm_fusion: bool = False, original_weight: Optional[Tensor] = None,
            backend: Optional[str] = None) -> Tensor:
    """MindSpeed ``npu_gmm``: grouped matmul with a cumsum ``group_list`` (``List[int]`` or int64
    Tensor).  group_type 0: x [M, K], weight [E, K, N] (or ``[E, N, K].transpose(-1, -2)``) ->
    [M, N]; group_type 2: x a transposed view [M, K], weight [K, N] -> [E, M, N].  Differentiable for
    group_type 0 (see the module docstring; ``gemm_fusion`` / ``original_weight`` as MindSpeed).
    ``backend``: ``"sim"``, ``"aclnn"`` or None (policy)."""
    gl, ints = _split_group_list(group_list, "npu_gmm")
    call = dict(bias=bias, group_list=gl, group_list_ints=ints, group_type=group_type, gemm_fusion=gemm_fusion,
                original_weight=original_weight)
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_gmm(x, weight, **call)


def npu_gmm_v2(x: Tensor, weight: Tensor, *, bias: Optional[Tensor] = None, group_list: Optional[Tensor] = None,
               group_type: int = 0, gemm_fusion: bool = False, original_weight: Optional[Tensor] = None,
               backend: Optional[str] = None) -> Tensor:
    """MindSpeed ``npu_gmm_v2``: as :func:`npu_gmm` with per-group counts (an int64 Tensor only; a
    list is rejected by the checker as MindSpeed rejects it)."""
    gl, ints = _split_group_list(group_list, "npu_gmm_v2")
    call = dict(bias=bias, group_list=gl, group_list_ints=ints, group_type=group_type, gemm_fusion=gemm_fusion,
                original_weight=original_weight)
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_gmm_v2(x, weight, **call)


# ============================================================================================
# npu_grouped_matmul (torch_npu)
# ============================================================================================

_GMM_KW = ("bias", "scale", "offset", "antiquant_scale", "antiquant_offset", "per_token_scale", "group_list",
           "group_list_ints", "activation_input", "activation_quant_scale", "activation_quant_offset", "split_item",
           "group_type", "group_list_type", "act_type", "tuning_config", "output_dtype", "x_dtype", "weight_dtype",
           "scale_dtype", "per_token_scale_dtype")


def _gm_args(x, weight, kw: Dict[str, Any]) -> Dict[str, Any]:
    args = dict(x=list(x), weight=list(weight))
    for k in _GMM_KW:
        if k == "group_list_ints":
            continue
        args[k] = kw.get(k)
    args["group_list"] = _public_group_list(kw.get("group_list"), kw.get("group_list_ints"))
    for k, d in (("split_item", 0), ("group_list_type", 0), ("act_type", 0)):
        if args[k] is None:
            args[k] = d
    return args


@shape_rule("npu_grouped_matmul")
def grouped_matmul_shapes(args: Dict[str, Any]):
    """[(shape, dtype), ...] of the outputs (op-plugin kernel / meta rules, spec 1.5 and 4.3).

    split_item 0/1 with a single x and a group list gives one output per group whose row counts are
    the group-list values (read on the host, as op-plugin does; SymInts under fake tensors)."""
    xs, ws, gl = args["x"], args["weight"], args["group_list"]
    gt = _sim.resolve_group_type(args["group_type"], gl)
    split = args["split_item"]
    dtype = xs[0].dtype
    single_w3 = len(ws) == 1 and ws[0].dim() == 3

    def n_of(i):
        return ws[0].shape[-1] if (single_w3 or len(ws) == 1) else ws[i].shape[-1]

    if gt == 2:
        e = len(gl) if isinstance(gl, list) else gl.shape[0]
        if split in (2, 3):
            return [((e, xs[0].shape[0], ws[0].shape[-1]), dtype)]
        return [((xs[0].shape[0], ws[0].shape[-1]), dtype) for _ in range(e)]
    if gt == 0 and len(xs) == 1 and gl is not None:
        if split in (2, 3):
            return [((xs[0].shape[0], n_of(0)), dtype)]
        e = len(gl) if isinstance(gl, list) else gl.shape[0]
        sizes = _group_sizes(gl, args["group_list_type"], e)
        return [((sizes[i], n_of(i)), dtype) for i in range(e)]
    outs = [((*xi.shape[:-1], n_of(i)), dtype) for i, xi in enumerate(xs)]
    if split in (2, 3):
        rows = 0
        for xi in xs:
            r = 1
            for s in xi.shape[:-1]:
                r = r * s
            rows = rows + r
        return [((rows, n_of(0)), dtype)]
    return outs


# torch_npu's schema (op_plugin_functions.yaml) with ``int[]? group_list_ints`` after the Tensor
# group_list; written out because infer_schema cannot express ``Tensor[]?``.  Tensors cannot be
# keyword-only in a custom op, so the schema has no ``*`` (the public function keeps torch_npu's
# keyword-only spelling).
_GM_SCHEMA = (
    "(Tensor[] x, Tensor[] weight, Tensor[]? bias=None, Tensor[]? scale=None, Tensor[]? offset=None, "
    "Tensor[]? antiquant_scale=None, Tensor[]? antiquant_offset=None, Tensor[]? per_token_scale=None, "
    "Tensor? group_list=None, int[]? group_list_ints=None, Tensor[]? activation_input=None, "
    "Tensor[]? activation_quant_scale=None, Tensor[]? activation_quant_offset=None, int? split_item=0, "
    "int? group_type=None, int? group_list_type=0, int? act_type=0, int[]? tuning_config=None, "
    "int? output_dtype=None, int? x_dtype=None, int? weight_dtype=None, int? scale_dtype=None, "
    "int? per_token_scale_dtype=None) -> Tensor[]")


@torch.library.custom_op("ascend_moe::npu_grouped_matmul", mutates_args=(), schema=_GM_SCHEMA)
def _npu_grouped_matmul_op(
        x, weight, bias=None, scale=None, offset=None, antiquant_scale=None, antiquant_offset=None,
        per_token_scale=None, group_list=None, group_list_ints=None, activation_input=None,
        activation_quant_scale=None, activation_quant_offset=None, split_item=0, group_type=None,
        group_list_type=0, act_type=0, tuning_config=None, output_dtype=None, x_dtype=None, weight_dtype=None,
        scale_dtype=None, per_token_scale_dtype=None):
    kw = dict(locals())
    args = _gm_args(x, weight, kw)
    be = checked_backend("npu_grouped_matmul", args, _tensors_of(args))
    if be == "aclnn":
        from ..backends import aclnn
        return aclnn.call("npu_grouped_matmul", args)
    k_split = _sim.resolve_group_type(args["group_type"], args["group_list"]) == 2
    with sim_kernels.use(machine_kernels.for_call(*([] if k_split else args["weight"]))):
        ys = _sim.grouped_matmul_compute(
            _np_list(args["x"]), _np_list(args["weight"]), _np_list(args["bias"]), _np_group_list(args["group_list"]),
            args["split_item"], _sim.resolve_group_type(args["group_type"], args["group_list"]),
            args["group_list_type"], None)
    # from_numpy shares memory with the simulator's fresh arrays; per-group views of one K-split
    # result are cloned so that no two outputs alias each other.
    outs = [from_numpy(y) for y in ys]
    if len(outs) > 1 and any(y.base is not None for y in ys):
        outs = [o.clone() for o in outs]
    return outs


@_npu_grouped_matmul_op.register_fake
def _(x, weight, bias=None, scale=None, offset=None, antiquant_scale=None, antiquant_offset=None,
      per_token_scale=None, group_list=None, group_list_ints=None, activation_input=None, activation_quant_scale=None,
      activation_quant_offset=None, split_item=0, group_type=None, group_list_type=0, act_type=0, tuning_config=None,
      output_dtype=None, x_dtype=None, weight_dtype=None, scale_dtype=None, per_token_scale_dtype=None):
    kw = dict(locals())
    args = _gm_args(x, weight, kw)
    check_only("npu_grouped_matmul", args)
    return [x[0].new_empty(shape, dtype=dtype) for shape, dtype in SHAPE_RULES["npu_grouped_matmul"](args)]


def _gm_setup(ctx, inputs, output):
    kw = dict(zip(("x", "weight") + _GMM_KW, inputs))
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


_npu_grouped_matmul_op.register_autograd(_gm_backward, setup_context=_gm_setup)


def npu_grouped_matmul(x: Sequence[Tensor], weight: Sequence[Tensor], *, bias: Optional[Sequence[Tensor]] = None,
                       scale: Optional[Sequence[Tensor]] = None, offset: Optional[Sequence[Tensor]] = None,
                       antiquant_scale: Optional[Sequence[Tensor]] = None,
                       antiquant_offset: Optional[Sequence[Tensor]] = None,
                       per_token_scale: Optional[Sequence[Tensor]] = None, group_list: GroupListArg = None,
                       activation_input: Optional[Sequence[Tensor]] = None,
                       activation_quant_scale: Optional[Sequence[Tensor]] = None,
                       activation_quant_offset: Optional[Sequence[Tensor]] = None, split_item: Optional[int] = 0,
                       group_type: Optional[int] = None, group_list_type: Optional[int] = 0,
                       act_type: Optional[int] = 0, tuning_config: Optional[Sequence[int]] = None,
                       output_dtype: Union[None, int, torch.dtype] = None, x_dtype: Optional[int] = None,
                       weight_dtype: Optional[int] = None, scale_dtype: Optional[int] = None,
                       per_token_scale_dtype: Optional[int] = None, backend: Optional[str] = None) -> List[Tensor]:
    """``torch_npu.npu_grouped_matmul`` (non-quantised): lists of x / weight (/ bias), split_item 0-3,
    group_type -1/0/2, group_list_type 0/1, ``group_list`` as a Tensor (Tensor overload) or a
    ``List[int]`` (the ``.List`` overload).  ``output_dtype`` may be torch's int code or a torch dtype.
    Quantised arguments are rejected by the checker, naming the ops that model them.  Returns a list
    of tensors.  Differentiable (group_type 0) in the single-x / 3-D-weight / split_item 2-3 form."""
    gl, ints = _split_group_list(group_list, "npu_grouped_matmul")
    if isinstance(output_dtype, torch.dtype):
        if output_dtype not in _OUTPUT_DTYPE_CODES:
            raise TypeError(f"npu_grouped_matmul: output_dtype {output_dtype} has no torch_npu code; "
                            f"use one of {list(_OUTPUT_DTYPE_CODES)}")
        output_dtype = _OUTPUT_DTYPE_CODES[output_dtype]

    def lst(v):
        return None if v is None else list(v)

    call = dict(bias=lst(bias), scale=lst(scale), offset=lst(offset), antiquant_scale=lst(antiquant_scale),
                antiquant_offset=lst(antiquant_offset), per_token_scale=lst(per_token_scale), group_list=gl,
                group_list_ints=ints, activation_input=lst(activation_input),
                activation_quant_scale=lst(activation_quant_scale),
                activation_quant_offset=lst(activation_quant_offset), split_item=split_item, group_type=group_type,
                group_list_type=group_list_type, act_type=act_type, tuning_config=lst(tuning_config),
                output_dtype=output_dtype, x_dtype=x_dtype, weight_dtype=weight_dtype, scale_dtype=scale_dtype,
                per_token_scale_dtype=per_token_scale_dtype)
    with use_backend(backend):
        return torch.ops.ascend_moe.npu_grouped_matmul(list(x), list(weight), **call)
