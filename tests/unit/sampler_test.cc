#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

namespace gqa {
namespace {

std::vector<float> RandomLogits(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

int Argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

TEST(SamplerTest, GreedyIsArgmaxWithFirstIndexOnTies) {
  const auto logits = RandomLogits(1000, std::random_device{}());
  EXPECT_EQ(SampleToken(logits, {}), Argmax(logits));
  std::vector<float> ties = {1, 3, 3, 2};
  EXPECT_EQ(SampleToken(ties, {}), 1);
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedy) {
  const auto logits = RandomLogits(500, std::random_device{}());
  EXPECT_EQ(SampleToken(logits, {1.0f, 1.0f, 1, 42, 0}), Argmax(logits));
  EXPECT_EQ(SampleToken(logits, {1.0f, 1e-6f, 0, 42, 0}), Argmax(logits));
}

TEST(SamplerTest, SameSeedAndStepSameTokenDifferentSeedsDiffer) {
  const auto logits = RandomLogits(64, 5);
  std::vector<int> a, b, c;
  for (uint64_t step = 0; step < 50; ++step) {
    a.push_back(SampleToken(logits, {1.0f, 1.0f, 0, 1234, step}));
    b.push_back(SampleToken(logits, {1.0f, 1.0f, 0, 1234, step}));
    c.push_back(SampleToken(logits, {1.0f, 1.0f, 0, 4321, step}));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f};
  const float temperature = 0.7f;
  std::vector<double> p(4);
  double total = 0;
  for (int i = 0; i < 4; ++i) total += p[i] = std::exp(logits[i] / temperature);
  std::vector<int> counts(4);
  const int n = 40000;
  const uint64_t seed = std::random_device{}();
  for (int step = 0; step < n; ++step) {
    ++counts[SampleToken(logits, {temperature, 1.0f, 0, seed, uint64_t(step)})];
  }
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(counts[i] / double(n), p[i] / total, 0.01) << i;
}

TEST(SamplerTest, TopKAndTopPOnlyEverPickAllowedTokens) {
  const std::vector<float> logits = {5.0f, 4.0f, 0.0f, 3.9f, -2.0f};
  std::map<int, int> seen_k, seen_p;
  for (uint64_t step = 0; step < 2000; ++step) {
    ++seen_k[SampleToken(logits, {2.0f, 1.0f, 2, 9, step})];
    // probs at T=1: ~0.56, 0.21, 0.19, ...: top_p 0.7 keeps tokens 0 and 1.
    ++seen_p[SampleToken(logits, {1.0f, 0.7f, 0, 9, step})];
  }
  EXPECT_EQ(seen_k.size(), 2u);
  EXPECT_TRUE(seen_k.contains(0) && seen_k.contains(1));
  EXPECT_EQ(seen_p.size(), 2u);
  EXPECT_TRUE(seen_p.contains(0) && seen_p.contains(1));
}

}  // namespace
}  // namespace gqa
