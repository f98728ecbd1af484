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

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
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
constexpr std::size_t PANEL = 8;      // rows of a packed panel of a (the K-split's x^T): the widest tile's rows
#ifndef ASCEND_MOE_GEMM_KC
#define ASCEND_MOE_GEMM_KC 64
#endif
constexpr std::size_t KC = ASCEND_MOE_GEMM_KC;  // weight rows per block (a block and its copy stay in L2)
constexpr std::size_t ROW_CHUNK = 64; // rows widened and accumulated at a time (bounds the per-thread buffers)

// A worker's scratch buffers, kept from one unit of work to its next: made afresh per unit (a group's column half),
// their pages were faulted in again each time, 2-8 % of the 128-row bf16 groups.  A buffer larger than
// SCRATCH_KEPT_BYTES is given back at the end of its unit (a large unit amortises its allocation), so a thread
// keeps at most a few MB between calls.
constexpr std::size_t SCRATCH_KEPT_BYTES = std::size_t(1) << 20;

template <typename T>
void release_if_large(std::vector<T> &v) {
  if (v.capacity() * sizeof(T) > SCRATCH_KEPT_BYTES) std::vector<T>().swap(v);
}

// Gives back a unit's large scratch buffers when the unit ends (normally or by an exception).
template <typename... V>
struct ScratchRelease {
  std::tuple<V &...> buffers;
  explicit ScratchRelease(V &...v) : buffers(v...) {}
  ~ScratchRelease() {
    std::apply([](auto &...v) { (release_if_large(v), ...); }, buffers);
  }
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

// Walks the lines of up to two regions (rows of `width` elements, `stride` apart: the next weight block, the next
// group's rows of a) row after row, one prefetch (into L2) per step, so they stream in from memory while the
// current block is being multiplied.
struct Prefetcher {
  struct Region {
    const char *row;
    std::ptrdiff_t stride;  // bytes between rows
    std::size_t width;      // bytes per row to fetch
    std::size_t rows;
  };
  Region regions[2] = {};
  int count = 0;
  int current = 0;
  std::size_t col = 0;  // bytes into the current row

  Prefetcher() = default;
  // rows of `width` elements of T, `stride` elements apart, from element col0 of the first
  template <typename T>
  Prefetcher(const T *row, std::ptrdiff_t stride, std::size_t width, std::size_t col0, std::size_t rows) {
    add(row, stride, width, rows);
    col = col0 * sizeof(T);
  }
  template <typename T>
  void add(const T *row, std::ptrdiff_t stride, std::size_t width, std::size_t rows) {
    if (count < 2 && row != nullptr && width > 0 && rows > 0) {
      regions[count++] = Region{reinterpret_cast<const char *>(row), stride * static_cast<std::ptrdiff_t>(sizeof(T)),
                                width * sizeof(T), rows};
    }
  }

