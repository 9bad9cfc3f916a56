// The CUDA backend against the CPU backend (the reference) on random checkpoints: MHA, GQA and
// MQA, head_dim 64 and 128, Qwen2 biases with tied embeddings, llama3 rope; prompts that cross
// block boundaries, chunked prefill, mixed prefill + decode steps, decode steps through CUDA
// graphs and eagerly. Logits within a bf16 tolerance; the greedy token equal except where the
// reference's top two logits are closer than that tolerance. And the engine over the CUDA
// backend with async scheduling on and off (the same tokens). Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <random>

#include "backend/factory.h"
#include "backend/roofline.h"
#include "common/fake_backend.h"
#include "common/test_checkpoint.h"
#include "cuda/backend_test_setup.h"
#include "cuda/chunk_plans.h"
#include "engine/engine.h"
#include "gqa/kernels/paged_attention_cuda.h"
#include "gqa/kernels/sampling.h"
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

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// One sequence's chunk of a hand-made step plan.
ScheduledSeq ScheduledChunk(uint64_t id, std::span<const int32_t> chunk, int start, bool samples,
                            bool is_decode, int top_logprobs = -1) {
  ScheduledSeq s;
  s.seq_id = id;
  s.chunk = chunk;
  s.start_pos = start;
  s.samples = samples;
  s.is_decode = is_decode;
  s.top_logprobs = top_logprobs;
  return s;
}

class Pair {
 public:
  // kv_cache_dtype: both backends' --kv_cache_dtype; logit_tolerance: the rows' allowed relative
  // L2 error.
  Pair(const std::filesystem::path& dir, bool enforce_eager, uint64_t seed,
       const std::string& kv_cache_dtype = "auto", double logit_tolerance = kLogitTolerance,
       const CudaOptions& cuda = CudaOptions())
      : rng_(seed), tolerance_(logit_tolerance) {
    auto cpu_ckpt = Checkpoint::Load(dir, LoadFormat::kSafetensors);
    EXPECT_TRUE(cpu_ckpt.ok()) << cpu_ckpt.status();
    if (!cpu_ckpt.ok()) return;
    ServingOptions o = SmallOptions(kNumBlocks, 8, 256, 512);
    o.cuda = cuda;
    o.cuda.enforce_eager = enforce_eager;
    o.cache.kv_cache_dtype = kv_cache_dtype;
    o.backend.kind = BackendKind::kCpu;
    auto cpu = CreateBackend(o, o.backend.kind, std::move(*cpu_ckpt));
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    if (cpu.ok()) cpu_ = std::move(*cpu);
    gpu_ = GpuBackend(dir, o);
    free_.resize(kNumBlocks);
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), rng_);
  }
  bool ok() const { return cpu_ && gpu_; }

  int AddSeq(int prompt_len, int vocab) {
    testing::PlannedSeq s;
    s.id = seqs_.size() + 1;
    std::uniform_int_distribution<int> id(0, vocab - 1);
    for (int i = 0; i < prompt_len; ++i) s.tokens.push_back(id(rng_));
    s.prompt_len = prompt_len;
    seqs_.push_back(std::move(s));
    return static_cast<int>(seqs_.size()) - 1;
  }
  testing::PlannedSeq& seq(int i) { return seqs_[i]; }

  // Prefix caching: a new sequence whose first `blocks` blocks are those of sequence `from`
  // (computed, shared, never written again), then `suffix_len` tokens of its own.
  int AddSharingSeq(int from, int blocks, int suffix_len, int vocab) {
    testing::PlannedSeq s;
    s.id = seqs_.size() + 1;
    const testing::PlannedSeq& f = seqs_[from];
    s.tokens.assign(f.tokens.begin(), f.tokens.begin() + blocks * kBlockSize);
    s.blocks.assign(f.blocks.begin(), f.blocks.begin() + blocks);
    s.computed = blocks * kBlockSize;
    std::uniform_int_distribution<int> id(0, vocab - 1);
    for (int i = 0; i < suffix_len; ++i) s.tokens.push_back(id(rng_));
    s.prompt_len = static_cast<int>(s.tokens.size());
    seqs_.push_back(std::move(s));
    return static_cast<int>(seqs_.size()) - 1;
  }

  // Runs one step on both backends (block tables sent as deltas: new rows, appended blocks);
  // appends the reference's greedy token to each sequence that reached its end and compares
  // the logits.
  void Step(const std::vector<Chunk>& chunks, const std::string& what) {
    SCOPED_TRACE(what);
    std::vector<int> sampling;
    const StepPlan plan = testing::PlanChunks(seqs_, chunks, free_, kBlockSize, &sampling);
    ASSERT_TRUE(cpu_->ExecuteStep(plan).ok());
    const absl::StatusOr<StepOutput> sampled = gpu_->ExecuteStep(plan);
    ASSERT_TRUE(sampled.ok()) << sampled.status();
    auto want = cpu_->LogitsToHost();
    auto got = gpu_->LogitsToHost();
    ASSERT_TRUE(want.ok() && got.ok());
    ASSERT_EQ(want->size(), got->size());
    const size_t vocab = sampling.empty() ? 0 : want->size() / sampling.size();
    for (size_t r = 0; r < sampling.size(); ++r) {
      const float* ref = want->data() + r * vocab;
      const float* out = got->data() + r * vocab;
      double num = 0, den = 0;
      for (size_t v = 0; v < vocab; ++v) {
        num += (out[v] - ref[v]) * double(out[v] - ref[v]);
        den += double(ref[v]) * ref[v];
      }
      const double rel = std::sqrt(num / den);
      EXPECT_LT(rel, tolerance_) << "row " << r << " (sequence " << sampling[r] << ")";
      const int ref_top = int(std::max_element(ref, ref + vocab) - ref);
      const int out_top = int(std::max_element(out, out + vocab) - out);
      if (ref_top != out_top) {
        // Allowed only where the reference itself nearly ties.
        const double rms = std::sqrt(den / vocab);
        EXPECT_LT(ref[ref_top] - ref[out_top], tolerance_ * rms * 4)
            << "greedy token differs: row " << r << " cpu " << ref_top << " gpu " << out_top;
      }
      seqs_[sampling[r]].tokens.push_back(ref_top);  // both continue from the reference's token
    }
    // The backend's own sampler agrees with its logits (greedy).
    ASSERT_EQ(sampled->sampled.size(), sampling.size());
    for (size_t r = 0; r < sampling.size(); ++r) {
      const float* out = got->data() + r * vocab;
      EXPECT_EQ(sampled->sampled[r], int(std::max_element(out, out + vocab) - out));
    }
    for (const Chunk& c : chunks) seqs_[c.seq].computed += c.tokens;
  }

 private:
  std::mt19937 rng_;
  double tolerance_;
  std::unique_ptr<Backend> cpu_, gpu_;
  std::vector<testing::PlannedSeq> seqs_;
  std::vector<int32_t> free_;
};

