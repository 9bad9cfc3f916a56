// The scales of an FP8 KV cache, per (layer, KV head), for K and for V: the stored byte of x is
// round_e4m3(x / scale). From the checkpoint's optional vLLM-style tensors
// model.layers.<l>.self_attn.k_scale / .v_scale (one value for the layer, or one per KV head);
// 1.0 where a checkpoint has none (vLLM's default without calibration).
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"

namespace gqa {

struct KvScales {
  std::vector<float> k;          // [num_layers, num_kv_heads]
  std::vector<float> v;          // [num_layers, num_kv_heads]
  bool from_checkpoint = false;  // some layer had a k_scale or v_scale tensor
};

// Refuses a scale tensor of another size, or a scale that is not finite and positive, naming it.
absl::StatusOr<KvScales> LoadKvScales(const Checkpoint& checkpoint);

// All 1.0 (a model without a checkpoint: random weights).
KvScales UnitKvScales(const ModelConfig& config);

}  // namespace gqa
