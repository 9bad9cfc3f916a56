// Token sampling for the CPU backend: the kernels' CPU sampler over one row of logits.
#pragma once

#include <cstdint>
#include <span>

#include "gqa/kernels/sampling.h"

namespace gqa {

using kernels::SamplingRow;
using kernels::UniformForStep;

inline int32_t SampleToken(std::span<const float> logits, const SamplingRow& params) {
  return kernels::cpu::SampleToken(logits.data(), static_cast<int>(logits.size()), params);
}

}  // namespace gqa