  __attribute__((always_inline)) inline void step() {
    if (current >= count) return;
    Region &r = regions[current];
    __builtin_prefetch(r.row + col, 0, 2);
    col += 64;  // one line
    if (col >= r.width) {
      col = 0;
      r.row += r.stride;
      if (--r.rows == 0) ++current;
    }
  }
};

// narrow1<false> of 16 lanes, each result's bf16 bits in the low half of its 32-bit lane
__attribute__((always_inline)) inline v16u narrow16_bf16(v16f f) {
  const v16u u = (v16u)f;
  const v16u rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const v16u quiet_nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
  return (u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded;
}

// narrow1 / widen1 over n elements, 16 at a time (the same bits)
template <bool FP16>
__attribute__((always_inline)) inline void narrow_n(const float *src, std::uint16_t *dst, std::size_t n) {
  std::size_t j = 0;
  for (; j + 16 <= n; j += 16) {
    v16f f;
    std::memcpy(&f, src + j, sizeof f);
    if constexpr (FP16) {
      const v16hf h = __builtin_convertvector(f, v16hf);
      std::memcpy(dst + j, &h, sizeof h);
    } else {
      const v16h h = __builtin_convertvector(narrow16_bf16(f), v16h);
      std::memcpy(dst + j, &h, sizeof h);
    }
  }
  for (; j < n; ++j) dst[j] = narrow1<FP16>(src[j]);
}

template <bool FP16>
__attribute__((always_inline)) inline void widen_n(const std::uint16_t *src, float *dst, std::size_t n) {
  std::size_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const v16f f = widen16<FP16>(src + j);
    std::memcpy(dst + j, &f, sizeof f);
  }
  for (; j < n; ++j) dst[j] = widen1<FP16>(src[j]);
}

// The element kinds of the widen-FMA GEMM: bf16 and fp16 (2-byte bit patterns, widened exactly to fp32) and fp32
// itself (read as it is; its products are rounded by each fused multiply-add, so the sums are fp32 accumulation
// within the summation bound rather than exact products).
enum class Elem { bf16, fp16, fp32 };
template <Elem E>
using Bits = typename std::conditional<E == Elem::fp32, float, std::uint16_t>::type;

template <Elem E>
__attribute__((always_inline)) inline v16f load16(const Bits<E> *p) {
  if constexpr (E == Elem::fp32) {
    v16f f;
    std::memcpy(&f, p, sizeof f);
    return f;
  } else {
    return widen16<E == Elem::fp16>(p);
  }
}

template <Elem E>
__attribute__((always_inline)) inline float load1(Bits<E> v) {
  if constexpr (E == Elem::fp32) {
    return v;
  } else {
    return widen1<E == Elem::fp16>(v);
  }
}

template <Elem E>
__attribute__((always_inline)) inline Bits<E> store1(float f) {
  if constexpr (E == Elem::fp32) {
    return f;
  } else {
    return narrow1<E == Elem::fp16>(f);
  }
}

// `rows` rows of a (K elements each, contiguous) from row `first` as fp32: bf16 / fp16 widened into `buffer`, fp32
// read where it is (no copy)
template <Elem E>
__attribute__((always_inline)) inline const float *rows_as_fp32(const Bits<E> *a, std::size_t k, std::size_t first,
                                                               std::size_t rows, std::vector<float> &buffer) {
  if constexpr (E == Elem::fp32) {
    return a + first * k;
  } else {
    buffer.resize(rows * k);
    widen_n<E == Elem::fp16>(a + first * k, buffer.data(), rows * k);
    return buffer.data();
  }
}

template <Elem E>
__attribute__((always_inline)) inline void store_n(const float *src, Bits<E> *dst, std::size_t n) {
  if constexpr (E == Elem::fp32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    narrow_n<E == Elem::fp16>(src, dst, n);
  }
}

// acc[r][0:32] += sum over kc rows of a[r][k] * b[k][0:32], for R rows: 2R accumulators in registers (from zero
// instead of acc's values where `fresh`).  a's element (r, k) at a[r * lda + k], or with A_PANEL at a[k * lda + r]
// (rows interleaved: a packed panel, each k's R values consecutive).
template <int R, Elem E, bool A_PANEL = false>
__attribute__((always_inline)) inline void tile(const float *a, std::size_t lda, const Bits<E> *b,
                                                std::ptrdiff_t ldb, std::size_t kc, float *acc, std::size_t ldacc,
                                                Prefetcher &next, bool fresh = false) {
  v16f c[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (fresh) {
      c[r][0] = c[r][1] = v16f{};
    } else {
      std::memcpy(&c[r][0], acc + r * ldacc, sizeof(v16f));
      std::memcpy(&c[r][1], acc + r * ldacc + 16, sizeof(v16f));
    }
  }
  for (std::size_t k = 0; k < kc; ++k) {
    const Bits<E> *bk = b + static_cast<std::ptrdiff_t>(k) * ldb;
    next.step();
    const v16f b0 = load16<E>(bk);
    const v16f b1 = load16<E>(bk + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float av = A_PANEL ? a[k * lda + r] : a[r * lda + k];
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

// Rows [0, kc) of `width` columns from `src` (rows `ld` elements apart) copied as strips of 32 columns: strip q at
// dst + q * pitch, row after row, a last partial strip zero-padded.  Read row after row (lines a previous block's
// multiplications prefetched); with pitch (kc + 1) * 32 a strip's copy is kc + 1 lines from the next one's, so the
// copies of one source row do not all fall into one cache set.
template <typename T>
__attribute__((always_inline)) inline void copy_strips(const T *src, std::ptrdiff_t ld, std::size_t kc,
                                                       std::size_t width, std::size_t pitch, T *dst) {
  const std::size_t full = width / STRIP, tail = width - full * STRIP;
  for (std::size_t k = 0; k < kc; ++k) {
    const T *row = src + static_cast<std::ptrdiff_t>(k) * ld;
    for (std::size_t q = 0; q < full; ++q) std::memcpy(dst + q * pitch + k * STRIP, row + q * STRIP, STRIP * sizeof(T));
    if (tail) {
      T *last = dst + full * pitch + k * STRIP;
      std::memcpy(last, row + full * STRIP, tail * sizeof(T));
      std::fill(last + tail, last + STRIP, T{});
    }
  }
}

// The tiles of `rows` rows over one strip's copy `bq` (kc of its rows), 8 rows at a time, then 4, 2, 1, into acc
// (rows ldacc apart; from zero where `fresh`).  Row r of a at a + r * lda (k contiguous), or with A_PANEL in panels
// of 8 rows `panel_stride` apart (each k's 8 values consecutive, k stride lda): a + (r / 8) * panel_stride + r % 8.
template <Elem E, bool A_PANEL>
__attribute__((always_inline)) inline void row_tiles(const float *a, std::size_t lda, std::size_t panel_stride,
                                                     std::size_t rows, const Bits<E> *bq, std::size_t kc, float *acc,
                                                     std::size_t ldacc, Prefetcher &next, bool fresh) {
  const auto row = [=](std::size_t r) { return A_PANEL ? a + (r / PANEL) * panel_stride + r % PANEL : a + r * lda; };
  std::size_t r = 0;
  for (; r + 8 <= rows; r += 8) tile<8, E, A_PANEL>(row(r), lda, bq, STRIP, kc, acc + r * ldacc, ldacc, next, fresh);
  if (r + 4 <= rows) {
    tile<4, E, A_PANEL>(row(r), lda, bq, STRIP, kc, acc + r * ldacc, ldacc, next, fresh);
    r += 4;
  }
  if (r + 2 <= rows) {
    tile<2, E, A_PANEL>(row(r), lda, bq, STRIP, kc, acc + r * ldacc, ldacc, next, fresh);
    r += 2;
  }
  if (r < rows) tile<1, E, A_PANEL>(row(r), lda, bq, STRIP, kc, acc + r * ldacc, ldacc, next, fresh);
}

template <typename T>
struct ProblemOf {
  const T *a;   // [T, K], C-contiguous
  const T *b;   // [E, K, N] with n contiguous, or with k contiguous (a transposed weight); strides
  std::ptrdiff_t b_expert;  // below in elements
  std::ptrdiff_t b_row;     // between k (n contiguous) or between n (k contiguous)
  T *out;       // [T, N], C-contiguous
  std::size_t k;
  std::size_t n;
  const std::int64_t *groups;  // rows of (expert, first row, end row)
  std::size_t n_groups;
  bool k_contiguous;
};
using Problem = ProblemOf<std::uint16_t>;

// The rows of groups [g0, g1), each group's at most `chunk` at a time, in order: `while (c.next())` visits each
// chunk with its group index, its expert's weight, its first row and its row count.
template <typename T>
class RowChunksOf {
 public:
  RowChunksOf(const ProblemOf<T> &p, std::size_t g0, std::size_t g1, std::size_t chunk)
      : p_(p), g1_(g1), chunk_(chunk), group(g0) {}

  bool next() {
    for (; group < g1_; ++group, started_ = false) {
      const std::int64_t *grp = p_.groups + 3 * group;
      const std::size_t end = static_cast<std::size_t>(grp[2]);
      const std::size_t s = started_ ? first + rows : static_cast<std::size_t>(grp[1]);
      if (s < end) {
        started_ = true;
        weight = p_.b + grp[0] * p_.b_expert;
        first = s;
        rows = std::min(chunk_, end - s);
        return true;
      }
    }
    return false;
  }

 private:
  const ProblemOf<T> &p_;
  std::size_t g1_, chunk_;
  bool started_ = false;

 public:
  std::size_t group;
  const T *weight = nullptr;
  std::size_t first = 0, rows = 0;
};
using RowChunks = RowChunksOf<std::uint16_t>;

template <Elem E>
__attribute__((always_inline)) inline void band(const ProblemOf<Bits<E>> &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                                std::size_t c1) {
  const std::size_t width = c1 - c0;
  const std::size_t strips = width / STRIP;
  const std::size_t full = c0 + strips * STRIP;
  std::vector<float> widened, acc;
  std::vector<Bits<E>> packed;
  for (RowChunksOf<Bits<E>> chunk(p, g0, g1, ROW_CHUNK); chunk.next();) {
    const Bits<E> *be = chunk.weight;
    const std::size_t s = chunk.first, rows = chunk.rows;
    const float *a32 = rows_as_fp32<E>(p.a, p.k, s, rows, widened);
    acc.assign(rows * width, 0.0f);
    for (std::size_t k0 = 0; k0 < p.k; k0 += KC) {
      const std::size_t kc = std::min(KC, p.k - k0);
      const Bits<E> *bk = be + static_cast<std::ptrdiff_t>(k0) * p.b_row;
      const std::size_t pitch = (kc + 1) * STRIP;  // the block's full strips copied (the last columns below)
      packed.resize(strips * pitch);
      copy_strips(bk + c0, p.b_row, kc, strips * STRIP, pitch, packed.data());
      Prefetcher next;
      if (k0 + kc < p.k) {
        next = Prefetcher{bk + static_cast<std::ptrdiff_t>(kc) * p.b_row + c0, p.b_row, width, 0,
                          std::min(KC, p.k - k0 - kc)};
      }
      for (std::size_t q = 0; q < strips; ++q) {
        row_tiles<E, false>(a32 + k0, p.k, 0, rows, &packed[q * pitch], kc, acc.data() + q * STRIP, width, next, false);
      }
      // the last columns (fewer than a strip): the same operations one element at a time
      for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t j = full; j < c1; ++j) {
          float c = acc[r * width + (j - c0)];
          for (std::size_t k = 0; k < kc; ++k) {
            c += a32[r * p.k + k0 + k] * load1<E>(bk[static_cast<std::ptrdiff_t>(k) * p.b_row + j]);
          }
          acc[r * width + (j - c0)] = c;
        }
      }
    }
    for (std::size_t r = 0; r < rows; ++r) {
      Bits<E> *o = p.out + (s + r) * p.n;
      store_n<E>(&acc[r * width], o + c0, c1 - c0);
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
template <int R, int C, Elem E>
__attribute__((always_inline)) inline void dot_tile(const float *a, std::size_t lda, const Bits<E> *bt,
                                                    std::ptrdiff_t ldbt, std::size_t kdim, Bits<E> *out,
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
    for (int j = 0; j < C; ++j) bv[j] = load16<E>(bt + j * ldbt + k);
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
      for (std::size_t kk = k; kk < kdim; ++kk) sum += a[r * lda + kk] * load1<E>(bt[j * ldbt + kk]);
      out[r * ldo + j] = store1<E>(sum);
    }
  }
}

template <int R, Elem E>
__attribute__((always_inline)) inline void dot_rows(const float *a, std::size_t lda, const Bits<E> *bt,
                                                    std::ptrdiff_t ldbt, std::size_t kdim, Bits<E> *out,
                                                    std::size_t ldo, std::size_t c0, std::size_t c1) {
  std::size_t j = c0;
  for (; j + 4 <= c1; j += 4) dot_tile<R, 4, E>(a, lda, bt + j * ldbt, ldbt, kdim, out + j, ldo);
  for (; j < c1; ++j) dot_tile<R, 1, E>(a, lda, bt + j * ldbt, ldbt, kdim, out + j, ldo);
}

// Output columns [c0, c1) of groups [g0, g1) for a transposed weight: each weight row (an output column) is read
// once per group, in order, and kept in L1 while every row block of the group uses it.
template <Elem E>
__attribute__((always_inline)) inline void band_nt(const ProblemOf<Bits<E>> &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                                   std::size_t c1) {
  std::vector<float> widened;
  for (RowChunksOf<Bits<E>> chunk(p, g0, g1, ROW_CHUNK); chunk.next();) {
    const Bits<E> *be = chunk.weight;
    const std::size_t s = chunk.first, rows = chunk.rows;
    const float *a32 = rows_as_fp32<E>(p.a, p.k, s, rows, widened);
    // column blocks of 64 weight rows, every row block of the group over each (the block stays in L1 / L2)
    for (std::size_t j0 = c0; j0 < c1; j0 += 64) {
      const std::size_t j1 = std::min(c1, j0 + 64);
      std::size_t r = 0;
      Bits<E> *o = p.out + s * p.n;
      for (; r + 4 <= rows; r += 4) dot_rows<4, E>(a32 + r * p.k, p.k, be, p.b_row, p.k, o + r * p.n, p.n, j0, j1);
      if (r + 2 <= rows) {
        dot_rows<2, E>(a32 + r * p.k, p.k, be, p.b_row, p.k, o + r * p.n, p.n, j0, j1);
        r += 2;
      }
      if (r < rows) dot_rows<1, E>(a32 + r * p.k, p.k, be, p.b_row, p.k, o + r * p.n, p.n, j0, j1);
    }
  }
}

template <Elem E>
__attribute__((always_inline)) inline void band_any(const ProblemOf<Bits<E>> &p, std::size_t g0, std::size_t g1,
                                                    std::size_t c0, std::size_t c1) {
  if (p.k_contiguous) {
    band_nt<E>(p, g0, g1, c0, c1);
  } else {
    band<E>(p, g0, g1, c0, c1);
  }
}
ASCEND_MOE_VECTOR_CLONES void band_bf16(const Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                        std::size_t c1) {
  band_any<Elem::bf16>(p, g0, g1, c0, c1);
}
ASCEND_MOE_VECTOR_CLONES void band_fp16(const Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                        std::size_t c1) {
  band_any<Elem::fp16>(p, g0, g1, c0, c1);
}
ASCEND_MOE_VECTOR_CLONES void band_fp32(const ProblemOf<float> &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                        std::size_t c1) {
  band_any<Elem::fp32>(p, g0, g1, c0, c1);
}

// The K-split product in fp32 (the backward's weight gradient x^T @ dy) by the same tile: out[e] = x[s:t]^T @
// y[s:t] for each group (e, s, t), x [T, M], y [T, N], out [E, M, N] C-contiguous; each output the fp32 sum of its
// products in token order, one multiply-add each (an empty group writes zeros).  x^T's rows are x's columns, M
// elements apart: read in place, a tile's every token step would load a new line, all of them in one L1 set when M
// is a multiple of 1024.  So each block of tokens copies its x columns into panels of 8 (the tile's 8 rows, a
// token's 8 values consecutive: GotoBLAS's packed A) and y's columns into strips of 32, as band copies a weight;
// the output is the accumulator (fp32 already), the first block's tiles starting from zero.
struct KSplit32 {
  const float *x;  // [T, M]
  const float *y;  // [T, N]
  float *out;      // [E, M, N]
  std::size_t m, n;
  const std::int64_t *groups;  // rows of (output index, first token, end token)
};
#ifndef ASCEND_MOE_KS32_ROWS
#define ASCEND_MOE_KS32_ROWS 128
#endif
#ifndef ASCEND_MOE_KS32_TOKENS
#define ASCEND_MOE_KS32_TOKENS 512
#endif
#ifndef ASCEND_MOE_KS32_KC
#define ASCEND_MOE_KS32_KC 128
#endif
#ifndef ASCEND_MOE_KS32_BAND
#define ASCEND_MOE_KS32_BAND 256
#endif
constexpr std::size_t KS32_ROWS = ASCEND_MOE_KS32_ROWS;      // output rows (columns of x) per unit of work
constexpr std::size_t KS32_TOKENS = ASCEND_MOE_KS32_TOKENS;  // tokens whose x panels are copied at once (L2)
constexpr std::size_t KS32_KC = ASCEND_MOE_KS32_KC;          // tokens per block of y (a panel's block and a
                                                             // strip's copy fit L1)
constexpr std::size_t KS32_BAND = ASCEND_MOE_KS32_BAND;      // output columns per pass (their rows stay in L2
                                                             // over the tokens)

ASCEND_MOE_VECTOR_CLONES void fma_ksplit_unit_fp32(const KSplit32 &p, std::size_t g, std::size_t m0, std::size_t m1) {
  const std::int64_t *grp = p.groups + 3 * g;
  const std::size_t s = static_cast<std::size_t>(grp[1]), t = static_cast<std::size_t>(grp[2]);
  float *o = p.out + static_cast<std::size_t>(grp[0]) * p.m * p.n + m0 * p.n;
  const std::size_t rows = m1 - m0, panels = (rows + PANEL - 1) / PANEL;
  if (s == t) {
    std::fill(o, o + rows * p.n, 0.0f);
    return;
  }
  std::vector<float> xp, yp, edge;
  Prefetcher none;
  for (std::size_t ks = s; ks < t; ks += KS32_TOKENS) {
    const std::size_t ksb = std::min(KS32_TOKENS, t - ks);
    // panel q: columns m0 + 8 q .. + 8 of each token, token after token (a last panel's missing columns unused)
    xp.resize(panels * ksb * PANEL);
    for (std::size_t k = 0; k < ksb; ++k) {
      const float *row = p.x + (ks + k) * p.m + m0;
      for (std::size_t q = 0; q < panels; ++q) {
        std::memcpy(&xp[(q * ksb + k) * PANEL], row + q * PANEL, std::min(PANEL, rows - q * PANEL) * sizeof(float));
      }
    }
    for (std::size_t b0 = 0; b0 < p.n; b0 += KS32_BAND) {
      const std::size_t width = std::min(KS32_BAND, p.n - b0), full = width / STRIP;
      const std::size_t strips = (width + STRIP - 1) / STRIP, tail = width - full * STRIP;
      for (std::size_t k0 = ks; k0 < ks + ksb; k0 += KS32_KC) {
        const std::size_t kc = std::min(KS32_KC, ks + ksb - k0);
        const bool fresh = k0 == s;
        // y's block as strips of 32 columns (a last partial strip zero-padded), as band copies a weight block
        const std::size_t pitch = (kc + 1) * STRIP;
        yp.resize(strips * pitch);
        copy_strips(p.y + k0 * p.n + b0, static_cast<std::ptrdiff_t>(p.n), kc, width, pitch, yp.data());
        // the panels from this block's first token on: panel q at a + q * ksb * 8
        const float *a = xp.data() + (k0 - ks) * PANEL;
        for (std::size_t q = 0; q < full; ++q) {
          row_tiles<Elem::fp32, true>(a, PANEL, ksb * PANEL, rows, &yp[q * pitch], kc, o + b0 + q * STRIP, p.n, none,
                                      fresh);
        }
        if (tail) {  // the partial strip's tiles in a 32-column buffer, its first `tail` columns the output's
          edge.resize(rows * STRIP);
          float *out_cols = o + b0 + full * STRIP;
          if (!fresh) {
            for (std::size_t r = 0; r < rows; ++r) {
              std::memcpy(&edge[r * STRIP], out_cols + r * p.n, tail * sizeof(float));
            }
          }
          row_tiles<Elem::fp32, true>(a, PANEL, ksb * PANEL, rows, &yp[full * pitch], kc, edge.data(), STRIP, none,
                                      fresh);
          for (std::size_t r = 0; r < rows; ++r) {
            std::memcpy(out_cols + r * p.n, &edge[r * STRIP], tail * sizeof(float));
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// dot_bf16: the same grouped product for bf16 by the AVX512-BF16 dot-product instruction (vdpbf16ps: each fp32
// lane adds two exact products of bf16 pairs), where the CPU has it.  That instruction treats subnormal inputs
// (the accumulator among them) as zero and flushes subnormal results, so it gives the IEEE result only when no
// product or partial sum can be subnormal: every nonzero bf16 value is a multiple of its quantum 2^(e - 134) (e
// its biased exponent), so every product and every partial sum is a multiple of q = quantum_min(a) *
// quantum_min(b), and when nonzero at least q; safe iff neither operand holds a subnormal and the smallest biased
// exponents add to at least 142 (q >= 2^-126).  The smallest magnitudes are taken while the operands are copied
// for the instruction (no separate pass): each weight block as it is copied, a group's rows once (copied with
// their k padded to whole vectors, or where K is a multiple of 32 scanned and then read in place).  From the first
// block that is not safe on, a group's columns go on one IEEE multiply-add per product in k order; the blocks
// before it were safe, so the partial sums they leave are multiples of quanta >= 2^-126: normal.
// ---------------------------------------------------------------------------------------------------------------
#if defined(__x86_64__)
#define ASCEND_MOE_DOT_BF16 1
#define ASCEND_MOE_DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

#ifndef ASCEND_MOE_DOT_KC
#define ASCEND_MOE_DOT_KC 256
#endif
#ifndef ASCEND_MOE_DOT_BAND
#define ASCEND_MOE_DOT_BAND 512
#endif
// Blocking.  A group of many rows is compute-bound: its weight is read in blocks of DOT_KC rows by DOT_BAND
// columns whose copy stays in L2 while every row of the group (up to DOT_ROWS at a time, so each weight block is
// read from memory once per DOT_ROWS rows) uses it; up to DOT_MID_ROWS rows, blocks of half that each way.  A
// group of a few rows is memory-bound: its weight is read in blocks of whole rows (DOT_KC_FEW rows, every
// column), a sequential stream.
constexpr std::size_t DOT_KC = ASCEND_MOE_DOT_KC;      // weight rows per block (even)
constexpr std::size_t DOT_BAND = ASCEND_MOE_DOT_BAND;  // output columns per pass
constexpr std::size_t DOT_ROWS = 1024;                 // rows accumulated at a time
constexpr std::size_t DOT_FEW_ROWS = 32;               // up to this many rows: whole weight rows per block
constexpr std::size_t DOT_KC_FEW = 64;
#ifndef ASCEND_MOE_DOT_MID_ROWS
#define ASCEND_MOE_DOT_MID_ROWS 256
#endif
constexpr std::size_t DOT_MID_ROWS = ASCEND_MOE_DOT_MID_ROWS;

// smallest (magnitude bits - 1) as unsigned 16-bit: zero maps to 0xFFFF, so the minimum finds the smallest nonzero
// magnitude; the biased exponent is (that + 1) >> 7, 0 meaning a subnormal
ASCEND_MOE_DOT_TARGET inline __m512i magnitude_minus_one(__m512i v) {
  return _mm512_sub_epi16(_mm512_and_si512(v, _mm512_set1_epi16(0x7fff)), _mm512_set1_epi16(1));
}

inline bool flush_safe(unsigned min_a, unsigned min_b) {
  if (min_a == 0xffffu || min_b == 0xffffu) return true;  // an all-zero operand: every product is zero
  const unsigned ea = (min_a + 1) >> 7, eb = (min_b + 1) >> 7;
  return ea > 0 && eb > 0 && ea + eb >= 142;
}

// The first min(n, 32) lanes of a 32-lane mask.
inline __mmask32 first_lanes(std::size_t n) { return n >= 32 ? ~__mmask32(0) : ((__mmask32(1) << n) - 1); }

ASCEND_MOE_DOT_TARGET inline unsigned horizontal_min_u16(__m512i v) {
  alignas(64) std::uint16_t lanes[32];
  _mm512_store_si512(reinterpret_cast<__m512i *>(lanes), v);
  unsigned m = 0xffffu;
  for (int i = 0; i < 32; ++i) m = std::min<unsigned>(m, lanes[i]);
  return m;
}

// n elements copied from src to dst (zeros after them up to `padded`), returning the smallest magnitude - 1
ASCEND_MOE_DOT_TARGET inline unsigned copy_row(const std::uint16_t *src, std::uint16_t *dst, std::size_t n,
                                               std::size_t padded) {
  __m512i minv = _mm512_set1_epi16(-1);
  for (std::size_t i = 0; i < padded; i += 32) {
    const __mmask32 m = first_lanes(n > i ? n - i : 0);
    const __m512i v = _mm512_maskz_loadu_epi16(m, src + i);
    minv = _mm512_min_epu16(minv, _mm512_mask_blend_epi16(m, _mm512_set1_epi16(-1), magnitude_minus_one(v)));
    _mm512_mask_storeu_epi16(dst + i, first_lanes(padded - i), v);
  }
  return horizontal_min_u16(minv);
}

// the smallest magnitude - 1 of n elements (n a multiple of 32), as copy_row takes it
ASCEND_MOE_DOT_TARGET inline unsigned min_magnitude_row(const std::uint16_t *src, std::size_t n) {
  __m512i minv = _mm512_set1_epi16(-1);
  for (std::size_t i = 0; i < n; i += 32) {
    minv = _mm512_min_epu16(minv, magnitude_minus_one(_mm512_loadu_si512(src + i)));
  }
  return horizontal_min_u16(minv);
}

// In place: v[q] becomes the q-th 32-bit word of each of v[0..15] (a 16 x 16 transpose of 32-bit words).
ASCEND_MOE_DOT_TARGET inline void transpose16x16_u32(__m512i *v) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_i32x4(u[8 * h + i], u[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_i32x4(u[8 * h + i], u[8 * h + 4 + i], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
    v[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
  }
}

// The first min(n, 16) lanes of a 16-lane mask.
inline __mmask16 first_lanes16(std::size_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// out + offset, or null where out is (the dot tiles' optional output)
inline std::uint16_t *offset_or_null(std::uint16_t *out, std::size_t offset) {
  return out == nullptr ? nullptr : out + offset;
}

// acc[r][0:32 S] += pairs of a[r][2q, 2q+1] times packed pairs of weight rows (2q, 2q+1) of S strips (`pitch`
// elements apart), for R rows: 2 R S accumulators, each broadcast pair of a used 2 S times.
// Row r's pair q is the 32-bit word at a + r * lda + q * pair_step (pair_step 2: rows of a as they are; 64: rows
// that are the columns of a strip copied by pack_pairs, the K-split product's x^T).  With from_zero the
// accumulators start at zero instead of acc's values (a band's first block: acc needs no zero fill); with `out` (the
// last block) the sums go rounded to bf16 straight into the output instead of acc (no fp32 store and reload, no
// separate rounding pass).  The tile's shape does not change any output's sequence of adds (its pairs in q order).
template <int R, int S>
ASCEND_MOE_DOT_TARGET inline void dot_pair_tile(const std::uint16_t *a, std::size_t lda, std::size_t pair_step,
                                                const std::uint16_t *bp, std::size_t pitch, std::size_t pairs,
                                                float *acc, std::size_t ldacc, bool from_zero, Prefetcher &next,
                                                std::uint16_t *out, std::size_t ldo, std::size_t cols) {
  __m512 c[R][2 * S];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 2 * S; ++v) c[r][v] = from_zero ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + r * ldacc + 16 * v);
  }
  for (std::size_t q = 0; q < pairs; ++q) {
    next.step();
    __m512bh b[2 * S];
#pragma GCC unroll 4
    for (int v = 0; v < 2 * S; ++v) b[v] = (__m512bh)_mm512_loadu_si512(bp + (v / 2) * pitch + q * 64 + (v % 2) * 32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      std::uint32_t pair;
      std::memcpy(&pair, a + r * lda + q * pair_step, sizeof pair);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 4
      for (int v = 0; v < 2 * S; ++v) c[r][v] = _mm512_dpbf16_ps(c[r][v], av, b[v]);
    }
  }
  if (out != nullptr) {  // the product's last block: the sums rounded to bf16 into the output's first `cols` columns
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < 2 * S; ++v) {
        const std::size_t c0 = 16 * static_cast<std::size_t>(v);
        if (c0 < cols) {
          // narrow16_bf16: narrow_n's rounding (not vcvtneps2bf16, which treats subnormal inputs as zero)
          _mm512_mask_cvtepi32_storeu_epi16(out + r * ldo + c0, first_lanes16(cols - c0),
                                            (__m512i)narrow16_bf16((v16f)c[r][v]));
        }
      }
    }
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 2 * S; ++v) _mm512_storeu_ps(acc + r * ldacc + 16 * v, c[r][v]);
  }
}

// Tiles of R rows (6 over two strips, 8 over one; then 4, 2, 1) over S strips: acc[r][0:32 S] += the strips' pairs
// (or, with `out`, the sums rounded into it: see dot_pair_tile).
template <int S>
ASCEND_MOE_DOT_TARGET inline void dot_pair_rows(const std::uint16_t *a, std::size_t lda, std::size_t pair_step,
                                                std::size_t rows, const std::uint16_t *bp, std::size_t pitch,
                                                std::size_t pairs, float *acc, std::size_t ldacc, bool from_zero,
                                                Prefetcher &next, std::uint16_t *out = nullptr, std::size_t ldo = 0,
                                                std::size_t cols = 0) {
  constexpr int TOP = S == 2 ? 6 : 8;
  std::size_t r = 0;
  for (; r + TOP <= rows; r += TOP) {
    dot_pair_tile<TOP, S>(a + r * lda, lda, pair_step, bp, pitch, pairs, acc + r * ldacc, ldacc, from_zero, next,
                          offset_or_null(out, r * ldo), ldo, cols);
  }
  if (r + 4 <= rows) {
    dot_pair_tile<4, S>(a + r * lda, lda, pair_step, bp, pitch, pairs, acc + r * ldacc, ldacc, from_zero, next,
                        offset_or_null(out, r * ldo), ldo, cols);
    r += 4;
  }
  if (r + 2 <= rows) {
    dot_pair_tile<2, S>(a + r * lda, lda, pair_step, bp, pitch, pairs, acc + r * ldacc, ldacc, from_zero, next,
                        offset_or_null(out, r * ldo), ldo, cols);
    r += 2;
  }
  if (r < rows) {
    dot_pair_tile<1, S>(a + r * lda, lda, pair_step, bp, pitch, pairs, acc + r * ldacc, ldacc, from_zero, next,
                        offset_or_null(out, r * ldo), ldo, cols);
  }
}

// dot_pair_rows over `strips` strips of a packed block, two at a time (`out`, if not null: `cols` columns in all).
ASCEND_MOE_DOT_TARGET inline void dot_pair_strips(const std::uint16_t *a, std::size_t lda, std::size_t pair_step,
                                                  std::size_t rows, const std::uint16_t *packed, std::size_t strips,
                                                  std::size_t pitch, std::size_t pairs, float *acc, std::size_t ldacc,
                                                  bool from_zero, Prefetcher &next, std::uint16_t *out,
                                                  std::size_t ldo, std::size_t cols) {
  std::size_t j = 0;
  for (; j + 2 <= strips; j += 2) {
    dot_pair_rows<2>(a, lda, pair_step, rows, packed + j * pitch, pitch, pairs, acc + j * STRIP, ldacc, from_zero, next,
                     offset_or_null(out, j * STRIP), ldo, cols - j * STRIP);
  }
  if (j < strips) {
    dot_pair_rows<1>(a, lda, pair_step, rows, packed + j * pitch, pitch, pairs, acc + j * STRIP, ldacc, from_zero, next,
                     offset_or_null(out, j * STRIP), ldo, cols - j * STRIP);
  }
}

// A weight block of kc rows (k) by `width` columns (n), columns contiguous (element (k, n) at b[k * ldb + n]),
// copied into `strips` strips of 32 columns, `pitch` elements apart, each strip's (k, k + 1) rows interleaved
// into pairs (the last pair and the last strip zero-padded).  Returns the block's smallest magnitude - 1.
ASCEND_MOE_DOT_TARGET inline unsigned pack_pairs(const std::uint16_t *b, std::ptrdiff_t ldb, std::size_t kc,
                                                 std::size_t width, std::size_t strips, std::size_t pitch,
                                                 std::uint16_t *packed) {
  // index vectors interleaving two weight rows' 32 columns into (row k, row k + 1) pairs: columns 0-15, 16-31
  alignas(64) std::uint16_t lo_idx[32], hi_idx[32];
  for (int i = 0; i < 16; ++i) {
    lo_idx[2 * i] = static_cast<std::uint16_t>(i);
    lo_idx[2 * i + 1] = static_cast<std::uint16_t>(32 + i);
    hi_idx[2 * i] = static_cast<std::uint16_t>(16 + i);
    hi_idx[2 * i + 1] = static_cast<std::uint16_t>(48 + i);
  }
  const __m512i lo = _mm512_load_si512(reinterpret_cast<const __m512i *>(lo_idx));
  const __m512i hi = _mm512_load_si512(reinterpret_cast<const __m512i *>(hi_idx));
  __m512i minv = _mm512_set1_epi16(-1);
  for (std::size_t q = 0; q < (kc + 1) / 2; ++q) {
    const std::uint16_t *r0 = b + static_cast<std::ptrdiff_t>(2 * q) * ldb;
    const std::uint16_t *r1 = r0 + ldb;
    const bool second = 2 * q + 1 < kc;
    for (std::size_t j = 0; j < strips; ++j) {
      const __mmask32 m = first_lanes(width - j * STRIP);
      const __m512i v0 = _mm512_maskz_loadu_epi16(m, r0 + j * STRIP);
      const __m512i v1 = second ? _mm512_maskz_loadu_epi16(m, r1 + j * STRIP) : _mm512_setzero_si512();
      // zeros (padding included) map to 0xFFFF: they never lower the minimum
      minv = _mm512_min_epu16(minv, _mm512_min_epu16(magnitude_minus_one(v0), magnitude_minus_one(v1)));
      std::uint16_t *dst = packed + j * pitch + q * 64;
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(v0, lo, v1));
      _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(v0, hi, v1));
    }
  }
  return horizontal_min_u16(minv);
}

// The same copy of a transposed weight block (k contiguous: element (k, n) at bt[n * ldbt + k]): each column's
// (k, k + 1) pair is one 32-bit word of its weight row, so 16 weight rows' 16 pairs are a 16 x 16 transpose of
// 32-bit words.
ASCEND_MOE_DOT_TARGET inline unsigned pack_pairs_transposed(const std::uint16_t *bt, std::ptrdiff_t ldbt,
                                                            std::size_t kc, std::size_t width, std::size_t strips,
                                                            std::size_t pitch, std::uint16_t *packed) {
  __m512i minv = _mm512_set1_epi16(-1);
  for (std::size_t j = 0; j < strips; ++j) {
    const std::size_t cols = std::min(STRIP, width - j * STRIP);
    for (std::size_t k = 0; k < kc; k += 32) {
      const __mmask32 m = first_lanes(kc - k);
      const std::size_t npairs = std::min<std::size_t>(16, (kc - k + 1) / 2);
      for (std::size_t half = 0; half < 2; ++half) {
        __m512i rows16[16];
        for (std::size_t c = 0; c < 16; ++c) {
          const std::size_t col = half * 16 + c;
          rows16[c] = _mm512_setzero_si512();  // columns past the block: zero pairs
          if (col < cols) {
            rows16[c] = _mm512_maskz_loadu_epi16(m, bt + static_cast<std::ptrdiff_t>(j * STRIP + col) * ldbt + k);
          }
          minv = _mm512_min_epu16(minv, magnitude_minus_one(rows16[c]));
        }
        transpose16x16_u32(rows16);
        std::uint16_t *dst = packed + j * pitch + (k / 2) * 64 + half * 32;
        for (std::size_t q = 0; q < npairs; ++q) _mm512_storeu_si512(dst + q * 64, rows16[q]);
      }
    }
  }
  return horizontal_min_u16(minv);
}

// A few rows against a transposed weight (k contiguous), the memory-bound backward dy @ w^T: each output is a
// dot product of a row of a and a weight row, both contiguous, so no copy of the weight is made.  out[r][j] for R
// rows and C weight rows: 16 lanes of pairs in k order, added by _mm512_reduce_add_ps.  With MIN, the weight
// rows' smallest magnitude - 1 is taken on the way (the first row block reads them from memory) and the next C
// weight rows are prefetched.
template <int R, int C, bool MIN>
ASCEND_MOE_DOT_TARGET inline void dot_nt_tile(const std::uint16_t *a, std::size_t lda, const std::uint16_t *w,
                                              std::ptrdiff_t ldw, std::size_t k, std::uint16_t *out,
                                              std::size_t ldo, __m512i &minv) {
  __m512 c[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) c[r][j] = _mm512_setzero_ps();
  }
  __m512i mv = minv;
  for (std::size_t k0 = 0; k0 < k; k0 += 32) {
    const __mmask32 m = first_lanes(k - k0);
    __m512i wv[C];
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) {
      wv[j] = _mm512_maskz_loadu_epi16(m, w + j * ldw + k0);
      if constexpr (MIN) {
        mv = _mm512_min_epu16(mv, magnitude_minus_one(wv[j]));
        __builtin_prefetch(w + (C + j) * ldw + k0, 0, 2);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512bh av = (__m512bh)_mm512_loadu_si512(a + r * lda + k0);  // rows padded with zeros to 32
#pragma GCC unroll 4
      for (int j = 0; j < C; ++j) c[r][j] = _mm512_dpbf16_ps(c[r][j], av, (__m512bh)wv[j]);
    }
  }
  minv = mv;
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) out[r * ldo + j] = narrow1<false>(_mm512_reduce_add_ps(c[r][j]));
  }
}

template <int C>
ASCEND_MOE_DOT_TARGET inline unsigned dot_nt_rows(const std::uint16_t *a, std::size_t lda, std::size_t rows,
                                                  const std::uint16_t *w, std::ptrdiff_t ldw, std::size_t k,
                                                  std::uint16_t *out, std::size_t ldo) {
  __m512i minv = _mm512_set1_epi16(-1);
  std::size_t r = 0;
  // the first row block reads the weight rows from memory and takes their smallest magnitude
  if (rows >= 4) {
    dot_nt_tile<4, C, true>(a, lda, w, ldw, k, out, ldo, minv);
    r = 4;
  } else if (rows >= 2) {
    dot_nt_tile<2, C, true>(a, lda, w, ldw, k, out, ldo, minv);
    r = 2;
  } else {
    dot_nt_tile<1, C, true>(a, lda, w, ldw, k, out, ldo, minv);
    r = 1;
  }
  for (; r + 4 <= rows; r += 4) dot_nt_tile<4, C, false>(a + r * lda, lda, w, ldw, k, out + r * ldo, ldo, minv);
  if (r + 2 <= rows) {
    dot_nt_tile<2, C, false>(a + r * lda, lda, w, ldw, k, out + r * ldo, ldo, minv);
    r += 2;
  }
  if (r < rows) dot_nt_tile<1, C, false>(a + r * lda, lda, w, ldw, k, out + r * ldo, ldo, minv);
  return horizontal_min_u16(minv);
}

// Columns [c0, c1) of rows [s, s + rows) for a transposed weight, 4 weight rows at a time, computed by the
// instruction first; where it could have flushed (known once the 4 rows were read), those 4 columns are computed
// again in the widen-FMA order (IEEE) from `a32` (widened on first need) and overwritten.
ASCEND_MOE_DOT_TARGET void dot_nt_few(const Problem &p, const std::uint16_t *be, std::size_t s, std::size_t rows,
                                      const std::uint16_t *apad, std::size_t kpad, unsigned min_a, std::size_t c0,
                                      std::size_t c1, std::vector<float> &a32) {
  std::uint16_t *o = p.out + s * p.n;
  for (std::size_t j = c0; j < c1; j += 4) {
    const std::size_t cols = std::min<std::size_t>(4, c1 - j);
    const std::uint16_t *w = be + static_cast<std::ptrdiff_t>(j) * p.b_row;
    unsigned min_w = 0xffffu;
    if (cols == 4) {
      min_w = dot_nt_rows<4>(apad, kpad, rows, w, p.b_row, p.k, o + j, p.n);
    } else {
      for (std::size_t c = 0; c < cols; ++c) {
        min_w = std::min(min_w, dot_nt_rows<1>(apad, kpad, rows, w + c * p.b_row, p.b_row, p.k, o + j + c, p.n));
      }
    }
    if (flush_safe(min_a, min_w)) continue;
    if (a32.empty()) {
      a32.resize(rows * p.k);
      widen_n<false>(p.a + s * p.k, a32.data(), rows * p.k);
    }
    for (std::size_t c = 0; c < cols; ++c) {
      for (std::size_t r = 0; r < rows; ++r) {
        dot_tile<1, 1, Elem::bf16>(&a32[r * p.k], p.k, w + c * p.b_row, p.b_row, p.k, o + r * p.n + j + c, p.n);
      }
    }
  }
}

// acc[r][j] += a(r, k) * b(k, j) over k in [0, kc) for `rows` x `width` outputs, one IEEE multiply-add per product
// in k order (a block the dot-product instruction could have flushed); a and b give an element's bf16 bits.  acc
// is zeroed first when it holds nothing yet (acc_set false), and holds the sums after.
template <typename A, typename B>
void ieee_block(std::vector<float> &acc, bool &acc_set, std::size_t wpad, std::size_t rows, std::size_t width,
                std::size_t kc, A a, B b) {
  if (!acc_set) std::fill(acc.begin(), acc.end(), 0.0f);
  acc_set = true;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t j = 0; j < width; ++j) {
      float c = acc[r * wpad + j];
      for (std::size_t k = 0; k < kc; ++k) c += widen1<false>(a(r, k)) * widen1<false>(b(k, j));
      acc[r * wpad + j] = c;
    }
  }
}

