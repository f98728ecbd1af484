"""Expert-parallel dispatch and combine over torch.distributed: N CPU processes stand in for N NPUs.

This is the simulator of the declared ops ``npu_moe_distribute_dispatch(_v2)`` /
``npu_moe_distribute_combine(_v2)`` (:mod:`ascend_moe.ops.distribute`; :func:`simulate` is their
adapter): the per-rank computation of :mod:`ascend_moe.sim.distribute` around
``torch.distributed.all_to_all_single`` with uneven splits, so each process gets the outputs its NPU
would produce, value for value.  Any backend with all_to_all works; on CPU that is gloo
(``torchrun --nproc-per-node N`` or ``torch.multiprocessing``).  NPU tensors never come here: the
declared ops send them to aclnn over HCCL.  The functions of the same names here call the declared
ops, and carry a call that does not even bind into the exchange (so that rank's error reaches
every rank).

Group names.  On the device ``group_ep`` is the HCCL communicator name torch_npu code takes from
its process group (``pg._get_backend(torch.device("npu")).get_hccl_comm_name(rank)``; vllm-ascend's
``get_hccl_comm_name``); :func:`get_hccl_comm_name` returns it in a torch_npu process whose group has
an HCCL backend.  For a gloo group it gives a name of the same role (``"sim_hccl:<group name>"``, identical on every member), and
:func:`resolve_group` maps it back; :func:`register_group_name` binds any other string (e.g.
a real HCCL name recorded elsewhere) to a group.  The default group resolves from its name too.

Failure handling.  Before any payload moves, every rank runs the op's rules on its own
arguments and the ranks exchange (an object all-gather) their violations plus the arguments
that must agree across ranks.  Every rank then raises the same :class:`ConstraintError`, naming
the offending ranks, or none does.  A rank that fails for any other reason before the exchange
still joins it with its error, so its peers fail at once with a message naming it instead of
waiting.  Each collective waits at most :func:`get_timeout` (default 60 s,
``ASCEND_MOE_EP_TIMEOUT``); a peer that never arrives ends in :class:`EpCommError`.
"""
from __future__ import annotations

import datetime
import os
import pickle
import threading
import time
import warnings
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np
import torch
import torch.distributed as dist

from .products import Target, resolve_target
from .rules import ConstraintError, ConstraintWarning, Violation, bind, check_call, strict_docs
from .sim import distribute as _sim
from .sim.numerics import dtype_name

__all__ = [
    "EpCommError", "get_hccl_comm_name", "register_group_name", "resolve_group", "set_timeout", "get_timeout",
    "npu_moe_distribute_dispatch", "npu_moe_distribute_dispatch_v2",
    "npu_moe_distribute_combine", "npu_moe_distribute_combine_v2", "last_exchange_stats",
]

NAME_PREFIX = "sim_hccl:"
# arguments every rank of the group must pass identically (docs 约束说明; the kernels size their
# windows from them)
IDENTICAL_ARGS = ("group_ep", "ep_world_size", "moe_expert_num", "expert_shard_type", "shared_expert_num",
                  "shared_expert_rank_num", "global_bs", "tp_world_size", "quant_mode", "comm_quant_mode")


class EpCommError(RuntimeError):
    """A collective of the EP exchange failed or timed out (a peer died, hung, or called another op)."""


# --------------------------------------------------------------------------------------------
# group names
# --------------------------------------------------------------------------------------------

_NAMES: Dict[str, Any] = {}
_LOCK = threading.Lock()


def _torch_group_name(group) -> str:
    name = getattr(group, "group_name", None)
    if not name:
        from torch.distributed import distributed_c10d as c10d
        name = c10d._get_process_group_name(group)
    return str(name)


def _npu_device() -> Optional[torch.device]:
    try:
        return torch.device("npu")
    except RuntimeError:  # no npu device type in this process (neither torch_npu nor the simulated one)
        return None


