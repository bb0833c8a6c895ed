// W8A8 dynamic Linear. Spec: reference.linear_w8a8_dynamic and reference.quantize_activations.
//   x_q[m, :] = round(x[m, :] * (127 / amax_m)) in [-127, 127],  x_scale[m] = amax_m / 127
//   y[m, n]   = float(sum_k x_q[m, k] * q[n, k]) * (x_scale[m] * scale[n]) + bias[n]
// With activation groups (one scale per token and `group` inputs, like DeepSeek-V3's 1x128
// activation tiles) the int32 sum of each group is scaled by its x_scale[m, g] and summed in fp32.
// How: AVX512-VNNI vpdpbusd multiplies u8 by s8, so the weight bytes are flipped to
// u8 = q + 128 (one xor per 64 weights, shared by all tokens) and the activations stay s8;
// 128 * sum_k x_q[m, k] is subtracted at the end. Canonical int8 [N, K] weights, no prepack.
#include "w8a8.h"

namespace lowbit {
namespace {

// One token: x_q (zero padded to Kp), its scale and 128 * sum(x_q).
template <typename xt>
void quantize_token(const xt* x, int64_t K, int8_t* xq, int64_t Kp, float* x_scale, int32_t* offset) {
  __m512 amax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16)
    amax = _mm512_max_ps(amax, _mm512_abs_ps(load16(x + k, tail_mask16(K - k))));
  const float a = _mm512_reduce_max_ps(amax);
  const float inv = a > 0.f ? 127.f / a : 0.f;
  *x_scale = a / 127.f;
  const __m512 vinv = _mm512_set1_ps(inv);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t k = 0; k < Kp; k += 16) {
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(load16(x + k, tail_mask16(std::max<int64_t>(K - k, 0))), vinv));
    sum = _mm512_add_epi32(sum, q);
    _mm_storeu_si128((__m128i*)(xq + k), _mm512_cvtsepi32_epi8(q));
  }
  *offset = 128 * _mm512_reduce_add_epi32(sum);
}

// One token in groups of `group` (a multiple of 64, dividing K = Kp): scale and offset per group.
template <typename xt>
void quantize_token_groups(const xt* x, int64_t K, int64_t group, int8_t* xq, float* x_scale, int32_t* offset) {
  for (int64_t g0 = 0, g = 0; g0 < K; g0 += group, ++g) {
    quantize_token(x + g0, group, xq + g0, group, x_scale + g, offset + g);
  }
}

template <int R, int T, typename xt>
void w8a8_tile(const W8A8Args& a, xt* y, int64_t n0, int64_t m0) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512i acc[R][T];
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r)
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
  for (int64_t k = 0; k < a.K; k += kW8A8Chunk) {
    const __mmask64 mask = tail_mask64(a.K - k);
    __m512i w[R];
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const int8_t* row = a.q + (n0 + r) * a.K + k;
      prefetch_row(row);
      w[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, row), flip);
    }
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) {
      const __m512i xv = _mm512_loadu_si512(a.xq + (m0 + t) * a.Kp + k);
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], w[r], xv);
    }
  }
  LOWBIT_UNROLL
  for (int t = 0; t < T; ++t) {
    const int64_t m = m0 + t;
    xt* out = y + m * a.N + n0;
    int32_t s[R];
    int r0 = 0;
    for (; r0 + 4 <= R; r0 += 4)
      _mm_storeu_si128((__m128i*)(s + r0), hsum4(acc[r0][t], acc[r0 + 1][t], acc[r0 + 2][t], acc[r0 + 3][t]));
    for (; r0 < R; ++r0) s[r0] = _mm512_reduce_add_epi32(acc[r0][t]);
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const float v = float(s[r] - a.offset[m]) * (a.x_scale[m] * a.scale[n0 + r]);
      store_out(out + r, a.bias ? v + a.bias[n0 + r] : v);
    }
  }
}

