// The server's own view of a run: deltas of gqa-server's /metrics between the scrape taken
// before the measured requests and the one after them (counters and histogram _sum/_count,
// summed over label sets unless a label is named).
#pragma once

#include <optional>
#include <vector>

#include "loadgen/prometheus_text.h"
#include "nlohmann/json.hpp"

namespace gqa::loadgen {

// The report's "server" object: step counts and mean times by phase, attention share, bytes read
// and achieved bandwidth against the device's, roofline time, batch sizes, preemptions, tokens,
// the peak KV cache usage (the largest of `polled_kv_peak` and the two scrapes' gauges), and
// "metric_names_missing": the metrics the after scrape lacks (an older server). A figure that
// needs a missing metric, or divides by a zero delta, is null.
nlohmann::ordered_json ServerFigures(const std::vector<Sample>& before,
                                     const std::vector<Sample>& after,
                                     std::optional<double> polled_kv_peak);

}  // namespace gqa::loadgen