def _hccl_name(group, rank: int) -> Optional[str]:
    """torch_npu's HCCL communicator name of ``group`` (``group._get_backend(torch.device("npu"))
    .get_hccl_comm_name(rank)``), or None where the group has no HCCL backend (gloo on CPU)."""
    device = _npu_device()
    if device is None:
        return None
    try:
        backend = group._get_backend(device)
    except Exception:  # noqa: BLE001 - no backend registered for the npu device (a gloo group)
        return None
    getter = getattr(backend, "get_hccl_comm_name", None)
    return str(getter(rank)) if getter is not None else None


def get_hccl_comm_name(group: Optional[Any] = None, rank: Optional[int] = None) -> str:
    """The communicator name of ``group`` (default: the world group) that ``group_ep`` / ``group_tp``
    take: in a torch_npu process with an HCCL group, HCCL's own name (what the aclnn kernels need);
    otherwise a name for the torch.distributed group (gloo), the same string on every member.  Either
    resolves with :func:`resolve_group`.  ``rank`` is
    accepted for torch_npu's ``get_hccl_comm_name(rank)`` call shape and must be a member."""
    if not dist.is_initialized():
        raise RuntimeError("get_hccl_comm_name needs torch.distributed.init_process_group() first")
    group = group if group is not None else dist.group.WORLD
    if rank is not None and rank not in dist.get_process_group_ranks(group):
        raise ValueError(f"rank {rank} is not a member of the group (members {dist.get_process_group_ranks(group)})")
    hccl = _hccl_name(group, dist.get_rank() if rank is None else rank)
    if hccl is not None:   # a torch_npu process with an HCCL backend: the name the device kernels need
        return register_group_name(hccl, group)
    name = NAME_PREFIX + _torch_group_name(group)
    with _LOCK:
        _NAMES[name] = group
    return name


