// Python bindings of lowbit's CPU kernels. Input checking lives in lowbit/kernels/checks.py;
// these functions expect contiguous 2-D x and canonical weight layouts.
#include <torch/extension.h>

#include "common.h"

namespace lowbit {
at::Tensor int8_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
at::Tensor int8_dense_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
at::Tensor int4_dense_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                             const c10::optional<at::Tensor>&);
at::Tensor int4_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                       const c10::optional<at::Tensor>&);
at::Tensor w8a8_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                       int64_t);
std::vector<at::Tensor> quantize_activations(const at::Tensor&, int64_t);
at::Tensor w8a8_linear_amx(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                           int64_t);
bool amx_available();
at::Tensor lowbit_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                         const c10::optional<at::Tensor>&);
at::Tensor lowbit_dense_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                               int64_t, const c10::optional<at::Tensor>&);
}  // namespace lowbit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lowbit CPU kernels (AVX-512 VNNI/BF16, AMX-INT8)";
  m.def("int8_linear", &lowbit::int8_linear, "int8 weight-only linear (fp32 FMA)");
  m.def("int8_dense_linear", &lowbit::int8_dense_linear, "int8 weight-only linear, large M (bf16 GEMM)");
  m.def("int4_dense_linear", &lowbit::int4_dense_linear, "int4 weight-only linear, large M (bf16 GEMM)");
  m.def("int4_linear", &lowbit::int4_linear, "int4 group-wise linear (AVX512-BF16 dot)");
  m.def("w8a8_linear", &lowbit::w8a8_linear, "W8A8 dynamic linear, per-token or token-group activations (AVX512-VNNI)");
  m.def("w8a8_linear_amx", &lowbit::w8a8_linear_amx, "W8A8 dynamic linear, per-token or token-group activations (AMX-INT8)");
  m.def("lowbit_linear", &lowbit::lowbit_linear, "2..7-bit group-wise linear (AVX512-VBMI unpack, BF16 dot)");
  m.def("lowbit_dense_linear", &lowbit::lowbit_dense_linear, "2..7-bit group-wise linear, large M (bf16 GEMM)");
  m.def("amx_available", &lowbit::amx_available, "AMX tile state granted by Linux");
  m.def("quantize_activations", &lowbit::quantize_activations, "symmetric int8 per-token (group 0) or per token-group quantization");
}
