// The engine with the CPU backend on a tiny random checkpoint, in process; and with a fake
// backend whose steps fail on demand.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "backend/cpu/cpu_backend.h"
#include "common/fake_backend.h"
#include "common/test_checkpoint.h"
#include "metrics/engine_metrics.h"

namespace gqa {
namespace {

using Collector = testing::EventCollector;
using testing::FakeBackend;

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
      const std::string id = absl::StrCat("r", i);
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
    const std::string id = absl::StrCat("r", i);
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

std::unique_ptr<Engine> FakeEngine(std::unique_ptr<Backend> backend, EngineMetrics* metrics,
                                   std::function<void()> on_broken = {},
                                   std::chrono::milliseconds step_timeout = {}) {
  EngineConfig config;
  config.scheduler = {4, 64, 256};
  config.limits = {128, 512};
  config.on_backend_broken = std::move(on_broken);
  config.step_timeout = step_timeout;
  return std::make_unique<Engine>(config, std::move(backend), metrics);  // not started yet
}

Request FakeRequest(const std::string& id, int max_new, Collector& c) {
  Request r;
  r.id = id;
  r.prompt = {1, 2, 3};
  r.stopping.max_new_tokens = max_new;
  r.stopping.ignore_eos = true;
  r.sink = c.SinkFor(id);
  return r;
}

TEST(EngineFailureTest, AFailedStepFailsItsRequestsAndTheEngineServesOn) {
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  std::atomic<bool> broken_called{false};
  // Step 3 fails: both requests are in it (prefilled together at step 1, decoding since).
  auto engine = FakeEngine(std::make_unique<FakeBackend>(std::vector<int>{3}, false), &metrics,
                           [&] { broken_called = true; });
  Collector c;
  ASSERT_TRUE(engine->Submit(FakeRequest("a", 10, c)).ok());
  ASSERT_TRUE(engine->Submit(FakeRequest("b", 10, c)).ok());
  engine->Start();  // both requests are waiting: they share every step
  c.WaitFor(2);
  for (const char* id : {"a", "b"}) {
    const auto r = c.results()[id];
    EXPECT_EQ(r.error, "injected device failure") << id;
    EXPECT_LT(r.tokens.size(), 10u) << id;
  }
  EXPECT_EQ(metrics.kv_cache_usage_ratio->value(), 0.0) << "the failed requests' blocks are free";
  EXPECT_EQ(metrics.requests_running->value(), 0.0);
  // Not a sticky failure: the engine keeps serving.
  ASSERT_TRUE(engine->Submit(FakeRequest("after", 4, c)).ok());
  c.WaitFor(3);
  EXPECT_EQ(c.results()["after"].tokens, std::vector<int32_t>(4, 5));
  EXPECT_EQ(c.results()["after"].finish, FinishReason::kLength);
  EXPECT_FALSE(broken_called.load());
}

// A failed step's status reaches the request with its code, not only its message: a backend
// that runs out of memory fails its requests with RESOURCE_EXHAUSTED, not INTERNAL.
TEST(EngineFailureTest, AFailedStepKeepsItsStatusCode) {
  auto engine = FakeEngine(std::make_unique<FakeBackend>(std::vector<int>{2}, false,
                                                         absl::StatusCode::kResourceExhausted),
                           nullptr, [] {});
  Collector c;
  ASSERT_TRUE(engine->Submit(FakeRequest("a", 10, c)).ok());
  engine->Start();
  c.WaitFor(1);
  EXPECT_EQ(c.results()["a"].error, "injected device failure");
  EXPECT_EQ(c.results()["a"].error_code, absl::StatusCode::kResourceExhausted);
}

// A backend whose steps each take `step_delay`, and whose step `hang_at` (counted from 1; 0:
// none) never ends until Release(): a hung kernel or collective.
class StallingBackend final : public testing::FakeBackendBase {
 public:
  StallingBackend(int hang_at, std::chrono::milliseconds step_delay)
      : hang_at_(hang_at), step_delay_(step_delay) {}
  void Release() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }

 private:
  absl::StatusOr<StepOutput> Run(const StepPlan& plan) override {
    std::this_thread::sleep_for(step_delay_);
    if (++step_ == hang_at_) {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return released_; });
    }
    return FixedTokens(plan, 5);
  }
  const int hang_at_;
  const std::chrono::milliseconds step_delay_;
  int step_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

// The watchdog: a step that never returns calls on_backend_broken (the server exits in it)
// after step_timeout, instead of leaving the server up and serving nothing.
TEST(EngineFailureTest, AHungStepCallsOnBackendBrokenAfterTheStepTimeout) {
  auto backend = std::make_unique<StallingBackend>(3, std::chrono::milliseconds(0));
  StallingBackend* hanging = backend.get();
  std::atomic<int> broken_calls{0};
  auto engine = FakeEngine(
      std::move(backend), nullptr, [&] { ++broken_calls; }, std::chrono::milliseconds(200));
  Collector c;
  ASSERT_TRUE(engine->Submit(FakeRequest("a", 10, c)).ok());
  const auto start = std::chrono::steady_clock::now();
  engine->Start();
  const auto deadline = start + std::chrono::seconds(10);
  while (broken_calls.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(broken_calls.load(), 1);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(200));
  hanging->Release();  // so that the engine can stop
  c.WaitFor(1);
  EXPECT_EQ(broken_calls.load(), 1) << "once only";
}

