// The CPU sampler: the reference for the GPU sampler and what the CPU backend runs.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gqa/kernels/sampling.h"

namespace gqa::kernels::cpu {
namespace {

int32_t Argmax(const float* logits, int vocab) {
  // First maximum wins ties, so the choice does not depend on anything but the values.
  return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
}

}  // namespace

int32_t SampleToken(const float* logits, int vocab, const SamplingRow& params) {
  if (IsGreedy(params)) return Argmax(logits, vocab);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  // Most likely first; equal logits by token id, so the order is fully determined.
  auto more_likely = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  const int k = (params.top_k > 0 && params.top_k < vocab) ? params.top_k : vocab;
  std::partial_sort(order.begin(), order.begin() + k, order.end(), more_likely);
  order.resize(k);

  std::vector<double> probs(k);
  const double max_logit = logits[order[0]];
  double total = 0.0;
  for (int i = 0; i < k; ++i) {
    probs[i] = std::exp((static_cast<double>(logits[order[i]]) - max_logit) / params.temperature);
    total += probs[i];
  }
  // Nucleus: the smallest prefix whose mass reaches top_p.
  int keep = k;
  if (params.top_p > 0.0f && params.top_p < 1.0f) {
    double mass = 0.0;
    for (int i = 0; i < k; ++i) {
      mass += probs[i] / total;
      if (mass >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_total = 0.0;
  for (int i = 0; i < keep; ++i) kept_total += probs[i];
  const double target = UniformForStep(params.seed, params.step) * kept_total;
  double cumulative = 0.0;
  for (int i = 0; i < keep; ++i) {
    cumulative += probs[i];
    if (target < cumulative) return order[i];
  }
  return order[keep - 1];
}

LogprobsResult ComputeLogprobs(const float* logits, int vocab, const LogprobsQuery& query) {
  const double max_logit = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  const double log_sum_exp = max_logit + std::log(sum);
  auto logprob = [&](int32_t id) {
    return static_cast<float>(static_cast<double>(logits[id]) - log_sum_exp);
  };
  LogprobsResult result;
  result.token_logprob = logprob(query.token);
  result.top_k = std::clamp(query.top_k, 0, std::min(kMaxLogprobsTopK, vocab));
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  auto more_likely = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  std::partial_sort(order.begin(), order.begin() + result.top_k, order.end(), more_likely);
  for (int i = 0; i < result.top_k; ++i) {
    result.top_ids[i] = order[i];
    result.top_logprobs[i] = logprob(order[i]);
  }
  return result;
}

}  // namespace gqa::kernels::cpu
