"""``npu_format_cast``: torch_npu's storage-format cast, for CPU tensors and NumPy arrays.

On an NPU, ``torch_npu.npu_format_cast(w, 29)`` re-lays a weight out as FRACTAL_NZ while its logical
shape and values stay the same.  Here (CPU):

* ``npu_format_cast(w, 29)`` returns a new tensor (a copy with its own storage, as torch_npu's cast to
  another format allocates one; same logical shape and values) whose format is recorded as FRACTAL_NZ
  (:func:`ascend_moe.formats.set_format`); ``w`` itself keeps its format.  Casting to the format a
  tensor already has returns it unchanged (torch_npu does the same).  The ops read the logical values; the tag decides which rules apply
  (A8W8 swiglu-quant needs NZ) and which aclnn entry point the device path takes.
* ``npu_format_cast(w, 29, storage=True)`` returns instead the physical 5-D NZ storage the aclnn docs
  describe (``[..., ceil(N/C0), ceil(K/16), 16, C0]``, C0 = 32 bytes / element size, zero padded; an
  int32 tensor holding packed int4 gives ``[E, N/64, K/16, 16, 8]``, the same bytes as the int4 NZ
  layout), also tagged FRACTAL_NZ.  The ops accept that form too.
* ``npu_format_cast(w, 2)`` gives ND: a copy tagged ND, or, for a 5-D NZ storage array, the logical
  matrix back (its padded shape ``[..., K1*16, N1*C0]``: the storage does not record the padding).
* Tensors on an NPU go to ``torch_npu.npu_format_cast`` (never computed on the CPU).

Supported format ids: 2 (ND) and 29 (FRACTAL_NZ); anything else raises ValueError naming it.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..formats import ACL_FORMAT_FRACTAL_NZ, ACL_FORMAT_ND, FORMAT_NAMES, get_format, set_format
from ..sim.numerics import dtype_name, nd_to_nz, nz_to_nd

__all__ = ["npu_format_cast"]

NZ_STORAGE_NDIM = 5


def _from_storage(a: np.ndarray) -> np.ndarray:
    *batch, c1, r1, r0, c0 = a.shape
    return nz_to_nd(a, (*batch, r1 * r0, c1 * c0))


def npu_format_cast(weight: Any, acl_format: int, customize_dtype: Optional[int] = None, *,
                    storage: bool = False) -> Any:
    """Cast ``weight`` (torch tensor or NumPy array) to storage format ``acl_format`` (2 ND, 29 FRACTAL_NZ).

    See the module docstring for what the CPU result is.  ``customize_dtype`` (torch_npu's optional
    argument) must be None here.
    """
    if acl_format not in (ACL_FORMAT_ND, ACL_FORMAT_FRACTAL_NZ):
        name = FORMAT_NAMES.get(acl_format, "unknown")
        raise ValueError(f"npu_format_cast: acl_format must be 2 (ND) or 29 (FRACTAL_NZ) on the CPU, "
                         f"got {acl_format!r} ({name})")
    if customize_dtype is not None:
        raise ValueError(f"npu_format_cast: customize_dtype is not supported on the CPU, got {customize_dtype!r}")
    is_np = isinstance(weight, np.ndarray)
    if not is_np:
        import torch
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"npu_format_cast: weight must be a torch tensor or NumPy array, got {type(weight).__name__}")
        if weight.device.type != "cpu":
            from ..backends import privateuse1_is_simulated
            if privateuse1_is_simulated():
                return _cast_on_simulated_npu(weight, acl_format, storage)
            try:
                import torch_npu  # noqa: F401
            except ImportError:
                from ..backends import BackendError
                raise BackendError(f"npu_format_cast: tensor on {weight.device} needs torch_npu, which is not "
                                   f"importable; ascend-moe never moves NPU tensors to the CPU") from None
            return torch_npu.npu_format_cast(weight, acl_format)
    target = FORMAT_NAMES[acl_format]
    if weight.ndim < 2:
        raise ValueError(f"npu_format_cast: FRACTAL_NZ/ND casts need a matrix or a batch of matrices, "
                         f"got shape {tuple(weight.shape)}")

    def wrap(a: np.ndarray, like: Any) -> Any:
        if is_np:
            return a
        from ._common import from_numpy
        return from_numpy(np.ascontiguousarray(a))

    src_storage = weight.ndim == NZ_STORAGE_NDIM and get_format(weight).startswith("FRACTAL_NZ")
    if acl_format == ACL_FORMAT_FRACTAL_NZ and storage:
        a = weight if is_np else _np(weight)
        out = wrap(a if src_storage else nd_to_nz(a, dtype=dtype_name(a)), weight)
    elif acl_format == ACL_FORMAT_ND and src_storage:
        out = wrap(_from_storage(weight if is_np else _np(weight)), weight)
    elif get_format(weight) == target:
        return weight
    else:
        # a copy, not an alias: the NZ tensor owns its storage, so a tag that follows the storage can
        # never leak onto the ND original
        out = weight.copy() if is_np else weight.clone()
    set_format(out, target)
    return out


def _cast_on_simulated_npu(weight: Any, acl_format: int, storage: bool) -> Any:
    """The simulated npu keeps the format in the storage's device metadata, as torch_npu does: the
    cast gives a copy in the new format (or ``weight`` itself when already in it)."""
    if storage:
        raise ValueError("npu_format_cast: storage=True (the 5-D NZ storage array) is for CPU tensors; an npu "
                         "tensor keeps its logical shape and records the format as device metadata")
    target = FORMAT_NAMES[acl_format]
    if get_format(weight) == target:
        return weight
    out = weight.clone()
    set_format(out, target)
    return out


def _np(t: Any) -> np.ndarray:
    from ._common import to_numpy
    return to_numpy(t)
