// The skinny matrix product against the CPU reference Matmul, fresh random inputs, outputs
// poisoned; plain and SiLU(gate) * up inputs; bf16 and fp16 in, T and fp32 out; every row count
// up to the maximum; a row's result identical whatever the row count.
#include <gtest/gtest.h>

#include <cstring>

#include "cuda_test_util.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/skinny_gemm_cuda.h"

namespace gqa::kernels::cuda {
namespace {

template <typename T, typename Out>
std::vector<float> OutFloats(const std::vector<Out>& v) {
  if constexpr (std::is_same_v<Out, float>) {
    return v;
  } else {
    return ToFloats(v);
  }
}

template <typename T, typename Out>
std::vector<Out> Run(const DeviceBuffer<T>& in, int stride, SkinnyInput kind,
                     const DeviceBuffer<T>& w, const T* bias, int m, int n, int k) {
  DeviceBuffer<Out> y(size_t(m) * n);
  EXPECT_EQ(cudaMemset(y.ptr, 0xff, y.size * sizeof(Out)), cudaSuccess);  // NaN poison
  const cudaError_t launched =
      SkinnyGemm<T, Out>(in.ptr, stride, kind, w.ptr, bias, m, n, k, y.ptr, nullptr);
  EXPECT_EQ(launched, cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return y.Download();
}

template <typename T, typename Out>
void Check(int m, int n, int k, SkinnyInput kind, bool with_bias) {
  SCOPED_TRACE(::testing::Message() << "m " << m << " n " << n << " k " << k << " silu "
                                    << (kind == SkinnyInput::kSiluGateUp) << " bias " << with_bias);
  const int stride = kind == SkinnyInput::kPlain ? k : 2 * k;
  const auto input = RandomVector<T>(size_t(m) * stride);
  const auto weight = RandomVector<T>(size_t(n) * k, 0.05f);
  const auto bias = RandomVector<T>(n);
  DeviceBuffer<T> in_d(input.size()), w_d(weight.size()), b_d(n);
  in_d.Upload(input);
  w_d.Upload(weight);
  b_d.Upload(bias);
  const std::vector<Out> out =
      Run<T, Out>(in_d, stride, kind, w_d, with_bias ? b_d.ptr : nullptr, m, n, k);

  // Reference: x rounded to T as the unfused path stores it, then the fp32 product.
  std::vector<float> x(size_t(m) * k);
  const auto f = ToFloats(input);
  for (int r = 0; r < m; ++r) {
    if (kind == SkinnyInput::kPlain) {
      std::copy_n(f.data() + size_t(r) * stride, k, x.data() + size_t(r) * k);
    } else {
      cpu::SiluMul(f.data() + size_t(r) * stride, f.data() + size_t(r) * stride + k, 1, k,
                   x.data() + size_t(r) * k);
    }
  }
  if (kind == SkinnyInput::kSiluGateUp) {
    for (auto& v : x) v = ToFloat(ToT<T>(v));
  }
  std::vector<float> ref(size_t(m) * n);
  const auto bias_f = ToFloats(bias);
  cpu::Matmul(x.data(), ToFloats(weight).data(), with_bias ? bias_f.data() : nullptr, m, n, k,
              ref.data());
  const std::vector<float> got = OutFloats<T, Out>(out);
  double num = 0, den = 0;
  size_t non_finite = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    non_finite += !std::isfinite(got[i]);
    num += (got[i] - ref[i]) * double(got[i] - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  EXPECT_EQ(non_finite, 0u);
  const double tolerance = std::is_same_v<Out, float> ? 1e-4 : Tolerance<T>();
  EXPECT_LT(std::sqrt(num / den), tolerance);

  // Row 0 alone gives bitwise the same result as within m rows.
  if (m > 1) {
    const std::vector<Out> alone =
        Run<T, Out>(in_d, stride, kind, w_d, with_bias ? b_d.ptr : nullptr, 1, n, k);
    EXPECT_EQ(std::memcmp(alone.data(), out.data(), n * sizeof(Out)), 0)
        << "row 0 depends on the batch";
  }
}

TEST(SkinnyGemmCuda, EveryRowCountBf16) {
  REQUIRE_GPU();
  for (int m = 1; m <= kSkinnyGemmMaxRows; ++m) {
    Check<__nv_bfloat16, __nv_bfloat16>(m, 1000, 2048, SkinnyInput::kPlain, m % 2 == 0);
  }
}

TEST(SkinnyGemmCuda, ShapesAndTypes) {
  REQUIRE_GPU();
  Check<__nv_bfloat16, __nv_bfloat16>(3, 2048, 8192, SkinnyInput::kSiluGateUp, false);
  Check<__nv_bfloat16, __nv_bfloat16>(8, 513, 8192, SkinnyInput::kSiluGateUp, true);
  Check<__nv_bfloat16, __nv_bfloat16>(1, 7, 8, SkinnyInput::kPlain, true);
  Check<__nv_bfloat16, __nv_bfloat16>(2, 77, 24, SkinnyInput::kPlain, false);  // k < one pass
  Check<__nv_bfloat16, float>(5, 4099, 512, SkinnyInput::kPlain, false);       // fp32 logits
  Check<__half, __half>(4, 640, 1024, SkinnyInput::kSiluGateUp, true);
  Check<__half, float>(1, 300, 4096, SkinnyInput::kPlain, false);
}

}  // namespace
}  // namespace gqa::kernels::cuda
