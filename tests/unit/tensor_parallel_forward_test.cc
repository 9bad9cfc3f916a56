// Tensor parallelism composes to the unsharded model: one decoder layer, the final norm and the
// lm_head on random weights, computed whole (as the CPU backend computes it) and computed by the
// ranks of PlanTensorParallelShard, each holding only the slices the plan names, with the
// all-reduces done here as sums over the ranks' partial outputs. Hidden states and logits agree
// within a float tolerance (the sums are reassociated), and the greedy token, chosen from each
// rank's (max, index) candidate without gathering the logits, is the unsharded argmax.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/step_plan.h"
#include "common/test_checkpoint.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/paged_kv.h"
#include "gqa/kernels/rope.h"
#include "gqa/kernels/sampling.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/tensor_names.h"
#include "model/tensor_parallel.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

namespace cpu = kernels::cpu;

// A Llama-family shape and the world sizes the plan must accept for it (of 1, 2, 4, 8).
struct Shape {
  const char* name;
  int heads, kv_heads, head_dim, intermediate, vocab;
  bool biases = false;  // q/k/v/o and gate/up/down biases (Llama's attention_bias, mlp_bias)
  bool tied = false;    // lm_head is the embedding
  std::vector<int> world_sizes;
};

const std::vector<Shape>& Shapes() {
  static const std::vector<Shape> shapes = {
      {"MHA", 8, 8, 64, 1024, 1001, false, false, {1, 2, 4, 8}},
      {"GQA, KV replicated past 2 ranks", 8, 2, 128, 2048, 517, false, false, {1, 2, 4, 8}},
      {"MQA, tied embeddings", 8, 1, 128, 2048, 1001, false, true, {1, 2, 4, 8}},
      {"12 heads over 2 KV heads (8 ranks refused)", 12, 2, 64, 1536, 300, false, false, {1, 2, 4}},
      // 13 tokens over 8 ranks: 2 each, rank 6 holds one, rank 7 none.
      {"GQA with biases, tiny vocabulary", 8, 4, 64, 1024, 13, true, false, {1, 2, 4, 8}},
  };
  return shapes;
}

ModelConfig ConfigOf(const Shape& s) {
  ModelConfig c = testing::TinyConfig(s.kv_heads, DType::kF32);
  c.num_layers = 1;
  c.num_heads = s.heads;
  c.head_dim = s.head_dim;
  c.hidden_size = s.heads * s.head_dim;
  c.intermediate_size = s.intermediate;
  c.vocab_size = s.vocab;
  c.qkv_bias = c.o_bias = c.mlp_bias = s.biases;
  c.tie_word_embeddings = s.tied;
  return c;
}

// fp32 random weights of `config` (the dummy loader's values: activations stay O(1)).
std::shared_ptr<const Checkpoint> RandomModel(const ModelConfig& config, uint64_t seed) {
  testing::TempDir dir;
  std::ofstream(dir.path() / "config.json") << ModelConfigToJson(config).dump();
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kDummy, seed);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  return ckpt.ok() ? std::shared_ptr<const Checkpoint>(std::move(*ckpt)) : nullptr;
}

// A tensor's fp32 data, or nullptr when the checkpoint lacks it (absent biases).
const float* Data(const Checkpoint& ckpt, const std::string& name) {
  return ckpt.Has(name) ? reinterpret_cast<const float*>(ckpt.Get(name).data) : nullptr;
}
const float* LayerData(const Checkpoint& ckpt, const char* suffix) {
  return Data(ckpt, LayerTensorName(0, suffix));
}
const float* LmHead(const Checkpoint& ckpt) {
  return Data(ckpt,
              ckpt.config().tie_word_embeddings ? tensor_names::kEmbed : tensor_names::kLmHead);
}

// A short causal prompt in a paged cache: positions 0..9 over blocks {2, 0, 3} of size 4.
struct Prompt {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
  std::vector<int64_t> slots;
  std::vector<int32_t> block_table = {2, 0, 3};
  static constexpr int kBlockSize = 4;
  static constexpr int kNumBlocks = 4;
  int size() const { return static_cast<int>(tokens.size()); }
};

