// The collectives of one tensor-parallel decode step, timed alone on `world_size` GPUs (issue
// 20's "all-reduce time per step"): the embedding's all-reduce and two per layer (after O and
// after down), each of batch x hidden values in the compute dtype, then the sampling's
// all-gather: greedy, each row's best key (8 bytes per row per rank), else the whole logits
// (batch x ceil(vocab / world_size) fp32 values per rank): what the CUDA backend's rank issues
// (docs/tensor-parallel.md). Captured into one CUDA graph per rank and replayed (the served
// step replays the all-reduces in its graph and issues the sampling's all-gather after it,
// eagerly, with a kernel on either side: a few launches more than this measures).
// `gqa-bench decode --tensor_parallel_size N` prints it under each tensor-parallel row.
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/dtype.h"

namespace gqa::bench {

struct StepCollectivesTiming {
  double ms = 0;                // one step's collectives: the slowest rank's median replay
  int all_reduces = 0;          // per step
  size_t all_reduce_bytes = 0;  // each
  size_t all_gather_bytes = 0;  // each rank's part
};

absl::StatusOr<StepCollectivesTiming> TimeStepCollectives(const ModelConfig& config, DType dtype,
                                                          int world_size, int batch, bool greedy,
                                                          int replays);

}  // namespace gqa::bench
