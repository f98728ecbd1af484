"""Declarations of the MoE routing and combine ops (torch_npu; rules :mod:`ascend_moe.rules.routing`,
numerics and the faithfulness contract :mod:`ascend_moe.sim.routing`, spec moe-routing-and-ep.md).

* ``npu_moe_init_routing_v2`` -> aclnnMoeInitRoutingV3, or V2 where op-plugin sends it (the Atlas
  inference series, and the "V2 case" before CANN 8.5.0alpha003: :func:`init_routing_entry`).
* ``npu_moe_token_permute`` / ``npu_moe_token_unpermute`` (+ their ``_grad`` ops, the autograd backward).
* ``npu_moe_finalize_routing`` -> V4 > V2 > V1 by availability; ``k != 1`` needs V4.
* ``npu_moe_gating_top_k_softmax`` (``_v2``), ``npu_moe_compute_expert_tokens``, ``npu_moe_re_routing``,
  ``npu_moe_gating_top_k_backward``.

Target-dependent choices are made here (the product and CANN release of the call), never in the simulator.
Divergence from the op-plugin wrapper of ``npu_moe_init_routing_v2`` (spec 9.2): an empty
``active_expert_range`` defaults to ``[0, expert_num]`` on every call, as the kernel does with the arguments
the caller passed (the wrapper's function-local ``static`` keeps the first call's ``expert_num`` for the size
of output 3; its V2-case test reads the empty list out of bounds).  This module does not import torch at
module level.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..opdecl import AclnnEntry, ErrorInput, OpDecl, Out, SampleInput, declare

__all__ = ["init_routing_entry_for"]


def _dt(t: Any) -> str:
    from ..sim.numerics import dtype_name
    return dtype_name(t.dtype)


def _target():
    from ..products import resolve_target
    return resolve_target()


def _range(a: Dict[str, Any]) -> List[int]:
    r = a.get("active_expert_range") or []
    return [int(v) for v in r]


def init_routing_entry_for(a: Dict[str, Any], target: Any) -> str:
    """``"V3"`` or ``"V2"`` for the bound call on ``target`` (:func:`ascend_moe.rules.routing.init_routing_entry`)."""
    from ..rules.routing import init_routing_entry
    return init_routing_entry(target.product, target.cann, expert_num=a["expert_num"],
                              active_expert_range=_range(a), hidden=int(a["x"].shape[1]),
                              quant_mode=a["quant_mode"], expert_tokens_num_type=a["expert_tokens_num_type"])


def _v2_tokens_mode(target: Any) -> str:
    # op-plugin's V2 path: expertTokensCountOrCumsumFlag 1 (cumsum) on the inference series, 2 (count) else
    return "cumsum" if target.product == "atlas-inference" else "count"


# ================================================================================== init_routing_v2

def _init_shape(a: Dict[str, Any]) -> List[Any]:
    from ..sim.routing import init_routing_v2_output_specs
    target = _target()
    x, ids = a["x"], a["expert_idx"]
    return list(init_routing_v2_output_specs(
        int(x.shape[0]), int(ids.shape[1]), int(x.shape[1]), _dt(x), active_num=a["active_num"],
        expert_capacity=a["expert_capacity"], expert_num=a["expert_num"], drop_pad_mode=a["drop_pad_mode"],
        expert_tokens_num_type=a["expert_tokens_num_type"], quant_mode=a["quant_mode"],
        active_expert_range=_range(a), entry=init_routing_entry_for(a, target),
        v2_tokens_mode=_v2_tokens_mode(target)))


def _init_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_init_routing_v2
    return moe_init_routing_v2(
        a["x"], a["expert_idx"], scale=a["scale"], offset=a["offset"], active_num=a["active_num"],
        expert_capacity=a["expert_capacity"], expert_num=a["expert_num"], drop_pad_mode=a["drop_pad_mode"],
        expert_tokens_num_type=a["expert_tokens_num_type"], expert_tokens_num_flag=a["expert_tokens_num_flag"],
        quant_mode=a["quant_mode"], active_expert_range=_range(a), row_idx_type=a["row_idx_type"],
        entry=init_routing_entry_for(a, target), v2_tokens_mode=_v2_tokens_mode(target))


def _init_family(a: Dict[str, Any]) -> str:
    return "init_routing_v2" if init_routing_entry_for(a, _target()) == "V2" else "init_routing_v3"


def _v2_count_flag(a: Dict[str, Any], outs: Any) -> int:
    return 1 if _target().product == "atlas-inference" else 2


def _init_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 8, generator=g).to(torch.bfloat16)
    ids = torch.randint(0, 4, (6, 2), generator=g, dtype=torch.int32)
    ids[0] = torch.tensor([1, 1], dtype=torch.int32)     # a duplicate (tie)
    base = dict(expert_num=4, expert_tokens_num_type=1, expert_tokens_num_flag=True)
    smooth = torch.rand(2, 8, generator=g) + 0.5
    return [
        SampleInput((x, ids), dict(base, active_num=12), [((12, 8), "bfloat16"), ((12,), "int32"), ((4,), "int64"),
                                                          ((12,), "float32")], name="dropless_count",
                    undefined="zero"),
        SampleInput((x, ids), dict(base, expert_tokens_num_type=0, active_num=5, row_idx_type=1),
                    [((5, 8), "bfloat16"), ((12,), "int32"), ((4,), "int64"), ((5,), "float32")],
                    name="cumsum_scatter_active_num", undefined="zero"),
        SampleInput((x, ids), dict(base, expert_tokens_num_type=2, active_expert_range=[1, 3], quant_mode=1,
                                   scale=smooth),
                    [((12, 8), "int8"), ((12,), "int32"), ((4, 2), "int64"), ((12,), "float32")],
                    name="key_value_range_dynamic_quant", undefined="zero"),
    ]


def _init_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    x = torch.randn(4, 8)
    ids = torch.zeros(4, 2, dtype=torch.int32)
    return [
        ErrorInput(SampleInput((x, ids), dict(expert_num=4, quant_mode=2)), ConstraintError, r"quant_mode"),
        ErrorInput(SampleInput((x, ids.long()), dict(expert_num=4)), ConstraintError, r"expert_idx dtype"),
        ErrorInput(SampleInput((x, ids), dict(expert_num=4, active_expert_range=[3, 1])), ConstraintError,
                   r"active_expert_range"),
        ErrorInput(SampleInput((x, ids), dict(expert_num="4")), TypeError, r"argument 'expert_num' must be an int"),
        ErrorInput(SampleInput((x, ids, None)), TypeError, r"positional argument"),
    ]


_INIT_OUTS = {"expandedXOut": Out(0), "expandedRowIdxOut": Out(1), "expertTokensCountOrCumsumOut": Out(2),
              "expandedScaleOut": Out(3)}

INIT_ROUTING_V2 = declare(OpDecl(
    schema="npu_moe_init_routing_v2(Tensor x, Tensor expert_idx, *, Tensor? scale=None, Tensor? offset=None, "
           "int active_num=-1, int expert_capacity=-1, int expert_num=-1, int drop_pad_mode=0, "
           "int expert_tokens_num_type=0, bool expert_tokens_num_flag=False, int quant_mode=-1, "
           "int[2] active_expert_range=[], int row_idx_type=0, int? x_dtype=None) -> (Tensor, Tensor, Tensor, Tensor)",
    rules="routing",
    shape=_init_shape,
    sim=_init_sim,
    aclnn=(
        AclnnEntry("aclnnMoeInitRoutingV3", family="init_routing_v3", requires=("x", "expert_idx"),
                   params="const aclTensor *x, const aclTensor *expertIdx, const aclTensor *scaleOptional, "
                          "const aclTensor *offsetOptional, int64_t activeNum, int64_t expertCapacity, "
                          "int64_t expertNum, int64_t dropPadMode, int64_t expertTokensNumType, "
                          "bool expertTokensNumFlag, int64_t quantMode, const aclIntArray *activeExpertRangeOptional, "
                          "int64_t rowIdxType, const aclTensor *expandedXOut, const aclTensor *expandedRowIdxOut, "
                          "const aclTensor *expertTokensCountOrCumsumOut, const aclTensor *expandedScaleOut",
                   bind=dict(_INIT_OUTS, scaleOptional="scale", offsetOptional="offset",
                             activeExpertRangeOptional=lambda a, o: _range(a))),
        AclnnEntry("aclnnMoeInitRoutingV2", family="init_routing_v2", requires=("x", "expert_idx"),
                   params="const aclTensor *x, const aclTensor *expertIdx, int64_t activeNumOptional, "
                          "int64_t expertCapacityOptional, int64_t expertNumOptional, int64_t dropPadModeOptional, "
                          "int64_t expertTokensCountOrCumsumFlagOptional, bool expertTokensBeforeCapacityFlagOptional, "
                          "const aclTensor *expandedXOut, const aclTensor *expandedRowIdxOut, "
                          "const aclTensor *expertTokensCountOrCumsumOutOptional, "
                          "const aclTensor *expertTokensBeforeCapacityOutOptional",
                   bind={"activeNumOptional": "active_num", "expertCapacityOptional": 0,
                         "expertNumOptional": "expert_num", "dropPadModeOptional": 0,
                         "expertTokensCountOrCumsumFlagOptional": _v2_count_flag,
                         "expertTokensBeforeCapacityFlagOptional": False, "expandedXOut": Out(0),
                         "expandedRowIdxOut": Out(1), "expertTokensCountOrCumsumOutOptional": Out(2),
                         "expertTokensBeforeCapacityOutOptional": Out(3)}),
    ),
    choose_entry=_init_family,
    doc="""torch_npu.npu_moe_init_routing_v2: ``(expanded_x, expanded_row_idx int32 [N*k],
expert_tokens_count_or_cumsum int64, expanded_scale float32)``.  Sorts the ``N*k`` (token, slot) pairs by
expert id (ties by slot), gathers (and optionally int8-quantises) the token rows, and counts tokens per
expert.  Dropless (``drop_pad_mode=0``): ``expanded_x [R, H]`` with ``R = N*k`` or ``min(active_num, N*k)``;
drop/pad (``1``): ``[expert_num, expert_capacity, H]``, extra tokens dropped (row index -1), empty slots
zero.  ``row_idx_type`` 0 (gather: destination row of each slot, -1 outside ``active_expert_range``) or 1
(scatter: source slot of each row).  Unwritten regions follow the undefined-region policy.  The int8
dynamic-quant rounding of the two device kernels is switchable (``ascend_moe.sim.routing.dynamic_quant_path``).
An empty ``active_expert_range`` means ``[0, expert_num]`` on every call (the op-plugin wrapper keeps the first
call's value; this divergence is deliberate).  Formula: :mod:`ascend_moe.sim.routing`.""",
    samples=_init_samples,
    error_inputs=_init_errors,
))


