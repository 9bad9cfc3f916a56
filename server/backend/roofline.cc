#include "backend/roofline.h"

#include <algorithm>

namespace gqa {

uint64_t WeightBytesPerStep(const ModelConfig& c, uint64_t element_bytes) {
  const uint64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), ffn = c.intermediate_size;
  const uint64_t per_layer = h * (q + 2 * kv) + q * h + 3 * ffn * h + 2 * h;
  const uint64_t elements = c.num_layers * per_layer + uint64_t(c.vocab_size) * h + h;
  return elements * element_bytes;
}

int64_t AttendedTokens(int64_t start_pos, int64_t num_tokens, int window) {
  const int64_t end = start_pos + num_tokens;
  if (window <= 0) return end;
  // The first query's window starts at start_pos - window + 1; the last one's ends at end - 1.
  return end - std::max<int64_t>(0, start_pos - window + 1);
}

}  // namespace gqa
