"""Hostile mutations of valid sample calls (fuzz_samples.py), as a hostile user writes them: other
dtypes, ranks, zero and negative sizes, huge integers, non-monotonic and mistyped group lists, None
and strings for scalars, NaN/inf, wrong types, unknown keywords.

A mutation is drawn with hypothesis (``draw`` is ``st.data().draw``) and returns a new sample plus
what the property test may expect of it (``finite``: a result must then be free of NaN/inf).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from hypothesis import strategies as st

from ascend_moe.formats import get_format

from fuzz_samples import Sample

# (where, key, index): where "args" or "kwargs"; index into a tensor list, or None
Slot = Tuple[str, Any, Optional[int]]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int32, torch.int64,
          torch.bool, torch.uint8]
HOSTILE_SCALARS = [None, "1", "", 1.5, -1, 0, 2 ** 31, 2 ** 63, 2 ** 70, -2 ** 63, float("inf"), float("-inf"),
                   float("nan"), True, [1], (), b"1"]
GROUP_LIST_WORDS = ("group_list", "expert_tokens", "expert_tokens_index", "row_index")


@dataclass
class Mutated:
    sample: Sample
    what: str
    finite: bool          # finite inputs and moderate scalars: a result must be free of NaN/inf
    extra_names: Tuple[str, ...] = ()   # argument names the mutation introduced (may be named in errors)
    mistyped_scalar: bool = False       # a scalar argument now holds a value of another type


def clone_sample(s: Sample) -> Sample:
    args = [list(a) if isinstance(a, list) else a for a in s.args]
    kwargs = {k: (list(v) if isinstance(v, list) else v) for k, v in s.kwargs.items()}
    return Sample(s.op, tuple(args), kwargs, s.name)


def _get(s: Sample, slot: Slot) -> Any:
    where, key, idx = slot
    v = s.args[key] if where == "args" else s.kwargs[key]
    return v if idx is None else v[idx]


def _set(s: Sample, slot: Slot, value: Any) -> Sample:
    s = clone_sample(s)
    where, key, idx = slot
    args = list(s.args)
    if where == "args":
        if idx is None:
            args[key] = value
        else:
            args[key][idx] = value
    elif idx is None:
        s.kwargs[key] = value
    else:
        s.kwargs[key][idx] = value
    s.args = tuple(args)
    return s


def slot_name(s: Sample, slot: Slot, names: List[str]) -> str:
    where, key, _ = slot
    return names[key] if where == "args" and key < len(names) else str(key)


def tensor_slots(s: Sample) -> List[Slot]:
    out: List[Slot] = []
    for where, items in (("args", list(enumerate(s.args))), ("kwargs", list(s.kwargs.items()))):
        for key, v in items:
            if isinstance(v, torch.Tensor):
                out.append((where, key, None))
            elif isinstance(v, list):
                out += [(where, key, i) for i, t in enumerate(v) if isinstance(t, torch.Tensor)]
    return out


def scalar_slots(s: Sample) -> List[Slot]:
    out: List[Slot] = []
    for where, items in (("args", list(enumerate(s.args))), ("kwargs", list(s.kwargs.items()))):
        for key, v in items:
            if isinstance(v, (bool, int, float, str)) or (isinstance(v, list) and v and
                                                          all(isinstance(i, int) for i in v)):
                out.append((where, key, None))
    return out


def _is_nz(t: torch.Tensor) -> bool:
    return get_format(t).startswith("FRACTAL_NZ")


def noncontiguous(t: torch.Tensor) -> Optional[torch.Tensor]:
    """The same values in a non-contiguous view (every other element of a buffer twice as wide), or
    None where that is not meaningful (scalars, single columns, NZ-tagged, already non-contiguous)."""
    if t.dim() == 0 or t.shape[-1] < 2 or t.numel() == 0 or not t.is_contiguous() or _is_nz(t):
        return None
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


def mutate(s: Sample, draw: Callable, names: List[str]) -> Mutated:
    kinds = ["none", "dtype", "rank", "size", "scalar", "group_list", "nan", "wrong_type", "unknown_kw"]
    kind = draw(st.sampled_from(kinds), label="mutation")
    tslots, sslots = tensor_slots(s), scalar_slots(s)
    if kind == "none":
        return Mutated(s, "none", True)
    if kind == "unknown_kw":
        return Mutated(_set(s, ("kwargs", "no_such_argument", None), 1), "unknown keyword", True,
                       ("no_such_argument",))
    if kind in ("dtype", "rank", "size", "nan", "wrong_type") and tslots:
        slot = draw(st.sampled_from(tslots), label="tensor")
        t = _get(s, slot)
        name = slot_name(s, slot, names)
        if kind == "dtype":
            dt = draw(st.sampled_from([d for d in DTYPES if d != t.dtype]), label="dtype")
            return Mutated(_set(s, slot, t.to(dt)), f"{name} -> {dt}", True)
        if kind == "rank":
            how = draw(st.sampled_from(["unsqueeze", "flatten", "select", "scalar"]), label="rank")
            if how == "unsqueeze":
                new = t.unsqueeze(0)
            elif how == "flatten":
                new = t.reshape(-1)
            elif how == "select" and t.dim() >= 1 and t.shape[0] > 0:
                new = t[0]
            else:
                new = torch.zeros((), dtype=t.dtype)
            return Mutated(_set(s, slot, new), f"{name} rank: {how}", True)
        if kind == "size":
            if t.dim() == 0:
                return Mutated(_set(s, slot, t.reshape(1)), f"{name} size: 0-d -> [1]", True)
            dim = draw(st.integers(0, t.dim() - 1), label="dim")
            how = draw(st.sampled_from(["zero", "grow", "shrink"]), label="size")
            shape = list(t.shape)
            if how == "zero":
                shape[dim] = 0
                new = t.narrow(dim, 0, 0)
            elif how == "shrink" and shape[dim] > 1:
                new = t.narrow(dim, 0, shape[dim] - 1)
            else:
                pad_shape = list(shape)
                pad_shape[dim] = 1
                new = torch.cat([t, torch.ones(pad_shape, dtype=t.dtype)], dim)
            return Mutated(_set(s, slot, new.contiguous() if not _is_nz(t) else new), f"{name} size: {how} dim {dim}",
                           True)
        if kind == "nan":
            if not t.is_floating_point() or t.numel() == 0:
                return Mutated(s, "none (no float tensor to poison)", True)
            bad = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]), label="value")
            new = t.clone()   # keeps t's strides (a transposed view stays one)
            at = draw(st.integers(0, t.numel() - 1), label="at")
            new[tuple(int(i) for i in np.unravel_index(at, tuple(t.shape)))] = bad
            return Mutated(_set(s, slot, new), f"{name} holds {bad}", False)
        if kind == "wrong_type":
            value = draw(st.sampled_from([None, "tensor", 1.0, [1.0, 2.0], t.numpy() if t.dtype != torch.bfloat16
                                          else None]), label="value")
            return Mutated(_set(s, slot, value), f"{name} -> {type(value).__name__}", True)
    if kind == "group_list":
        gslots = [sl for sl in tslots + sslots if slot_name(s, sl, names) in GROUP_LIST_WORDS and sl[2] is None]
        if gslots:
            slot = draw(st.sampled_from(gslots), label="group list")
            gl = _get(s, slot)
            vals = gl.tolist() if isinstance(gl, torch.Tensor) else list(gl)
            how = draw(st.sampled_from(["reverse", "negative", "huge", "empty", "float tensor", "float list",
                                        "string", "2-D", "bool list", "int32", "too long"]), label="how")
            if how == "reverse":
                new_vals: Any = list(reversed(vals))
            elif how == "negative":
                new_vals = [-abs(v) - 1 if i == 0 else v for i, v in enumerate(vals)]
            elif how == "huge":
                new_vals = [2 ** 62 if i == len(vals) - 1 else v for i, v in enumerate(vals)]
            elif how == "empty":
                new_vals = []
            elif how == "too long":
                new_vals = vals + [vals[-1] if vals else 1] * 3
            else:
                new_vals = vals
            if how == "float tensor":
                new: Any = torch.tensor(vals, dtype=torch.float32)
            elif how == "float list":
                new = [float(v) for v in vals]
            elif how == "string":
                new = ",".join(str(v) for v in vals)
            elif how == "2-D":
                new = torch.tensor(vals, dtype=torch.int64).reshape(1, -1)
            elif how == "bool list":
                new = [bool(v) for v in vals]
            elif how == "int32":
                new = torch.tensor(vals, dtype=torch.int32)
            elif isinstance(gl, torch.Tensor):
                new = torch.tensor(new_vals, dtype=torch.int64)
            else:
                new = new_vals
            return Mutated(_set(s, slot, new), f"{slot_name(s, slot, names)} {how}", True)
    if sslots:
        slot = draw(st.sampled_from(sslots), label="scalar")
        value = draw(st.sampled_from(HOSTILE_SCALARS), label="value")
        # a large finite scalar (e.g. routed_scaling_factor=2**70) may legitimately overflow a result
        moderate = not isinstance(value, (int, float)) or isinstance(value, bool) or abs(value) <= 1
        old = _get(s, slot)
        mistyped = type(value) is not type(old) and not (isinstance(old, float) and type(value) is int)
        return Mutated(_set(s, slot, copy.copy(value)), f"{slot_name(s, slot, names)} -> {value!r}", moderate,
                       mistyped_scalar=mistyped)
    return Mutated(s, "none (nothing to mutate)", True)
