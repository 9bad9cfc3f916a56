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
#include "spdlog/spdlog.h"

namespace gqa {
namespace {

namespace k = kernels::cuda;
using cuda::BufferCarver;
using cuda::DeviceMemory;
using cuda::StepShape;

constexpr uint64_t kGraphReserveBytes = 256ull << 20;  // left free for graphs and the allocator

// Activations for the largest step: [max_tokens, ...] rows, logits for max_seqs rows.
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
  float* logits;                              // [max_seqs, vocab]
  int32_t* sampled;                           // [max_seqs]
  kernels::LogprobsQuery* logprobs_queries;   // [max_seqs]
  kernels::LogprobsResult* logprobs_results;  // [max_seqs]
  float* inv_freq;                            // [head_dim / 2]
  void* decode_workspace;
  // Fused norms: sums of squares of the residual stream per 64 columns, after the attention
  // block and after the MLP ([ceil(hidden / 64)][kSkinnyMmaMaxRows] each).
  float* norm_sums_attn;
  float* norm_sums_mlp;
};

// The graph capture sizes: 1, 2, 4, 8, then multiples of 8 up to max_num_seqs.
std::vector<int> CaptureSizes(int max_seqs) {
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
  CudaBackend(const CudaBackendOptions& options, const ModelConfig& config)
      : options_(options), config_(config), tables_(1, 1) {}
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
  // their copy to sampled_host_'s `slot`, then records the slot's event.
  absl::Status LaunchSampling(const StepShape& shape, int slot);
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
    in.norm_weight = static_cast<const T*>(norm_weight);
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
  kernels::KvElement kv_element() const {
    return spec_.cache_dtype == KvCacheDType::kFp8E4M3 ? kernels::KvElement::kFp8E4M3
                                                       : kernels::KvElement::k16Bit;
  }
  // Records a failed CUDA call; a sticky error marks the backend broken.
  absl::Status Check(absl::Status status);

  CudaBackendOptions options_;
  ModelConfig config_;
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

template <typename T>
absl::Status CudaBackend<T>::Check(absl::Status status) {
  if (status.ok()) return status;
  const cudaError_t error = cudaPeekAtLastError();
  if (cuda::IsStickyCudaError(error) ||
      cuda::IsStickyCudaError(cudaStreamQuery(device_->stream()))) {
    broken_ = true;
  } else {
    cudaGetLastError();  // not sticky: clear it, so the next step does not report it again
  }
  return status;
}

template <typename T>
int CudaBackend<T>::MaxDecodeWorkspaceRows() const {
  int rows = 0;
  for (int b = 1; b <= options_.scheduler.max_num_seqs; ++b) {
    rows = std::max(rows, b * DecodeChoice(b).num_splits);
  }
  return rows;
}

template <typename T>
kernels::DecodeKernelChoice CudaBackend<T>::DecodeChoice(int num_seqs) const {
  // Deterministic: the same splits whatever the batch, so they depend on the length alone.
  const int max_keys =
      kernels::DecodeKeysPerQuery(options_.max_model_len, config_.attention_window());
  return kernels::SelectFixedGridDecodeKernel(
      config_.num_heads, config_.num_kv_heads, config_.head_dim, spec_.block_size,
      options_.backend.deterministic ? 1 : num_seqs, max_keys, device_->sm_count(), kv_element());
}

template <typename T>
absl::Status CudaBackend<T>::AllocateActivations() {
  const ModelConfig& c = config_;
  const size_t t = max_tokens_, s = options_.scheduler.max_num_seqs, h = c.hidden_size;
  // Split partials for the most (sequence x split) rows any batch size asks for.
  // Shared with the prefill key splits (they run after the decode merge, on the same stream).
  const size_t workspace = std::max(
      k::DecodeWorkspaceBytes(/*num_seqs=*/1, c.num_heads, c.head_dim, MaxDecodeWorkspaceRows()),
      options_.backend.deterministic
          ? size_t(0)
          : kernels::PrefillWorkspaceCapacityBytes(c.num_heads, c.head_dim));
  auto carve = [&](void* base) {
    BufferCarver b(base);
    act_.residual = b.Take<T>(t * h);
    act_.normed = b.Take<T>(t * h);
    act_.qkv = b.Take<T>(t * (c.q_size() + 2 * c.kv_size()));
    act_.q = b.Take<T>(t * c.q_size());
    act_.attn = b.Take<T>(t * c.q_size());
    act_.proj = b.Take<T>(t * h);
    act_.gate_up = b.Take<T>(t * 2 * c.intermediate_size);
    act_.mlp = b.Take<T>(t * c.intermediate_size);
    act_.logit_hidden = b.Take<T>(s * h);
    act_.logits = b.Take<float>(s * c.vocab_size);
    act_.sampled = b.Take<int32_t>(s);
    act_.logprobs_queries = b.Take<kernels::LogprobsQuery>(s);
    act_.logprobs_results = b.Take<kernels::LogprobsResult>(s);
    act_.inv_freq = b.Take<float>(c.head_dim / 2);
    act_.decode_workspace = b.Take<std::byte>(workspace);
    act_.norm_sums_attn = b.Take<float>(NormSumBlocks() * kernels::kSkinnyMmaMaxRows);
    act_.norm_sums_mlp = b.Take<float>(NormSumBlocks() * kernels::kSkinnyMmaMaxRows);
    return b.bytes();
  };
  auto memory = DeviceMemory::Allocate(carve(nullptr), "activations");
  if (!memory.ok()) return memory.status();
  activation_memory_ = std::move(*memory);
  carve(activation_memory_.get());
  const auto inv_freq = kernels::RopeInverseFrequencies(c.rope_theta, c.head_dim, c.rope_scaling);
  // On the device's stream (non-blocking: the legacy default stream would not order it).
  GQA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(act_.inv_freq, inv_freq.data(),
                                           inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice,
                                           device_->stream()));
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(device_->stream()));
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaBackend<T>::AllocateKvCache() {
  KvCacheSpec probe = spec_;
  probe.num_blocks = 1;
  int64_t blocks = options_.cache.num_kv_blocks;
  if (blocks <= 0 && options_.cache.kv_cache_bytes > 0) {
    blocks = options_.cache.kv_cache_bytes / probe.bytes_per_block();
  } else if (blocks <= 0) {
    size_t free = 0, total = 0;
    GQA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free, &total));
    const double budget = options_.cache.gpu_memory_utilization * double(total) -
                          double(total - free) - double(kGraphReserveBytes);
    blocks = budget > 0 ? int64_t(budget / probe.bytes_per_block()) : 0;
    if (blocks < 1) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the model does not fit on ", device_->name(), ": weights ",
          weights_.bytes() / 1073741824.0, " GiB and activations ",
          activation_memory_.bytes() / 1073741824.0, " GiB leave no room for a KV cache within ",
          "--gpu_memory_utilization ", options_.cache.gpu_memory_utilization, " of ",
          total / 1073741824.0, " GiB"));
    }
  }
  blocks = std::min<int64_t>(blocks, (int64_t(1) << 31) / spec_.block_size - 1);
  if (blocks < 1) return absl::InvalidArgumentError("the KV cache holds not even one block");
  spec_.num_blocks = static_cast<int>(blocks);
  auto memory = DeviceMemory::Allocate(spec_.total_bytes(), "the KV cache");
  if (!memory.ok()) return memory.status();
  kv_memory_ = std::move(*memory);
  kv_base_ = static_cast<std::byte*>(kv_memory_.get());
  GQA_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(kv_memory_.get(), 0, kv_memory_.bytes(), device_->stream()));
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(device_->stream()));
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaBackend<T>::UploadKvScales(const Checkpoint* checkpoint) {
  if (spec_.cache_dtype != KvCacheDType::kFp8E4M3) return absl::OkStatus();
  KvScales scales = UnitKvScales(config_);
  if (checkpoint) {
    ASSIGN_OR_RETURN(scales, LoadKvScales(*checkpoint));
  }
  const size_t heads = config_.num_kv_heads;
  std::vector<float> packed;  // [layers][k, v][kv_heads]
  for (int l = 0; l < config_.num_layers; ++l) {
    packed.insert(packed.end(), scales.k.begin() + l * heads, scales.k.begin() + (l + 1) * heads);
    packed.insert(packed.end(), scales.v.begin() + l * heads, scales.v.begin() + (l + 1) * heads);
  }
  ASSIGN_OR_RETURN(kv_scale_memory_,
                   DeviceMemory::Allocate(packed.size() * sizeof(float), "the KV cache scales"));
  kv_scales_ = static_cast<float*>(kv_scale_memory_.get());
  GQA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kv_scales_, packed.data(), packed.size() * sizeof(float),
                                           cudaMemcpyHostToDevice, device_->stream()));
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(device_->stream()));
  spdlog::info("kv cache fp8_e4m3 scales: {}", scales.from_checkpoint
                                                   ? "the checkpoint's k_scale / v_scale"
                                                   : "1.0 (the checkpoint has none)");
  return absl::OkStatus();
}

