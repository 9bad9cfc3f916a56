// Async scheduling (issue 16, item 2): the scheduler's placeholder rows and deferred finishes,
// cancellations and preemptions; the engine's overlapped loop against a fake backend whose steps
// run between SubmitStep and CollectStep (outputs token for token those of the synchronous loop;
// no block freed under a step in flight), and with the CPU backend (bitwise the same outputs).
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "backend/cpu/cpu_backend.h"
#include "common/fake_backend.h"
#include "common/test_checkpoint.h"
#include "engine/engine.h"
#include "engine/engine_observer.h"
#include "engine/scheduler.h"
#include "metrics/engine_metrics.h"
#include "tokenizer/tokenizer.h"

namespace gqa {
namespace {

using testing::AsyncFakeBackend;
using testing::EventCollector;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------------
// The scheduler alone.

constexpr int kBlock = 4;

std::unique_ptr<Sequence> Seq(uint64_t id, int prompt_len, int max_new = 100) {
  Request r;
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(10 + i);
  r.stopping.max_new_tokens = max_new;
  r.stopping.stop_token_ids = {99};
  return std::make_unique<Sequence>(std::move(r), id);
}

StepOutput Sampled(std::vector<int32_t> tokens) {
  StepOutput step;
  step.sampled = std::move(tokens);
  return step;
}

SchedulerConfig AsyncConfig(int max_num_seqs = 8, int max_tokens = 64) {
  SchedulerConfig c{kBlock, max_num_seqs, max_tokens, /*enable_prefix_caching=*/false};
  c.async_scheduling = true;
  return c;
}

TEST(AsyncSchedulerTest, TheNextStepDecodesPlaceholdersThatReadTheStepInFlight) {
  BlockAllocator alloc(16);
  Scheduler s(AsyncConfig(), &alloc);
  s.Add(Seq(1, 5));
  s.Add(Seq(2, 3));
  const SchedulerOutput one = s.Schedule();  // both prompts, both sample
  ASSERT_EQ(one.plan.seqs.size(), 2u);
  EXPECT_EQ(one.step, 1u);
  for (const ScheduledSeq& q : one.plan.seqs) {
    EXPECT_EQ(q.placeholder_sample_row, -1);
    EXPECT_TRUE(q.samples);
    EXPECT_EQ(q.sampling.step, 0u);
  }
  EXPECT_EQ(s.Find(1)->tokens.back(), kPlaceholderToken);
  EXPECT_EQ(s.Find(1)->num_placeholders, 1);

  // Step 2 before step 1's tokens are known: each sequence decodes its placeholder, read from
  // its own sampling row of step 1.
  const SchedulerOutput two = s.Schedule();
  ASSERT_EQ(two.plan.seqs.size(), 2u);
  EXPECT_EQ(two.step, 2u);
  const ScheduledSeq& a = two.plan.seqs[0];
  const ScheduledSeq& b = two.plan.seqs[1];
  EXPECT_EQ(a.seq_id, 1u);
  EXPECT_EQ(a.start_pos, 5);
  EXPECT_EQ(a.chunk.size(), 1u);
  EXPECT_EQ(a.chunk[0], kPlaceholderToken);
  EXPECT_EQ(a.placeholder_sample_row, 0);
  EXPECT_TRUE(a.is_decode);
  EXPECT_EQ(a.sampling.step, 1u) << "the second generated token";
  EXPECT_EQ(b.start_pos, 3);
  EXPECT_EQ(b.placeholder_sample_row, 1);
  EXPECT_EQ(b.sampling.step, 1u);
  EXPECT_EQ(s.Find(1)->blocks, (BlockList{0, 1}));
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{2})) << "position 3 is in its first block";

