// aclnn phase-1 prototypes of the MoE quantised-path ops, as function-pointer typedefs the dispatcher
// resolves with dlsym (the phase-2 functions all share aclnnPhase2_t of acl_abi.h).
//
// Copied argument for argument from the public headers / docs (spec moe-quant-path 1.2, 2.4, 3.3, 5.3):
//   ops-nn activation/swi_glu/docs/aclnnSwiGlu.md, activation/swi_glu_grad/docs/aclnnSwiGluGrad.md,
//   ops-nn quant/dynamic_quant/op_host/op_api/aclnn_dynamic_quant.cpp (V1..V4),
//   ops-nn quant/dequant_swiglu_quant/docs/aclnnDequantSwigluQuant{,V2}.md (char *, not const char *),
//   ops-transformer gmm/grouped_matmul_add/op_api/aclnn_grouped_matmul_add{,_v2}.h.
// The quantised npu_grouped_matmul forms use the existing GroupedMatmulV4 / V5 / WeightNz entry points.
//
// Entry points with a `char *` parameter need a Kind<char *> ('s') in dispatch.cpp: the pointer is passed
// from the call's std::string (CANN does not write through it).
#pragma once

#include "acl_abi.h"

extern "C" {

// aclnnSwiGlu (y = silu(first half) * second half along dim)
typedef aclnnStatus (*aclnnSwiGluGWS_t)(const aclTensor *x, int64_t dim, const aclTensor *out,
                                        uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnSwiGluGrad (out has x's shape)
typedef aclnnStatus (*aclnnSwiGluGradGWS_t)(const aclTensor *yGrad, const aclTensor *x, int64_t dim,
                                            const aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor);

// aclnnDynamicQuant (V1: symmetric, int8, pertoken, no group index)
typedef aclnnStatus (*aclnnDynamicQuantGWS_t)(const aclTensor *x, const aclTensor *smoothScalesOptional,
                                              const aclTensor *yOut, const aclTensor *scaleOut,
                                              uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnDynamicQuantV2 (symmetric iff offsetOut == nullptr; y dtype taken from yOut)
typedef aclnnStatus (*aclnnDynamicQuantV2GWS_t)(const aclTensor *x, const aclTensor *smoothScalesOptional,
                                                const aclTensor *groupIndexOptional, int64_t dstType,
                                                const aclTensor *yOut, const aclTensor *scaleOut,
                                                const aclTensor *offsetOut, uint64_t *workspaceSize,
                                                aclOpExecutor **executor);
// aclnnDynamicQuantV3 (950: quantMode pertensor/perchannel)
typedef aclnnStatus (*aclnnDynamicQuantV3GWS_t)(const aclTensor *x, const aclTensor *smoothScalesOptional,
                                                const aclTensor *groupIndexOptional, int64_t dstType,
                                                bool isSymmetrical, const char *quantMode, const aclTensor *yOut,
                                                const aclTensor *scaleOut, const aclTensor *offsetOut,
                                                uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnDynamicQuantV4 (950, CANN >= 9.1.0: dstTypeMax)
typedef aclnnStatus (*aclnnDynamicQuantV4GWS_t)(const aclTensor *x, const aclTensor *smoothScalesOptional,
                                                const aclTensor *groupIndexOptional, int64_t dstType,
                                                bool isSymmetrical, const char *quantMode, float dstTypeMax,
                                                const aclTensor *yOut, const aclTensor *scaleOut,
                                                const aclTensor *offsetOut, uint64_t *workspaceSize,
                                                aclOpExecutor **executor);

// aclnnDequantSwigluQuant
typedef aclnnStatus (*aclnnDequantSwigluQuantGWS_t)(
    const aclTensor *x, const aclTensor *weightScaleOptional, const aclTensor *activationScaleOptional,
    const aclTensor *biasOptional, const aclTensor *quantScaleOptional, const aclTensor *quantOffsetOptional,
    const aclTensor *groupIndexOptional, bool activateLeft, char *quantModeOptional, const aclTensor *yOut,
    const aclTensor *scaleOut, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnDequantSwigluQuantV2 (CANN >= 9.0.0)
typedef aclnnStatus (*aclnnDequantSwigluQuantV2GWS_t)(
    const aclTensor *x, const aclTensor *weightScaleOptional, const aclTensor *activationScaleOptional,
    const aclTensor *biasOptional, const aclTensor *quantScaleOptional, const aclTensor *quantOffsetOptional,
    const aclTensor *groupIndexOptional, bool activateLeft, char *quantModeOptional, int64_t dstType,
    char *roundModeOptional, int64_t activateDim, int64_t swigluMode, double clampLimit, double gluAlpha,
    double gluBias, const aclTensor *yOut, const aclTensor *scaleOut, uint64_t *workspaceSize,
    aclOpExecutor **executor);

// aclnnGroupedMatmulAdd (yRef[e] += x[rows_e]^T @ weight[rows_e]; groupList is a cumsum)
typedef aclnnStatus (*aclnnGroupedMatmulAddGWS_t)(const aclTensor *x, const aclTensor *weight,
                                                  const aclTensor *groupList, aclTensor *yRef, bool transposeX,
                                                  bool transposeWeight, int64_t groupType, uint64_t *workspaceSize,
                                                  aclOpExecutor **executor);
// aclnnGroupedMatmulAddV2 (ops-transformer >= v8.5.0; op-plugin uses it only on aclnn-only SoCs)
typedef aclnnStatus (*aclnnGroupedMatmulAddV2GWS_t)(const aclTensor *x, const aclTensor *weight,
                                                    const aclTensor *groupList, aclTensor *yRef, bool transposeX,
                                                    bool transposeWeight, int64_t groupType, int64_t groupListType,
                                                    uint64_t *workspaceSize, aclOpExecutor **executor);

}  // extern "C"
