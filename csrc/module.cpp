// pybind11 module ascend_moe._C: the run-time CANN loader and the aclnn dispatcher.
// Nothing here links torch or CANN: tensors arrive as plain descriptors built in ascend_moe/backends/aclnn.py
// and CANN is dlopened on first use.  Every failure becomes a Python exception, never a crash.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "dispatch.h"
#include "loader.h"

namespace py = pybind11;
using namespace ascend_moe;

namespace {

py::dict report() {
  const Runtime &rt = runtime();
  py::dict d;
  d["ok"] = rt.ok;
  d["reason"] = rt.ok ? std::string() : rt.reason;
  d["fake_runtime"] = rt.fake;
  py::list libs;
  for (auto &l : rt.libraries) {
    py::dict e;
    e["name"] = l.name;
    e["path"] = l.path;
    e["loaded"] = l.loaded;
    e["required"] = l.required;
    e["error"] = l.error;
    libs.append(e);
  }
  d["libraries"] = libs;
  d["search_dirs"] = rt.search_dirs;
  d["missing_symbols"] = rt.missing_symbols;
  return d;
}

py::tuple choose(const std::string &family) {
  for (auto &f : families()) {
    if (f.first != family) continue;
    py::list cands;
    py::object chosen = py::none();
    for (auto &name : f.second) {
      EntryProbe p = probe_entry(name);
      cands.append(py::make_tuple(name, p.found, p.detail));
      if (p.found && chosen.is_none()) chosen = py::str(name);
    }
    return py::make_tuple(chosen, cands);
  }
  throw std::invalid_argument("unknown entry-point family " + family);
}

py::object soc_name() {
  const Runtime &rt = runtime();
  if (!rt.ascendcl || !rt.aclrtGetSocName) return py::none();
  const char *s = rt.aclrtGetSocName();  // [inferred] usable without aclInit; nullptr means unknown
  if (!s || !*s) return py::none();
  return py::str(s);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ascend-moe C++ core: run-time CANN loader and aclnn dispatcher";
  static py::exception<AclnnFailure> aclnn_error(m, "AclnnError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const AclnnFailure &f) {
      py::object type = py::reinterpret_borrow<py::object>(aclnn_error.ptr());
      py::object inst = type(py::str(f.message));
      inst.attr("entry_point") = f.entry_point;
      inst.attr("status") = f.status;
      inst.attr("status_name") = status_name(f.status);
      PyErr_SetObject(aclnn_error.ptr(), inst.ptr());
    }
  });

  m.def("loader_report", &report, "What the loader found: libraries, paths, errors, missing symbols");
  m.def("runtime_ok", []() { return runtime().ok; });
  m.def("fake_runtime", []() { return runtime().fake; },
        "True when libascendcl is the fake test runtime (exports ascend_moe_fake_runtime)");
  m.def("soc_name", &soc_name, "aclrtGetSocName() when CANN provides it, else None");
  m.def("probe", [](const std::string &entry) {
        EntryProbe p = probe_entry(entry);
        return py::make_tuple(p.found, p.detail);
      }, "Whether both X and XGetWorkspaceSize resolve, and where / why not");
  m.def("families", []() {
    py::dict d;
    for (auto &f : families()) d[py::str(f.first)] = f.second;
    return d;
  });
  m.def("choose", &choose, "(chosen entry or None, [(name, found, detail)]) in op-plugin's order");
  m.def("entry_kinds", &entry_kinds);
  m.def("known_entries", &known_entries);
  m.def("status_name", &status_name);
  m.def("run", &run, py::arg("entry"), py::arg("args"), py::arg("stream") = 0, py::arg("ws_alloc") = py::none(),
        py::arg("standalone") = true, py::arg("device") = 0,
        "Run an aclnn operator (phase 1, workspace, phase 2) and destroy every object created");
}
