// 2..7-bit group-wise weight-only Linear, w[n, k] = scale[n, g] * (q[n, k] - zero_point[n, g]).
// Spec: reference.linear_lowbit. Reads the canonical packed layout of lowbit.primitives.pack:
// value i of a row starts at bit i * bits of the row's little-endian bit string.
//
// Both paths OR a field q into bf16 0x4300 (exactly 128 + q) and let AVX512-BF16 vdpbf16ps
// multiply 32 such lanes by bf16 activations. Per group:
//   sum x (q - z) = sum x (128 + q) - (128 + z) * sum x.
//
// 3 and 2 bits, power-of-two groups ("block" path): one load unpacks a whole block (3 bits: 48
// bytes = 128 values, spread by one vpermb into 32-bit lanes of bytes (b0, b1, b1, b2); 2 bits:
// 64 bytes = 256 values), and each 32-value vector costs one vpternlog, with one or two shared
// shifts per block. A field may sit at bit p > 0 of its bf16 lane (then the lane is
// 128 + 2^p q): the activation it meets is pre-scaled by 2^-p (exact) and permuted to the
// block's field order once per call, so sum x' w = sum x q + 128 sum x'.
//
// Other widths and group sizes ("lane" path): 32 values (4 * bits bytes) per load; vpermb puts
// the two bytes that hold value i into 16-bit lane i, vpsrlvw shifts each lane by
// (i * bits) % 8, and one vpternlog keeps the low `bits` bits OR-ed into 0x4300.
#include "dense.h"

