#include "backend/cuda/step_profiler.h"

#include "common/status_macros.h"

namespace gqa::cuda {
namespace {

absl::StatusOr<double> ElapsedSeconds(const CudaEvent& start, const CudaEvent& stop) {
  float ms = 0;
  GQA_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.get(), stop.get()));
  return ms * 1e-3;
}

}  // namespace

absl::StatusOr<StepProfiler> StepProfiler::Create(int num_layers) {
  StepProfiler p;
  ASSIGN_OR_RETURN(p.step_start_, CudaEvent::Create(EventTiming::kEnabled));
  ASSIGN_OR_RETURN(p.step_end_, CudaEvent::Create(EventTiming::kEnabled));
  for (int l = 0; l < num_layers; ++l) {
    ASSIGN_OR_RETURN(CudaEvent begin, CudaEvent::Create(EventTiming::kEnabled));
    ASSIGN_OR_RETURN(CudaEvent end, CudaEvent::Create(EventTiming::kEnabled));
    p.attention_begin_.push_back(std::move(begin));
    p.attention_end_.push_back(std::move(end));
  }
  return p;
}

absl::StatusOr<StepTiming> StepProfiler::Read() const {
  StepTiming timing;
  ASSIGN_OR_RETURN(timing.step_seconds, ElapsedSeconds(step_start_, step_end_));
  for (size_t l = 0; l < attention_begin_.size(); ++l) {
    ASSIGN_OR_RETURN(const double seconds, ElapsedSeconds(attention_begin_[l], attention_end_[l]));
    timing.attention_seconds += seconds;
  }
  return timing;
}

}  // namespace gqa::cuda
