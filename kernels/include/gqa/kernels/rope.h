// Rotary embedding frequencies, with the scalings Llama-family checkpoints use.
#pragma once

#include <vector>

namespace gqa::kernels {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

// inv_freq[i] = theta^(-2i / head_dim), adjusted by the scaling. [head_dim / 2]
std::vector<float> RopeInverseFrequencies(float theta, int head_dim, const RopeScaling& scaling);

}  // namespace gqa::kernels
