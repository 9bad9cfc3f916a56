// The interface the engine drives: one Forward per engine step over a batch of sequence chunks,
// then one sampled token per sequence that asked for one. CpuBackend and CudaBackend implement it.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "backend/kv_cache_spec.h"
#include "engine/sampler.h"

namespace gqa {

// One sequence's chunk in a step: tokens at positions [start_pos, start_pos + tokens.size()),
// whose K/V go to the cache and whose queries attend to positions [0, their own].
struct ForwardSeq {
  std::span<const int32_t> tokens;
  int32_t start_pos = 0;
  std::span<const int32_t> block_table;  // covers positions [0, start_pos + tokens.size())
  bool wants_logits = false;             // logits of the chunk's last token
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual const KvCacheSpec& kv_spec() const = 0;

  // Appends every token's K/V to the cache and computes the logits of the sequences that want
  // them (kept inside the backend: on the GPU they never cross to the host).
  virtual absl::Status Forward(std::span<const ForwardSeq> batch) = 0;
  // One token per wanted-logits row of the last Forward, in batch order.
  virtual absl::StatusOr<std::vector<int32_t>> Sample(std::span<const SamplingRow> rows) = 0;
  // The last Forward's logits, [rows, vocab] (tests and tools).
  virtual absl::StatusOr<std::vector<float>> LogitsToHost() = 0;
};

}  // namespace gqa
