#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "backend/kv_scales.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/parallel.h"
#include "gqa/kernels/rope.h"
#include "model/tensor_names.h"

namespace gqa {
namespace {

namespace cpu = kernels::cpu;

std::vector<float> ToFloat(const TensorView& t) {
  std::vector<float> out(t.numel());
  ConvertToFloat(t.dtype, t.data, out.size(), out.data());
  return out;
}

const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

kernels::cpu::WeightType WeightTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return kernels::cpu::WeightType::kF16;
    case DType::kBF16:
      return kernels::cpu::WeightType::kBF16;
    case DType::kF32:
      break;
  }
  return kernels::cpu::WeightType::kF32;
}

// Reads one byte of every page, so that a mapped tensor is in memory before the first request
// instead of faulting in during it.
void TouchPages(const TensorView& t) {
  constexpr size_t kPage = 4096;
  volatile std::byte sink{};
  for (size_t offset = 0; offset < t.nbytes; offset += kPage) sink = t.data[offset];
  (void)sink;
}

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace

uint64_t CpuBackend::weight_bytes_per_step() const { return weight_bytes_; }

// The bytes the backend reads for its weights in one step: each matrix in place at its stored
// size (or widened to fp32), the norms as fp32 copies; biases left out as in backend/roofline.h.
uint64_t CpuBackend::CountWeightBytes() const {
  const ModelConfig& c = config_;
  auto bytes = [](const WeightView& w, uint64_t rows, uint64_t cols) {
    const uint64_t element = w.type == kernels::cpu::WeightType::kF32 ? 4 : 2;
    return rows * cols * element;
  };
  const uint64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), ffn = c.intermediate_size;
  uint64_t total = bytes(lm_head_, c.vocab_size, h) + 4 * h;
  for (const Layer& L : layers_) {
    total += bytes(L.q, q, h) + bytes(L.k, kv, h) + bytes(L.v, kv, h) + bytes(L.o, h, q) +
             bytes(L.gate, ffn, h) + bytes(L.up, ffn, h) + bytes(L.down, h, ffn) + 2 * 4 * h;
  }
  return total;
}

absl::StatusOr<double> CpuBackend::MeasureReadBandwidth() {
  constexpr int64_t kWords = (128ll << 20) / sizeof(uint64_t);
  constexpr int64_t kChunk = 1 << 18;
  auto buffer = std::make_unique<uint64_t[]>(kWords);
  kernels::cpu::ParallelFor(kWords, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) buffer[i] = static_cast<uint64_t>(i);
  });
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::atomic<uint64_t> sink{0};
    const auto start = SteadyClock::now();
    kernels::cpu::ParallelFor(kWords, kChunk, [&](int64_t begin, int64_t end) {
      uint64_t sum = 0;
      for (int64_t i = begin; i < end; ++i) sum += buffer[i];
      sink.fetch_add(sum, std::memory_order_relaxed);
    });
    const double seconds = SecondsSince(start);
    if (sink.load() != uint64_t(kWords) * (kWords - 1) / 2) {
      return absl::InternalError("read bandwidth probe: wrong sum");
    }
    best = std::max(best, kWords * sizeof(uint64_t) / seconds);
  }
  return best;
}

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(
    std::shared_ptr<const Checkpoint> checkpoint, int block_size, int num_blocks,
    KvCacheDType cache_dtype, int max_seqs, int max_model_len) {
  if (block_size <= 0 || num_blocks <= 0) {
    return absl::InvalidArgumentError("KV cache needs a positive block size and block count");
  }
  if (max_seqs <= 0 || max_model_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block tables need positive max_seqs (",
                                                   max_seqs, ") and max_model_len (", max_model_len,
                                                   ")"));
  }
  BlockTables tables(max_seqs, (max_model_len + block_size - 1) / block_size);
  auto backend =
      std::unique_ptr<CpuBackend>(new CpuBackend(std::move(checkpoint), std::move(tables)));
  const ModelConfig& c = backend->config_;
  backend->spec_ = KvCacheSpec{block_size,   num_blocks,  c.num_kv_heads, c.head_dim,
                               c.num_layers, DType::kF32, cache_dtype};
  backend->inv_freq_ = kernels::RopeInverseFrequencies(c.rope_theta, c.head_dim, c.rope_scaling);
  backend->LoadWeights();
  if (absl::Status e = backend->AllocateKvCache(); !e.ok()) return e;
  backend->weight_bytes_ = backend->CountWeightBytes();
  return backend;
}