# ================================================================================== token permute / unpermute

def _permute_shape(a: Dict[str, Any]) -> List[Any]:
    from ..sim.routing import token_permute_output_specs
    t = a["tokens"]
    return list(token_permute_output_specs(tuple(t.shape), _dt(t), tuple(a["indices"].shape), a["num_out_tokens"]))


def _permute_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_token_permute
    return moe_token_permute(a["tokens"], a["indices"], a["num_out_tokens"], a["padded_mode"])


def _num_out(a: Dict[str, Any], outs: Any) -> int:
    from ..sim.routing import permute_out_rows
    idx = a["indices"]
    numel = 1
    for d in idx.shape:
        numel *= int(d)
    return permute_out_rows(numel, a["num_out_tokens"])


def _topk_of(indices: Any) -> int:
    return int(indices.shape[1]) if indices.dim() == 2 else 1


def _permute_setup(ctx: Any, inputs: Any, output: Any) -> None:
    tokens, indices, num_out_tokens, padded_mode = inputs
    ctx.save_for_backward(tokens, indices, output[1])
    ctx.padded_mode = padded_mode


def _permute_backward(ctx: Any, grad_permuted: Any, grad_sorted: Any):
    import torch
    tokens, indices, sorted_indices = ctx.saved_tensors
    grad = torch.ops.ascend_moe.npu_moe_token_permute_grad(tokens, grad_permuted.contiguous(), indices,
                                                           sorted_indices, ctx.padded_mode)
    return grad, None, None, None


