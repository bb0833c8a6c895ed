// lowbit's dynamic int8 LSTM for any x86-64 with AVX2 + FMA (no AVX-512 needed).
//
// Numerics (the same as lowbit.kernels.rnn.reference):
//   activations: per row, 7-bit: x_q = round_half_even(x * (63 / amax)) in [-63, 63], x_scale = amax / 63
//   weights:     int8 per output channel, w_scale[n]
//   y[m, n] = float(sum_k x_q[m, k] * w_q[n, k]) * (x_scale[m] * w_scale[n]) (+ add[m, n])
// The integer dot products are exact. x is stored unsigned, x_u = x_q + 64 in [1, 127], so
// vpmaddubsw (u8 x s8, pairs summed into int16) applies: |pair| <= 2 * 127 * 128 = 32512 < 32767,
// never saturating; vpmaddwd with ones sums pairs into int32. The accumulator starts at
// -64 * sum_k w_q[n, k], which removes the offset: sum_k x_u w = sum_k x_q w + 64 sum_k w.
//
// Weight layout ("pack_weight" in rnn/__init__.py): [N / 8][K4 / 4][8][4] int8, K4 = K rounded up
// to a multiple of 4 (zero padded): for 8 output channels, the quad w[n, k..k+3] of each of them,
// 32 bytes per quad of k. One vpmaddubsw of those 32 bytes with the broadcast quad x_u[m, k..k+3],
// then vpmaddwd with ones, gives 8 partial sums: a GEMM with no horizontal adds, the weight tile
// reused over MR rows.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Register tile MR x NR blocks: 8 int32 accumulators + 4 weight registers + 1 broadcast + ones.
constexpr int MR = 2;  // rows of x per register tile
constexpr int NR = 4;  // blocks of 8 output channels per register tile
constexpr int64_t MC = 64;  // rows per pass over a weight tile
constexpr int64_t PARALLEL_MACS = int64_t{1} << 18;  // GEMM work per thread before threads pay
constexpr int64_t CELL_GRAIN = 8192;  // cell values per thread before threads pay
constexpr int QMAX = 63;  // 7-bit activations
constexpr int OFFSET = 64;  // x_u = x_q + OFFSET in [1, 127]

inline int64_t round4(int64_t k) { return (k + 3) / 4 * 4; }

// Quantize M rows of K floats into unsigned rows x_u of K4 bytes (padding: the offset, a zero) and
// per-row scales.
void quantize_rows(const float* x, int64_t M, int64_t K, int64_t K4, uint8_t* xq, float* sx) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    __m256 vmax = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(row + k)));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float amax = 0.0f;
    for (float v : lanes) amax = std::max(amax, v);
    for (; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float inv = amax > 0.0f ? static_cast<float>(QMAX) / amax : 0.0f;
    sx[m] = amax / static_cast<float>(QMAX);
    uint8_t* out = xq + m * K4;
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i lo = _mm256_set1_epi32(-QMAX), hi = _mm256_set1_epi32(QMAX), off = _mm256_set1_epi32(OFFSET);
    for (k = 0; k + 8 <= K; k += 8) {
      __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k), vinv));  // half-even
      q = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi), off);
      const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + k), _mm_packus_epi16(words, words));
    }
    for (; k < K; ++k)
      out[k] = static_cast<uint8_t>(std::clamp(std::nearbyint(row[k] * inv), -float{QMAX}, float{QMAX}) + OFFSET);
    for (; k < K4; ++k) out[k] = OFFSET;
  }
}

// -OFFSET * sum_k w[n, k] per output channel n, from the packed weight (the accumulators' start).
std::vector<int32_t> weight_offsets(const int8_t* w, int64_t N, int64_t K4) {
  std::vector<int32_t> corr(N);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  const int64_t quads = K4 / 4;
  for (int64_t b = 0; b < N / 8; ++b) {
    __m256i acc = _mm256_setzero_si256();
    for (int64_t q = 0; q < quads; ++q) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (b * quads + q) * 32));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, wv), ones16));
    }
    acc = _mm256_mullo_epi32(acc, _mm256_set1_epi32(-OFFSET));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(corr.data() + b * 8), acc);
  }
  return corr;
}

struct Gemm {  // y[M, N] = dequant(x_u[M, K4] . w^T) (+ add)
  const uint8_t* xq;
  int64_t K4;
  const int8_t* w;
  const int32_t* corr;  // weight_offsets
  const float* sx;
  const float* sw;
  const float* add;  // row m at add + m * ld_add, or nullptr
  int64_t ld_add;
  float* y;
  int64_t N;
};

