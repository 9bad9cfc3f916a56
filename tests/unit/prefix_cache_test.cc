// Prefix caching in the block allocator and the scheduler: exact block ids, reference counts,
// eviction order, preemption and cancellation of sequences whose blocks are shared, and hash
// collisions caught by comparing tokens.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <random>

#include "engine/block_allocator.h"
#include "engine/scheduler.h"
#include "engine/step_stats.h"

namespace gqa {
namespace {

constexpr int kBlock = 4;

PrefixCacheOptions CacheOn(BlockHashFn hash = ChainBlockHash) {
  return {.enabled = true, .block_size = kBlock, .salt = 42, .hash = hash};
}

std::vector<int32_t> Tokens(int n, int32_t first = 100) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

std::unique_ptr<Sequence> Seq(uint64_t id, std::vector<int32_t> prompt) {
  Request r;
  r.prompt = std::move(prompt);
  r.stopping.max_new_tokens = 100;
  return std::make_unique<Sequence>(std::move(r), id);
}

// Commits the step and appends a token to every sequence whose chunk reached its end.
void FinishStep(Scheduler& s, const SchedulerOutput& out, int32_t token = 9) {
  std::vector<Sequence*> sampled;
  for (const auto& c : out.chunks) {
    if (c.samples()) sampled.push_back(c.seq);
  }
  s.Commit(out);
  for (Sequence* seq : sampled) seq->tokens.push_back(token);
}

uint64_t CollidingHash(uint64_t, std::span<const int32_t>) { return 7; }

TEST(PrefixCacheAllocatorTest, CachedBlocksAreFoundVerifiedAndReferenceCounted) {
  BlockAllocator a(8, CacheOn());
  const auto tokens = Tokens(12);
  BlockList blocks = *a.Allocate(3);
  EXPECT_EQ(blocks, (BlockList{0, 1, 2}));
  BlockChain chain{a.root_hash(), 0};
  for (int i = 0; i < 3; ++i) {
    chain = a.CacheBlock(blocks[i], chain,
                         std::span<const int32_t>(tokens).subspan(i * kBlock, kBlock));
  }
  EXPECT_EQ(a.num_cached(), 3);
  BlockChain found;
  EXPECT_EQ(a.MatchPrefix(tokens, &found), (BlockList{0, 1, 2}));
  EXPECT_EQ(found.hash, chain.hash);
  EXPECT_EQ(found.id, chain.id);
  // A prefix that leaves the chain in its second block: one block.
  auto other = tokens;
  other[5] = 7;
  EXPECT_EQ(a.MatchPrefix(other, nullptr), (BlockList{0}));
  // Partial blocks are never matched.
  EXPECT_EQ(a.MatchPrefix(std::span<const int32_t>(tokens).first(7), nullptr), (BlockList{0}));

  a.Share(BlockList{0, 1});
  EXPECT_EQ(a.ref_count(0), 2);
  a.Free(blocks);  // the first owner goes; the sharer keeps 0 and 1
  EXPECT_EQ(a.ref_count(0), 1);
  EXPECT_EQ(a.ref_count(2), 0);
  EXPECT_EQ(a.num_free(), 6);  // 5 never used + block 2, cached and free
  EXPECT_EQ(a.num_cached_free(), 1);
  a.Free(BlockList{0, 1});
  EXPECT_EQ(a.num_free(), 8);
  EXPECT_EQ(a.num_cached(), 3);  // content kept while free
  EXPECT_EQ(a.MatchPrefix(tokens, nullptr), (BlockList{0, 1, 2}));
}

TEST(PrefixCacheAllocatorTest, EvictsCachedFreeBlocksOnlyWhenNeverCachedOnesRunOut) {
  BlockAllocator a(6, CacheOn());
  const auto first = Tokens(8, 100), second = Tokens(8, 200);
  BlockList x = *a.Allocate(2), y = *a.Allocate(2);
  BlockChain cx{a.root_hash(), 0}, cy{a.root_hash(), 0};
  for (int i = 0; i < 2; ++i) {
    cx = a.CacheBlock(x[i], cx, std::span<const int32_t>(first).subspan(i * kBlock, kBlock));
    cy = a.CacheBlock(y[i], cy, std::span<const int32_t>(second).subspan(i * kBlock, kBlock));
  }
  a.Free(x);  // least recently freed: x's tail first, then its head
  a.Free(y);
  EXPECT_EQ(a.num_free(), 6);
  EXPECT_EQ(a.Allocate(2), (BlockList{4, 5}));  // never-cached blocks first
  EXPECT_EQ(a.num_cached(), 4);
  EXPECT_EQ(a.Allocate(1), (BlockList{1}));  // x's tail block
  EXPECT_EQ(a.MatchPrefix(first, nullptr), (BlockList{0}));
  EXPECT_EQ(a.Allocate(1), (BlockList{0}));
  EXPECT_EQ(a.MatchPrefix(first, nullptr), BlockList{});
  EXPECT_EQ(a.MatchPrefix(second, nullptr), (BlockList{2, 3}));  // untouched
  // A hit moves a block out of the eviction queue; freed again, it goes to its back.
  a.Share(BlockList{2});
  a.Free(BlockList{2});
  EXPECT_EQ(a.Allocate(1), (BlockList{3}));
  EXPECT_EQ(a.Allocate(1), (BlockList{2}));
  EXPECT_EQ(a.num_cached(), 0);
  EXPECT_EQ(a.Allocate(1), std::nullopt);
}

TEST(PrefixCacheAllocatorTest, HashCollisionsAreCaughtByComparingTokensAndParents) {
  BlockAllocator a(8, CacheOn(CollidingHash));  // every block hashes to 7
  const auto tokens = Tokens(8, 100);
  BlockList blocks = *a.Allocate(2);
  BlockChain chain{a.root_hash(), 0};
  chain = a.CacheBlock(blocks[0], chain, std::span<const int32_t>(tokens).first(kBlock));
  chain = a.CacheBlock(blocks[1], chain, std::span<const int32_t>(tokens).subspan(kBlock, kBlock));
  EXPECT_EQ(a.MatchPrefix(tokens, nullptr), (BlockList{0, 1}));
  // Same hashes, other tokens: no hit.
  EXPECT_EQ(a.MatchPrefix(Tokens(8, 300), nullptr), BlockList{});
  // The second block's tokens after another first block: its K/V depend on the parent, no hit.
  std::vector<int32_t> swapped(tokens.begin() + kBlock, tokens.end());
  swapped.insert(swapped.end(), tokens.begin() + kBlock, tokens.end());
  EXPECT_EQ(a.MatchPrefix(swapped, nullptr), BlockList{});
}

TEST(PrefixCacheAllocatorTest, OffItCachesNothing) {
  BlockAllocator a(4);
  BlockList b = *a.Allocate(1);
  EXPECT_EQ(a.CacheBlock(b[0], {}, Tokens(kBlock)).id, 0u);
  a.Free(b);
  EXPECT_EQ(a.num_cached(), 0);
  EXPECT_EQ(a.MatchPrefix(Tokens(kBlock), nullptr), BlockList{});
}

class PrefixCacheSchedulerTest : public ::testing::Test {
 protected:
  PrefixCacheSchedulerTest() : alloc_(16, CacheOn()), s_({kBlock, 8, 64}, &alloc_) {}
  BlockAllocator alloc_;
  Scheduler s_;
};

TEST_F(PrefixCacheSchedulerTest, SharedPrefixIsReusedAndDivergentSuffixesGetTheirOwnBlocks) {
  auto system = Tokens(8, 100);  // two full blocks
  auto prompt_a = system, prompt_b = system;
  prompt_a.insert(prompt_a.end(), {1, 2, 3});
  prompt_b.insert(prompt_b.end(), {4, 5});
  s_.Add(Seq(1, prompt_a));
  auto out = s_.Schedule();
  EXPECT_EQ(out.prefix_cache_queried_tokens, 11);
  EXPECT_EQ(out.prefix_cache_hit_tokens, 0);
  EXPECT_EQ(s_.Find(1)->blocks, (BlockList{0, 1, 2}));
  FinishStep(s_, out);
  EXPECT_EQ(alloc_.num_cached(), 2);  // the third block is partial: never shared

  s_.Add(Seq(2, prompt_b));
  out = s_.Schedule();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[1].seq->id, 2u);
  EXPECT_EQ(out.chunks[1].num_tokens, 2);  // only the suffix is computed
  EXPECT_EQ(out.prefix_cache_queried_tokens, 10);
  EXPECT_EQ(out.prefix_cache_hit_tokens, 8);
  Sequence* b = s_.Find(2);
  EXPECT_EQ(b->num_computed, 8);
  EXPECT_EQ(b->blocks, (BlockList{0, 1, 3}));
  EXPECT_EQ(b->cached_prompt_tokens, 8);
  EXPECT_EQ(alloc_.ref_count(0), 2);
  EXPECT_EQ(alloc_.ref_count(1), 2);
  EXPECT_EQ(alloc_.ref_count(3), 1);
  FinishStep(s_, out);