def _permute_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(5)
    t = torch.randn(5, 8, generator=g)
    idx = torch.randint(0, 3, (5, 2), generator=g, dtype=torch.int32)
    return [SampleInput((t, idx), {}, [((10, 8), "float32"), ((10,), "int32")], name="all"),
            SampleInput((t.to(torch.bfloat16), idx), dict(num_out_tokens=-3), [((7, 8), "bfloat16"), ((10,), "int32")],
                        name="drop_last_3"),
            SampleInput((t, idx[:, 0].contiguous()), dict(num_out_tokens=4), [((4, 8), "float32"), ((5,), "int32")],
                        name="one_d_indices")]


def _permute_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    t = torch.randn(4, 8)
    idx = torch.zeros(4, 2, dtype=torch.int32)
    return [ErrorInput(SampleInput((t, idx), dict(padded_mode=True)), ConstraintError, r"padded_mode"),
            ErrorInput(SampleInput((t, idx), dict(num_out_tokens=-9)), ConstraintError, r"num_out_tokens"),
            ErrorInput(SampleInput((t, idx), dict(num_out_tokens=1.5)), TypeError, r"argument 'num_out_tokens'")]


TOKEN_PERMUTE = declare(OpDecl(
    schema="npu_moe_token_permute(Tensor tokens, Tensor indices, int? num_out_tokens=None, bool padded_mode=False) "
           "-> (Tensor, Tensor)",
    rules="routing",
    shape=_permute_shape,
    sim=_permute_sim,
    aclnn=(AclnnEntry("aclnnMoeTokenPermute", family="token_permute", requires=("tokens", "indices"),
                      params="const aclTensor *tokens, const aclTensor *indices, int64_t numOutTokens, bool paddedMode, "
                             "const aclTensor *permuteTokensOut, const aclTensor *sortedIndicesOut",
                      bind={"numOutTokens": _num_out, "permuteTokensOut": Out(0), "sortedIndicesOut": Out(1)}),),
    doc="""torch_npu.npu_moe_token_permute: ``(permuted_tokens [P, H], sorted_indices int32 [N*k])``: the
(token, slot) pairs sorted by expert id (ties by slot); ``sorted_indices[slot]`` = its row, ``permuted[i]`` = the
token of the i-th sorted slot for ``i < P`` (``num_out_tokens``: None/0 all, ``n > 0`` the first n, ``n < 0``
all but the last ``|n|``).  Differentiable (npu_moe_token_permute_grad).""",
    backward=_permute_backward,
    setup_context=_permute_setup,
    samples=_permute_samples,
    error_inputs=_permute_errors,
))


def _unpermute_shape(a: Dict[str, Any]) -> List[Any]:
    from ..sim.routing import token_unpermute_output_specs
    p = a["permuted_tokens"]
    probs = a["probs"]
    return [token_unpermute_output_specs(tuple(p.shape), _dt(p), int(a["sorted_indices"].shape[0]),
                                         tuple(probs.shape) if probs is not None else None)]


def _unpermute_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_token_unpermute
    return moe_token_unpermute(a["permuted_tokens"], a["sorted_indices"], a["probs"], a["padded_mode"],
                               a["restore_shape"])


def _restore_shape(a: Dict[str, Any], outs: Any) -> List[int]:
    # op-plugin defaults restore_shape to [1] (ignored by the kernels when padded_mode is False)
    r = a.get("restore_shape")
    return [int(v) for v in r] if r else [1]


def _unpermute_setup(ctx: Any, inputs: Any, output: Any) -> None:
    permuted, sorted_indices, probs, padded_mode, restore_shape = inputs
    ctx.save_for_backward(permuted, sorted_indices, probs)
    ctx.has_probs = probs is not None
    ctx.padded_mode, ctx.restore_shape = padded_mode, restore_shape


def _unpermute_backward(ctx: Any, grad_out: Any):
    import torch
    permuted, sorted_indices, probs = ctx.saved_tensors
    g_perm, g_probs = torch.ops.ascend_moe.npu_moe_token_unpermute_grad(
        permuted, grad_out.contiguous(), sorted_indices, probs if ctx.has_probs else None, ctx.padded_mode,
        ctx.restore_shape)
    return g_perm, None, (g_probs if ctx.has_probs else None), None, None


