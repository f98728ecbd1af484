"""csrc/acl_abi_distribute.h: the MC2 dispatch/combine entry-point prototypes compile with acl_abi.h, and each
typedef has the parameter list of the ops-transformer op_api source it names (checked by comparing with the
lists written here, so a reordered or retyped parameter - a group name passed where an int64 belongs - fails
to compile)."""
import pytest

from prototype_check import CXX, assert_typedefs_match, typedefs_in

TEN, OUT, STR, I64 = "const aclTensor*", "aclTensor*", "const char*", "int64_t"
TAIL = ["uint64_t*", "aclOpExecutor**"]
# groupEp, epWorldSize, epRankId, moeExpertNum, groupTp, tpWorldSize, tpRankId, expertShardType,
# sharedExpertNum, sharedExpertRankNum
COMMON = [STR, I64, I64, I64, STR, I64, I64, I64, I64, I64]
DISPATCH_SCALARS = COMMON + [I64, I64, I64]            # quantMode, globalBs, expertTokenNumsType
COMBINE_SCALARS = COMMON + [I64, I64, I64, I64]        # globalBs, outDtype, commQuantMode, groupListType
SPECIAL = [I64] * 3                                    # zero / copy / const expert num

DEFINITIONS = {
    "aclnnMoeDistributeDispatchGWS_t": [TEN] * 5 + DISPATCH_SCALARS + [OUT] * 7 + TAIL,
    "aclnnMoeDistributeDispatchV2GWS_t": [TEN] * 5 + DISPATCH_SCALARS + [STR] + [OUT] * 7 + TAIL,
    "aclnnMoeDistributeDispatchV3GWS_t": [TEN] * 6 + DISPATCH_SCALARS + [STR] + SPECIAL + [OUT] * 7 + TAIL,
    "aclnnMoeDistributeDispatchV4GWS_t": [TEN] * 7 + DISPATCH_SCALARS + [STR] + SPECIAL + [OUT] * 7 + TAIL,
    "aclnnMoeDistributeCombineGWS_t": [TEN] * 11 + COMBINE_SCALARS + [OUT] + TAIL,
    "aclnnMoeDistributeCombineV2GWS_t": [TEN] * 12 + COMBINE_SCALARS + [STR] + [OUT] + TAIL,
    "aclnnMoeDistributeCombineV3GWS_t": [TEN] * 17 + COMBINE_SCALARS + [STR] + SPECIAL + [OUT] + TAIL,
    "aclnnMoeDistributeCombineV4GWS_t": [TEN] * 18 + COMBINE_SCALARS + [STR] + SPECIAL + [OUT] + TAIL,
}


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_distribute_prototypes_compile_and_match(tmp_path):
    assert_typedefs_match("acl_abi_distribute.h", DEFINITIONS, tmp_path)


def test_every_typedef_is_checked():
    assert typedefs_in("acl_abi_distribute.h") == set(DEFINITIONS)



def test_declared_entries_are_the_typedefs_and_op_plugins_order():
    """Each declared entry point has the argument kinds of its typedef (the dispatcher calls through it), and
    the v2 families list V4 > V3 > V2 (op-plugin: the newest that resolves)."""
    c = pytest.importorskip("ascend_moe._C")
    from ascend_moe.opdecl import get_decl
    kind = {"T": "T", "O": "T", "s": "s", "i64": "i"}
    want = {"const aclTensor*": "T", "aclTensor*": "T", "const char*": "s", "int64_t": "i"}
    for op in ("npu_moe_distribute_dispatch", "npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine",
               "npu_moe_distribute_combine_v2"):
        d = get_decl(op)
        for e in d.aclnn:
            declared = "".join(kind[p.ctype] for p in e.c_params)
            assert declared == "".join(want[t] for t in DEFINITIONS[e.name + "GWS_t"][:-2]), e.name
            assert declared == c.entry_kinds(e.name)
    assert [e.name for e in get_decl("npu_moe_distribute_dispatch_v2").aclnn] == [
        "aclnnMoeDistributeDispatchV4", "aclnnMoeDistributeDispatchV3", "aclnnMoeDistributeDispatchV2"]
    assert list(c.families()["distribute_combine_v2"]) == [
        "aclnnMoeDistributeCombineV4", "aclnnMoeDistributeCombineV3", "aclnnMoeDistributeCombineV2"]


def test_a_gloo_group_name_never_reaches_hccl(monkeypatch):
    """On a real NPU the group name goes to HCCL verbatim; the CPU simulation's torch.distributed name is
    refused there, saying which name to pass.  (meta stands in for the NPU device type.)"""
    import torch
    from ascend_moe import backends
    from ascend_moe.backends import BackendError
    from ascend_moe.opdecl import get_decl
    monkeypatch.setattr(backends, "NPU_DEVICE_TYPES", ("meta",))
    d = get_decl("npu_moe_distribute_dispatch_v2")
    x = torch.empty(4, 64, dtype=torch.bfloat16, device="meta")
    ids = torch.empty(4, 2, dtype=torch.int32, device="meta")
    bad = d.bind((x, ids, "sim_hccl:3", 2, 0, 8), {})
    for e in d.aclnn:
        with pytest.raises(BackendError, match=r"group_ep='sim_hccl:3'.*get_hccl_comm_name"):
            e.check(bad)
        e.check(d.bind((x, ids, "10.0.0.1%enp_60000_0_1700000000000", 2, 0, 8), {}))   # an HCCL name passes


def test_hccl_name_comes_from_torch_npus_backend(monkeypatch):
    """In a torch_npu process the name is group._get_backend(npu).get_hccl_comm_name(rank); without an HCCL
    backend there is none (the gloo name is used)."""
    from ascend_moe import distributed

    class Backend:
        def get_hccl_comm_name(self, rank):
            return f"hccl_world_{rank}"

    class NpuGroup:
        def _get_backend(self, device):
            assert device.type == "npu"
            return Backend()

    class GlooGroup:
        def _get_backend(self, device):
            raise RuntimeError("no backend for npu")

    assert distributed._hccl_name(NpuGroup(), 3) in (None, "hccl_world_3")   # None: no npu device type here
    monkeypatch.setattr(distributed, "_npu_device", lambda: type("D", (), {"type": "npu"})())
    assert distributed._hccl_name(NpuGroup(), 3) == "hccl_world_3"
    assert distributed._hccl_name(GlooGroup(), 3) is None


def test_on_the_device_the_checker_runs_before_aclnn(monkeypatch):
    """NPU tensors: the generated kernel leaves a collective op's checker to its aclnn entry check (agreed
    across the ranks when the group name is registered here; this rank's own check otherwise)."""
    import torch
    from ascend_moe import backends
    from ascend_moe.opdecl import get_decl
    from ascend_moe.rules import ConstraintError
    monkeypatch.setattr(backends, "NPU_DEVICE_TYPES", ("meta",))
    d = get_decl("npu_moe_distribute_dispatch_v2")
    ids = torch.empty(4, 2, dtype=torch.int32, device="meta")
    for e in d.aclnn:
        e.check(d.bind((torch.empty(4, 64, dtype=torch.bfloat16, device="meta"), ids, "hccl_1", 2, 0, 8), {}))
        with pytest.raises(ConstraintError, match="x dtype must be bfloat16 or float16, got float32"):
            e.check(d.bind((torch.empty(4, 64, dtype=torch.float32, device="meta"), ids, "hccl_1", 2, 0, 8), {}))