// Output columns [c0, c1) of groups [g0, g1) (weight columns contiguous).
ASCEND_MOE_DOT_TARGET void dot_band(const Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                    std::size_t c1) {
  const std::size_t kpad = (p.k + 31) / 32 * 32;  // rows of a padded with zeros to whole pairs (and vectors)
  // every element read is written first in each use (no zeros assumed from a fresh buffer)
  thread_local std::vector<std::uint16_t> apad, packed;
  thread_local std::vector<float> acc, a32;
  const ScratchRelease<std::vector<std::uint16_t>, std::vector<std::uint16_t>, std::vector<float>,
                       std::vector<float>> release(apad, packed, acc, a32);
  for (RowChunks chunk(p, g0, g1, DOT_ROWS); chunk.next();) {
    const std::uint16_t *be = chunk.weight;
    const std::size_t s = chunk.first, rows = chunk.rows;
    const std::int64_t *grp = p.groups + 3 * chunk.group;
    unsigned min_a = 0xffffu;
    const std::uint16_t *arows = p.a + s * p.k;
    if (kpad == p.k) {  // rows of whole vectors: read in place, only their smallest magnitude taken
      for (std::size_t r = 0; r < rows; ++r) min_a = std::min(min_a, min_magnitude_row(arows + r * p.k, p.k));
    } else {
      apad.resize(rows * kpad);
      for (std::size_t r = 0; r < rows; ++r) {
        min_a = std::min(min_a, copy_row(arows + r * p.k, &apad[r * kpad], p.k, kpad));
      }
      arows = apad.data();
    }
    const bool few = rows <= DOT_FEW_ROWS;
    if (few && p.k_contiguous) {
      a32.clear();
      dot_nt_few(p, be, s, rows, arows, kpad, min_a, c0, c1, a32);
      continue;
    }
    // up to DOT_MID_ROWS rows, half-size blocks: the group's rows of a, the accumulators, a block's copy and the
    // next block being fetched then fit in L2 together
    const bool mid = !few && rows <= DOT_MID_ROWS;
    const std::size_t band = few ? c1 - c0 : (mid ? DOT_BAND / 2 : DOT_BAND);
    const std::size_t block_rows = few ? DOT_KC_FEW : (mid ? DOT_KC / 2 : DOT_KC);
    for (std::size_t b0 = c0; b0 < c1; b0 += band) {
      const std::size_t width = std::min(band, c1 - b0);
      const std::size_t strips = (width + STRIP - 1) / STRIP;  // the last one zero-padded
      const std::size_t wpad = strips * STRIP + 16;            // rows of acc not 2^n floats apart
      acc.resize(rows * wpad);
      bool acc_set = false;  // acc holds the sums so far (until the first block, nothing: no zero fill)
      bool ieee_from_here = false;
      bool written = false;  // the last block wrote the output itself
      for (std::size_t k0 = 0; k0 < p.k; k0 += block_rows) {
        const std::size_t kc = std::min(block_rows, p.k - k0);
        // element (k, n) of the block at bk[k * k_step + n * n_step]
        const std::ptrdiff_t k_step = p.k_contiguous ? 1 : p.b_row, n_step = p.k_contiguous ? p.b_row : 1;
        const std::uint16_t *bk =
            be + static_cast<std::ptrdiff_t>(k0) * k_step + static_cast<std::ptrdiff_t>(b0) * n_step;
        if (!ieee_from_here) {
          const std::size_t pairs = (kc + 1) / 2;
          const std::size_t pitch = (pairs + 1) * 64;  // one extra pair: strips do not share cache sets
          packed.resize(strips * pitch);
          const unsigned min_b = p.k_contiguous
                                     ? pack_pairs_transposed(bk, p.b_row, kc, width, strips, pitch, packed.data())
                                     : pack_pairs(bk, p.b_row, kc, width, strips, pitch, packed.data());
          if (flush_safe(min_a, min_b)) {
            // the next block streams in from memory while this one is multiplied: the next one of this band, else
            // the first of the next band, else the first of the next rows' (this group's next rows, else the next
            // group's), with those rows of a
            Prefetcher next;
            auto add_block = [&](const std::uint16_t *expert, std::size_t kb0, std::size_t kbc, std::size_t nb0,
                                 std::size_t nbw) {
              const std::uint16_t *start = expert + static_cast<std::ptrdiff_t>(kb0) * k_step +
                                           static_cast<std::ptrdiff_t>(nb0) * n_step;
              if (p.k_contiguous) {
                next.add(start, p.b_row, kbc, nbw);  // each column's weight row, kbc elements of it
              } else {
                next.add(start, p.b_row, nbw, kbc);
              }
            };
            if (k0 + kc < p.k) {
              add_block(be, k0 + kc, std::min(block_rows, p.k - k0 - kc), b0, width);
            } else if (b0 + band < c1) {
              add_block(be, 0, std::min(block_rows, p.k), b0 + band, std::min(band, c1 - b0 - band));
            } else {
              const std::size_t end = static_cast<std::size_t>(grp[2]);
              const std::int64_t *ngrp = s + rows < end ? grp : (chunk.group + 1 < g1 ? grp + 3 : nullptr);
              if (ngrp != nullptr) {
                const std::size_t ns = s + rows < end ? s + rows : static_cast<std::size_t>(ngrp[1]);
                const std::size_t nrows = std::min<std::size_t>(DOT_ROWS, static_cast<std::size_t>(ngrp[2]) - ns);
                add_block(p.b + ngrp[0] * p.b_expert, 0, std::min(block_rows, p.k), c0, std::min(band, c1 - c0));
                next.add(p.a + ns * p.k, static_cast<std::ptrdiff_t>(p.k), p.k, nrows);
              }
            }
            const bool last = k0 + kc >= p.k;  // then straight into the output, rounded
            dot_pair_strips(arows + k0, kpad, 2, rows, packed.data(), strips, pitch, pairs, acc.data(), wpad, !acc_set,
                            next, last ? p.out + s * p.n + b0 : nullptr, p.n, width);
            acc_set = true;
            written = last;
            continue;
          }
          ieee_from_here = true;
        }
        // not flush-safe: this block and the rest one IEEE multiply-add per product in k order
        const std::uint16_t *ak = p.a + s * p.k + k0;
        ieee_block(acc, acc_set, wpad, rows, width, kc, [&](std::size_t r, std::size_t k) { return ak[r * p.k + k]; },
                   [&](std::size_t k, std::size_t j) {
                     return bk[static_cast<std::ptrdiff_t>(k) * k_step + static_cast<std::ptrdiff_t>(j) * n_step];
                   });
      }
      if (written) continue;
      if (!acc_set) std::fill(acc.begin(), acc.end(), 0.0f);  // K = 0: zeros
      for (std::size_t r = 0; r < rows; ++r) {
        std::uint16_t *o = p.out + (s + r) * p.n + b0;
        narrow_n<false>(&acc[r * wpad], o, width);
      }
    }
  }
}

