#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include "engine/block_allocator.h"

namespace gqa {
namespace {

std::unique_ptr<Sequence> Seq(uint64_t id, int prompt_len) {
  Request r;
  r.prompt.assign(prompt_len, 7);
  r.stopping.max_new_tokens = 100;
  return std::make_unique<Sequence>(std::move(r), id);
}

// Commits the step and appends a token to every sequence whose chunk reached its end.
void FinishStep(Scheduler& s, const SchedulerOutput& out) {
  std::vector<Sequence*> sampled;
  for (const auto& c : out.chunks) {
    if (c.samples()) sampled.push_back(c.seq);
  }
  s.Commit(out);
  for (Sequence* seq : sampled) seq->tokens.push_back(9);
}

std::vector<uint64_t> Ids(const SchedulerOutput& out) {
  std::vector<uint64_t> ids;
  for (const auto& c : out.chunks) ids.push_back(c.seq->id);
  return ids;
}

TEST(BlockAllocatorTest, LowestIdsFirstThenLastFreedFirst) {
  BlockAllocator a(6);
  EXPECT_EQ(a.Allocate(2), (BlockList{0, 1}));
  EXPECT_EQ(a.Allocate(3), (BlockList{2, 3, 4}));
  EXPECT_EQ(a.Allocate(2), std::nullopt);  // all or nothing
  EXPECT_EQ(a.num_free(), 1);
  a.Free(BlockList{2, 3, 4});
  EXPECT_EQ(a.Allocate(2), (BlockList{2, 3}));
  EXPECT_EQ(a.Allocate(2), (BlockList{4, 5}));
  EXPECT_EQ(a.num_free(), 0);
}

TEST(SchedulerTest, AdmitsFirstComeFirstServedWithExactBlocks) {
  BlockAllocator alloc(8);
  Scheduler s({/*block_size=*/4, /*max_num_seqs=*/4, /*max_num_batched_tokens=*/16}, &alloc);
  s.Add(Seq(1, 6));
  s.Add(Seq(2, 3));
  auto out = s.Schedule();
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(out.num_tokens, 9);
  EXPECT_EQ(out.phase(), StepPhase::kPrefill);
  EXPECT_EQ(s.Find(1)->blocks, (BlockList{0, 1}));
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{2}));
  FinishStep(s, out);  // 1 has 7 tokens, 2 has 4

  out = s.Schedule();
  EXPECT_EQ(out.phase(), StepPhase::kDecode);
  EXPECT_EQ(out.num_tokens, 2);
  FinishStep(s, out);  // 1 has 8 tokens, 2 has 5: 2 now needs a second block
  out = s.Schedule();
  EXPECT_EQ(s.Find(1)->blocks, (BlockList{0, 1}));
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{2, 3}));
  FinishStep(s, out);
  out = s.Schedule();  // 1 at 9 tokens takes block 4
  EXPECT_EQ(s.Find(1)->blocks, (BlockList{0, 1, 4}));
}

TEST(SchedulerTest, ChunksLongPromptsUnderTheTokenBudget) {
  BlockAllocator alloc(16);
  Scheduler s({4, 4, /*max_num_batched_tokens=*/4}, &alloc);
  s.Add(Seq(1, 10));
  s.Add(Seq(2, 2));
  std::vector<int> chunks;
  std::vector<bool> samples;
  for (int step = 0; step < 3; ++step) {
    auto out = s.Schedule();
    ASSERT_EQ(out.chunks.size(), step < 2 ? 1u : 2u);  // seq 2 fills the last step's budget
    EXPECT_EQ(out.chunks[0].seq->id, 1u);
    chunks.push_back(out.chunks[0].num_tokens);
    samples.push_back(out.chunks[0].samples());
    FinishStep(s, out);
  }
  EXPECT_EQ(chunks, (std::vector<int>{4, 4, 2}));
  EXPECT_EQ(samples, (std::vector<bool>{false, false, true}));
  EXPECT_EQ(s.num_running(), 2);
  EXPECT_EQ(s.Find(2)->num_computed, 2);
}

