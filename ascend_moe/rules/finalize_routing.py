"""Rules of ``npu_grouped_matmul_finalize_routing`` (aclnnGroupedMatmulFinalizeRouting V1/V2/V3,
WeightNz, WeightNzV2) on Atlas A2/A3.  Spec: grouped-matmul-family.md 3.1, 3.2, 3.5, 3.6.

Severity policy (documented choice):

* what the host code (``aclnn_grouped_matmul_finalize_routing.cpp``) checks is an **error** with the
  status it returns (161001 null pointer, 161002 invalid parameter);
* what only the docs state (A8W4 k == 2048 / n == 7168, the WeightNz k/n lists, e <= 256,
  m <= 131072, batch <= 16384, bsdp <= 2048) is a **warning** (``ConstraintWarning``; an error under
  ``ASCEND_MOE_STRICT_DOCS=1``): the host accepts these calls and the kernel computes them;
* device-data conditions no host code checks but without which the result is not defined
  (group_list totals above m, decreasing cumsums, negative counts, row_index outside the output)
  are **errors with no aclnn status**: the device would read or write out of bounds, and the
  simulator refuses rather than invent a result.

Entry points: op-plugin calls ``WeightNzV2`` (fallback ``WeightNz``) for an NZ weight and ``V3``
(fallback ``V2``) otherwise; it never calls V1.  Which one a CANN release offers is not stated in
any public source: :func:`entry_point` assumes the V2-generation entry points (V3, WeightNzV2) from
CANN 8.3.RC1 and the fallbacks (V2, WeightNz) before - inferred: the V3/WeightNzV2 docs are already in
ops-transformer's first public commit (b122ed222, 2025-09-28), the period of the 8.3.RC1 release.
:data:`REQUIRED_INPUTS` records the null checks of all five entry points, V1 included.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import register_op
from ..products import A2_A3, CannVersion
from ..sim import finalize_routing as _sim

OP = "npu_grouped_matmul_finalize_routing"
HOST = "ops-transformer gmm/grouped_matmul_finalize_routing/op_api/aclnn_grouped_matmul_finalize_routing.cpp"
DOCS = "aclnnGroupedMatmulFinalizeRouting*/torch_npu npu_grouped_matmul_finalize_routing docs"
MX_950 = ("the Ascend 950 variants (V3 MXFP8/MXFP4, WeightNzV2 fp8/hifloat8 per-token and MxA8W4) are "
          "not available on Atlas A2/A3 and are not modelled by ascend-moe")

spec = register_op(OP, products=A2_A3,
                   source=f"{DOCS}; {HOST} (Atlas A2/A3 only; {MX_950})",
                   product_notes={"ascend-950": "the device has this op, but only its MX/fp8 variants, which "
                                                "ascend-moe does not model yet"})

# Entry points, the inputs each one requires (host null checks) [C] and the first release of each: the
# op declaration's aclnn table (ascend_moe.ops.finalize_routing.ACLNN), which the dispatcher reads too.
from ..ops.finalize_routing import DECL as _DECL, V2_GENERATION_SINCE as _V2_SINCE  # noqa: E402

REQUIRED_INPUTS = {_DECL.short_name(e): tuple(e.requires) for e in _DECL.aclnn}
V2_GENERATION_SINCE = CannVersion(_V2_SINCE)   # [I] release mapping of V3 / WeightNzV2
CUMSUM_SINCE = "8.5.0"                         # [I] commit 50e9ae990 (2025-12-22) -> first later release
# (products.KNOWN_RELEASES: 9.0.0 stands for 2026 master changes, so 8.5.0 is taken to carry late 2025)

M_MAX = 16 * 1024 * 8
E_MAX = 256
BATCH_MAX = 16 * 1024
BSDP_MAX = 2 * 1024


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def layout(call) -> Optional[_sim.WeightLayout]:
    meta = call.meta("w")
    if meta is None:
        return None
    return _sim.weight_layout(meta.shape, meta.dtype, meta.format)


def quant(call) -> Optional[str]:
    lay = layout(call)
    return lay.quant if lay is not None else None


def entry_point(call) -> Optional[str]:
    """The aclnn entry point torch_npu's dispatch would call for this call (see module doc)."""
    lay = layout(call)
    if lay is None:
        return None
    for e in _DECL.entries("finalize_nz" if lay.nz else "finalize"):  # op-plugin's preference order
        if e.since is None or not call.cann < CannVersion(e.since):
            return _DECL.short_name(e)
    return None


