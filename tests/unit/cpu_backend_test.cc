// The CPU backend reads weight matrices in place from the mapped checkpoint; a file whose tensors
// are not aligned to their element size (a header length that is not a multiple of 8, which
// other writers than Hugging Face's may produce) falls back to fp32 copies with the same logits.
#include "backend/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>
#include <vector>

#include "common/test_checkpoint.h"
#include "model/checkpoint.h"

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
  auto backend = CpuBackend::Create(std::move(*ckpt), 4, 8, /*max_seqs=*/1, /*max_model_len=*/16);
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

}  // namespace
}  // namespace gqa
