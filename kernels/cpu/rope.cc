#include "gqa/kernels/rope.h"

#include <cmath>
#include <numbers>

namespace gqa::kernels {
namespace {

// Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
float Llama3Adjust(float inv_freq, const RopeScaling& s) {
  const float old_len = static_cast<float>(s.original_max_position_embeddings);
  const float low_freq_wavelen = old_len / s.low_freq_factor;
  const float high_freq_wavelen = old_len / s.high_freq_factor;
  const float wavelen = 2.0f * std::numbers::pi_v<float> / inv_freq;
  if (wavelen < high_freq_wavelen) return inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / s.factor;
  const float smooth =
      (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1.0f - smooth) * inv_freq / s.factor + smooth * inv_freq;
}

}  // namespace

std::vector<float> RopeInverseFrequencies(float theta, int head_dim, const RopeScaling& scaling) {
  std::vector<float> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    float f = 1.0f / std::pow(theta, exponent);
    switch (scaling.type) {
      case RopeScalingType::kNone:
        break;
      case RopeScalingType::kLinear:
        f /= scaling.factor;
        break;
      case RopeScalingType::kLlama3:
        f = Llama3Adjust(f, scaling);
        break;
    }
    inv_freq[i] = f;
  }
  return inv_freq;
}

}  // namespace gqa::kernels
