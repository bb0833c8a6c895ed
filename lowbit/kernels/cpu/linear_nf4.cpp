// NF4 (QLoRA, Dettmers et al. 2023) weight-only Linear with double-quantized block scales.
// Spec: lowbit.kernels.reference.linear_nf4 (= QTensor.dequantize() then F.linear).
//   codes  uint8 [N, K/2]: byte j of a row = element 2j (low nibble) | element 2j+1 (high nibble)
//   absmax of block b (b = n * K/bs + k/bs), QLoRA's double quantization:
//     s[b] = float(s8[b]) * s2[b / 256] + offset      s8 int8 [P >= N*K/bs], s2 fp32 [P/256]
//   w[n, k] = NF4[codes[n, k]] * s[n * K/bs + k/bs]
// How (small M): per row and block the 16-entry table NF4 * s[b] is built once (one vmulps), and
// vpermps (_mm512_permutexvar_ps) looks 16 nibbles up in it; the weights are never written out.
// x is de-interleaved once per call (per 32 elements: the 16 even ones, then the 16 odd ones) so
// the low nibbles of 16 bytes meet x[2j] and the high nibbles x[2j+1]. fp32 FMA throughout: the
// only difference from the reference is the order of the sums. Rows are split over threads.
// Large M (nf4_dense_fp32): nf4_dequant writes the fp32 [N, K] weight for one dense GEMM.
#include "common.h"

namespace lowbit {
namespace {

constexpr float kNF4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

struct NF4Args {
  const uint8_t* codes;  // [N, K/2]
  const int8_t* s8;      // [>= N*G]
  const float* s2;       // [>= N*G / 256]
  float offset;
  const float* xd;       // [M, K] de-interleaved x, fp32
  const float* bias;     // [N] or null
  int64_t M, N, K, G, bs;
};

inline float block_scale(const NF4Args& a, int64_t b) {
  return float(a.s8[b]) * a.s2[b >> 8] + a.offset;
}

template <typename xt>
void deinterleave(const xt* x, int64_t M, int64_t K, float* xd) {
  alignas(64) int32_t idx_lo[16], idx_hi[16];
  for (int j = 0; j < 16; ++j) { idx_lo[j] = 2 * j; idx_hi[j] = 2 * j + 1; }
  const __m512i lo = _mm512_load_si512(idx_lo), hi = _mm512_load_si512(idx_hi);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; k += 32) {
      const __m512 a = load16(x + m * K + k, 0xffff), b = load16(x + m * K + k + 16, 0xffff);
      _mm512_storeu_ps(xd + m * K + k, _mm512_permutex2var_ps(a, lo, b));
      _mm512_storeu_ps(xd + m * K + k + 16, _mm512_permutex2var_ps(a, hi, b));
    }
}

template <int R, int T, typename xt>
void nf4_tile(const NF4Args& a, xt* y, int64_t n0, int64_t m0) {
  const __m512 table = _mm512_loadu_ps(kNF4);
  const __m512i low4 = _mm512_set1_epi32(15);
  __m512 acc[R][T];
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r)
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    __m512 lut[R];
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r)
      lut[r] = _mm512_mul_ps(table, _mm512_set1_ps(block_scale(a, (n0 + r) * a.G + g)));
    for (int64_t k = g * a.bs; k < (g + 1) * a.bs; k += 32) {
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512i b = _mm512_cvtepu8_epi32(
            _mm_loadu_si128((const __m128i*)(a.codes + (n0 + r) * (a.K / 2) + k / 2)));
        const __m512 w_even = _mm512_permutexvar_ps(_mm512_and_si512(b, low4), lut[r]);
        const __m512 w_odd = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut[r]);
        LOWBIT_UNROLL
        for (int t = 0; t < T; ++t) {
          const float* xk = a.xd + (m0 + t) * a.K + k;
          acc[r][t] = _mm512_fmadd_ps(w_even, _mm512_loadu_ps(xk), acc[r][t]);
          acc[r][t] = _mm512_fmadd_ps(w_odd, _mm512_loadu_ps(xk + 16), acc[r][t]);
        }
      }
    }
  }
  store_row_sums<R, T>(acc, y, a.N, n0, m0, a.bias);
}

template <int R, typename xt>
void nf4_rows(const NF4Args& a, xt* y, int64_t n0) {
  int64_t m = 0;
  for (; m + 2 <= a.M; m += 2) nf4_tile<R, 2>(a, y, n0, m);
  if (m < a.M) nf4_tile<R, 1>(a, y, n0, m);
}