// cuda: the CUDA backend's options (enforce_eager aside), e.g. fused_norm_max_rows (steps of up
// to this many tokens run the layers with the norms folded into the tensor-core skinny products)
// or attention_kernels.
void CheckAgainstCpu(const ModelConfig& config, bool enforce_eager,
                     const std::string& kv_cache_dtype = "auto",
                     double logit_tolerance = kLogitTolerance,
                     const CudaOptions& cuda = CudaOptions()) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message()
               << "heads " << config.num_heads << " kv " << config.num_kv_heads << " head_dim "
               << config.head_dim << " eager " << enforce_eager << " kv cache " << kv_cache_dtype
               << " fused norms up to " << cuda.fused_norm_max_rows << " attention kernels "
               << int(cuda.attention_kernels) << " seed " << seed);
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), config, seed);
  Pair pair(dir.path(), enforce_eager, seed, kv_cache_dtype, logit_tolerance, cuda);
  ASSERT_TRUE(pair.ok());
  const int a = pair.AddSeq(37, config.vocab_size);  // crosses two block boundaries
  const int b = pair.AddSeq(16, config.vocab_size);  // exactly one block
  const int c = pair.AddSeq(5, config.vocab_size);
  pair.Step({{a, 37}, {b, 10}}, "prefill a, first chunk of b");
  pair.Step({{a, 1}, {b, 6}, {c, 5}}, "mixed: a decodes, b and c prefill");
  for (int i = 0; i < 12; ++i) pair.Step({{a, 1}, {b, 1}, {c, 1}}, "decode " + std::to_string(i));
  const int d = pair.AddSeq(70, config.vocab_size);
  pair.Step({{c, 1}, {d, 70}, {a, 1}}, "mixed, decode rows not first in the batch");
  for (int i = 0; i < 6; ++i) pair.Step({{d, 1}, {a, 1}}, "decode pair " + std::to_string(i));
  for (int i = 0; i < 4; ++i) pair.Step({{b, 1}}, "decode alone " + std::to_string(i));
}

#define REQUIRE_GPU() \
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device on this machine: GPU test skipped"

TEST(CudaBackendTest, MhaGqaMqaHeadDim64) {
  REQUIRE_GPU();
  for (int kv : {8, 2, 1}) CheckAgainstCpu(Shape(8, kv, 64), /*enforce_eager=*/false);
}

// Steps of up to 64 tokens with the norms folded into the tensor-core skinny products
// (CudaOptions::fused_norm_max_rows, off by default: slower than the unfused step so far,
// docs/BENCHMARKS.md step 6); steps of more tokens take the unfused layers.
TEST(CudaBackendTest, FusedNormsMatchTheCpuBackend) {
  REQUIRE_GPU();
  CudaOptions fused;
  fused.fused_norm_max_rows = 64;
  CheckAgainstCpu(Shape(8, 2, 64), /*enforce_eager=*/false, "auto", kLogitTolerance, fused);
  CheckAgainstCpu(Shape(8, 1, 128), /*enforce_eager=*/true, "auto", kLogitTolerance, fused);
}

