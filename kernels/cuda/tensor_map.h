// Tensor maps (the descriptors Hopper's bulk tensor copies read, tma.cuh) of the paged KV cache.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

namespace gqa::kernels::cuda {

// A map of one K or V pool of 16-bit values, `k` or `v` of PagedKvView ([num_blocks,
// num_kv_heads, block_size, head_dim]) seen as rows of head_dim values: row
// (block * num_kv_heads + kv_head) * block_size + slot. A copy moves a box of 16 rows by 64
// values (128 bytes), 128-byte swizzled. Encoded on the host (no device work), through the
// driver's entry point, so nothing links the driver library. cudaErrorNotSupported where the
// driver has no tensor maps; cudaErrorInvalidValue for a pool not 16-byte aligned or a head_dim
// not a multiple of 64.
cudaError_t EncodeKvPoolMap(CUtensorMap* map, const void* pool, int head_dim);

// The maps of a K pool and a V pool.
struct KvPoolMaps {
  CUtensorMap k;
  CUtensorMap v;
};
cudaError_t EncodeKvPoolMaps(KvPoolMaps* maps, const void* k_pool, const void* v_pool,
                             int head_dim);

// The box EncodeKvPoolMap's maps copy.
constexpr int kKvMapBoxRows = 16;
constexpr int kKvMapBoxColumns = 64;

}  // namespace gqa::kernels::cuda
