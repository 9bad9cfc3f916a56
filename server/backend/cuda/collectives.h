// NCCL communicators for the ranks of one process (tensor parallelism, docs/tensor-parallel.md):
// one communicator per GPU 0..N-1, made together by ncclCommInitAll, each then driven by its own
// rank's thread on that rank's stream. NCCL is the transport; nothing here moves bytes itself.
// Builds without NCCL compile this too: Create then refuses, naming what is missing.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/dtype.h"

// nccl.h's own declaration of the communicator handle (so that this header needs no nccl.h).
typedef struct ncclComm* ncclComm_t;

namespace gqa::cuda {

// One rank's communicator: the collectives it takes part in. Every rank must issue the same
// collectives in the same order, each on its own stream; a call only queues the work there
// (it is also captured into a CUDA graph when the stream is capturing).
class RankCollectives {
 public:
  RankCollectives(ncclComm_t comm, int rank, int world_size)
      : comm_(comm), rank_(rank), world_size_(world_size) {}
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  // buf = the sum of every rank's buf, in place, in `dtype` (kBF16, kF16 or kF32).
  absl::Status AllReduceSum(void* buf,  // [count] of dtype
                            size_t count, DType dtype, cudaStream_t stream) const;
  // recv = every rank's send, back to back in rank order.
  absl::Status AllGather(const void* send,  // [count_per_rank] of dtype
                         void* recv,        // [world_size, count_per_rank] of dtype
                         size_t count_per_rank, DType dtype, cudaStream_t stream) const;
  // The smallest of every rank's `value`, through `scratch` (8 device bytes), waited for: ranks
  // that sized something alike on their own (their KV pools) agree on one size.
  absl::StatusOr<int64_t> AllReduceMin(int64_t value,
                                       int64_t* scratch,  // [1], device memory of this rank
                                       cudaStream_t stream) const;

 private:
  ncclComm_t comm_;
  int rank_;
  int world_size_;
};

// The owner of N communicators over GPUs 0..N-1: made by ncclCommInitAll (from one thread: it
// sets up every device itself), finalized and destroyed together, or aborted on a failure path.
class NcclCommunicators {
 public:
  static absl::StatusOr<std::unique_ptr<NcclCommunicators>> Create(int world_size);
  ~NcclCommunicators();
  NcclCommunicators(const NcclCommunicators&) = delete;
  NcclCommunicators& operator=(const NcclCommunicators&) = delete;

  int world_size() const { return static_cast<int>(comms_.size()); }
  RankCollectives* rank(int r) { return &ranks_[r]; }
  // ncclCommAbort on every communicator: stops collectives that wait for a rank that failed
  // (their streams then report errors instead of hanging). Afterwards every collective fails;
  // the destructor frees nothing more. Called from the thread that owns this object, while the
  // rank threads may be waiting on their streams.
  void Abort();
  bool aborted() const { return aborted_; }

 private:
  NcclCommunicators() = default;
  std::vector<ncclComm_t> comms_;
  std::vector<RankCollectives> ranks_;
  bool aborted_ = false;
};

// "what: <ncclGetErrorString>" as INTERNAL; OK for ncclSuccess (`result` is an ncclResult_t).
absl::Status NcclStatus(int result, const char* what);

}  // namespace gqa::cuda
