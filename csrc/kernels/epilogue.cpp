// ascend_moe.kernels._epilogue: compiled steps of the quantised epilogues (no torch, no CANN).
//
// fixpipe_fp16: the A8W4 (MSD) fixpipe dequant, fp16(acc * scale): the int32 accumulator and the fp32 scale
// widened to double (exact), one double multiply (round to nearest even, as NumPy's float64 multiply), then one
// double -> fp16 rounding to nearest even.  NumPy converts float64 -> float16 one element at a time in software
// (about 8 ns per element); here the x86 path rounds the double to fp32 "to odd" and lets F16C round that to
// fp16, which gives the same bits as the direct rounding (fp32 keeps 13 more significand bits than fp16, and
// round-to-odd with at least two extra bits makes the second rounding exact - Boldo & Melquiond, "Emulation of
// FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 2008).  Elsewhere a portable
// loop does the direct rounding bit by bit.  Rows are split over threads (helpers.h): the GIL is released.
//
// swiglu_quant_a8w8: the A8W8 epilogue of the grouped-matmul-swiglu-quant ops (sim/swiglu_quant.py) in one pass
// per row: dequant, SwiGLU, per-token int8 quantisation, each fp32 step the simulator's IEEE operation in its
// order.  Its exp is the simulator's exp_f32 (the correctly rounded fp32 exp): a double evaluation accurate to a
// few double ulps (exp_f32_certain below), rounded to fp32, and refused ("uncertain") where that double lies
// within EXP_MARGIN_ULPS double ulps of an fp32 rounding midpoint, where a few ulps could change the rounding.
// A row with an uncertain exp, or with a NaN anywhere (a NaN scale, an all-zero row's 0/0), is handed back to
// the NumPy path, which owns NaN payloads and the named all-zero-row policy.  swiglu_quant_f32 is the same pass
// from already dequantised fp32 values (the A8W4 path).
//
// dequant_scatter: the finalize-routing A8W8 epilogue, y[index[t], j] += (fp32(acc[t, j]) * col[group[t], j]) *
// row[t] for t in order: the dequant and the token-order scatter-add in one pass over the accumulator, without the
// fp32 [rows, n] intermediate, on column tiles (a tile of y stays in cache while every row adds into it; threads
// take disjoint tiles).
#include <pybind11/pybind11.h>

#include "helpers.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ASCEND_MOE_X86 1
#endif

// The vectorised loops below are compiled for AVX-512 (x86-64-v4), AVX2 and the baseline, the widest this CPU
// runs chosen at load time (GCC function multi-versioning; the same operations, so the same bits, in every
// version); elsewhere once.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ASCEND_MOE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ASCEND_MOE_VECTOR_CLONES
#endif

namespace py = pybind11;
using ascend_moe_kernels::c_contiguous;
using ascend_moe_kernels::over_row_chunks;
using ascend_moe_kernels::over_rows;

namespace {

// IEEE binary16 bits of d rounded to nearest even (d finite, or infinite: +-inf; NaN gives a quiet NaN).
std::uint16_t half_bits_of(double d) {
  std::uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  const auto sign = static_cast<std::uint16_t>((b >> 48) & 0x8000u);
  const std::uint64_t magnitude = b & 0x7FFFFFFFFFFFFFFFull;
  if (magnitude >= 0x7FF0000000000000ull) {  // inf or NaN
    return static_cast<std::uint16_t>(sign | (magnitude == 0x7FF0000000000000ull ? 0x7C00u : 0x7E00u));
  }
  const int exponent = static_cast<int>(magnitude >> 52) - 1023;
  if (exponent >= 16) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65536: overflows
  const std::uint64_t significand = (magnitude & 0xFFFFFFFFFFFFFull) | (exponent > -1023 ? 1ull << 52 : 0);
  // units of the result's last place: 2**(exponent - 10) for fp16 normals, 2**-24 below 2**-14
  const int shift = exponent >= -14 ? 42 : 28 - exponent;  // right shift of the 53-bit significand
  if (shift >= 64) return sign;                            // below 2**-35: rounds to zero
  std::uint64_t kept = significand >> shift;
  const std::uint64_t rest = significand & ((1ull << shift) - 1);
  const std::uint64_t half_unit = 1ull << (shift - 1);
  if (rest > half_unit || (rest == half_unit && (kept & 1))) ++kept;  // may carry into the exponent: fine
  std::uint64_t bits = exponent >= -14 ? (static_cast<std::uint64_t>(exponent + 14) << 10) + kept : kept;
  // a normal's kept significand includes the implicit bit (1 << 10), which adds the last exponent step
  if (bits >= 0x7C00u) bits = 0x7C00u;
  return static_cast<std::uint16_t>(sign | bits);
}

void fixpipe_portable(const std::int32_t *acc, const float *scale, std::uint16_t *out, std::size_t rows,
                      std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) {
      const double product = static_cast<double>(acc[r * cols + c]) * static_cast<double>(scale[c]);
      out[r * cols + c] = half_bits_of(product);
    }
  }
}

