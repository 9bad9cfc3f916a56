// The interface the engine drives: one ExecuteStep (or SubmitStep, later CollectStep) per engine
// step (backend/step_plan.h: the chunks to compute, the block-table deltas; the sampled tokens and
// logprobs back). CpuBackend and CudaBackend implement it.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "backend/kv_cache_spec.h"
#include "backend/step_plan.h"

namespace gqa {

// Device time of one profiled step, measured where the work ran (CUDA events on the GPU, the
// steady clock on the CPU).
struct StepTiming {
  double step_seconds = 0;       // the step's forward and sampling, first kernel to last
  double attention_seconds = 0;  // summed over layers: K/V append and attention
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // What it computes on, e.g. "NVIDIA H100 80GB HBM3", for the startup line and model info.
  virtual std::string device_name() const = 0;
  // The KV pool; its dtype is the backend's activation dtype.
  virtual const KvCacheSpec& kv_spec() const = 0;
  // Device memory by kind (weights, kv, workspace, graphs), in bytes; empty on the CPU.
  virtual std::vector<std::pair<std::string, uint64_t>> memory_by_kind() const { return {}; }
  // GPUs the model is split across (--tensor_parallel_size). Above 1, kv_spec() and
  // memory_by_kind() are one rank's: its KV heads, its pool, its GPU's memory.
  virtual int tensor_parallel_size() const { return 1; }
  // True after an error that leaves the device unusable: the process should exit and be
  // restarted. Every later step fails.
  virtual bool broken() const { return false; }
  // Bytes of weights one step reads: every matrix once as the backend stores it (the embedding
  // table only through the lm_head); see backend/roofline.h.
  virtual uint64_t weight_bytes_per_step() const = 0;
  // The memory bandwidth the roofline divides by, in bytes per second: on a GPU a
  // device-to-device copy (bytes read plus written, as gqa-bench) measured once when the backend
  // is created, before the KV pool takes the memory; on the CPU a parallel read, measured now.
  virtual absl::StatusOr<double> MeasureReadBandwidth() = 0;

  // Times the next ExecuteStep on the device; LastStepTiming() has the result once it returns.
  // Steps not asked for are not timed and cost nothing extra.
  virtual void ProfileNextStep() = 0;
  // The timing of the last step when it was profiled; nullopt otherwise.
  virtual std::optional<StepTiming> LastStepTiming() const = 0;

  // Applies the plan's block-table deltas, appends every chunk token's K/V to the cache, samples
  // one token per sampling sequence and computes the logprobs asked for (where the logits are:
  // on the GPU only the results cross to the host). The deltas are applied even when the step
  // then fails; a plan without sequences only applies them. SubmitStep then CollectStep.
  virtual absl::StatusOr<StepOutput> ExecuteStep(const StepPlan& plan) = 0;

  // Async scheduling: SubmitStep launches the plan's step and returns without waiting for it
  // where the device allows (the GPU); CollectStep waits for the oldest step submitted and
  // returns its output (or its failure). At most kMaxStepsInFlight steps are submitted and not
  // collected; a plan's placeholder tokens (ScheduledSeq::placeholder_sample_row) read the step
  // submitted just before it. The default computes the whole step in SubmitStep (ExecuteStep),
  // which suits a backend that computes on the host: its results are the same either way.
  static constexpr int kMaxStepsInFlight = 2;
  // True when SubmitStep returns before the step is computed (the GPU); false for the default,
  // which computes it in SubmitStep.
  virtual bool SubmitReturnsEarly() const { return false; }
  virtual absl::Status SubmitStep(const StepPlan& plan);
  virtual absl::StatusOr<StepOutput> CollectStep();
  // The timing of the step CollectStep returned last, when it was profiled: with the default
  // SubmitStep, LastStepTiming() may already be the next step's.
  std::optional<StepTiming> CollectedStepTiming() const {
    return default_collected_ ? default_timing_ : LastStepTiming();
  }

  // The last step's logits, [rows, vocab] laid out as LogitsRowOfTokens says (tests and tools).
  virtual absl::StatusOr<std::vector<float>> LogitsToHost() = 0;

 private:
  // The default SubmitStep's results: a failure, or OK, the output and the step's timing.
  struct ComputedStep {
    absl::Status status;
    StepOutput output;
    std::optional<StepTiming> timing;
  };
  std::deque<ComputedStep> submitted_;
  bool default_collected_ = false;  // the default CollectStep ran
  std::optional<StepTiming> default_timing_;
};

}  // namespace gqa
