// Hands out KV cache block ids, reference-counted, and remembers what full blocks hold (the
// prefix cache). Running out is a value, not an exception: the scheduler answers it with
// preemption.
//
// Prefix caching (vLLM v1's automatic prefix caching): a full block is identified by a hash
// chained over its token ids and its parent's hash (the root's parent is a salt naming the model),
// so equal hashes mean equal prefixes, and a new sequence reuses the longest chain of cached
// blocks its tokens match. A hash only finds candidates: a hit is verified by comparing the
// block's tokens and its parent's identity (every cached block gets an id never reused), so a
// hash collision costs a comparison, never a wrong block. A block whose last reference is freed
// keeps its content while it is free; Allocate takes never-cached free blocks first, then evicts
// cached free blocks least recently freed first.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/block_list.h"

namespace gqa {

// The identity of a chain of cached blocks up to one block: its chained hash and the cached
// block's id (0 at the root, before any block).
struct BlockChain {
  uint64_t hash = 0;
  uint64_t id = 0;
};

// The hash of a full block of `tokens` after a parent with hash `parent_hash` (64-bit, mixed).
using BlockHashFn = uint64_t (*)(uint64_t parent_hash, std::span<const int32_t> tokens);
uint64_t ChainBlockHash(uint64_t parent_hash, std::span<const int32_t> tokens);

struct PrefixCacheOptions {
  bool enabled = false;
  int block_size = 16;
  uint64_t salt = 0;  // the root's hash: anything that changes K/V (model, dtype)
  BlockHashFn hash = ChainBlockHash;
};

class BlockAllocator {
 public:
  // Blocks 0..num_blocks-1, handed out lowest id first; freed blocks are reused first (LIFO).
  explicit BlockAllocator(int num_blocks, const PrefixCacheOptions& cache = {});

  // All n blocks (each with one reference), or nothing when fewer are free. Takes never-cached
  // free blocks first, then evicts the least recently freed cached blocks.
  std::optional<BlockList> Allocate(int n);
  // Drops one reference of each block, in reverse order (a sequence's tail is evicted first). A
  // block left without references becomes free; a cached one keeps its content until evicted.
  void Free(std::span<const int32_t> blocks);

  // The longest chain of cached full blocks that `tokens` (a multiple of block_size long, or the
  // full blocks of it are used) begins with, each verified token by token. Changes nothing.
  BlockList MatchPrefix(std::span<const int32_t> tokens, BlockChain* chain) const;
  // Takes one more reference of each block (cached blocks MatchPrefix found).
  void Share(std::span<const int32_t> blocks);
  // Records that `block` (referenced, full) holds `tokens` after `parent`; returns the chain up to
  // it. When an equal block (same tokens, same parent) is already cached, `block` stays uncached
  // and the chain names the cached one, so the sequence's later blocks still chain on.
  BlockChain CacheBlock(int32_t block, const BlockChain& parent, std::span<const int32_t> tokens);

  // Blocks Allocate can hand out: never-cached free blocks and cached free (evictable) ones.
  int num_free() const { return static_cast<int>(free_.size() + evictable_.size()); }
  int num_total() const { return num_total_; }
  bool caching() const { return cache_.enabled; }
  int block_size() const { return cache_.block_size; }
  int num_cached() const { return static_cast<int>(cached_.size()); }  // blocks with content
  int num_cached_free() const { return static_cast<int>(evictable_.size()); }
  int ref_count(int32_t block) const { return blocks_[block].refs; }
  uint64_t root_hash() const { return cache_.salt; }

 private:
  struct BlockState {
    int refs = 0;
    uint64_t hash = 0;
    uint64_t cache_id = 0;  // 0: not cached
    uint64_t parent_id = 0;
    std::vector<int32_t> tokens;             // cached blocks: the tokens, to verify hits
    std::list<int32_t>::iterator evictable;  // cached and free: its place in evictable_
  };
  // The cached block holding `tokens` after the block with cache id `parent_id`, or -1.
  int32_t FindCached(uint64_t hash, uint64_t parent_id, std::span<const int32_t> tokens) const;
  void Evict(int32_t block);
  int32_t TakeFree();

  int num_total_;
  PrefixCacheOptions cache_;
  std::vector<BlockState> blocks_;
  std::vector<int32_t> free_;                          // a stack: back() is handed out next
  std::list<int32_t> evictable_;                       // cached, free: front() evicted next
  std::unordered_multimap<uint64_t, int32_t> cached_;  // hash -> cached block
  uint64_t next_cache_id_ = 1;
};

}  // namespace gqa
