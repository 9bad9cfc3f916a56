// The skinny product with the decode layer's seams folded in (SkinnyGemmFused,
// SkinnyGemmRopeAppend) against the separate kernels it replaces (AddRmsNorm, SkinnyGemm,
// QkvRopeAppend), which have their own CPU-reference tests: bitwise equal on fresh random inputs,
// outputs poisoned, every row bucket, bf16 and fp16, bf16 and FP8 caches, a padding slot.
#include <gtest/gtest.h>

#include <cstring>

#include "cuda_test_util.h"
#include "gqa/kernels/elementwise_cuda.h"
#include "gqa/kernels/paged_attention_cuda.h"
#include "gqa/kernels/rope.h"
#include "gqa/kernels/skinny_gemm_cuda.h"

namespace gqa::kernels::cuda {
namespace {

constexpr float kEps = 1e-5f;

template <typename T>
bool SameBytes(const DeviceBuffer<T>& a, const DeviceBuffer<T>& b) {
  const auto x = a.Download(), y = b.Download();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0;
}

template <typename T>
void Poison(DeviceBuffer<T>& b) {
  ASSERT_EQ(cudaMemset(b.ptr, 0xff, b.size * sizeof(T)), cudaSuccess);
}

// x normalised while staged == AddRmsNorm, then the product.
template <typename T>
void CheckNormInput(int m, int n, int k, bool with_bias) {
  SCOPED_TRACE(::testing::Message() << "m " << m << " n " << n << " k " << k);
  DeviceBuffer<T> residual(size_t(m) * k), norm_w(k), w(size_t(n) * k), bias(n);
  residual.Upload(RandomVector<T>(residual.size, 3.0f));
  norm_w.Upload(RandomVector<T>(k));
  w.Upload(RandomVector<T>(w.size, 0.05f));
  bias.Upload(RandomVector<T>(n));
  const T* b = with_bias ? bias.ptr : nullptr;
  DeviceBuffer<T> normed(residual.size), want(size_t(m) * n), got(size_t(m) * n);
  Poison(want);
  Poison(got);
  CUDA_OK(AddRmsNorm<T>(nullptr, residual.ptr, norm_w.ptr, m, k, kEps, normed.ptr, nullptr));
  CUDA_OK(
      (SkinnyGemm<T, T>(normed.ptr, k, SkinnyInput::kPlain, w.ptr, b, m, n, k, want.ptr, nullptr)));
  CUDA_OK(SkinnyGemmFused<T>(residual.ptr, k, SkinnyInput::kPlain, {norm_w.ptr, kEps}, w.ptr, b, m,
                             n, k, got.ptr, nullptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(SameBytes(want, got));
}

// residual += the product, as the product stored in T then AddRmsNorm's add.
template <typename T>
void CheckResidualOutput(int m, int n, int k, SkinnyInput kind) {
  SCOPED_TRACE(::testing::Message() << "m " << m << " n " << n << " k " << k << " silu "
                                    << (kind == SkinnyInput::kSiluGateUp));
  const int stride = kind == SkinnyInput::kPlain ? k : 2 * k;
  DeviceBuffer<T> x(size_t(m) * stride), w(size_t(n) * k), bias(n), norm_w(n);
  x.Upload(RandomVector<T>(x.size));
  w.Upload(RandomVector<T>(w.size, 0.05f));
  bias.Upload(RandomVector<T>(n));
  norm_w.Upload(RandomVector<T>(n));
  const auto start = RandomVector<T>(size_t(m) * n, 2.0f);
  DeviceBuffer<T> want(start.size()), got(start.size()), proj(start.size()), normed(start.size());
  want.Upload(start);
  got.Upload(start);
  Poison(proj);
  CUDA_OK((SkinnyGemm<T, T>(x.ptr, stride, kind, w.ptr, bias.ptr, m, n, k, proj.ptr, nullptr)));
  CUDA_OK(AddRmsNorm<T>(proj.ptr, want.ptr, norm_w.ptr, m, n, kEps, normed.ptr, nullptr));
  CUDA_OK(SkinnyGemmFused<T>(x.ptr, stride, kind, {}, w.ptr, bias.ptr, m, n, k, nullptr, got.ptr,
                             nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(SameBytes(want, got));
}

TEST(SkinnyGemmFusedCuda, NormalisedInputIsAddRmsNormThenTheProduct) {
  REQUIRE_GPU();
  for (int m : {1, 2, 3, 8}) {
    CheckNormInput<__nv_bfloat16>(m, 3072, 2048, m == 2);  // the 1B QKV product
  }
  CheckNormInput<__nv_bfloat16>(1, 1000, 4096, false);  // the 8B hidden size: two chunks a thread
  CheckNormInput<__nv_bfloat16>(5, 77, 1000, true);     // a partial last chunk round
  CheckNormInput<__half>(1, 640, 2048, true);
}

TEST(SkinnyGemmFusedCuda, ResidualOutputIsTheProductThenTheAdd) {
  REQUIRE_GPU();
  for (int m : {1, 4, 7}) {
    CheckResidualOutput<__nv_bfloat16>(m, 2048, 2048, SkinnyInput::kPlain);  // the 1B O product
  }
  CheckResidualOutput<__nv_bfloat16>(1, 2048, 8192, SkinnyInput::kSiluGateUp);  // the 1B down
  CheckResidualOutput<__nv_bfloat16>(2, 512, 14336, SkinnyInput::kSiluGateUp);  // the 8B down's k
  CheckResidualOutput<__half>(3, 1000, 512, SkinnyInput::kPlain);
}

// The QKV product with RoPE and the append == AddRmsNorm, the product, QkvRopeAppend.
template <typename T, typename KV>
void CheckRopeAppend(int tokens, int heads, int kv_heads, int head_dim, int hidden,
                     bool with_bias) {
  SCOPED_TRACE(::testing::Message()
               << "tokens " << tokens << " heads " << heads << " kv " << kv_heads << " d "
               << head_dim << " fp8 " << (sizeof(KV) == 1));
  constexpr int kBlockSize = 16;
  const int n = (heads + 2 * kv_heads) * head_dim;
  DeviceBuffer<T> residual(size_t(tokens) * hidden), norm_w(hidden), w(size_t(n) * hidden), bias(n);
  residual.Upload(RandomVector<T>(residual.size, 3.0f));
  norm_w.Upload(RandomVector<T>(hidden));
  w.Upload(RandomVector<T>(w.size, 0.05f));
  bias.Upload(RandomVector<T>(n));
  // Shuffled slots in a pool twice the tokens' blocks; the last token is padding when there are
  // several (slot -1).
  const auto tables = MakeShuffledTables({tokens}, kBlockSize);
  std::vector<int64_t> slots(tokens);
  for (int t = 0; t < tokens; ++t) {
    slots[t] = int64_t(tables.tables[t / kBlockSize]) * kBlockSize + t % kBlockSize;
  }
  if (tokens > 1) slots.back() = -1;
  std::vector<int32_t> positions(tokens);
  std::uniform_int_distribution<int> pos(0, 131071);
  for (auto& p : positions) p = pos(Rng());
  const auto inv_freq = RopeInverseFrequencies(500000.0f, head_dim, RopeScaling{});
  DeviceBuffer<int64_t> slots_d(tokens);
  DeviceBuffer<int32_t> positions_d(tokens);
  DeviceBuffer<float> freq_d(inv_freq.size()), scales_d(2 * kv_heads);
  slots_d.Upload(slots);
  positions_d.Upload(positions);
  freq_d.Upload(inv_freq);
  std::vector<float> scales(2 * kv_heads);
  for (int i = 0; i < 2 * kv_heads; ++i) scales[i] = 0.01f * float(i + 1);
  scales_d.Upload(scales);

  const size_t pool = size_t(tables.pool_blocks) * kv_heads * kBlockSize * head_dim;
  DeviceBuffer<T> want_q(size_t(tokens) * heads * head_dim), got_q(want_q.size);
  DeviceBuffer<KV> want_k(pool), want_v(pool), got_k(pool), got_v(pool);
  Poison(want_q);
  Poison(got_q);
  Poison(want_k);
  Poison(want_v);
  Poison(got_k);
  Poison(got_v);
  auto view = [&](DeviceBuffer<KV>& k, DeviceBuffer<KV>& v) {
    PagedKvView<KV> cache{k.ptr, v.ptr, nullptr, 0, kv_heads, kBlockSize, head_dim};
    if (sizeof(KV) == 1) {
      cache.k_scale = scales_d.ptr;
      cache.v_scale = scales_d.ptr + kv_heads;
    }
    return cache;
  };
  const T* b = with_bias ? bias.ptr : nullptr;
  DeviceBuffer<T> normed(residual.size), qkv(size_t(tokens) * n);
  CUDA_OK(
      AddRmsNorm<T>(nullptr, residual.ptr, norm_w.ptr, tokens, hidden, kEps, normed.ptr, nullptr));
  CUDA_OK((SkinnyGemm<T, T>(normed.ptr, hidden, SkinnyInput::kPlain, w.ptr, b, tokens, n, hidden,
                            qkv.ptr, nullptr)));
  CUDA_OK((QkvRopeAppend<T, KV>(qkv.ptr, positions_d.ptr, freq_d.ptr, slots_d.ptr, tokens, heads,
                                want_q.ptr, view(want_k, want_v), nullptr)));
  SkinnyRopeAppend<T, KV> rope;
  rope.positions = positions_d.ptr;
  rope.inv_freq = freq_d.ptr;
  rope.slots = slots_d.ptr;
  rope.num_heads = heads;
  rope.q_out = got_q.ptr;
  rope.cache = view(got_k, got_v);
  CUDA_OK((SkinnyGemmRopeAppend<T, KV>(residual.ptr, hidden, {norm_w.ptr, kEps}, w.ptr, b, tokens,
                                       n, hidden, rope, nullptr)));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(SameBytes(want_q, got_q)) << "queries";
  EXPECT_TRUE(SameBytes(want_k, got_k)) << "keys (and the untouched pool)";
  EXPECT_TRUE(SameBytes(want_v, got_v)) << "values (and the untouched pool)";
}

TEST(SkinnyGemmFusedCuda, RopeAppendIsTheProductThenQkvRopeAppend) {
  REQUIRE_GPU();
  using Bf16 = __nv_bfloat16;
  CheckRopeAppend<Bf16, Bf16>(1, 32, 8, 64, 2048, false);  // the 1B shape, batch 1
  CheckRopeAppend<Bf16, Bf16>(3, 32, 8, 128, 4096, true);  // the 8B shape, 3 tokens, padding
  CheckRopeAppend<Bf16, Bf16>(8, 4, 1, 64, 512, true);     // MQA, 8 tokens
  CheckRopeAppend<Bf16, __nv_fp8_e4m3>(1, 32, 8, 64, 2048, false);
  CheckRopeAppend<Bf16, __nv_fp8_e4m3>(5, 8, 2, 128, 1024, true);
  CheckRopeAppend<__half, __half>(2, 6, 3, 64, 768, true);
}

TEST(SkinnyGemmFusedCuda, RefusesWhatItCannotCompute) {
  REQUIRE_GPU();
  using Bf16 = __nv_bfloat16;
  DeviceBuffer<Bf16> x(2 * 64), w(64 * 64), y(64), norm_w(64);
  const SkinnyNorm<Bf16> norm{norm_w.ptr, kEps};
  // Neither or both of y and residual.
  EXPECT_EQ(SkinnyGemmFused<Bf16>(x.ptr, 64, SkinnyInput::kPlain, {}, w.ptr, nullptr, 1, 64, 64,
                                  nullptr, nullptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(SkinnyGemmFused<Bf16>(x.ptr, 64, SkinnyInput::kPlain, {}, w.ptr, nullptr, 1, 64, 64,
                                  y.ptr, y.ptr, nullptr),
            cudaErrorInvalidValue);
  // A norm over SiLU(gate) * up.
  EXPECT_EQ(SkinnyGemmFused<Bf16>(x.ptr, 64, SkinnyInput::kSiluGateUp, norm, w.ptr, nullptr, 1, 32,
                                  32, y.ptr, nullptr, nullptr),
            cudaErrorInvalidValue);
  // n not (heads + 2 kv heads) x head_dim.
  SkinnyRopeAppend<Bf16, Bf16> rope;
  rope.num_heads = 2;
  rope.cache.num_kv_heads = 1;
  rope.cache.head_dim = 16;
  EXPECT_EQ(
      (SkinnyGemmRopeAppend<Bf16, Bf16>(x.ptr, 64, {}, w.ptr, nullptr, 1, 48, 64, rope, nullptr)),
      cudaErrorInvalidValue);
  CUDA_OK(cudaGetLastError());
}

}  // namespace
}  // namespace gqa::kernels::cuda