// --attention_kernels warpgroup: the Hopper wgmma prefill and decode kernels in the served steps
// (as auto runs them there), in graphs and eager, against the CPU backend. Where the GPU or
// build has no such kernels the backend runs the mma.sync ones, and the test says so.
TEST(CudaBackendTest, WarpgroupAttentionKernelsMatchTheCpuBackend) {
  REQUIRE_GPU();
  if (!kernels::cuda::WarpgroupPrefillAvailable()) {
    std::printf("[ NOTE ] no warpgroup kernels on this GPU or build: the mma.sync ones ran\n");
  }
  CudaOptions warpgroup;
  warpgroup.attention_kernels = AttentionKernels::kWarpgroup;
  CheckAgainstCpu(Shape(32, 1, 128), /*enforce_eager=*/false, "auto", kLogitTolerance, warpgroup);
  CheckAgainstCpu(Shape(16, 1, 64), /*enforce_eager=*/true, "auto", kLogitTolerance, warpgroup);
  CheckAgainstCpu(Shape(8, 2, 64), /*enforce_eager=*/false, "auto", kLogitTolerance, warpgroup);
  ModelConfig mistral = Shape(32, 2, 64);  // group 16, a window of 20 keys
  mistral.architecture_name = "MistralForCausalLM";
  mistral.architecture = Architecture::kMistral;
  mistral.sliding_window = 20;
  CheckAgainstCpu(mistral, false, "auto", kLogitTolerance, warpgroup);
}

// --attention_kernels mma_sync: the mma.sync prefill and decode kernels, which every GPU runs
// (and auto takes for FP8 caches and before Hopper).
TEST(CudaBackendTest, MmaSyncAttentionKernelsMatchTheCpuBackend) {
  REQUIRE_GPU();
  CudaOptions mma_sync;
  mma_sync.attention_kernels = AttentionKernels::kMmaSync;
  CheckAgainstCpu(Shape(32, 1, 128), /*enforce_eager=*/false, "auto", kLogitTolerance, mma_sync);
  CheckAgainstCpu(Shape(8, 2, 64), /*enforce_eager=*/true, "auto", kLogitTolerance, mma_sync);
  CheckAgainstCpu(Shape(8, 8, 128), /*enforce_eager=*/false, "auto", kLogitTolerance, mma_sync);
}

TEST(CudaBackendTest, GqaAndMqaHeadDim128Eager) {
  REQUIRE_GPU();
  for (int kv : {4, 1}) CheckAgainstCpu(Shape(8, kv, 128), /*enforce_eager=*/true);
  CheckAgainstCpu(Shape(32, 1, 128), /*enforce_eager=*/false);  // group 32: two query tiles
}

TEST(CudaBackendTest, Qwen2BiasesAndTiedEmbeddings) {
  REQUIRE_GPU();
  ModelConfig c = Shape(8, 2, 64);
  c.architecture_name = "Qwen2ForCausalLM";
  c.architecture = Architecture::kQwen2;
  c.qkv_bias = true;
  c.tie_word_embeddings = true;
  CheckAgainstCpu(c, false);
}

// Mistral's sliding window (20 keys) on the GPU against the CPU backend: prompts of 37 and 70
// tokens and decodes past them see only their window, in prefill, chunks and decode steps.
TEST(CudaBackendTest, MistralSlidingWindow) {
  REQUIRE_GPU();
  for (int kv : {2, 1}) {
    ModelConfig c = Shape(8, kv, 64);
    c.architecture_name = "MistralForCausalLM";
    c.architecture = Architecture::kMistral;
    c.sliding_window = 20;
    CheckAgainstCpu(c, false);
  }
}

bool HaveFp8Gpu() {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return major * 10 + minor >= 89;
}

// Both backends with --kv_cache_dtype=fp8_e4m3 (the CPU backend emulates it exactly). The GPU's
// keys come from a bf16 projection, so a few round to the neighbouring E4M3 value (one step is
// 6-12%): the logits' tolerance is twice the bf16 one.
constexpr double kFp8LogitTolerance = 2 * kLogitTolerance;

TEST(CudaBackendTest, Fp8KvCacheMatchesTheCpuBackend) {
  REQUIRE_GPU();
  if (!HaveFp8Gpu()) GTEST_SKIP() << "GPU below compute capability 8.9: FP8 skipped";
  for (int kv : {8, 2, 1}) {
    CheckAgainstCpu(Shape(8, kv, 64), false, "fp8_e4m3", kFp8LogitTolerance);
  }
  CheckAgainstCpu(Shape(8, 4, 128), /*enforce_eager=*/true, "fp8_e4m3", kFp8LogitTolerance);
  CheckAgainstCpu(Shape(32, 1, 128), false, "fp8_e4m3", kFp8LogitTolerance);  // two query tiles
  ModelConfig mistral = Shape(8, 2, 64);
  mistral.architecture_name = "MistralForCausalLM";
  mistral.architecture = Architecture::kMistral;
  mistral.sliding_window = 20;
  CheckAgainstCpu(mistral, false, "fp8_e4m3", kFp8LogitTolerance);
}

