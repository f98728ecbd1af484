"""The aclnn backend: run an op through CANN's two-phase aclnn API via the C++ dispatcher ``ascend_moe._C``.

``call(op, args)`` takes the op's bound public arguments (torch_npu / MindSpeed names), allocates the
outputs from the op's shape rule (its declaration, ``ascend_moe.opdecl``), chooses the aclnn entry point
as op-plugin does, marshals every tensor into a plain descriptor and lets ``_C.run`` do phase 1,
workspace, phase 2 and the cleanup.  Outputs come back in the public op's structure.

Entry points, their C parameter lists and the call family each call takes are declared with the op
(``ascend_moe/ops/<family>.py``, :class:`ascend_moe.opdecl.AclnnEntry`); :func:`build_from_declaration`
turns them into the descriptors.  The choice (op-plugin / MindSpeed, spec aclnn-abi-and-torch.md 2 and 4.3):

* ``npu_grouped_matmul``: FRACTAL_NZ weight -> ``aclnnGroupedMatmulWeightNz``; else ``V5`` when it
  resolves and x is not fp8, else ``V4``; a ``List[int]`` group_list (torch_npu's ``.List`` overload)
  -> ``aclnnGroupedMatmul`` (V1: M split only; group_type 2 with a list is refused).
* ``npu_gmm`` / ``npu_gmm_v2`` (MindSpeed): ``List[int]`` -> ``V2`` (aclIntArray group list,
  splitItem 3); Tensor -> ``V4`` (groupListType 0 cumsum for npu_gmm, 1 counts for npu_gmm_v2).
* ``npu_moe_gating_top_k``: ``aclnnMoeGatingTopK``; with input_ids/tid2eid (hash mode) ``...V2``.
* ``npu_ffn``: ``aclnnFFNV2`` (expert_tokens or expert_tokens_index as aclIntArray - an empty one when
  neither is given, as op-plugin's ``IntArrayRef{}`` -, tokensIndexFlag = expert_tokens_index given,
  innerPrecise default 0).
* ``npu_grouped_matmul_swiglu_quant``: ``aclnnGroupedMatmulSwigluQuantWeightNZ`` always.
* ``npu_grouped_matmul_swiglu_quant_v2``: ``...WeightNzV2`` for an NZ (or 5-D) weight, else ``...V2``.
* ``npu_grouped_matmul_finalize_routing``: ``V3`` then ``V2``; NZ weight: ``WeightNzV2`` then
  ``WeightNz``; always dtype 0, transposes false, antiquant tensors nullptr.  Deviations from
  op-plugin, both loud instead of silent: an ``offset`` that only ``WeightNz`` could receive (it has no
  such parameter; op-plugin drops it) raises BackendError; a ``tuning_config`` the older entry point
  cannot take is dropped with a RuntimeWarning (op-plugin warns once).
* dtype overrides (``x_dtype``, ``weight_dtype``, ``w_dtype``, ``*_scale_dtype``: op-plugin's
  TensorWrapper re-typing for hifloat8/fp4 carried in other torch dtypes) are refused with BackendError.

Marshalling (op-plugin ``ConvertType``): view dims, strides and storage offset of the torch view, the
storage base pointer, the aclDataType of the torch dtype, format ND (2) or FRACTAL_NZ (29) with the NZ
storage dims of torch_npu's ``InferShapeNDToNZ`` (``[..., ceil(c/c0), ceil(r/16), 16, c0]``,
``c0 = 32 / min(itemsize, 2)``); ND storage dims ``[storage_nbytes / itemsize]``.  Absent optionals and
empty tensor lists become nullptr; int lists become aclIntArray (an empty ``tuning_config`` is an empty
aclIntArray, as op-plugin's ``value_or(IntArrayRef{})`` gives).

Stream and workspace: for NPU tensors (a torch_npu process) the stream is
``torch.npu.current_stream().npu_stream`` and the workspace a ``torch.uint8`` NPU tensor from the
caching allocator (stream-ordered, released after phase 2 is enqueued); aclInit/aclrtSetDevice/
aclFinalize are left to torch_npu.  For CPU tensors - accepted only by the fake CANN runtime of the
tests, whose libascendcl exports ``ascend_moe_fake_runtime`` - the dispatcher runs standalone: aclInit
(0 or 100002 accepted), aclrtSetDevice(0), stream :data:`CPU_STREAM`, workspace by aclrtMalloc, freed
after aclrtSynchronizeStream.  ``CPU_STREAM`` and ``CPU_WORKSPACE_ALLOCATOR`` are test hooks.

Errors: a failing status raises ``ascend_moe._C.AclnnError`` (a ``RuntimeError`` with ``entry_point``,
``status``, ``status_name``; the message names the entry point, the status and its name and
``aclGetRecentErrMsg()``); a path that cannot be taken at all (no CANN, missing entry point) raises
:class:`~ascend_moe.backends.BackendError`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import BackendError, NPU_DEVICE_TYPES
from ..formats import get_format

# torch dtype -> aclDataType (torch_npu CalcuOpUtil.cpp; spec 1.2)
ACL_DTYPE: Dict[torch.dtype, int] = {
    torch.float32: 0, torch.float16: 1, torch.int8: 2, torch.int32: 3, torch.uint8: 4, torch.int16: 6,
    torch.int64: 9, torch.float64: 11, torch.bool: 12, torch.bfloat16: 27, torch.complex64: 16,
    torch.complex128: 17,
}
for _name, _code in (("uint16", 7), ("uint32", 8), ("uint64", 10), ("float8_e5m2", 35),
                     ("float8_e4m3fn", 36), ("float8_e8m0fnu", 37), ("complex32", 33)):
    if hasattr(torch, _name):
        ACL_DTYPE[getattr(torch, _name)] = _code

ACL_FORMAT_ND = 2
ACL_FORMAT_FRACTAL_NZ = 29
NZ_FORMATS = (29, 50, 51, 52, 53, 54)

# Test hooks for the CPU (fake runtime) path: the stream handed to phase 2 and an optional workspace
# allocator ``size -> (pointer, keepalive)`` used instead of aclrtMalloc (models torch_npu's allocator).
CPU_STREAM: int = 0
CPU_WORKSPACE_ALLOCATOR: Optional[Callable[[int], Tuple[int, Any]]] = None

# What the last call did (entry point, workspace size and how it was allocated): for tests and debugging.
last_call: Dict[str, Any] = {}


def _C():
    try:
        from .. import _C as c  # noqa: WPS433
    except ImportError as e:  # pragma: no cover - the extension is part of every build
        raise BackendError(f"the C++ dispatcher ascend_moe._C cannot be imported: {e}") from e
    return c


# ------------------------------------------------------------------------------------------------
# tensors -> descriptors
# ------------------------------------------------------------------------------------------------

def nz_storage_dims(shape: Sequence[int], itemsize: int) -> List[int]:
    """torch_npu ``InferShapeNDToNZ``: ``[..., r, c]`` -> ``[..., ceil(c/c0), ceil(r/16), 16, c0]``
    with ``c0 = 32 / min(itemsize, 2)`` (spec aclnn-abi-and-torch.md 3.7)."""
    shape = list(shape)
    if len(shape) < 2:
        shape = [1] * (2 - len(shape)) + shape
    *batch, r, c = shape
    c0 = 32 // min(itemsize, 2)
    return [*batch, -(-c // c0), -(-r // 16), 16, c0]


def _acl_format(t: torch.Tensor) -> int:
    if t.device.type in NPU_DEVICE_TYPES:
        try:
            import torch_npu  # noqa: F401
            return int(torch_npu.get_npu_format(t))
        except Exception:  # noqa: BLE001 - no torch_npu: the tag of ascend_moe.formats decides
            pass
    fmt = get_format(t)
    return ACL_FORMAT_FRACTAL_NZ if fmt.startswith("FRACTAL_NZ") else ACL_FORMAT_ND


def describe(t: torch.Tensor) -> tuple:
    """The descriptor ``_C.run`` turns into an aclTensor: (storage base pointer, view dims, strides,
    storage offset in elements, aclDataType, aclFormat, storage dims)."""
    if t.dtype not in ACL_DTYPE:
        raise BackendError(f"no aclDataType for torch dtype {t.dtype}")
    storage = t.untyped_storage()
    item = t.element_size()
    fmt = _acl_format(t)
    if fmt in NZ_FORMATS:
        # a 5-D tensor tagged NZ is the physical storage itself (aclnn doc examples: view == storage)
        storage_dims = list(t.shape) if t.dim() == 5 else nz_storage_dims(t.shape, item)
    else:
        storage_dims = [storage.nbytes() // item]
    return (int(storage.data_ptr()), list(t.shape), list(t.stride()), int(t.storage_offset()), ACL_DTYPE[t.dtype],
            int(fmt), storage_dims)


def T(t: Optional[torch.Tensor]) -> tuple:
    return ("T", None if t is None else describe(t))


def L(ts: Optional[Sequence[torch.Tensor]]) -> tuple:
    """A tensor list; None or empty -> nullptr (op-plugin converts an empty TensorList to nullptr)."""
    if ts is None or len(ts) == 0:
        return ("L", None)
    return ("L", [describe(t) for t in ts])


def IA(v: Optional[Sequence[int]]) -> tuple:
    return ("I", None if v is None else [int(i) for i in v])


def i64(v: Any) -> tuple:
    return ("i", int(v))


def f64(v: Any) -> tuple:
    return ("d", float(v))


def f32(v: Any) -> tuple:
    return ("f", float(v))


def b(v: Any) -> tuple:
    return ("b", bool(v))


def s(v: str) -> tuple:
    return ("s", str(v))


# ------------------------------------------------------------------------------------------------
# entry-point choice
# ------------------------------------------------------------------------------------------------

def choose(family: str, op: str) -> str:
    """The first resolvable entry point of ``family`` in op-plugin's order; BackendError if none."""
    chosen, candidates = _C().choose(family)
    if chosen is None:
        why = "; ".join(f"{name}: {detail}" for name, _, detail in candidates)
        raise BackendError(f"{op}: no aclnn entry point for this call is available ({why})")
    return chosen


