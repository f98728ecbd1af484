"""Declarations of the expert-parallel MC2 ops ``npu_moe_distribute_dispatch(_v2)`` and
``npu_moe_distribute_combine(_v2)`` (torch_npu; spec moe-routing-and-ep.md 7-8).

These ops communicate: every rank of the EP group calls them together.  The declaration is the
same as every other op's (schema, shape rule, rules module, aclnn table, drop-in name); what
differs is that the simulator adapter runs a collective (:mod:`ascend_moe.distributed`: the
checker agreed across the ranks of the torch.distributed group that ``group_ep`` names, then
``all_to_all_single`` exchanges), so the declarations set ``collective=True`` and the generated
kernels leave the checker to the adapter - and, for NPU tensors, to the aclnn entry check, which
agrees across the ranks too when the HCCL name is one :func:`ascend_moe.distributed.get_hccl_comm_name`
returned (else it checks locally).  On a real NPU the ops go to aclnn with ``group_ep`` /
``group_tp`` passed verbatim: there they are HCCL communicator names, as torch_npu's process group
gives them (``group._get_backend(torch.device("npu")).get_hccl_comm_name(rank)``).

No generated sample tests: a call needs a process group whose every member makes the same call,
which the single-process sample harness (opcheck, compile, fuzz) cannot provide.  The ops are
tested with 2 and 4 gloo processes (tests/test_distribute_ep.py) and through the fake CANN
runtime (tests/fake_cann/fakecann_scenarios_distribute.py).

Entry points and ``since`` (the first CANN release whose public sources show them):
aclnnMoeDistributeDispatch / Combine - torch_npu 7.0.0 docs (CANN 8.1.RC1) document the v1 ops;
V2 - the CANN 8.2.RC1 aclnn docs (aclnnMoeDistributeDispatchV2.md, 82RC1alpha003);
V3 / V4 - present in ops-transformer tag v8.5.0, the earliest tag read [I: possibly older].
op-plugin's order: V4 > V3 > V2 by availability; V3 cannot take ``performance_info``, V2 neither
``elastic_info`` nor nonzero ``zero/copy/const_expert_num`` (``MoeDistributeDispatchV2KernelOpApi.cpp``,
``MoeDistributeCombineKernelV2OpApi.cpp``: TORCH_CHECK); here the same refusal is a BackendError.
v1 combine: op-plugin passes no ``shared_expert_x`` (aclnnMoeDistributeCombine has no such parameter), so
it is ignored on the device; the simulator ignores it too, and both warn (RuntimeWarning, as op-plugin's
dropped arguments elsewhere).
"""
from __future__ import annotations

from typing import Any, Dict, List

from ..opdecl import AclnnEntry, OpDecl, Out, declare

V1_SINCE = "8.1.RC1"
V2_SINCE = "8.2.RC1"
V3_SINCE = "8.5.0"    # [I] earliest ops-transformer tag read; may be older
SIM_GROUP_PREFIX = "sim_hccl:"   # ascend_moe.distributed.NAME_PREFIX (kept torch-free here)


# ------------------------------------------------------------------------------------------------
# shapes (op-plugin's allocation, MoeDistributeDispatch*KernelOpApi.cpp / MoeDistributeCombine*OpApi.cpp)
# ------------------------------------------------------------------------------------------------

def _dtype_name(t: Any) -> str:
    return str(getattr(t, "dtype", t)).replace("torch.", "")


def global_bs_real(a: Dict[str, Any]) -> int:
    """op-plugin: ``global_bs`` or ``BS * ep_world_size`` (BS = expert_ids rows) when it is 0."""
    return int(a["global_bs"]) or int(a["expert_ids"].shape[0]) * int(a["ep_world_size"])


