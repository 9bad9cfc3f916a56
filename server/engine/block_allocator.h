// Hands out KV cache block ids. Running out is a value, not an exception: the scheduler answers
// it with preemption.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engine/block_list.h"

namespace gqa {

class BlockAllocator {
 public:
  // Blocks 0..num_blocks-1, handed out lowest id first; freed blocks are reused first (LIFO).
  explicit BlockAllocator(int num_blocks);

  // All n blocks, or nothing when fewer are free.
  std::optional<BlockList> Allocate(int n);
  void Free(std::span<const int32_t> blocks);

  int num_free() const { return static_cast<int>(free_.size()); }
  int num_total() const { return num_total_; }

 private:
  int num_total_;
  std::vector<int32_t> free_;  // a stack: back() is handed out next
};

}  // namespace gqa