  absl::StatusOr<UpdateResult> r = s.Update(one, Sampled({40, 41}));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->continuing.size(), 2u);
  EXPECT_EQ(s.Find(1)->last_known_token(), 40);
  EXPECT_EQ(s.Find(1)->tokens, (std::vector<int32_t>{10, 11, 12, 13, 14, 40, kPlaceholderToken}));
  EXPECT_EQ(s.Find(1)->num_computed, 5);
  EXPECT_EQ(s.Find(1)->num_in_flight, 1);
  EXPECT_EQ(s.Find(2)->last_known_token(), 41);

  // Step 3 reads step 2's rows; step 1's token is a plain token now.
  const SchedulerOutput three = s.Schedule();
  ASSERT_EQ(three.plan.seqs.size(), 2u);
  EXPECT_EQ(three.plan.seqs[0].start_pos, 6);
  EXPECT_EQ(three.plan.seqs[0].placeholder_sample_row, 0);
  r = s.Update(two, Sampled({42, 43}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(s.Find(2)->tokens, (std::vector<int32_t>{10, 11, 12, 41, 43, kPlaceholderToken}));
}

TEST(AsyncSchedulerTest, AStopInFlightFreesNothingUntilTheStepBehindItIsUpdated) {
  BlockAllocator alloc(16);
  Scheduler s(AsyncConfig(), &alloc);
  s.Add(Seq(1, 4));
  s.Add(Seq(2, 4));
  const SchedulerOutput one = s.Schedule();
  const SchedulerOutput two = s.Schedule();  // both decode their placeholders: a block each more
  const int free_before = alloc.num_free();
  EXPECT_EQ(free_before, 12);
  // Sequence 1 stops in step 1, but step 2 computes it too: it stays, blocks and all.
  absl::StatusOr<UpdateResult> r = s.Update(one, Sampled({99, 7}));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->finished.empty());
  ASSERT_EQ(r->continuing.size(), 1u);
  EXPECT_EQ(r->continuing[0]->id, 2u);
  EXPECT_EQ(alloc.num_free(), free_before);
  EXPECT_EQ(s.num_running(), 1);
  EXPECT_EQ(s.num_deferred(), 1);
  EXPECT_FALSE(s.idle());

  const SchedulerOutput three = s.Schedule();  // sequence 1 is not scheduled again
  ASSERT_EQ(three.plan.seqs.size(), 1u);
  EXPECT_EQ(three.plan.seqs[0].seq_id, 2u);
  EXPECT_EQ(alloc.num_free(), free_before);

  // Step 2's token for sequence 1 is dropped; its blocks are freed with its final result.
  r = s.Update(two, Sampled({55, 8}));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->finished.size(), 1u);
  const FinishedSeq& f = r->finished[0];
  EXPECT_EQ(f.seq->id, 1u);
  EXPECT_EQ(f.reason, FinishReason::kStopToken);
  EXPECT_TRUE(f.sampled_last);
  EXPECT_EQ(f.seq->tokens, (std::vector<int32_t>{10, 11, 12, 13, 99})) << "nothing after the stop";
  EXPECT_EQ(f.seq->num_generated(), 1);
  EXPECT_EQ(f.blocks, (BlockList{0, 2}));
  EXPECT_EQ(alloc.num_free(), free_before + 2);
  // The next plan removes its row.
  r = s.Update(three, Sampled({9}));
  ASSERT_TRUE(r.ok());
  const SchedulerOutput four = s.Schedule();
  EXPECT_EQ(four.plan.tables.removed, (std::vector<uint64_t>{1}));
}

TEST(AsyncSchedulerTest, MaxNewTokensIsNeverScheduledPast) {
  BlockAllocator alloc(16);
  Scheduler s(AsyncConfig(), &alloc);
  s.Add(Seq(1, 4, /*max_new=*/2));
  s.Add(Seq(2, 4));
  const SchedulerOutput one = s.Schedule();
  const SchedulerOutput two = s.Schedule();  // sequence 1's second (last) token is in flight
  ASSERT_EQ(two.plan.seqs.size(), 2u);
  ASSERT_TRUE(s.Update(one, Sampled({5, 6})).ok());
  const SchedulerOutput three = s.Schedule();
  ASSERT_EQ(three.plan.seqs.size(), 1u) << "nothing of sequence 1 is left to compute";
  EXPECT_EQ(three.plan.seqs[0].seq_id, 2u);
  absl::StatusOr<UpdateResult> r = s.Update(two, Sampled({7, 8}));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->finished.size(), 1u) << "not in step 3: it finishes with step 2";
  EXPECT_EQ(r->finished[0].reason, FinishReason::kLength);
  EXPECT_EQ(r->finished[0].seq->tokens, (std::vector<int32_t>{10, 11, 12, 13, 5, 7}));
}

