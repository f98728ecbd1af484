// ascend_moe.kernels._gemm: a grouped float GEMM for bf16 / fp16 operands that needs nothing kept of its weight.
//
// out[m, n] = round(sum_k a[m, k] * b[k, n]) with every operand widened exactly to fp32 (bf16 by a shift, fp16 by
// the F16C conversion), one fp32 multiply-add per product in k order, and one round-to-nearest-even to the output
// dtype at the end: fp32 accumulation and one rounding, the contract of the float GEMM classes
// (ascend_moe.sim.kernels).  A product of two bf16 (8-bit significands) or two fp16 (11-bit) values is exact in
// fp32, so a fused multiply-add rounds exactly where a multiply then an add would: contraction changes no value.
// Subnormal operands, products and sums are kept: the x86 FTZ/DAZ modes (torch.set_flush_denormal) are switched
// off in every thread for the duration of the call and restored after.  So unlike the bf16 dot-product
// instructions, no scan of the operands is needed to know the result is the IEEE one, and the weight is read
// once per call, in its own layout (rows of n contiguous, any row stride).
//
// Made for the memory-bound calls of MoE layers, groups of a few rows against a large weight (decode, many
// experts): threads take whole groups (streaming whole experts' weights) or bands of output columns, and each
// weight block is read from memory once and kept in cache while every row block of the group uses it.  A weight
// with k contiguous (the backward's dy @ w^T) is read in its own layout too: each output is then a dot product
// over 16 lanes of k (lane l adds k = l mod 16 in k order), the lanes added in a fixed tree, then the last
// K mod 16 products; again one fp32 rounding per step, the same order on every machine and thread count.
#include "helpers.h"

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ASCEND_MOE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ASCEND_MOE_VECTOR_CLONES
#endif

// the 64-byte vector types below are used only inside functions compiled for each target (always_inline into the
// clones), never across a call boundary, so GCC's note about their calling convention does not apply
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

using namespace ascend_moe_kernels;

typedef float v16f __attribute__((vector_size(64)));
typedef std::uint32_t v16u __attribute__((vector_size(64)));
typedef std::uint16_t v16h __attribute__((vector_size(32), aligned(2)));  // 16 bf16 / fp16 bit patterns
typedef _Float16 v16hf __attribute__((vector_size(32), aligned(2)));

constexpr std::size_t STRIP = 32;     // output columns per register tile (two vectors of 16)
#ifndef ASCEND_MOE_GEMM_KC
#define ASCEND_MOE_GEMM_KC 64
#endif
constexpr std::size_t KC = ASCEND_MOE_GEMM_KC;  // weight rows per block (a block and its copy stay in L2)
constexpr std::size_t ROW_CHUNK = 64; // rows widened and accumulated at a time (bounds the per-thread buffers)

// The x86 flush-to-zero and denormals-are-zero modes off while an object lives (restored after).
class IeeeSubnormals {
 public:
  IeeeSubnormals() {
#if defined(__x86_64__) || defined(__i386__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ & ~0x8040u);  // FTZ (bit 15), DAZ (bit 6)
#endif
  }
  ~IeeeSubnormals() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(saved_);
#endif
  }
  IeeeSubnormals(const IeeeSubnormals &) = delete;
  IeeeSubnormals &operator=(const IeeeSubnormals &) = delete;

 private:
  unsigned saved_ = 0;
};

template <bool FP16>
__attribute__((always_inline)) inline v16f widen16(const std::uint16_t *p) {
  if constexpr (FP16) {
    return __builtin_convertvector(*reinterpret_cast<const v16hf *>(p), v16f);
  } else {
    const v16u bits = __builtin_convertvector(*reinterpret_cast<const v16h *>(p), v16u) << 16;
    return (v16f)bits;  // a vector cast reinterprets the bits
  }
}

