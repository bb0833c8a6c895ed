// int4 group-wise weight-only Linear, w[n, k] = scale[n, g] * (q[n, k] - zero_point[n, g]).
// Spec: reference.linear_int4. Reads the canonical packed layout (byte j = elements 2j | 2j+1 << 4).
//
// How: a nibble q OR-ed into bf16 0x4300 is exactly 128 + q, so 64 packed bytes become four
// bf16 vectors with one shift and one vpternlog each, and AVX512-BF16 vdpbf16ps multiplies them
// by the activations (converted to bf16 once per call and permuted per 128-element block to
// match the nibble order). Per group:  sum x (q - z) = sum x (128 + q) - (128 + z) * sum x.
// The (128 + z) * sum(x) term is subtracted once per row, vectorized over groups.
#include "dense.h"

namespace lowbit {
namespace {

constexpr int64_t kBlock = 128;  // elements per 64-byte weight block

// Word 2j+1 of a block's scale vector takes the scale of lane j's group; word 2j stays zero,
// so each 32-bit lane holds that scale as fp32.
void scale_index(int64_t group_size, uint16_t idx[32]) {
  for (int j = 0; j < 16; ++j) {
    idx[2 * j] = 0;
    idx[2 * j + 1] = uint16_t((8 * j) / group_size);
  }
}

// x [M, K] -> xp bf16 [M, Kp]: in block b, xp[32v + 2j + h] = x[8j + 4h + v] (the nibble order),
// and sx fp32 [M, Gp]: per-group sums of the bf16-rounded x (zero padded).
template <typename xt>
void prepare_x(const xt* x, int64_t M, int64_t K, int64_t group_size, bf16_t* xp, int64_t Kp,
               float* sx, int64_t Gp) {
  alignas(64) int32_t gather[16];
  for (int i = 0; i < 16; ++i) gather[i] = 4 * (i & 7);
  const __m512i base = _mm512_load_si512(gather);
  for (int64_t m = 0; m < M; ++m) {
    float* s = sx + m * Gp;
    std::fill(s, s + Gp, 0.f);
    for (int64_t k0 = 0; k0 < Kp; k0 += kBlock) {
      __m512 v[8];
      for (int i = 0; i < 8; ++i) {
        const int64_t k = k0 + 16 * i;
        v[i] = load16(x + m * K + k, tail_mask16(std::max<int64_t>(K - k, 0)));
        __m512 rounded = _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v[i]));
        if (k < K) s[k / group_size] += _mm512_reduce_add_ps(rounded);
      }
      for (int u = 0; u < 4; ++u) {
        const __m512i idx = _mm512_add_epi32(base, _mm512_set1_epi32(u));
        __m512 lo = _mm512_shuffle_f32x4(_mm512_permutex2var_ps(v[0], idx, v[1]),
                                         _mm512_permutex2var_ps(v[2], idx, v[3]), 0x44);
        __m512 hi = _mm512_shuffle_f32x4(_mm512_permutex2var_ps(v[4], idx, v[5]),
                                         _mm512_permutex2var_ps(v[6], idx, v[7]), 0x44);
        _mm512_storeu_si512(xp + m * Kp + k0 + 32 * u, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    }
  }
}

struct Int4Args {
  const uint8_t* packed;  // [N, K/2]
  const bf16_t* scale;    // [N, G]
  const bf16_t* zero;     // [N, G]
  const bf16_t* xp;       // [M, Kp]
  const float* sx;        // [M, Gp]
  const float* bias;      // [N] or null
  int64_t M, N, K, Kp, G, Gp, group_size, group_shift;
  alignas(64) uint16_t scale_idx[32];  // scale_index(group_size)
};

template <int R, int T, typename xt>
void int4_tile(const Int4Args& a, xt* y, int64_t n0, int64_t m0) {
  const __m512i low4 = _mm512_set1_epi16(0x000f), bf16_128 = _mm512_set1_epi16(0x4300);
  const __m512i sidx = _mm512_load_si512(a.scale_idx);
  __m512 acc[R][T];
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r)
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();

  for (int64_t k0 = 0; k0 < a.K; k0 += kBlock) {
    const __mmask64 bytes = tail_mask64((a.K - k0) / 2);
    const int64_t g0 = k0 >> a.group_shift;  // k0 / group_size (a power of two): no idiv per block
    const __mmask8 groups = __mmask8((1u << std::min<int64_t>(4, a.G - g0)) - 1u);
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const int64_t n = n0 + r;
      const uint8_t* row = a.packed + n * (a.K / 2) + k0 / 2;
      prefetch_row(row);
      const __m512i v = _mm512_maskz_loadu_epi8(bytes, row);
      // (A & B) | C = 0xEA: the nibble in a bf16 lane of value 128 + q.
      const __m512i w0 = _mm512_ternarylogic_epi32(v, low4, bf16_128, 0xEA);
      const __m512i w1 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), low4, bf16_128, 0xEA);
      const __m512i w2 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 8), low4, bf16_128, 0xEA);
      const __m512i w3 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 12), low4, bf16_128, 0xEA);
      const __m128i s_raw = _mm_maskz_loadu_epi16(groups, a.scale + n * a.G + g0);
      const __m512 s = _mm512_castsi512_ps(
          _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, sidx, _mm512_castsi128_si512(s_raw)));
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) {
        const bf16_t* xb = a.xp + (m0 + t) * a.Kp + k0;
        __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w0, (__m512bh)_mm512_loadu_si512(xb));
        d = _mm512_dpbf16_ps(d, (__m512bh)w1, (__m512bh)_mm512_loadu_si512(xb + 32));
        d = _mm512_dpbf16_ps(d, (__m512bh)w2, (__m512bh)_mm512_loadu_si512(xb + 64));
        d = _mm512_dpbf16_ps(d, (__m512bh)w3, (__m512bh)_mm512_loadu_si512(xb + 96));
        acc[r][t] = _mm512_fmadd_ps(d, s, acc[r][t]);
      }
    }
  }
  // Subtract sum_g scale_g * (128 + zero_g) * sum(x in g).
  const __m512 c128 = _mm512_set1_ps(128.f);
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    for (int64_t g = 0; g < a.G; g += 16) {
      const __mmask16 mask = tail_mask16(a.G - g);
      const __m512 c = _mm512_mul_ps(load16_bf16(a.scale + n * a.G + g, mask),
                                     _mm512_add_ps(load16_bf16(a.zero + n * a.G + g, mask), c128));
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t)
        acc[r][t] = _mm512_fnmadd_ps(c, _mm512_loadu_ps(a.sx + (m0 + t) * a.Gp + g), acc[r][t]);
    }
  }
  store_row_sums<R, T>(acc, y, a.N, n0, m0, a.bias);
}