TEST(AsyncSchedulerTest, ACancellationInFlightWaitsForItsStep) {
  BlockAllocator alloc(16);
  Scheduler s(AsyncConfig(), &alloc);
  s.Add(Seq(1, 4));
  s.Add(Seq(2, 4));
  const SchedulerOutput one = s.Schedule();
  const int free_before = alloc.num_free();
  EXPECT_EQ(s.Cancel(1), nullptr) << "in flight: not removed yet";
  EXPECT_EQ(alloc.num_free(), free_before);
  EXPECT_EQ(s.Cancel(1), nullptr) << "a second cancellation is ignored";
  const SchedulerOutput two = s.Schedule();  // 2's placeholder takes a second block
  ASSERT_EQ(two.plan.seqs.size(), 1u);
  EXPECT_EQ(alloc.num_free(), free_before - 1);
  absl::StatusOr<UpdateResult> r = s.Update(one, Sampled({5, 6}));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->finished.size(), 1u);
  EXPECT_EQ(r->finished[0].reason, FinishReason::kCancelled);
  EXPECT_FALSE(r->finished[0].sampled_last);
  EXPECT_EQ(r->finished[0].seq->tokens, (std::vector<int32_t>{10, 11, 12, 13}));
  EXPECT_EQ(alloc.num_free(), free_before) << "sequence 1's block is back";
  ASSERT_EQ(r->continuing.size(), 1u);
  // Not in flight: removed at once.
  s.Add(Seq(3, 4));
  EXPECT_NE(s.Cancel(3), nullptr);
}

// The backend's block tables hold max_num_seqs rows; a leaving sequence keeps its row until the
// plan after its step's update removes it, so nothing is admitted into that row before.
TEST(AsyncSchedulerTest, ALeavingSequenceHoldsItsTableRowUntilItHasLeft) {
  BlockAllocator alloc(16);
  Scheduler s(AsyncConfig(/*max_num_seqs=*/1), &alloc);
  BlockTables tables(/*max_seqs=*/1, /*max_blocks_per_seq=*/8);
  s.Add(Seq(1, 5));
  s.Add(Seq(2, 5));
  const SchedulerOutput one = s.Schedule();
  ASSERT_TRUE(tables.Apply(one.plan.tables).ok());
  const SchedulerOutput two = s.Schedule();
  ASSERT_TRUE(tables.Apply(two.plan.tables).ok());
  EXPECT_EQ(s.Cancel(1), nullptr);
  EXPECT_TRUE(s.Schedule().empty()) << "sequence 1 still holds the only row";
  ASSERT_TRUE(s.Update(one, Sampled({5})).ok());
  EXPECT_TRUE(s.Schedule().empty()) << "step 2 still computes sequence 1";
  absl::StatusOr<UpdateResult> r = s.Update(two, Sampled({6}));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->finished.size(), 1u);
  EXPECT_EQ(r->finished[0].reason, FinishReason::kCancelled);
  const SchedulerOutput three = s.Schedule();
  ASSERT_EQ(three.plan.seqs.size(), 1u);
  EXPECT_EQ(three.plan.seqs[0].seq_id, 2u);
  EXPECT_EQ(three.plan.tables.removed, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(tables.Apply(three.plan.tables).ok()) << "the row is free once 1 has left";
}

TEST(AsyncSchedulerTest, APreemptionInFlightTakesEffectOnceItsStepIsUpdated) {
  BlockAllocator alloc(3);  // a block each for two 4-token prompts, one to spare
  Scheduler s(AsyncConfig(), &alloc);
  s.Add(Seq(1, 4));
  s.Add(Seq(2, 4));
  const SchedulerOutput one = s.Schedule();
  EXPECT_EQ(alloc.num_free(), 1);
  // Both need a second block for their placeholder: 1 takes the last; 2, in flight, must go.
  const SchedulerOutput two = s.Schedule();
  ASSERT_EQ(two.plan.seqs.size(), 1u);
  EXPECT_EQ(two.plan.seqs[0].seq_id, 1u);
  ASSERT_EQ(two.preempted.size(), 1u);
  EXPECT_EQ(two.preempted[0]->id, 2u);
  EXPECT_EQ(alloc.num_free(), 0) << "its blocks stay while step 1 writes them";
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{1}));
  absl::StatusOr<UpdateResult> r = s.Update(one, Sampled({5, 6}));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->continuing.size(), 2u) << "step 1's token of the preempted sequence is kept";
  EXPECT_EQ(alloc.num_free(), 1);
  ASSERT_EQ(s.num_waiting(), 1);
  const Sequence& back = *s.waiting().front();
  EXPECT_EQ(back.id, 2u);
  EXPECT_EQ(back.tokens, (std::vector<int32_t>{10, 11, 12, 13, 6}));
  EXPECT_EQ(back.num_computed, 0);
  EXPECT_EQ(back.num_in_flight, 0);
  EXPECT_EQ(back.preemptions, 1);
  const SchedulerOutput three = s.Schedule();  // its row leaves the backend's tables
  EXPECT_EQ(three.plan.tables.removed, (std::vector<uint64_t>{2}));
}

