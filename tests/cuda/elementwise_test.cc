// The CUDA norm, rotary, SwiGLU and embedding kernels against the CPU reference ops, on fresh
// random inputs, outputs poisoned before each launch.
#include <gtest/gtest.h>

#include <numeric>

#include "cuda_test_util.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/elementwise_cuda.h"
#include "gqa/kernels/rope.h"

namespace gqa::kernels::cuda {
namespace {

template <typename T>
void CheckAddRmsNorm(int rows, int dim, bool with_add) {
  SCOPED_TRACE(testing::Message() << "rows " << rows << " dim " << dim << " add " << with_add);
  const auto x = RandomVector<T>(size_t(rows) * dim);
  const auto residual = RandomVector<T>(size_t(rows) * dim, 3.0f);
  const auto weight = RandomVector<T>(dim);
  DeviceBuffer<T> x_d(x.size()), res_d(residual.size()), w_d(dim), out_d(x.size());
  x_d.Upload(x);
  res_d.Upload(residual);
  w_d.Upload(weight);
  CUDA_OK(cudaMemset(out_d.ptr, 0xff, x.size() * sizeof(T)));
  CUDA_OK(AddRmsNorm<T>(with_add ? x_d.ptr : nullptr, res_d.ptr, w_d.ptr, rows, dim, 1e-5f,
                        out_d.ptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  // Reference: the residual rounded to T after the add (as the kernel and the model do).
  std::vector<float> new_res = ToFloats(residual);
  if (with_add) {
    const auto xf = ToFloats(x);
    for (size_t i = 0; i < new_res.size(); ++i) new_res[i] = ToFloat(ToT<T>(new_res[i] + xf[i]));
  }
  std::vector<float> ref(x.size());
  cpu::RmsNorm(new_res.data(), ToFloats(weight).data(), rows, dim, 1e-5f, ref.data());
  EXPECT_LT(RelativeError(out_d.Download(), ref), Tolerance<T>());
  EXPECT_EQ(ToFloats(res_d.Download()), new_res);
}

template <typename T>
void CheckRope(int tokens, int heads, int kv_heads, int head_dim, RopeScalingType scaling) {
  SCOPED_TRACE(testing::Message() << "tokens " << tokens << " head_dim " << head_dim);
  auto q = RandomVector<T>(size_t(tokens) * heads * head_dim);
  auto k = RandomVector<T>(size_t(tokens) * kv_heads * head_dim);
  std::vector<int32_t> positions(tokens);
  std::uniform_int_distribution<int> pos(0, 131071);
  for (auto& p : positions) p = pos(Rng());
  RopeScaling s;
  s.type = scaling;
  s.factor = 8.0f;
  const auto inv_freq = RopeInverseFrequencies(500000.0f, head_dim, s);
  DeviceBuffer<T> q_d(q.size()), k_d(k.size());
  DeviceBuffer<int32_t> pos_d(tokens);
  DeviceBuffer<float> freq_d(inv_freq.size());
  q_d.Upload(q);
  k_d.Upload(k);
  pos_d.Upload(positions);
  freq_d.Upload(inv_freq);
  CUDA_OK(ApplyRope<T>(q_d.ptr, k_d.ptr, pos_d.ptr, freq_d.ptr, tokens, heads, kv_heads, head_dim,
                       nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  auto q_ref = ToFloats(q), k_ref = ToFloats(k);
  cpu::ApplyRope(q_ref.data(), positions.data(), inv_freq.data(), tokens, heads, head_dim);
  cpu::ApplyRope(k_ref.data(), positions.data(), inv_freq.data(), tokens, kv_heads, head_dim);
  EXPECT_LT(RelativeError(q_d.Download(), q_ref), Tolerance<T>());
  EXPECT_LT(RelativeError(k_d.Download(), k_ref), Tolerance<T>());
}

template <typename T>
void CheckSiluMulAndEmbedding(int rows, int dim, int vocab) {
  // gate and up interleaved in one [rows, 2 * dim] buffer, as a fused projection writes them.
  const auto gate_up = RandomVector<T>(size_t(rows) * 2 * dim, 2.0f);
  DeviceBuffer<T> gu_d(gate_up.size()), out_d(size_t(rows) * dim);
  gu_d.Upload(gate_up);
  CUDA_OK(cudaMemset(out_d.ptr, 0xff, out_d.size * sizeof(T)));
  CUDA_OK(SiluMul<T>(gu_d.ptr, gu_d.ptr + dim, rows, dim, 2 * dim, out_d.ptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const auto f = ToFloats(gate_up);
  std::vector<float> gate(size_t(rows) * dim), up(gate.size()), ref(gate.size());
  for (int r = 0; r < rows; ++r) {
    std::copy_n(f.begin() + size_t(r) * 2 * dim, dim, gate.begin() + size_t(r) * dim);
    std::copy_n(f.begin() + size_t(r) * 2 * dim + dim, dim, up.begin() + size_t(r) * dim);
  }
  cpu::SiluMul(gate.data(), up.data(), rows, dim, ref.data());
  EXPECT_LT(RelativeError(out_d.Download(), ref), Tolerance<T>());
  if (dim % 8 != 0) return;  // the gather's rows are 16-byte vectors

  const auto table = RandomVector<T>(size_t(vocab) * dim);
  std::vector<int32_t> ids(rows);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  for (auto& i : ids) i = id(Rng());
  DeviceBuffer<T> table_d(table.size()), emb_d(size_t(rows) * dim);
  DeviceBuffer<int32_t> ids_d(rows);
  table_d.Upload(table);
  ids_d.Upload(ids);
  CUDA_OK(cudaMemset(emb_d.ptr, 0xff, emb_d.size * sizeof(T)));
  CUDA_OK(EmbeddingGather<T>(table_d.ptr, ids_d.ptr, rows, dim, emb_d.ptr, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> emb_ref(size_t(rows) * dim);
  cpu::EmbeddingGather(ToFloats(table).data(), ids.data(), rows, dim, emb_ref.data());
  EXPECT_EQ(ToFloats(emb_d.Download()), emb_ref);
}

// A tensor-parallel rank's embedding: its vocabulary rows [begin, end) of the table, zeros for
// the other ids; the ranks' outputs summed are the whole gather.
template <typename T>
void CheckEmbeddingVocabSlices(int rows, int dim, int vocab, int ranks) {
  const auto table = RandomVector<T>(size_t(vocab) * dim);
  std::vector<int32_t> ids(rows);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  for (auto& i : ids) i = id(Rng());
  DeviceBuffer<int32_t> ids_d(rows);
  ids_d.Upload(ids);
  std::vector<float> sum(size_t(rows) * dim, 0.0f), whole(sum.size());
  cpu::EmbeddingGather(ToFloats(table).data(), ids.data(), rows, dim, whole.data());
  const int each = (vocab + ranks - 1) / ranks;
  for (int r = 0; r < ranks; ++r) {
    const int begin = std::min(vocab, r * each), end = std::min(vocab, begin + each);
    const std::vector<T> slice(table.begin() + size_t(begin) * dim,
                               table.begin() + size_t(end) * dim);
    DeviceBuffer<T> slice_d(slice.size()), out_d(size_t(rows) * dim);
    slice_d.Upload(slice);
    CUDA_OK(cudaMemset(out_d.ptr, 0xff, out_d.size * sizeof(T)));
    CUDA_OK(EmbeddingGatherVocabSlice<T>(slice_d.ptr, ids_d.ptr, rows, dim, begin, end, out_d.ptr,
                                         nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out = ToFloats(out_d.Download());
    for (int t = 0; t < rows; ++t) {
      const bool mine = ids[t] >= begin && ids[t] < end;
      for (int c = 0; c < dim; ++c) {
        const size_t i = size_t(t) * dim + c;
        ASSERT_EQ(out[i], mine ? whole[i] : 0.0f) << "rank " << r << " token " << t;
        sum[i] += out[i];
      }
    }
  }
  EXPECT_EQ(sum, whole);
}

TEST(ElementwiseCuda, EmbeddingVocabSlicesSumToTheWholeGather) {
  REQUIRE_GPU();
  CheckEmbeddingVocabSlices<__nv_bfloat16>(37, 256, 322, 4);  // the last slice narrower
  CheckEmbeddingVocabSlices<__half>(5, 64, 100, 2);
  CheckEmbeddingVocabSlices<__nv_bfloat16>(9, 128, 1000, 1);  // one rank: the whole table
}

TEST(ElementwiseCuda, AddRmsNorm) {
  REQUIRE_GPU();
  for (int dim : {64, 4096, 5120, 8192}) {
    CheckAddRmsNorm<__nv_bfloat16>(7, dim, true);
    CheckAddRmsNorm<__nv_bfloat16>(3, dim, false);
    CheckAddRmsNorm<__half>(5, dim, true);
  }
}

TEST(ElementwiseCuda, RopeWithAndWithoutLlama3Scaling) {
  REQUIRE_GPU();
  for (int head_dim : {64, 128}) {
    CheckRope<__nv_bfloat16>(33, 32, 8, head_dim, RopeScalingType::kNone);
    CheckRope<__nv_bfloat16>(5, 8, 1, head_dim, RopeScalingType::kLlama3);
    CheckRope<__half>(17, 16, 16, head_dim, RopeScalingType::kLinear);
  }
}

TEST(ElementwiseCuda, SiluMulAndEmbedding) {
  REQUIRE_GPU();
  CheckSiluMulAndEmbedding<__nv_bfloat16>(9, 11008, 32000);
  CheckSiluMulAndEmbedding<__half>(1, 14336, 1000);
  CheckSiluMulAndEmbedding<__nv_bfloat16>(2048, 8192, 100);  // a prefill's rows
  CheckSiluMulAndEmbedding<__nv_bfloat16>(5, 100, 0);        // one value per thread (100 % 8)
}

}  // namespace
}  // namespace gqa::kernels::cuda
