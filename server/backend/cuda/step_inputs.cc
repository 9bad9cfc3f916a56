#include "backend/cuda/step_inputs.h"

#include <algorithm>
#include <numeric>
#include <unordered_map>

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
  a.table_rows = carve.Take<TableRowUpdate>(s);
  a.placeholder_source = carve.Take<int32_t>(s);
  a.new_blocks = carve.Take<int32_t>(s * capacity_.max_blocks_per_seq);  // last: copied in part
  return carve.bytes();
}

absl::StatusOr<StepInputs> StepInputs::Create(const StepCapacity& capacity) {
  StepInputs in;
  in.capacity_ = capacity;
  StepArrays sizing;
  const size_t total = in.Carve(sizing, nullptr);
  auto host = PinnedMemory::Allocate(total);
  if (!host.ok()) return host.status();
  auto device = DeviceMemory::Allocate(total, "the step inputs");
  if (!device.ok()) return device.status();
  const size_t table_bytes = size_t(capacity.max_seqs) * capacity.max_blocks_per_seq * 4;
  auto tables = DeviceMemory::Allocate(2 * table_bytes, "the block tables");
  if (!tables.ok()) return tables.status();
  in.host_memory_ = std::move(*host);
  in.device_memory_ = std::move(*device);
  in.table_memory_ = std::move(*tables);
  in.Carve(in.host_, in.host_memory_.get());
  in.Carve(in.device_, in.device_memory_.get());
  in.blocks_at_ = reinterpret_cast<const std::byte*>(in.host_.new_blocks) -
                  static_cast<const std::byte*>(in.host_memory_.get());
  ASSIGN_OR_RETURN(in.uploaded_, CudaEvent::Create());
  // Zero ids, never garbage, where a kernel prefetches past a sequence's blocks.
  GQA_CUDA_RETURN_IF_ERROR(cudaMemset(in.table_memory_.get(), 0, 2 * table_bytes));
  GQA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  in.persistent_ = static_cast<int32_t*>(in.table_memory_.get());
  in.step_tables_ = in.persistent_ + table_bytes / 4;
  return in;
}

absl::Status StepInputs::PackTableRow(int packed, int slot, const BlockTableRow* delta,
                                      int num_blocks) {
  TableRowUpdate& u = host_.table_rows[packed];
  u = TableRowUpdate{slot, 0, 0, num_new_blocks_};
  if (delta == nullptr) return absl::OkStatus();
  u.first_new = delta->first_block;
  u.num_new = static_cast<int32_t>(delta->blocks.size());
  for (int32_t block : delta->blocks) {
    if (block < 0 || block >= num_blocks) {
      return absl::InternalError(
          absl::StrCat("step plan: block id ", block, " outside the pool of ", num_blocks));
    }
    host_.new_blocks[num_new_blocks_++] = block;
  }
  return absl::OkStatus();
}

