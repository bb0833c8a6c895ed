// int8 weight-only Linear: y[m, n] = scale[n] * sum_k x[m, k] * q[n, k] + bias[n].
// Spec: reference.linear_int8_weight_only. Weights stay in the canonical int8 [N, K] layout;
// each 16 weights are widened to fp32 once and used by T tokens (fp32 FMA, so fp32
// activations are not rounded). Large M: bf16 dequantization in row chunks + bf16 GEMM.
#include "dense.h"

namespace lowbit {
namespace {

template <int R, int T, typename xt>
void int8_tile(const xt* x, int64_t K, const int8_t* q, const float* scale, const float* bias,
               xt* y, int64_t N, int64_t n0, int64_t m0) {
  __m512 acc[R][T];
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r)
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = tail_mask16(K - k);
    __m512 xv[T];
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) xv[t] = load16(x + (m0 + t) * K + k, mask);
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const int8_t* row = q + (n0 + r) * K + k;
      if ((k & 63) == 0) prefetch_row(row);
      __m128i raw = _mm_maskz_loadu_epi8(mask, row);
      __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw));
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(w, xv[t], acc[r][t]);
    }
  }
  LOWBIT_UNROLL
  for (int t = 0; t < T; ++t) {
    xt* out = y + (m0 + t) * N + n0;
    if constexpr (R == 4) {
      float s[4];
      _mm_storeu_ps(s, hsum4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
      LOWBIT_UNROLL
      for (int r = 0; r < 4; ++r) store_out(out + r, s[r] * scale[n0 + r] + (bias ? bias[n0 + r] : 0.f));
    } else {
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r)
        store_out(out + r, _mm512_reduce_add_ps(acc[r][t]) * scale[n0 + r] + (bias ? bias[n0 + r] : 0.f));
    }
  }
}

template <int R, typename xt>
void int8_rows(const xt* x, int64_t M, int64_t K, const int8_t* q, const float* scale,
               const float* bias, xt* y, int64_t N, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) int8_tile<R, 4>(x, K, q, scale, bias, y, N, n0, m);
  switch (M - m) {
    case 3: int8_tile<R, 3>(x, K, q, scale, bias, y, N, n0, m); break;
    case 2: int8_tile<R, 2>(x, K, q, scale, bias, y, N, n0, m); break;
    case 1: int8_tile<R, 1>(x, K, q, scale, bias, y, N, n0, m); break;
    default: break;
  }
}

template <typename xt>
void int8_linear_impl(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                      const float* bias, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  const xt* xp = x.data_ptr<xt>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  xt* yp = y.data_ptr<xt>();
  const int64_t blocks = N / 4;
  at::parallel_for(0, blocks, grain_for(blocks), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) int8_rows<4>(xp, M, K, qp, sp, bias, yp, N, b * 4);
  });
  for (int64_t n = blocks * 4; n < N; ++n) int8_rows<1>(xp, M, K, qp, sp, bias, yp, N, n);
}

}  // namespace

// x [M, K] fp32|bf16 contiguous, q int8 [N, K], scale fp32 [N], bias fp32 [N] or undefined.
at::Tensor int8_gemv(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const c10::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty({x.size(0), q.size(0)}, x.options());
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  if (x.scalar_type() == at::kFloat) int8_linear_impl<float>(x, q, scale, bp, y);
  else int8_linear_impl<at::BFloat16>(x, q, scale, bp, y);
  return y;
}

namespace {

// Rows n0..n1-1 of bf16(scale[n] * q[n, k]) into dst [n1 - n0, K].
void int8_dequant_rows(const int8_t* qp, const float* sp, int64_t K, int64_t n0, int64_t n1, bf16_t* dst) {
  at::parallel_for(n0, n1, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      const __m512 s = _mm512_set1_ps(sp[n]);
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 mask = tail_mask16(K - k);
        __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, qp + n * K + k)));
        _mm256_mask_storeu_epi16(dst + (n - n0) * K + k, mask, (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(v, s)));
      }
    }
  });
}

}  // namespace

// Large-M path: chunks of bf16-dequantized rows, one bf16 GEMM each (dense.h).
at::Tensor int8_dense_bf16(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                             const c10::optional<at::Tensor>& bias) {
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  const int64_t K = q.size(1);
  return dense_bf16_linear(x, q.size(0), bias, [&](int64_t n0, int64_t n1, bf16_t* dst) {
    int8_dequant_rows(qp, sp, K, n0, n1, dst);
  });
}

}  // namespace lowbit
