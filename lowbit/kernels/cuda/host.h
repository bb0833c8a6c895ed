// Host-side helpers shared by lowbit's CUDA kernels: argument checks and dtype dispatch.
#pragma once

#include <cstdint>
#include <optional>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "common.cuh"

template <typename T>
T* ptr(const torch::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

inline void check_cuda_2d(const torch::Tensor& t, const char* name, torch::ScalarType dtype) {
  TORCH_CHECK(t.is_cuda() && t.dim() == 2 && t.is_contiguous() && t.scalar_type() == dtype,
              "lowbit CUDA kernels: ", name, " must be a contiguous 2-D CUDA ", c10::toString(dtype),
              " tensor, got ", t.scalar_type(), " ", t.sizes(), t.is_cuda() ? "" : " on CPU");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0,
              "lowbit CUDA kernels: ", name, " must be 16-byte aligned (clone it)");
}

// x: contiguous [M, K] fp16/bf16/fp32 on CUDA, 16-byte aligned.
inline void check_activation(const torch::Tensor& x, int64_t K, bool m_ok) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == torch::kHalf || dtype == torch::kBFloat16 || dtype == torch::kFloat,
              "lowbit CUDA kernels: x must be float16, bfloat16 or float32, got ", dtype);
  check_cuda_2d(x, "x", dtype);
  TORCH_CHECK(x.size(1) == K, "lowbit CUDA kernels: x must be [M, ", K, "], got ", x.sizes());
  TORCH_CHECK(m_ok, "lowbit CUDA GEMV: x must have at most ", lowbit::kMaxM, " rows, got ", x.size(0),
              " (use the dense path)");
}

inline const float* check_bias(const std::optional<torch::Tensor>& bias, int64_t N) {
  if (!bias.has_value()) return nullptr;
  TORCH_CHECK(bias->is_cuda() && bias->scalar_type() == torch::kFloat && bias->is_contiguous() &&
                  bias->numel() == N,
              "lowbit CUDA kernels: bias must be a contiguous fp32 CUDA tensor of ", N, " values");
  return bias->data_ptr<float>();
}

// Warps per CTA: enough that each runs `unroll` K-steps per pass, at most kMaxWarps.
inline int pick_warps(int64_t warps, int steps, int64_t unroll) {
  if (warps > 0) return (int)std::min<int64_t>(warps, lowbit::kMaxWarps);
  const int64_t want = (steps + unroll - 1) / unroll;
  return (int)std::max<int64_t>(1, std::min<int64_t>(want, lowbit::kMaxWarps));
}

#define DISPATCH_ACTIVATION(dtype, XT, ...)                                                    \
  switch (dtype) {                                                                             \
    case torch::kHalf: { using XT = __half; __VA_ARGS__; break; }                              \
    case torch::kBFloat16: { using XT = __nv_bfloat16; __VA_ARGS__; break; }                   \
    case torch::kFloat: { using XT = float; __VA_ARGS__; break; }                              \
    default: TORCH_CHECK(false, "lowbit CUDA kernels: unsupported dtype ", dtype);             \
  }

#define DISPATCH_UNROLL(unroll, U, ...)                                                        \
  switch (unroll) {                                                                            \
    case 1: { constexpr int U = 1; __VA_ARGS__; break; }                                       \
    case 2: { constexpr int U = 2; __VA_ARGS__; break; }                                       \
    case 4: { constexpr int U = 4; __VA_ARGS__; break; }                                       \
    default: TORCH_CHECK(false, "lowbit CUDA GEMV: unroll must be 1, 2 or 4, got ", unroll);   \
  }