#ifdef ASCEND_MOE_X86
// four doubles -> four fp32 rounded to odd: the nearest-even result, moved one step toward the exact value
// when it is inexact and even (then the other neighbour, which is odd, is the round-to-odd result)
__attribute__((target("avx2,f16c"))) inline __m128 round_to_odd_ps(__m256d p) {
  const __m128 nearest = _mm256_cvtpd_ps(p);
  const __m256d back = _mm256_cvtps_pd(nearest);
  const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll));
  const __m256d inexact = _mm256_cmp_pd(back, p, _CMP_NEQ_UQ);
  const __m256d away = _mm256_cmp_pd(_mm256_and_pd(p, abs_mask), _mm256_and_pd(back, abs_mask), _CMP_GT_OQ);
  // 64-bit lane masks -> 32-bit lane masks (the low halves, in order)
  const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const __m128i inexact32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(inexact), pick));
  const __m128i away32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(away), pick));
  const __m128i bits = _mm_castps_si128(nearest);
  const __m128i one = _mm_set1_epi32(1);
  const __m128i even = _mm_cmpeq_epi32(_mm_and_si128(bits, one), _mm_setzero_si128());
  const __m128i step = _mm_blendv_epi8(_mm_set1_epi32(-1), one, away32);  // +1 away from zero, -1 toward it
  const __m128i fix = _mm_and_si128(_mm_and_si128(inexact32, even), step);
  return _mm_castsi128_ps(_mm_add_epi32(bits, fix));
}

__attribute__((target("avx2,f16c"))) void fixpipe_avx2(const std::int32_t *acc, const float *scale,
                                                         std::uint16_t *out, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    const std::int32_t *a = acc + r * cols;
    std::uint16_t *o = out + r * cols;
    std::size_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      const __m256d lo = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i *>(a + c))),
                                       _mm256_cvtps_pd(_mm_loadu_ps(scale + c)));
      const __m256d hi =
          _mm256_mul_pd(_mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i *>(a + c + 4))),
                        _mm256_cvtps_pd(_mm_loadu_ps(scale + c + 4)));
      const __m256 f = _mm256_set_m128(round_to_odd_ps(hi), round_to_odd_ps(lo));
      _mm_storeu_si128(reinterpret_cast<__m128i *>(o + c), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; c < cols; ++c) o[c] = half_bits_of(static_cast<double>(a[c]) * static_cast<double>(scale[c]));
  }
}

bool has_avx2_f16c() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return yes;
}
#endif

void fixpipe(const std::int32_t *acc, const float *scale, std::uint16_t *out, std::size_t rows, std::size_t cols,
             bool vectorized) {
#ifdef ASCEND_MOE_X86
  if (vectorized && has_avx2_f16c()) {
    fixpipe_avx2(acc, scale, out, rows, cols);
    return;
  }
#endif
  fixpipe_portable(acc, scale, out, rows, cols);
}


// ---- swiglu_quant_a8w8 ----------------------------------------------------------------------------------------

