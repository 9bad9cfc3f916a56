// The roofline of a forward step: the bytes it must read at the least (every weight matrix once,
// the K/V of every token a sequence's queries attend once) and so its shortest possible time at
// the memory's bandwidth. The same terms as the attention-roofline notebook
// (attention bytes = batch x layers x 2 x context x hidden / group size) and gqa-bench decode.
#pragma once

#include <cstdint>

#include "backend/kv_cache_spec.h"
#include "model/config.h"

namespace gqa {

// Weight bytes one step reads, at `element_bytes` per weight: Q/K/V, O, gate, up and down of
// every layer, the two norms, the final norm and the lm_head (the embedding table is read only
// through the lm_head: a step gathers a handful of its rows). Biases are left out.
uint64_t WeightBytesPerStep(const ModelConfig& config, uint64_t element_bytes);

// Bytes of K and V, every layer, one token.
inline uint64_t KvBytesPerToken(const KvCacheSpec& spec) {
  return spec.bytes_per_block() / static_cast<uint64_t>(spec.block_size);
}

// Cache positions the queries at [start_pos, start_pos + num_tokens) attend together: all of
// [0, start_pos + num_tokens), or with a sliding window of `window` > 0 tokens only the ones
// inside some query's window.
int64_t AttendedTokens(int64_t start_pos, int64_t num_tokens, int window);

}  // namespace gqa
