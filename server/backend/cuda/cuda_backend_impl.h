// The CUDA backend's class, shared by its two translation units: cuda_backend.cc (lifecycle,
// graphs, the step protocol) and cuda_layers.cc (one step's kernels: the layers, attention, the
// products). Internal to server/backend/cuda; the public face is cuda_backend.h.
#pragma once
#include "backend/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <deque>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "backend/cuda/collectives.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/step_inputs.h"
#include "backend/cuda/step_profiler.h"
#include "backend/cuda/weights.h"
#include "backend/kv_scales.h"
#include "backend/roofline.h"
#include "common/status_macros.h"
#include "gqa/kernels/decode_selector.h"
#include "gqa/kernels/elementwise_cuda.h"
#include "gqa/kernels/paged_attention_cuda.h"
#include "gqa/kernels/prefill_selector.h"
#include "gqa/kernels/rope.h"
#include "gqa/kernels/sampling_cuda.h"
#include "gqa/kernels/skinny_gemm_cuda.h"
#include "gqa/kernels/skinny_mma_plan.h"
#include "model/tensor_parallel.h"
#include "spdlog/spdlog.h"

namespace gqa::cuda_backend_internal {

namespace k = kernels::cuda;
using cuda::BufferCarver;
using cuda::DeviceMemory;
using cuda::StepShape;

constexpr uint64_t kGraphReserveBytes = 256ull << 20;  // left free for graphs and the allocator

// Activations for the largest step: [max_tokens, ...] rows, logits for max_seqs rows. Sizes are
// the rank's (ShardConfig), but for the logits, which are the whole vocabulary's.
template <typename T>
struct Activations {
  T* residual;                                // [max_tokens, hidden]
  T* normed;                                  // [max_tokens, hidden]
  T* qkv;                                     // [max_tokens, q_size + 2 kv_size]
  T* q;                                       // [max_tokens, num_heads, head_dim]
  T* attn;                                    // [max_tokens, num_heads, head_dim]
  T* proj;                                    // [max_tokens, hidden]
  T* gate_up;                                 // [max_tokens, 2 intermediate]
  T* mlp;                                     // [max_tokens, intermediate]
  T* logit_hidden;                            // [max_seqs, hidden]
  float* logits;                              // [max_seqs, vocab] (the whole vocabulary)
  int32_t* sampled;                           // [max_seqs]
  kernels::LogprobsQuery* logprobs_queries;   // [max_seqs]
  kernels::LogprobsResult* logprobs_results;  // [max_seqs]
  float* inv_freq;                            // [head_dim / 2]
  void* decode_workspace;
  // Fused norms: sums of squares of the residual stream per 64 columns, after the attention
  // block and after the MLP ([ceil(hidden / 64)][kSkinnyMmaMaxRows] each).
  float* norm_sums_attn;
  float* norm_sums_mlp;
  // Tensor parallelism only (null otherwise): this rank's vocabulary slice of the logits, with
  // room for vocab_per_rank columns (the last rank's slice may be narrower); every rank's slices
  // as the all-gather lays them, block q holding rows x (rank q's slice width) contiguous values
  // at q * rows * vocab_per_rank; each sampling row's best key in this rank's slice, and every
  // rank's (greedy steps: kernels::cuda::BestKeysOfSlice); and 8 bytes for AllReduceMin.
  float* rank_logits;            // [max_seqs, vocab_per_rank]
  float* gathered_logits;        // [world_size, max_seqs * vocab_per_rank]
  uint64_t* rank_best_keys;      // [max_seqs]
  uint64_t* gathered_best_keys;  // [world_size, rows sampled] (room for max_seqs rows)
  int64_t* agree_scratch;        // [1]
};

// The graph capture sizes: 1, 2, 4, 8, then multiples of 8 up to max_num_seqs.
inline std::vector<int> CaptureSizes(int max_seqs) {
  std::vector<int> sizes;
  for (int b : {1, 2, 4}) {
    if (b < max_seqs) sizes.push_back(b);
  }
  for (int b = 8; b < max_seqs; b += 8) sizes.push_back(b);
  sizes.push_back(max_seqs);
  return sizes;
}

template <typename T>
class CudaBackend final : public Backend {
 public:
  // `config` is the whole model's; options.shard picks this backend's slice of it.
  static absl::StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options,
                                                         const ModelConfig& config,
                                                         const Checkpoint* checkpoint);
  std::string_view name() const override { return "cuda"; }
  std::string device_name() const override { return device_->name(); }
  const KvCacheSpec& kv_spec() const override { return spec_; }
  std::vector<std::pair<std::string, uint64_t>> memory_by_kind() const override {
    return {{"weights", weights_.bytes()},
            {"kv", kv_memory_.bytes()},
            {"workspace", activation_memory_.bytes() + cuda::CudaDevice::kCublasWorkspaceBytes},
            {"graphs", graph_bytes_}};
  }
  bool broken() const override { return broken_; }
  absl::StatusOr<StepOutput> ExecuteStep(const StepPlan& plan) override {
    RETURN_IF_ERROR(SubmitStep(plan));
    return CollectStep();
  }
  // Launches the step and its sampling and queues the sampled tokens' copy to the host; a step
  // that asks for logprobs (read from its logits, which the next step overwrites) or has no
  // sequences completes here.
  absl::Status SubmitStep(const StepPlan& plan) override;
  // Waits for the oldest step's sampled tokens.
  absl::StatusOr<StepOutput> CollectStep() override;
  bool SubmitReturnsEarly() const override { return true; }
  absl::StatusOr<std::vector<float>> LogitsToHost() override;
  uint64_t weight_bytes_per_step() const override {
    return WeightBytesPerStep(config_, DTypeSize(options_.dtype));
  }
  // Measured once, when the backend is created.
  absl::StatusOr<double> MeasureReadBandwidth() override { return read_bandwidth_; }
  void ProfileNextStep() override { profile_next_ = step_profiling(); }
  std::optional<StepTiming> LastStepTiming() const override { return last_timing_; }
  ~CudaBackend() override {
    if (device_) cudaStreamSynchronize(device_->stream());
    for (auto* graphs : {&graphs_, &profiled_graphs_}) {
      for (auto& [size, exec] : *graphs) cudaGraphExecDestroy(exec);
    }
  }