NF4Args args_of(const at::Tensor& codes, const at::Tensor& s8, const at::Tensor& s2,
                double offset, int64_t block_size) {
  NF4Args a{};
  a.N = codes.size(0);
  a.K = codes.size(1) * 2;
  a.bs = block_size;
  a.G = a.K / block_size;
  a.codes = codes.data_ptr<uint8_t>();
  a.s8 = s8.data_ptr<int8_t>();
  a.s2 = s2.data_ptr<float>();
  a.offset = float(offset);
  return a;
}

template <typename xt>
void nf4_linear_impl(const at::Tensor& x, NF4Args& a, at::Tensor& y) {
  at::Tensor xd = at::empty({a.M, a.K}, x.options().dtype(at::kFloat));
  deinterleave(x.data_ptr<xt>(), a.M, a.K, xd.data_ptr<float>());
  a.xd = xd.data_ptr<float>();
  xt* yp = y.data_ptr<xt>();
  const int64_t blocks = a.N / 4;
  at::parallel_for(0, blocks, grain_for(blocks), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) nf4_rows<4>(a, yp, b * 4);
  });
  for (int64_t n = blocks * 4; n < a.N; ++n) nf4_rows<1>(a, yp, n);
}

}  // namespace

// x [M, K] fp32|bf16 (K % 32 == 0, block_size % 32 == 0), codes uint8 [N, K/2], s8 int8 [P],
// s2 fp32 [P/256], bias fp32 [N] -> y [M, N] in x's dtype.
at::Tensor nf4_gemv(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& s8,
                      const at::Tensor& s2, double offset, int64_t block_size,
                      const c10::optional<at::Tensor>& bias) {
  NF4Args a = args_of(codes, s8, s2, offset, block_size);
  a.M = x.size(0);
  a.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({a.M, a.N}, x.options());
  if (x.scalar_type() == at::kFloat) nf4_linear_impl<float>(x, a, y);
  else nf4_linear_impl<at::BFloat16>(x, a, y);
  return y;
}

// fp32 [N, K] = NF4[codes] * s, for the dense large-M path.
at::Tensor nf4_dequant(const at::Tensor& codes, const at::Tensor& s8, const at::Tensor& s2,
                       double offset, int64_t block_size) {
  const NF4Args a = args_of(codes, s8, s2, offset, block_size);
  at::Tensor w = at::empty({a.N, a.K}, codes.options().dtype(at::kFloat));
  float* wp = w.data_ptr<float>();
  at::parallel_for(0, a.N, 16, [&](int64_t n0, int64_t n1) {
    const __m512 table = _mm512_loadu_ps(kNF4);
    const __m512i low4 = _mm512_set1_epi32(15);
    // interleave (even, odd) back into element order
    alignas(64) int32_t i0[16], i1[16];
    for (int j = 0; j < 8; ++j) { i0[2 * j] = j; i0[2 * j + 1] = 16 + j; i1[2 * j] = 8 + j; i1[2 * j + 1] = 24 + j; }
    const __m512i p0 = _mm512_load_si512(i0), p1 = _mm512_load_si512(i1);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t g = 0; g < a.G; ++g) {
        const __m512 lut = _mm512_mul_ps(table, _mm512_set1_ps(block_scale(a, n * a.G + g)));
        for (int64_t k = g * a.bs; k < (g + 1) * a.bs; k += 32) {
          const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(a.codes + n * (a.K / 2) + k / 2)));
          const __m512 e = _mm512_permutexvar_ps(_mm512_and_si512(b, low4), lut);
          const __m512 o = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);
          _mm512_storeu_ps(wp + n * a.K + k, _mm512_permutex2var_ps(e, p0, o));
          _mm512_storeu_ps(wp + n * a.K + k + 16, _mm512_permutex2var_ps(e, p1, o));
        }
      }
  });
  return w;
}

// Large-M path: the weight dequantized to fp32 once, then one GEMM in x's dtype.
at::Tensor nf4_dense_fp32(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& s8,
                          const at::Tensor& s2, double offset, int64_t block_size,
                          const c10::optional<at::Tensor>& bias) {
  const at::Tensor w = nf4_dequant(codes, s8, s2, offset, block_size).to(x.scalar_type());
  if (!bias.has_value()) return at::linear(x, w);
  return at::linear(x, w, bias->to(x.scalar_type()));
}

}  // namespace lowbit