def register_group_name(name: str, group: Any) -> str:
    """Bind ``name`` to a torch.distributed group, so ops called with ``group_ep=name`` use it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a group name must be a non-empty string, got {name!r}")
    with _LOCK:
        _NAMES[name] = group
    return name


def resolve_group(name: str):
    """The torch.distributed group ``name`` stands for (see :func:`get_hccl_comm_name`)."""
    with _LOCK:
        group = _NAMES.get(name)
    if group is not None:
        return group
    if dist.is_initialized() and name.startswith(NAME_PREFIX):
        # a group this process is a member of, named by code that did not go through
        # get_hccl_comm_name here (torch gives a group the same name on every member)
        from torch.distributed import distributed_c10d as c10d
        wanted = name[len(NAME_PREFIX):]
        for pg, pg_name in list(getattr(c10d._world, "pg_names", {}).items()):
            if pg_name == wanted:
                register_group_name(name, pg)
                return pg
    known = sorted(_NAMES)
    raise ValueError(f"group name {name!r} names no torch.distributed group in this process; pass the string "
                     f"ascend_moe.distributed.get_hccl_comm_name(group) returns (known names: {known})")


# --------------------------------------------------------------------------------------------
# timeouts and collectives
# --------------------------------------------------------------------------------------------

_timeout: Optional[float] = None


def set_timeout(seconds: Optional[float]) -> None:
    """Longest wait of each collective of the exchange (None: ``ASCEND_MOE_EP_TIMEOUT`` or 60 s)."""
    global _timeout
    _timeout = None if seconds is None else float(seconds)


def get_timeout() -> float:
    if _timeout is not None:
        return _timeout
    return float(os.environ.get("ASCEND_MOE_EP_TIMEOUT", "60"))


def _wait(work, what: str, op: str) -> None:
    try:
        ok = work.wait(timeout=datetime.timedelta(seconds=get_timeout()))
    except Exception as e:  # gloo raises on timeout and on a closed peer connection
        raise EpCommError(f"{op}: {what} failed after at most {get_timeout():.0f} s: {e}. A peer rank died, hung, or "
                          f"is running a different collective on the EP group") from e
    if ok is False:
        raise EpCommError(f"{op}: {what} did not finish within {get_timeout():.0f} s")


def _all_to_all(out: torch.Tensor, inp: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int],
                group, what: str, op: str) -> None:
    counted = hasattr(out, "_use_count")   # torch's reference count of a tensor (absent from older releases)
    baseline = (out._use_count(), inp._use_count()) if counted else (0, 0)
    _wait(dist.all_to_all_single(out, inp, output_split_sizes=list(out_splits), input_split_sizes=list(in_splits),
                                 group=group, async_op=True), what, op)
    if counted:
        _until_released(out, inp, baseline)


def _until_released(out: torch.Tensor, inp: torch.Tensor, baseline: Tuple[int, int]) -> None:
    """Wait until the backend's worker thread has dropped its references to ``out`` and ``inp``.

    ``work.wait()`` returns when gloo marks the work complete; its worker thread frees the work (and its
    references to the tensors) a moment later.  If that thread frees the last reference to a tensor whose
    Python object was already dropped (``torch.from_numpy(...)`` temporaries), it must take the GIL; when
    the interpreter has begun exiting by then, the thread is unwound and the process aborts ("terminate
    called without an active exception").  Returning only once the use counts are back to what they were
    before the collective keeps every tensor's last release on this thread."""
    deadline = time.monotonic() + get_timeout()
    delay = 0.0
    while out._use_count() > baseline[0] or inp._use_count() > baseline[1]:
        if time.monotonic() > deadline:   # not an error: the exchange itself completed
            return
        time.sleep(delay)                 # releases the GIL for the worker thread
        delay = min(0.001, delay + 0.0001)


def _has_cpu_backend(group) -> bool:
    try:
        group._get_backend(torch.device("cpu"))
    except Exception:  # noqa: BLE001 - the group has no backend for CPU tensors
        return False
    return True


def _all_gather_object(obj: Any, group, what: str, op: str) -> List[Any]:
    """Every rank's picklable ``obj`` (``dist.all_gather_object``'s contract), on :func:`_all_to_all` so that
    its tensors, too, are released on this thread (see :func:`_until_released`).  A group without a CPU
    backend (HCCL alone, on a real NPU) uses ``dist.all_gather_object``, which stages through the device."""
    w = dist.get_world_size(group)
    if not _has_cpu_backend(group):
        out_objs: List[Any] = [None] * w
        try:
            dist.all_gather_object(out_objs, obj, group=group)
        except Exception as e:
            raise EpCommError(f"{op}: {what} failed: {e}. A peer rank died, hung, or is running a different "
                              "collective on the EP group") from e
        return out_objs
    payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = torch.empty(w, dtype=torch.int64)
    try:
        _all_to_all(sizes, torch.full((w,), payload.size, dtype=torch.int64), [1] * w, [1] * w, group, what, op)
        n = int(sizes.max())
        send = np.zeros((w, n), dtype=np.uint8)
        send[:, :payload.size] = payload
        out = torch.empty(w * n, dtype=torch.uint8)
        _all_to_all(out, torch.from_numpy(send.reshape(-1)), [n] * w, [n] * w, group, what, op)
    except EpCommError:
        raise
    except Exception as e:
        raise EpCommError(f"{op}: {what} failed: {e}. A peer rank died, hung, or is running a different "
                          "collective on the EP group") from e
    rows = out.numpy().reshape(w, n)
    return [pickle.loads(rows[q, :int(sizes[q])].tobytes()) for q in range(w)]


# --------------------------------------------------------------------------------------------
# torch <-> NumPy (CPU tensors; bf16 through ml_dtypes, no copy)
# --------------------------------------------------------------------------------------------

def _np(t: Any) -> Optional[np.ndarray]:
    if t is None:
        return None
    if isinstance(t, np.ndarray):
        return t
    t = t.detach()
    if t.device.type != "cpu":
        raise ValueError(f"the torch.distributed EP path takes CPU tensors (simulated NPUs), got one on {t.device}")
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


def _torch(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _rows_as_bytes(*columns: np.ndarray) -> np.ndarray:
    """Pack per-row arrays (each [rows, ...]) side by side into one uint8 [rows, bytes] array, so a
    single all_to_all moves payload and metadata bit-exactly whatever their dtypes."""
    rows = len(columns[0])
    parts = []
    for c in columns:
        c = np.ascontiguousarray(c)
        width = int(np.prod(c.shape[1:], dtype=np.int64)) * c.dtype.itemsize
        parts.append(c.reshape(-1).view(np.uint8).reshape(rows, width))
    return np.concatenate(parts, axis=1) if parts else np.zeros((rows, 0), np.uint8)


def _bytes_as_rows(buf: np.ndarray, layout: Sequence[Tuple[np.dtype, int]]) -> List[np.ndarray]:
    out, pos = [], 0
    for dt, width in layout:
        nbytes = np.dtype(dt).itemsize * width
        out.append(np.ascontiguousarray(buf[:, pos:pos + nbytes]).reshape(-1).view(dt).reshape(len(buf), width))
        pos += nbytes
    return out


# --------------------------------------------------------------------------------------------
# pre-flight: the same verdict on every rank
# --------------------------------------------------------------------------------------------

def _group_violation(op: str, rule_id: str, argument: str, message: str, target: Target, fix: str) -> Violation:
    return Violation(rule_id, op, argument, message, target.product, str(target.cann), "all CANN versions",
                     "ascend_moe.distributed pre-flight exchange; docs 约束说明", fix, None)


def _preflight(op: str, args_or_error: Any, group, target: Target) -> Tuple[Dict[str, Any], Any]:
    """Check locally, exchange, and raise the same ConstraintError on every rank if any rank fails.

    ``args_or_error``: this rank's bound arguments, or the exception it hit while preparing them.
    Returns the bound arguments and the group.
    """
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    report: Dict[str, Any] = {"rank": rank, "error": None, "violations": [], "key": None, "bs": None}
    if isinstance(args_or_error, BaseException):
        report["error"] = f"{type(args_or_error).__name__}: {args_or_error}"
    else:
        args = args_or_error
        try:
            found = check_call(op, args, target)
            strict = strict_docs()
            report["violations"] = [v for v in found if v.severity == "error" or strict]
            for v in found:
                if v not in report["violations"]:
                    warnings.warn(str(v), ConstraintWarning, stacklevel=4)
            xm = args.get("x") if "x" in args else args.get("expand_x")
            report["key"] = {n: args[n] for n in IDENTICAL_ARGS if n in args}
            if len(getattr(xm, "shape", ())) == 2:
                report["key"]["H"] = int(xm.shape[1])
            ids = args.get("expert_ids")
            if len(getattr(ids, "shape", ())) == 2:
                report["key"]["K"] = int(ids.shape[1])
                report["bs"] = int(ids.shape[0])
            report["ep_world_size"], report["ep_rank_id"] = args.get("ep_world_size"), args.get("ep_rank_id")
        except Exception as e:  # an internal error still reaches the exchange, so peers do not wait
            report["error"] = f"{type(e).__name__}: {e}"

    reports = _all_gather_object(report, group, "pre-flight argument exchange", op)
    problems: List[Violation] = []
    for rep in reports:
        r = rep["rank"]
        if rep["error"]:
            problems.append(_group_violation(op, "ep.rank_failed", "(rank)", f"rank {r} failed before the exchange: "
                                             f"{rep['error']}", target, f"fix the call on rank {r}"))
        for v in rep["violations"]:
            problems.append(replace(v, message=f"rank {r}: {v.message}"))
    ok = [rep for rep in reports if not rep["error"] and rep["key"] is not None]
    for rep in ok:
        r = rep["rank"]
        if rep["ep_world_size"] != world:
            problems.append(_group_violation(
                op, "ep.world_size_matches_group", "ep_world_size",
                f"rank {r}: ep_world_size={rep['ep_world_size']} but the group named by group_ep has {world} ranks",
                target, f"pass ep_world_size={world}"))
        if rep["ep_rank_id"] != r:
            problems.append(_group_violation(
                op, "ep.rank_matches_group", "ep_rank_id",
                f"rank {r} of the group passes ep_rank_id={rep['ep_rank_id']}", target,
                "pass ep_rank_id = dist.get_rank(ep_group)"))
    if ok:
        names = sorted({n for rep in ok for n in rep["key"]})
        for n in names:
            values = [(rep["rank"], rep["key"].get(n)) for rep in ok]
            distinct = {repr(v) for _, v in values}
            if len(distinct) > 1:
                listing = ", ".join(f"rank {r}: {v!r}" for r, v in values)
                problems.append(_group_violation(
                    op, "ep.identical_arguments", n, f"{n} must be the same on every rank, got {listing}", target,
                    f"pass one {n} on all ranks of the EP group"))
        gbs = ok[0]["key"].get("global_bs")
        sizes = [rep["bs"] for rep in ok if rep["bs"] is not None]
        if isinstance(gbs, int) and sizes and len({repr(rep["key"].get("global_bs")) for rep in ok}) == 1:
            if gbs == 0 and len(set(sizes)) > 1:
                problems.append(_group_violation(
                    op, "ep.global_bs_covers_ranks", "global_bs",
                    f"global_bs=0 needs the same BS on every rank, got {sizes}", target,
                    f"pass global_bs = max(BS) * ep_world_size = {max(sizes) * world}"))
            elif gbs and gbs < max(sizes) * world:
                problems.append(_group_violation(
                    op, "ep.global_bs_covers_ranks", "global_bs",
                    f"global_bs={gbs} is below max(BS) * ep_world_size = {max(sizes)}*{world}", target,
                    f"pass global_bs = {max(sizes) * world}"))
    if problems:
        raise ConstraintError(op, problems, target)
    return args_or_error


def _agree(op: str, group, local_error: Optional[str], what: str, target: Target) -> None:
    """A second, cheap agreement round after the count exchange (inconsistent counts or opaque
    tensors passed to combine): every rank raises the same error if any rank found one."""
    reports = _all_gather_object(local_error, group, what, op)
    bad = [(r, e) for r, e in enumerate(reports) if e]
    if bad:
        raise ConstraintError(op, [_group_violation(op, "ep.rank_failed", "(rank)", f"rank {r}: {e}", target,
                                                    "pass combine the tensors dispatch returned, on every rank")
                                   for r, e in bad], target)


def _group_of(op: str, group_ep: Any):
    if not isinstance(group_ep, str):
        # without a group there is nobody to tell: this rank fails alone (its peers time out)
        raise ValueError(f"{op}: group_ep must be a communicator name string, got {group_ep!r}")
    return resolve_group(group_ep)


def simulate(op: str, a: Dict[str, Any], target: Target) -> tuple:
    """The simulator of the declared op (``ascend_moe.ops.distribute``) on this rank: the pre-flight
    check agreed across the group ``group_ep`` names, then the exchange.  ``a``: the bound arguments
    (NumPy arrays or CPU tensors)."""
    group = _group_of(op, a["group_ep"])
    _preflight(op, a, group, target)
    if op.startswith("npu_moe_distribute_dispatch"):
        return _dispatch(op, a, group, target)
    return _combine(op, a, group, target)


def device_preflight(op: str, a: Dict[str, Any]) -> None:
    """The checker for a call on NPU tensors (before aclnn): agreed across the ranks when ``group_ep`` is a
    name this process registered for a torch.distributed group (:func:`get_hccl_comm_name`,
    :func:`register_group_name`; in a torch_npu process an HCCL group, whose ``all_gather_object`` the
    exchange uses), else this rank's own check (its peers then wait in HCCL until its timeout)."""
    from .rules import enforce_call
    with _LOCK:
        group = _NAMES.get(a.get("group_ep"))
    if group is None or not dist.is_initialized():
        enforce_call(op, a)
        return
    _preflight(op, a, group, resolve_target())


def _call(op: str, args: tuple, kwargs: dict) -> Any:
    """Bind the call; a rank whose call does not even bind carries its error into the pre-flight
    exchange (every rank then fails with it), the others run the declared op."""
    try:
        bind(op, args, kwargs)
    except Exception as e:  # noqa: BLE001 - reported on every rank
        position = 5 if op.startswith("npu_moe_distribute_combine") else 2
        group_ep = kwargs.get("group_ep", args[position] if len(args) > position else None)
        _preflight(op, e, _group_of(op, group_ep), resolve_target())
        raise  # not reached: the pre-flight raises for a rank that failed
    import ascend_moe
    return getattr(ascend_moe, op)(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# statistics of the last exchange (for reports and the CLI)
# --------------------------------------------------------------------------------------------

_stats = threading.local()


def last_exchange_stats() -> Dict[str, int]:
    """Bytes this rank sent and received in the last dispatch/combine payload exchange."""
    return dict(getattr(_stats, "value", {}))


def _record(op: str, sent_rows: int, recv_rows: int, row_bytes: int) -> None:
    _stats.value = {"op": op, "sent_rows": sent_rows, "recv_rows": recv_rows, "row_bytes": row_bytes,
                    "sent_bytes": sent_rows * row_bytes, "recv_bytes": recv_rows * row_bytes}


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

def _config(args: Dict[str, Any]) -> _sim.EpConfig:
    bs, k = args["expert_ids"].shape
    return _sim.ep_config(bs, k, args["ep_world_size"], args["ep_rank_id"], args["moe_expert_num"],
                          args["shared_expert_num"], args["shared_expert_rank_num"], args["global_bs"],
                          args["tp_world_size"])


def _check_simulated(op: str, args: Dict[str, Any]) -> None:
    if args.get("tp_world_size", 0) == 2:
        raise _sim.UnsupportedBySimulator(f"{op}: tp_world_size=2 (TP all-gather after the EP exchange, A3) is not "
                                          "simulated; pass tp_world_size 0 or 1")


def _dispatch(op: str, a: Dict[str, Any], group, target: Target) -> tuple:
    from .ops.distribute import dispatch_sizes
    local_error = None
    try:
        _check_simulated(op, a)
        cfg = _config(a)
        sizes = dispatch_sizes(a, v1=op == "npu_moe_distribute_dispatch")
        x, ids = _np(a["x"]), _np(a["expert_ids"])
        send = _sim.dispatch_send(cfg, x, ids, scales=_np(a["scales"]), x_active_mask=_np(a["x_active_mask"]),
                                  expert_scales=_np(a["expert_scales"]), quant_mode=a["quant_mode"])
    except Exception as e:
        local_error = f"{type(e).__name__}: {e}"
    _agree(op, group, local_error, "dispatch preparation", target)

    w, lmax = send.counts.shape
    recv_counts = torch.empty(w * lmax, dtype=torch.int64)
    _all_to_all(recv_counts, torch.from_numpy(send.counts.reshape(-1).copy()), [lmax] * w, [lmax] * w, group,
                "dispatch count exchange", op)
    recv_counts_np = recv_counts.numpy().reshape(w, lmax)

    h = x.shape[1]
    out_dtype = "int8" if a["quant_mode"] == 2 else dtype_name(x)
    payload_dtype = np.dtype(np.int8) if a["quant_mode"] == 2 else x.dtype
    packed = _rows_as_bytes(send.payload, send.row_scales, send.triples, send.weights)
    row_bytes = packed.shape[1]
    recv_rows = int(recv_counts_np.sum())
    out = torch.empty((recv_rows, row_bytes), dtype=torch.uint8)
    _all_to_all(out, torch.from_numpy(packed), recv_counts_np.sum(axis=1).tolist(), send.splits, group,
                "dispatch payload exchange", op)
    _record(op, len(packed), recv_rows, row_bytes)
    payload, row_scales, triples, weights = _bytes_as_rows(
        out.numpy(), [(payload_dtype, h), (np.float32, 1), (np.int32, 3), (np.float32, 1)])
    res = _sim.dispatch_receive(cfg, recv_counts_np, payload, row_scales[:, 0], triples, weights[:, 0], h=h,
                                out_dtype=out_dtype, expert_token_nums_type=a["expert_token_nums_type"],
                                v1_expand_idx=send.slots if op == "npu_moe_distribute_dispatch" else None,
                                quantised=send.quantised, weighted=send.weighted,
                                # op-plugin's allocation (the counts' tail is A2 combine metadata)
                                ep_recv_counts_size=sizes["ep_recv_counts"], a_rows=sizes["A"])
    return tuple(_torch(t) for t in res.as_tuple())


def npu_moe_distribute_dispatch_v2(*args, **kwargs) -> tuple:
    """``ascend_moe.npu_moe_distribute_dispatch_v2`` (the declared op), except that a call that does not
    bind (a wrong argument type on one rank) fails on every rank of the group instead of on its own.

    Returns ``(expand_x, dynamic_scales, assist_info_for_combine, expert_token_nums, ep_recv_counts,
    tp_recv_counts, expand_scales)``; see :mod:`ascend_moe.sim.distribute` for the layout.
    """
    return _call("npu_moe_distribute_dispatch_v2", args, kwargs)


def npu_moe_distribute_dispatch(*args, **kwargs) -> tuple:
    """torch_npu.npu_moe_distribute_dispatch (v1): as v2, with ``expand_idx`` [BS*K] third."""
    return _call("npu_moe_distribute_dispatch", args, kwargs)


# --------------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------------

def _combine(op: str, a: Dict[str, Any], group, target: Target) -> torch.Tensor:
    v1 = op == "npu_moe_distribute_combine"
    if v1 and a.get("shared_expert_x") is not None:
        from .ops.distribute import V1_SHARED_X_IGNORED
        warnings.warn(V1_SHARED_X_IGNORED, RuntimeWarning, stacklevel=2)
    local_error = None
    try:
        _check_simulated(op, a)
        cfg = _config(a)
        expand_x, ids = _np(a["expand_x"]), _np(a["expert_ids"])
        mask = _np(a.get("x_active_mask"))
        info = _np(a["expand_idx"] if v1 else a["assist_info_for_combine"])
        send = _sim.combine_send(cfg, expand_x, _np(a["ep_send_counts"]), None if v1 else info)
        expect, token_k_v1 = _sim.combine_expected_rows(cfg, ids, mask, info if v1 else None)
    except Exception as e:
        local_error = f"{type(e).__name__}: {e}"
    _agree(op, group, local_error, "combine preparation", target)

    w = cfg.ep_world_size
    recv_splits = torch.empty(w, dtype=torch.int64)
    _all_to_all(recv_splits, torch.tensor(send.splits, dtype=torch.int64), [1] * w, [1] * w, group,
                "combine count exchange", op)
    got = recv_splits.numpy()
    mismatch = None
    if not np.array_equal(got, expect):
        bad = [q for q in range(w) if got[q] != expect[q]]
        mismatch = (f"expects {expect.tolist()} rows back from ranks 0..{w - 1} (from its expert_ids/x_active_mask) but "
                    f"ranks {bad} would send {[int(got[q]) for q in bad]}: ep_send_counts/assist_info_for_combine do "
                    "not belong to this dispatch")
    _agree(op, group, mismatch, "combine count check", target)

    h = expand_x.shape[1]
    packed = _rows_as_bytes(send.payload, send.token_k)
    row_bytes = packed.shape[1]
    recv_rows = int(got.sum())
    out = torch.empty((recv_rows, row_bytes), dtype=torch.uint8)
    _all_to_all(out, torch.from_numpy(packed), got.tolist(), send.splits, group, "combine payload exchange", op)
    _record(op, len(packed), recv_rows, row_bytes)
    rows, token_k = _bytes_as_rows(out.numpy(), [(expand_x.dtype, h), (np.int32, 2)])
    if v1:
        token_k = token_k_v1
    res = _sim.combine_receive(cfg, rows, token_k, ids, _np(a["expert_scales"]), x_active_mask=mask,
                               # op-plugin does not pass v1's shared_expert_x to aclnn: the device
                               # result lacks it (a RuntimeWarning says so, below)
                               shared_expert_x=None if v1 else _np(a["shared_expert_x"]),
                               out_dtype=dtype_name(expand_x))
    return _torch(res)


def npu_moe_distribute_combine_v2(*args, **kwargs) -> torch.Tensor:
    """torch_npu.npu_moe_distribute_combine_v2 on simulated NPUs: ``x [BS, H]`` of this rank."""
    return _call("npu_moe_distribute_combine_v2", args, kwargs)


def npu_moe_distribute_combine(*args, **kwargs) -> torch.Tensor:
    """torch_npu.npu_moe_distribute_combine (v1, ``expand_idx`` from the v1 dispatch)."""
    return _call("npu_moe_distribute_combine", args, kwargs)
