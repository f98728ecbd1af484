// C prototypes (phase 1, GetWorkspaceSize) of the aclnn entry points behind the expert-parallel MC2 ops, in the
// style of acl_abi.h: function-pointer typedefs resolved with dlsym at run time, parameter lists as the
// ops-transformer op_api sources spell them (mc2/moe_distribute_dispatch(_v2)/op_api/aclnn_*.cpp / .h).
// Phase 2 of every entry point is acl_abi.h's aclnnRun_t.
//
// groupEp / groupTp are HCCL communicator names (what torch_npu's process group gives:
// group._get_backend(torch.device("npu")).get_hccl_comm_name(rank)); the op_api rejects an empty groupEp
// (161001) and names of HCCL_GROUP_NAME_MAX characters or more.
//
// Which entry point op-plugin calls (spec moe-routing-and-ep.md section 0):
//   npu_moe_distribute_dispatch     aclnnMoeDistributeDispatch       (MoeDistributeDispatchKernelOpApi.cpp)
//   npu_moe_distribute_dispatch_v2  aclnnMoeDistributeDispatchV4 > V3 > V2 by availability
//   npu_moe_distribute_combine      aclnnMoeDistributeCombine        (MoeDistributeCombineKernelOpApi.cpp; no
//                                   sharedExpertX parameter: op-plugin does not pass shared_expert_x)
//   npu_moe_distribute_combine_v2   aclnnMoeDistributeCombineV4 > V3 > V2 by availability
#pragma once

#include "acl_abi.h"

