#include "backend/cuda/step_inputs.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gqa::cuda {

size_t StepInputs::Carve(StepArrays& a, void* base) const {
  BufferCarver carve(base);
  const size_t t = capacity_.max_tokens, s = capacity_.max_seqs;
  a.token_ids = carve.Take<int32_t>(t);
  a.positions = carve.Take<int32_t>(t);
  a.slots = carve.Take<int64_t>(t);
  a.context_lens = carve.Take<int32_t>(s);
  a.prefill_query_start = carve.Take<int32_t>(s + 1);
  a.logit_rows = carve.Take<int32_t>(s);
  a.sampling = carve.Take<kernels::SamplingRow>(s);
  return carve.bytes();
}

absl::StatusOr<StepInputs> StepInputs::Create(const StepCapacity& capacity) {
  StepInputs in;
  in.capacity_ = capacity;
  StepArrays sizing;
  const size_t arrays_total = in.Carve(sizing, nullptr);
  const size_t table_bytes = size_t(capacity.max_seqs) * capacity.max_blocks_per_seq * 4;
  const size_t total = (arrays_total + 255) / 256 * 256 + table_bytes;
  auto host = PinnedMemory::Allocate(total);
  if (!host.ok()) return host.status();
  auto device = DeviceMemory::Allocate(total, "the step inputs");
  if (!device.ok()) return device.status();
  in.host_memory_ = std::move(*host);
  in.device_memory_ = std::move(*device);
  in.Carve(in.host_, in.host_memory_.get());
  in.Carve(in.device_, in.device_memory_.get());
  // Upload copies everything before `sampling` (carved last; Sample fills it while a step's
  // inputs may still be in flight, and copies it itself).
  in.arrays_bytes_ = reinterpret_cast<const std::byte*>(in.host_.sampling) -
                     static_cast<const std::byte*>(in.host_memory_.get());
  const size_t tables_at = (arrays_total + 255) / 256 * 256;
  ASSIGN_OR_RETURN(in.uploaded_, CudaEvent::Create());
  in.host_tables_ =
      reinterpret_cast<int32_t*>(static_cast<std::byte*>(in.host_memory_.get()) + tables_at);
  in.device_tables_ =
      reinterpret_cast<int32_t*>(static_cast<std::byte*>(in.device_memory_.get()) + tables_at);
  return in;
}

