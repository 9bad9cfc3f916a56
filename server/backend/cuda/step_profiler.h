// Device timing of profiled steps: CUDA events at the step's start and end and around each
// layer's attention (K/V append and attention kernels), recorded on the stream, also from inside
// a captured graph (as event record nodes), and read once the step has been synchronized.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "backend/cuda/device.h"

namespace gqa::cuda {

class StepProfiler {
 public:
  StepProfiler() = default;
  static absl::StatusOr<StepProfiler> Create(int num_layers);

  cudaError_t RecordStepStart(cudaStream_t stream) const { return Record(step_start_, stream); }
  cudaError_t RecordStepEnd(cudaStream_t stream) const { return Record(step_end_, stream); }
  cudaError_t RecordAttentionBegin(int layer, cudaStream_t stream) const {
    return Record(attention_begin_[layer], stream);
  }
  cudaError_t RecordAttentionEnd(int layer, cudaStream_t stream) const {
    return Record(attention_end_[layer], stream);
  }
  // The last recorded step's timing; call after the stream has passed RecordStepEnd.
  absl::StatusOr<StepTiming> Read() const;

 private:
  // Inside a stream capture the record must be external to become a graph node that records
  // the event on every replay (a plain one would only express a dependency); outside a capture
  // the external flag is refused (cudaErrorIllegalState).
  static cudaError_t Record(const CudaEvent& event, cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaError_t e = cudaStreamIsCapturing(stream, &capture); e != cudaSuccess) return e;
    return capture == cudaStreamCaptureStatusActive
               ? cudaEventRecordWithFlags(event.get(), stream, cudaEventRecordExternal)
               : cudaEventRecord(event.get(), stream);
  }

  CudaEvent step_start_, step_end_;
  std::vector<CudaEvent> attention_begin_, attention_end_;  // [num_layers]
};

}  // namespace gqa::cuda
