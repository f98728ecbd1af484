#include "dispatch.h"

#include <pybind11/stl.h>

#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "acl_abi_routing.h"
#include "acl_abi_distribute.h"
#include "acl_abi_quant.h"
#include "loader.h"

namespace py = pybind11;

namespace ascend_moe {

std::string status_name(long long s) {
  switch (s) {
    case 0: return "SUCCESS";
    case 161001: return "ACLNN_ERR_PARAM_NULLPTR";
    case 161002: return "ACLNN_ERR_PARAM_INVALID";
    case 361001: return "ACLNN_ERR_RUNTIME_ERROR";
    case 561103: return "ACLNN_ERR_INNER_NULLPTR";
    case 100000: return "ACL_ERROR_INVALID_PARAM";
    case 100001: return "ACL_ERROR_UNINITIALIZE";
    case 100002: return "ACL_ERROR_REPEAT_INITIALIZE";
    case 200000: return "ACL_ERROR_BAD_ALLOC";
    case 200002: return "ACL_ERROR_INVALID_DEVICE";
    case 500000: return "ACL_ERROR_INTERNAL_ERROR";
    case 500003: return "ACL_ERROR_RT_FAILURE";
    case 500004: return "ACL_ERROR_DRV_FAILURE";
    default: break;
  }
  if (s >= 561000 && s < 562000) return "ACLNN_ERR_INNER";
  return "";
}

namespace {

// ---------------------------------------------------------------------------------------------------
// Arguments after marshalling: one slot per C parameter before (workspaceSize, executor).
struct Slot {
  char kind = 0;
  void *obj = nullptr;  // aclTensor* / aclTensorList* / aclIntArray* (nullptr for an absent optional)
  int64_t i = 0;
  double d = 0.0;
  bool b = false;
  std::string s;
};

struct Args {
  std::vector<Slot> slots;
  const Slot &at(size_t i, char kind) const {
    const Slot &s = slots.at(i);
    if (s.kind != kind) throw std::logic_error("argument kind mismatch");  // validated before
    return s;
  }
};

template <typename T> struct Kind;
#define ASCEND_MOE_KIND(TYPE, CH, EXPR)                                     \
  template <> struct Kind<TYPE> {                                           \
    static constexpr char c = CH;                                           \
    static TYPE get(const Args &a, size_t i) { const Slot &s = a.at(i, CH); return EXPR; } \
  };
ASCEND_MOE_KIND(const aclTensor *, 'T', static_cast<const aclTensor *>(s.obj))
ASCEND_MOE_KIND(aclTensor *, 'T', static_cast<aclTensor *>(s.obj))
ASCEND_MOE_KIND(const aclTensorList *, 'L', static_cast<const aclTensorList *>(s.obj))
ASCEND_MOE_KIND(aclTensorList *, 'L', static_cast<aclTensorList *>(s.obj))
ASCEND_MOE_KIND(const aclIntArray *, 'I', static_cast<const aclIntArray *>(s.obj))
ASCEND_MOE_KIND(aclIntArray *, 'I', static_cast<aclIntArray *>(s.obj))
ASCEND_MOE_KIND(int64_t, 'i', s.i)
ASCEND_MOE_KIND(double, 'd', s.d)
ASCEND_MOE_KIND(float, 'f', static_cast<float>(s.d))
ASCEND_MOE_KIND(bool, 'b', s.b)
ASCEND_MOE_KIND(const char *, 's', s.s.c_str())
// `char *` parameters (DequantSwigluQuant's quantMode/roundMode): CANN reads the string, never writes it
ASCEND_MOE_KIND(char *, 's', const_cast<char *>(s.s.c_str()))
#undef ASCEND_MOE_KIND

// The call is synthesised from the typedef (like op-plugin's ConvertToOpApiFunc, but the other way
// round): the prototype is the single source of truth and Python's argument kinds are checked against it.
template <typename... All, size_t... I>
aclnnStatus call_with(aclnnStatus (*fn)(All...), const Args &a, uint64_t *ws, aclOpExecutor **ex,
                      std::index_sequence<I...>) {
  using Tup = std::tuple<All...>;
  return fn(Kind<std::tuple_element_t<I, Tup>>::get(a, I)..., ws, ex);
}

template <typename... All, size_t... I>
std::string kinds_impl(std::index_sequence<I...>) {
  using Tup = std::tuple<All...>;
  return std::string{Kind<std::tuple_element_t<I, Tup>>::c...};
}

struct Entry {
  std::string kinds;
  std::function<aclnnStatus(void *, const Args &, uint64_t *, aclOpExecutor **)> phase1;
};

template <typename... All>
Entry make_entry(aclnnStatus (*)(All...)) {
  static_assert(sizeof...(All) >= 2, "GetWorkspaceSize ends with (uint64_t*, aclOpExecutor**)");
  using Tup = std::tuple<All...>;
  static_assert(std::is_same<std::tuple_element_t<sizeof...(All) - 2, Tup>, uint64_t *>::value, "ws");
  static_assert(std::is_same<std::tuple_element_t<sizeof...(All) - 1, Tup>, aclOpExecutor **>::value, "ex");
  Entry e;
  e.kinds = kinds_impl<All...>(std::make_index_sequence<sizeof...(All) - 2>{});
  e.phase1 = [](void *p, const Args &a, uint64_t *ws, aclOpExecutor **ex) {
    auto fn = reinterpret_cast<aclnnStatus (*)(All...)>(p);
    return call_with(fn, a, ws, ex, std::make_index_sequence<sizeof...(All) - 2>{});
  };
  return e;
}

#define ASCEND_MOE_ENTRY(NAME, TYPEDEF) {NAME, make_entry(static_cast<TYPEDEF>(nullptr))}

const std::map<std::string, Entry> &entries() {
  static const std::map<std::string, Entry> table = {
      ASCEND_MOE_ENTRY("aclnnGroupedMatmul", aclnnGroupedMatmulGWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulV2", aclnnGroupedMatmulV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulV4", aclnnGroupedMatmulV4GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulV5", aclnnGroupedMatmulV5GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulWeightNz", aclnnGroupedMatmulWeightNzGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeGatingTopK", aclnnMoeGatingTopKGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeGatingTopKV2", aclnnMoeGatingTopKV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnFFNV2", aclnnFFNV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulSwigluQuantWeightNZ", aclnnGroupedMatmulSwigluQuantGWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulSwigluQuantV2", aclnnGroupedMatmulSwigluQuantV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulSwigluQuantWeightNzV2", aclnnGroupedMatmulSwigluQuantV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulFinalizeRoutingV2", aclnnGroupedMatmulFinalizeRoutingV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulFinalizeRoutingV3", aclnnGroupedMatmulFinalizeRoutingV3GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulFinalizeRoutingWeightNz",
                       aclnnGroupedMatmulFinalizeRoutingWeightNzGWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulFinalizeRoutingWeightNzV2", aclnnGroupedMatmulFinalizeRoutingV3GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeInitRoutingV3", aclnnMoeInitRoutingV3GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeInitRoutingV2", aclnnMoeInitRoutingV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeTokenPermute", aclnnMoeTokenPermuteGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeTokenPermuteGrad", aclnnMoeTokenPermuteGradGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeTokenUnpermute", aclnnMoeTokenUnpermuteGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeTokenUnpermuteGrad", aclnnMoeTokenUnpermuteGradGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeFinalizeRouting", aclnnMoeFinalizeRoutingGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeFinalizeRoutingV2", aclnnMoeFinalizeRoutingV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeFinalizeRoutingV4", aclnnMoeFinalizeRoutingV4GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeGatingTopKSoftmax", aclnnMoeGatingTopKSoftmaxGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeGatingTopKSoftmaxV2", aclnnMoeGatingTopKSoftmaxV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeGatingTopKBackward", aclnnMoeGatingTopKBackwardGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeComputeExpertTokens", aclnnMoeComputeExpertTokensGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeReRouting", aclnnMoeReRoutingGWS_t),
      ASCEND_MOE_ENTRY("aclnnSwiGlu", aclnnSwiGluGWS_t),
      ASCEND_MOE_ENTRY("aclnnSwiGluGrad", aclnnSwiGluGradGWS_t),
      ASCEND_MOE_ENTRY("aclnnDynamicQuant", aclnnDynamicQuantGWS_t),
      ASCEND_MOE_ENTRY("aclnnDynamicQuantV2", aclnnDynamicQuantV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnDequantSwigluQuant", aclnnDequantSwigluQuantGWS_t),
      ASCEND_MOE_ENTRY("aclnnDequantSwigluQuantV2", aclnnDequantSwigluQuantV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulAdd", aclnnGroupedMatmulAddGWS_t),
      ASCEND_MOE_ENTRY("aclnnGroupedMatmulAddV2", aclnnGroupedMatmulAddV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeDispatch", aclnnMoeDistributeDispatchGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeDispatchV2", aclnnMoeDistributeDispatchV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeDispatchV3", aclnnMoeDistributeDispatchV3GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeDispatchV4", aclnnMoeDistributeDispatchV4GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeCombine", aclnnMoeDistributeCombineGWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeCombineV2", aclnnMoeDistributeCombineV2GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeCombineV3", aclnnMoeDistributeCombineV3GWS_t),
      ASCEND_MOE_ENTRY("aclnnMoeDistributeCombineV4", aclnnMoeDistributeCombineV4GWS_t),
  };
  return table;
}

[[noreturn]] void fail(const std::string &entry, long long status, const std::string &what) {
  std::string msg = entry + ": " + what;
  if (status >= 0) {
    std::string name = status_name(status);
    msg += " (status " + std::to_string(status) + (name.empty() ? "" : " " + name) + ")";
    const Runtime &rt = runtime();
    if (rt.aclGetRecentErrMsg) {
      const char *recent = rt.aclGetRecentErrMsg();
      if (recent && *recent) msg += "; aclGetRecentErrMsg: " + std::string(recent);
    }
  }
  throw AclnnFailure{entry, status, msg};
}

// Owns every ACL object created for one call and destroys it on every path.  A tensor list owns its
// member tensors (aclDestroyTensorList.md), so only the list is destroyed for those.
class ArgPack {
 public:
  explicit ArgPack(const Runtime &rt) : rt_(rt) {}
  ArgPack(const ArgPack &) = delete;
  ArgPack &operator=(const ArgPack &) = delete;
  ~ArgPack() {
    for (auto *l : lists_) rt_.aclDestroyTensorList(l);
    for (auto *t : tensors_) rt_.aclDestroyTensor(t);
    for (auto *a : arrays_) rt_.aclDestroyIntArray(a);
  }

  aclTensor *tensor(const std::string &entry, const py::handle &desc, bool owned) {
    auto t = desc.cast<py::tuple>();
    if (t.size() != 7) throw std::invalid_argument("tensor descriptor needs 7 fields");
    auto data = t[0].cast<uintptr_t>();
    auto dims = t[1].cast<std::vector<int64_t>>();
    auto strides = t[2].cast<std::vector<int64_t>>();
    auto offset = t[3].cast<int64_t>();
    auto dtype = t[4].cast<int>();
    auto format = t[5].cast<int>();
    auto storage = t[6].cast<std::vector<int64_t>>();
    if (strides.size() != dims.size()) throw std::invalid_argument("tensor descriptor: strides/dims rank differ");
    aclTensor *p = rt_.aclCreateTensor(dims.data(), dims.size(), dtype, strides.data(), offset, format,
                                       storage.data(), storage.size(), reinterpret_cast<void *>(data));
    if (!p) fail(entry, -1, "aclCreateTensor returned nullptr");
    if (owned) tensors_.push_back(p);
    return p;
  }

  aclTensorList *list(const std::string &entry, const py::handle &descs) {
    auto seq = descs.cast<py::sequence>();
    std::vector<aclTensor *> members;
    try {
      for (auto d : seq) members.push_back(tensor(entry, d, false));
    } catch (...) {
      for (auto *m : members) rt_.aclDestroyTensor(m);
      throw;
    }
    aclTensorList *l = rt_.aclCreateTensorList(const_cast<const aclTensor *const *>(members.data()),
                                               members.size());
    if (!l) {
      for (auto *m : members) rt_.aclDestroyTensor(m);
      fail(entry, -1, "aclCreateTensorList returned nullptr");
    }
    lists_.push_back(l);
    return l;
  }

  aclIntArray *int_array(const std::string &entry, const py::handle &values) {
    auto v = values.cast<std::vector<int64_t>>();
    aclIntArray *a = rt_.aclCreateIntArray(v.data(), v.size());
    if (!a) fail(entry, -1, "aclCreateIntArray returned nullptr");
    arrays_.push_back(a);
    return a;
  }

 private:
  const Runtime &rt_;
  std::vector<aclTensor *> tensors_;
  std::vector<aclTensorList *> lists_;
  std::vector<aclIntArray *> arrays_;
};

std::mutex g_init_mutex;
bool g_acl_initialised = false;
thread_local int t_device = -1;

// aclInit once per process (0 or 100002 = already initialised are both fine; never aclFinalize), and
// aclrtSetDevice for this thread.  Only for standalone use: inside torch_npu the runtime is torch_npu's.
void ensure_standalone_device(const Runtime &rt, int device) {
  {
    std::lock_guard<std::mutex> lock(g_init_mutex);
    if (!g_acl_initialised) {
      // the GIL stays held here: releasing it while holding g_init_mutex could deadlock
      aclError st = rt.aclInit(nullptr);
      if (st != acl::ACL_SUCCESS && st != acl::ACL_ERROR_REPEAT_INITIALIZE) fail("aclInit", st, "failed");
      g_acl_initialised = true;
    }
  }
  if (t_device != device) {
    aclError st;
    {
      py::gil_scoped_release nogil;
      st = rt.aclrtSetDevice(device);
    }
    if (st != acl::ACL_SUCCESS) fail("aclrtSetDevice", st, "failed for device " + std::to_string(device));
    t_device = device;
  }
}

}  // namespace

const std::vector<std::pair<std::string, std::vector<std::string>>> &families() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> f = {
      {"gmm", {"aclnnGroupedMatmulV5", "aclnnGroupedMatmulV4"}},
      {"gmm_v4", {"aclnnGroupedMatmulV4"}},
      {"gmm_nz", {"aclnnGroupedMatmulWeightNz"}},
      {"gmm_list", {"aclnnGroupedMatmulV2"}},
      {"gmm_list_v1", {"aclnnGroupedMatmul"}},
      {"gating", {"aclnnMoeGatingTopK"}},
      {"gating_hash", {"aclnnMoeGatingTopKV2"}},
      {"ffn", {"aclnnFFNV2"}},
      {"swiglu_v1", {"aclnnGroupedMatmulSwigluQuantWeightNZ"}},
      {"swiglu_v2", {"aclnnGroupedMatmulSwigluQuantV2"}},
      {"swiglu_v2_nz", {"aclnnGroupedMatmulSwigluQuantWeightNzV2"}},
      {"finalize", {"aclnnGroupedMatmulFinalizeRoutingV3", "aclnnGroupedMatmulFinalizeRoutingV2"}},
      {"finalize_nz",
       {"aclnnGroupedMatmulFinalizeRoutingWeightNzV2", "aclnnGroupedMatmulFinalizeRoutingWeightNz"}},
      // routing / combine (op-plugin's choice; the V2-vs-V3 init_routing decision is made in Python)
      {"init_routing_v3", {"aclnnMoeInitRoutingV3"}},
      {"init_routing_v2", {"aclnnMoeInitRoutingV2"}},
      {"token_permute", {"aclnnMoeTokenPermute"}},
      {"token_permute_grad", {"aclnnMoeTokenPermuteGrad"}},
      {"token_unpermute", {"aclnnMoeTokenUnpermute"}},
      {"token_unpermute_grad", {"aclnnMoeTokenUnpermuteGrad"}},
      {"finalize_routing", {"aclnnMoeFinalizeRoutingV4", "aclnnMoeFinalizeRoutingV2", "aclnnMoeFinalizeRouting"}},
      {"finalize_routing_k", {"aclnnMoeFinalizeRoutingV4"}},
      {"gating_softmax", {"aclnnMoeGatingTopKSoftmax"}},
      {"gating_softmax_v2", {"aclnnMoeGatingTopKSoftmaxV2"}},
      {"gating_backward", {"aclnnMoeGatingTopKBackward"}},
      {"compute_expert_tokens", {"aclnnMoeComputeExpertTokens"}},
      {"re_routing", {"aclnnMoeReRouting"}},
      {"swiglu", {"aclnnSwiGlu"}},
      {"swiglu_grad", {"aclnnSwiGluGrad"}},
      // op-plugin: V2 when it exists, else the V1 entry point (DO_COMPATIBILITY)
      {"dynamic_quant", {"aclnnDynamicQuantV2", "aclnnDynamicQuant"}},
      {"dynamic_quant_v2", {"aclnnDynamicQuantV2"}},
      // op-plugin (SoC < 950): V1 only when V2 is absent and swiglu_mode == 0
      {"dequant_swiglu_quant", {"aclnnDequantSwigluQuantV2", "aclnnDequantSwigluQuant"}},
      {"dequant_swiglu_quant_v2", {"aclnnDequantSwigluQuantV2"}},
      // op-plugin: V2 only on aclnn-only SoCs (950); A2/A3 call V1, which has no groupListType
      {"gmm_add", {"aclnnGroupedMatmulAdd"}},
      {"gmm_add_v2", {"aclnnGroupedMatmulAddV2"}},
      // expert-parallel MC2 ops (op-plugin: the newest entry point that resolves; the Python side refuses a
      // call the chosen one cannot express, as op-plugin's TORCH_CHECKs do)
      {"distribute_dispatch", {"aclnnMoeDistributeDispatch"}},
      {"distribute_dispatch_v2",
       {"aclnnMoeDistributeDispatchV4", "aclnnMoeDistributeDispatchV3", "aclnnMoeDistributeDispatchV2"}},
      {"distribute_combine", {"aclnnMoeDistributeCombine"}},
      {"distribute_combine_v2",
       {"aclnnMoeDistributeCombineV4", "aclnnMoeDistributeCombineV3", "aclnnMoeDistributeCombineV2"}},
  };
  return f;
}

std::string entry_kinds(const std::string &entry) {
  auto it = entries().find(entry);
  if (it == entries().end()) throw std::invalid_argument("unknown aclnn entry point " + entry);
  return it->second.kinds;
}

std::vector<std::string> known_entries() {
  std::vector<std::string> v;
  for (auto &e : entries()) v.push_back(e.first);
  return v;
}

py::dict run(const std::string &entry, const py::list &args, uintptr_t stream, const py::object &ws_alloc,
             bool standalone, int device) {
  auto it = entries().find(entry);
  if (it == entries().end()) throw std::invalid_argument("unknown aclnn entry point " + entry);
  const Entry &e = it->second;
  const std::string gws = entry + "GetWorkspaceSize";

  // kinds first, before anything is created
  if (args.size() != e.kinds.size())
    throw std::invalid_argument(gws + " takes " + std::to_string(e.kinds.size()) + " arguments (" + e.kinds +
                                "), got " + std::to_string(args.size()));
  for (size_t i = 0; i < args.size(); ++i) {
    auto pair = args[i].cast<py::tuple>();
    auto k = pair[0].cast<std::string>();
    if (k.size() != 1 || k[0] != e.kinds[i])
      throw std::invalid_argument(gws + ": argument " + std::to_string(i) + " must be of kind '" +
                                  std::string(1, e.kinds[i]) + "' (" + e.kinds + "), got '" + k + "'");
  }

  const Runtime &rt = runtime();
  if (!rt.ok) fail(entry, -1, "the aclnn hardware path is unavailable: " + rt.reason);
  EntryProbe probe = probe_entry(entry);
  if (!probe.found) fail(entry, -1, "entry point unavailable: " + probe.detail);
  if (standalone) ensure_standalone_device(rt, device);

  ArgPack pack(rt);
  Args a;
  a.slots.resize(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    auto pair = args[i].cast<py::tuple>();
    Slot &s = a.slots[i];
    s.kind = e.kinds[i];
    py::handle v = pair[1];
    switch (s.kind) {
      case 'T': s.obj = v.is_none() ? nullptr : pack.tensor(gws, v, true); break;
      case 'L': s.obj = v.is_none() ? nullptr : pack.list(gws, v); break;
      case 'I': s.obj = v.is_none() ? nullptr : pack.int_array(gws, v); break;
      case 'i': s.i = v.cast<int64_t>(); break;
      case 'd': case 'f': s.d = v.cast<double>(); break;
      case 'b': s.b = v.cast<bool>(); break;
      case 's': s.s = v.cast<std::string>(); break;
      default: throw std::logic_error("bad kind");
    }
  }

  uint64_t ws_size = 0;
  aclOpExecutor *executor = nullptr;
  aclnnStatus st;
  {
    py::gil_scoped_release nogil;
    st = e.phase1(probe.phase1, a, &ws_size, &executor);
  }
  if (st != 0) {
    // a failed phase 1 owns no executor we could run; release one if it was handed out anyway
    if (executor && rt.aclDestroyAclOpExecutor) rt.aclDestroyAclOpExecutor(executor);
    fail(gws, st, "failed");
  }

  // The executor is freed by phase 2.  If phase 2 is never reached (workspace allocation failed), it is
  // destroyed here when the library exports aclDestroyAclOpExecutor [inferred: op-plugin does not cover it].
  auto drop_executor = [&]() {
    if (executor && rt.aclDestroyAclOpExecutor) rt.aclDestroyAclOpExecutor(executor);
    executor = nullptr;
  };

  void *workspace = nullptr;
  py::object keepalive = py::none();
  bool acl_malloc = false;
  std::string ws_how = "none";
  if (ws_size > 0) {
    if (!ws_alloc.is_none()) {
      try {
        py::tuple res = ws_alloc(ws_size);
        workspace = reinterpret_cast<void *>(res[0].cast<uintptr_t>());
        keepalive = res[1];
      } catch (...) {
        drop_executor();
        throw;
      }
      ws_how = "callback";
    } else {
      aclError ast;
      {
        py::gil_scoped_release nogil;
        ast = rt.aclrtMalloc(&workspace, ws_size, acl::ACL_MEM_MALLOC_HUGE_FIRST);
      }
      if (ast != acl::ACL_SUCCESS) {
        drop_executor();
        fail("aclrtMalloc", ast, "workspace of " + std::to_string(ws_size) + " bytes for " + entry);
      }
      acl_malloc = true;
      ws_how = "aclrtMalloc";
    }
    if (!workspace) {
      drop_executor();
      fail(entry, -1, "workspace allocation of " + std::to_string(ws_size) + " bytes returned nullptr");
    }
  }

  auto phase2 = reinterpret_cast<aclnnRun_t>(probe.phase2);
  aclError sync_st = 0, free_st = 0;
  {
    py::gil_scoped_release nogil;
    st = phase2(workspace, ws_size, executor, reinterpret_cast<aclrtStream>(stream));
    if (acl_malloc) {
      // the device may still read the workspace: free it only after the stream has drained
      sync_st = rt.aclrtSynchronizeStream(reinterpret_cast<aclrtStream>(stream));
      free_st = rt.aclrtFree(workspace);
    }
  }
  if (st != 0) fail(entry, st, "failed");
  if (sync_st != 0) fail("aclrtSynchronizeStream", sync_st, "failed after " + entry);
  if (free_st != 0) fail("aclrtFree", free_st, "failed for the workspace of " + entry);
  py::dict out;
  out["entry_point"] = entry;
  out["workspace_size"] = ws_size;
  out["workspace"] = ws_how;
  out["keepalive"] = keepalive;  // torch_npu: the caching allocator frees it stream-ordered when dropped
  return out;
}

}  // namespace ascend_moe
