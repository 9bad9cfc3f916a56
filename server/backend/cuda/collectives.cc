#include "backend/cuda/collectives.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "backend/cuda/device.h"
#include "common/status_macros.h"

#if GQA_WITH_NCCL
#include <nccl.h>
#endif

namespace gqa::cuda {

#if GQA_WITH_NCCL
namespace {

absl::StatusOr<ncclDataType_t> NcclType(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kF32:
      return ncclFloat32;
  }
  return absl::InvalidArgumentError(absl::StrCat("NCCL collectives take bf16, fp16 or fp32, not ",
                                                 std::string(DTypeName(dtype))));
}

}  // namespace

absl::Status NcclStatus(int result, const char* what) {
  if (result == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", ncclGetErrorString(static_cast<ncclResult_t>(result))));
}

absl::Status RankCollectives::Usable() const {
  if (!aborted_->load()) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat("NCCL rank ", rank_, " of ", world_size_,
                                         ": the communicators were aborted after a rank failed"));
}

absl::Status RankCollectives::AllReduceSum(void* buf, size_t count, DType dtype,
                                           cudaStream_t stream) const {
  ASSIGN_OR_RETURN(const ncclDataType_t type, NcclType(dtype));
  std::lock_guard<std::mutex> lock(*call_lock_);
  RETURN_IF_ERROR(Usable());
  ++queued_;
  return NcclStatus(ncclAllReduce(buf, buf, count, type, ncclSum, comm_, stream), "ncclAllReduce");
}

absl::Status RankCollectives::AllGather(const void* send, void* recv, size_t count_per_rank,
                                        DType dtype, cudaStream_t stream) const {
  ASSIGN_OR_RETURN(const ncclDataType_t type, NcclType(dtype));
  return AllGatherOf(send, recv, count_per_rank, type, stream);
}

absl::Status RankCollectives::AllGatherKeys(const uint64_t* send, uint64_t* recv,
                                            size_t count_per_rank, cudaStream_t stream) const {
  return AllGatherOf(send, recv, count_per_rank, ncclUint64, stream);
}

absl::Status RankCollectives::AllGatherOf(const void* send, void* recv, size_t count_per_rank,
                                          int nccl_type, cudaStream_t stream) const {
  std::lock_guard<std::mutex> lock(*call_lock_);
  RETURN_IF_ERROR(Usable());
  ++queued_;
  return NcclStatus(ncclAllGather(send, recv, count_per_rank,
                                  static_cast<ncclDataType_t>(nccl_type), comm_, stream),
                    "ncclAllGather");
}

absl::StatusOr<int64_t> RankCollectives::AllReduceMin(int64_t value, int64_t* scratch,
                                                      cudaStream_t stream) const {
  GQA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(scratch, &value, sizeof value, cudaMemcpyHostToDevice, stream));
  {  // the lock only around the call: never across the wait below, which an abort may end
    std::lock_guard<std::mutex> lock(*call_lock_);
    RETURN_IF_ERROR(Usable());
    ++queued_;
    RETURN_IF_ERROR(
        NcclStatus(ncclAllReduce(scratch, scratch, 1, ncclInt64, ncclMin, comm_, stream),
                   "ncclAllReduce (min)"));
  }
  GQA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&value, scratch, sizeof value, cudaMemcpyDeviceToHost, stream));
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return value;
}

absl::StatusOr<std::unique_ptr<NcclCommunicators>> NcclCommunicators::Create(int world_size) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL: ", world_size, " ranks"));
  }
  auto owner = std::unique_ptr<NcclCommunicators>(new NcclCommunicators());
  // Connect every peer now rather than at a communicator's first collective of a kind (NCCL
  // 2.22+; an operator's own setting wins): the first collectives then set nothing up inside a
  // decode graph's capture, and NCCL's buffers are already allocated when each rank sizes its
  // KV pool from the free memory.
  setenv("NCCL_RUNTIME_CONNECT", "0", /*overwrite=*/0);
  std::vector<ncclComm_t> comms(world_size, nullptr);
  // devlist null: devices 0..world_size-1, rank r on device r.
  RETURN_IF_ERROR(
      NcclStatus(ncclCommInitAll(comms.data(), world_size, nullptr), "ncclCommInitAll"));
  owner->comms_ = std::move(comms);
  for (int r = 0; r < world_size; ++r) {
    owner->call_locks_.push_back(std::make_unique<std::mutex>());
    owner->ranks_.emplace_back(owner->comms_[r], r, world_size, owner->call_locks_[r].get(),
                               &owner->aborted_);
  }
  return owner;
}

void NcclCommunicators::Abort() {
  if (aborted_.exchange(true)) return;
  for (size_t r = 0; r < comms_.size(); ++r) {
    std::lock_guard<std::mutex> lock(*call_locks_[r]);
    ncclCommAbort(comms_[r]);
  }
}

NcclCommunicators::~NcclCommunicators() {
  if (aborted_ || comms_.empty()) return;
  // One thread holds every rank: their finalizations go in one group (NCCL's rule for a thread
  // that manages several communicators), then each is freed.
  ncclGroupStart();
  for (ncclComm_t comm : comms_) ncclCommFinalize(comm);
  ncclGroupEnd();
  for (ncclComm_t comm : comms_) ncclCommDestroy(comm);
}

#else  // no NCCL in this build

absl::Status NcclStatus(int result, const char* what) {
  if (result == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": NCCL error ", result));
}

namespace {
absl::Status NoNccl() {
  return absl::FailedPreconditionError(
      "tensor parallelism: this build has no NCCL (configure with NCCL in the CUDA toolkit, or "
      "-DGQA_NCCL_LIBRARY=... -DGQA_NCCL_INCLUDE_DIR=...)");
}
}  // namespace

absl::Status RankCollectives::AllReduceSum(void*, size_t, DType, cudaStream_t) const {
  return NoNccl();
}
absl::Status RankCollectives::AllGather(const void*, void*, size_t, DType, cudaStream_t) const {
  return NoNccl();
}
absl::Status RankCollectives::AllGatherKeys(const uint64_t*, uint64_t*, size_t,
                                            cudaStream_t) const {
  return NoNccl();
}
absl::StatusOr<int64_t> RankCollectives::AllReduceMin(int64_t, int64_t*, cudaStream_t) const {
  return NoNccl();
}
absl::StatusOr<std::unique_ptr<NcclCommunicators>> NcclCommunicators::Create(int) {
  return NoNccl();
}
void NcclCommunicators::Abort() { aborted_ = true; }
absl::Status RankCollectives::Usable() const { return NoNccl(); }
NcclCommunicators::~NcclCommunicators() = default;

#endif

}  // namespace gqa::cuda
