"""Rules of the quantised forms of ``npu_grouped_matmul`` on Atlas A2/A3 (spec moe-quant-path 4.2-4.8).

The quantised forms are declared here as the op ``npu_grouped_matmul_quant``, with npu_grouped_matmul's own
argument list, so they can be checked and tested on their own; :func:`is_quant_call` tells which calls of
``npu_grouped_matmul`` belong to them (x or weight int8/int4/int32, or a quantisation argument given), and
:func:`quant_rules` lists the rules, so that ``npu_grouped_matmul`` can take them over for those calls.

Forms (x dtype / weight dtype): **A8W8** int8 / int8; **A8W4** int8 / int4 (or int4 packed 8 per int32);
**A16W8** fp16|bf16 / int8; **A16W4** fp16|bf16 / int4|int32.  A4W4 (int4 x), fp8/hifloat8 and MX forms
are not modelled.  Weights are one ``[E, K, N]`` tensor (a one-element list), ND or FRACTAL_NZ (a tag or the
5-D storage).

Sources: ops-transformer ``gmm/grouped_matmul/docs/aclnnGroupedMatmulV4.md`` (the per-form dtype/shape
tables: doc-level, warnings unless the simulator needs the shape), ``op_host/op_api/aclnn_grouped_matmul.cpp``
(NZ shape checks, GMF 1.9), op-plugin ``GroupedMatmulKernelNpuOpApi.cpp`` (output dtype, int32 weight -> 8 N),
and the mixcore kernel ``grouped_matmul_quant_mixcore.h`` (a float bias is read only in the per-token step).
Rules with status None are refusals of the simulator (forms or arguments it does not model, or inputs it
cannot read), not device statuses.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import numpy as np

from . import Call, register_op
from ..products import A2_A3
from ..sim.quant_gemm import weight_logical_dims

SRC_DOC = "ops-transformer gmm/grouped_matmul/docs/aclnnGroupedMatmulV4.md (quantised-case tables)"
SRC_HOST = "ops-transformer gmm/grouped_matmul/op_host/op_api/aclnn_grouped_matmul.cpp"
SRC_PLUGIN = "op-plugin op_plugin/ops/opapi/GroupedMatmulKernelNpuOpApi.cpp"
SRC_KERNEL = "ops-transformer gmm/grouped_matmul/op_kernel/grouped_matmul_quant_mixcore.h"

INT_W = ("int8", "int4", "int32")
OUTPUT_CODES = {1: "int8", 3: "int32", 5: "float16", 6: "float32", 15: "bfloat16"}

spec = register_op("npu_grouped_matmul_quant", products=A2_A3, binds_as="npu_grouped_matmul",
                   source="aclnnGroupedMatmulV4 / V5 / WeightNz (quantised forms)",
                   product_notes={"ascend-950": "the 950 quantised grouped-matmul kernels are not modelled",
                                  "atlas-inference": "the 310P quantised grouped matmul is not modelled"})


# --------------------------------------------------------------------------------------------
# the call's form
# --------------------------------------------------------------------------------------------

def _x(call: Call):
    ms = call.metas("x")
    return ms[0] if len(ms) == 1 else None


def _w(call: Call):
    ms = call.metas("weight")
    return ms[0] if len(ms) == 1 else None


def weight_dims(call: Call):
    """(E, K, N, kind, is_storage) of the single integer weight, or None."""
    w = _w(call)
    if w is None or w.dtype not in INT_W:
        return None
    return weight_logical_dims(w.shape, w.dtype)


def form(call: Call) -> Optional[str]:
    """"A8W8", "A8W4", "A16W8", "A16W4", another string for unmodelled forms, or None (not quantised)."""
    x, w = _x(call), _w(call)
    if x is None or w is None:
        return None
    if x.dtype == "int8" and w.dtype == "int8":
        return "A8W8"
    if x.dtype == "int8" and w.dtype in ("int4", "int32"):
        return "A8W4"
    if x.dtype in ("float16", "bfloat16") and w.dtype == "int8":
        return "A16W8"
    if x.dtype in ("float16", "bfloat16") and w.dtype in ("int4", "int32"):
        return "A16W4"
    if x.dtype in INT_W or w.dtype in INT_W or "float8" in x.dtype or "float8" in w.dtype:
        return f"x {x.dtype} / weight {w.dtype}"
    return None


def is_quant_call(call: Call) -> bool:
    """True when the call takes a quantised path: an integer (or fp8) x or weight.  Quantisation arguments
    with float x and weight are not a quantised form; npu_grouped_matmul's own rules reject them."""
    dts = [m.dtype for m in call.metas("x") + call.metas("weight")]
    return any(d in INT_W or "float8" in d for d in dts)