CpuBackend::WeightView CpuBackend::Matrix(const std::string& name) {
  const TensorView& t = checkpoint_->Get(name);
  if (reinterpret_cast<uintptr_t>(t.data) % DTypeSize(t.dtype) != 0) {
    widened_.push_back(ToFloat(t));
    return {widened_.back().data(), kernels::cpu::WeightType::kF32};
  }
  TouchPages(t);
  return {t.data, WeightTypeOf(t.dtype)};
}

void CpuBackend::LoadWeights() {
  const Checkpoint& ckpt = *checkpoint_;
  auto get = [&](const std::string& name) { return ToFloat(ckpt.Get(name)); };
  auto get_if = [&](bool present, int l, const char* suffix) {
    return present ? get(LayerTensorName(l, suffix)) : std::vector<float>{};
  };
  auto matrix = [&](int l, const char* suffix) { return Matrix(LayerTensorName(l, suffix)); };
  embed_ = Matrix(tensor_names::kEmbed);
  final_norm_ = get(tensor_names::kFinalNorm);
  lm_head_ = config_.tie_word_embeddings ? embed_ : Matrix(tensor_names::kLmHead);
  layers_.resize(config_.num_layers);
  for (int l = 0; l < config_.num_layers; ++l) {
    Layer& L = layers_[l];
    L.input_norm = get(LayerTensorName(l, tensor_names::kInputNorm));
    L.q = matrix(l, tensor_names::kQ);
    L.k = matrix(l, tensor_names::kK);
    L.v = matrix(l, tensor_names::kV);
    L.o = matrix(l, tensor_names::kO);
    L.q_bias = get_if(config_.qkv_bias, l, tensor_names::kQBias);
    L.k_bias = get_if(config_.qkv_bias, l, tensor_names::kKBias);
    L.v_bias = get_if(config_.qkv_bias, l, tensor_names::kVBias);
    L.o_bias = get_if(config_.o_bias, l, tensor_names::kOBias);
    L.post_norm = get(LayerTensorName(l, tensor_names::kPostNorm));
    L.gate = matrix(l, tensor_names::kGate);
    L.up = matrix(l, tensor_names::kUp);
    L.down = matrix(l, tensor_names::kDown);
    L.gate_bias = get_if(config_.mlp_bias, l, tensor_names::kGateBias);
    L.up_bias = get_if(config_.mlp_bias, l, tensor_names::kUpBias);
    L.down_bias = get_if(config_.mlp_bias, l, tensor_names::kDownBias);
  }
}

