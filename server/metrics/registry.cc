#include "metrics/registry.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>

namespace gqa {
namespace {

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\';
    if (ch == '\n') {
      out += "\\n";
      continue;
    }
    out += ch;
  }
  return out;
}

std::string FormatLabels(const Labels& labels, const std::string& extra_key = "",
                         const std::string& extra_value = "") {
  if (labels.empty() && extra_key.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    out += (first ? "" : ",") + k + "=\"" + EscapeLabel(v) + "\"";
    first = false;
  }
  if (!extra_key.empty()) out += (first ? "" : ",") + extra_key + "=\"" + extra_value + "\"";
  return out + "}";
}

}  // namespace

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  // The shortest digits that read back as the same double: le="0.1", not
  // le="0.10000000000000001". Scientific below 1e-4, as Go's FormatFloat(v, 'g', -1, 64) (what
  // Prometheus's client libraries print), so every bucket bound reads as theirs ("0.0001",
  // "5e-05"); fixed up to 1e21, so counters stay plain integers.
  char buf[64];
  const auto sci = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  const char* e = std::find(buf, sci.ptr, 'e');
  int exponent = 0;
  std::from_chars(e + (e[1] == '+' ? 2 : 1), sci.ptr, exponent);
  if (exponent < -4 || exponent >= 21) return std::string(buf, sci.ptr);
  const auto fixed = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  return std::string(buf, fixed.ptr);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  std::sort(bounds_.begin(), bounds_.end());
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double value) {
  const size_t index = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> counts(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    counts[i] = running;
  }
  return counts;
}

std::vector<double> LatencyBuckets() {
  return {50e-6,   100e-6, 200e-6, 300e-6, 400e-6, 500e-6, 600e-6, 700e-6, 800e-6, 900e-6, 1e-3,
          1.25e-3, 1.5e-3, 2e-3,   2.5e-3, 3e-3,   4e-3,   5e-3,   7.5e-3, 10e-3,  15e-3,  20e-3,
          30e-3,   50e-3,  75e-3,  0.1,    0.15,   0.2,    0.3,    0.5,    0.75,   1.0,    1.5,
          2.0,     3.0,    5.0,    7.5,    10.0,   20.0,   30.0,   60.0};
}

std::vector<double> PowerOfTwoBuckets(double max) {
  std::vector<double> bounds;
  for (double b = 1; b <= max; b *= 2) bounds.push_back(b);
  return bounds;
}

MetricsRegistry::Family& MetricsRegistry::GetFamily(const std::string& name,
                                                    const std::string& help, Type type) {
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.help = help;
    it->second.type = type;
    order_.push_back(name);
  }
  return it->second;
}

Counter* MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                     Labels labels) {
  std::lock_guard lock(mu_);
  Family& family = GetFamily(name, help, Type::kCounter);
  family.children.push_back({std::move(labels), std::make_unique<Counter>(), nullptr, nullptr});
  return family.children.back().counter.get();
}

Gauge* MetricsRegistry::AddGauge(const std::string& name, const std::string& help, Labels labels) {
  std::lock_guard lock(mu_);
  Family& family = GetFamily(name, help, Type::kGauge);
  family.children.push_back({std::move(labels), nullptr, std::make_unique<Gauge>(), nullptr});
  return family.children.back().gauge.get();
}

Histogram* MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                         std::vector<double> bounds, Labels labels) {
  std::lock_guard lock(mu_);
  Family& family = GetFamily(name, help, Type::kHistogram);
  family.children.push_back(
      {std::move(labels), nullptr, nullptr, std::make_unique<Histogram>(std::move(bounds))});
  return family.children.back().histogram.get();
}

void MetricsRegistry::AddCollector(std::function<void()> collect) {
  std::lock_guard lock(mu_);
  collectors_.push_back(std::move(collect));
}

std::string MetricsRegistry::RenderText() const {
  std::lock_guard lock(mu_);
  for (const auto& collect : collectors_) collect();
  std::ostringstream out;
  for (const auto& name : order_) {
    const Family& f = families_.at(name);
    const char* type = f.type == Type::kCounter ? "counter"
                       : f.type == Type::kGauge ? "gauge"
                                                : "histogram";
    out << "# HELP " << name << " " << f.help << "\n# TYPE " << name << " " << type << "\n";
    for (const Child& c : f.children) {
      if (c.counter)
        out << name << FormatLabels(c.labels) << " " << FormatValue(c.counter->value()) << "\n";
      if (c.gauge)
        out << name << FormatLabels(c.labels) << " " << FormatValue(c.gauge->value()) << "\n";
      if (!c.histogram) continue;
      const auto counts = c.histogram->CumulativeCounts();
      const auto& bounds = c.histogram->upper_bounds();
      for (size_t i = 0; i <= bounds.size(); ++i) {
        const std::string le = i < bounds.size() ? FormatValue(bounds[i]) : "+Inf";
        out << name << "_bucket" << FormatLabels(c.labels, "le", le) << " " << counts[i] << "\n";
      }
      out << name << "_sum" << FormatLabels(c.labels) << " " << FormatValue(c.histogram->sum())
          << "\n";
      out << name << "_count" << FormatLabels(c.labels) << " " << counts.back() << "\n";
    }
  }
  return out.str();
}

}  // namespace gqa