// The K-split product (the backward's weight gradient): out[e] = x[s:t]^T @ y[s:t] for each group (e, s, t), x
// [T, M] and y [T, N] C-contiguous, out [E, M, N].  The reduction runs over a group's rows (tokens), so both
// operands' (k, k + 1) pairs are two consecutive rows interleaved: pack_pairs copies blocks of both, and the
// columns of x's copy are the rows of the tile (pair_step 64).  The same guard as dot_band per block of KS_KC
// tokens, each (rows, band) tile going on in the IEEE order from the first block that could flush.
struct KSplitProblem {
  const std::uint16_t *x;  // [T, M]
  const std::uint16_t *y;  // [T, N]
  std::uint16_t *out;      // [E, M, N]
  std::size_t m, n;
  const std::int64_t *groups;  // rows of (output index, first token, end token)
};
constexpr std::size_t KS_ROWS = 256;  // output rows (columns of x) per unit of work
constexpr std::size_t KS_BAND = 256;  // output columns per pass
constexpr std::size_t KS_KC = 256;    // tokens per block

ASCEND_MOE_DOT_TARGET void dot_ksplit_unit(const KSplitProblem &p, std::size_t g, std::size_t m0, std::size_t m1) {
  const std::int64_t *grp = p.groups + 3 * g;
  const std::size_t s = static_cast<std::size_t>(grp[1]), t = static_cast<std::size_t>(grp[2]);
  std::uint16_t *o = p.out + static_cast<std::size_t>(grp[0]) * p.m * p.n;
  const std::size_t rows = m1 - m0, row_strips = (rows + STRIP - 1) / STRIP;
  std::vector<std::uint16_t> packed_x, packed_y;
  std::vector<float> acc;
  Prefetcher none;
  for (std::size_t b0 = 0; b0 < p.n; b0 += KS_BAND) {
    const std::size_t width = std::min(KS_BAND, p.n - b0), strips = (width + STRIP - 1) / STRIP;
    const std::size_t wpad = strips * STRIP + 16;  // rows of acc not 2^n floats apart
    acc.resize(rows * wpad);
    bool acc_set = false;  // as in dot_band
    bool ieee_from_here = false;
    bool written = false;
    for (std::size_t k0 = s; k0 < t; k0 += KS_KC) {
      const std::size_t kc = std::min(KS_KC, t - k0);
      const std::uint16_t *xk = p.x + k0 * p.m + m0, *yk = p.y + k0 * p.n + b0;
      if (!ieee_from_here) {
        const std::size_t pairs = (kc + 1) / 2, pitch = (pairs + 1) * 64;
        packed_x.resize(row_strips * pitch);
        packed_y.resize(strips * pitch);
        const unsigned min_x = pack_pairs(xk, static_cast<std::ptrdiff_t>(p.m), kc, rows, row_strips, pitch,
                                          packed_x.data());
        const unsigned min_y = pack_pairs(yk, static_cast<std::ptrdiff_t>(p.n), kc, width, strips, pitch,
                                          packed_y.data());
        if (flush_safe(min_x, min_y)) {
          // one strip at a time: a tile's rows are 32 columns of x, which 8-row tiles divide (6-row tiles over two
          // strips, as dot_band's, were 3-5 % slower here); the last block's tiles round into the output
          const bool last = k0 + kc >= t;
          for (std::size_t j = 0; j < strips; ++j) {
            for (std::size_t i = 0; i < row_strips; ++i) {
              dot_pair_rows<1>(&packed_x[i * pitch], 2, 64, std::min(STRIP, rows - i * STRIP), &packed_y[j * pitch],
                               pitch, pairs, acc.data() + i * STRIP * wpad + j * STRIP, wpad, !acc_set, none,
                               last ? o + (m0 + i * STRIP) * p.n + b0 + j * STRIP : nullptr, p.n,
                               std::min(STRIP, width - j * STRIP));
            }
          }
          acc_set = true;
          written = last;
          continue;
        }
        ieee_from_here = true;
      }
      // not flush-safe: this block and the rest one IEEE multiply-add per product in token order
      ieee_block(acc, acc_set, wpad, rows, width, kc, [&](std::size_t r, std::size_t k) { return xk[k * p.m + r]; },
                 [&](std::size_t k, std::size_t j) { return yk[k * p.n + j]; });
    }
    if (written) continue;
    if (!acc_set) std::fill(acc.begin(), acc.end(), 0.0f);  // a group of no tokens: zeros
    for (std::size_t r = 0; r < rows; ++r) narrow_n<false>(&acc[r * wpad], o + (m0 + r) * p.n + b0, width);
  }
}
#endif