def _no_dtype_overrides(op: str, a: Dict[str, Any], names: Sequence[str]) -> None:
    """op-plugin re-types tensors with x_dtype/weight_dtype/... (TensorWrapper) for dtypes torch lacks
    (hifloat8, fp4); this dispatcher does not model those, so it refuses them rather than mis-type."""
    given = [n for n in names if a.get(n) is not None]
    if given:
        raise BackendError(f"{op}: {', '.join(f'{n}={a[n]!r}' for n in given)}: dtype overrides (torch_npu "
                           "TensorWrapper re-typing) are not supported by the aclnn dispatcher; pass tensors "
                           "whose torch dtype is the element type")


# Each builder: (args, outs) -> (entry point, [argument descriptors]).

_ENCODE = {"T": T, "O": T, "L": L, "OL": L, "IA": IA, "i64": i64, "f32": f32, "f64": f64, "b": b, "s": s}


def build_from_declaration(decl: Any, a: Dict[str, Any], outs: List[torch.Tensor]) -> Tuple[str, list]:
    """The entry point and argument descriptors from the op's declaration: the call family
    (``decl.choose_entry``), the first entry point of it that resolves (op-plugin's order), and each C
    parameter of that entry's prototype filled from the argument of the same (snake_case) name, or
    from what the entry's ``bind`` maps it to (an argument name, an output, a constant, or a function
    ``(args, outs) -> value``)."""
    from ..opdecl import Out, _snake
    family = decl.choose_entry(a) if decl.choose_entry is not None else decl.aclnn[0].family
    entry_name = choose(family, decl.name)
    entry = next((e for e in decl.entries(family) if e.name == entry_name), None)
    if entry is None:
        raise BackendError(f"{decl.name}: the dispatcher chose {entry_name}, which the op's declaration does not "
                           "list; add its C parameter list to the declaration")
    if entry.check is not None:
        entry.check(a)
    descs = []
    for p in entry.c_params:
        src = entry.bind.get(p.name, _snake(p.name))
        if isinstance(src, Out):
            value = list(outs) if src.index < 0 else outs[src.index]
        elif callable(src):
            value = src(a, outs)
        elif isinstance(src, str):
            value = a[src]
        else:
            value = src
        descs.append(_ENCODE[p.ctype](value))
    return entry_name, descs



