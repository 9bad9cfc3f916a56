// The CPU backend reads weight matrices in place from the mapped checkpoint; a file whose tensors
// are not aligned to their element size (a header length that is not a multiple of 8, which
// other writers than Hugging Face's may produce) falls back to fp32 copies with the same logits.
#include "backend/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>
#include <vector>

#include "backend/kv_scales.h"
#include "common/test_checkpoint.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace gqa {
namespace {

std::vector<float> Logits(const std::filesystem::path& dir) {
  auto ckpt = Checkpoint::Load(dir, LoadFormat::kSafetensors);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return {};
  auto backend = CpuBackend::Create(std::move(*ckpt), /*block_size=*/4, /*num_blocks=*/8);
  EXPECT_TRUE(backend.ok());
  const std::vector<int32_t> tokens = {3, 14, 15, 92, 65, 35};
  const std::vector<int32_t> blocks = {5, 2};
  const WholeTableSeq seq{tokens, 0, blocks, /*samples=*/true};
  EXPECT_TRUE((*backend)->ExecuteStep(WholeTablePlanner().Plan({&seq, 1})).ok());
  return *(*backend)->LogitsToHost();
}

// Rewrites a safetensors file with `extra` spaces after its JSON header, shifting every tensor.
void PadHeader(const std::filesystem::path& file, size_t extra) {
  std::ifstream in(file, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  std::vector<char> out(bytes.begin(), bytes.begin() + 8 + header_len);
  out.insert(out.end(), extra, ' ');
  out.insert(out.end(), bytes.begin() + 8 + header_len, bytes.end());
  header_len += extra;
  std::memcpy(out.data(), &header_len, 8);
  std::ofstream(file, std::ios::binary | std::ios::trunc).write(out.data(), out.size());
}

bool EmbeddingAligned(const std::filesystem::path& dir) {
  auto ckpt = Checkpoint::Load(dir, LoadFormat::kSafetensors);
  const TensorView& t = (*ckpt)->Get("model.embed_tokens.weight");
  return reinterpret_cast<uintptr_t>(t.data) % DTypeSize(t.dtype) == 0;
}

TEST(CpuBackendTest, MisalignedTensorsGiveTheSameLogits) {
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    testing::TempDir aligned, shifted;
    const ModelConfig config = testing::TinyConfig(2, dtype);
    testing::WriteRandomCheckpoint(aligned.path(), config, 7);
    testing::WriteRandomCheckpoint(shifted.path(), config, 7);
    PadHeader(shifted.path() / "model.safetensors", 1);  // every tensor at an odd address
    ASSERT_TRUE(EmbeddingAligned(aligned.path()));
    ASSERT_FALSE(EmbeddingAligned(shifted.path()));
    const std::vector<float> want = Logits(aligned.path());
    ASSERT_FALSE(want.empty());
    EXPECT_EQ(Logits(shifted.path()), want) << DTypeName(dtype);
  }
}

// The block tables persist between steps and change only by deltas: one slot, so a second
// sequence fits only once a plan (here one of removals only, which computes nothing) frees it.
TEST(CpuBackendTest, BlockTablesChangeOnlyByDeltas) {
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), testing::TinyConfig(2), 3);
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok());
  auto backend = CpuBackend::Create(std::move(*ckpt), 4, 8, KvCacheDType::kCompute,
                                    /*max_seqs=*/1, /*max_model_len=*/16);
  ASSERT_TRUE(backend.ok());
  const std::vector<int32_t> tokens = {3, 14, 15, 92, 65};
  auto plan = [&](uint64_t id, BlockTableDelta tables) {
    StepPlan p;
    p.tables = std::move(tables);
    ScheduledSeq s;
    s.seq_id = id;
    s.chunk = tokens;
    s.samples = true;
    p.seqs.push_back(s);
    return p;
  };
  ASSERT_TRUE((*backend)->ExecuteStep(plan(1, {.removed = {}, .rows = {{1, 0, {4, 6}}}})).ok());
  EXPECT_FALSE((*backend)->ExecuteStep(plan(2, {.removed = {}, .rows = {{2, 0, {1, 2}}}})).ok())
      << "no free slot";
  EXPECT_FALSE((*backend)->ExecuteStep(plan(3, {})).ok()) << "a sequence without a row";
  ASSERT_TRUE((*backend)->ExecuteStep(plan(1, {})).ok()) << "its row persists";
  auto removed =
      (*backend)->ExecuteStep(StepPlan{.seqs = {}, .tables = {.removed = {1}, .rows = {}}});
  ASSERT_TRUE(removed.ok());
  EXPECT_TRUE(removed->sampled.empty());
  EXPECT_TRUE((*backend)->ExecuteStep(plan(2, {.removed = {}, .rows = {{2, 0, {1, 2}}}})).ok());
}