// Steps that end in time never trip it: 20 steps of 20 ms under a 200 ms limit (their sum
// twice it), then the engine idle for three limits.
TEST(EngineFailureTest, StepsWithinTheStepTimeoutAndIdleTimeNeverTripIt) {
  std::atomic<int> broken_calls{0};
  auto engine = FakeEngine(
      std::make_unique<StallingBackend>(0, std::chrono::milliseconds(20)), nullptr,
      [&] { ++broken_calls; }, std::chrono::milliseconds(200));
  Collector c;
  ASSERT_TRUE(engine->Submit(FakeRequest("a", 20, c)).ok());
  engine->Start();
  c.WaitFor(1);
  EXPECT_EQ(c.results()["a"].tokens, std::vector<int32_t>(20, 5));
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(broken_calls.load(), 0);
}

TEST(EngineFailureTest, AStickyFailureCallsOnBackendBroken) {
  std::atomic<int> broken_calls{0};
  auto engine = FakeEngine(std::make_unique<FakeBackend>(std::vector<int>{2}, true), nullptr,
                           [&] { ++broken_calls; });
  Collector c;
  ASSERT_TRUE(engine->Submit(FakeRequest("a", 10, c)).ok());
  engine->Start();
  c.WaitFor(1);
  EXPECT_EQ(c.results()["a"].error, "injected device failure");
  // Called after the clients were told (the server exits in it).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (broken_calls.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(broken_calls.load(), 1);
}

}  // namespace
}  // namespace gqa

namespace gqa {
namespace {

// The engine's step metrics with a backend whose costs are known: the bytes of every step, the
// roofline over the bandwidth, device time on profiled steps only, none for a failed step.
TEST(EngineStepMetricsTest, BytesRooflineAndProfiledTimesOfEveryStep) {
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  metrics.SetDeviceBandwidth(1e6);
  // Step 3 fails (both requests fail); then "c" runs alone.
  auto backend = std::make_unique<FakeBackend>(std::vector<int>{3}, false);
  EngineConfig config;
  config.scheduler = {4, 64, 256};
  config.limits = {128, 512};
  config.cost = {1000, 10, 0};
  config.step_profile_interval = 1;
  Engine engine(config, std::move(backend), &metrics);
  Collector c;
  ASSERT_TRUE(engine.Submit(FakeRequest("a", 10, c)).ok());
  ASSERT_TRUE(engine.Submit(FakeRequest("b", 10, c)).ok());
  engine.Start();
  c.WaitFor(2);
  ASSERT_TRUE(engine.Submit(FakeRequest("c", 4, c)).ok());  // prompt 3, 4 new: 4 steps
  c.WaitFor(3);
  engine.Drain(std::chrono::seconds(5));
  const Histogram* wall = metrics.step_duration[static_cast<int>(StepPhase::kDecode)];
  // Decode steps that ran: step 2 (a and b at context 4) and c's three (contexts 4, 5, 6).
  EXPECT_EQ(wall->count(), 4u);
  const std::string text = registry.RenderText();
  auto value = [&](const std::string& series) {
    const size_t at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1.0;
    return std::stod(text.substr(at + series.size() + 2));
  };
  EXPECT_EQ(value("gqa_step_read_bytes_total{phase=\"decode\",kind=\"weights\"}"), 4000);
  EXPECT_EQ(value("gqa_step_read_bytes_total{phase=\"decode\",kind=\"kv\"}"),
            (4 + 4 + 4 + 5 + 6) * 10);
  EXPECT_EQ(value("gqa_step_read_bytes_total{phase=\"prefill\",kind=\"kv\"}"), (3 + 3 + 3) * 10);
  EXPECT_DOUBLE_EQ(value("gqa_step_roofline_seconds_sum{phase=\"decode\"}"), (4000 + 230) / 1e6);
  // Every step that ran was profiled; the failed one is in no histogram.
  EXPECT_EQ(value("gqa_step_device_seconds_count{phase=\"decode\"}"), 4);
  EXPECT_DOUBLE_EQ(value("gqa_step_device_seconds_sum{phase=\"decode\"}"), 4 * 0.003);
  EXPECT_DOUBLE_EQ(value("gqa_step_attention_seconds_sum{phase=\"decode\"}"), 4 * 0.001);
  EXPECT_EQ(value("gqa_step_sequences_sum{state=\"decoding\"}"), 2 + 1 + 1 + 1);
  EXPECT_EQ(value("gqa_step_sequences_count{state=\"decoding\"}"), 4);
  EXPECT_EQ(value("gqa_step_sequences_count{state=\"resumed\"}"), 0);
}

}  // namespace
}  // namespace gqa