#include <vector>

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
  TORCH_CHECK(bits >= 2 && bits <= 7, "lowbit linear_lowbit: bits must be 2..7, got ", bits);
  TORCH_CHECK(group_size % kStep == 0 && K % group_size == 0,
              "lowbit linear_lowbit: group_size must be a multiple of 32 dividing K = ", K, ", got ", group_size);
  LowbitArgs a{};
  a.K = K;
  a.N = packed.size(0);
  a.G = K / group_size;
  a.group_size = group_size;
  a.bits = int(bits);
  a.row_bytes = packed.size(1);
  TORCH_CHECK(a.row_bytes == (K * bits + 7) / 8, "lowbit linear_lowbit: packed rows must be ",
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

// ---- Block path (3 and 2 bits) ----
//
// Field order of a block: output word o = 32 e + 2 l + h of vector e (h = 0: low half of 32-bit
// lane l, h = 1: high half) holds the value at offset `src` of the block, with its field at bit
// `pos` of the bf16 lane. 3 bits, lane l = values 8l..8l+7 (fields f0..f7 at bits 3i of bytes
// b0 b1 b2), held as bytes (b0, b1, b1, b2): low half = bits 0..15, high half = bits 8..23.
//   e0: v            f0@0 | f4@4      e1: v >> 6   f2@0 | f5@1
//   e2: v >> 6       f3@3 | f6@4      e3: v >> (3 | 12)  f1@0 | f7@1
// 2 bits, lane l = values 16l..16l+15 (low half 16l + j, high half 16l + 8 + j at bit 2j):
//   e0..e2: v, fields j = 0, 1, 2 at bits 0, 2, 4; e3..e5: v >> 6, j = 3..5; e6, e7: v >> 12.
template <int BITS>
struct Block;

template <>
struct Block<3> {
  static constexpr int64_t kValues = 128, kBytes = 48, kVectors = 4, kLaneValues = 8;
  static constexpr int kLowField[4] = {0, 2, 3, 1}, kLowPos[4] = {0, 0, 3, 0};
  static constexpr int kHighField[4] = {4, 5, 6, 7}, kHighPos[4] = {4, 1, 4, 1};
  __m512i perm, shift, mask[4], bf16_128;
  Block() {
    alignas(64) uint8_t idx[64];
    for (int l = 0; l < 16; ++l) {
      const uint8_t b = uint8_t(3 * l), order[4] = {b, uint8_t(b + 1), uint8_t(b + 1), uint8_t(b + 2)};
      std::memcpy(idx + 4 * l, order, 4);
    }
    perm = _mm512_load_si512(idx);
    shift = _mm512_set1_epi32(3 | (12 << 16));
    for (int e = 0; e < 4; ++e) mask[e] = _mm512_set1_epi32((7 << kLowPos[e]) | (7 << (16 + kHighPos[e])));
    bf16_128 = _mm512_set1_epi16(0x4300);
  }
  static int src(int e, int l, int h) { return 8 * l + (h ? kHighField[e] : kLowField[e]); }
  static int pos(int e, int h) { return h ? kHighPos[e] : kLowPos[e]; }
  // 48 packed bytes (fewer at a row's end) -> 4 vectors of bf16 128 + 2^pos q.
  void unpack(const uint8_t* p, __mmask64 bytes, __m512i (&w)[4]) const {
    const __m512i v = _mm512_permutexvar_epi8(perm, _mm512_maskz_loadu_epi8(bytes, p));
    const __m512i v6 = _mm512_srli_epi16(v, 6), vs = _mm512_srlv_epi16(v, shift);
    w[0] = _mm512_ternarylogic_epi32(v, mask[0], bf16_128, 0xEA);  // (A & B) | C
    w[1] = _mm512_ternarylogic_epi32(v6, mask[1], bf16_128, 0xEA);
    w[2] = _mm512_ternarylogic_epi32(v6, mask[2], bf16_128, 0xEA);
    w[3] = _mm512_ternarylogic_epi32(vs, mask[3], bf16_128, 0xEA);
  }
};

template <>
struct Block<2> {
  static constexpr int64_t kValues = 256, kBytes = 64, kVectors = 8, kLaneValues = 16;
  __m512i mask[3], bf16_128;
  Block() {
    for (int p = 0; p < 3; ++p) mask[p] = _mm512_set1_epi16(int16_t(3 << (2 * p)));
    bf16_128 = _mm512_set1_epi16(0x4300);
  }
  static int src(int e, int l, int h) { return 16 * l + 8 * h + e; }
  static int pos(int e, int) { return 2 * (e % 3); }
  void unpack(const uint8_t* p, __mmask64 bytes, __m512i (&w)[8]) const {
    const __m512i v = _mm512_maskz_loadu_epi8(bytes, p);
    const __m512i v6 = _mm512_srli_epi16(v, 6), v12 = _mm512_srli_epi16(v, 12);
    LOWBIT_UNROLL
    for (int e = 0; e < 8; ++e)
      w[e] = _mm512_ternarylogic_epi32(e < 3 ? v : e < 6 ? v6 : v12, mask[e % 3], bf16_128, 0xEA);
  }
};

struct BlockArgs {
  const uint8_t* packed;  // [N, row_bytes]
  const bf16_t* scale;    // [N, G]
  const bf16_t* zero;     // [N, G]
  const bf16_t* xp;       // [M, Kp]: x in field order, pre-scaled by 2^-pos
  const float* sx;        // [M, Gp]: sum of bf16(x) per group
  const float* sx128;     // [M, Gp]: 128 * sum of x' per group
  const float* bias;      // [N] or null
  int64_t M, N, K, Kp, G, Gp, group_shift, row_bytes;
  alignas(64) uint16_t scale_idx[32];  // word 2l + 1: group of fp32 lane l, relative to the block's first
};

// x [M, K] -> xp, sx, sx128 (see BlockArgs).
template <int BITS, typename xt>
void prepare_block_x(const xt* x, const BlockArgs& a, bf16_t* xp, float* sx, float* sx128) {
  using B = Block<BITS>;
  constexpr int kPairs = int(B::kValues / 64);  // vpermt2w reads 64 words: a pair of 32-value vectors
  std::vector<bf16_t> natural(a.Kp, 0);
  // Word o of vector e = natural word src(o) of the block: word src % 64 of source pair src / 64.
  alignas(64) uint16_t idx[B::kVectors][32];
  __mmask32 from_pair[B::kVectors][kPairs] = {};
  alignas(64) float lo_scale[B::kVectors][16], hi_scale[B::kVectors][16];
  for (int e = 0; e < B::kVectors; ++e) {
    for (int o = 0; o < 32; ++o) {
      const int src = B::src(e, o / 2, o % 2);
      idx[e][o] = uint16_t(src % 64);
      from_pair[e][src / 64] |= __mmask32(1u << o);
    }
    for (int l = 0; l < 16; ++l) {
      lo_scale[e][l] = 1.f / float(1 << B::pos(e, 0));
      hi_scale[e][l] = 1.f / float(1 << B::pos(e, 1));
    }
  }
  const __m512i high = _mm512_set1_epi32(int(0xffff0000u));
  for (int64_t m = 0; m < a.M; ++m) {
    float* s = sx + m * a.Gp;
    float* s128 = sx128 + m * a.Gp;
    std::fill(s, s + a.Gp, 0.f);
    std::fill(s128, s128 + a.Gp, 0.f);
    for (int64_t k = 0; k < a.K; k += 32) {  // bf16(x) in natural order, and its group sums
      const __m512bh h = _mm512_cvtne2ps_pbh(load16(x + m * a.K + k + 16, 0xffff), load16(x + m * a.K + k, 0xffff));
      _mm512_storeu_si512(natural.data() + k, (__m512i)h);
      const __m512i raw = (__m512i)h;
      s[k >> a.group_shift] += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(raw, 16)),
                                                                  _mm512_castsi512_ps(_mm512_and_si512(raw, high))));
    }
    for (int64_t k0 = 0; k0 < a.Kp; k0 += B::kValues) {  // field order, scaled by 2^-pos
      bf16_t* out = xp + m * a.Kp + k0;
      __m512i in[2 * kPairs];
      for (int i = 0; i < 2 * kPairs; ++i) in[i] = _mm512_loadu_si512(natural.data() + k0 + 32 * i);
      __m512 lane_sum = _mm512_setzero_ps();
      for (int e = 0; e < B::kVectors; ++e) {
        const __m512i ie = _mm512_load_si512(idx[e]);
        __m512i v = _mm512_setzero_si512();
        for (int j = 0; j < kPairs; ++j)
          v = _mm512_mask_blend_epi16(from_pair[e][j], v, _mm512_permutex2var_epi16(in[2 * j], ie, in[2 * j + 1]));
        const __m512 lo = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_load_ps(lo_scale[e]));
        const __m512 hi = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), _mm512_load_ps(hi_scale[e]));
        lane_sum = _mm512_add_ps(lane_sum, _mm512_add_ps(lo, hi));
        _mm512_storeu_si512(out + 32 * e, _mm512_ternarylogic_epi32(_mm512_srli_epi32(_mm512_castps_si512(lo), 16),
                                                                    _mm512_castps_si512(hi), high, 0xF8));  // A | (B & C)
      }
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, lane_sum);
      for (int l = 0; l < 16; ++l) {
        const int64_t k = k0 + l * B::kLaneValues;
        if (k < a.K) s128[k >> a.group_shift] += 128.f * lanes[l];
      }
    }
  }
}

