// Run-time CANN loader (spec aclnn-abi-and-torch.md 1.6): never linked, never required at build time.
#include "loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>

namespace ascend_moe {
namespace {

std::string env(const char *name) {
  const char *v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

bool is_file(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string env_key() {
  return env("LD_LIBRARY_PATH") + "\x1f" + env("ASCEND_HOME_PATH") + "\x1f" + env("ASCEND_TOOLKIT_HOME") +
         "\x1f" + env("HOME");
}

// LD_LIBRARY_PATH entries, then $ASCEND_HOME_PATH/lib64 (or $ASCEND_TOOLKIT_HOME/lib64), then the default
// install roots.  Duplicates removed, order kept.
std::vector<std::string> search_dirs() {
  std::vector<std::string> dirs;
  std::string ld = env("LD_LIBRARY_PATH");
  size_t start = 0;
  while (start <= ld.size()) {
    size_t end = ld.find(':', start);
    if (end == std::string::npos) end = ld.size();
    if (end > start) dirs.push_back(ld.substr(start, end - start));
    start = end + 1;
  }
  std::string home = env("ASCEND_HOME_PATH");
  if (home.empty()) home = env("ASCEND_TOOLKIT_HOME");
  if (!home.empty()) dirs.push_back(home + "/lib64");
  dirs.push_back("/usr/local/Ascend/ascend-toolkit/latest/lib64");
  dirs.push_back("/usr/local/Ascend/cann/lib64");
  std::string user_home = env("HOME");
  if (!user_home.empty()) dirs.push_back(user_home + "/Ascend/ascend-toolkit/latest/lib64");
  std::vector<std::string> unique;
  std::set<std::string> seen;
  for (auto &d : dirs)
    if (seen.insert(d).second) unique.push_back(d);
  return unique;
}

std::string last_dlerror() {
  const char *e = dlerror();
  return e ? std::string(e) : std::string("unknown dlerror");
}

// dlopen `name` from the first search dir holding it; without one, a bare dlopen (ld.so.cache).
LibraryRecord open_library(const std::string &name, const std::vector<std::string> &dirs, bool required,
                           void **handle) {
  LibraryRecord rec;
  rec.name = name;
  rec.required = required;
  *handle = nullptr;
  std::string errors;
  for (auto &d : dirs) {
    std::string path = d + "/" + name;
    if (!is_file(path)) continue;
    dlerror();
    void *h = dlopen(path.c_str(), RTLD_LAZY | RTLD_GLOBAL);
    rec.path = path;
    if (h) {
      rec.loaded = true;
      *handle = h;
      return rec;
    }
    errors += (errors.empty() ? "" : "; ") + last_dlerror();
  }
  if (!errors.empty()) {
    rec.error = errors;
    return rec;
  }
  dlerror();
  void *h = dlopen(name.c_str(), RTLD_LAZY | RTLD_GLOBAL);
  if (h) {
    rec.loaded = true;
    rec.path = name + " (system search path)";
    *handle = h;
    return rec;
  }
  std::string where;
  for (auto &d : dirs) where += (where.empty() ? "" : ", ") + d;
  rec.error = "not found in " + where + " (set ASCEND_HOME_PATH or source CANN's set_env.sh); dlopen: " +
              last_dlerror();
  return rec;
}

std::vector<std::string> opapi_split_libraries(const std::vector<std::string> &dirs) {
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (auto &d : dirs) {
    DIR *dir = opendir(d.c_str());
    if (!dir) continue;
    std::vector<std::string> here;
    while (dirent *e = readdir(dir)) {
      std::string n = e->d_name;
      if (n.size() > 11 && n.compare(0, 8, "libopapi") == 0 && n[8] == '_' &&
          n.compare(n.size() - 3, 3, ".so") == 0)
        here.push_back(n);
    }
    closedir(dir);
    std::sort(here.begin(), here.end());
    for (auto &n : here)
      if (seen.insert(n).second) names.push_back(n);
  }
  return names;
}

template <typename T>
bool need(Runtime &rt, void *handle, const char *lib, const char *sym, T *out, bool required = true) {
  dlerror();
  void *p = handle ? dlsym(handle, sym) : nullptr;
  if (!p) {
    if (required && handle) rt.missing_symbols.push_back(std::string(lib) + ": " + sym + ": " + last_dlerror());
    *out = nullptr;
    return !required;
  }
  *out = reinterpret_cast<T>(p);
  return true;
}

std::unique_ptr<Runtime> load() {
  auto rt = std::make_unique<Runtime>();
  rt->search_dirs = search_dirs();
  const auto &dirs = rt->search_dirs;
  rt->libraries.push_back(open_library("libascendcl.so", dirs, true, &rt->ascendcl));
  rt->libraries.push_back(open_library("libnnopbase.so", dirs, true, &rt->nnopbase));
  for (auto &n : opapi_split_libraries(dirs)) {
    void *h = nullptr;
    auto rec = open_library(n, dirs, false, &h);
    if (h) rt->opapi.emplace_back(rec.path, h);
    rt->libraries.push_back(rec);
  }
  {
    void *h = nullptr;
    auto rec = open_library("libopapi.so", dirs, rt->opapi.empty(), &h);
    if (h) rt->opapi.emplace_back(rec.path, h);
    rt->libraries.push_back(rec);
  }

  Runtime &r = *rt;
  bool ok = true;
  ok &= need(r, r.ascendcl, "libascendcl.so", "aclInit", &r.aclInit);
  ok &= need(r, r.ascendcl, "libascendcl.so", "aclrtSetDevice", &r.aclrtSetDevice);
  ok &= need(r, r.ascendcl, "libascendcl.so", "aclrtSynchronizeStream", &r.aclrtSynchronizeStream);
  ok &= need(r, r.ascendcl, "libascendcl.so", "aclrtMalloc", &r.aclrtMalloc);
  ok &= need(r, r.ascendcl, "libascendcl.so", "aclrtFree", &r.aclrtFree);
  need(r, r.ascendcl, "libascendcl.so", "aclGetRecentErrMsg", &r.aclGetRecentErrMsg, false);
  need(r, r.ascendcl, "libascendcl.so", "aclrtGetDeviceCount", &r.aclrtGetDeviceCount, false);
  need(r, r.ascendcl, "libascendcl.so", "aclrtGetSocName", &r.aclrtGetSocName, false);
  ok &= need(r, r.nnopbase, "libnnopbase.so", "aclCreateTensor", &r.aclCreateTensor);
  ok &= need(r, r.nnopbase, "libnnopbase.so", "aclCreateIntArray", &r.aclCreateIntArray);
  ok &= need(r, r.nnopbase, "libnnopbase.so", "aclCreateTensorList", &r.aclCreateTensorList);
  ok &= need(r, r.nnopbase, "libnnopbase.so", "aclDestroyTensor", &r.aclDestroyTensor);
  ok &= need(r, r.nnopbase, "libnnopbase.so", "aclDestroyIntArray", &r.aclDestroyIntArray);
  ok &= need(r, r.nnopbase, "libnnopbase.so", "aclDestroyTensorList", &r.aclDestroyTensorList);
  need(r, r.nnopbase, "libnnopbase.so", "aclDestroyAclOpExecutor", &r.aclDestroyAclOpExecutor, false);

  for (auto &lib : r.libraries) {
    if (lib.required && !lib.loaded) {
      r.reason = lib.name + " could not be loaded: " + lib.error;
      ok = false;
      break;
    }
  }
  if (ok && r.opapi.empty()) {
    r.reason = "no aclnn operator library (libopapi_*.so or libopapi.so) could be loaded";
    ok = false;
  }
  if (r.reason.empty() && !r.missing_symbols.empty()) {
    r.reason = "a required symbol is missing: " + r.missing_symbols.front();
    ok = false;
  }
  if (r.ascendcl) {
    dlerror();
    auto fake = reinterpret_cast<ascend_moe_fake_runtime_t>(dlsym(r.ascendcl, "ascend_moe_fake_runtime"));
    r.fake = fake && fake() == 1;
  }
  r.ok = ok;
  return rt;
}

std::mutex g_mutex;
std::unique_ptr<Runtime> g_runtime;  // never freed: handles stay loaded for the process
std::string g_key;
std::map<std::string, SymbolProbe> g_probes;

}  // namespace

const Runtime &runtime() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_runtime && (g_runtime->ok || g_key == env_key())) return *g_runtime;
  // the previous (failed) result is kept alive: pointers to it may still be held by callers
  static std::vector<std::unique_ptr<Runtime>> retired;
  if (g_runtime) retired.push_back(std::move(g_runtime));
  g_key = env_key();
  g_runtime = load();
  g_probes.clear();
  return *g_runtime;
}

SymbolProbe probe_symbol(const std::string &name) {
  const Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_probes.find(name);
  if (it != g_probes.end()) return it->second;
  SymbolProbe p;
  std::string tried;
  for (auto &lib : rt.opapi) {
    dlerror();
    void *a = dlsym(lib.second, name.c_str());
    if (a) {
      p.found = true;
      p.addr = a;
      p.library = lib.first;
      p.detail = "found in " + lib.first;
      break;
    }
    tried += (tried.empty() ? "" : "; ") + last_dlerror();
  }
  if (!p.found) {
    if (rt.opapi.empty())
      p.detail = "symbol " + name + " missing: no aclnn operator library loaded (" +
                 (rt.reason.empty() ? std::string("CANN not found") : rt.reason) + ")";
    else
      p.detail = "symbol " + name + " missing: " + tried;
  }
  g_probes[name] = p;
  return p;
}

EntryProbe probe_entry(const std::string &entry) {
  EntryProbe e;
  SymbolProbe p1 = probe_symbol(entry + "GetWorkspaceSize");
  SymbolProbe p2 = probe_symbol(entry);
  e.found = p1.found && p2.found;
  e.phase1 = p1.addr;
  e.phase2 = p2.addr;
  if (e.found)
    e.detail = p1.library == p2.library ? p1.detail : p1.detail + " / " + p2.detail;
  else
    e.detail = !p1.found ? p1.detail : p2.detail;
  return e;
}

}  // namespace ascend_moe
