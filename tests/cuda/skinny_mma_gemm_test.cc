// The tensor-core skinny product (SkinnyMmaGemm) against the CPU reference Matmul on fresh
// random inputs with poisoned outputs: every row count 1-64, weights of row counts and k that
// are not multiples of the 64-row block or the 64-wide stage, split and unsplit k, bias, fp32
// out, fp16, strided x; within a row bucket a row's result does not depend on how many rows
// are computed with it; the split counters are left zero (a second run gives the same bits).
// The fused norms: an output projection adding into the residual stream, then a product that
// normalises it on the way in, against the same two products with an AddRmsNorm between them.
// Every tuning variant (SkinnyMmaGemmTuned: ring depth, row tiles per warp, forced splits)
// against the same reference, the variants bitwise equal to each other and to the default entry.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <iterator>

#include "cuda_test_util.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/elementwise_cuda.h"
#include "gqa/kernels/skinny_gemm_cuda.h"
#include "gqa/kernels/skinny_mma_plan.h"
#include "gqa/kernels/skinny_mma_tuning_cuda.h"

namespace gqa::kernels::cuda {
namespace {

int SmCount() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms;
}

// Workspace sized for one product, as a caller sizes it for all of its own.
struct Workspace {
  Workspace(int m, int n, int k) : Workspace(m, PlanSkinnyMma(m, n, k, SmCount())) {}
  Workspace(int m, const SkinnyMmaPlan& cut)
      : plan(cut), partials(SkinnyMmaPartialFloats(plan, m)), counters(SkinnyMmaCounters(plan)) {
    EXPECT_EQ(cudaMemset(partials.ptr, 0xff, partials.size * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMemset(counters.ptr, 0, counters.size * sizeof(int)), cudaSuccess);
    view = {partials.ptr, partials.size, counters.ptr, counters.size, SmCount()};
  }
  SkinnyMmaPlan plan;
  DeviceBuffer<float> partials;
  DeviceBuffer<int> counters;
  SkinnyMmaWorkspace view;
};

template <typename T, typename Out>
std::vector<Out> Run(const DeviceBuffer<T>& x, int stride, const DeviceBuffer<T>& w, const T* bias,
                     int m, int n, int k, const SkinnyMmaWorkspace& ws) {
  DeviceBuffer<Out> y(size_t(m) * n);
  EXPECT_EQ(cudaMemset(y.ptr, 0xff, y.size * sizeof(Out)), cudaSuccess);  // NaN poison
  const cudaError_t launched =
      SkinnyMmaGemm<T, Out>(x.ptr, stride, w.ptr, bias, m, n, k, y.ptr, ws, nullptr);
  EXPECT_EQ(launched, cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return y.Download();
}

template <typename T, typename Out>
void Check(int m, int n, int k, bool with_bias, int stride = 0) {
  if (stride == 0) stride = k;
  const SkinnyMmaPlan plan = PlanSkinnyMma(m, n, k, SmCount());
  SCOPED_TRACE(::testing::Message() << "m " << m << " n " << n << " k " << k << " stride " << stride
                                    << " bias " << with_bias << " splits " << plan.splits);
  const auto input = RandomVector<T>(size_t(m) * stride);
  const auto weight = RandomVector<T>(size_t(n) * k, 0.05f);
  const auto bias = RandomVector<T>(n);
  DeviceBuffer<T> x_d(input.size()), w_d(weight.size()), b_d(n);
  x_d.Upload(input);
  w_d.Upload(weight);
  b_d.Upload(bias);
  const T* bias_d = with_bias ? b_d.ptr : nullptr;
  Workspace ws(m, n, k);
  const std::vector<Out> out = Run<T, Out>(x_d, stride, w_d, bias_d, m, n, k, ws.view);

  std::vector<float> x(size_t(m) * k);
  const auto f = ToFloats(input);
  for (int r = 0; r < m; ++r) {
    std::copy_n(f.data() + size_t(r) * stride, k, x.data() + size_t(r) * k);
  }
  std::vector<float> ref(size_t(m) * n);
  const auto bias_f = ToFloats(bias);
  cpu::Matmul(x.data(), ToFloats(weight).data(), with_bias ? bias_f.data() : nullptr, m, n, k,
              ref.data());
  const double tolerance = std::is_same_v<Out, float> ? 1e-4 : Tolerance<T>();
  EXPECT_LT(RelativeError(out, ref), tolerance);  // NaN (a non-finite output) fails

  // The split counters came back to zero: the same product again gives the same bits.
  const std::vector<Out> again = Run<T, Out>(x_d, stride, w_d, bias_d, m, n, k, ws.view);
  EXPECT_EQ(std::memcmp(again.data(), out.data(), out.size() * sizeof(Out)), 0)
      << "a second run differs";

  // The first row alone, when it shares m's row bucket, gives bitwise the same result.
  if (m > 1 && SkinnyMmaRowBucket(1) == SkinnyMmaRowBucket(m)) {
    const std::vector<Out> alone = Run<T, Out>(x_d, stride, w_d, bias_d, 1, n, k, ws.view);
    EXPECT_EQ(std::memcmp(alone.data(), out.data(), n * sizeof(Out)), 0)
        << "row 0 depends on the batch";
  }
}

TEST(SkinnyMmaGemmCuda, EveryRowCountBf16) {
  REQUIRE_GPU();
  for (int m = 1; m <= kSkinnyMmaMaxRows; ++m) {
    Check<__nv_bfloat16, __nv_bfloat16>(m, 1000, 2048, m % 2 == 0);
  }
}

TEST(SkinnyMmaGemmCuda, SplitAndUnsplitShapes) {
  REQUIRE_GPU();
  Check<__nv_bfloat16, __nv_bfloat16>(8, 2048, 2048, false);       // 8 splits
  Check<__nv_bfloat16, __nv_bfloat16>(8, 2048, 8192, true);        // 9 splits, the last shorter
  Check<__nv_bfloat16, __nv_bfloat16>(64, 2048, 8192, true);       // split at the full bucket
  Check<__nv_bfloat16, __nv_bfloat16>(64, 16384, 2048, false);     // many row blocks, unsplit
  Check<__nv_bfloat16, __nv_bfloat16>(3, 960, 576, true);          // SmolLM2's QKV: 15 row blocks
  Check<__nv_bfloat16, __nv_bfloat16>(20, 77, 200, false);         // partial block and stage
  Check<__nv_bfloat16, __nv_bfloat16>(2, 7, 8, true);              // k of one chunk
  Check<__nv_bfloat16, __nv_bfloat16>(5, 300, 1024, false, 1536);  // strided x
}

TEST(SkinnyMmaGemmCuda, Types) {
  REQUIRE_GPU();
  Check<__nv_bfloat16, float>(5, 4099, 512, false);  // fp32 logits
  Check<__nv_bfloat16, float>(64, 4099, 2048, false);
  Check<__half, __half>(12, 640, 1024, true);
  Check<__half, float>(40, 300, 4096, false);
}

TEST(SkinnyMmaGemmCuda, RefusesWhatItCannotRun) {
  REQUIRE_GPU();
  DeviceBuffer<__nv_bfloat16> x(64 * 2048), w(2048 * 2048);
  DeviceBuffer<__nv_bfloat16> y(64 * 2048);
  const SkinnyMmaWorkspace none{nullptr, 0, nullptr, 0, SmCount()};
  // 8 rows of this product split k: no workspace, no launch.
  ASSERT_GT(PlanSkinnyMma(8, 2048, 2048, SmCount()).splits, 1);
  auto run = [&](int m, int k) {
    return SkinnyMmaGemm<__nv_bfloat16, __nv_bfloat16>(x.ptr, 2048, w.ptr, nullptr, m, 2048, k,
                                                       y.ptr, none, nullptr);
  };
  EXPECT_EQ(run(8, 2048), cudaErrorInvalidValue);
  EXPECT_EQ(run(65, 2048), cudaErrorInvalidValue);  // more rows than the kernel takes
  EXPECT_EQ(run(8, 12), cudaErrorInvalidValue);     // k not a multiple of 8
}

template <typename T>
std::vector<T> RunTuned(const DeviceBuffer<T>& x, const DeviceBuffer<T>& w, const T* bias, int m,
                        int n, int k, const SkinnyMmaTuning& tuning, const SkinnyMmaWorkspace& ws) {
  DeviceBuffer<T> y(size_t(m) * n);
  EXPECT_EQ(cudaMemset(y.ptr, 0xff, y.size * sizeof(T)), cudaSuccess);  // NaN poison
  EXPECT_EQ(SkinnyMmaGemmTuned<T>(x.ptr, k, w.ptr, bias, m, n, k, y.ptr, tuning, ws, nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return y.Download();
}

// Every variant at `splits` (0: the plan's) against the CPU reference; the variants only change
// when loads are issued and which warp multiplies which rows, not the order of any sum, so their
// results are bitwise equal, and equal to SkinnyMmaGemm's when the plan cuts the product.
template <typename T>
void CheckEveryVariantAt(int m, int n, int k, int splits) {
  const SkinnyMmaPlan plan =
      splits > 0 ? SkinnyMmaPlanOfSplits(n, k, splits) : PlanSkinnyMma(m, n, k, SmCount());
  SCOPED_TRACE(::testing::Message() << "m " << m << " n " << n << " k " << k << " splits "
                                    << plan.splits << " of " << plan.stages_per_split);
  const auto input = RandomVector<T>(size_t(m) * k);
  const auto weight = RandomVector<T>(size_t(n) * k, 0.05f);
  const auto bias = RandomVector<T>(n);
  DeviceBuffer<T> x_d(input.size()), w_d(weight.size()), b_d(n);
  x_d.Upload(input);
  w_d.Upload(weight);
  b_d.Upload(bias);
  std::vector<float> ref(size_t(m) * n);
  cpu::Matmul(ToFloats(input).data(), ToFloats(weight).data(), ToFloats(bias).data(), m, n, k,
              ref.data());
  Workspace ws(m, plan);
  std::vector<T> first;
  for (const SkinnyMmaVariant& variant : kSkinnyMmaVariants) {
    SCOPED_TRACE(::testing::Message()
                 << "ring " << variant.ring_stages << " row tiles " << variant.row_tiles);
    const std::vector<T> out = RunTuned<T>(x_d, w_d, b_d.ptr, m, n, k, {variant, splits}, ws.view);
    EXPECT_LT(RelativeError(out, ref), Tolerance<T>());  // NaN (a non-finite output) fails
    if (first.empty()) {
      first = out;
    } else {
      EXPECT_EQ(std::memcmp(out.data(), first.data(), out.size() * sizeof(T)), 0)
          << "the variant changed the result";
    }
  }
  if (splits == 0) {
    const std::vector<T> plain = Run<T, T>(x_d, k, w_d, b_d.ptr, m, n, k, ws.view);
    EXPECT_EQ(std::memcmp(plain.data(), first.data(), plain.size() * sizeof(T)), 0)
        << "SkinnyMmaGemm differs from its tuned entry";
  }
}

// Split (the plan's and 3 forced) and unsplit (forced), k not a multiple of the 64-wide stage:
// at 1-8 rows an unsplit 2000 of k is one shared x window, at 33-64 rows eight (double-buffered);
// 200 of k is fewer stages than any ring but the shortest holds. 520 weight rows are 9 row
// blocks (the last of 8 rows): two row tiles per warp leave the last block's second tile empty.
template <typename T>
void CheckEveryVariant() {
  for (int m : {1, 7, 8, 9, 20, 33, 64}) {
    for (int splits : {0, 1, 3}) {
      CheckEveryVariantAt<T>(m, 520, 2000, splits);
      CheckEveryVariantAt<T>(m, 77, 200, splits);
    }
  }
}

TEST(SkinnyMmaGemmCuda, EveryVariantAndSplitBf16) {
  REQUIRE_GPU();
  CheckEveryVariant<__nv_bfloat16>();
}

TEST(SkinnyMmaGemmCuda, EveryVariantAndSplitFp16) {
  REQUIRE_GPU();
  CheckEveryVariant<__half>();
}

TEST(SkinnyMmaGemmCuda, TunedRefusesWhatItCannotRun) {
  REQUIRE_GPU();
  using T = __nv_bfloat16;
  DeviceBuffer<T> x(64 * 2048), w(2048 * 2048), y(64 * 2048);
  Workspace unsplit(8, SkinnyMmaPlanOfSplits(2048, 2048, 1));
  auto run = [&](int ring, int row_tiles, int splits, const SkinnyMmaWorkspace& ws) {
    return SkinnyMmaGemmTuned<T>(x.ptr, 2048, w.ptr, nullptr, 8, 2048, 2048, y.ptr,
                                 {{ring, row_tiles}, splits}, ws, nullptr);
  };
  EXPECT_EQ(run(3, 1, 1, unsplit.view), cudaErrorInvalidValue);  // no kernel of that depth
  EXPECT_EQ(run(4, 3, 1, unsplit.view), cudaErrorInvalidValue);  // nor of 3 row tiles
  EXPECT_EQ(run(4, 1, 4, unsplit.view), cudaErrorInvalidValue);  // no workspace for the splits
  EXPECT_EQ(run(4, 1, 1, unsplit.view), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // SkinnyMmaGemm's variant is one the tuned entry runs, for every row count.
  for (int m = 1; m <= kSkinnyMmaMaxRows; ++m) {
    const SkinnyMmaVariant d = SkinnyMmaDefaultVariant(m);
    EXPECT_TRUE(std::any_of(std::begin(kSkinnyMmaVariants), std::end(kSkinnyMmaVariants),
                            [&](const SkinnyMmaVariant& v) {
                              return v.ring_stages == d.ring_stages && v.row_tiles == d.row_tiles;
                            }))
        << "m " << m << " ring " << d.ring_stages << " row tiles " << d.row_tiles;
  }
}

// o-proj-like product into the residual stream, then a gate|up-like product of its RMS norm:
// fused (the residual add and the sums of squares in the first product's epilogue, the norm in
// the second's staging) against the same products with AddRmsNorm between them.
void CheckFusedNorm(int m, int hidden, int q_size, int inter) {
  using T = __nv_bfloat16;
  const int n2 = 2 * inter;
  SCOPED_TRACE(::testing::Message()
               << "m " << m << " hidden " << hidden << " q " << q_size << " gate|up " << n2);
  const auto attn = RandomVector<T>(size_t(m) * q_size);
  const auto residual = RandomVector<T>(size_t(m) * hidden, 4.0f);
  const auto w_o = RandomVector<T>(size_t(hidden) * q_size, 0.05f);
  const auto w_gu = RandomVector<T>(size_t(n2) * hidden, 0.05f);
  const auto gamma = RandomVector<T>(hidden, 2.0f);
  DeviceBuffer<T> attn_d(attn.size()), wo_d(w_o.size()), wgu_d(w_gu.size()), gamma_d(hidden);
  DeviceBuffer<T> res_plain(residual.size()), res_fused(residual.size());
  attn_d.Upload(attn);
  wo_d.Upload(w_o);
  wgu_d.Upload(w_gu);
  gamma_d.Upload(gamma);
  res_plain.Upload(residual);
  res_fused.Upload(residual);
  Workspace ws_o(m, hidden, q_size), ws_gu(m, n2, hidden);
  const float eps = 1e-5f;

  // Unfused: proj, AddRmsNorm, gate|up.
  DeviceBuffer<T> proj(size_t(m) * hidden), normed(size_t(m) * hidden), y_plain(size_t(m) * n2);
  CUDA_OK((SkinnyMmaGemm<T, T>(attn_d.ptr, q_size, wo_d.ptr, nullptr, m, hidden, q_size, proj.ptr,
                               ws_o.view, nullptr)));
  CUDA_OK(AddRmsNorm<T>(proj.ptr, res_plain.ptr, gamma_d.ptr, m, hidden, eps, normed.ptr, nullptr));
  CUDA_OK((SkinnyMmaGemm<T, T>(normed.ptr, hidden, wgu_d.ptr, nullptr, m, n2, hidden, y_plain.ptr,
                               ws_gu.view, nullptr)));

  // Fused: the same two products and nothing between them.
  const int sum_blocks = (hidden + kSkinnyMmaBlockWeightRows - 1) / kSkinnyMmaBlockWeightRows;
  DeviceBuffer<float> sums(size_t(sum_blocks) * kSkinnyMmaMaxRows);
  DeviceBuffer<T> y_fused(size_t(m) * n2);
  CUDA_OK(cudaMemset(y_fused.ptr, 0xff, y_fused.size * sizeof(T)));
  SkinnyMmaFusion<T> out;
  out.residual = res_fused.ptr;
  out.norm_sums_out = sums.ptr;
  CUDA_OK(SkinnyMmaGemmFused<T>(attn_d.ptr, q_size, wo_d.ptr, nullptr, m, hidden, q_size, nullptr,
                                out, ws_o.view, nullptr));
  SkinnyMmaFusion<T> in;
  in.norm_weight = gamma_d.ptr;
  in.norm_sums_in = sums.ptr;
  in.norm_sum_blocks = sum_blocks;
  in.eps = eps;
  CUDA_OK(SkinnyMmaGemmFused<T>(res_fused.ptr, hidden, wgu_d.ptr, nullptr, m, n2, hidden,
                                y_fused.ptr, in, ws_gu.view, nullptr));
  CUDA_OK(cudaDeviceSynchronize());

  // The residual stream: bitwise what AddRmsNorm stores (the same product, the same roundings).
  const auto r_plain = res_plain.Download(), r_fused = res_fused.Download();
  EXPECT_EQ(std::memcmp(r_plain.data(), r_fused.data(), r_plain.size() * sizeof(T)), 0)
      << "the fused residual add differs from AddRmsNorm's";
  // The sums of squares of each 64-column block, against the residual stream they came from.
  const auto got_sums = sums.Download();
  const auto r = ToFloats(r_fused);
  for (int row = 0; row < m; ++row) {
    for (int b = 0; b < sum_blocks; ++b) {
      double want = 0;
      for (int c = b * 64; c < std::min(hidden, b * 64 + 64); ++c) {
        want += double(r[size_t(row) * hidden + c]) * r[size_t(row) * hidden + c];
      }
      EXPECT_NEAR(got_sums[size_t(b) * kSkinnyMmaMaxRows + row], want, 1e-4 * want + 1e-6)
          << "row " << row << " block " << b;
    }
  }
  // The second product: equal up to the norm's summation order (an inv_rms a few fp32 ulps
  // apart can move a normalised element by one bf16 ulp).
  EXPECT_LT(RelativeError(y_fused.Download(), ToFloats(y_plain.Download())), 2e-3);
}

TEST(SkinnyMmaGemmCuda, FusedNormMatchesAddRmsNorm) {
  REQUIRE_GPU();
  for (int m : {1, 5, 8, 13, 32, 64}) CheckFusedNorm(m, 2048, 2048, 8192 / 4);
  CheckFusedNorm(3, 576, 576, 1536);  // SmolLM2: 9 blocks of sums
  CheckFusedNorm(7, 200, 64, 96);     // a partial last block
}

TEST(SkinnyMmaGemmCuda, FusedRefusesMissingBuffers) {
  REQUIRE_GPU();
  DeviceBuffer<__nv_bfloat16> x(8 * 64), w(64 * 64), y(8 * 64);
  const SkinnyMmaWorkspace none{nullptr, 0, nullptr, 0, SmCount()};
  SkinnyMmaFusion<__nv_bfloat16> in;
  in.norm_weight = w.ptr;  // without its sums
  EXPECT_EQ(SkinnyMmaGemmFused<__nv_bfloat16>(x.ptr, 64, w.ptr, nullptr, 8, 64, 64, y.ptr, in, none,
                                              nullptr),
            cudaErrorInvalidValue);
  SkinnyMmaFusion<__nv_bfloat16> out;
  out.residual = y.ptr;  // without a place for its sums
  EXPECT_EQ(SkinnyMmaGemmFused<__nv_bfloat16>(x.ptr, 64, w.ptr, nullptr, 8, 64, 64, nullptr, out,
                                              none, nullptr),
            cudaErrorInvalidValue);
}

// The down projection with SiLU(gate) * up staged in: bitwise the SiluMul kernel then the plain
// product, also when it adds into the residual stream.
void CheckFusedSilu(int m, int inter, int hidden) {
  using T = __nv_bfloat16;
  SCOPED_TRACE(::testing::Message() << "m " << m << " inter " << inter << " hidden " << hidden);
  const auto gate_up = RandomVector<T>(size_t(m) * 2 * inter, 3.0f);
  const auto w = RandomVector<T>(size_t(hidden) * inter, 0.05f);
  DeviceBuffer<T> gu_d(gate_up.size()), w_d(w.size()), act(size_t(m) * inter);
  gu_d.Upload(gate_up);
  w_d.Upload(w);
  Workspace ws(m, hidden, inter);
  DeviceBuffer<T> y_plain(size_t(m) * hidden), y_fused(size_t(m) * hidden);
  CUDA_OK(SiluMul<T>(gu_d.ptr, gu_d.ptr + inter, m, inter, 2 * inter, act.ptr, nullptr));
  CUDA_OK((SkinnyMmaGemm<T, T>(act.ptr, inter, w_d.ptr, nullptr, m, hidden, inter, y_plain.ptr,
                               ws.view, nullptr)));
  SkinnyMmaFusion<T> silu;
  silu.silu_gate_up = true;
  CUDA_OK(SkinnyMmaGemmFused<T>(gu_d.ptr, 2 * inter, w_d.ptr, nullptr, m, hidden, inter,
                                y_fused.ptr, silu, ws.view, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const auto a = y_plain.Download(), b = y_fused.Download();
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)), 0) << "SiLU staged in differs";
}

TEST(SkinnyMmaGemmCuda, FusedSiluMatchesSiluMul) {
  REQUIRE_GPU();
  for (int m : {1, 4, 8, 9, 31, 64}) CheckFusedSilu(m, 8192, 2048);
  CheckFusedSilu(3, 1536, 576);
  CheckFusedSilu(6, 200, 72);
}

}  // namespace
}  // namespace gqa::kernels::cuda
