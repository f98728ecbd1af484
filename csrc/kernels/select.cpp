// ascend_moe.kernels._select: the gate's row selections, compiled (no torch, no CANN).
//
// top_k_rows: the indices of the k largest values of each row, largest first, in the order the gating
// simulator defines (sim/gating.py _rank_keys): float order with -0.0 equal to +0.0, every NaN above +inf,
// ties to the lower index; excluded entries are never chosen - a unique order, so the selection has exactly
// one answer.  NumPy's k argmax passes each stream the whole array (about 10 ms for 16384 x 256); here the k
// picks run over one row's int32 keys while they are in cache, each reading a chunk and the chunk maxima.
// tree_sum_f32: the softmax's ReduceSum in its tree order.
// top2_sum_f32: second largest + largest of each row (the grouped gate's group score), for rows without a NaN
// or a -0.0 (whose sums could depend on which of several equal values the selection calls second).
// row_max_f32: each row's maximum of a float32 array without NaN (the softmax's ReduceMax; NumPy's reduction
// along a short last axis is slow).  Rows are split over threads (helpers.h): the GIL is released.
#include <pybind11/pybind11.h>

#include "helpers.h"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;
using ascend_moe_kernels::c_contiguous;
using ascend_moe_kernels::over_rows;

namespace {

// the value's place in the order, as an int32 that compares like it (the float bits made monotone; -0.0 as
// +0.0; every NaN the same, just above +inf), without branches so that a row converts in vector instructions
inline std::int32_t ordered(std::uint32_t raw) {
  const auto bits = static_cast<std::int32_t>(raw == 0x80000000u ? 0u : raw);
  const std::int32_t monotone = bits ^ ((bits >> 31) & 0x7FFFFFFF);
  return (raw & 0x7FFFFFFFu) > 0x7F800000u ? 0x7F800001 : monotone;
}

constexpr std::size_t kChunk = 16;
constexpr std::int32_t kGone = INT32_MIN;  // excluded or already taken (below every ordered value)

// rows [r0, r1): false when some row has fewer than k entries that are not excluded.  Per row, the keys and the
// maximum of each chunk of kChunk keys; then k picks, each the largest chunk maximum (the lowest chunk holding it),
// the lowest index in that chunk holding it - the tie rule (value, then lower index) - and that chunk's maximum
// again: a pick reads kChunk + n / kChunk keys instead of the whole row.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
bool top_k_block(const float *v, const std::uint8_t *excluded, std::int64_t *out, std::size_t r0, std::size_t r1,
                 std::size_t n, std::size_t k) {
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::int32_t> keys(chunks * kChunk), chunk_max(chunks);
  bool enough = true;
  for (std::size_t r = r0; r < r1; ++r) {
    const auto *row = reinterpret_cast<const std::uint32_t *>(v + r * n);
    std::int32_t *key = keys.data();
    for (std::size_t j = 0; j < n; ++j) key[j] = ordered(row[j]);
    for (std::size_t j = n; j < chunks * kChunk; ++j) key[j] = kGone;  // the last chunk's padding
    if (excluded) {
      const std::uint8_t *skip = excluded + r * n;
      for (std::size_t j = 0; j < n; ++j) key[j] = skip[j] ? kGone : key[j];
    }
    for (std::size_t c = 0; c < chunks; ++c) {
      std::int32_t m = kGone;
      for (std::size_t j = c * kChunk; j < (c + 1) * kChunk; ++j) m = key[j] > m ? key[j] : m;
      chunk_max[c] = m;
    }
    for (std::size_t i = 0; i < k; ++i) {
      std::size_t best = 0;
      for (std::size_t c = 1; c < chunks; ++c) best = chunk_max[c] > chunk_max[best] ? c : best;
      const std::int32_t m = chunk_max[best];
      if (m == kGone) {  // nothing eligible left
        enough = false;
        break;
      }
      std::size_t j = best * kChunk;
      while (key[j] != m) ++j;
      out[r * k + i] = static_cast<std::int64_t>(j);
      key[j] = kGone;
      std::int32_t again = kGone;
      for (std::size_t t = best * kChunk; t < (best + 1) * kChunk; ++t) again = key[t] > again ? key[t] : again;
      chunk_max[best] = again;
    }
  }
  return enough;
}

// 16 running maxima per row (independent lanes the compiler turns into vector max instructions; with no NaN
// the order of the comparisons changes nothing but the sign of a zero maximum), then one over the lanes.
// False when a row holds a NaN (out is then not meaningful).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
bool row_max_block(const float *x, float *out, std::size_t r0, std::size_t r1, std::size_t n) {
  constexpr std::size_t kLanes = 16;
  int nan = 0;
  for (std::size_t r = r0; r < r1; ++r) {
    const float *row = x + r * n;
    float m = row[0];
    std::size_t j = 0;
    if (n >= kLanes) {
      float lane[kLanes];
      for (std::size_t i = 0; i < kLanes; ++i) lane[i] = row[i];
      for (j = kLanes; j + kLanes <= n; j += kLanes) {
        for (std::size_t i = 0; i < kLanes; ++i) {
          nan |= row[j + i] != row[j + i];
          lane[i] = row[j + i] > lane[i] ? row[j + i] : lane[i];
        }
      }
      for (std::size_t i = 0; i < kLanes; ++i) nan |= row[i] != row[i];
      m = lane[0];
      for (std::size_t i = 1; i < kLanes; ++i) m = lane[i] > m ? lane[i] : m;
    } else {
      nan |= m != m;
    }
    for (; j < n; ++j) {
      nan |= row[j] != row[j];
      m = row[j] > m ? row[j] : m;
    }
    out[r] = m;
  }
  return !nan;
}

// sum of each row in the simulated ReduceSum's order (sim/gating.py reduce_sum_f32): the row zero-padded to
// whole repeats of `lanes`, a pairwise adjacent-lane tree in each repeat, then the same tree over the repeat
// partials zero-padded to a power of two.  Every add is one fp32 add in that order (no reassociation: built
// without fast-math), so the sums are NumPy's bit for bit.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void tree_sum_block(const float *x, float *out, std::size_t r0, std::size_t r1, std::size_t n, std::size_t lanes) {
  const std::size_t blocks = std::max<std::size_t>(1, (n + lanes - 1) / lanes);
  std::size_t width = 1;
  while (width < blocks) width <<= 1;
  const std::size_t padded = std::max(blocks * lanes, width);
  // ping-pong buffers: a level reads one and writes the other (no aliasing, so the pair sums vectorise)
  std::vector<float> buf(padded), half(padded), partial(width);
  for (std::size_t r = r0; r < r1; ++r) {
    std::copy(x + r * n, x + r * n + n, buf.begin());
    std::fill(buf.begin() + static_cast<std::ptrdiff_t>(n), buf.begin() + static_cast<std::ptrdiff_t>(blocks * lanes),
              0.0f);
    // every repeat's tree at once: level by level over all repeats (pairs never cross a repeat)
    float *cur = buf.data(), *next = half.data();
    for (std::size_t len = blocks * lanes; len > blocks; len >>= 1) {
      for (std::size_t i = 0; i < len / 2; ++i) next[i] = cur[2 * i] + cur[2 * i + 1];
      std::swap(cur, next);
    }
    std::copy(cur, cur + blocks, partial.begin());
    std::fill(partial.begin() + static_cast<std::ptrdiff_t>(blocks), partial.end(), 0.0f);
    for (std::size_t len = width; len > 1; len >>= 1) {
      for (std::size_t i = 0; i < len / 2; ++i) partial[i] = partial[2 * i] + partial[2 * i + 1];
    }
    out[r] = partial[0];
  }
}

