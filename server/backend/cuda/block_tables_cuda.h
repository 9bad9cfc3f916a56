// The CUDA backend's persistent block tables: the device twin of BlockTables
// (backend/step_plan.h), one row per live sequence's slot, updated by each step's deltas, and
// the step's own rows (in the step's packed order, what the attention kernels read) gathered
// from it by the same launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gqa::cuda {

// One packed row of a step: its sequence's slot (-1: an inert padding row, which reads block
// 0), and the blocks this step's delta gives it, [first_new, first_new + num_new), found at
// `offset` in the step's new-block list. A new row has first_new 0 and every block.
struct TableRowUpdate {
  int32_t slot = -1;
  int32_t first_new = 0;
  int32_t num_new = 0;
  int32_t offset = 0;
};

// Async scheduling: the decode rows whose token is a placeholder (backend/step_plan.h) read it
// from the previous step's sampled tokens. Packed row r is token row r for decodes (one token
// each, packed first).
struct PlaceholderTokens {
  const int32_t* source = nullptr;   // [num_rows]: the previous step's sampling row, or -1
  const int32_t* sampled = nullptr;  // [previous step's sampling rows]
  int32_t* token_ids = nullptr;      // [num_tokens]: the step's input tokens, resolved in place
};

// For each packed row r < num_rows: writes the row's new blocks into its slot of
// `persistent`, and step_tables[r] = the slot's blocks covering context_lens[r] tokens; with
// `placeholders`, resolves row r's token. One block of threads per row; each slot appears at
// most once per step.
//
// Launched first in the step, without programmatic dependent launch (kernels/cuda/pdl.cuh), and
// never letting the next kernel start early: every later kernel of the step starts after it has
// exited, so the attention kernels may read the step's rows before their WaitForPrevious as
// they read any uploaded input.
cudaError_t UpdateBlockTables(const TableRowUpdate* rows,   // [num_rows]
                              const int32_t* new_blocks,    // [sum of num_new]
                              const int32_t* context_lens,  // [num_rows]
                              int num_rows, int block_size, int width,
                              int32_t* persistent,   // [max_seqs, width], by slot
                              int32_t* step_tables,  // [num_rows, width], by packed row
                              cudaStream_t stream, PlaceholderTokens placeholders = {});

}  // namespace gqa::cuda
