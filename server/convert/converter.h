// Multi-head to grouped-query conversion by mean-pooling key/value heads (the GQA paper,
// arXiv 2305.13245, section 2.1): the source's KV heads are cut into `kv_heads` groups of
// consecutive heads and each group is replaced by the element-wise mean of its heads' K and V
// projections (weights and biases). Everything else is copied unchanged.
#pragma once

#include <cstdint>
#include <filesystem>

#include "absl/status/status.h"

namespace gqa {

struct ConvertOptions {
  int kv_heads = 0;                       // must divide the source's num_key_value_heads
  uint64_t max_shard_bytes = 5ull << 30;  // output shards of at most this size
};

// Writes the converted checkpoint to dst, which must not exist. Streams tensor by tensor (the
// source is memory-mapped; one output tensor is in memory at a time). On any error nothing is
// left at dst. The means accumulate in fp64 and are rounded once to the stored dtype, so they
// are the correctly rounded means whatever the summation order.
absl::Status ConvertToGqa(const std::filesystem::path& src, const std::filesystem::path& dst,
                          const ConvertOptions& options);

}  // namespace gqa