  // Both finish: the shared blocks lose both references and stay cached.
  s_.Remove(1);
  EXPECT_EQ(alloc_.ref_count(0), 1);
  s_.Remove(2);
  EXPECT_EQ(alloc_.ref_count(0), 0);
  EXPECT_EQ(alloc_.num_free(), 16);
  EXPECT_EQ(alloc_.num_cached_free(), alloc_.num_cached());
}

TEST_F(PrefixCacheSchedulerTest, TheLastPromptTokenIsAlwaysComputed) {
  const auto prompt = Tokens(8, 100);  // exactly two blocks
  s_.Add(Seq(1, prompt));
  FinishStep(s_, s_.Schedule());
  s_.Remove(1);
  s_.Add(Seq(2, prompt));
  auto out = s_.Schedule();
  ASSERT_EQ(out.chunks.size(), 1u);
  EXPECT_EQ(out.chunks[0].num_tokens, 4);  // block 1 is recomputed into a block of its own
  EXPECT_TRUE(out.chunks[0].samples());
  EXPECT_EQ(s_.Find(2)->blocks[0], 0);
  EXPECT_NE(s_.Find(2)->blocks[1], 1);
  EXPECT_EQ(out.prefix_cache_hit_tokens, 4);
}

TEST_F(PrefixCacheSchedulerTest, APromptNeverStartsWithAOneTokenChunk) {
  const auto prompt = Tokens(9, 100);  // two full blocks and one token
  s_.Add(Seq(1, prompt));
  FinishStep(s_, s_.Schedule());
  EXPECT_EQ(alloc_.num_cached(), 2);
  s_.Add(Seq(2, prompt));
  auto out = s_.Schedule();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[1].num_tokens, 5);  // one block short of the cached two
  EXPECT_EQ(out.prefix_cache_hit_tokens, 4);
}

