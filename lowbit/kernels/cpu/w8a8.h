// Shared by the two W8A8 kernels (AVX512-VNNI in linear_w8a8.cpp, AMX in linear_w8a8_amx.cpp).
#pragma once

#include "common.h"

#include <vector>

namespace lowbit {

constexpr int64_t kW8A8Chunk = 64;  // K is zero padded to a multiple of this in x_q

struct W8A8Args {
  const int8_t* q;        // [N, K]
  const float* scale;     // [N]
  const float* bias;      // [N] or null
  const int8_t* xq;       // [M, Kp], quantized activations, zero padded
  const float* x_scale;   // [M, G]
  const int32_t* offset;  // [M, G], 128 * sum of x_q[m, k] over the group (the VNNI kernel's u8 shift)
  int64_t M, N, K, Kp;
  int64_t group;          // activation group along K (a multiple of kW8A8Chunk), 0 = one per token
  int64_t G;              // scales per token: K / group, or 1 per token
};

// Quantizes x per token, or per token and group of `group` along K (reference.quantize_activations),
// and fills W8A8Args; `keep` owns the buffers.
W8A8Args w8a8_prepare(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                      const c10::optional<at::Tensor>& bias, int64_t group, std::vector<at::Tensor>& keep);

// y[:, n_begin:N] with the AVX512-VNNI kernel.
void w8a8_vnni_rows(const W8A8Args& a, at::Tensor& y, int64_t n_begin);

}  // namespace lowbit
