// What one engine step did and what it had to cost: the plain value the engine hands to the
// metrics after every step (they never read engine state).
#pragma once

#include <cstdint>
#include <optional>

#include "backend/backend.h"
#include "engine/scheduler.h"

namespace gqa {

// What the roofline needs to know about the model being served.
struct StepCostModel {
  uint64_t weight_bytes = 0;        // read by every step (Backend::weight_bytes_per_step)
  uint64_t kv_bytes_per_token = 0;  // K and V, every layer
  int attention_window = 0;         // > 0: sliding window (tokens)
};

struct StepStats {
  StepPhase phase = StepPhase::kDecode;
  int decoding = 0;       // sequences computing one new token
  int prefilling = 0;     // sequences computing prompt tokens (or recomputing after preemption)
  int resumed = 0;        // sequences back from preemption in their first chunk (prefilling, or
                          // decoding when the prefix cache held all but their last token)
  int decode_tokens = 0;  // tokens scheduled, by kind
  int prefill_tokens = 0;
  uint64_t weight_bytes = 0;  // bytes the step must read, by kind
  uint64_t kv_bytes = 0;
  int prefix_cache_queried_tokens = 0;  // tokens of the sequences admitted (caching on)
  int prefix_cache_hit_tokens = 0;      // of those, found in the prefix cache
  double wall_seconds = 0;              // schedule to last token emitted, on the host
  std::optional<StepTiming> device;     // profiled steps only
  int num_sequences() const { return decoding + prefilling; }
  int num_tokens() const { return decode_tokens + prefill_tokens; }
  uint64_t read_bytes() const { return weight_bytes + kv_bytes; }
};

// The step `out` describes (each chunk's start: its facts, or, made by hand, its sequence's
// computed count before Scheduler::Commit).
// Leaves the timings empty.
StepStats DescribeStep(const SchedulerOutput& out, const StepCostModel& cost);

}  // namespace gqa
