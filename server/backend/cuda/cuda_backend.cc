// The CUDA backend: lifecycle (weights, pools, graphs), the step protocol (submit, collect,
// sampling, logprobs). One step's kernels are in cuda_layers.cc; the class in
// cuda_backend_impl.h.
#include "backend/cuda/cuda_backend.h"

#include "backend/cuda/cuda_backend_impl.h"

namespace gqa {
namespace cuda_backend_internal {
namespace {

// Every sampling row of the step greedy, and no logprobs (which read whole logits rows).
bool EveryRowGreedy(const StepPlan& plan) {
  if (plan.wants_logprobs()) return false;
  for (const ScheduledSeq& s : plan.seqs) {
    if (s.samples && !kernels::IsGreedy(s.sampling)) return false;
  }
  return true;
}

}  // namespace

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
bool CudaBackend<T>::UseWarpgroupAttention() const {
  return options_.cuda.attention_kernels == AttentionKernels::kWarpgroup &&
         kv_element() == kernels::KvElement::k16Bit && kernels::cuda::WarpgroupPrefillAvailable();
}

template <typename T>
kernels::cuda::PrefillPath CudaBackend<T>::PrefillPathFor(int key_splits) const {
  using kernels::cuda::PrefillPath;
  switch (options_.cuda.attention_kernels) {
    case AttentionKernels::kMmaSync:
      return PrefillPath::kMmaSync;
    case AttentionKernels::kWarpgroup:
      return UseWarpgroupAttention() && key_splits <= 1 ? PrefillPath::kWarpgroup
                                                        : PrefillPath::kMmaSync;
    case AttentionKernels::kAuto:
      break;
  }
  return PrefillPath::kAuto;  // the kernels' own default
}

template <typename T>
bool CudaBackend<T>::UseWarpgroupDecode() const {
  return options_.cuda.attention_kernels != AttentionKernels::kMmaSync &&
         kv_element() == kernels::KvElement::k16Bit && kernels::cuda::WarpgroupPrefillAvailable() &&
         (config_.head_dim == 64 || config_.head_dim == 128) &&
         config_.num_heads / config_.num_kv_heads <= kernels::kWarpgroupDecodeMaxGroup;
}

template <typename T>
kernels::DecodeKernelChoice CudaBackend<T>::DecodeChoice(int num_seqs) const {
  const int max_keys =
      kernels::DecodeKeysPerQuery(options_.max_model_len, config_.attention_window());
  // On Hopper with a 16-bit cache, by default: the warpgroup kernel with a producer warp (TMA
  // copies, 3 slots), which measured 1.04-1.22x the mma.sync kernel on every row of `gqa-bench
  // kernels`, every group from 1 to 32, at head_dim 128 and 64 (kernels/BENCHMARKS.md step 25);
  // its cp.async variant where the driver has no tensor maps. Elsewhere, and with
  // --attention_kernels mma_sync, the mma.sync kernel.
  const bool deterministic = options_.backend.deterministic;
  kernels::DecodeKernelChoice choice =
      UseWarpgroupDecode()
          ? kernels::SelectWarpgroupDecodeKernel(
                config_.num_heads, config_.num_kv_heads, config_.head_dim, spec_.block_size,
                deterministic ? 1 : num_seqs, max_keys, device_->sm_count(),
                /*num_splits_override=*/0, /*fixed_grid=*/true)
          : kernels::SelectFixedGridDecodeKernel(
                config_.num_heads, config_.num_kv_heads, config_.head_dim, spec_.block_size,
                deterministic ? 1 : num_seqs, max_keys, device_->sm_count(), kv_element());
  // (The selector takes only cache blocks of whole 16-key tiles, what the TMA copies need.)
  if (choice.warpgroup) choice.producer = kernels::cuda::TensorMapsAvailable();
  // Deterministic: the grid of a batch of one whatever the batch, so each sequence's splits
  // depend on its length alone, and longer ones, so a large batch is not cut as finely.
  if (deterministic) choice.min_split_tiles = kernels::kDecodeDeterministicMinSplitTiles;
  return choice;
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
    act_.logits = b.Take<float>(s * full_vocab_);
    act_.sampled = b.Take<int32_t>(s);
    act_.logprobs_queries = b.Take<kernels::LogprobsQuery>(s);
    act_.logprobs_results = b.Take<kernels::LogprobsResult>(s);
    act_.inv_freq = b.Take<float>(c.head_dim / 2);
    act_.decode_workspace = b.Take<std::byte>(workspace);
    act_.norm_sums_attn = b.Take<float>(NormSumBlocks() * kernels::kSkinnyMmaMaxRows);
    act_.norm_sums_mlp = b.Take<float>(NormSumBlocks() * kernels::kSkinnyMmaMaxRows);
    if (tensor_parallel()) {  // last, so that the single-GPU layout is as it was
      const size_t per_rank = size_t(s) * VocabPerRank();
      act_.rank_logits = b.Take<float>(per_rank);
      act_.gathered_logits = b.Take<float>(size_t(shard_.world_size) * per_rank);
      act_.rank_best_keys = b.Take<uint64_t>(s);
      act_.gathered_best_keys = b.Take<uint64_t>(size_t(shard_.world_size) * s);
      act_.agree_scratch = b.Take<int64_t>(1);
    }
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
  absl::Status no_room;  // the weights and activations leave no memory for the pool
  if (blocks <= 0 && options_.cache.kv_cache_bytes > 0) {
    blocks = options_.cache.kv_cache_bytes / probe.bytes_per_block();
  } else if (blocks <= 0) {
    size_t free = 0, total = 0;
    GQA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free, &total));
    const double budget = options_.cache.gpu_memory_utilization * double(total) -
                          double(total - free) - double(kGraphReserveBytes);
    blocks = budget > 0 ? int64_t(budget / probe.bytes_per_block()) : 0;
    if (blocks < 1) {
      no_room = absl::ResourceExhaustedError(absl::StrCat(
          "the model does not fit on ", device_->name(), ": weights ",
          weights_.bytes() / 1073741824.0, " GiB and activations ",
          activation_memory_.bytes() / 1073741824.0, " GiB leave no room for a KV cache within ",
          "--gpu_memory_utilization ", options_.cache.gpu_memory_utilization, " of ",
          total / 1073741824.0, " GiB"));
    }
  }
  blocks = std::clamp<int64_t>(blocks, 0, (int64_t(1) << 31) / spec_.block_size - 1);
  if (tensor_parallel()) {  // one block table serves every rank: the smallest pool's blocks
    // Every rank reaches this collective, also one with no room: they all refuse together
    // after it rather than leave the others waiting in it.
    ASSIGN_OR_RETURN(blocks,
                     collectives_->AllReduceMin(blocks, act_.agree_scratch, device_->stream()));
  }
  if (!no_room.ok()) return no_room;
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
  // The scales' heads: this rank's (unit scales), or the checkpoint's, of which it takes its own.
  size_t all_heads = config_.num_kv_heads, first = 0;
  if (checkpoint) {
    ASSIGN_OR_RETURN(scales, LoadKvScales(*checkpoint));
    all_heads = checkpoint->config().num_kv_heads;
    first = shard_.kv_heads.begin;
  }
  const size_t heads = config_.num_kv_heads;
  std::vector<float> packed;  // [layers][k, v][kv_heads]
  for (int l = 0; l < config_.num_layers; ++l) {
    const size_t at = l * all_heads + first;
    packed.insert(packed.end(), scales.k.begin() + at, scales.k.begin() + at + heads);
    packed.insert(packed.end(), scales.v.begin() + at, scales.v.begin() + at + heads);
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
    ASSIGN_OR_RETURN(weights_, cuda::DeviceWeights::Upload(*checkpoint, options_.dtype,
                                                           options_.shard, *device_));
  } else {  // each rank its own random slice (rank 0's seed is the single GPU's)
    const uint64_t seed = options_.random_seed + (uint64_t(shard_.rank) << 32);
    ASSIGN_OR_RETURN(weights_, cuda::DeviceWeights::Random(c, options_.dtype, seed, *device_));
  }
  max_tokens_ =
      std::max(options_.scheduler.max_num_batched_tokens, options_.scheduler.max_num_seqs);
  skinny_max_rows_ = options_.backend.deterministic
                         ? 0
                         : std::clamp(options_.cuda.skinny_gemm_max_rows, 0, k::kSkinnyGemmMaxRows);
  // Every product of a layer must fit the skinny kernel for the fused layer.
  // Never under tensor parallelism: the fused kernels add a product into the residual, and a
  // rank's product is a partial sum that must be all-reduced first.
  skinny_fusion_ = !tensor_parallel() && options_.cuda.skinny_fusion && skinny_max_rows_ > 0 &&
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
  fused_max_rows_ =
      options_.backend.deterministic || tensor_parallel()
          ? 0
          : std::clamp(options_.cuda.fused_norm_max_rows, 0, kernels::kSkinnyMmaMaxRows);
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
  const cuda::Shard shard = options.shard;
  if (shard.world_size > 1 && options.collectives == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA backend rank ", shard.rank, " of ",
                                                   shard.world_size, ": no communicator"));
  }
  ASSIGN_OR_RETURN(const TensorParallelShard plan,
                   PlanTensorParallelShard(config, shard.rank, shard.world_size));
  const ModelConfig local = cuda::ShardConfig(config, plan);
  if (local.vocab_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_parallel_size ", shard.world_size, ": vocab_size ", config.vocab_size,
                     " leaves rank ", shard.rank, " no vocabulary rows (",
                     (config.vocab_size + shard.world_size - 1) / shard.world_size, " per rank)"));
  }
  auto backend =
      std::unique_ptr<CudaBackend<T>>(new CudaBackend<T>(options, local, plan, config.vocab_size));
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
    // Only a rank asks (the single GPU samples its whole logits either way).
    const bool greedy_only = tensor_parallel() && EveryRowGreedy(plan);
    if (absl::Status launched = LaunchSampling(shape, step.slot, greedy_only); !launched.ok()) {
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
  RETURN_IF_ERROR(LaunchSampling(shape, slot, /*greedy_only=*/false));  // logprobs: whole rows
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
  logits_gathered_ = !tensor_parallel();
  if (profiling_) {
    RETURN_IF_ERROR(Check(
        cuda::CudaStatus(profiler_.RecordStepStart(device_->stream()), "profiler: step start")));
  }
  if (padded > 0) {
    const auto& graphs = profiling_ ? profiled_graphs_ : graphs_;
    if (tensor_parallel()) collectives_->NoteGraphLaunch();  // the graph holds the step's
    RETURN_IF_ERROR(Check(cuda::CudaStatus(cudaGraphLaunch(graphs.at(padded), device_->stream()),
                                           "cudaGraphLaunch")));
  } else {
    RETURN_IF_ERROR(Check(Launch(shape)));
  }
  return shape;
}

