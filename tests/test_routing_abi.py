"""csrc/acl_abi_routing.h: the routing entry-point prototypes compile with acl_abi.h, and each typedef has the
parameter list of the ops-transformer header it names (checked by assigning a function written here with that
exact list, so a reordered or retyped parameter fails to compile)."""
import os
import re

import pytest

from prototype_check import CSRC, CXX, assert_typedefs_match, typedefs_in

# One definition per entry point, parameter types copied from the aclnn headers / docs.
DEFINITIONS = {
    "aclnnMoeInitRoutingV3GWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, int64_t, "
    "int64_t, int64_t, int64_t, int64_t, bool, int64_t, const aclIntArray*, int64_t, const aclTensor*, "
    "const aclTensor*, const aclTensor*, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeInitRoutingV2GWS_t": "const aclTensor*, const aclTensor*, int64_t, int64_t, int64_t, int64_t, int64_t, "
    "bool, const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeTokenPermuteGWS_t": "const aclTensor*, const aclTensor*, int64_t, bool, const aclTensor*, "
    "const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeTokenPermuteGradGWS_t": "const aclTensor*, const aclTensor*, int64_t, bool, aclTensor*, uint64_t*, "
    "aclOpExecutor**",
    "aclnnMoeTokenUnpermuteGWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, bool, const aclIntArray*, "
    "aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeTokenUnpermuteGradGWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, bool, "
    "const aclIntArray*, aclTensor*, aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeFinalizeRoutingGWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, "
    "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeFinalizeRoutingV2GWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, "
    "const aclTensor*, const aclTensor*, const aclTensor*, int64_t, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeFinalizeRoutingV4GWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, "
    "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, "
    "const aclTensor*, int64_t, const aclIntArray*, const aclIntArray*, const aclIntArray*, int64_t, "
    "const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeGatingTopKSoftmaxGWS_t": "const aclTensor*, const aclTensor*, int64_t, const aclTensor*, "
    "const aclTensor*, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeGatingTopKSoftmaxV2GWS_t": "const aclTensor*, const aclTensor*, int64_t, int64_t, bool, "
    "const aclTensor*, const aclTensor*, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeGatingTopKBackwardGWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, int64_t, int64_t, "
    "double, double, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeComputeExpertTokensGWS_t": "const aclTensor*, int64_t, const aclTensor*, uint64_t*, aclOpExecutor**",
    "aclnnMoeReRoutingGWS_t": "const aclTensor*, const aclTensor*, const aclTensor*, int64_t, int64_t, "
    "const aclTensor*, const aclTensor*, const aclTensor*, const aclTensor*, uint64_t*, aclOpExecutor**",
}


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_routing_prototypes_compile_and_match(tmp_path):
    assert_typedefs_match("acl_abi_routing.h", DEFINITIONS, tmp_path)


def test_every_typedef_is_checked():
    assert typedefs_in("acl_abi_routing.h") == set(DEFINITIONS)



def test_declared_entries_match_the_dispatcher_prototypes():
    """Each routing op's declared C parameter list has the argument kinds of the typedef the C++ dispatcher
    calls through (so a mismatch fails here, not on a device)."""
    c = pytest.importorskip("ascend_moe._C")
    from ascend_moe.opdecl import all_decls
    kind = {"T": "T", "O": "T", "L": "L", "OL": "L", "IA": "I", "i64": "i", "f32": "f", "f64": "d", "b": "b", "s": "s"}
    checked = 0
    for d in all_decls():
        for e in d.aclnn:
            if e.name in set(re.findall(r'"(aclnnMoe\w+)"', open(os.path.join(CSRC, "acl_abi_routing.h")).read())) \
                    or e.name.startswith(("aclnnMoeInitRouting", "aclnnMoeToken", "aclnnMoeFinalizeRouting",
                                          "aclnnMoeGatingTopKSoftmax", "aclnnMoeGatingTopKBackward",
                                          "aclnnMoeComputeExpertTokens", "aclnnMoeReRouting")):
                assert "".join(kind[p.ctype] for p in e.c_params) == c.entry_kinds(e.name), (d.name, e.name)
                checked += 1
    assert checked >= 15