def _unpermute_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(6)
    perm = torch.randn(10, 8, generator=g)
    si = torch.randperm(10, generator=g).to(torch.int32)
    probs = torch.rand(5, 2, generator=g)
    probs[1, 0] = 0
    return [SampleInput((perm, si), dict(probs=probs), [((5, 8), "float32")], name="probs"),
            SampleInput((perm.to(torch.bfloat16), si), dict(probs=probs.to(torch.bfloat16)), [((5, 8), "bfloat16")],
                        name="probs_bf16"),
            SampleInput((perm, si), {}, [((10, 8), "float32")], name="no_probs")]


def _unpermute_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    perm = torch.randn(10, 8)
    si = torch.arange(10, dtype=torch.int32)
    return [ErrorInput(SampleInput((perm, si), dict(probs=torch.rand(4, 2))), ConstraintError, r"probs"),
            ErrorInput(SampleInput((perm, si), dict(padded_mode=True)), ConstraintError, r"padded_mode"),
            ErrorInput(SampleInput((perm, si.long())), ConstraintError, r"int64")]


TOKEN_UNPERMUTE = declare(OpDecl(
    schema="npu_moe_token_unpermute(Tensor permuted_tokens, Tensor sorted_indices, Tensor? probs=None, "
           "bool padded_mode=False, int[]? restore_shape=None) -> Tensor",
    rules="routing",
    shape=_unpermute_shape,
    sim=_unpermute_sim,
    aclnn=(AclnnEntry("aclnnMoeTokenUnpermute", family="token_unpermute", requires=("permuted_tokens", "sorted_indices"),
                      params="const aclTensor *permutedTokens, const aclTensor *sortedIndices, "
                             "const aclTensor *probsOptional, bool paddedMode, const aclIntArray *restoreShapeOptional, "
                             "aclTensor *out",
                      bind={"probsOptional": "probs", "restoreShapeOptional": _restore_shape, "out": Out(0)}),),
    doc="""torch_npu.npu_moe_token_unpermute: ``out [len(sorted_indices) // k, H]``: per token, the fp32 sum over
its k slots (in slot order) of ``permuted_tokens[sorted_indices[t*k + j]] * probs[t, j]``, rounded half-to-even
to the input dtype.  Slots with ``probs == 0`` are skipped (their rows may hold anything), rows past
``permuted_tokens.shape[0]`` contribute nothing; a ``-1`` index with a nonzero weight reads out of bounds on the
device (undefined output row).  Differentiable (npu_moe_token_unpermute_grad).""",
    backward=_unpermute_backward,
    setup_context=_unpermute_setup,
    samples=_unpermute_samples,
    error_inputs=_unpermute_errors,
))


# ---------------------------------------------------------------------------------- their backward ops

def _permute_grad_shape(a: Dict[str, Any]) -> List[Any]:
    t, g = a["tokens"], a["grad_permuted_tokens"]
    return [((int(t.shape[0]), int(g.shape[1])), _dt(g))]


def _permute_grad_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_token_permute_grad
    idx = a["indices"]
    k = int(idx.shape[1]) if idx.ndim == 2 else 1
    return moe_token_permute_grad(a["grad_permuted_tokens"], a["sorted_indices"], int(a["tokens"].shape[0]), k)


def _permute_grad_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(7)
    t = torch.randn(5, 8, generator=g)
    idx = torch.randint(0, 3, (5, 2), generator=g, dtype=torch.int32)
    si = torch.randperm(10, generator=g).to(torch.int32)
    return [SampleInput((t, torch.randn(10, 8, generator=g), idx, si), {}, [((5, 8), "float32")], name="full"),
            SampleInput((t, torch.randn(7, 8, generator=g), idx, si), {}, [((5, 8), "float32")], name="dropped")]


TOKEN_PERMUTE_GRAD = declare(OpDecl(
    schema="npu_moe_token_permute_grad(Tensor tokens, Tensor grad_permuted_tokens, Tensor indices, "
           "Tensor sorted_indices, bool padded_mode=False) -> Tensor",
    rules="routing",
    shape=_permute_grad_shape,
    sim=_permute_grad_sim,
    aclnn=(AclnnEntry("aclnnMoeTokenPermuteGrad", family="token_permute_grad",
                      requires=("grad_permuted_tokens", "sorted_indices"),
                      params="const aclTensor *permutedOutputGrad, const aclTensor *sortedIndices, int64_t numTopk, "
                             "bool paddedMode, aclTensor *out",
                      bind={"permutedOutputGrad": "grad_permuted_tokens",
                            "numTopk": lambda a, o: _topk_of(a["indices"]), "out": Out(0)}),),
    doc="""torch_npu.npu_moe_token_permute_grad (the backward of npu_moe_token_permute): ``grad_tokens [N, H]``,
per token the fp32 sum over its k slots of ``grad_permuted_tokens[sorted_indices[slot]]`` (slots past the
permuted rows contribute nothing), rounded to the gradient dtype.""",
    samples=_permute_grad_samples,
))


def _unpermute_grad_shape(a: Dict[str, Any]) -> List[Any]:
    p, probs = a["permuted_tokens"], a["probs"]
    gp = ((tuple(int(d) for d in probs.shape), _dt(probs)) if probs is not None else ((0,), _dt(p)))
    return [((tuple(int(d) for d in p.shape)), _dt(p)), gp]


def _unpermute_grad_sim(a: Dict[str, Any], target: Any):
    import numpy as np
    from ..sim.routing import moe_token_unpermute_grad
    gp, gprobs = moe_token_unpermute_grad(a["permuted_tokens"], a["grad_unpermuted_tokens"], a["sorted_indices"],
                                          a["probs"])
    if gprobs is None:
        gprobs = np.zeros((0,), gp.dtype)
    return gp, gprobs