// The first and last tokens of the vocabulary and one in each eighth of it, so that every rank
// (of up to 8) that holds embedding rows looks some up.
Prompt PromptFor(int vocab) {
  Prompt p;
  p.tokens = {0, vocab - 1};
  for (int i = 0; i < 8; ++i) p.tokens.push_back((2 * i + 1) * vocab / 16);
  for (int t = 0; t < p.size(); ++t) {
    p.positions.push_back(t);
    p.slots.push_back(int64_t{p.block_table[t / Prompt::kBlockSize]} * Prompt::kBlockSize +
                      t % Prompt::kBlockSize);
  }
  return p;
}

// What the attention block multiplies by: the whole model's matrices, or one rank's slices of
// them. Host fp32, row-major as Hugging Face stores them.
struct AttentionWeights {
  int heads = 0, kv_heads = 0;
  const float* q = nullptr;       // [heads * head_dim, hidden]
  const float* k = nullptr;       // [kv_heads * head_dim, hidden]
  const float* v = nullptr;       // [kv_heads * head_dim, hidden]
  const float* q_bias = nullptr;  // [heads * head_dim] or nullptr
  const float* k_bias = nullptr;  // [kv_heads * head_dim] or nullptr
  const float* v_bias = nullptr;  // [kv_heads * head_dim] or nullptr
  const float* o = nullptr;       // [hidden, heads * head_dim]
  const float* o_bias = nullptr;  // [hidden] or nullptr
};

struct MlpWeights {
  int intermediate = 0;
  const float* gate = nullptr;       // [intermediate, hidden]
  const float* up = nullptr;         // [intermediate, hidden]
  const float* down = nullptr;       // [hidden, intermediate]
  const float* gate_bias = nullptr;  // [intermediate] or nullptr
  const float* up_bias = nullptr;    // [intermediate] or nullptr
  const float* down_bias = nullptr;  // [hidden] or nullptr
};

// normed [tokens, hidden] -> the O projection's output [tokens, hidden] (a rank's partial sum
// when `w` holds its heads), as CpuBackend::Attention computes it, in a KV pool of w's heads.
std::vector<float> AttentionOutput(const ModelConfig& c, const AttentionWeights& w,
                                   const std::vector<float>& normed, const Prompt& p) {
  const int n = p.size(), d = c.head_dim, q_size = w.heads * d, kv_size = w.kv_heads * d;
  std::vector<float> q(size_t(n) * q_size), k(size_t(n) * kv_size), v(k.size());
  cpu::Matmul(normed.data(), w.q, w.q_bias, n, q_size, c.hidden_size, q.data());
  cpu::Matmul(normed.data(), w.k, w.k_bias, n, kv_size, c.hidden_size, k.data());
  cpu::Matmul(normed.data(), w.v, w.v_bias, n, kv_size, c.hidden_size, v.data());
  const std::vector<float> inv_freq =
      kernels::RopeInverseFrequencies(c.rope_theta, d, c.rope_scaling);
  cpu::ApplyRope(q.data(), p.positions.data(), inv_freq.data(), n, w.heads, d);
  cpu::ApplyRope(k.data(), p.positions.data(), inv_freq.data(), n, w.kv_heads, d);
  const size_t pool = size_t(Prompt::kNumBlocks) * w.kv_heads * Prompt::kBlockSize * d;
  std::vector<float> k_pool(pool, 0.0f), v_pool(pool, 0.0f);
  const kernels::PagedKvView<float> cache{k_pool.data(),
                                          v_pool.data(),
                                          p.block_table.data(),
                                          static_cast<int32_t>(p.block_table.size()),
                                          w.kv_heads,
                                          Prompt::kBlockSize,
                                          d};
  cpu::PagedKvAppend(k.data(), v.data(), p.slots.data(), n, cache);
  const std::vector<int32_t> query_start = {0, n}, context_lens = {n};
  std::vector<float> attn(q.size());
  cpu::PagedAttention(q.data(), cache, query_start.data(), context_lens.data(), 1, w.heads,
                      1.0f / std::sqrt(static_cast<float>(d)), attn.data());
  std::vector<float> out(size_t(n) * c.hidden_size);
  cpu::Matmul(attn.data(), w.o, w.o_bias, n, c.hidden_size, q_size, out.data());
  return out;
}