def output_name(call: Call) -> Optional[str]:
    od = call.get("output_dtype")
    x = _x(call)
    if od is None:
        return x.dtype if x is not None else None
    if isinstance(od, (int, np.integer)) and not isinstance(od, bool):
        return OUTPUT_CODES.get(int(od), f"code {int(od)}")
    return str(getattr(od, "dtype", od)).replace("torch.", "")


def _meta_list(call: Call, name: str):
    ms = call.metas(name)
    return ms[0] if len(ms) == 1 else None


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------

_RULES: List[Any] = []


def _rule(id: str, argument: str, summary: str, **kw) -> Callable:
    def deco(fn):
        spec.rule(id, argument, summary, **kw)(fn)
        _RULES.append(spec.rules[-1])
        return fn
    return deco


def quant_rules():
    """The rules of the quantised forms (for npu_grouped_matmul to apply to calls :func:`is_quant_call` accepts)."""
    return list(_RULES)


@_rule("gmmq.form", "weight", "the form is A8W8, A8W4, A16W8 or A16W4 with one x and one weight tensor",
       source=SRC_DOC, status=None, fix="pass x=[x] and weight=[w] (one tensor each) in a modelled form")
def _(call):
    xs, ws = call.metas("x"), call.metas("weight")
    if len(xs) != 1 or len(ws) != 1:
        return (f"the quantised forms take one x and one weight tensor, got {len(xs)} x and {len(ws)} weight "
                f"tensors")
    f = form(call)
    if f is None:
        return f"x {xs[0].dtype} / weight {ws[0].dtype} is not a quantised form"
    if f not in ("A8W8", "A8W4", "A16W8", "A16W4"):
        return f"{f} (A4W4, fp8, MX) is not modelled by ascend-moe"
    if weight_dims(call) is None:
        return f"weight shape {list(ws[0].shape)} is neither [E, K, N] nor the 5-D NZ storage"


@_rule("gmmq.layout", "x", "x is 2-D [M, K] and not transposed; the weight's K equals x's K; group_type 0; "
       "split_item 2 or 3 (one output)", source=SRC_DOC + " (A8W8/A8W4: group_type 0, single x/weight/y)",
       status=None, fix="pass x [M, K], weight [E, K, N], group_type=0, split_item=2 or 3")
def _(call):
    x, d = _x(call), weight_dims(call)
    if x is None or d is None:
        return None
    errs = []
    if x.ndim != 2:
        errs.append(f"x must be 2-D [M, K], got shape {list(x.shape)}")
    elif x.is_transposed_last_two():
        errs.append("x must not be a transposed view")
    elif d[1] != x.shape[1]:
        errs.append(f"weight K={d[1]} differs from x's K={x.shape[1]}")
    if call.get("group_type") != 0:
        errs.append(f"group_type must be 0 (M split), got {call.get('group_type')!r}")
    if call.get("split_item") not in (2, 3):
        errs.append(f"split_item must be 2 or 3 (one output tensor), got {call.get('split_item')!r}")
    return errs


