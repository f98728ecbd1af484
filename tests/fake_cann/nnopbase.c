/* Fake libnnopbase.so: the aclTensor / aclTensorList / aclIntArray object API, every creation and destroy
 * recorded with all its fields. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_cann.h"

static void dims_json(char *buf, size_t cap, const int64_t *v, uint64_t n) {
  size_t off = snprintf(buf, cap, "[");
  for (uint64_t i = 0; i < n && off < cap; ++i)
    off += snprintf(buf + off, cap - off, "%s%lld", i ? "," : "", (long long)v[i]);
  snprintf(buf + off, cap - off, "]");
}

FAKE_EXPORT aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum, aclDataType dataType,
                                       const int64_t *stride, int64_t offset, aclFormat format,
                                       const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData) {
  if (viewDimsNum > FAKE_MAXDIM || storageDimsNum > FAKE_MAXDIM) return NULL;
  aclTensor *t = (aclTensor *)calloc(1, sizeof(aclTensor));
  t->id = fake_next_id();
  t->ndim = viewDimsNum;
  t->nstorage = storageDimsNum;
  if (viewDimsNum) memcpy(t->dims, viewDims, viewDimsNum * sizeof(int64_t));
  if (viewDimsNum) memcpy(t->strides, stride, viewDimsNum * sizeof(int64_t));
  if (storageDimsNum) memcpy(t->storage, storageDims, storageDimsNum * sizeof(int64_t));
  t->dtype = dataType;
  t->format = format;
  t->offset = offset;
  t->data = tensorData;
  char d[512], s[512], st[512], line[2048];
  dims_json(d, sizeof d, t->dims, t->ndim);
  dims_json(s, sizeof s, t->strides, t->ndim);
  dims_json(st, sizeof st, t->storage, t->nstorage);
  snprintf(line, sizeof line,
           "{\"ev\":\"aclCreateTensor\",\"id\":%d,\"dims\":%s,\"dtype\":%d,\"strides\":%s,\"offset\":%lld,"
           "\"format\":%d,\"storage\":%s,\"data\":%llu}",
           t->id, d, dataType, s, (long long)offset, format, st, (unsigned long long)(uintptr_t)tensorData);
  fake_emit(line);
  fake_count(FK_TENSOR_CREATE, 1);
  return t;
}

FAKE_EXPORT aclTensorList *aclCreateTensorList(const aclTensor *const *value, uint64_t size) {
  aclTensorList *l = (aclTensorList *)calloc(1, sizeof(aclTensorList));
  l->id = fake_next_id();
  l->n = size;
  l->items = (aclTensor **)calloc(size ? size : 1, sizeof(aclTensor *));
  char line[2048];
  size_t off = snprintf(line, sizeof line, "{\"ev\":\"aclCreateTensorList\",\"id\":%d,\"items\":[", l->id);
  for (uint64_t i = 0; i < size; ++i) {
    l->items[i] = (aclTensor *)value[i];
    l->items[i]->in_list = 1;
    off += snprintf(line + off, sizeof line - off, "%s%d", i ? "," : "", value[i]->id);
  }
  snprintf(line + off, sizeof line - off, "]}");
  fake_emit(line);
  fake_count(FK_LIST_CREATE, 1);
  return l;
}

FAKE_EXPORT aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size) {
  aclIntArray *a = (aclIntArray *)calloc(1, sizeof(aclIntArray));
  a->id = fake_next_id();
  a->n = size;
  a->v = (int64_t *)calloc(size ? size : 1, sizeof(int64_t));
  if (size) memcpy(a->v, value, size * sizeof(int64_t));
  char d[1024], line[1200];
  dims_json(d, sizeof d, a->v, size);
  snprintf(line, sizeof line, "{\"ev\":\"aclCreateIntArray\",\"id\":%d,\"values\":%s}", a->id, d);
  fake_emit(line);
  fake_count(FK_ARRAY_CREATE, 1);
  return a;
}

static void destroy_event(const char *what, int id) {
  char line[128];
  snprintf(line, sizeof line, "{\"ev\":\"%s\",\"id\":%d}", what, id);
  fake_emit(line);
}

FAKE_EXPORT aclnnStatus aclDestroyTensor(const aclTensor *tensor) {
  if (!tensor) return 0;
  if (tensor->in_list) {  /* owned by its list: destroying it here would be a double free on a device */
    fake_count(FK_BAD_DESTROY, 1);
    destroy_event("aclDestroyTensor.bad", tensor->id);
    return 0;
  }
  destroy_event("aclDestroyTensor", tensor->id);
  fake_count(FK_TENSOR_DESTROY, 1);
  free((void *)tensor);
  return 0;
}

FAKE_EXPORT aclnnStatus aclDestroyTensorList(const aclTensorList *list) {
  if (!list) return 0;
  destroy_event("aclDestroyTensorList", list->id);
  for (uint64_t i = 0; i < list->n; ++i) {
    fake_count(FK_TENSOR_DESTROY, 1);
    free(list->items[i]);
  }
  free(list->items);
  free((void *)list);
  fake_count(FK_LIST_DESTROY, 1);
  return 0;
}

FAKE_EXPORT aclnnStatus aclDestroyIntArray(const aclIntArray *array) {
  if (!array) return 0;
  destroy_event("aclDestroyIntArray", array->id);
  free(array->v);
  free((void *)array);
  fake_count(FK_ARRAY_DESTROY, 1);
  return 0;
}

FAKE_EXPORT aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor *executor) {
  if (!executor) return 0;
  destroy_event("aclDestroyAclOpExecutor", executor->id);
  free(executor);
  fake_count(FK_EXEC_DESTROY, 1);
  return 0;
}

FAKE_EXPORT aclnnStatus aclnnInit(const char *configPath) { return 0; }
