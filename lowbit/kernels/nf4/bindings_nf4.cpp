// Python bindings of the NF4 kernels (a separate extension until they join lowbit/kernels/cpu).
#include <torch/extension.h>

#include "common.h"

namespace lowbit {
at::Tensor nf4_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      double, int64_t, const c10::optional<at::Tensor>&);
at::Tensor nf4_dequant(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t);
}  // namespace lowbit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lowbit NF4 CPU kernels (AVX-512 vpermps look-up fused with the dot product)";
  m.def("nf4_linear", &lowbit::nf4_linear, "NF4 double-quant linear, small M (fp32 FMA)");
  m.def("nf4_dequant", &lowbit::nf4_dequant, "NF4 double-quant -> fp32 [N, K]");
}
