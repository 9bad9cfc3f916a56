#include "loadgen/report.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gqa::loadgen {
namespace {

nlohmann::ordered_json Number(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

nlohmann::ordered_json SummaryJson(const Summary& s) {
  return {{"mean", Number(s.mean)}, {"p50", Number(s.p50)}, {"p90", Number(s.p90)},
          {"p99", Number(s.p99)},   {"min", Number(s.min)}, {"max", Number(s.max)}};
}

std::string Fixed(double v, double scale, int digits) {
  if (!std::isfinite(v)) return "-";
  return absl::StrFormat("%.*f", digits, v * scale);
}

std::string Line(absl::string_view name, absl::string_view value) {
  return absl::StrFormat("%-36s %s\n", name, value);
}

std::string LatencyRow(absl::string_view name, const Summary& s) {
  return absl::StrFormat("%-8s %10s %10s %10s %10s %10s %10s\n", name, Fixed(s.mean, 1e3, 3),
                         Fixed(s.p50, 1e3, 3), Fixed(s.p90, 1e3, 3), Fixed(s.p99, 1e3, 3),
                         Fixed(s.min, 1e3, 3), Fixed(s.max, 1e3, 3));
}

std::string ServerValue(const nlohmann::ordered_json& v) {
  if (v.is_null()) return "-";
  if (v.is_number_float()) return absl::StrFormat("%.6g", v.get<double>());
  return v.dump();
}

}  // namespace

nlohmann::ordered_json ReportJson(const RunInfo& run, const ClientStats& s,
                                  const std::optional<nlohmann::ordered_json>& server) {
  const bool closed = run.mode == LoopMode::kClosed;
  nlohmann::ordered_json j;
  j["label"] = run.label;
  j["mode"] = closed ? "closed" : "open";
  j["concurrency"] = closed ? nlohmann::ordered_json(run.concurrency) : nullptr;
  j["request_rate"] = closed ? nlohmann::ordered_json(nullptr) : Number(run.request_rate);
  j["num_requests"] = s.num_requests;
  j["completed"] = s.completed;
  j["failed"] = s.failed;
  j["errors"] = nlohmann::ordered_json::object();
  for (const auto& [name, count] : s.errors) j["errors"][name] = count;
  j["duration_s"] = Number(s.duration_s);
  j["input_tokens"] = s.input_tokens;
  j["output_tokens"] = s.output_tokens;
  j["request_throughput"] = Number(s.request_throughput);
  j["output_token_throughput"] = Number(s.output_token_throughput);
  j["total_token_throughput"] = Number(s.total_token_throughput);
  j["ttft_s"] = SummaryJson(s.ttft_s);
  j["tpot_s"] = SummaryJson(s.tpot_s);
  j["itl_s"] = SummaryJson(s.itl_s);
  j["e2e_s"] = SummaryJson(s.e2e_s);
  j["server"] = server ? *server : nullptr;
  return j;
}

std::string ReportTable(const RunInfo& run, const ClientStats& s,
                        const std::optional<nlohmann::ordered_json>& server) {
  std::string out = "================ gqa-loadgen result ================\n";
  if (!run.label.empty()) out += Line("Label:", run.label);
  if (run.mode == LoopMode::kClosed) {
    out += Line("Mode:", absl::StrCat("closed loop, concurrency ", run.concurrency));
  } else {
    out += Line("Mode:", absl::StrCat("open loop, ", absl::StrFormat("%g", run.request_rate),
                                      " req/s, max concurrency ",
                                      run.max_concurrency ? absl::StrCat(run.max_concurrency)
                                                          : std::string("none")));
  }
  out += Line("Requests (completed / failed):",
              absl::StrCat(s.num_requests, " (", s.completed, " / ", s.failed, ")"));
  for (const auto& [name, count] : s.errors)
    out += Line(absl::StrCat("  ", name, ":"), absl::StrCat(count));
  out += Line("Duration (s):", Fixed(s.duration_s, 1, 3));
  out += Line("Input / output tokens:", absl::StrCat(s.input_tokens, " / ", s.output_tokens));
  out += Line("Request throughput (req/s):", Fixed(s.request_throughput, 1, 3));
  out += Line("Output token throughput (tok/s):", Fixed(s.output_token_throughput, 1, 2));
  out += Line("Total token throughput (tok/s):", Fixed(s.total_token_throughput, 1, 2));
  out += absl::StrFormat("%-8s %10s %10s %10s %10s %10s %10s\n", "ms", "mean", "p50", "p90", "p99",
                         "min", "max");
  out += LatencyRow("TTFT", s.ttft_s);
  out += LatencyRow("TPOT", s.tpot_s);
  out += LatencyRow("ITL", s.itl_s);
  out += LatencyRow("E2E", s.e2e_s);
  if (server) {
    out += "---------------- server (/metrics deltas) ----------------\n";
    for (const auto& item : server->items()) {
      const std::string& key = item.key();
      const nlohmann::ordered_json& value = item.value();
      if (key == "metric_names_missing") {
        std::string names;
        for (const auto& n : value)
          absl::StrAppend(&names, names.empty() ? "" : " ", n.get<std::string>());
        out += Line(absl::StrCat(key, ":"), names.empty() ? "none" : names);
      } else {
        out += Line(absl::StrCat(key, ":"), ServerValue(value));
      }
    }
  }
  out += "====================================================\n";
  return out;
}

}  // namespace gqa::loadgen