// normed [tokens, hidden] -> the down projection's output [tokens, hidden] (SwiGLU).
std::vector<float> MlpOutput(const ModelConfig& c, const MlpWeights& w,
                             const std::vector<float>& normed, int n) {
  std::vector<float> gate(size_t(n) * w.intermediate), up(gate.size());
  cpu::Matmul(normed.data(), w.gate, w.gate_bias, n, w.intermediate, c.hidden_size, gate.data());
  cpu::Matmul(normed.data(), w.up, w.up_bias, n, w.intermediate, c.hidden_size, up.data());
  cpu::SiluMul(gate.data(), up.data(), n, w.intermediate, gate.data());
  std::vector<float> out(size_t(n) * c.hidden_size);
  cpu::Matmul(gate.data(), w.down, w.down_bias, n, c.hidden_size, w.intermediate, out.data());
  return out;
}

struct ForwardResult {
  std::vector<float> after_attention;  // the residual stream after O + residual [tokens, hidden]
  std::vector<float> after_mlp;        // after down + residual [tokens, hidden]
  std::vector<float> logits;           // [tokens, vocab] (gathered whole only to compare)
  std::vector<int32_t> greedy;         // [tokens]
};

int32_t Greedy(const float* logits, int vocab) {
  return cpu::SampleToken(logits, vocab, kernels::SamplingRow{});  // temperature 0
}

// The whole model, as CpuBackend::Forward runs one layer.
ForwardResult UnshardedForward(const Checkpoint& ckpt, const Prompt& p) {
  const ModelConfig& c = ckpt.config();
  const int n = p.size(), h = c.hidden_size;
  ForwardResult r;
  std::vector<float> residual(size_t(n) * h), normed(residual.size());
  cpu::EmbeddingGather(Data(ckpt, tensor_names::kEmbed), p.tokens.data(), n, h, residual.data());
  cpu::RmsNorm(residual.data(), LayerData(ckpt, tensor_names::kInputNorm), n, h, c.rms_norm_eps,
               normed.data());
  auto layer = [&](const char* suffix) { return LayerData(ckpt, suffix); };
  const AttentionWeights attention{.heads = c.num_heads,
                                   .kv_heads = c.num_kv_heads,
                                   .q = layer(tensor_names::kQ),
                                   .k = layer(tensor_names::kK),
                                   .v = layer(tensor_names::kV),
                                   .q_bias = layer(tensor_names::kQBias),
                                   .k_bias = layer(tensor_names::kKBias),
                                   .v_bias = layer(tensor_names::kVBias),
                                   .o = layer(tensor_names::kO),
                                   .o_bias = layer(tensor_names::kOBias)};
  std::vector<float> proj = AttentionOutput(c, attention, normed, p);
  cpu::AddRmsNorm(proj.data(), residual.data(), LayerData(ckpt, tensor_names::kPostNorm), n, h,
                  c.rms_norm_eps, normed.data());
  r.after_attention = residual;
  const MlpWeights mlp{.intermediate = c.intermediate_size,
                       .gate = layer(tensor_names::kGate),
                       .up = layer(tensor_names::kUp),
                       .down = layer(tensor_names::kDown),
                       .gate_bias = layer(tensor_names::kGateBias),
                       .up_bias = layer(tensor_names::kUpBias),
                       .down_bias = layer(tensor_names::kDownBias)};
  proj = MlpOutput(c, mlp, normed, n);
  cpu::AddRmsNorm(proj.data(), residual.data(), Data(ckpt, tensor_names::kFinalNorm), n, h,
                  c.rms_norm_eps, normed.data());
  r.after_mlp = residual;
  r.logits.resize(size_t(n) * c.vocab_size);
  cpu::Matmul(normed.data(), LmHead(ckpt), nullptr, n, c.vocab_size, h, r.logits.data());
  for (int t = 0; t < n; ++t) {
    r.greedy.push_back(Greedy(&r.logits[size_t(t) * c.vocab_size], c.vocab_size));
  }
  return r;
}