template <typename T>
template <typename KV>
kernels::PagedKvView<KV> CudaBackend<T>::Cache(int l) const {
  const size_t per_pool =
      size_t(spec_.num_blocks) * spec_.num_kv_heads * spec_.block_size * spec_.head_dim;
  KV* k_pool = reinterpret_cast<KV*>(kv_base_) + size_t(2 * l) * per_pool;
  kernels::PagedKvView<KV> view{k_pool,
                                k_pool + per_pool,
                                inputs_.device_block_tables(),
                                inputs_.capacity().max_blocks_per_seq,
                                spec_.num_kv_heads,
                                spec_.block_size,
                                spec_.head_dim};
  if (kv_scales_) {
    view.k_scale = kv_scales_ + size_t(2 * l) * spec_.num_kv_heads;
    view.v_scale = view.k_scale + spec_.num_kv_heads;
  }
  return view;
}

template <typename T>
absl::Status CudaBackend<T>::Attention(int l, const StepShape& shape, bool qkv_appended) {
  if (spec_.cache_dtype == KvCacheDType::kFp8E4M3) {
    return AttentionOver(l, shape, Cache<__nv_fp8_e4m3>(l), qkv_appended);
  }
  return AttentionOver(l, shape, Cache<T>(l), qkv_appended);
}