template <int BITS, int R, int T, typename xt>
void block_tile(const BlockArgs& a, const Block<BITS>& unpacker, xt* y, int64_t n0, int64_t m0) {
  using B = Block<BITS>;
  const __m512i sidx = _mm512_load_si512(a.scale_idx);
  __m512 acc[R][T];
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r)
    LOWBIT_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k0 = 0, byte0 = 0; k0 < a.K; k0 += B::kValues, byte0 += B::kBytes) {
    const __mmask64 bytes = tail_mask64(std::min(B::kBytes, a.row_bytes - byte0));
    const int64_t g0 = k0 >> a.group_shift;
    const __mmask8 groups = __mmask8((1u << std::min<int64_t>(8, a.G - g0)) - 1u);
    LOWBIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const int64_t n = n0 + r;
      const uint8_t* p = a.packed + n * a.row_bytes + byte0;
      prefetch_row(p);
      __m512i w[B::kVectors];
      unpacker.unpack(p, bytes, w);
      const __m128i s_raw = _mm_maskz_loadu_epi16(groups, a.scale + n * a.G + g0);
      const __m512 s = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, sidx, _mm512_castsi128_si512(s_raw)));
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) {
        const bf16_t* xb = a.xp + (m0 + t) * a.Kp + k0;
        __m512 d = _mm512_setzero_ps();
        LOWBIT_UNROLL
        for (int e = 0; e < B::kVectors; ++e)
          d = _mm512_dpbf16_ps(d, (__m512bh)w[e], (__m512bh)_mm512_loadu_si512(xb + 32 * e));
        acc[r][t] = _mm512_fmadd_ps(d, s, acc[r][t]);
      }
    }
  }
  // Subtract sum_g scale_g * (128 sum x'_g + zero_g sum x_g), 16 groups at a time.
  LOWBIT_UNROLL
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    for (int64_t g = 0; g < a.G; g += 16) {
      const __mmask16 mask = tail_mask16(a.G - g);
      const __m512 s = load16_bf16(a.scale + n * a.G + g, mask);
      const __m512 sz = _mm512_mul_ps(s, load16_bf16(a.zero + n * a.G + g, mask));
      LOWBIT_UNROLL
      for (int t = 0; t < T; ++t) {
        acc[r][t] = _mm512_fnmadd_ps(sz, _mm512_loadu_ps(a.sx + (m0 + t) * a.Gp + g), acc[r][t]);
        acc[r][t] = _mm512_fnmadd_ps(s, _mm512_loadu_ps(a.sx128 + (m0 + t) * a.Gp + g), acc[r][t]);
      }
    }
  }
  store_row_sums<R, T>(acc, y, a.N, n0, m0, a.bias);
}

