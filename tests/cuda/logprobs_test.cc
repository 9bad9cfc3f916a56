// The GPU logprobs kernel against the CPU reference (kernels/cpu/sampling.cc) on fresh random
// logits: log-sum-exp, the chosen token's value, the top k in order with ties by lower id.
#include <gtest/gtest.h>

#include "cuda_test_util.h"
#include "gqa/kernels/sampling_cuda.h"

namespace gqa::kernels::cuda {
namespace {

std::vector<LogprobsResult> GpuLogprobs(const std::vector<float>& logits,
                                        const std::vector<LogprobsQuery>& queries, int vocab) {
  DeviceBuffer<float> logits_d(logits.size());
  DeviceBuffer<LogprobsQuery> queries_d(queries.size());
  DeviceBuffer<LogprobsResult> results_d(queries.size());
  logits_d.Upload(logits);
  queries_d.Upload(queries);
  cudaMemset(results_d.ptr, 0xff, queries.size() * sizeof(LogprobsResult));
  EXPECT_EQ(ComputeLogprobs(logits_d.ptr, queries_d.ptr, int(queries.size()), vocab, results_d.ptr,
                            nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return results_d.Download();
}

// Rows of normal logits; `tie_levels` > 0 rounds them to that many values, so ties abound.
std::vector<float> RandomLogits(int rows, int vocab, float scale, int tie_levels) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(size_t(rows) * vocab);
  for (auto& x : v) {
    x = normal(Rng());
    if (tie_levels > 0) x = std::round(x * tie_levels / scale) / tie_levels;
  }
  return v;
}

void CheckAgainstCpu(int rows, int vocab, float scale, int tie_levels) {
  SCOPED_TRACE(testing::Message() << "rows " << rows << " vocab " << vocab << " scale " << scale
                                  << " tie levels " << tie_levels);
  const auto logits = RandomLogits(rows, vocab, scale, tie_levels);
  std::vector<LogprobsQuery> queries;
  std::uniform_int_distribution<int> token(0, vocab - 1), k(0, kMaxLogprobsTopK);
  // Each row once, in shuffled order, plus some rows twice with another token and k.
  for (int r = 0; r < rows; ++r) queries.push_back({r, token(Rng()), k(Rng())});
  std::shuffle(queries.begin(), queries.end(), Rng());
  for (int r = 0; r < rows; r += 3) queries.push_back({r, token(Rng()), kMaxLogprobsTopK});
  const auto got = GpuLogprobs(logits, queries, vocab);
  for (size_t q = 0; q < queries.size(); ++q) {
    const LogprobsQuery& query = queries[q];
    const auto want = cpu::ComputeLogprobs(logits.data() + size_t(query.row) * vocab, vocab, query);
    // float accumulation over the vocabulary on the GPU, double on the CPU.
    EXPECT_NEAR(got[q].token_logprob, want.token_logprob, 1e-4) << "query " << q;
    ASSERT_EQ(got[q].top_k, want.top_k) << "query " << q;
    for (int i = 0; i < want.top_k; ++i) {
      EXPECT_EQ(got[q].top_ids[i], want.top_ids[i]) << "query " << q << " top " << i;
      EXPECT_NEAR(got[q].top_logprobs[i], want.top_logprobs[i], 1e-4)
          << "query " << q << " top " << i;
    }
  }
}

TEST(LogprobsCuda, MatchesTheCpuReference) {
  REQUIRE_GPU();
  CheckAgainstCpu(/*rows=*/16, /*vocab=*/128256, /*scale=*/3.0f, /*tie_levels=*/0);
  CheckAgainstCpu(7, 32000, 10.0f, 0);
  CheckAgainstCpu(5, 100, 1.0f, 0);  // fewer tokens than threads
  CheckAgainstCpu(3, 7, 1.0f, 0);    // fewer tokens than k
}

TEST(LogprobsCuda, TiesGoToTheLowerId) {
  REQUIRE_GPU();
  CheckAgainstCpu(12, 50000, 2.0f, /*tie_levels=*/2);
  // A row of equal logits: the top k are ids 0..k-1, each log(1 / vocab).
  const int vocab = 4096;
  const std::vector<float> flat(vocab, 0.25f);
  const auto got = GpuLogprobs(flat, {{0, 4095, kMaxLogprobsTopK}}, vocab);
  EXPECT_NEAR(got[0].token_logprob, -std::log(double(vocab)), 1e-5);
  for (int i = 0; i < kMaxLogprobsTopK; ++i) EXPECT_EQ(got[0].top_ids[i], i);
}

TEST(LogprobsCuda, IsDeterministic) {
  REQUIRE_GPU();
  const int rows = 8, vocab = 151936;
  const auto logits = RandomLogits(rows, vocab, 4.0f, 0);
  std::vector<LogprobsQuery> queries;
  for (int r = 0; r < rows; ++r) queries.push_back({r, r * 997, kMaxLogprobsTopK});
  const auto first = GpuLogprobs(logits, queries, vocab);
  for (int run = 0; run < 3; ++run) {
    const auto again = GpuLogprobs(logits, queries, vocab);
    for (int q = 0; q < rows; ++q) {
      EXPECT_EQ(again[q].token_logprob, first[q].token_logprob);
      for (int i = 0; i < kMaxLogprobsTopK; ++i) {
        EXPECT_EQ(again[q].top_ids[i], first[q].top_ids[i]);
        EXPECT_EQ(again[q].top_logprobs[i], first[q].top_logprobs[i]);
      }
    }
  }
}

TEST(LogprobsCuda, NoQueriesLaunchNothing) {
  REQUIRE_GPU();
  EXPECT_EQ(ComputeLogprobs(nullptr, nullptr, 0, 1000, nullptr, nullptr), cudaSuccess);
}

}  // namespace
}  // namespace gqa::kernels::cuda