// Rows [range) of a [rows, cols] matrix; empty for a tensor the model lacks (nullptr).
std::vector<float> TakeRows(const float* m, int cols, IndexRange range) {
  if (m == nullptr) return {};
  return std::vector<float>(m + size_t(range.begin) * cols, m + size_t(range.end) * cols);
}
// Columns [range) of a [rows, cols] matrix: [rows, range.size()].
std::vector<float> TakeColumns(const float* m, int rows, int cols, IndexRange range) {
  std::vector<float> out;
  for (int r = 0; r < rows; ++r) {
    out.insert(out.end(), m + size_t(r) * cols + range.begin, m + size_t(r) * cols + range.end);
  }
  return out;
}

const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

// One rank's copies of exactly the slices the plan names: column-parallel pieces (q, k, v,
// gate, up, their biases; embedding and lm_head by vocabulary) by rows, row-parallel ones (o,
// down) by columns, their biases on rank 0 only (the all-reduce adds them once).
struct RankWeights {
  TensorParallelShard shard;
  std::vector<float> embed, lm_head;  // [vocab slice, hidden]
  std::vector<float> q, k, v, q_bias, k_bias, v_bias, o, o_bias;
  std::vector<float> gate, up, down, gate_bias, up_bias, down_bias;

  AttentionWeights Attention() const {
    return {.heads = shard.query_heads.size(),
            .kv_heads = shard.kv_heads.size(),
            .q = q.data(),
            .k = k.data(),
            .v = v.data(),
            .q_bias = OrNull(q_bias),
            .k_bias = OrNull(k_bias),
            .v_bias = OrNull(v_bias),
            .o = o.data(),
            .o_bias = OrNull(o_bias)};
  }
  MlpWeights Mlp() const {
    return {.intermediate = shard.intermediate.size(),
            .gate = gate.data(),
            .up = up.data(),
            .down = down.data(),
            .gate_bias = OrNull(gate_bias),
            .up_bias = OrNull(up_bias),
            .down_bias = OrNull(down_bias)};
  }
};

RankWeights TakeShard(const Checkpoint& ckpt, const TensorParallelShard& shard) {
  const ModelConfig& c = ckpt.config();
  const int h = c.hidden_size;
  const IndexRange q_rows = shard.query_rows(c), kv_rows = shard.kv_rows(c);
  auto layer = [&](const char* suffix) { return LayerData(ckpt, suffix); };
  auto once = [&](const char* suffix) {
    return shard.rank == 0 ? TakeRows(layer(suffix), h, {0, 1}) : std::vector<float>{};
  };
  RankWeights w;
  w.shard = shard;
  w.embed = TakeRows(Data(ckpt, tensor_names::kEmbed), h, shard.vocab);
  w.lm_head = TakeRows(LmHead(ckpt), h, shard.vocab);
  w.q = TakeRows(layer(tensor_names::kQ), h, q_rows);
  w.k = TakeRows(layer(tensor_names::kK), h, kv_rows);
  w.v = TakeRows(layer(tensor_names::kV), h, kv_rows);
  w.q_bias = TakeRows(layer(tensor_names::kQBias), 1, q_rows);
  w.k_bias = TakeRows(layer(tensor_names::kKBias), 1, kv_rows);
  w.v_bias = TakeRows(layer(tensor_names::kVBias), 1, kv_rows);
  w.o = TakeColumns(layer(tensor_names::kO), h, c.q_size(), q_rows);
  w.o_bias = once(tensor_names::kOBias);
  w.gate = TakeRows(layer(tensor_names::kGate), h, shard.intermediate);
  w.up = TakeRows(layer(tensor_names::kUp), h, shard.intermediate);
  w.down = TakeColumns(layer(tensor_names::kDown), h, c.intermediate_size, shard.intermediate);
  w.gate_bias = TakeRows(layer(tensor_names::kGateBias), 1, shard.intermediate);
  w.up_bias = TakeRows(layer(tensor_names::kUpBias), 1, shard.intermediate);
  w.down_bias = once(tensor_names::kDownBias);
  return w;
}

