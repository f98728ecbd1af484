/* Fake libopapi.so: every aclnn entry point the dispatcher uses, declared with the exact C prototypes of
 * the CANN headers (so a wrongly typed argument - float for double, int for bool - arrives corrupted and
 * the tests see it).  Phase 1 records each argument with its C type; phase 2 records workspace and stream
 * and writes a deterministic pattern into the outputs.  Any symbol can be left out at build time with
 * -DOMIT_<symbol> (to test the V5->V4, V3->V2 and WeightNzV2->WeightNz fallbacks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_cann.h"

typedef struct {
  char buf[16384];
  size_t off;
  int nargs, nouts;
  aclTensor *outs[FAKE_MAXOUT];
} Call;


#define APPEND(c, ...) ((c)->off += snprintf((c)->buf + (c)->off, sizeof((c)->buf) - (c)->off, __VA_ARGS__))

static void begin(Call *c, const char *api) {
  memset(c, 0, sizeof(*c));
  APPEND(c, "{\"ev\":\"gws\",\"api\":\"%s\",\"args\":[", api);
}
static void sep(Call *c) {
  if (c->nargs++) APPEND(c, ",");
}
static void add_out(Call *c, aclTensor *t) {
  if (t && c->nouts < FAKE_MAXOUT) c->outs[c->nouts++] = t;
}
static void a_tensor(Call *c, const aclTensor *t, int out) {
  sep(c);
  if (!t) { APPEND(c, "{\"t\":\"aclTensor*\",\"null\":true}"); return; }
  APPEND(c, "{\"t\":\"aclTensor*\",\"id\":%d}", t->id);
  if (out) add_out(c, (aclTensor *)t);
}
static void a_list(Call *c, const aclTensorList *l, int out) {
  sep(c);
  if (!l) { APPEND(c, "{\"t\":\"aclTensorList*\",\"null\":true}"); return; }
  APPEND(c, "{\"t\":\"aclTensorList*\",\"id\":%d,\"items\":[", l->id);
  for (uint64_t i = 0; i < l->n; ++i) {
    APPEND(c, "%s%d", i ? "," : "", l->items[i]->id);
    if (out) add_out(c, l->items[i]);
  }
  APPEND(c, "]}");
}
static void a_array(Call *c, const aclIntArray *a) {
  sep(c);
  if (!a) { APPEND(c, "{\"t\":\"aclIntArray*\",\"null\":true}"); return; }
  APPEND(c, "{\"t\":\"aclIntArray*\",\"id\":%d,\"values\":[", a->id);
  for (uint64_t i = 0; i < a->n; ++i) APPEND(c, "%s%lld", i ? "," : "", (long long)a->v[i]);
  APPEND(c, "]}");
}
static void a_i64(Call *c, int64_t v) { sep(c); APPEND(c, "{\"t\":\"int64_t\",\"v\":%lld}", (long long)v); }
static void a_double(Call *c, double v) { sep(c); APPEND(c, "{\"t\":\"double\",\"v\":%.17g}", v); }
static void a_float(Call *c, float v) { sep(c); APPEND(c, "{\"t\":\"float\",\"v\":%.17g}", (double)v); }
static void a_bool(Call *c, bool v) {
  /* a C++ bool is one byte 0/1: anything else means the caller passed the wrong type */
  unsigned char raw;
  memcpy(&raw, &v, 1);
  sep(c);
  APPEND(c, "{\"t\":\"bool\",\"v\":%s,\"raw\":%u}", raw ? "true" : "false", raw);
}
static void a_str(Call *c, const char *s) {
  sep(c);
  if (!s) { APPEND(c, "{\"t\":\"char*\",\"null\":true}"); return; }
  APPEND(c, "{\"t\":\"char*\",\"v\":\"%s\"}", s);
}

static aclnnStatus finish(Call *c, const char *api, uint64_t *workspaceSize, aclOpExecutor **executor) {
  char sym[160];
  snprintf(sym, sizeof sym, "%sGetWorkspaceSize", api);
  int st = fake_check_fail(sym);
  APPEND(c, "],\"status\":%d", st);
  if (!workspaceSize || !executor) st = 161001;
  if (st) {
    APPEND(c, "}");
    fake_emit(c->buf);
    return st;
  }
  aclOpExecutor *ex = (aclOpExecutor *)calloc(1, sizeof(aclOpExecutor));
  ex->id = fake_next_id();
  strncpy(ex->api, api, sizeof ex->api - 1);
  ex->nouts = c->nouts;
  memcpy(ex->outs, c->outs, sizeof(c->outs));
  *executor = ex;
  *workspaceSize = fake_workspace_size();
  fake_count(FK_EXEC_CREATE, 1);
  APPEND(c, ",\"executor\":%d,\"workspace_size\":%llu}", ex->id, (unsigned long long)*workspaceSize);
  fake_emit(c->buf);
  return 0;
}

/* byte b of element e (row-major over the view) of output k */
static unsigned char pattern(int k, long long e, int itemsize, int b) {
  return (unsigned char)((k * 37 + (e * itemsize + b) * 7 + 1) & 0xff);
}

static void fill_output(int k, const aclTensor *t) {
  int item = fake_itemsize(t->dtype);
  long long n = 1;
  for (uint64_t d = 0; d < t->ndim; ++d) n *= t->dims[d];
  int64_t idx[FAKE_MAXDIM] = {0};
  for (long long e = 0; e < n; ++e) {
    long long off = t->offset;
    for (uint64_t d = 0; d < t->ndim; ++d) off += idx[d] * t->strides[d];
    unsigned char *p = (unsigned char *)t->data + off * item;
    for (int b = 0; b < item; ++b) p[b] = pattern(k, e, item, b);
    for (int d = (int)t->ndim - 1; d >= 0; --d) {
      if (++idx[d] < t->dims[d]) break;
      idx[d] = 0;
    }
  }
}

static aclnnStatus fake_run(const char *api, void *workspace, uint64_t workspaceSize, aclOpExecutor *ex,
                            aclrtStream stream) {
  char line[512];
  int st = fake_check_fail(api);
  if (!st && !ex) st = 161001;
  if (!st && workspaceSize > 0 && !workspace) {
    fake_set_recent("workspace is nullptr");
    st = 161001;
  }
  snprintf(line, sizeof line,
           "{\"ev\":\"run\",\"api\":\"%s\",\"workspace\":%llu,\"workspace_size\":%llu,\"executor\":%d,"
           "\"executor_api\":\"%s\",\"stream\":%llu,\"status\":%d}",
           api, (unsigned long long)(uintptr_t)workspace, (unsigned long long)workspaceSize, ex ? ex->id : -1,
           ex ? ex->api : "", (unsigned long long)(uintptr_t)stream, st);
  fake_emit(line);
  if (!st) {
    if (workspaceSize) memset(workspace, 0xAB, workspaceSize);  /* the workspace must be writable */
    for (int k = 0; k < ex->nouts; ++k) fill_output(k, ex->outs[k]);
  }
  if (ex) { /* phase 2 releases its executor, whether it succeeds or not */
    free(ex);
    fake_count(FK_EXEC_DESTROY, 1);
  }
  return st;
}

