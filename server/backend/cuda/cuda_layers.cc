// One step's kernels of the CUDA backend: the embedding, the layers (unfused, with fused norms
// on the tensor-core products, or fused into the CUDA-core products for one-token steps),
// attention and the products; as a tensor-parallel rank, the unfused layers with their
// collectives. The class is in cuda_backend_impl.h.
#include "backend/cuda/cuda_backend_impl.h"

namespace gqa::cuda_backend_internal {

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
  return WithCache(l,
                   [&](const auto& cache) { return AttentionOver(l, shape, cache, qkv_appended); });
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
    split_shape.warpgroup_unsplit = kernels::cuda::WarpgroupPrefillRunsUnsplit(
        PrefillPathFor(/*key_splits=*/1), kv_element() != kernels::KvElement::k16Bit);
    args.key_splits = kernels::SelectPrefillKeySplits(split_shape);
    args.path = PrefillPathFor(args.key_splits);
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
    return cuda::CudaStatus(k::SkinnyGemm<T, Out>(input, stride, kind, Typed(w), Typed(bias), m, n,
                                                  k, y, device_->stream()),
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
  RETURN_IF_ERROR(SumAcrossRanks(act_.proj, size_t(n) * h));  // a partial sum per rank
  GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(act_.proj, act_.residual, Typed(w.post_norm), n, h,
                                            c.rms_norm_eps, act_.normed, stream));
  RETURN_IF_ERROR(
      Linear(act_.normed, kPlain, w.gate_up, w.gate_up_bias, n, 2 * inter, h, act_.gate_up));
  RETURN_IF_ERROR(Linear(act_.gate_up, k::SkinnyInput::kSiluGateUp, w.down, w.down_bias, n, h,
                         inter, act_.proj));
  RETURN_IF_ERROR(SumAcrossRanks(act_.proj, size_t(n) * h));
  const void* next_norm =
      l + 1 < c.num_layers ? weights_.layer(l + 1).input_norm : weights_.final_norm();
  GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(act_.proj, act_.residual, Typed(next_norm), n, h,
                                            c.rms_norm_eps, act_.normed, stream));
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaBackend<T>::FusedLayer(int l, const StepShape& shape) {
  const ModelConfig& c = config_;
  const cuda::LayerWeights& w = weights_.layer(l);
  const int n = shape.num_tokens, h = c.hidden_size, inter = c.intermediate_size;
  cudaStream_t stream = device_->stream();
  // The input norm: layer 0's came from Launch's RmsNorm, later ones from the sums the
  // previous layer's down projection left.
  const k::SkinnyMmaFusion<T> qkv_in =
      l > 0 ? NormalizedInput(w.input_norm, act_.norm_sums_mlp) : k::SkinnyMmaFusion<T>{};
  const T* qkv_x = l > 0 ? act_.residual : act_.normed;
  const int qkv_n = c.q_size() + 2 * c.kv_size();
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyMmaGemmFused<T>(qkv_x, h, Typed(w.qkv), Typed(w.qkv_bias), n,
                                                    qkv_n, h, act_.qkv, qkv_in, skinny_workspace_,
                                                    stream));
  RETURN_IF_ERROR(Attention(l, shape));
  k::SkinnyMmaFusion<T> o_out;
  o_out.residual = act_.residual;
  o_out.norm_sums_out = act_.norm_sums_attn;
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyMmaGemmFused<T>(act_.attn, c.q_size(), Typed(w.o),
                                                    Typed(w.o_bias), n, h, c.q_size(), nullptr,
                                                    o_out, skinny_workspace_, stream));
  const k::SkinnyMmaFusion<T> gate_up_in = NormalizedInput(w.post_norm, act_.norm_sums_attn);
  GQA_CUDA_RETURN_IF_ERROR(
      k::SkinnyMmaGemmFused<T>(act_.residual, h, Typed(w.gate_up), Typed(w.gate_up_bias), n,
                               2 * inter, h, act_.gate_up, gate_up_in, skinny_workspace_, stream));
  k::SkinnyMmaFusion<T> down;
  down.silu_gate_up = true;
  down.residual = act_.residual;
  down.norm_sums_out = act_.norm_sums_mlp;
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyMmaGemmFused<T>(act_.gate_up, 2 * inter, Typed(w.down),
                                                    Typed(w.down_bias), n, h, inter, nullptr, down,
                                                    skinny_workspace_, stream));
  if (l + 1 == c.num_layers) {  // the final norm, for the logit rows
    GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(nullptr, act_.residual, Typed(weights_.final_norm()),
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
  const k::SkinnyNorm<T> norm{Typed(w.input_norm), c.rms_norm_eps};
  return cuda::CudaStatus(
      k::SkinnyGemmRopeAppend<T, KV>(act_.residual, h, norm, Typed(w.qkv), Typed(w.qkv_bias),
                                     shape.num_tokens, c.q_size() + 2 * c.kv_size(), h, rope,
                                     device_->stream()),
      "SkinnyGemmRopeAppend");
}

template <typename T>
absl::Status CudaBackend<T>::SkinnyFusedLayer(int l, const StepShape& shape) {
  const ModelConfig& c = config_;
  const cuda::LayerWeights& w = weights_.layer(l);
  const int n = shape.num_tokens, h = c.hidden_size, inter = c.intermediate_size;
  cudaStream_t stream = device_->stream();
  constexpr auto kPlain = k::SkinnyInput::kPlain;
  // The QKV product holds the RoPE and the KV append, so the profiler's attention time (from
  // Attention) is the attention kernels' alone here.
  RETURN_IF_ERROR(
      WithCache(l, [&](const auto& cache) { return SkinnyQkvRopeAppend(l, shape, cache); }));
  RETURN_IF_ERROR(Attention(l, shape, /*qkv_appended=*/true));
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyGemmFused<T>(act_.attn, c.q_size(), kPlain, {}, Typed(w.o),
                                                 Typed(w.o_bias), n, h, c.q_size(), nullptr,
                                                 act_.residual, stream));
  const k::SkinnyNorm<T> post_norm{Typed(w.post_norm), c.rms_norm_eps};
  GQA_CUDA_RETURN_IF_ERROR(k::SkinnyGemmFused<T>(act_.residual, h, kPlain, post_norm,
                                                 Typed(w.gate_up), Typed(w.gate_up_bias), n,
                                                 2 * inter, h, act_.gate_up, nullptr, stream));
  GQA_CUDA_RETURN_IF_ERROR(
      k::SkinnyGemmFused<T>(act_.gate_up, 2 * inter, k::SkinnyInput::kSiluGateUp, {}, Typed(w.down),
                            Typed(w.down_bias), n, h, inter, nullptr, act_.residual, stream));
  if (l + 1 == c.num_layers) {  // the final norm, for the logit rows
    GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(nullptr, act_.residual, Typed(weights_.final_norm()),
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
  if (tensor_parallel()) {
    RETURN_IF_ERROR(EmbedAcrossRanks(n));
  } else {
    GQA_CUDA_RETURN_IF_ERROR(
        k::EmbeddingGather<T>(Typed(weights_.embed()), in.token_ids, n, h, act_.residual, stream));
  }
  if (skinny_fused(shape)) {  // each layer normalises its own input
    for (int l = 0; l < c.num_layers; ++l) RETURN_IF_ERROR(SkinnyFusedLayer(l, shape));
  } else {
    GQA_CUDA_RETURN_IF_ERROR(k::AddRmsNorm<T>(nullptr, act_.residual,
                                              Typed(weights_.layer(0).input_norm), n, h,
                                              c.rms_norm_eps, act_.normed, stream));
    for (int l = 0; l < c.num_layers; ++l) {
      RETURN_IF_ERROR(fused(shape) ? FusedLayer(l, shape) : Layer(l, shape));
    }
  }
  // The wanted rows only, then the vocabulary projection in fp32.
  GQA_CUDA_RETURN_IF_ERROR(k::EmbeddingGather<T>(act_.normed, in.logit_rows, shape.num_logit_rows,
                                                 h, act_.logit_hidden, stream));
  if (!tensor_parallel()) {
    return Linear(act_.logit_hidden, k::SkinnyInput::kPlain, weights_.lm_head(), nullptr,
                  shape.num_logit_rows, c.vocab_size, h, act_.logits);
  }
  // This rank's vocabulary rows of the lm_head; the sampling exchanges what it needs
  // (LaunchSampling).
  return Linear(act_.logit_hidden, k::SkinnyInput::kPlain, weights_.lm_head(), nullptr,
                shape.num_logit_rows, c.vocab_size, h, act_.rank_logits);
}

template <typename T>
absl::Status CudaBackend<T>::SumAcrossRanks(T* buf, size_t count) {
  if (!tensor_parallel()) return absl::OkStatus();
  return collectives_->AllReduceSum(buf, count, options_.dtype, device_->stream());
}

template <typename T>
absl::Status CudaBackend<T>::EmbedAcrossRanks(int num_tokens) {
  const int h = config_.hidden_size;
  GQA_CUDA_RETURN_IF_ERROR(k::EmbeddingGatherVocabSlice<T>(
      Typed(weights_.embed()), inputs_.device().token_ids, num_tokens, h, shard_.vocab.begin,
      shard_.vocab.end, act_.residual, device_->stream()));
  return SumAcrossRanks(act_.residual, size_t(num_tokens) * h);
}

template <typename T>
absl::Status CudaBackend<T>::GatherLogits(int rows) {
  if (rows == 0) return absl::OkStatus();
  cudaStream_t stream = device_->stream();
  const size_t per_rank = VocabPerRank();
  // Every rank sends rows x per_rank values (the last rank's slice may be narrower: its extra
  // values are never read).
  RETURN_IF_ERROR(collectives_->AllGather(act_.rank_logits, act_.gathered_logits,
                                          size_t(rows) * per_rank, DType::kF32, stream));
  for (int q = 0; q < shard_.world_size; ++q) {
    const size_t begin = std::min<size_t>(full_vocab_, q * per_rank);
    const size_t width = std::min<size_t>(full_vocab_, begin + per_rank) - begin;
    if (width == 0) continue;
    // Rank q's block: [rows, width] contiguous; into columns [begin, begin + width) of logits.
    const float* block = act_.gathered_logits + size_t(q) * rows * per_rank;
    GQA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
        act_.logits + begin, size_t(full_vocab_) * sizeof(float), block, width * sizeof(float),
        width * sizeof(float), rows, cudaMemcpyDeviceToDevice, stream));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaBackend<T>::SampleGreedyAcrossRanks(int rows) {
  if (rows == 0) return absl::OkStatus();
  cudaStream_t stream = device_->stream();
  // This rank's logits: [rows, its slice width], token ids from its first vocabulary row.
  GQA_CUDA_RETURN_IF_ERROR(k::BestKeysOfSlice(act_.rank_logits, rows, config_.vocab_size,
                                              int(shard_.vocab.begin), act_.rank_best_keys,
                                              stream));
  RETURN_IF_ERROR(
      collectives_->AllGatherKeys(act_.rank_best_keys, act_.gathered_best_keys, rows, stream));
  GQA_CUDA_RETURN_IF_ERROR(k::TokensFromBestKeys(act_.gathered_best_keys, shard_.world_size, rows,
                                                 act_.sampled, stream));
  return absl::OkStatus();
}

template class CudaBackend<__nv_bfloat16>;
template class CudaBackend<__half>;

}  // namespace gqa::cuda_backend_internal
