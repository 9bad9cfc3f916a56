// Token sampling on the host: greedy, temperature, top-k, top-p. The random draw for a
// request's n-th generated token depends only on (seed, n), never on the rest of the batch,
// so a seeded request gives the same output alone, batched or after preemption.
#pragma once

#include <cstdint>
#include <span>

namespace gqa {

struct SamplingRow {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  uint64_t step = 0;  // index of the token being generated
};

// A uniform value in [0, 1) from (seed, step): counter-based, stateless.
double UniformForStep(uint64_t seed, uint64_t step);

// Picks the next token from one row of logits.
int32_t SampleToken(std::span<const float> logits, const SamplingRow& params);

}  // namespace gqa