// ---------------------------------------------------------------------------------------------------------------
// dot_int8: the exact int8 GEMM with AVX512-VNNI (vpdpbusd: 16 lanes, each adding four u8 x s8 products to an int32,
// wrapping), reading the weight in 32-column bands: element (k, n) of expert e at
// b[e * b_expert + (n / 32) * b_band + k * b_row + n % 32].  That is FRACTAL_NZ int8 storage [E, N/32, K/16, 16, 32]
// as it is (b_band = K * 32, b_row = 32: each band's K rows of 32 bytes contiguous), or an ND [E, K, N] weight
// (b_band = 32, b_row = N), so an NZ weight needs no logical copy (nor a kept one, nor a digest of it).
// The instruction takes one operand unsigned: the weight's bytes are copied with their sign bit flipped (w + 128 as
// u8) and x stays signed, so each lane sums (w + 128) * x; the result less 128 * (x's row sum) is the exact product
// modulo 2^32, i.e. the int32 the device's int32 accumulation gives (every step wraps the same way).
// ---------------------------------------------------------------------------------------------------------------
#if defined(__x86_64__)
#define ASCEND_MOE_DOT_INT8 1
#define ASCEND_MOE_I8_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))

struct Int8Problem {
  const std::int8_t *a;   // [T, K] C-contiguous
  const std::int8_t *b;   // the banded weight (above)
  std::ptrdiff_t b_expert, b_band, b_row;  // bytes
  std::int32_t *out;      // [T, N] C-contiguous
  std::size_t k, n;
  const std::int64_t *groups;  // rows of (expert, first row, end row)
  std::size_t n_groups;
  // the finalize-routing epilogue instead of `out` where y is set: y[index[t], j] += (fp32(acc[t, j]) *
  // col[expert, j]) * row[t], each y element's adds in row order (a thread owns its columns for every group)
  float *y = nullptr;            // [batch, N]
  const std::int64_t *index = nullptr;  // [T]
  const float *col = nullptr;    // [E, N]
  const float *row = nullptr;    // [T]
};
constexpr std::size_t I8_KC = 512;        // weight rows per block (a block's copy, 512 x 512 bytes, stays in L2)
constexpr std::size_t I8_BAND = 512;      // output columns per pass
constexpr std::size_t I8_ROWS = 512;      // rows accumulated at a time
constexpr std::size_t I8_MID_ROWS = 256;  // up to this many rows: bands of half that (the rows and a block fit in L2)

// acc[r][0:32 S] (+)= the quads of S strips (`pitch` bytes apart) times rows r of a (int8, quad q at
// a + r * lda + 4 q), R rows: 2 R S accumulators, each broadcast quad of a used 2 S times.
template <int R, int S>
ASCEND_MOE_I8_TARGET inline void int8_quad_tile(const std::int8_t *a, std::size_t lda, const std::uint8_t *bp,
                                                std::size_t pitch, std::size_t quads, std::int32_t *acc,
                                                std::size_t ldacc, bool from_zero, Prefetcher &next) {
  __m512i c[R][2 * S];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 2 * S; ++v) {
      c[r][v] = from_zero ? _mm512_setzero_si512() : _mm512_loadu_si512(acc + r * ldacc + 16 * v);
    }
  }
  for (std::size_t q = 0; q < quads; ++q) {
    next.step();
    __m512i b[2 * S];
#pragma GCC unroll 4
    for (int v = 0; v < 2 * S; ++v) b[v] = _mm512_loadu_si512(bp + (v / 2) * pitch + q * 128 + (v % 2) * 64);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      std::int32_t quad;
      std::memcpy(&quad, a + r * lda + 4 * q, sizeof quad);
      const __m512i av = _mm512_set1_epi32(quad);
#pragma GCC unroll 4
      for (int v = 0; v < 2 * S; ++v) c[r][v] = _mm512_dpbusd_epi32(c[r][v], b[v], av);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 2 * S; ++v) _mm512_storeu_si512(acc + r * ldacc + 16 * v, c[r][v]);
  }
}

