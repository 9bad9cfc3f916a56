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
//
// The step protocol (backend/step_plan.h): Schedule's output carries the StepPlan the backend
// runs (each chunk, whether it samples, whether it decodes, and the block-table deltas since the
// last plan); Update takes the backend's StepOutput back, commits the chunks, appends the
// sampled tokens, checks the stops and removes (frees) the finished sequences.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "backend/step_plan.h"
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

// What ends a sequence besides cancellation: the model's end-of-sequence ids, its length limit.
struct StopRules {
  std::vector<int32_t> eos_token_ids;
  int max_model_len = 0;  // 0: none
};

// Compute tokens [seq->num_computed, seq->num_computed + num_tokens) of seq this step. Both
// questions read the sequence's computed count: they are answered before Scheduler::Commit (the
// plan and DescribeStep ask them at scheduling time; Update reads the plan's answers).
struct ScheduledChunk {
  Sequence* seq;
  int num_tokens;
  // True when the chunk reaches the sequence's last token, so a new token is sampled.
  bool samples() const { return seq->num_computed + num_tokens == seq->num_tokens(); }
  // IsDecodeChunk (backend/step_plan.h): the one definition the backends route by.
  bool decodes() const {
    return IsDecodeChunk(num_tokens, seq->num_computed, seq->num_tokens(), seq->num_generated());
  }
};

enum class StepPhase { kPrefill, kDecode, kMixed };
const char* StepPhaseName(StepPhase phase);

struct SchedulerOutput {
  std::vector<ScheduledChunk> chunks;
  // What the backend runs: chunks[i] is plan.seqs[i]; the block-table deltas since the last
  // non-empty output (removals of sequences that left, new rows, appended blocks).
  StepPlan plan;
  std::vector<Sequence*> preempted;  // this step, in the order they were preempted
  int num_tokens = 0;
  // Prefix cache lookups of the sequences admitted this step (caching on only): their tokens,
  // and of those the ones found in the cache.
  int prefix_cache_queried_tokens = 0;
  int prefix_cache_hit_tokens = 0;
  bool empty() const { return chunks.empty(); }
  StepPhase phase() const;
};

// A sequence Update removed: it finished this step; its blocks (those it held, in order) are
// freed.
struct FinishedSeq {
  std::unique_ptr<Sequence> seq;
  FinishReason reason;
  int32_t matched_stop = 0;  // kStopToken: the token; kStopString: the stop string's index
  BlockList blocks;
};

// What Update did: sequences that sampled a token and keep running (their token is
// seq->tokens.back(), its text seq->pending_text), and the finished ones, in plan order.
struct UpdateResult {
  std::vector<Sequence*> continuing;
  std::vector<FinishedSeq> finished;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockAllocator* allocator, StopRules stops = {});

  void Add(std::unique_ptr<Sequence> seq);
  SchedulerOutput Schedule();
  // Takes a step's results back (vLLM's update_from_output): commits the chunks, stores the
  // logprobs, appends each sampled token, checks the stops, and removes the finished sequences.
  absl::StatusOr<UpdateResult> Update(const SchedulerOutput& out, const StepOutput& step);
  // Marks each chunk's tokens as computed (their K/V are now in the cache). Update does it.
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
  // The plan for out's chunks, and the block-table deltas since the last plan.
  void MakePlan(SchedulerOutput& out);
  // The sequence leaves the backend's block tables (the next plan removes its row).
  void LeaveTables(Sequence& seq);
  // Appends the sampled token; returns why the sequence finishes, if it does.
  std::optional<FinishReason> AcceptToken(Sequence& seq, int32_t token, int32_t* matched_stop);
  std::optional<FinishReason> CheckStops(const Sequence& seq, int32_t* matched_stop) const;

  SchedulerConfig config_;
  BlockAllocator* allocator_;
  StopRules stops_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  std::deque<std::unique_ptr<Sequence>> waiting_;
  uint64_t next_admission_ = 0;
  std::vector<uint64_t> leaving_tables_;  // removed from the tables by the next plan
};

}  // namespace gqa