template <int R, typename xt>
void int4_rows(const Int4Args& a, xt* y, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) int4_tile<R, 4>(a, y, n0, m);
  switch (a.M - m) {
    case 3: int4_tile<R, 3>(a, y, n0, m); break;
    case 2: int4_tile<R, 2>(a, y, n0, m); break;
    case 1: int4_tile<R, 1>(a, y, n0, m); break;
    default: break;
  }
}

template <typename xt>
void int4_linear_impl(const at::Tensor& x, Int4Args& a, at::Tensor& y) {
  at::Tensor xp = at::empty({a.M, a.Kp}, x.options().dtype(at::kBFloat16));
  at::Tensor sx = at::empty({a.M, a.Gp}, x.options().dtype(at::kFloat));
  bf16_t* xpp = reinterpret_cast<bf16_t*>(xp.data_ptr<at::BFloat16>());
  prepare_x(x.data_ptr<xt>(), a.M, a.K, a.group_size, xpp, a.Kp, sx.data_ptr<float>(), a.Gp);
  a.xp = xpp;
  a.sx = sx.data_ptr<float>();
  xt* yp = y.data_ptr<xt>();
  const int64_t blocks = a.N / 4;
  at::parallel_for(0, blocks, grain_for(blocks), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) int4_rows<4>(a, yp, b * 4);
  });
  for (int64_t n = blocks * 4; n < a.N; ++n) int4_rows<1>(a, yp, n);
}

}  // namespace

// x [M, K] fp32|bf16, packed uint8 [N, K/2], scale/zero bf16 [N, K/group_size], bias fp32 [N].
at::Tensor int4_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                       const at::Tensor& zero_point, int64_t group_size,
                       const c10::optional<at::Tensor>& bias) {
  Int4Args a{};
  a.M = x.size(0);
  a.K = x.size(1);
  a.N = packed.size(0);
  a.Kp = (a.K + kBlock - 1) / kBlock * kBlock;
  a.G = a.K / group_size;
  a.Gp = (a.G + 15) / 16 * 16;
  a.group_size = group_size;
  a.group_shift = __builtin_ctzll(uint64_t(group_size));
  scale_index(group_size, a.scale_idx);
  a.packed = packed.data_ptr<uint8_t>();
  a.scale = reinterpret_cast<const bf16_t*>(scale.data_ptr<at::BFloat16>());
  a.zero = reinterpret_cast<const bf16_t*>(zero_point.data_ptr<at::BFloat16>());
  a.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({a.M, a.N}, x.options());
  if (x.scalar_type() == at::kFloat) int4_linear_impl<float>(x, a, y);
  else int4_linear_impl<at::BFloat16>(x, a, y);
  return y;
}

namespace {

// Rows n0..n1-1 of bf16(scale * (q - zero_point)) into dst [n1 - n0, K].
void int4_dequant_rows(const uint8_t* pp, const bf16_t* sp, const bf16_t* zp, int64_t K, int64_t group_size,
                       int64_t n0, int64_t n1, bf16_t* dst) {
  const int64_t G = K / group_size;
  at::parallel_for(n0, n1, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      bf16_t* out = dst + (n - n0) * K;
      for (int64_t k = 0; k < K; k += 32) {  // 32 elements never straddle a group
        const int64_t g = n * G + k / group_size;
        const __m512 s = _mm512_set1_ps(bf16_to_float(sp[g])), z = _mm512_set1_ps(bf16_to_float(zp[g]));
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(pp + n * K / 2 + k / 2)));
        const __m512 lo = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15))), z), s);
        const __m512 hi = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), z), s);
        const __m512i lo16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
        const __m512i hi16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
        _mm512_storeu_si512(out + k, _mm512_or_si512(lo16, _mm512_slli_epi32(hi16, 16)));
      }
    }
  });
}

}  // namespace

// Large-M path: chunks of bf16-dequantized rows, one bf16 GEMM each (dense.h).
at::Tensor int4_dense_bf16(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                             const at::Tensor& zero_point, int64_t group_size,
                             const c10::optional<at::Tensor>& bias) {
  const int64_t K = packed.size(1) * 2;
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  const bf16_t* sp = reinterpret_cast<const bf16_t*>(scale.data_ptr<at::BFloat16>());
  const bf16_t* zp = reinterpret_cast<const bf16_t*>(zero_point.data_ptr<at::BFloat16>());
  return dense_bf16_linear(x, packed.size(0), bias, [&](int64_t n0, int64_t n1, bf16_t* dst) {
    int4_dequant_rows(pp, sp, zp, K, group_size, n0, n1, dst);
  });
}

}  // namespace lowbit
