// The tensor-parallel runtime (TensorParallelBackend over NCCL, docs/tensor-parallel.md) on
// random checkpoints, stepped in lockstep with the single-GPU CUDA backend:
// - one rank through the runtime (a one-rank communicator: every all-reduce, the vocabulary
//   split, the logits' all-gather, in CUDA graphs and eagerly) gives bit for bit the single
//   GPU's logits and tokens in deterministic mode, and within the bf16 tolerance otherwise;
//   this runs on one GPU;
// - 2 and 4 ranks (MHA, GQA, MQA with replicated KV heads, head_dim 64 and 128, biases added
//   once, a vocabulary that does not split evenly) against one GPU: logits within the bf16
//   tolerance, greedy tokens equal except where the reference nearly ties. These skip, saying
//   so, where fewer GPUs are visible.
// Greedy steps exchange each rank's best token (the logits are gathered only when LogitsToHost
// asks); steps sampled with a temperature gather the logits whole first: both are run.
// Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <span>

#include "backend/factory.h"
#include "common/test_checkpoint.h"
#include "cuda/backend_test_setup.h"
#include "cuda/chunk_plans.h"
#include "model/checkpoint.h"

namespace gqa {
namespace {

using testing::Chunk;
using testing::GpuBackend;
using testing::kBlockSize;
using testing::kLogitTolerance;
using testing::kNumBlocks;
using testing::Shape;
using testing::SmallOptions;

int VisibleGpus() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

#define REQUIRE_GPUS(n)                                     \
  if (const int visible = VisibleGpus(); visible < (n))     \
  GTEST_SKIP() << "needs " << (n) << " GPU(s), " << visible \
               << " visible: this tensor-parallel test did NOT run"

// How a backend under test is made: its ranks, and the runtime even at one rank.
struct Ranks {
  int world_size = 1;
  bool runtime = false;  // one rank through TensorParallelBackend
};

std::unique_ptr<Backend> MakeBackend(const std::filesystem::path& dir, Ranks ranks,
                                     bool enforce_eager, bool deterministic) {
  ServingOptions o = SmallOptions(kNumBlocks, 8, 256, 512);
  o.backend.deterministic = deterministic;
  o.backend.tensor_parallel_size = ranks.world_size;
  o.cuda.enforce_eager = enforce_eager;
  o.cuda.tensor_parallel_runtime_at_one_rank = ranks.runtime;
  return GpuBackend(dir, o);
}

enum class Compare { kBitwise, kTolerance };

// Two backends over the same checkpoint, given the same steps (block tables as deltas), every
// sampling row sampled with `sampling` (greedy by default); each sequence continues with the
// reference's token.
class Lockstep {
 public:
  Lockstep(std::unique_ptr<Backend> reference, std::unique_ptr<Backend> tested, Compare compare,
           uint64_t seed, SamplingRow sampling)
      : reference_(std::move(reference)),
        tested_(std::move(tested)),
        compare_(compare),
        rng_(seed),
        sampling_(sampling) {
    free_.resize(kNumBlocks);
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), rng_);
  }
  bool ok() const { return reference_ && tested_; }
  Backend& tested() { return *tested_; }

  int AddSeq(int prompt_len, int vocab) {
    testing::PlannedSeq s;
    s.id = seqs_.size() + 1;
    std::uniform_int_distribution<int> id(0, vocab - 1);
    for (int i = 0; i < prompt_len; ++i) s.tokens.push_back(id(rng_));
    s.prompt_len = prompt_len;
    seqs_.push_back(std::move(s));
    return static_cast<int>(seqs_.size()) - 1;
  }

