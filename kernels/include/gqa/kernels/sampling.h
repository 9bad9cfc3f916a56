// What the samplers share, on the host and on the GPU: per-row parameters and the random draw.
// The draw for a request's n-th generated token depends only on (seed, n), never on the rest of
// the batch, so a seeded request gives the same output alone, batched or after preemption.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GQA_SAMPLING_HD __host__ __device__
#else
#define GQA_SAMPLING_HD
#endif

namespace gqa::kernels {

struct SamplingRow {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;        // (0, 1]
  int32_t top_k = 0;         // 0 = whole vocabulary
  uint64_t seed = 0;
  uint64_t step = 0;  // index of the token being generated
};

// Greedy: the argmax, lowest id on ties (temperature 0, or top_k 1), whatever top_p and the seed.
GQA_SAMPLING_HD inline bool IsGreedy(const SamplingRow& row) {
  return row.temperature <= 0.0f || row.top_k == 1;
}

GQA_SAMPLING_HD inline uint64_t SamplingMix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A uniform value in [0, 1) from (seed, step): counter-based, stateless.
GQA_SAMPLING_HD inline double UniformForStep(uint64_t seed, uint64_t step) {
  const uint64_t bits =
      SamplingMix(SamplingMix(seed + 0x9e3779b97f4a7c15ull) ^ (step * 0xd1b54a32d192ed03ull));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Log-probabilities of one logits row: log_softmax of the raw logits (no temperature, top-k or
// top-p), the value of one chosen token and the top_k most likely tokens.
inline constexpr int kMaxLogprobsTopK = 20;

struct LogprobsQuery {
  int32_t row = 0;    // row of the logits
  int32_t token = 0;  // whose logprob is wanted (the sampled token, or the prompt's next token)
  int32_t top_k = 0;  // [0, kMaxLogprobsTopK]
};

struct LogprobsResult {
  float token_logprob = 0;
  int32_t top_k = 0;  // entries of top_ids / top_logprobs filled
  // Most likely first; equal logits by lower id.
  int32_t top_ids[kMaxLogprobsTopK] = {};
  float top_logprobs[kMaxLogprobsTopK] = {};
};

namespace cpu {

// The reference for cuda::ComputeLogprobs: log-sum-exp accumulated in double, values in float.
LogprobsResult ComputeLogprobs(const float* logits,  // [vocab], the query's row
                               int vocab, const LogprobsQuery& query);

// Picks the next token from one row of logits: greedy when temperature is 0 or top_k is 1;
// otherwise softmax(logits / temperature) over the top_k most likely tokens (equal logits: lower
// id first), cut to the smallest most-likely set whose mass reaches top_p, sampled by inverse
// CDF, most likely first, at UniformForStep(seed, step).
int32_t SampleToken(const float* logits,  // [vocab]
                    int vocab, const SamplingRow& params);

}  // namespace cpu
}  // namespace gqa::kernels