// The same KV memory holds twice the tokens as FP8; a mismatched 16-bit name is refused.
TEST(CudaBackendTest, Fp8KvCacheDoublesTheTokenCapacity) {
  REQUIRE_GPU();
  if (!HaveFp8Gpu()) GTEST_SKIP() << "GPU below compute capability 8.9: FP8 skipped";
  testing::TempDir dir;
  const ModelConfig config = Shape(8, 2, 64);
  testing::WriteRandomCheckpoint(dir.path(), config, 3);
  auto capacity = [&](const std::string& kv_cache_dtype) -> absl::StatusOr<uint64_t> {
    auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
    if (!ckpt.ok()) return ckpt.status();
    ServingOptions o;
    o.backend.kind = BackendKind::kCuda;
    o.backend.dtype = "bfloat16";
    o.cache.kv_cache_dtype = kv_cache_dtype;
    o.cache.kv_cache_bytes = 3ull << 23;  // 1024 bf16 blocks of this shape (24 KiB each)
    o.scheduler.max_num_seqs = 4;
    o.scheduler.max_model_len = 256;
    o.cuda.enforce_eager = true;
    auto b = CreateBackend(o, o.backend.kind, std::move(*ckpt));
    if (!b.ok()) return b.status();
    return (*b)->kv_spec().token_capacity();
  };
  const auto bf16 = capacity("auto"), fp8 = capacity("fp8_e4m3");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  EXPECT_EQ(*fp8, 2 * *bf16);
  const auto fp16 = capacity("float16");
  ASSERT_FALSE(fp16.ok());
  EXPECT_NE(fp16.status().message().find("--kv_cache_dtype=float16"), std::string::npos);
}

TEST(CudaBackendTest, Llama3RopeAndMlpBias) {
  REQUIRE_GPU();
  ModelConfig c = Shape(8, 4, 64);
  c.rope_theta = 500000.0f;
  c.rope_scaling.type = kernels::RopeScalingType::kLlama3;
  c.rope_scaling.factor = 8.0f;
  c.rope_scaling.original_max_position_embeddings = 64;  // the scaling bites at these lengths
  c.qkv_bias = true;                                     // Llama's attention_bias: q, k, v and o
  c.o_bias = true;
  c.mlp_bias = true;
  CheckAgainstCpu(c, false);
}

TEST(CudaBackendTest, Float16Checkpoint) {
  REQUIRE_GPU();
  ModelConfig c = Shape(8, 2, 64);
  c.dtype = DType::kF16;
  CheckAgainstCpu(c, false);  // served as bfloat16 (the test asks for it)
}

// A profiled step (timing events, in the graph or eagerly) computes exactly what an unprofiled
// one does, and reports attention inside its step. The same step run twice writes the same K/V
// to the same slots, so its logits can be compared bitwise.
TEST(CudaBackendTest, ProfiledStepsComputeTheSameAndTimeTheirAttention) {
  REQUIRE_GPU();
  const ModelConfig config = Shape(8, 2, 64);
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), config, std::random_device{}());
  for (bool eager : {false, true}) {
    SCOPED_TRACE(eager ? "eager" : "graphs");
    auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
    ASSERT_TRUE(ckpt.ok());
    ServingOptions o;
    o.backend.kind = BackendKind::kCuda;
    o.backend.dtype = "bfloat16";
    o.cache.block_size = kBlockSize;
    o.cache.num_kv_blocks = kNumBlocks;
    o.scheduler.max_num_seqs = 8;
    o.scheduler.max_model_len = 512;
    o.cuda.enforce_eager = eager;
    auto created = CreateBackend(o, o.backend.kind, std::move(*ckpt));
    ASSERT_TRUE(created.ok()) << created.status();
    Backend& gpu = **created;
    EXPECT_EQ(gpu.weight_bytes_per_step(), WeightBytesPerStep(config, 2));
    auto bandwidth = gpu.MeasureReadBandwidth();
    ASSERT_TRUE(bandwidth.ok()) << bandwidth.status();
    EXPECT_GT(*bandwidth, 0);

    std::vector<int32_t> prompt(40, 3), table = {5, 9, 2, 7};
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(i * 7 % config.vocab_size);
    std::vector<WholeTableSeq> prefill = {{prompt, 0, table, true}};
    std::vector<WholeTableSeq> decode = {
        {std::span<const int32_t>(prompt).subspan(39, 1), 39, table, true}};
    WholeTablePlanner planner;  // each step's row sent anew
    for (const auto* step : {&prefill, &decode}) {
      std::vector<std::vector<float>> logits;
      for (bool profiled : {false, true}) {
        if (profiled) gpu.ProfileNextStep();
        ASSERT_TRUE(gpu.ExecuteStep(planner.Plan(*step)).ok());
        auto host = gpu.LogitsToHost();
        ASSERT_TRUE(host.ok());
        logits.push_back(*host);
        const std::optional<StepTiming> timing = gpu.LastStepTiming();
        ASSERT_EQ(timing.has_value(), profiled);
        if (profiled) {
          EXPECT_GT(timing->attention_seconds, 0);
          EXPECT_LT(timing->attention_seconds, timing->step_seconds);
        }
      }
      EXPECT_EQ(logits[0], logits[1]) << (step == &prefill ? "prefill" : "decode");
    }
  }
}

