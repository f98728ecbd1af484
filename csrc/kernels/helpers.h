// Shared by the compiled kernel helpers (csrc/kernels/*.cpp, one Python module each): the buffer check every
// entry point starts with, the row-parallel runner, and the x86 subnormal modes every pass runs without.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace ascend_moe_kernels {

namespace py = pybind11;

// The calling thread's x86 flush-to-zero (MXCSR bit 15) and denormals-are-zero (bit 6) modes, which
// torch.set_flush_denormal sets in that thread only.  Atlas A2/A3 keep subnormals, so every compiled helper runs
// with both off (IeeeSubnormals, held by each worker of over_blocks), and the simulator's NumPy and torch
// arithmetic on the calling thread too (_scan's subnormal_modes_off / _restore).
constexpr unsigned FLUSH_MODES = 0x8040u;

// Switch both off in this thread; returns the bits that were on (0: none).
inline unsigned subnormal_modes_off() {
#if defined(__x86_64__) || defined(__i386__)
  const unsigned on = _mm_getcsr() & FLUSH_MODES;
  if (on) _mm_setcsr(_mm_getcsr() & ~FLUSH_MODES);
  return on;
#else
  return 0u;
#endif
}

// Switch back on in this thread the bits subnormal_modes_off returned.
inline void subnormal_modes_restore(unsigned bits) {
#if defined(__x86_64__) || defined(__i386__)
  if (bits & FLUSH_MODES) _mm_setcsr(_mm_getcsr() | (bits & FLUSH_MODES));
#else
  (void)bits;
#endif
}

// Both modes off while an object lives, restored after.  (With either on, the caller's share of a parallel pass
// flushed subnormals and the workers' shares did not.)
class IeeeSubnormals {
 public:
  IeeeSubnormals() : saved_(subnormal_modes_off()) {}
  ~IeeeSubnormals() { subnormal_modes_restore(saved_); }
  IeeeSubnormals(const IeeeSubnormals &) = delete;
  IeeeSubnormals &operator=(const IeeeSubnormals &) = delete;

 private:
  unsigned saved_;
};

// The buffer's info when it is a C-contiguous `ndim`-D buffer of `itemsize`-byte elements, else
// std::invalid_argument (Python's ValueError) naming `what`.
inline py::buffer_info c_contiguous(const py::buffer &buffer, const std::string &what, py::ssize_t itemsize,
                                    py::ssize_t ndim, bool writable) {
  py::buffer_info info = buffer.request(writable);
  bool ok = info.itemsize == itemsize && info.ndim == ndim;
  py::ssize_t expect = itemsize;
  for (py::ssize_t d = ndim - 1; ok && d >= 0; --d) {
    ok = info.shape[d] <= 1 || info.strides[d] == expect;
    expect *= info.shape[d];
  }
  if (!ok) {
    throw std::invalid_argument(what + " must be a C-contiguous " + std::to_string(ndim) + "-D buffer of " +
                                std::to_string(itemsize) + "-byte elements; got itemsize " +
                                std::to_string(info.itemsize) + ", ndim " + std::to_string(info.ndim));
  }
  return info;
}

// The OpenMP runtime torch runs its parallel regions on, once the Python side has named it (bind_openmp): the
// workers below are then a team of that runtime, i.e. torch's own worker threads.  Why: after each torch op those
// workers keep spinning for about a millisecond, and threads of our own started then share the cores with them
// (a grouped GEMM right after a torch op ran 30 % slower on 2 cores); a region of the same runtime is taken up at
// once by the spinning workers, and no thread is started per call.  Only libgomp's GOMP_parallel entry is used
// (the ABI GCC's `#pragma omp parallel` compiles to, also exported by LLVM's and Intel's runtimes).  Not in a
// forked child (an OpenMP pool does not survive fork()): there, and where none was named, threads of our own.
using GompParallel = void (*)(void (*)(void *), void *, unsigned, unsigned);

struct OpenMpRuntime {
  GompParallel parallel = nullptr;
  long pid = 0;  // the process that found it
};

inline OpenMpRuntime &openmp_runtime() {
  static OpenMpRuntime runtime;
  return runtime;
}

// Use the OpenMP runtime of the already loaded library `path` (never loads one).  False when it is not loaded or
// has no GOMP_parallel, or off Linux; then the runners start threads of their own.
inline bool bind_openmp(const std::string &path) {
#if defined(__linux__)
  void *handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  auto parallel = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
  if (parallel == nullptr) {
    dlclose(handle);
    return false;
  }
  // the handle stays open: the runtime is in use for the process's life
  openmp_runtime() = OpenMpRuntime{parallel, static_cast<long>(getpid())};
  return true;
#else
  (void)path;
  return false;
#endif
}

