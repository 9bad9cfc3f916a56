// NCCL communicators for the ranks of one process (tensor parallelism, docs/tensor-parallel.md):
// one communicator per GPU 0..N-1, made together by ncclCommInitAll, each then driven by its own
// rank's thread on that rank's stream. NCCL is the transport; nothing here moves bytes itself.
// Builds without NCCL compile this too: Create then refuses, naming what is missing.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
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
  // `call_lock` is held across each NCCL call on `comm` (and across its abort); once `aborted`
  // is set every call fails at once instead of touching the freed communicator.
  RankCollectives(ncclComm_t comm, int rank, int world_size, std::mutex* call_lock,
                  const std::atomic<bool>* aborted)
      : comm_(comm),
        rank_(rank),
        world_size_(world_size),
        call_lock_(call_lock),
        aborted_(aborted) {}
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  // Collectives this rank has queued, each call and each replay of a graph holding some
  // (NoteGraphLaunch): how far it has gone, which RankThreads compares across ranks before it
  // calls a failure that every rank returned "alike". Read and written by the rank's thread only.
  uint64_t collectives_queued() const { return queued_; }
  void NoteGraphLaunch() const { ++queued_; }

  // buf = the sum of every rank's buf, in place, in `dtype` (kBF16, kF16 or kF32).
  absl::Status AllReduceSum(void* buf,  // [count] of dtype
                            size_t count, DType dtype, cudaStream_t stream) const;
  // recv = every rank's send, back to back in rank order.
  absl::Status AllGather(const void* send,  // [count_per_rank] of dtype
                         void* recv,        // [world_size, count_per_rank] of dtype
                         size_t count_per_rank, DType dtype, cudaStream_t stream) const;
  // recv = every rank's keys, back to back in rank order (unsigned 64-bit: the samplers' keys).
  absl::Status AllGatherKeys(const uint64_t* send,  // [count_per_rank]
                             uint64_t* recv,        // [world_size, count_per_rank]
                             size_t count_per_rank, cudaStream_t stream) const;
  // The smallest of every rank's `value`, through `scratch` (8 device bytes), waited for: ranks
  // that sized something alike on their own (their KV pools) agree on one size.
  absl::StatusOr<int64_t> AllReduceMin(int64_t value,
                                       int64_t* scratch,  // [1], device memory of this rank
                                       cudaStream_t stream) const;

 private:
  // OK, or why no collective may start: the communicators were aborted. Call with call_lock_.
  absl::Status Usable() const;
  // The all-gathers, with nccl_type an ncclDataType_t (nccl.h stays out of this header).
  absl::Status AllGatherOf(const void* send, void* recv, size_t count_per_rank, int nccl_type,
                           cudaStream_t stream) const;

  ncclComm_t comm_;
  int rank_;
  int world_size_;
  std::mutex* call_lock_;             // the owner's, one per communicator
  const std::atomic<bool>* aborted_;  // the owner's
  mutable uint64_t queued_ = 0;       // see collectives_queued()
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
  // (their streams then report errors instead of hanging). Each communicator is aborted under its
  // call lock, so no rank thread is inside an NCCL call on it; afterwards every collective fails
  // at once, and the destructor frees nothing more. Called from any thread, while the rank
  // threads may be waiting on their streams.
  void Abort();
  bool aborted() const { return aborted_.load(); }

 private:
  NcclCommunicators() = default;
  std::vector<ncclComm_t> comms_;
  std::vector<std::unique_ptr<std::mutex>> call_locks_;  // one per communicator
  std::vector<RankCollectives> ranks_;
  std::atomic<bool> aborted_{false};
};

// "what: <ncclGetErrorString>" as INTERNAL; OK for ncclSuccess (`result` is an ncclResult_t).
absl::Status NcclStatus(int result, const char* what);

}  // namespace gqa::cuda