TEST_F(PrefixCacheSchedulerTest, GeneratedTokensBecomeCacheableOnceTheirBlockIsFull) {
  s_.Add(Seq(1, Tokens(6, 100)));
  FinishStep(s_, s_.Schedule(), 50);  // 7 tokens
  FinishStep(s_, s_.Schedule(), 51);  // 8 tokens, 7 computed
  FinishStep(s_, s_.Schedule(), 52);  // 9 tokens, 8 computed: block 1 is full
  EXPECT_EQ(alloc_.num_cached(), 2);
  auto turn2 = Tokens(6, 100);
  turn2.insert(turn2.end(), {50, 51, 7, 7});
  s_.Add(Seq(2, turn2));
  auto out = s_.Schedule();
  EXPECT_EQ(out.prefix_cache_hit_tokens, 8);
  EXPECT_EQ(s_.Find(2)->blocks[1], s_.Find(1)->blocks[1]);
}

TEST_F(PrefixCacheSchedulerTest, EqualBlocksComputedTwiceAreCachedOnceAndChainsGoOn) {
  const auto prompt = Tokens(9, 100);
  s_.Add(Seq(1, prompt));
  s_.Add(Seq(2, prompt));  // admitted in the same step: neither finds the other's blocks
  auto out = s_.Schedule();
  EXPECT_EQ(out.prefix_cache_hit_tokens, 0);
  FinishStep(s_, out);
  EXPECT_EQ(alloc_.num_cached(), 2);  // sequence 2's equal blocks stay uncached
  // They generate different tokens: each fills a third block of its own, chained on the
  // cached blocks (sequence 2's through sequence 1's equal ones).
  for (int32_t t = 0; t < 3; ++t) {
    s_.Commit(s_.Schedule());
    s_.Find(1)->tokens.push_back(60 + t);
    s_.Find(2)->tokens.push_back(70 + t);
  }
  EXPECT_EQ(alloc_.num_cached(), 4);
  auto longer = s_.Find(2)->tokens;
  longer.push_back(5);
  const int32_t third = s_.Find(2)->blocks[2];
  s_.Remove(1);
  s_.Remove(2);
  s_.Add(Seq(3, longer));
  out = s_.Schedule();
  EXPECT_EQ(out.prefix_cache_hit_tokens, 12);
  EXPECT_EQ(s_.Find(3)->blocks, (BlockList{0, 1, third, s_.Find(3)->blocks[3]}));
}

