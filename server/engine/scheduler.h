// Iteration-level continuous batching over a paged KV cache.
//
// Each step: every running sequence gets its next chunk (one token when decoding, the rest of
// its prompt, up to the token budget, when prefilling), oldest admission first. A sequence that
// needs a block when none is free preempts the most recently admitted running sequence (its
// blocks are freed and it goes back to the front of the queue to be recomputed). Then, if
// nothing was preempted, waiting sequences are admitted first come, first served while the
// token budget, max_num_seqs and the free blocks allow.
//
// Logits rows are bounded too: a step asks for at most max_num_seqs (what the backends hold),
// one per sampling sequence plus every token of a chunk whose prompt logprobs are wanted; such
// chunks are cut to fit, keeping one row for each running sequence scheduled after them.
// With prefix caching (the allocator's), a sequence being admitted first takes the longest chain
// of cached full blocks its tokens begin with, short of its last token (which is always computed,
// so that there are logits to sample): its computed count starts there, and its first chunk
// attends to the cached positions as any later chunk of a chunked prefill does. Every block a
// sequence fills is registered in the cache at Commit, once its K/V are written.
#pragma once

#include <deque>
#include <memory>
#include <vector>

#include "engine/block_allocator.h"
#include "engine/sequence.h"

namespace gqa {

struct SchedulerConfig {
  int block_size = 16;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  bool enable_prefix_caching = true;  // the engine builds its allocator with the cache on
  uint64_t prefix_cache_salt = 0;     // the chain's root: names what K/V depend on (the model)
};

// Compute tokens [seq->num_computed, seq->num_computed + num_tokens) of seq this step.
struct ScheduledChunk {
  Sequence* seq;
  int num_tokens;
  // True when the chunk reaches the sequence's last token, so a new token is sampled.
  bool samples() const { return seq->num_computed + num_tokens == seq->num_tokens(); }
  // Decoding: one new token after at least one generated, nothing to recompute. (Before
  // Scheduler::Commit: it reads the sequence's computed count.)
  bool decodes() const {
    return num_tokens == 1 && seq->num_computed == seq->num_tokens() - 1 &&
           seq->num_generated() > 0;
  }
};

enum class StepPhase { kPrefill, kDecode, kMixed };
const char* StepPhaseName(StepPhase phase);

struct SchedulerOutput {
  std::vector<ScheduledChunk> chunks;
  std::vector<Sequence*> preempted;  // this step, in the order they were preempted
  int num_tokens = 0;
  // Prefix cache lookups of the sequences admitted this step (caching on only): their tokens,
  // and of those the ones found in the cache.
  int prefix_cache_queried_tokens = 0;
  int prefix_cache_hit_tokens = 0;
  bool empty() const { return chunks.empty(); }
  StepPhase phase() const;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockAllocator* allocator);

  void Add(std::unique_ptr<Sequence> seq);
  SchedulerOutput Schedule();
  // Marks each chunk's tokens as computed (their K/V are now in the cache).
  void Commit(const SchedulerOutput& out);
  // Removes a sequence (finished or cancelled) wherever it is and frees its blocks.
  std::unique_ptr<Sequence> Remove(uint64_t seq_id);
  Sequence* Find(uint64_t seq_id);

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const std::vector<std::unique_ptr<Sequence>>& running() const { return running_; }
  const std::deque<std::unique_ptr<Sequence>>& waiting() const { return waiting_; }
  int BlocksFor(int num_tokens) const;

 private:
  // Grows seq's block list to cover num_tokens; false when not enough blocks are free.
  bool Reserve(Sequence& seq, int num_tokens);
  void PreemptLast(SchedulerOutput& out);
  // A step's remaining token and logits-row budgets.
  struct Budget {
    int tokens = 0;
    int logits_rows = 0;
  };
  // How many of seq's uncomputed tokens fit the budget, keeping `reserved_rows` logits rows
  // for sequences scheduled after it.
  int ChunkSize(const Sequence& seq, const Budget& budget, int reserved_rows) const;
  static int LogitsRows(const Sequence& seq, int num_tokens);
  bool ScheduleRunning(size_t index, Budget& budget, SchedulerOutput& out);
  void AdmitWaiting(Budget& budget, SchedulerOutput& out);
  // Gives a sequence without blocks the cached blocks of its longest cached prefix (short of
  // its last token) and returns how many tokens they hold. Detach releases every block the
  // sequence holds and resets its computed count (a failed admission, a preemption).
  int AttachCachedPrefix(Sequence& seq);
  void DetachCachedPrefix(Sequence& seq);
  // Registers the sequence's newly filled blocks in the prefix cache.
  void CacheFullBlocks(Sequence& seq);

  SchedulerConfig config_;
  BlockAllocator* allocator_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  std::deque<std::unique_ptr<Sequence>> waiting_;
  uint64_t next_admission_ = 0;
};

}  // namespace gqa
