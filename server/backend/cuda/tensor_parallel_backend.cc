#include "backend/cuda/tensor_parallel_backend.h"

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "backend/cuda/collectives.h"
#include "backend/rank_threads.h"
#include "common/status_macros.h"
#include "model/tensor_parallel.h"
#include "options/serving_options.h"
#include "spdlog/spdlog.h"

namespace gqa {
namespace {

// The ranks' watchdog on every call after start-up: a step (a prefill chunk of 16k tokens of a
// 70B model takes seconds) that has not ended on every rank by then has a rank hung in a
// collective. Half the engine's --step_timeout_seconds (auto: 60 of 120 s), so that the ranks'
// abort fails the step cleanly before the engine's watchdog exits the process; none when that is
// off. Start-up (loading weights, capturing graphs) has none.
std::chrono::milliseconds RankStepDeadline(const BackendOptions& backend) {
  const int engine_seconds = StepTimeoutSeconds(backend, "cuda");
  if (engine_seconds <= 0) return RankThreads::kNoDeadline;
  return std::chrono::milliseconds(int64_t(engine_seconds) * 500);
}

class TensorParallelBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options,
                                                         const ModelConfig& config,
                                                         std::shared_ptr<const Checkpoint> ckpt);
  ~TensorParallelBackend() override {
    // Each rank is freed on its own thread (its device current), then the communicators.
    if (threads_) {
      (void)OnEveryRank(
          [this](int r) {
            ranks_[r].reset();
            return absl::OkStatus();
          },
          RankThreads::kNoDeadline);
    }
    threads_.reset();
    communicators_.reset();
  }

  std::string_view name() const override { return "cuda"; }
  std::string device_name() const override {
    return absl::StrCat(world_size(), " x ", ranks_[0]->device_name());
  }
  // Rank 0's pool: every rank has as many blocks (they agree on the smallest), each holding
  // its own KV heads.
  const KvCacheSpec& kv_spec() const override { return ranks_[0]->kv_spec(); }
  // Rank 0's, under the single GPU's kinds (so the metric's label values stay the same): one
  // GPU's memory, as each rank holds about as much.
  std::vector<std::pair<std::string, uint64_t>> memory_by_kind() const override {
    return ranks_[0]->memory_by_kind();
  }
  int tensor_parallel_size() const override { return world_size(); }
  bool broken() const override {
    if (broken_) return true;
    for (const auto& rank : ranks_) {
      if (rank && rank->broken()) return true;
    }
    return false;
  }
  uint64_t weight_bytes_per_step() const override { return ranks_[0]->weight_bytes_per_step(); }
  absl::StatusOr<double> MeasureReadBandwidth() override {  // rank 0's, measured at creation
    return ranks_[0]->MeasureReadBandwidth();
  }
  void ProfileNextStep() override {
    (void)OnEveryRank([this](int r) {
      ranks_[r]->ProfileNextStep();
      return absl::OkStatus();
    });
  }
  std::optional<StepTiming> LastStepTiming() const override { return ranks_[0]->LastStepTiming(); }

  absl::StatusOr<StepOutput> ExecuteStep(const StepPlan& plan) override {
    RETURN_IF_ERROR(SubmitStep(plan));
    return CollectStep();
  }
  bool SubmitReturnsEarly() const override { return true; }
  absl::Status SubmitStep(const StepPlan& plan) override {
    RETURN_IF_ERROR(RefuseWhenBroken());
    return OnEveryRank([&](int r) { return ranks_[r]->SubmitStep(plan); });
  }
  absl::StatusOr<StepOutput> CollectStep() override {
    RETURN_IF_ERROR(RefuseWhenBroken());
    std::vector<StepOutput> outputs(world_size());
    RETURN_IF_ERROR(OnEveryRank([&](int r) -> absl::Status {
      ASSIGN_OR_RETURN(outputs[r], ranks_[r]->CollectStep());
      return absl::OkStatus();
    }));
    RETURN_IF_ERROR(CheckRanksAgree(outputs));
    return std::move(outputs[0]);
  }
  // Every rank at once: after a greedy step each holds only its vocabulary slice, and gathering
  // the rows is a collective. Rank 0's copy is returned.
  absl::StatusOr<std::vector<float>> LogitsToHost() override {
    absl::StatusOr<std::vector<float>> logits;
    RETURN_IF_ERROR(OnEveryRank([&](int r) -> absl::Status {
      absl::StatusOr<std::vector<float>> rank_logits = ranks_[r]->LogitsToHost();
      if (!rank_logits.ok()) return rank_logits.status();
      if (r == 0) logits = std::move(rank_logits);
      return absl::OkStatus();
    }));
    return logits;
  }