# ------------------------------------------------------------------------------------------------
# the call
# ------------------------------------------------------------------------------------------------

def _tensors(args: Dict[str, Any]) -> List[torch.Tensor]:
    found: List[torch.Tensor] = []
    for v in args.values():
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(t for t in v if isinstance(t, torch.Tensor))
    return found


def _device_of(args: Dict[str, Any]) -> torch.device:
    devices = {t.device for t in _tensors(args)}
    if len(devices) != 1:
        raise BackendError(f"aclnn: all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    return devices.pop()


def _shape_rule(op: str) -> Callable[[Dict[str, Any]], list]:
    from ..opdecl import get_decl
    decl = get_decl(op)
    if decl is None:
        raise BackendError(f"{op}: not declared in ascend_moe.opdecl; no shape rule to allocate its outputs")
    return decl.shape


def allocate_outputs(op: str, args: Dict[str, Any], device: torch.device) -> List[torch.Tensor]:
    from ..ops._generate import torch_dtype
    rule = _shape_rule(op)
    shape_args = args
    gl = args.get("group_list")
    if isinstance(gl, torch.Tensor) and gl.device.type != "cpu":
        # data-dependent output shapes (npu_grouped_matmul split_item 0/1) read the group sizes on the
        # host, as op-plugin does with .item(); the device tensor itself is what aclnn receives
        shape_args = dict(args, group_list=gl.cpu())
    return [torch.empty(tuple(int(d) for d in shape), dtype=torch_dtype(dtype), device=device)
            for shape, dtype in rule(shape_args)]


def _npu_context(device: torch.device):
    """(stream, workspace allocator, device guard) inside a torch_npu process."""
    import torch_npu  # noqa: F401 - NPU tensors exist only when torch_npu is loaded

    def alloc(size: int):
        ws = torch.empty(int(size), dtype=torch.uint8, device=device)
        return ws.untyped_storage().data_ptr(), ws

    guard = torch.npu.device(device.index) if device.index is not None else contextlib.nullcontext()
    return guard, alloc


def _runtime_for(op: str, args: Dict[str, Any]) -> Tuple[Any, torch.device]:
    """The loaded dispatcher and the call's device, or BackendError saying why aclnn cannot run it."""
    c = _C()
    if not c.runtime_ok():
        raise BackendError(f"{op}: the aclnn hardware path is unavailable: {c.loader_report()['reason']}")
    device = _device_of(args)
    if device.type not in NPU_DEVICE_TYPES and not c.fake_runtime():
        raise BackendError(f"{op}: aclnn computes NPU tensors only; CPU tensors are accepted by the fake test "
                           "runtime alone")
    return c, device


def _run(c: Any, op: str, entry: str, descs: list, device: torch.device) -> None:
    """The two-phase call on the device's current stream (or the fake runtime's CPU stream)."""
    if device.type in NPU_DEVICE_TYPES:
        guard, alloc = _npu_context(device)
        with guard:
            stream = int(torch.npu.current_stream().npu_stream)
            info = c.run(entry, descs, stream, alloc, False, device.index or 0)
    else:
        info = c.run(entry, descs, int(CPU_STREAM), CPU_WORKSPACE_ALLOCATOR, True, 0)
    info.pop("keepalive", None)  # the NPU workspace is released here, stream-ordered by the allocator
    last_call.clear()
    last_call.update(info, op=op)


def call(op: str, args: Dict[str, Any]) -> Any:
    """Run ``op`` on aclnn with the bound public arguments; returns the outputs in the op's structure."""
    from ..opdecl import get_decl
    decl = get_decl(op)
    if decl is None:
        raise BackendError(f"{op}: not declared in ascend_moe.opdecl; the aclnn dispatcher has no binding for it")
    if not decl.aclnn:
        raise BackendError(f"{op}: the declaration lists no aclnn entry point")
    c, device = _runtime_for(op, args)
    outs = allocate_outputs(op, args, device)
    entry, descs = build_from_declaration(decl, args, outs)
    _run(c, op, entry, descs, device)
    from ..ops._generate import _structure
    return _structure(decl, outs)


# ------------------------------------------------------------------------------------------------
# npu_grouped_matmul_add_ (in place: y[e] += x[rows_e]^T @ weight[rows_e]); MindSpeed's gemm_fusion path
# ------------------------------------------------------------------------------------------------

def grouped_matmul_add_(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, group_list: torch.Tensor, *,
                        transpose_x: bool = True, transpose_weight: bool = False, group_type: int = 2,
                        group_list_type: int = 0) -> torch.Tensor:
    """``torch_npu.npu_grouped_matmul_add_`` on aclnn: the checker (``npu_grouped_matmul_add_`` rules for the
    target product), then aclnnGroupedMatmulAdd (A2/A3; op-plugin passes no group_list_type there) or
    aclnnGroupedMatmulAddV2 (950), writing into ``y`` in place.  Returns ``y``."""
    from ..products import resolve_target
    from ..rules import enforce_call
    op = "npu_grouped_matmul_add_"
    a = dict(self=y, x=x, weight=weight, group_list=group_list, transpose_x=transpose_x,
             transpose_weight=transpose_weight, group_type=group_type, group_list_type=group_list_type)
    target = enforce_call(op, a, resolve_target())
    c, device = _runtime_for(op, a)
    entry = choose("gmm_add_v2" if target.product == "ascend-950" else "gmm_add", op)
    descs = [T(x), T(weight), T(group_list), T(y), b(transpose_x), b(transpose_weight), i64(group_type)]
    if entry.endswith("V2"):
        descs.append(i64(group_list_type))
    _run(c, op, entry, descs, device)
    return y
