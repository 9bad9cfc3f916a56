// What the CUDA backend suites share (tests/cuda/cuda_backend_test.cc,
// tests/cuda/tensor_parallel_backend_test.cc): the small model shapes, the KV pool, the bf16
// tolerance, and how a bf16 CUDA backend is made over a checkpoint directory.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "backend/factory.h"
#include "common/test_checkpoint.h"
#include "model/checkpoint.h"

namespace gqa::testing {

constexpr int kBlockSize = 16;
constexpr int kNumBlocks = 96;
constexpr double kLogitTolerance = 0.03;  // relative L2 error of a row of logits, bf16

inline ModelConfig Shape(int heads, int kv_heads, int head_dim) {
  ModelConfig c = TinyConfig(kv_heads, DType::kBF16);
  c.num_heads = heads;
  c.head_dim = head_dim;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.vocab_size = 320;
  c.num_layers = 3;
  return c;
}

// The options the tests start from: their block size and pool.
inline ServingOptions SmallOptions(int num_kv_blocks, int max_num_seqs, int max_num_batched_tokens,
                                   int max_model_len) {
  ServingOptions o;
  o.cache.block_size = kBlockSize;
  o.cache.num_kv_blocks = num_kv_blocks;
  o.scheduler.max_num_seqs = max_num_seqs;
  o.scheduler.max_num_batched_tokens = max_num_batched_tokens;
  o.scheduler.max_model_len = max_model_len;
  return o;
}

// A bf16 CUDA backend over the checkpoint in `dir` with options `o` (through the factory, so
// tensor_parallel_size picks the runtime); null (and a test failure) when it cannot be made.
inline std::unique_ptr<Backend> GpuBackend(const std::filesystem::path& dir, ServingOptions o) {
  auto ckpt = Checkpoint::Load(dir, LoadFormat::kSafetensors);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return nullptr;
  o.backend.kind = BackendKind::kCuda;
  o.backend.dtype = "bfloat16";
  auto backend = CreateBackend(o, o.backend.kind, std::move(*ckpt));
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

}  // namespace gqa::testing
