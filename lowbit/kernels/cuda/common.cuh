// Shared pieces of lowbit's CUDA GEMV kernels: the mma.sync m16n8k16 tile, activation loads,
// and the split-K reduction.
//
// Tile: one CTA owns 16 weight rows (the mma's M) and all M <= 8 rows of x (the mma's N); its
// warps split K. Lane = 4 * g + t (g = lane / 4, t = lane % 4) holds weight rows n0 + g and
// n0 + g + 8 and feeds x row m = g. The mma sums over its 16 k-slots in any order, so each
// kernel maps slots to k however its weight layout unpacks cheapest, and permutes x to match.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace lowbit {

constexpr int kTileN = 16;     // weight rows per CTA
constexpr int kMaxM = 8;       // rows of x a GEMV call takes
constexpr int kMaxWarps = 8;   // warps per CTA (split K)

// Resident CTAs per SM a GEMV asks the compiler to fit (a register cap): the weight bytes in
// flight per SM, and so the bandwidth reached, grow with CTAs x unroll (K-steps loaded at once).
constexpr int min_blocks(int unroll) { return unroll >= 4 ? 3 : 4; }

// The mma operand type for an activation type: fp16 runs in fp16; bf16 in bf16; fp32 x is split
// into bf16 hi + lo (two mmas, ~16 significant bits of x). Accumulation is always fp32.
template <typename XT> struct Mma {
  using T = __nv_bfloat16; using T2 = __nv_bfloat162; static constexpr bool kSplit = false;
};
template <> struct Mma<__half> {
  using T = __half; using T2 = __half2; static constexpr bool kSplit = false;
};
template <> struct Mma<float> {
  using T = __nv_bfloat16; using T2 = __nv_bfloat162; static constexpr bool kSplit = true;
};

template <typename To, typename From>
__device__ __forceinline__ To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between equal sizes");
  To out;
  memcpy(&out, &v, sizeof(To));
  return out;
}

template <typename T2>
__device__ __forceinline__ T2 pair(float lo, float hi) {
  if constexpr (std::is_same_v<T2, __half2>) return __floats2half2_rn(lo, hi);
  else return __floats2bfloat162_rn(lo, hi);
}

template <typename XT>
__device__ __forceinline__ XT from_float(float v) {
  if constexpr (std::is_same_v<XT, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<XT, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}

// d += a (16 x 16, row) * b (16 x 8, col), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// kValues consecutive activations as packed pairs of the mma type: word j = elements 2j, 2j + 1
// (lo word); for fp32 x also the bf16 residuals x - hi.
template <typename XT, int kValues>
struct XFrag {
  uint32_t hi[kValues / 2];
  uint32_t lo[Mma<XT>::kSplit ? kValues / 2 : 1];
};

// Load x[0 .. kValues) from a 16-byte aligned address (zeros when !ok).
template <typename XT, int kValues>
__device__ __forceinline__ void load_x(XFrag<XT, kValues>& f, const XT* p, bool ok) {
  if constexpr (std::is_same_v<XT, float>) {
#pragma unroll
    for (int i = 0; i < kValues / 4; ++i) {
      const float4 v = ok ? __ldg(reinterpret_cast<const float4*>(p) + i) : make_float4(0, 0, 0, 0);
      const __nv_bfloat162 h0 = __floats2bfloat162_rn(v.x, v.y);
      const __nv_bfloat162 h1 = __floats2bfloat162_rn(v.z, v.w);
      f.hi[2 * i] = bits_as<uint32_t>(h0);
      f.hi[2 * i + 1] = bits_as<uint32_t>(h1);
      f.lo[2 * i] = bits_as<uint32_t>(__floats2bfloat162_rn(v.x - __low2float(h0), v.y - __high2float(h0)));
      f.lo[2 * i + 1] = bits_as<uint32_t>(__floats2bfloat162_rn(v.z - __low2float(h1), v.w - __high2float(h1)));
    }
  } else {
#pragma unroll
    for (int i = 0; i < kValues / 8; ++i) {
      const uint4 v = ok ? __ldg(reinterpret_cast<const uint4*>(p) + i) : make_uint4(0, 0, 0, 0);
      f.hi[4 * i] = v.x; f.hi[4 * i + 1] = v.y; f.hi[4 * i + 2] = v.z; f.hi[4 * i + 3] = v.w;
    }
  }
}

// Sum the warps' accumulators (split K) and write y[m, n] = row_scale[n] * acc + bias[n].
// Accumulator j of lane 4g + t is (weight row g + 8 * (j >= 2), x row 2t + j % 2).
template <typename XT>
__device__ __forceinline__ void reduce_store(const float (&acc)[4], XT* __restrict__ y,
                                             const float* __restrict__ row_scale,
                                             const float* __restrict__ bias, int n0, int M, int N) {
  __shared__ float partial[kMaxWarps][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int j = 0; j < 4; ++j) partial[warp][j][lane] = acc[j];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float sum = 0.f;
    for (int w = 0; w < warps; ++w) sum += partial[w][j][lane];
    const int n = n0 + (lane >> 2) + (j >= 2 ? 8 : 0), m = 2 * (lane & 3) + (j & 1);
    if (n < N && m < M) {
      if (row_scale != nullptr) sum *= row_scale[n];
      if (bias != nullptr) sum += bias[n];
      y[(size_t)m * N + n] = from_float<XT>(sum);
    }
  }
}

}  // namespace lowbit
