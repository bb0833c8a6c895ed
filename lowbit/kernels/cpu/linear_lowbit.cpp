// 2..7-bit group-wise weight-only Linear, w[n, k] = scale[n, g] * (q[n, k] - zero_point[n, g]).
// Spec: reference.linear_lowbit. Reads the canonical packed layout of lowbit.primitives.pack:
// value i of a row starts at bit i * bits of the row's little-endian bit string.
//
// How: 32 values (4 * bits bytes) are loaded at once; AVX512-VBMI vpermb puts the two bytes
// that hold value i into 16-bit lane i, vpsrlvw shifts each lane by (i * bits) % 8, and one
// vpternlog keeps the low `bits` bits OR-ed into bf16 0x4300 (exactly 128 + q). vdpbf16ps then
// multiplies the 32 lanes by the activations (bf16, natural order). Per group, as in int4:
//   sum x (q - z) = sum x (128 + q) - (128 + z) * sum x.
#include "dense.h"

namespace lowbit {
namespace {

constexpr int64_t kStep = 32;  // values per unpack

struct LowbitArgs {
  const uint8_t* packed;  // [N, ceil(K * bits / 8)]
  const bf16_t* scale;    // [N, G]
  const bf16_t* zero;     // [N, G]
  const bf16_t* xb;       // [M, K] bf16
  const float* sx;        // [M, G]: sums of the bf16-rounded x per group
  const float* bias;      // [N] or null
  int64_t M, N, K, G, group_size, row_bytes;
  int bits;
  alignas(64) uint8_t perm[64];   // vpermb indices: lane i <- bytes (i*bits)/8, +1
  alignas(64) uint16_t shift[32]; // lane i >> (i*bits) % 8
};

void make_tables(LowbitArgs& a) {
  for (int i = 0; i < 32; ++i) {
    const int bit = i * a.bits;
    a.perm[2 * i] = uint8_t(bit / 8);
    a.perm[2 * i + 1] = uint8_t(bit / 8 + 1);
    a.shift[i] = uint16_t(bit % 8);
  }
}

// 32 values starting at value k of a row -> 32 bf16 lanes of 128 + q.
inline __m512i unpack32(const uint8_t* row, int64_t k, int bits, __m512i perm, __m512i shift, __m512i low,
                        __m512i bf16_128) {
  const int64_t byte0 = k * bits / 8;  // k is a multiple of 32: whole bytes
  const __m512i v = _mm512_maskz_loadu_epi8(tail_mask64(4 * bits), row + byte0);
  const __m512i lanes = _mm512_srlv_epi16(_mm512_permutexvar_epi8(perm, v), shift);
  return _mm512_ternarylogic_epi32(lanes, low, bf16_128, 0xEA);  // (lanes & low) | 0x4300
}

template <typename xt>
void prepare_x(const xt* x, int64_t M, int64_t K, int64_t group_size, bf16_t* xb, float* sx) {
  const int64_t G = K / group_size;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t g = 0; g < G; ++g) {
      __m512 sum = _mm512_setzero_ps();
      for (int64_t k = g * group_size; k < (g + 1) * group_size; k += 32) {
        const __m512bh h = _mm512_cvtne2ps_pbh(load16(x + m * K + k + 16, 0xffff), load16(x + m * K + k, 0xffff));
        _mm512_storeu_si512(xb + m * K + k, (__m512i)h);
        const __m512i raw = (__m512i)h;  // widen both halves back to fp32 for the sum
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16)));
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(int(0xffff0000u)))));
      }
      sx[m * G + g] = _mm512_reduce_add_ps(sum);
    }
  }
}