@_rule("gmmq.group_list", "group_list", "group_list is a 1-D int64 tensor of at most E entries, type 0 or 1",
       source=SRC_DOC + "; GMF 1.3", status=None,
       fix="pass group_list as int64 cumsum (group_list_type=0) or counts (1); type 2 (sparse) is not modelled")
def _(call):
    gl, d = call.meta("group_list"), weight_dims(call)
    if call.get("group_list") is None:
        return "group_list is required for the M-split quantised forms"
    errs = []
    if gl is None or isinstance(call.get("group_list"), (list, tuple)):
        errs.append("group_list must be a tensor (the quantised forms use the Tensor overload)")
    else:
        if gl.ndim != 1 or gl.dtype != "int64":
            errs.append(f"group_list must be 1-D int64, got {gl.dtype}{list(gl.shape)}")
        if d is not None and gl.ndim == 1 and gl.shape[0] > d[0]:
            errs.append(f"group_list has {gl.shape[0]} groups but the weight has E={d[0]}")
    if call.get("group_list_type") not in (0, 1):
        errs.append(f"group_list_type must be 0 or 1, got {call.get('group_list_type')!r}")
    return errs


@_rule("gmmq.group_values", "group_list", "group_list values: non-negative, non-decreasing cumsum, total <= M",
       source="GMF 1.3 (values never validated on the device: rows past M would be read out of bounds)",
       status=None, fix="pass counts or a cumsum whose total is at most x's rows")
def _(call):
    v, x = call.values("group_list"), _x(call)
    if v is None or x is None or x.ndim != 2 or np.asarray(v).ndim != 1:
        return None
    v = np.asarray(v).astype(np.int64)
    if v.size and v.min() < 0:
        return f"group_list has negative entries: {v.tolist()[:16]}"
    ends = np.cumsum(v) if call.get("group_list_type") == 1 else v
    if ends.size > 1 and np.any(np.diff(ends) < 0):
        return f"cumsum group_list must be non-decreasing, got {v.tolist()[:16]}"
    if ends.size and ends[-1] > x.shape[0]:
        return f"group_list total {int(ends[-1])} exceeds x's {x.shape[0]} rows"


@_rule("gmmq.nz_shape", "weight", "an NZ int8 weight has K % 16 == 0 and N % 32 == 0 (int4: N % 64)",
       source=SRC_HOST + " (WeightNz shape check; GMF 1.9)", fix="pad K to 16 and N to 32 (int4: 64)")
def _(call):
    w, d = _w(call), weight_dims(call)
    if w is None or d is None or not (d[4] or w.format.startswith("FRACTAL_NZ")):
        return None
    E, K, N, kind, _ = d
    c0 = 32 if kind == "int8" else 64
    if K % 16 or N % c0:
        return f"NZ weight needs K % 16 == 0 and N % {c0} == 0, got K={K}, N={N}"


# ---- A8W8 ----------------------------------------------------------------------------------

def _a8w8(call) -> bool:
    return form(call) == "A8W8"


@_rule("gmmq.a8w8_output", "output_dtype", "A8W8 output is bfloat16, float16 or int32 (int8 output with a uint64 "
       "fixpipe scale is not modelled)", source=SRC_DOC + "; " + SRC_PLUGIN + " (default output = x dtype: int8)",
       status=None, fix="pass output_dtype=torch.bfloat16 / torch.float16 (with scale) or torch.int32")
def _(call):
    if _a8w8(call) and output_name(call) not in ("bfloat16", "float16", "int32"):
        return f"A8W8 output {output_name(call)} is not modelled (bfloat16, float16 or int32)"


@_rule("gmmq.a8w8_scale", "scale", "A8W8 to bf16/fp16 needs scale [E, N] (fp32, bf16 or int64/uint64 holding fp32 "
       "bits); int32 output takes no scale and no per_token_scale",
       source=SRC_DOC + "; spec 0.3 (AscendDequant reads the scale per channel)", status=None,
       fix="pass scale=[s] with s [E, N]; omit scale/per_token_scale for output_dtype=torch.int32")