def dispatch_sizes(a: Dict[str, Any], v1: bool) -> Dict[str, int]:
    """A (rows of expand_x per TP rank), local experts L and the ep_recv_counts length, as op-plugin
    allocates them."""
    bs, k = int(a["x"].shape[0]), int(a["expert_ids"].shape[1])
    w, rank, e = int(a["ep_world_size"]), int(a["ep_rank_id"]), int(a["moe_expert_num"])
    s, num = int(a["shared_expert_rank_num"]), int(a["shared_expert_num"])
    gbs = global_bs_real(a)
    moe_ranks = max(w - s, 1)
    local, rows = 0, 0
    if a["expert_shard_type"] == 0:
        if rank < s:
            local = 1
            if v1:
                rows = gbs // s
            else:
                per_shared = max(s // max(num, 1), 1)
                rows = (gbs // max(w, 1)) * (-(-w // per_shared))
        else:
            local = e // moe_ranks
            rows = gbs * min(local, k)
        if not v1 and a.get("elastic_info") is not None:
            per_shared = max(s // max(num, 1), 1)
            rows = max((gbs // max(w, 1)) * (-(-w // per_shared)), gbs * min(e // moe_ranks, k))
            local = max(local, e // moe_ranks)
    elif v1:   # shared experts at the back (v1 wrapper only)
        if rank >= w - s:
            local, rows = 1, gbs // max(s, 1)
        else:
            local = e // moe_ranks
            rows = gbs * min(local, k)
    tp = int(a["tp_world_size"])
    counts = w * local * (tp if tp == 2 else 1)
    if a.get("expert_scales") is not None:
        # 2 buffers x 8 ranks per server: A2 combine metadata after the counts (v1 sizes it from BS)
        counts = w * local + 2 * (bs if v1 else gbs) * k * (w // 8)
    return {"A": rows, "L": local, "ep_recv_counts": counts, "bs": bs, "k": k}


def _dispatch_shape(v1: bool):
    def shape(a: Dict[str, Any]) -> List[Any]:
        n = dispatch_sizes(a, v1)
        x, tp = a["x"], int(a["tp_world_size"])
        rows = n["A"] * tp if tp else n["A"]
        out = "int8" if (a.get("scales") is not None or a["quant_mode"] != 0) else _dtype_name(x)
        third = ((n["bs"] * n["k"],), "int32") if v1 else ((max(n["bs"] * n["k"], n["A"] * 128),), "int32")
        return [((rows, int(x.shape[1])), out), ((rows,), "float32"), third, ((n["L"],), "int64"),
                ((n["ep_recv_counts"],), "int32"), ((tp,), "int32"), ((n["A"],), "float32")]
    return shape


def _combine_shape(v1: bool):
    def shape(a: Dict[str, Any]) -> List[Any]:
        ex = a["expand_x"]
        dt = _dtype_name(ex)
        if dt == "int32":
            dt = "float16" if v1 and a.get("out_dtype") else "bfloat16"
        return [((int(a["expert_ids"].shape[0]), int(ex.shape[1])), dt)]
    return shape


# ------------------------------------------------------------------------------------------------
# simulator adapters: the collective over torch.distributed
# ------------------------------------------------------------------------------------------------

def _sim(op: str):
    def run(a: Dict[str, Any], target: Any):
        from .. import distributed
        return distributed.simulate(op, a, target)
    run.__name__ = f"{op}_sim"
    return run


# ------------------------------------------------------------------------------------------------
# aclnn
# ------------------------------------------------------------------------------------------------

def _backend_error(msg: str) -> Exception:
    from ..backends import BackendError
    return BackendError(msg)


def _on_real_npu(a: Dict[str, Any]) -> bool:
    from ..backends import NPU_DEVICE_TYPES
    t = a.get("x") if a.get("x") is not None else a.get("expand_x")
    return getattr(getattr(t, "device", None), "type", "cpu") in NPU_DEVICE_TYPES


def _check_group_names(op: str, a: Dict[str, Any]) -> None:
    """A torch.distributed (gloo) group name reaches HCCL only by mistake: refuse it on a real NPU."""
    if not _on_real_npu(a):
        return
    for name in ("group_ep", "group_tp"):
        v = a.get(name) or ""
        if v.startswith(SIM_GROUP_PREFIX):
            raise _backend_error(
                f"{op}: {name}={v!r} names a torch.distributed group of the CPU simulation, not an HCCL "
                "communicator; on the NPU pass group._get_backend(torch.device('npu')).get_hccl_comm_name(rank) "
                "(ascend_moe.distributed.get_hccl_comm_name(group) returns it in a torch_npu process)")


def _agree_on_device(op: str, a: Dict[str, Any]) -> None:
    """NPU tensors: the checker, agreed across the ranks when ``group_ep`` names a torch.distributed group of
    this process (ascend_moe.distributed.get_hccl_comm_name registers torch_npu's HCCL name), so that bad
    input fails on every rank instead of leaving the others waiting in HCCL; locally otherwise."""
    if _on_real_npu(a):
        from ..distributed import device_preflight
        device_preflight(op, a)


def _refuse(op: str, entry: str, a: Dict[str, Any], tensors=(), ints=(), why: str = "") -> None:
    given = [n for n in tensors if a.get(n) is not None] + [n for n in ints if a.get(n)]
    if given:
        raise _backend_error(f"{op}: {', '.join(given)} cannot be passed to {entry}, the newest entry point this "
                             f"CANN has ({why}); op-plugin refuses the call too")


def _dispatch_check(op: str, entry: str):
    def check(a: Dict[str, Any]) -> None:
        _check_group_names(op, a)
        _agree_on_device(op, a)
        from ..backends.aclnn import _no_dtype_overrides
        if op.endswith("_v2"):
            _no_dtype_overrides(op, a, ("y_dtype", "x_dtype", "scales_dtype"))
        if entry.endswith("V3"):
            _refuse(op, entry, a, tensors=("performance_info",), why="performance_info needs V4")
        if entry.endswith("V2"):
            _refuse(op, entry, a, tensors=("elastic_info", "performance_info"),
                    ints=("zero_expert_num", "copy_expert_num", "const_expert_num"),
                    why="elastic scaling and special experts need V3, performance_info V4")
    return check


def _combine_check(op: str, entry: str):
    def check(a: Dict[str, Any]) -> None:
        _check_group_names(op, a)
        _agree_on_device(op, a)
        if op == "npu_moe_distribute_combine" and a.get("shared_expert_x") is not None:
            import warnings
            warnings.warn(V1_SHARED_X_IGNORED, RuntimeWarning, stacklevel=2)
        if entry.endswith("V3"):
            _refuse(op, entry, a, tensors=("performance_info",), why="performance_info needs V4")
        if entry.endswith("V2"):
            _refuse(op, entry, a, tensors=("elastic_info", "ori_x", "const_expert_alpha_1", "const_expert_alpha_2",
                                           "const_expert_v", "performance_info"),
                    ints=("zero_expert_num", "copy_expert_num", "const_expert_num"),
                    why="elastic scaling and special experts need V3, performance_info V4")
    return check


V1_SHARED_X_IGNORED = ("npu_moe_distribute_combine: shared_expert_x is ignored: op-plugin does not pass it to "
                       "aclnnMoeDistributeCombine, which has no such parameter (MoeDistributeCombineKernelOpApi.cpp), "
                       "so the result is the routed experts' sum alone, on the device and in the simulator; add the "
                       "shared expert output yourself or use npu_moe_distribute_combine_v2")


def _global_bs(a: Dict[str, Any], outs: Any) -> int:
    return global_bs_real(a)


_DISPATCH_SCALARS = ("const char *groupEp, int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum, "
                     "const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType, "
                     "int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t quantMode, int64_t globalBs, "
                     "int64_t expertTokenNumsType")
_DISPATCH_V2_OUTS = ("aclTensor *expandXOut, aclTensor *dynamicScalesOut, aclTensor *assistInfoForCombineOut, "
                     "aclTensor *expertTokenNumsOut, aclTensor *epRecvCountsOut, aclTensor *tpRecvCountsOut, "
                     "aclTensor *expandScalesOut")
_DISPATCH_V2_BIND = {"expandXOut": Out(0), "dynamicScalesOut": Out(1), "assistInfoForCombineOut": Out(2),
                     "expertTokenNumsOut": Out(3), "epRecvCountsOut": Out(4), "tpRecvCountsOut": Out(5),
                     "expandScalesOut": Out(6), "globalBs": _global_bs}
_DISPATCH_V2_HEAD = ("const aclTensor *x, const aclTensor *expertIds, const aclTensor *scalesOptional, "
                     "const aclTensor *xActiveMaskOptional, const aclTensor *expertScalesOptional, ")


def _dispatch_v2_entry(version: str) -> AclnnEntry:
    name = f"aclnnMoeDistributeDispatch{version}"
    extra_in = {"V2": "", "V3": "const aclTensor *elasticInfoOptional, ",
                "V4": "const aclTensor *elasticInfoOptional, const aclTensor *performanceInfoOptional, "}[version]
    extra_scalars = "" if version == "V2" else \
        ", int64_t zeroExpertNum, int64_t copyExpertNum, int64_t constExpertNum"
    return AclnnEntry(name, family="distribute_dispatch_v2", requires=("x", "expert_ids"),
                      since=V2_SINCE if version == "V2" else V3_SINCE,
                      params=_DISPATCH_V2_HEAD + extra_in + _DISPATCH_SCALARS + ", const char *commAlg"
                      + extra_scalars + ", " + _DISPATCH_V2_OUTS,
                      bind=_DISPATCH_V2_BIND, check=_dispatch_check("npu_moe_distribute_dispatch_v2", name))


_COMBINE_HEAD = ("const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *assistInfoForCombine, "
                 "const aclTensor *epSendCounts, const aclTensor *expertScales, "
                 "const aclTensor *tpSendCountsOptional, const aclTensor *xActiveMaskOptional, "
                 "const aclTensor *activationScaleOptional, const aclTensor *weightScaleOptional, "
                 "const aclTensor *groupListOptional, const aclTensor *expandScalesOptional, "
                 "const aclTensor *sharedExpertXOptional, ")
_COMBINE_SCALARS = ("const char *groupEp, int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum, "
                    "const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType, "
                    "int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t globalBs, int64_t outDtype, "
                    "int64_t commQuantMode, int64_t groupListType")
# op-plugin (combine_v2): activation/weight scale and group list null, outDtype 0, groupListType 0
_COMBINE_V2_BIND = {"activationScaleOptional": None, "weightScaleOptional": None, "groupListOptional": None,
                    "outDtype": 0, "groupListType": 0, "globalBs": _global_bs, "xOut": Out(0),
                    "constExpertAlpha1Optional": "const_expert_alpha_1",
                    "constExpertAlpha2Optional": "const_expert_alpha_2"}


def _combine_v2_entry(version: str) -> AclnnEntry:
    name = f"aclnnMoeDistributeCombine{version}"
    extra_in = "" if version == "V2" else (
        "const aclTensor *elasticInfoOptional, const aclTensor *oriXOptional, "
        "const aclTensor *constExpertAlpha1Optional, const aclTensor *constExpertAlpha2Optional, "
        "const aclTensor *constExpertVOptional, ") + (
        "const aclTensor *performanceInfoOptional, " if version == "V4" else "")
    extra_scalars = "" if version == "V2" else \
        ", int64_t zeroExpertNum, int64_t copyExpertNum, int64_t constExpertNum"
    return AclnnEntry(name, family="distribute_combine_v2",
                      requires=("expand_x", "expert_ids", "assist_info_for_combine", "ep_send_counts",
                                "expert_scales"),
                      since=V2_SINCE if version == "V2" else V3_SINCE,
                      params=_COMBINE_HEAD + extra_in + _COMBINE_SCALARS + ", const char *commAlg" + extra_scalars
                      + ", aclTensor *xOut",
                      bind=_COMBINE_V2_BIND, check=_combine_check("npu_moe_distribute_combine_v2", name))


_DOC_DISPATCH = """``(expand_x, dynamic_scales, {third}, expert_token_nums, ep_recv_counts, tp_recv_counts,
expand_scales)`` of this rank.  Every rank of the EP group calls it together.  CPU tensors: the ranks
are processes of a torch.distributed group (gloo) named by ``group_ep``
(``ascend_moe.distributed.get_hccl_comm_name(group)``); the arguments are checked on every rank and
the same ConstraintError is raised on all of them, or none.  NPU tensors: aclnn over HCCL, ``group_ep``
being the HCCL communicator name.  Layout: :mod:`ascend_moe.sim.distribute`."""

DISPATCH_V2 = declare(OpDecl(
    schema="npu_moe_distribute_dispatch_v2(Tensor x, Tensor expert_ids, str group_ep, int ep_world_size, "
           "int ep_rank_id, int moe_expert_num, *, Tensor? scales=None, Tensor? x_active_mask=None, "
           "Tensor? expert_scales=None, Tensor? elastic_info=None, Tensor? performance_info=None, "
           "str group_tp=\"\", int tp_world_size=0, int tp_rank_id=0, int expert_shard_type=0, "
           "int shared_expert_num=1, int shared_expert_rank_num=0, int quant_mode=0, int global_bs=0, "
           "int expert_token_nums_type=1, str comm_alg=\"\", int zero_expert_num=0, int copy_expert_num=0, "
           "int const_expert_num=0, int? y_dtype=None, int? x_dtype=None, int? scales_dtype=None) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    rules="distribute",
    shape=_dispatch_shape(v1=False),
    sim=_sim("npu_moe_distribute_dispatch_v2"),
    aclnn=tuple(_dispatch_v2_entry(v) for v in ("V4", "V3", "V2")),
    doc="torch_npu.npu_moe_distribute_dispatch_v2: " + _DOC_DISPATCH.format(third="assist_info_for_combine"),
    collective=True,
))

DISPATCH = declare(OpDecl(
    schema="npu_moe_distribute_dispatch(Tensor x, Tensor expert_ids, str group_ep, int ep_world_size, "
           "int ep_rank_id, int moe_expert_num, *, Tensor? scales=None, Tensor? x_active_mask=None, "
           "Tensor? expert_scales=None, str group_tp=\"\", int tp_world_size=0, int tp_rank_id=0, "
           "int expert_shard_type=0, int shared_expert_num=1, int shared_expert_rank_num=0, int quant_mode=0, "
           "int global_bs=0, int expert_token_nums_type=1) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    rules="distribute",
    shape=_dispatch_shape(v1=True),
    sim=_sim("npu_moe_distribute_dispatch"),
    aclnn=(AclnnEntry("aclnnMoeDistributeDispatch", family="distribute_dispatch", requires=("x", "expert_ids"),
                      since=V1_SINCE,
                      params="const aclTensor *x, const aclTensor *expertIds, const aclTensor *scales, "
                             "const aclTensor *xActiveMask, const aclTensor *expertScales, " + _DISPATCH_SCALARS
                             + ", aclTensor *expandX, aclTensor *dynamicScales, aclTensor *expandIdx, "
                               "aclTensor *expertTokenNums, aclTensor *epRecvCounts, aclTensor *tpRecvCounts, "
                               "aclTensor *expandScales",
                      bind={"expandX": Out(0), "dynamicScales": Out(1), "expandIdx": Out(2),
                            "expertTokenNums": Out(3), "epRecvCounts": Out(4), "tpRecvCounts": Out(5),
                            "expandScales": Out(6), "globalBs": _global_bs},
                      check=_dispatch_check("npu_moe_distribute_dispatch", "aclnnMoeDistributeDispatch")),),
    doc="torch_npu.npu_moe_distribute_dispatch (v1): " + _DOC_DISPATCH.format(third="expand_idx [BS*K]"),
    collective=True,
))

COMBINE_V2 = declare(OpDecl(
    schema="npu_moe_distribute_combine_v2(Tensor expand_x, Tensor expert_ids, Tensor assist_info_for_combine, "
           "Tensor ep_send_counts, Tensor expert_scales, str group_ep, int ep_world_size, int ep_rank_id, "
           "int moe_expert_num, *, Tensor? tp_send_counts=None, Tensor? x_active_mask=None, "
           "Tensor? expand_scales=None, Tensor? shared_expert_x=None, Tensor? elastic_info=None, "
           "Tensor? ori_x=None, Tensor? const_expert_alpha_1=None, Tensor? const_expert_alpha_2=None, "
           "Tensor? const_expert_v=None, Tensor? performance_info=None, str group_tp=\"\", int tp_world_size=0, "
           "int tp_rank_id=0, int expert_shard_type=0, int shared_expert_num=1, int shared_expert_rank_num=0, "
           "int global_bs=0, int comm_quant_mode=0, str comm_alg=\"\", int zero_expert_num=0, "
           "int copy_expert_num=0, int const_expert_num=0) -> Tensor",
    rules="distribute",
    shape=_combine_shape(v1=False),
    sim=_sim("npu_moe_distribute_combine_v2"),
    aclnn=tuple(_combine_v2_entry(v) for v in ("V4", "V3", "V2")),
    doc="""torch_npu.npu_moe_distribute_combine_v2: ``x [BS, H]`` of this rank: per active token, in fp32, the
expert rows times ``expert_scales`` in k order, then the shared-expert rows and ``shared_expert_x``
unweighted, rounded once (the kernel's order).  Every rank of the EP group calls it together with the
tensors its dispatch returned (see npu_moe_distribute_dispatch_v2 for the group).""",
    collective=True,
))

COMBINE = declare(OpDecl(
    schema="npu_moe_distribute_combine(Tensor expand_x, Tensor expert_ids, Tensor expand_idx, "
           "Tensor ep_send_counts, Tensor expert_scales, str group_ep, int ep_world_size, int ep_rank_id, "
           "int moe_expert_num, *, Tensor? tp_send_counts=None, Tensor? x_active_mask=None, "
           "Tensor? activation_scale=None, Tensor? weight_scale=None, Tensor? group_list=None, "
           "Tensor? expand_scales=None, Tensor? shared_expert_x=None, str group_tp=\"\", int tp_world_size=0, "
           "int tp_rank_id=0, int expert_shard_type=0, int shared_expert_num=1, int shared_expert_rank_num=0, "
           "int global_bs=0, int out_dtype=0, int comm_quant_mode=0, int group_list_type=0) -> Tensor",
    rules="distribute",
    shape=_combine_shape(v1=True),
    sim=_sim("npu_moe_distribute_combine"),
    aclnn=(AclnnEntry("aclnnMoeDistributeCombine", family="distribute_combine",
                      requires=("expand_x", "expert_ids", "expand_idx", "ep_send_counts", "expert_scales"),
                      since=V1_SINCE,
                      params="const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *expandIdx, "
                             "const aclTensor *epSendCounts, const aclTensor *expertScales, "
                             "const aclTensor *tpSendCounts, const aclTensor *xActiveMask, "
                             "const aclTensor *activationScale, const aclTensor *weightScale, "
                             "const aclTensor *groupList, const aclTensor *expandScales, " + _COMBINE_SCALARS
                             + ", aclTensor *x",
                      bind={"x": Out(0), "globalBs": _global_bs},
                      check=_combine_check("npu_moe_distribute_combine", "aclnnMoeDistributeCombine")),),
    doc="""torch_npu.npu_moe_distribute_combine (v1, ``expand_idx`` from the v1 dispatch): ``x [BS, H]`` as
npu_moe_distribute_combine_v2, except that ``shared_expert_x`` is accepted and ignored, as on the device:
op-plugin does not pass it, aclnnMoeDistributeCombine has no such parameter (a RuntimeWarning says so).""",
    collective=True,
))
