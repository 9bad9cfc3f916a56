// The step protocol between the engine and a backend: one StepPlan in (what to compute, block
// table deltas), one StepOutput back (the sampled tokens and the logprobs asked for).
//
// Block tables are persistent in the backend, one slot per live sequence (BlockTables below;
// the CUDA backend mirrors it on the device). A plan carries only what changed since the last
// one: sequences that left (finished, cancelled, preempted), then new rows (admitted or
// readmitted sequences: every block from the first) and blocks appended to running sequences.
// A removal is applied before any row, so a slot freed this step can be reused in it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "gqa/kernels/sampling.h"

namespace gqa {

using kernels::LogprobsQuery;
using kernels::LogprobsResult;
using kernels::SamplingRow;

// The one definition of a decode: a chunk of one token that samples after at least one token
// was generated, with nothing left to recompute. The scheduler computes it, the metrics count
// it, and both backends route it (the decode kernel, the graphs): a prompt's one-token last
// chunk is not a decode.
inline bool IsDecodeChunk(int num_tokens, int start_pos, int seq_tokens, int num_generated) {
  return num_tokens == 1 && start_pos == seq_tokens - 1 && num_generated > 0;
}

// Async scheduling: a chunk token that the sequence samples in the step still in flight (vLLM's
// -1). The plan says which of that step's sampling rows holds it; the backend reads it there
// (on the GPU, from the device buffer the previous step sampled into).
inline constexpr int32_t kPlaceholderToken = -1;

// One sequence's chunk in a step: tokens at positions [start_pos, start_pos + chunk.size()),
// whose K/V go to the cache and whose queries attend to positions [0, their own], through the
// sequence's table (whose blocks cover them once this plan's deltas are applied).
struct ScheduledSeq {
  uint64_t seq_id = 0;
  std::span<const int32_t> chunk;
  int32_t start_pos = 0;
  bool samples = false;    // the chunk reaches the sequence's last token: one token is sampled
  bool is_decode = false;  // IsDecodeChunk
  SamplingRow sampling;    // when it samples
  // The sampled token's logprobs: -1 none, else this many alternatives (0..20).
  int top_logprobs = -1;
  // Prompt logprobs: -1 none, else this many alternatives for each prompt position p in
  // [prompt_logprobs_from, prompt.size()) whose predecessor p - 1 is in the chunk.
  int prompt_top_logprobs = -1;
  int32_t prompt_logprobs_from = 0;
  std::span<const int32_t> prompt;  // the whole prompt, when prompt logprobs are asked for
  // >= 0: the chunk is one placeholder token (a decode): the token the previous step (the one
  // submitted just before this plan's) sampled in this sampling row, in that plan's order.
  int32_t placeholder_sample_row = -1;
  bool wants_all_logits() const { return prompt_top_logprobs >= 0; }
  bool wants_logprobs() const { return top_logprobs >= 0 || wants_all_logits(); }
};

struct BlockTableRow {
  uint64_t seq_id = 0;
  int32_t first_block = 0;      // 0: a new row (admission); otherwise blocks appended
  std::vector<int32_t> blocks;  // the sequence's blocks [first_block, first_block + size)
};

struct BlockTableDelta {
  std::vector<uint64_t> removed;  // applied first: these sequences' slots are freed
  std::vector<BlockTableRow> rows;
  bool empty() const { return removed.empty() && rows.empty(); }
};

// The chunks' spans point into the scheduler's sequences: valid until the next Schedule (a
// backend reads them in SubmitStep, never in CollectStep).
struct StepPlan {
  std::vector<ScheduledSeq> seqs;  // in the scheduler's order
  BlockTableDelta tables;
  int num_tokens() const;
  bool wants_logprobs() const;
};

struct StepOutput {
  std::vector<int32_t> sampled;  // one token per sampling sequence, in plan order
  // Both empty when the plan asks for no logprobs (the usual step costs nothing for them).
  // Otherwise parallel to `sampled`: the sampled token's logprobs where top_logprobs >= 0;
  std::vector<std::optional<LogprobsResult>> sampled_logprobs;
  // and one list per plan sequence: the prompt positions' logprobs its chunk computed, in order.
  std::vector<std::vector<LogprobsResult>> prompt_logprobs;
};

// Where a step's logits rows go: first one row per sampling sequence (the rows sampled from), in
// plan order; then, for each sequence that wants all logits, in plan order, its chunk's other
// tokens in order. Returns, for every token of the step (chunks concatenated in plan order),
// its logits row or -1.
std::vector<int32_t> LogitsRowOfTokens(std::span<const ScheduledSeq> seqs);

// The logprobs queries a step's plan asks for, once its tokens are sampled, and where each
// answer goes in the StepOutput.
struct StepLogprobsQueries {
  std::vector<LogprobsQuery> queries;
  struct Target {
    int seq = 0;          // index into the plan
    bool prompt = false;  // prompt_logprobs[seq], else sampled_logprobs[sample_index]
    int sample_index = 0;
  };
  std::vector<Target> targets;
};
// The plan's chunk tokens, concatenated in plan order, with each placeholder replaced by the
// previous step's token (`previous_sampled`, that step's StepOutput::sampled). Fails on a
// placeholder without a valid row (the host backends' check of the scheduler).
absl::StatusOr<std::vector<int32_t>> ResolvedTokens(std::span<const ScheduledSeq> seqs,
                                                    std::span<const int32_t> previous_sampled);

StepLogprobsQueries BuildLogprobsQueries(std::span<const ScheduledSeq> seqs,
                                         std::span<const int32_t> sampled);
// Fills `out`'s logprobs (sized for `num_seqs` plan sequences) from the answers to
// BuildLogprobsQueries' queries; leaves them empty when nothing was asked.
void StoreLogprobs(const StepLogprobsQueries& asked, std::span<const LogprobsResult> answers,
                   size_t num_seqs, StepOutput& out);

// The persistent block tables: [max_seqs, max_blocks_per_seq] block ids, -1 where empty, one
// row (slot) per live sequence, the lowest free slot taken first. The CPU backend reads it; the
// CUDA backend keeps it as the host mirror of its device table and uploads only the deltas.
class BlockTables {
 public:
  BlockTables(int max_seqs, int max_blocks_per_seq);

