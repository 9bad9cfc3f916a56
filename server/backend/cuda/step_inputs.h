// A step's inputs: a page-locked host staging area and its fixed device twin, filled without a
// synchronization and copied with one asynchronous copy: the token arrays, the sampling rows,
// and the block-table deltas (one TableRowUpdate per packed row, then only the new block ids).
// Their addresses never change, so captured CUDA graphs read each step's values.
//
// The block tables persist on the device (one row per live sequence's slot, the twin of the
// backend's host BlockTables); the step's first launch (UpdateBlockTables, inside the graphs)
// applies the deltas and gathers the step's rows in packed order. Nothing is rebuilt per step.
//
// Within a step the sequences are reordered: the decodes (ScheduledSeq::is_decode) first, then
// the others (prefill chunks, a prompt's one-token last chunk included), so one decode kernel and
// one prefill kernel each take a contiguous range. Logit rows stay in the plan's order.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "backend/backend.h"
#include "backend/cuda/block_tables_cuda.h"
#include "backend/cuda/device.h"
#include "gqa/kernels/sampling.h"

namespace gqa::cuda {

struct StepCapacity {
  int max_tokens = 0;          // tokens in one step
  int max_seqs = 0;            // sequences in one step
  int max_blocks_per_seq = 0;  // block table width
};

// What the launches of one step need to know on the host.
struct StepShape {
  int num_tokens = 0;
  int num_seqs = 0;             // padded: rows past the batch are inert
  int num_decode = 0;           // sequences [0, num_decode) decode (one token each)
  int num_samples = 0;          // sampling rows (the first logits rows), in plan order
  int max_query_len = 0;        // the longest prefill chunk
  int max_prefill_context = 0;  // the longest prefill sequence's context, its chunk included
  int num_logit_rows = 0;       // rows of logits computed
};

// The arrays, in host and device memory alike.
struct StepArrays {
  int32_t* token_ids = nullptr;              // [max_tokens]
  int32_t* positions = nullptr;              // [max_tokens]
  int64_t* slots = nullptr;                  // [max_tokens], -1 for padding
  int32_t* context_lens = nullptr;           // [max_seqs], decode sequences first
  int32_t* prefill_query_start = nullptr;    // [max_seqs + 1], over the prefill sequences only
  int32_t* logit_rows = nullptr;             // [max_seqs], token rows whose logits are wanted
  kernels::SamplingRow* sampling = nullptr;  // [max_seqs]
  TableRowUpdate* table_rows = nullptr;      // [max_seqs], per packed row
  // [max_seqs], per packed row: the previous step's sampling row holding its (placeholder)
  // token, -1 for none (async scheduling; decode rows only).
  int32_t* placeholder_source = nullptr;
  int32_t* new_blocks = nullptr;  // [max_seqs * max_blocks_per_seq], carved last
};

class StepInputs {
 public:
  static absl::StatusOr<StepInputs> Create(const StepCapacity& capacity);

  // Fills the host side for `plan` (its deltas already applied to `tables`), padded to
  // `padded_seqs` decode rows (graph replay) when it is larger than the plan. Checks the plan
  // against the capacity and `num_blocks`. Waits first for the previous Upload's copy to have
  // read the staging area.
  absl::StatusOr<StepShape> Pack(const StepPlan& plan, const BlockTables& tables, int block_size,
                                 int num_blocks, int padded_seqs);
  // Copies the packed step to the device: one asynchronous copy on `stream`, up to the last new
  // block id.
  absl::Status Upload(cudaStream_t stream);
  // Applies the uploaded deltas to the persistent tables, gathers the step's rows and, given
  // `previous_sampled` ([max_seqs], the sampled tokens of the step launched before on `stream`),
  // resolves its placeholder tokens: one launch on `stream`, captured in the graphs.
  cudaError_t UpdateTables(const StepShape& shape, int block_size, cudaStream_t stream,
                           const int32_t* previous_sampled = nullptr);

  StepArrays& host() { return host_; }
  const StepArrays& device() const { return device_; }
  const int32_t* device_block_tables() const { return step_tables_; }      // [max_seqs, width]
  const int32_t* device_persistent_tables() const { return persistent_; }  // by slot (tests)
  const StepCapacity& capacity() const { return capacity_; }

 private:
  size_t Carve(StepArrays& arrays, void* base) const;
  // Packs row `packed`'s table update: its slot and its delta's new blocks (when it has one).
  absl::Status PackTableRow(int packed, int slot, const BlockTableRow* delta, int num_blocks);

  StepCapacity capacity_;
  PinnedMemory host_memory_;
  DeviceMemory device_memory_, table_memory_;
  StepArrays host_, device_;
  size_t blocks_at_ = 0;            // byte offset of new_blocks in the staging area
  int num_new_blocks_ = 0;          // this step's new block ids
  CudaEvent uploaded_;              // recorded after each Upload's copy
  int32_t* persistent_ = nullptr;   // [max_seqs, max_blocks_per_seq], by slot
  int32_t* step_tables_ = nullptr;  // [max_seqs, max_blocks_per_seq], by packed row
};

}  // namespace gqa::cuda
