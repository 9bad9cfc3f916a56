#include "engine/block_allocator.h"

#include <algorithm>

namespace gqa {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t ChainBlockHash(uint64_t parent_hash, std::span<const int32_t> tokens) {
  uint64_t h = Mix(parent_hash ^ 0x9e3779b97f4a7c15ULL);
  for (int32_t t : tokens) h = Mix(h ^ static_cast<uint32_t>(t)) + 0x9e3779b97f4a7c15ULL;
  return Mix(h ^ tokens.size());
}

BlockAllocator::BlockAllocator(int num_blocks, const PrefixCacheOptions& cache)
    : num_total_(num_blocks), cache_(cache), blocks_(num_blocks) {
  free_.reserve(num_blocks);
  for (int id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
}

int32_t BlockAllocator::TakeFree() {
  if (!free_.empty()) {
    const int32_t block = free_.back();
    free_.pop_back();
    return block;
  }
  const int32_t block = evictable_.front();
  evictable_.pop_front();
  Evict(block);
  return block;
}

std::optional<BlockList> BlockAllocator::Allocate(int n) {
  if (n < 0 || n > num_free()) return std::nullopt;
  BlockList blocks(n);
  for (int32_t& block : blocks) {
    block = TakeFree();
    blocks_[block].refs = 1;
  }
  return blocks;
}

void BlockAllocator::Free(std::span<const int32_t> blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    BlockState& b = blocks_[*it];
    if (b.refs <= 0 || --b.refs > 0) continue;
    if (b.cache_id != 0) {
      b.evictable = evictable_.insert(evictable_.end(), *it);
    } else {
      free_.push_back(*it);
    }
  }
}

void BlockAllocator::Share(std::span<const int32_t> blocks) {
  for (int32_t block : blocks) {
    BlockState& b = blocks_[block];
    if (b.refs++ == 0) evictable_.erase(b.evictable);
  }
}

int32_t BlockAllocator::FindCached(uint64_t hash, uint64_t parent_id,
                                   std::span<const int32_t> tokens) const {
  auto [first, last] = cached_.equal_range(hash);
  for (auto it = first; it != last; ++it) {
    const BlockState& b = blocks_[it->second];
    if (b.parent_id == parent_id &&
        std::equal(tokens.begin(), tokens.end(), b.tokens.begin(), b.tokens.end())) {
      return it->second;
    }
  }
  return -1;
}

BlockList BlockAllocator::MatchPrefix(std::span<const int32_t> tokens, BlockChain* chain) const {
  BlockList hits;
  BlockChain at{cache_.salt, 0};
  if (cache_.enabled) {
    const size_t bs = cache_.block_size;
    for (size_t start = 0; start + bs <= tokens.size(); start += bs) {
      const auto block_tokens = tokens.subspan(start, bs);
      const uint64_t hash = cache_.hash(at.hash, block_tokens);
      const int32_t block = FindCached(hash, at.id, block_tokens);
      if (block < 0) break;
      hits.push_back(block);
      at = {hash, blocks_[block].cache_id};
    }
  }
  if (chain) *chain = at;
  return hits;
}

BlockChain BlockAllocator::CacheBlock(int32_t block, const BlockChain& parent,
                                      std::span<const int32_t> tokens) {
  if (!cache_.enabled) return {};
  const uint64_t hash = cache_.hash(parent.hash, tokens);
  if (const int32_t equal = FindCached(hash, parent.id, tokens); equal >= 0) {
    return {hash, blocks_[equal].cache_id};
  }
  BlockState& b = blocks_[block];
  if (b.cache_id != 0) Evict(block);  // not expected: a referenced block is cached once
  b.hash = hash;
  b.cache_id = next_cache_id_++;
  b.parent_id = parent.id;
  b.tokens.assign(tokens.begin(), tokens.end());
  cached_.emplace(hash, block);
  return {hash, b.cache_id};
}

void BlockAllocator::Evict(int32_t block) {
  BlockState& b = blocks_[block];
  auto [first, last] = cached_.equal_range(b.hash);
  for (auto it = first; it != last; ++it) {
    if (it->second == block) {
      cached_.erase(it);
      break;
    }
  }
  b.cache_id = 0;
  b.parent_id = 0;
  b.tokens.clear();
}

}  // namespace gqa
