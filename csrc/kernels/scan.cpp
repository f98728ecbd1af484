// ascend_moe.kernels._scan: the bf16 subnormal guard's scan, compiled.
//
// The guard (ascend_moe/kernels/impls.py, bf16_flush_safe) needs the smallest nonzero magnitude of every
// bf16 operand of a call: one pass over the weight and the activations on every call.  NumPy does it in
// three passes per cache-sized chunk at about 17 GB/s; this loop reads each element once and runs at
// memory speed (about 50 GB/s from cache, 30 GB/s from DRAM here).  Nothing here links against torch.
//
// widen_bf16: bf16 -> fp32 (exact: the bits shifted up 16), answering whether a NaN was met - the simulator's
// widening of bf16 inputs without a torch parallel region (whose OpenMP workers keep spinning afterwards and
// slow the compiled helpers that follow).
#include <pybind11/pybind11.h>

#include "helpers.h"

#include <atomic>

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace py = pybind11;
using ascend_moe_kernels::c_contiguous;
using ascend_moe_kernels::over_rows;

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

// dst[i] = the fp32 whose bits are src[i] << 16; the number of NaNs met
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
std::size_t widen_bf16_block(const std::uint16_t *src, std::uint32_t *dst, std::size_t n) {
  std::size_t nans = 0;
  for (std::size_t i = 0; i < n; ++i) {
    nans += static_cast<std::size_t>((src[i] & 0x7FFFu) > 0x7F80u);
    dst[i] = static_cast<std::uint32_t>(src[i]) << 16;
  }
  return nans;
}

}  // namespace

PYBIND11_MODULE(_scan, m) {
  m.doc() = "Compiled scans for the kernels' guards (no torch, no CANN).";
  ascend_moe_kernels::def_openmp(m);
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
  // the calling thread's FTZ / DAZ modes (helpers.h), for the simulator's NumPy and torch arithmetic there
  m.def("subnormal_modes_off", &ascend_moe_kernels::subnormal_modes_off,
        "Switch FTZ and DAZ off in this thread; returns the bits that were on (0: none), for subnormal_modes_restore.");
  m.def("subnormal_modes_restore", &ascend_moe_kernels::subnormal_modes_restore, py::arg("bits"),
        "Switch back on in this thread the FTZ / DAZ bits subnormal_modes_off returned.");
  m.def(
      "widen_bf16",
      [](const py::buffer &src, const py::buffer &dst, int threads) {
        py::buffer_info si = c_contiguous(src, "widen_bf16: src (bf16 viewed as uint16)", 2, 1, false);
        py::buffer_info di = c_contiguous(dst, "widen_bf16: dst (float32 viewed as uint32)", 4, 1, true);
        if (si.shape[0] != di.shape[0]) throw std::invalid_argument("widen_bf16: src and dst must have one length");
        const auto *ps = static_cast<const std::uint16_t *>(si.ptr);
        auto *pd = static_cast<std::uint32_t *>(di.ptr);
        const auto n = static_cast<std::size_t>(si.shape[0]);
        py::gil_scoped_release release;
        std::atomic<std::size_t> nans{0};
        over_rows(n, threads, std::size_t{1} << 18, [&](std::size_t i0, std::size_t i1) {
          nans += widen_bf16_block(ps + i0, pd + i0, i1 - i0);
        });
        return nans.load() == 0;
      },
      py::arg("src"), py::arg("dst"), py::arg("threads") = 1,
      "dst = src widened from bf16 to fp32 (the bits shifted up 16: exact, NaN payloads kept); contiguous "
      "uint16 / uint32 views of one length.  Returns False when a NaN was met.");
}