// What the all-reduce leaves on every rank: the sum of their partial outputs.
std::vector<float> AllReduceSum(const std::vector<std::vector<float>>& partials) {
  std::vector<float> sum(partials.at(0).size(), 0.0f);
  for (const std::vector<float>& part : partials) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
  }
  return sum;
}

// A rank's embedding output: the rows of the tokens in its vocabulary slice, zeros elsewhere.
std::vector<float> EmbeddingPartial(const RankWeights& w, const Prompt& p, int hidden) {
  std::vector<float> out(size_t(p.size()) * hidden, 0.0f);
  const IndexRange vocab = w.shard.vocab;
  for (int t = 0; t < p.size(); ++t) {
    if (p.tokens[t] < vocab.begin || p.tokens[t] >= vocab.end) continue;
    const int32_t local = p.tokens[t] - vocab.begin;
    cpu::EmbeddingGather(w.embed.data(), &local, 1, hidden, &out[size_t(t) * hidden]);
  }
  return out;
}

// A rank's greedy candidate: its largest logit and that token's id (the lowest on ties); a rank
// whose vocabulary slice is empty has none (token -1).
struct Candidate {
  float value = -std::numeric_limits<float>::infinity();
  int32_t token = -1;
};

Candidate RankCandidate(const float* logits,  // [vocab slice]
                        IndexRange vocab) {
  Candidate best;
  for (int i = 0; i < vocab.size(); ++i) {
    if (best.token < 0 || logits[i] > best.value) best = {logits[i], vocab.begin + i};
  }
  return best;
}

// The best of the gathered candidates; equal values go to the lower token id, whatever the order.
int32_t BestCandidate(const std::vector<Candidate>& candidates) {
  Candidate best;
  for (const Candidate& c : candidates) {
    if (c.token < 0) continue;
    if (best.token < 0 || c.value > best.value || (c.value == best.value && c.token < best.token)) {
      best = c;
    }
  }
  return best.token;
}

// The greedy token of each row from per-rank logit slices ([tokens, vocab slice] each).
std::vector<int32_t> GreedyAcrossRanks(const std::vector<std::vector<float>>& slices,
                                       const std::vector<TensorParallelShard>& shards, int n) {
  std::vector<int32_t> tokens;
  for (int t = 0; t < n; ++t) {
    std::vector<Candidate> candidates;
    for (size_t r = 0; r < shards.size(); ++r) {
      const IndexRange vocab = shards[r].vocab;
      candidates.push_back(RankCandidate(&slices[r][size_t(t) * vocab.size()], vocab));
    }
    tokens.push_back(BestCandidate(candidates));
  }
  return tokens;
}

// The unsharded logits [tokens, vocab] cut into the ranks' vocabulary slices.
std::vector<std::vector<float>> SliceLogits(const std::vector<float>& logits, int vocab,
                                            const std::vector<TensorParallelShard>& shards) {
  std::vector<std::vector<float>> slices;
  const int n = static_cast<int>(logits.size() / vocab);
  for (const TensorParallelShard& s : shards) {
    slices.push_back(TakeColumns(logits.data(), n, vocab, s.vocab));
  }
  return slices;
}

std::vector<TensorParallelShard> PlanAll(const ModelConfig& c, int world_size) {
  std::vector<TensorParallelShard> shards;
  for (int r = 0; r < world_size; ++r) {
    absl::StatusOr<TensorParallelShard> s = PlanTensorParallelShard(c, r, world_size);
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) shards.push_back(*s);
  }
  return shards;
}

