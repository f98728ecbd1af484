// ascend_moe.kernels._scan: the bf16 subnormal guard's scan, compiled.
//
// The guard (ascend_moe/kernels/impls.py, bf16_flush_safe) needs the smallest nonzero magnitude of every
// bf16 operand of a call: one pass over the weight and the activations on every call.  NumPy does it in
// three passes per cache-sized chunk at about 17 GB/s; this loop reads each element once and runs at
// memory speed (about 50 GB/s from cache, 30 GB/s from DRAM here).  Nothing here links against torch.
#include <pybind11/pybind11.h>

#include "helpers.h"

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace py = pybind11;
using ascend_moe_kernels::c_contiguous;

namespace {

// min over i of uint16((p[i] & 0x7FFF) - 1): magnitude bits minus one, so +0 and -0 wrap to 0xFFFF and
// the smallest nonzero magnitude (subnormals included) gives the minimum.  The vectorised clone is chosen
// at load time by the CPU (GCC/clang function multi-versioning); the default clone runs anywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
std::uint16_t min_magnitude_minus_one(const std::uint16_t *p, std::size_t n) {
  std::uint16_t smallest = 0xFFFF;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t v = static_cast<std::uint16_t>((p[i] & 0x7FFFu) - 1u);
    smallest = v < smallest ? v : smallest;
  }
  return smallest;
}

}  // namespace

PYBIND11_MODULE(_scan, m) {
  m.doc() = "Compiled scans for the kernels' guards (no torch, no CANN).";
  m.def(
      "min_magnitude_minus_one",
      [](const py::buffer &buffer) {
        py::buffer_info info =
            c_contiguous(buffer, "min_magnitude_minus_one: bits (a bf16 array viewed as uint16)", 2, 1, false);
        const auto *p = static_cast<const std::uint16_t *>(info.ptr);
        const auto n = static_cast<std::size_t>(info.shape[0]);
        py::gil_scoped_release release;  // a pure read: other Python threads may run meanwhile
        return min_magnitude_minus_one(p, n);
      },
      py::arg("bits"),
      "min over the elements of uint16((x & 0x7FFF) - 1) of a contiguous uint16 view of bf16 values: 0xFFFF "
      "when every element is zero, else (result + 1) >> 7 is the smallest biased exponent of a nonzero element.");
}