extern "C" {
// aclnnMoeDistributeDispatch (mc2/moe_distribute_dispatch/op_api/aclnn_moe_distribute_dispatch.cpp)
typedef aclnnStatus (*aclnnMoeDistributeDispatchGWS_t)(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scales, const aclTensor *xActiveMask,
    const aclTensor *expertScales, const char *groupEp, int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum,
    const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum,
    int64_t sharedExpertRankNum, int64_t quantMode, int64_t globalBs, int64_t expertTokenNumsType, aclTensor *expandX,
    aclTensor *dynamicScales, aclTensor *expandIdx, aclTensor *expertTokenNums, aclTensor *epRecvCounts,
    aclTensor *tpRecvCounts, aclTensor *expandScales, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeDistributeDispatchV2 (mc2/moe_distribute_dispatch_v2/op_api/aclnn_moe_distribute_dispatch_v2.h)
typedef aclnnStatus (*aclnnMoeDistributeDispatchV2GWS_t)(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scalesOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *expertScalesOptional, const char *groupEp,
    int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize,
    int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum, int64_t sharedExpertRankNum,
    int64_t quantMode, int64_t globalBs, int64_t expertTokenNumsType, const char *commAlg, aclTensor *expandXOut,
    aclTensor *dynamicScalesOut, aclTensor *assistInfoForCombineOut, aclTensor *expertTokenNumsOut,
    aclTensor *epRecvCountsOut, aclTensor *tpRecvCountsOut, aclTensor *expandScalesOut, uint64_t *workspaceSize,
    aclOpExecutor **executor);
// aclnnMoeDistributeDispatchV3: V2 + elasticInfoOptional after expertScales, zero/copy/constExpertNum after commAlg
typedef aclnnStatus (*aclnnMoeDistributeDispatchV3GWS_t)(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scalesOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *expertScalesOptional,
    const aclTensor *elasticInfoOptional, const char *groupEp, int64_t epWorldSize, int64_t epRankId,
    int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType,
    int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t quantMode, int64_t globalBs,
    int64_t expertTokenNumsType, const char *commAlg, int64_t zeroExpertNum, int64_t copyExpertNum,
    int64_t constExpertNum, aclTensor *expandXOut, aclTensor *dynamicScalesOut, aclTensor *assistInfoForCombineOut,
    aclTensor *expertTokenNumsOut, aclTensor *epRecvCountsOut, aclTensor *tpRecvCountsOut,
    aclTensor *expandScalesOut, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeDistributeDispatchV4: V3 + performanceInfoOptional after elasticInfo
typedef aclnnStatus (*aclnnMoeDistributeDispatchV4GWS_t)(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scalesOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *expertScalesOptional,
    const aclTensor *elasticInfoOptional, const aclTensor *performanceInfoOptional, const char *groupEp,
    int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize,
    int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum, int64_t sharedExpertRankNum,
    int64_t quantMode, int64_t globalBs, int64_t expertTokenNumsType, const char *commAlg, int64_t zeroExpertNum,
    int64_t copyExpertNum, int64_t constExpertNum, aclTensor *expandXOut, aclTensor *dynamicScalesOut,
    aclTensor *assistInfoForCombineOut, aclTensor *expertTokenNumsOut, aclTensor *epRecvCountsOut,
    aclTensor *tpRecvCountsOut, aclTensor *expandScalesOut, uint64_t *workspaceSize, aclOpExecutor **executor);

// aclnnMoeDistributeCombine (mc2/moe_distribute_combine/op_api/aclnn_moe_distribute_combine.cpp)
typedef aclnnStatus (*aclnnMoeDistributeCombineGWS_t)(
    const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *expandIdx, const aclTensor *epSendCounts,
    const aclTensor *expertScales, const aclTensor *tpSendCounts, const aclTensor *xActiveMask,
    const aclTensor *activationScale, const aclTensor *weightScale, const aclTensor *groupList,
    const aclTensor *expandScales, const char *groupEp, int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum,
    const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum,
    int64_t sharedExpertRankNum, int64_t globalBs, int64_t outDtype, int64_t commQuantMode, int64_t groupListType,
    aclTensor *x, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeDistributeCombineV2 (mc2/moe_distribute_combine_v2/op_api/aclnn_moe_distribute_combine_v2.h)
typedef aclnnStatus (*aclnnMoeDistributeCombineV2GWS_t)(
    const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *assistInfoForCombine,
    const aclTensor *epSendCounts, const aclTensor *expertScales, const aclTensor *tpSendCountsOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *activationScaleOptional,
    const aclTensor *weightScaleOptional, const aclTensor *groupListOptional, const aclTensor *expandScalesOptional,
    const aclTensor *sharedExpertXOptional, const char *groupEp, int64_t epWorldSize, int64_t epRankId,
    int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType,
    int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t globalBs, int64_t outDtype, int64_t commQuantMode,
    int64_t groupListType, const char *commAlg, aclTensor *xOut, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeDistributeCombineV3: V2 + elasticInfo, oriX, constExpertAlpha1/2, constExpertV after sharedExpertX and
// zero/copy/constExpertNum after commAlg
typedef aclnnStatus (*aclnnMoeDistributeCombineV3GWS_t)(
    const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *assistInfoForCombine,
    const aclTensor *epSendCounts, const aclTensor *expertScales, const aclTensor *tpSendCountsOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *activationScaleOptional,
    const aclTensor *weightScaleOptional, const aclTensor *groupListOptional, const aclTensor *expandScalesOptional,
    const aclTensor *sharedExpertXOptional, const aclTensor *elasticInfoOptional, const aclTensor *oriXOptional,
    const aclTensor *constExpertAlpha1Optional, const aclTensor *constExpertAlpha2Optional,
    const aclTensor *constExpertVOptional, const char *groupEp, int64_t epWorldSize, int64_t epRankId,
    int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType,
    int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t globalBs, int64_t outDtype, int64_t commQuantMode,
    int64_t groupListType, const char *commAlg, int64_t zeroExpertNum, int64_t copyExpertNum, int64_t constExpertNum,
    aclTensor *xOut, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeDistributeCombineV4: V3 + performanceInfoOptional after constExpertV
typedef aclnnStatus (*aclnnMoeDistributeCombineV4GWS_t)(
    const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *assistInfoForCombine,
    const aclTensor *epSendCounts, const aclTensor *expertScales, const aclTensor *tpSendCountsOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *activationScaleOptional,
    const aclTensor *weightScaleOptional, const aclTensor *groupListOptional, const aclTensor *expandScalesOptional,
    const aclTensor *sharedExpertXOptional, const aclTensor *elasticInfoOptional, const aclTensor *oriXOptional,
    const aclTensor *constExpertAlpha1Optional, const aclTensor *constExpertAlpha2Optional,
    const aclTensor *constExpertVOptional, const aclTensor *performanceInfoOptional, const char *groupEp,
    int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize,
    int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t globalBs,
    int64_t outDtype, int64_t commQuantMode, int64_t groupListType, const char *commAlg, int64_t zeroExpertNum,
    int64_t copyExpertNum, int64_t constExpertNum, aclTensor *xOut, uint64_t *workspaceSize,
    aclOpExecutor **executor);
}
