// What the in-process engine tests share: a collector of every request's events, and fake
// backends that keep block tables from the plans' deltas (refusing a step whose tables do not
// cover its chunks): one samples a fixed token, failing the steps it is told to; the other runs
// steps asynchronously (async scheduling) and checks that no block is freed under a step.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "backend/backend.h"
#include "engine/block_allocator.h"
#include "engine/request.h"
#include "gqa/kernels/sampling.h"

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
  // Its block tables hold `max_seqs` sequences (the engine's max_num_seqs, as a real backend's).
  explicit FakeBackendBase(int num_blocks = 64, int block_size = 4, int max_seqs = 256)
      : tables_(max_seqs, 256) {
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

// A backend whose steps run "on a device" between SubmitStep and CollectStep: SubmitStep checks
// and computes the step at once (as a device would, ahead of the host), then waits
// `submit_delay`; CollectStep waits `collect_delay` (the host waiting for the device) and hands
// the oldest step's output back. Its token for a sequence is a hash of every token the sequence
// computed, kept in a fake KV cache (placeholders read from the previous step's sampled rows,
// as the GPU does), its seed and its sampling step: any wrong input, order or counter changes what
// follows. Given the engine's allocator (Watch), it fails a step when a block that a step in flight
// writes was freed, or given to another sequence, before that step was collected.
class AsyncFakeBackend final : public FakeBackendBase {
 public:
  AsyncFakeBackend(int num_blocks, std::chrono::microseconds submit_delay,
                   std::chrono::microseconds collect_delay, int max_seqs = 256)
      : FakeBackendBase(num_blocks, 4, max_seqs),
        submit_delay_(submit_delay),
        collect_delay_(collect_delay) {}
  // Called on the engine thread only (Submit and Collect); set before the engine starts.
  void Watch(const BlockAllocator* allocator) { allocator_ = allocator; }

  absl::Status SubmitStep(const StepPlan& plan) override {
    if (in_flight_.size() >= kMaxStepsInFlight) {
      return absl::FailedPreconditionError("fake: a third step submitted");
    }
    if (absl::Status st = CheckNothingInFlightFreed(&plan); !st.ok()) return st;
    InFlight step;
    step.output = ExecuteStep(plan);  // applies the deltas, checks the tables, then Run
    for (const ScheduledSeq& s : plan.seqs) {
      const std::span<const int32_t> row = tables_.Row(tables_.SlotOf(s.seq_id));
      for (int p = s.start_pos; p < s.start_pos + int(s.chunk.size()); ++p) {
        step.writes.push_back({s.seq_id, row[p / spec_.block_size]});
      }
    }
    in_flight_.push_back(std::move(step));
    std::this_thread::sleep_for(submit_delay_);
    return absl::OkStatus();
  }
  absl::StatusOr<StepOutput> CollectStep() override {
    if (in_flight_.empty()) return absl::FailedPreconditionError("fake: nothing to collect");
    std::this_thread::sleep_for(collect_delay_);
    if (absl::Status st = CheckNothingInFlightFreed(nullptr); !st.ok()) return st;
    absl::StatusOr<StepOutput> out = std::move(in_flight_.front().output);
    in_flight_.pop_front();
    ++collected_;
    return out;
  }
  int max_in_flight() const { return max_in_flight_; }
  int collected() const { return collected_; }

 private:
  struct Write {
    uint64_t seq_id;
    int32_t block;
  };
  struct InFlight {
    absl::StatusOr<StepOutput> output;
    std::vector<Write> writes;  // the blocks the step writes K/V into, by sequence
  };

  absl::StatusOr<StepOutput> Run(const StepPlan& plan) override {
    max_in_flight_ = std::max(max_in_flight_, int(in_flight_.size()) + 1);
    absl::StatusOr<std::vector<int32_t>> tokens = ResolvedTokens(plan.seqs, previous_sampled_);
    if (!tokens.ok()) return tokens.status();
    StepOutput out;
    size_t flat = 0;
    for (const ScheduledSeq& s : plan.seqs) {
      const std::span<const int32_t> row = tables_.Row(tables_.SlotOf(s.seq_id));
      auto kv_slot = [&](int pos) {
        return size_t(row[pos / spec_.block_size]) * spec_.block_size + pos % spec_.block_size;
      };
      uint64_t h = 0;
      for (size_t t = 0; t < s.chunk.size(); ++t, ++flat) {
        if ((*tokens)[flat] < 0) return absl::InternalError("fake: an unresolved placeholder");
        const int pos = s.start_pos + int(t);
        h = pos == 0 ? 0x9e3779b97f4a7c15ull : kv_[kv_slot(pos - 1)];
        h = (h ^ uint64_t((*tokens)[flat])) * 0x100000001b3ull;
        kv_[kv_slot(pos)] = h;
      }
      if (!s.samples) continue;
      const uint64_t z = kernels::SamplingMix(h ^ kernels::SamplingMix(s.sampling.seed) ^
                                              (s.sampling.step * 0x2545f4914f6cdd1dull));
      out.sampled.push_back(2 + int32_t(z % 24));
    }
    if (!plan.seqs.empty()) previous_sampled_ = out.sampled;
    return out;
  }

  // Every block a step in flight writes is still held, and by no new row of another sequence.
  absl::Status CheckNothingInFlightFreed(const StepPlan* next) const {
    for (const InFlight& step : in_flight_) {
      for (const Write& w : step.writes) {
        if (allocator_ != nullptr && allocator_->ref_count(w.block) == 0) {
          return absl::InternalError(absl::StrCat("fake: block ", w.block, " of sequence ",
                                                  w.seq_id, " freed while its step runs"));
        }
        for (const BlockTableRow& row : next ? next->tables.rows : std::vector<BlockTableRow>{}) {
          if (row.seq_id != w.seq_id &&
              std::find(row.blocks.begin(), row.blocks.end(), w.block) != row.blocks.end()) {
            return absl::InternalError(absl::StrCat("fake: block ", w.block, " of sequence ",
                                                    w.seq_id, " given to sequence ", row.seq_id,
                                                    " while its step runs"));
          }
        }
      }
    }
    return absl::OkStatus();
  }

  std::chrono::microseconds submit_delay_, collect_delay_;
  const BlockAllocator* allocator_ = nullptr;
  std::deque<InFlight> in_flight_;
  std::vector<int32_t> previous_sampled_;
  // The "KV cache": at each token's slot, a hash of the sequence's tokens up to it (read back
  // through the block tables, so a prefix-cache hit or a recomputation reads what was written).
  std::vector<uint64_t> kv_ = std::vector<uint64_t>(size_t(spec_.num_blocks) * spec_.block_size);
  int max_in_flight_ = 0;
  int collected_ = 0;
};

}  // namespace gqa::testing