// ---------------------------------------------------------------------------------------------
// The engine, against the asynchronous fake backend.

// Letters a..z, ids 0..25: the fake's tokens (2..25) decode to c..z.
std::unique_ptr<Tokenizer> LetterTokenizer() {
  std::string vocab;
  for (int i = 0; i < 26; ++i) {
    absl::StrAppend(&vocab, i ? ", " : "", "\"", std::string(1, char('a' + i)), "\": ", i);
  }
  auto tokenizer = Tokenizer::FromJson(
      absl::StrCat(R"({"model": {"type": "BPE", "vocab": {)", vocab, R"(}, "merges": []}})"),
      "letters");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

struct Spec {
  std::string id;
  std::vector<int32_t> prompt;
  int max_new = 16;
  uint64_t seed = 0;
  std::vector<int32_t> stop_tokens;
  std::vector<std::string> stop_strings;
};

// A mix: prompts of 1 to 37 tokens (chunked under a 16-token budget), 1 to 29 new tokens, stop
// tokens, stop strings, and groups of three samples of one prompt (n = 3: seeds apart, and two
// with the same seed).
std::vector<Spec> Mix() {
  std::vector<Spec> specs;
  std::mt19937 rng(7);
  for (int i = 0; i < 18; ++i) {
    Spec s;
    s.id = absl::StrCat("r", i);
    const int len = 1 + (i * 11) % 37;
    for (int t = 0; t < len; ++t) s.prompt.push_back(2 + int(rng() % 24));
    s.max_new = 1 + (i * 7) % 29;
    s.seed = i;
    if (i % 3 == 1) s.stop_tokens = {int32_t(2 + i % 24), 9};
    if (i % 4 == 2) s.stop_strings = {"q", "xy"};
    specs.push_back(s);
  }
  for (int g = 0; g < 3; ++g) {
    for (int k = 0; k < 3; ++k) {
      Spec s;
      s.id = absl::StrCat("n", g, "_", k);
      for (int t = 0; t < 9 + g * 8; ++t) s.prompt.push_back(3 + (t * 5 + g) % 20);
      s.max_new = 24;
      s.seed = 100 + g * 10 + (k == 2 ? 0 : k);
      if (g == 1) s.stop_strings = {"k"};
      specs.push_back(s);
    }
  }
  return specs;
}

Request MakeRequest(const Spec& s, EventCollector& c) {
  Request r;
  r.id = s.id;
  r.prompt = s.prompt;
  r.stopping.max_new_tokens = s.max_new;
  r.stopping.stop_token_ids = s.stop_tokens;
  r.stopping.stop_strings = s.stop_strings;
  r.sampling.seed = s.seed;
  r.sampling.temperature = 0.7f;
  r.sink = c.SinkFor(s.id);
  return r;
}

struct EngineRun {
  std::map<std::string, EventCollector::Result> results;
  int max_in_flight = 0;
  int free_blocks_after = -1, total_blocks = 0;
};

// Runs `specs` on an engine over the asynchronous fake (async or not) and returns every
// request's events; `cancel` names requests cancelled a few steps after they are submitted.
EngineRun RunEngine(bool async, int num_blocks, const std::vector<Spec>& specs,
                    const std::vector<std::string>& cancel = {}) {
  auto backend = std::make_unique<AsyncFakeBackend>(num_blocks, 50us, 300us);
  AsyncFakeBackend* fake = backend.get();
  std::unique_ptr<Tokenizer> tokenizer = LetterTokenizer();
  EngineConfig config;
  config.scheduler = {kBlock, /*max_num_seqs=*/8, /*max_num_batched_tokens=*/16};
  config.scheduler.async_scheduling = async;
  config.limits = {26, 256};
  config.tokenizer = tokenizer.get();
  config.step_profile_interval = 0;
  Engine engine(config, std::move(backend), nullptr);
  fake->Watch(&engine.allocator());
  engine.Start();
  EventCollector c;
  std::map<std::string, uint64_t> ids;
  for (const Spec& s : specs) {
    absl::StatusOr<uint64_t> id = engine.Submit(MakeRequest(s, c));
    EXPECT_TRUE(id.ok()) << id.status();
    if (id.ok()) ids[s.id] = *id;
  }
  for (size_t i = 0; i < cancel.size(); ++i) {
    std::this_thread::sleep_for(1ms + 700us * i);  // a few steps of 0.35 ms in
    engine.Cancel(ids[cancel[i]]);
  }
  c.WaitFor(static_cast<int>(specs.size()));
  engine.Drain(std::chrono::milliseconds(1000));  // the engine thread is gone: read its state
  EngineRun run;
  run.results = c.results();
  run.max_in_flight = fake->max_in_flight();
  run.free_blocks_after = engine.allocator().num_free();
  run.total_blocks = engine.allocator().num_total();
  return run;
}

TEST(AsyncEngineTest, OutputsAreTheSameTokenForTokenWithAndWithoutAsync) {
  const std::vector<Spec> specs = Mix();
  const EngineRun sync = RunEngine(false, 512, specs);
  const EngineRun async = RunEngine(true, 512, specs);
  EXPECT_EQ(sync.max_in_flight, 1);
  EXPECT_EQ(async.max_in_flight, 2) << "the next step was never submitted before a collect";
  int stopped = 0, stopped_by_string = 0;
  for (const Spec& s : specs) {
    const EventCollector::Result& a = async.results.at(s.id);
    const EventCollector::Result& b = sync.results.at(s.id);
    EXPECT_FALSE(a.error) << s.id << ": " << *a.error;
    EXPECT_EQ(a.tokens, b.tokens) << s.id;
    EXPECT_EQ(a.finish, b.finish) << s.id;
    EXPECT_LE(a.tokens.size(), size_t(s.max_new)) << s.id;
    stopped += a.finish != FinishReason::kLength;
    stopped_by_string += a.finish == FinishReason::kStopString;
  }
  // The mix is meant to stop some sequences early, by token and by string.
  EXPECT_GT(stopped, 3);
  EXPECT_GT(stopped_by_string, 0);
  EXPECT_NE(sync.results.at("n0_0").tokens, sync.results.at("n0_1").tokens) << "other seeds";
  EXPECT_EQ(sync.results.at("n0_0").tokens, sync.results.at("n0_2").tokens) << "same seed";
  EXPECT_EQ(async.free_blocks_after, async.total_blocks);
}

TEST(AsyncEngineTest, CancelsAndPreemptsWhileAStepIsInFlight) {
  std::vector<Spec> specs;
  for (int i = 0; i < 10; ++i) {
    Spec s;
    s.id = absl::StrCat("p", i);
    for (int t = 0; t < 6 + i; ++t) s.prompt.push_back(2 + (t * 3 + i) % 24);
    s.max_new = 20;
    s.seed = i;
    specs.push_back(s);
  }
  const std::vector<std::string> cancelled = {"p1", "p4", "p8"};
  // 24 blocks (96 tokens) for ten sequences of up to 35 tokens: preemptions, while the
  // fake checks at every submit and collect that no block of a step in flight was freed.
  const EngineRun reference = RunEngine(false, 512, specs);
  const EngineRun run = RunEngine(true, 24, specs, cancelled);
  EXPECT_EQ(run.max_in_flight, 2);
  int preemptions = 0, cancels = 0;
  for (const Spec& s : specs) {
    const EventCollector::Result& r = run.results.at(s.id);
    ASSERT_FALSE(r.error) << s.id << ": " << *r.error;
    ASSERT_TRUE(r.finish) << s.id;
    preemptions += r.preemptions;
    const auto expected = reference.results.at(s.id).tokens;
    if (std::find(cancelled.begin(), cancelled.end(), s.id) != cancelled.end() &&
        *r.finish == FinishReason::kCancelled) {
      ++cancels;
      // What it got before the cancellation is what it would have got.
      ASSERT_LE(r.tokens.size(), expected.size()) << s.id;
      EXPECT_TRUE(std::equal(r.tokens.begin(), r.tokens.end(), expected.begin())) << s.id;
      continue;
    }
    EXPECT_EQ(*r.finish, FinishReason::kLength) << s.id;
    EXPECT_EQ(r.tokens, expected) << s.id;
  }
  EXPECT_GT(preemptions, 0) << "the pool was meant to be too small";
  EXPECT_GT(cancels, 0) << "the cancellations were meant to land mid-request";
  EXPECT_EQ(run.free_blocks_after, run.total_blocks) << "every block came back";
}

// A client that goes away mid-stream while the next request waits (the HTTP front end's
// disconnect test, one sequence at a time): each request ends cancelled, and the next one gets
// the backend's only block-table row once the cancelled one has left it.
TEST(AsyncEngineTest, ACancelledRequestEndsCancelledAndTheNextOneRuns) {
  auto backend = std::make_unique<AsyncFakeBackend>(64, 20us, 200us, /*max_seqs=*/1);
  AsyncFakeBackend* fake = backend.get();
  EngineConfig config;
  config.scheduler = {kBlock, /*max_num_seqs=*/1, 64};
  config.scheduler.async_scheduling = true;
  config.limits = {26, 256};
  Engine engine(config, std::move(backend), nullptr);
  fake->Watch(&engine.allocator());
  engine.Start();
  EventCollector c;
  auto submit = [&](const std::string& id, int max_new) {
    Request r;
    r.id = id;
    r.prompt = {3, 4, 5};
    r.stopping.max_new_tokens = max_new;
    r.sink = c.SinkFor(id);
    absl::StatusOr<uint64_t> engine_id = engine.Submit(std::move(r));
    EXPECT_TRUE(engine_id.ok()) << engine_id.status();
    return engine_id.value_or(0);
  };
  for (int i = 0; i < 4; ++i) {
    const uint64_t cancelled = submit(absl::StrCat("cancelled", i), 200);
    submit(absl::StrCat("next", i), 6);
    std::this_thread::sleep_for(2ms + 300us * i);
    engine.Cancel(cancelled);
  }
  c.WaitFor(8);
  for (const auto& [id, result] : c.results()) {
    EXPECT_FALSE(result.error) << id << ": " << *result.error;
    if (id.starts_with("cancelled")) {
      EXPECT_EQ(result.finish, FinishReason::kCancelled) << id;
      EXPECT_LT(result.tokens.size(), 200u) << id;
    } else {
      EXPECT_EQ(result.finish, FinishReason::kLength) << id;
      EXPECT_EQ(result.tokens.size(), 6u) << id;
    }
  }
}

// Draining while a step is in flight (the stop's cancellations wait for it; a pool small enough
// to preempt): the engine collects that step before it stops, so every request still gets its
// final event and every block is back.
TEST(AsyncEngineTest, DrainEndsEveryRequestWithAStepInFlight) {
  for (int round = 0; round < 5; ++round) {
    auto backend = std::make_unique<AsyncFakeBackend>(16, 20us, 300us);
    AsyncFakeBackend* fake = backend.get();
    EngineConfig config;
    config.scheduler = {kBlock, 8, 64};
    config.scheduler.async_scheduling = true;
    config.limits = {26, 256};
    Engine engine(config, std::move(backend), nullptr);
    fake->Watch(&engine.allocator());
    engine.Start();
    EventCollector c;
    for (int i = 0; i < 8; ++i) {
      Request r;
      r.id = absl::StrCat("r", i);
      r.prompt = {3, 4, 5, int32_t(6 + i)};
      r.stopping.max_new_tokens = 40;
      r.sink = c.SinkFor(r.id);
      ASSERT_TRUE(engine.Submit(std::move(r)).ok());
    }
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + 900 * round));
    engine.Drain(std::chrono::milliseconds(0));
    const auto results = c.results();
    for (int i = 0; i < 8; ++i) {
      const std::string id = absl::StrCat("r", i);
      ASSERT_TRUE(results.count(id) && results.at(id).finish) << id << " got no final event";
      EXPECT_FALSE(results.at(id).error) << id << ": " << *results.at(id).error;
    }
    EXPECT_EQ(engine.allocator().num_free(), engine.allocator().num_total());
  }
}

