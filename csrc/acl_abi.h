// Our own declarations of the ACL / aclnn C ABI (spec aclnn-abi-and-torch.md sections 1 and 2).
// No CANN header is included anywhere: every type, enum value and prototype the dispatcher uses is
// declared here, as function-pointer typedefs resolved with dlsym at run time.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {
// --- opaque handles (acl_meta.h) ---
typedef struct aclOpExecutor aclOpExecutor;
typedef struct aclTensor aclTensor;
typedef struct aclScalar aclScalar;
typedef struct aclIntArray aclIntArray;
typedef struct aclFloatArray aclFloatArray;
typedef struct aclBoolArray aclBoolArray;
typedef struct aclTensorList aclTensorList;
typedef struct aclScalarList aclScalarList;
typedef int32_t aclnnStatus;  // 0 == success

// --- acl_base.h ---
typedef void *aclrtStream;
typedef int aclError;

// enum values are spelled as plain ints so that the C ABI (int-sized enums) is explicit
typedef int aclDataType;
typedef int aclFormat;
typedef int aclrtMemMallocPolicy;
}

namespace acl {
constexpr int ACL_SUCCESS = 0;
constexpr int ACL_ERROR_INVALID_PARAM = 100000;
constexpr int ACL_ERROR_UNINITIALIZE = 100001;
constexpr int ACL_ERROR_REPEAT_INITIALIZE = 100002;
constexpr int ACL_ERROR_BAD_ALLOC = 200000;
constexpr int ACL_ERROR_INVALID_DEVICE = 200002;
constexpr int ACL_ERROR_INTERNAL_ERROR = 500000;
constexpr int ACL_ERROR_RT_FAILURE = 500003;
constexpr int ACL_ERROR_DRV_FAILURE = 500004;

constexpr int ACLNN_SUCCESS = 0;
constexpr int ACLNN_ERR_PARAM_NULLPTR = 161001;
constexpr int ACLNN_ERR_PARAM_INVALID = 161002;
constexpr int ACLNN_ERR_RUNTIME_ERROR = 361001;

// aclDataType
constexpr int ACL_DT_UNDEFINED = -1, ACL_FLOAT = 0, ACL_FLOAT16 = 1, ACL_INT8 = 2, ACL_INT32 = 3,
              ACL_UINT8 = 4, ACL_INT16 = 6, ACL_UINT16 = 7, ACL_UINT32 = 8, ACL_INT64 = 9, ACL_UINT64 = 10,
              ACL_DOUBLE = 11, ACL_BOOL = 12, ACL_BF16 = 27, ACL_INT4 = 29, ACL_FLOAT8_E5M2 = 35,
              ACL_FLOAT8_E4M3FN = 36, ACL_FLOAT8_E8M0 = 37;
// aclFormat
constexpr int ACL_FORMAT_ND = 2, ACL_FORMAT_FRACTAL_NZ = 29, ACL_FORMAT_FRACTAL_NZ_C0_16 = 50;
// aclrtMemMallocPolicy
constexpr int ACL_MEM_MALLOC_HUGE_FIRST = 0;
}  // namespace acl