def _unpermute_grad_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(8)
    perm = torch.randn(10, 8, generator=g)
    si = torch.randperm(10, generator=g).to(torch.int32)
    return [SampleInput((perm, torch.randn(5, 8, generator=g), si), dict(probs=torch.rand(5, 2, generator=g)),
                        [((10, 8), "float32"), ((5, 2), "float32")], name="probs"),
            SampleInput((perm, torch.randn(10, 8, generator=g), si), {}, [((10, 8), "float32"), ((0,), "float32")],
                        name="no_probs")]


TOKEN_UNPERMUTE_GRAD = declare(OpDecl(
    schema="npu_moe_token_unpermute_grad(Tensor permuted_tokens, Tensor grad_unpermuted_tokens, Tensor sorted_indices, "
           "Tensor? probs=None, bool padded_mode=False, int[]? restore_shape=None) -> (Tensor, Tensor)",
    rules="routing",
    shape=_unpermute_grad_shape,
    sim=_unpermute_grad_sim,
    aclnn=(AclnnEntry("aclnnMoeTokenUnpermuteGrad", family="token_unpermute_grad",
                      requires=("permuted_tokens", "grad_unpermuted_tokens", "sorted_indices"),
                      params="const aclTensor *permutedTokens, const aclTensor *unpermutedTokensGrad, "
                             "const aclTensor *sortedIndices, const aclTensor *probsOptional, bool paddedMode, "
                             "const aclIntArray *restoreShapeOptional, aclTensor *permutedTokensGradOut, "
                             "aclTensor *probsGradOut",
                      bind={"unpermutedTokensGrad": "grad_unpermuted_tokens", "probsOptional": "probs",
                            "restoreShapeOptional": _restore_shape, "permutedTokensGradOut": Out(0),
                            "probsGradOut": Out(1)}),),
    doc="""torch_npu.npu_moe_token_unpermute_grad (the backward of npu_moe_token_unpermute): ``(grad_permuted [P, H],
grad_probs [T, k])``: ``grad_permuted[sorted_indices[t*k + j]] = grad[t] * probs[t, j]`` (rows no slot maps to are
zero), ``grad_probs[t, j] = sum_h grad[t, h] * permuted[idx, h]``; without probs ``grad_probs`` is empty [0].""",
    samples=_unpermute_grad_samples,
))


# ================================================================================== finalize_routing

def _fin_normalize(a: Dict[str, Any]) -> Dict[str, Any]:
    # op-plugin: drop_pad_mode.value_or(0), k.value_or(1)
    if a.get("drop_pad_mode") is None:
        a["drop_pad_mode"] = 0
    if a.get("k") is None:
        a["k"] = 1
    return a


def _fin_shape(a: Dict[str, Any]) -> List[Any]:
    from ..sim.routing import finalize_routing_output_specs
    ex, sc = a["expanded_permuted_rows"], a["scales"]
    return [finalize_routing_output_specs(tuple(ex.shape), _dt(ex), int(a["expanded_src_to_dst_row"].shape[0]),
                                          tuple(sc.shape) if sc is not None else None, a["k"])]


def _fin_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_finalize_routing
    return moe_finalize_routing(a["expanded_permuted_rows"], a["skip1"], a["skip2"], a["bias"], a["scales"],
                                a["expanded_src_to_dst_row"], a["export_for_source_row"], a["drop_pad_mode"],
                                a["k"])


def _fin_family(a: Dict[str, Any]) -> str:
    return "finalize_routing_k" if a["k"] != 1 else "finalize_routing"


_FIN_V2 = ("const aclTensor *expandedX, const aclTensor *expandedRowIdx, const aclTensor *x1Optional, "
           "const aclTensor *x2Optional, const aclTensor *biasOptional, const aclTensor *scalesOptional, "
           "const aclTensor *expertIdxOptional")
_FIN_BIND = {"expandedX": "expanded_permuted_rows", "expandedRowIdx": "expanded_src_to_dst_row",
             "x1Optional": "skip1", "x2Optional": "skip2", "biasOptional": "bias", "scalesOptional": "scales",
             "expertIdxOptional": "export_for_source_row", "out": Out(0)}


def _fin_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(9)
    rows, K, E, H = 4, 2, 3, 8
    ex = torch.randn(rows * K, H, generator=g)
    idx = torch.randperm(rows * K, generator=g).to(torch.int32)
    ids = torch.randint(0, E, (rows, K), generator=g, dtype=torch.int32)
    sc = torch.rand(rows, K, generator=g)
    skip = torch.randn(rows, H, generator=g)
    bias = torch.randn(E, H, generator=g)
    return [SampleInput((ex, skip, skip, bias, sc, idx, ids), dict(drop_pad_mode=2), [((rows, H), "float32")],
                        name="all_inputs_row_major"),
            SampleInput((ex.half(), skip.half(), None, None, sc.half(), idx, None), dict(drop_pad_mode=0),
                        [((rows, H), "float16")], name="fp16_column_major"),
            SampleInput((ex.view(E + 1, 2, H).bfloat16(), None, None, None, sc, torch.tensor(
                [0, -1, 3, 5, -1, 7, 1, 2], dtype=torch.int32), None), dict(drop_pad_mode=3),
                [((rows, H), "bfloat16")], name="drop_pad_bf16_fp32_scales")]


def _fin_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    ex = torch.randn(8, 4)
    idx = torch.arange(8, dtype=torch.int32)
    return [ErrorInput(SampleInput((ex, None, torch.randn(4, 4), None, torch.rand(4, 2), idx, None)), ConstraintError,
                       r"skip2"),
            ErrorInput(SampleInput((ex, None, None, torch.randn(3, 4), torch.rand(4, 2), idx, None)), ConstraintError,
                       r"export_for_source_row"),
            ErrorInput(SampleInput((ex, None, None, None, torch.rand(4, 2), idx, None), dict(drop_pad_mode=5)),
                       ConstraintError, r"drop_pad_mode")]