absl::Status CpuBackend::AllocateKvCache() {
  const size_t cache_elems = static_cast<size_t>(spec_.num_blocks) * spec_.num_kv_heads *
                             spec_.block_size * spec_.head_dim;
  const bool fp8 = spec_.cache_dtype == KvCacheDType::kFp8E4M3;
  KvScales scales;
  if (fp8) {
    absl::StatusOr<KvScales> loaded = LoadKvScales(*checkpoint_);
    if (!loaded.ok()) return loaded.status();
    scales = std::move(*loaded);
  }
  const size_t heads = spec_.num_kv_heads;
  for (int l = 0; l < config_.num_layers; ++l) {
    Layer& L = layers_[l];
    if (fp8) {
      L.k_cache8.assign(cache_elems, 0);
      L.v_cache8.assign(cache_elems, 0);
      L.k_scale.assign(scales.k.begin() + l * heads, scales.k.begin() + (l + 1) * heads);
      L.v_scale.assign(scales.v.begin() + l * heads, scales.v.begin() + (l + 1) * heads);
    } else {
      L.k_cache.assign(cache_elems, 0.0f);
      L.v_cache.assign(cache_elems, 0.0f);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CpuBackend::StepInputs> CpuBackend::Flatten(const StepPlan& plan) const {
  StepInputs in;
  absl::StatusOr<std::vector<int32_t>> tokens = ResolvedTokens(plan.seqs, previous_sampled_);
  if (!tokens.ok()) return tokens.status();
  in.token_ids = std::move(*tokens);
  in.query_start.push_back(0);
  std::vector<int> slots;
  for (const ScheduledSeq& s : plan.seqs) {
    const int slot = tables_.SlotOf(s.seq_id);
    const int needed =
        (s.start_pos + static_cast<int>(s.chunk.size()) + spec_.block_size - 1) / spec_.block_size;
    if (s.chunk.empty() || slot < 0 || tables_.NumBlocks(slot) < needed) {
      return absl::InternalError(
          absl::StrCat("step plan: sequence ", s.seq_id, " lacks tokens or cache blocks"));
    }
    slots.push_back(slot);
    in.max_blocks = std::max(in.max_blocks, needed);
  }
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSeq& s = plan.seqs[i];
    const std::span<const int32_t> table = tables_.Row(slots[i]);
    const int n = static_cast<int>(s.chunk.size());
    for (int t = 0; t < n; ++t) {
      const int pos = s.start_pos + t;
      in.positions.push_back(pos);
      const int block = table[pos / spec_.block_size];
      in.slots.push_back(static_cast<int64_t>(block) * spec_.block_size + pos % spec_.block_size);
    }
    in.query_start.push_back(in.query_start.back() + n);
    in.context_lens.push_back(s.start_pos + n);
    const auto row = table.first(std::min<size_t>(table.size(), in.max_blocks));
    in.block_tables.insert(in.block_tables.end(), row.begin(), row.end());
    in.block_tables.resize(in.block_tables.size() + in.max_blocks - row.size(), -1);
    in.sample_rows += s.samples ? 1 : 0;
  }
  const std::vector<int32_t> row_of_token = LogitsRowOfTokens(plan.seqs);
  for (size_t t = 0; t < row_of_token.size(); ++t) {
    if (row_of_token[t] < 0) continue;
    if (static_cast<size_t>(row_of_token[t]) >= in.logit_rows.size()) {
      in.logit_rows.resize(row_of_token[t] + 1);
    }
    in.logit_rows[row_of_token[t]] = static_cast<int32_t>(t);
  }
  return in;
}

void CpuBackend::Attention(Layer& L, const StepInputs& in, Activations& act, int n) {
  const ModelConfig& c = config_;
  cpu::Matmul(act.normed.data(), L.q, OrNull(L.q_bias), n, c.q_size(), c.hidden_size, act.q.data());
  cpu::Matmul(act.normed.data(), L.k, OrNull(L.k_bias), n, c.kv_size(), c.hidden_size,
              act.k.data());
  cpu::Matmul(act.normed.data(), L.v, OrNull(L.v_bias), n, c.kv_size(), c.hidden_size,
              act.v.data());
  // Timed as on the GPU: rotary embedding, K/V append and attention, not the projections.
  const auto attention_start = SteadyClock::now();
  cpu::ApplyRope(act.q.data(), in.positions.data(), inv_freq_.data(), n, c.num_heads, c.head_dim);
  cpu::ApplyRope(act.k.data(), in.positions.data(), inv_freq_.data(), n, c.num_kv_heads,
                 c.head_dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int num_seqs = static_cast<int>(in.context_lens.size());
  if (spec_.cache_dtype == KvCacheDType::kFp8E4M3) {
    const kernels::PagedKvView<uint8_t> cache{
        L.k_cache8.data(), L.v_cache8.data(), in.block_tables.data(),
        in.max_blocks,     c.num_kv_heads,    spec_.block_size,
        c.head_dim,        L.k_scale.data(),  L.v_scale.data()};
    cpu::PagedKvAppend(act.k.data(), act.v.data(), in.slots.data(), n, cache);
    cpu::PagedAttention(act.q.data(), cache, in.query_start.data(), in.context_lens.data(),
                        num_seqs, c.num_heads, scale, act.attn.data(), c.attention_window());
  } else {
    const kernels::PagedKvView<float> cache{
        L.k_cache.data(), L.v_cache.data(), in.block_tables.data(), in.max_blocks, c.num_kv_heads,
        spec_.block_size, c.head_dim};
    cpu::PagedKvAppend(act.k.data(), act.v.data(), in.slots.data(), n, cache);
    cpu::PagedAttention(act.q.data(), cache, in.query_start.data(), in.context_lens.data(),
                        num_seqs, c.num_heads, scale, act.attn.data(), c.attention_window());
  }
  if (profiling_) pending_timing_.attention_seconds += SecondsSince(attention_start);
  cpu::Matmul(act.attn.data(), L.o, OrNull(L.o_bias), n, c.hidden_size, c.q_size(),
              act.proj.data());
}

void CpuBackend::Mlp(const Layer& L, Activations& act, int n) {
  const ModelConfig& c = config_;
  cpu::Matmul(act.normed.data(), L.gate, OrNull(L.gate_bias), n, c.intermediate_size, c.hidden_size,
              act.gate.data());
  cpu::Matmul(act.normed.data(), L.up, OrNull(L.up_bias), n, c.intermediate_size, c.hidden_size,
              act.up.data());
  cpu::SiluMul(act.gate.data(), act.up.data(), n, c.intermediate_size, act.gate.data());
  cpu::Matmul(act.gate.data(), L.down, OrNull(L.down_bias), n, c.hidden_size, c.intermediate_size,
              act.proj.data());
}

void CpuBackend::ComputeLogits(const StepInputs& in, const Activations& act) {
  const int h = config_.hidden_size;
  logit_rows_ = static_cast<int>(in.logit_rows.size());
  sample_rows_ = in.sample_rows;
  std::vector<float> rows(static_cast<size_t>(logit_rows_) * h);
  for (int r = 0; r < logit_rows_; ++r) {
    std::copy_n(act.normed.data() + static_cast<size_t>(in.logit_rows[r]) * h, h,
                rows.data() + static_cast<size_t>(r) * h);
  }
  logits_.resize(static_cast<size_t>(logit_rows_) * config_.vocab_size);
  cpu::Matmul(rows.data(), lm_head_, nullptr, logit_rows_, config_.vocab_size, h, logits_.data());
}

absl::StatusOr<StepOutput> CpuBackend::ExecuteStep(const StepPlan& plan) {
  const auto start = SteadyClock::now();
  profiling_ = std::exchange(profile_next_, false);
  pending_timing_ = StepTiming{};
  last_timing_.reset();
  if (absl::Status st = tables_.Apply(plan.tables); !st.ok()) return st;
  absl::StatusOr<StepInputs> in = Flatten(plan);
  if (!in.ok()) return in.status();
  if (!in->token_ids.empty()) Forward(*in);
  StepOutput out;
  out.sampled = Sample(plan);
  if (!plan.seqs.empty())
    previous_sampled_ = out.sampled;  // what the next plan's placeholders read
  const StepLogprobsQueries asked = BuildLogprobsQueries(plan.seqs, out.sampled);
  absl::StatusOr<std::vector<LogprobsResult>> answers = Logprobs(asked.queries);
  if (!answers.ok()) return answers.status();
  StoreLogprobs(asked, *answers, plan.seqs.size(), out);
  if (profiling_) {
    pending_timing_.step_seconds = SecondsSince(start);
    last_timing_ = pending_timing_;
    profiling_ = false;
  }
  return out;
}

void CpuBackend::Forward(const StepInputs& in) {
  const ModelConfig& c = config_;
  const int n = static_cast<int>(in.token_ids.size());
  Activations act;
  act.residual.resize(static_cast<size_t>(n) * c.hidden_size);
  act.normed.resize(act.residual.size());
  act.proj.resize(act.residual.size());
  act.q.resize(static_cast<size_t>(n) * c.q_size());
  act.attn.resize(act.q.size());
  act.k.resize(static_cast<size_t>(n) * c.kv_size());
  act.v.resize(act.k.size());
  act.gate.resize(static_cast<size_t>(n) * c.intermediate_size);
  act.up.resize(act.gate.size());

  cpu::EmbeddingGather(embed_, in.token_ids.data(), n, c.hidden_size, act.residual.data());
  cpu::RmsNorm(act.residual.data(), layers_[0].input_norm.data(), n, c.hidden_size, c.rms_norm_eps,
               act.normed.data());
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = layers_[l];
    Attention(L, in, act, n);
    cpu::AddRmsNorm(act.proj.data(), act.residual.data(), L.post_norm.data(), n, c.hidden_size,
                    c.rms_norm_eps, act.normed.data());
    Mlp(L, act, n);
    const float* next_norm =
        l + 1 < c.num_layers ? layers_[l + 1].input_norm.data() : final_norm_.data();
    cpu::AddRmsNorm(act.proj.data(), act.residual.data(), next_norm, n, c.hidden_size,
                    c.rms_norm_eps, act.normed.data());
  }
  ComputeLogits(in, act);
}

std::vector<int32_t> CpuBackend::Sample(const StepPlan& plan) const {
  std::vector<int32_t> tokens;
  const size_t vocab = config_.vocab_size;
  for (const ScheduledSeq& s : plan.seqs) {
    if (!s.samples) continue;
    const size_t r = tokens.size();
    tokens.push_back(
        kernels::cpu::SampleToken(logits_.data() + r * vocab, static_cast<int>(vocab), s.sampling));
  }
  return tokens;
}

absl::StatusOr<std::vector<LogprobsResult>> CpuBackend::Logprobs(
    std::span<const LogprobsQuery> queries) const {
  const int vocab = config_.vocab_size;
  std::vector<LogprobsResult> results(queries.size());
  for (size_t q = 0; q < queries.size(); ++q) {
    const LogprobsQuery& query = queries[q];
    if (query.row < 0 || query.row >= logit_rows_ || query.token < 0 || query.token >= vocab) {
      return absl::InternalError(absl::StrCat("logprobs: row ", query.row, " token ", query.token,
                                              " outside ", logit_rows_, " x ", vocab, " logits"));
    }
    results[q] =
        kernels::cpu::ComputeLogprobs(logits_.data() + size_t(query.row) * vocab, vocab, query);
  }
  return results;
}

}  // namespace gqa