// The same forward over `world_size` ranks, each computing with its slices only.
ForwardResult ShardedForward(const Checkpoint& ckpt, int world_size, const Prompt& p) {
  const ModelConfig& c = ckpt.config();
  const int n = p.size(), h = c.hidden_size;
  const std::vector<TensorParallelShard> shards = PlanAll(c, world_size);
  std::vector<RankWeights> ranks;
  for (const TensorParallelShard& s : shards) ranks.push_back(TakeShard(ckpt, s));
  auto all_reduce = [&](auto&& per_rank) {
    std::vector<std::vector<float>> partials;
    for (const RankWeights& w : ranks) partials.push_back(per_rank(w));
    return AllReduceSum(partials);
  };
  // The residual stream and the norms are replicated: every rank holds the same values.
  ForwardResult r;
  std::vector<float> residual =
      all_reduce([&](const RankWeights& w) { return EmbeddingPartial(w, p, h); });
  std::vector<float> normed(residual.size());
  cpu::RmsNorm(residual.data(), LayerData(ckpt, tensor_names::kInputNorm), n, h, c.rms_norm_eps,
               normed.data());
  std::vector<float> proj = all_reduce(
      [&](const RankWeights& w) { return AttentionOutput(c, w.Attention(), normed, p); });
  cpu::AddRmsNorm(proj.data(), residual.data(), LayerData(ckpt, tensor_names::kPostNorm), n, h,
                  c.rms_norm_eps, normed.data());
  r.after_attention = residual;
  proj = all_reduce([&](const RankWeights& w) { return MlpOutput(c, w.Mlp(), normed, n); });
  cpu::AddRmsNorm(proj.data(), residual.data(), Data(ckpt, tensor_names::kFinalNorm), n, h,
                  c.rms_norm_eps, normed.data());
  r.after_mlp = residual;
  std::vector<std::vector<float>> slices;
  r.logits.resize(size_t(n) * c.vocab_size);
  for (const RankWeights& w : ranks) {
    const IndexRange vocab = w.shard.vocab;
    slices.emplace_back(size_t(n) * vocab.size());
    cpu::Matmul(normed.data(), w.lm_head.data(), nullptr, n, vocab.size(), h, slices.back().data());
    for (int t = 0; t < n; ++t) {  // gathered whole only for the test's comparison
      std::copy_n(&slices.back()[size_t(t) * vocab.size()], vocab.size(),
                  &r.logits[size_t(t) * c.vocab_size + vocab.begin]);
    }
  }
  r.greedy = GreedyAcrossRanks(slices, shards, n);
  return r;
}

double RelativeL2(const std::vector<float>& out, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (out[i] - double(ref[i])) * (out[i] - double(ref[i]));
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

// Whether the row's best logit leads the next by more than reassociation can move them.
bool ClearWinner(const float* logits, int vocab) {
  std::vector<float> top(logits, logits + vocab);
  std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<>());
  return top[0] - top[1] > 1e-4f * (1.0f + std::abs(top[0]));
}

constexpr double kTolerance = 1e-5;

TEST(TensorParallelForwardTest, ThePlanAcceptsTheExpectedWorldSizes) {
  for (const Shape& s : Shapes()) {
    std::vector<int> accepted;
    for (const int n : {1, 2, 4, 8}) {
      if (CheckTensorParallelSize(ConfigOf(s), n).ok()) accepted.push_back(n);
    }
    EXPECT_EQ(accepted, s.world_sizes) << s.name;
  }
}

// The reference is the CPU backend's function: its logits and sampled token on the same weights.
TEST(TensorParallelForwardTest, TheUnshardedForwardIsTheCpuBackend) {
  for (const Shape& s : Shapes()) {
    const std::shared_ptr<const Checkpoint> ckpt = RandomModel(ConfigOf(s), 11);
    ASSERT_NE(ckpt, nullptr);
    const Prompt p = PromptFor(s.vocab);
    const ForwardResult ref = UnshardedForward(*ckpt, p);
    auto backend = CpuBackend::Create(ckpt, Prompt::kBlockSize, Prompt::kNumBlocks);
    ASSERT_TRUE(backend.ok()) << backend.status();
    const std::vector<int32_t> blocks = {3, 1, 0};  // another table than the prompt's
    const WholeTableSeq seq{p.tokens, 0, blocks, /*samples=*/true};
    absl::StatusOr<StepOutput> out = (*backend)->ExecuteStep(WholeTablePlanner().Plan({&seq, 1}));
    ASSERT_TRUE(out.ok()) << out.status();
    const std::vector<float> last_row(ref.logits.end() - s.vocab, ref.logits.end());
    EXPECT_EQ(*(*backend)->LogitsToHost(), last_row) << s.name;
    EXPECT_EQ(out->sampled, std::vector<int32_t>{ref.greedy.back()}) << s.name;
  }
}