TEST(PrefixCacheSchedulerPoolTest, PreemptingASequenceWhoseBlocksAreSharedKeepsTheOthers) {
  BlockAllocator alloc(6, CacheOn());
  Scheduler s({kBlock, 8, 64}, &alloc);
  auto system = Tokens(8, 100);
  auto prompt_a = system, prompt_b = system;
  prompt_a.insert(prompt_a.end(), {1, 1});
  prompt_b.insert(prompt_b.end(), {2, 2});
  s.Add(Seq(1, prompt_a));
  FinishStep(s, s.Schedule());  // 1: blocks 0 1 2
  s.Add(Seq(2, prompt_b));
  FinishStep(s, s.Schedule());  // 2: blocks 0 1 3
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{0, 1, 3}));
  EXPECT_EQ(alloc.ref_count(0), 2);
  // Both decode until the pool (6 blocks) is short: 2, the last admitted, is preempted.
  std::vector<Sequence*> preempted;
  for (int step = 0; step < 12 && preempted.empty(); ++step) {
    auto out = s.Schedule();
    preempted = out.preempted;
    FinishStep(s, out);
  }
  ASSERT_EQ(preempted.size(), 1u);
  EXPECT_EQ(preempted[0]->id, 2u);
  EXPECT_EQ(preempted[0]->num_computed, 0);
  EXPECT_TRUE(preempted[0]->blocks.empty());
  EXPECT_EQ(alloc.ref_count(0), 1);  // still held by 1
  EXPECT_EQ(alloc.ref_count(1), 1);
  EXPECT_EQ(s.Find(1)->blocks[0], 0);
  // Once 1 finishes, 2 comes back and finds its prefix (the shared blocks and its own).
  s.Remove(1);
  auto out = s.Schedule();
  ASSERT_EQ(out.chunks.size(), 1u);
  EXPECT_EQ(out.chunks[0].seq->id, 2u);
  EXPECT_GE(out.prefix_cache_hit_tokens, 8);
  EXPECT_EQ(s.Find(2)->cached_prompt_tokens, 8);  // from its first admission
  EXPECT_EQ(DescribeStep(out, {}).resumed, 1);    // however few tokens its first chunk has
}

TEST(PrefixCacheSchedulerPoolTest, CancellingMidPrefillKeepsTheComputedBlocksCached) {
  BlockAllocator alloc(16, CacheOn());
  Scheduler s({kBlock, 8, /*max_num_batched_tokens=*/4}, &alloc);  // 4-token chunks
  const auto prompt = Tokens(14, 100);
  s.Add(Seq(1, prompt));
  FinishStep(s, s.Schedule());
  FinishStep(s, s.Schedule());
  EXPECT_EQ(s.Find(1)->num_computed, 8);
  s.Remove(1);  // cancelled with 8 of 14 prompt tokens computed
  EXPECT_EQ(alloc.num_cached(), 2);
  EXPECT_EQ(alloc.num_free(), 16);
  s.Add(Seq(2, prompt));
  auto out = s.Schedule();
  EXPECT_EQ(out.prefix_cache_hit_tokens, 8);
  EXPECT_EQ(s.Find(2)->num_computed, 8);
  EXPECT_EQ(s.Find(2)->blocks, (BlockList{0, 1, 2}));
}

TEST(PrefixCacheSchedulerPoolTest, AWaitingSequenceThatCannotBeAdmittedHoldsNoCachedBlocks) {
  BlockAllocator alloc(4, CacheOn());
  Scheduler s({kBlock, 8, 64}, &alloc);
  const auto system = Tokens(8, 100);
  auto prompt_a = system;
  prompt_a.push_back(1);
  s.Add(Seq(1, prompt_a));
  FinishStep(s, s.Schedule());  // 1 holds 0 1 2
  auto prompt_b = system;
  for (int i = 0; i < 9; ++i) prompt_b.push_back(2);  // needs 3 blocks beyond the cached 2
  s.Add(Seq(2, prompt_b));
  auto out = s.Schedule();
  ASSERT_EQ(out.chunks.size(), 1u);  // 2 does not fit
  EXPECT_EQ(out.prefix_cache_queried_tokens, 0);
  EXPECT_TRUE(s.waiting().front()->blocks.empty());
  EXPECT_EQ(alloc.ref_count(0), 1);
}