FINALIZE_ROUTING = declare(OpDecl(
    schema="npu_moe_finalize_routing(Tensor expanded_permuted_rows, Tensor? skip1, Tensor? skip2, Tensor? bias, "
           "Tensor? scales, Tensor expanded_src_to_dst_row, Tensor? export_for_source_row, int? drop_pad_mode=0, "
           "int? k=1) -> Tensor",
    rules="routing",
    shape=_fin_shape,
    sim=_fin_sim,
    normalize=_fin_normalize,
    aclnn=(
        AclnnEntry("aclnnMoeFinalizeRoutingV4", family="finalize_routing",
                   requires=("expanded_permuted_rows", "expanded_src_to_dst_row"), since="9.1.0",
                   params=_FIN_V2 + ", const aclTensor *xOptional, const aclTensor *alpha1Optional, "
                          "const aclTensor *alpha2Optional, const aclTensor *vOptional, int64_t dropPadMode, "
                          "const aclIntArray *zeroExpertRange, const aclIntArray *copyExpertRange, "
                          "const aclIntArray *constantExpertRange, int64_t k, const aclTensor *out",
                   bind=dict(_FIN_BIND, xOptional=None, alpha1Optional=None, alpha2Optional=None, vOptional=None,
                             zeroExpertRange=None, copyExpertRange=None, constantExpertRange=None)),
        AclnnEntry("aclnnMoeFinalizeRoutingV2", family="finalize_routing",
                   requires=("expanded_permuted_rows", "expanded_src_to_dst_row"),
                   params=_FIN_V2 + ", int64_t dropPadMode, const aclTensor *out", bind=_FIN_BIND),
        AclnnEntry("aclnnMoeFinalizeRouting", family="finalize_routing",
                   requires=("expanded_permuted_rows", "skip1", "expanded_src_to_dst_row"),
                   params="const aclTensor *expandedX, const aclTensor *x1, const aclTensor *x2Optional, "
                          "const aclTensor *bias, const aclTensor *scales, const aclTensor *expandedRowIdx, "
                          "const aclTensor *expandedExpertIdx, const aclTensor *out",
                   bind={"expandedX": "expanded_permuted_rows", "x1": "skip1", "x2Optional": "skip2",
                         "expandedRowIdx": "expanded_src_to_dst_row", "expandedExpertIdx": "export_for_source_row",
                         "out": Out(0)}),
        AclnnEntry("aclnnMoeFinalizeRoutingV4", family="finalize_routing_k",
                   requires=("expanded_permuted_rows", "expanded_src_to_dst_row"), since="9.1.0",
                   params=_FIN_V2 + ", const aclTensor *xOptional, const aclTensor *alpha1Optional, "
                          "const aclTensor *alpha2Optional, const aclTensor *vOptional, int64_t dropPadMode, "
                          "const aclIntArray *zeroExpertRange, const aclIntArray *copyExpertRange, "
                          "const aclIntArray *constantExpertRange, int64_t k, const aclTensor *out",
                   bind=dict(_FIN_BIND, xOptional=None, alpha1Optional=None, alpha2Optional=None, vOptional=None,
                             zeroExpertRange=None, copyExpertRange=None, constantExpertRange=None)),
    ),
    choose_entry=_fin_family,
    doc="""torch_npu.npu_moe_finalize_routing: ``out [rows, H]``: ``skip1 + skip2 + sum_k scales[i, k] *
(expanded_permuted_rows[idx(i, k)] + bias[export_for_source_row[i, k]])`` in k order.  ``drop_pad_mode`` 0/1:
column-major index ``idx[i + k*rows]``, 2/3: row-major ``idx[i*K + k]``; 1/3: rows are ``[E, C, H]`` and -1
entries (dropped tokens) are skipped.  bf16/fp32 inputs compute in fp32; **fp16 inputs compute in fp16** (each
add/multiply rounded), as the device's fp16 kernels do.  Formula: :mod:`ascend_moe.sim.routing`.""",
    samples=_fin_samples,
    error_inputs=_fin_errors,
))


# ================================================================================== gating top-k softmax

def _softmax_shape(a: Dict[str, Any]) -> List[Any]:
    from ..sim.routing import gating_top_k_softmax_output_specs
    x = a["x"]
    return list(gating_top_k_softmax_output_specs(tuple(x.shape), _dt(x), a["k"]))


def _softmax_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_gating_top_k_softmax
    return moe_gating_top_k_softmax(a["x"], a["finished"], a["k"])


def _softmax_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, 16, generator=g)
    x[2, 3] = x[2, 9] = 4.0
    fin = torch.zeros(6, dtype=torch.bool)
    fin[4] = True
    return [SampleInput((x, fin, 3), {}, [((6, 3), "float32"), ((6, 3), "int32"), ((6, 3), "int32")], name="finished"),
            SampleInput((x.view(2, 3, 16).bfloat16(), None, 2), {},
                        [((2, 3, 2), "bfloat16"), ((2, 3, 2), "int32"), ((2, 3, 2), "int32")], name="3d_bf16")]


def _softmax_errors() -> List[ErrorInput]:
    import torch
    from ..rules import ConstraintError
    x = torch.randn(4, 8)
    return [ErrorInput(SampleInput((x, None, 9)), ConstraintError, r"k"),
            ErrorInput(SampleInput((x, torch.zeros(4), 2)), ConstraintError, r"finished dtype"),
            ErrorInput(SampleInput((x, None, "2")), TypeError, r"argument 'k' must be an int")]