def _m(call) -> Optional[int]:
    s = call.shape("x")
    return s[0] if s is not None and len(s) == 2 else None


def _k(call) -> Optional[int]:
    s = call.shape("x")
    return s[1] if s is not None and len(s) == 2 else None


def _batch(call) -> Optional[int]:
    m = _m(call)
    ob = call["output_bs"] or 0
    return ob if ob else m


def _shape_msg(name: str, meta, want) -> Optional[str]:
    if meta is None:
        return None
    if tuple(meta.shape) != tuple(want):
        return f"{name} must have shape {list(want)}, got {name}.shape={list(meta.shape)}"
    return None


def _grouped_total(call) -> Optional[int]:
    gl = call.values("group_list")
    if gl is None:
        return None
    gl = np.asarray(gl, dtype=np.int64).reshape(-1)
    if gl.size == 0:
        return 0
    return int(gl.sum()) if call["group_list_type"] == 1 else int(gl[-1])


# --------------------------------------------------------------------------------------------
# inputs, dtypes, entry points
# --------------------------------------------------------------------------------------------


@spec.rule("gmmfr.x_dtype", argument="x", summary="x is int8", source=HOST,
           fix="quantise the activations to int8 (A8W8 / A8W4)")
def _(call):
    dt = call.dtype("x")
    if dt is not None and dt != "int8":
        extra = f"; {MX_950}" if dt.startswith("float8") else ""
        return f"x must be int8 on Atlas A2/A3, got x.dtype={dt}{extra}"


@spec.rule("gmmfr.x_rank", argument="x", summary="x is 2-D [m, k]", source=HOST,
           fix="pass x as a 2-D [m, k] tensor")
def _(call):
    s = call.shape("x")
    if s is not None and len(s) != 2:
        return f"x must be 2-D [m, k], got x.shape={list(s)}"


@spec.rule("gmmfr.w_dtype", argument="w",
           summary="w is int8 (A8W8, NZ) or int32 holding 8 int4 values (A8W4)", source=HOST,
           fix="pass an int8 FRACTAL_NZ weight (A8W8) or int4 packed into int32 (A8W4)")
def _(call):
    dt = call.dtype("w")
    if dt is not None and dt not in ("int8", "int32"):
        extra = f"; {MX_950}" if dt.startswith("float") else ""
        return f"w must be int8 (A8W8) or int32 packing int4 (A8W4), got w.dtype={dt}{extra}"


@spec.rule("gmmfr.w_rank", argument="w",
           summary="w is 3-D [e, k, n] (int32: [e, k, n/8]) or its 5-D NZ storage", source=HOST,
           fix="pass w as [e, k, n] (tag it FRACTAL_NZ with npu_format_cast) or as its 5-D NZ storage")
def _(call):
    s = call.shape("w")
    if s is not None and len(s) not in (3, 5):
        return f"w must be 3-D [e, k, n] or 5-D NZ storage, got w.shape={list(s)}"


@spec.rule("gmmfr.dtype_args_950", argument="x_dtype",
           summary="x_dtype/w_dtype/scale_dtype/pertoken_scale_dtype are None (950 MX only)",
           source="op_plugin_functions.yaml; " + HOST, fix="leave x_dtype, w_dtype, scale_dtype and "
           "pertoken_scale_dtype unset on Atlas A2/A3")
def _(call):
    given = [f"{a}={call[a]}" for a in ("x_dtype", "w_dtype", "scale_dtype", "pertoken_scale_dtype")
             if call.get(a) is not None]
    if given:
        return f"{', '.join(given)} given: these select {MX_950}"


@spec.rule("gmmfr.w_format_a8w8", argument="w", summary="an int8 (A8W8) weight is FRACTAL_NZ",
           source=HOST + " (ND weights go to V3/V2, which accept only int32 (int4) weights on A2/A3)",
           fix="cast the int8 weight to FRACTAL_NZ: ascend_moe.npu_format_cast(w, 29)")
def _(call):
    lay = layout(call)
    if lay is not None and lay.quant == "a8w8" and not lay.nz:
        return (f"an int8 weight must be FRACTAL_NZ (A8W8 runs only through WeightNz/WeightNzV2), "
                f"got w in ND format with w.shape={list(call.shape('w'))}")


