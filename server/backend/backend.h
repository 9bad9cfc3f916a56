// The interface the engine drives: one Forward per engine step over a batch of sequence chunks,
// then one sampled token per sequence that asked for one. CpuBackend and CudaBackend implement it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "backend/kv_cache_spec.h"
#include "gqa/kernels/sampling.h"

namespace gqa {

using kernels::LogprobsQuery;
using kernels::LogprobsResult;
using kernels::SamplingRow;

// One sequence's chunk in a step: tokens at positions [start_pos, start_pos + tokens.size()),
// whose K/V go to the cache and whose queries attend to positions [0, their own].
struct ForwardSeq {
  std::span<const int32_t> tokens;
  int32_t start_pos = 0;
  std::span<const int32_t> block_table;  // covers positions [0, start_pos + tokens.size())
  bool wants_logits = false;             // logits of the chunk's last token, sampled from
  bool wants_all_logits = false;         // logits of every token of the chunk (prompt logprobs)
};

// Where Forward puts the logits rows: first one row per wants_logits sequence (the rows Sample
// draws from), in batch order; then, for each wants_all_logits sequence in batch order, its
// chunk's other tokens in order. Returns, for every token of the batch (chunks concatenated in
// batch order), its logits row or -1.
inline std::vector<int32_t> LogitsRowOfTokens(std::span<const ForwardSeq> batch) {
  size_t total = 0;
  for (const ForwardSeq& s : batch) total += s.tokens.size();
  std::vector<int32_t> rows(total, -1);
  int32_t next = 0;
  size_t first = 0;
  for (const ForwardSeq& s : batch) {
    if (s.wants_logits) rows[first + s.tokens.size() - 1] = next++;
    first += s.tokens.size();
  }
  first = 0;
  for (const ForwardSeq& s : batch) {
    const size_t own = s.wants_logits ? s.tokens.size() - 1 : s.tokens.size();
    for (size_t i = 0; s.wants_all_logits && i < own; ++i) rows[first + i] = next++;
    first += s.tokens.size();
  }
  return rows;
}

// Device time of one profiled step, measured where the work ran (CUDA events on the GPU, the
// steady clock on the CPU).
struct StepTiming {
  double step_seconds = 0;       // the step's forward and sampling, first kernel to last
  double attention_seconds = 0;  // summed over layers: K/V append and attention
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // What it computes on, e.g. "NVIDIA H100 80GB HBM3", for the startup line and model info.
  virtual std::string device_name() const = 0;
  // The KV pool; its dtype is the backend's activation dtype.
  virtual const KvCacheSpec& kv_spec() const = 0;
  // Device memory by kind (weights, kv, workspace, graphs), in bytes; empty on the CPU.
  virtual std::vector<std::pair<std::string, uint64_t>> memory_by_kind() const { return {}; }
  // True after an error that leaves the device unusable: the process should exit and be
  // restarted. Every later step fails.
  virtual bool broken() const { return false; }
  // Bytes of weights one step reads: every matrix once as the backend stores it (the embedding
  // table only through the lm_head); see backend/roofline.h.
  virtual uint64_t weight_bytes_per_step() const = 0;
  // The memory bandwidth the roofline divides by, in bytes per second: on a GPU a
  // device-to-device copy (bytes read plus written, as gqa-bench) measured once when the backend
  // is created, before the KV pool takes the memory; on the CPU a parallel read, measured now.
  virtual absl::StatusOr<double> MeasureReadBandwidth() = 0;

  // Times the next Forward and its Sample on the device; LastStepTiming() has the result once
  // Sample returns. Steps not asked for are not timed and cost nothing extra.
  virtual void ProfileNextStep() = 0;
  // The timing of the last step when it was profiled; nullopt otherwise.
  virtual std::optional<StepTiming> LastStepTiming() const = 0;

  // Appends every token's K/V to the cache and computes the logits of the sequences that want
  // them (kept inside the backend: on the GPU they never cross to the host).
  virtual absl::Status Forward(std::span<const ForwardSeq> batch) = 0;
  // One token per wants_logits sequence of the last Forward, in batch order.
  virtual absl::StatusOr<std::vector<int32_t>> Sample(std::span<const SamplingRow> rows) = 0;
  // Log-probabilities over the last Forward's logits rows (see LogitsRowOfTokens), computed
  // where the logits are; only the results cross to the host. Costs nothing for no queries.
  virtual absl::StatusOr<std::vector<LogprobsResult>> Logprobs(
      std::span<const LogprobsQuery> queries) {
    if (queries.empty()) return std::vector<LogprobsResult>{};
    return absl::UnimplementedError(
        absl::StrCat("the ", std::string(name()), " backend has no logprobs"));
  }
  // The last Forward's logits, [rows, vocab] (tests and tools).
  virtual absl::StatusOr<std::vector<float>> LogitsToHost() = 0;
};

}  // namespace gqa