#define PHASE2(NAME)                                                                                  \
  FAKE_EXPORT aclnnStatus NAME(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,     \
                               aclrtStream stream) {                                                  \
    return fake_run(#NAME, workspace, workspaceSize, executor, stream);                               \
  }

/* ------------------------------------------------------------------ grouped matmul */
#ifndef OMIT_aclnnGroupedMatmulGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulGetWorkspaceSize(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclIntArray *groupListOptional, int64_t splitItem, const aclTensorList *y, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmul");
  a_list(&c, x, 0); a_list(&c, weight, 0); a_list(&c, biasOptional, 0); a_list(&c, scaleOptional, 0);
  a_list(&c, offsetOptional, 0); a_list(&c, antiquantScaleOptional, 0); a_list(&c, antiquantOffsetOptional, 0);
  a_array(&c, groupListOptional); a_i64(&c, splitItem); a_list(&c, y, 1);
  return finish(&c, "aclnnGroupedMatmul", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmul
PHASE2(aclnnGroupedMatmul)
#endif

#ifndef OMIT_aclnnGroupedMatmulV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulV2GetWorkspaceSize(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclIntArray *groupListOptional, int64_t splitItem, int64_t groupType, const aclTensorList *y,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulV2");
  a_list(&c, x, 0); a_list(&c, weight, 0); a_list(&c, biasOptional, 0); a_list(&c, scaleOptional, 0);
  a_list(&c, offsetOptional, 0); a_list(&c, antiquantScaleOptional, 0); a_list(&c, antiquantOffsetOptional, 0);
  a_array(&c, groupListOptional); a_i64(&c, splitItem); a_i64(&c, groupType); a_list(&c, y, 1);
  return finish(&c, "aclnnGroupedMatmulV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulV2
PHASE2(aclnnGroupedMatmulV2)
#endif

static void gmm_common(Call *c, const aclTensorList *x, const aclTensorList *weight, const aclTensorList *bias,
                       const aclTensorList *scale, const aclTensorList *offset, const aclTensorList *aqs,
                       const aclTensorList *aqo, const aclTensorList *pts, const aclTensor *groupList,
                       const aclTensorList *ai, const aclTensorList *aqsc, const aclTensorList *aqof,
                       int64_t splitItem, int64_t groupType, int64_t groupListType, int64_t actType) {
  a_list(c, x, 0); a_list(c, weight, 0); a_list(c, bias, 0); a_list(c, scale, 0); a_list(c, offset, 0);
  a_list(c, aqs, 0); a_list(c, aqo, 0); a_list(c, pts, 0); a_tensor(c, groupList, 0); a_list(c, ai, 0);
  a_list(c, aqsc, 0); a_list(c, aqof, 0); a_i64(c, splitItem); a_i64(c, groupType); a_i64(c, groupListType);
  a_i64(c, actType);
}

#ifndef OMIT_aclnnGroupedMatmulV4GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulV4GetWorkspaceSize(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclTensorList *perTokenScaleOptional, const aclTensor *groupListOptional,
    const aclTensorList *activationInputOptional, const aclTensorList *activationQuantScaleOptional,
    const aclTensorList *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType,
    int64_t groupListType, int64_t actType, aclTensorList *out, aclTensorList *activationFeatureOutOptional,
    aclTensorList *dynQuantScaleOutOptional, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulV4");
  gmm_common(&c, x, weight, biasOptional, scaleOptional, offsetOptional, antiquantScaleOptional,
             antiquantOffsetOptional, perTokenScaleOptional, groupListOptional, activationInputOptional,
             activationQuantScaleOptional, activationQuantOffsetOptional, splitItem, groupType, groupListType,
             actType);
  a_list(&c, out, 1); a_list(&c, activationFeatureOutOptional, 1); a_list(&c, dynQuantScaleOutOptional, 1);
  return finish(&c, "aclnnGroupedMatmulV4", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulV4
PHASE2(aclnnGroupedMatmulV4)
#endif

#ifndef OMIT_aclnnGroupedMatmulV5GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulV5GetWorkspaceSize(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclTensorList *perTokenScaleOptional, const aclTensor *groupListOptional,
    const aclTensorList *activationInputOptional, const aclTensorList *activationQuantScaleOptional,
    const aclTensorList *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType,
    int64_t groupListType, int64_t actType, aclIntArray *tuningConfigOptional, aclTensorList *out,
    aclTensorList *activationFeatureOutOptional, aclTensorList *dynQuantScaleOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulV5");
  gmm_common(&c, x, weight, biasOptional, scaleOptional, offsetOptional, antiquantScaleOptional,
             antiquantOffsetOptional, perTokenScaleOptional, groupListOptional, activationInputOptional,
             activationQuantScaleOptional, activationQuantOffsetOptional, splitItem, groupType, groupListType,
             actType);
  a_array(&c, tuningConfigOptional);
  a_list(&c, out, 1); a_list(&c, activationFeatureOutOptional, 1); a_list(&c, dynQuantScaleOutOptional, 1);
  return finish(&c, "aclnnGroupedMatmulV5", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulV5
PHASE2(aclnnGroupedMatmulV5)
#endif

#ifndef OMIT_aclnnGroupedMatmulWeightNzGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulWeightNzGetWorkspaceSize(
    const aclTensorList *x, const aclTensorList *weight, const aclTensorList *biasOptional,
    const aclTensorList *scaleOptional, const aclTensorList *offsetOptional,
    const aclTensorList *antiquantScaleOptional, const aclTensorList *antiquantOffsetOptional,
    const aclTensorList *perTokenScaleOptional, const aclTensor *groupListOptional,
    const aclTensorList *activationInputOptional, const aclTensorList *activationQuantScaleOptional,
    const aclTensorList *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType,
    int64_t groupListType, int64_t actType, aclIntArray *tuningConfigOptional, int64_t quantGroupSize,
    aclTensorList *out, aclTensorList *activationFeatureOutOptional, aclTensorList *dynQuantScaleOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulWeightNz");
  gmm_common(&c, x, weight, biasOptional, scaleOptional, offsetOptional, antiquantScaleOptional,
             antiquantOffsetOptional, perTokenScaleOptional, groupListOptional, activationInputOptional,
             activationQuantScaleOptional, activationQuantOffsetOptional, splitItem, groupType, groupListType,
             actType);
  a_array(&c, tuningConfigOptional); a_i64(&c, quantGroupSize);
  a_list(&c, out, 1); a_list(&c, activationFeatureOutOptional, 1); a_list(&c, dynQuantScaleOutOptional, 1);
  return finish(&c, "aclnnGroupedMatmulWeightNz", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulWeightNz
PHASE2(aclnnGroupedMatmulWeightNz)
#endif

/* ------------------------------------------------------------------ gating top-k */
#ifndef OMIT_aclnnMoeGatingTopKGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeGatingTopKGetWorkspaceSize(
    const aclTensor *x, const aclTensor *biasOptional, int64_t k, int64_t kGroup, int64_t groupCount,
    int64_t groupSelectMode, int64_t renorm, int64_t normType, bool outFlag, double routedScalingFactor,
    double eps, const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *outOut,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeGatingTopK");
  a_tensor(&c, x, 0); a_tensor(&c, biasOptional, 0); a_i64(&c, k); a_i64(&c, kGroup); a_i64(&c, groupCount);
  a_i64(&c, groupSelectMode); a_i64(&c, renorm); a_i64(&c, normType); a_bool(&c, outFlag);
  a_double(&c, routedScalingFactor); a_double(&c, eps);
  a_tensor(&c, yOut, 1); a_tensor(&c, expertIdxOut, 1); a_tensor(&c, outOut, 1);
  return finish(&c, "aclnnMoeGatingTopK", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeGatingTopK
PHASE2(aclnnMoeGatingTopK)
#endif

#ifndef OMIT_aclnnMoeGatingTopKV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeGatingTopKV2GetWorkspaceSize(
    const aclTensor *x, const aclTensor *biasOptional, const aclTensor *inputIdsOptional,
    const aclTensor *tid2eidOptional, int64_t k, int64_t kGroup, int64_t groupCount, int64_t groupSelectMode,
    int64_t renorm, int64_t normType, bool outFlag, double routedScalingFactor, double eps,
    const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *outOut, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeGatingTopKV2");
  a_tensor(&c, x, 0); a_tensor(&c, biasOptional, 0); a_tensor(&c, inputIdsOptional, 0);
  a_tensor(&c, tid2eidOptional, 0); a_i64(&c, k); a_i64(&c, kGroup); a_i64(&c, groupCount);
  a_i64(&c, groupSelectMode); a_i64(&c, renorm); a_i64(&c, normType); a_bool(&c, outFlag);
  a_double(&c, routedScalingFactor); a_double(&c, eps);
  a_tensor(&c, yOut, 1); a_tensor(&c, expertIdxOut, 1); a_tensor(&c, outOut, 1);
  return finish(&c, "aclnnMoeGatingTopKV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeGatingTopKV2
PHASE2(aclnnMoeGatingTopKV2)
#endif

/* ------------------------------------------------------------------ FFN */
#ifndef OMIT_aclnnFFNV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnFFNV2GetWorkspaceSize(
    const aclTensor *x, const aclTensor *weight1, const aclTensor *weight2, const aclIntArray *expertTokens,
    const aclTensor *bias1, const aclTensor *bias2, const aclTensor *scale, const aclTensor *offset,
    const aclTensor *deqScale1, const aclTensor *deqScale2, const aclTensor *antiquantScale1,
    const aclTensor *antiquantScale2, const aclTensor *antiquantOffset1, const aclTensor *antiquantOffset2,
    const char *activation, int64_t innerPrecise, bool tokensIndexFlag, const aclTensor *y,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnFFNV2");
  a_tensor(&c, x, 0); a_tensor(&c, weight1, 0); a_tensor(&c, weight2, 0); a_array(&c, expertTokens);
  a_tensor(&c, bias1, 0); a_tensor(&c, bias2, 0); a_tensor(&c, scale, 0); a_tensor(&c, offset, 0);
  a_tensor(&c, deqScale1, 0); a_tensor(&c, deqScale2, 0); a_tensor(&c, antiquantScale1, 0);
  a_tensor(&c, antiquantScale2, 0); a_tensor(&c, antiquantOffset1, 0); a_tensor(&c, antiquantOffset2, 0);
  a_str(&c, activation); a_i64(&c, innerPrecise); a_bool(&c, tokensIndexFlag); a_tensor(&c, y, 1);
  return finish(&c, "aclnnFFNV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnFFNV2
PHASE2(aclnnFFNV2)
#endif

/* ------------------------------------------------------------------ grouped matmul + swiglu + quant */
#ifndef OMIT_aclnnGroupedMatmulSwigluQuantWeightNZGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulSwigluQuantWeightNZGetWorkspaceSize(
    const aclTensor *x, const aclTensor *weight, const aclTensor *bias, const aclTensor *offset,
    const aclTensor *weightScale, const aclTensor *xScale, const aclTensor *groupList, aclTensor *output,
    aclTensor *outputScale, aclTensor *outputOffset, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulSwigluQuantWeightNZ");
  a_tensor(&c, x, 0); a_tensor(&c, weight, 0); a_tensor(&c, bias, 0); a_tensor(&c, offset, 0);
  a_tensor(&c, weightScale, 0); a_tensor(&c, xScale, 0); a_tensor(&c, groupList, 0);
  a_tensor(&c, output, 1); a_tensor(&c, outputScale, 1); a_tensor(&c, outputOffset, 1);
  return finish(&c, "aclnnGroupedMatmulSwigluQuantWeightNZ", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulSwigluQuantWeightNZ
PHASE2(aclnnGroupedMatmulSwigluQuantWeightNZ)
#endif

static aclnnStatus swiglu_v2(const char *api, const aclTensor *x, const aclTensorList *weight,
                             const aclTensorList *weightScale, const aclTensorList *weightAssistMatrix,
                             const aclTensor *bias, const aclTensor *xScale, const aclTensor *smoothScale,
                             const aclTensor *groupList, int64_t dequantMode, int64_t dequantDtype,
                             int64_t quantMode, int64_t groupListType, const aclIntArray *tuningConfigOptional,
                             aclTensor *output, aclTensor *outputScale, uint64_t *workspaceSize,
                             aclOpExecutor **executor) {
  Call c;
  begin(&c, api);
  a_tensor(&c, x, 0); a_list(&c, weight, 0); a_list(&c, weightScale, 0); a_list(&c, weightAssistMatrix, 0);
  a_tensor(&c, bias, 0); a_tensor(&c, xScale, 0); a_tensor(&c, smoothScale, 0); a_tensor(&c, groupList, 0);
  a_i64(&c, dequantMode); a_i64(&c, dequantDtype); a_i64(&c, quantMode); a_i64(&c, groupListType);
  a_array(&c, tuningConfigOptional); a_tensor(&c, output, 1); a_tensor(&c, outputScale, 1);
  return finish(&c, api, workspaceSize, executor);
}

#define SWIGLU_V2(NAME)                                                                                     \
  FAKE_EXPORT aclnnStatus NAME##GetWorkspaceSize(                                                          \
      const aclTensor *x, const aclTensorList *weight, const aclTensorList *weightScale,                   \
      const aclTensorList *weightAssistMatrix, const aclTensor *bias, const aclTensor *xScale,             \
      const aclTensor *smoothScale, const aclTensor *groupList, int64_t dequantMode, int64_t dequantDtype, \
      int64_t quantMode, int64_t groupListType, const aclIntArray *tuningConfigOptional, aclTensor *output, \
      aclTensor *outputScale, uint64_t *workspaceSize, aclOpExecutor **executor) {                         \
    return swiglu_v2(#NAME, x, weight, weightScale, weightAssistMatrix, bias, xScale, smoothScale,         \
                     groupList, dequantMode, dequantDtype, quantMode, groupListType, tuningConfigOptional, \
                     output, outputScale, workspaceSize, executor);                                        \
  }
#ifndef OMIT_aclnnGroupedMatmulSwigluQuantV2GetWorkspaceSize
SWIGLU_V2(aclnnGroupedMatmulSwigluQuantV2)
#endif
#ifndef OMIT_aclnnGroupedMatmulSwigluQuantV2
PHASE2(aclnnGroupedMatmulSwigluQuantV2)
#endif
#ifndef OMIT_aclnnGroupedMatmulSwigluQuantWeightNzV2GetWorkspaceSize
SWIGLU_V2(aclnnGroupedMatmulSwigluQuantWeightNzV2)
#endif
#ifndef OMIT_aclnnGroupedMatmulSwigluQuantWeightNzV2
PHASE2(aclnnGroupedMatmulSwigluQuantWeightNzV2)
#endif

/* ------------------------------------------------------------------ grouped matmul + finalize routing */
static void fr_common(Call *c, const aclTensor *x1, aclTensor *x2, const aclTensor *scale, const aclTensor *bias,
                      const aclTensor *offset, const aclTensor *aqs, const aclTensor *aqo, const aclTensor *pts,
                      const aclTensor *groupList, const aclTensor *sharedInput, const aclTensor *logit,
                      const aclTensor *rowIndex, int64_t dtype, float sharedInputWeight, int64_t sharedInputOffset,
                      bool transposeX1, bool transposeX2, int64_t groupListType) {
  a_tensor(c, x1, 0); a_tensor(c, x2, 0); a_tensor(c, scale, 0); a_tensor(c, bias, 0); a_tensor(c, offset, 0);
  a_tensor(c, aqs, 0); a_tensor(c, aqo, 0); a_tensor(c, pts, 0); a_tensor(c, groupList, 0);
  a_tensor(c, sharedInput, 0); a_tensor(c, logit, 0); a_tensor(c, rowIndex, 0); a_i64(c, dtype);
  a_float(c, sharedInputWeight); a_i64(c, sharedInputOffset); a_bool(c, transposeX1); a_bool(c, transposeX2);
  a_i64(c, groupListType);
}

#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulFinalizeRoutingV2GetWorkspaceSize(
    const aclTensor *x1, aclTensor *x2, const aclTensor *scaleOptional, const aclTensor *biasOptional,
    const aclTensor *offsetOptional, const aclTensor *antiquantScaleOptional,
    const aclTensor *antiquantOffsetOptional, const aclTensor *pertokenScaleOptional,
    const aclTensor *groupListOptional, const aclTensor *sharedInputOptional, const aclTensor *logitOptional,
    const aclTensor *rowIndexOptional, int64_t dtype, float sharedInputWeight, int64_t sharedInputOffset,
    bool transposeX1, bool transposeX2, int64_t groupListType, aclTensor *out, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulFinalizeRoutingV2");
  fr_common(&c, x1, x2, scaleOptional, biasOptional, offsetOptional, antiquantScaleOptional,
            antiquantOffsetOptional, pertokenScaleOptional, groupListOptional, sharedInputOptional, logitOptional,
            rowIndexOptional, dtype, sharedInputWeight, sharedInputOffset, transposeX1, transposeX2, groupListType);
  a_tensor(&c, out, 1);
  return finish(&c, "aclnnGroupedMatmulFinalizeRoutingV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingV2
PHASE2(aclnnGroupedMatmulFinalizeRoutingV2)
#endif

static aclnnStatus fr_v3(const char *api, const aclTensor *x1, aclTensor *x2, const aclTensor *scale,
                         const aclTensor *bias, const aclTensor *offset, const aclTensor *aqs, const aclTensor *aqo,
                         const aclTensor *pts, const aclTensor *groupList, const aclTensor *sharedInput,
                         const aclTensor *logit, const aclTensor *rowIndex, int64_t dtype, float sharedInputWeight,
                         int64_t sharedInputOffset, bool transposeX1, bool transposeX2, int64_t groupListType,
                         const aclIntArray *tuning, aclTensor *out, uint64_t *workspaceSize,
                         aclOpExecutor **executor) {
  Call c;
  begin(&c, api);
  fr_common(&c, x1, x2, scale, bias, offset, aqs, aqo, pts, groupList, sharedInput, logit, rowIndex, dtype,
            sharedInputWeight, sharedInputOffset, transposeX1, transposeX2, groupListType);
  a_array(&c, tuning);
  a_tensor(&c, out, 1);
  return finish(&c, api, workspaceSize, executor);
}

#define FR_V3(NAME)                                                                                          \
  FAKE_EXPORT aclnnStatus NAME##GetWorkspaceSize(                                                           \
      const aclTensor *x1, aclTensor *x2, const aclTensor *scaleOptional, const aclTensor *biasOptional,    \
      const aclTensor *offsetOptional, const aclTensor *antiquantScaleOptional,                             \
      const aclTensor *antiquantOffsetOptional, const aclTensor *pertokenScaleOptional,                     \
      const aclTensor *groupListOptional, const aclTensor *sharedInputOptional,                             \
      const aclTensor *logitOptional, const aclTensor *rowIndexOptional, int64_t dtype,                     \
      float sharedInputWeight, int64_t sharedInputOffset, bool transposeX1, bool transposeX2,               \
      int64_t groupListType, const aclIntArray *tuningConfigOptional, aclTensor *out,                       \
      uint64_t *workspaceSize, aclOpExecutor **executor) {                                                  \
    return fr_v3(#NAME, x1, x2, scaleOptional, biasOptional, offsetOptional, antiquantScaleOptional,        \
                 antiquantOffsetOptional, pertokenScaleOptional, groupListOptional, sharedInputOptional,    \
                 logitOptional, rowIndexOptional, dtype, sharedInputWeight, sharedInputOffset, transposeX1, \
                 transposeX2, groupListType, tuningConfigOptional, out, workspaceSize, executor);           \
  }
#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingV3GetWorkspaceSize
FR_V3(aclnnGroupedMatmulFinalizeRoutingV3)
#endif
#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingV3
PHASE2(aclnnGroupedMatmulFinalizeRoutingV3)
#endif
#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingWeightNzV2GetWorkspaceSize
FR_V3(aclnnGroupedMatmulFinalizeRoutingWeightNzV2)
#endif
#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingWeightNzV2
PHASE2(aclnnGroupedMatmulFinalizeRoutingWeightNzV2)
#endif

#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingWeightNzGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulFinalizeRoutingWeightNzGetWorkspaceSize(
    const aclTensor *x1, aclTensor *x2, const aclTensor *scale, const aclTensor *bias,
    const aclTensor *pertokenScaleOptional, const aclTensor *groupList, const aclTensor *sharedInput,
    const aclTensor *logit, const aclTensor *rowIndex, int64_t dtype, float sharedInputWeight,
    int64_t sharedInputOffset, bool transposeX1, bool transposeX2, int64_t groupListType, aclTensor *out,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulFinalizeRoutingWeightNz");
  a_tensor(&c, x1, 0); a_tensor(&c, x2, 0); a_tensor(&c, scale, 0); a_tensor(&c, bias, 0);
  a_tensor(&c, pertokenScaleOptional, 0); a_tensor(&c, groupList, 0); a_tensor(&c, sharedInput, 0);
  a_tensor(&c, logit, 0); a_tensor(&c, rowIndex, 0); a_i64(&c, dtype); a_float(&c, sharedInputWeight);
  a_i64(&c, sharedInputOffset); a_bool(&c, transposeX1); a_bool(&c, transposeX2); a_i64(&c, groupListType);
  a_tensor(&c, out, 1);
  return finish(&c, "aclnnGroupedMatmulFinalizeRoutingWeightNz", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulFinalizeRoutingWeightNz
PHASE2(aclnnGroupedMatmulFinalizeRoutingWeightNz)
#endif

/* ------------------------------------------------------------------ MoE routing and combine */
#ifndef OMIT_aclnnMoeInitRoutingV3GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeInitRoutingV3GetWorkspaceSize(
    const aclTensor *x, const aclTensor *expertIdx, const aclTensor *scaleOptional, const aclTensor *offsetOptional,
    int64_t activeNum, int64_t expertCapacity, int64_t expertNum, int64_t dropPadMode, int64_t expertTokensNumType,
    bool expertTokensNumFlag, int64_t quantMode, const aclIntArray *activeExpertRangeOptional, int64_t rowIdxType,
    const aclTensor *expandedXOut, const aclTensor *expandedRowIdxOut, const aclTensor *expertTokensCountOrCumsumOut,
    const aclTensor *expandedScaleOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeInitRoutingV3");
  a_tensor(&c, x, 0); a_tensor(&c, expertIdx, 0); a_tensor(&c, scaleOptional, 0); a_tensor(&c, offsetOptional, 0);
  a_i64(&c, activeNum); a_i64(&c, expertCapacity); a_i64(&c, expertNum); a_i64(&c, dropPadMode);
  a_i64(&c, expertTokensNumType); a_bool(&c, expertTokensNumFlag); a_i64(&c, quantMode);
  a_array(&c, activeExpertRangeOptional); a_i64(&c, rowIdxType);
  a_tensor(&c, expandedXOut, 1); a_tensor(&c, expandedRowIdxOut, 1); a_tensor(&c, expertTokensCountOrCumsumOut, 1);
  a_tensor(&c, expandedScaleOut, 1);
  return finish(&c, "aclnnMoeInitRoutingV3", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeInitRoutingV3
PHASE2(aclnnMoeInitRoutingV3)
#endif

#ifndef OMIT_aclnnMoeInitRoutingV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeInitRoutingV2GetWorkspaceSize(
    const aclTensor *x, const aclTensor *expertIdx, int64_t activeNumOptional, int64_t expertCapacityOptional,
    int64_t expertNumOptional, int64_t dropPadModeOptional, int64_t expertTokensCountOrCumsumFlagOptional,
    bool expertTokensBeforeCapacityFlagOptional, const aclTensor *expandedXOut, const aclTensor *expandedRowIdxOut,
    const aclTensor *expertTokensCountOrCumsumOutOptional, const aclTensor *expertTokensBeforeCapacityOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeInitRoutingV2");
  a_tensor(&c, x, 0); a_tensor(&c, expertIdx, 0); a_i64(&c, activeNumOptional); a_i64(&c, expertCapacityOptional);
  a_i64(&c, expertNumOptional); a_i64(&c, dropPadModeOptional); a_i64(&c, expertTokensCountOrCumsumFlagOptional);
  a_bool(&c, expertTokensBeforeCapacityFlagOptional);
  a_tensor(&c, expandedXOut, 1); a_tensor(&c, expandedRowIdxOut, 1);
  a_tensor(&c, expertTokensCountOrCumsumOutOptional, 1); a_tensor(&c, expertTokensBeforeCapacityOutOptional, 1);
  return finish(&c, "aclnnMoeInitRoutingV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeInitRoutingV2
PHASE2(aclnnMoeInitRoutingV2)
#endif

#ifndef OMIT_aclnnMoeTokenPermuteGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeTokenPermuteGetWorkspaceSize(
    const aclTensor *tokens, const aclTensor *indices, int64_t numOutTokens, bool paddedMode,
    const aclTensor *permuteTokensOut, const aclTensor *sortedIndicesOut, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeTokenPermute");
  a_tensor(&c, tokens, 0); a_tensor(&c, indices, 0); a_i64(&c, numOutTokens); a_bool(&c, paddedMode);
  a_tensor(&c, permuteTokensOut, 1); a_tensor(&c, sortedIndicesOut, 1);
  return finish(&c, "aclnnMoeTokenPermute", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeTokenPermute
PHASE2(aclnnMoeTokenPermute)
#endif

#ifndef OMIT_aclnnMoeTokenPermuteGradGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeTokenPermuteGradGetWorkspaceSize(
    const aclTensor *permutedOutputGrad, const aclTensor *sortedIndices, int64_t numTopk, bool paddedMode,
    aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeTokenPermuteGrad");
  a_tensor(&c, permutedOutputGrad, 0); a_tensor(&c, sortedIndices, 0); a_i64(&c, numTopk); a_bool(&c, paddedMode);
  a_tensor(&c, out, 1);
  return finish(&c, "aclnnMoeTokenPermuteGrad", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeTokenPermuteGrad
PHASE2(aclnnMoeTokenPermuteGrad)
#endif

#ifndef OMIT_aclnnMoeTokenUnpermuteGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeTokenUnpermuteGetWorkspaceSize(
    const aclTensor *permutedTokens, const aclTensor *sortedIndices, const aclTensor *probsOptional, bool paddedMode,
    const aclIntArray *restoreShapeOptional, aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeTokenUnpermute");
  a_tensor(&c, permutedTokens, 0); a_tensor(&c, sortedIndices, 0); a_tensor(&c, probsOptional, 0);
  a_bool(&c, paddedMode); a_array(&c, restoreShapeOptional); a_tensor(&c, out, 1);
  return finish(&c, "aclnnMoeTokenUnpermute", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeTokenUnpermute
PHASE2(aclnnMoeTokenUnpermute)
#endif

#ifndef OMIT_aclnnMoeTokenUnpermuteGradGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeTokenUnpermuteGradGetWorkspaceSize(
    const aclTensor *permutedTokens, const aclTensor *unpermutedTokensGrad, const aclTensor *sortedIndices,
    const aclTensor *probsOptional, bool paddedMode, const aclIntArray *restoreShapeOptional,
    aclTensor *permutedTokensGradOut, aclTensor *probsGradOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeTokenUnpermuteGrad");
  a_tensor(&c, permutedTokens, 0); a_tensor(&c, unpermutedTokensGrad, 0); a_tensor(&c, sortedIndices, 0);
  a_tensor(&c, probsOptional, 0); a_bool(&c, paddedMode); a_array(&c, restoreShapeOptional);
  a_tensor(&c, permutedTokensGradOut, 1); a_tensor(&c, probsGradOut, 1);
  return finish(&c, "aclnnMoeTokenUnpermuteGrad", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeTokenUnpermuteGrad
PHASE2(aclnnMoeTokenUnpermuteGrad)
#endif

#ifndef OMIT_aclnnMoeFinalizeRoutingGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeFinalizeRoutingGetWorkspaceSize(
    const aclTensor *expandedX, const aclTensor *x1, const aclTensor *x2Optional, const aclTensor *bias,
    const aclTensor *scales, const aclTensor *expandedRowIdx, const aclTensor *expandedExpertIdx, const aclTensor *out,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeFinalizeRouting");
  a_tensor(&c, expandedX, 0); a_tensor(&c, x1, 0); a_tensor(&c, x2Optional, 0); a_tensor(&c, bias, 0);
  a_tensor(&c, scales, 0); a_tensor(&c, expandedRowIdx, 0); a_tensor(&c, expandedExpertIdx, 0); a_tensor(&c, out, 1);
  return finish(&c, "aclnnMoeFinalizeRouting", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeFinalizeRouting
PHASE2(aclnnMoeFinalizeRouting)
#endif

#ifndef OMIT_aclnnMoeFinalizeRoutingV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeFinalizeRoutingV2GetWorkspaceSize(
    const aclTensor *expandedX, const aclTensor *expandedRowIdx, const aclTensor *x1Optional,
    const aclTensor *x2Optional, const aclTensor *biasOptional, const aclTensor *scalesOptional,
    const aclTensor *expertIdxOptional, int64_t dropPadMode, const aclTensor *out, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeFinalizeRoutingV2");
  a_tensor(&c, expandedX, 0); a_tensor(&c, expandedRowIdx, 0); a_tensor(&c, x1Optional, 0);
  a_tensor(&c, x2Optional, 0); a_tensor(&c, biasOptional, 0); a_tensor(&c, scalesOptional, 0);
  a_tensor(&c, expertIdxOptional, 0); a_i64(&c, dropPadMode); a_tensor(&c, out, 1);
  return finish(&c, "aclnnMoeFinalizeRoutingV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeFinalizeRoutingV2
PHASE2(aclnnMoeFinalizeRoutingV2)
#endif

#ifndef OMIT_aclnnMoeFinalizeRoutingV4GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeFinalizeRoutingV4GetWorkspaceSize(
    const aclTensor *expandedX, const aclTensor *expandedRowIdx, const aclTensor *x1Optional,
    const aclTensor *x2Optional, const aclTensor *biasOptional, const aclTensor *scalesOptional,
    const aclTensor *expertIdxOptional, const aclTensor *xOptional, const aclTensor *alpha1Optional,
    const aclTensor *alpha2Optional, const aclTensor *vOptional, int64_t dropPadMode,
    const aclIntArray *zeroExpertRange, const aclIntArray *copyExpertRange, const aclIntArray *constantExpertRange,
    int64_t k, const aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeFinalizeRoutingV4");
  a_tensor(&c, expandedX, 0); a_tensor(&c, expandedRowIdx, 0); a_tensor(&c, x1Optional, 0);
  a_tensor(&c, x2Optional, 0); a_tensor(&c, biasOptional, 0); a_tensor(&c, scalesOptional, 0);
  a_tensor(&c, expertIdxOptional, 0); a_tensor(&c, xOptional, 0); a_tensor(&c, alpha1Optional, 0);
  a_tensor(&c, alpha2Optional, 0); a_tensor(&c, vOptional, 0); a_i64(&c, dropPadMode);
  a_array(&c, zeroExpertRange); a_array(&c, copyExpertRange); a_array(&c, constantExpertRange); a_i64(&c, k);
  a_tensor(&c, out, 1);
  return finish(&c, "aclnnMoeFinalizeRoutingV4", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeFinalizeRoutingV4
PHASE2(aclnnMoeFinalizeRoutingV4)
#endif

#ifndef OMIT_aclnnMoeGatingTopKSoftmaxGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeGatingTopKSoftmaxGetWorkspaceSize(
    const aclTensor *x, const aclTensor *finishedOptional, int64_t k, const aclTensor *yOut,
    const aclTensor *expertIdxOut, const aclTensor *rowIdxOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeGatingTopKSoftmax");
  a_tensor(&c, x, 0); a_tensor(&c, finishedOptional, 0); a_i64(&c, k);
  a_tensor(&c, yOut, 1); a_tensor(&c, expertIdxOut, 1); a_tensor(&c, rowIdxOut, 1);
  return finish(&c, "aclnnMoeGatingTopKSoftmax", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeGatingTopKSoftmax
PHASE2(aclnnMoeGatingTopKSoftmax)
#endif

#ifndef OMIT_aclnnMoeGatingTopKSoftmaxV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeGatingTopKSoftmaxV2GetWorkspaceSize(
    const aclTensor *x, const aclTensor *finishedOptional, int64_t k, int64_t renorm, bool outputSoftmaxResultFlag,
    const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *softmaxResultOutOptional,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeGatingTopKSoftmaxV2");
  a_tensor(&c, x, 0); a_tensor(&c, finishedOptional, 0); a_i64(&c, k); a_i64(&c, renorm);
  a_bool(&c, outputSoftmaxResultFlag);
  a_tensor(&c, yOut, 1); a_tensor(&c, expertIdxOut, 1); a_tensor(&c, softmaxResultOutOptional, 1);
  return finish(&c, "aclnnMoeGatingTopKSoftmaxV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeGatingTopKSoftmaxV2
PHASE2(aclnnMoeGatingTopKSoftmaxV2)
#endif

#ifndef OMIT_aclnnMoeGatingTopKBackwardGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeGatingTopKBackwardGetWorkspaceSize(
    const aclTensor *xNorm, const aclTensor *gradY, const aclTensor *expertIdx, int64_t renorm, int64_t normType,
    double routedScalingFactor, double eps, const aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeGatingTopKBackward");
  a_tensor(&c, xNorm, 0); a_tensor(&c, gradY, 0); a_tensor(&c, expertIdx, 0); a_i64(&c, renorm); a_i64(&c, normType);
  a_double(&c, routedScalingFactor); a_double(&c, eps); a_tensor(&c, out, 1);
  return finish(&c, "aclnnMoeGatingTopKBackward", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeGatingTopKBackward
PHASE2(aclnnMoeGatingTopKBackward)
#endif

#ifndef OMIT_aclnnMoeComputeExpertTokensGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeComputeExpertTokensGetWorkspaceSize(
    const aclTensor *sortedExperts, int64_t numExperts, const aclTensor *out, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeComputeExpertTokens");
  a_tensor(&c, sortedExperts, 0); a_i64(&c, numExperts); a_tensor(&c, out, 1);
  return finish(&c, "aclnnMoeComputeExpertTokens", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeComputeExpertTokens
PHASE2(aclnnMoeComputeExpertTokens)
#endif

#ifndef OMIT_aclnnMoeReRoutingGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeReRoutingGetWorkspaceSize(
    const aclTensor *tokens, const aclTensor *expertTokenNumPerRank, const aclTensor *perTokenScalesOptional,
    int64_t expertTokenNumType, int64_t idxType, const aclTensor *permuteTokensOut,
    const aclTensor *permutePerTokenScalesOut, const aclTensor *permuteTokenIdxOut, const aclTensor *expertTokenNumOut,
    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeReRouting");
  a_tensor(&c, tokens, 0); a_tensor(&c, expertTokenNumPerRank, 0); a_tensor(&c, perTokenScalesOptional, 0);
  a_i64(&c, expertTokenNumType); a_i64(&c, idxType);
  a_tensor(&c, permuteTokensOut, 1); a_tensor(&c, permutePerTokenScalesOut, 1); a_tensor(&c, permuteTokenIdxOut, 1);
  a_tensor(&c, expertTokenNumOut, 1);
  return finish(&c, "aclnnMoeReRouting", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeReRouting
PHASE2(aclnnMoeReRouting)
#endif

/* ------------------------------------------------------------------ MoE quantised path (element-wise ops) */
#ifndef OMIT_aclnnSwiGluGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnSwiGluGetWorkspaceSize(const aclTensor *x, int64_t dim, const aclTensor *out,
                                                    uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnSwiGlu");
  a_tensor(&c, x, 0); a_i64(&c, dim); a_tensor(&c, out, 1);
  return finish(&c, "aclnnSwiGlu", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnSwiGlu
PHASE2(aclnnSwiGlu)
#endif

#ifndef OMIT_aclnnSwiGluGradGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnSwiGluGradGetWorkspaceSize(const aclTensor *yGrad, const aclTensor *x, int64_t dim,
                                                        const aclTensor *out, uint64_t *workspaceSize,
                                                        aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnSwiGluGrad");
  a_tensor(&c, yGrad, 0); a_tensor(&c, x, 0); a_i64(&c, dim); a_tensor(&c, out, 1);
  return finish(&c, "aclnnSwiGluGrad", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnSwiGluGrad
PHASE2(aclnnSwiGluGrad)
#endif

#ifndef OMIT_aclnnDynamicQuantGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnDynamicQuantGetWorkspaceSize(const aclTensor *x, const aclTensor *smoothScalesOptional,
                                                          const aclTensor *yOut, const aclTensor *scaleOut,
                                                          uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnDynamicQuant");
  a_tensor(&c, x, 0); a_tensor(&c, smoothScalesOptional, 0); a_tensor(&c, yOut, 1); a_tensor(&c, scaleOut, 1);
  return finish(&c, "aclnnDynamicQuant", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnDynamicQuant
PHASE2(aclnnDynamicQuant)
#endif

#ifndef OMIT_aclnnDynamicQuantV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnDynamicQuantV2GetWorkspaceSize(
    const aclTensor *x, const aclTensor *smoothScalesOptional, const aclTensor *groupIndexOptional, int64_t dstType,
    const aclTensor *yOut, const aclTensor *scaleOut, const aclTensor *offsetOut, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnDynamicQuantV2");
  a_tensor(&c, x, 0); a_tensor(&c, smoothScalesOptional, 0); a_tensor(&c, groupIndexOptional, 0);
  a_i64(&c, dstType); a_tensor(&c, yOut, 1); a_tensor(&c, scaleOut, 1); a_tensor(&c, offsetOut, 1);
  return finish(&c, "aclnnDynamicQuantV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnDynamicQuantV2
PHASE2(aclnnDynamicQuantV2)
#endif

#ifndef OMIT_aclnnDequantSwigluQuantGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnDequantSwigluQuantGetWorkspaceSize(
    const aclTensor *x, const aclTensor *weightScaleOptional, const aclTensor *activationScaleOptional,
    const aclTensor *biasOptional, const aclTensor *quantScaleOptional, const aclTensor *quantOffsetOptional,
    const aclTensor *groupIndexOptional, bool activateLeft, char *quantModeOptional, const aclTensor *yOut,
    const aclTensor *scaleOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnDequantSwigluQuant");
  a_tensor(&c, x, 0); a_tensor(&c, weightScaleOptional, 0); a_tensor(&c, activationScaleOptional, 0);
  a_tensor(&c, biasOptional, 0); a_tensor(&c, quantScaleOptional, 0); a_tensor(&c, quantOffsetOptional, 0);
  a_tensor(&c, groupIndexOptional, 0); a_bool(&c, activateLeft); a_str(&c, quantModeOptional);
  a_tensor(&c, yOut, 1); a_tensor(&c, scaleOut, 1);
  return finish(&c, "aclnnDequantSwigluQuant", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnDequantSwigluQuant
PHASE2(aclnnDequantSwigluQuant)
#endif

#ifndef OMIT_aclnnDequantSwigluQuantV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnDequantSwigluQuantV2GetWorkspaceSize(
    const aclTensor *x, const aclTensor *weightScaleOptional, const aclTensor *activationScaleOptional,
    const aclTensor *biasOptional, const aclTensor *quantScaleOptional, const aclTensor *quantOffsetOptional,
    const aclTensor *groupIndexOptional, bool activateLeft, char *quantModeOptional, int64_t dstType,
    char *roundModeOptional, int64_t activateDim, int64_t swigluMode, double clampLimit, double gluAlpha,
    double gluBias, const aclTensor *yOut, const aclTensor *scaleOut, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnDequantSwigluQuantV2");
  a_tensor(&c, x, 0); a_tensor(&c, weightScaleOptional, 0); a_tensor(&c, activationScaleOptional, 0);
  a_tensor(&c, biasOptional, 0); a_tensor(&c, quantScaleOptional, 0); a_tensor(&c, quantOffsetOptional, 0);
  a_tensor(&c, groupIndexOptional, 0); a_bool(&c, activateLeft); a_str(&c, quantModeOptional);
  a_i64(&c, dstType); a_str(&c, roundModeOptional); a_i64(&c, activateDim); a_i64(&c, swigluMode);
  a_double(&c, clampLimit); a_double(&c, gluAlpha); a_double(&c, gluBias);
  a_tensor(&c, yOut, 1); a_tensor(&c, scaleOut, 1);
  return finish(&c, "aclnnDequantSwigluQuantV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnDequantSwigluQuantV2
PHASE2(aclnnDequantSwigluQuantV2)
#endif

/* ------------------------------------------------------------------ grouped matmul add (in place) */
#ifndef OMIT_aclnnGroupedMatmulAddGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulAddGetWorkspaceSize(const aclTensor *x, const aclTensor *weight,
                                                              const aclTensor *groupList, aclTensor *yRef,
                                                              bool transposeX, bool transposeWeight, int64_t groupType,
                                                              uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulAdd");
  a_tensor(&c, x, 0); a_tensor(&c, weight, 0); a_tensor(&c, groupList, 0); a_tensor(&c, yRef, 1);
  a_bool(&c, transposeX); a_bool(&c, transposeWeight); a_i64(&c, groupType);
  return finish(&c, "aclnnGroupedMatmulAdd", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulAdd
PHASE2(aclnnGroupedMatmulAdd)
#endif

#ifndef OMIT_aclnnGroupedMatmulAddV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnGroupedMatmulAddV2GetWorkspaceSize(const aclTensor *x, const aclTensor *weight,
                                                                const aclTensor *groupList, aclTensor *yRef,
                                                                bool transposeX, bool transposeWeight,
                                                                int64_t groupType, int64_t groupListType,
                                                                uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnGroupedMatmulAddV2");
  a_tensor(&c, x, 0); a_tensor(&c, weight, 0); a_tensor(&c, groupList, 0); a_tensor(&c, yRef, 1);
  a_bool(&c, transposeX); a_bool(&c, transposeWeight); a_i64(&c, groupType); a_i64(&c, groupListType);
  return finish(&c, "aclnnGroupedMatmulAddV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnGroupedMatmulAddV2
PHASE2(aclnnGroupedMatmulAddV2)
#endif

/* ------------------------------------------------------------------ expert-parallel MC2 dispatch / combine */
#define DISPATCH_HEAD(c, x, ids, sc, mask, es) \
  a_tensor(c, x, 0); a_tensor(c, ids, 0); a_tensor(c, sc, 0); a_tensor(c, mask, 0); a_tensor(c, es, 0)
#define DISPATCH_SCALARS(c) \
  a_str(c, groupEp); a_i64(c, epWorldSize); a_i64(c, epRankId); a_i64(c, moeExpertNum); a_str(c, groupTp); \
  a_i64(c, tpWorldSize); a_i64(c, tpRankId); a_i64(c, expertShardType); a_i64(c, sharedExpertNum);           \
  a_i64(c, sharedExpertRankNum); a_i64(c, quantMode); a_i64(c, globalBs); a_i64(c, expertTokenNumsType)
#define DISPATCH_OUTS(c, o0, o1, o2, o3, o4, o5, o6) \
  a_tensor(c, o0, 1); a_tensor(c, o1, 1); a_tensor(c, o2, 1); a_tensor(c, o3, 1); a_tensor(c, o4, 1); \
  a_tensor(c, o5, 1); a_tensor(c, o6, 1)

#ifndef OMIT_aclnnMoeDistributeDispatchGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeDispatchGetWorkspaceSize(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scales, const aclTensor *xActiveMask,
    const aclTensor *expertScales, const char *groupEp, int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum,
    const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum,
    int64_t sharedExpertRankNum, int64_t quantMode, int64_t globalBs, int64_t expertTokenNumsType, aclTensor *expandX,
    aclTensor *dynamicScales, aclTensor *expandIdx, aclTensor *expertTokenNums, aclTensor *epRecvCounts,
    aclTensor *tpRecvCounts, aclTensor *expandScales, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeDispatch");
  DISPATCH_HEAD(&c, x, expertIds, scales, xActiveMask, expertScales);
  DISPATCH_SCALARS(&c);
  DISPATCH_OUTS(&c, expandX, dynamicScales, expandIdx, expertTokenNums, epRecvCounts, tpRecvCounts, expandScales);
  return finish(&c, "aclnnMoeDistributeDispatch", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeDispatch
PHASE2(aclnnMoeDistributeDispatch)
#endif

#ifndef OMIT_aclnnMoeDistributeDispatchV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeDispatchV2GetWorkspaceSize(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scalesOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *expertScalesOptional, const char *groupEp,
    int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize,
    int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum, int64_t sharedExpertRankNum,
    int64_t quantMode, int64_t globalBs, int64_t expertTokenNumsType, const char *commAlg, aclTensor *expandXOut,
    aclTensor *dynamicScalesOut, aclTensor *assistInfoForCombineOut, aclTensor *expertTokenNumsOut,
    aclTensor *epRecvCountsOut, aclTensor *tpRecvCountsOut, aclTensor *expandScalesOut, uint64_t *workspaceSize,
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeDispatchV2");
  DISPATCH_HEAD(&c, x, expertIds, scalesOptional, xActiveMaskOptional, expertScalesOptional);
  DISPATCH_SCALARS(&c);
  a_str(&c, commAlg);
  DISPATCH_OUTS(&c, expandXOut, dynamicScalesOut, assistInfoForCombineOut, expertTokenNumsOut, epRecvCountsOut,
                tpRecvCountsOut, expandScalesOut);
  return finish(&c, "aclnnMoeDistributeDispatchV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeDispatchV2
PHASE2(aclnnMoeDistributeDispatchV2)
#endif

#ifndef OMIT_aclnnMoeDistributeDispatchV3GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeDispatchV3GetWorkspaceSize(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scalesOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *expertScalesOptional,
    const aclTensor *elasticInfoOptional, const char *groupEp, int64_t epWorldSize, int64_t epRankId,
    int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType,
    int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t quantMode, int64_t globalBs,
    int64_t expertTokenNumsType, const char *commAlg, int64_t zeroExpertNum, int64_t copyExpertNum,
    int64_t constExpertNum, aclTensor *expandXOut, aclTensor *dynamicScalesOut, aclTensor *assistInfoForCombineOut,
    aclTensor *expertTokenNumsOut, aclTensor *epRecvCountsOut, aclTensor *tpRecvCountsOut,
    aclTensor *expandScalesOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeDispatchV3");
  DISPATCH_HEAD(&c, x, expertIds, scalesOptional, xActiveMaskOptional, expertScalesOptional);
  a_tensor(&c, elasticInfoOptional, 0);
  DISPATCH_SCALARS(&c);
  a_str(&c, commAlg); a_i64(&c, zeroExpertNum); a_i64(&c, copyExpertNum); a_i64(&c, constExpertNum);
  DISPATCH_OUTS(&c, expandXOut, dynamicScalesOut, assistInfoForCombineOut, expertTokenNumsOut, epRecvCountsOut,
                tpRecvCountsOut, expandScalesOut);
  return finish(&c, "aclnnMoeDistributeDispatchV3", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeDispatchV3
PHASE2(aclnnMoeDistributeDispatchV3)
#endif

#ifndef OMIT_aclnnMoeDistributeDispatchV4GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeDispatchV4GetWorkspaceSize(
    const aclTensor *x, const aclTensor *expertIds, const aclTensor *scalesOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *expertScalesOptional,
    const aclTensor *elasticInfoOptional, const aclTensor *performanceInfoOptional, const char *groupEp,
    int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize,
    int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum, int64_t sharedExpertRankNum,
    int64_t quantMode, int64_t globalBs, int64_t expertTokenNumsType, const char *commAlg, int64_t zeroExpertNum,
    int64_t copyExpertNum, int64_t constExpertNum, aclTensor *expandXOut, aclTensor *dynamicScalesOut,
    aclTensor *assistInfoForCombineOut, aclTensor *expertTokenNumsOut, aclTensor *epRecvCountsOut,
    aclTensor *tpRecvCountsOut, aclTensor *expandScalesOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeDispatchV4");
  DISPATCH_HEAD(&c, x, expertIds, scalesOptional, xActiveMaskOptional, expertScalesOptional);
  a_tensor(&c, elasticInfoOptional, 0); a_tensor(&c, performanceInfoOptional, 0);
  DISPATCH_SCALARS(&c);
  a_str(&c, commAlg); a_i64(&c, zeroExpertNum); a_i64(&c, copyExpertNum); a_i64(&c, constExpertNum);
  DISPATCH_OUTS(&c, expandXOut, dynamicScalesOut, assistInfoForCombineOut, expertTokenNumsOut, epRecvCountsOut,
                tpRecvCountsOut, expandScalesOut);
  return finish(&c, "aclnnMoeDistributeDispatchV4", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeDispatchV4
PHASE2(aclnnMoeDistributeDispatchV4)
#endif

#define COMBINE_HEAD(c, ex, ids, info, send, es, tps, mask, act, ws, gl, exs) \
  a_tensor(c, ex, 0); a_tensor(c, ids, 0); a_tensor(c, info, 0); a_tensor(c, send, 0); a_tensor(c, es, 0); \
  a_tensor(c, tps, 0); a_tensor(c, mask, 0); a_tensor(c, act, 0); a_tensor(c, ws, 0); a_tensor(c, gl, 0);   \
  a_tensor(c, exs, 0)
#define COMBINE_SCALARS(c) \
  a_str(c, groupEp); a_i64(c, epWorldSize); a_i64(c, epRankId); a_i64(c, moeExpertNum); a_str(c, groupTp); \
  a_i64(c, tpWorldSize); a_i64(c, tpRankId); a_i64(c, expertShardType); a_i64(c, sharedExpertNum);           \
  a_i64(c, sharedExpertRankNum); a_i64(c, globalBs); a_i64(c, outDtype); a_i64(c, commQuantMode);            \
  a_i64(c, groupListType)

#ifndef OMIT_aclnnMoeDistributeCombineGetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeCombineGetWorkspaceSize(
    const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *expandIdx, const aclTensor *epSendCounts,
    const aclTensor *expertScales, const aclTensor *tpSendCounts, const aclTensor *xActiveMask,
    const aclTensor *activationScale, const aclTensor *weightScale, const aclTensor *groupList,
    const aclTensor *expandScales, const char *groupEp, int64_t epWorldSize, int64_t epRankId, int64_t moeExpertNum,
    const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType, int64_t sharedExpertNum,
    int64_t sharedExpertRankNum, int64_t globalBs, int64_t outDtype, int64_t commQuantMode, int64_t groupListType,
    aclTensor *x, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeCombine");
  COMBINE_HEAD(&c, expandX, expertIds, expandIdx, epSendCounts, expertScales, tpSendCounts, xActiveMask,
               activationScale, weightScale, groupList, expandScales);
  COMBINE_SCALARS(&c);
  a_tensor(&c, x, 1);
  return finish(&c, "aclnnMoeDistributeCombine", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeCombine
PHASE2(aclnnMoeDistributeCombine)
#endif

#ifndef OMIT_aclnnMoeDistributeCombineV2GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeCombineV2GetWorkspaceSize(
    const aclTensor *expandX, const aclTensor *expertIds, const aclTensor *assistInfoForCombine,
    const aclTensor *epSendCounts, const aclTensor *expertScales, const aclTensor *tpSendCountsOptional,
    const aclTensor *xActiveMaskOptional, const aclTensor *activationScaleOptional,
    const aclTensor *weightScaleOptional, const aclTensor *groupListOptional, const aclTensor *expandScalesOptional,
    const aclTensor *sharedExpertXOptional, const char *groupEp, int64_t epWorldSize, int64_t epRankId,
    int64_t moeExpertNum, const char *groupTp, int64_t tpWorldSize, int64_t tpRankId, int64_t expertShardType,
    int64_t sharedExpertNum, int64_t sharedExpertRankNum, int64_t globalBs, int64_t outDtype, int64_t commQuantMode,
    int64_t groupListType, const char *commAlg, aclTensor *xOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeCombineV2");
  COMBINE_HEAD(&c, expandX, expertIds, assistInfoForCombine, epSendCounts, expertScales, tpSendCountsOptional,
               xActiveMaskOptional, activationScaleOptional, weightScaleOptional, groupListOptional,
               expandScalesOptional);
  a_tensor(&c, sharedExpertXOptional, 0);
  COMBINE_SCALARS(&c);
  a_str(&c, commAlg);
  a_tensor(&c, xOut, 1);
  return finish(&c, "aclnnMoeDistributeCombineV2", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeCombineV2
PHASE2(aclnnMoeDistributeCombineV2)
#endif

#ifndef OMIT_aclnnMoeDistributeCombineV3GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeCombineV3GetWorkspaceSize(
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
    aclTensor *xOut, uint64_t *workspaceSize, aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeCombineV3");
  COMBINE_HEAD(&c, expandX, expertIds, assistInfoForCombine, epSendCounts, expertScales, tpSendCountsOptional,
               xActiveMaskOptional, activationScaleOptional, weightScaleOptional, groupListOptional,
               expandScalesOptional);
  a_tensor(&c, sharedExpertXOptional, 0); a_tensor(&c, elasticInfoOptional, 0); a_tensor(&c, oriXOptional, 0);
  a_tensor(&c, constExpertAlpha1Optional, 0); a_tensor(&c, constExpertAlpha2Optional, 0);
  a_tensor(&c, constExpertVOptional, 0);
  COMBINE_SCALARS(&c);
  a_str(&c, commAlg); a_i64(&c, zeroExpertNum); a_i64(&c, copyExpertNum); a_i64(&c, constExpertNum);
  a_tensor(&c, xOut, 1);
  return finish(&c, "aclnnMoeDistributeCombineV3", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeCombineV3
PHASE2(aclnnMoeDistributeCombineV3)
#endif

#ifndef OMIT_aclnnMoeDistributeCombineV4GetWorkspaceSize
FAKE_EXPORT aclnnStatus aclnnMoeDistributeCombineV4GetWorkspaceSize(
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
    aclOpExecutor **executor) {
  Call c;
  begin(&c, "aclnnMoeDistributeCombineV4");
  COMBINE_HEAD(&c, expandX, expertIds, assistInfoForCombine, epSendCounts, expertScales, tpSendCountsOptional,
               xActiveMaskOptional, activationScaleOptional, weightScaleOptional, groupListOptional,
               expandScalesOptional);
  a_tensor(&c, sharedExpertXOptional, 0); a_tensor(&c, elasticInfoOptional, 0); a_tensor(&c, oriXOptional, 0);
  a_tensor(&c, constExpertAlpha1Optional, 0); a_tensor(&c, constExpertAlpha2Optional, 0);
  a_tensor(&c, constExpertVOptional, 0); a_tensor(&c, performanceInfoOptional, 0);
  COMBINE_SCALARS(&c);
  a_str(&c, commAlg); a_i64(&c, zeroExpertNum); a_i64(&c, copyExpertNum); a_i64(&c, constExpertNum);
  a_tensor(&c, xOut, 1);
  return finish(&c, "aclnnMoeDistributeCombineV4", workspaceSize, executor);
}
#endif
#ifndef OMIT_aclnnMoeDistributeCombineV4
PHASE2(aclnnMoeDistributeCombineV4)
#endif