absl::StatusOr<StepShape> StepInputs::Pack(std::span<const ForwardSeq> batch, int block_size,
                                           int num_blocks, int padded_seqs) {
  // The previous step's copies must have read the staging area before it is rewritten (a
  // failed step, or Forwards queued back to back, leave them in flight).
  GQA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(uploaded_.get()));
  const int n = static_cast<int>(batch.size());
  StepShape shape;
  if (n > capacity_.max_seqs || padded_seqs > capacity_.max_seqs) {
    return absl::InternalError(
        absl::StrCat("step of ", n, " sequences; the backend holds ", capacity_.max_seqs));
  }
  // Decode sequences (one token) first, then prefill chunks, each in batch order.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_partition(order.begin(), order.end(),
                        [&](int i) { return batch[i].tokens.size() == 1; });
  table_width_ = 1;
  for (const ForwardSeq& s : batch) {
    const int blocks =
        (s.start_pos + static_cast<int>(s.tokens.size()) + block_size - 1) / block_size;
    if (s.tokens.empty() || static_cast<int>(s.block_table.size()) < blocks) {
      return absl::InternalError("forward batch: a sequence lacks tokens or cache blocks");
    }
    if (blocks > capacity_.max_blocks_per_seq) {
      return absl::InternalError(absl::StrCat("forward batch: a sequence needs ", blocks,
                                              " blocks; the block table holds ",
                                              capacity_.max_blocks_per_seq));
    }
    table_width_ = std::max(table_width_, blocks);
    shape.num_tokens += static_cast<int>(s.tokens.size());
  }
  if (shape.num_tokens > capacity_.max_tokens) {
    return absl::InternalError(absl::StrCat("step of ", shape.num_tokens,
                                            " tokens; the backend holds ", capacity_.max_tokens));
  }
  StepArrays& h = host_;
  std::vector<int> first_row(n);  // each batch entry's first token row
  int row = 0, prefill_seqs = 0;
  h.prefill_query_start[0] = 0;
  for (int packed = 0; packed < n; ++packed) {
    const ForwardSeq& s = batch[order[packed]];
    const int len = static_cast<int>(s.tokens.size());
    first_row[order[packed]] = row;
    int32_t* table = host_tables_ + size_t(packed) * table_width_;
    const int blocks = (s.start_pos + len + block_size - 1) / block_size;
    for (int b = 0; b < blocks; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= num_blocks) {
        return absl::InternalError(absl::StrCat("forward batch: block id ", s.block_table[b],
                                                " outside the pool of ", num_blocks));
      }
      table[b] = s.block_table[b];
    }
    for (int i = 0; i < len; ++i, ++row) {
      const int pos = s.start_pos + i;
      h.token_ids[row] = s.tokens[i];
      h.positions[row] = pos;
      h.slots[row] = int64_t(table[pos / block_size]) * block_size + pos % block_size;
    }
    h.context_lens[packed] = s.start_pos + len;
    if (len == 1) {
      ++shape.num_decode;
    } else {
      ++prefill_seqs;
      h.prefill_query_start[prefill_seqs] = h.prefill_query_start[prefill_seqs - 1] + len;
      shape.max_query_len = std::max(shape.max_query_len, len);
      shape.max_prefill_context = std::max(shape.max_prefill_context, s.start_pos + len);
    }
  }
  const bool every_token = std::any_of(batch.begin(), batch.end(),
                                       [](const ForwardSeq& s) { return s.wants_all_logits; });
  if (!every_token) {  // the usual step: one row per sampling sequence, in batch order
    for (int i = 0; i < n; ++i) {
      if (batch[i].wants_logits) {
        h.logit_rows[shape.num_logit_rows++] = first_row[i] + int(batch[i].tokens.size()) - 1;
      }
    }
  } else {  // the engine's layout (LogitsRowOfTokens), mapped to this step's packed token rows
    const std::vector<int32_t> row_of_token = LogitsRowOfTokens(batch);
    for (int i = 0, flat = 0; i < n; ++i) {
      for (int t = 0; t < int(batch[i].tokens.size()); ++t, ++flat) {
        const int32_t logits_row = row_of_token[flat];
        if (logits_row < 0) continue;
        if (logits_row >= capacity_.max_seqs) {
          return absl::InternalError(absl::StrCat("forward batch: logits row ", logits_row,
                                                  " beyond the ", capacity_.max_seqs,
                                                  " the backend holds"));
        }
        h.logit_rows[logits_row] = first_row[i] + t;
        shape.num_logit_rows = std::max(shape.num_logit_rows, logits_row + 1);
      }
    }
  }
  shape.num_seqs = n;
  // Inert decode rows up to the padded size: token 0 at position 0 in block 0, no cache write.
  if (padded_seqs > n) {
    for (int p = n; p < padded_seqs; ++p, ++row) {
      h.token_ids[row] = 0;
      h.positions[row] = 0;
      h.slots[row] = -1;
      h.context_lens[p] = 1;
      host_tables_[size_t(p) * table_width_] = 0;
      h.logit_rows[shape.num_logit_rows++] = row;
    }
    shape.num_tokens = row;
    shape.num_decode = padded_seqs;
    shape.num_seqs = padded_seqs;
  }
  return shape;
}

absl::Status StepInputs::Upload(const StepShape& shape, cudaStream_t stream) {
  GQA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_memory_.get(), host_memory_.get(), arrays_bytes_,
                                           cudaMemcpyHostToDevice, stream));
  const size_t width = size_t(table_width_) * sizeof(int32_t);
  GQA_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
      device_tables_, size_t(capacity_.max_blocks_per_seq) * sizeof(int32_t), host_tables_, width,
      width, shape.num_seqs, cudaMemcpyHostToDevice, stream));
  GQA_CUDA_RETURN_IF_ERROR(cudaEventRecord(uploaded_.get(), stream));
  return absl::OkStatus();
}

absl::Status StepInputs::UploadSampling(int rows, cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  GQA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_.sampling, host_.sampling,
                                           size_t(rows) * sizeof(kernels::SamplingRow),
                                           cudaMemcpyHostToDevice, stream));
  return absl::OkStatus();
}

}  // namespace gqa::cuda