TEST(SchedulerTest, RespectsMaxNumSeqs) {
  BlockAllocator alloc(16);
  Scheduler s({4, /*max_num_seqs=*/2, 64}, &alloc);
  for (uint64_t id = 1; id <= 3; ++id) s.Add(Seq(id, 2));
  auto out = s.Schedule();
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(s.num_waiting(), 1);
}

TEST(SchedulerTest, PreemptsMostRecentlyAdmittedAndRequeuesAtFront) {
  BlockAllocator alloc(4);
  Scheduler s({/*block_size=*/2, 4, 16}, &alloc);
  s.Add(Seq(1, 3));
  s.Add(Seq(2, 3));
  auto out = s.Schedule();
  EXPECT_EQ(s.Find(1)->blocks, (BlockList{0, 1}));
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{2, 3}));
  FinishStep(s, out);  // 4 tokens each, still 2 blocks each
  out = s.Schedule();
  EXPECT_TRUE(out.preempted.empty());
  FinishStep(s, out);  // 5 tokens each: both need a third block, none free

  out = s.Schedule();
  ASSERT_EQ(out.preempted.size(), 1u);
  EXPECT_EQ(out.preempted[0]->id, 2u);
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{1}));
  EXPECT_EQ(s.Find(1)->blocks, (BlockList{0, 1, 2}));
  Sequence* two = s.Find(2);
  EXPECT_EQ(two->num_computed, 0);
  EXPECT_TRUE(two->blocks.empty());
  EXPECT_EQ(two->preemptions, 1);
  EXPECT_EQ(two->num_tokens(), 5);  // keeps its generated tokens, recomputed later
  EXPECT_EQ(s.waiting().front()->id, 2u);
  FinishStep(s, out);

  // Seq 2 needs 3 blocks to recompute 5 tokens; 1 is free: it waits (no skipping ahead).
  s.Add(Seq(3, 1));
  out = s.Schedule();
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{1}));
  EXPECT_EQ(s.num_waiting(), 2);
  // Once seq 1 finishes, seq 2 is admitted before seq 3 and recomputes all its tokens.
  FinishStep(s, out);
  s.Remove(1);
  out = s.Schedule();
  EXPECT_EQ(Ids(out), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(out.chunks[0].num_tokens, 5);
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{0, 1, 2}));  // seq 1's blocks, just freed
  EXPECT_EQ(s.Find(3)->blocks, (BlockList{3}));
}

TEST(SchedulerTest, PreemptsItselfWhenItIsTheLastAdmitted) {
  BlockAllocator alloc(2);
  Scheduler s({2, 4, 16}, &alloc);
  s.Add(Seq(1, 4));
  auto out = s.Schedule();
  FinishStep(s, out);  // 5 tokens: needs a third block, the pool has two
  out = s.Schedule();
  EXPECT_TRUE(out.empty());
  ASSERT_EQ(out.preempted.size(), 1u);
  EXPECT_EQ(out.preempted[0]->id, 1u);
  EXPECT_EQ(alloc.num_free(), 2);
}

TEST(SchedulerTest, RemoveFreesBlocksFromRunningAndWaiting) {
  BlockAllocator alloc(4);
  Scheduler s({2, 1, 16}, &alloc);
  s.Add(Seq(1, 3));
  s.Add(Seq(2, 3));
  auto out = s.Schedule();
  EXPECT_EQ(alloc.num_free(), 2);
  EXPECT_NE(s.Remove(1), nullptr);
  EXPECT_EQ(alloc.num_free(), 4);
  EXPECT_NE(s.Remove(2), nullptr);
  EXPECT_EQ(s.Remove(2), nullptr);
  EXPECT_TRUE(s.idle());
}

}  // namespace
}  // namespace gqa
