// The shape of the paged KV pool. Fewer KV heads mean smaller blocks, so the same memory holds
// group_size times more tokens.
#pragma once

#include <cstdint>

#include "model/dtype.h"

namespace gqa {

struct KvCacheSpec {
  int block_size = 16;
  int num_blocks = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_layers = 0;
  DType dtype = DType::kF32;

  // K and V, every layer, one block.
  uint64_t bytes_per_block() const {
    return 2ull * num_layers * block_size * num_kv_heads * head_dim * DTypeSize(dtype);
  }
  uint64_t token_capacity() const { return static_cast<uint64_t>(num_blocks) * block_size; }
  uint64_t total_bytes() const { return bytes_per_block() * num_blocks; }
};

}  // namespace gqa