  void Step(const std::vector<Chunk>& chunks, const std::string& what) {
    SCOPED_TRACE(what);
    std::vector<int> sampling;
    StepPlan plan = testing::PlanChunks(seqs_, chunks, free_, kBlockSize, &sampling);
    for (ScheduledSeq& s : plan.seqs) {
      s.sampling = sampling_;
      s.sampling.step = steps_;
    }
    ++steps_;
    const bool greedy = kernels::IsGreedy(sampling_);
    const absl::StatusOr<StepOutput> want_tokens = reference_->ExecuteStep(plan);
    const absl::StatusOr<StepOutput> got_tokens = tested_->ExecuteStep(plan);
    ASSERT_TRUE(want_tokens.ok()) << want_tokens.status();
    ASSERT_TRUE(got_tokens.ok()) << got_tokens.status();
    auto want = reference_->LogitsToHost();
    auto got = tested_->LogitsToHost();
    ASSERT_TRUE(want.ok() && got.ok());
    ASSERT_EQ(want->size(), got->size());
    ASSERT_EQ(got_tokens->sampled.size(), sampling.size());
    if (compare_ == Compare::kBitwise) {
      EXPECT_EQ(std::memcmp(want->data(), got->data(), want->size() * sizeof(float)), 0)
          << "logits differ";
      EXPECT_EQ(want_tokens->sampled, got_tokens->sampled);
    }
    const size_t vocab = sampling.empty() ? 0 : want->size() / sampling.size();
    for (size_t r = 0; r < sampling.size(); ++r) {
      const float* ref = want->data() + r * vocab;
      const float* out = got->data() + r * vocab;
      double num = 0, den = 0;
      for (size_t v = 0; v < vocab; ++v) {
        num += (out[v] - ref[v]) * double(out[v] - ref[v]);
        den += double(ref[v]) * ref[v];
      }
      EXPECT_LT(std::sqrt(num / den), kLogitTolerance) << "row " << r;
      const int ref_top = int(std::max_element(ref, ref + vocab) - ref);
      const int out_top = int(std::max_element(out, out + vocab) - out);
      if (ref_top != out_top) {  // allowed only where the reference itself nearly ties
        const double rms = std::sqrt(den / vocab);
        EXPECT_LT(ref[ref_top] - ref[out_top], kLogitTolerance * rms * 4)
            << "greedy token differs: row " << r << " reference " << ref_top << " tested "
            << out_top;
      }
      if (greedy) {  // the ranks' exchanged best token is the argmax of the gathered logits
        EXPECT_EQ(got_tokens->sampled[r], out_top) << "row " << r;
      } else if (sampling_.top_k > 0) {  // sampled from this step's logits, not stale ones
        const int32_t token = got_tokens->sampled[r];
        const int above =
            int(std::count_if(out, out + vocab, [&](float x) { return x > out[token]; }));
        EXPECT_LT(above, sampling_.top_k)
            << "row " << r << ": token " << token << " is outside the row's top_k";
      }
      EXPECT_GE(got_tokens->sampled[r], 0);
      EXPECT_LT(got_tokens->sampled[r], int(vocab));
      seqs_[sampling[r]].tokens.push_back(greedy ? ref_top : want_tokens->sampled[r]);
    }
    for (const Chunk& c : chunks) seqs_[c.seq].computed += c.tokens;
  }

 private:
  std::unique_ptr<Backend> reference_, tested_;
  Compare compare_;
  std::mt19937 rng_;
  std::vector<testing::PlannedSeq> seqs_;
  std::vector<int32_t> free_;
  SamplingRow sampling_;
  int steps_ = 0;
};

// Prefill, chunked prefill, mixed steps, decode batches of 1 to 3 (graphs where not eager).
void RunSteps(Lockstep& pair, int vocab) {
  const int a = pair.AddSeq(37, vocab);  // crosses two block boundaries
  const int b = pair.AddSeq(16, vocab);  // exactly one block
  const int c = pair.AddSeq(5, vocab);
  pair.Step({{a, 37}, {b, 10}}, "prefill a, first chunk of b");
  pair.Step({{a, 1}, {b, 6}, {c, 5}}, "mixed: a decodes, b and c prefill");
  for (int i = 0; i < 8; ++i) pair.Step({{a, 1}, {b, 1}, {c, 1}}, "decode " + std::to_string(i));
  const int d = pair.AddSeq(70, vocab);
  pair.Step({{c, 1}, {d, 70}, {a, 1}}, "mixed, decode rows not first");
  for (int i = 0; i < 4; ++i) pair.Step({{d, 1}, {a, 1}}, "decode pair " + std::to_string(i));
  for (int i = 0; i < 4; ++i) pair.Step({{b, 1}}, "decode alone " + std::to_string(i));
}

// `ranks` against the single-GPU backend on a fresh random checkpoint of `config`.
void CheckAgainstOneGpu(const ModelConfig& config, Ranks ranks, bool enforce_eager,
                        bool deterministic, Compare compare, SamplingRow sampling = {}) {
  const uint64_t seed = std::random_device{}();
  sampling.seed = seed;
  SCOPED_TRACE(::testing::Message()
               << "ranks " << ranks.world_size << (ranks.runtime ? " (runtime)" : "") << " heads "
               << config.num_heads << " kv " << config.num_kv_heads << " head_dim "
               << config.head_dim << " vocab " << config.vocab_size << " eager " << enforce_eager
               << " deterministic " << deterministic << " temperature " << sampling.temperature
               << " seed " << seed);
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), config, seed);
  Lockstep pair(MakeBackend(dir.path(), {1, false}, enforce_eager, deterministic),
                MakeBackend(dir.path(), ranks, enforce_eager, deterministic), compare, seed,
                sampling);
  ASSERT_TRUE(pair.ok());
  if (ranks.world_size > 1 || ranks.runtime) {
    EXPECT_EQ(pair.tested().device_name().rfind(std::to_string(ranks.world_size) + " x ", 0), 0u)
        << pair.tested().device_name();
  }
  RunSteps(pair, config.vocab_size);
}

