// int4 group-wise weight-only Linear on CUDA: a tensor-core GEMV for M <= 8 rows of x, and the
// dequantize kernel of the dense path (M > 8: dequantize once, then cuBLAS).
//
// Layout (lowbit/kernels/reference.py): packed uint8 [N, K / 2], byte j = element 2j (low
// nibble) and 2j + 1 (high nibble); scale, zero_point bf16 [N, K / group_size];
// w = scale * (q - zero_point). K % 32 == 0, so every 16-byte load (32 weights) is aligned and
// lies in one group.
#include "host.h"

namespace lowbit {

// Two weights of one packed word -> one pair of dequantized mma operands.
// ((w >> shift) & 0x000F000F) | magic reads as the pair (base + q_lo, base + q_hi), base = 1024
// (fp16) or 128 (bf16); subtracting base is exact, then w = q * s + (-z * s) in one fma.
template <typename T2>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, int shift, T2 s, T2 neg_zs) {
  constexpr uint32_t magic = std::is_same_v<T2, __half2> ? 0x64006400u : 0x43004300u;
  const T2 q = __hsub2(bits_as<T2>(((w >> shift) & 0x000F000Fu) | magic), bits_as<T2>(magic));
  return bits_as<uint32_t>(__hfma2(q, s, neg_zs));
}

// Warp step = 128 weights of K: lane (g, t) loads the 16-byte block t (weights 32t .. 32t + 31)
// of rows g and g + 8. Packed word i holds elements e0..e7 = 8i .. 8i + 7 as nibbles; mma 2i + h
// takes slots (e_2h, e_2h+4) low and (e_2h+1, e_2h+5) high, so x is permuted the same way.
template <typename XT, int U>
__global__ void __launch_bounds__(kMaxWarps * 32, min_blocks(U))
int4_gemv_kernel(const XT* __restrict__ x, const uint4* __restrict__ packed,
                 const __nv_bfloat16* __restrict__ scale, const __nv_bfloat16* __restrict__ zero_point,
                 const float* __restrict__ bias, XT* __restrict__ y, int M, int N, int K, int group_size) {
  using T = typename Mma<XT>::T;
  using T2 = typename Mma<XT>::T2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * kTileN;
  const int rows[2] = {n0 + g, n0 + g + 8};
  const int blocks = K / 32, groups = K / group_size, steps = (blocks + 3) / 4;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};

  for (int first = warp; first < steps; first += warps * U) {
    uint4 w[U][2];
    __nv_bfloat16 sc[U][2], zp[U][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {  // issue the weight loads of U steps before any math
      const int blk = (first + u * warps) * 4 + t;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const bool ok = blk < blocks && rows[h] < N;
        const size_t gi = ok ? (size_t)rows[h] * groups + blk * 32 / group_size : 0;
        w[u][h] = ok ? __ldcs(packed + (size_t)rows[h] * blocks + blk) : make_uint4(0, 0, 0, 0);
        sc[u][h] = ok ? scale[gi] : __float2bfloat16(0.f);
        zp[u][h] = ok ? zero_point[gi] : __float2bfloat16(0.f);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int blk = (first + u * warps) * 4 + t;
      T2 s[2], neg_zs[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float sf = __bfloat162float(sc[u][h]), zs = -__bfloat162float(zp[u][h]) * sf;
        s[h] = pair<T2>(sf, sf);
        neg_zs[h] = pair<T2>(zs, zs);
      }
      const uint32_t wa[4] = {w[u][0].x, w[u][0].y, w[u][0].z, w[u][0].w};
      const uint32_t wb[4] = {w[u][1].x, w[u][1].y, w[u][1].z, w[u][1].w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        XFrag<XT, 8> xf;  // x for packed word i (L1/L2 hits; loaded late to spare registers)
        load_x(xf, x + (size_t)g * K + blk * 32 + 8 * i, blk < blocks && g < M);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t a[4] = {dequant_pair(wa[i], 8 * h, s[0], neg_zs[0]),
                                 dequant_pair(wb[i], 8 * h, s[1], neg_zs[1]),
                                 dequant_pair(wa[i], 8 * h + 4, s[0], neg_zs[0]),
                                 dequant_pair(wb[i], 8 * h + 4, s[1], neg_zs[1])};
          mma_16816<T>(acc, a, __byte_perm(xf.hi[h], xf.hi[h + 2], 0x5410),
                       __byte_perm(xf.hi[h], xf.hi[h + 2], 0x7632));
          if constexpr (Mma<XT>::kSplit)
            mma_16816<T>(acc, a, __byte_perm(xf.lo[h], xf.lo[h + 2], 0x5410),
                         __byte_perm(xf.lo[h], xf.lo[h + 2], 0x7632));
        }
      }
    }
  }
  reduce_store(acc, y, nullptr, bias, n0, M, N);
}