 private:
  // Also capture each decode graph with timing events (ProfileNextStep replays that copy).
  bool step_profiling() const { return options_.backend.step_profile_interval > 0; }
  CudaBackend(const CudaBackendOptions& options, const ModelConfig& local_config,
              const TensorParallelShard& shard, int full_vocab)
      : options_(options),
        config_(local_config),
        shard_(shard),
        full_vocab_(full_vocab),
        collectives_(options.collectives),
        tables_(1, 1) {}
  // Running as a rank of the tensor-parallel runtime (even of one): the unfused layers with
  // their partial sums all-reduced, the vocabulary split and the logits gathered.
  bool tensor_parallel() const { return collectives_ != nullptr; }
  // Columns of each rank's logits slice in the all-gather: ceil(vocab / world_size).
  int VocabPerRank() const { return (full_vocab_ + shard_.world_size - 1) / shard_.world_size; }
  // Tensor parallelism: buf = the sum over the ranks of buf (rows of the serving dtype); a
  // no-op on the single-GPU backend.
  absl::Status SumAcrossRanks(T* buf,  // [count]
                              size_t count);
  // Tensor parallelism: this rank's embedding rows (zeros for the others' tokens), summed.
  absl::Status EmbedAcrossRanks(int num_tokens);
  // Tensor parallelism: act_.logits' `rows` rows = every rank's act_.rank_logits slice.
  absl::Status GatherLogits(int rows);
  // Tensor parallelism, every row greedy: act_.sampled's `rows` tokens from every rank's best
  // key per row (8 bytes per row per rank cross; the logits are never gathered whole).
  absl::Status SampleGreedyAcrossRanks(int rows);
  absl::Status Init(const Checkpoint* checkpoint);
  // A step submitted and not collected: where its sampled tokens land, or its whole output.
  struct SubmittedStep {
    int num_samples = 0;
    int slot = 0;  // its rows of sampled_host_ and its event
    bool profiled = false;
    std::optional<absl::StatusOr<StepOutput>> done;  // completed within SubmitStep
    std::optional<StepTiming> timing;                // profiled, and read already
  };
  // The step's launches (a graph replay for a decode-only step), up to the logits.
  absl::StatusOr<StepShape> Forward(const StepPlan& plan);
  // Samples one token per sampling row of the step just launched into act_.sampled and queues
  // their copy to sampled_host_'s `slot`, then records the slot's event. Under tensor
  // parallelism a step whose rows are all greedy (`greedy_only`) exchanges each rank's best
  // token; any other gathers the logits whole first (what sampling with a temperature and
  // logprobs read).
  absl::Status LaunchSampling(const StepShape& shape, int slot, bool greedy_only);
  // Waits for `slot`'s copy (and so for its step).
  absl::StatusOr<std::vector<int32_t>> WaitForSampled(int slot, int num_samples);
  // The profiled step's timing, once it has completed; nullopt (and a warning) when unreadable.
  std::optional<StepTiming> ReadProfiler();
  // The whole step now: sampled tokens and the logprobs asked for.
  absl::StatusOr<StepOutput> CompleteStep(const StepPlan& plan, const StepShape& shape, int slot);
  // Log-probabilities over the last step's logits rows, computed on the device.
  absl::StatusOr<std::vector<LogprobsResult>> Logprobs(std::span<const LogprobsQuery> queries);
  absl::Status AllocateActivations();
  absl::Status AllocateKvCache();
  absl::Status CaptureGraphs();
  absl::StatusOr<double> ProbeReadBandwidth();
  enum class GraphKind { kPlain, kProfiled };  // kProfiled: with the profiler's events
  // One decode graph of the shape's padded size.
  absl::StatusOr<cudaGraphExec_t> CaptureGraph(const StepShape& shape, GraphKind kind);
  int MaxDecodeWorkspaceRows() const;
  kernels::DecodeKernelChoice DecodeChoice(int num_seqs) const;
  // --attention_kernels: whether the Hopper warpgroup kernels run where they apply (16-bit
  // caches on a GPU and build that have them), and which prefill kernel `key_splits` allows.
  bool UseWarpgroupAttention() const;
  // Decode on the warpgroup kernel (Hopper, a 16-bit cache, head_dim 64 or 128).
  bool UseWarpgroupDecode() const;
  kernels::cuda::PrefillPath PrefillPathFor(int key_splits) const;
  // Every kernel of one step, in order, on the device stream.
  absl::Status Launch(const StepShape& shape);
  absl::Status Layer(int l, const StepShape& shape);
  // The same layer with its norms folded into the tensor-core skinny products (steps of up to
  // fused_max_rows_ tokens): no AddRmsNorm or SiluMul kernel between them.
  absl::Status FusedLayer(int l, const StepShape& shape);
  // The same layer for steps of up to skinny_max_rows_ tokens, every product on the CUDA-core
  // skinny kernel with the norms, the residual adds, RoPE and the KV append folded into it:
  // five kernels and the attention's, bitwise the values of Layer.
  absl::Status SkinnyFusedLayer(int l, const StepShape& shape);
  template <typename KV>
  absl::Status SkinnyQkvRopeAppend(int l, const StepShape& shape,
                                   const kernels::PagedKvView<KV>& cache);
  // The skinny kernel stages x (m rows of k) in shared memory.
  static bool SkinnyFits(int m, int k) {
    return k::SkinnyGemmSharedBytes(m, k, sizeof(T)) <= 200 * 1024;
  }
  bool skinny_fused(const StepShape& shape) const {
    return skinny_fusion_ && shape.num_tokens <= skinny_max_rows_;
  }
  int NormSumBlocks() const {
    return (config_.hidden_size + kernels::kSkinnyMmaBlockWeightRows - 1) /
           kernels::kSkinnyMmaBlockWeightRows;
  }
  bool fused(const StepShape& shape) const { return shape.num_tokens <= fused_max_rows_; }
  // A fused product's input: the residual stream, RMS-normalised with `norm_weight` from the
  // sums of squares the product before left in `sums`.
  k::SkinnyMmaFusion<T> NormalizedInput(const void* norm_weight, const float* sums) const {
    k::SkinnyMmaFusion<T> in;
    in.norm_weight = Typed(norm_weight);
    in.norm_sums_in = sums;
    in.norm_sum_blocks = NormSumBlocks();
    in.eps = config_.rms_norm_eps;
    return in;
  }
  // qkv_appended: the QKV product already rotated the queries and appended the keys and values
  // (SkinnyFusedLayer); otherwise QkvRopeAppend does it first.
  absl::Status Attention(int l, const StepShape& shape, bool qkv_appended = false);
  template <typename KV>
  absl::Status AttentionOver(int l, const StepShape& shape, const kernels::PagedKvView<KV>& cache,
                             bool qkv_appended);
  absl::Status UploadKvScales(const Checkpoint* checkpoint);
  // y[m, n] = x[m, k] @ w^T + bias; with kSiluGateUp, x = silu(gate) * up of gate_up rows.
  template <typename Out>
  absl::Status Linear(const T* input, k::SkinnyInput kind, const void* w, const void* bias, int m,
                      int n, int k, Out* y);
  // Layer l's pools as the cache stores them (KV = T, or __nv_fp8_e4m3 with its scales).
  template <typename KV>
  kernels::PagedKvView<KV> Cache(int l) const;
  // use(Cache<KV>(l)) with the KV of this backend's cache dtype.
  template <typename Use>
  absl::Status WithCache(int l, Use&& use) const {
    if (spec_.cache_dtype == KvCacheDType::kFp8E4M3) return use(Cache<__nv_fp8_e4m3>(l));
    return use(Cache<T>(l));
  }
  // A weight (stored untyped) as the compute type.
  static const T* Typed(const void* weight) { return static_cast<const T*>(weight); }
  kernels::KvElement kv_element() const {
    return spec_.cache_dtype == KvCacheDType::kFp8E4M3 ? kernels::KvElement::kFp8E4M3
                                                       : kernels::KvElement::k16Bit;
  }
  // Records a failed CUDA call; a sticky error marks the backend broken.
  absl::Status Check(absl::Status status);