TEST(TensorParallelRuntimeTest, OneRankIsTheSingleGpuBitForBitInDeterministicMode) {
  REQUIRE_GPUS(1);
  const Ranks one{1, true};
  CheckAgainstOneGpu(Shape(8, 2, 64), one, /*enforce_eager=*/false, true, Compare::kBitwise);
  CheckAgainstOneGpu(Shape(8, 1, 128), one, /*enforce_eager=*/true, true, Compare::kBitwise);
}

// Sampled with a temperature (the whole logits gathered, then the sampler): the same tokens as
// the single GPU, whose logits are the same bit for bit.
TEST(TensorParallelRuntimeTest, OneRankSamplesAsTheSingleGpuWithATemperature) {
  REQUIRE_GPUS(1);
  const Ranks one{1, true};
  const SamplingRow warm{.temperature = 0.8f, .top_p = 0.9f, .top_k = 0};
  CheckAgainstOneGpu(Shape(8, 2, 64), one, /*enforce_eager=*/false, true, Compare::kBitwise, warm);
  CheckAgainstOneGpu(Shape(8, 8, 128), one, /*enforce_eager=*/true, true, Compare::kBitwise,
                     {.temperature = 1.3f, .top_p = 1.0f, .top_k = 40});
}

// Default options: the single GPU fuses its one-token layers and tunes its products; the
// runtime's unfused layers agree within the bf16 tolerance.
TEST(TensorParallelRuntimeTest, OneRankMatchesTheSingleGpuWithDefaultOptions) {
  REQUIRE_GPUS(1);
  const Ranks one{1, true};
  CheckAgainstOneGpu(Shape(8, 8, 64), one, false, false, Compare::kTolerance);
  CheckAgainstOneGpu(Shape(8, 2, 128), one, false, false, Compare::kTolerance);
}

TEST(TensorParallelRuntimeTest, RefusesMoreRanksThanVisibleGpus) {
  REQUIRE_GPUS(1);
  const int visible = VisibleGpus();
  // A model that 2 x visible ranks could split, so that the GPU count is the only refusal.
  const int ranks = 2 * visible;
  testing::TempDir dir;
  ModelConfig c = Shape(ranks, ranks, 64);
  c.intermediate_size = 64 * ranks;
  testing::WriteRandomCheckpoint(dir.path(), c, 1);
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ServingOptions o;
  o.backend.tensor_parallel_size = ranks;
  const auto backend = CreateBackend(o, BackendKind::kCuda, std::move(*ckpt));
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().message(),
            absl::StrCat("--tensor_parallel_size ", ranks, ": only ", visible,
                         visible == 1 ? " GPU" : " GPUs", " visible"));
}

void CheckShapesAt(int world_size) {
  const Ranks ranks{world_size, false};
  for (bool eager : {false, true}) {
    CheckAgainstOneGpu(Shape(8, 8, 64), ranks, eager, false, Compare::kTolerance);   // MHA
    CheckAgainstOneGpu(Shape(8, 2, 128), ranks, eager, false, Compare::kTolerance);  // GQA
    CheckAgainstOneGpu(Shape(8, 1, 64), ranks, eager, false, Compare::kTolerance);   // MQA
  }
  CheckAgainstOneGpu(Shape(8, 1, 128), ranks, false, true, Compare::kTolerance);  // deterministic
  // Sampled with a temperature: the logits gathered whole for the sampler.
  CheckAgainstOneGpu(Shape(8, 2, 64), ranks, false, false, Compare::kTolerance,
                     {.temperature = 0.9f, .top_p = 0.95f, .top_k = 8});
  // Llama's attention_bias and mlp_bias (O and down biases added once, by rank 0), tied
  // embeddings, and a vocabulary the ranks do not split evenly (the last slice narrower).
  ModelConfig biased = Shape(8, 2, 64);
  biased.qkv_bias = biased.o_bias = biased.mlp_bias = true;
  biased.tie_word_embeddings = true;
  biased.vocab_size = 323;  // 162 + 161 at two ranks, 81 x 3 + 80 at four
  CheckAgainstOneGpu(biased, ranks, false, false, Compare::kTolerance);
}

TEST(TensorParallelRuntimeTest, TwoRanksMatchOneGpu) {
  REQUIRE_GPUS(2);
  CheckShapesAt(2);
}

TEST(TensorParallelRuntimeTest, FourRanksMatchOneGpu) {
  REQUIRE_GPUS(4);
  CheckShapesAt(4);
}

}  // namespace
}  // namespace gqa
