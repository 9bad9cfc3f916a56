// The shape of the paged KV pool. Fewer KV heads mean smaller blocks, so the same memory holds
// group_size times more tokens; an FP8 cache (--kv_cache_dtype=fp8_e4m3) halves them again.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/dtype.h"

namespace gqa {

// How K and V are stored: in the compute dtype, or as FP8 E4M3 bytes with a scale per (layer,
// KV head) for K and for V (gqa/kernels/fp8_e4m3.h).
enum class KvCacheDType { kCompute, kFp8E4M3 };

struct KvCacheSpec {
  int block_size = 16;
  int num_blocks = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_layers = 0;
  DType dtype = DType::kF32;  // the compute dtype (activations, attention arithmetic)
  KvCacheDType cache_dtype = KvCacheDType::kCompute;

  uint64_t element_bytes() const {
    return cache_dtype == KvCacheDType::kFp8E4M3 ? 1 : DTypeSize(dtype);
  }
  // K and V, every layer, one block.
  uint64_t bytes_per_block() const {
    return 2ull * num_layers * block_size * num_kv_heads * head_dim * element_bytes();
  }
  uint64_t token_capacity() const { return static_cast<uint64_t>(num_blocks) * block_size; }
  uint64_t total_bytes() const { return bytes_per_block() * num_blocks; }
  // What the cache stores, as --kv_cache_dtype spells it: "fp8_e4m3", "bfloat16", ...
  std::string_view cache_dtype_name() const {
    return cache_dtype == KvCacheDType::kFp8E4M3 ? "fp8_e4m3" : DTypeTorchName(dtype);
  }
};

// --kv_cache_dtype for a backend computing in `compute`: auto (and the compute dtype's own name)
// store the compute dtype; fp8_e4m3 stores FP8. Any other value, or a 16-bit type other than the
// compute dtype, is refused with a message naming the flag and the value.
absl::StatusOr<KvCacheDType> ParseKvCacheDType(std::string_view option, DType compute);

}  // namespace gqa