// Grouped activations: each group's int32 lanes (less the u8 shift, taken from lane 0) are
// converted to fp32 and accumulated with weight x_scale[m, g]; K is a multiple of the group.
template <int R, int T, typename xt>
void w8a8_tile_grouped(const W8A8Args& a, xt* y, int64_t n0, int64_t m0) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512 accf[R][T];
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r)
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) accf[r][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    __m512i acc[R][T];
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r)
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
    for (int64_t k = g * a.group; k < (g + 1) * a.group; k += kW8A8Chunk) {
      __m512i w[R];
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r) {
        const int8_t* row = a.q + (n0 + r) * a.K + k;
        prefetch_row(row);
        w[r] = _mm512_xor_si512(_mm512_loadu_si512(row), flip);
      }
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512i xv = _mm512_loadu_si512(a.xq + (m0 + t) * a.Kp + k);
        LOWBIT_UNROLL
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], w[r], xv);
      }
    }
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) {
      const int64_t i = (m0 + t) * a.G + g;
      const __m512i off = _mm512_set1_epi32(a.offset[i]);
      const __m512 s = _mm512_set1_ps(a.x_scale[i]);
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512i v = _mm512_mask_sub_epi32(acc[r][t], __mmask16(1), acc[r][t], off);
        accf[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), s, accf[r][t]);
      }
    }
  }
  LOWBIT_UNROLL
  for (int t = 0; t < T; ++t) {
    xt* out = y + (m0 + t) * a.N + n0;
    float s[R];
    int r0 = 0;
    for (; r0 + 4 <= R; r0 += 4)
      _mm_storeu_ps(s + r0, hsum4(accf[r0][t], accf[r0 + 1][t], accf[r0 + 2][t], accf[r0 + 3][t]));
    for (; r0 < R; ++r0) s[r0] = _mm512_reduce_add_ps(accf[r0][t]);
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const float v = s[r] * a.scale[n0 + r];
      store_out(out + r, a.bias ? v + a.bias[n0 + r] : v);
    }
  }
}

constexpr int kRows = 3;    // rows of q per register tile: 3 x 8 int32 accumulators, the
constexpr int kTokens = 8;  // fastest of 4x4, 4x6, 3x8, 6x4, 2x8, 8x2 measured
constexpr int kTokensGrouped = 4;  // grouped: 3 x 4 int32 + 3 x 4 fp32 accumulators

template <int R, int T, bool Grouped, typename xt>
inline void tile(const W8A8Args& a, xt* y, int64_t n0, int64_t m0) {
  if constexpr (Grouped) w8a8_tile_grouped<R, T>(a, y, n0, m0);
  else w8a8_tile<R, T>(a, y, n0, m0);
}

template <int R, bool Grouped, typename xt>
void w8a8_rows(const W8A8Args& a, xt* y, int64_t n0) {
  constexpr int kT = Grouped ? kTokensGrouped : kTokens;
  int64_t m = 0;
  for (; m + kT <= a.M; m += kT) tile<R, kT, Grouped>(a, y, n0, m);
  switch (a.M - m) {
    case 7: tile<R, 7, Grouped>(a, y, n0, m); break;
    case 6: tile<R, 6, Grouped>(a, y, n0, m); break;
    case 5: tile<R, 5, Grouped>(a, y, n0, m); break;
    case 4: tile<R, 4, Grouped>(a, y, n0, m); break;
    case 3: tile<R, 3, Grouped>(a, y, n0, m); break;
    case 2: tile<R, 2, Grouped>(a, y, n0, m); break;
    case 1: tile<R, 1, Grouped>(a, y, n0, m); break;
    default: break;
  }
}

template <bool Grouped, typename xt>
void vnni_rows(const W8A8Args& a, xt* y, int64_t n_begin) {
  const int64_t blocks = (a.N - n_begin) / kRows;
  at::parallel_for(0, blocks, grain_for(blocks), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) w8a8_rows<kRows, Grouped>(a, y, n_begin + b * kRows);
  });
  for (int64_t n = n_begin + blocks * kRows; n < a.N; ++n) w8a8_rows<1, Grouped>(a, y, n);
}

