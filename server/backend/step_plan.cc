#include "backend/step_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace gqa {

int StepPlan::num_tokens() const {
  int n = 0;
  for (const ScheduledSeq& s : seqs) n += static_cast<int>(s.chunk.size());
  return n;
}

bool StepPlan::wants_logprobs() const {
  return std::any_of(seqs.begin(), seqs.end(),
                     [](const ScheduledSeq& s) { return s.wants_logprobs(); });
}

absl::StatusOr<std::vector<int32_t>> ResolvedTokens(std::span<const ScheduledSeq> seqs,
                                                    std::span<const int32_t> previous_sampled) {
  std::vector<int32_t> tokens;
  for (const ScheduledSeq& s : seqs) {
    const size_t first = tokens.size();
    tokens.insert(tokens.end(), s.chunk.begin(), s.chunk.end());
    const int32_t row = s.placeholder_sample_row;
    if (row < 0) continue;
    if (s.chunk.size() != 1 || static_cast<size_t>(row) >= previous_sampled.size()) {
      return absl::InternalError(absl::StrCat("step plan: sequence ", s.seq_id, " reads row ", row,
                                              " of the previous step's ", previous_sampled.size(),
                                              " sampled tokens"));
    }
    tokens[first] = previous_sampled[row];
  }
  return tokens;
}

std::vector<int32_t> LogitsRowOfTokens(std::span<const ScheduledSeq> seqs) {
  size_t total = 0;
  for (const ScheduledSeq& s : seqs) total += s.chunk.size();
  std::vector<int32_t> rows(total, -1);
  int32_t next = 0;
  size_t first = 0;
  for (const ScheduledSeq& s : seqs) {
    if (s.samples) rows[first + s.chunk.size() - 1] = next++;
    first += s.chunk.size();
  }
  first = 0;
  for (const ScheduledSeq& s : seqs) {
    const size_t own = s.samples ? s.chunk.size() - 1 : s.chunk.size();
    for (size_t i = 0; s.wants_all_logits() && i < own; ++i) rows[first + i] = next++;
    first += s.chunk.size();
  }
  return rows;
}

StepLogprobsQueries BuildLogprobsQueries(std::span<const ScheduledSeq> seqs,
                                         std::span<const int32_t> sampled) {
  StepLogprobsQueries out;
  const bool any = std::any_of(seqs.begin(), seqs.end(), [](const ScheduledSeq& s) {
    return s.top_logprobs >= 0 || s.wants_all_logits();
  });
  if (!any) return out;
  const std::vector<int32_t> row_of_token = LogitsRowOfTokens(seqs);
  int sample_index = 0;
  size_t flat = 0;  // the chunk's first token in row_of_token
  for (size_t i = 0; i < seqs.size(); ++i) {
    const ScheduledSeq& s = seqs[i];
    const int n = static_cast<int>(s.chunk.size());
    if (s.wants_all_logits()) {
      // Row t predicts the token at position start + t + 1.
      for (int t = 0; t < n; ++t) {
        const int target = s.start_pos + t + 1;
        if (target < s.prompt_logprobs_from || target >= static_cast<int>(s.prompt.size())) {
          continue;
        }
        out.queries.push_back({row_of_token[flat + t], s.prompt[target], s.prompt_top_logprobs});
        out.targets.push_back({static_cast<int>(i), true, 0});
      }
    }
    if (s.samples) {
      if (s.top_logprobs >= 0) {
        out.queries.push_back({sample_index, sampled[sample_index], s.top_logprobs});
        out.targets.push_back({static_cast<int>(i), false, sample_index});
      }
      ++sample_index;
    }
    flat += n;
  }
  return out;
}

void StoreLogprobs(const StepLogprobsQueries& asked, std::span<const LogprobsResult> answers,
                   size_t num_seqs, StepOutput& out) {
  if (asked.targets.empty()) return;
  out.sampled_logprobs.resize(out.sampled.size());
  out.prompt_logprobs.resize(num_seqs);
  for (size_t q = 0; q < asked.targets.size() && q < answers.size(); ++q) {
    const auto& target = asked.targets[q];
    if (target.prompt) {
      out.prompt_logprobs[target.seq].push_back(answers[q]);
    } else {
      out.sampled_logprobs[target.sample_index] = answers[q];
    }
  }
}

BlockTables::BlockTables(int max_seqs, int max_blocks_per_seq)
    : width_(max_blocks_per_seq),
      table_(size_t(max_seqs) * max_blocks_per_seq, -1),
      num_blocks_(max_seqs, 0),
      used_(max_seqs, false) {}

int BlockTables::SlotOf(uint64_t seq_id) const {
  const auto it = slots_.find(seq_id);
  return it == slots_.end() ? -1 : it->second;
}

absl::Status BlockTables::Apply(const BlockTableDelta& delta) {
  for (uint64_t id : delta.removed) {
    const auto it = slots_.find(id);
    if (it == slots_.end()) continue;  // never added (a step that failed before it was sent)
    const int slot = it->second;
    std::fill_n(table_.begin() + size_t(slot) * width_, num_blocks_[slot], -1);
    num_blocks_[slot] = 0;
    used_[slot] = false;
    slots_.erase(it);
  }
  for (const BlockTableRow& row : delta.rows) {
    int slot = SlotOf(row.seq_id);
    if (row.first_block == 0) {
      if (slot >= 0) {
        return absl::InternalError(
            absl::StrCat("block tables: sequence ", row.seq_id, " added twice"));
      }
      const auto free = std::find(used_.begin(), used_.end(), false);
      if (free == used_.end()) {
        return absl::InternalError(absl::StrCat("block tables: no free slot for sequence ",
                                                row.seq_id, "; the backend holds ", max_seqs()));
      }
      slot = static_cast<int>(free - used_.begin());
      used_[slot] = true;
      slots_[row.seq_id] = slot;
    } else if (slot < 0 || row.first_block != num_blocks_[slot]) {
      return absl::InternalError(absl::StrCat("block tables: blocks appended at ", row.first_block,
                                              " to sequence ", row.seq_id, " which holds ",
                                              slot < 0 ? 0 : num_blocks_[slot]));
    }
    const int end = row.first_block + static_cast<int>(row.blocks.size());
    if (end > width_) {
      return absl::InternalError(absl::StrCat("block tables: sequence ", row.seq_id, " needs ", end,
                                              " blocks; the table holds ", width_));
    }
    std::copy(row.blocks.begin(), row.blocks.end(),
              table_.begin() + size_t(slot) * width_ + row.first_block);
    num_blocks_[slot] = end;
  }
  return absl::OkStatus();
}

StepPlan WholeTablePlanner::Plan(std::span<const WholeTableSeq> batch) {
  StepPlan plan;
  plan.tables.removed = std::move(live_);
  live_.clear();
  for (const WholeTableSeq& s : batch) {
    const uint64_t id = next_id_++;
    live_.push_back(id);
    plan.tables.rows.push_back(
        {id, 0, std::vector<int32_t>(s.block_table.begin(), s.block_table.end())});
    ScheduledSeq seq;
    seq.seq_id = id;
    seq.chunk = s.chunk;
    seq.start_pos = s.start_pos;
    seq.samples = s.samples;
    seq.is_decode = s.samples && s.chunk.size() == 1 && s.start_pos > 0;
    seq.prompt_top_logprobs = s.wants_all_logits ? 0 : -1;
    plan.seqs.push_back(seq);
  }
  return plan;
}

}  // namespace gqa