// --kv_cache_dtype=fp8_e4m3: the logits of a batch of two sequences (a prompt, then decode steps).
// Sequence 0 alone or beside sequence 1 gives the same bits (batch invariance).
std::vector<float> Fp8Logits(const std::filesystem::path& dir, KvCacheDType cache_dtype,
                             bool with_neighbour) {
  auto ckpt = Checkpoint::Load(dir, LoadFormat::kSafetensors);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return {};
  auto backend =
      CpuBackend::Create(std::move(*ckpt), /*block_size=*/4, /*num_blocks=*/16, cache_dtype);
  EXPECT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->kv_spec().cache_dtype, cache_dtype);
  std::vector<int32_t> tokens = {3, 14, 15, 92, 65, 35, 89, 79, 32};
  const std::vector<int32_t> blocks = {5, 2, 9, 0}, other_blocks = {1, 7, 3};
  const std::vector<int32_t> other = {8, 9, 7, 9, 3, 2, 3, 8, 4};
  std::vector<float> all;
  WholeTablePlanner planner;
  int pos = 0;
  for (int step = 0; step < 4; ++step) {
    const int n = step == 0 ? 6 : 1;  // a prompt of 6, then one token per step
    std::vector<WholeTableSeq> batch = {
        {std::span(tokens).subspan(pos, n), pos, blocks, /*samples=*/true}};
    if (with_neighbour) {
      batch.push_back({std::span(other).subspan(pos, n), pos, other_blocks, true});
    }
    EXPECT_TRUE((*backend)->ExecuteStep(planner.Plan(batch)).ok());
    const std::vector<float> logits = *(*backend)->LogitsToHost();
    all.insert(all.end(), logits.begin(), logits.begin() + 128);  // sequence 0's row
    pos += n;
  }
  return all;
}

TEST(CpuBackendFp8Test, LogitsCloseToFp32DeterministicAndBatchInvariant) {
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), testing::TinyConfig(2, DType::kBF16), 5);
  const auto fp32 = Fp8Logits(dir.path(), KvCacheDType::kCompute, false);
  const auto fp8 = Fp8Logits(dir.path(), KvCacheDType::kFp8E4M3, false);
  ASSERT_EQ(fp8.size(), fp32.size());
  EXPECT_EQ(Fp8Logits(dir.path(), KvCacheDType::kFp8E4M3, false), fp8);  // deterministic
  EXPECT_EQ(Fp8Logits(dir.path(), KvCacheDType::kFp8E4M3, true), fp8);   // batch-invariant
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < fp8.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(fp8[i] - fp32[i])));
    max_abs = std::max(max_abs, double(std::fabs(fp32[i])));
  }
  EXPECT_NE(fp8, fp32);  // FP8 rounding does reach the logits
  // E4M3 keeps 3 mantissa bits (relative error <= 2^-4 per element): on this tiny model the
  // logits move by under 5% of their largest magnitude.
  EXPECT_LT(max_diff, 0.05 * max_abs) << "max |fp8 - fp32| " << max_diff << " of " << max_abs;
  std::printf("fp8 vs fp32 logits: max |diff| %.4g, max |logit| %.4g\n", max_diff, max_abs);
}

TEST(CpuBackendFp8Test, PoolHoldsFourTimesTheTokensOfFp32) {
  KvCacheSpec spec{16, 10, 2, 64, 4, DType::kF32, KvCacheDType::kCompute};
  const uint64_t fp32_block = spec.bytes_per_block();
  spec.cache_dtype = KvCacheDType::kFp8E4M3;
  EXPECT_EQ(spec.bytes_per_block() * 4, fp32_block);
  EXPECT_EQ(spec.cache_dtype_name(), "fp8_e4m3");
  spec.dtype = DType::kBF16;
  const KvCacheSpec bf16{16, 10, 2, 64, 4, DType::kBF16};
  EXPECT_EQ(spec.bytes_per_block() * 2, bf16.bytes_per_block());
  EXPECT_EQ(spec.total_bytes() * 2, bf16.total_bytes());
}

