#include "loadgen/workload.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace gqa::loadgen {
namespace {

// A positive integer field of a dataset line, or an error naming it.
absl::StatusOr<int64_t> PositiveField(const nlohmann::json& line, const char* key) {
  const auto it = line.find(key);
  if (it == line.end()) return absl::InvalidArgumentError(absl::StrCat("no \"", key, "\""));
  if (!it->is_number_integer() || it->get<int64_t>() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", key, "\" must be a positive integer, not ", it->dump()));
  }
  return it->get<int64_t>();
}

absl::StatusOr<DatasetEntry> ParseEntry(absl::string_view text) {
  const nlohmann::json line =
      nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!line.is_object()) return absl::InvalidArgumentError("not a JSON object");
  DatasetEntry e;
  absl::StatusOr<int64_t> output = PositiveField(line, "output_len");
  if (!output.ok()) return output.status();
  e.output_len = *output;
  const bool has_len = line.contains("prompt_len");
  const bool has_ids = line.contains("prompt_token_ids");
  if (has_len == has_ids) {
    return absl::InvalidArgumentError(
        "needs exactly one of \"prompt_len\" and \"prompt_token_ids\"");
  }
  if (has_len) {
    absl::StatusOr<int64_t> len = PositiveField(line, "prompt_len");
    if (!len.ok()) return len.status();
    e.prompt_len = *len;
    return e;
  }
  const nlohmann::json& ids = line["prompt_token_ids"];
  if (!ids.is_array() || ids.empty()) {
    return absl::InvalidArgumentError("\"prompt_token_ids\" must be a non-empty list");
  }
  for (const nlohmann::json& id : ids) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() > UINT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"prompt_token_ids\" holds ", id.dump(), ", not a token id"));
    }
    e.prompt_token_ids.push_back(id.get<uint32_t>());
  }
  e.prompt_len = static_cast<int64_t>(e.prompt_token_ids.size());
  return e;
}

int64_t Draw(const LengthRange& r, std::mt19937_64& rng) {
  return std::uniform_int_distribution<int64_t>(r.lo, r.hi)(rng);
}

}  // namespace

absl::StatusOr<LengthRange> ParseLengthRange(absl::string_view text) {
  const std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  LengthRange r;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &r.lo) ||
      !absl::SimpleAtoi(parts[1], &r.hi) || r.lo < 1 || r.hi < r.lo) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a range a:b of integers with 1 <= a <= b"));
  }
  return r;
}

absl::StatusOr<std::vector<DatasetEntry>> ParseDataset(absl::string_view text) {
  std::vector<DatasetEntry> entries;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    absl::StatusOr<DatasetEntry> e = ParseEntry(line);
    if (!e.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": ", e.status().message()));
    }
    entries.push_back(*std::move(e));
  }
  if (entries.empty()) return absl::InvalidArgumentError("no requests (every line is blank)");
  return entries;
}

std::vector<uint32_t> RandomTokens(int64_t n, uint64_t seed, uint32_t min_token_id,
                                   uint32_t vocab_size) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint32_t> token(min_token_id, vocab_size - 1);
  std::vector<uint32_t> out(static_cast<size_t>(n));
  for (uint32_t& t : out) t = token(rng);
  return out;
}

std::vector<RequestSpec> BuildRequests(const WorkloadSource& source, int64_t count, uint64_t seed,
                                       uint32_t min_token_id, uint32_t vocab_size) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint32_t> token(min_token_id, vocab_size - 1);
  std::vector<RequestSpec> out(static_cast<size_t>(count));
  const int64_t turns = std::max<int64_t>(source.turns, 1);
  const int64_t conversations = (count + turns - 1) / turns;
  for (int64_t i = 0; i < count; ++i) {
    RequestSpec& r = out[static_cast<size_t>(i)];
    if (i >= conversations) {  // a later turn: the conversation so far and an assistant reply
      const RequestSpec& previous = out[static_cast<size_t>(i - conversations)];
      r.after = i - conversations;
      r.prompt = previous.prompt;
      for (int64_t t = 0; t < previous.output_len; ++t) r.prompt.push_back(token(rng));
    } else {
      r.prompt = source.shared_prefix;
    }
    int64_t prompt_len;
    if (source.dataset.empty()) {
      prompt_len = Draw(source.input, rng);
      r.output_len = Draw(source.output, rng);
    } else {
      const DatasetEntry& e = source.dataset[static_cast<size_t>(i) % source.dataset.size()];
      r.prompt.insert(r.prompt.end(), e.prompt_token_ids.begin(), e.prompt_token_ids.end());
      prompt_len = e.prompt_token_ids.empty() ? e.prompt_len : 0;
      r.output_len = e.output_len;
    }
    for (int64_t t = 0; t < prompt_len; ++t) r.prompt.push_back(token(rng));
  }
  return out;
}

std::vector<double> ArrivalOffsets(int64_t count, double rate, uint64_t seed) {
  std::vector<double> out(static_cast<size_t>(count), 0.0);
  if (std::isinf(rate)) return out;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  for (size_t i = 1; i < out.size(); ++i) out[i] = out[i - 1] + gap(rng);
  return out;
}

}  // namespace gqa::loadgen
