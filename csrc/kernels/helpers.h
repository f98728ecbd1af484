// Shared by the compiled kernel helpers (csrc/kernels/*.cpp, one Python module each): the buffer check every
// entry point starts with, and the row-parallel runner.
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

namespace ascend_moe_kernels {

namespace py = pybind11;

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

// fn(r0, r1) over row blocks of at least `min_rows` rows on up to `threads` threads (the calling thread takes the
// first block).  Nothing escapes a worker (an exception there would terminate the process): the first error is
// rethrown here after every started thread has been joined; if a thread cannot be started, its block runs on the
// calling thread.  Call it with the GIL released.
template <typename Fn>
void over_rows(std::size_t rows, int threads, std::size_t min_rows, Fn fn) {
  const std::size_t most = rows / std::max<std::size_t>(1, min_rows) + 1;
  const std::size_t parts = std::max<std::size_t>(1, std::min<std::size_t>(threads > 0 ? threads : 1, most));
  const std::size_t step = (rows + parts - 1) / parts;
  std::exception_ptr error;
  std::mutex error_lock;
  auto guarded = [&](std::size_t r0, std::size_t r1) {
    try {
      fn(r0, r1);
    } catch (...) {
      std::lock_guard<std::mutex> hold(error_lock);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  std::vector<std::pair<std::size_t, std::size_t>> inline_blocks{{0, std::min(rows, step)}};
  for (std::size_t r0 = step; r0 < rows; r0 += step) {
    const std::size_t r1 = std::min(rows, r0 + step);
    try {
      pool.emplace_back(guarded, r0, r1);
    } catch (...) {  // no thread to be had: run the block here
      inline_blocks.emplace_back(r0, r1);
    }
  }
  for (const auto &block : inline_blocks) guarded(block.first, block.second);
  for (auto &t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// fn(r0, r1) over blocks of `chunk` rows handed out one at a time to up to `threads` threads (the calling thread
// among them), for work that runs beside other busy threads: a thread sharing its core (e.g. with torch's OpenMP
// workers, which keep spinning for a while after a parallel region) takes fewer blocks instead of holding up the
// call with an equal share.  Errors and failed thread starts as in over_rows.  Call it with the GIL released.
template <typename Fn>
void over_row_chunks(std::size_t rows, int threads, std::size_t chunk, Fn fn) {
  chunk = std::max<std::size_t>(1, chunk);
  const std::size_t chunks = (rows + chunk - 1) / chunk;
  const std::size_t workers = std::max<std::size_t>(1, std::min<std::size_t>(threads > 0 ? threads : 1, chunks));
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_lock;
  auto work = [&]() {
    try {
      for (std::size_t i = next.fetch_add(1); i < chunks && !failed.load(); i = next.fetch_add(1)) {
        fn(i * chunk, std::min(rows, (i + 1) * chunk));
      }
    } catch (...) {
      std::lock_guard<std::mutex> hold(error_lock);
      if (!error) error = std::current_exception();
      failed.store(true);
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < workers; ++t) {
    try {
      pool.emplace_back(work);
    } catch (...) {  // no thread to be had: the others take its blocks
      break;
    }
  }
  work();
  for (auto &t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace ascend_moe_kernels
