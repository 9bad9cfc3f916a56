#include "loadgen/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace gqa::loadgen {

double Percentile(std::span<const double> sorted, double p) {
  if (sorted.empty()) return kNaN;
  const double h = static_cast<double>(sorted.size() - 1) * p / 100.0;
  const size_t lo = static_cast<size_t>(std::floor(h));
  if (lo + 1 >= sorted.size()) return sorted.back();
  return sorted[lo] + (h - static_cast<double>(lo)) * (sorted[lo + 1] - sorted[lo]);
}

Summary Summarize(std::vector<double> values) {
  Summary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  s.p50 = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p99 = Percentile(values, 99);
  s.min = values.front();
  s.max = values.back();
  return s;
}

namespace {

double PerSecond(double amount, double seconds) { return seconds > 0 ? amount / seconds : kNaN; }

}  // namespace

ClientStats ComputeClientStats(std::span<const RequestRecord> records) {
  ClientStats s;
  s.num_requests = static_cast<int64_t>(records.size());
  std::vector<double> ttft, tpot, itl, e2e;
  double first_send = std::numeric_limits<double>::infinity();
  double last_done = -std::numeric_limits<double>::infinity();
  for (const RequestRecord& r : records) {
    first_send = std::min(first_send, r.send_s);
    last_done = std::max(last_done, r.done_s);
    if (!r.ok) {
      ++s.failed;
      ++s.errors[r.error];
      continue;
    }
    ++s.completed;
    s.input_tokens += r.prompt_tokens;
    s.output_tokens += r.output_tokens;
    e2e.push_back(r.final_s - r.send_s);
    if (r.token_message_s.empty()) continue;
    const double first = r.token_message_s.front() - r.send_s;
    ttft.push_back(first);
    if (r.output_tokens > 1) {
      tpot.push_back((e2e.back() - first) / static_cast<double>(r.output_tokens - 1));
    }
    for (size_t i = 1; i < r.token_message_s.size(); ++i) {
      itl.push_back(r.token_message_s[i] - r.token_message_s[i - 1]);
    }
  }
  if (!records.empty()) s.duration_s = last_done - first_send;
  s.request_throughput = PerSecond(static_cast<double>(s.completed), s.duration_s);
  s.output_token_throughput = PerSecond(static_cast<double>(s.output_tokens), s.duration_s);
  s.total_token_throughput =
      PerSecond(static_cast<double>(s.input_tokens + s.output_tokens), s.duration_s);
  s.ttft_s = Summarize(std::move(ttft));
  s.tpot_s = Summarize(std::move(tpot));
  s.itl_s = Summarize(std::move(itl));
  s.e2e_s = Summarize(std::move(e2e));
  return s;
}

}  // namespace gqa::loadgen