inline void unbind_openmp() { openmp_runtime() = OpenMpRuntime{}; }

inline bool openmp_bound() {
#if defined(__linux__)
  const OpenMpRuntime &rt = openmp_runtime();
  return rt.parallel != nullptr && rt.pid == static_cast<long>(getpid());
#else
  return false;
#endif
}

// The three functions above as the module's bind_openmp / unbind_openmp / openmp_bound.
inline void def_openmp(py::module_ &m) {
  m.def("bind_openmp", &bind_openmp, py::arg("path"),
        "Run this module's parallel work on the OpenMP runtime of the already loaded library `path` (torch's); "
        "False when it is not loaded or has no GOMP_parallel.");
  m.def("unbind_openmp", &unbind_openmp, "Start threads of this module's own for its parallel work.");
  m.def("openmp_bound", &openmp_bound, "Whether this module's parallel work runs on a bound OpenMP runtime.");
}

template <typename Work>
void call_work(void *work) {
  (*static_cast<Work *>(work))();
}

// work() once on each of up to `workers` threads, the calling thread among them; work must not throw.  On the
// bound OpenMP runtime's team when there is one (a team may have fewer threads than asked: work takes its share
// from a shared counter, so any number of threads does all of it), else on threads started here (one that cannot
// be started is left out: the others take its share).
template <typename Work>
void on_workers(std::size_t workers, Work &work) {
  if (workers <= 1) {
    work();
    return;
  }
  if (openmp_bound()) {
    openmp_runtime().parallel(&call_work<Work>, &work, static_cast<unsigned>(workers), 0);
    return;
  }
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < workers; ++t) {
    try {
      pool.emplace_back([&work]() { work(); });
    } catch (...) {  // no thread to be had
      break;
    }
  }
  work();
  for (auto &t : pool) t.join();
}

// fn(i0, i1) over the `count` items [0, count) in blocks of `block` handed out one at a time to up to `workers`
// threads, each with FTZ / DAZ off (IeeeSubnormals).  Nothing escapes a worker (an exception there would terminate
// the process): the first error stops the hand-out and is rethrown here after every worker is done.  Call it with
// the GIL released.
template <typename Fn>
void over_blocks(std::size_t count, std::size_t block, std::size_t workers, Fn &fn) {
  block = std::max<std::size_t>(1, block);
  const std::size_t blocks = (count + block - 1) / block;
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_lock;
  auto work = [&]() noexcept {
    IeeeSubnormals ieee;  // in every thread of the pass
    try {
      for (std::size_t i = next.fetch_add(1); i < blocks && !failed.load(); i = next.fetch_add(1)) {
        fn(i * block, std::min(count, (i + 1) * block));
      }
    } catch (...) {
      std::lock_guard<std::mutex> hold(error_lock);
      if (!error) error = std::current_exception();
      failed.store(true);
    }
  };
  on_workers(std::max<std::size_t>(1, std::min(workers, blocks)), work);
  if (error) std::rethrow_exception(error);
}

// fn(r0, r1) over equal row blocks of at least `min_rows` rows, one per thread of up to `threads`.  Errors as in
// over_blocks.  Call it with the GIL released.
template <typename Fn>
void over_rows(std::size_t rows, int threads, std::size_t min_rows, Fn fn) {
  const std::size_t most = rows / std::max<std::size_t>(1, min_rows) + 1;
  const std::size_t parts = std::max<std::size_t>(1, std::min<std::size_t>(threads > 0 ? threads : 1, most));
  const std::size_t step = std::max<std::size_t>(1, (rows + parts - 1) / parts);
  if (rows == 0) {
    fn(0, 0);
    return;
  }
  over_blocks(rows, step, parts, fn);
}

// fn(r0, r1) over blocks of `chunk` rows handed out one at a time to up to `threads` threads (the calling thread
// among them), for work that runs beside other busy threads: a thread sharing its core takes fewer blocks instead
// of holding up the call with an equal share.  Errors as in over_blocks.  Call it with the GIL released.
template <typename Fn>
void over_row_chunks(std::size_t rows, int threads, std::size_t chunk, Fn fn) {
  over_blocks(rows, chunk, static_cast<std::size_t>(std::max(threads, 1)), fn);
}

}  // namespace ascend_moe_kernels