// Distance (in double ulps) from an fp32 rounding midpoint below which a computed double exp is refused.
// exp_double below is within 4 double ulps of the exact exp (see there), so 64 leaves a wide margin; about one
// element in 2^22 is refused.
constexpr std::int64_t EXP_MARGIN_ULPS = 64;

// 2^(j/64) for j < 64, each the double nearest to it or next to that (exp2l: 64-bit significand on x86, 113 on
// aarch64; a double exp2 within an ulp where long double is double)
struct Exp2Table {
  double value[64];
  Exp2Table() {
    for (int j = 0; j < 64; ++j) value[j] = static_cast<double>(std::exp2l(static_cast<long double>(j) / 64.0L));
  }
};
const Exp2Table EXP2_TABLE;

// exp(x) for a double x in [-87, 88], within 4 double ulps: x = k ln2/64 + r with k = round(64 x / ln2), so
// exp(x) = 2^(k/64) e^r with |r| <= ln2/128 + tiny.  ln2/64 is split so that k * LN2_64_HI is exact (32
// significant bits, |k| < 2^13) and r is exact to ~2^-80; e^r is the degree-5 Taylor polynomial (remainder
// below r^6/720 < 2^-54.7), five Horner steps of at most half an ulp on terms that shrink; 2^(k/64) is a table
// entry (within an ulp) times 2^(k >> 6), an exact scaling.
__attribute__((always_inline)) inline double exp_double(double xd) {
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer held in the low bits
  const double kd = xd * 92.33248261689366 + shifter;  // 64 / ln2
  std::uint64_t kbits;
  std::memcpy(&kbits, &kd, sizeof kbits);
  const double k = kd - shifter;
  const double LN2_64_HI = 0x1.62e42feep-7, LN2_64_LO = 0x1.a39ef35793c76p-39;  // fdlibm's ln2 split, / 64
  const double r = (xd - k * LN2_64_HI) - k * LN2_64_LO;
  double p = 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // k's two's complement sits in kbits' low bits: its low 6 bits pick the entry, the rest is the power of two
  const std::uint64_t scale_bits = ((kbits >> 6) + 1023u) << 52;  // the shifter's bits drop out of the shift
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return (EXP2_TABLE.value[kbits & 63u] * p) * scale;  // 2^(k >> 6) in [2^-2, 2^2] * 2^[-127, 127]: exact
}

// whether the fp32 rounding of e (a double in the normal fp32 range) could change if e moved by
// EXP_MARGIN_ULPS ulps: the rounding cuts e's 52-bit significand after 23 bits, and the midpoints are where the
// 29 dropped bits read exactly 2^28
__attribute__((always_inline)) inline bool near_fp32_midpoint(double e) {
  std::uint64_t ebits;
  std::memcpy(&ebits, &e, sizeof ebits);
  const std::int64_t from_midpoint = static_cast<std::int64_t>(ebits & ((1ull << 29) - 1)) - (1ll << 28);
  return (from_midpoint <= EXP_MARGIN_ULPS) & (from_midpoint >= -EXP_MARGIN_ULPS);
}

// exp(x) of an fp32 x, rounded to fp32 (nearest even), and whether that rounding is certain.  Certain results
// are the correctly rounded fp32 exp (the simulator's exp_f32, whatever float64 exp within 1.27 ulp it uses).
// Outside (-87, 88) (fp32 subnormal results, the overflow threshold) only the sure cases are answered: x >= 89
// overflows to +inf, x <= -104 rounds to +0 (exp(-104) < 2^-150); NaN stays NaN (its row is redone anyway).
inline float exp_f32_certain(float x, bool &certain) {
  if (!(x > -87.0f && x < 88.0f)) {
    certain = x >= 89.0f || x <= -104.0f || x != x;
    if (x != x) return x;
    return x >= 89.0f ? INFINITY : 0.0f;
  }
  const double e = exp_double(x);
  certain = !near_fp32_midpoint(e);
  return static_cast<float>(e);
}