template <typename T>
template <typename KV>
absl::Status CudaBackend<T>::AttentionOver(int l, const StepShape& shape,
                                           const kernels::PagedKvView<KV>& cache,
                                           bool qkv_appended) {
  const ModelConfig& c = config_;
  const cuda::StepArrays& in = inputs_.device();
  cudaStream_t stream = device_->stream();
  if (profiling_) GQA_CUDA_RETURN_IF_ERROR(profiler_.RecordAttentionBegin(l, stream));
  if (!qkv_appended) {
    GQA_CUDA_RETURN_IF_ERROR(k::QkvRopeAppend<T>(act_.qkv, in.positions, act_.inv_freq, in.slots,
                                                 shape.num_tokens, c.num_heads, act_.q, cache,
                                                 stream));
  }
  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  if (shape.num_decode > 0) {
    k::DecodeAttentionArgs<T, KV> args;
    args.q = act_.q;
    args.out = act_.attn;
    args.cache = cache;
    args.context_lens = in.context_lens;
    args.num_seqs = shape.num_decode;
    args.num_heads = c.num_heads;
    args.scale = scale;
    args.workspace = act_.decode_workspace;
    args.window = c.attention_window();
    // After the skinny QKV product, which lets the next kernel start only at its end.
    args.after_previous = qkv_appended && options_.cuda.programmatic_attention;
    GQA_CUDA_RETURN_IF_ERROR(
        k::PagedDecodeAttention<T>(args, DecodeChoice(shape.num_decode), stream));
  }
  const int prefill_seqs = shape.num_seqs - shape.num_decode;
  if (prefill_seqs > 0) {
    const size_t first = size_t(shape.num_decode) * c.q_size();  // decode rows come first
    k::PrefillAttentionArgs<T, KV> args;
    args.q = act_.q + first;
    args.out = act_.attn + first;
    args.cache = cache;
    args.cache.block_tables += size_t(shape.num_decode) * cache.max_blocks_per_seq;
    args.query_start = in.prefill_query_start;
    args.context_lens = in.context_lens + shape.num_decode;
    args.num_seqs = prefill_seqs;
    args.num_heads = c.num_heads;
    args.max_query_len = shape.max_query_len;
    args.scale = scale;
    args.window = c.attention_window();
    args.num_query_tokens = shape.num_tokens - shape.num_decode;
    kernels::PrefillShapeForSplits split_shape;
    split_shape.max_query_len = shape.max_query_len;
    split_shape.num_query_tokens = args.num_query_tokens;
    split_shape.max_context = shape.max_prefill_context;
    split_shape.num_seqs = prefill_seqs;
    split_shape.group = c.num_heads / c.num_kv_heads;
    split_shape.num_kv_heads = c.num_kv_heads;
    split_shape.sm_count = device_->sm_count();
    split_shape.deterministic = options_.backend.deterministic;  // splits would follow the batch
    args.key_splits = kernels::SelectPrefillKeySplits(split_shape);
    args.workspace = act_.decode_workspace;
    GQA_CUDA_RETURN_IF_ERROR(k::PagedPrefillAttention<T>(args, stream));
  }
  if (profiling_) GQA_CUDA_RETURN_IF_ERROR(profiler_.RecordAttentionEnd(l, stream));
  return absl::OkStatus();
}

template <typename T>
template <typename Out>
absl::Status CudaBackend<T>::Linear(const T* input, k::SkinnyInput kind, const void* w,
                                    const void* bias, int m, int n, int k, Out* y) {
  const bool silu = kind == k::SkinnyInput::kSiluGateUp;
  const int stride = silu ? 2 * k : k;
  if (m <= skinny_max_rows_ && SkinnyFits(m, k)) {
    return cuda::CudaStatus(
        k::SkinnyGemm<T, Out>(input, stride, kind, static_cast<const T*>(w),
                              static_cast<const T*>(bias), m, n, k, y, device_->stream()),
        "SkinnyGemm");
  }
  if (silu) {
    GQA_CUDA_RETURN_IF_ERROR(
        k::SiluMul<T>(input, input + k, m, k, stride, act_.mlp, device_->stream()));
    input = act_.mlp;
  }
  return gemm_->Run(input, w, bias, m, n, k, y, std::is_same_v<Out, float>);
}

