// The engine: one thread that owns the scheduler, the block allocator and the backend, and runs
// steps while there is work: Scheduler::Schedule -> Backend::ExecuteStep -> Scheduler::Update
// -> emit. With async scheduling (SchedulerConfig::async_scheduling) the loop overlaps the host
// with the device: schedule(n+1) -> SubmitStep(n+1) -> CollectStep(n) -> Update(n) -> emit, so
// step n+1 runs while step n's tokens are committed, detokenized, checked and streamed (see
// docs/step-protocol.md). Other threads only Submit and Cancel, which enqueue messages and never
// block on a step. The events a step emits go to the delivery thread (engine/event_delivery.h),
// which runs the requests' sinks.
#pragma once

#include <atomic>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "engine/block_allocator.h"
#include "engine/engine_observer.h"
#include "engine/event_delivery.h"
#include "engine/scheduler.h"
#include "engine/step_stats.h"
#include "engine/step_watchdog.h"
#include "engine/validation.h"

namespace gqa {

struct EngineConfig {
  SchedulerConfig scheduler;
  ModelLimits limits;
  std::vector<int32_t> eos_token_ids;
  const Tokenizer* tokenizer = nullptr;  // text for each event, stop strings; may be null
  // Requests admitted but not yet running beyond which Submit answers RESOURCE_EXHAUSTED
  // (0: no limit).
  int max_waiting_requests = 0;
  // The roofline terms of the served model (bytes per step), for the step metrics.
  StepCostModel cost;
  // One step in this many (at random) is timed on the device (attention and whole step);
  // 1: every step; 0: never.
  int step_profile_interval = 16;
  // Called after a failed step left the backend unusable (a sticky GPU error), on the engine
  // thread, or by the watchdog (step_timeout) on its own; the server stops serving and exits.
  // May be empty.
  std::function<void()> on_backend_broken;
  // The watchdog: a backend call (a step's submit or collect) still running after this long is
  // hung, and on_backend_broken runs (engine/step_watchdog.h). 0: no watchdog.
  std::chrono::milliseconds step_timeout{0};
};

class Engine {
 public:
  // observer (what the engine reports, e.g. the metrics) may be null.
  Engine(const EngineConfig& config, std::unique_ptr<Backend> backend, EngineObserver* observer);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  void Start();
  // Queues a request and returns its engine id. INVALID_ARGUMENT when it is malformed or can
  // never fit in the KV pool; RESOURCE_EXHAUSTED when max_waiting_requests are already waiting;
  // UNAVAILABLE once draining.
  absl::StatusOr<uint64_t> Submit(Request request);
  // Finishes the request with CANCELLED and frees its blocks at the next step. Unknown ids (e.g.
  // already finished) are ignored.
  void Cancel(uint64_t id);
  // Stops accepting requests, waits up to `grace` for the admitted ones to finish, then cancels
  // what is left, stops the engine thread and delivers every event (each request's final one
  // included) before it returns.
  void Drain(std::chrono::milliseconds grace);

  const EngineConfig& config() const { return config_; }
  const KvCacheSpec& kv_spec() const { return backend_->kv_spec(); }
  std::string_view backend_name() const { return backend_->name(); }
  const Backend& backend() const { return *backend_; }
  // Read on the engine thread only (a test backend's checks, in its steps).
  const BlockAllocator& allocator() const { return allocator_; }

 private:
  // A step scheduled and submitted, not yet collected.
  struct SubmittedStep {
    SchedulerOutput out;
    StepStats stats;
    bool profiled = false;
    Clock::time_point start;
    absl::Status submitted;  // SubmitStep's answer: not OK means nothing to collect
  };
  void Loop();
  // Moves queued requests and cancellations into the scheduler; false once stopping.
  bool TakeInbox();
  void Step();
  // Async: schedules and submits the next step, then collects and updates the one in flight.
  void AsyncStep();
  // Schedules a step and submits it; nullopt when there is nothing to run.
  std::optional<SubmittedStep> ScheduleAndSubmit();
  // The backend's step calls, under the watchdog when there is one.
  absl::Status SubmitWatched(const StepPlan& plan);
  absl::StatusOr<StepOutput> CollectWatched();
  // Collects `step` (the oldest submitted) and updates it; `next`, when given, is in flight
  // behind it (a failure fails both, and `next` is reset).
  void CollectAndUpdate(SubmittedStep& step, std::optional<SubmittedStep>* next);
  // Emits an updated step's tokens and finishes; `begin`: when the step's own time began.
  void DeliverEventsOf(UpdateResult& update, StepStats& stats, Clock::time_point begin);
  void Emit(Sequence& seq, std::vector<int32_t> tokens, std::string text,
            std::optional<FinishReason> finish, int32_t matched_stop = 0);
  void Finish(uint64_t seq_id, FinishReason reason, int32_t matched_stop = 0);
  // Fails every sequence of the steps (the first and, async, the one in flight behind it).
  void FailStep(const SchedulerOutput& out, const absl::Status& status,
                const SchedulerOutput* next = nullptr);
  // Hands the events emitted so far to the delivery thread.
  void DeliverEvents() { delivery_.Post(outbox_); }
  void UpdateGauges();
  void StopThread();

  EngineConfig config_;
  std::unique_ptr<Backend> backend_;
  EngineObserver* observer_;
  BlockAllocator allocator_;
  Scheduler scheduler_;  // engine thread only

  std::mutex mu_;
  std::condition_variable wake_;                         // work arrived or stop
  std::condition_variable idle_;                         // the engine went idle
  std::vector<std::unique_ptr<Sequence>> new_requests_;  // guarded by mu_
  std::vector<uint64_t> cancellations_;                  // guarded by mu_
  uint64_t next_id_ = 1;                                 // guarded by mu_
  int64_t in_flight_ = 0;                                // guarded by mu_
  bool accepting_ = true;                                // guarded by mu_
  std::atomic<int64_t> scheduler_waiting_{0};            // written by the engine thread
  bool stop_ = false;                                    // guarded by mu_
  std::mt19937 profile_rng_{0x9e3779b9};                 // engine thread only
  std::vector<EventDelivery::Outgoing> outbox_;          // engine thread only: not yet posted
  std::optional<SubmittedStep> in_flight_step_;          // engine thread only (async)
  Clock::time_point last_collect_end_;                   // engine thread only (async)
  EventDelivery delivery_;
  std::unique_ptr<StepWatchdog> watchdog_;  // when config_.step_timeout > 0
  std::thread thread_;
};

}  // namespace gqa