// out[j] = exp_f32(-c[j]) for j < n; returns how many are not certain.  Branch-free over the common range so the
// compiler vectorises it (inlined into each version of its caller); elements outside (-87, 88) (or NaN) are redone
// one by one by exp_f32_certain.
__attribute__((always_inline)) inline std::uint32_t exp_block(const float *c, float *out, std::size_t n) {
  std::uint32_t uncertain = 0;
  std::uint32_t outside = 0;
  for (std::size_t j = 0; j < n; ++j) {
    const float x = -c[j];
    outside |= static_cast<std::uint32_t>(!((x > -87.0f) & (x < 88.0f)));
    const double e = exp_double(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x));
    uncertain += static_cast<std::uint32_t>(near_fp32_midpoint(e));
    out[j] = static_cast<float>(e);
  }
  if (outside) {
    for (std::size_t j = 0; j < n; ++j) {
      const float x = -c[j];
      if (!(x > -87.0f && x < 88.0f)) {
        bool certain = true;
        out[j] = exp_f32_certain(x, certain);
        uncertain += certain ? 0u : 1u;
      }
    }
  }
  return uncertain;
}

struct SwigluQuantArgs {
  const float *values;         // [rows, cols]: the dequantised values, or nullptr: dequantise acc (A8W8)
  const std::int32_t *acc;     // [rows, cols]
  const float *col_scale;      // [groups, cols]
  const std::int64_t *group;   // [rows]
  const float *row_scale;      // [rows]
  std::int8_t *out;            // [rows, cols / 2]
  float *out_scale;            // [rows]
  std::uint8_t *redo;          // [rows]: 1 = the NumPy path must compute this row
  std::size_t cols;
  int kernel;                  // 1 or 2
};