// Numbers its steps and, when profiled, reports the step's number as its device time.
class NumberedStepsBackend final : public testing::FakeBackendBase {
 public:
  void ProfileNextStep() override { profile_next_ = true; }
  std::optional<StepTiming> LastStepTiming() const override {
    if (!profiled_) return std::nullopt;
    return StepTiming{double(step_), 0.0};
  }

 private:
  absl::StatusOr<StepOutput> Run(const StepPlan& plan) override {
    ++step_;
    profiled_ = std::exchange(profile_next_, false);
    return FixedTokens(plan, 5);
  }
  bool profile_next_ = false, profiled_ = false;
  int step_ = 0;
};

class StepRecorder final : public EngineObserver {
 public:
  void OnPreemptions(size_t) override {}
  void OnRequestScheduled(double, int) override {}
  void OnTokensEmitted(size_t, std::optional<double>, std::optional<double>) override {}
  void OnRequestFinished(FinishReason, double) override {}
  void OnStep(const StepStats& step) override { steps.push_back(step); }
  void OnOccupancy(const EngineOccupancy&) override {}
  std::vector<StepStats> steps;  // engine thread; read once it stopped
};

// A step's statistics are its own: the device time of step k is step k's, though the backend
// has computed step k + 1 (the default SubmitStep) by the time step k is collected.
TEST(AsyncEngineTest, EachStepReportsItsOwnDeviceTime) {
  StepRecorder recorder;
  EngineConfig config;
  config.scheduler = {kBlock, 8, 64};
  config.scheduler.async_scheduling = true;
  config.limits = {26, 256};
  config.step_profile_interval = 1;
  Engine engine(config, std::make_unique<NumberedStepsBackend>(), &recorder);
  engine.Start();
  EventCollector c;
  for (int i = 0; i < 3; ++i) {
    Request r;
    r.id = absl::StrCat("r", i);
    r.prompt = {3, 4, 5};
    r.stopping.max_new_tokens = 6;
    r.stopping.ignore_eos = true;
    r.sink = c.SinkFor(r.id);
    ASSERT_TRUE(engine.Submit(std::move(r)).ok());
  }
  c.WaitFor(3);
  engine.Drain(std::chrono::milliseconds(1000));
  ASSERT_GE(recorder.steps.size(), 6u);
  for (size_t k = 0; k < recorder.steps.size(); ++k) {
    ASSERT_TRUE(recorder.steps[k].device) << "step " << k + 1;
    EXPECT_EQ(recorder.steps[k].device->step_seconds, double(k + 1)) << "step " << k + 1;
    EXPECT_GT(recorder.steps[k].wall_seconds, 0.0);
  }
}

