"""Numerics core of the simulator: dtypes, rounding casts, int4 packing, FRACTAL_NZ, undefined regions.

Everything here is NumPy (+ ml_dtypes) only, so ``ascend_moe.sim`` imports without torch.

Conventions used by every op simulator:

* dtypes are named by canonical strings (``"float16"``, ``"bfloat16"``, ``"float32"``, ``"int8"``,
  ``"int32"``, ``"int64"``, ``"uint64"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``, ``"int4"`` ...);
  :func:`dtype_name` gives that name for a NumPy array, a torch tensor or a :class:`TensorSpec`-like
  object, :func:`np_dtype` gives the NumPy dtype.
* float -> float casts are IEEE round-to-nearest-even (NumPy and ml_dtypes both do this).
* float -> int casts are explicit (:func:`float_to_int`): the rounding mode and saturation are
  arguments, because the device kernels differ (``rint`` = half-to-even, ``round`` = half away).
* int4 values are packed low nibble first (spec grouped-matmul-family 2.7).
* FRACTAL_NZ (format 29) of an ND matrix ``[..., R, C]`` is ``[..., ceil(C/C0), ceil(R/16), 16, C0]``
  with ``C0 = 32 bytes / element size`` and zero padding (spec 2.6).
* rows the device leaves unwritten are filled by the undefined-region policy (:func:`fill_undefined`).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import ml_dtypes
import numpy as np

# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------

_NP_DTYPES = {
    "bool": np.dtype(np.bool_),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int4": np.dtype(ml_dtypes.int4),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
}

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2",
                "float8_e8m0fnu")
INT_DTYPES = ("int4", "int8", "uint8", "int16", "int32", "int64", "uint32", "uint64")

# Element size in bits, used for the NZ C0 and for int4 packing.
ELEMENT_BITS = {name: (4 if name == "int4" else _NP_DTYPES[name].itemsize * 8) for name in _NP_DTYPES}


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a canonical dtype name (bfloat16/float8/int4 come from ml_dtypes)."""
    try:
        return _NP_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype name {name!r}; known: {sorted(_NP_DTYPES)}") from None


