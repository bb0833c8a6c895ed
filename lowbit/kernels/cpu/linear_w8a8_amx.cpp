// W8A8 dynamic Linear on Intel AMX-INT8 (tdpbssd); same math as linear_w8a8.cpp (the spec is
// reference.linear_w8a8_dynamic). Weights are AMX's A operand exactly as stored: 16 rows x 64
// bytes of the canonical int8 [N, K] matrix, no repacking. Activations are the B operand,
// reordered once per call into AMX's VNNI order, B[kk][4j + i] = x_q[token j][4kk + i].
// s8 x s8 -> int32 needs no offset. Rows past the last multiple of 16 use the VNNI kernel.
// Grouped activations: after each group the C tiles are stored, scaled by the 16 tokens'
// x_scale[:, g] (one vector, C's columns are tokens) and summed in fp32, then zeroed.
#include "w8a8.h"

#include <sys/syscall.h>
#include <unistd.h>

namespace lowbit {
namespace {

constexpr int64_t kTile = 16;      // rows of a tile (output rows, tokens, K/4)
constexpr int64_t kTileBytes = 1024;
constexpr int kGroup = 4;          // token tiles per pass: C = tmm0..3, A = tmm4, B = tmm5/tmm6

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void load_tile_config() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int i = 0; i < 7; ++i) {
    cfg.rows[i] = kTile;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

// xb[tile][chunk] is a 16x64 B tile: xb[tile][chunk][kk][j][i] = x_q[16 tile + j][64 chunk + 4 kk + i].
void reorder_x(const W8A8Args& a, int8_t* xb, int64_t tiles, int64_t chunks) {
  at::parallel_for(0, tiles * chunks, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t tile = b / chunks, c = b % chunks;
      int32_t* dst = reinterpret_cast<int32_t*>(xb + b * kTileBytes);
      for (int j = 0; j < kTile; ++j) {
        const int64_t m = tile * kTile + j;
        const int32_t* src = reinterpret_cast<const int32_t*>(a.xq + m * a.Kp + c * 64);
        for (int kk = 0; kk < kTile; ++kk) dst[kk * kTile + j] = m < a.M ? src[kk] : 0;
      }
    }
  });
}

// In-register transpose of a 16x16 int32 tile: r[i][j] -> r[j][i].
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + e], 128-bit lane l: rows 4i..4i+3 of column 4l + e
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int e = 0; e < 4; ++e) {
    const __m512i s0 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x88), s1 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xDD);
    const __m512i s2 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x88), s3 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xDD);
    t[e] = _mm512_shuffle_i32x4(s0, s2, 0x88);       // column e
    t[8 + e] = _mm512_shuffle_i32x4(s0, s2, 0xDD);   // column 8 + e
    t[4 + e] = _mm512_shuffle_i32x4(s1, s3, 0x88);   // column 4 + e
    t[12 + e] = _mm512_shuffle_i32x4(s1, s3, 0xDD);  // column 12 + e
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(at::BFloat16* p, __m512 v) { _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v)); }

// c [16 rows n][16 tokens] int32 -> y[m, n0:n0+16] = c * (x_scale[m] * scale[n]) + bias[n].
template <typename xt>
void epilogue(const W8A8Args& a, const int32_t* c, int64_t n0, int64_t tile, xt* y) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(c + i * kTile);
  transpose16(r);  // r[j] = token j, 16 output rows
  const __m512 scale = _mm512_loadu_ps(a.scale + n0);
  const __m512 bias = a.bias ? _mm512_loadu_ps(a.bias + n0) : _mm512_setzero_ps();
  for (int j = 0; j < kTile; ++j) {
    const int64_t m = tile * kTile + j;
    if (m >= a.M) break;
    const __m512 s = _mm512_mul_ps(_mm512_set1_ps(a.x_scale[m]), scale);
    store16(y + m * a.N + n0, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(r[j]), s), bias));
  }
}