inline std::uint32_t f32_bits(float v) {
  std::uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// rint(v) saturated to int8 as the simulator converts (round half to even, clipped to [-128, 127]), branch-free
// so that it vectorises: v is clamped to [-129, 128] first (a NaN too: its row is redone), where adding and
// removing 1.5 * 2^23 rounds half to even exactly
__attribute__((always_inline)) inline std::int8_t rint_saturate_int8(float v) {
  const float low = v >= -129.0f ? v : -129.0f;
  const float clamped = low > 128.0f ? 128.0f : low;
  const float rounded = (clamped + 12582912.0f) - 12582912.0f;
  const std::int32_t whole = static_cast<std::int32_t>(rounded);
  return static_cast<std::int8_t>(whole > 127 ? 127 : (whole < -128 ? -128 : whole));
}

// One row block.  Every loop is branch-free so that it vectorises (in each version, see ASCEND_MOE_VECTOR_CLONES);
// the only data-dependent branches are per row.  Integer views stand in where the vectoriser needs them: the row's
// max |S| as the max of the sign-cleared bit patterns (monotone for non-NaN floats; a pattern above +inf's is a
// NaN), and v1's fp16 rounding as a round to 11 significant bits on the fp32 pattern (the fp16 result wherever it
// is a normal fp16; below 2^-14 both give 0 after rint, above 65504 both clip to 127).
ASCEND_MOE_VECTOR_CLONES
void swiglu_quant_rows(const SwigluQuantArgs &a, std::size_t r0, std::size_t r1) {
  const std::size_t n = a.cols, h = n / 2;
  std::vector<float> cbuf(n), ebuf(h), sbuf(h);
  float *dequantised = cbuf.data(), *e = ebuf.data(), *s = sbuf.data();
  for (std::size_t row = r0; row < r1; ++row) {
    const float *c = a.values ? a.values + row * n : dequantised;
    if (!a.values) {
      const std::int32_t *acc = a.acc + row * n;
      const float *ws = a.col_scale + static_cast<std::size_t>(a.group[row]) * n;
      const float xs = a.row_scale[row];
      if (a.kernel == 1) {  // v1: c = fp32(acc); c = c * x_scale; c = c * w_scale
        for (std::size_t j = 0; j < n; ++j) dequantised[j] = (static_cast<float>(acc[j]) * xs) * ws[j];
      } else {  // v2: c = w_scale * fp32(acc); c = x_scale * c
        for (std::size_t j = 0; j < n; ++j) dequantised[j] = xs * (ws[j] * static_cast<float>(acc[j]));
      }
    }
    const std::uint32_t uncertain = exp_block(c, e, h);
    std::uint32_t amax_bits = 0;
    for (std::size_t j = 0; j < h; ++j) {  // t = exp(-a); t = t + 1; t = a / t; S = g * t
      const float v = c[h + j] * (c[j] / (e[j] + 1.0f));
      s[j] = v;
      const std::uint32_t m = f32_bits(v) & 0x7FFFFFFFu;
      amax_bits = m > amax_bits ? m : amax_bits;
    }
    bool redo = uncertain != 0 || amax_bits > 0x7F800000u;
    float amax;
    std::memcpy(&amax, &amax_bits, sizeof amax);
    std::int8_t *q = a.out + row * h;
    float qs;
    std::uint32_t nan_seen = 0;
    if (a.kernel == 1) {  // qs = amax / 127; rc = 1 / qs; v = S * rc; int8(rint(fp16(v)))
      qs = amax / 127.0f;
      const float rc = 1.0f / qs;
      for (std::size_t j = 0; j < h; ++j) {
        const float v = s[j] * rc;
        const std::uint32_t b = f32_bits(v);
        nan_seen |= (b & 0x7FFFFFFFu) > 0x7F800000u ? 1u : 0u;
        const std::uint32_t b16 = (b + 0xFFFu + ((b >> 13) & 1u)) & ~0x1FFFu;
        float v16;
        std::memcpy(&v16, &b16, sizeof v16);
        q[j] = rint_saturate_int8(v16);
      }
    } else {  // qs = amax * fp32(1/127); int8(rint(S / qs))
      qs = amax * 0.007874015718698502f;
      for (std::size_t j = 0; j < h; ++j) {
        const float v = s[j] / qs;
        nan_seen |= (f32_bits(v) & 0x7FFFFFFFu) > 0x7F800000u ? 1u : 0u;
        q[j] = rint_saturate_int8(v);
      }
    }
    a.out_scale[row] = qs;
    a.redo[row] = (redo || nan_seen) ? 1 : 0;
  }
}

// Both swiglu-quant entries: check the outputs and the kernel against the inputs' [rows, cols] (the error names
// the entry), point `args` at the outputs, and run the pass over the rows with the GIL released.
void run_swiglu_quant(SwigluQuantArgs args, const std::string &entry, std::size_t rows, int kernel,
                      const py::buffer &out, const py::buffer &out_scale, const py::buffer &redo, int threads) {
  py::buffer_info o = c_contiguous(out, entry + ": out (int8)", 1, 2, true);
  py::buffer_info os = c_contiguous(out_scale, entry + ": out_scale (float32)", 4, 1, true);
  py::buffer_info rd = c_contiguous(redo, entry + ": redo (uint8)", 1, 1, true);
  if (kernel != 1 && kernel != 2) throw std::invalid_argument(entry + ": kernel must be 1 or 2");
  if (args.cols % 2 || static_cast<std::size_t>(o.shape[0]) != rows ||
      static_cast<std::size_t>(o.shape[1]) != args.cols / 2 || static_cast<std::size_t>(os.shape[0]) != rows ||
      static_cast<std::size_t>(rd.shape[0]) != rows) {
    throw std::invalid_argument(entry + ": expected an even number of columns, out [rows, cols / 2], out_scale "
                                        "and redo [rows]");
  }
  args.out = static_cast<std::int8_t *>(o.ptr);
  args.out_scale = static_cast<float *>(os.ptr);
  args.redo = static_cast<std::uint8_t *>(rd.ptr);
  args.kernel = kernel;
  py::gil_scoped_release release;
  over_row_chunks(rows, threads, 32, [&](std::size_t r0, std::size_t r1) { swiglu_quant_rows(args, r0, r1); });
}

// ---- dequant_scatter -------------------------------------------------------------------------------------------

struct DequantScatterArgs {
  float *y;                    // [batch, cols]
  const std::int64_t *index;   // [rows]: each row's target row of y
  const std::int32_t *acc;     // [rows, cols]
  const float *col;            // [groups, cols]
  const std::int64_t *group;   // [rows]: each row's row of col
  const float *row;            // [rows]
  std::size_t rows, cols;
};

// columns [c0, c1) of every row, rows in order: each y element gets its adds in the rows' order
ASCEND_MOE_VECTOR_CLONES
void dequant_scatter(const DequantScatterArgs &a, std::size_t c0, std::size_t c1) {
  for (std::size_t t = 0; t < a.rows; ++t) {
    float *y = a.y + static_cast<std::size_t>(a.index[t]) * a.cols;
    const std::int32_t *acc = a.acc + t * a.cols;
    const float *col = a.col + static_cast<std::size_t>(a.group[t]) * a.cols;
    const float r = a.row[t];
    for (std::size_t j = c0; j < c1; ++j) y[j] = y[j] + (static_cast<float>(acc[j]) * col[j]) * r;
  }
}

}  // namespace

