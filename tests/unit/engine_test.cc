// The engine with the CPU backend on a tiny random checkpoint, in process.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "common/test_checkpoint.h"
#include "metrics/engine_metrics.h"

namespace gqa {
namespace {

// Collects every request's tokens and finish, and waits for them.
class Collector {
 public:
  EventSink SinkFor(const std::string& id) {
    return [this, id](TokenEvent e) {
      std::lock_guard lock(mu_);
      auto& r = results_[id];
      r.tokens.insert(r.tokens.end(), e.new_tokens.begin(), e.new_tokens.end());
      if (e.finish) {
        r.finish = *e.finish;
        r.preemptions = e.preemptions;
        ++finished_;
        cv_.notify_all();
      }
    };
  }
  void WaitFor(int n) {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(60), [&] { return finished_ >= n; }));
  }
  struct Result {
    std::vector<int32_t> tokens;
    std::optional<FinishReason> finish;
    int preemptions = 0;
  };
  std::map<std::string, Result> results() {
    std::lock_guard lock(mu_);
    return results_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Result> results_;
  int finished_ = 0;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteRandomCheckpoint(dir_.path(), testing::TinyConfig(2), std::random_device{}());
    auto ckpt = Checkpoint::Load(dir_.path(), LoadFormat::kSafetensors);
    ASSERT_TRUE(ckpt.ok());
    ckpt_ = std::move(*ckpt);
  }

  std::unique_ptr<Engine> MakeEngine(int num_blocks, EngineMetrics* metrics = nullptr) {
    auto backend = CpuBackend::Create(ckpt_, /*block_size=*/4, num_blocks);
    EngineConfig config;
    config.scheduler = {4, 64, 256};
    config.limits = {ckpt_->config().vocab_size, 512};
    auto engine = std::make_unique<Engine>(config, std::move(*backend), metrics);
    engine->Start();
    return engine;
  }

  static Request MakeRequest(const std::string& id, int prompt_len, int max_new, uint64_t seed,
                             float temperature, Collector& c) {
    Request r;
    r.id = id;
    for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(2 + (i * 7 + seed * 13) % 120);
    r.stopping.max_new_tokens = max_new;
    r.stopping.ignore_eos = true;
    r.sampling.temperature = temperature;
    r.sampling.seed = seed;
    r.sink = c.SinkFor(id);
    return r;
  }

  testing::TempDir dir_;
  std::shared_ptr<const Checkpoint> ckpt_;
};

TEST_F(EngineTest, OutputsAreTheSameAloneBatchedAndPreempted) {
  const int n = 12;
  std::map<std::string, std::vector<int32_t>> alone;
  {
    auto engine = MakeEngine(1024);
    for (int i = 0; i < n; ++i) {
      Collector c;
      const std::string id = "r" + std::to_string(i);
      ASSERT_TRUE(engine->Submit(MakeRequest(id, 3 + 5 * i, 12, i, i % 2 ? 0.8f : 0.0f, c)).ok());
      c.WaitFor(1);
      alone[id] = c.results()[id].tokens;
      EXPECT_EQ(alone[id].size(), 12u);
    }
  }
  // A pool of 40 blocks (160 tokens) cannot hold all 12 at once: sequences get preempted.
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  auto engine = MakeEngine(40, &metrics);
  Collector c;
  for (int i = 0; i < n; ++i) {
    const std::string id = "r" + std::to_string(i);
    ASSERT_TRUE(engine->Submit(MakeRequest(id, 3 + 5 * i, 12, i, i % 2 ? 0.8f : 0.0f, c)).ok());
  }
  c.WaitFor(n);
  int preempted = 0;
  for (const auto& [id, r] : c.results()) {
    EXPECT_EQ(r.tokens, alone[id]) << id;
    EXPECT_EQ(r.finish, FinishReason::kLength);
    preempted += r.preemptions;
  }
  EXPECT_GT(preempted, 0) << "the pool was meant to be too small";
  EXPECT_EQ(metrics.preemptions->value(), preempted);
  EXPECT_EQ(metrics.kv_cache_usage_ratio->value(), 0.0);
}

TEST_F(EngineTest, RefusesRequestsThatCanNeverFit) {
  auto engine = MakeEngine(8);  // 32 tokens
  Collector c;
  auto st = engine->Submit(MakeRequest("big", 20, 20, 0, 0.0f, c));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("KV blocks"), std::string::npos);
  EXPECT_TRUE(engine->Submit(MakeRequest("fits", 20, 12, 0, 0.0f, c)).ok());
  c.WaitFor(1);
}

TEST_F(EngineTest, CancelFinishesAndFreesBlocks) {
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  auto engine = MakeEngine(128, &metrics);
  Collector c;
  auto id = engine->Submit(MakeRequest("long", 10, 400, 0, 0.0f, c));
  ASSERT_TRUE(id.ok());
  while (c.results()["long"].tokens.size() < 2) std::this_thread::yield();
  engine->Cancel(*id);
  c.WaitFor(1);
  EXPECT_EQ(c.results()["long"].finish, FinishReason::kCancelled);
  EXPECT_LT(c.results()["long"].tokens.size(), 400u);
  EXPECT_EQ(metrics.kv_cache_usage_ratio->value(), 0.0);
  EXPECT_EQ(metrics.requests_running->value(), 0.0);
}

TEST_F(EngineTest, StopsAtEosAndStopTokens) {
  auto engine = MakeEngine(256);
  Collector c;
  Request probe = MakeRequest("probe", 5, 6, 0, 0.0f, c);
  ASSERT_TRUE(engine->Submit(std::move(probe)).ok());
  c.WaitFor(1);
  const auto tokens = c.results()["probe"].tokens;
  Request stop = MakeRequest("stop", 5, 6, 0, 0.0f, c);
  stop.stopping.stop_token_ids = {tokens[2]};
  ASSERT_TRUE(engine->Submit(std::move(stop)).ok());
  c.WaitFor(2);
  auto r = c.results()["stop"];
  EXPECT_EQ(r.finish, FinishReason::kStopToken);
  // Ends at the first occurrence of the stop token, which is included.
  const auto first = std::find(tokens.begin(), tokens.end(), tokens[2]) - tokens.begin();
  EXPECT_EQ(r.tokens, std::vector<int32_t>(tokens.begin(), tokens.begin() + first + 1));
}

TEST_F(EngineTest, DrainFinishesRunningRequestsAndRefusesNewOnes) {
  auto engine = MakeEngine(256);
  Collector c;
  ASSERT_TRUE(engine->Submit(MakeRequest("a", 5, 30, 0, 0.0f, c)).ok());
  std::thread drainer([&] { engine->Drain(std::chrono::seconds(30)); });
  c.WaitFor(1);
  drainer.join();
  EXPECT_EQ(c.results()["a"].finish, FinishReason::kLength);
  EXPECT_EQ(engine->Submit(MakeRequest("late", 5, 3, 0, 0.0f, c)).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace gqa
