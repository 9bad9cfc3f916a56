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
//
// Async scheduling (SchedulerConfig::async_scheduling): the engine schedules step n+1 before it
// updates step n. A sequence that samples in a step gets a placeholder token (kPlaceholderToken)
// at once, as if the step had already produced it: the next step computes it as a decode whose
// token the backend reads from the previous step's sampling row, and Update puts the real token
// in its place. A sequence stays "in flight" until every step it is scheduled in is updated;
// what would free its blocks meanwhile (a finish, a cancellation, a preemption) waits for that:
// it leaves running_ at once (no later step computes it) and takes effect in the Update that
// ends its flight. The tokens a finished sequence computed after its stop are discarded.
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
  // Schedule may run while the previous step is in flight (see the top of this file).
  bool async_scheduling = false;
};

// What ends a sequence besides cancellation: the model's end-of-sequence ids, its length limit.
struct StopRules {
  std::vector<int32_t> eos_token_ids;
  int max_model_len = 0;  // 0: none
};

// Compute tokens [start(), start() + num_tokens) of seq this step. The scheduler fixes the
// chunk's facts when it makes it (the sequence's counts move on while an async step is in
// flight); a chunk made by hand (tests, benchmarks) reads them from the sequence's computed
// count, so it is answered before Scheduler::Commit.
struct ChunkFacts {
  int start_pos = 0;
  bool samples = false;
  bool decodes = false;
};
struct ScheduledChunk {
  Sequence* seq;
  int num_tokens;
  std::optional<ChunkFacts> facts = std::nullopt;  // set by the scheduler
  int start() const { return facts ? facts->start_pos : seq->num_computed; }
  // True when the chunk reaches the sequence's last token, so a new token is sampled.
  bool samples() const {
    return facts ? facts->samples : start() + num_tokens == seq->num_tokens();
  }
  // IsDecodeChunk (backend/step_plan.h): the one definition the backends route by.
  bool decodes() const {
    return facts ? facts->decodes
                 : IsDecodeChunk(num_tokens, start(), seq->num_tokens(), seq->num_generated());
  }
};

enum class StepPhase { kPrefill, kDecode, kMixed };
const char* StepPhaseName(StepPhase phase);

struct SchedulerOutput {
  uint64_t step = 0;  // the step's id, counted from 1 (0: empty, never run)
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

// A sequence Update removed: it finished this step (or, async, in an earlier step or by a
// cancellation while it was in flight); its blocks (those it held, in order) are freed.
struct FinishedSeq {
  std::unique_ptr<Sequence> seq;
  FinishReason reason;
  int32_t matched_stop = 0;  // kStopToken: the token; kStopString: the stop string's index
  BlockList blocks;
  bool sampled_last = true;  // its last token (seq->tokens.back()) is new: false when cancelled
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
  // Cancels a sequence: Remove, unless it is in a step in flight (async); then it stops being
  // scheduled now and a later Update returns it, cancelled, among the finished. nullptr then,
  // and for unknown ids.
  std::unique_ptr<Sequence> Cancel(uint64_t seq_id);
  // After a failed step (async): treats every step scheduled as updated, so that Remove may
  // free their sequences' blocks. The engine removes those sequences.
  void AbandonStepsInFlight() { updated_step_ = last_step_; }
  // The sequence is in a step scheduled and not yet updated (always false when not async).
  bool InFlight(const Sequence& seq) const;
  Sequence* Find(uint64_t seq_id);

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty() && deferred_.empty(); }
  // Sequences out of running_ whose finish or preemption waits for their step (async).
  int num_deferred() const { return static_cast<int>(deferred_.size()); }
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
  ScheduledChunk MakeChunk(Sequence& seq, int num_tokens) const;
  // Async: the sequence's last token is a placeholder it may not go beyond (max_new_tokens,
  // max_model_len): nothing left to compute.
  bool ReachedLength(const Sequence& seq) const;
  // Async: running_.back() is in flight: it leaves running_ now and is preempted once its
  // step is updated.
  void DeferPreemption(SchedulerOutput& out);
  // The finishes and preemptions deferred until their sequences' steps were updated.
  void SettleDeferred(UpdateResult& result);
  struct Deferred {
    std::unique_ptr<Sequence> seq;
    bool preempt = false;  // else finish
    FinishReason reason = FinishReason::kCancelled;
    int32_t matched_stop = 0;
    bool sampled_last = false;
  };
  Deferred* FindDeferred(uint64_t seq_id);
  // Moves running_'s sequence out, to finish once its flight ends.
  void DeferFinish(uint64_t seq_id, FinishReason reason, int32_t matched_stop, bool sampled_last);
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
  uint64_t last_step_ = 0;                // the last step scheduled
  uint64_t updated_step_ = 0;             // the last step updated
  std::vector<Deferred> deferred_;        // async: in deferral order
};

}  // namespace gqa
