// gqa-loadgen's report: a JSON object whose keys are a contract (client/bench/sweep.py reads
// them) and a human table of the same figures.
#pragma once

#include <optional>
#include <string>

#include "loadgen/stats.h"
#include "nlohmann/json.hpp"

namespace gqa::loadgen {

enum class LoopMode { kClosed, kOpen };

struct RunInfo {
  std::string label;
  LoopMode mode = LoopMode::kClosed;
  int concurrency = 0;      // closed loop
  double request_rate = 0;  // open loop; infinity: every request at once
  int max_concurrency = 0;  // open loop; 0: no cap
};

// {"label", "mode", "concurrency", "request_rate", "num_requests", "completed", "failed",
//  "errors", "duration_s", "input_tokens", "output_tokens", "request_throughput",
//  "output_token_throughput", "total_token_throughput", "ttft_s", "tpot_s", "itl_s", "e2e_s",
//  "server"}. NaN figures are null; so is the request rate of an infinite-rate open loop.
nlohmann::ordered_json ReportJson(const RunInfo& run, const ClientStats& stats,
                                  const std::optional<nlohmann::ordered_json>& server);

// The same figures as lines of text (latencies in milliseconds).
std::string ReportTable(const RunInfo& run, const ClientStats& stats,
                        const std::optional<nlohmann::ordered_json>& server);

}  // namespace gqa::loadgen
