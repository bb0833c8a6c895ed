// Large-M path shared by the weight-only kernels: dequantize rows to bf16 in chunks, one bf16
// GEMM per chunk (at::linear -> oneDNN), so no full-size bf16 copy is ever allocated.
#pragma once

#include "common.h"

#include <functional>

namespace lowbit {

// dequant_rows(n0, n1, dst) writes bf16 rows n0..n1-1 of the weight ([n1 - n0, K]) to dst.
at::Tensor dense_bf16_linear(const at::Tensor& x, int64_t N, const c10::optional<at::Tensor>& bias,
                             const std::function<void(int64_t, int64_t, bf16_t*)>& dequant_rows);

}  // namespace lowbit
