// C prototypes (phase 1, GetWorkspaceSize) of the aclnn entry points behind the MoE routing and combine ops,
// in the style of acl_abi.h: function-pointer typedefs resolved with dlsym at run time, parameter types
// verbatim from the ops-transformer op_api headers / docs (const-ness of outputs as the headers spell it).
// Phase 2 of every entry point is acl_abi.h's aclnnRun_t.
//
// Which entry point op-plugin calls (spec moe-routing-and-ep.md section 0):
//   npu_moe_init_routing_v2       aclnnMoeInitRoutingV3, or V2 on the Atlas inference series / the "V2 case" before
//                                 CANN 8.5.0.alpha003 (expert_num 128, range [0,128], H 2048, no quant, count type)
//   npu_moe_token_permute         aclnnMoeTokenPermute            (backward: aclnnMoeTokenPermuteGrad)
//   npu_moe_token_unpermute       aclnnMoeTokenUnpermute          (backward: aclnnMoeTokenUnpermuteGrad)
//   npu_moe_finalize_routing      aclnnMoeFinalizeRoutingV4 > V2 > aclnnMoeFinalizeRouting (by availability)
//   npu_moe_gating_top_k_softmax  aclnnMoeGatingTopKSoftmax; _v2: aclnnMoeGatingTopKSoftmaxV2
//   npu_moe_compute_expert_tokens aclnnMoeComputeExpertTokens
//   npu_moe_re_routing            aclnnMoeReRouting (prototype from op-plugin's EXEC_NPU_CMD argument order)
//   npu_moe_gating_top_k backward aclnnMoeGatingTopKBackward
#pragma once

#include "acl_abi.h"

