// HTTP GET of gqa-server's /metrics (Prometheus text).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace gqa::loadgen {

class MetricsScraper {
 public:
  // `url`: http://host[:port][/path]; the path defaults to /metrics.
  static absl::StatusOr<MetricsScraper> Create(const std::string& url);

  // The body of one GET; an error for a failed connection or a status other than 200.
  absl::StatusOr<std::string> Fetch() const;

 private:
  MetricsScraper(std::string base, std::string path)
      : base_(std::move(base)), path_(std::move(path)) {}

  std::string base_;  // http://host:port
  std::string path_;
};

}  // namespace gqa::loadgen