// Logprobs on the GPU (the kernel, over the rows the forward laid out: prompt logprobs through
// chunks that want every token's logits, a sampling row among them, decode steps in graphs)
// against the CPU backend within a bf16 tolerance; and exactly, the top ids and within float
// rounding the values, against the CPU reference over the GPU's own logits.
TEST(CudaBackendTest, LogprobsMatchTheCpuBackend) {
  REQUIRE_GPU();
  const ModelConfig config = Shape(8, 2, 64);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), config, seed);
  std::unique_ptr<Backend> backends[2];
  for (int i = 0; i < 2; ++i) {
    auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
    ASSERT_TRUE(ckpt.ok());
    ServingOptions o;
    o.backend.kind = i == 0 ? BackendKind::kCpu : BackendKind::kCuda;
    o.backend.dtype = "bfloat16";
    o.cache.block_size = kBlockSize;
    o.cache.num_kv_blocks = kNumBlocks;
    o.scheduler.max_num_seqs = 8;
    o.scheduler.max_num_batched_tokens = 256;
    o.scheduler.max_model_len = 512;
    auto created = CreateBackend(o, o.backend.kind, std::move(*ckpt));
    ASSERT_TRUE(created.ok()) << created.status();
    backends[i] = std::move(*created);
  }
  Backend& cpu = *backends[0];
  Backend& gpu = *backends[1];
  const int vocab = config.vocab_size;
  std::mt19937 rng(seed);
  std::vector<int32_t> a(11), b(3);  // a: prompt logprobs in two chunks; b: decodes beside it
  for (auto& t : a) t = int32_t(rng() % vocab);
  for (auto& t : b) t = int32_t(rng() % vocab);
  const std::vector<int32_t> table_a = {1, 2}, table_b = {3};
  // The answers of a step in the order of its queries (BuildLogprobsQueries, as the backends).
  auto answers = [](const StepLogprobsQueries& asked, const StepOutput& out) {
    std::vector<LogprobsResult> flat;
    std::vector<size_t> next_prompt(out.prompt_logprobs.size(), 0);
    for (const auto& target : asked.targets) {
      flat.push_back(target.prompt ? out.prompt_logprobs[target.seq][next_prompt[target.seq]++]
                                   : *out.sampled_logprobs[target.sample_index]);
    }
    return flat;
  };
  // Runs `plan` on both; compares every prompt query, and the sampled tokens' where both sampled
  // the same token (greedy: they differ only where the logits nearly tie).
  auto step = [&](const StepPlan& plan, size_t expected_queries, const std::string& what) {
    SCOPED_TRACE(what);
    auto cpu_out = cpu.ExecuteStep(plan);
    auto gpu_out = gpu.ExecuteStep(plan);
    ASSERT_TRUE(cpu_out.ok() && gpu_out.ok()) << gpu_out.status();
    auto cpu_logits = cpu.LogitsToHost();
    auto gpu_logits = gpu.LogitsToHost();
    ASSERT_TRUE(cpu_logits.ok() && gpu_logits.ok());
    ASSERT_EQ(cpu_logits->size(), gpu_logits->size());
    const StepLogprobsQueries asked = BuildLogprobsQueries(plan.seqs, gpu_out->sampled);
    const StepLogprobsQueries cpu_asked = BuildLogprobsQueries(plan.seqs, cpu_out->sampled);
    ASSERT_EQ(asked.queries.size(), expected_queries);
    const std::vector<LogprobsResult> got = answers(asked, *gpu_out);
    const std::vector<LogprobsResult> want = answers(cpu_asked, *cpu_out);
    for (size_t q = 0; q < asked.queries.size(); ++q) {
      const LogprobsQuery& query = asked.queries[q];
      const float* ref = cpu_logits->data() + size_t(query.row) * vocab;
      double rms = 0;
      for (int v = 0; v < vocab; ++v) rms += double(ref[v]) * ref[v];
      rms = std::sqrt(rms / vocab);
      if (cpu_asked.queries[q].token == query.token) {
        EXPECT_NEAR(got[q].token_logprob, want[q].token_logprob, 4 * kLogitTolerance * rms)
            << "query " << q;
      }
      const auto own = kernels::cpu::ComputeLogprobs(gpu_logits->data() + size_t(query.row) * vocab,
                                                     vocab, query);
      EXPECT_NEAR(got[q].token_logprob, own.token_logprob, 1e-4) << "query " << q;
      ASSERT_EQ(got[q].top_k, own.top_k);
      for (int i = 0; i < own.top_k; ++i) {
        EXPECT_EQ(got[q].top_ids[i], own.top_ids[i]) << "query " << q << " top " << i;
        EXPECT_NEAR(got[q].top_logprobs[i], own.top_logprobs[i], 1e-4);
      }
    }
  };
  const std::vector<int32_t> prompt_a = a;  // a's prompt logprobs target these
  // Step 1: a's first 6 tokens, every logits row (rows 1..6); b's prompt, sampled (row 0).
  {
    StepPlan plan;
    plan.tables.rows = {{1, 0, table_a}, {2, 0, table_b}};
    plan.seqs.push_back(
        ScheduledChunk(1, std::span<const int32_t>(a).subspan(0, 6), 0, false, false, -1));
    plan.seqs.back().prompt_top_logprobs = 5;
    plan.seqs.back().prompt_logprobs_from = 1;
    plan.seqs.back().prompt = prompt_a;
    plan.seqs.push_back(ScheduledChunk(2, b, 0, true, false, 20));
    step(plan, 7, "prefill with every logits row");
  }
  b.push_back(int32_t(rng() % vocab));
  // Step 2: b decodes (row 0); a's last 5 tokens, the last sampled (row 1), the others 2..5.
  {
    StepPlan plan;
    plan.seqs.push_back(
        ScheduledChunk(2, std::span<const int32_t>(b).subspan(3, 1), 3, true, true, 0));
    plan.seqs.push_back(
        ScheduledChunk(1, std::span<const int32_t>(a).subspan(6, 5), 6, true, false, 20));
    plan.seqs.back().prompt_top_logprobs = 3;
    plan.seqs.back().prompt_logprobs_from = 7;
    plan.seqs.back().prompt = prompt_a;
    step(plan, 6, "mixed, sampling row among every-token rows");
  }
  a.push_back(int32_t(rng() % vocab));
  b.push_back(int32_t(rng() % vocab));
  // Decode steps (CUDA graphs): both sampled.
  for (int i = 0; i < 4; ++i) {
    StepPlan plan;
    plan.seqs.push_back(ScheduledChunk(1, std::span<const int32_t>(a).subspan(a.size() - 1, 1),
                                       int32_t(a.size() - 1), true, true, 20));
    plan.seqs.push_back(ScheduledChunk(2, std::span<const int32_t>(b).subspan(b.size() - 1, 1),
                                       int32_t(b.size() - 1), true, true, 1));
    step(plan, 2, "decode " + std::to_string(i));
    a.push_back(int32_t(rng() % vocab));
    b.push_back(int32_t(rng() % vocab));
  }
  // No logprobs asked: none computed.
  StepPlan plain;
  plain.seqs.push_back(ScheduledChunk(2, std::span<const int32_t>(b).subspan(b.size() - 1, 1),
                                      int32_t(b.size() - 1), true, true, -1));
  auto out = gpu.ExecuteStep(plain);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->sampled_logprobs.empty() && out->prompt_logprobs.empty())
      << "no queries: nothing to do";
}