PYBIND11_MODULE(_epilogue, m) {
  m.doc() = "Compiled steps of the quantised epilogues (no torch, no CANN).";
  ascend_moe_kernels::def_openmp(m);
  m.def(
      "fixpipe_fp16",
      [](const py::buffer &acc, const py::buffer &scale, const py::buffer &out, bool vectorized, int threads) {
        py::buffer_info a = c_contiguous(acc, "fixpipe_fp16: acc (int32)", 4, 2, false);
        py::buffer_info o = c_contiguous(out, "fixpipe_fp16: out (fp16 viewed as uint16)", 2, 2, true);
        py::buffer_info s = c_contiguous(scale, "fixpipe_fp16: scale (float32)", 4, 1, false);
        if (o.shape[0] != a.shape[0] || o.shape[1] != a.shape[1] || s.shape[0] != a.shape[1]) {
          throw std::invalid_argument("fixpipe_fp16: out must have acc's shape [rows, cols] and scale cols elements");
        }
        const auto rows = static_cast<std::size_t>(a.shape[0]);
        const auto cols = static_cast<std::size_t>(a.shape[1]);
        const auto *pa = static_cast<const std::int32_t *>(a.ptr);
        const auto *ps = static_cast<const float *>(s.ptr);
        auto *po = static_cast<std::uint16_t *>(o.ptr);
        py::gil_scoped_release release;
        over_rows(rows, threads, 1, [&](std::size_t r0, std::size_t r1) {
          fixpipe(pa + r0 * cols, ps, po + r0 * cols, r1 - r0, cols, vectorized);
        });
      },
      py::arg("acc"), py::arg("scale"), py::arg("out"), py::arg("vectorized") = true, py::arg("threads") = 1,
      "out[r, c] = fp16(double(acc[r, c]) * double(scale[c])): one double multiply (nearest even), then one "
      "rounding to fp16 (nearest even); acc int32 [rows, cols], scale float32 [cols], out fp16 bits (uint16) "
      "[rows, cols], all C-contiguous.  vectorized=False forces the portable loop (for tests).");

  m.def(
      "swiglu_quant_a8w8",
      [](const py::buffer &acc, const py::buffer &col_scale, const py::buffer &group, const py::buffer &row_scale,
         int kernel, const py::buffer &out, const py::buffer &out_scale, const py::buffer &redo, int threads) {
        py::buffer_info a = c_contiguous(acc, "swiglu_quant_a8w8: acc (int32)", 4, 2, false);
        py::buffer_info w = c_contiguous(col_scale, "swiglu_quant_a8w8: col_scale (float32)", 4, 2, false);
        py::buffer_info g = c_contiguous(group, "swiglu_quant_a8w8: group (int64)", 8, 1, false);
        py::buffer_info x = c_contiguous(row_scale, "swiglu_quant_a8w8: row_scale (float32)", 4, 1, false);
        const auto rows = static_cast<std::size_t>(a.shape[0]);
        if (w.shape[1] != a.shape[1] || g.shape[0] != a.shape[0] || x.shape[0] != a.shape[0]) {
          throw std::invalid_argument(
              "swiglu_quant_a8w8: expected acc [rows, cols], col_scale [groups, cols], group and row_scale [rows]");
        }
        const auto *pg = static_cast<const std::int64_t *>(g.ptr);
        for (std::size_t r = 0; r < rows; ++r) {
          if (pg[r] < 0 || pg[r] >= w.shape[0]) {
            throw std::invalid_argument("swiglu_quant_a8w8: group[" + std::to_string(r) + "] = " +
                                        std::to_string(pg[r]) + " is not a row of col_scale");
          }
        }
        SwigluQuantArgs args{};
        args.acc = static_cast<const std::int32_t *>(a.ptr);
        args.col_scale = static_cast<const float *>(w.ptr);
        args.group = pg;
        args.row_scale = static_cast<const float *>(x.ptr);
        args.cols = static_cast<std::size_t>(a.shape[1]);
        run_swiglu_quant(args, "swiglu_quant_a8w8", rows, kernel, out, out_scale, redo, threads);
      },
      py::arg("acc"), py::arg("col_scale"), py::arg("group"), py::arg("row_scale"), py::arg("kernel"),
      py::arg("out"), py::arg("out_scale"), py::arg("redo"), py::arg("threads") = 1,
      "The A8W8 swiglu-quant epilogue of the simulator (sim/swiglu_quant.py), kernel 1 (v1) or 2 (v2), into out "
      "(int8 [rows, cols/2]) and out_scale (float32 [rows]); redo[r] = 1 marks a row the NumPy path must compute "
      "(a NaN, or an exp too close to an fp32 rounding midpoint to be sure of), whose outputs here are partial.");
  m.def(
      "swiglu_quant_f32",
      [](const py::buffer &values, int kernel, const py::buffer &out, const py::buffer &out_scale,
         const py::buffer &redo, int threads) {
        py::buffer_info v = c_contiguous(values, "swiglu_quant_f32: values (float32)", 4, 2, false);
        SwigluQuantArgs args{};
        args.values = static_cast<const float *>(v.ptr);
        args.cols = static_cast<std::size_t>(v.shape[1]);
        run_swiglu_quant(args, "swiglu_quant_f32", static_cast<std::size_t>(v.shape[0]), kernel, out, out_scale,
                         redo, threads);
      },
      py::arg("values"), py::arg("kernel"), py::arg("out"), py::arg("out_scale"), py::arg("redo"),
      py::arg("threads") = 1,
      "SwiGLU and the per-token int8 quantisation of already dequantised fp32 values [rows, cols] (the A8W4 "
      "path), kernel 1 (v1 quantisation) or 2 (v2); redo as swiglu_quant_a8w8.");
  m.def(
      "dequant_scatter",
      [](const py::buffer &y, const py::buffer &index, const py::buffer &acc, const py::buffer &col,
         const py::buffer &group, const py::buffer &row, int threads) {
        py::buffer_info yi = c_contiguous(y, "dequant_scatter: y (float32)", 4, 2, true);
        py::buffer_info ii = c_contiguous(index, "dequant_scatter: index (int64)", 8, 1, false);
        py::buffer_info ai = c_contiguous(acc, "dequant_scatter: acc (int32)", 4, 2, false);
        py::buffer_info ci = c_contiguous(col, "dequant_scatter: col (float32)", 4, 2, false);
        py::buffer_info gi = c_contiguous(group, "dequant_scatter: group (int64)", 8, 1, false);
        py::buffer_info ri = c_contiguous(row, "dequant_scatter: row (float32)", 4, 1, false);
        if (ai.shape[1] != yi.shape[1] || ci.shape[1] != yi.shape[1] || ii.shape[0] != ai.shape[0] ||
            gi.shape[0] != ai.shape[0] || ri.shape[0] != ai.shape[0]) {
          throw std::invalid_argument("dequant_scatter: expected y [batch, cols], acc [rows, cols], col [groups, "
                                      "cols], index, group and row [rows]");
        }
        const auto *pi = static_cast<const std::int64_t *>(ii.ptr);
        const auto *pg = static_cast<const std::int64_t *>(gi.ptr);
        for (py::ssize_t t = 0; t < ii.shape[0]; ++t) {
          if (pi[t] < 0 || pi[t] >= yi.shape[0] || pg[t] < 0 || pg[t] >= ci.shape[0]) {
            throw std::invalid_argument("dequant_scatter: row " + std::to_string(t) + " targets y row " +
                                        std::to_string(pi[t]) + " with col row " + std::to_string(pg[t]) +
                                        ": out of range");
          }
        }
        const DequantScatterArgs args{static_cast<float *>(yi.ptr), pi, static_cast<const std::int32_t *>(ai.ptr),
                                      static_cast<const float *>(ci.ptr), pg, static_cast<const float *>(ri.ptr),
                                      static_cast<std::size_t>(ai.shape[0]), static_cast<std::size_t>(ai.shape[1])};
        py::gil_scoped_release release;
        // column tiles: disjoint columns, so threads never meet, and within a tile the rows go in order
        over_row_chunks(args.cols, threads, 256,
                        [&](std::size_t c0, std::size_t c1) { dequant_scatter(args, c0, c1); });
      },
      py::arg("y"), py::arg("index"), py::arg("acc"), py::arg("col"), py::arg("group"), py::arg("row"),
      py::arg("threads") = 1,
      "for t = 0, 1, ... in order: y[index[t], j] += (fp32(acc[t, j]) * col[group[t], j]) * row[t] - one int32 -> "
      "fp32 rounding (nearest even), two fp32 multiplies and one fp32 add per element, in that order; every y "
      "element gets its adds in the rows' order (repeated targets included).");
  m.def(
      "exp_f64",
      [](const py::buffer &x, const py::buffer &out) {
        py::buffer_info xi = c_contiguous(x, "exp_f64: x (float64)", 8, 1, false);
        py::buffer_info oi = c_contiguous(out, "exp_f64: out (float64)", 8, 1, true);
        if (oi.shape[0] != xi.shape[0]) throw std::invalid_argument("exp_f64: x and out must have the same length");
        const auto *px = static_cast<const double *>(xi.ptr);
        auto *po = static_cast<double *>(oi.ptr);
        for (py::ssize_t i = 0; i < xi.shape[0]; ++i) {
          if (!(px[i] >= -87.0 && px[i] <= 88.0)) throw std::invalid_argument("exp_f64: x must lie in [-87, 88]");
          po[i] = exp_double(px[i]);
        }
      },
      py::arg("x"), py::arg("out"),
      "The swiglu-quant epilogue's double exp on [-87, 88], exposed for tests (its error bound sets the margin).");
  m.def(
      "exp_f32",
      [](const py::buffer &x, const py::buffer &out, const py::buffer &certain) {
        py::buffer_info xi = c_contiguous(x, "exp_f32: x (float32)", 4, 1, false);
        py::buffer_info oi = c_contiguous(out, "exp_f32: out (float32)", 4, 1, true);
        py::buffer_info ci = c_contiguous(certain, "exp_f32: certain (uint8)", 1, 1, true);
        if (oi.shape[0] != xi.shape[0] || ci.shape[0] != xi.shape[0]) {
          throw std::invalid_argument("exp_f32: x, out and certain must have the same length");
        }
        const auto *px = static_cast<const float *>(xi.ptr);
        auto *po = static_cast<float *>(oi.ptr);
        auto *pc = static_cast<std::uint8_t *>(ci.ptr);
        py::gil_scoped_release release;
        for (py::ssize_t i = 0; i < xi.shape[0]; ++i) {
          bool ok = true;
          po[i] = exp_f32_certain(px[i], ok);
          pc[i] = ok ? 1 : 0;
        }
      },
      py::arg("x"), py::arg("out"), py::arg("certain"),
      "The swiglu-quant epilogue's exp, exposed for tests: out = fp32 exp(x), certain = 1 where that is sure to be "
      "the correctly rounded fp32 exp.");
}