TEST(TensorParallelForwardTest, ShardedForwardComposesToTheUnshardedOne) {
  uint64_t seed = 1;
  for (const Shape& s : Shapes()) {
    const std::shared_ptr<const Checkpoint> ckpt = RandomModel(ConfigOf(s), seed++);
    ASSERT_NE(ckpt, nullptr);
    const Prompt p = PromptFor(s.vocab);
    const ForwardResult ref = UnshardedForward(*ckpt, p);
    for (const int n : s.world_sizes) {
      SCOPED_TRACE(std::string(s.name) + ", world size " + std::to_string(n));
      const ForwardResult tp = ShardedForward(*ckpt, n, p);
      EXPECT_LT(RelativeL2(tp.after_attention, ref.after_attention), kTolerance);
      EXPECT_LT(RelativeL2(tp.after_mlp, ref.after_mlp), kTolerance);
      EXPECT_LT(RelativeL2(tp.logits, ref.logits), kTolerance);
      int clear = 0;
      for (int t = 0; t < p.size(); ++t) {
        if (!ClearWinner(&ref.logits[size_t(t) * s.vocab], s.vocab)) continue;
        ++clear;
        EXPECT_EQ(tp.greedy[t], ref.greedy[t]) << "token " << t;
      }
      EXPECT_GE(clear, p.size() - 1);  // near-ties are rare on random weights
      // On the unsharded logits themselves, the candidates pick exactly the argmax.
      const std::vector<TensorParallelShard> shards = PlanAll(ckpt->config(), n);
      EXPECT_EQ(GreedyAcrossRanks(SliceLogits(ref.logits, s.vocab, shards), shards, p.size()),
                ref.greedy);
    }
  }
}

// Equal logits in different ranks' slices go to the lowest token id, as the unsharded argmax;
// a rank past the vocabulary offers no candidate.
TEST(TensorParallelForwardTest, GreedyAcrossRanksBreaksTiesToTheLowestToken) {
  ModelConfig c = ConfigOf(Shapes().back());  // 13 tokens over 8 ranks; rank 7 holds none
  const std::vector<TensorParallelShard> shards = PlanAll(c, 8);
  ASSERT_EQ(shards[7].vocab.size(), 0);
  const float kLow = -3.0f, kHigh = 5.0f;
  std::vector<std::vector<float>> rows = {
      std::vector<float>(13, 0.0f),  // all equal: token 0
      std::vector<float>(13, kLow),  // the top value at 3 (rank 1) and 11 (rank 5)
      std::vector<float>(13, kLow),  // the top value only at 12, rank 6's one token
      std::vector<float>(13, kLow),  // the top value at 5 and 4 (both rank 2)
  };
  rows[1][11] = rows[1][3] = kHigh;
  rows[2][12] = kHigh;
  rows[3][5] = rows[3][4] = kHigh;
  std::vector<float> logits;
  std::vector<int32_t> want;
  for (const auto& row : rows) {
    logits.insert(logits.end(), row.begin(), row.end());
    want.push_back(Greedy(row.data(), 13));
  }
  EXPECT_EQ(want, (std::vector<int32_t>{0, 3, 12, 4}));
  const int n = static_cast<int>(rows.size());
  EXPECT_EQ(GreedyAcrossRanks(SliceLogits(logits, 13, shards), shards, n), want);
}

}  // namespace
}  // namespace gqa
