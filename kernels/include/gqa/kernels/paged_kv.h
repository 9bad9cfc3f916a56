// The one paged KV cache layout, shared by the CPU reference and the CUDA kernels.
//
// Per layer, K and V live in separate pools of fixed-size blocks:
//   k, v: [num_blocks, num_kv_heads, block_size, head_dim]
// A sequence's token at position p lives in block block_table[p / block_size], slot
// p % block_size. Its "slot index" is block_id * block_size + p % block_size.
// block_tables: [num_seqs, max_blocks_per_seq], row s lists sequence s's blocks in order.
// An FP8 (E4M3) cache (T = uint8_t on the host, __nv_fp8_e4m3 on the GPU) stores
// round_e4m3(x / scale) and reads back e4m3 * scale, with one scale per KV head for K and one for
// V (gqa/kernels/fp8_e4m3.h).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define GQA_HOST_DEVICE __host__ __device__
#else
#define GQA_HOST_DEVICE
#endif

namespace gqa::kernels {

template <typename T>
struct PagedKvView {
  T* k = nullptr;                         // [num_blocks, num_kv_heads, block_size, head_dim]
  T* v = nullptr;                         // [num_blocks, num_kv_heads, block_size, head_dim]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int32_t max_blocks_per_seq = 0;
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;
  // FP8 caches only: [num_kv_heads] each, in the memory the cache lives in; nullptr means 1.
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;

  // Element offset of (slot index, kv head) in k or v.
  GQA_HOST_DEVICE constexpr size_t Offset(int64_t slot, int32_t kv_head) const {
    const int64_t block = slot / block_size;
    const int64_t in_block = slot % block_size;
    return static_cast<size_t>(((block * num_kv_heads + kv_head) * block_size + in_block) *
                               head_dim);
  }
  // Slot index of position `pos` of sequence `seq`.
  GQA_HOST_DEVICE constexpr int64_t Slot(int32_t seq, int32_t pos) const {
    const int32_t block =
        block_tables[static_cast<size_t>(seq) * max_blocks_per_seq + pos / block_size];
    return static_cast<int64_t>(block) * block_size + pos % block_size;
  }
};

}  // namespace gqa::kernels
