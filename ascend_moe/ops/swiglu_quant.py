"""Declarations of ``npu_grouped_matmul_swiglu_quant`` (v1) and ``npu_grouped_matmul_swiglu_quant_v2``
(torch_npu): GMM + dequant + SwiGLU + per-token int8 quant.  Numerics and the faithfulness contract:
:mod:`ascend_moe.sim.swiglu_quant`; rules: :mod:`ascend_moe.rules.swiglu_quant`.

Shape rules = op-plugin's meta (spec aclnn-abi-and-torch 4.3, ``n = weight_scale.size(-1)``).  An int8
weight must be FRACTAL_NZ: cast it with :func:`ascend_moe.npu_format_cast` (``(weight, 29)``), or pass
the 5-D NZ storage tensor.  The cast weight carries its format into fake tensors and compiled graphs
(:class:`ascend_moe.formatted.FormattedTensor`), so the trace-time check sees the real one.

Entry points: v1 always calls ``aclnnGroupedMatmulSwigluQuantWeightNZ``; v2 calls ``...WeightNzV2`` for
an NZ (or 5-D) weight, else ``...V2``.  op-plugin maps v2's ``dequant_dtype`` from torch's enum to GE's
(6 float32 -> 0, 5 float16 -> 1, 15 bfloat16 -> 27; others unchanged) [I].  This module does not
import torch.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from ..formats import is_nz
from ..opdecl import AclnnEntry, OpDecl, Out, SampleInput, declare
from ..sim import swiglu_quant as _sim
from ..sim.numerics import dtype_name, fill_undefined

V1 = "npu_grouped_matmul_swiglu_quant"
V2 = "npu_grouped_matmul_swiglu_quant_v2"

DEQUANT_DTYPE_TO_GE = {6: 0, 5: 1, 15: 27}


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, (list, tuple)) and len(v) else v


# ------------------------------------------------------------------------------------------------ v1

def _v1_shape(a: Dict[str, Any]) -> List[Any]:
    m, n = a["x"].shape[0], a["weight_scale"].shape[-1]
    return [((m, n // 2), "int8"), ((m,), "float32"), ((), "float32")]


def _v1_sim(a: Dict[str, Any], target: Any):
    out, out_scale = _sim.compute(a["x"], a["weight"], a["weight_scale"], a["x_scale"], np.asarray(a["group_list"]),
                                  group_list_type=0, assist=a["bias"], kernel="v1")
    out_offset = fill_undefined(np.zeros((), dtype=np.float32), ())  # never written by the device
    return out, out_scale, out_offset


def _v1_samples() -> List[SampleInput]:
    import torch
    from .format_cast import npu_format_cast
    g = torch.Generator().manual_seed(18)
    m, k, n, e = 6, 32, 64, 2
    x = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    w = npu_format_cast(torch.randint(-8, 8, (e, k, n), generator=g, dtype=torch.int8), 29, storage=True)
    ws = (torch.randn(e, n, generator=g) * 0.01).abs() + 1e-3
    xs = (torch.randn(m, generator=g) * 0.1).abs() + 1e-2
    # out_offset (0-d) is never written by the device: NaN under 'poison', so opcheck compares under 'zero'
    return [SampleInput((x, w, torch.tensor([2, 6]), ws, xs), {},
                        [((m, n // 2), "int8"), ((m,), "float32"), ((), "float32")], name="a8w8", undefined="zero")]


DECL_V1 = declare(OpDecl(
    schema="npu_grouped_matmul_swiglu_quant(Tensor x, Tensor weight, Tensor group_list, Tensor weight_scale, "
           "Tensor x_scale, *, Tensor? bias=None, Tensor? offset=None) -> (Tensor, Tensor, Tensor)",
    rules="swiglu_quant",
    shape=_v1_shape,
    sim=_v1_sim,
    cached_weights=lambda a: [a["weight"]],
    aclnn=(AclnnEntry("aclnnGroupedMatmulSwigluQuantWeightNZ", family="swiglu_v1",
                      requires=("x", "weight", "weight_scale", "x_scale", "group_list"),
                      params="const aclTensor *x, const aclTensor *weight, const aclTensor *bias, "
                             "const aclTensor *offset, const aclTensor *weightScale, const aclTensor *xScale, "
                             "const aclTensor *groupList, aclTensor *output, aclTensor *outputScale, "
                             "aclTensor *outputOffset",
                      bind={"output": Out(0), "outputScale": Out(1), "outputOffset": Out(2)}),),
    doc="""GMM + dequant + SwiGLU + per-token int8 quant, torch_npu v1 spelling.