// Copies the checkpoint in `from` to `to` with extra tensors (vLLM's KV cache scales).
void CopyWithExtraTensors(const std::filesystem::path& from, const std::filesystem::path& to,
                          const std::vector<TensorToWrite>& extra) {
  auto ckpt = Checkpoint::Load(from, LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<TensorToWrite> tensors = extra;
  for (const TensorSpec& spec : ExpectedTensors((*ckpt)->config())) {
    const TensorView& t = (*ckpt)->Get(spec.name);
    tensors.push_back({spec.name, t.dtype, t.shape, t.data, t.nbytes});
  }
  std::filesystem::create_directories(to);
  for (const char* file : {"config.json", "generation_config.json"}) {
    if (std::filesystem::exists(from / file)) std::filesystem::copy_file(from / file, to / file);
  }
  ASSERT_TRUE(WriteSafetensors(to / "model.safetensors", tensors, {}).ok());
}

TEST(KvScalesTest, FromTheCheckpointPerHeadOrPerLayerElseOne) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig(2, DType::kF32);  // 2 layers, 2 KV heads
  testing::WriteRandomCheckpoint(dir.path() / "plain", config, 9);
  const float per_head[2] = {0.5f, 4.0f}, per_layer = 2.0f;
  CopyWithExtraTensors(dir.path() / "plain", dir.path() / "scaled",
                       {{"model.layers.0.self_attn.k_scale", DType::kF32, {2}, per_head, 8},
                        {"model.layers.1.self_attn.v_scale", DType::kF32, {}, &per_layer, 4}});
  auto ckpt = Checkpoint::Load(dir.path() / "scaled", LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto scales = LoadKvScales(**ckpt);
  ASSERT_TRUE(scales.ok()) << scales.status();
  EXPECT_TRUE(scales->from_checkpoint);
  EXPECT_EQ(scales->k, (std::vector<float>{0.5f, 4.0f, 1.0f, 1.0f}));  // [layer][kv head]
  EXPECT_EQ(scales->v, (std::vector<float>{1.0f, 1.0f, 2.0f, 2.0f}));
  auto plain = Checkpoint::Load(dir.path() / "plain", LoadFormat::kSafetensors);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(LoadKvScales(**plain)->from_checkpoint);

  // The scales reach the cache: other logits than with scales of 1, still close to fp32's.
  auto logits = [&](const std::string& name, KvCacheDType cache_dtype) {
    auto c = Checkpoint::Load(dir.path() / name, LoadFormat::kSafetensors);
    auto backend = CpuBackend::Create(std::move(*c), 4, 8, cache_dtype);
    EXPECT_TRUE(backend.ok()) << backend.status();
    const std::vector<int32_t> tokens = {3, 14, 15, 92, 65, 35};
    const std::vector<int32_t> blocks = {5, 2};
    const WholeTableSeq seq{tokens, 0, blocks, /*samples=*/true};
    EXPECT_TRUE((*backend)->ExecuteStep(WholeTablePlanner().Plan({&seq, 1})).ok());
    return *(*backend)->LogitsToHost();
  };
  EXPECT_NE(logits("scaled", KvCacheDType::kFp8E4M3), logits("plain", KvCacheDType::kFp8E4M3));
  EXPECT_EQ(logits("scaled", KvCacheDType::kCompute), logits("plain", KvCacheDType::kCompute));
}

TEST(KvScalesTest, RefusesAScaleOfTheWrongSizeOrValueNamingIt) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig(2, DType::kF32);
  testing::WriteRandomCheckpoint(dir.path() / "plain", config, 9);
  const float three[3] = {1, 1, 1}, zero = 0.0f;
  CopyWithExtraTensors(dir.path() / "plain", dir.path() / "three",
                       {{"model.layers.0.self_attn.k_scale", DType::kF32, {3}, three, 12}});
  CopyWithExtraTensors(dir.path() / "plain", dir.path() / "zero",
                       {{"model.layers.1.self_attn.v_scale", DType::kF32, {1}, &zero, 4}});
  for (const char* name : {"three", "zero"}) {
    auto ckpt = Checkpoint::Load(dir.path() / name, LoadFormat::kSafetensors);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto scales = LoadKvScales(**ckpt);
    ASSERT_FALSE(scales.ok()) << name;
    EXPECT_NE(scales.status().message().find("self_attn."), std::string::npos) << scales.status();
    // The CPU backend refuses it too, but only when it stores FP8.
    auto fp8 = CpuBackend::Create(std::move(*ckpt), 4, 8, KvCacheDType::kFp8E4M3);
    EXPECT_FALSE(fp8.ok());
  }
}

TEST(KvCacheDTypeTest, ParsesAndRefusesNamingTheFlag) {
  EXPECT_EQ(*ParseKvCacheDType("auto", DType::kBF16), KvCacheDType::kCompute);
  EXPECT_EQ(*ParseKvCacheDType("bfloat16", DType::kBF16), KvCacheDType::kCompute);
  EXPECT_EQ(*ParseKvCacheDType("fp8_e4m3", DType::kF32), KvCacheDType::kFp8E4M3);
  const auto other = ParseKvCacheDType("float16", DType::kBF16);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("--kv_cache_dtype=float16"), std::string::npos);
  const auto cpu16 = ParseKvCacheDType("bfloat16", DType::kF32);
  EXPECT_FALSE(cpu16.ok());
  const auto bad = ParseKvCacheDType("int4", DType::kBF16);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--kv_cache_dtype=int4"), std::string::npos);
}

}  // namespace
}  // namespace gqa