def dtype_name(obj) -> str:
    """Canonical dtype name of a NumPy array/dtype, a torch tensor/dtype or an object with ``.dtype``.

    torch is never imported here: a torch dtype is recognised by its ``str`` (``torch.bfloat16``).
    """
    dt = getattr(obj, "dtype", obj)
    if isinstance(dt, str):
        name = dt
    elif isinstance(dt, np.dtype) or (isinstance(dt, type) and issubclass(dt, np.generic)):
        name = np.dtype(dt).name
    else:
        name = str(dt)
    name = name.replace("torch.", "")
    aliases = {"half": "float16", "float": "float32", "double": "float64", "long": "int64",
               "int": "int32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    name = aliases.get(name, name)
    if name not in _NP_DTYPES:
        raise ValueError(f"unsupported dtype {dt!r}")
    return name


def is_float(name_or_obj) -> bool:
    name = name_or_obj if isinstance(name_or_obj, str) else dtype_name(name_or_obj)
    return name in FLOAT_DTYPES


# --------------------------------------------------------------------------------------------
# rounding casts
# --------------------------------------------------------------------------------------------

def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast to ``dtype`` with IEEE round-to-nearest-even (float targets) - the device's ``CAST_RINT``.

    For integer targets from floats use :func:`float_to_int`, which makes rounding explicit.
    """
    target = np_dtype(dtype)
    x = np.asarray(x)
    if is_float(dtype) or not is_float(dtype_name(x)):
        with np.errstate(over="ignore"):  # overflow to +-inf is the IEEE (and device) result
            return x.astype(target)
    return float_to_int(x, dtype)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float values to ``dtype`` precision (RNE) and return them as float32.

    Useful for kernels that go through an fp16/bf16 intermediate and continue in fp32.
    """
    return np.asarray(x, dtype=np.float32).astype(np_dtype(dtype)).astype(np.float32)


def float_to_int(x: np.ndarray, dtype: str = "int8", rounding: str = "rint",
                 saturate: bool = True) -> np.ndarray:
    """Convert floats to integers with an explicit rounding mode.

    rounding: ``"rint"`` (half to even, the device's CAST_RINT), ``"round"`` (half away from zero,
    CAST_ROUND), ``"trunc"``, ``"floor"``, ``"ceil"``.  With ``saturate`` values are clamped to the
    target range (Ascend conversions saturate); NaN becomes 0 (documented choice; the device
    conversion of NaN is not public).
    """
    x = np.asarray(x)
    if rounding in ("rint", "trunc", "floor", "ceil") and x.dtype in (np.float16, np.float32):
        # an integral value of a float16/32 is exact in that type, and so are the clip bounds of int8/int4
        # and (for float32) every int16 bound: no widening needed, the same results at a fraction of the cost
        info = np.iinfo(np_dtype(dtype)) if dtype != "int4" else None
        lo, hi = (-8, 7) if dtype == "int4" else (info.min, info.max)
        if max(abs(lo), hi) <= (2048 if x.dtype == np.float16 else 1 << 24):
            r = getattr(np, rounding)(x)
            np.nan_to_num(r, copy=False, nan=0.0)
            if saturate:
                np.clip(r, lo, hi, out=r)
            return r.astype(np_dtype(dtype))
    if rounding == "rint":
        r = np.rint(x.astype(np.float64))
    elif rounding == "round":
        xf = x.astype(np.float64)
        r = np.sign(xf) * np.floor(np.abs(xf) + 0.5)
    elif rounding in ("trunc", "floor", "ceil"):
        r = getattr(np, rounding)(x.astype(np.float64))
    else:
        raise ValueError(f"rounding must be rint, round, trunc, floor or ceil, got {rounding!r}")
    r = np.nan_to_num(r, nan=0.0)
    info = np.iinfo(np_dtype(dtype)) if dtype != "int4" else None
    lo, hi = (-8, 7) if dtype == "int4" else (info.min, info.max)
    if saturate:
        r = np.clip(r, lo, hi)
    return r.astype(np_dtype(dtype))


def f32_bits(x: np.ndarray) -> np.ndarray:
    """The IEEE-754 bit pattern of float32 values as uint32."""
    return np.asarray(x, dtype=np.float32).view(np.uint32)


FP19_MASK = np.uint32(0xFFFFE000)


def decode_int64_scale(scale: np.ndarray, fp19: bool = True) -> np.ndarray:
    """Decode a quantisation scale carried as int64/uint64 into float32 (spec 3.4).

    The fp32 bit pattern sits in the low 32 bits (upper bits zero, or bit 46 set by
    ``npu_trans_quant_param``).  With ``fp19`` (the default, an **inferred** device behaviour) the
    low 13 mantissa bits are dropped (``bits & 0xFFFFE000``): the fixpipe multiplies with a 10-bit
    mantissa.  Set ``fp19=False`` to use the full fp32 value.
    """
    s = np.asarray(scale)
    if s.dtype == np.float32:
        bits = s.view(np.uint32)
    else:
        bits = (s.astype(np.int64).view(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    if fp19:
        bits = bits & FP19_MASK
    return bits.view(np.float32)


def encode_int64_scale(scale: np.ndarray) -> np.ndarray:
    """Encode float32 scales as int64 with the fp32 bits in the low word (vllm-ascend's layout)."""
    return f32_bits(scale).astype(np.int64)


# --------------------------------------------------------------------------------------------
# int4 packing
# --------------------------------------------------------------------------------------------

def _int4_values(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype == np.dtype(ml_dtypes.int4):
        v = v.astype(np.int8)
    v = v.astype(np.int64)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got range [{v.min()}, {v.max()}]")
    return v


def pack_int4(values: np.ndarray, container: str = "int32") -> np.ndarray:
    """Pack int4 values (any integer array in [-8, 7]) along the last dim, low nibble first.

    ``container`` is ``"int32"`` (8 values per element) or ``"int8"`` (2 values per element).  The
    last dim must be a multiple of 8 or 2 respectively.
    """
    per = {"int32": 8, "int8": 2}.get(container)
    if per is None:
        raise ValueError(f"container must be 'int32' or 'int8', got {container!r}")
    v = _int4_values(values)
    if v.shape[-1] % per:
        raise ValueError(f"last dim {v.shape[-1]} must be a multiple of {per} to pack int4 into {container}")
    nib = (v & 0xF).astype(np.uint64).reshape(*v.shape[:-1], v.shape[-1] // per, per)
    shifts = (np.arange(per, dtype=np.uint64) * np.uint64(4))
    word = np.bitwise_or.reduce(nib << shifts, axis=-1)
    udt = np.uint32 if container == "int32" else np.uint8
    return word.astype(udt).view(np.int32 if container == "int32" else np.int8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Unpack int32 (8 per element) or int8 (2 per element) containers into int8 values in [-8, 7].

    Works on the little-endian bytes (byte b holds elements 2b and 2b+1, low nibble first), writing
    straight into the int8 result: peak memory is the result plus one byte-sized temporary, so a
    full DeepSeek-V3 int4 expert weight unpacks without a 4-bytes-per-value intermediate.
    """
    p = np.asarray(packed)
    if p.dtype not in (np.dtype(np.int32), np.dtype(np.uint32), np.dtype(np.int8), np.dtype(np.uint8)):
        raise ValueError(f"packed int4 must be int32 or int8, got {p.dtype}")
    per = 8 if p.itemsize == 4 else 2
    b = np.ascontiguousarray(p).view(np.uint8)  # little-endian: byte order == nibble order
    if p.itemsize == 4 and p.dtype.byteorder == ">":  # pragma: no cover - big-endian arrays
        b = np.ascontiguousarray(p.astype(p.dtype.newbyteorder("<"))).view(np.uint8)
    out = np.empty((*p.shape[:-1], p.shape[-1] * per), dtype=np.int8)
    flat = out.reshape(*b.shape[:-1], b.shape[-1], 2)
    # sign-extend a nibble v in [0, 15]: (v ^ 8) - 8
    np.bitwise_and(b, 0xF, out=flat[..., 0].view(np.uint8))
    np.right_shift(b, 4, out=flat[..., 1].view(np.uint8))
    np.bitwise_xor(out, 8, out=out)
    np.subtract(out, 8, out=out)
    return out


# --------------------------------------------------------------------------------------------
# FRACTAL_NZ
# --------------------------------------------------------------------------------------------

R0 = 16


def nz_c0(dtype: str) -> int:
    """C0 of FRACTAL_NZ: 32 bytes / element size (fp16/bf16 16, int8 32, int4 64, fp32 8)."""
    return 256 // ELEMENT_BITS[dtype]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def nz_storage_shape(shape: Sequence[int], dtype: str, transposed: bool = False) -> Tuple[int, ...]:
    """The 5-D (or 4-D for a plain matrix) NZ storage shape of a logical ``[..., K, N]`` weight.

    With ``transposed`` the weight is stored as ``[..., N, K]`` (the transposed-weight variant): the
    NZ tiles are then built from that stored matrix, giving ``[..., ceil(K/C0), ceil(N/16), 16, C0]``.
    """
    *batch, r, c = shape
    if transposed:
        r, c = c, r
    c0 = nz_c0(dtype)
    return (*batch, _ceil_div(c, c0), _ceil_div(r, R0), R0, c0)


def nd_to_nz(w: np.ndarray, dtype: Optional[str] = None, transposed: bool = False) -> np.ndarray:
    """FRACTAL_NZ storage array of a logical ``[..., K, N]`` weight, zero padded.

    ``dtype`` names the element type when it differs from the array's (pass ``"int4"`` for an array of
    unpacked int4 values).  With ``transposed`` the stored matrix is ``w.swapaxes(-1, -2)``.
    """
    w = np.asarray(w)
    dtype = dtype or dtype_name(w)
    if w.ndim < 2:
        raise ValueError(f"FRACTAL_NZ needs a matrix or a batch of matrices, got shape {w.shape}")
    m = np.swapaxes(w, -1, -2) if transposed else w
    *batch, r, c = m.shape
    c0 = nz_c0(dtype)
    c1, r1 = _ceil_div(c, c0), _ceil_div(r, R0)
    padded = np.zeros((*batch, r1 * R0, c1 * c0), dtype=w.dtype)
    padded[..., :r, :c] = m
    nb = len(batch)
    tiles = padded.reshape(*batch, r1, R0, c1, c0)
    perm = tuple(range(nb)) + (nb + 2, nb, nb + 1, nb + 3)
    return np.ascontiguousarray(tiles.transpose(perm))


def nz_to_nd(nz: np.ndarray, shape: Sequence[int], transposed: bool = False) -> np.ndarray:
    """Logical ``[..., K, N]`` weight of the given ``shape`` from its NZ storage array (drops padding)."""
    nz = np.asarray(nz)
    *batch, k, n = shape
    r, c = (n, k) if transposed else (k, n)
    nb = len(batch)
    if nz.ndim != nb + 4:
        raise ValueError(f"NZ storage for shape {tuple(shape)} must have {nb + 4} dims, got {nz.shape}")
    c1, r1, r0, c0 = nz.shape[nb:]
    if r0 != R0 or c1 * c0 < c or r1 * R0 < r or tuple(nz.shape[:nb]) != tuple(batch):
        raise ValueError(f"NZ storage {nz.shape} cannot hold a matrix of shape {tuple(shape)}"
                         f"{' (transposed)' if transposed else ''}")
    perm = tuple(range(nb)) + (nb + 1, nb + 2, nb, nb + 3)
    m = nz.transpose(perm).reshape(*batch, r1 * R0, c1 * c0)[..., :r, :c]
    return np.ascontiguousarray(np.swapaxes(m, -1, -2) if transposed else m)


# --------------------------------------------------------------------------------------------
# undefined regions
# --------------------------------------------------------------------------------------------

UNDEFINED_POLICIES = ("poison", "zero")

# Sentinels written by the "poison" policy into integer outputs the device leaves unwritten.
# They are each dtype's minimum: int8 -128 is never produced by symmetric int8 quantisation
# (which clamps to [-127, 127]), and INT32_MIN / INT64_MIN are implausible accumulator values.
INT_POISON = {"int8": -128, "uint8": 255, "int16": -(2 ** 15), "int32": -(2 ** 31),
              "int64": -(2 ** 63), "uint32": 2 ** 32 - 1, "uint64": 2 ** 64 - 1}

_policy_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "ascend_moe_undefined_policy", default=None)
_global_policy: Optional[str] = None


def _check_policy(policy: str) -> str:
    if policy not in UNDEFINED_POLICIES:
        raise ValueError(f"undefined-region policy must be one of {UNDEFINED_POLICIES}, got {policy!r}")
    return policy


def set_undefined_policy(policy: Optional[str]) -> None:
    """Set the process-wide policy (``"poison"`` or ``"zero"``; None restores the default)."""
    global _global_policy
    _global_policy = None if policy is None else _check_policy(policy)


def get_undefined_policy(override: Optional[str] = None) -> str:
    """The policy in effect: per-call ``override`` > :func:`undefined_policy` context > global >
    ``ASCEND_MOE_UNDEFINED`` environment variable > ``"poison"``."""
    for p in (override, _policy_override.get(), _global_policy, os.environ.get("ASCEND_MOE_UNDEFINED")):
        if p:
            return _check_policy(p)
    return "poison"


@contextlib.contextmanager
def undefined_policy(policy: str) -> Iterator[None]:
    """Context manager selecting the undefined-region policy for the calls inside it.

    Scope: the choice lives in a ``contextvars`` context, so it holds in this thread and in asyncio
    tasks started inside the block, but **not** in threads of a ``ThreadPoolExecutor`` (their workers
    run in their own context).  To carry it there, submit ``contextvars.copy_context().run``:
    ``pool.submit(contextvars.copy_context().run, fn, *args)``; or use the process-wide ``set_undefined_policy``."""
    token = _policy_override.set(_check_policy(policy))
    try:
        yield
    finally:
        _policy_override.reset(token)


def poison_value(dtype: str):
    """The value the ``poison`` policy writes: NaN for floats, :data:`INT_POISON` for integers."""
    if is_float(dtype):
        return np.nan
    return INT_POISON[dtype]


def fill_undefined(out: np.ndarray, where: Union[slice, np.ndarray, Tuple], policy: Optional[str] = None) -> np.ndarray:
    """Fill ``out[where]`` (the region the device leaves unwritten) in place by the policy; returns out."""
    p = get_undefined_policy(policy)
    value = 0 if p == "zero" else poison_value(dtype_name(out))
    out[where] = value
    return out


# --------------------------------------------------------------------------------------------
# group lists
# --------------------------------------------------------------------------------------------

class GroupList:
    """A group list as one value: the cumulative end of each group along the grouped axis.

    ``GroupList.of(values, list_type)`` reads torch_npu's two spellings, 0 = cumulative ends (cumsum),
    1 = per-group counts.  ``validate`` (default) rejects what no device group list can be (not 1-D,
    not integers, negative entries, a decreasing cumsum, an unknown type) with ValueError; the grouped
    matmul simulator reads it without validation (its checker rules ran first and a Tensor group list
    is device data the device does not check either).
    """

    __slots__ = ("ends",)

    def __init__(self, ends: np.ndarray):
        self.ends = ends

    @classmethod
    def of(cls, values: Any, list_type: int = 0, validate: bool = True) -> "GroupList":
        if not validate:
            gl = np.asarray(values, dtype=np.int64).reshape(-1)
            return cls(gl if list_type == 0 else np.cumsum(gl))
        gl = np.asarray(values)
        if gl.ndim != 1:
            raise ValueError(f"group_list must be 1-D, got shape {gl.shape}")
        if gl.size and not np.issubdtype(gl.dtype, np.integer):
            raise ValueError(f"group_list must hold integers, got dtype {gl.dtype}")
        gl = gl.astype(np.int64)
        if gl.size and gl.min() < 0:
            raise ValueError(f"group_list entries must be >= 0, got {gl.tolist()}")
        if list_type == 0:
            if gl.size > 1 and np.any(np.diff(gl) < 0):
                raise ValueError(f"cumsum group_list must be non-decreasing, got {gl.tolist()}")
            return cls(gl)
        if list_type == 1:
            return cls(np.cumsum(gl))
        raise ValueError(f"group_list_type must be 0 (cumsum) or 1 (count), got {list_type}")

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([np.zeros(1, np.int64), self.ends[:-1]]) if self.ends.size else self.ends

    @property
    def total(self) -> int:
        return int(self.ends[-1]) if self.ends.size else 0

    def __len__(self) -> int:
        return int(self.ends.size)

    def bounds(self, num_rows: Optional[int] = None) -> List[Tuple[int, int]]:
        """``(start, end)`` of each group, clipped to ``num_rows`` when given (rows past it do not exist)."""
        out = []
        for s, t in zip(self.starts.tolist(), self.ends.tolist()):
            if num_rows is not None:
                s, t = min(s, num_rows), min(t, num_rows)
            out.append((int(s), int(t)))
        return out


# ---------------------------------------------------------------------------------------------
# argument types of the public NumPy twins
# ---------------------------------------------------------------------------------------------


def twin_arguments(op: str, values: dict, *, arrays: Sequence[str] = (), array_lists: Sequence[str] = (),
                   int_lists: Sequence[str] = (), reals: Sequence[str] = (), ints: Sequence[str] = (),
                   required: Sequence[str] = ()) -> None:
    """Type check of a twin's arguments before the rules run, so that a wrong type is a TypeError
    naming the argument (never an AttributeError deep in the arithmetic, never a silent NaN).

    ``arrays``: NumPy arrays or None; ``array_lists``: a NumPy array or a list/tuple of them, or None;
    ``int_lists``: also a list of Python ints (the int-array group-list path); ``reals``: an int or
    float, not None, not bool (the torch_npu schema declares them ``float``, never optional);
    ``ints``: an int, not None, not bool; ``required``: arguments that may not be None."""
    def fail(name: str, want: str, got) -> TypeError:
        kind = type(got).__name__
        hint = ""
        if type(got).__module__.startswith("torch"):
            hint = f"; the twins take NumPy arrays (tensor.numpy()), ascend_moe.{op} takes torch tensors"
        return TypeError(f"{op}: argument '{name}' must be {want}, got {kind}{hint}")

    def is_array(v) -> bool:
        return isinstance(v, np.ndarray)

    for name in required:
        if values.get(name) is None:
            raise TypeError(f"{op}: argument '{name}' is required, got None")
    for name in arrays:
        v = values.get(name)
        if v is not None and not is_array(v):
            raise fail(name, "a NumPy array or None", v)
    for name in tuple(array_lists) + tuple(int_lists):
        v = values.get(name)
        if v is None or is_array(v):
            continue
        if isinstance(v, (list, tuple)):
            if all(is_array(i) for i in v):
                continue
            if name in int_lists and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                         for i in v):
                continue
        want = "a NumPy array, a list of them, a list of ints or None" if name in int_lists else \
            "a NumPy array, a list of NumPy arrays or None"
        raise fail(name, want, v)
    for name in reals:
        v = values.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise fail(name, "a real number (int or float)", v)
    for name in ints:
        v = values.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise fail(name, "an int", v)