template <typename T>
absl::Status CudaBackend<T>::Layer(int l, const StepShape& shape) {
  const ModelConfig& c = config_;
  const cuda::LayerWeights& w = weights_.layer(l);
  const int n = shape.num_tokens, h = c.hidden_size, inter = c.intermediate_size;
  cudaStream_t stream = device_->stream();
  constexpr auto kPlain = k::SkinnyInput::kPlain;
  RETURN_IF_ERROR(
      Linear(act_.normed, kPlain, w.qkv, w.qkv_bias, n, c.q_size() + 2 * c.kv_size(), h, act_.qkv));
  RETURN_IF_ERROR(Attention(l, shape));
  RETURN_IF_ERROR(Linear(act_.attn, kPlain, w.o, w.o_bias, n, h, c.q_size(), act_.proj));
  GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(act_.proj, act_.residual,
                                            static_cast<const T*>(w.post_norm), n, h,
                                            c.rms_norm_eps, act_.normed, stream));
  RETURN_IF_ERROR(
      Linear(act_.normed, kPlain, w.gate_up, w.gate_up_bias, n, 2 * inter, h, act_.gate_up));
  RETURN_IF_ERROR(Linear(act_.gate_up, k::SkinnyInput::kSiluGateUp, w.down, w.down_bias, n, h,
                         inter, act_.proj));
  const void* next_norm =
      l + 1 < c.num_layers ? weights_.layer(l + 1).input_norm : weights_.final_norm();
  GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(act_.proj, act_.residual,
                                            static_cast<const T*>(next_norm), n, h, c.rms_norm_eps,
                                            act_.normed, stream));
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaBackend<T>::FusedLayer(int l, const StepShape& shape) {
  const ModelConfig& c = config_;
  const cuda::LayerWeights& w = weights_.layer(l);
  const int n = shape.num_tokens, h = c.hidden_size, inter = c.intermediate_size;
  cudaStream_t stream = device_->stream();
  auto cast = [](const void* p) { return static_cast<const T*>(p); };
  // The input norm: layer 0's came from Launch's RmsNorm, later ones from the sums the
  // previous layer's down projection left.
  const k::SkinnyMmaFusion<T> qkv_in =
      l > 0 ? NormalizedInput(w.input_norm, act_.norm_sums_mlp) : k::SkinnyMmaFusion<T>{};
  const T* qkv_x = l > 0 ? act_.residual : act_.normed;
  const int qkv_n = c.q_size() + 2 * c.kv_size();
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyMmaGemmFused<T>(qkv_x, h, cast(w.qkv), cast(w.qkv_bias), n,
                                                    qkv_n, h, act_.qkv, qkv_in, skinny_workspace_,
                                                    stream));
  RETURN_IF_ERROR(Attention(l, shape));
  k::SkinnyMmaFusion<T> o_out;
  o_out.residual = act_.residual;
  o_out.norm_sums_out = act_.norm_sums_attn;
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyMmaGemmFused<T>(act_.attn, c.q_size(), cast(w.o),
                                                    cast(w.o_bias), n, h, c.q_size(), nullptr,
                                                    o_out, skinny_workspace_, stream));
  const k::SkinnyMmaFusion<T> gate_up_in = NormalizedInput(w.post_norm, act_.norm_sums_attn);
  GQA_CUDA_RETURN_IF_ERROR(
      k::SkinnyMmaGemmFused<T>(act_.residual, h, cast(w.gate_up), cast(w.gate_up_bias), n,
                               2 * inter, h, act_.gate_up, gate_up_in, skinny_workspace_, stream));
  k::SkinnyMmaFusion<T> down;
  down.silu_gate_up = true;
  down.residual = act_.residual;
  down.norm_sums_out = act_.norm_sums_mlp;
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyMmaGemmFused<T>(act_.gate_up, 2 * inter, cast(w.down),
                                                    cast(w.down_bias), n, h, inter, nullptr, down,
                                                    skinny_workspace_, stream));
  if (l + 1 == c.num_layers) {  // the final norm, for the logit rows
    GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(nullptr, act_.residual, cast(weights_.final_norm()),
                                              n, h, c.rms_norm_eps, act_.normed, stream));
  }
  return absl::OkStatus();
}

template <typename T>
template <typename KV>
absl::Status CudaBackend<T>::SkinnyQkvRopeAppend(int l, const StepShape& shape,
                                                 const kernels::PagedKvView<KV>& cache) {
  const ModelConfig& c = config_;
  const cuda::LayerWeights& w = weights_.layer(l);
  const cuda::StepArrays& in = inputs_.device();
  k::SkinnyRopeAppend<T, KV> rope;
  rope.positions = in.positions;
  rope.inv_freq = act_.inv_freq;
  rope.slots = in.slots;
  rope.num_heads = c.num_heads;
  rope.q_out = act_.q;
  rope.cache = cache;
  const int h = c.hidden_size;
  const k::SkinnyNorm<T> norm{static_cast<const T*>(w.input_norm), c.rms_norm_eps};
  return cuda::CudaStatus(
      k::SkinnyGemmRopeAppend<T, KV>(act_.residual, h, norm, static_cast<const T*>(w.qkv),
                                     static_cast<const T*>(w.qkv_bias), shape.num_tokens,
                                     c.q_size() + 2 * c.kv_size(), h, rope, device_->stream()),
      "SkinnyGemmRopeAppend");
}

