// The GPU sampler against the CPU sampler (kernels/cpu/sampling.cc) on fresh random logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "cuda_test_util.h"
#include "gqa/kernels/sampling_cuda.h"

namespace gqa::kernels::cuda {
namespace {

// Samples every row on the GPU (over_vocabulary: with SampleTokensOverVocabulary).
std::vector<int32_t> GpuSample(const std::vector<float>& logits,
                               const std::vector<SamplingRow>& rows, int vocab,
                               bool over_vocabulary = false) {
  DeviceBuffer<float> logits_d(logits.size());
  DeviceBuffer<SamplingRow> rows_d(rows.size());
  DeviceBuffer<int32_t> tokens_d(rows.size());
  logits_d.Upload(logits);
  rows_d.Upload(rows);
  cudaMemset(tokens_d.ptr, 0xff, rows.size() * sizeof(int32_t));
  const auto sample = over_vocabulary ? SampleTokensOverVocabulary : SampleTokens;
  EXPECT_EQ(sample(logits_d.ptr, rows_d.ptr, int(rows.size()), vocab, tokens_d.ptr, nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return tokens_d.Download();
}

std::vector<float> RandomLogits(int rows, int vocab, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(size_t(rows) * vocab);
  for (auto& x : v) x = normal(Rng());
  return v;
}

// Vocabularies that are not a multiple of 4 put most rows off a 16-byte boundary, so the
// kernel's scalar head and tail around its 16-byte loads are exercised, down to rows of 1-3.
TEST(SamplingCuda, GreedyIsTheArgmaxWithLowestIdOnTies) {
  REQUIRE_GPU();
  for (const int vocab : {128256, 50257, 7, 3, 1}) {
    SCOPED_TRACE(testing::Message() << "vocab " << vocab);
    const int rows = 8;
    auto logits = RandomLogits(rows, vocab, 3.0f);
    const int tied = std::min(vocab - 1, 9000);
    logits[size_t(3) * vocab + tied] = logits[size_t(3) * vocab] = 1e4f;  // a tie
    logits[size_t(6) * vocab + vocab - 1] = 1e4f;                         // the last token
    std::vector<SamplingRow> params(rows);
    params[5].top_k = 1;
    params[5].temperature = 1.0f;  // top_k 1 is greedy too
    const auto tokens = GpuSample(logits, params, vocab);
    for (int r = 0; r < rows; ++r) {
      EXPECT_EQ(tokens[r], cpu::SampleToken(logits.data() + size_t(r) * vocab, vocab, params[r]));
    }
    EXPECT_EQ(tokens[3], 0);
    EXPECT_EQ(tokens[6], vocab - 1);
  }
}

// Every draw (one row per step, same logits) agrees with the CPU sampler, apart from draws that
// land within fixed-point rounding of a boundary between two tokens' intervals.
void CheckAgreement(int vocab, SamplingRow base, float logit_scale) {
  SCOPED_TRACE(testing::Message() << "vocab " << vocab << " T " << base.temperature << " top_p "
                                  << base.top_p << " top_k " << base.top_k);
  const int draws = 512;
  const auto one = RandomLogits(1, vocab, logit_scale);
  std::vector<float> logits;
  std::vector<SamplingRow> rows;
  base.seed = Rng()();
  for (int i = 0; i < draws; ++i) {
    logits.insert(logits.end(), one.begin(), one.end());
    rows.push_back(base);
    rows.back().step = i;
  }
  const auto tokens = GpuSample(logits, rows, vocab);
  int agree = 0;
  std::map<int32_t, int> seen, cpu_seen;
  for (int i = 0; i < draws; ++i) {
    const int32_t cpu_token = cpu::SampleToken(one.data(), vocab, rows[i]);
    agree += tokens[i] == cpu_token;
    ++seen[tokens[i]];
    ++cpu_seen[cpu_token];
  }
  EXPECT_GE(agree, draws - 2);
  if (base.top_k > 0) {
    EXPECT_LE(int(seen.size()), base.top_k);
  }
  // A peaked row can leave one token inside top_p (the CPU sampler then draws only it too).
  if (cpu_seen.size() > 1) {
    EXPECT_GT(seen.size(), 1u) << "sampling collapsed to one token";
  }
  // Deterministic: the same rows again give the same tokens.
  EXPECT_EQ(GpuSample(logits, rows, vocab), tokens);
}

TEST(SamplingCuda, AgreesWithTheCpuSampler) {
  REQUIRE_GPU();
  CheckAgreement(1000, {1.0f, 1.0f, 0}, 1.0f);
  CheckAgreement(1001, {1.0f, 0.9f, 0}, 1.0f);  // rows off the 16-byte boundary
  CheckAgreement(1000, {0.7f, 1.0f, 50}, 2.0f);
  CheckAgreement(32000, {1.0f, 0.9f, 0}, 3.0f);
  CheckAgreement(128256, {0.8f, 0.95f, 40}, 4.0f);
  CheckAgreement(151936, {1.3f, 0.5f, 0}, 2.0f);
  CheckAgreement(128256, {1.0f, 1.0f, 0}, 2.0f);   // temperature only: draws deep in the tail
  CheckAgreement(128256, {0.7f, 0.9f, 0}, 6.0f);   // peaked: a few candidates, or one
  CheckAgreement(128256, {1.0f, 0.99f, 0}, 6.0f);  // peaked, a longer list
  CheckAgreement(128256, {1.0f, 0.9f, 0}, 0.01f);  // flat: the candidate list overflows
}

// SampleTokens' candidate list gives, token for token, what the selections over the whole
// vocabulary give: flat rows (the list overflows), peaked and in between, with and without top-p
// and top-k, temperatures below and above 1, every draw position.
TEST(SamplingCuda, CandidateListMatchesTheWholeVocabularyTokenForToken) {
  REQUIRE_GPU();
  for (const int vocab : {128256, 32003, 1000, 5}) {
    std::vector<float> logits;
    std::vector<SamplingRow> rows;
    const uint64_t seed = Rng()();
    for (const float scale : {0.01f, 0.5f, 2.0f, 6.0f, 20.0f}) {
      for (const float temperature : {0.3f, 1.0f, 1.7f}) {
        for (const float top_p : {1.0f, 0.99f, 0.9f, 0.5f, 0.05f}) {
          for (const int top_k : {0, 50, 2000}) {
            const auto one = RandomLogits(1, vocab, scale);
            for (int step = 0; step < 3; ++step) {
              logits.insert(logits.end(), one.begin(), one.end());
              rows.push_back({temperature, top_p, top_k});
              rows.back().seed = seed;
              rows.back().step = step;
            }
          }
        }
      }
    }
    SCOPED_TRACE(testing::Message() << "vocab " << vocab << " rows " << rows.size());
    const auto fast = GpuSample(logits, rows, vocab);
    const auto reference = GpuSample(logits, rows, vocab, /*over_vocabulary=*/true);
    int differ = 0;
    for (size_t i = 0; i < rows.size(); ++i) differ += fast[i] != reference[i];
    EXPECT_EQ(differ, 0);
    const std::set<int32_t> seen(fast.begin(), fast.end());  // not one constant token
    EXPECT_GT(seen.size(), std::min<size_t>(vocab - 1, rows.size() / 8));
  }
}

// Tensor-parallel greedy sampling on one GPU: the vocabulary cut into the ranks' slices as the
// CUDA backend cuts it (ceil(vocab / ranks) each, the last narrower or empty), each slice's best
// keys as a rank computes them, the ranks' keys back to back as the all-gather leaves them; the
// tokens are SampleTokens' greedy tokens over the whole rows, ties across slices included.
std::vector<int32_t> TokensFromSlices(const std::vector<float>& logits, int rows, int vocab,
                                      int ranks) {
  const int per_rank = (vocab + ranks - 1) / ranks;
  DeviceBuffer<uint64_t> rank_keys(size_t(ranks) * rows);
  for (int q = 0; q < ranks; ++q) {
    const int begin = std::min(vocab, q * per_rank);
    const int width = std::min(vocab, begin + per_rank) - begin;
    std::vector<float> slice;  // [rows, width]
    for (int r = 0; r < rows; ++r) {
      const float* row = logits.data() + size_t(r) * vocab + begin;
      slice.insert(slice.end(), row, row + width);
    }
    DeviceBuffer<float> slice_d(slice.size());
    slice_d.Upload(slice);
    EXPECT_EQ(
        BestKeysOfSlice(slice_d.ptr, rows, width, begin, rank_keys.ptr + size_t(q) * rows, nullptr),
        cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  DeviceBuffer<int32_t> tokens(rows);
  cudaMemset(tokens.ptr, 0xff, rows * sizeof(int32_t));
  EXPECT_EQ(TokensFromBestKeys(rank_keys.ptr, ranks, rows, tokens.ptr, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return tokens.Download();
}

TEST(SamplingCuda, RanksBestKeysGiveTheWholeVocabularyGreedyToken) {
  REQUIRE_GPU();
  for (const int vocab : {128256, 50257, 1001, 7, 5}) {
    const int rows = 200;  // more than one block of TokensFromBestKeys
    auto logits = RandomLogits(rows, vocab, 3.0f);
    // Ties of the maximum across slices (the lowest id wins), the very last token, one row of
    // equal logits, and a maximum of -inf.
    logits[size_t(1) * vocab] = logits[size_t(1) * vocab + vocab - 1] = 1e4f;
    logits[size_t(2) * vocab + vocab / 2] = logits[size_t(2) * vocab + vocab - 1] = 1e4f;
    logits[size_t(3) * vocab + vocab - 1] = 1e4f;
    std::fill_n(logits.begin() + size_t(4) * vocab, vocab, 0.5f);
    std::fill_n(logits.begin() + size_t(5) * vocab, vocab, -INFINITY);
    const std::vector<SamplingRow> greedy(rows);  // temperature 0
    const auto whole = GpuSample(logits, greedy, vocab);
    EXPECT_EQ(whole[1], 0);
    EXPECT_EQ(whole[2], vocab / 2);
    EXPECT_EQ(whole[4], 0);
    for (const int ranks : {1, 2, 3, 4, 8}) {
      SCOPED_TRACE(testing::Message() << "vocab " << vocab << " ranks " << ranks);
      EXPECT_EQ(TokensFromSlices(logits, rows, vocab, ranks), whole);
    }
  }
}

}  // namespace
}  // namespace gqa::kernels::cuda
