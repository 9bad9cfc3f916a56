#include "backend/cuda/block_tables_cuda.h"

namespace gqa::cuda {
namespace {

__global__ void UpdateBlockTablesKernel(const TableRowUpdate* rows, const int32_t* new_blocks,
                                        const int32_t* context_lens, int block_size, int width,
                                        int32_t* persistent, int32_t* step_tables,
                                        PlaceholderTokens placeholders) {
  const int r = blockIdx.x;
  if (placeholders.source != nullptr && threadIdx.x == 0) {
    const int32_t source = placeholders.source[r];
    if (source >= 0) placeholders.token_ids[r] = placeholders.sampled[source];
  }
  const TableRowUpdate u = rows[r];
  const int needed = min((context_lens[r] + block_size - 1) / block_size, width);
  int32_t* slot_row = u.slot >= 0 ? persistent + size_t(u.slot) * width : nullptr;
  int32_t* step_row = step_tables + size_t(r) * width;
  // Every new block reaches the slot, even past this step's context.
  const int end = u.slot >= 0 ? min(max(needed, u.first_new + u.num_new), width) : needed;
  for (int b = threadIdx.x; b < end; b += blockDim.x) {
    int32_t block = 0;
    if (u.slot >= 0) {
      const bool is_new = b >= u.first_new && b < u.first_new + u.num_new;
      block = is_new ? new_blocks[u.offset + b - u.first_new] : slot_row[b];
      if (is_new) slot_row[b] = block;
    }
    if (b < needed) step_row[b] = block;
  }
}

}  // namespace

cudaError_t UpdateBlockTables(const TableRowUpdate* rows, const int32_t* new_blocks,
                              const int32_t* context_lens, int num_rows, int block_size, int width,
                              int32_t* persistent, int32_t* step_tables, cudaStream_t stream,
                              PlaceholderTokens placeholders) {
  if (num_rows == 0) return cudaSuccess;
  UpdateBlockTablesKernel<<<num_rows, 128, 0, stream>>>(
      rows, new_blocks, context_lens, block_size, width, persistent, step_tables, placeholders);
  return cudaGetLastError();
}

}  // namespace gqa::cuda