template <int R, int T, typename xt>
void lowbit_tile(const LowbitArgs& a, xt* y, int64_t n0, int64_t m0) {
  const __m512i perm = _mm512_load_si512(a.perm), shift = _mm512_load_si512(a.shift);
  const __m512i low = _mm512_set1_epi16(int16_t((1 << a.bits) - 1)), bf16_128 = _mm512_set1_epi16(0x4300);
  const __mmask64 bytes = tail_mask64(4 * a.bits);
  __m512 acc[R][T];
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r)
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  __m512 scales[R];  // fp32 scales of groups g0..g0+15 of each row
  for (int64_t g = 0; g < a.G; ++g) {
    if ((g & 15) == 0) {
      const __mmask16 mask = tail_mask16(a.G - g);
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r) scales[r] = load16_bf16(a.scale + (n0 + r) * a.G + g, mask);
    }
    const __m512i lane = _mm512_set1_epi32(int(g & 15));
    const int64_t k0 = g * a.group_size;
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) prefetch_row(a.packed + (n0 + r) * a.row_bytes + k0 * a.bits / 8);
    __m512 d[R][T];
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r)
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) d[r][t] = _mm512_setzero_ps();
    for (int64_t k = k0; k < k0 + a.group_size; k += kStep) {
      LOWBIT_UNROLL
      for (int r = 0; r < R; ++r) {
        const uint8_t* src = a.packed + (n0 + r) * a.row_bytes + k * a.bits / 8;
        const __m512i v = _mm512_maskz_loadu_epi8(bytes, src);
        const __m512i lanes = _mm512_srlv_epi16(_mm512_permutexvar_epi8(perm, v), shift);
        const __m512i w = _mm512_ternarylogic_epi32(lanes, low, bf16_128, 0xEA);  // bf16 128 + q
        LOWBIT_UNROLL
        for (int t = 0; t < T; ++t)
          d[r][t] = _mm512_dpbf16_ps(d[r][t], (__m512bh)w, (__m512bh)_mm512_loadu_si512(a.xb + (m0 + t) * a.K + k));
      }
    }
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_permutexvar_ps(lane, scales[r]);
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(d[r][t], s, acc[r][t]);
    }
  }
  // Subtract sum_g scale_g * (128 + zero_g) * sum(x in g), 16 groups at a time.
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
        acc[r][t] = _mm512_fnmadd_ps(c, _mm512_maskz_loadu_ps(mask, a.sx + (m0 + t) * a.G + g), acc[r][t]);
    }
  }
  store_row_sums<R, T>(acc, y, a.N, n0, m0, a.bias);
}

template <int R, typename xt>
void lowbit_rows(const LowbitArgs& a, xt* y, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) lowbit_tile<R, 4>(a, y, n0, m);
  switch (a.M - m) {
    case 3: lowbit_tile<R, 3>(a, y, n0, m); break;
    case 2: lowbit_tile<R, 2>(a, y, n0, m); break;
    case 1: lowbit_tile<R, 1>(a, y, n0, m); break;
    default: break;
  }
}

LowbitArgs make_args(const at::Tensor& packed, const at::Tensor& scale, const at::Tensor& zero_point,
                     int64_t K, int64_t group_size, int64_t bits) {
  TORCH_CHECK(bits >= 2 && bits <= 7, "lowbit lowbit_linear: bits must be 2..7, got ", bits);
  TORCH_CHECK(group_size % kStep == 0 && K % group_size == 0,
              "lowbit lowbit_linear: group_size must be a multiple of 32 dividing K = ", K, ", got ", group_size);
  LowbitArgs a{};
  a.K = K;
  a.N = packed.size(0);
  a.G = K / group_size;
  a.group_size = group_size;
  a.bits = int(bits);
  a.row_bytes = packed.size(1);
  TORCH_CHECK(a.row_bytes == (K * bits + 7) / 8, "lowbit lowbit_linear: packed rows must be ",
              (K * bits + 7) / 8, " bytes for K = ", K, " at ", bits, " bits, got ", a.row_bytes);
  make_tables(a);
  a.packed = packed.data_ptr<uint8_t>();
  a.scale = reinterpret_cast<const bf16_t*>(scale.data_ptr<at::BFloat16>());
  a.zero = reinterpret_cast<const bf16_t*>(zero_point.data_ptr<at::BFloat16>());
  return a;
}

