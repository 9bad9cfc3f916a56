// A reader of the Prometheus text exposition format (what gqa-server's /metrics serves):
//   name{l1="v1",l2="v2"} value [timestamp]   or   name value [timestamp]
// '#' lines (HELP, TYPE, comments) and blank lines are skipped; label values may hold the
// escapes \\, \" and \n; values may be NaN, +Inf or -Inf.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gqa::loadgen {

using Labels = std::vector<std::pair<std::string, std::string>>;

struct Sample {
  std::string name;  // the sample's own name: a histogram's series end in _bucket, _sum, _count
  Labels labels;
  double value = 0;
};

// Every sample of `text`; an error names the first line that is not a sample (1-based).
absl::StatusOr<std::vector<Sample>> ParsePrometheusText(absl::string_view text);

// Whether any sample is named `name`.
bool HasSample(const std::vector<Sample>& samples, absl::string_view name);

// The sum of the samples named `name` whose labels include every pair of `subset` (the empty
// subset: all of them); nullopt when no sample has that name at all.
std::optional<double> SumSamples(const std::vector<Sample>& samples, absl::string_view name,
                                 const Labels& subset = {});

}  // namespace gqa::loadgen