// f [16 rows n][16 tokens] fp32 (already times x_scale) -> y[m, n0:n0+16] = f * scale[n] + bias[n].
template <typename xt>
void epilogue_grouped(const W8A8Args& a, const float* f, int64_t n0, int64_t tile, xt* y) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(f + i * kTile);
  transpose16(r);  // bit patterns move unchanged
  const __m512 scale = _mm512_loadu_ps(a.scale + n0);
  const __m512 bias = a.bias ? _mm512_loadu_ps(a.bias + n0) : _mm512_setzero_ps();
  for (int j = 0; j < kTile; ++j) {
    const int64_t m = tile * kTile + j;
    if (m >= a.M) break;
    store16(y + m * a.N + n0, _mm512_fmadd_ps(_mm512_castsi512_ps(r[j]), scale, bias));
  }
}

// facc[16 x 16] += c * x_scale_t[16 tokens] (c: one stored C tile, rows = outputs, cols = tokens).
inline void accumulate_group(const int32_t* c, const float* scales, float* facc) {
  const __m512 s = _mm512_loadu_ps(scales);
  for (int i = 0; i < kTile; ++i) {
    const __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(c + i * kTile));
    _mm512_store_ps(facc + i * kTile, _mm512_fmadd_ps(v, s, _mm512_load_ps(facc + i * kTile)));
  }
}

// Grouped activations (a.group > 0; K is a multiple of the group, so no K tail).
// xs_t [G, tiles * 16]: x_scale transposed, zero for padding tokens. facc: 4 x 256 fp32.
template <typename xt>
void amx_rows_grouped(const W8A8Args& a, const int8_t* xb, const float* xs_t, int64_t tiles, int64_t chunks,
                      int64_t n0, xt* y, int32_t* c_buf, float* facc) {
  const int64_t per_group = a.group / 64, Mp = tiles * kTile;
  for (int64_t t0 = 0; t0 < tiles; t0 += kGroup) {
    const int64_t nt = std::min<int64_t>(kGroup, tiles - t0);
    std::memset(facc, 0, sizeof(float) * kGroup * kTile * kTile);
    for (int64_t g = 0; g < a.G; ++g) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        _tile_loadd(4, a.q + n0 * a.K + c * 64, a.K);
        const int8_t* b = xb + (t0 * chunks + c) * kTileBytes;
        const int64_t next = chunks * kTileBytes;
        _tile_loadd(5, b, 64);
        _tile_dpbssd(0, 4, 5);
        if (nt > 1) { _tile_loadd(6, b + next, 64); _tile_dpbssd(1, 4, 6); }
        if (nt > 2) { _tile_loadd(5, b + 2 * next, 64); _tile_dpbssd(2, 4, 5); }
        if (nt > 3) { _tile_loadd(6, b + 3 * next, 64); _tile_dpbssd(3, 4, 6); }
      }
      const float* s = xs_t + g * Mp + t0 * kTile;
      _tile_stored(0, c_buf, 64);
      accumulate_group(c_buf, s, facc);
      if (nt > 1) { _tile_stored(1, c_buf, 64); accumulate_group(c_buf, s + kTile, facc + 256); }
      if (nt > 2) { _tile_stored(2, c_buf, 64); accumulate_group(c_buf, s + 2 * kTile, facc + 512); }
      if (nt > 3) { _tile_stored(3, c_buf, 64); accumulate_group(c_buf, s + 3 * kTile, facc + 768); }
    }
    for (int64_t i = 0; i < nt; ++i) epilogue_grouped(a, facc + i * 256, n0, t0 + i, y);
  }
}