TEST(CudaBackendTest, RefusesUnsupportedShapes) {
  REQUIRE_GPU();
  testing::TempDir dir;
  ModelConfig c = Shape(8, 2, 32);  // head_dim 32: no kernel
  c.hidden_size = 256;
  testing::WriteRandomCheckpoint(dir.path(), c, 1);
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok());
  ServingOptions o;
  o.backend.kind = BackendKind::kCuda;
  o.cache.num_kv_blocks = 8;
  auto backend = CreateBackend(o, o.backend.kind, std::move(*ckpt));
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(backend.status().message().find("head_dim"), std::string::npos) << backend.status();
}

// Sequences that start on another sequence's cached blocks (prefix caching): their chunks attend
// to K/V they did not write, in prefill, mixed and decode steps (graphs), beside the owner.
TEST(CudaBackendTest, ChunksOverSharedPrefixBlocks) {
  REQUIRE_GPU();
  const ModelConfig config = Shape(8, 2, 64);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), config, seed);
  Pair pair(dir.path(), /*enforce_eager=*/false, seed);
  ASSERT_TRUE(pair.ok());
  const int owner = pair.AddSeq(50, config.vocab_size);
  pair.Step({{owner, 50}}, "prefill the owner");
  const int a = pair.AddSharingSeq(owner, 3, 9, config.vocab_size);  // 48 cached + 9
  const int b = pair.AddSharingSeq(owner, 2, 2, config.vocab_size);  // 32 cached + 2
  // One token: a prompt's last chunk, the prefill kernel (not a decode: IsDecodeChunk).
  const int c = pair.AddSharingSeq(owner, 3, 1, config.vocab_size);
  pair.Step({{owner, 1}, {a, 9}, {b, 2}, {c, 1}}, "mixed over shared blocks");
  for (int i = 0; i < 8; ++i) {
    pair.Step({{owner, 1}, {a, 1}, {b, 1}, {c, 1}}, "decode " + std::to_string(i));
  }
}