  // Removals, then rows. Refuses (and changes nothing further) an append to an unknown
  // sequence, a new row for a sequence already present, a row past the width, no free slot.
  absl::Status Apply(const BlockTableDelta& delta);

  int SlotOf(uint64_t seq_id) const;  // -1 when absent
  int NumBlocks(int slot) const { return num_blocks_[slot]; }
  std::span<const int32_t> Row(int slot) const {
    return {table_.data() + size_t(slot) * width_, size_t(num_blocks_[slot])};
  }
  const int32_t* data() const { return table_.data(); }  // [max_seqs, max_blocks_per_seq]
  int max_seqs() const { return static_cast<int>(num_blocks_.size()); }
  int max_blocks_per_seq() const { return width_; }
  int num_live() const { return static_cast<int>(slots_.size()); }

 private:
  int width_;
  std::vector<int32_t> table_;
  std::vector<int> num_blocks_;  // per slot; 0 for free slots
  std::vector<bool> used_;
  std::unordered_map<uint64_t, int> slots_;
};

// For tools, benchmarks and tests that describe each step by whole block tables: turns a batch
// into a plan whose deltas remove the previous call's sequences and add every row anew.
struct WholeTableSeq {
  std::span<const int32_t> chunk;
  int32_t start_pos = 0;
  std::span<const int32_t> block_table;  // covers positions [0, start_pos + chunk.size())
  bool samples = false;
  bool wants_all_logits = false;  // logits of every token (prompt logprobs, k = 0, from 1)
};
class WholeTablePlanner {
 public:
  // The decode flag follows the chunk: one sampling token after the first position.
  StepPlan Plan(std::span<const WholeTableSeq> batch);

 private:
  uint64_t next_id_ = 1;
  std::vector<uint64_t> live_;
};

}  // namespace gqa