@spec.rule("gmmfr.w_nz_storage", argument="w",
           summary="5-D NZ storage is [e, n/32, k/16, 16, 32] (int8) or [e, n/64, k/16, 16, 8] (int32)",
           source=HOST + " GetWeightNzShape/CheckWeightNzStorageShape/CheckShapeForWeightNz",
           fix="build the storage with ascend_moe.sim.nd_to_nz or pass the logical weight tagged NZ")
def _(call):
    lay = layout(call)
    if lay is None or not lay.storage_5d or lay.quant is None:
        return None
    s = tuple(call.shape("w"))
    want_tail = (16, 8) if lay.quant == "a8w4" else (16, 32)
    if s[3:] != want_tail:
        return (f"w NZ storage must end in {list(want_tail)} for a {call.dtype('w')} weight, "
                f"got w.shape={list(s)}")
    k = _k(call)
    if k is not None and -(-k // 16) != s[2]:
        return f"w NZ storage k1={s[2]} does not match x's k={k} (k1 must be ceil(k/16)={-(-k // 16)})"


@spec.rule("gmmfr.required_inputs", argument="(inputs)", status=161001,
           summary="inputs each entry point requires (V1/V2: scale, pertoken_scale, logit, row_index, "
                   "bias; V3: scale, pertoken_scale, logit, row_index; WeightNz/WeightNzV2: scale, "
                   "logit, row_index, and pertoken_scale for int4)", source=HOST,
           fix="pass every required input")
def _(call):
    ep = entry_point(call)
    if ep is None:
        return None
    need = list(REQUIRED_INPUTS[ep])
    if ep == "WeightNzV2" and quant(call) == "a8w4":
        need.append("pertoken_scale")
    missing = [a for a in need if not call.given(a)]
    if missing:
        return [f"{a} is required by aclnnGroupedMatmulFinalizeRouting{'' if ep == 'V1' else ep} "
                f"(the entry point for this call), got {a}=None" for a in missing]


@spec.rule("gmmfr.a8w4_bias_required", argument="bias", status=161001,
           summary="A8W4 needs bias = 8 * sum_k(w * scale) (fp32 [e, n])",
           source=HOST + " CheckW4orW8DimValue reads bias's shape unconditionally for int4 weights "
                  "(V3/WeightNzV2 declare it optional; a null bias is not supported) [I]; docs: bias is the "
                  "offline auxiliary result 8*w*scale summed over k",
           fix="pass bias = 8 * (w * scale).sum(k) as fp32 [e, n]")
def _(call):
    if quant(call) == "a8w4" and not call.given("bias"):
        return "bias is required for A8W4 (the MSD -8 offset correction 8*sum_k(w*scale)), got bias=None"


@spec.rule("gmmfr.int4_nz_needs_v2", argument="w", until=str(V2_GENERATION_SINCE),
           summary="int4 NZ weights need aclnnGroupedMatmulFinalizeRoutingWeightNzV2",
           source="aclnnGroupedMatmulFinalizeRoutingWeightNzV2 doc ('新增对INT4类型weight矩阵的支持'); "
                  "release mapping inferred", fix="use an ND int32 weight, or CANN >= 8.3.RC1")
def _(call):
    lay = layout(call)
    if lay is not None and lay.quant == "a8w4" and lay.nz:
        return (f"an int4 (int32) FRACTAL_NZ weight needs WeightNzV2, not available on CANN {call.cann}; "
                f"got w.dtype=int32 in NZ format")


@spec.rule("gmmfr.offset_entry", argument="offset", until=str(V2_GENERATION_SINCE),
           summary="WeightNz has no offset input",
           source="aclnnGroupedMatmulFinalizeRoutingWeightNz prototype; release mapping inferred",
           fix="drop offset, or use an ND int32 weight (V2) / CANN >= 8.3.RC1")
def _(call):
    lay = layout(call)
    if call.given("offset") and lay is not None and lay.nz:
        return f"offset is given but aclnnGroupedMatmulFinalizeRoutingWeightNz has no offset input (CANN {call.cann})"


@spec.rule("gmmfr.offset_a8w8_ignored", argument="offset", severity="warning", status=None,
           summary="offset is reserved (ignored) for A8W8",
           source="aclnnGroupedMatmulFinalizeRoutingWeightNzV2 doc (offset '预留参数，暂不生效')",
           fix="drop offset for int8 weights")
def _(call):
    if quant(call) == "a8w8" and call.given("offset"):
        return "offset is given for an int8 (A8W8) weight; the kernel ignores it (offset=<tensor>)"


@spec.rule("gmmfr.dtype", argument="dtype", summary="dtype is None or float32 (aclnn dtype 0)",
           source=HOST + " ('dtype must be 0'); op-plugin meta", fix="leave dtype=None (fp32 output)")
def _(call):
    dt = call["dtype"]
    if dt is None:
        return None
    from ..sim.numerics import dtype_name
    try:
        name = dtype_name(dt)
    except ValueError:
        name = str(dt)
    if name != "float32":
        return f"dtype must be None or float32 (the output is always fp32), got dtype={dt}"


@spec.rule("gmmfr.no_transposed_views", argument="x",
           summary="x and an ND w are not transposed views (transpose flags must be false)",
           source=HOST + " ('transpose should be false'; a transposed view flips the flag after that "
                  "check and A2/A3 kernels support only false) [I]",
           fix="pass contiguous x and w (.contiguous())")
def _(call):
    out = []
    for name in ("x", "w"):
        meta = call.meta(name)
        if meta is None or meta.ndim not in (2, 3) or (name == "w" and meta.format != "ND"):
            continue
        if meta.is_transposed_last_two():
            out.append(f"{name} is a transposed view (shape={list(meta.shape)}, strides={list(meta.strides)}); "
                       f"the transpose flags must be false on Atlas A2/A3")
    return out


# --------------------------------------------------------------------------------------------
# shapes and sizes
# --------------------------------------------------------------------------------------------


@spec.rule("gmmfr.k_match", argument="w", summary="x's k equals w's k", source=HOST,
           fix="use a weight whose k matches x.shape[1]")
def _(call):
    lay, k = layout(call), _k(call)
    if lay is not None and k is not None and not lay.storage_5d and lay.k != k:
        return f"x's k={k} must equal w's k={lay.k} (w.shape={list(call.shape('w'))})"


@spec.rule("gmmfr.kn_align_a8w8", argument="w", summary="A8W8: k % 16 == 0, n % 32 == 0, n >= 256",
           source=HOST + " CheckShape", fix="pad k to a multiple of 16 and n to a multiple of 32 (n >= 256)")
def _(call):
    lay = layout(call)
    if lay is None or lay.quant != "a8w8":
        return None
    if lay.k % 16 or lay.n % 32 or lay.n < 256:
        return f"A8W8 needs k % 16 == 0, n % 32 == 0 and n >= 256, got k={lay.k}, n={lay.n}"


@spec.rule("gmmfr.kn_align_a8w4", argument="w",
           summary="A8W4: k % 64 == 0, k > 128, n % 8 == 0 (ND) or n % 64 == 0 (NZ), n > 64",
           source=HOST + " CheckShape", fix="use k a multiple of 64 above 128 and n a multiple of 8 (64 for NZ) above 64")
def _(call):
    lay = layout(call)
    if lay is None or lay.quant != "a8w4":
        return None
    na = 64 if lay.nz else 8
    if lay.k % 64 or lay.k <= 128 or lay.n % na or lay.n <= 64:
        return (f"A8W4 ({'NZ' if lay.nz else 'ND'}) needs k % 64 == 0, k > 128, n % {na} == 0 and n > 64, "
                f"got k={lay.k}, n={lay.n}")


@spec.rule("gmmfr.kn_doc_a8w4", argument="w", severity="warning", status=None,
           summary="docs: A8W4 supports only k == 2048 and n == 7168",
           source="aclnnGroupedMatmulFinalizeRouting/V2/V3/WeightNzV2 docs and torch doc ('k支持2048，n只支持7168'); "
                  "the host checks only alignment (spec 3.6)", fix="use k=2048, n=7168 for a documented shape")
def _(call):
    lay = layout(call)
    if lay is not None and lay.quant == "a8w4" and (lay.k != 2048 or lay.n != 7168):
        return f"the docs list only k=2048, n=7168 for A8W4, got k={lay.k}, n={lay.n}"


@spec.rule("gmmfr.kn_doc_a8w8", argument="w", severity="warning", status=None,
           summary="docs (WeightNz): k in {256, 512, 1024, 1408, 2048}, n in {2048, 7168, 7680}",
           source="aclnnGroupedMatmulFinalizeRoutingWeightNz doc; the host checks only alignment (spec 3.6)",
           fix="use a documented k and n")
def _(call):
    lay = layout(call)
    if lay is not None and lay.quant == "a8w8" and (
            lay.k not in (256, 512, 1024, 1408, 2048) or lay.n not in (2048, 7168, 7680)):
        return (f"the WeightNz doc lists k in {{256, 512, 1024, 1408, 2048}} and n in {{2048, 7168, 7680}}, "
                f"got k={lay.k}, n={lay.n}")


@spec.rule("gmmfr.not_empty", argument="x", summary="no empty tensors (m, k, e, n >= 1)",
           source=HOST + " CheckShape/CheckEmptyTensor", fix="skip the call when there are no tokens")
def _(call):
    out = []
    for name in ("x", "w", "scale", "group_list", "logit", "row_index", "pertoken_scale", "shared_input"):
        meta = call.meta(name)
        if meta is not None and meta.numel == 0:
            out.append(f"{name} must not be empty, got {name}.shape={list(meta.shape)}")
    return out


@spec.rule("gmmfr.m_max", argument="x", severity="warning", status=None,
           summary="docs: m in [1, 131072]", source=DOCS + " (not checked by the host)",
           fix="split the call into chunks of at most 131072 rows")
def _(call):
    m = _m(call)
    if m is not None and m > M_MAX:
        return f"the docs allow m <= {M_MAX}, got m={m} (x.shape[0])"


@spec.rule("gmmfr.e_max", argument="w", severity="warning", status=None,
           summary="docs: e in [1, 256]", source=DOCS + " (the host checks only len(group_list) == e)",
           fix="use at most 256 experts per call")
def _(call):
    lay = layout(call)
    if lay is not None and lay.e > E_MAX:
        return f"the docs allow e <= {E_MAX}, got e={lay.e} (w.shape[0])"


@spec.rule("gmmfr.scale", argument="scale",
           summary="scale: A8W8 fp32/bf16 [e, n]; A8W4 int64 [e, 1, n] (fp32 bits in the low word)",
           source=HOST + " CheckDtypeValid/CheckDimRange/CheckW4orW8DimValue",
           fix="A8W8: fp32 [e, n]; A8W4: int64 [e, 1, n] (ascend_moe.sim.encode_int64_scale)")
def _(call):
    lay, meta = layout(call), call.meta("scale")
    if lay is None or meta is None or lay.quant is None:
        return None
    if lay.quant == "a8w8":
        if meta.dtype not in ("float32", "bfloat16"):
            return f"A8W8 scale must be float32 or bfloat16, got scale.dtype={meta.dtype}"
        return _shape_msg("scale", meta, (lay.e, lay.n))
    if meta.dtype != "int64":
        return f"A8W4 scale must be int64 (fp32 bits in the low 32 bits), got scale.dtype={meta.dtype}"
    return _shape_msg("scale", meta, (lay.e, 1, lay.n))


@spec.rule("gmmfr.bias", argument="bias", summary="bias: A8W8 bf16 [e, n]; A8W4 fp32 [e, n]",
           source=HOST + " CheckDtypeValid/CheckW4orW8DimValue", fix="A8W8: bf16 [e, n]; A8W4: fp32 [e, n]")
def _(call):
    lay, meta = layout(call), call.meta("bias")
    if lay is None or meta is None or lay.quant is None:
        return None
    want = "bfloat16" if lay.quant == "a8w8" else "float32"
    if meta.dtype != want:
        return f"{lay.quant.upper()} bias must be {want}, got bias.dtype={meta.dtype}"
    return _shape_msg("bias", meta, (lay.e, lay.n))


@spec.rule("gmmfr.offset", argument="offset", summary="A8W4 offset: fp32 [e, 1, n]",
           source=HOST + " CheckDtypeValid/CheckW4orW8DimValue", fix="pass offset = antiquant_offset * scale as fp32 [e, 1, n]")
def _(call):
    lay, meta = layout(call), call.meta("offset")
    if lay is None or meta is None or lay.quant != "a8w4":
        return None
    if meta.dtype != "float32":
        return f"A8W4 offset must be float32, got offset.dtype={meta.dtype}"
    return _shape_msg("offset", meta, (lay.e, 1, lay.n))


@spec.rule("gmmfr.pertoken_scale", argument="pertoken_scale", summary="pertoken_scale: fp32 [m]",
           source=HOST, fix="pass pertoken_scale as fp32 [m]")
def _(call):
    meta, m = call.meta("pertoken_scale"), _m(call)
    if meta is None:
        return None
    if meta.dtype != "float32":
        return f"pertoken_scale must be float32, got pertoken_scale.dtype={meta.dtype}"
    if m is not None:
        return _shape_msg("pertoken_scale", meta, (m,))


@spec.rule("gmmfr.logit", argument="logit", summary="logit: fp32 [m]", source=HOST,
           fix="pass logit (the routing weights of the rows of x) as fp32 [m]")
def _(call):
    meta, m = call.meta("logit"), _m(call)
    if meta is None:
        return None
    if meta.dtype != "float32":
        return f"logit must be float32, got logit.dtype={meta.dtype}"
    if m is not None:
        return _shape_msg("logit", meta, (m,))


@spec.rule("gmmfr.row_index", argument="row_index",
           summary="row_index: [m], int64 (A8W4) or int64/int32 (A8W8)",
           source=HOST + " ROW_INDEX_TYPE_SUPPORT_LIST / W4A8_ROW_INDEX_TYPE_SUPPORT_LIST (spec 3.5: the "
                  "FLOAT32 of the first docs was an error)", fix="pass row_index as int64 [m]")
def _(call):
    meta, m = call.meta("row_index"), _m(call)
    if meta is None:
        return None
    allowed = ("int64",) if quant(call) == "a8w4" else ("int64", "int32")
    if meta.dtype not in allowed:
        return f"row_index must be {' or '.join(allowed)} for this weight, got row_index.dtype={meta.dtype}"
    if m is not None:
        return _shape_msg("row_index", meta, (m,))


@spec.rule("gmmfr.row_index_range", argument="row_index", status=None,
           summary="row_index values of grouped rows lie in [0, output_bs or m)",
           source="not checked by the host (device data): the kernel would scatter out of bounds [I]",
           fix="keep every row_index[t] for t < sum(group_list) in [0, output_bs or m)")
def _(call):
    rows, total, batch = call.values("row_index"), _grouped_total(call), _batch(call)
    if rows is None or total is None or batch is None:
        return None
    r = np.asarray(rows).reshape(-1)[:max(0, min(total, np.asarray(rows).size))]
    bad = np.flatnonzero((r < 0) | (r >= batch))
    if bad.size:
        t = int(bad[0])
        return (f"row_index[{t}]={int(r[t])} is outside [0, {batch}) (batch = output_bs or m); "
                f"{bad.size} grouped row(s) out of range")


@spec.rule("gmmfr.group_list", argument="group_list", summary="group_list: int64 1-D [e]",
           source=HOST, fix="pass group_list as int64 [e]")
def _(call):
    meta, lay = call.meta("group_list"), layout(call)
    if meta is None:
        return None
    if meta.dtype != "int64":
        return f"group_list must be int64, got group_list.dtype={meta.dtype}"
    if meta.ndim != 1:
        return f"group_list must be 1-D, got group_list.shape={list(meta.shape)}"
    if lay is not None and meta.shape[0] != lay.e:
        return f"group_list must have e={lay.e} entries (w.shape[0]), got group_list.shape={list(meta.shape)}"


@spec.rule("gmmfr.group_list_values", argument="group_list", status=None,
           summary="counts >= 0 / cumsum non-decreasing and >= 0; total <= m",
           source="NzV2 and torch docs ('总和要求≤m'); not checked by the host (device data): beyond it the "
                  "kernel reads past x", fix="pass per-expert token counts (or their cumsum) summing to at most m")
def _(call):
    gl, m = call.values("group_list"), _m(call)
    if gl is None or m is None or call["group_list_type"] not in (0, 1):
        return None
    gl = np.asarray(gl, dtype=np.int64).reshape(-1)
    if gl.size == 0:
        return None
    if call["group_list_type"] == 1:
        if (gl < 0).any():
            i = int(np.flatnonzero(gl < 0)[0])
            return f"group_list counts must be >= 0, got group_list[{i}]={int(gl[i])}"
        total = int(gl.sum())
    else:
        if gl[0] < 0 or (np.diff(gl) < 0).any():
            return f"a cumsum group_list must be non-negative and non-decreasing, got group_list={gl.tolist()}"
        total = int(gl[-1])
    if total > m:
        return f"the group_list total {total} exceeds m={m} (x.shape[0]), got group_list={gl.tolist()}"


@spec.rule("gmmfr.group_list_type", argument="group_list_type", summary="group_list_type in {0, 1}",
           source=HOST, fix="pass 1 (counts, the default) or 0 (cumsum)")
def _(call):
    if call["group_list_type"] not in (0, 1):
        return f"group_list_type must be 0 (cumsum) or 1 (count), got group_list_type={call['group_list_type']}"


@spec.rule("gmmfr.group_list_type_count_only", argument="group_list_type", until=CUMSUM_SINCE,
           summary="before the 2025-12-22 host change only group_list_type=1 (count) is accepted",
           source="ops-transformer b122ed222..50e9ae990 ('groupListType is 1' check), changed 2025-12-22; "
                  "mapping to CANN 8.5.0 inferred", fix="pass counts with group_list_type=1")
def _(call):
    if call["group_list_type"] == 0:
        return f"group_list_type=0 (cumsum) is rejected by the host on CANN {call.cann}; only 1 (count) is accepted"


@spec.rule("gmmfr.output_bs", argument="output_bs", summary="0 <= output_bs <= m",
           source=HOST + " CheckShape/CheckDimValue ('outputBS should be less than or equal to x MDim')",
           fix="pass output_bs between 0 (= m) and m")
def _(call):
    ob, m = call["output_bs"] or 0, _m(call)
    if ob < 0 or (m is not None and ob > m):
        return f"output_bs must satisfy 0 <= output_bs <= m={m}, got output_bs={ob}"


@spec.rule("gmmfr.batch_doc", argument="output_bs", severity="warning", status=None,
           summary="docs: batch in [1, 16384], batch/dp in [1, 2048]", source=DOCS + " (not checked by the host)",
           fix="keep output_bs <= 16384 and the shared-expert rows <= 2048")
def _(call):
    out = []
    batch = _batch(call)
    if batch is not None and batch > BATCH_MAX:
        out.append(f"the docs allow batch <= {BATCH_MAX}, got batch={batch} (output_bs or m)")
    s = call.shape("shared_input")
    if s is not None and len(s) == 2 and s[0] > BSDP_MAX:
        out.append(f"the docs allow batch/dp <= {BSDP_MAX}, got shared_input.shape[0]={s[0]}")
    return out


@spec.rule("gmmfr.shared_input", argument="shared_input", summary="shared_input: bf16 [bsdp, n]",
           source=HOST, fix="pass the shared expert's output as bf16 [bsdp, n]")
def _(call):
    meta, lay = call.meta("shared_input"), layout(call)
    if meta is None:
        return None
    if meta.dtype != "bfloat16":
        return f"shared_input must be bfloat16, got shared_input.dtype={meta.dtype}"
    if meta.ndim != 2:
        return f"shared_input must be 2-D [bsdp, n], got shared_input.shape={list(meta.shape)}"
    if lay is not None and meta.shape[1] != lay.n:
        return f"shared_input must have n={lay.n} columns, got shared_input.shape={list(meta.shape)}"


@spec.rule("gmmfr.shared_input_offset", argument="shared_input_offset",
           summary="shared_input_offset >= 0 and shared_input_offset + bsdp <= batch",
           source=HOST + " CheckShape/CheckDimValue", fix="place the shared rows inside the output")
def _(call):
    off, batch = call["shared_input_offset"] or 0, _batch(call)
    if off < 0:
        return f"shared_input_offset must be >= 0, got shared_input_offset={off}"
    s = call.shape("shared_input")
    bsdp = s[0] if s is not None and len(s) == 2 else 0
    if batch is not None and off + bsdp > batch:
        return (f"shared_input_offset + bsdp must be <= batch={batch} (output_bs or m), got "
                f"shared_input_offset={off}, bsdp={bsdp} (shared_input.shape[0])")


@spec.rule("gmmfr.tuning_config", argument="tuning_config", summary="tuning_config[0] in [0, m]",
           source=HOST + " CheckTuningConfig", fix="pass the expected tokens per expert, between 0 and m")
def _(call):
    tc, m = call["tuning_config"], _m(call)
    if not tc or m is None or entry_point(call) not in ("V3", "WeightNzV2"):
        return None
    if not 0 <= int(tc[0]) <= m:
        return f"tuning_config[0] must lie in [0, m={m}], got tuning_config={list(tc)}"