template <typename T>
absl::Status CudaBackend<T>::LaunchSampling(const StepShape& shape, int slot, bool greedy_only) {
  const int n = shape.num_samples;
  cudaStream_t stream = device_->stream();
  if (tensor_parallel() && greedy_only) {
    RETURN_IF_ERROR(Check(SampleGreedyAcrossRanks(n)));
  } else {
    if (!logits_gathered_) {
      RETURN_IF_ERROR(Check(GatherLogits(logit_rows_)));
      logits_gathered_ = true;
    }
    RETURN_IF_ERROR(Check(cuda::CudaStatus(k::SampleTokens(act_.logits, inputs_.device().sampling,
                                                           n, full_vocab_, act_.sampled, stream),
                                           "SampleTokens")));
  }
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
    if (q.row < 0 || q.row >= logit_rows_ || q.token < 0 || q.token >= full_vocab_) {
      return absl::InternalError(absl::StrCat("logprobs: row ", q.row, " token ", q.token,
                                              " outside ", logit_rows_, " x ", full_vocab_,
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
      Check(cuda::CudaStatus(k::ComputeLogprobs(act_.logits, act_.logprobs_queries, n, full_vocab_,
                                                act_.logprobs_results, stream),
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
  if (!logits_gathered_) {  // a collective: every rank calls this at once (TensorParallelBackend)
    RETURN_IF_ERROR(Check(GatherLogits(logit_rows_)));
    logits_gathered_ = true;
  }
  std::vector<float> logits(size_t(logit_rows_) * full_vocab_);
  RETURN_IF_ERROR(Check(
      cuda::CudaStatus(cudaMemcpyAsync(logits.data(), act_.logits, logits.size() * sizeof(float),
                                       cudaMemcpyDeviceToHost, device_->stream()),
                       "copy logits")));
  RETURN_IF_ERROR(
      Check(cuda::CudaStatus(cudaStreamSynchronize(device_->stream()), "forward step")));
  return logits;
}

template class CudaBackend<__nv_bfloat16>;
template class CudaBackend<__half>;

}  // namespace cuda_backend_internal

namespace {

using cuda_backend_internal::CudaBackend;

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

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  RETURN_IF_ERROR(cuda::CudaStatus(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  return count;
}

absl::StatusOr<std::string> CudaDeviceName(int device_index) {
  if (device_index != 0) return absl::UnimplementedError("only GPU 0 is used");
  return cuda::FirstGpuName();
}

}  // namespace gqa
