// Run-time CANN loader: dlopen of libascendcl / libnnopbase / libopapi*, per-entry-point symbol probing.
#pragma once

#include <string>
#include <vector>

#include "acl_abi.h"

namespace ascend_moe {

struct LibraryRecord {
  std::string name;   // e.g. "libopapi.so"
  std::string path;   // the file that was loaded (or tried last)
  bool loaded = false;
  bool required = true;
  std::string error;  // why it was not loaded (dlerror() or "not found in ...")
};

struct Runtime {
  bool ok = false;            // the hardware path can be attempted
  std::string reason;         // why not (first blocking problem)
  bool fake = false;          // libascendcl exports ascend_moe_fake_runtime() returning 1 (test runtime)
  std::vector<LibraryRecord> libraries;
  std::vector<std::string> search_dirs;
  std::vector<std::string> missing_symbols;  // "libnnopbase.so: aclCreateTensor: <dlerror>"
  void *ascendcl = nullptr;
  void *nnopbase = nullptr;
  std::vector<std::pair<std::string, void *>> opapi;  // (path, handle), libopapi_*.so first, libopapi.so last

  // libascendcl
  aclInit_t aclInit = nullptr;
  aclGetRecentErrMsg_t aclGetRecentErrMsg = nullptr;   // optional
  aclrtSetDevice_t aclrtSetDevice = nullptr;
  aclrtGetDeviceCount_t aclrtGetDeviceCount = nullptr;  // optional
  aclrtSynchronizeStream_t aclrtSynchronizeStream = nullptr;
  aclrtMalloc_t aclrtMalloc = nullptr;
  aclrtFree_t aclrtFree = nullptr;
  aclrtGetSocName_t aclrtGetSocName = nullptr;          // optional
  // libnnopbase
  aclCreateTensor_t aclCreateTensor = nullptr;
  aclCreateIntArray_t aclCreateIntArray = nullptr;
  aclCreateTensorList_t aclCreateTensorList = nullptr;
  aclDestroyTensor_t aclDestroyTensor = nullptr;
  aclDestroyIntArray_t aclDestroyIntArray = nullptr;
  aclDestroyTensorList_t aclDestroyTensorList = nullptr;
  aclDestroyAclOpExecutor_t aclDestroyAclOpExecutor = nullptr;  // optional
};

// The loader's result.  Thread safe.  A successful load happens once per process and is final; a failed
// load is recomputed only when the search environment (LD_LIBRARY_PATH, ASCEND_HOME_PATH,
// ASCEND_TOOLKIT_HOME) changed since, so that setting the variables after import still works.
const Runtime &runtime();

struct SymbolProbe {
  bool found = false;
  void *addr = nullptr;
  std::string library;  // where it was found
  std::string detail;   // where it was looked for and dlerror() when missing
};

// Look an aclnn symbol up in the opapi libraries (in load order).  Cached; thread safe.
SymbolProbe probe_symbol(const std::string &name);

struct EntryProbe {
  bool found = false;
  void *phase1 = nullptr;  // XGetWorkspaceSize
  void *phase2 = nullptr;  // X
  std::string detail;
};
// Both X and XGetWorkspaceSize must resolve (op-plugin's check_aclnn_kernel_available).
EntryProbe probe_entry(const std::string &entry);

}  // namespace ascend_moe