// y[m, n] for rows m0..m0+R and channel blocks b0..b0+C (C blocks of 8), whole K.
template <int R, int C>
void tile(const Gemm& g, int64_t m0, int64_t b0) {
  const int64_t quads = g.K4 / 4, block_bytes = quads * 32;
  __m256i acc[R][C];
  for (int c = 0; c < C; ++c) {
    const __m256i start = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.corr + (b0 + c) * 8));
    for (int r = 0; r < R; ++r) acc[r][c] = start;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* wb = g.w + b0 * block_bytes;
  const int32_t* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = reinterpret_cast<const int32_t*>(g.xq + (m0 + r) * g.K4);
  for (int64_t q = 0; q < quads; ++q) {
    __m256i wv[C];
    for (int c = 0; c < C; ++c)
      wv[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + c * block_bytes + q * 32));
    for (int r = 0; r < R; ++r) {
      const __m256i xv = _mm256_set1_epi32(xr[r][q]);
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv[c]), ones));
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m256 s = _mm256_set1_ps(g.sx[m0 + r]);
    for (int c = 0; c < C; ++c) {
      const int64_t n = (b0 + c) * 8;
      __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][c]), _mm256_mul_ps(s, _mm256_loadu_ps(g.sw + n)));
      if (g.add) v = _mm256_add_ps(v, _mm256_loadu_ps(g.add + (m0 + r) * g.ld_add + n));
      _mm256_storeu_ps(g.y + (m0 + r) * g.N + n, v);
    }
  }
}

template <int R>
void row_tiles(const Gemm& g, int64_t m0, int64_t b0, int64_t nb) {
  int64_t b = b0;
  for (; b + NR <= nb; b += NR) tile<R, NR>(g, m0, b);
  for (; b < nb; ++b) tile<R, 1>(g, m0, b);
}

void rows(int R, const Gemm& g, int64_t m0, int64_t b0, int64_t b1) {
  static_assert(MR == 2, "rows() dispatches R in 1..MR");
  if (R == 2) return row_tiles<2>(g, m0, b0, b1);
  return row_tiles<1>(g, m0, b0, b1);
}

// Threads split the output channels; each thread walks its weight tiles once per chunk of 64
// rows (the tile stays in L1 across the rows).
void gemm(const Gemm& g, int64_t M) {
  const int64_t nblocks = g.N / 8;
  const int64_t tile_macs = M * g.K4 * 8 * NR;  // threads only for >= PARALLEL_MACS per thread
  at::parallel_for(0, (nblocks + NR - 1) / NR, std::max<int64_t>(1, PARALLEL_MACS / tile_macs), [&](int64_t t0, int64_t t1) {
    const int64_t b0 = t0 * NR, b1 = std::min(nblocks, t1 * NR);
    for (int64_t mc = 0; mc < M; mc += MC) {
      const int64_t mend = std::min(M, mc + MC);
      for (int64_t b = b0; b < b1; b += NR) {
        const int64_t be = std::min(b1, b + NR);
        int64_t m = mc;
        for (; m + MR <= mend; m += MR) rows(MR, g, m, b, be);
        if (m < mend) rows(static_cast<int>(mend - m), g, m, b, be);
      }
    }
  });
}

// exp for x in [-88, 88]: 2^n * p(r), r = x - n ln2, degree-6 polynomial (rel. error ~2e-7).
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 sigmoid256(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

inline __m256 tanh256(__m256 x) {  // 2 sigmoid(2x) - 1
  const __m256 two = _mm256_set1_ps(2.0f);
  return _mm256_fmsub_ps(two, sigmoid256(_mm256_mul_ps(two, x)), _mm256_set1_ps(1.0f));
}

inline float sigmoid1(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// One step's cell update from gate pre-activations g[B, 4H] (PyTorch order i, f, g, o).
void cell(const float* g, int64_t B, int64_t H, float* c, float* h) {
  at::parallel_for(0, B, std::max<int64_t>(1, CELL_GRAIN / H), [&](int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const float* gb = g + b * 4 * H;
    float* cb = c + b * H;
    float* hb = h + b * H;
    int64_t j = 0;
    for (; j + 8 <= H; j += 8) {
      const __m256 i = sigmoid256(_mm256_loadu_ps(gb + j));
      const __m256 f = sigmoid256(_mm256_loadu_ps(gb + H + j));
      const __m256 u = tanh256(_mm256_loadu_ps(gb + 2 * H + j));
      const __m256 o = sigmoid256(_mm256_loadu_ps(gb + 3 * H + j));
      const __m256 cn = _mm256_fmadd_ps(f, _mm256_loadu_ps(cb + j), _mm256_mul_ps(i, u));
      _mm256_storeu_ps(cb + j, cn);
      _mm256_storeu_ps(hb + j, _mm256_mul_ps(o, tanh256(cn)));
    }
    for (; j < H; ++j) {
      const float cn = sigmoid1(gb[H + j]) * cb[j] + sigmoid1(gb[j]) * std::tanh(gb[2 * H + j]);
      cb[j] = cn;
      hb[j] = sigmoid1(gb[3 * H + j]) * std::tanh(cn);
    }
  }
  });
}

void check_scale(const at::Tensor& s, int64_t N, const char* what) {
  TORCH_CHECK(s.scalar_type() == at::kFloat && s.is_contiguous() && s.numel() == N, what,
              ": expected contiguous fp32 scales [", N, "], got ", s.scalar_type(), " ", s.sizes());
}

void check_packed(const at::Tensor& w, int64_t N, int64_t K, const char* what) {
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() && w.dim() == 4 && w.size(0) * 8 == N &&
                  w.size(1) == round4(K) / 4 && w.size(2) == 8 && w.size(3) == 4,
              what, ": expected a packed int8 weight [", N / 8, ", ", round4(K) / 4, ", 8, 4], got ", w.sizes());
}

}  // namespace

