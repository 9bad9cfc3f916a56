// The tensor-parallel weight upload against the checkpoint: every rank of 2 and 4 (and 8, which
// replicates KV heads) holds exactly its rows of Q, K, V, gate, up, embedding and lm_head, its
// columns of O and down, the whole norms, and the row-parallel biases on rank 0 only. The values
// are compared bit for bit after the upload's conversion to bf16 (the same conversion as the
// host's). Skips without a GPU.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/weights.h"
#include "common/test_checkpoint.h"
#include "model/checkpoint.h"
#include "model/tensor_names.h"
#include "model/tensor_parallel.h"

namespace gqa {
namespace {

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// The checkpoint tensor as bf16 values, [rows, cols] row-major (a vector is [1, n]).
struct HostMatrix {
  std::vector<__nv_bfloat16> values;
  size_t rows = 0, cols = 0;
  float at(size_t r, size_t c) const { return __bfloat162float(values[r * cols + c]); }
};

HostMatrix Read(const Checkpoint& ckpt, const std::string& name) {
  const TensorView& t = ckpt.Get(name);
  HostMatrix m;
  const size_t n = t.numel();
  m.cols = t.shape.size() >= 2 ? t.shape.back() : n;
  m.rows = n / m.cols;
  std::vector<float> f(n);
  ConvertToFloat(t.dtype, t.data, n, f.data());
  m.values.resize(n);
  for (size_t i = 0; i < n; ++i) m.values[i] = __float2bfloat16(f[i]);
  return m;
}

std::vector<float> Download(const void* device, size_t elems) {
  std::vector<__nv_bfloat16> raw(elems);
  EXPECT_EQ(cudaMemcpy(raw.data(), device, elems * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  std::vector<float> out(elems);
  for (size_t i = 0; i < elems; ++i) out[i] = __bfloat162float(raw[i]);
  return out;
}

// Expects device[r * cols + c] == full(row0 + r, col0 + c) for the slice.
void ExpectSlice(const std::vector<float>& device, const HostMatrix& full, IndexRange rows,
                 IndexRange cols, const std::string& what) {
  ASSERT_EQ(device.size(), size_t(rows.size()) * cols.size()) << what;
  size_t wrong = 0;
  for (int r = 0; r < rows.size(); ++r) {
    for (int c = 0; c < cols.size(); ++c) {
      wrong += device[size_t(r) * cols.size() + c] != full.at(rows.begin + r, cols.begin + c);
    }
  }
  EXPECT_EQ(wrong, 0u) << what;
}

void CheckRank(const Checkpoint& ckpt, const cuda::CudaDevice& device, int rank, int world) {
  const ModelConfig& full = ckpt.config();
  const auto plan = PlanTensorParallelShard(full, rank, world);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto weights = cuda::DeviceWeights::Upload(ckpt, DType::kBF16, {rank, world}, device);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelConfig local = cuda::ShardConfig(full, *plan);
  const std::string where = "rank " + std::to_string(rank) + " of " + std::to_string(world);
  const int h = full.hidden_size;
  const IndexRange all_h{0, h}, q_rows = plan->query_rows(full), kv_rows = plan->kv_rows(full);
  ExpectSlice(Download(weights->embed(), size_t(local.vocab_size) * h),
              Read(ckpt, tensor_names::kEmbed), plan->vocab, all_h, where + " embedding");
  ExpectSlice(Download(weights->lm_head(), size_t(local.vocab_size) * h),
              Read(ckpt, tensor_names::kLmHead), plan->vocab, all_h, where + " lm_head");
  for (int l = 0; l < full.num_layers; ++l) {
    const cuda::LayerWeights& L = weights->layer(l);
    auto name = [&](const char* suffix) { return LayerTensorName(l, suffix); };
    const size_t q = local.q_size(), kv = local.kv_size(), inter = local.intermediate_size;
    const std::vector<float> qkv = Download(L.qkv, (q + 2 * kv) * h);
    auto part = [&](size_t first, size_t count) {
      return std::vector<float>(qkv.begin() + first * h, qkv.begin() + (first + count) * h);
    };
    ExpectSlice(part(0, q), Read(ckpt, name(tensor_names::kQ)), q_rows, all_h, where + " q");
    ExpectSlice(part(q, kv), Read(ckpt, name(tensor_names::kK)), kv_rows, all_h, where + " k");
    ExpectSlice(part(q + kv, kv), Read(ckpt, name(tensor_names::kV)), kv_rows, all_h, where + " v");
    const std::vector<float> qkv_bias = Download(L.qkv_bias, q + 2 * kv);
    auto bias_part = [&](size_t first, size_t count) {
      return std::vector<float>(qkv_bias.begin() + first, qkv_bias.begin() + first + count);
    };
    ExpectSlice(bias_part(0, q), Read(ckpt, name(tensor_names::kQBias)), {0, 1}, q_rows,
                where + " q bias");
    ExpectSlice(bias_part(q, kv), Read(ckpt, name(tensor_names::kKBias)), {0, 1}, kv_rows,
                where + " k bias");
    ExpectSlice(bias_part(q + kv, kv), Read(ckpt, name(tensor_names::kVBias)), {0, 1}, kv_rows,
                where + " v bias");
    ExpectSlice(Download(L.o, size_t(h) * q), Read(ckpt, name(tensor_names::kO)), all_h, q_rows,
                where + " o (columns)");
    ExpectSlice(Download(L.down, size_t(h) * inter), Read(ckpt, name(tensor_names::kDown)), all_h,
                plan->intermediate, where + " down (columns)");
    const std::vector<float> gate_up = Download(L.gate_up, 2 * inter * h);
    ExpectSlice(std::vector<float>(gate_up.begin(), gate_up.begin() + inter * h),
                Read(ckpt, name(tensor_names::kGate)), plan->intermediate, all_h, where + " gate");
    ExpectSlice(std::vector<float>(gate_up.begin() + inter * h, gate_up.end()),
                Read(ckpt, name(tensor_names::kUp)), plan->intermediate, all_h, where + " up");
    ExpectSlice(Download(L.input_norm, h), Read(ckpt, name(tensor_names::kInputNorm)), {0, 1},
                all_h, where + " input norm (whole)");
    if (full.o_bias) {
      const std::vector<float> bias = Download(L.o_bias, h);
      if (rank == 0) {
        ExpectSlice(bias, Read(ckpt, name(tensor_names::kOBias)), {0, 1}, all_h, where + " o bias");
      } else {
        EXPECT_EQ(bias, std::vector<float>(h, 0.0f)) << where << ": o bias only on rank 0";
      }
    }
  }
}

TEST(TensorParallelWeightsTest, EveryRankHoldsItsSlices) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU: the sharded upload was NOT checked";
  auto device = cuda::CudaDevice::Open(0);
  ASSERT_TRUE(device.ok()) << device.status();
  for (const int kv_heads : {8, 2}) {  // GQA, and KV heads replicated at 4 and 8 ranks
    ModelConfig c = testing::TinyConfig(kv_heads, DType::kF32);
    c.num_heads = 8;
    c.head_dim = 64;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.vocab_size = 322;            // not a multiple of the ranks: the last rank's rows are fewer
    c.qkv_bias = c.o_bias = true;  // Llama's attention_bias: Q, K, V and O biases
    c.tie_word_embeddings = false;
    testing::TempDir dir;
    testing::WriteRandomCheckpoint(dir.path(), c, /*seed=*/kv_heads);
    auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    for (const int world : {1, 2, 4, 8}) {
      for (int rank = 0; rank < world; ++rank) CheckRank(**ckpt, **device, rank, world);
    }
  }
}

}  // namespace
}  // namespace gqa
