// The step protocol (backend/step_plan.h): the scheduler's Update (exact tokens, stops, freed
// block ids) and the block-table deltas (applied in turn, they give the table a rebuild from
// the scheduler's state gives, through admissions, preemptions, finishes and shared prefixes).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include "backend/step_plan.h"
#include "engine/block_allocator.h"
#include "engine/scheduler.h"

namespace gqa {
namespace {

constexpr int kBlock = 4;

std::unique_ptr<Sequence> Seq(uint64_t id, std::vector<int32_t> prompt, int max_new = 100) {
  Request r;
  r.prompt = std::move(prompt);
  r.stopping.max_new_tokens = max_new;
  return std::make_unique<Sequence>(std::move(r), id);
}

// A StepOutput for `out` sampling `tokens` in plan order (one per sampling sequence).
StepOutput Sampled(const SchedulerOutput& out, std::vector<int32_t> tokens) {
  StepOutput step;
  step.sampled = std::move(tokens);
  step.sampled_logprobs.resize(step.sampled.size());
  step.prompt_logprobs.resize(out.plan.seqs.size());
  return step;
}

std::vector<uint64_t> FinishedIds(const UpdateResult& r) {
  std::vector<uint64_t> ids;
  for (const FinishedSeq& f : r.finished) ids.push_back(f.seq->id);
  return ids;
}

TEST(SchedulerUpdateTest, AppendsTheSampledTokensAndStopsOnEosStopTokenAndLength) {
  BlockAllocator alloc(16);
  Scheduler s({kBlock, 8, 64}, &alloc, StopRules{.eos_token_ids = {2}, .max_model_len = 64});
  s.Add(Seq(1, {10, 11, 12, 13, 14}));         // blocks 0 1; ends on eos
  s.Add(Seq(2, {20, 21, 22}, /*max_new=*/2));  // block 2; ends on length
  auto stop_token = Seq(3, {30, 31, 32, 33});  // block 3; ends on its stop token 77
  stop_token->request.stopping.stop_token_ids = {77};
  s.Add(std::move(stop_token));
  SchedulerOutput out = s.Schedule();
  ASSERT_EQ(out.plan.seqs.size(), 3u);
  for (const ScheduledSeq& p : out.plan.seqs) {
    EXPECT_TRUE(p.samples);
    EXPECT_FALSE(p.is_decode) << "a prompt's chunk is not a decode";
  }
  absl::StatusOr<UpdateResult> r = s.Update(out, Sampled(out, {40, 41, 42}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->finished.empty());
  ASSERT_EQ(r->continuing.size(), 3u);
  EXPECT_EQ(s.Find(1)->tokens, (std::vector<int32_t>{10, 11, 12, 13, 14, 40}));
  EXPECT_EQ(s.Find(2)->tokens, (std::vector<int32_t>{20, 21, 22, 41}));
  EXPECT_EQ(s.Find(3)->num_computed, 4);

  out = s.Schedule();
  for (const ScheduledSeq& p : out.plan.seqs) EXPECT_TRUE(p.is_decode);
  r = s.Update(out, Sampled(out, {2, 43, 77}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(FinishedIds(*r), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(r->finished[0].reason, FinishReason::kEos);
  EXPECT_EQ(r->finished[1].reason, FinishReason::kLength);
  EXPECT_EQ(r->finished[2].reason, FinishReason::kStopToken);
  EXPECT_EQ(r->finished[2].matched_stop, 77);
  EXPECT_EQ(r->finished[0].seq->tokens.back(), 2);
  EXPECT_EQ(r->finished[1].seq->tokens, (std::vector<int32_t>{20, 21, 22, 41, 43}));
  // Exactly the blocks each held, now free.
  EXPECT_EQ(r->finished[0].blocks, (BlockList{0, 1}));
  EXPECT_EQ(r->finished[1].blocks, (BlockList{2}));
  EXPECT_EQ(r->finished[2].blocks, (BlockList{3, 4}));  // its 5th token took block 4
  EXPECT_EQ(alloc.num_free(), 16);
  EXPECT_TRUE(s.idle());
  // The next plan removes their rows.
  s.Add(Seq(4, {1, 2, 3}));
  out = s.Schedule();
  EXPECT_EQ(out.plan.tables.removed, (std::vector<uint64_t>{1, 2, 3}));
}

TEST(SchedulerUpdateTest, APrefillChunkSamplesNothingAndAMismatchedOutputIsRefused) {
  BlockAllocator alloc(16);
  Scheduler s({kBlock, 8, /*max_num_batched_tokens=*/4}, &alloc);
  s.Add(Seq(1, {1, 2, 3, 4, 5, 6}));
  SchedulerOutput out = s.Schedule();
  ASSERT_FALSE(out.plan.seqs[0].samples);
  EXPECT_EQ(s.Update(out, Sampled(out, {9})).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.Find(1)->num_computed, 0) << "a refused output commits nothing";
  absl::StatusOr<UpdateResult> r = s.Update(out, Sampled(out, {}));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->continuing.empty());
  EXPECT_EQ(s.Find(1)->num_computed, 4);
  EXPECT_EQ(s.Find(1)->num_tokens(), 6);
}

TEST(SchedulerUpdateTest, APromptsOneTokenLastChunkIsNotADecode) {
  BlockAllocator alloc(16);
  Scheduler s({kBlock, 8, /*max_num_batched_tokens=*/4}, &alloc);
  s.Add(Seq(1, {1, 2, 3, 4, 5}));
  SchedulerOutput out = s.Schedule();
  ASSERT_TRUE(s.Update(out, Sampled(out, {})).ok());
  out = s.Schedule();
  ASSERT_EQ(out.plan.seqs[0].chunk.size(), 1u);
  EXPECT_TRUE(out.plan.seqs[0].samples);
  EXPECT_FALSE(out.plan.seqs[0].is_decode);
  EXPECT_EQ(out.phase(), StepPhase::kPrefill);
  ASSERT_TRUE(s.Update(out, Sampled(out, {8})).ok());
  out = s.Schedule();
  EXPECT_TRUE(out.plan.seqs[0].is_decode);
  EXPECT_EQ(out.phase(), StepPhase::kDecode);
}

// The table the deltas built holds, for each running sequence, exactly its blocks, and nothing
// for anyone else: what a rebuild from the scheduler's state holds.
void ExpectTablesMatchRebuild(const BlockTables& tables, const Scheduler& s, int step) {
  BlockTables rebuilt(tables.max_seqs(), tables.max_blocks_per_seq());
  BlockTableDelta all;
  for (const auto& q : s.running()) all.rows.push_back({q->id, 0, q->blocks});
  ASSERT_TRUE(rebuilt.Apply(all).ok());
  ASSERT_EQ(tables.num_live(), rebuilt.num_live()) << "step " << step;
  for (const auto& q : s.running()) {
    const int slot = tables.SlotOf(q->id);
    ASSERT_GE(slot, 0) << "sequence " << q->id << " step " << step;
    const auto got = tables.Row(slot);
    const auto want = rebuilt.Row(rebuilt.SlotOf(q->id));
    ASSERT_EQ(std::vector<int32_t>(got.begin(), got.end()),
              std::vector<int32_t>(want.begin(), want.end()))
        << "sequence " << q->id << " step " << step;
  }
  for (const auto& q : s.waiting()) ASSERT_EQ(tables.SlotOf(q->id), -1) << "step " << step;
  const size_t cells = size_t(tables.max_seqs()) * tables.max_blocks_per_seq();
  const auto used = [&](const BlockTables& t) {
    return std::count_if(t.data(), t.data() + cells, [](int32_t b) { return b >= 0; });
  };
  ASSERT_EQ(used(tables), used(rebuilt)) << "step " << step;
}

TEST(BlockTableDeltasTest, ShuffledAdmissionsPreemptionsFinishesAndSharedPrefixesMatchARebuild) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    std::mt19937 rng(seed);
    BlockAllocator alloc(14, {.enabled = true, .block_size = kBlock, .salt = 5});
    Scheduler s({kBlock, 6, /*max_num_batched_tokens=*/12}, &alloc);
    BlockTables tables(6, 32);
    const std::vector<int32_t> system = {7, 7, 8, 8, 9, 9, 1, 1};  // two shareable blocks
    uint64_t next_id = 1;
    int preempted = 0, shared = 0, removed = 0;
    for (int step = 0; step < 1200; ++step) {
      if (s.num_waiting() < 4 && rng() % 2 == 0) {
        std::vector<int32_t> prompt = system;
        if (rng() % 3 == 0) prompt.resize(rng() % 4);  // sometimes no shared prefix
        const int suffix = 1 + rng() % 9;
        for (int i = 0; i < suffix; ++i) prompt.push_back(static_cast<int32_t>(rng() % 5));
        s.Add(Seq(next_id++, prompt, 1 + rng() % 20));
      }
      if (!s.idle() && rng() % 13 == 0) {  // cancel one, running or waiting
        std::vector<uint64_t> ids;
        for (const auto& q : s.running()) ids.push_back(q->id);
        for (const auto& q : s.waiting()) ids.push_back(q->id);
        s.Remove(ids[rng() % ids.size()]);
      }
      SchedulerOutput out = s.Schedule();
      preempted += static_cast<int>(out.preempted.size());
      shared += out.prefix_cache_hit_tokens > 0;
      removed += static_cast<int>(out.plan.tables.removed.size());
      if (out.empty()) continue;  // the deltas wait for a step the backend runs
      ASSERT_TRUE(tables.Apply(out.plan.tables).ok()) << "step " << step;
      ExpectTablesMatchRebuild(tables, s, step);
      std::vector<int32_t> tokens;
      for (const ScheduledSeq& p : out.plan.seqs) {
        if (p.samples) tokens.push_back(static_cast<int32_t>(rng() % 5));
      }
      ASSERT_TRUE(s.Update(out, Sampled(out, tokens)).ok());
    }
    EXPECT_GT(preempted, 10) << "the pool was meant to be too small";
    EXPECT_GT(shared, 10) << "prefixes were meant to be shared";
    EXPECT_GT(removed, 50);
  }
}

TEST(BlockTableDeltasTest, APreemptedSequenceLeavesAndComesBackAsANewRow) {
  BlockAllocator alloc(3);
  Scheduler s({kBlock, 4, 64}, &alloc);
  BlockTables tables(4, 8);
  s.Add(Seq(1, {1, 2, 3, 4, 5}));  // blocks 0 1
  s.Add(Seq(2, {6, 7, 8}));        // block 2
  SchedulerOutput out = s.Schedule();
  ASSERT_EQ(out.plan.tables.rows.size(), 2u);
  EXPECT_EQ(out.plan.tables.rows[0].blocks, (BlockList{0, 1}));
  EXPECT_EQ(out.plan.tables.rows[1].blocks, (BlockList{2}));
  ASSERT_TRUE(tables.Apply(out.plan.tables).ok());
  ASSERT_TRUE(s.Update(out, Sampled(out, {9, 9})).ok());
  // 2 (4 tokens) fits its block; 1 (6 tokens) fits too; next step 2 needs a second block.
  out = s.Schedule();
  EXPECT_TRUE(out.plan.tables.rows.empty());
  ASSERT_TRUE(s.Update(out, Sampled(out, {9, 9})).ok());
  out = s.Schedule();  // 2 at 5 tokens needs a block: none free, it preempts itself
  ASSERT_EQ(out.preempted.size(), 1u);
  EXPECT_EQ(out.preempted[0]->id, 2u);
  EXPECT_EQ(out.plan.tables.removed, (std::vector<uint64_t>{2}));
  ASSERT_TRUE(tables.Apply(out.plan.tables).ok());
  EXPECT_EQ(tables.SlotOf(2), -1);
  ASSERT_TRUE(s.Update(out, Sampled(out, {3})).ok());
  s.Remove(1);  // cancelled: its blocks free, 2 comes back
  out = s.Schedule();
  EXPECT_EQ(out.plan.tables.removed, (std::vector<uint64_t>{1}));
  ASSERT_EQ(out.plan.tables.rows.size(), 1u);
  EXPECT_EQ(out.plan.tables.rows[0].seq_id, 2u);
  EXPECT_EQ(out.plan.tables.rows[0].first_block, 0);
  EXPECT_EQ(out.plan.tables.rows[0].blocks, s.Find(2)->blocks);
  ASSERT_TRUE(tables.Apply(out.plan.tables).ok());
  EXPECT_EQ(tables.SlotOf(2), 0) << "the lowest free slot";
  EXPECT_EQ(tables.num_live(), 1);
}

TEST(BlockTablesTest, RefusesAppendsToUnknownRowsDoubleAdmissionsAndOverflow) {
  BlockTables tables(1, 2);
  EXPECT_FALSE(tables.Apply({.removed = {}, .rows = {{7, 1, {3}}}}).ok());
  ASSERT_TRUE(tables.Apply({.removed = {}, .rows = {{7, 0, {3}}}}).ok());
  EXPECT_FALSE(tables.Apply({.removed = {}, .rows = {{7, 0, {4}}}}).ok());
  EXPECT_FALSE(tables.Apply({.removed = {}, .rows = {{8, 0, {4}}}}).ok()) << "one slot only";
  EXPECT_FALSE(tables.Apply({.removed = {}, .rows = {{7, 1, {4, 5}}}}).ok()) << "past the width";
  ASSERT_TRUE(tables.Apply({.removed = {7}, .rows = {{8, 0, {4, 5}}}}).ok());
  EXPECT_EQ(tables.SlotOf(8), 0);
  EXPECT_EQ(std::vector<int32_t>(tables.Row(0).begin(), tables.Row(0).end()),
            (std::vector<int32_t>{4, 5}));
}

}  // namespace
}  // namespace gqa