// y[M, N] = W8A8 dynamic linear (per-row 7-bit activation scales), the GEMM the LSTM runs.
at::Tensor w8a8_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                     const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be fp32 [M, K]");
  const auto xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = w_scale.numel(), K4 = round4(K);
  check_packed(w, N, K, "w8a8_gemm");
  check_scale(w_scale, N, "w8a8_gemm");
  auto xq = at::empty({M, K4}, x.options().dtype(at::kByte));
  auto sx = at::empty({M}, x.options());
  quantize_rows(xc.data_ptr<float>(), M, K, K4, xq.data_ptr<uint8_t>(), sx.data_ptr<float>());
  auto y = at::empty({M, N}, x.options());
  at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const auto corr = weight_offsets(w.data_ptr<int8_t>(), N, K4);
  gemm({xq.data_ptr<uint8_t>(), K4, w.data_ptr<int8_t>(), corr.data(), sx.data_ptr<float>(), w_scale.data_ptr<float>(),
        b.defined() ? b.data_ptr<float>() : nullptr, 0, y.data_ptr<float>(), N}, M);  // ld 0: one bias row
  return y;
}

// One LSTM layer over x[T, B, I]: the input projection of every step in one GEMM, then the
// time loop (quantize h, recurrent GEMM, gates). Returns (out [T, B, H], h_T, c_T).
std::vector<at::Tensor> lstm_layer(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& s_ih,
                                   const at::Tensor& w_hh, const at::Tensor& s_hh,
                                   const c10::optional<at::Tensor>& bias, const at::Tensor& h0,
                                   const at::Tensor& c0) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat, "lstm_layer: x must be fp32 [T, B, I]");
  const auto xc = x.contiguous();
  const int64_t T = xc.size(0), B = xc.size(1), I = xc.size(2), N = s_ih.numel(), H = N / 4;
  TORCH_CHECK(N == 4 * H && N % 8 == 0 && s_hh.numel() == N, "lstm_layer: 4 * hidden must be a multiple of 8");
  check_packed(w_ih, N, I, "lstm_layer w_ih");
  check_packed(w_hh, N, H, "lstm_layer w_hh");
  check_scale(s_ih, N, "lstm_layer s_ih");
  check_scale(s_hh, N, "lstm_layer s_hh");
  TORCH_CHECK(h0.numel() == B * H && c0.numel() == B * H, "lstm_layer: h0 and c0 must hold [B, H] = [", B, ", ", H, "]");
  const int64_t KI = round4(I), KH = round4(H);
  auto opts = x.options();
  auto bias_row = at::zeros({N}, opts);
  if (bias.has_value() && bias->defined()) bias_row.copy_(bias->reshape({N}));
  // gx[T * B, 4H] = input projection of every step + bias, one GEMM.
  auto xq = at::empty({T * B, KI}, opts.dtype(at::kByte));
  auto sx = at::empty({T * B}, opts);
  quantize_rows(xc.data_ptr<float>(), T * B, I, KI, xq.data_ptr<uint8_t>(), sx.data_ptr<float>());
  auto gx = at::empty({T * B, N}, opts);
  const auto corr_ih = weight_offsets(w_ih.data_ptr<int8_t>(), N, KI);
  gemm({xq.data_ptr<uint8_t>(), KI, w_ih.data_ptr<int8_t>(), corr_ih.data(), sx.data_ptr<float>(),
        s_ih.data_ptr<float>(), bias_row.data_ptr<float>(), 0, gx.data_ptr<float>(), N}, T * B);
  auto out = at::empty({T, B, H}, opts);
  auto h = h0.to(at::kFloat).contiguous().clone();
  auto c = c0.to(at::kFloat).contiguous().clone();
  auto hq = at::empty({B, KH}, opts.dtype(at::kByte));
  auto sh = at::empty({B}, opts);
  auto g = at::empty({B, N}, opts);
  const auto corr_hh = weight_offsets(w_hh.data_ptr<int8_t>(), N, KH);
  float* hp = h.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    quantize_rows(hp, B, H, KH, hq.data_ptr<uint8_t>(), sh.data_ptr<float>());
    gemm({hq.data_ptr<uint8_t>(), KH, w_hh.data_ptr<int8_t>(), corr_hh.data(), sh.data_ptr<float>(),
          s_hh.data_ptr<float>(), gx.data_ptr<float>() + t * B * N, N, g.data_ptr<float>(), N}, B);
    cell(g.data_ptr<float>(), B, H, c.data_ptr<float>(), hp);
    std::copy(hp, hp + B * H, out.data_ptr<float>() + t * B * H);
  }
  return {out, h, c};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("w8a8_gemm", &w8a8_gemm, "W8A8 dynamic GEMM, 7-bit activations (AVX2, exact int32 dot products)");
  m.def("lstm_layer", &lstm_layer, "one dynamic int8 LSTM layer, the time loop in C++ (AVX2)");
}
