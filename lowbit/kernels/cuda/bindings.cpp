// Python bindings of lowbit's CUDA kernels (entry points in linear_int4.cu, linear_int8.cu).
#include <optional>

#include <torch/extension.h>

torch::Tensor int4_gemv(torch::Tensor x, torch::Tensor packed, torch::Tensor scale,
                        torch::Tensor zero_point, int64_t group_size, std::optional<torch::Tensor> bias,
                        int64_t warps, int64_t unroll);
torch::Tensor int4_dequant(torch::Tensor packed, torch::Tensor scale, torch::Tensor zero_point,
                           int64_t group_size, const torch::Tensor& like);
torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scale,
                        std::optional<torch::Tensor> bias, int64_t warps, int64_t unroll);
torch::Tensor int8_dequant(torch::Tensor qweight, torch::Tensor scale, const torch::Tensor& like);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lowbit CUDA kernels: int4/int8 weight-only GEMV (M <= 8) and dequantize";
  m.def("int4_gemv", &int4_gemv, "y = x @ dequant(int4).T + bias, M <= 8 (tensor-core GEMV)");
  m.def("int4_dequant", &int4_dequant, "int4 [N, K/2] -> [N, K] in like.dtype");
  m.def("int8_gemv", &int8_gemv, "y = x @ (scale * q).T + bias, M <= 8 (tensor-core GEMV)");
  m.def("int8_dequant", &int8_dequant, "int8 [N, K] -> [N, K] in like.dtype");
}