// Tiles of R rows (then fewer) over S strips (S = 2: two strips at once, 6-row tiles; S = 1: 8-row tiles).
template <int S>
ASCEND_MOE_I8_TARGET inline void int8_quad_rows(const std::int8_t *a, std::size_t lda, std::size_t rows,
                                                const std::uint8_t *bp, std::size_t pitch, std::size_t quads,
                                                std::int32_t *acc, std::size_t ldacc, bool from_zero,
                                                Prefetcher &next) {
  constexpr int TOP = S == 2 ? 6 : 8;
  std::size_t r = 0;
  for (; r + TOP <= rows; r += TOP) {
    int8_quad_tile<TOP, S>(a + r * lda, lda, bp, pitch, quads, acc + r * ldacc, ldacc, from_zero, next);
  }
  if (r + 4 <= rows) {
    int8_quad_tile<4, S>(a + r * lda, lda, bp, pitch, quads, acc + r * ldacc, ldacc, from_zero, next);
    r += 4;
  }
  if (r + 2 <= rows) {
    int8_quad_tile<2, S>(a + r * lda, lda, bp, pitch, quads, acc + r * ldacc, ldacc, from_zero, next);
    r += 2;
  }
  if (r < rows) int8_quad_tile<1, S>(a + r * lda, lda, bp, pitch, quads, acc + r * ldacc, ldacc, from_zero, next);
}

// Weight rows [k0, k0 + kc) of `strips` bands (band j's row k at bk + j * b_band + k * b_row, 32 bytes) copied into
// strips `pitch` bytes apart: quad q of a strip is two vectors, columns 0-15 then 16-31, each column's bytes
// (k0 + 4q .. k0 + 4q + 3) + 128 (rows past kc: 0x80, i.e. 0 - they meet x's zero padding anyway).
ASCEND_MOE_I8_TARGET inline void pack_quads(const std::int8_t *bk, std::ptrdiff_t b_band, std::ptrdiff_t b_row,
                                            std::size_t kc, std::size_t strips, std::size_t pitch,
                                            std::uint8_t *packed) {
  // byte c of rows 0-3 (z01 = rows 0 | 1, z23 = rows 2 | 3) to lanes 4c .. 4c + 3: columns 0-15, then 16-31
  alignas(64) std::uint8_t lo_idx[64], hi_idx[64];
  for (int c = 0; c < 16; ++c) {
    for (int r = 0; r < 4; ++r) {
      lo_idx[4 * c + r] = static_cast<std::uint8_t>(32 * r + c);
      hi_idx[4 * c + r] = static_cast<std::uint8_t>(32 * r + 16 + c);
    }
  }
  const __m512i lo = _mm512_load_si512(reinterpret_cast<const __m512i *>(lo_idx));
  const __m512i hi = _mm512_load_si512(reinterpret_cast<const __m512i *>(hi_idx));
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const std::size_t quads = (kc + 3) / 4;
  for (std::size_t j = 0; j < strips; ++j) {
    const std::int8_t *band = bk + static_cast<std::ptrdiff_t>(j) * b_band;
    std::uint8_t *dst = packed + j * pitch;
    for (std::size_t q = 0; q < quads; ++q) {
      __m256i rows4[4];
      for (std::size_t r = 0; r < 4; ++r) {
        const std::size_t k = 4 * q + r;
        rows4[r] = k < kc ? _mm256_loadu_si256(reinterpret_cast<const __m256i *>(band + static_cast<std::ptrdiff_t>(k) * b_row))
                          : _mm256_setzero_si256();
      }
      const __m512i z01 = _mm512_inserti64x4(_mm512_castsi256_si512(rows4[0]), rows4[1], 1);
      const __m512i z23 = _mm512_inserti64x4(_mm512_castsi256_si512(rows4[2]), rows4[3], 1);
      _mm512_storeu_si512(dst + q * 128, _mm512_xor_si512(_mm512_permutex2var_epi8(z01, lo, z23), flip));
      _mm512_storeu_si512(dst + q * 128 + 64, _mm512_xor_si512(_mm512_permutex2var_epi8(z01, hi, z23), flip));
    }
  }
}

// 128 * (the sum of a row's n int8 values) modulo 2^32, the weight's +128 to take back: the row's quads summed by
// vpdpbusd against bytes of 1 (exact: |sum| <= 128 n, below 2^31 for n < 2^24).
ASCEND_MOE_I8_TARGET inline std::int32_t times_128_row_sum(const std::int8_t *row, std::size_t n) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i sum = _mm512_setzero_si512();
  for (std::size_t i = 0; i < n; i += 64) {
    const __mmask64 m = n - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - i)) - 1;
    sum = _mm512_dpbusd_epi32(sum, ones, _mm512_maskz_loadu_epi8(m, row + i));
  }
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(_mm512_reduce_add_epi32(sum)) * 128u);
}

// Output columns [c0, c1) (multiples of 32, or c1 = n) of groups [g0, g1).
ASCEND_MOE_I8_TARGET void int8_band(const Int8Problem &p, std::size_t g0, std::size_t g1, std::size_t c0,
                                    std::size_t c1) {
  const std::size_t kpad = (p.k + 63) / 64 * 64;  // padded rows of a (K not a multiple of 4): whole lines
  std::vector<std::int8_t> apad;
  std::vector<std::uint8_t> packed;
  std::vector<std::int32_t> acc, shift;
  for (std::size_t gi = g0; gi < g1; ++gi) {
    const std::int64_t *grp = p.groups + 3 * gi;
    const std::int8_t *be = p.b + grp[0] * p.b_expert;
    const std::size_t end = static_cast<std::size_t>(grp[2]);
    for (std::size_t s = static_cast<std::size_t>(grp[1]); s < end; s += I8_ROWS) {
      const std::size_t rows = std::min(I8_ROWS, end - s);
      // the tiles read whole quads of each row: rows of a as they are when K is a multiple of 4, else copies
      // padded with zeros
      const bool whole_quads = p.k % 4 == 0;
      const std::int8_t *arows = p.a + s * p.k;
      std::size_t lda = p.k;
      if (!whole_quads) {
        apad.assign(rows * kpad, 0);
        for (std::size_t r = 0; r < rows; ++r) std::memcpy(&apad[r * kpad], arows + r * p.k, p.k);
        arows = apad.data();
        lda = kpad;
      }
      shift.resize(rows);
      for (std::size_t r = 0; r < rows; ++r) shift[r] = times_128_row_sum(p.a + (s + r) * p.k, p.k);
      const bool mid = rows <= I8_MID_ROWS;
      const std::size_t band = mid ? I8_BAND / 2 : I8_BAND, block_rows = I8_KC;
      for (std::size_t b0 = c0; b0 < c1; b0 += band) {
        const std::size_t width = std::min(band, c1 - b0), strips = (width + STRIP - 1) / STRIP;
        const std::size_t wpad = strips * STRIP + 16;  // rows of acc not 2^n words apart
        acc.resize(rows * wpad);
        for (std::size_t k0 = 0; k0 < p.k; k0 += block_rows) {
          const std::size_t kc = std::min(block_rows, p.k - k0), quads = (kc + 3) / 4;
          const std::size_t pitch = (quads + 1) * 128;  // one extra quad: strips do not share cache sets
          packed.resize(strips * pitch);
          const std::int8_t *bk = be + static_cast<std::ptrdiff_t>(b0 / STRIP) * p.b_band +
                                  static_cast<std::ptrdiff_t>(k0) * p.b_row;
          pack_quads(bk, p.b_band, p.b_row, kc, strips, pitch, packed.data());
          // the next block of this band streams in while this one is multiplied
          Prefetcher next;
          if (k0 + kc < p.k) {
            const std::size_t nkc = std::min(block_rows, p.k - k0 - kc);
            const std::int8_t *nb = bk + static_cast<std::ptrdiff_t>(kc) * p.b_row;
            if (p.b_row == static_cast<std::ptrdiff_t>(STRIP)) {
              next.add(nb, p.b_band, nkc * STRIP, strips);  // NZ: each band's rows are contiguous
            } else if (p.b_band == static_cast<std::ptrdiff_t>(STRIP)) {
              next.add(nb, p.b_row, width, nkc);  // ND: each row's bands are contiguous
            }
          }
          std::size_t j = 0;
          for (; j + 2 <= strips; j += 2) {
            int8_quad_rows<2>(arows + k0, lda, rows, &packed[j * pitch], pitch, quads, acc.data() + j * STRIP, wpad,
                              k0 == 0, next);
          }
          if (j < strips) {
            int8_quad_rows<1>(arows + k0, lda, rows, &packed[j * pitch], pitch, quads, acc.data() + j * STRIP, wpad,
                              k0 == 0, next);
          }
        }
        for (std::size_t r = 0; r < rows; ++r) {
          const std::int32_t *c = &acc[r * wpad];
          const __m512i sh = _mm512_set1_epi32(p.k == 0 ? 0 : shift[r]);
          // the finalize-routing epilogue: each step one IEEE fp32 operation rounded to nearest even (explicit
          // rounding: never fused into an FMA), as the reference's dequant then its row add
          float *yr = p.y == nullptr ? nullptr : p.y + static_cast<std::size_t>(p.index[s + r]) * p.n + b0;
          const float *cr = p.y == nullptr ? nullptr : p.col + static_cast<std::size_t>(grp[0]) * p.n + b0;
          const __m512 rv = _mm512_set1_ps(p.y == nullptr ? 0.0f : p.row[s + r]);
          std::int32_t *o = p.y == nullptr ? p.out + (s + r) * p.n + b0 : nullptr;
          for (std::size_t j = 0; j < width; j += 16) {
            const __mmask16 m = width - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (width - j)) - 1);
            const __m512i v = p.k == 0 ? _mm512_setzero_si512() : _mm512_sub_epi32(_mm512_loadu_si512(c + j), sh);
            if (yr == nullptr) {
              _mm512_mask_storeu_epi32(o + j, m, v);
              continue;
            }
            constexpr int RNE = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            __m512 d = _mm512_cvt_roundepi32_ps(v, RNE);
            d = _mm512_mul_round_ps(d, _mm512_maskz_loadu_ps(m, cr + j), RNE);
            d = _mm512_mul_round_ps(d, rv, RNE);
            _mm512_mask_storeu_ps(yr + j, m, _mm512_add_round_ps(_mm512_maskz_loadu_ps(m, yr + j), d, RNE));
          }
        }
      }
    }
  }
}
#endif

}  // namespace