def _(call):
    if not _a8w8(call):
        return None
    d, s, out = weight_dims(call), _meta_list(call, "scale"), output_name(call)
    errs = []
    if out == "int32":
        for name in ("scale", "per_token_scale"):
            if call.given(name):
                errs.append(f"{name} is given with int32 output (the cube writes the raw int32 accumulator)")
        return errs
    if out not in ("bfloat16", "float16"):
        return None
    if s is None:
        return [f"A8W8 with {out} output needs scale (one tensor [E, N])"]
    if s.dtype not in ("float32", "bfloat16", "int64", "uint64"):
        errs.append(f"scale dtype must be float32, bfloat16 or int64/uint64, got {s.dtype}")
    if d is not None and list(s.shape) not in ([d[0], d[2]], [d[0], 1, d[2]]):
        errs.append(f"scale shape {list(s.shape)} must be [{d[0]}, {d[2]}] (per expert and channel)")
    return errs


@_rule("gmmq.a8w8_scale_dtype_doc", "scale", "A8W8: bf16 output with a bf16 scale (fp32 with an NZ weight or a bf16 "
       "bias); fp16 output with an fp32 scale", source=SRC_DOC, severity="warning",
       fix="bf16 output: scale bf16; fp16 output: scale fp32")
def _(call):
    if not _a8w8(call):
        return None
    s, out, w, b = _meta_list(call, "scale"), output_name(call), _w(call), _meta_list(call, "bias")
    if s is None:
        return None
    nz = w is not None and (w.ndim == 5 or w.format.startswith("FRACTAL_NZ"))
    if out == "float16" and s.dtype != "float32":
        return f"fp16 output is documented with an fp32 scale, got {s.dtype}"
    if out == "bfloat16" and s.dtype not in ("bfloat16",) and not (s.dtype == "float32" and (
            nz or (b is not None and b.dtype == "bfloat16"))):
        return f"bf16 output is documented with a bf16 scale (fp32 only with an NZ weight or a bf16 bias), got {s.dtype}"


@_rule("gmmq.per_token_scale", "per_token_scale", "per_token_scale is float32 [M]",
       source=SRC_DOC + "; " + SRC_KERNEL + " (one value per row)", status=None,
       fix="pass per_token_scale=[s] with s float32 of x's row count")
def _(call):
    p, x = _meta_list(call, "per_token_scale"), _x(call)
    if p is None or x is None or x.ndim != 2:
        return None
    errs = []
    if p.dtype != "float32":
        errs.append(f"per_token_scale dtype must be float32, got {p.dtype}")
    if p.ndim != 1 or p.shape[0] != x.shape[0]:
        errs.append(f"per_token_scale shape {list(p.shape)} must be [{x.shape[0]}]")
    if form(call) in ("A16W8", "A16W4"):
        errs.append("per_token_scale has no meaning for the antiquant forms")
    return errs


@_rule("gmmq.a8w8_bias", "bias", "A8W8 bias is int32 [E, N] (added in the cube), or bf16 [E, N] with bf16 output and "
       "a per_token_scale (the kernel reads a float bias only in its per-token step)",
       source=SRC_DOC + "; " + SRC_KERNEL + " (PerTokenQuant adds the bf16 bias)", status=None,
       fix="pass an int32 bias, or a bf16 bias together with per_token_scale")
def _(call):
    if not _a8w8(call):
        return None
    b, d = _meta_list(call, "bias"), weight_dims(call)
    if b is None:
        return None
    errs = []
    if b.dtype == "int32":
        pass
    elif b.dtype == "bfloat16":
        if output_name(call) != "bfloat16":
            errs.append(f"a bfloat16 bias needs bfloat16 output, got {output_name(call)}")
        if not call.given("per_token_scale"):
            errs.append("a bfloat16 bias without per_token_scale is never read by the kernel")
    else:
        errs.append(f"A8W8 bias dtype must be int32 or bfloat16, got {b.dtype}")
    if d is not None and list(b.shape) != [d[0], d[2]]:
        errs.append(f"bias shape {list(b.shape)} must be [{d[0]}, {d[2]}]")
    return errs


