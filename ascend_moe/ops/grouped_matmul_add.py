"""Declarations of ``torch_npu.npu_grouped_matmul_add_`` (in place) and ``npu_grouped_matmul_add`` (out of
place): ``self[e] += x[rows_e]^T @ weight[rows_e]`` in fp32, MindSpeed's ``gemm_fusion=True`` main_grad
accumulation.  Numerics: :func:`ascend_moe.sim.gmm_quant.grouped_matmul_add`; rules
:mod:`ascend_moe.rules.quant_ops` (the ``gma.*`` / ``gma_oop.*`` ids).

Both write into their first argument (op-plugin ``GroupedMatmulAddNpuOpApi.cpp`` passes ``self`` to aclnn as
``yRef``): the in-place schema marks it (``Tensor(a!) self ... -> Tensor(a!)``, the public function returns
``self`` itself), the out-of-place one does not although it writes too, so its declaration lists it in
``writes`` and returns ``self.clone()`` taken after the write, as op-plugin does.  The torch ops declare the
write (``mutates_args``), so ``torch.compile`` and functionalisation see it.

Entry points: aclnnGroupedMatmulAdd on A2/A3 (op-plugin passes no group_list_type there), aclnnGroupedMatmulAddV2
on the Ascend 950 (op-plugin: V2 only where ``IsAclnnOnly``).  This module does not import torch.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from ..opdecl import AclnnEntry, ErrorInput, OpDecl, SampleInput, declare
from ..sim import gmm_quant as _sim

INPLACE = "npu_grouped_matmul_add_"
OUT_OF_PLACE = "npu_grouped_matmul_add"

_ARGS = ("(Tensor{alias} self, Tensor x, Tensor weight, Tensor group_list, *, bool transpose_x=True, "
         "bool transpose_weight=False, int group_type=2, int? group_list_type=0)")


def _no_outputs(a: Dict[str, Any]) -> List[Any]:
    return []  # the result is written into self


def _accumulate(a: Dict[str, Any], target: Any) -> List[Any]:
    y = a["self"]
    # the simulator accumulates into [E, M, N] memory; a strided self is accumulated in a copy written back
    acc = y if y.flags.c_contiguous else np.ascontiguousarray(y)
    _sim.grouped_matmul_add(acc, a["x"], a["weight"], np.asarray(a["group_list"]),
                            group_list_type=a["group_list_type"] or 0)
    if acc is not y:
        np.copyto(y, acc)
    return []


def _family(a: Dict[str, Any]) -> str:
    from ..products import resolve_target
    return "gmm_add_v2" if resolve_target().product == "ascend-950" else "gmm_add"


_PARAMS = ("const aclTensor *x, const aclTensor *weight, const aclTensor *groupList, aclTensor *yRef, "
           "bool transposeX, bool transposeWeight, int64_t groupType")
_ENTRIES = (
    AclnnEntry("aclnnGroupedMatmulAdd", family="gmm_add", params=_PARAMS, bind={"yRef": "self"},
               requires=("x", "weight", "group_list", "self")),
    AclnnEntry("aclnnGroupedMatmulAddV2", family="gmm_add_v2", params=_PARAMS + ", int64_t groupListType",
               bind={"yRef": "self"}, requires=("x", "weight", "group_list", "self"), since="8.5.0"),
)


def _samples() -> List[SampleInput]:
    import torch
    from ._common import from_numpy
    g = torch.Generator().manual_seed(31)
    t, m, n = 12, 8, 16
    # small integers: every product and partial sum is exact in fp32, so the reference below is exact
    x = torch.randint(-4, 5, (t, m), generator=g).to(torch.bfloat16)
    w = torch.randint(-4, 5, (t, n), generator=g).to(torch.bfloat16)
    y = torch.randint(-8, 9, (3, m, n), generator=g).to(torch.float32)
    gl = torch.tensor([5, 5, 12])
    y0 = y.clone()

    def reference(s: SampleInput) -> Any:
        ref = np.asarray(y0.numpy(), dtype=np.float64).copy()
        xs, ws = x.float().numpy(), w.float().numpy()
        start = 0
        for e, end in enumerate([5, 5, 12]):
            for r in range(start, end):          # one token's outer product at a time
                for i in range(m):
                    for j in range(n):
                        ref[e, i, j] += float(xs[r, i]) * float(ws[r, j])
            start = end
        return from_numpy(ref.astype(np.float32))

    return [SampleInput((y, x, w, gl), {}, [((3, m, n), "float32")], name="bf16_empty_group", reference=reference)]


def _errors(op: str):
    def errors() -> List[ErrorInput]:
        y, x, w, gl = _samples()[0].args
        return [ErrorInput(SampleInput((y, x, w.float().numpy(), gl)), TypeError, r"argument 'weight' must be a Tensor"),
                ErrorInput(SampleInput((y, x, w, gl), dict(transpose_x=1)), TypeError,
                           r"argument 'transpose_x' must be a bool")]
    return errors


DECL_INPLACE = declare(OpDecl(
    schema=INPLACE + _ARGS.format(alias="(a!)") + " -> Tensor(a!)",
    rules="quant_ops",
    shape=_no_outputs,
    sim=_accumulate,
    aclnn=_ENTRIES,
    choose_entry=_family,
    doc="""In place: ``self.view(E, M, N)[e] += x[rows_e]^T @ weight[rows_e]`` (fp32 accumulation), rows from the
int64 ``group_list`` (cumsum; counts with ``group_list_type=1`` where the entry point takes it).  ``x``
fp16/bf16 ``[tokens, M]``, ``weight`` ``[tokens, N]`` of the same dtype, ``self`` fp32.  Returns ``self``.""",
    samples=_samples,
    error_inputs=_errors(INPLACE),
))

DECL_OUT_OF_PLACE = declare(OpDecl(
    schema=OUT_OF_PLACE + _ARGS.format(alias="") + " -> Tensor",
    rules="quant_ops",
    shape=_no_outputs,
    sim=_accumulate,
    aclnn=_ENTRIES,
    choose_entry=_family,
    writes=("self",),
    returns_clone_of="self",
    doc="""torch_npu's out-of-place spelling: writes into ``self`` as the in-place op does (op-plugin passes
``self`` to aclnnGroupedMatmulAdd as both input and output) and returns a clone of it.""",
    samples=_samples,
    error_inputs=_errors(OUT_OF_PLACE),
))
