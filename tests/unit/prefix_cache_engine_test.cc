// Prefix caching end to end in process, on the CPU backend: a request's output is bitwise the
// same with and without a cache hit, the logits of a chunk that reuses another sequence's blocks
// equal those of a full prefill, and the metrics count queries and hits.
#include <gtest/gtest.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "backend/cpu/cpu_backend.h"
#include "common/fake_backend.h"
#include "common/test_checkpoint.h"
#include "engine/engine.h"
#include "metrics/engine_metrics.h"

namespace gqa {
namespace {

using Collector = testing::EventCollector;
using Result = Collector::Result;

constexpr int kBlock = 4;

class PrefixCacheEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const uint32_t seed = std::random_device{}();
    SCOPED_TRACE(seed);
    testing::WriteRandomCheckpoint(dir_.path(), testing::TinyConfig(2), seed);
    auto ckpt = Checkpoint::Load(dir_.path(), LoadFormat::kSafetensors);
    ASSERT_TRUE(ckpt.ok());
    ckpt_ = std::move(*ckpt);
  }

  std::unique_ptr<Engine> MakeEngine(int num_blocks, bool caching, EngineMetrics* metrics = nullptr,
                                     int max_num_batched_tokens = 256) {
    auto backend = CpuBackend::Create(ckpt_, kBlock, num_blocks);
    EngineConfig config;
    config.scheduler = {kBlock, 64, max_num_batched_tokens, caching, /*prefix_cache_salt=*/7};
    config.limits = {ckpt_->config().vocab_size, 512};
    auto engine = std::make_unique<Engine>(config, std::move(*backend), metrics);
    engine->Start();
    return engine;
  }

  // A shared system prompt of `system_len` tokens and a user turn of its own per request.
  static Request MakeRequest(const std::string& id, int system_len, int user_len, int max_new,
                             uint64_t seed, Collector& c) {
    Request r;
    r.id = id;
    for (int i = 0; i < system_len; ++i) r.prompt.push_back(2 + (i * 7) % 120);
    for (int i = 0; i < user_len; ++i) r.prompt.push_back(2 + (i * 5 + seed * 13) % 120);
    r.stopping.max_new_tokens = max_new;
    r.stopping.ignore_eos = true;
    r.sampling.temperature = seed % 2 ? 0.9f : 0.0f;
    r.sampling.seed = seed;
    r.sink = c.SinkFor(id);
    return r;
  }

  static Result RunAlone(Engine& engine, Request r) {
    Collector c;
    const std::string id = r.id;
    r.sink = c.SinkFor(id);
    EXPECT_TRUE(engine.Submit(std::move(r)).ok());
    c.WaitFor(1);
    return c.results()[id];
  }

  testing::TempDir dir_;
  std::shared_ptr<const Checkpoint> ckpt_;
};

TEST_F(PrefixCacheEngineTest, OutputsAreBitwiseTheSameWithAndWithoutACacheHit) {
  const int n = 10;
  Collector unused;
  std::vector<Request> requests;
  for (int i = 0; i < n; ++i) {
    requests.push_back(MakeRequest(absl::StrCat("r", i), 37, 3 + i, 10, i, unused));
  }
  std::map<std::string, Result> uncached;
  {
    auto engine = MakeEngine(512, /*caching=*/false);
    for (const Request& r : requests) uncached[r.id] = RunAlone(*engine, r);
  }
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  auto engine = MakeEngine(512, /*caching=*/true, &metrics);
  // The first fills the cache; the others, submitted together, reuse its 36 system tokens.
  Result first = RunAlone(*engine, requests[0]);
  EXPECT_EQ(first.tokens, uncached["r0"].tokens);
  EXPECT_EQ(first.cached_prompt_tokens, 0);
  Collector c;
  for (int i = 1; i < n; ++i) {
    Request r = requests[i];
    r.sink = c.SinkFor(r.id);
    ASSERT_TRUE(engine->Submit(std::move(r)).ok());
  }
  c.WaitFor(n - 1);
  auto cached = c.results();
  for (int i = 1; i < n; ++i) {
    const std::string id = absl::StrCat("r", i);
    EXPECT_EQ(cached[id].tokens, uncached[id].tokens) << id;
    EXPECT_GE(cached[id].cached_prompt_tokens, 36) << id;
    EXPECT_EQ(cached[id].cached_prompt_tokens % kBlock, 0) << id;
  }
  // The same request again: its own prompt is cached, short of its last token's block.
  Result again = RunAlone(*engine, requests[n - 1]);
  EXPECT_EQ(again.tokens, uncached[requests[n - 1].id].tokens);
  EXPECT_GE(again.cached_prompt_tokens, 36 + 3 + n - 1 - 2 * kBlock);
  EXPECT_GT(metrics.prefix_cache_hits->value(), 36.0 * (n - 1));
  EXPECT_GT(metrics.prefix_cache_queries->value(), metrics.prefix_cache_hits->value());
  EXPECT_GT(metrics.prefix_cache_blocks->value(), 9);
}