GATING_SOFTMAX = declare(OpDecl(
    schema="npu_moe_gating_top_k_softmax(Tensor x, Tensor? finished=None, int k=1) -> (Tensor, Tensor, Tensor)",
    rules="routing",
    shape=_softmax_shape,
    sim=_softmax_sim,
    aclnn=(AclnnEntry("aclnnMoeGatingTopKSoftmax", family="gating_softmax", requires=("x",),
                      params="const aclTensor *x, const aclTensor *finishedOptional, int64_t k, const aclTensor *yOut, "
                             "const aclTensor *expertIdxOut, const aclTensor *rowIdxOut",
                      bind={"finishedOptional": "finished", "yOut": Out(0), "expertIdxOut": Out(1),
                            "rowIdxOut": Out(2)}),),
    doc="""torch_npu.npu_moe_gating_top_k_softmax: ``(y [..., k] x.dtype, expert_idx [..., k] int32, row_idx
[..., k] int32)``: fp32 softmax over the experts, the k largest in descending order (ties: lower expert);
``finished`` rows get ``expert_idx = num_experts``; ``row_idx[r, j] = j*rows + r``; bf16 ``y`` rounds half away
from zero (the kernel's CAST_ROUND).""",
    samples=_softmax_samples,
    error_inputs=_softmax_errors,
))


def _softmax_v2_normalize(a: Dict[str, Any]) -> Dict[str, Any]:
    if a.get("renorm") is None:
        a["renorm"] = 0
    if a.get("output_softmax") is None:
        a["output_softmax"] = False
    return a


def _softmax_v2_shape(a: Dict[str, Any]) -> List[Any]:
    from ..sim.routing import gating_top_k_softmax_output_specs
    x = a["x"]
    return list(gating_top_k_softmax_output_specs(tuple(x.shape), _dt(x), a["k"], v2=True, renorm=a["renorm"],
                                                  output_softmax=a["output_softmax"]))


def _softmax_v2_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_gating_top_k_softmax_v2
    return moe_gating_top_k_softmax_v2(a["x"], a["k"], a["finished"], a["renorm"], a["output_softmax"])


def _softmax_v2_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(13)
    x = torch.randn(5, 16, generator=g)
    return [SampleInput((x,), dict(k=4, output_softmax=True), [((5, 4), "float32"), ((5, 4), "int32"),
                                                               ((5, 16), "float32")], name="softmax_out"),
            SampleInput((x.half(),), dict(k=4, renorm=1, finished=torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool)),
                        [((5, 4), "float16"), ((5, 4), "int32"), ((0,), "float32")], name="renorm")]


GATING_SOFTMAX_V2 = declare(OpDecl(
    schema="npu_moe_gating_top_k_softmax_v2(Tensor x, *, int k=1, Tensor? finished=None, int? renorm=0, "
           "bool? output_softmax=False) -> (Tensor, Tensor, Tensor)",
    rules="routing",
    shape=_softmax_v2_shape,
    sim=_softmax_v2_sim,
    normalize=_softmax_v2_normalize,
    aclnn=(AclnnEntry("aclnnMoeGatingTopKSoftmaxV2", family="gating_softmax_v2", requires=("x",),
                      params="const aclTensor *x, const aclTensor *finishedOptional, int64_t k, int64_t renorm, "
                             "bool outputSoftmaxResultFlag, const aclTensor *yOut, const aclTensor *expertIdxOut, "
                             "const aclTensor *softmaxResultOutOptional",
                      bind={"finishedOptional": "finished", "outputSoftmaxResultFlag": "output_softmax",
                            "yOut": Out(0), "expertIdxOut": Out(1), "softmaxResultOutOptional": Out(2)}),),
    doc="""torch_npu.npu_moe_gating_top_k_softmax_v2: ``(y, expert_idx, softmax_result)``.  renorm 0: as
npu_moe_gating_top_k_softmax, ``softmax_result`` = the fp32 softmax when ``output_softmax`` (else ``[0]``);
renorm 1: top-k of the raw x, then the softmax of those k values.""",
    samples=_softmax_v2_samples,
))


# ================================================================================== compute_expert_tokens, re_routing

def _cet_shape(a: Dict[str, Any]) -> List[Any]:
    return [((int(a["num_expert"]),), "int32")]


def _cet_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_compute_expert_tokens
    return moe_compute_expert_tokens(a["sorted_expert_for_source_row"], a["num_expert"])


def _cet_samples() -> List[SampleInput]:
    import torch
    return [SampleInput((torch.tensor([0, 0, 2, 2, 2, 5], dtype=torch.int32), 7), {}, [((7,), "int32")],
                        name="gaps",
                        reference=lambda s: torch.tensor([2, 2, 5, 5, 5, 6, 6], dtype=torch.int32))]


COMPUTE_EXPERT_TOKENS = declare(OpDecl(
    schema="npu_moe_compute_expert_tokens(Tensor sorted_expert_for_source_row, int num_expert) -> Tensor",
    rules="routing",
    shape=_cet_shape,
    sim=_cet_sim,
    aclnn=(AclnnEntry("aclnnMoeComputeExpertTokens", family="compute_expert_tokens",
                      requires=("sorted_expert_for_source_row",),
                      params="const aclTensor *sortedExperts, int64_t numExperts, const aclTensor *out",
                      bind={"sortedExperts": "sorted_expert_for_source_row", "numExperts": "num_expert",
                            "out": Out(0)}),),
    doc="""torch_npu.npu_moe_compute_expert_tokens: ``out [num_expert] int32``, ``out[i]`` = the end (exclusive)
of expert i's run in the ascending expert list = the number of entries ``<= i``.""",
    samples=_cet_samples,
))


