#include "engine/block_allocator.h"

#include <algorithm>

namespace gqa {

BlockAllocator::BlockAllocator(int num_blocks) : num_total_(num_blocks) {
  free_.reserve(num_blocks);
  for (int id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
}

std::optional<BlockList> BlockAllocator::Allocate(int n) {
  if (n < 0 || n > num_free()) return std::nullopt;
  BlockList blocks(free_.end() - n, free_.end());
  std::reverse(blocks.begin(), blocks.end());
  free_.resize(free_.size() - n);
  return blocks;
}

void BlockAllocator::Free(std::span<const int32_t> blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) free_.push_back(*it);
}

}  // namespace gqa
