// Shared helpers for lowbit's AVX-512 CPU kernels (see reference.py for the math).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

// Fully unroll tile loops over rows/tokens: GCC then keeps the accumulator arrays in registers
// (without it they live on the stack and every dot product waits on a store and a reload).
#define LOWBIT_UNROLL _Pragma("GCC unroll 16")

namespace lowbit {

// Software prefetch distance (bytes ahead in each weight row) for the streaming kernels:
// measured ~15% faster at batch 1 than the hardware prefetchers alone.
constexpr int kPrefetchBytes = 1024;

inline void prefetch_row(const void* p) { _mm_prefetch(static_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0); }

using bf16_t = uint16_t;  // raw bfloat16 bits

inline float bf16_to_float(bf16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16_t float_to_bf16(float f) {  // round to nearest even, like torch
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t(u >> 16);
}

inline __mmask16 tail_mask16(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }
inline __mmask64 tail_mask64(int64_t n) { return n >= 64 ? ~__mmask64(0) : ((__mmask64(1) << n) - 1u); }

// 16 activations as fp32, from fp32 or bf16 storage; lanes past `mask` are zero.
inline __m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 load16(const at::BFloat16* p, __mmask16 mask) {
  __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// 16 bf16 values (e.g. scales) widened to fp32.
inline __m512 load16_bf16(const bf16_t* p, __mmask16 mask) {
  __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// Lane sums of four vectors: returns {sum(a), sum(b), sum(c), sum(d)}.
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512 lo = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd)));
  __m512 hi = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd)));
  __m512 s = _mm512_add_ps(lo, hi);  // each 128-bit lane: partial {a, b, c, d}
  __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
  return _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
}

// Exact int32 version of hsum4.
inline __m128i hsum4(__m512i a, __m512i b, __m512i c, __m512i d) {
  __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
  __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
  __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti32x8_epi32(s, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
}

inline void store_out(float* p, float v) { *p = v; }
inline void store_out(at::BFloat16* p, float v) {
  bf16_t b = float_to_bf16(v);
  std::memcpy(p, &b, 2);
}

// Tile epilogue of the fp32-accumulating GEMV kernels (int4, 2..7-bit, NF4):
// y[m0 + t, n0 + r] = (sum of acc[r][t]'s 16 lanes) + bias[n0 + r], for R rows and T tokens.
template <int R, int T, typename xt>
inline void store_row_sums(__m512 (&acc)[R][T], xt* y, int64_t N, int64_t n0, int64_t m0, const float* bias) {
  LOWBIT_UNROLL
  for (int t = 0; t < T; ++t) {
    xt* out = y + (m0 + t) * N + n0;
    if constexpr (R == 4) {
      float s[4];
      _mm_storeu_ps(s, hsum4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
      LOWBIT_UNROLL
      for (int r = 0; r < 4; ++r) store_out(out + r, s[r] + (bias ? bias[n0 + r] : 0.f));
    } else {
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r) store_out(out + r, _mm512_reduce_add_ps(acc[r][t]) + (bias ? bias[n0 + r] : 0.f));
    }
  }
}

// Row blocks handed to each thread: enough to balance 2+ threads, large enough to amortize.
inline int64_t grain_for(int64_t blocks) {
  int64_t threads = at::get_num_threads();
  return std::max<int64_t>(1, blocks / (threads * 8));
}

}  // namespace lowbit
