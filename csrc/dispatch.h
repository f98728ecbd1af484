// The aclnn two-phase dispatcher: entry-point table (exact prototypes), argument marshalling, workspace,
// stream, status checking and object cleanup.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace ascend_moe {

// An aclnn call failed (status != 0) or could not be made; carries what Python's AclnnError shows.
struct AclnnFailure {
  std::string entry_point;  // e.g. "aclnnGroupedMatmulV5GetWorkspaceSize"
  long long status;         // the aclnn / ACL status; -1 when no status exists (e.g. missing symbol)
  std::string message;      // full message
};

std::string status_name(long long status);

// Entry-point families in op-plugin's order of preference (first available wins).
const std::vector<std::pair<std::string, std::vector<std::string>>> &families();
// The argument kinds an entry point takes, derived from its typedef (T tensor, L tensor list, I int array,
// i int64_t, d double, f float, b bool, s const char*).
std::string entry_kinds(const std::string &entry);
std::vector<std::string> known_entries();

// Run one aclnn operator: phase 1, workspace, phase 2 on `stream`, then destroy every created object.
// `args` is a list of (kind, value) pairs (see aclnn.py); `ws_alloc(size) -> (ptr, keepalive)` allocates
// the workspace stream-ordered (torch_npu) or, when None, aclrtMalloc/aclrtFree after synchronisation.
// Returns a dict with the workspace size and how it was allocated.
pybind11::dict run(const std::string &entry, const pybind11::list &args, uintptr_t stream,
                   const pybind11::object &ws_alloc, bool standalone, int device);

}  // namespace ascend_moe