TEST(PrefixCacheSchedulerPoolTest, OffTheSchedulerComputesEveryToken) {
  BlockAllocator alloc(16);
  Scheduler s({kBlock, 8, 64}, &alloc);
  s.Add(Seq(1, Tokens(9)));
  FinishStep(s, s.Schedule());
  s.Remove(1);
  s.Add(Seq(2, Tokens(9)));
  auto out = s.Schedule();
  EXPECT_EQ(out.chunks[0].num_tokens, 9);
  EXPECT_EQ(out.prefix_cache_queried_tokens, 0);
}

// A random workload over a small pool (few prefixes, random suffixes and lengths, chunked
// prefills, preemption, cancellations) against a fake backend that writes into each slot the
// hash of the whole prefix ending there: every chunk must find, in every position it attends
// to, the K/V of its own prefix, and reference counts must equal the sequences holding a block.
TEST(PrefixCacheStressTest, EveryChunkAttendsToItsOwnPrefixAndCountsAddUp) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(seed);
  std::mt19937 rng(seed);
  const int num_blocks = 16;
  BlockAllocator alloc(num_blocks, CacheOn());
  Scheduler s({kBlock, 6, /*max_num_batched_tokens=*/12}, &alloc);
  std::vector<uint64_t> slots(num_blocks * kBlock, 0);  // what each slot holds
  auto prefix_hash = [](const std::vector<int32_t>& t, int end) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < end; ++i) h = (h ^ static_cast<uint32_t>(t[i])) * 1099511628211ULL;
    return h;
  };
  std::vector<std::vector<int32_t>> systems;
  for (int i = 0; i < 3; ++i) systems.push_back(Tokens(4 + 5 * i, 1000 * (i + 1)));
  uint64_t next_id = 1;
  int hits = 0, preempted = 0;
  for (int step = 0; step < 1500; ++step) {
    if (s.num_waiting() < 4 && rng() % 2 == 0) {
      auto prompt = systems[rng() % systems.size()];
      const int suffix = 1 + rng() % 9;
      for (int i = 0; i < suffix; ++i) prompt.push_back(static_cast<int32_t>(rng() % 5));
      auto seq = Seq(next_id++, prompt);
      seq->request.stopping.max_new_tokens = 1 + rng() % 30;
      s.Add(std::move(seq));
    }
    if (!s.idle() && rng() % 17 == 0) {  // cancel one at random, running or waiting
      std::vector<uint64_t> ids;
      for (const auto& q : s.running()) ids.push_back(q->id);
      for (const auto& q : s.waiting()) ids.push_back(q->id);
      s.Remove(ids[rng() % ids.size()]);
    }
    SchedulerOutput out = s.Schedule();
    hits += out.prefix_cache_hit_tokens;
    preempted += static_cast<int>(out.preempted.size());
    for (const ScheduledChunk& c : out.chunks) {
      const Sequence& q = *c.seq;
      for (int p = 0; p < q.num_computed; ++p) {
        const int slot = q.blocks[p / kBlock] * kBlock + p % kBlock;
        ASSERT_EQ(slots[slot], prefix_hash(q.tokens, p + 1))
            << "sequence " << q.id << " position " << p << " step " << step;
      }
    }
    for (const ScheduledChunk& c : out.chunks) {
      const Sequence& q = *c.seq;
      for (int p = q.num_computed; p < q.num_computed + c.num_tokens; ++p) {
        slots[q.blocks[p / kBlock] * kBlock + p % kBlock] = prefix_hash(q.tokens, p + 1);
      }
    }
    FinishStep(s, out, static_cast<int32_t>(rng() % 5));
    std::vector<Sequence*> done;
    for (const auto& q : s.running()) {
      if (q->num_generated() >= q->request.stopping.max_new_tokens) done.push_back(q.get());
    }
    for (Sequence* q : done) s.Remove(q->id);
    // Reference counts are the sequences holding each block; the rest is free.
    std::map<int32_t, int> holders;
    for (const auto& q : s.running()) {
      for (int32_t b : q->blocks) ++holders[b];
    }
    for (const auto& q : s.waiting()) ASSERT_TRUE(q->blocks.empty());
    int held = 0;
    for (int32_t b = 0; b < num_blocks; ++b) {
      ASSERT_EQ(alloc.ref_count(b), holders[b]) << "block " << b << " step " << step;
      held += holders[b] > 0;
    }
    ASSERT_EQ(alloc.num_free(), num_blocks - held);
  }
  EXPECT_GT(hits, 0);
  EXPECT_GT(preempted, 0) << "the pool was meant to be too small";
}

}  // namespace
}  // namespace gqa
