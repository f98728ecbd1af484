"""Declaration of ``npu_grouped_matmul_finalize_routing`` (torch_npu): GMM + MoE finalize/combine on
Atlas A2/A3, A8W8 (int8 FRACTAL_NZ weight) and A8W4 (int4 packed in int32, ND or NZ).  Returns fp32
``[output_bs or m, n]``.  Numerics and the faithfulness contract: :mod:`ascend_moe.sim.finalize_routing`;
rules: :mod:`ascend_moe.rules.finalize_routing` (which reads the entry-point table below).

Shape rule = op-plugin's meta rule (spec aclnn-abi-and-torch 4.3): ``[output_bs or x.shape[0], n]`` fp32
with ``n = w.shape[-1]`` (x8 for an int32 weight).  Extension: a 5-D NZ storage weight is accepted too
(its logical n is derived from the storage shape).

Entry points (op-plugin's order): an NZ weight takes ``WeightNzV2`` then ``WeightNz``, otherwise ``V3``
then ``V2``; op-plugin never calls V1.  The first release of the V2 generation (V3 / WeightNzV2) is
inferred as CANN 8.3.RC1: their docs are already in ops-transformer's first public commit (b122ed222,
2025-09-28), the period of that release.  Deviations from op-plugin, both loud instead of silent: an
``offset`` that only ``WeightNz`` could receive (it has no such parameter; op-plugin drops it) raises
BackendError; a ``tuning_config`` an older entry point cannot take is dropped with a RuntimeWarning
(op-plugin warns once).  dtype overrides (``x_dtype``, ``w_dtype``, ...) are refused by the dispatcher.
This module does not import torch.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List

from ..formats import get_format
from ..opdecl import AclnnEntry, ErrorInput, OpDecl, Out, SampleInput, declare
from ..sim import finalize_routing as _sim
from ..sim import kernels as sim_kernels
from ..sim.numerics import dtype_name

OP = "npu_grouped_matmul_finalize_routing"
V2_GENERATION_SINCE = "8.3.RC1"   # [I] release mapping of V3 / WeightNzV2 (see the module docstring)


def _shape(a: Dict[str, Any]) -> List[Any]:
    """op-plugin meta: x 2-D, w 3-D; M = output_bs or x.shape[0]; N = w.shape[-1] (x8 for int32)."""
    x, w = a["x"], a["w"]
    if len(x.shape) != 2:
        raise ValueError(f"{OP}: x must be 2-D [m, k], got x.shape={list(x.shape)}")
    lay = _sim.weight_layout(tuple(w.shape), dtype_name(w.dtype), get_format(w))
    if lay is None:
        raise ValueError(f"{OP}: w must be 3-D [e, k, n] (or 5-D NZ storage), got w.shape={list(w.shape)}")
    dt = a.get("dtype")
    if dt is not None and dtype_name(dt) != "float32":
        raise ValueError(f"{OP}: dtype must be None or torch.float32, got dtype={dt}")
    m = a.get("output_bs") or x.shape[0]
    return [((m, lay.n), "float32")]


def _sim_compute(a: Dict[str, Any], target: Any, fp19: Any = None):
    return _sim.finalize_routing_compute(
        a["x"], a["w"], a["group_list"], scale=a["scale"], bias=a["bias"], offset=a["offset"],
        pertoken_scale=a["pertoken_scale"], shared_input=a["shared_input"], logit=a["logit"],
        row_index=a["row_index"], shared_input_weight=a["shared_input_weight"],
        shared_input_offset=a["shared_input_offset"], output_bs=a["output_bs"],
        group_list_type=a["group_list_type"], fp19=fp19)


def _family(a: Dict[str, Any]) -> str:
    from ..formats import is_nz
    w = a["w"]
    return "finalize_nz" if is_nz(w) or len(w.shape) == 5 else "finalize"


def _no_dtype_overrides(a: Dict[str, Any]) -> None:
    from ..backends.aclnn import _no_dtype_overrides as refuse
    refuse(OP, a, ("x_dtype", "w_dtype", "scale_dtype", "pertoken_scale_dtype"))


def _no_tuning(entry: str):
    def check(a: Dict[str, Any]) -> None:
        _no_dtype_overrides(a)
        if a.get("tuning_config") is not None:
            warnings.warn(f"{OP}: {entry} takes no tuning_config; it is ignored (update CANN for "
                          f"{'WeightNzV2' if 'Nz' in entry else 'V3'}), as op-plugin does", RuntimeWarning,
                          stacklevel=5)
    return check


def _weight_nz_check(a: Dict[str, Any]) -> None:
    from ..backends import BackendError
    _no_dtype_overrides(a)
    if a.get("offset") is not None:
        raise BackendError(f"{OP}: offset needs aclnnGroupedMatmulFinalizeRoutingWeightNzV2, which this CANN "
                           "does not provide (only WeightNz resolved)")
    _no_tuning("aclnnGroupedMatmulFinalizeRoutingWeightNz")(a)


_V2_PARAMS = (
    "const aclTensor *x1, aclTensor *x2, const aclTensor *scaleOptional, const aclTensor *biasOptional, "
    "const aclTensor *offsetOptional, const aclTensor *antiquantScaleOptional, "
    "const aclTensor *antiquantOffsetOptional, const aclTensor *pertokenScaleOptional, "
    "const aclTensor *groupListOptional, const aclTensor *sharedInputOptional, const aclTensor *logitOptional, "
    "const aclTensor *rowIndexOptional, int64_t dtype, float sharedInputWeight, int64_t sharedInputOffset, "
    "bool transposeX1, bool transposeX2, int64_t groupListType")
_BIND = {"x1": "x", "x2": "w", "scaleOptional": "scale", "biasOptional": "bias", "offsetOptional": "offset",
         "antiquantScaleOptional": None, "antiquantOffsetOptional": None, "pertokenScaleOptional": "pertoken_scale",
         "groupListOptional": "group_list", "sharedInputOptional": "shared_input", "logitOptional": "logit",
         "rowIndexOptional": "row_index", "dtype": 0, "transposeX1": False, "transposeX2": False,
         "tuningConfigOptional": lambda a, outs: list(a.get("tuning_config") or []), "out": Out(0)}

ACLNN = (
    AclnnEntry("aclnnGroupedMatmulFinalizeRoutingV3", family="finalize", since=V2_GENERATION_SINCE,
               requires=("scale", "pertoken_scale", "logit", "row_index"),
               params=_V2_PARAMS + ", const aclIntArray *tuningConfigOptional, aclTensor *out", bind=_BIND,
               check=_no_dtype_overrides),
    AclnnEntry("aclnnGroupedMatmulFinalizeRoutingV2", family="finalize",
               requires=("scale", "pertoken_scale", "logit", "row_index", "bias"),
               params=_V2_PARAMS + ", aclTensor *out", bind=_BIND,
               check=_no_tuning("aclnnGroupedMatmulFinalizeRoutingV2")),
    # WeightNzV2 requires pertoken_scale too for int4 weights (a rule of rules.finalize_routing)
    AclnnEntry("aclnnGroupedMatmulFinalizeRoutingWeightNzV2", family="finalize_nz", since=V2_GENERATION_SINCE,
               requires=("scale", "logit", "row_index"),
               params=_V2_PARAMS + ", const aclIntArray *tuningConfigOptional, aclTensor *out", bind=_BIND,
               check=_no_dtype_overrides),
    AclnnEntry("aclnnGroupedMatmulFinalizeRoutingWeightNz", family="finalize_nz",
               requires=("scale", "logit", "row_index"),
               params="const aclTensor *x1, aclTensor *x2, const aclTensor *scale, const aclTensor *bias, "
                      "const aclTensor *pertokenScaleOptional, const aclTensor *groupList, "
                      "const aclTensor *sharedInput, const aclTensor *logit, const aclTensor *rowIndex, "
                      "int64_t dtype, float sharedInputWeight, int64_t sharedInputOffset, bool transposeX1, "
                      "bool transposeX2, int64_t groupListType, aclTensor *out",
               bind=_BIND, check=_weight_nz_check),
)


def _samples() -> List[SampleInput]:
    import torch
    from .format_cast import npu_format_cast
    g = torch.Generator().manual_seed(26)
    m, k, n, e, bs = 6, 32, 256, 2, 3
    x = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    w_logical = torch.randint(-8, 8, (e, k, n), generator=g, dtype=torch.int8)
    w = npu_format_cast(w_logical, 29, storage=True)
    scale = (torch.randn(e, n, generator=g) * 0.01).abs() + 1e-3
    pts = (torch.randn(m, generator=g) * 0.1).abs() + 1e-2
    logit = torch.randn(m, generator=g).abs()
    row_index = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int64)
    kw = dict(scale=scale, pertoken_scale=pts, logit=logit, row_index=row_index, group_list_type=1)
    counts = [3, 3]

    def reference(sample: SampleInput):
        """A8W8 in plain loops: y zeroed; row t of expert e adds fp32(acc) * scale[e] * (logit[t] * pts[t]),
        each product one fp32 rounding, rows added in token order."""
        import numpy as np
        xs, ws = x.numpy().astype(np.int64), w_logical.numpy().astype(np.int64)
        sc, lg, pt = scale.numpy(), logit.numpy(), pts.numpy()
        rows = sample.kwargs.get("output_bs") or m
        y = np.zeros((rows, n), np.float32)
        t = 0
        for expert, c in enumerate(counts):
            for _ in range(c):
                acc = (xs[t][:, None] * ws[expert]).sum(axis=0)          # exact int64, fits int32
                d = acc.astype(np.float32) * sc[expert]
                v = d * np.float32(lg[t] * pt[t])
                y[int(row_index[t])] += v
                t += 1
        return torch.from_numpy(y)
    return [SampleInput((x, w, torch.tensor(counts)), dict(kw, output_bs=bs), [((bs, n), "float32")],
                        name="a8w8_output_bs", reference=reference),
            SampleInput((x, w, torch.tensor(counts)), kw, [((m, n), "float32")], name="a8w8_m_rows",
                        reference=reference)]


def _error_inputs() -> List[ErrorInput]:
    s = _samples()[0]
    x, w, gl = s.args
    return [ErrorInput(SampleInput((x, None, gl), s.kwargs), TypeError, r"argument 'w' must be a Tensor"),
            ErrorInput(SampleInput((x, w, gl), dict(s.kwargs, group_list_type="1")), TypeError,
                       r"argument 'group_list_type' must be an int"),
            ErrorInput(SampleInput((x, w, gl, s.kwargs["scale"])), TypeError, r"positional argument")]


DECL = declare(OpDecl(
    schema="npu_grouped_matmul_finalize_routing(Tensor x, Tensor w, Tensor group_list, *, Tensor? scale=None, "
           "Tensor? bias=None, Tensor? offset=None, Tensor? pertoken_scale=None, Tensor? shared_input=None, "
           "Tensor? logit=None, Tensor? row_index=None, ScalarType? dtype=None, float? shared_input_weight=1.0, "
           "int? shared_input_offset=0, int? output_bs=0, int? group_list_type=1, int[]? tuning_config=None, "
           "int? x_dtype=None, int? w_dtype=None, int? scale_dtype=None, int? pertoken_scale_dtype=None) -> Tensor",
    rules="finalize_routing",
    shape=_shape,
    sim=_sim_compute,
    sim_options=("fp19",),
    cached_weights=lambda a: [a["w"]],
    aclnn=ACLNN,
    choose_entry=_family,
    doc="""GMM + MoE finalize-routing: fp32 ``[output_bs or m, n]``.

``y`` is zeroed, the shared-expert rows ``y[shared_input_offset : +bsdp] = fp32(shared_input) *
shared_input_weight`` are written, then each grouped row t adds its dequantised result (times
``logit[t]``) into ``y[row_index[t]]`` in token order.  A8W8: int8 NZ ``w``, fp32/bf16 ``scale``
[e, n], optional ``pertoken_scale`` [m] and bf16 ``bias`` [e, n].  A8W4: int32-packed int4 ``w``,
int64 ``scale`` [e, 1, n], fp32 ``bias`` [e, n] (= 8 * sum_k w * scale), ``pertoken_scale`` [m],
optional fp32 ``offset`` [e, 1, n].""",
    samples=_samples,
    error_inputs=_error_inputs,
))