template <typename T>
absl::Status CudaBackend<T>::SkinnyFusedLayer(int l, const StepShape& shape) {
  const ModelConfig& c = config_;
  const cuda::LayerWeights& w = weights_.layer(l);
  const int n = shape.num_tokens, h = c.hidden_size, inter = c.intermediate_size;
  cudaStream_t stream = device_->stream();
  auto cast = [](const void* p) { return static_cast<const T*>(p); };
  constexpr auto kPlain = k::SkinnyInput::kPlain;
  // The QKV product holds the RoPE and the KV append, so the profiler's attention time (from
  // Attention) is the attention kernels' alone here.
  if (spec_.cache_dtype == KvCacheDType::kFp8E4M3) {
    RETURN_IF_ERROR(SkinnyQkvRopeAppend(l, shape, Cache<__nv_fp8_e4m3>(l)));
  } else {
    RETURN_IF_ERROR(SkinnyQkvRopeAppend(l, shape, Cache<T>(l)));
  }
  RETURN_IF_ERROR(Attention(l, shape, /*qkv_appended=*/true));
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyGemmFused<T>(act_.attn, c.q_size(), kPlain, {}, cast(w.o),
                                                 cast(w.o_bias), n, h, c.q_size(), nullptr,
                                                 act_.residual, stream));
  const k::SkinnyNorm<T> post_norm{cast(w.post_norm), c.rms_norm_eps};
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyGemmFused<T>(act_.residual, h, kPlain, post_norm,
                                                 cast(w.gate_up), cast(w.gate_up_bias), n,
                                                 2 * inter, h, act_.gate_up, nullptr, stream));
  GQA_CUDA_RETURN_IF_ERROR(
      k::SkinnyGemmFused<T>(act_.gate_up, 2 * inter, k::SkinnyInput::kSiluGateUp, {}, cast(w.down),
                            cast(w.down_bias), n, h, inter, nullptr, act_.residual, stream));
  if (l + 1 == c.num_layers) {  // the final norm, for the logit rows
    GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(nullptr, act_.residual, cast(weights_.final_norm()),
                                              n, h, c.rms_norm_eps, act_.normed, stream));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaBackend<T>::Launch(const StepShape& shape) {
  const ModelConfig& c = config_;
  const cuda::StepArrays& in = inputs_.device();
  cudaStream_t stream = device_->stream();
  const int n = shape.num_tokens, h = c.hidden_size;
  GQA_CUDA_RETURN_IF_ERROR(inputs_.UpdateTables(shape, spec_.block_size, stream, act_.sampled));
  GQA_CUDA_RETURN_IF_ERROR(k::EmbeddingGather<T>(static_cast<const T*>(weights_.embed()),
                                                 in.token_ids, n, h, act_.residual, stream));
  if (skinny_fused(shape)) {  // each layer normalises its own input
    for (int l = 0; l < c.num_layers; ++l) RETURN_IF_ERROR(SkinnyFusedLayer(l, shape));
  } else {
    GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(nullptr, act_.residual,
                                              static_cast<const T*>(weights_.layer(0).input_norm),
                                              n, h, c.rms_norm_eps, act_.normed, stream));
    for (int l = 0; l < c.num_layers; ++l) {
      RETURN_IF_ERROR(fused(shape) ? FusedLayer(l, shape) : Layer(l, shape));
    }
  }
  // The wanted rows only, then the vocabulary projection in fp32.
  GQA_CUDA_RETURN_IF_ERROR(k::EmbeddingGather<T>(act_.normed, in.logit_rows, shape.num_logit_rows,
                                                 h, act_.logit_hidden, stream));
  return Linear(act_.logit_hidden, k::SkinnyInput::kPlain, weights_.lm_head(), nullptr,
                shape.num_logit_rows, c.vocab_size, h, act_.logits);
}

template <typename T>
absl::Status CudaBackend<T>::CaptureGraphs() {
  const auto start = std::chrono::steady_clock::now();
  size_t free_before = 0, free_after = 0, total = 0;
  GQA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_before, &total));
  cudaStream_t stream = device_->stream();
  for (int size : CaptureSizes(options_.scheduler.max_num_seqs)) {
    // Inert rows only: the padding rows write nothing to the cache or the tables.
    auto shape = inputs_.Pack(StepPlan{}, tables_, spec_.block_size, spec_.num_blocks, size);
    if (!shape.ok()) return shape.status();
    RETURN_IF_ERROR(inputs_.Upload(stream));
    RETURN_IF_ERROR(Launch(*shape));  // warm-up: makes the cuBLAS plans outside the capture
    GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    ASSIGN_OR_RETURN(graphs_[size], CaptureGraph(*shape, GraphKind::kPlain));
    if (step_profiling()) {
      ASSIGN_OR_RETURN(profiled_graphs_[size], CaptureGraph(*shape, GraphKind::kProfiled));
    }
  }
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  GQA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_after, &total));
  graph_bytes_ = free_before > free_after ? free_before - free_after : 0;
  spdlog::info("captured {} decode graphs (batch 1..{}{}) in {:.2f} s, {:.1f} MiB",
               graphs_.size() + profiled_graphs_.size(), options_.scheduler.max_num_seqs,
               profiled_graphs_.empty() ? "" : "; each also with timing events",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
               graph_bytes_ / 1048576.0);
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<cudaGraphExec_t> CudaBackend<T>::CaptureGraph(const StepShape& shape,
                                                             GraphKind kind) {
  cudaStream_t stream = device_->stream();
  cudaGraph_t graph = nullptr;
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  profiling_ = kind == GraphKind::kProfiled;
  const absl::Status launched = Launch(shape);
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  profiling_ = false;
  RETURN_IF_ERROR(launched);
  GQA_CUDA_RETURN_IF_ERROR(ended);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  GQA_CUDA_RETURN_IF_ERROR(instantiated);
  return exec;
}

template <typename T>
absl::StatusOr<double> CudaBackend<T>::ProbeReadBandwidth() {
  // Two buffers of 1 GiB (256 MiB when that does not fit); the median of 10 timed copies.
  absl::StatusOr<DeviceMemory> from, to;
  for (size_t bytes : {size_t(1) << 30, size_t(256) << 20}) {
    from = DeviceMemory::Allocate(bytes, "the bandwidth probe");
    to = from.ok() ? DeviceMemory::Allocate(bytes, "the bandwidth probe") : from.status();
    if (to.ok()) break;
  }
  if (!to.ok()) return to.status();
  cudaStream_t stream = device_->stream();
  ASSIGN_OR_RETURN(cuda::CudaEvent start, cuda::CudaEvent::Create(cuda::EventTiming::kEnabled));
  ASSIGN_OR_RETURN(cuda::CudaEvent stop, cuda::CudaEvent::Create(cuda::EventTiming::kEnabled));
  std::vector<double> seconds;
  for (int i = 0; i < 12; ++i) {
    GQA_CUDA_RETURN_IF_ERROR(cudaEventRecord(start.get(), stream));
    GQA_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(to->get(), from->get(), to->bytes(), cudaMemcpyDeviceToDevice, stream));
    GQA_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop.get(), stream));
    GQA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop.get()));
    float ms = 0;
    GQA_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    if (i >= 2) seconds.push_back(ms * 1e-3);
  }
  std::sort(seconds.begin(), seconds.end());
  return 2.0 * double(to->bytes()) / seconds[seconds.size() / 2];  // read + written
}

