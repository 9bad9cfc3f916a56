// The step plans the backend tests drive their backends with: sequences of random prompt
// tokens computed in chunks, each step's new blocks taken from a shuffled free list and sent as
// block-table deltas, as the engine sends them (tests/cuda/cuda_backend_test.cc,
// tests/cuda/tensor_parallel_backend_test.cc).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/step_plan.h"

namespace gqa::testing {

struct PlannedSeq {
  uint64_t id = 0;
  std::vector<int32_t> tokens;
  std::vector<int32_t> blocks;
  int computed = 0;
  int prompt_len = 0;
  int blocks_sent = 0;  // blocks the backends' tables hold (the deltas send the rest)
};

struct Chunk {
  int seq;     // index into the sequences
  int tokens;  // to compute this step
};

// The plan computing `chunks`: each sequence's blocks grow from `free_blocks` (taken from its
// back) to cover its chunk, new ones sent as a delta; `sampling` receives, in plan order, the
// indices of the sequences whose chunk reaches their last token (they sample). The plan's
// chunks point into `seqs`' tokens.
inline StepPlan PlanChunks(std::vector<PlannedSeq>& seqs, const std::vector<Chunk>& chunks,
                           std::vector<int32_t>& free_blocks, int block_size,
                           std::vector<int>* sampling) {
  StepPlan plan;
  for (const Chunk& c : chunks) {
    PlannedSeq& s = seqs[c.seq];
    while (static_cast<int>(s.blocks.size()) * block_size < s.computed + c.tokens) {
      s.blocks.push_back(free_blocks.back());
      free_blocks.pop_back();
    }
    if (static_cast<int>(s.blocks.size()) > s.blocks_sent) {
      plan.tables.rows.push_back(
          {s.id, s.blocks_sent,
           std::vector<int32_t>(s.blocks.begin() + s.blocks_sent, s.blocks.end())});
      s.blocks_sent = static_cast<int>(s.blocks.size());
    }
    const int num_tokens = static_cast<int>(s.tokens.size());
    ScheduledSeq seq;
    seq.seq_id = s.id;
    seq.chunk = std::span<const int32_t>(s.tokens).subspan(s.computed, c.tokens);
    seq.start_pos = s.computed;
    seq.samples = s.computed + c.tokens == num_tokens;
    seq.is_decode = IsDecodeChunk(c.tokens, s.computed, num_tokens, num_tokens - s.prompt_len);
    plan.seqs.push_back(seq);
    if (seq.samples) sampling->push_back(c.seq);
  }
  return plan;
}

}  // namespace gqa::testing