template <bool FP16>
__attribute__((always_inline)) inline float widen1(std::uint16_t h) {
  if constexpr (FP16) {
    _Float16 v;
    std::memcpy(&v, &h, sizeof v);
    return static_cast<float>(v);
  } else {
    const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
}

// Round to nearest even; a NaN becomes the quiet NaN of its sign (ml_dtypes' and Eigen's conversion, which the
// simulator's reference path uses).
template <bool FP16>
__attribute__((always_inline)) inline std::uint16_t narrow1(float f) {
  if constexpr (FP16) {
    const _Float16 h = static_cast<_Float16>(f);
    std::uint16_t bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
  } else {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>(((u >> 16) & 0x8000u) | 0x7fc0u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
  }
}

// Walks the lines of the next weight block row after row, one prefetch (into L2) per step, so the block streams in
// from memory while the current one is being multiplied.
struct Prefetcher {
  const std::uint16_t *row = nullptr;  // nullptr: nothing (left) to fetch
  std::ptrdiff_t stride = 0;           // elements between rows
  std::size_t width = 0;               // elements per row to fetch
  std::size_t col = 0;
  std::size_t rows_left = 0;

  __attribute__((always_inline)) inline void step() {
    if (row == nullptr) return;
    __builtin_prefetch(row + col, 0, 2);
    col += 32;  // one 64-byte line
    if (col >= width) {
      col = 0;
      row += stride;
      if (--rows_left == 0) row = nullptr;
    }
  }
};

// acc[r][0:32] += sum over kc rows of a[r][k] * b[k][0:32], for R rows: 2R accumulators in registers.
template <int R, bool FP16>
__attribute__((always_inline)) inline void tile(const float *a, std::size_t lda, const std::uint16_t *b,
                                                std::ptrdiff_t ldb, std::size_t kc, float *acc, std::size_t ldacc,
                                                Prefetcher &next) {
  v16f c[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    std::memcpy(&c[r][0], acc + r * ldacc, sizeof(v16f));
    std::memcpy(&c[r][1], acc + r * ldacc + 16, sizeof(v16f));
  }
  for (std::size_t k = 0; k < kc; ++k) {
    const std::uint16_t *bk = b + static_cast<std::ptrdiff_t>(k) * ldb;
    next.step();
    const v16f b0 = widen16<FP16>(bk);
    const v16f b1 = widen16<FP16>(bk + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float av = a[r * lda + k];
      c[r][0] += av * b0;
      c[r][1] += av * b1;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    std::memcpy(acc + r * ldacc, &c[r][0], sizeof(v16f));
    std::memcpy(acc + r * ldacc + 16, &c[r][1], sizeof(v16f));
  }
}

struct Problem {
  const std::uint16_t *a;   // [T, K], C-contiguous
  const std::uint16_t *b;   // [E, K, N] with n contiguous, or with k contiguous (a transposed weight); strides
  std::ptrdiff_t b_expert;  // below in elements
  std::ptrdiff_t b_row;     // between k (n contiguous) or between n (k contiguous)
  std::uint16_t *out;       // [T, N], C-contiguous
  std::size_t k;
  std::size_t n;
  const std::int64_t *groups;  // rows of (expert, first row, end row)
  std::size_t n_groups;
  bool k_contiguous;
};

template <bool FP16>
__attribute__((always_inline)) inline void band(const Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                                std::size_t c1) {
  IeeeSubnormals ieee;
  const std::size_t width = c1 - c0;
  const std::size_t strips = width / STRIP;
  const std::size_t full = c0 + strips * STRIP;
  std::vector<float> a32, acc;
  std::vector<std::uint16_t> packed;
  for (std::size_t g = g0; g < g1; ++g) {
    const std::int64_t *grp = p.groups + 3 * g;
    const std::uint16_t *be = p.b + grp[0] * p.b_expert;
    for (std::size_t s = static_cast<std::size_t>(grp[1]); s < static_cast<std::size_t>(grp[2]); s += ROW_CHUNK) {
      const std::size_t rows = std::min<std::size_t>(ROW_CHUNK, static_cast<std::size_t>(grp[2]) - s);
      a32.resize(rows * p.k);
      for (std::size_t i = 0; i < rows * p.k; ++i) a32[i] = widen1<FP16>(p.a[s * p.k + i]);
      acc.assign(rows * width, 0.0f);
      for (std::size_t k0 = 0; k0 < p.k; k0 += KC) {
        const std::size_t kc = std::min(KC, p.k - k0);
        const std::uint16_t *bk = be + static_cast<std::ptrdiff_t>(k0) * p.b_row;
        // the block's full strips copied strip after strip, read row after row (lines the previous block's
        // multiplications prefetched); a strip's copy is kc + 1 lines apart from the next one's, so the copies of
        // one weight row do not all fall into one cache set
        const std::size_t pitch = (kc + 1) * STRIP;
        packed.resize(strips * pitch);
        for (std::size_t k = 0; k < kc; ++k) {
          const std::uint16_t *row = bk + static_cast<std::ptrdiff_t>(k) * p.b_row + c0;
          for (std::size_t q = 0; q < strips; ++q) std::memcpy(&packed[q * pitch + k * STRIP], row + q * STRIP, STRIP * 2);
        }
        Prefetcher next;
        if (k0 + kc < p.k) {
          next = Prefetcher{bk + static_cast<std::ptrdiff_t>(kc) * p.b_row + c0, p.b_row, width, 0,
                            std::min(KC, p.k - k0 - kc)};
        }
        for (std::size_t q = 0; q < strips; ++q) {
          const std::uint16_t *bq = &packed[q * pitch];
          float *aj = acc.data() + q * STRIP;
          const float *ak = &a32[k0];
          std::size_t r = 0;
          for (; r + 8 <= rows; r += 8) tile<8, FP16>(ak + r * p.k, p.k, bq, STRIP, kc, aj + r * width, width, next);
          if (r + 4 <= rows) {
            tile<4, FP16>(ak + r * p.k, p.k, bq, STRIP, kc, aj + r * width, width, next);
            r += 4;
          }
          if (r + 2 <= rows) {
            tile<2, FP16>(ak + r * p.k, p.k, bq, STRIP, kc, aj + r * width, width, next);
            r += 2;
          }
          if (r < rows) tile<1, FP16>(ak + r * p.k, p.k, bq, STRIP, kc, aj + r * width, width, next);
        }
        // the last columns (fewer than a strip): the same operations one element at a time
        for (std::size_t r = 0; r < rows; ++r) {
          for (std::size_t j = full; j < c1; ++j) {
            float c = acc[r * width + (j - c0)];
            for (std::size_t k = 0; k < kc; ++k) {
              c += a32[r * p.k + k0 + k] * widen1<FP16>(bk[static_cast<std::ptrdiff_t>(k) * p.b_row + j]);
            }
            acc[r * width + (j - c0)] = c;
          }
        }
      }
      for (std::size_t r = 0; r < rows; ++r) {
        std::uint16_t *o = p.out + (s + r) * p.n;
        for (std::size_t j = c0; j < c1; ++j) o[j] = narrow1<FP16>(acc[r * width + (j - c0)]);
      }
    }
  }
}

// The sum of a vector's 16 lanes, always in the same order (halves added pairwise: lanes i and i + 8, then i and
// i + 4, ...).
__attribute__((always_inline)) inline float lanes_sum(v16f v) {
  typedef float v8f __attribute__((vector_size(32)));
  typedef float v4f __attribute__((vector_size(16)));
  const v8f h8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4f h4 = __builtin_shufflevector(h8, h8, 0, 1, 2, 3) + __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
  const float h2a = h4[0] + h4[2], h2b = h4[1] + h4[3];
  return h2a + h2b;
}

// A transposed weight (k contiguous): out[r][j] = sum_k a[r][k] * bt[j][k] for R rows and C weight rows, each sum
// over 16 lanes (lane l adds the products of k = l mod 16 in k order), the lanes added by lanes_sum, then the last
// K mod 16 products one at a time; every step one fp32 rounding of an exact product's sum.
template <int R, int C, bool FP16>
__attribute__((always_inline)) inline void dot_tile(const float *a, std::size_t lda, const std::uint16_t *bt,
                                                    std::ptrdiff_t ldbt, std::size_t kdim, std::uint16_t *out,
                                                    std::size_t ldo) {
  v16f c[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) c[r][j] = v16f{};
  }
  std::size_t k = 0;
  for (; k + 16 <= kdim; k += 16) {
    v16f bv[C];
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) bv[j] = widen16<FP16>(bt + j * ldbt + k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      v16f av;
      std::memcpy(&av, a + r * lda + k, sizeof av);
#pragma GCC unroll 4
      for (int j = 0; j < C; ++j) c[r][j] += av * bv[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < C; ++j) {
      float sum = lanes_sum(c[r][j]);
      for (std::size_t kk = k; kk < kdim; ++kk) sum += a[r * lda + kk] * widen1<FP16>(bt[j * ldbt + kk]);
      out[r * ldo + j] = narrow1<FP16>(sum);
    }
  }
}

template <int R, bool FP16>
__attribute__((always_inline)) inline void dot_rows(const float *a, std::size_t lda, const std::uint16_t *bt,
                                                    std::ptrdiff_t ldbt, std::size_t kdim, std::uint16_t *out,
                                                    std::size_t ldo, std::size_t c0, std::size_t c1) {
  std::size_t j = c0;
  for (; j + 4 <= c1; j += 4) dot_tile<R, 4, FP16>(a, lda, bt + j * ldbt, ldbt, kdim, out + j, ldo);
  for (; j < c1; ++j) dot_tile<R, 1, FP16>(a, lda, bt + j * ldbt, ldbt, kdim, out + j, ldo);
}

// Output columns [c0, c1) of groups [g0, g1) for a transposed weight: each weight row (an output column) is read
// once per group, in order, and kept in L1 while every row block of the group uses it.
template <bool FP16>
__attribute__((always_inline)) inline void band_nt(const Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                                   std::size_t c1) {
  IeeeSubnormals ieee;
  std::vector<float> a32;
  for (std::size_t g = g0; g < g1; ++g) {
    const std::int64_t *grp = p.groups + 3 * g;
    const std::uint16_t *be = p.b + grp[0] * p.b_expert;
    for (std::size_t s = static_cast<std::size_t>(grp[1]); s < static_cast<std::size_t>(grp[2]); s += ROW_CHUNK) {
      const std::size_t rows = std::min<std::size_t>(ROW_CHUNK, static_cast<std::size_t>(grp[2]) - s);
      a32.resize(rows * p.k);
      for (std::size_t i = 0; i < rows * p.k; ++i) a32[i] = widen1<FP16>(p.a[s * p.k + i]);
      // column blocks of 64 weight rows, every row block of the group over each (the block stays in L1 / L2)
      for (std::size_t j0 = c0; j0 < c1; j0 += 64) {
        const std::size_t j1 = std::min(c1, j0 + 64);
        std::size_t r = 0;
        std::uint16_t *o = p.out + s * p.n;
        for (; r + 4 <= rows; r += 4) dot_rows<4, FP16>(&a32[r * p.k], p.k, be, p.b_row, p.k, o + r * p.n, p.n, j0, j1);
        if (r + 2 <= rows) {
          dot_rows<2, FP16>(&a32[r * p.k], p.k, be, p.b_row, p.k, o + r * p.n, p.n, j0, j1);
          r += 2;
        }
        if (r < rows) dot_rows<1, FP16>(&a32[r * p.k], p.k, be, p.b_row, p.k, o + r * p.n, p.n, j0, j1);
      }
    }
  }
}

ASCEND_MOE_VECTOR_CLONES void band_bf16(const Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                        std::size_t c1) {
  if (p.k_contiguous) {
    band_nt<false>(p, g0, g1, c0, c1);
  } else {
    band<false>(p, g0, g1, c0, c1);
  }
}
ASCEND_MOE_VECTOR_CLONES void band_fp16(const Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                        std::size_t c1) {
  if (p.k_contiguous) {
    band_nt<true>(p, g0, g1, c0, c1);
  } else {
    band<true>(p, g0, g1, c0, c1);
  }
}

}  // namespace

PYBIND11_MODULE(_gemm, m) {
  m.doc() = "A grouped bf16 / fp16 GEMM computing in fp32 from exactly widened operands (no torch, no CANN).";
  m.def(
      "grouped_widen_fma",
      [](py::buffer out, py::buffer a, py::buffer b, py::buffer groups, bool fp16, int threads) {
        py::buffer_info oi = c_contiguous(out, "out", 2, 2, true);
        py::buffer_info ai = c_contiguous(a, "a", 2, 2, false);
        py::buffer_info gi = c_contiguous(groups, "groups", 8, 2, false);
        py::buffer_info bi = b.request(false);
        const bool n_contiguous = bi.ndim == 3 && (bi.shape[2] <= 1 || bi.strides[2] == 2);
        const bool k_contiguous = !n_contiguous && bi.ndim == 3 && (bi.shape[1] <= 1 || bi.strides[1] == 2);
        if (bi.itemsize != 2 || bi.ndim != 3 || !(n_contiguous || k_contiguous) || bi.strides[0] % 2 != 0 ||
            bi.strides[1] % 2 != 0 || bi.strides[2] % 2 != 0) {
          throw std::invalid_argument("b must be a 3-D buffer of 2-byte elements [E, K, N] with N or K contiguous");
        }
        if (gi.shape[1] != 3) throw std::invalid_argument("groups must be [G, 3] int64 rows (expert, start, end)");
        const py::ssize_t t = ai.shape[0], k = ai.shape[1], e = bi.shape[0], n = bi.shape[2];
        if (bi.shape[1] != k || oi.shape[0] != t || oi.shape[1] != n) {
          throw std::invalid_argument("shapes do not match: a [T, K], b [E, K, N], out [T, N]");
        }
        const auto *grp = static_cast<const std::int64_t *>(gi.ptr);
        for (py::ssize_t i = 0; i < gi.shape[0]; ++i) {
          const std::int64_t ex = grp[3 * i], s = grp[3 * i + 1], f = grp[3 * i + 2];
          if (ex < 0 || ex >= e || s < 0 || f < s || f > t) {
            throw std::invalid_argument("group " + std::to_string(i) + " (expert " + std::to_string(ex) + ", rows " +
                                        std::to_string(s) + ".." + std::to_string(f) + ") is out of range");
          }
        }
        Problem p{static_cast<const std::uint16_t *>(ai.ptr),
                  static_cast<const std::uint16_t *>(bi.ptr),
                  bi.strides[0] / 2,
                  (k_contiguous ? bi.strides[2] : bi.strides[1]) / 2,
                  static_cast<std::uint16_t *>(oi.ptr),
                  static_cast<std::size_t>(k),
                  static_cast<std::size_t>(n),
                  grp,
                  static_cast<std::size_t>(gi.shape[0]),
                  k_contiguous};
        if (n == 0 || gi.shape[0] == 0) return;
        py::gil_scoped_release release;
        auto run = [&](std::size_t g0, std::size_t g1, std::size_t c0, std::size_t c1) {
          if (fp16) {
            band_fp16(p, g0, g1, c0, c1);
          } else {
            band_bf16(p, g0, g1, c0, c1);
          }
        };
        if (p.n_groups >= 2 * static_cast<std::size_t>(std::max(threads, 1))) {
          // whole groups to each thread, handed out one at a time: each thread streams whole experts' weights
          over_row_chunks(p.n_groups, threads, 1, [&](std::size_t g0, std::size_t g1) { run(g0, g1, 0, p.n); });
        } else {
          // bands of whole strips, at least 4 strips (128 columns) each
          const std::size_t strips = (p.n + STRIP - 1) / STRIP;
          over_rows(strips, threads, 4, [&](std::size_t s0, std::size_t s1) {
            run(0, p.n_groups, s0 * STRIP, std::min(p.n, s1 * STRIP));
          });
        }
      },
      py::arg("out"), py::arg("a"), py::arg("b"), py::arg("groups"), py::arg("fp16"), py::arg("threads"),
      "out[s:t] = a[s:t] @ b[e] for each (e, s, t) of groups: bf16 / fp16 operands widened exactly to fp32, one "
      "fp32 multiply-add per product (in k order when b's columns are contiguous; in 16 lanes of k order added in a "
      "fixed tree when b's k is contiguous, a transposed weight), one round-to-nearest-even to the output dtype; "
      "subnormals kept.");
}
