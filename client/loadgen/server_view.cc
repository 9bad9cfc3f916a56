#include "loadgen/server_view.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace gqa::loadgen {
namespace {

using Value = std::optional<double>;

constexpr const char* kDuration = "gqa_step_duration_seconds";
constexpr const char* kDevice = "gqa_step_device_seconds";
constexpr const char* kAttention = "gqa_step_attention_seconds";
constexpr const char* kRoofline = "gqa_step_roofline_seconds";
constexpr const char* kReadBytes = "gqa_step_read_bytes_total";
constexpr const char* kBatch = "gqa_step_batch_size";
constexpr const char* kSequences = "gqa_step_sequences";
constexpr const char* kBandwidth = "gqa_device_read_bandwidth_bytes_per_second";
constexpr const char* kKvUsage = "gqa_kv_cache_usage_ratio";

const Labels kDecode = {{"phase", "decode"}};
const Labels kPrefill = {{"phase", "prefill"}};
const Labels kMixed = {{"phase", "mixed"}};

// Reads deltas of metric families and remembers the families the after scrape lacks.
class Scrapes {
 public:
  Scrapes(const std::vector<Sample>& before, const std::vector<Sample>& after)
      : before_(before), after_(after) {}

  // after - before of the samples named family + suffix whose labels include `subset`; a series
  // the before scrape lacks counts from 0.
  Value Delta(const std::string& family, const std::string& suffix, const Labels& subset = {}) {
    const std::string name = family + suffix;
    const Value after = SumSamples(after_, name, subset);
    if (!after) {
      Missing(family);
      return std::nullopt;
    }
    return *after - SumSamples(before_, name, subset).value_or(0.0);
  }

  // The value of a gauge in the after scrape.
  Value Gauge(const std::string& name) {
    const Value v = SumSamples(after_, name);
    if (!v) Missing(name);
    return v;
  }

  const std::vector<std::string>& missing() const { return missing_; }

 private:
  void Missing(const std::string& family) {
    if (std::find(missing_.begin(), missing_.end(), family) == missing_.end()) {
      missing_.push_back(family);
    }
  }

  const std::vector<Sample>& before_;
  const std::vector<Sample>& after_;
  std::vector<std::string> missing_;
};

Value Ratio(Value a, Value b) {
  if (!a || !b || *b == 0) return std::nullopt;
  return *a / *b;
}

nlohmann::ordered_json Json(Value v) {
  if (!v || !std::isfinite(*v)) return nullptr;
  return *v;
}

// Counts (steps, bytes, tokens) as integers where they are whole numbers.
nlohmann::ordered_json Count(Value v) {
  if (v && std::isfinite(*v) && *v == std::round(*v) && std::fabs(*v) < 9e15) {
    return static_cast<int64_t>(*v);
  }
  return Json(v);
}

Value Max(Value a, Value b) {
  if (!a) return b;
  if (!b) return a;
  return std::max(*a, *b);
}

}  // namespace

nlohmann::ordered_json ServerFigures(const std::vector<Sample>& before,
                                     const std::vector<Sample>& after,
                                     std::optional<double> polled_kv_peak) {
  Scrapes d(before, after);
  const std::string dur = kDuration;
  const Value steps = d.Delta(dur, "_count");
  const Value step_s = d.Delta(dur, "_sum");
  const Value decode_steps = d.Delta(dur, "_count", kDecode);
  const Value decode_s = d.Delta(dur, "_sum", kDecode);
  const Value prefill_steps = d.Delta(dur, "_count", kPrefill);
  const Value read_bytes = d.Delta(kReadBytes, "");
  const Value decode_read_bytes = d.Delta(kReadBytes, "", kDecode);

  nlohmann::ordered_json j;
  j["steps"] = Count(steps);
  j["step_s_mean"] = Json(Ratio(step_s, steps));
  j["decode_steps"] = Count(decode_steps);
  j["decode_step_s_mean"] = Json(Ratio(decode_s, decode_steps));
  j["prefill_steps"] = Count(prefill_steps);
  j["prefill_step_s_mean"] = Json(Ratio(d.Delta(dur, "_sum", kPrefill), prefill_steps));
  j["mixed_steps"] = Count(d.Delta(dur, "_count", kMixed));
  j["attention_share"] = Json(Ratio(d.Delta(kAttention, "_sum"), d.Delta(kDevice, "_sum")));
  j["decode_attention_share"] =
      Json(Ratio(d.Delta(kAttention, "_sum", kDecode), d.Delta(kDevice, "_sum", kDecode)));
  j["decode_device_step_s_mean"] =
      Json(Ratio(d.Delta(kDevice, "_sum", kDecode), d.Delta(kDevice, "_count", kDecode)));
  j["read_bytes"] = Count(read_bytes);
  j["decode_read_bytes_per_step"] = Json(Ratio(decode_read_bytes, decode_steps));
  j["achieved_bandwidth_Bps"] = Json(Ratio(read_bytes, step_s));
  j["decode_achieved_bandwidth_Bps"] = Json(Ratio(decode_read_bytes, decode_s));
  j["device_bandwidth_Bps"] = Json(d.Gauge(kBandwidth));
  j["decode_roofline_s_mean"] =
      Json(Ratio(d.Delta(kRoofline, "_sum", kDecode), d.Delta(kRoofline, "_count", kDecode)));
  j["roofline_fraction"] = Json(Ratio(d.Delta(kRoofline, "_sum"), step_s));
  j["decode_roofline_fraction"] = Json(Ratio(d.Delta(kRoofline, "_sum", kDecode), decode_s));
  j["mean_batch"] = Json(Ratio(d.Delta(kBatch, "_sum"), d.Delta(kBatch, "_count")));
  const Labels decoding = {{"state", "decoding"}};
  j["decode_mean_batch"] =
      Json(Ratio(d.Delta(kSequences, "_sum", decoding), d.Delta(kSequences, "_count", decoding)));
  j["preemptions"] = Count(d.Delta("gqa_preemptions_total", ""));
  j["prompt_tokens"] = Count(d.Delta("gqa_prompt_tokens_total", ""));
  j["generation_tokens"] = Count(d.Delta("gqa_generation_tokens_total", ""));
  j["prefix_cache_hit_rate"] = Json(Ratio(d.Delta("gqa_prefix_cache_hits_tokens_total", ""),
                                          d.Delta("gqa_prefix_cache_queries_tokens_total", "")));
  const Value kv_after = d.Gauge(kKvUsage);
  j["peak_kv_usage"] = Json(Max(Max(polled_kv_peak, kv_after), SumSamples(before, kKvUsage)));
  j["metric_names_missing"] = d.missing();
  return j;
}

}  // namespace gqa::loadgen
