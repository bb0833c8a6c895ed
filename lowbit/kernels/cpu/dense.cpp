// See dense.h.
#include "dense.h"

namespace lowbit {

at::Tensor dense_bf16_linear(const at::Tensor& x, int64_t N, const c10::optional<at::Tensor>& bias,
                             const std::function<void(int64_t, int64_t, bf16_t*)>& dequant_rows) {
  const int64_t K = x.size(1);
  // ~8 MiB of bf16 rows per chunk: few parallel regions and GEMM calls, and a buffer malloc reuses.
  const int64_t chunk = std::max<int64_t>(64, (int64_t(1) << 22) / K / 64 * 64);
  const at::Tensor xb = x.to(at::kBFloat16);
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  at::Tensor buf = at::empty({std::min(chunk, N), K}, xb.options());
  bf16_t* bp = reinterpret_cast<bf16_t*>(buf.data_ptr<at::BFloat16>());
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t rows = std::min(chunk, N - n0);
    dequant_rows(n0, n0 + rows, bp);
    y.narrow(1, n0, rows).copy_(at::linear(xb, buf.narrow(0, 0, rows)));
  }
  if (bias.has_value()) y.add_(bias->to(y.scalar_type()));
  return y;
}

}  // namespace lowbit