 private:
  int world_size() const { return static_cast<int>(ranks_.size()); }
  absl::Status RefuseWhenBroken() const {
    if (!broken()) return absl::OkStatus();
    return absl::InternalError("a tensor-parallel rank failed: the ranks are out of step");
  }
  // Runs task(r) on every rank's thread at once and waits for all (RankThreads::OnEveryRank).
  // A failure every rank returned alike (the same refusal, before the ranks could part) fails
  // the call and nothing more, as on one GPU. Any other failure, or ranks still running at the
  // deadline (a hung collective), leave the ranks out of step: the communicators are aborted,
  // so that ranks waiting in a collective return (with an error) instead of hanging, and the
  // backend is broken.
  absl::Status OnEveryRank(const std::function<absl::Status(int)>& task,
                           std::optional<std::chrono::milliseconds> deadline = std::nullopt) {
    return threads_->OnEveryRank(
        task,
        [this] {
          spdlog::error("a tensor-parallel rank failed: aborting the NCCL communicators");
          broken_ = true;
          if (communicators_) communicators_->Abort();
        },
        deadline.value_or(step_deadline_));
  }
  // Every rank sampled the same tokens (their logits are the same after the gather, and so
  // are their sampling inputs): a difference would leave the ranks' sequences apart.
  absl::Status CheckRanksAgree(const std::vector<StepOutput>& outputs);

  std::unique_ptr<cuda::NcclCommunicators> communicators_;
  std::vector<std::unique_ptr<Backend>> ranks_;  // rank r on GPU r, used on thread r only
  std::unique_ptr<RankThreads> threads_;         // freed before the communicators
  // Set by the abort hook (on the calling thread) and read by any thread (broken()).
  std::atomic<bool> broken_{false};
  std::chrono::milliseconds step_deadline_ = RankThreads::kNoDeadline;
};

absl::Status TensorParallelBackend::CheckRanksAgree(const std::vector<StepOutput>& outputs) {
  for (int r = 1; r < world_size(); ++r) {
    if (outputs[r].sampled == outputs[0].sampled) continue;
    broken_ = true;
    return absl::InternalError(
        absl::StrCat("tensor-parallel ranks 0 and ", r, " sampled different tokens"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> TensorParallelBackend::Create(
    const CudaBackendOptions& options, const ModelConfig& config,
    std::shared_ptr<const Checkpoint> ckpt) {
  const int n = options.backend.tensor_parallel_size;
  RETURN_IF_ERROR(CheckTensorParallelSize(config, n));
  auto backend = std::unique_ptr<TensorParallelBackend>(new TensorParallelBackend());
  ASSIGN_OR_RETURN(backend->communicators_, cuda::NcclCommunicators::Create(n));
  backend->ranks_.resize(n);
  // Each thread makes its GPU current first; every CUDA and NCCL call of rank r is made on
  // thread r (the communicators' abort aside).
  cuda::NcclCommunicators* communicators = backend->communicators_.get();
  backend->threads_ = std::make_unique<RankThreads>(
      n,
      [](int r) -> absl::Status {
        if (const cudaError_t e = cudaSetDevice(r); e != cudaSuccess) {
          return absl::InternalError(
              absl::StrCat("cudaSetDevice(", r, "): ", cudaGetErrorString(e)));
        }
        return absl::OkStatus();
      },
      [communicators](int r) { return communicators->rank(r)->collectives_queued(); });
  backend->step_deadline_ = RankStepDeadline(options.backend);
  // At once: each rank's start-up runs collectives (its KV pool's size, the graphs' warm-up
  // steps) that wait for every other rank.
  TensorParallelBackend* tp = backend.get();
  const absl::Status made = tp->OnEveryRank(
      [&](int r) -> absl::Status {
        CudaBackendOptions rank = options;
        rank.cuda.device_index = r;
        rank.shard = {r, n};
        rank.collectives = tp->communicators_->rank(r);
        ASSIGN_OR_RETURN(tp->ranks_[r], ckpt ? CreateCudaBackend(rank, ckpt)
                                             : CreateCudaBackendWithRandomWeights(rank, config));
        return absl::OkStatus();
      },
      RankThreads::kNoDeadline);
  if (!made.ok()) {
    return absl::Status(made.code(),
                        absl::StrCat("tensor parallelism over ", n, " GPUs: ", made.message()));
  }
  for (int r = 1; r < n; ++r) {
    if (tp->ranks_[r]->kv_spec().num_blocks != tp->ranks_[0]->kv_spec().num_blocks) {
      return absl::InternalError(
          absl::StrCat("tensor-parallel rank ", r, " holds ", tp->ranks_[r]->kv_spec().num_blocks,
                       " KV blocks, rank 0 ", tp->ranks_[0]->kv_spec().num_blocks));
    }
  }
  spdlog::info("tensor parallelism: {} ranks on {}, NCCL", n, tp->device_name());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateTensorParallelBackend(
    const CudaBackendOptions& options, std::shared_ptr<const Checkpoint> checkpoint) {
  const ModelConfig config = checkpoint->config();
  return TensorParallelBackend::Create(options, config, std::move(checkpoint));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateTensorParallelBackendWithRandomWeights(
    const CudaBackendOptions& options, const ModelConfig& config) {
  return TensorParallelBackend::Create(options, config, nullptr);
}

}  // namespace gqa