// ---------------------------------------------------------------------------------------------
// The engine with the CPU backend: async changes nothing in the outputs, preempted or not.

TEST(AsyncEngineTest, TheCpuBackendGivesTheSameOutputsWithAndWithoutAsync) {
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), testing::TinyConfig(2), std::random_device{}());
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<const Checkpoint> checkpoint = std::move(*ckpt);
  auto run = [&](bool async, int num_blocks) {
    auto backend = CpuBackend::Create(checkpoint, kBlock, num_blocks);
    EXPECT_TRUE(backend.ok());
    EngineConfig config;
    config.scheduler = {kBlock, 64, 256};
    config.scheduler.async_scheduling = async;
    config.limits = {checkpoint->config().vocab_size, 512};
    Engine engine(config, std::move(*backend), nullptr);
    engine.Start();
    EventCollector c;
    for (int i = 0; i < 12; ++i) {
      Request r;
      r.id = absl::StrCat("r", i);
      for (int t = 0; t < 3 + 5 * i; ++t) r.prompt.push_back(2 + (t * 7 + i * 13) % 120);
      r.stopping.max_new_tokens = 12;
      r.stopping.ignore_eos = true;
      r.sampling.temperature = i % 2 ? 0.8f : 0.0f;
      r.sampling.seed = i;
      r.sink = c.SinkFor(r.id);
      EXPECT_TRUE(engine.Submit(std::move(r)).ok());
    }
    c.WaitFor(12);
    return c.results();
  };
  const auto sync = run(false, 1024);
  const auto async = run(true, 40);  // 160 tokens for 12 sequences of up to 70: preempted
  int preemptions = 0;
  for (const auto& [id, r] : sync) {
    EXPECT_EQ(r.tokens.size(), 12u) << id;
    EXPECT_EQ(async.at(id).tokens, r.tokens) << id;
    preemptions += async.at(id).preemptions;
  }
  EXPECT_GT(preemptions, 0);
}

}  // namespace
}  // namespace gqa