template <typename xt>
void quantize_tokens(const at::Tensor& x, int64_t Kp, int64_t group, at::Tensor& xq, at::Tensor& xs,
                     at::Tensor& off) {
  const int64_t K = x.size(1), G = xs.size(1);
  const xt* xp = x.data_ptr<xt>();
  int8_t* xqp = xq.data_ptr<int8_t>();
  float* xsp = xs.data_ptr<float>();
  int32_t* offp = off.data_ptr<int32_t>();
  at::parallel_for(0, x.size(0), 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      if (group) quantize_token_groups(xp + m * K, K, group, xqp + m * Kp, xsp + m * G, offp + m * G);
      else quantize_token(xp + m * K, K, xqp + m * Kp, Kp, xsp + m, offp + m);
    }
  });
}

// {x_q [M, Kp], x_scale [M, G], offset [M, G]}; G = K / group, or 1 when group == 0.
std::vector<at::Tensor> quantize(const at::Tensor& x, int64_t group) {
  const int64_t M = x.size(0), K = x.size(1), Kp = (K + kW8A8Chunk - 1) / kW8A8Chunk * kW8A8Chunk;
  TORCH_CHECK(group == 0 || (group % kW8A8Chunk == 0 && K % group == 0),
              "lowbit w8a8: activation group must be a multiple of 64 dividing K = ", K, ", got ", group);
  const int64_t G = group ? K / group : 1;
  at::Tensor xq = at::empty({M, Kp}, x.options().dtype(at::kChar));
  at::Tensor xs = at::empty({M, G}, x.options().dtype(at::kFloat));
  at::Tensor off = at::empty({M, G}, x.options().dtype(at::kInt));
  if (x.scalar_type() == at::kFloat) quantize_tokens<float>(x, Kp, group, xq, xs, off);
  else quantize_tokens<at::BFloat16>(x, Kp, group, xq, xs, off);
  return {xq, xs, off};
}

}  // namespace

W8A8Args w8a8_prepare(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                      const c10::optional<at::Tensor>& bias, int64_t group, std::vector<at::Tensor>& keep) {
  keep = quantize(x, group);
  W8A8Args a{};
  a.M = x.size(0);
  a.K = x.size(1);
  a.Kp = keep[0].size(1);
  a.xq = keep[0].data_ptr<int8_t>();
  a.x_scale = keep[1].data_ptr<float>();
  a.offset = keep[2].data_ptr<int32_t>();
  a.N = q.size(0);
  a.q = q.data_ptr<int8_t>();
  a.scale = scale.data_ptr<float>();
  a.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  a.group = group;
  a.G = keep[1].size(1);
  return a;
}

void w8a8_vnni_rows(const W8A8Args& a, at::Tensor& y, int64_t n_begin) {
  const bool f32 = y.scalar_type() == at::kFloat;
  if (a.group) {
    if (f32) vnni_rows<true>(a, y.data_ptr<float>(), n_begin);
    else vnni_rows<true>(a, y.data_ptr<at::BFloat16>(), n_begin);
  } else {
    if (f32) vnni_rows<false>(a, y.data_ptr<float>(), n_begin);
    else vnni_rows<false>(a, y.data_ptr<at::BFloat16>(), n_begin);
  }
}

// x [M, K] fp32|bf16, q int8 [N, K], scale fp32 [N], bias fp32 [N] -> y [M, N] in x's dtype.
// group: activation scales per token and `group` inputs (a multiple of 64 dividing K), 0 = per token.
at::Tensor w8a8_vnni(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const c10::optional<at::Tensor>& bias, int64_t group) {
  std::vector<at::Tensor> keep;
  const W8A8Args a = w8a8_prepare(x, q, scale, bias, group, keep);
  at::Tensor y = at::empty({a.M, a.N}, x.options());
  w8a8_vnni_rows(a, y, 0);
  return y;
}

// The kernels' own activation quantization, exposed so tests can compare it with the reference:
// {x_q [M, K], x_scale [M] (per token) or [M, K / group]}.
std::vector<at::Tensor> quantize_activations(const at::Tensor& x, int64_t group) {
  auto r = quantize(x, group);
  return {r[0].narrow(1, 0, x.size(1)), group ? r[1] : r[1].reshape({x.size(0)})};
}

}  // namespace lowbit
