// Event delivery off the engine thread (engine/event_delivery.h): merging, per-request order, a
// blocked sink that must not stall the engine's steps, cancel and finish while events are
// queued, and shutdown with events still queued.
#include "engine/event_delivery.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fake_backend.h"
#include "engine/engine.h"

namespace gqa {
namespace {

using namespace std::chrono_literals;

// Each sampled token is its position in the sequence (mod 128): a request with a prompt of 3
// tokens gets 3, 4, 5, ... so any reordering, loss or duplicate of its tokens shows. A step
// takes 100 us, so that a test polling every millisecond can act in the middle of a request.
class PositionBackend final : public testing::FakeBackendBase {
 public:
  PositionBackend() : FakeBackendBase(/*num_blocks=*/1024) {}

 private:
  absl::StatusOr<StepOutput> Run(const StepPlan& plan) override {
    std::this_thread::sleep_for(100us);
    StepOutput out;
    for (const ScheduledSeq& s : plan.seqs) {
      if (s.samples) out.sampled.push_back((s.start_pos + int(s.chunk.size())) % 128);
    }
    return out;
  }
};

// What the engine reports on its own thread: finished requests and steps.
class CountingObserver final : public EngineObserver {
 public:
  void OnPreemptions(size_t) override {}
  void OnRequestScheduled(double, int) override {}
  void OnTokensEmitted(size_t, std::optional<double>, std::optional<double>) override {}
  void OnRequestFinished(FinishReason, double) override { ++finished; }
  void OnStep(const StepStats&) override { ++steps; }
  void OnOccupancy(const EngineOccupancy&) override {}
  std::atomic<int> finished{0};
  std::atomic<int> steps{0};
};

// A gate a sink can wait at until the test opens it.
class Gate {
 public:
  void Wait() {
    std::unique_lock lock(mu_);
    reached_ = true;
    reached_cv_.notify_all();
    open_cv_.wait(lock, [this] { return open_; });
  }
  void WaitReached() {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(reached_cv_.wait_for(lock, 60s, [this] { return reached_; }));
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    open_cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable reached_cv_, open_cv_;
  bool reached_ = false, open_ = false;
};

// Every event of every request, checked as it arrives: nothing after a final event, no sink
// called twice at once.
class Recorder {
 public:
  struct Stream {
    std::vector<int32_t> tokens;
    std::optional<FinishReason> finish;
    int completion_tokens = -1;
    int events = 0;
    int finals = 0;
    bool after_final = false;
  };