template <typename xt>
void lowbit_linear_impl(const at::Tensor& x, LowbitArgs& a, at::Tensor& y) {
  at::Tensor xb = at::empty({a.M, a.K}, x.options().dtype(at::kBFloat16));
  at::Tensor sx = at::empty({a.M, a.G}, x.options().dtype(at::kFloat));
  bf16_t* xbp = reinterpret_cast<bf16_t*>(xb.data_ptr<at::BFloat16>());
  prepare_x(x.data_ptr<xt>(), a.M, a.K, a.group_size, xbp, sx.data_ptr<float>());
  a.xb = xbp;
  a.sx = sx.data_ptr<float>();
  xt* yp = y.data_ptr<xt>();
  const int64_t blocks = a.N / 4;
  at::parallel_for(0, blocks, grain_for(blocks), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) lowbit_rows<4>(a, yp, b * 4);
  });
  for (int64_t n = blocks * 4; n < a.N; ++n) lowbit_rows<1>(a, yp, n);
}

}  // namespace

// x [M, K] fp32|bf16, packed uint8 [N, ceil(K * bits / 8)], scale/zero bf16 [N, K / group_size].
at::Tensor lowbit_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                         const at::Tensor& zero_point, int64_t group_size, int64_t bits,
                         const c10::optional<at::Tensor>& bias) {
  LowbitArgs a = make_args(packed, scale, zero_point, x.size(1), group_size, bits);
  a.M = x.size(0);
  a.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({a.M, a.N}, x.options());
  if (x.scalar_type() == at::kFloat) lowbit_linear_impl<float>(x, a, y);
  else lowbit_linear_impl<at::BFloat16>(x, a, y);
  return y;
}

// Large-M path: chunks of bf16-dequantized rows, one bf16 GEMM each (dense.h).
at::Tensor lowbit_dense_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                               const at::Tensor& zero_point, int64_t group_size, int64_t bits,
                               const c10::optional<at::Tensor>& bias) {
  const LowbitArgs a = make_args(packed, scale, zero_point, x.size(1), group_size, bits);
  return dense_bf16_linear(x, a.N, bias, [&](int64_t n0, int64_t n1, bf16_t* dst) {
    const __m512i perm = _mm512_load_si512(a.perm), shift = _mm512_load_si512(a.shift);
    const __m512i low = _mm512_set1_epi16(int16_t((1 << a.bits) - 1)), bf16_128 = _mm512_set1_epi16(0x4300);
    alignas(64) uint16_t order[32];  // output lane 2j <- h[j], 2j + 1 <- h[16 + j]
    for (int j = 0; j < 16; ++j) {
      order[2 * j] = uint16_t(j);
      order[2 * j + 1] = uint16_t(16 + j);
    }
    const __m512i interleave = _mm512_load_si512(order);
    at::parallel_for(n0, n1, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t n = r0; n < r1; ++n) {
        const uint8_t* row = a.packed + n * a.row_bytes;
        bf16_t* out = dst + (n - n0) * a.K;
        for (int64_t k = 0; k < a.K; k += kStep) {
          const int64_t g = n * a.G + k / a.group_size;
          const __m512 s = _mm512_set1_ps(bf16_to_float(a.scale[g]));
          const __m512 z = _mm512_set1_ps(128.f + bf16_to_float(a.zero[g]));
          const __m512i w = unpack32(row, k, a.bits, perm, shift, low, bf16_128);  // bf16 128 + q
          const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));       // even lanes
          const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xffff0000u))));
          const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_sub_ps(hi, z), s),
                                                 _mm512_mul_ps(_mm512_sub_ps(lo, z), s));
          // cvtne2ps_pbh(a, b) puts b in the low half: re-interleave even/odd lanes.
          _mm512_storeu_si512(out + k, _mm512_permutexvar_epi16(interleave, (__m512i)h));
        }
      }
    });
  });
}

}  // namespace lowbit
