// What the in-process engine tests share: a collector of every request's events, and a fake
// backend that keeps block tables from the plans' deltas (refusing a step whose tables do not
// cover its chunks) and samples a fixed token, failing the steps it is told to.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "backend/backend.h"
#include "engine/request.h"

namespace gqa::testing {

// Collects every request's tokens, finish, usage and error, and waits for them.
class EventCollector {
 public:
  struct Result {
    std::vector<int32_t> tokens;
    std::optional<FinishReason> finish;
    int preemptions = 0;
    int cached_prompt_tokens = -1;
    std::optional<std::string> error;
    absl::StatusCode error_code = absl::StatusCode::kOk;
  };

  EventSink SinkFor(const std::string& id) {
    return [this, id](TokenEvent e) {
      std::lock_guard lock(mu_);
      Result& r = results_[id];
      r.tokens.insert(r.tokens.end(), e.new_tokens.begin(), e.new_tokens.end());
      if (!e.error.ok()) {
        r.error = std::string(e.error.message());
        r.error_code = e.error.code();
      }
      if (e.finish) {
        r.finish = *e.finish;
        r.preemptions = e.preemptions;
        r.cached_prompt_tokens = e.cached_prompt_tokens;
        ++finished_;
        cv_.notify_all();
      }
    };
  }
  void WaitFor(int n) {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(120), [&] { return finished_ >= n; }));
  }
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

// The Backend boilerplate of a fake: a small KV spec, block tables kept from the deltas, no
// profiling. Subclasses compute a step in Run.
class FakeBackendBase : public Backend {
 public:
  explicit FakeBackendBase(int num_blocks = 64, int block_size = 4) : tables_(256, 256) {
    spec_.block_size = block_size;
    spec_.num_blocks = num_blocks;
    spec_.num_kv_heads = 1;
    spec_.head_dim = 8;
    spec_.num_layers = 1;
  }
  std::string_view name() const override { return "fake"; }
  std::string device_name() const override { return "fake"; }
  const KvCacheSpec& kv_spec() const override { return spec_; }
  uint64_t weight_bytes_per_step() const override { return 1000; }
  absl::StatusOr<double> MeasureReadBandwidth() override { return 1e6; }
  void ProfileNextStep() override {}
  std::optional<StepTiming> LastStepTiming() const override { return std::nullopt; }
  absl::StatusOr<std::vector<float>> LogitsToHost() override { return std::vector<float>{}; }

  absl::StatusOr<StepOutput> ExecuteStep(const StepPlan& plan) override {
    if (absl::Status st = tables_.Apply(plan.tables); !st.ok()) return st;
    for (const ScheduledSeq& s : plan.seqs) {
      const int slot = tables_.SlotOf(s.seq_id);
      const int needed =
          (s.start_pos + int(s.chunk.size()) + spec_.block_size - 1) / spec_.block_size;
      if (slot < 0 || tables_.NumBlocks(slot) < needed) {
        return absl::InternalError(
            absl::StrCat("fake backend: sequence ", s.seq_id, " lacks cache blocks"));
      }
    }
    return Run(plan);
  }
  const BlockTables& tables() const { return tables_; }

 protected:
  virtual absl::StatusOr<StepOutput> Run(const StepPlan& plan) = 0;
  // An output with `token` for every sampling sequence and no logprobs.
  static StepOutput FixedTokens(const StepPlan& plan, int32_t token) {
    StepOutput out;
    for (const ScheduledSeq& s : plan.seqs) {
      if (s.samples) out.sampled.push_back(token);
    }
    return out;
  }

  KvCacheSpec spec_;
  BlockTables tables_;
};

// Samples token 5 for every row and fails the steps it is told to (counted from 1); a failure
// may leave it broken (a sticky device error). A profiled step takes 3 ms on the "device", 1 ms
// of it in attention.
class FakeBackend final : public FakeBackendBase {
 public:
  FakeBackend(std::vector<int> failing_steps, bool sticky,
              absl::StatusCode failure_code = absl::StatusCode::kInternal)
      : failing_steps_(std::move(failing_steps)), sticky_(sticky), failure_code_(failure_code) {}
  bool broken() const override { return broken_; }
  void ProfileNextStep() override { profile_next_ = true; }
  std::optional<StepTiming> LastStepTiming() const override {
    if (!profiled_) return std::nullopt;
    return StepTiming{0.003, 0.001};
  }

 private:
  absl::StatusOr<StepOutput> Run(const StepPlan& plan) override {
    ++step_;
    profiled_ = std::exchange(profile_next_, false);
    if (std::find(failing_steps_.begin(), failing_steps_.end(), step_) != failing_steps_.end()) {
      profiled_ = false;
      broken_ = sticky_;
      return absl::Status(failure_code_, "injected device failure");
    }
    return FixedTokens(plan, 5);
  }

  bool profile_next_ = false;
  bool profiled_ = false;
  std::vector<int> failing_steps_;
  bool sticky_;
  absl::StatusCode failure_code_;
  bool broken_ = false;
  int step_ = 0;
};

}  // namespace gqa::testing
