/* Fake libascendcl.so: runtime calls, the call recorder and the test controls. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_cann.h"

static char *g_log = NULL;
static size_t g_len = 0, g_cap = 0;
static int g_next_id = 1;
static long long g_counts[FK_NCOUNTERS];
static char g_recent[1024] = "";
static uint64_t g_ws_size = 4096;
static char g_soc[64] = "Ascend910B2";

#define MAXFAIL 8
static struct { char symbol[128]; int status; char msg[512]; } g_fail[MAXFAIL];
static int g_nfail = 0;

static const char *COUNT_NAMES[FK_NCOUNTERS] = {
    "tensor_create", "tensor_destroy", "list_create", "list_destroy", "intarray_create", "intarray_destroy",
    "executor_create", "executor_destroy", "malloc", "free", "sync", "bad_destroy", "init", "set_device"};

FAKE_EXPORT int ascend_moe_fake_runtime(void) { return 1; }

FAKE_EXPORT int fake_next_id(void) { return g_next_id++; }

FAKE_EXPORT void fake_emit(const char *line) {
  size_t n = strlen(line);
  if (g_len + n + 2 > g_cap) {
    g_cap = (g_len + n + 2) * 2;
    g_log = (char *)realloc(g_log, g_cap);
  }
  memcpy(g_log + g_len, line, n);
  g_len += n;
  g_log[g_len++] = '\n';
  g_log[g_len] = 0;
}

static void emitf(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fake_emit(buf);
}

FAKE_EXPORT void fake_count(int which, int delta) { g_counts[which] += delta; }

FAKE_EXPORT void fake_set_recent(const char *msg) {
  strncpy(g_recent, msg, sizeof g_recent - 1);
  g_recent[sizeof g_recent - 1] = 0;
}

FAKE_EXPORT int fake_check_fail(const char *symbol) {
  for (int i = 0; i < g_nfail; ++i)
    if (strcmp(g_fail[i].symbol, symbol) == 0) {
      fake_set_recent(g_fail[i].msg);
      return g_fail[i].status;
    }
  return 0;
}

FAKE_EXPORT uint64_t fake_workspace_size(void) { return g_ws_size; }

FAKE_EXPORT int fake_itemsize(int dtype) {
  switch (dtype) {
    case 0: case 3: case 8: return 4;
    case 1: case 6: case 7: case 27: return 2;
    case 9: case 10: case 11: return 8;
    default: return 1;
  }
}

/* ---- controls used by the tests through ctypes ---- */
FAKE_EXPORT const char *fake_log(void) { return g_log ? g_log : ""; }

FAKE_EXPORT const char *fake_counts(void) {
  static char buf[2048];
  size_t off = 0;
  off += snprintf(buf + off, sizeof buf - off, "{");
  for (int i = 0; i < FK_NCOUNTERS; ++i)
    off += snprintf(buf + off, sizeof buf - off, "%s\"%s\":%lld", i ? "," : "", COUNT_NAMES[i], g_counts[i]);
  snprintf(buf + off, sizeof buf - off, "}");
  return buf;
}

FAKE_EXPORT void fake_reset(void) {
  g_len = 0;
  if (g_log) g_log[0] = 0;
  memset(g_counts, 0, sizeof g_counts);
  g_nfail = 0;
  g_recent[0] = 0;
  g_ws_size = 4096;
}

FAKE_EXPORT void fake_fail(const char *symbol, int status, const char *msg) {
  if (g_nfail >= MAXFAIL) return;
  strncpy(g_fail[g_nfail].symbol, symbol, sizeof g_fail[0].symbol - 1);
  g_fail[g_nfail].status = status;
  strncpy(g_fail[g_nfail].msg, msg, sizeof g_fail[0].msg - 1);
  ++g_nfail;
}

FAKE_EXPORT void fake_set_workspace(uint64_t size) { g_ws_size = size; }
FAKE_EXPORT void fake_set_soc(const char *soc) { strncpy(g_soc, soc, sizeof g_soc - 1); }

/* ---- the ACL runtime API ---- */
FAKE_EXPORT aclError aclInit(const char *configPath) {
  fake_count(FK_INIT, 1);
  emitf("{\"ev\":\"aclInit\",\"config_null\":%s}", configPath ? "false" : "true");
  return fake_check_fail("aclInit");
}

FAKE_EXPORT aclError aclFinalize(void) {
  emitf("{\"ev\":\"aclFinalize\"}");
  return 0;
}

FAKE_EXPORT const char *aclGetRecentErrMsg(void) { return g_recent; }

FAKE_EXPORT aclError aclrtSetDevice(int32_t deviceId) {
  fake_count(FK_SET_DEVICE, 1);
  emitf("{\"ev\":\"aclrtSetDevice\",\"device\":%d}", deviceId);
  return fake_check_fail("aclrtSetDevice");
}

FAKE_EXPORT aclError aclrtGetDeviceCount(uint32_t *count) {
  *count = 1;
  return 0;
}

FAKE_EXPORT const char *aclrtGetSocName(void) { return g_soc; }

FAKE_EXPORT aclError aclrtMalloc(void **devPtr, size_t size, int policy) {
  int st = fake_check_fail("aclrtMalloc");
  emitf("{\"ev\":\"aclrtMalloc\",\"size\":%zu,\"policy\":%d,\"status\":%d}", size, policy, st);
  if (st) return st;
  *devPtr = malloc(size ? size : 1);
  emitf("{\"ev\":\"aclrtMalloc.ptr\",\"ptr\":%llu}", (unsigned long long)(uintptr_t)*devPtr);
  fake_count(FK_MALLOC, 1);
  return 0;
}

FAKE_EXPORT aclError aclrtFree(void *devPtr) {
  emitf("{\"ev\":\"aclrtFree\",\"ptr\":%llu}", (unsigned long long)(uintptr_t)devPtr);
  fake_count(FK_FREE, 1);
  free(devPtr);
  return 0;
}

FAKE_EXPORT aclError aclrtSynchronizeStream(aclrtStream stream) {
  fake_count(FK_SYNC, 1);
  emitf("{\"ev\":\"aclrtSynchronizeStream\",\"stream\":%llu}", (unsigned long long)(uintptr_t)stream);
  return fake_check_fail("aclrtSynchronizeStream");
}