// One thread per 16-byte block: 32 weights w = (q - z) * s in fp32, stored in XT.
template <typename XT>
__global__ void int4_dequant_kernel(const uint4* __restrict__ packed, const __nv_bfloat16* __restrict__ scale,
                                    const __nv_bfloat16* __restrict__ zero_point, XT* __restrict__ w,
                                    int N, int K, int group_size) {
  const int blocks = K / 32;
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * blocks) return;
  const size_t row = idx / blocks, blk = idx % blocks;
  const size_t gi = row * (K / group_size) + blk * 32 / group_size;
  const float s = __bfloat162float(scale[gi]), z = __bfloat162float(zero_point[gi]);
  const uint4 v = __ldcs(packed + idx);
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  XT out[32];
#pragma unroll
  for (int e = 0; e < 32; ++e)
    out[e] = from_float<XT>((float((words[e / 8] >> (4 * (e % 8))) & 15u) - z) * s);
  uint4* dst = reinterpret_cast<uint4*>(w + idx * 32);
#pragma unroll
  for (int i = 0; i < (int)(32 * sizeof(XT) / 16); ++i) dst[i] = reinterpret_cast<const uint4*>(out)[i];
}

}  // namespace lowbit

using namespace lowbit;

static void check_int4(const torch::Tensor& packed, const torch::Tensor& scale,
                       const torch::Tensor& zero_point, int64_t group_size) {
  check_cuda_2d(packed, "packed", torch::kUInt8);
  check_cuda_2d(scale, "scale", torch::kBFloat16);
  check_cuda_2d(zero_point, "zero_point", torch::kBFloat16);
  const int64_t K = packed.size(1) * 2;
  TORCH_CHECK(group_size % 32 == 0 && K % group_size == 0,
              "lowbit int4: group_size must be a multiple of 32 dividing K = ", K, ", got ", group_size);
  TORCH_CHECK(scale.size(0) == packed.size(0) && scale.size(1) == K / group_size &&
                  zero_point.sizes() == scale.sizes(),
              "lowbit int4: scale and zero_point must be [N, K / group_size]");
}

torch::Tensor int4_gemv(torch::Tensor x, torch::Tensor packed, torch::Tensor scale,
                        torch::Tensor zero_point, int64_t group_size, std::optional<torch::Tensor> bias,
                        int64_t warps, int64_t unroll) {
  check_int4(packed, scale, zero_point, group_size);
  const int64_t M = x.size(0), K = packed.size(1) * 2, N = packed.size(0);
  check_activation(x, K, M <= kMaxM);
  const float* bias_ptr = check_bias(bias, N);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  const int steps = (int)((K / 32 + 3) / 4);
  const dim3 grid((unsigned)((N + kTileN - 1) / kTileN)), block(32 * pick_warps(warps, steps, unroll));
  auto stream = c10::cuda::getCurrentCUDAStream();
  DISPATCH_ACTIVATION(x.scalar_type(), XT, {
    DISPATCH_UNROLL(unroll, U, {
      int4_gemv_kernel<XT, U><<<grid, block, 0, stream>>>(
          ptr<XT>(x), ptr<uint4>(packed), ptr<__nv_bfloat16>(scale), ptr<__nv_bfloat16>(zero_point),
          bias_ptr, ptr<XT>(y), (int)M, (int)N, (int)K, (int)group_size);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

torch::Tensor int4_dequant(torch::Tensor packed, torch::Tensor scale, torch::Tensor zero_point,
                           int64_t group_size, const torch::Tensor& like) {
  const auto dtype = like.scalar_type();  // the activation dtype to dequantize to
  check_int4(packed, scale, zero_point, group_size);
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  auto w = torch::empty({N, K}, packed.options().dtype(dtype));
  if (N == 0 || K == 0) return w;
  const c10::cuda::CUDAGuard guard(packed.device());
  const int64_t threads = N * (K / 32);
  auto stream = c10::cuda::getCurrentCUDAStream();
  DISPATCH_ACTIVATION(dtype, XT, {
    int4_dequant_kernel<XT><<<(unsigned)((threads + 255) / 256), 256, 0, stream>>>(
        ptr<uint4>(packed), ptr<__nv_bfloat16>(scale), ptr<__nv_bfloat16>(zero_point), ptr<XT>(w),
        (int)N, (int)K, (int)group_size);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}