TEST_F(PrefixCacheEngineTest, MultiTurnReusesGeneratedTokensAndMatchesTheUncachedRun) {
  auto on = MakeEngine(512, true);
  auto off = MakeEngine(512, false);
  Collector unused;
  Request turn = MakeRequest("t", 20, 5, 12, 3, unused);
  for (int t = 0; t < 4; ++t) {
    Result cached = RunAlone(*on, turn);
    Result plain = RunAlone(*off, turn);
    ASSERT_EQ(cached.tokens, plain.tokens) << "turn " << t;
    if (t > 0) {  // the conversation so far, generated tokens included, came from the cache
      EXPECT_GE(cached.cached_prompt_tokens, static_cast<int>(turn.prompt.size()) - 4 - 2 * kBlock)
          << "turn " << t;
    }
    turn.prompt.insert(turn.prompt.end(), cached.tokens.begin(), cached.tokens.end());
    for (int i = 0; i < 4; ++i) turn.prompt.push_back(10 + t * 4 + i);
  }
}

TEST_F(PrefixCacheEngineTest, ManySharersUnderASmallPoolMatchTheirSoloRuns) {
  const int n = 24;
  Collector unused;
  std::vector<Request> requests;
  for (int i = 0; i < n; ++i) {
    requests.push_back(MakeRequest(absl::StrCat("r", i), 41, 2 + i % 7, 16, i, unused));
  }
  std::map<std::string, Result> solo;
  {
    auto engine = MakeEngine(512, false);
    for (const Request& r : requests) solo[r.id] = RunAlone(*engine, r);
  }
  // 40 blocks (160 tokens): a handful of 60-token sequences, sharing 10 blocks of system prompt,
  // overflow it: preemption and eviction happen while blocks are shared. Prefill in 8-token
  // chunks, so that sequences are cancelled (below) and preempted mid-prefill.
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  auto engine = MakeEngine(40, true, &metrics, /*max_num_batched_tokens=*/24);
  Collector c;
  std::vector<uint64_t> ids;
  for (Request r : requests) {
    r.sink = c.SinkFor(r.id);
    auto id = engine->Submit(std::move(r));
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  // And a few more that are cancelled while they run.
  Collector cancelled;
  for (int i = 0; i < 4; ++i) {
    Request r = MakeRequest(absl::StrCat("x", i), 41, 30, 60, 100 + i, cancelled);
    auto id = engine->Submit(std::move(r));
    ASSERT_TRUE(id.ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * i));
    engine->Cancel(*id);
  }
  c.WaitFor(n);
  cancelled.WaitFor(4);
  auto got = c.results();
  int preempted = 0, hits = 0;
  for (const Request& r : requests) {
    EXPECT_EQ(got[r.id].tokens, solo[r.id].tokens) << r.id;
    preempted += got[r.id].preemptions > 0;
    hits += got[r.id].cached_prompt_tokens > 0;
  }
  EXPECT_GT(preempted, 0) << "the pool was meant to be too small";
  EXPECT_GT(hits, n / 2);
  EXPECT_GT(metrics.prefix_cache_hits->value(), 0);
  engine.reset();  // drained: every block free, some still cached
  EXPECT_EQ(metrics.kv_cache_usage_ratio->value(), 0.0);
}

TEST_F(PrefixCacheEngineTest, AChunkOverAnotherSequencesBlocksGivesTheFullPrefillsLogits) {
  auto backend = CpuBackend::Create(ckpt_, kBlock, 16);
  ASSERT_TRUE(backend.ok());
  std::vector<int32_t> prompt;
  for (int i = 0; i < 13; ++i) prompt.push_back(3 + i * 9 % 100);
  WholeTablePlanner planner;
  const std::vector<int32_t> first_table = {0, 1, 2, 3};
  const WholeTableSeq first{prompt, 0, first_table, true};
  ASSERT_TRUE((*backend)->ExecuteStep(planner.Plan({&first, 1})).ok());
  auto full = (*backend)->LogitsToHost();
  ASSERT_TRUE(full.ok());
  // A second sequence reuses blocks 0 and 1 (8 tokens) and computes the rest into its own.
  const std::vector<int32_t> second_table = {0, 1, 7, 9};
  const auto rest = std::span<const int32_t>(prompt).subspan(8);
  const WholeTableSeq second{rest, 8, second_table, true};
  ASSERT_TRUE((*backend)->ExecuteStep(planner.Plan({&second, 1})).ok());
  auto reused = (*backend)->LogitsToHost();
  ASSERT_TRUE(reused.ok());
  ASSERT_EQ(full->size(), reused->size());
  EXPECT_EQ(0, std::memcmp(full->data(), reused->data(), full->size() * sizeof(float)));
}

}  // namespace
}  // namespace gqa
