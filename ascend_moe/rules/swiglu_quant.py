"""Rules of ``npu_grouped_matmul_swiglu_quant`` (v1) and ``npu_grouped_matmul_swiglu_quant_v2`` (A2/A3).

Sources (spec grouped-matmul-family 2.1, 2.2, 2.6): host checks of
``gmm/grouped_matmul_swiglu_quant/op_api/aclnn_grouped_matmul_swiglu_quant.cpp`` (N even, N <= 10240,
A8W8 K < 65536 and NZ weight, A8W4 K < 20000 and K % groups == 0, len(group_list) <= E, NZ storage
shape), the aclnn v1/V2 docs and the torch_npu v2 doc (dtype tables, reserved parameters, v2
parameter values), op-plugin ``GroupedMatmulSwigluQuantV2NpuOpapi.cpp`` / meta (one-element lists).
No CANN version boundaries are published for these limits: the rules hold for every version.

Weight forms accepted (see :func:`ascend_moe.sim.quant_gemm.weight_logical_dims`): int8 ``[E, K, N]``
tagged FRACTAL_NZ or its 5-D storage ``[E, N/32, K/16, 16, 32]``; int4 packed in int32 ``[E, K, N/8]``
(ND or NZ) or its 5-D storage ``[E, N/64, K/16, 16, 8]``; ml_dtypes int4 values ``[E, K, N]`` /
``[E, N/64, K/16, 16, 64]`` (NumPy only).  int8 weight means A8W8, int4/int32 means A8W4 (MSD).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import Call, register_op
from ..products import A2_A3
from ..sim.quant_gemm import weight_logical_dims

V1 = "npu_grouped_matmul_swiglu_quant"
V2 = "npu_grouped_matmul_swiglu_quant_v2"
HOST = "ops-transformer gmm/grouped_matmul_swiglu_quant/op_api/aclnn_grouped_matmul_swiglu_quant.cpp"
V2_DOC = "op-plugin docs/zh/custom_APIs/torch_npu/torch_npu-npu_grouped_matmul_swiglu_quant_v2.md"
V2_HOST = "op-plugin op_plugin/ops/opapi/GroupedMatmulSwigluQuantV2NpuOpapi.cpp and meta registration"

spec_v1 = register_op(V1, products=A2_A3,
                      source="aclnnGroupedMatmulSwigluQuantWeightNZ (torch_npu v1 always calls it)")
spec_v2 = register_op(V2, products=A2_A3,
                      source="aclnnGroupedMatmulSwigluQuantV2 / WeightNzV2")

A8W8_SCALE_DTYPES = ("float32", "float16", "bfloat16")
A8W4_SCALE_DTYPES = ("int64", "uint64", "float32")


# --------------------------------------------------------------------------------------------
# helpers (all tolerate missing / malformed arguments by returning None)
# --------------------------------------------------------------------------------------------

def _wdims(call: Call):
    """(E, K, N, kind, is_storage) of the weight, or None."""
    m = call.meta("weight")
    if m is None:
        return None
    return weight_logical_dims(m.shape, m.dtype)


def _kind(call: Call) -> Optional[str]:
    d = _wdims(call)
    return d[3] if d else None


def _is_nz(call: Call) -> bool:
    d = _wdims(call)
    m = call.meta("weight")
    return bool(d and (d[4] or m.format.startswith("FRACTAL_NZ")))


def _n(call: Call) -> Optional[int]:
    m = call.meta("weight_scale")
    return m.shape[-1] if m is not None and m.ndim >= 1 else None


def _k(call: Call) -> Optional[int]:
    m = call.meta("x")
    return m.shape[1] if m is not None and m.ndim == 2 else None


def _desc(call: Call, name: str) -> str:
    """'a <dtype> tensor of shape [...]' (or the value's type) for messages about an unwanted argument."""
    m = call.meta(name)
    if m is None:
        return f"{call[name]!r}"
    return f"a {m.dtype} tensor of shape {list(m.shape)}"


def _assist_name(call: Call) -> str:
    return "bias" if call.op == V1 else "weight_assist_matrix"


def _common_rules(spec, v2: bool) -> None:
    """The rules both ops share (v2 reads the first element of its one-element lists)."""
    p = "gmmsq_v2" if v2 else "gmmsq"

    @spec.rule(f"{p}.x_dtype_rank", argument="x", summary="x is a 2-D int8 tensor [M, K]",
               source=V2_DOC if v2 else HOST, fix="pass the per-token quantised activation as int8 [M, K]")
    def _(call):
        m = call.meta("x")
        if m is None:
            return f"x must be a tensor, got {type(call['x']).__name__}"
        errs = []
        if m.dtype != "int8":
            extra = " (A4W4 with int4 x is not modelled by ascend-moe)" if v2 and m.dtype in ("int32", "int4") else ""
            errs.append(f"x must be int8, got dtype {m.dtype}{extra}")
        if m.ndim != 2:
            errs.append(f"x must be 2-D [M, K], got shape {m.shape}")
        return errs

    @spec.rule(f"{p}.weight_form", argument="weight",
               summary="weight is int8 or int4 (int32-packed) [E, K, N] or 5-D NZ storage; its K equals x's K",
               source=HOST, fix="pass [E, K, N] (int8, or int4 packed 8 per int32 as [E, K, N/8]) or the NZ storage")
    def _(call):
        m = call.meta("weight")
        if m is None:
            return None  # v2 list length is its own rule; v1 None is caught by the binder
        if m.dtype not in ("int8", "int32", "int4"):
            return f"weight must be int8, int32 (packed int4) or int4, got dtype {m.dtype}"
        d = weight_logical_dims(m.shape, m.dtype)
        if d is None:
            return f"weight must be 3-D [E, K, N] or 5-D NZ storage, got shape {m.shape}"
        k = _k(call)
        if k is not None and d[1] != k:
            return f"weight K={d[1]} (shape {m.shape}) must equal x's K={k}"

    @spec.rule(f"{p}.a8w8_weight_nz", argument="weight",
               summary="an int8 (A8W8) weight must be FRACTAL_NZ",
               source=HOST + " (A8W8 requires format FRACTAL_NZ)",
               fix="cast it with ascend_moe.npu_format_cast(weight, 29) (torch_npu.npu_format_cast on NPU)")
    def _(call):
        m = call.meta("weight")
        if m is not None and _kind(call) == "int8" and not _is_nz(call):
            return f"int8 weight must be in FRACTAL_NZ format, got format {m.format} with shape {m.shape}"

    @spec.rule(f"{p}.nz_shape", argument="weight",
               summary="NZ weight storage is [E, N/32, K/16, 16, 32] (int8) / [E, N/64, K/16, 16, 64] (int4; "
                       "int32: [..., 8]), i.e. K % 16 == 0 and N % 32 (int8) / 64 (int4) == 0",
               source=HOST + " (weight NZ shape check); spec 2.6",
               fix="pad K to a multiple of 16 and N to a multiple of 32 (int8) / 64 (int4)")
    def _(call):
        m = call.meta("weight")
        d = _wdims(call)
        k, n = _k(call), _n(call)
        if m is None or d is None or not _is_nz(call) or k is None or n is None:
            return None
        c0 = 32 if d[3] == "int8" else 64
        last = {"int8": 32, "int4": 64, "int32": 8}[m.dtype]
        expect = (d[0], n // c0, k // 16, 16, last)
        if d[4]:
            if tuple(m.shape) != expect:
                return f"NZ weight storage shape must be {list(expect)} for K={k}, N={n}, got {list(m.shape)}"
        elif k % 16 or n % c0:
            return (f"FRACTAL_NZ weight needs K % 16 == 0 and N % {c0} == 0, got K={k}, N={n} "
                    f"(storage would be {list(expect)})")

    @spec.rule(f"{p}.n_even_max", argument="weight_scale", summary="N (weight_scale.shape[-1]) is even and <= 10240",
               source=HOST, fix="use an even N of at most 10240 (SwiGLU halves N)")
    def _(call):
        n = _n(call)
        if n is not None and (n % 2 or n > 10240 or n < 2):
            return f"N = weight_scale.shape[-1] must be even and in [2, 10240], got N={n}"

    @spec.rule(f"{p}.k_limit", argument="x", summary="A8W8: K < 65536; A8W4: K < 20000",
               source=HOST, fix="split K across calls (A8W8 K < 65536, A8W4 K < 20000)")
    def _(call):
        k, kind = _k(call), _kind(call)
        if k is None or kind is None:
            return None
        lim = 65536 if kind == "int8" else 20000
        if k >= lim:
            return f"{'A8W8' if kind == 'int8' else 'A8W4'} needs K < {lim}, got K={k}"

    @spec.rule(f"{p}.weight_scale", argument="weight_scale",
               summary="A8W8: float32/float16/bfloat16 [E, N]; A8W4: int64/uint64/float32 [E, N] or [E, G, N], "
                       "G divides K; N equals the weight's N",
               source=HOST + "; aclnn dtype tables (spec 2.2)",
               fix="pass one scale per expert and output channel ([E, N]; A8W4 per-group [E, K/group_size, N])")
    def _(call):
        m, d = call.meta("weight_scale"), _wdims(call)
        if m is None:
            return f"weight_scale must be a tensor, got {type(call['weight_scale']).__name__}"
        if d is None:
            return None
        E, K, N, kind, _s = d
        errs = []
        allowed = A8W8_SCALE_DTYPES if kind == "int8" else A8W4_SCALE_DTYPES
        if m.dtype not in allowed:
            errs.append(f"{'A8W8' if kind == 'int8' else 'A8W4'} weight_scale dtype must be one of {allowed}, "
                        f"got {m.dtype}")
        ranks = (2,) if kind == "int8" else (2, 3)
        if m.ndim not in ranks:
            errs.append(f"weight_scale must be {'[E, N]' if kind == 'int8' else '[E, N] or [E, G, N]'}, "
                        f"got shape {m.shape}")
        else:
            if m.shape[0] != E or m.shape[-1] != N:
                errs.append(f"weight_scale shape {m.shape} must be [E={E}, ..., N={N}] to match weight")
            if m.ndim == 3 and (m.shape[1] < 1 or K % m.shape[1]):
                errs.append(f"K={K} must be divisible by the number of scale groups G={m.shape[1]} "
                            f"(weight_scale shape {m.shape})")
        return errs

    @spec.rule(f"{p}.x_scale", argument="x_scale", summary="x_scale is float32 [M]",
               source=HOST, fix="pass the per-token dequant scale of x as float32 [M]")
    def _(call):
        m, xm = call.meta("x_scale"), call.meta("x")
        if m is None:
            return f"x_scale must be a tensor, got {type(call['x_scale']).__name__}"
        errs = []
        if m.dtype != "float32":
            errs.append(f"x_scale must be float32, got dtype {m.dtype}")
        if xm is not None and xm.ndim == 2 and tuple(m.shape) != (xm.shape[0],):
            errs.append(f"x_scale must have shape [M]=[{xm.shape[0]}], got {list(m.shape)}")
        return errs

    @spec.rule(f"{p}.group_list", argument="group_list", summary="group_list is int64 [G] with 1 <= G <= E",
               source=HOST + " (len(group_list) <= E)", fix="pass one int64 entry per expert")
    def _(call):
        m, d = call.meta("group_list"), _wdims(call)
        if m is None:
            return f"group_list must be a tensor, got {type(call['group_list']).__name__}"
        errs = []
        if m.dtype != "int64":
            errs.append(f"group_list must be int64, got dtype {m.dtype}")
        if m.ndim != 1:
            errs.append(f"group_list must be 1-D, got shape {m.shape}")
        elif m.shape[0] < 1 or (d is not None and m.shape[0] > d[0]):
            errs.append(f"group_list length must be in [1, E={d[0] if d else '?'}], got {m.shape[0]}")
        return errs

    @spec.rule(f"{p}.group_list_values", argument="group_list",
               summary="group_list entries >= 0; cumsum form non-decreasing; total rows <= M",
               source="aclnn docs (group_list semantics); device data, not host-checked", status=None,
               fix="pass token counts >= 0 (or a non-decreasing cumsum) whose total is at most M")
    def _(call):
        v, xm = call.values("group_list"), call.meta("x")
        if v is None or np.asarray(v).ndim != 1 or np.asarray(v).size == 0:
            return None
        v = np.asarray(v).astype(np.int64)
        gtype = call.get("group_list_type", 0) if v2 else 0
        errs = []
        if v.min() < 0:
            errs.append(f"group_list entries must be >= 0, got {v.tolist()}")
        if gtype == 0 and np.any(np.diff(v) < 0):
            errs.append(f"cumsum group_list must be non-decreasing, got {v.tolist()}")
        total = int(v[-1]) if gtype == 0 else int(v.sum())
        if xm is not None and xm.ndim == 2 and total > xm.shape[0]:
            errs.append(f"group_list total {total} exceeds M={xm.shape[0]} rows of x")
        return errs

    @spec.rule(f"{p}.assist", argument="bias" if not v2 else "weight_assist_matrix",
               summary="A8W4: the weight_assist_matrix (v1: passed as bias) is float32 [E, N]; A8W8: absent",
               source=HOST + "; aclnn v1/V2 docs (A8W4 weightAssistMatrix); a8w4_msd_post kernel adds it",
               fix="A8W4: pass 8 * sum_k(w * scale) as float32 [E, N]; A8W8: pass None")
    def _(call):
        name = _assist_name(call)
        kind, d = _kind(call), _wdims(call)
        if kind is None:
            return None
        given = call.given(name)
        if kind == "int8":
            if given:
                return f"{name} must be None for A8W8 (int8 weight), got {_desc(call, name)}"
            return None
        if not given:
            return f"{name} (the weight_assist_matrix) is required for A8W4, got None"
        if v2 and isinstance(call[name], (list, tuple)) and len(call[name]) != 1:
            return f"{name} must be a one-element list on A2/A3, got {len(call[name])} tensors"
        m = call.meta(name)
        if m is None:
            return f"{name} must be a tensor, got {type(call[name]).__name__}"
        errs = []
        if m.dtype != "float32":
            errs.append(f"{name} must be float32, got dtype {m.dtype}")
        if d is not None and tuple(m.shape) != (d[0], d[2]):
            errs.append(f"{name} must have shape [E, N]=[{d[0]}, {d[2]}], got {list(m.shape)}")
        return errs

    @spec.rule(f"{p}.experts_doc", argument="weight", summary="e in [1, 1024] (torch v2 doc)",
               source=V2_DOC, severity="warning", status=None, fix="use at most 1024 experts per call")
    def _(call):
        d = _wdims(call)
        if d is not None and not 1 <= d[0] <= 1024:
            return f"number of experts e must be in [1, 1024], got e={d[0]}"


_common_rules(spec_v1, v2=False)
_common_rules(spec_v2, v2=True)


@spec_v1.rule("gmmsq.offset", argument="offset", summary="offset is reserved and must be None",
              source="aclnnGroupedMatmulSwigluQuant doc (offset/outputOffset reserved)", fix="pass offset=None")
def _(call):
    if call.given("offset"):
        return f"offset is reserved (not supported) and must be None, got {_desc(call, 'offset')}"


# --------------------------------------------------------------------------------------------
# v2-only rules
# --------------------------------------------------------------------------------------------

@spec_v2.rule("gmmsq_v2.one_element_lists", argument="weight",
              summary="weight and weight_scale are one-element lists on A2/A3", source=V2_HOST,
              fix="wrap the single [E, K, N] weight and [E, N] scale in one-element lists")
def _(call):
    errs = []
    for name in ("weight", "weight_scale"):
        v = call[name]
        if isinstance(v, (list, tuple)):
            if len(v) != 1:
                errs.append(f"{name} must be a one-element list on A2/A3, got {len(v)} tensors")
        elif call.meta(name) is None:
            errs.append(f"{name} must be a list of one tensor, got {type(v).__name__}")
    return errs


@spec_v2.rule("gmmsq_v2.reserved_none", argument="bias",
              summary="bias and smooth_scale are reserved on A2/A3 (A8W8/A8W4) and must be None",
              source=V2_DOC + " (bias, smooth_scale: only the default None)", fix="pass bias=None, smooth_scale=None")
def _(call):
    return [f"{n} must be None on A2/A3, got {_desc(call, n)}" for n in ("bias", "smooth_scale") if call.given(n)]


@spec_v2.rule("gmmsq_v2.mx_dtype_args", argument="x_dtype",
              summary="x_dtype, weight_dtype, weight_scale_dtype, x_scale_dtype are for 950 MX formats: None on A2/A3",
              source=V2_HOST + " (MX mode keyed on weight_scale_dtype) [I]",
              fix="leave x_dtype/weight_dtype/weight_scale_dtype/x_scale_dtype as None")
def _(call):
    return [f"{n} must be None on A2/A3, got {call[n]!r}"
            for n in ("x_dtype", "weight_dtype", "weight_scale_dtype", "x_scale_dtype") if call[n] is not None]


@spec_v2.rule("gmmsq_v2.dequant_mode", argument="dequant_mode",
              summary="dequant_mode 0 (per-channel, scale [E, N]) or 1 (per-group, A8W4 only, scale [E, G, N])",
              source=V2_DOC, fix="use dequant_mode=0, or 1 with an int4 weight and [E, G, N] scales")
def _(call):
    mode, kind, sm = call["dequant_mode"], _kind(call), call.meta("weight_scale")
    if mode not in (0, 1):
        return f"dequant_mode must be 0 or 1 on A2/A3, got {mode!r}"
    if mode == 1 and kind == "int8":
        return "dequant_mode=1 (per-group) is only for A8W4 (int4 weight); int8 weight needs dequant_mode=0"
    if kind == "int4" and sm is not None and sm.ndim in (2, 3):
        if mode == 1 and sm.ndim != 3:
            return f"dequant_mode=1 needs a per-group weight_scale [E, G, N], got shape {sm.shape}"
        if mode == 0 and sm.ndim != 2:
            return f"dequant_mode=0 needs a per-channel weight_scale [E, N], got shape {sm.shape}"


@spec_v2.rule("gmmsq_v2.dequant_dtype", argument="dequant_dtype",
              summary="dequant_dtype is 0 (float32 intermediate; 6 = torch Float accepted too)",
              source=V2_DOC + "; op-plugin maps torch enum 6 -> 0", fix="use dequant_dtype=0")
def _(call):
    if call["dequant_dtype"] not in (0, 6):
        return f"dequant_dtype must be 0 (float32) on A2/A3, got {call['dequant_dtype']!r}"


@spec_v2.rule("gmmsq_v2.quant_mode", argument="quant_mode", summary="quant_mode is 0 (per-token)",
              source=V2_DOC, fix="use quant_mode=0")
def _(call):
    if call["quant_mode"] != 0:
        return f"quant_mode must be 0 (per-token) on A2/A3, got {call['quant_mode']!r}"


@spec_v2.rule("gmmsq_v2.quant_dtype", argument="quant_dtype",
              summary="quant_dtype means int8: 1 (yaml/meta default, torch Char) or 0 (doc's int8 code)",
              source=V2_DOC + " vs op_plugin_functions.yaml (spec section 4 item 10)",
              fix="use the default quant_dtype (int8)")
def _(call):
    if call["quant_dtype"] not in (0, 1):
        return f"quant_dtype must be int8 (1, or the doc's 0) on A2/A3, got {call['quant_dtype']!r}"


@spec_v2.rule("gmmsq_v2.group_list_type", argument="group_list_type", summary="group_list_type 0 (cumsum) or 1 (count)",
              source="aclnnGroupedMatmulSwigluQuantV2 doc", fix="use 0 (cumsum) or 1 (count)")
def _(call):
    if call["group_list_type"] not in (0, 1):
        return f"group_list_type must be 0 (cumsum) or 1 (count), got {call['group_list_type']!r}"


@spec_v2.rule("gmmsq_v2.tuning_config", argument="tuning_config",
              summary="tuning_config is None or a list of ints, the first (expected tokens per expert) >= 0",
              source=V2_DOC, fix="pass None or [expected_tokens_per_expert]")
def _(call):
    tc = call["tuning_config"]
    if tc is None:
        return None
    if not isinstance(tc, (list, tuple)) or not all(isinstance(i, (int, np.integer)) for i in tc):
        return f"tuning_config must be a list of ints, got {tc!r}"
    if tc and tc[0] < 0:
        return f"tuning_config[0] (expected tokens per expert) must be >= 0, got {tc[0]}"