// out[r] = second + first of row r, first >= second the two largest values (ties: equal values, so the same sum);
// false when a row holds a NaN or a -0.0, or has fewer than two values.  Branch-free passes over the row's
// ordered int32 keys (vectorised): the largest key, how many hold it, the largest of the others.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
bool top2_sum_block(const float *x, float *out, std::size_t r0, std::size_t r1, std::size_t n) {
  if (n < 2) return false;
  std::vector<std::int32_t> keys(n);
  std::uint32_t odd = 0;
  for (std::size_t r = r0; r < r1; ++r) {
    const float *row = x + r * n;
    std::int32_t first = INT32_MIN;
    for (std::size_t j = 0; j < n; ++j) {
      std::uint32_t raw;
      std::memcpy(&raw, row + j, sizeof raw);
      odd |= static_cast<std::uint32_t>((raw == 0x80000000u) | ((raw & 0x7FFFFFFFu) > 0x7F800000u));
      const auto bits = static_cast<std::int32_t>(raw);
      keys[j] = bits ^ ((bits >> 31) & 0x7FFFFFFF);  // monotone for every non-NaN value but -0.0
      first = keys[j] > first ? keys[j] : first;
    }
    std::uint32_t ties = 0;
    std::int32_t below = INT32_MIN;
    for (std::size_t j = 0; j < n; ++j) {
      ties += static_cast<std::uint32_t>(keys[j] == first);
      const std::int32_t other = keys[j] == first ? INT32_MIN : keys[j];
      below = other > below ? other : below;
    }
    const std::int32_t second = ties >= 2 ? first : below;
    // the key transform is its own inverse
    const std::int32_t first_bits = first ^ ((first >> 31) & 0x7FFFFFFF);
    const std::int32_t second_bits = second ^ ((second >> 31) & 0x7FFFFFFF);
    float a, b;
    std::memcpy(&a, &second_bits, sizeof a);
    std::memcpy(&b, &first_bits, sizeof b);
    out[r] = a + b;
  }
  return odd == 0;
}

}  // namespace

