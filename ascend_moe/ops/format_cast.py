"""``npu_format_cast``: torch_npu's storage-format cast, for CPU (and meta) tensors and NumPy arrays.

On an NPU, ``torch_npu.npu_format_cast(w, 29)`` re-lays a weight out as FRACTAL_NZ while its logical
shape and values stay the same.  Here (CPU):

* ``npu_format_cast(w, 29)`` returns a new tensor (a copy with its own storage, as torch_npu's cast to
  another format allocates one; same logical shape and values) that carries the format FRACTAL_NZ
  (an :class:`ascend_moe.formatted.FormattedTensor`: the format survives clone, views, ``detach``,
  ``nn.Parameter``, fake tensors, ``torch.compile`` and opcheck; a NumPy array is tagged in
  :mod:`ascend_moe.formats`); ``w`` itself keeps its format.  Casting to the format a
  tensor already has returns it unchanged (torch_npu does the same).  The ops read the logical
  values; the tag decides which rules apply (A8W8 swiglu-quant needs NZ) and which aclnn entry point
  the device path takes.  Every other aclFormat id torch_npu takes (``ascend_moe.formats.FORMAT_NAMES``:
  0 NCHW, 1 NHWC, 3 NC1HWC0, 4 FRACTAL_Z, ...) is a tag on a copy in the same way: the logical values
  never change (torch_npu's own test compares a cast to format 3 against the identity).
* ``npu_format_cast(w, 29, storage=True)`` returns instead the physical NZ storage the aclnn docs
  describe (``[..., ceil(N/C0), ceil(K/16), 16, C0]``, zero padded; 4-D for a matrix, 5-D for
  ``[E, K, N]``), also tagged FRACTAL_NZ.  ``C0 = 32 bytes / element size`` of ``customize_dtype`` when
  given (torch_npu's ``customize_dtype``, e.g. ``torch.float16`` for C0 = 16), else of the weight's
  dtype (an int32 tensor holding packed int4 gives ``[E, N/64, K/16, 16, 8]``, the int4 NZ bytes).
  The ops accept that form too.  Note: without ``customize_dtype`` torch_npu on Atlas A2/A3 lays out
  4-byte dtypes with C0 = 16 (``FormatCastKernelNpu.cpp`` ``MaybeUseAclnnNpuFormatCast``); pass
  ``customize_dtype=torch.float16`` to get that layout here.
* casting storage back (``npu_format_cast(st, 2)``, or to any non-NZ format) gives the logical matrix:
  its exact shape when ``st`` came from this function, else (a 5-D array tagged NZ by other means) the
  padded shape ``[..., K1*16, N1*C0]``.
* Rank-0/1 tensors cannot be NZ: a cast to 29 falls back to ND, as torch_npu does
  (``FormatCastKernelNpu.cpp`` ``ShouldFallbackNzToNd``).
* ``acl_format`` may be a tensor: torch_npu's ``npu_format_cast(self, dst)`` overload casts to ``dst``'s
  format.
* Meta tensors get the result's shape and tag without data; tensors on an NPU go to
  ``torch_npu.npu_format_cast`` (never computed on the CPU).

Wrong types raise TypeError and unknown format ids ValueError, each naming the argument.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..formats import is_torch_tensor as _is_torch_tensor_type
from ..formats import (ACL_FORMAT_FRACTAL_NZ, ACL_FORMAT_ND, FORMAT_IDS, FORMAT_NAMES, get_format,
                       nz_storage_record, set_format, set_nz_storage)
from ..sim.numerics import ELEMENT_BITS, dtype_name, nd_to_nz, nz_storage_shape, nz_to_nd

__all__ = ["npu_format_cast"]

OP = "npu_format_cast"
NZ_STORAGE_NDIM = 5  # [E, N1, K1, 16, C0]: the one storage rank recognised without a record


def _is_torch(x: Any) -> bool:
    return _is_torch_tensor_type(x)


def _format_id(acl_format: Any) -> int:
    """The aclFormat id asked for: an int, or a tensor / array whose recorded format to copy."""
    if _is_torch(acl_format) or isinstance(acl_format, np.ndarray):
        name = get_format(acl_format)
        return FORMAT_IDS.get(name, ACL_FORMAT_ND)
    if isinstance(acl_format, bool) or not isinstance(acl_format, (int, np.integer)):
        raise TypeError(f"{OP}: argument 'acl_format' must be an int aclFormat id (2 ND, 29 FRACTAL_NZ, ...) or a "
                        f"tensor whose format to copy, got {type(acl_format).__name__}")
    fid = int(acl_format)
    if fid not in FORMAT_NAMES:
        known = ", ".join(f"{i} {n}" for i, n in sorted(FORMAT_NAMES.items()))
        raise ValueError(f"{OP}: argument 'acl_format' must be an aclFormat id torch_npu knows ({known}), got {fid}")
    return fid


def _c0_dtype(customize_dtype: Any) -> Optional[str]:
    """The dtype name whose element size sets C0, or None."""
    if customize_dtype is None:
        return None
    if isinstance(customize_dtype, (bool, int, float)):
        raise TypeError(f"{OP}: argument 'customize_dtype' must be a dtype (e.g. torch.float16) or None, got "
                        f"{type(customize_dtype).__name__}")
    try:
        name = dtype_name(customize_dtype)
    except Exception:
        name = None
    if name not in ELEMENT_BITS:
        raise TypeError(f"{OP}: argument 'customize_dtype' must be a dtype (e.g. torch.float16) or None, got "
                        f"{customize_dtype!r}")
    return name


def npu_format_cast(weight: Any, acl_format: Any, customize_dtype: Any = None, *, storage: bool = False) -> Any:
    """Cast ``weight`` (torch tensor or NumPy array) to storage format ``acl_format`` (2 ND, 29
    FRACTAL_NZ, or another aclFormat id; or a tensor whose format to copy).

    See the module docstring for what the result is.  ``customize_dtype`` (torch_npu's argument) sets
    the NZ C0 of ``storage=True`` results."""
    if not isinstance(storage, (bool, np.bool_)):
        raise TypeError(f"{OP}: argument 'storage' must be True or False, got {type(storage).__name__}")
    storage = bool(storage)
    is_np = isinstance(weight, np.ndarray)
    if not is_np and not _is_torch(weight):
        raise TypeError(f"{OP}: argument 'weight' must be a torch tensor or NumPy array, got {type(weight).__name__}")
    if _is_torch(weight) and weight.device.type not in ("cpu", "meta"):
        return _on_device(weight, acl_format, customize_dtype, storage)
    fid = _format_id(acl_format)
    c0_dtype = _c0_dtype(customize_dtype)
    if storage and fid != ACL_FORMAT_FRACTAL_NZ:
        raise ValueError(f"{OP}: argument 'storage': storage=True builds FRACTAL_NZ storage, so acl_format must be "
                         f"29, got {fid} ({FORMAT_NAMES[fid]})")
    if weight.ndim < 2 and FORMAT_NAMES[fid].startswith("FRACTAL_NZ"):
        if storage:
            raise ValueError(f"{OP}: argument 'weight': NZ storage needs a matrix or a batch of matrices, got shape "
                             f"{tuple(weight.shape)}")
        fid = ACL_FORMAT_ND  # torch_npu ShouldFallbackNzToNd: rank < 2 cannot be NZ
    target = FORMAT_NAMES[fid]
    src_nz = get_format(weight).startswith("FRACTAL_NZ")
    record = nz_storage_record(weight) if src_nz else None
    src_storage = isinstance(record, tuple) or (record == "unknown" and weight.ndim == NZ_STORAGE_NDIM)

    if storage:
        if src_storage:
            return weight
        logical = tuple(int(s) for s in weight.shape)
        elem = c0_dtype or dtype_name(weight)  # a tag-only NZ tensor holds its logical values
        if _is_meta(weight):
            out = _meta_empty(weight, nz_storage_shape(logical, elem))
        else:
            out = _wrap(nd_to_nz(_values(weight), dtype=elem), is_np)
        set_nz_storage(out, logical)
    elif src_storage and not target.startswith("FRACTAL_NZ"):
        logical = record if isinstance(record, tuple) else _padded_logical(weight.shape)
        if _is_meta(weight):
            out = _meta_empty(weight, logical)
        else:
            out = _wrap(nz_to_nd(_values(weight), logical), is_np)
    elif get_format(weight) == target:
        return weight
    else:
        # a copy, not an alias: the cast tensor owns its storage, so a tag that follows the storage can
        # never leak onto the original
        out = weight.copy() if is_np else _plain(weight).clone()
        if target.startswith("FRACTAL_NZ"):
            set_nz_storage(out, None)
    if not is_np:  # a torch tensor carries its format itself (ascend_moe.formatted.FormattedTensor)
        from ..formatted import with_format
        record = nz_storage_record(out) if target.startswith("FRACTAL_NZ") else None
        return with_format(_plain(out), target, record if isinstance(record, tuple) else None)
    set_format(out, target)
    return out


def _plain(t: Any) -> Any:
    from ..formatted import unwrap
    return unwrap(t)


def _cast_on_simulated_npu(weight: Any, fid: int, storage: bool) -> Any:
    """The simulated npu keeps the format in the storage's device metadata, as torch_npu does: the
    cast gives a copy in the new format (or ``weight`` itself when already in it)."""
    if storage:
        raise ValueError(f"{OP}: argument 'storage': storage=True (the 5-D NZ storage array) is for CPU tensors; an npu "
                         "tensor keeps its logical shape and records the format as device metadata")
    target = FORMAT_NAMES[fid]
    if get_format(weight) == target:
        return weight
    out = weight.clone()
    set_format(out, target)
    return out


def _padded_logical(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    *batch, c1, r1, r0, c0 = shape
    return (*batch, r1 * r0, c1 * c0)


def _is_meta(t: Any) -> bool:
    return _is_torch(t) and t.device.type == "meta"


def _meta_empty(like: Any, shape: Tuple[int, ...]) -> Any:
    import torch
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _values(t: Any) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    from ._common import to_numpy
    return to_numpy(t)


def _wrap(a: np.ndarray, is_np: bool) -> Any:
    if is_np:
        return a
    from ._common import from_numpy
    return from_numpy(np.ascontiguousarray(a))


def _on_device(weight: Any, acl_format: Any, customize_dtype: Any, storage: bool) -> Any:
    """Tensors on an accelerator: NPU tensors go to torch_npu's own cast; nothing else is accepted."""
    from ..backends import NPU_DEVICE_TYPES, BackendError, privateuse1_is_simulated
    if weight.device.type not in NPU_DEVICE_TYPES:
        raise ValueError(f"{OP}: argument 'weight' is on {weight.device}; pass a CPU, meta or NPU tensor")
    if privateuse1_is_simulated():
        return _cast_on_simulated_npu(weight, _format_id(acl_format), storage)
    if storage:
        raise ValueError(f"{OP}: argument 'storage': storage=True is the CPU stand-in for NZ storage; an NPU tensor's "
                         "storage is NZ after torch_npu's cast itself")
    try:
        import torch_npu
    except ImportError:
        raise BackendError(f"{OP}: tensor on {weight.device} needs torch_npu, which is not importable; ascend-moe "
                           f"never moves NPU tensors to the CPU") from None
    if customize_dtype is None:
        return torch_npu.npu_format_cast(weight, acl_format)
    return torch_npu.npu_format_cast(weight, acl_format, customize_dtype=customize_dtype)
