// The fused Q|K|V split (rotary embedding, queries out, keys and values into the paged cache)
// against the CPU reference ops, on fresh random inputs with poisoned outputs.
#include <gtest/gtest.h>

#include <numeric>

#include "cuda_test_util.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/paged_attention_cuda.h"
#include "gqa/kernels/rope.h"

namespace gqa::kernels::cuda {
namespace {

template <typename T>
void CheckQkvRopeAppend(int tokens, int heads, int kv_heads, int head_dim, int block_size) {
  SCOPED_TRACE(testing::Message() << "tokens " << tokens << " heads " << heads << " kv " << kv_heads
                                  << " d " << head_dim);
  const int width = (heads + 2 * kv_heads) * head_dim;
  const auto qkv = RandomVector<T>(size_t(tokens) * width);
  std::vector<int32_t> positions(tokens);
  std::uniform_int_distribution<int> pos(0, 131071);
  for (auto& p : positions) p = pos(Rng());
  // Every token its own shuffled slot; the last token is padding (slot -1).
  const auto tables = MakeShuffledTables({tokens}, block_size);
  std::vector<int64_t> slots(tokens);
  for (int t = 0; t < tokens; ++t) {
    slots[t] = int64_t(tables.tables[t / block_size]) * block_size + t % block_size;
  }
  slots.back() = -1;
  RopeScaling scaling;
  scaling.type = RopeScalingType::kLlama3;
  scaling.factor = 8.0f;
  const auto inv_freq = RopeInverseFrequencies(500000.0f, head_dim, scaling);

  const size_t pool = size_t(tables.pool_blocks) * kv_heads * block_size * head_dim;
  DeviceBuffer<T> qkv_d(qkv.size()), q_d(size_t(tokens) * heads * head_dim), k_d(pool), v_d(pool);
  DeviceBuffer<int32_t> pos_d(tokens);
  DeviceBuffer<float> freq_d(inv_freq.size());
  DeviceBuffer<int64_t> slot_d(tokens);
  qkv_d.Upload(qkv);
  pos_d.Upload(positions);
  freq_d.Upload(inv_freq);
  slot_d.Upload(slots);
  CUDA_OK(cudaMemset(q_d.ptr, 0xff, q_d.size * sizeof(T)));  // NaN poison
  CUDA_OK(cudaMemset(k_d.ptr, 0, pool * sizeof(T)));
  CUDA_OK(cudaMemset(v_d.ptr, 0, pool * sizeof(T)));
  PagedKvView<T> cache{k_d.ptr, v_d.ptr, nullptr, 0, kv_heads, block_size, head_dim};
  CUDA_OK(QkvRopeAppend<T>(qkv_d.ptr, pos_d.ptr, freq_d.ptr, slot_d.ptr, tokens, heads, q_d.ptr,
                           cache, nullptr));
  CUDA_OK(cudaDeviceSynchronize());

  // Reference: split, rope q and k in fp32, append k and v (rounded to T) into a zero pool.
  const auto f = ToFloats(qkv);
  std::vector<float> q(size_t(tokens) * heads * head_dim), k(size_t(tokens) * kv_heads * head_dim),
      v(k.size());
  for (int t = 0; t < tokens; ++t) {
    const float* row = f.data() + size_t(t) * width;
    std::copy_n(row, heads * head_dim, q.data() + size_t(t) * heads * head_dim);
    std::copy_n(row + heads * head_dim, kv_heads * head_dim,
                k.data() + size_t(t) * kv_heads * head_dim);
    std::copy_n(row + (heads + kv_heads) * head_dim, kv_heads * head_dim,
                v.data() + size_t(t) * kv_heads * head_dim);
  }
  cpu::ApplyRope(q.data(), positions.data(), inv_freq.data(), tokens, heads, head_dim);
  cpu::ApplyRope(k.data(), positions.data(), inv_freq.data(), tokens, kv_heads, head_dim);
  for (auto& x : k) x = ToFloat(ToT<T>(x));
  std::vector<float> k_ref(pool, 0.0f), v_ref(pool, 0.0f);
  PagedKvView<float> ref_view{k_ref.data(), v_ref.data(), nullptr, 0,
                              kv_heads,     block_size,   head_dim};
  cpu::PagedKvAppend(k.data(), v.data(), slots.data(), tokens - 1, ref_view);  // no padding

  EXPECT_LT(RelativeError(q_d.Download(), q), Tolerance<T>());
  EXPECT_LT(RelativeError(k_d.Download(), k_ref), Tolerance<T>());
  EXPECT_EQ(ToFloats(v_d.Download()), v_ref) << "values are copied exactly, padding skipped";
}

TEST(QkvRopeAppendCuda, Bf16AndFp16Shapes) {
  REQUIRE_GPU();
  CheckQkvRopeAppend<__nv_bfloat16>(37, 32, 8, 128, 16);
  CheckQkvRopeAppend<__nv_bfloat16>(5, 32, 1, 64, 16);
  CheckQkvRopeAppend<__nv_bfloat16>(100, 8, 8, 64, 32);
  CheckQkvRopeAppend<__half>(33, 12, 4, 128, 16);
  CheckQkvRopeAppend<__nv_bfloat16>(7, 4, 2, 36, 16);  // one pair per run (36 % 8 != 0)
}

}  // namespace
}  // namespace gqa::kernels::cuda