extern "C" {
// aclnnMoeInitRoutingV3 (op_host/op_api/aclnn_moe_init_routing_v3.h)
typedef aclnnStatus (*aclnnMoeInitRoutingV3GWS_t)(
    const aclTensor *x, const aclTensor *expertIdx, const aclTensor *scaleOptional, const aclTensor *offsetOptional,
    int64_t activeNum, int64_t expertCapacity, int64_t expertNum, int64_t dropPadMode, int64_t expertTokensNumType,
    bool expertTokensNumFlag, int64_t quantMode, const aclIntArray *activeExpertRangeOptional, int64_t rowIdxType,
    const aclTensor *expandedXOut, const aclTensor *expandedRowIdxOut, const aclTensor *expertTokensCountOrCumsumOut,
    const aclTensor *expandedScaleOut, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeInitRoutingV2 (op_host/op_api/aclnn_moe_init_routing_v2.h)
typedef aclnnStatus (*aclnnMoeInitRoutingV2GWS_t)(
    const aclTensor *x, const aclTensor *expertIdx, int64_t activeNumOptional, int64_t expertCapacityOptional,
    int64_t expertNumOptional, int64_t dropPadModeOptional, int64_t expertTokensCountOrCumsumFlagOptional,
    bool expertTokensBeforeCapacityFlagOptional, const aclTensor *expandedXOut, const aclTensor *expandedRowIdxOut,
    const aclTensor *expertTokensCountOrCumsumOutOptional, const aclTensor *expertTokensBeforeCapacityOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeTokenPermute (aclnn_moe_token_permute.h)
typedef aclnnStatus (*aclnnMoeTokenPermuteGWS_t)(
    const aclTensor *tokens, const aclTensor *indices, int64_t numOutTokens, bool paddedMode,
    const aclTensor *permuteTokensOut, const aclTensor *sortedIndicesOut, uint64_t *workspaceSize,
    aclOpExecutor **executor);
// aclnnMoeTokenPermuteGrad
typedef aclnnStatus (*aclnnMoeTokenPermuteGradGWS_t)(
    const aclTensor *permutedOutputGrad, const aclTensor *sortedIndices, int64_t numTopk, bool paddedMode,
    aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeTokenUnpermute (the out tensor is non-const in this header)
typedef aclnnStatus (*aclnnMoeTokenUnpermuteGWS_t)(
    const aclTensor *permutedTokens, const aclTensor *sortedIndices, const aclTensor *probsOptional, bool paddedMode,
    const aclIntArray *restoreShapeOptional, aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeTokenUnpermuteGrad
typedef aclnnStatus (*aclnnMoeTokenUnpermuteGradGWS_t)(
    const aclTensor *permutedTokens, const aclTensor *unpermutedTokensGrad, const aclTensor *sortedIndices,
    const aclTensor *probsOptional, bool paddedMode, const aclIntArray *restoreShapeOptional,
    aclTensor *permutedTokensGradOut, aclTensor *probsGradOut, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeFinalizeRouting (V1: x1 = skip1 and bias required by the docs)
typedef aclnnStatus (*aclnnMoeFinalizeRoutingGWS_t)(
    const aclTensor *expandedX, const aclTensor *x1, const aclTensor *x2Optional, const aclTensor *bias,
    const aclTensor *scales, const aclTensor *expandedRowIdx, const aclTensor *expandedExpertIdx,
    const aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeFinalizeRoutingV2
typedef aclnnStatus (*aclnnMoeFinalizeRoutingV2GWS_t)(
    const aclTensor *expandedX, const aclTensor *expandedRowIdx, const aclTensor *x1Optional,
    const aclTensor *x2Optional, const aclTensor *biasOptional, const aclTensor *scalesOptional,
    const aclTensor *expertIdxOptional, int64_t dropPadMode, const aclTensor *out, uint64_t *workspaceSize,
    aclOpExecutor **executor);
// aclnnMoeFinalizeRoutingV4 (op-plugin passes null x/alpha1/alpha2/v and null expert ranges)
typedef aclnnStatus (*aclnnMoeFinalizeRoutingV4GWS_t)(
    const aclTensor *expandedX, const aclTensor *expandedRowIdx, const aclTensor *x1Optional,
    const aclTensor *x2Optional, const aclTensor *biasOptional, const aclTensor *scalesOptional,
    const aclTensor *expertIdxOptional, const aclTensor *xOptional, const aclTensor *alpha1Optional,
    const aclTensor *alpha2Optional, const aclTensor *vOptional, int64_t dropPadMode,
    const aclIntArray *zeroExpertRange, const aclIntArray *copyExpertRange, const aclIntArray *constantExpertRange,
    int64_t k, const aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeGatingTopKSoftmax
typedef aclnnStatus (*aclnnMoeGatingTopKSoftmaxGWS_t)(
    const aclTensor *x, const aclTensor *finishedOptional, int64_t k, const aclTensor *yOut,
    const aclTensor *expertIdxOut, const aclTensor *rowIdxOut, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeGatingTopKSoftmaxV2
typedef aclnnStatus (*aclnnMoeGatingTopKSoftmaxV2GWS_t)(
    const aclTensor *x, const aclTensor *finishedOptional, int64_t k, int64_t renorm, bool outputSoftmaxResultFlag,
    const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *softmaxResultOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeGatingTopKBackward (floats are double)
typedef aclnnStatus (*aclnnMoeGatingTopKBackwardGWS_t)(
    const aclTensor *xNorm, const aclTensor *gradY, const aclTensor *expertIdx, int64_t renorm, int64_t normType,
    double routedScalingFactor, double eps, const aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeComputeExpertTokens
typedef aclnnStatus (*aclnnMoeComputeExpertTokensGWS_t)(
    const aclTensor *sortedExperts, int64_t numExperts, const aclTensor *out, uint64_t *workspaceSize,
    aclOpExecutor **executor);
// aclnnMoeReRouting (header generated at build time; parameter order from op-plugin MoeReRoutingOpApi.cpp)
typedef aclnnStatus (*aclnnMoeReRoutingGWS_t)(
    const aclTensor *tokens, const aclTensor *expertTokenNumPerRank, const aclTensor *perTokenScalesOptional,
    int64_t expertTokenNumType, int64_t idxType, const aclTensor *permuteTokensOut,
    const aclTensor *permutePerTokenScalesOut, const aclTensor *permuteTokenIdxOut, const aclTensor *expertTokenNumOut,
    uint64_t *workspaceSize, aclOpExecutor **executor);
}

namespace acl_routing {
// Entry points in the order op-plugin prefers them, per torch_npu op (the dispatcher probes them in this order).
constexpr const char *kInitRoutingV2Entries[] = {"aclnnMoeInitRoutingV3", "aclnnMoeInitRoutingV2"};
constexpr const char *kFinalizeRoutingEntries[] = {"aclnnMoeFinalizeRoutingV4", "aclnnMoeFinalizeRoutingV2",
                                                   "aclnnMoeFinalizeRouting"};
}  // namespace acl_routing
