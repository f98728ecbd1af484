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
#include <pybind11/pybind11.h>

#include "helpers.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ASCEND_MOE_X86 1
#endif

namespace py = pybind11;
using ascend_moe_kernels::c_contiguous;
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

}  // namespace

PYBIND11_MODULE(_epilogue, m) {
  m.doc() = "Compiled steps of the quantised epilogues (no torch, no CANN).";
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
}
