#include "backend/backend.h"

namespace gqa {

absl::Status Backend::SubmitStep(const StepPlan& plan) {
  if (submitted_.size() >= kMaxStepsInFlight) {
    return absl::FailedPreconditionError("SubmitStep: two steps are in flight already");
  }
  absl::StatusOr<StepOutput> out = ExecuteStep(plan);
  if (out.ok()) {
    submitted_.push_back({absl::OkStatus(), *std::move(out), LastStepTiming()});
  } else {
    submitted_.push_back({out.status(), StepOutput{}, std::nullopt});
  }
  return absl::OkStatus();
}

absl::StatusOr<StepOutput> Backend::CollectStep() {
  if (submitted_.empty()) return absl::FailedPreconditionError("CollectStep: no step in flight");
  ComputedStep step = std::move(submitted_.front());
  submitted_.pop_front();
  default_collected_ = true;
  default_timing_ = step.timing;
  if (!step.status.ok()) return step.status;
  return std::move(step.output);
}

}  // namespace gqa