// Async scheduling on the GPU: the engine over the CUDA backend, --deterministic (a request's
// tokens do not depend on what is batched with it), gives the same tokens with async scheduling
// on and off: placeholder tokens resolved on the device (in the graphs' first kernel, and
// eagerly), prefills beside decodes, stops, logprobs steps (completed within SubmitStep), profiled
// steps; and preemptions in flight (a pool too small for the batch), where a preempted request's
// recomputed K/V change its bf16 rounding even in --deterministic (README): its length is
// compared, and the tokens of the requests preempted in neither run.
std::map<std::string, testing::EventCollector::Result> RunEngineOnGpu(
    const std::filesystem::path& dir, const ModelConfig& config, bool async, bool eager,
    int num_kv_blocks) {
  // Room for every prompt at once: no prompt is cut into chunks at places that depend on what
  // else a step holds (in deterministic mode a chunk boundary may still move bf16 rounding).
  ServingOptions o = SmallOptions(num_kv_blocks, 8, 1024, 512);
  o.cuda.enforce_eager = eager;
  o.backend.deterministic = true;
  std::unique_ptr<Backend> backend = GpuBackend(dir, o);
  if (!backend) return {};
  EngineConfig ec;
  ec.scheduler = {kBlockSize, o.scheduler.max_num_seqs, o.scheduler.max_num_batched_tokens};
  ec.scheduler.async_scheduling = async;
  ec.limits = {config.vocab_size, o.scheduler.max_model_len};
  ec.step_profile_interval = 3;
  Engine engine(ec, std::move(backend), nullptr);
  testing::EventCollector c;
  const int n = 12;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.id = "r" + std::to_string(i);
    for (int t = 0; t < 5 + 7 * i; ++t)
      r.prompt.push_back(1 + (t * 13 + i * 29) % (config.vocab_size - 1));
    r.stopping.max_new_tokens = 8 + 3 * (i % 5);
    r.stopping.ignore_eos = true;
    if (i % 4 == 3) r.stopping.stop_token_ids = {7, 11, 19, 23};
    if (i % 5 == 2) r.logprobs.top_logprobs = 2;
    r.sampling.temperature = i % 3 ? 0.9f : 0.0f;
    r.sampling.seed = 1000 + i;
    r.sink = c.SinkFor(r.id);
    EXPECT_TRUE(engine.Submit(std::move(r)).ok());
  }
  // Every request waits before the first step, so which steps run (and whether the small pool
  // runs short) does not depend on how fast the GPU finishes the first ones. Started before the
  // submissions, a faster prefill let early requests finish before the last arrived: no
  // preemption in a 12-block pool on an H100 (2026-12-07).
  engine.Start();
  c.WaitFor(n);
  return c.results();
}

// The logits of `steps` single-token steps of one sequence after a 20-token prompt (and of a
// 1-token prompt beside it), from a CUDA backend with the skinny layers fused or not.
std::vector<std::vector<float>> SingleTokenLogits(const std::filesystem::path& dir,
                                                  bool skinny_fusion, bool enforce_eager,
                                                  const std::string& kv_cache_dtype, int steps,
                                                  int vocab) {
  std::vector<std::vector<float>> logits;
  ServingOptions o = SmallOptions(kNumBlocks, 4, 64, 128);
  o.cache.kv_cache_dtype = kv_cache_dtype;
  o.cuda.enforce_eager = enforce_eager;
  o.cuda.skinny_fusion = skinny_fusion;
  std::unique_ptr<Backend> gpu = GpuBackend(dir, o);
  if (!gpu) return logits;
  std::vector<int32_t> tokens(20);
  for (int i = 0; i < 20; ++i) tokens[i] = (i * 37 + 11) % vocab;
  const std::vector<int32_t> one = {7};
  auto run = [&](const StepPlan& plan) {
    const absl::StatusOr<StepOutput> out = gpu->ExecuteStep(plan);
    EXPECT_TRUE(out.ok()) << out.status();
    auto host = gpu->LogitsToHost();
    EXPECT_TRUE(host.ok());
    if (!out.ok() || !host.ok()) return -1;
    logits.push_back(*host);
    return out->sampled.empty() ? -1 : out->sampled[0];
  };
  StepPlan prompt;  // sequence 1: blocks 0-2, its 20-token prompt
  prompt.tables.rows.push_back({1, 0, {0, 1, 2}});
  prompt.seqs.push_back(ScheduledChunk(1, tokens, 0, true, false));
  tokens.push_back(run(prompt));
  StepPlan single;  // sequence 2: block 3, a prompt of one token (a one-token step, not a decode)
  single.tables.rows.push_back({2, 0, {3}});
  single.seqs.push_back(ScheduledChunk(2, one, 0, true, false));
  run(single);
  for (int i = 0; i < steps; ++i) {
    StepPlan decode;
    const int pos = int(tokens.size()) - 1;
    decode.seqs.push_back(
        ScheduledChunk(1, std::span<const int32_t>(tokens).subspan(pos, 1), pos, true, true));
    tokens.push_back(run(decode));
  }
  return logits;
}