  // `gate`: the sink waits there on its first event. `jitter`: it sometimes sleeps, so that
  // events pile up and merge.
  EventSink SinkFor(const std::string& id, Gate* gate = nullptr, bool jitter = false) {
    return [this, id, gate, jitter, first = true,
            busy = std::make_shared<std::atomic<bool>>()](TokenEvent e) mutable {
      if (busy->exchange(true)) concurrent_calls_.fetch_add(1);
      if (std::exchange(first, false) && gate) gate->Wait();
      if (jitter && e.new_tokens.size() % 3 == 0) std::this_thread::sleep_for(200us);
      {
        std::lock_guard lock(mu_);
        Stream& s = streams_[id];
        s.after_final |= s.finals > 0;
        ++s.events;
        s.tokens.insert(s.tokens.end(), e.new_tokens.begin(), e.new_tokens.end());
        if (IsFinalEvent(e)) {
          ++s.finals;
          s.finish = e.finish;
          s.completion_tokens = e.completion_tokens;
          ++finished_;
          cv_.notify_all();
        }
      }
      busy->store(false);
    };
  }
  void WaitFor(int n) {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, 120s, [&] { return finished_ >= n; }));
  }
  Stream Get(const std::string& id) {
    std::lock_guard lock(mu_);
    return streams_[id];
  }
  int finished() {
    std::lock_guard lock(mu_);
    return finished_;
  }
  int concurrent_calls() const { return concurrent_calls_.load(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Stream> streams_;
  int finished_ = 0;
  std::atomic<int> concurrent_calls_{0};
};

std::vector<int32_t> Positions(int prompt_len, int count) {
  std::vector<int32_t> v;
  for (int i = 0; i < count; ++i) v.push_back((prompt_len + i) % 128);
  return v;
}

std::unique_ptr<Engine> StartEngine(EngineObserver* observer, int max_num_seqs = 64) {
  EngineConfig config;
  config.scheduler = {4, max_num_seqs, 512};
  config.limits = {128, 1024};
  auto engine = std::make_unique<Engine>(config, std::make_unique<PositionBackend>(), observer);
  engine->Start();
  return engine;
}

uint64_t Submit(Engine& engine, int max_new, EventSink sink) {
  Request r;
  r.prompt = {1, 2, 3};
  r.stopping.max_new_tokens = max_new;
  r.stopping.ignore_eos = true;
  r.sink = std::move(sink);
  absl::StatusOr<uint64_t> id = engine.Submit(std::move(r));
  EXPECT_TRUE(id.ok()) << id.status();
  return id.value_or(0);
}

// Waits (up to a minute) until `done` holds.
template <typename Done>
bool Eventually(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

TEST(MergeTokenEventTest, ConcatenatesAndTakesTheFinalFieldsOfTheLaterEvent) {
  TokenEvent first;
  first.new_tokens = {7};
  first.text = "a";
  first.logprobs = {{7, -0.5f, {}}};
  first.prompt_logprobs = {{1, 0.0f, {}}, {2, -1.0f, {}}};
  TokenEvent middle;
  middle.new_tokens = {8};
  middle.text = "b";
  middle.logprobs = {{8, -0.25f, {}}};
  MergeTokenEvent(first, middle);
  EXPECT_FALSE(IsFinalEvent(first));
  TokenEvent last;
  last.new_tokens = {9};
  last.text = "c";
  last.logprobs = {{9, -2.0f, {}}};
  last.finish = FinishReason::kStopToken;
  last.matched_stop = 9;
  last.completion_tokens = 3;
  last.total_seconds = 1.5;
  MergeTokenEvent(first, last);
  EXPECT_EQ(first.new_tokens, (std::vector<int32_t>{7, 8, 9}));
  EXPECT_EQ(first.text, "abc");
  ASSERT_EQ(first.logprobs.size(), 3u);
  EXPECT_EQ(first.logprobs[2].token, 9);
  EXPECT_EQ(first.prompt_logprobs.size(), 2u) << "the first event's prompt logprobs stay";
  EXPECT_EQ(first.finish, FinishReason::kStopToken);
  EXPECT_EQ(first.matched_stop, 9);
  EXPECT_EQ(first.completion_tokens, 3);
  EXPECT_EQ(first.total_seconds, 1.5);

  TokenEvent failed;
  failed.finish = FinishReason::kCancelled;
  failed.error = absl::ResourceExhaustedError("out of memory");
  MergeTokenEvent(middle, failed);
  EXPECT_EQ(middle.new_tokens, std::vector<int32_t>{8});
  EXPECT_EQ(middle.error.code(), absl::StatusCode::kResourceExhausted);
}

TEST(EventDeliveryTest, MergesWhileASinkIsBusyAndClosesMailboxesOnTheFinalEvent) {
  EventDelivery delivery;
  Gate gate;
  Recorder recorder;
  delivery.Open(1, recorder.SinkFor("one", &gate));
  std::vector<EventDelivery::Outgoing> events;
  auto token = [](int32_t t) {
    TokenEvent e;
    e.new_tokens = {t};
    return e;
  };
  events.emplace_back(1, token(10));
  delivery.Post(events);
  EXPECT_TRUE(events.empty());
  gate.WaitReached();  // the delivery thread holds the first event, blocked in the sink
  for (int32_t t = 11; t < 20; ++t) events.emplace_back(1, token(t));
  events.emplace_back(2, token(99));  // no mailbox: dropped
  TokenEvent final_event = token(20);
  final_event.finish = FinishReason::kLength;
  events.emplace_back(1, std::move(final_event));
  delivery.Post(events);
  EXPECT_EQ(delivery.merged_events(), 9u) << "ten events after the first, merged into one";
  EXPECT_FALSE(delivery.WaitUntilDelivered(10ms));
  gate.Open();
  ASSERT_TRUE(delivery.WaitUntilDelivered(60s));
  const Recorder::Stream s = recorder.Get("one");
  EXPECT_EQ(s.tokens, Positions(10, 11));
  EXPECT_EQ(s.events, 2);
  EXPECT_EQ(s.finals, 1);
  EXPECT_EQ(delivery.open_mailboxes(), 0);
}

TEST(EventDeliveryTest, StopDeliversEverythingPosted) {
  auto delivery = std::make_unique<EventDelivery>();
  Gate gate;
  Recorder recorder;
  std::vector<EventDelivery::Outgoing> events;
  for (uint64_t id = 1; id <= 20; ++id) {
    delivery->Open(id, recorder.SinkFor(absl::StrCat(id), id == 1 ? &gate : nullptr));
    TokenEvent e;
    e.new_tokens = {int32_t(id)};
    e.finish = FinishReason::kCancelled;
    events.emplace_back(id, std::move(e));
  }
  delivery->Post(events);
  gate.WaitReached();
  std::thread stopper([&] { delivery.reset(); });
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(recorder.finished(), 0) << "the first sink still blocks the delivery thread";
  gate.Open();
  stopper.join();
  EXPECT_EQ(recorder.finished(), 20);
}

TEST(EngineDeliveryTest, ABlockedSinkDoesNotStallTheEnginesSteps) {
  CountingObserver observer;
  auto engine = StartEngine(&observer);
  Gate gate;
  Recorder recorder;
  Submit(*engine, 40, recorder.SinkFor("blocked", &gate));
  gate.WaitReached();
  const int steps_before = observer.steps.load();
  Submit(*engine, 60, recorder.SinkFor("other"));
  // Both requests run to the end in the engine while the blocked sink holds delivery.
  ASSERT_TRUE(Eventually([&] { return observer.finished.load() == 2; }));
  EXPECT_GE(observer.steps.load() - steps_before, 60);
  EXPECT_EQ(recorder.finished(), 0);
  gate.Open();
  recorder.WaitFor(2);
  EXPECT_EQ(recorder.Get("blocked").tokens, Positions(3, 40));
  EXPECT_EQ(recorder.Get("other").tokens, Positions(3, 60));
  EXPECT_LE(recorder.Get("other").events, 2) << "its events merged while delivery was blocked";
  EXPECT_EQ(recorder.Get("other").finish, FinishReason::kLength);
}

TEST(EngineDeliveryTest, EachRequestSeesItsEventsInOrderUnderManyConcurrentRequests) {
  auto engine = StartEngine(nullptr, /*max_num_seqs=*/48);
  Recorder recorder;
  std::mt19937 rng(std::random_device{}());
  const int n = 96;  // twice the batch: requests join as others finish
  std::vector<int> lengths;
  for (int i = 0; i < n; ++i) {
    lengths.push_back(1 + rng() % 64);
    Submit(*engine, lengths.back(), recorder.SinkFor(absl::StrCat(i), nullptr, i % 4 == 0));
  }
  recorder.WaitFor(n);
  for (int i = 0; i < n; ++i) {
    const Recorder::Stream s = recorder.Get(absl::StrCat(i));
    EXPECT_EQ(s.tokens, Positions(3, lengths[i])) << i;
    EXPECT_EQ(s.finish, FinishReason::kLength) << i;
    EXPECT_EQ(s.completion_tokens, lengths[i]) << i;
    EXPECT_EQ(s.finals, 1) << i;
    EXPECT_FALSE(s.after_final) << i;
  }
  EXPECT_EQ(recorder.concurrent_calls(), 0);
}

TEST(EngineDeliveryTest, CancelAndFinishWhileEventsAreQueued) {
  CountingObserver observer;
  auto engine = StartEngine(&observer);
  Gate gate;
  Recorder recorder;
  Submit(*engine, 100, recorder.SinkFor("blocker", &gate));
  gate.WaitReached();
  const uint64_t victim = Submit(*engine, 1000, recorder.SinkFor("victim"));
  Submit(*engine, 6, recorder.SinkFor("short"));
  ASSERT_TRUE(Eventually([&] { return observer.finished.load() >= 1; }));  // "short"
  engine->Cancel(victim);
  ASSERT_TRUE(Eventually([&] { return observer.finished.load() >= 2; }));  // "victim"
  EXPECT_EQ(recorder.finished(), 0) << "everything is still queued behind the blocked sink";
  gate.Open();
  recorder.WaitFor(3);
  const Recorder::Stream cancelled = recorder.Get("victim");
  EXPECT_EQ(cancelled.finish, FinishReason::kCancelled);
  EXPECT_GT(cancelled.tokens.size(), 0u);
  EXPECT_LT(cancelled.tokens.size(), 1000u);
  EXPECT_EQ(cancelled.tokens, Positions(3, int(cancelled.tokens.size())));
  EXPECT_EQ(cancelled.completion_tokens, int(cancelled.tokens.size()));
  EXPECT_EQ(cancelled.finals, 1);
  EXPECT_FALSE(cancelled.after_final);
  EXPECT_EQ(recorder.Get("short").tokens, Positions(3, 6));
  EXPECT_EQ(recorder.Get("short").finish, FinishReason::kLength);
  EXPECT_EQ(recorder.Get("blocker").tokens, Positions(3, 100));
  engine->Cancel(victim);  // already finished: ignored
}

// Drain stops the engine with a sink blocked: it returns only once every request's final event
// was delivered, and the engine can then be destroyed with nothing left to call.
TEST(EngineDeliveryTest, DrainDeliversEveryFinalEventBeforeItReturns) {
  auto engine = StartEngine(nullptr);
  Gate gate;
  Recorder recorder;
  Submit(*engine, 500, recorder.SinkFor("blocked", &gate));
  gate.WaitReached();
  for (int i = 0; i < 8; ++i) Submit(*engine, 500, recorder.SinkFor(absl::StrCat(i)));
  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    engine->Drain(0ms);
    drained = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(drained.load()) << "Drain returned with events undelivered";
  gate.Open();
  drainer.join();
  EXPECT_EQ(recorder.finished(), 9);
  for (int i = 0; i < 8; ++i) {
    const Recorder::Stream s = recorder.Get(absl::StrCat(i));
    EXPECT_EQ(s.finals, 1) << i;
    EXPECT_EQ(s.tokens, Positions(3, int(s.tokens.size()))) << i;
  }
  engine.reset();
}

// Destroying a running engine (no Drain) with events queued behind a blocked sink: every
// request still gets exactly one final event before the destructor returns.
TEST(EngineDeliveryTest, DestroyingTheEngineDeliversQueuedEvents) {
  auto engine = StartEngine(nullptr);
  Gate gate;
  Recorder recorder;
  Submit(*engine, 500, recorder.SinkFor("blocked", &gate));
  gate.WaitReached();
  for (int i = 0; i < 4; ++i) Submit(*engine, 500, recorder.SinkFor(absl::StrCat(i)));
  std::thread destroyer([&] { engine.reset(); });
  std::this_thread::sleep_for(20ms);
  gate.Open();
  destroyer.join();
  EXPECT_EQ(recorder.finished(), 5);
  for (int i = 0; i < 4; ++i) {
    const Recorder::Stream s = recorder.Get(absl::StrCat(i));
    EXPECT_EQ(s.finals, 1) << i;
    EXPECT_EQ(s.tokens, Positions(3, int(s.tokens.size()))) << i;
  }
}

}  // namespace
}  // namespace gqa