template <typename T>
absl::Status CudaBackend<T>::Init(const Checkpoint* checkpoint) {
  const ModelConfig& c = config_;
  const bool fp8 = options_.kv_cache_dtype == KvCacheDType::kFp8E4M3;
  const kernels::DecodeKernelChoice support = kernels::SelectDecodeKernel(
      c.num_heads, c.num_kv_heads, c.head_dim, options_.cache.block_size, 1, 1, 1, 0,
      fp8 ? kernels::KvElement::kFp8E4M3 : kernels::KvElement::k16Bit);
  if (!support.supported) {
    return absl::InvalidArgumentError(
        absl::StrCat("the CUDA backend cannot serve this model: ", support.reason));
  }
  if (c.hidden_size % 8 != 0 || c.intermediate_size % 8 != 0) {
    return absl::InvalidArgumentError(
        "the CUDA backend needs hidden_size and intermediate_size to be multiples of 8");
  }
  ASSIGN_OR_RETURN(device_, cuda::CudaDevice::Open(options_.cuda.device_index));
  if (fp8 && device_->compute_capability() < 89) {
    const int cc = device_->compute_capability();
    return absl::FailedPreconditionError(absl::StrCat(
        "--kv_cache_dtype=fp8_e4m3: needs a GPU of compute capability 8.9 or newer (Ada, "
        "Hopper); ",
        device_->name(), " is ", cc / 10, ".", cc % 10));
  }
  if (checkpoint) {
    ASSIGN_OR_RETURN(weights_,
                     cuda::DeviceWeights::Upload(*checkpoint, options_.dtype, {}, *device_));
  } else {
    ASSIGN_OR_RETURN(
        weights_, cuda::DeviceWeights::Random(c, options_.dtype, options_.random_seed, *device_));
  }
  max_tokens_ =
      std::max(options_.scheduler.max_num_batched_tokens, options_.scheduler.max_num_seqs);
  skinny_max_rows_ = options_.backend.deterministic
                         ? 0
                         : std::clamp(options_.cuda.skinny_gemm_max_rows, 0, k::kSkinnyGemmMaxRows);
  // Every product of a layer must fit the skinny kernel for the fused layer.
  skinny_fusion_ = options_.cuda.skinny_fusion && skinny_max_rows_ > 0 &&
                   SkinnyFits(skinny_max_rows_, std::max(c.hidden_size, c.intermediate_size)) &&
                   SkinnyFits(skinny_max_rows_, c.q_size());
  spec_ = KvCacheSpec{
      options_.cache.block_size, 0, c.num_kv_heads, c.head_dim, c.num_layers, options_.dtype,
      options_.kv_cache_dtype};
  const int max_blocks = (options_.max_model_len + spec_.block_size - 1) / spec_.block_size;
  ASSIGN_OR_RETURN(inputs_, cuda::StepInputs::Create({max_tokens_, options_.scheduler.max_num_seqs,
                                                      std::max(1, max_blocks)}));
  tables_ = BlockTables(options_.scheduler.max_num_seqs, std::max(1, max_blocks));
  cuda::GemmOptions gemm;
  gemm.mode =
      options_.backend.deterministic ? cuda::GemmMode::kBatchInvariant : cuda::GemmMode::kFastest;
  gemm.invariant_m = options_.scheduler.max_num_seqs;
  gemm.fallback_m = max_tokens_;
  gemm.tune_max_m = options_.scheduler.max_num_seqs;
  gemm.skinny_mma_max_m = options_.cuda.tensor_core_gemm_max_rows;
  gemm.sm_count = device_->sm_count();
  gemm_ = std::make_unique<cuda::Gemm>(
      device_.get(), options_.dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F, gemm);
  fused_max_rows_ = options_.backend.deterministic ? 0
                                                   : std::clamp(options_.cuda.fused_norm_max_rows,
                                                                0, kernels::kSkinnyMmaMaxRows);
  if (fused_max_rows_ > 0 || gemm.skinny_mma_max_m > 0) {
    ASSIGN_OR_RETURN(skinny_workspace_, gemm_->SkinnyMmaWorkspace());
  }
  RETURN_IF_ERROR(AllocateActivations());
  // Before the KV pool takes its share of the card, so that the probe's buffers fit.
  ASSIGN_OR_RETURN(read_bandwidth_, ProbeReadBandwidth());
  RETURN_IF_ERROR(AllocateKvCache());
  RETURN_IF_ERROR(UploadKvScales(checkpoint));
  ASSIGN_OR_RETURN(profiler_, cuda::StepProfiler::Create(c.num_layers));
  ASSIGN_OR_RETURN(sampled_host_,
                   cuda::PinnedMemory::Allocate(size_t(kMaxStepsInFlight) *
                                                options_.scheduler.max_num_seqs * sizeof(int32_t)));
  for (cuda::CudaEvent& event : sampled_ready_) {
    ASSIGN_OR_RETURN(event, cuda::CudaEvent::Create());
  }
  if (!options_.cuda.enforce_eager) RETURN_IF_ERROR(CaptureGraphs());
  gemm_->FinishTuning();  // no timing runs inside a serving step
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<std::unique_ptr<Backend>> CudaBackend<T>::Create(const CudaBackendOptions& options,
                                                                const ModelConfig& config,
                                                                const Checkpoint* checkpoint) {
  auto backend = std::unique_ptr<CudaBackend<T>>(new CudaBackend<T>(options, config));
  RETURN_IF_ERROR(backend->Init(checkpoint));
  return std::unique_ptr<Backend>(std::move(backend));
}

template <typename T>
absl::Status CudaBackend<T>::SubmitStep(const StepPlan& plan) {
  if (submitted_.size() >= kMaxStepsInFlight) {
    return absl::FailedPreconditionError("SubmitStep: two steps are in flight already");
  }
  profiling_ = std::exchange(profile_next_, false);
  // The profiler's events serve one step at a time: a profiled step still in flight is waited
  // for and read before this one records into them (two profiled steps in a row lose overlap).
  for (SubmittedStep& s : submitted_) {
    if (!profiling_ || !s.profiled) continue;
    RETURN_IF_ERROR(Check(
        cuda::CudaStatus(cudaEventSynchronize(sampled_ready_[s.slot].get()), "profiled step")));
    s.timing = ReadProfiler();
    s.profiled = false;
  }
  RETURN_IF_ERROR(tables_.Apply(plan.tables));  // the host mirror; the device's in the step
  SubmittedStep step;
  if (plan.seqs.empty()) {  // removals only: nothing on the device
    step.done = StepOutput{};
    submitted_.push_back(std::move(step));
    return absl::OkStatus();
  }
  if (broken_) return absl::InternalError("the GPU is in an unrecoverable error state");
  ASSIGN_OR_RETURN(const StepShape shape, Forward(plan));
  step.num_samples = shape.num_samples;
  step.slot = std::exchange(next_slot_, (next_slot_ + 1) % kMaxStepsInFlight);
  step.profiled = profiling_;
  if (plan.wants_logprobs()) {
    step.done = CompleteStep(plan, shape, step.slot);
    step.timing = last_timing_;
    step.profiled = false;
  } else {
    step.done.reset();
    if (absl::Status launched = LaunchSampling(shape, step.slot); !launched.ok()) {
      step.done = launched;
    }
  }
  profiling_ = false;
  if (step.done && !step.done->ok()) return step.done->status();
  submitted_.push_back(std::move(step));
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<StepOutput> CudaBackend<T>::CollectStep() {
  if (submitted_.empty()) return absl::FailedPreconditionError("CollectStep: no step in flight");
  SubmittedStep step = std::move(submitted_.front());
  submitted_.pop_front();
  last_timing_ = step.timing;
  if (step.done) return std::move(*step.done);
  StepOutput out;
  ASSIGN_OR_RETURN(out.sampled, WaitForSampled(step.slot, step.num_samples));
  if (step.profiled) last_timing_ = ReadProfiler();
  return out;
}

template <typename T>
absl::StatusOr<StepOutput> CudaBackend<T>::CompleteStep(const StepPlan& plan,
                                                        const StepShape& shape, int slot) {
  RETURN_IF_ERROR(LaunchSampling(shape, slot));
  StepOutput out;
  ASSIGN_OR_RETURN(out.sampled, WaitForSampled(slot, shape.num_samples));
  last_timing_.reset();
  if (profiling_) last_timing_ = ReadProfiler();
  const StepLogprobsQueries asked = BuildLogprobsQueries(plan.seqs, out.sampled);
  ASSIGN_OR_RETURN(const std::vector<LogprobsResult> answers, Logprobs(asked.queries));
  StoreLogprobs(asked, answers, plan.seqs.size(), out);
  return out;
}

template <typename T>
absl::StatusOr<StepShape> CudaBackend<T>::Forward(const StepPlan& plan) {
  const std::vector<ScheduledSeq>& seqs = plan.seqs;
  const bool all_decode =
      !seqs.empty() && std::all_of(seqs.begin(), seqs.end(), [](auto& s) { return s.is_decode; });
  int padded = 0;
  if (all_decode && !graphs_.empty()) {
    auto it = graphs_.lower_bound(static_cast<int>(seqs.size()));
    if (it != graphs_.end()) padded = it->first;
  }
  ASSIGN_OR_RETURN(const StepShape shape,
                   inputs_.Pack(plan, tables_, spec_.block_size, spec_.num_blocks, padded));
  RETURN_IF_ERROR(Check(inputs_.Upload(device_->stream())));
  // A padded (graph) step has only sampling rows, then the inert rows' logits.
  logit_rows_ = padded > 0 ? shape.num_samples : shape.num_logit_rows;
  if (profiling_) {
    RETURN_IF_ERROR(Check(
        cuda::CudaStatus(profiler_.RecordStepStart(device_->stream()), "profiler: step start")));
  }
  if (padded > 0) {
    const auto& graphs = profiling_ ? profiled_graphs_ : graphs_;
    RETURN_IF_ERROR(Check(cuda::CudaStatus(cudaGraphLaunch(graphs.at(padded), device_->stream()),
                                           "cudaGraphLaunch")));
  } else {
    RETURN_IF_ERROR(Check(Launch(shape)));
  }
  return shape;
}

template <typename T>
absl::Status CudaBackend<T>::LaunchSampling(const StepShape& shape, int slot) {
  const int n = shape.num_samples;
  cudaStream_t stream = device_->stream();
  RETURN_IF_ERROR(Check(cuda::CudaStatus(k::SampleTokens(act_.logits, inputs_.device().sampling, n,
                                                         config_.vocab_size, act_.sampled, stream),
                                         "SampleTokens")));
  if (profiling_) {
    RETURN_IF_ERROR(Check(cuda::CudaStatus(profiler_.RecordStepEnd(stream), "profiler: step end")));
  }
  // The one device-to-host copy of the step (4 bytes per sequence), into page-locked memory so
  // that it is queued behind the step and the host goes on.
  int32_t* host =
      static_cast<int32_t*>(sampled_host_.get()) + size_t(slot) * options_.scheduler.max_num_seqs;
  RETURN_IF_ERROR(Check(cuda::CudaStatus(
      cudaMemcpyAsync(host, act_.sampled, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream),
      "copy sampled tokens")));
  return Check(cuda::CudaStatus(cudaEventRecord(sampled_ready_[slot].get(), stream),
                                "record sampled tokens"));
}

template <typename T>
absl::StatusOr<std::vector<int32_t>> CudaBackend<T>::WaitForSampled(int slot, int num_samples) {
  RETURN_IF_ERROR(
      Check(cuda::CudaStatus(cudaEventSynchronize(sampled_ready_[slot].get()), "decode step")));
  const int32_t* host = static_cast<const int32_t*>(sampled_host_.get()) +
                        size_t(slot) * options_.scheduler.max_num_seqs;
  return std::vector<int32_t>(host, host + num_samples);
}

template <typename T>
std::optional<StepTiming> CudaBackend<T>::ReadProfiler() {
  absl::StatusOr<StepTiming> timing = profiler_.Read();
  if (timing.ok()) return *timing;
  cudaGetLastError();  // not sticky: the next step's launches must not report it
  spdlog::warn("step profiling: {}", timing.status().ToString());
  return std::nullopt;
}

template <typename T>
absl::StatusOr<std::vector<LogprobsResult>> CudaBackend<T>::Logprobs(
    std::span<const LogprobsQuery> queries) {
  const int n = static_cast<int>(queries.size());
  if (n == 0) return std::vector<LogprobsResult>{};  // no launch, no copy
  if (n > options_.scheduler.max_num_seqs) {
    return absl::InternalError(absl::StrCat("logprobs: ", n, " queries; the backend holds ",
                                            options_.scheduler.max_num_seqs));
  }
  for (const LogprobsQuery& q : queries) {
    if (q.row < 0 || q.row >= logit_rows_ || q.token < 0 || q.token >= config_.vocab_size) {
      return absl::InternalError(absl::StrCat("logprobs: row ", q.row, " token ", q.token,
                                              " outside ", logit_rows_, " x ", config_.vocab_size,
                                              " logits"));
    }
  }
  cudaStream_t stream = device_->stream();
  std::vector<LogprobsResult> results(n);
  RETURN_IF_ERROR(Check(
      cuda::CudaStatus(cudaMemcpyAsync(act_.logprobs_queries, queries.data(),
                                       n * sizeof(LogprobsQuery), cudaMemcpyHostToDevice, stream),
                       "copy logprobs queries")));
  RETURN_IF_ERROR(
      Check(cuda::CudaStatus(k::ComputeLogprobs(act_.logits, act_.logprobs_queries, n,
                                                config_.vocab_size, act_.logprobs_results, stream),
                             "ComputeLogprobs")));
  // Only the requested numbers cross: at most 20 alternatives per query.
  RETURN_IF_ERROR(Check(
      cuda::CudaStatus(cudaMemcpyAsync(results.data(), act_.logprobs_results,
                                       n * sizeof(LogprobsResult), cudaMemcpyDeviceToHost, stream),
                       "copy logprobs")));
  RETURN_IF_ERROR(Check(cuda::CudaStatus(cudaStreamSynchronize(stream), "logprobs")));
  return results;
}

template <typename T>
absl::StatusOr<std::vector<float>> CudaBackend<T>::LogitsToHost() {
  std::vector<float> logits(size_t(logit_rows_) * config_.vocab_size);
  RETURN_IF_ERROR(Check(
      cuda::CudaStatus(cudaMemcpyAsync(logits.data(), act_.logits, logits.size() * sizeof(float),
                                       cudaMemcpyDeviceToHost, device_->stream()),
                       "copy logits")));
  RETURN_IF_ERROR(
      Check(cuda::CudaStatus(cudaStreamSynchronize(device_->stream()), "forward step")));
  return logits;
}

absl::StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options,
                                                const ModelConfig& config,
                                                const Checkpoint* checkpoint) {
  switch (options.dtype) {
    case DType::kBF16:
      return CudaBackend<__nv_bfloat16>::Create(options, config, checkpoint);
    case DType::kF16:
      return CudaBackend<__half>::Create(options, config, checkpoint);
    case DType::kF32:
      break;
  }
  return absl::InvalidArgumentError("the CUDA backend serves bfloat16 or float16, not float32");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const CudaBackendOptions& options, std::shared_ptr<const Checkpoint> checkpoint) {
  // The weights are copied to the GPU: the checkpoint's mapped files can go afterwards.
  return Create(options, checkpoint->config(), checkpoint.get());
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackendWithRandomWeights(
    const CudaBackendOptions& options, const ModelConfig& config) {
  return Create(options, config, nullptr);
}

absl::StatusOr<std::string> CudaDeviceName(int device_index) {
  if (device_index != 0) return absl::UnimplementedError("only GPU 0 is used");
  return cuda::FirstGpuName();
}

}  // namespace gqa