// Steps of one token run each layer's products on the CUDA-core skinny kernel with the norms,
// residual adds, RoPE and the KV append folded in (CudaOptions::skinny_fusion): bitwise the
// logits of the separate kernels, through graphs and eagerly, bf16 and FP8 caches.
TEST(CudaBackendTest, SkinnyFusedLayersGiveBitwiseTheUnfusedLogits) {
  REQUIRE_GPU();
  for (const int kv : {2, 1}) {
    const ModelConfig config = Shape(8, kv, kv == 1 ? 128 : 64);
    const uint64_t seed = std::random_device{}();
    testing::TempDir dir;
    testing::WriteRandomCheckpoint(dir.path(), config, seed);
    for (const bool eager : {false, true}) {
      for (const std::string kv_cache : {"auto", "fp8_e4m3"}) {
        if (kv_cache != "auto" && !HaveFp8Gpu()) continue;
        SCOPED_TRACE(::testing::Message() << "kv " << kv << " eager " << eager << " cache "
                                          << kv_cache << " seed " << seed);
        const auto fused =
            SingleTokenLogits(dir.path(), true, eager, kv_cache, 6, config.vocab_size);
        const auto unfused =
            SingleTokenLogits(dir.path(), false, eager, kv_cache, 6, config.vocab_size);
        ASSERT_EQ(fused.size(), 8u);
        ASSERT_EQ(unfused.size(), fused.size());
        for (size_t i = 0; i < fused.size(); ++i) {
          ASSERT_EQ(fused[i].size(), unfused[i].size());
          EXPECT_EQ(std::memcmp(fused[i].data(), unfused[i].data(), fused[i].size() * 4), 0)
              << "step " << i;
        }
      }
    }
  }
}

TEST(CudaBackendTest, AsyncSchedulingGivesTheSameTokens) {
  REQUIRE_GPU();
  const ModelConfig config = Shape(8, 2, 64);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), config, seed);
  // 96 blocks hold every sequence (up to 7 blocks each). 12 blocks (192 tokens) force
  // preemptions: the first prompts admitted fill them (1 + 1 + 2 + 2 + 3 + 3 blocks), and the
  // next block any of them needs takes one from another. (24 blocks, tried first, let the
  // sequences finish without a preemption in most runs on an H200.)
  for (const auto& [eager, blocks] :
       {std::pair{false, 96}, std::pair{true, 96}, std::pair{false, 12}, std::pair{true, 12}}) {
    SCOPED_TRACE(::testing::Message()
                 << (eager ? "eager" : "graphs") << ", " << blocks << " blocks");
    const auto sync = RunEngineOnGpu(dir.path(), config, /*async=*/false, eager, blocks);
    const auto async = RunEngineOnGpu(dir.path(), config, /*async=*/true, eager, blocks);
    ASSERT_EQ(sync.size(), 12u);
    ASSERT_EQ(async.size(), 12u);
    int preemptions = 0, compared = 0;
    for (const auto& [id, r] : sync) {
      const auto& a = async.at(id);
      EXPECT_FALSE(r.error) << id << ": " << *r.error;
      EXPECT_FALSE(a.error) << id << ": " << *a.error;
      EXPECT_FALSE(r.tokens.empty()) << id;
      preemptions += a.preemptions + r.preemptions;
      if (a.preemptions > 0 || r.preemptions > 0) {
        if (a.finish == FinishReason::kLength && r.finish == FinishReason::kLength) {
          EXPECT_EQ(a.tokens.size(), r.tokens.size()) << id;
        }
        continue;
      }
      ++compared;
      EXPECT_EQ(a.tokens, r.tokens) << id;
      EXPECT_EQ(a.finish, r.finish) << id;
    }
    if (blocks == 96) {
      EXPECT_EQ(preemptions, 0);
      EXPECT_EQ(compared, 12);
    } else {
      EXPECT_GT(preemptions, 0) << "the pool was meant to be too small";
    }
  }
}

}  // namespace
}  // namespace gqa