@_rule("gmmq.act_type", "act_type", "act_type 0 or 1 (relu) is simulated; 2/4/5 exist on the device, 3 does not",
       source=SRC_DOC + " (actType in {0,1,2,4,5}); the GELU/SiLU epilogue sequences were not read", status=None,
       fix="pass act_type=0 and apply the activation separately")
def _(call):
    a = call.get("act_type")
    if a in (None, 0):
        return None
    if form(call) != "A8W8":
        return f"act_type={a!r}: only the A8W8 epilogue activates"
    if a != 1:
        return f"act_type={a!r} is not simulated (0 or 1)" + (" and is not accepted by the device" if a == 3 else "")


# ---- A8W4 ----------------------------------------------------------------------------------

@_rule("gmmq.a8w4", "scale", "A8W4: int64/uint64 scale [E, N] or [E, G, N] (G divides K), fp32 bias [E, N] "
       "(8 * sum_k w * s), fp32 per_token_scale, bf16/fp16 output",
       source=SRC_DOC + " (A8W4 table); vllm-ascend w4a8.py (how the arguments are formed)", status=None,
       fix="pass scale=[int64 [E, N]], bias=[fp32 [E, N]], per_token_scale=[fp32 [M]], output_dtype=torch.bfloat16")
def _(call):
    if form(call) != "A8W4":
        return None
    d, s, b = weight_dims(call), _meta_list(call, "scale"), _meta_list(call, "bias")
    errs = []
    if s is None:
        errs.append("A8W4 needs scale")
    elif s.dtype not in ("int64", "uint64"):
        errs.append(f"A8W4 scale dtype must be int64/uint64 (fp32 bits in the low word), got {s.dtype}")
    elif d is not None:
        ok = list(s.shape) == [d[0], d[2]] or (s.ndim == 3 and s.shape[0] == d[0] and s.shape[2] == d[2]
                                                and s.shape[1] > 0 and d[1] % s.shape[1] == 0)
        if not ok:
            errs.append(f"scale shape {list(s.shape)} must be [{d[0]}, {d[2]}] or [{d[0]}, G, {d[2]}] with G dividing "
                        f"K={d[1]}")
    if b is None:
        errs.append("A8W4 needs the fp32 bias (8 * sum_k w * scale, the MSD offset term)")
    elif b.dtype != "float32" or (d is not None and list(b.shape) != [d[0], d[2]]):
        errs.append(f"bias must be float32 [E, N], got {b.dtype}{list(b.shape)}")
    if output_name(call) not in ("bfloat16", "float16"):
        errs.append(f"A8W4 output must be bfloat16 or float16, got {output_name(call)}")
    return errs


@_rule("gmmq.a8w4_doc", "weight", "A8W4 without offset: K % 256 == 0, K <= 18432, N % 8 == 0, group_list_type 1",
       source=SRC_DOC, severity="warning", fix="use K a multiple of 256 (<= 18432), N a multiple of 8, counts")
def _(call):
    if form(call) != "A8W4" or call.given("offset"):
        return None
    d = weight_dims(call)
    errs = []
    if d is not None:
        if d[1] % 256 or d[1] > 18432:
            errs.append(f"K={d[1]} must be a multiple of 256 and at most 18432")
        if d[2] % 8:
            errs.append(f"N={d[2]} must be a multiple of 8")
    if call.get("group_list_type") != 1:
        errs.append("group_list_type is forced to 1 (counts) by the host: pass counts")
    return errs


# ---- A16W8 / A16W4 -------------------------------------------------------------------------