namespace {

enum class Kernel { widen_fma, dot_bf16 };

// The rows of a [G, 3] int64 groups table (index, first row, end row); std::invalid_argument unless every group
// has an index in [0, count) and rows in [0, rows], and with unique, unless no two groups share an index (each
// writes its own output).
const std::int64_t *checked_groups(const std::int64_t *grp, py::ssize_t n_groups, py::ssize_t count, py::ssize_t rows,
                                   const std::string &index_name, bool unique) {
  std::vector<bool> seen(unique ? static_cast<std::size_t>(count) : 0, false);
  for (py::ssize_t i = 0; i < n_groups; ++i) {
    const std::int64_t ex = grp[3 * i], s = grp[3 * i + 1], f = grp[3 * i + 2];
    const bool bad = ex < 0 || ex >= count || s < 0 || f < s || f > rows;
    if (bad || (unique && seen[static_cast<std::size_t>(ex)])) {
      throw std::invalid_argument("group " + std::to_string(i) + " (" + index_name + " " + std::to_string(ex) +
                                  ", rows " + std::to_string(s) + ".." + std::to_string(f) + ") " +
                                  (bad ? "is out of range" : "writes an output another group writes"));
    }
    if (unique) seen[static_cast<std::size_t>(ex)] = true;
  }
  return grp;
}

// The groups of a grouped GEMM: a [G, 3] int64 buffer, or a sequence of (index, start, end) read here (the
// Python side's list of runs: making a NumPy array of it took ~50 us a call after a large GEMM had left the
// caches).
struct GroupTable {
  py::buffer_info buffer;            // the buffer's, if given one
  std::vector<std::int64_t> copied;  // else the sequence's rows
  py::ssize_t n_groups = 0;
  const std::int64_t *rows() const {
    return copied.empty() ? static_cast<const std::int64_t *>(buffer.ptr) : copied.data();
  }
};

GroupTable group_table(const py::object &groups, const std::string &index_name) {
  GroupTable t;
  if (py::isinstance<py::buffer>(groups)) {
    t.buffer = c_contiguous(groups.cast<py::buffer>(), "groups", 8, 2, false);
    if (t.buffer.shape[1] != 3) {
      throw std::invalid_argument("groups must be [G, 3] int64 rows (" + index_name + ", start, end)");
    }
    t.n_groups = t.buffer.shape[0];
    return t;
  }
  if (!py::isinstance<py::sequence>(groups)) {
    throw std::invalid_argument("groups must be a [G, 3] int64 buffer or a sequence of (" + index_name +
                                ", start, end)");
  }
  const auto seq = py::reinterpret_borrow<py::sequence>(groups);
  t.copied.reserve(3 * seq.size());
  for (const py::handle item : seq) {
    if (!py::isinstance<py::sequence>(item) || py::len(item) != 3) {
      throw std::invalid_argument("each group must be (" + index_name + ", start, end)");
    }
    for (const py::handle v : py::reinterpret_borrow<py::sequence>(item)) {
      // any integer (a Python int, a NumPy integer: __index__), nothing else
      const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
      const long long value = index ? PyLong_AsLongLong(index.ptr()) : -1;
      if (!index || (value == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        throw std::invalid_argument("each group must be (" + index_name + ", start, end), int64 integers");
      }
      t.copied.push_back(static_cast<std::int64_t>(value));
    }
  }
  t.n_groups = static_cast<py::ssize_t>(seq.size());
  return t;
}

// `threads`, or 1 for a small product: starting a thread costs 20-70 us, as much as ~2M multiply-adds
// (multiply-adds: each group's rows times macs_per_row).
int threads_for_product(const std::int64_t *grp, py::ssize_t groups, std::size_t macs_per_row, int threads) {
  std::size_t rows = 0;
  for (py::ssize_t i = 0; i < groups; ++i) rows += static_cast<std::size_t>(grp[3 * i + 2] - grp[3 * i + 1]);
  return rows * macs_per_row < (std::size_t(1) << 21) ? 1 : threads;
}

// run(g0, g1, c0, c1) over the groups and output columns of a grouped product, on up to `threads` threads (call it
// with the GIL released)
template <typename Run>
void over_groups_and_bands(const std::int64_t *grp, std::size_t n_groups, std::size_t n, int threads, Run run) {
  if (n_groups >= 2 * static_cast<std::size_t>(std::max(threads, 1))) {
    // groups to the threads, handed out one at a time, the largest first, each in two column halves where it
    // is wide: each thread streams whole experts' weights, and the last units handed out are small (whole
    // groups in the given order left a thread idle for up to one group at the end; 1-2 % measured at the
    // issue's 16 experts of ~128 rows)
    std::vector<std::size_t> order(n_groups);
    for (std::size_t g = 0; g < n_groups; ++g) order[g] = g;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
      return grp[3 * x + 2] - grp[3 * x + 1] > grp[3 * y + 2] - grp[3 * y + 1];
    });
    const std::size_t halves = (threads > 1 && n >= 8 * STRIP) ? 2 : 1;
    const std::size_t mid = halves == 2 ? (n / 2 + STRIP - 1) / STRIP * STRIP : n;
    over_row_chunks(n_groups * halves, threads, 1, [&](std::size_t u0, std::size_t u1) {
      for (std::size_t u = u0; u < u1; ++u) {
        const std::size_t g = order[u / halves];
        const bool second = halves == 2 && u % 2 == 1;
        run(g, g + 1, second ? mid : 0, halves == 2 && !second ? mid : n);
      }
    });
  } else {
    // bands of whole strips, at least 4 strips (128 columns) each
    const std::size_t strips = (n + STRIP - 1) / STRIP;
    over_rows(strips, threads, 4, [&](std::size_t s0, std::size_t s1) {
      run(0, n_groups, s0 * STRIP, std::min(n, s1 * STRIP));
    });
  }
}

void grouped_gemm(py::buffer out, py::buffer a, py::buffer b, const py::object &groups, Elem elem, int threads,
                  Kernel kernel) {
  const py::ssize_t size = elem == Elem::fp32 ? 4 : 2;  // bytes per element
  py::buffer_info oi = c_contiguous(out, "out", size, 2, true);
  py::buffer_info ai = c_contiguous(a, "a", size, 2, false);
  const GroupTable gt = group_table(groups, "expert");
  py::buffer_info bi = b.request(false);
  const bool n_contiguous = bi.ndim == 3 && (bi.shape[2] <= 1 || bi.strides[2] == size);
  const bool k_contiguous = !n_contiguous && bi.ndim == 3 && (bi.shape[1] <= 1 || bi.strides[1] == size);
  if (bi.itemsize != size || bi.ndim != 3 || !(n_contiguous || k_contiguous) || bi.strides[0] % size != 0 ||
      bi.strides[1] % size != 0 || bi.strides[2] % size != 0) {
    throw std::invalid_argument("b must be a 3-D buffer of " + std::to_string(size) +
                                "-byte elements [E, K, N] with N or K contiguous");
  }
  if (kernel == Kernel::dot_bf16 && elem != Elem::bf16) throw std::invalid_argument("dot_bf16 takes bf16 operands");
  const py::ssize_t t = ai.shape[0], k = ai.shape[1], e = bi.shape[0], n = bi.shape[2];
  if (bi.shape[1] != k || oi.shape[0] != t || oi.shape[1] != n) {
    throw std::invalid_argument("shapes do not match: a [T, K], b [E, K, N], out [T, N]");
  }
  const std::int64_t *grp = checked_groups(gt.rows(), gt.n_groups, e, t, "expert", false);
  const std::ptrdiff_t b_expert = bi.strides[0] / size, b_row = (k_contiguous ? bi.strides[2] : bi.strides[1]) / size;
  Problem p{static_cast<const std::uint16_t *>(ai.ptr), static_cast<const std::uint16_t *>(bi.ptr), b_expert, b_row,
            static_cast<std::uint16_t *>(oi.ptr), static_cast<std::size_t>(k), static_cast<std::size_t>(n), grp,
            static_cast<std::size_t>(gt.n_groups), k_contiguous};
  const ProblemOf<float> p32{static_cast<const float *>(ai.ptr), static_cast<const float *>(bi.ptr), b_expert, b_row,
                             static_cast<float *>(oi.ptr), p.k, p.n, grp, p.n_groups, k_contiguous};
  if (n == 0 || gt.n_groups == 0) return;
  threads = threads_for_product(grp, gt.n_groups, static_cast<std::size_t>(k) * static_cast<std::size_t>(n), threads);
  py::gil_scoped_release release;
  auto run = [&](std::size_t g0, std::size_t g1, std::size_t c0, std::size_t c1) {
#ifdef ASCEND_MOE_DOT_BF16
    if (kernel == Kernel::dot_bf16) {
      dot_band(p, g0, g1, c0, c1);
      return;
    }
#endif
    if (elem == Elem::fp32) {
      band_fp32(p32, g0, g1, c0, c1);
    } else if (elem == Elem::fp16) {
      band_fp16(p, g0, g1, c0, c1);
    } else {
      band_bf16(p, g0, g1, c0, c1);
    }
  };
  over_groups_and_bands(grp, p.n_groups, p.n, threads, run);
}

// The K-split entry points' checked operands: x [T, M], y [T, N], out [E, M, N] C-contiguous of `size`-byte
// elements, each output named by at most one group; std::invalid_argument naming what does not fit.
struct KSplitCall {
  py::buffer_info out, x, y;
  GroupTable group_rows;
  const std::int64_t *groups;  // group_rows' (output index, first token, end token) rows
  std::size_t n_groups, m, n;
};

KSplitCall ksplit_call(py::buffer out, py::buffer x, py::buffer y, const py::object &groups, py::ssize_t size) {
  KSplitCall c{c_contiguous(out, "out", size, 3, true), c_contiguous(x, "x", size, 2, false),
               c_contiguous(y, "y", size, 2, false), group_table(groups, "output"), nullptr, 0, 0, 0};
  const py::ssize_t t = c.x.shape[0], m = c.x.shape[1], n = c.y.shape[1], e = c.out.shape[0];
  if (c.y.shape[0] != t || c.out.shape[1] != m || c.out.shape[2] != n) {
    throw std::invalid_argument("shapes do not match: x [T, M], y [T, N], out [E, M, N]");
  }
  c.groups = checked_groups(c.group_rows.rows(), c.group_rows.n_groups, e, t, "output", true);
  c.n_groups = static_cast<std::size_t>(c.group_rows.n_groups);
  c.m = static_cast<std::size_t>(m);
  c.n = static_cast<std::size_t>(n);
  return c;
}

// unit(g, m0, m1) for output rows [m0, m1) of group g, in units of `rows` rows handed out one at a time to up to
// `threads` threads (one for a small product); call it with the GIL held (it releases it).
template <typename Unit>
void over_ksplit_units(const KSplitCall &c, std::size_t rows, int threads, Unit unit) {
  if (c.m == 0 || c.n == 0 || c.n_groups == 0) return;
  threads = threads_for_product(c.groups, static_cast<py::ssize_t>(c.n_groups), c.m * c.n, threads);
  const std::size_t chunks = (c.m + rows - 1) / rows;
  py::gil_scoped_release release;
  over_row_chunks(c.n_groups * chunks, threads, 1, [&](std::size_t u0, std::size_t u1) {
    for (std::size_t u = u0; u < u1; ++u) {
      const std::size_t m0 = (u % chunks) * rows;
      unit(u / chunks, m0, std::min(c.m, m0 + rows));
    }
  });
}

void grouped_fma_fp32_ksplit(py::buffer out, py::buffer x, py::buffer y, const py::object &groups, int threads) {
  const KSplitCall c = ksplit_call(out, x, y, groups, 4);
  const KSplit32 p{static_cast<const float *>(c.x.ptr), static_cast<const float *>(c.y.ptr),
                   static_cast<float *>(c.out.ptr), c.m, c.n, c.groups};
  over_ksplit_units(c, KS32_ROWS, threads,
                    [&](std::size_t g, std::size_t m0, std::size_t m1) { fma_ksplit_unit_fp32(p, g, m0, m1); });
}

void grouped_dot_bf16_ksplit(py::buffer out, py::buffer x, py::buffer y, const py::object &groups, int threads) {
  const KSplitCall c = ksplit_call(out, x, y, groups, 2);
#ifdef ASCEND_MOE_DOT_BF16
  const KSplitProblem p{static_cast<const std::uint16_t *>(c.x.ptr), static_cast<const std::uint16_t *>(c.y.ptr),
                        static_cast<std::uint16_t *>(c.out.ptr), c.m, c.n, c.groups};
  over_ksplit_units(c, KS_ROWS, threads,
                    [&](std::size_t g, std::size_t m0, std::size_t m1) { dot_ksplit_unit(p, g, m0, m1); });
#else
  throw std::runtime_error("grouped_dot_bf16_ksplit: built without AVX512-BF16 support");
#endif
}

bool has_dot_bf16() {
#ifdef ASCEND_MOE_DOT_BF16
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}


bool has_dot_int8() {
#ifdef ASCEND_MOE_DOT_INT8
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512vbmi");
#else
  return false;
#endif
}