absl::StatusOr<StepShape> StepInputs::Pack(const StepPlan& plan, const BlockTables& tables,
                                           int block_size, int num_blocks, int padded_seqs) {
  // The previous step's copy must have read the staging area before it is rewritten (a failed
  // step leaves it in flight).
  GQA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(uploaded_.get()));
  const std::vector<ScheduledSeq>& seqs = plan.seqs;
  const int n = static_cast<int>(seqs.size());
  StepShape shape;
  if (n > capacity_.max_seqs || padded_seqs > capacity_.max_seqs) {
    return absl::InternalError(
        absl::StrCat("step of ", n, " sequences; the backend holds ", capacity_.max_seqs));
  }
  // Decodes first, then prefill chunks, each in plan order.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_partition(order.begin(), order.end(), [&](int i) { return seqs[i].is_decode; });
  std::vector<int> slots(n);
  for (int i = 0; i < n; ++i) {
    const ScheduledSeq& s = seqs[i];
    const int len = static_cast<int>(s.chunk.size());
    slots[i] = tables.SlotOf(s.seq_id);
    const int blocks = (s.start_pos + len + block_size - 1) / block_size;
    if (len == 0 || slots[i] < 0 || tables.NumBlocks(slots[i]) < blocks) {
      return absl::InternalError(
          absl::StrCat("step plan: sequence ", s.seq_id, " lacks tokens or cache blocks"));
    }
    if (s.is_decode && (len != 1 || !s.samples)) {
      return absl::InternalError(
          absl::StrCat("step plan: sequence ", s.seq_id, " decodes ", len, " tokens"));
    }
    // A placeholder is read by the decode's packed row (its token row) from a sampling row.
    if (s.placeholder_sample_row >= 0 &&
        (!s.is_decode || s.placeholder_sample_row >= capacity_.max_seqs)) {
      return absl::InternalError(absl::StrCat("step plan: sequence ", s.seq_id,
                                              " reads sampling row ", s.placeholder_sample_row,
                                              " into a chunk that is not a decode"));
    }
    shape.num_tokens += len;
    shape.num_samples += s.samples ? 1 : 0;
  }
  if (shape.num_tokens > capacity_.max_tokens) {
    return absl::InternalError(absl::StrCat("step of ", shape.num_tokens,
                                            " tokens; the backend holds ", capacity_.max_tokens));
  }
  // Each delta row belongs to a sequence of this step (the only time its device row changes).
  std::unordered_map<uint64_t, const BlockTableRow*> delta_of;
  for (const BlockTableRow& row : plan.tables.rows) delta_of[row.seq_id] = &row;
  num_new_blocks_ = 0;
  size_t matched = 0;
  StepArrays& h = host_;
  std::vector<int> first_row(n);  // each plan entry's first token row
  int row = 0, prefill_seqs = 0;
  h.prefill_query_start[0] = 0;
  for (int packed = 0; packed < n; ++packed) {
    const int i = order[packed];
    const ScheduledSeq& s = seqs[i];
    const int len = static_cast<int>(s.chunk.size());
    first_row[i] = row;
    const auto delta = delta_of.find(s.seq_id);
    matched += delta != delta_of.end();
    RETURN_IF_ERROR(PackTableRow(packed, slots[i],
                                 delta == delta_of.end() ? nullptr : delta->second, num_blocks));
    const std::span<const int32_t> table = tables.Row(slots[i]);
    for (int t = 0; t < len; ++t, ++row) {
      const int pos = s.start_pos + t;
      h.token_ids[row] = s.chunk[t];
      h.positions[row] = pos;
      h.slots[row] = int64_t(table[pos / block_size]) * block_size + pos % block_size;
    }
    h.context_lens[packed] = s.start_pos + len;
    h.placeholder_source[packed] = s.placeholder_sample_row;
    if (s.is_decode) {
      ++shape.num_decode;
    } else {
      ++prefill_seqs;
      h.prefill_query_start[prefill_seqs] = h.prefill_query_start[prefill_seqs - 1] + len;
      shape.max_query_len = std::max(shape.max_query_len, len);
      shape.max_prefill_context = std::max(shape.max_prefill_context, s.start_pos + len);
    }
  }
  if (matched != plan.tables.rows.size()) {
    return absl::InternalError("step plan: a block-table row for a sequence the step skips");
  }
  const bool every_token = std::any_of(seqs.begin(), seqs.end(),
                                       [](const ScheduledSeq& s) { return s.wants_all_logits(); });
  for (int i = 0, r = 0; i < n; ++i) {
    if (seqs[i].samples) h.sampling[r++] = seqs[i].sampling;
  }
  if (!every_token) {  // the usual step: one row per sampling sequence, in plan order
    for (int i = 0; i < n; ++i) {
      if (seqs[i].samples) {
        h.logit_rows[shape.num_logit_rows++] = first_row[i] + int(seqs[i].chunk.size()) - 1;
      }
    }
  } else {  // LogitsRowOfTokens' layout, mapped to this step's packed token rows
    const std::vector<int32_t> row_of_token = LogitsRowOfTokens(seqs);
    for (int i = 0, flat = 0; i < n; ++i) {
      for (int t = 0; t < int(seqs[i].chunk.size()); ++t, ++flat) {
        const int32_t logits_row = row_of_token[flat];
        if (logits_row < 0) continue;
        if (logits_row >= capacity_.max_seqs) {
          return absl::InternalError(absl::StrCat("step plan: logits row ", logits_row,
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
      h.table_rows[p] = TableRowUpdate{};
      h.placeholder_source[p] = -1;
      h.logit_rows[shape.num_logit_rows++] = row;
    }
    shape.num_tokens = row;
    shape.num_decode = padded_seqs;
    shape.num_seqs = padded_seqs;
  }
  return shape;
}

absl::Status StepInputs::Upload(cudaStream_t stream) {
  const size_t bytes = blocks_at_ + size_t(num_new_blocks_) * sizeof(int32_t);
  GQA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_memory_.get(), host_memory_.get(), bytes,
                                           cudaMemcpyHostToDevice, stream));
  GQA_CUDA_RETURN_IF_ERROR(cudaEventRecord(uploaded_.get(), stream));
  return absl::OkStatus();
}

cudaError_t StepInputs::UpdateTables(const StepShape& shape, int block_size, cudaStream_t stream,
                                     const int32_t* previous_sampled) {
  PlaceholderTokens placeholders;
  if (previous_sampled != nullptr) {
    placeholders = {device_.placeholder_source, previous_sampled, device_.token_ids};
  }
  return UpdateBlockTables(device_.table_rows, device_.new_blocks, device_.context_lens,
                           shape.num_seqs, block_size, capacity_.max_blocks_per_seq, persistent_,
                           step_tables_, stream, placeholders);
}

}  // namespace gqa::cuda