@_rule("gmmq.antiquant", "antiquant_scale", "A16W8/A16W4: antiquant_scale (and optional antiquant_offset) in x's "
       "dtype, [E, N] per channel or [E, G, N] per group (A16W4 only, G divides K); bias fp16 for fp16 x, fp32 for "
       "bf16 x; output x's dtype; no scale / per_token_scale", source=SRC_DOC + " (A16W8/A16W4 tables)",
       status=None, fix="pass antiquant_scale=[s] with s [E, N] in x's dtype")
def _(call):
    f = form(call)
    if f not in ("A16W8", "A16W4"):
        return None
    x, d = _x(call), weight_dims(call)
    s, o, b = (_meta_list(call, n) for n in ("antiquant_scale", "antiquant_offset", "bias"))
    errs = []
    if s is None:
        return [f"{f} needs antiquant_scale"]
    for name, m in (("antiquant_scale", s), ("antiquant_offset", o)):
        if m is None:
            continue
        if m.dtype != x.dtype:
            errs.append(f"{name} dtype {m.dtype} must equal x dtype {x.dtype}")
        if d is not None:
            per_channel = list(m.shape) == [d[0], d[2]]
            per_group = (m.ndim == 3 and m.shape[0] == d[0] and m.shape[2] == d[2] and m.shape[1] > 0
                         and d[1] % m.shape[1] == 0)
            if not per_channel and not (per_group and f == "A16W4"):
                want = f"[{d[0]}, {d[2]}]" + (f" or [{d[0]}, G, {d[2]}]" if f == "A16W4" else "")
                errs.append(f"{name} shape {list(m.shape)} must be {want}")
    if o is not None and list(o.shape) != list(s.shape):
        errs.append(f"antiquant_offset shape {list(o.shape)} differs from antiquant_scale {list(s.shape)}")
    if b is not None:
        want = "float16" if x.dtype == "float16" else "float32"
        if b.dtype != want:
            errs.append(f"bias dtype must be {want} for {x.dtype} x, got {b.dtype}")
    if output_name(call) != x.dtype:
        errs.append(f"output_dtype {output_name(call)} must be x's dtype {x.dtype}")
    for name in ("scale", "per_token_scale", "offset"):
        if call.given(name):
            errs.append(f"{name} is given: the antiquant forms take antiquant_scale / antiquant_offset")
    return errs


@_rule("gmmq.not_modelled_args", "activation_input", "activation_input / activation_quant_* and the 950 dtype "
       "overrides are not used by the A2/A3 quantised forms", source=SRC_DOC, status=None,
       fix="omit activation_input, activation_quant_scale/offset, x_dtype, weight_dtype, scale_dtype")
def _(call):
    names = ("activation_input", "activation_quant_scale", "activation_quant_offset", "x_dtype", "weight_dtype",
             "scale_dtype", "per_token_scale_dtype")
    given = [n for n in names if call.given(n)]
    if given:
        return f"{', '.join(given)} given: not part of the modelled A2/A3 quantised forms"


@_rule("gmmq.products", "x", "the quantised forms are modelled on Atlas A2/A3 only",
       products={"atlas-inference", "ascend-950"}, source=SRC_DOC + " (A2/A3 tables); the 950 / 310P quantised "
       "kernels are not modelled by ascend-moe, which says nothing of the device", severity="not-simulated",
       fix="the simulator models the quantised forms of the Atlas A2/A3 tables only")
def _(call):
    return (f"the quantised grouped matmul ({form(call) or 'quantisation arguments given'}) is not modelled on "
            f"{call.product}")


def install(target_spec) -> None:
    """Let ``target_spec`` (npu_grouped_matmul's rule set) take the quantised forms over: its own rules skip
    calls :func:`is_quant_call` accepts, and the rules above check exactly those calls."""
    import dataclasses
    for r in target_spec.rules:
        r.check = (lambda call, _own=r.check: None if is_quant_call(call) else _own(call))
    for r in quant_rules():
        target_spec.add_rule(dataclasses.replace(
            r, op=target_spec.name, check=lambda call, _q=r.check: _q(call) if is_quant_call(call) else None))
