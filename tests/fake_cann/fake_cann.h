/* Fake CANN runtime used by the tests (issue 8): host memory plays device memory, every call is recorded
 * as one JSON line, outputs receive a deterministic byte pattern.  The object layouts below are private
 * to the fake; the dispatcher only ever sees opaque pointers, exactly as with the real libraries. */
#ifndef ASCEND_MOE_FAKE_CANN_H
#define ASCEND_MOE_FAKE_CANN_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FAKE_EXPORT __attribute__((visibility("default")))
#define FAKE_MAXDIM 16

typedef int32_t aclnnStatus;
typedef int aclError;
typedef void *aclrtStream;
typedef int aclDataType;
typedef int aclFormat;

typedef struct aclTensor {
  int id;
  uint64_t ndim, nstorage;
  int64_t dims[FAKE_MAXDIM], strides[FAKE_MAXDIM], storage[FAKE_MAXDIM];
  int dtype, format;
  int64_t offset;
  void *data;
  int in_list;
} aclTensor;

typedef struct aclTensorList {
  int id;
  uint64_t n;
  aclTensor **items;
} aclTensorList;

typedef struct aclIntArray {
  int id;
  uint64_t n;
  int64_t *v;
} aclIntArray;

#define FAKE_MAXOUT 64
typedef struct aclOpExecutor {
  int id;
  char api[128];
  int nouts;
  aclTensor *outs[FAKE_MAXOUT];
} aclOpExecutor;

/* counters, kept in libascendcl */
enum {
  FK_TENSOR_CREATE, FK_TENSOR_DESTROY, FK_LIST_CREATE, FK_LIST_DESTROY, FK_ARRAY_CREATE, FK_ARRAY_DESTROY,
  FK_EXEC_CREATE, FK_EXEC_DESTROY, FK_MALLOC, FK_FREE, FK_SYNC, FK_BAD_DESTROY, FK_INIT, FK_SET_DEVICE,
  FK_NCOUNTERS
};

/* recorder API exported by the fake libascendcl.so (libnnopbase / libopapi link against it) */
FAKE_EXPORT int fake_next_id(void);
FAKE_EXPORT void fake_emit(const char *line);
FAKE_EXPORT void fake_count(int which, int delta);
/* status to return for `symbol` (0 = succeed); sets aclGetRecentErrMsg's text when failing */
FAKE_EXPORT int fake_check_fail(const char *symbol);
FAKE_EXPORT uint64_t fake_workspace_size(void);
FAKE_EXPORT void fake_set_recent(const char *msg);
FAKE_EXPORT int fake_itemsize(int dtype);

#endif
