"""The all-zero-row policy of the per-token quantisers (dynamic quant, dequant-SwiGLU-quant, GMM-SwiGLU-quant).

A row whose values are all zero has ``amax == 0``.  Every A2/A3 kernel then forms a NaN before the int8
conversion (``127 / 0 = inf`` then ``0 * inf``, or ``0 / 0``), and the int8 value the hardware makes of an
fp32 NaN is not public (spec moe-quant-path 0.2, 2.11).  The output *scale* of such a row is well defined:
``1 / inf = 0`` or ``0 * (1/127) = 0``.

What the public evidence supports (spec moe-quant-path 2.11): CANN's own test tables for the sibling
op DynamicQuantUpdateScatter carry a case named "zero_row_defined_as_zero" whose golden writes 0 for
both the quantised row and the scale, and the aclnnDynamicQuant ST executor's golden
``clamp(round(x * (1/scale)))`` is zero for such rows on the CPU.  No case expects anything else.

So the simulator models it as a named policy instead of an undefined region:

* ``"zero"`` (default): the quantised values of an all-zero row are 0 (and its scale 0).  This is what
  the test tables expect; it is **not verified on hardware**.
* ``"undefined"``: the quantised values follow the undefined-region policy
  (:func:`ascend_moe.sim.numerics.fill_undefined`: int8 -128 under ``poison``), for users who want a
  reliance on the unverified value to show up.

Only rows with ``amax == 0`` are covered.  Any other NaN reaching the int8 conversion (inf or NaN
inputs) stays an undefined region.

Selection: per-call ``zero_row=`` argument > :func:`zero_row_policy` context > :func:`set_zero_row_policy`
> ``ASCEND_MOE_ZERO_ROW`` environment variable > ``"zero"``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

import numpy as np

from .numerics import fill_undefined

__all__ = ["ZERO_ROW_POLICIES", "zero_row_policy", "set_zero_row_policy", "get_zero_row_policy",
           "apply_zero_rows"]

ZERO_ROW_POLICIES = ("zero", "undefined")

_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("ascend_moe_zero_row", default=None)
_global: Optional[str] = None


def _check(policy: str) -> str:
    if policy not in ZERO_ROW_POLICIES:
        raise ValueError(f"all-zero-row policy must be one of {ZERO_ROW_POLICIES}, got {policy!r}")
    return policy


def set_zero_row_policy(policy: Optional[str]) -> None:
    """Set the process-wide all-zero-row policy (None restores the default)."""
    global _global
    _global = None if policy is None else _check(policy)


def get_zero_row_policy(override: Optional[str] = None) -> str:
    """The policy in effect (see the module docstring for the precedence)."""
    for p in (override, _override.get(), _global, os.environ.get("ASCEND_MOE_ZERO_ROW")):
        if p:
            return _check(p)
    return "zero"


@contextlib.contextmanager
def zero_row_policy(policy: str) -> Iterator[None]:
    """Context manager selecting the all-zero-row policy for the calls inside it."""
    token = _override.set(_check(policy))
    try:
        yield
    finally:
        _override.reset(token)


def apply_zero_rows(q: np.ndarray, nan_mask: np.ndarray, zero_rows: np.ndarray,
                    zero_row: Optional[str] = None, undefined: Optional[str] = None) -> np.ndarray:
    """Fill, in place, the elements of the quantised 2-D ``q`` [rows, cols] whose value was NaN at the int8
    conversion: those of all-zero rows (``zero_rows`` [rows] bool) by the all-zero-row policy, any other
    NaN by the undefined-region policy.  Returns ``q``."""
    if not nan_mask.any():
        return q
    in_zero_row = nan_mask & zero_rows[:, None]
    other = nan_mask & ~zero_rows[:, None]
    if in_zero_row.any():
        if get_zero_row_policy(zero_row) == "zero":
            q[in_zero_row] = 0
        else:
            fill_undefined(q, in_zero_row, undefined)
    if other.any():
        fill_undefined(q, other, undefined)
    return q
