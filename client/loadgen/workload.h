// What gqa-loadgen sends and when: prompt and output lengths (fixed, uniform ranges or a JSONL
// dataset), random prompts, and the open-loop arrival schedule.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gqa::loadgen {

// Lengths drawn uniformly from the integers lo..hi (both included; lo == hi: fixed).
struct LengthRange {
  int64_t lo = 0;
  int64_t hi = 0;
};

// "a:b" with 1 <= a <= b.
absl::StatusOr<LengthRange> ParseLengthRange(absl::string_view text);

// One line of a --dataset file: {"prompt_len": n, "output_len": m} or
// {"prompt_token_ids": [...], "output_len": m}.
struct DatasetEntry {
  int64_t prompt_len = 0;                  // with empty prompt_token_ids: random tokens
  std::vector<uint32_t> prompt_token_ids;  // sent as they are when not empty
  int64_t output_len = 0;
};

// Every non-blank line of a JSONL dataset; an error names the first bad line (1-based).
absl::StatusOr<std::vector<DatasetEntry>> ParseDataset(absl::string_view text);

// Where the lengths come from: `dataset` when not empty, else the two ranges.
struct WorkloadSource {
  LengthRange input;
  LengthRange output;
  std::vector<DatasetEntry> dataset;
  // Prefix caching workloads: a system prompt every conversation begins with, and the turns of
  // each conversation (each turn resends the conversation so far: its previous prompt, an
  // assistant reply of the previous output length, then a new user turn).
  std::vector<uint32_t> shared_prefix;
  int64_t turns = 1;
};

struct RequestSpec {
  std::vector<uint32_t> prompt;
  int64_t output_len = 0;
  int64_t after = -1;  // >= 0: sent only once that request (its conversation's last turn) is done
};

// `n` random tokens uniform in [min_token_id, vocab_size), the same for the same seed.
std::vector<uint32_t> RandomTokens(int64_t n, uint64_t seed, uint32_t min_token_id,
                                   uint32_t vocab_size);

// `count` requests, the same for the same seed: lengths from the ranges (or dataset entries in
// order, cycling), random prompt tokens uniform in [min_token_id, vocab_size) after the shared
// prefix. With turns > 1, ceil(count / turns) conversations, ordered turn by turn (every first
// turn, then every second turn, ...), each later turn `after` its conversation's previous one;
// the assistant replies are random tokens (a replay: the model's own outputs are not used).
// Needs min_token_id < vocab_size.
std::vector<RequestSpec> BuildRequests(const WorkloadSource& source, int64_t count, uint64_t seed,
                                       uint32_t min_token_id, uint32_t vocab_size);

// Send times of `count` open-loop requests in seconds from the start: a Poisson process of rate
// `rate` per second (the first at 0, then exponential gaps from a generator seeded with `seed`);
// an infinite rate sends all at 0.
std::vector<double> ArrivalOffsets(int64_t count, double rate, uint64_t seed);

}  // namespace gqa::loadgen
