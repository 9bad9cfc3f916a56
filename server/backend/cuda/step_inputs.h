// A step's inputs: a page-locked host staging area and its fixed device twin, filled without a
// synchronization and copied with one asynchronous copy (plus one 2-D copy of the block
// tables). Their addresses never change, so captured CUDA graphs read each step's values.
//
// Within a step the sequences are reordered: those computing one token (decoding) first, then
// the others (prefill chunks), so one decode kernel and one prefill kernel each take a
// contiguous range. Logit rows stay in the engine's batch order.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "backend/backend.h"
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
  int num_decode = 0;           // sequences [0, num_decode) compute one token each
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
};

class StepInputs {
 public:
  static absl::StatusOr<StepInputs> Create(const StepCapacity& capacity);

  // Fills the host side for `batch`, padded to `padded_seqs` decode rows (graph replay) when it
  // is larger than the batch. Checks the batch against the capacity and `num_blocks`. Waits
  // first for the previous Upload's copies to have read the staging area.
  absl::StatusOr<StepShape> Pack(std::span<const ForwardSeq> batch, int block_size, int num_blocks,
                                 int padded_seqs);
  // Copies the packed step to the device (asynchronous on `stream`).
  absl::Status Upload(const StepShape& shape, cudaStream_t stream);
  // Copies the first `rows` sampling rows (set in host().sampling) to the device.
  absl::Status UploadSampling(int rows, cudaStream_t stream);

  StepArrays& host() { return host_; }
  const StepArrays& device() const { return device_; }
  const int32_t* device_block_tables() const { return device_tables_; }  // [max_seqs, width]
  const StepCapacity& capacity() const { return capacity_; }

 private:
  size_t Carve(StepArrays& arrays, void* base) const;

  StepCapacity capacity_;
  PinnedMemory host_memory_;
  DeviceMemory device_memory_;
  StepArrays host_, device_;
  size_t arrays_bytes_ = 0;           // the step arrays before `sampling`, copied whole
  CudaEvent uploaded_;                // recorded after each Upload's copies
  int32_t* host_tables_ = nullptr;    // [max_seqs, table_width_] packed
  int32_t* device_tables_ = nullptr;  // [max_seqs, max_blocks_per_seq]
  int table_width_ = 0;               // this step's packed width
};

}  // namespace gqa::cuda
