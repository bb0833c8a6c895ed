// Python bindings of lowbit's CPU kernels. Each kernel is bound under the name kernel_for gives it
// ("cpu.<name>", lowbit/kernels/dispatch.py) and takes its op's arguments in the schema's order
// (lowbit/kernels/ops.py), x flattened to a contiguous [M, K]. lowbit/kernels/checks.py has checked
// every input before any of this runs; here every tensor is made contiguous (a no-op for the
// layouts lowbit stores), the bias fp32 and NF4's offset a float.
#include <torch/extension.h>

#include "common.h"

namespace lowbit {
using OptTensor = c10::optional<at::Tensor>;
at::Tensor int8_gemv(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
at::Tensor int8_dense_bf16(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
at::Tensor int4_gemv(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                     const OptTensor&);
at::Tensor int4_dense_bf16(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           const OptTensor&);
at::Tensor lowbit_gemv(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                       const OptTensor&);
at::Tensor lowbit_dense_bf16(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                             int64_t, const OptTensor&);
at::Tensor w8a8_vnni(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t);
at::Tensor w8a8_amx(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t);
at::Tensor nf4_gemv(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t,
                    const OptTensor&);
at::Tensor nf4_dense_fp32(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                          int64_t, const OptTensor&);
std::vector<at::Tensor> quantize_activations(const at::Tensor&, int64_t);
at::Tensor nf4_dequant(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t);
bool amx_available();
}  // namespace lowbit

namespace {
using lowbit::OptTensor;
using T = const at::Tensor&;

OptTensor fp32(const OptTensor& bias) {
  return bias.has_value() ? OptTensor(bias->to(at::kFloat).contiguous()) : c10::nullopt;
}

// Adapters from an op's arguments (x, weight args..., bias, options) to its kernels' C++ entries.
auto int8(at::Tensor (*kernel)(T, T, T, const OptTensor&)) {
  return [kernel](T x, T q, T scale, const OptTensor& bias) {
    return kernel(x.contiguous(), q.contiguous(), scale.contiguous(), fp32(bias));
  };
}

auto int4(at::Tensor (*kernel)(T, T, T, T, int64_t, const OptTensor&)) {
  return [kernel](T x, T packed, T scale, T zero_point, int64_t group_size, const OptTensor& bias) {
    return kernel(x.contiguous(), packed.contiguous(), scale.contiguous(), zero_point.contiguous(), group_size,
                  fp32(bias));
  };
}

auto lowbit_bits(at::Tensor (*kernel)(T, T, T, T, int64_t, int64_t, const OptTensor&)) {
  return [kernel](T x, T packed, T scale, T zero_point, int64_t group_size, int64_t bits, const OptTensor& bias) {
    return kernel(x.contiguous(), packed.contiguous(), scale.contiguous(), zero_point.contiguous(), group_size,
                  bits, fp32(bias));
  };
}

// (x, qweight, scale, bias, act_group_size: None = one scale per token).
auto w8a8(at::Tensor (*kernel)(T, T, T, const OptTensor&, int64_t)) {
  return [kernel](T x, T q, T scale, const OptTensor& bias, c10::optional<int64_t> group) {
    return kernel(x.contiguous(), q.contiguous(), scale.contiguous(), fp32(bias), group.value_or(0));
  };
}

// (x, codes, s8, s2, offset fp32 [1], block_size, bias).
auto nf4(at::Tensor (*kernel)(T, T, T, T, double, int64_t, const OptTensor&)) {
  return [kernel](T x, T codes, T s8, T s2, T offset, int64_t block_size, const OptTensor& bias) {
    return kernel(x.contiguous(), codes.contiguous(), s8.contiguous(), s2.contiguous(), *offset.data_ptr<float>(),
                  block_size, fp32(bias));
  };
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lowbit CPU kernels (AVX-512 VNNI/BF16/VBMI, AMX-INT8)";
  m.def("int8_gemv", int8(&lowbit::int8_gemv), "int8 weight-only, small M (fp32 FMA)");
  m.def("int8_dense_bf16", int8(&lowbit::int8_dense_bf16), "int8 weight-only, large M (bf16 GEMM)");
  m.def("int4_gemv", int4(&lowbit::int4_gemv), "int4 group-wise, small M (AVX512-BF16 dot)");
  m.def("int4_dense_bf16", int4(&lowbit::int4_dense_bf16), "int4 group-wise, large M (bf16 GEMM)");
  m.def("lowbit_gemv", lowbit_bits(&lowbit::lowbit_gemv), "2..7-bit group-wise, small M (VBMI unpack, BF16 dot)");
  m.def("lowbit_dense_bf16", lowbit_bits(&lowbit::lowbit_dense_bf16), "2..7-bit group-wise, large M (bf16 GEMM)");
  m.def("w8a8_vnni", w8a8(&lowbit::w8a8_vnni), "W8A8 dynamic, per-token or token-group activations (AVX512-VNNI)");
  m.def("w8a8_amx", w8a8(&lowbit::w8a8_amx), "W8A8 dynamic, per-token or token-group activations (AMX-INT8)");
  m.def("nf4_gemv", nf4(&lowbit::nf4_gemv), "NF4 double-quant, small M (vpermps look-up, fp32 FMA)");
  m.def("nf4_dense_fp32", nf4(&lowbit::nf4_dense_fp32), "NF4 double-quant, large M (fp32 dequant, one GEMM)");
  m.def("quantize_activations", &lowbit::quantize_activations,
        "the W8A8 kernels' int8 activations: per token (group 0) or per token group");
  m.def("nf4_dequant", &lowbit::nf4_dequant, "NF4 double-quant -> fp32 [N, K]");
  m.def("amx_available", &lowbit::amx_available, "AMX tile state granted by Linux");
}
