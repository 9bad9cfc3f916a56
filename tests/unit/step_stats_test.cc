// The roofline terms of a step (backend/roofline.h) and the engine's description of a scheduled
// step (engine/step_stats.h): exact bytes and counts for hand-built batches.
#include "engine/step_stats.h"

#include <gtest/gtest.h>

#include "backend/roofline.h"
#include "engine/block_allocator.h"

namespace gqa {
namespace {

TEST(RooflineTest, WeightBytesOfLlama32_1BAreItsParameterCount) {
  ModelConfig c;  // Llama-3.2-1B: tied embeddings, so every parameter is read once per step
  c.num_layers = 16, c.hidden_size = 2048, c.num_heads = 32, c.num_kv_heads = 8, c.head_dim = 64;
  c.intermediate_size = 8192, c.vocab_size = 128256;
  EXPECT_EQ(WeightBytesPerStep(c, 1), 1'235'814'400u);
  EXPECT_EQ(WeightBytesPerStep(c, 2), 2 * 1'235'814'400u);
}

TEST(RooflineTest, KvBytesPerTokenScaleWithKvHeads) {
  KvCacheSpec spec{16, 100, 8, 128, 32, DType::kBF16};
  EXPECT_EQ(KvBytesPerToken(spec), 2u * 32 * 8 * 128 * 2);  // K and V, 32 layers, bf16
  spec.num_kv_heads = 1;
  EXPECT_EQ(KvBytesPerToken(spec), 2u * 32 * 1 * 128 * 2);
}

TEST(RooflineTest, AttendedTokensWithAndWithoutAWindow) {
  EXPECT_EQ(AttendedTokens(0, 5, 0), 5);       // a prompt: all of it
  EXPECT_EQ(AttendedTokens(99, 1, 0), 100);    // a decode step at context 100
  EXPECT_EQ(AttendedTokens(99, 1, 32), 32);    // ... with a window of 32: its window
  EXPECT_EQ(AttendedTokens(100, 10, 32), 41);  // positions 69..109: the union of 10 windows
  EXPECT_EQ(AttendedTokens(0, 10, 32), 10);    // a window longer than the context
}

std::unique_ptr<Sequence> Seq(uint64_t id, int prompt_len, int generated, int computed) {
  Request r;
  r.prompt.assign(prompt_len, 7);
  auto s = std::make_unique<Sequence>(std::move(r), id);
  s->tokens.insert(s->tokens.end(), generated, 9);
  s->num_computed = computed;
  return s;
}

TEST(StepStatsTest, DescribesAMixedStepExactly) {
  auto decoding = Seq(1, 10, 3, 12);    // 13 tokens, 12 computed: decodes token 13
  auto prefilling = Seq(2, 40, 0, 16);  // a second prompt chunk: positions 16..31
  auto resumed = Seq(3, 8, 2, 0);       // preempted, recomputing its 10 tokens
  resumed->preemptions = 1;
  SchedulerOutput out;
  out.chunks = {{decoding.get(), 1}, {prefilling.get(), 16}, {resumed.get(), 10}};
  out.num_tokens = 27;
  const StepCostModel cost{1000, 10, 0};
  const StepStats s = DescribeStep(out, cost);
  EXPECT_EQ(s.phase, StepPhase::kMixed);
  EXPECT_EQ(s.decoding, 1);
  EXPECT_EQ(s.prefilling, 2);
  EXPECT_EQ(s.resumed, 1);
  EXPECT_EQ(s.decode_tokens, 1);
  EXPECT_EQ(s.prefill_tokens, 26);
  EXPECT_EQ(s.weight_bytes, 1000u);
  EXPECT_EQ(s.kv_bytes, (13u + 32u + 10u) * 10u);  // each sequence's context after the step
  EXPECT_FALSE(s.device.has_value());
}

TEST(StepStatsTest, AWindowLimitsTheKvBytesAndAnEmptyStepReadsNothing) {
  auto decoding = Seq(1, 100, 1, 100);
  SchedulerOutput out;
  out.chunks = {{decoding.get(), 1}};
  const StepStats s = DescribeStep(out, StepCostModel{500, 4, 64});
  EXPECT_EQ(s.phase, StepPhase::kDecode);
  EXPECT_EQ(s.kv_bytes, 64u * 4u);
  const StepStats empty = DescribeStep(SchedulerOutput{}, StepCostModel{500, 4, 0});
  EXPECT_EQ(empty.weight_bytes, 0u);
  EXPECT_EQ(empty.read_bytes(), 0u);
}

}  // namespace
}  // namespace gqa