def _rr_shape(a: Dict[str, Any]) -> List[Any]:
    from ..sim.routing import re_routing_output_specs
    t, c, s = a["tokens"], a["expert_token_num_per_rank"], a["per_token_scales"]
    return list(re_routing_output_specs(tuple(t.shape), _dt(t), tuple(c.shape), _dt(c),
                                        tuple(s.shape) if s is not None else None, _dt(s) if s is not None else "float32"))


def _rr_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_re_routing
    return moe_re_routing(a["tokens"], a["expert_token_num_per_rank"], a["per_token_scales"],
                          a["expert_token_num_type"], a["idx_type"])


def _rr_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(15)
    counts = torch.tensor([[2, 0, 1], [1, 3, 0]], dtype=torch.int32)
    tok = torch.randint(-50, 50, (7, 4), generator=g, dtype=torch.int8)
    return [SampleInput((tok, counts), dict(per_token_scales=torch.rand(7, generator=g)),
                        [((7, 4), "int8"), ((7,), "float32"), ((7,), "int32"), ((3,), "int32")], name="int8"),
            SampleInput((tok.to(torch.bfloat16), counts.long()), dict(idx_type=1, expert_token_num_type=0),
                        [((7, 4), "bfloat16"), ((7,), "float32"), ((7,), "int32"), ((3,), "int64")],
                        name="scatter_cumsum", undefined="zero")]


RE_ROUTING = declare(OpDecl(
    schema="npu_moe_re_routing(Tensor tokens, Tensor expert_token_num_per_rank, *, Tensor? per_token_scales=None, "
           "int expert_token_num_type=1, int idx_type=0, int? tokens_dtype=None) -> (Tensor, Tensor, Tensor, Tensor)",
    rules="routing",
    shape=_rr_shape,
    sim=_rr_sim,
    aclnn=(AclnnEntry("aclnnMoeReRouting", family="re_routing", requires=("tokens", "expert_token_num_per_rank"),
                      params="const aclTensor *tokens, const aclTensor *expertTokenNumPerRank, "
                             "const aclTensor *perTokenScalesOptional, int64_t expertTokenNumType, int64_t idxType, "
                             "const aclTensor *permuteTokensOut, const aclTensor *permutePerTokenScalesOut, "
                             "const aclTensor *permuteTokenIdxOut, const aclTensor *expertTokenNumOut",
                      bind={"perTokenScalesOptional": "per_token_scales", "permuteTokensOut": Out(0),
                            "permutePerTokenScalesOut": Out(1), "permuteTokenIdxOut": Out(2),
                            "expertTokenNumOut": Out(3)}),),
    doc="""torch_npu.npu_moe_re_routing: rows received rank-major (``expert_token_num_per_rank [ranks, experts]``)
re-laid out expert-major: ``(permute_tokens, permute_per_token_scales, permute_token_idx int32, expert_token_num)``;
``idx_type`` 0 gives the gather index (source row of each output row), 1 the scatter index; rows past the
counts' total are undefined regions.""",
    samples=_rr_samples,
))


# ================================================================================== gating top-k backward

def _gbwd_shape(a: Dict[str, Any]) -> List[Any]:
    return [(tuple(int(d) for d in a["x_norm"].shape), _dt(a["grad_y"]))]


def _gbwd_sim(a: Dict[str, Any], target: Any):
    from ..sim.routing import moe_gating_top_k_backward
    return moe_gating_top_k_backward(a["x_norm"], a["grad_y"], a["expert_idx"], a["routed_scaling_factor"], a["eps"])


def _gbwd_samples() -> List[SampleInput]:
    import torch
    g = torch.Generator().manual_seed(16)
    xn = torch.sigmoid(torch.randn(4, 16, generator=g))
    idx = torch.stack([torch.randperm(16, generator=g)[:3] for _ in range(4)]).to(torch.int32)
    return [SampleInput((xn, torch.randn(4, 3, generator=g), idx), dict(routed_scaling_factor=2.5),
                        [((4, 16), "float32")], name="fp32"),
            SampleInput((xn, torch.randn(4, 3, generator=g).bfloat16(), idx), {}, [((4, 16), "bfloat16")],
                        name="bf16_grad")]


GATING_TOP_K_BACKWARD = declare(OpDecl(
    schema="npu_moe_gating_top_k_backward(Tensor x_norm, Tensor grad_y, Tensor expert_idx, *, int renorm=0, "
           "int norm_type=1, float routed_scaling_factor=1.0, float eps=1e-20) -> Tensor",
    rules="routing",
    shape=_gbwd_shape,
    sim=_gbwd_sim,
    aclnn=(AclnnEntry("aclnnMoeGatingTopKBackward", family="gating_backward", requires=("x_norm", "grad_y", "expert_idx"),
                      params="const aclTensor *xNorm, const aclTensor *gradY, const aclTensor *expertIdx, int64_t renorm, "
                             "int64_t normType, double routedScalingFactor, double eps, const aclTensor *out",
                      bind={"out": Out(0)}),),
    doc="""torch_npu.npu_moe_gating_top_k_backward (the backward of the sigmoid npu_moe_gating_top_k):
``grad_x [rows, E]`` from the fp32 ``x_norm`` (the forward's norm_out), the gradient of ``y`` and the selected
experts: the renormalisation's backward ``(g - sum(w*g)) / (sum(s) + eps)`` scattered to the experts, times the
sigmoid derivative ``x_norm*(1 - x_norm)``; in fp32, rounded to ``grad_y``'s dtype.  The schema's keyword
split is inferred (op-plugin's tests call it with keywords after the three tensors).""",
    samples=_gbwd_samples,
))