x int8 [M, K]; weight int8 [E, K, N] cast to FRACTAL_NZ (or 5-D NZ storage), or A8W4 int4 packed in int32
[E, K, N/8] with the weight_assist_matrix passed as ``bias``; group_list int64 cumsum [E]; weight_scale
[E, N]; x_scale float32 [M].  Returns ``(out int8 [M, N/2], out_scale float32 [M], out_offset float32
[])``; rows past the group total and out_offset are undefined (undefined-region policy).  Arithmetic:
:mod:`ascend_moe.sim.swiglu_quant` (v1 kernel).""",
    samples=_v1_samples,
))


# ------------------------------------------------------------------------------------------------ v2

def _v2_shape(a: Dict[str, Any]) -> List[Any]:
    m, n = a["x"].shape[0], _first(a["weight_scale"]).shape[-1]
    return [((m, n // 2), "int8"), ((m,), "float32")]


def _v2_sim(a: Dict[str, Any], target: Any):
    # one-element lists, or one tensor per expert stacked on a leading expert axis (sim.stack_experts)
    stack = _sim.stack_experts
    return _sim.compute(a["x"], stack(a["weight"]), stack(a["weight_scale"]), a["x_scale"],
                        np.asarray(a["group_list"]), group_list_type=a["group_list_type"],
                        assist=stack(a["weight_assist_matrix"]), kernel="v2")


def _v2_family(a: Dict[str, Any]) -> str:
    w0 = _first(a["weight"])
    return "swiglu_v2_nz" if is_nz(w0) or len(w0.shape) == 5 else "swiglu_v2"


def _v2_check(a: Dict[str, Any]) -> None:
    from ..backends.aclnn import _no_dtype_overrides
    _no_dtype_overrides(V2, a, ("x_dtype", "weight_dtype", "weight_scale_dtype", "x_scale_dtype"))


_V2_PARAMS = ("const aclTensor *x, const aclTensorList *weight, const aclTensorList *weightScale, "
              "const aclTensorList *weightAssistMatrix, const aclTensor *bias, const aclTensor *xScale, "
              "const aclTensor *smoothScale, const aclTensor *groupList, int64_t dequantMode, int64_t dequantDtype, "
              "int64_t quantMode, int64_t groupListType, const aclIntArray *tuningConfigOptional, "
              "aclTensor *output, aclTensor *outputScale")
_V2_BIND = {"dequantDtype": lambda a, outs: DEQUANT_DTYPE_TO_GE.get(a["dequant_dtype"], a["dequant_dtype"]),
            "tuningConfigOptional": lambda a, outs: list(a.get("tuning_config") or []),
            "output": Out(0), "outputScale": Out(1)}


def _v2_samples() -> List[SampleInput]:
    import torch
    from .format_cast import npu_format_cast
    g = torch.Generator().manual_seed(22)
    m, k, n, e = 6, 32, 64, 2
    x = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    w = npu_format_cast(torch.randint(-8, 8, (e, k, n), generator=g, dtype=torch.int8), 29, storage=True)
    ws = (torch.randn(e, n, generator=g) * 0.01).abs() + 1e-3
    xs = (torch.randn(m, generator=g) * 0.1).abs() + 1e-2
    return [SampleInput((x, [w], [ws], xs, torch.tensor([4, 2])), dict(group_list_type=1),
                        [((m, n // 2), "int8"), ((m,), "float32")], name="a8w8_counts")]


def _v2_errors():
    from ..opdecl import ErrorInput
    s = _v2_samples()[0]
    x, w, ws, xs, gl = s.args
    return [ErrorInput(SampleInput((x, w[0], ws, xs, gl), s.kwargs), TypeError,
                       r"argument 'weight' must be a list of Tensors \(Tensor\[\]\): wrap a single tensor")]


DECL_V2 = declare(OpDecl(
    schema="npu_grouped_matmul_swiglu_quant_v2(Tensor x, Tensor[] weight, Tensor[] weight_scale, Tensor x_scale, "
           "Tensor group_list, *, Tensor? smooth_scale=None, Tensor[]? weight_assist_matrix=None, "
           "Tensor? bias=None, int? dequant_mode=0, int? dequant_dtype=0, int? quant_mode=0, int? quant_dtype=1, "
           "int? group_list_type=0, int[]? tuning_config=None, int? x_dtype=None, int? weight_dtype=None, "
           "int? weight_scale_dtype=None, int? x_scale_dtype=None) -> (Tensor, Tensor)",
    rules="swiglu_quant",
    shape=_v2_shape,
    sim=_v2_sim,
    cached_weights=lambda a: list(a["weight"]),
    aclnn=(AclnnEntry("aclnnGroupedMatmulSwigluQuantV2", family="swiglu_v2", params=_V2_PARAMS, bind=_V2_BIND,
                      requires=("x", "weight", "weight_scale", "x_scale", "group_list"), check=_v2_check),
           AclnnEntry("aclnnGroupedMatmulSwigluQuantWeightNzV2", family="swiglu_v2_nz", params=_V2_PARAMS,
                      bind=_V2_BIND, requires=("x", "weight", "weight_scale", "x_scale", "group_list"),
                      check=_v2_check)),
    choose_entry=_v2_family,
    doc="""GMM + dequant + SwiGLU + per-token int8 quant, torch_npu v2 spelling (one-element lists).

A8W8 (int8 NZ weight) uses the v2 fusion kernel's arithmetic (w_scale then x_scale, single round-half-even);
A8W4 (int32-packed int4 weight, ND or NZ; ``weight_assist_matrix`` required; ``dequant_mode`` 1 = per-group
[E, G, N] scales) the MSD kernel's.  ``group_list_type`` 0 cumsum, 1 count.  Returns ``(out int8 [M, N/2],
out_scale float32 [M])``.""",
    samples=_v2_samples,
    error_inputs=_v2_errors,
))
