// int8 per-channel weight-only Linear on CUDA: a tensor-core GEMV for M <= 8 rows of x, and the
// dequantize kernel of the dense path (M > 8: dequantize once, then cuBLAS).
//
// Layout (lowbit/kernels/reference.py): qweight int8 [N, K], scale fp32 [N]; w = scale[n] * q.
// q (-128..127) is exact in fp16 and bf16, so the mma sees exact weights and the row scale is
// applied once to the fp32 sum. The GEMV needs K % 16 == 0 (16-byte rows).
#include "host.h"

namespace lowbit {

// Four int8 weights (one word) -> two pairs of mma operands: (e0, e1) and (e2, e3).
template <typename T2>
__device__ __forceinline__ void int8x4_to_pairs(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;  // bytes q + 128 in 0..255
  if constexpr (std::is_same_v<T2, __half2>) {
    // 0x64uu reads as 1024 + u in fp16; minus 1152 is exactly q.
    const __half2 bias = __floats2half2_rn(1152.f, 1152.f);
    lo = bits_as<uint32_t>(__hsub2(bits_as<__half2>(__byte_perm(u, 0x64646464u, 0x5140)), bias));
    hi = bits_as<uint32_t>(__hsub2(bits_as<__half2>(__byte_perm(u, 0x64646464u, 0x5342)), bias));
  } else {
    // 0x4B0000uu reads as 2**23 + u in fp32; minus 2**23 + 128 is exactly q, exact in bf16.
    float f[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 + i)) - 8388736.f;
    lo = bits_as<uint32_t>(__floats2bfloat162_rn(f[0], f[1]));
    hi = bits_as<uint32_t>(__floats2bfloat162_rn(f[2], f[3]));
  }
}

// Warp step = 64 weights of K: lane (g, t) loads the 16-byte block t (weights 16t .. 16t + 15)
// of rows g and g + 8. Word i of a block (elements 4i .. 4i + 3) is one mma: slots (e0, e1) low,
// (e2, e3) high, so x needs no permutation.
template <typename XT, int U>
__global__ void __launch_bounds__(kMaxWarps * 32, min_blocks(U))
int8_gemv_kernel(const XT* __restrict__ x, const uint4* __restrict__ qweight,
                 const float* __restrict__ scale, const float* __restrict__ bias,
                 XT* __restrict__ y, int M, int N, int K) {
  using T = typename Mma<XT>::T;
  using T2 = typename Mma<XT>::T2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * kTileN;
  const int rows[2] = {n0 + g, n0 + g + 8};
  const int blocks = K / 16, steps = (blocks + 3) / 4;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};

  for (int first = warp; first < steps; first += warps * U) {
    uint4 w[U][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {  // issue the weight loads of U steps before any math
      const int blk = (first + u * warps) * 4 + t;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const bool ok = blk < blocks && rows[h] < N;
        w[u][h] = ok ? __ldcs(qweight + (size_t)rows[h] * blocks + blk) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int blk = (first + u * warps) * 4 + t;
      const uint32_t wa[4] = {w[u][0].x, w[u][0].y, w[u][0].z, w[u][0].w};
      const uint32_t wb[4] = {w[u][1].x, w[u][1].y, w[u][1].z, w[u][1].w};
#pragma unroll
      for (int i = 0; i < 4; i += 2) {
        XFrag<XT, 8> xf;  // x for words i, i + 1 (L1/L2 hits; loaded late to spare registers)
        load_x(xf, x + (size_t)g * K + blk * 16 + 4 * i, blk < blocks && g < M);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          uint32_t a[4];
          int8x4_to_pairs<T2>(wa[i + j], a[0], a[2]);
          int8x4_to_pairs<T2>(wb[i + j], a[1], a[3]);
          mma_16816<T>(acc, a, xf.hi[2 * j], xf.hi[2 * j + 1]);
          if constexpr (Mma<XT>::kSplit) mma_16816<T>(acc, a, xf.lo[2 * j], xf.lo[2 * j + 1]);
        }
      }
    }
  }
  reduce_store(acc, y, scale, bias, n0, M, N);
}

// One thread per weight: w = scale[n] * q in fp32, stored in XT.
template <typename XT>
__global__ void int8_dequant_kernel(const int8_t* __restrict__ qweight, const float* __restrict__ scale,
                                    XT* __restrict__ w, int64_t N, int64_t K) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx < N * K) w[idx] = from_float<XT>(float(qweight[idx]) * scale[idx / K]);
}

}  // namespace lowbit

using namespace lowbit;

static void check_int8(const torch::Tensor& qweight, const torch::Tensor& scale) {
  check_cuda_2d(qweight, "qweight", torch::kInt8);
  TORCH_CHECK(scale.is_cuda() && scale.scalar_type() == torch::kFloat && scale.is_contiguous() &&
                  scale.dim() == 1 && scale.size(0) == qweight.size(0),
              "lowbit int8: scale must be a contiguous fp32 CUDA tensor [N]");
}

torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scale,
                        std::optional<torch::Tensor> bias, int64_t warps, int64_t unroll) {
  check_int8(qweight, scale);
  const int64_t M = x.size(0), N = qweight.size(0), K = qweight.size(1);
  TORCH_CHECK(K % 16 == 0, "lowbit CUDA int8 GEMV: K must be a multiple of 16, got ", K,
              " (use the dense path)");
  check_activation(x, K, M <= kMaxM);
  const float* bias_ptr = check_bias(bias, N);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  const int steps = (int)((K / 16 + 3) / 4);
  const dim3 grid((unsigned)((N + kTileN - 1) / kTileN)), block(32 * pick_warps(warps, steps, unroll));
  auto stream = c10::cuda::getCurrentCUDAStream();
  DISPATCH_ACTIVATION(x.scalar_type(), XT, {
    DISPATCH_UNROLL(unroll, U, {
      int8_gemv_kernel<XT, U><<<grid, block, 0, stream>>>(
          ptr<XT>(x), ptr<uint4>(qweight), ptr<float>(scale), bias_ptr, ptr<XT>(y),
          (int)M, (int)N, (int)K);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

torch::Tensor int8_dequant(torch::Tensor qweight, torch::Tensor scale, const torch::Tensor& like) {
  const auto dtype = like.scalar_type();  // the activation dtype to dequantize to
  check_int8(qweight, scale);
  const int64_t N = qweight.size(0), K = qweight.size(1);
  auto w = torch::empty({N, K}, qweight.options().dtype(dtype));
  if (N == 0 || K == 0) return w;
  const c10::cuda::CUDAGuard guard(qweight.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  DISPATCH_ACTIVATION(dtype, XT, {
    int8_dequant_kernel<XT><<<(unsigned)((N * K + 255) / 256), 256, 0, stream>>>(
        ptr<int8_t>(qweight), ptr<float>(scale), ptr<XT>(w), N, K);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}
