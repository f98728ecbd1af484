// pybind11 module ascend_moe._C: the CANN loader and the aclnn dispatcher.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "ascend-moe C++ core: run-time CANN loader and aclnn dispatcher";
}
