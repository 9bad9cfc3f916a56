#include "loadgen/metrics_scraper.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace gqa::loadgen {

absl::StatusOr<MetricsScraper> MetricsScraper::Create(const std::string& url) {
  constexpr absl::string_view kScheme = "http://";
  if (!absl::StartsWith(url, kScheme) || url.size() == kScheme.size()) {
    return absl::InvalidArgumentError("not an http://host[:port][/path] URL");
  }
  const size_t slash = url.find('/', kScheme.size());
  if (slash == std::string::npos) return MetricsScraper(url, "/metrics");
  return MetricsScraper(url.substr(0, slash), url.substr(slash));
}

absl::StatusOr<std::string> MetricsScraper::Fetch() const {
  httplib::Client client(base_);
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(30, 0);
  const httplib::Result res = client.Get(path_);
  if (!res) {
    return absl::UnavailableError(
        absl::StrCat("GET ", base_, path_, ": ", httplib::to_string(res.error())));
  }
  if (res->status != 200) {
    return absl::UnavailableError(absl::StrCat("GET ", base_, path_, ": HTTP ", res->status));
  }
  return res->body;
}

}  // namespace gqa::loadgen