// Output rows n0..n0+15, all tokens.
template <typename xt>
void amx_rows(const W8A8Args& a, const int8_t* xb, int64_t tiles, int64_t chunks, int64_t n0, xt* y,
              int8_t* a_tail, int32_t* c_buf) {
  const int64_t full = a.K / 64;  // chunks entirely inside K
  for (int64_t t0 = 0; t0 < tiles; t0 += kGroup) {
    const int64_t nt = std::min<int64_t>(kGroup, tiles - t0);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t c = 0; c < chunks; ++c) {
      if (c < full) {
        _tile_loadd(4, a.q + n0 * a.K + c * 64, a.K);
      } else {  // K tail: a zero-padded copy, so no read runs past the weight
        const int64_t rem = a.K - c * 64;
        for (int i = 0; i < kTile; ++i) {
          std::memset(a_tail + i * 64, 0, 64);
          std::memcpy(a_tail + i * 64, a.q + (n0 + i) * a.K + c * 64, rem);
        }
        _tile_loadd(4, a_tail, 64);
      }
      const int8_t* b = xb + (t0 * chunks + c) * kTileBytes;
      const int64_t next = chunks * kTileBytes;  // same chunk, next token tile
      _tile_loadd(5, b, 64);
      _tile_dpbssd(0, 4, 5);
      if (nt > 1) { _tile_loadd(6, b + next, 64); _tile_dpbssd(1, 4, 6); }
      if (nt > 2) { _tile_loadd(5, b + 2 * next, 64); _tile_dpbssd(2, 4, 5); }
      if (nt > 3) { _tile_loadd(6, b + 3 * next, 64); _tile_dpbssd(3, 4, 6); }
    }
    _tile_stored(0, c_buf, 64);
    epilogue(a, c_buf, n0, t0, y);
    if (nt > 1) { _tile_stored(1, c_buf, 64); epilogue(a, c_buf, n0, t0 + 1, y); }
    if (nt > 2) { _tile_stored(2, c_buf, 64); epilogue(a, c_buf, n0, t0 + 2, y); }
    if (nt > 3) { _tile_stored(3, c_buf, 64); epilogue(a, c_buf, n0, t0 + 3, y); }
  }
}

template <typename xt>
void amx_linear(const W8A8Args& a, const int8_t* xb, const float* xs_t, int64_t tiles, int64_t chunks, xt* y) {
  const int64_t blocks = a.N / kTile;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    alignas(64) int8_t a_tail[kTileBytes];
    alignas(64) int32_t c_buf[kTile * kTile];
    alignas(64) float facc[kGroup * kTile * kTile];
    load_tile_config();  // tile state is per thread
    for (int64_t b = b0; b < b1; ++b) {
      if (a.group) amx_rows_grouped(a, xb, xs_t, tiles, chunks, b * kTile, y, c_buf, facc);
      else amx_rows(a, xb, tiles, chunks, b * kTile, y, a_tail, c_buf);
    }
    _tile_release();
  });
}

}  // namespace

// Asks Linux for the AMX tile state (once per process); false when not granted.
bool amx_available() {
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
}

// Same contract as w8a8_vnni.
at::Tensor w8a8_amx(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                           const c10::optional<at::Tensor>& bias, int64_t group) {
  TORCH_CHECK(amx_available(), "lowbit: AMX tile state not granted by the kernel");
  std::vector<at::Tensor> keep;
  const W8A8Args a = w8a8_prepare(x, q, scale, bias, group, keep);
  const int64_t tiles = (a.M + kTile - 1) / kTile, chunks = a.Kp / 64;
  at::Tensor xb = at::empty({tiles * chunks * kTileBytes}, x.options().dtype(at::kChar));
  reorder_x(a, xb.data_ptr<int8_t>(), tiles, chunks);
  at::Tensor xs_t;  // grouped: x_scale [G, tiles * 16], padding tokens 0
  if (a.group) xs_t = at::constant_pad_nd(keep[1], {0, 0, 0, tiles * kTile - a.M}).t().contiguous();
  const float* xs = a.group ? xs_t.data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({a.M, a.N}, x.options());
  if (y.scalar_type() == at::kFloat) amx_linear(a, xb.data_ptr<int8_t>(), xs, tiles, chunks, y.data_ptr<float>());
  else amx_linear(a, xb.data_ptr<int8_t>(), xs, tiles, chunks, y.data_ptr<at::BFloat16>());
  w8a8_vnni_rows(a, y, a.N / kTile * kTile);
  return y;
}

}  // namespace lowbit