extern "C" {
// --- libascendcl.so ---
typedef aclError (*aclInit_t)(const char *configPath);
typedef const char *(*aclGetRecentErrMsg_t)();
typedef aclError (*aclrtSetDevice_t)(int32_t deviceId);
typedef aclError (*aclrtGetDeviceCount_t)(uint32_t *count);
typedef aclError (*aclrtSynchronizeStream_t)(aclrtStream stream);
typedef aclError (*aclrtMalloc_t)(void **devPtr, size_t size, aclrtMemMallocPolicy policy);
typedef aclError (*aclrtFree_t)(void *devPtr);
typedef const char *(*aclrtGetSocName_t)();
typedef int (*ascend_moe_fake_runtime_t)(void);

// --- libnnopbase.so (acl_meta.h) ---
typedef aclTensor *(*aclCreateTensor_t)(const int64_t *viewDims, uint64_t viewDimsNum, aclDataType dataType,
                                        const int64_t *stride, int64_t offset, aclFormat format,
                                        const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData);
typedef aclIntArray *(*aclCreateIntArray_t)(const int64_t *value, uint64_t size);
typedef aclTensorList *(*aclCreateTensorList_t)(const aclTensor *const *value, uint64_t size);
typedef aclnnStatus (*aclDestroyTensor_t)(const aclTensor *tensor);
typedef aclnnStatus (*aclDestroyIntArray_t)(const aclIntArray *array);
typedef aclnnStatus (*aclDestroyTensorList_t)(const aclTensorList *array);
typedef aclnnStatus (*aclDestroyAclOpExecutor_t)(aclOpExecutor *executor);

// --- phase 2 of every aclnn operator ---
typedef aclnnStatus (*aclnnRun_t)(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
                                  aclrtStream stream);

// --- phase 1 prototypes (GetWorkspaceSize), verbatim parameter types from the ops-transformer headers ---
// aclnnGroupedMatmul (V1: torch_npu npu_grouped_matmul.List, the int-array group list; M split only)
typedef aclnnStatus (*aclnnGroupedMatmulGWS_t)(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclIntArray *groupListOptional, int64_t splitItem, const aclTensorList *y, uint64_t *workspaceSize,
    aclOpExecutor **executor);
// aclnnGroupedMatmulV2 (MindSpeed npu_gmm with List[int] group_list)
typedef aclnnStatus (*aclnnGroupedMatmulV2GWS_t)(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclIntArray *groupListOptional, int64_t splitItem, int64_t groupType, const aclTensorList *y,
    uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnGroupedMatmulV4
typedef aclnnStatus (*aclnnGroupedMatmulV4GWS_t)(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclTensorList *perTokenScaleOptional, const aclTensor *groupListOptional,
    const aclTensorList *activationInputOptional, const aclTensorList *activationQuantScaleOptional,
    const aclTensorList *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType,
    int64_t groupListType, int64_t actType, aclTensorList *out, aclTensorList *activationFeatureOutOptional,
    aclTensorList *dynQuantScaleOutOptional, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnGroupedMatmulV5: V4 + tuningConfigOptional after actType
typedef aclnnStatus (*aclnnGroupedMatmulV5GWS_t)(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclTensorList *perTokenScaleOptional, const aclTensor *groupListOptional,
    const aclTensorList *activationInputOptional, const aclTensorList *activationQuantScaleOptional,
    const aclTensorList *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType,
    int64_t groupListType, int64_t actType, aclIntArray *tuningConfigOptional, aclTensorList *out,
    aclTensorList *activationFeatureOutOptional, aclTensorList *dynQuantScaleOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnGroupedMatmulWeightNz: V5 + quantGroupSize after tuningConfigOptional
typedef aclnnStatus (*aclnnGroupedMatmulWeightNzGWS_t)(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclTensorList *perTokenScaleOptional, const aclTensor *groupListOptional,
    const aclTensorList *activationInputOptional, const aclTensorList *activationQuantScaleOptional,
    const aclTensorList *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType,
    int64_t groupListType, int64_t actType, aclIntArray *tuningConfigOptional, int64_t quantGroupSize,
    aclTensorList *out, aclTensorList *activationFeatureOutOptional, aclTensorList *dynQuantScaleOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeGatingTopK (floats are double)
typedef aclnnStatus (*aclnnMoeGatingTopKGWS_t)(
    const aclTensor *x, const aclTensor *biasOptional, int64_t k, int64_t kGroup, int64_t groupCount,
    int64_t groupSelectMode, int64_t renorm, int64_t normType, bool outFlag, double routedScalingFactor,
    double eps, const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *outOut,
    uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnMoeGatingTopKV2 (hash mode: input_ids, tid2eid after bias)
typedef aclnnStatus (*aclnnMoeGatingTopKV2GWS_t)(
    const aclTensor *x, const aclTensor *biasOptional, const aclTensor *inputIdsOptional,
    const aclTensor *tid2eidOptional, int64_t k, int64_t kGroup, int64_t groupCount, int64_t groupSelectMode,
    int64_t renorm, int64_t normType, bool outFlag, double routedScalingFactor, double eps,
    const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *outOut, uint64_t *workspaceSize,
    aclOpExecutor **executor);
// aclnnFFNV2 (activation is const char*, expertTokens an aclIntArray)
typedef aclnnStatus (*aclnnFFNV2GWS_t)(
    const aclTensor *x, const aclTensor *weight1, const aclTensor *weight2, const aclIntArray *expertTokens,
    const aclTensor *bias1, const aclTensor *bias2, const aclTensor *scale, const aclTensor *offset,
    const aclTensor *deqScale1, const aclTensor *deqScale2, const aclTensor *antiquantScale1,
    const aclTensor *antiquantScale2, const aclTensor *antiquantOffset1, const aclTensor *antiquantOffset2,
    const char *activation, int64_t innerPrecise, bool tokensIndexFlag, const aclTensor *y,
    uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnGroupedMatmulSwigluQuantWeightNZ (and the ND aclnnGroupedMatmulSwigluQuant: same list)
typedef aclnnStatus (*aclnnGroupedMatmulSwigluQuantGWS_t)(
    const aclTensor *x, const aclTensor *weight, const aclTensor *bias, const aclTensor *offset,
    const aclTensor *weightScale, const aclTensor *xScale, const aclTensor *groupList, aclTensor *output,
    aclTensor *outputScale, aclTensor *outputOffset, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnGroupedMatmulSwigluQuantV2 and aclnnGroupedMatmulSwigluQuantWeightNzV2 (identical lists)
typedef aclnnStatus (*aclnnGroupedMatmulSwigluQuantV2GWS_t)(
    const aclTensor *x, const aclTensorList *weight, const aclTensorList *weightScale,
    const aclTensorList *weightAssistMatrix, const aclTensor *bias, const aclTensor *xScale,
    const aclTensor *smoothScale, const aclTensor *groupList, int64_t dequantMode, int64_t dequantDtype,
    int64_t quantMode, int64_t groupListType, const aclIntArray *tuningConfigOptional, aclTensor *output,
    aclTensor *outputScale, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnGroupedMatmulFinalizeRoutingV2 (sharedInputWeight is float)
typedef aclnnStatus (*aclnnGroupedMatmulFinalizeRoutingV2GWS_t)(
    const aclTensor *x1, aclTensor *x2, const aclTensor *scaleOptional, const aclTensor *biasOptional,
    const aclTensor *offsetOptional, const aclTensor *antiquantScaleOptional,
    const aclTensor *antiquantOffsetOptional, const aclTensor *pertokenScaleOptional,
    const aclTensor *groupListOptional, const aclTensor *sharedInputOptional, const aclTensor *logitOptional,
    const aclTensor *rowIndexOptional, int64_t dtype, float sharedInputWeight, int64_t sharedInputOffset,
    bool transposeX1, bool transposeX2, int64_t groupListType, aclTensor *out, uint64_t *workspaceSize,
    aclOpExecutor **executor);
// aclnnGroupedMatmulFinalizeRoutingV3 and ...WeightNzV2: V2 + tuningConfigOptional after groupListType
typedef aclnnStatus (*aclnnGroupedMatmulFinalizeRoutingV3GWS_t)(
    const aclTensor *x1, aclTensor *x2, const aclTensor *scaleOptional, const aclTensor *biasOptional,
    const aclTensor *offsetOptional, const aclTensor *antiquantScaleOptional,
    const aclTensor *antiquantOffsetOptional, const aclTensor *pertokenScaleOptional,
    const aclTensor *groupListOptional, const aclTensor *sharedInputOptional, const aclTensor *logitOptional,
    const aclTensor *rowIndexOptional, int64_t dtype, float sharedInputWeight, int64_t sharedInputOffset,
    bool transposeX1, bool transposeX2, int64_t groupListType, const aclIntArray *tuningConfigOptional,
    aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor);
// aclnnGroupedMatmulFinalizeRoutingWeightNz (V1-style list, with an x1/x2 naming)
typedef aclnnStatus (*aclnnGroupedMatmulFinalizeRoutingWeightNzGWS_t)(
    const aclTensor *x1, aclTensor *x2, const aclTensor *scale, const aclTensor *bias,
    const aclTensor *pertokenScaleOptional, const aclTensor *groupList, const aclTensor *sharedInput,
    const aclTensor *logit, const aclTensor *rowIndex, int64_t dtype, float sharedInputWeight,
    int64_t sharedInputOffset, bool transposeX1, bool transposeX2, int64_t groupListType, aclTensor *out,
    uint64_t *workspaceSize, aclOpExecutor **executor);
}