#ifdef ASCEND_MOE_DOT_INT8
// The problem of a grouped int8 GEMM call: a [T, K], b's bands [E, ceil(N / 32), K, 32], groups; std::invalid_argument
// naming what does not fit.
Int8Problem int8_problem(const py::buffer_info &ai, const py::buffer_info &bi, py::ssize_t n, const GroupTable &gt,
                         py::ssize_t out_rows, py::ssize_t out_cols) {
  if (bi.itemsize != 1 || bi.ndim != 4 || bi.shape[3] != 32 || bi.strides[3] != 1) {
    throw std::invalid_argument("b must be an int8 buffer [E, bands, K, 32] with its last dimension contiguous (the "
                                "weight's 32-column bands)");
  }
  const py::ssize_t t = ai.shape[0], k = ai.shape[1], e = bi.shape[0], bands = bi.shape[1];
  if (bi.shape[2] != k || out_rows != t || out_cols != n || n > 32 * bands || n <= 32 * (bands - 1)) {
    throw std::invalid_argument("shapes do not match: a [T, K], b [E, ceil(N / 32), K, 32], out [T, N]");
  }
  if (k >= (py::ssize_t(1) << 24)) throw std::invalid_argument("grouped_dot_int8: K must be below 2^24");
  const std::int64_t *grp = checked_groups(gt.rows(), gt.n_groups, e, t, "expert", false);
  Int8Problem p;
  p.a = static_cast<const std::int8_t *>(ai.ptr);
  p.b = static_cast<const std::int8_t *>(bi.ptr);
  p.b_expert = bi.strides[0];
  p.b_band = bi.strides[1];
  p.b_row = bi.strides[2];
  p.out = nullptr;
  p.k = static_cast<std::size_t>(k);
  p.n = static_cast<std::size_t>(n);
  p.groups = grp;
  p.n_groups = static_cast<std::size_t>(gt.n_groups);
  return p;
}

void grouped_dot_int8(py::buffer out, py::buffer a, py::buffer b, py::ssize_t n, const py::object &groups,
                      int threads) {
  if (!has_dot_int8()) throw std::runtime_error("grouped_dot_int8: this CPU has no AVX512-VNNI / VBMI instructions");
  py::buffer_info oi = c_contiguous(out, "out", 4, 2, true);
  py::buffer_info ai = c_contiguous(a, "a", 1, 2, false);
  const GroupTable gt = group_table(groups, "expert");
  py::buffer_info bi = b.request(false);
  Int8Problem p = int8_problem(ai, bi, n, gt, oi.shape[0], oi.shape[1]);
  p.out = static_cast<std::int32_t *>(oi.ptr);
  if (n == 0 || p.n_groups == 0) return;
  threads = threads_for_product(p.groups, gt.n_groups, p.k * p.n / 4, threads);
  // fewer groups than units for the threads: groups of many rows cut into pieces of at least I8_MID_ROWS rows, whose
  // blocks are sized for L2 (int8_band's `mid`; a single 512-row group on 2 threads ran 25 % faster so), and where
  // that makes enough pieces the threads take whole pieces
  std::vector<std::int64_t> pieces;
  const std::size_t want = 2 * static_cast<std::size_t>(std::max(threads, 1));
  if (p.n_groups < want) {
    for (std::size_t g = 0; g < p.n_groups; ++g) {
      const std::int64_t *grp = p.groups + 3 * g;
      const std::int64_t s = grp[1], f = grp[2];
      const auto cuts = static_cast<std::int64_t>(std::max<std::size_t>(
          1, std::min<std::size_t>((want + p.n_groups - 1) / p.n_groups, static_cast<std::size_t>(f - s) / I8_MID_ROWS)));
      for (std::int64_t c = 0; c < cuts; ++c) pieces.insert(pieces.end(), {grp[0], s + (f - s) * c / cuts, s + (f - s) * (c + 1) / cuts});
    }
    p.groups = pieces.data();
    p.n_groups = pieces.size() / 3;
  }
  py::gil_scoped_release release;
  over_groups_and_bands(p.groups, p.n_groups, p.n, threads, [&](std::size_t g0, std::size_t g1, std::size_t c0,
                                                                std::size_t c1) { int8_band(p, g0, g1, c0, c1); });
}

void grouped_dot_int8_scatter(py::buffer y, py::buffer a, py::buffer b, py::ssize_t n, const py::object &groups,
                              py::buffer index, py::buffer col, py::buffer row, int threads) {
  if (!has_dot_int8()) throw std::runtime_error("grouped_dot_int8: this CPU has no AVX512-VNNI / VBMI instructions");
  py::buffer_info yi = c_contiguous(y, "y (float32)", 4, 2, true);
  py::buffer_info ai = c_contiguous(a, "a", 1, 2, false);
  const GroupTable gt = group_table(groups, "expert");
  py::buffer_info ii = c_contiguous(index, "index (int64)", 8, 1, false);
  py::buffer_info ci = c_contiguous(col, "col (float32)", 4, 2, false);
  py::buffer_info ri = c_contiguous(row, "row (float32)", 4, 1, false);
  py::buffer_info bi = b.request(false);
  Int8Problem p = int8_problem(ai, bi, n, gt, ai.shape[0], yi.shape[1]);
  if (ii.shape[0] != ai.shape[0] || ri.shape[0] != ai.shape[0] || ci.shape[0] != bi.shape[0] || ci.shape[1] != n) {
    throw std::invalid_argument("shapes do not match: a [T, K], y [batch, N], index and row [T], col [E, N]");
  }
  const auto *idx = static_cast<const std::int64_t *>(ii.ptr);
  std::int64_t last_end = 0;
  for (std::size_t g = 0; g < p.n_groups; ++g) {
    const std::int64_t *grp = p.groups + 3 * g;
    if (grp[1] < last_end) {
      throw std::invalid_argument("groups must cover rows in order (each y element's adds go in row order)");
    }
    last_end = grp[2];
    for (std::int64_t t = grp[1]; t < grp[2]; ++t) {
      if (idx[t] < 0 || idx[t] >= yi.shape[0]) {
        throw std::invalid_argument("index[" + std::to_string(t) + "] = " + std::to_string(idx[t]) +
                                    " is not a row of y");
      }
    }
  }
  p.y = static_cast<float *>(yi.ptr);
  p.index = idx;
  p.col = static_cast<const float *>(ci.ptr);
  p.row = static_cast<const float *>(ri.ptr);
  if (n == 0 || p.n_groups == 0) return;
  threads = threads_for_product(p.groups, gt.n_groups, p.k * p.n / 4, threads);
  py::gil_scoped_release release;
  // bands of whole strips per thread, every group in order in each: y's columns are the threads' own
  const std::size_t strips = (p.n + STRIP - 1) / STRIP;
  over_rows(strips, threads, 4, [&](std::size_t s0, std::size_t s1) {
    int8_band(p, 0, p.n_groups, s0 * STRIP, std::min(p.n, s1 * STRIP));
  });
}
#else
void grouped_dot_int8(py::buffer, py::buffer, py::buffer, py::ssize_t, py::buffer, int) {
  throw std::runtime_error("grouped_dot_int8: built without AVX512-VNNI support");
}
void grouped_dot_int8_scatter(py::buffer, py::buffer, py::buffer, py::ssize_t, py::buffer, py::buffer, py::buffer,
                              py::buffer, int) {
  throw std::runtime_error("grouped_dot_int8_scatter: built without AVX512-VNNI support");
}
#endif

}  // namespace

PYBIND11_MODULE(_gemm, m) {
  m.doc() = "A grouped bf16 / fp16 GEMM computing in fp32 from exactly widened operands, and its AVX512-BF16 "
            "dot-product form (no torch, no CANN).";
  ascend_moe_kernels::def_openmp(m);
  m.def(
      "grouped_widen_fma",
      [](py::buffer out, py::buffer a, py::buffer b, const py::object &groups, bool fp16, int threads) {
        grouped_gemm(out, a, b, groups, fp16 ? Elem::fp16 : Elem::bf16, threads, Kernel::widen_fma);
      },
      py::arg("out"), py::arg("a"), py::arg("b"), py::arg("groups"), py::arg("fp16"), py::arg("threads"),
      "out[s:t] = a[s:t] @ b[e] for each (e, s, t) of groups: bf16 / fp16 operands widened exactly to fp32, one "
      "fp32 multiply-add per product (in k order when b's columns are contiguous; in 16 lanes of k order added in a "
      "fixed tree when b's k is contiguous, a transposed weight), one round-to-nearest-even to the output dtype; "
      "subnormals kept.");
  m.def(
      "grouped_fma_fp32",
      [](py::buffer out, py::buffer a, py::buffer b, const py::object &groups, int threads) {
        grouped_gemm(out, a, b, groups, Elem::fp32, threads, Kernel::widen_fma);
      },
      py::arg("out"), py::arg("a"), py::arg("b"), py::arg("groups"), py::arg("threads"),
      "out[s:t] = a[s:t] @ b[e] for each (e, s, t) of groups, fp32 operands and output: the widen-FMA GEMM's loops "
      "(one fp32 multiply-add per product in k order when b's columns are contiguous; 16 lanes of k order added in "
      "a fixed tree when b's k is contiguous); subnormals kept; the weight read once, in its own layout.");
  m.def("grouped_fma_fp32_ksplit", &grouped_fma_fp32_ksplit, py::arg("out"), py::arg("x"), py::arg("y"),
        py::arg("groups"), py::arg("threads"),
        "out[e] = x[s:t]^T @ y[s:t] for each (e, s, t) of groups (fp32, the K-split product; a group of no rows "
        "writes zeros; each output written by one group): one fp32 multiply-add per product in token order, "
        "subnormals kept.");
  m.def("has_dot_bf16", &has_dot_bf16, "Whether this CPU has the AVX512-BF16 dot-product instruction.");
  m.def(
      "grouped_dot_bf16_ksplit",
      [](py::buffer out, py::buffer x, py::buffer y, const py::object &groups, int threads) {
        if (!has_dot_bf16()) {
          throw std::runtime_error("grouped_dot_bf16_ksplit: this CPU has no AVX512-BF16 instructions");
        }
        grouped_dot_bf16_ksplit(out, x, y, groups, threads);
      },
      py::arg("out"), py::arg("x"), py::arg("y"), py::arg("groups"), py::arg("threads"),
      "out[e] = x[s:t]^T @ y[s:t] for each (e, s, t) of groups (bf16, the K-split product; a group of no rows "
      "writes zeros; each output written by one group) by vdpbf16ps with fp32 accumulators and one "
      "round-to-nearest-even, with the same subnormal guard and IEEE fallback as grouped_dot_bf16.");
  m.def(
      "grouped_dot_bf16",
      [](py::buffer out, py::buffer a, py::buffer b, const py::object &groups, int threads) {
        if (!has_dot_bf16()) throw std::runtime_error("grouped_dot_bf16: this CPU has no AVX512-BF16 instructions");
        grouped_gemm(out, a, b, groups, Elem::bf16, threads, Kernel::dot_bf16);
      },
      py::arg("out"), py::arg("a"), py::arg("b"), py::arg("groups"), py::arg("threads"),
      "out[s:t] = a[s:t] @ b[e] (bf16, b's columns contiguous) by vdpbf16ps with fp32 accumulators and one "
      "round-to-nearest-even, where no product or partial sum can be subnormal (checked on the operands as they "
      "are copied); from the first weight block where one could, one IEEE multiply-add per product in k order.");
  m.def("has_dot_int8", &has_dot_int8, "Whether this CPU has the AVX512-VNNI (and VBMI) instructions dot_int8 uses.");
  m.def("grouped_dot_int8_scatter", &grouped_dot_int8_scatter, py::arg("y"), py::arg("a"), py::arg("b"), py::arg("n"),
        py::arg("groups"), py::arg("index"), py::arg("col"), py::arg("row"), py::arg("threads"),
        "The finalize-routing A8W8 GEMM and epilogue in one pass: for each (e, s, t) of groups (in row order) and "
        "each row r of it, y[index[r], j] += (fp32(acc[r, j]) * col[e, j]) * row[r] with acc = a @ w[e] exact in "
        "int32 as grouped_dot_int8 makes it; each fp32 step rounded to nearest even, subnormals kept, each y "
        "element's adds in row order.");
  m.def("grouped_dot_int8", &grouped_dot_int8, py::arg("out"), py::arg("a"), py::arg("b"), py::arg("n"),
        py::arg("groups"), py::arg("threads"),
        "out[s:t] = a[s:t] @ w[e] (int8 operands, int32 result wrapping like int32: exact) for each (e, s, t) of "
        "groups, by vpdpbusd; the weight given as its 32-column bands b [E, ceil(N / 32), K, 32] (w[e, k, n] = "
        "b[e, n // 32, k, n % 32]): FRACTAL_NZ int8 storage viewed [E, N/32, K, 32], or an ND weight's strided view; "
        "rows no group covers are not written.");
}