template <int BITS, int R, typename xt>
void block_rows(const BlockArgs& a, const Block<BITS>& unpacker, xt* y, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) block_tile<BITS, R, 4>(a, unpacker, y, n0, m);
  switch (a.M - m) {
    case 3: block_tile<BITS, R, 3>(a, unpacker, y, n0, m); break;
    case 2: block_tile<BITS, R, 2>(a, unpacker, y, n0, m); break;
    case 1: block_tile<BITS, R, 1>(a, unpacker, y, n0, m); break;
    default: break;
  }
}

// The block path handles 3 and 2 bits with power-of-two groups (blocks then never split one).
bool block_path_fits(int64_t bits, int64_t group_size) {
  return (bits == 3 || bits == 2) && (group_size & (group_size - 1)) == 0;
}

template <int BITS, typename xt>
void block_linear_impl(const at::Tensor& x, const LowbitArgs& la, at::Tensor& y) {
  using B = Block<BITS>;
  BlockArgs a{};
  a.packed = la.packed;
  a.scale = la.scale;
  a.zero = la.zero;
  a.bias = la.bias;
  a.M = la.M;
  a.N = la.N;
  a.K = la.K;
  a.Kp = (a.K + B::kValues - 1) / B::kValues * B::kValues;
  a.G = la.G;
  a.Gp = (a.Kp / la.group_size + 16 + 15) / 16 * 16;  // room for the lanes of a last partial block
  a.group_shift = __builtin_ctzll(uint64_t(la.group_size));
  a.row_bytes = la.row_bytes;
  for (int l = 0; l < 16; ++l) {
    a.scale_idx[2 * l] = 0;
    a.scale_idx[2 * l + 1] = uint16_t((l * B::kLaneValues) >> a.group_shift);
  }
  at::Tensor xp = at::empty({a.M, a.Kp}, x.options().dtype(at::kBFloat16));
  at::Tensor sums = at::empty({2, a.M, a.Gp}, x.options().dtype(at::kFloat));
  bf16_t* xpp = reinterpret_cast<bf16_t*>(xp.data_ptr<at::BFloat16>());
  float* sp = sums.data_ptr<float>();
  prepare_block_x<BITS>(x.data_ptr<xt>(), a, xpp, sp, sp + a.M * a.Gp);
  a.xp = xpp;
  a.sx = sp;
  a.sx128 = sp + a.M * a.Gp;
  const Block<BITS> unpacker;
  xt* yp = y.data_ptr<xt>();
  const int64_t blocks = a.N / 4;
  at::parallel_for(0, blocks, grain_for(blocks), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) block_rows<BITS, 4>(a, unpacker, yp, b * 4);
  });
  for (int64_t n = blocks * 4; n < a.N; ++n) block_rows<BITS, 1>(a, unpacker, yp, n);
}

}  // namespace

// x [M, K] fp32|bf16, packed uint8 [N, ceil(K * bits / 8)], scale/zero bf16 [N, K / group_size].
at::Tensor lowbit_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                         const at::Tensor& zero_point, int64_t group_size, int64_t bits,
                         const c10::optional<at::Tensor>& bias) {
  LowbitArgs a = make_args(packed, scale, zero_point, x.size(1), group_size, bits);
  a.M = x.size(0);
  a.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({a.M, a.N}, x.options());
  const bool fp32 = x.scalar_type() == at::kFloat;
  if (block_path_fits(bits, group_size) && bits == 3) {
    if (fp32) block_linear_impl<3, float>(x, a, y);
    else block_linear_impl<3, at::BFloat16>(x, a, y);
  } else if (block_path_fits(bits, group_size)) {
    if (fp32) block_linear_impl<2, float>(x, a, y);
    else block_linear_impl<2, at::BFloat16>(x, a, y);
  } else if (fp32) {
    lowbit_linear_impl<float>(x, a, y);
  } else {
    lowbit_linear_impl<at::BFloat16>(x, a, y);
  }
  return y;
}

// Large-M path: chunks of bf16-dequantized rows, one bf16 GEMM each (dense.h).
at::Tensor lowbit_dense_bf16(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
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