PYBIND11_MODULE(_select, m) {
  m.doc() = "The gate's row selections, compiled (no torch, no CANN).";
  ascend_moe_kernels::def_openmp(m);
  m.def(
      "top_k_rows",
      [](const py::buffer &values, std::size_t k, const py::object &excluded, const py::buffer &out, int threads) {
        py::buffer_info v = c_contiguous(values, "top_k_rows: values (float32)", 4, 2, false);
        py::buffer_info o = c_contiguous(out, "top_k_rows: out (int64)", 8, 2, true);
        const auto rows = static_cast<std::size_t>(v.shape[0]);
        const auto n = static_cast<std::size_t>(v.shape[1]);
        if (k < 1 || k > n) {
          throw std::invalid_argument("top_k_rows: need 1 <= k <= columns, got k=" + std::to_string(k) + " with " +
                                      std::to_string(n) + " columns");
        }
        if (static_cast<std::size_t>(o.shape[0]) != rows || static_cast<std::size_t>(o.shape[1]) != k) {
          throw std::invalid_argument("top_k_rows: out must be [rows, k]");
        }
        const std::uint8_t *skip = nullptr;
        py::buffer_info ex;
        if (!excluded.is_none()) {
          ex = c_contiguous(excluded.cast<py::buffer>(), "top_k_rows: excluded (bool / uint8)", 1, 2, false);
          if (ex.shape[0] != v.shape[0] || ex.shape[1] != v.shape[1]) {
            throw std::invalid_argument("top_k_rows: excluded must have the values' shape");
          }
          skip = static_cast<const std::uint8_t *>(ex.ptr);
        }
        const auto *pv = static_cast<const float *>(v.ptr);
        auto *po = static_cast<std::int64_t *>(o.ptr);
        py::gil_scoped_release release;
        std::atomic_bool all_enough{true};
        over_rows(rows, threads, 256, [&](std::size_t r0, std::size_t r1) {
          if (!top_k_block(pv, skip, po, r0, r1, n, k)) all_enough = false;
        });
        return all_enough.load();
      },
      py::arg("values"), py::arg("k"), py::arg("excluded"), py::arg("out"), py::arg("threads") = 1,
      "Write into out [rows, k] (int64) the indices of the k largest values of each row of values [rows, n] "
      "(float32), largest first: -0.0 == +0.0, NaN above +inf, ties to the lower index, excluded (bool [rows, n] "
      "or None) never chosen.  Returns False (out then partly written) when a row has fewer than k entries "
      "that are not excluded.");
  m.def(
      "tree_sum_f32",
      [](const py::buffer &values, const py::buffer &out, std::size_t lanes, int threads) {
        py::buffer_info v = c_contiguous(values, "tree_sum_f32: values (float32)", 4, 2, false);
        py::buffer_info o = c_contiguous(out, "tree_sum_f32: out (float32)", 4, 1, true);
        const auto rows = static_cast<std::size_t>(v.shape[0]);
        const auto n = static_cast<std::size_t>(v.shape[1]);
        if (lanes < 1 || (lanes & (lanes - 1)) != 0 || static_cast<std::size_t>(o.shape[0]) != rows) {
          throw std::invalid_argument("tree_sum_f32: lanes must be a power of two and out one element per row");
        }
        const auto *pv = static_cast<const float *>(v.ptr);
        auto *po = static_cast<float *>(o.ptr);
        py::gil_scoped_release release;
        over_rows(rows, threads, 256,
                  [&](std::size_t r0, std::size_t r1) { tree_sum_block(pv, po, r0, r1, n, lanes); });
      },
      py::arg("values"), py::arg("out"), py::arg("lanes"), py::arg("threads") = 1,
      "out[r] = the sum of row r of a float32 [rows, n] array in the simulated ReduceSum's order: zero-padded "
      "repeats of `lanes` (a power of two), a pairwise adjacent-lane tree in each, then a tree over the repeat "
      "partials zero-padded to a power of two; one fp32 add at a time.");
  m.def(
      "row_max_f32",
      [](const py::buffer &values, const py::buffer &out, int threads) {
        py::buffer_info v = c_contiguous(values, "row_max_f32: values (float32)", 4, 2, false);
        py::buffer_info o = c_contiguous(out, "row_max_f32: out (float32)", 4, 1, true);
        const auto rows = static_cast<std::size_t>(v.shape[0]);
        const auto n = static_cast<std::size_t>(v.shape[1]);
        if (n < 1 || static_cast<std::size_t>(o.shape[0]) != rows) {
          throw std::invalid_argument("row_max_f32: values must have columns and out one element per row");
        }
        const auto *pv = static_cast<const float *>(v.ptr);
        auto *po = static_cast<float *>(o.ptr);
        py::gil_scoped_release release;
        std::atomic_bool no_nan{true};
        over_rows(rows, threads, 256, [&](std::size_t r0, std::size_t r1) {
          if (!row_max_block(pv, po, r0, r1, n)) no_nan = false;
        });
        return no_nan.load();
      },
      py::arg("values"), py::arg("out"), py::arg("threads") = 1,
      "out[r] = max of row r of a float32 [rows, n] array (a zero maximum may have either sign).  Returns False "
      "when the array holds a NaN (out is then not meaningful).");
  m.def(
      "top2_sum_f32",
      [](const py::buffer &values, const py::buffer &out, int threads) {
        py::buffer_info v = c_contiguous(values, "top2_sum_f32: values (float32)", 4, 2, false);
        py::buffer_info o = c_contiguous(out, "top2_sum_f32: out (float32)", 4, 1, true);
        const auto rows = static_cast<std::size_t>(v.shape[0]);
        const auto n = static_cast<std::size_t>(v.shape[1]);
        if (static_cast<std::size_t>(o.shape[0]) != rows) {
          throw std::invalid_argument("top2_sum_f32: out must have one element per row");
        }
        const auto *pv = static_cast<const float *>(v.ptr);
        auto *po = static_cast<float *>(o.ptr);
        py::gil_scoped_release release;
        std::atomic_bool plain{true};
        over_rows(rows, threads, 2048, [&](std::size_t r0, std::size_t r1) {
          if (!top2_sum_block(pv, po, r0, r1, n)) plain = false;
        });
        return plain.load();
      },
      py::arg("values"), py::arg("out"), py::arg("threads") = 1,
      "out[r] = second largest + largest value of row r of a float32 [rows, n] array (n >= 2), one fp32 add in "
      "that order.  Returns False (out then not meaningful) when a row holds a NaN or a -0.0, or n < 2.");
}
