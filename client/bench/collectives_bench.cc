#include "collectives_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "backend/cuda/collectives.h"
#include "backend/rank_threads.h"
#include "common/status_macros.h"

namespace gqa::bench {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// What one step moves, in elements.
struct StepShape {
  int all_reduces = 0;
  size_t hidden_count = 0;   // batch x hidden, per all-reduce
  size_t gather_bytes = 0;   // each rank's part: batch keys, or batch x ceil(vocab / world_size)
  bool gather_keys = false;  // true: 64-bit keys (greedy), false: fp32 logits
  DType dtype = DType::kBF16;
};

// One rank's stream, buffers, graph and events; made, used and freed on the rank's thread.
class RankState {
 public:
  ~RankState() {
    if (graph_) cudaGraphExecDestroy(graph_);
    for (cudaEvent_t e : {start_, stop_}) {
      if (e) cudaEventDestroy(e);
    }
    for (void* p : {hidden_, gather_send_, gathered_}) cudaFree(p);
    if (stream_) cudaStreamDestroy(stream_);
  }

  absl::Status Init(const StepShape& shape, int world_size) {
    RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream"));
    RETURN_IF_ERROR(Cuda(cudaEventCreate(&start_), "event"));
    RETURN_IF_ERROR(Cuda(cudaEventCreate(&stop_), "event"));
    RETURN_IF_ERROR(
        Cuda(cudaMalloc(&hidden_, shape.hidden_count * DTypeSize(shape.dtype)), "cudaMalloc"));
    RETURN_IF_ERROR(Cuda(cudaMalloc(&gather_send_, shape.gather_bytes), "cudaMalloc"));
    RETURN_IF_ERROR(Cuda(cudaMalloc(&gathered_, shape.gather_bytes * world_size), "cudaMalloc"));
    RETURN_IF_ERROR(
        Cuda(cudaMemset(hidden_, 0, shape.hidden_count * DTypeSize(shape.dtype)), "cudaMemset"));
    return Cuda(cudaMemset(gather_send_, 0, shape.gather_bytes), "cudaMemset");
  }

  // Captures the step's collectives (every rank captures at once: NCCL needs all of them).
  absl::Status Capture(const cuda::RankCollectives& c, const StepShape& shape) {
    RETURN_IF_ERROR(Cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                         "cudaStreamBeginCapture"));
    absl::Status issued = Issue(c, shape);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    RETURN_IF_ERROR(issued);
    RETURN_IF_ERROR(Cuda(ended, "cudaStreamEndCapture"));
    const cudaError_t made = cudaGraphInstantiate(&graph_, graph, 0);
    cudaGraphDestroy(graph);
    return Cuda(made, "cudaGraphInstantiate");
  }

  // The median of `replays` timed replays, after three untimed ones (every rank replays at
  // once: each replay's collectives wait for every rank's).
  absl::StatusOr<double> TimeReplays(int replays) {
    for (int i = 0; i < 3; ++i) RETURN_IF_ERROR(Cuda(cudaGraphLaunch(graph_, stream_), "launch"));
    RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "warm-up"));
    std::vector<double> ms;
    for (int i = 0; i < replays; ++i) {
      RETURN_IF_ERROR(Cuda(cudaEventRecord(start_, stream_), "cudaEventRecord"));
      RETURN_IF_ERROR(Cuda(cudaGraphLaunch(graph_, stream_), "cudaGraphLaunch"));
      RETURN_IF_ERROR(Cuda(cudaEventRecord(stop_, stream_), "cudaEventRecord"));
      RETURN_IF_ERROR(Cuda(cudaEventSynchronize(stop_), "cudaEventSynchronize"));
      float elapsed = 0;
      RETURN_IF_ERROR(Cuda(cudaEventElapsedTime(&elapsed, start_, stop_), "elapsed"));
      ms.push_back(elapsed);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }

 private:
  absl::Status Issue(const cuda::RankCollectives& c, const StepShape& shape) {
    for (int i = 0; i < shape.all_reduces; ++i) {
      RETURN_IF_ERROR(c.AllReduceSum(hidden_, shape.hidden_count, shape.dtype, stream_));
    }
    if (shape.gather_keys) {
      return c.AllGatherKeys(static_cast<const uint64_t*>(gather_send_),
                             static_cast<uint64_t*>(gathered_),
                             shape.gather_bytes / sizeof(uint64_t), stream_);
    }
    return c.AllGather(gather_send_, gathered_, shape.gather_bytes / sizeof(float), DType::kF32,
                       stream_);
  }

  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  void* hidden_ = nullptr;       // [batch, hidden] of dtype
  void* gather_send_ = nullptr;  // [batch] keys, or [batch, ceil(vocab / world_size)] fp32
  void* gathered_ = nullptr;     // [world_size, that]
  cudaGraphExec_t graph_ = nullptr;
};

}  // namespace

absl::StatusOr<StepCollectivesTiming> TimeStepCollectives(const ModelConfig& config, DType dtype,
                                                          int world_size, int batch, bool greedy,
                                                          int replays) {
  const size_t vocab_per_rank = (config.vocab_size + world_size - 1) / world_size;
  const StepShape shape{.all_reduces = 2 * config.num_layers + 1,
                        .hidden_count = size_t(batch) * config.hidden_size,
                        .gather_bytes = greedy ? size_t(batch) * sizeof(uint64_t)
                                               : size_t(batch) * vocab_per_rank * sizeof(float),
                        .gather_keys = greedy,
                        .dtype = dtype};
  ASSIGN_OR_RETURN(auto communicators, cuda::NcclCommunicators::Create(world_size));
  std::vector<std::unique_ptr<RankState>> ranks(world_size);
  std::vector<double> ms(world_size);
  RankThreads threads(world_size, [](int r) { return Cuda(cudaSetDevice(r), "cudaSetDevice"); });
  const auto abort = [&] { communicators->Abort(); };
  absl::Status timed = threads.OnEveryRank(
      [&](int r) -> absl::Status {
        ranks[r] = std::make_unique<RankState>();
        RETURN_IF_ERROR(ranks[r]->Init(shape, world_size));
        RETURN_IF_ERROR(ranks[r]->Capture(*communicators->rank(r), shape));
        ASSIGN_OR_RETURN(ms[r], ranks[r]->TimeReplays(replays));
        return absl::OkStatus();
      },
      abort, std::chrono::minutes(2));
  (void)threads.OnEveryRank(  // each rank's buffers freed on its own thread
      [&](int r) {
        ranks[r].reset();
        return absl::OkStatus();
      },
      nullptr);
  RETURN_IF_ERROR(timed);
  return StepCollectivesTiming{.ms = *std::max_element(ms.begin(), ms.end()),
                               .all_reduces = shape.all_reduces,
                               .all_reduce_bytes = shape.hidden_count * DTypeSize(dtype),
                               .all_gather_bytes = shape.gather_bytes};
}

}  // namespace gqa::bench