  CudaBackendOptions options_;
  ModelConfig config_;  // this rank's shapes (ShardConfig); the whole model's at world size 1
  TensorParallelShard shard_;  // which heads, intermediate columns and vocabulary rows
  int full_vocab_ = 0;         // the whole model's vocabulary (the logits' columns)
  cuda::RankCollectives* collectives_ = nullptr;  // not owned; null: the single-GPU backend
  KvCacheSpec spec_;
  std::unique_ptr<cuda::CudaDevice> device_;
  cuda::DeviceWeights weights_;
  std::unique_ptr<cuda::Gemm> gemm_;
  cuda::StepInputs inputs_;
  BlockTables tables_;  // the host mirror of the device tables: slots, and the KV slot mapping
  DeviceMemory activation_memory_, kv_memory_, kv_scale_memory_;
  Activations<T> act_{};
  // [layers][k, v][num_blocks, kv_heads, block_size, head_dim] of T or FP8 bytes
  std::byte* kv_base_ = nullptr;
  float* kv_scales_ = nullptr;  // FP8: [layers][k, v][kv_heads]
  int max_tokens_ = 0;
  int skinny_max_rows_ = 0;
  bool skinny_fusion_ = false;  // steps of up to skinny_max_rows_ tokens run SkinnyFusedLayer
  int fused_max_rows_ = 0;      // steps of up to this many tokens run FusedLayer
  k::SkinnyMmaWorkspace skinny_workspace_{};        // Gemm's: one product at a time on the stream
  std::map<int, cudaGraphExec_t> graphs_;           // by padded batch size
  std::map<int, cudaGraphExec_t> profiled_graphs_;  // the same, with the profiler's events
  uint64_t graph_bytes_ = 0;
  int logit_rows_ = 0;  // rows of act_.logits computed by the last Forward
  // Tensor parallelism: whether act_.logits holds the last step's rows (gathered for its
  // sampling, or since by LogitsToHost); a greedy step leaves only each rank's slice.
  bool logits_gathered_ = true;
  // Async scheduling: steps submitted and not collected (at most kMaxStepsInFlight), each with
  // its page-locked rows for the sampled tokens and an event recorded after their copy.
  std::deque<SubmittedStep> submitted_;
  cuda::PinnedMemory sampled_host_;  // [kMaxStepsInFlight, max_seqs] int32
  std::array<cuda::CudaEvent, kMaxStepsInFlight> sampled_ready_;
  int next_slot_ = 0;
  cuda::StepProfiler profiler_;
  double read_bandwidth_ = 0;  // bytes/s, device-to-device copy (read + written)
  bool profile_next_ = false;  // ProfileNextStep was called
  bool profiling_ = false;     // this step records the profiler's events
  std::optional<StepTiming> last_timing_;
  bool broken_ = false;
};

}  // namespace gqa::cuda_backend_internal
