// Prometheus metrics: counters, gauges and histograms, lock-free to update (the engine thread),
// rendered in the text exposition format (the HTTP thread).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace gqa {

using Labels = std::vector<std::pair<std::string, std::string>>;

// A sample value or bucket bound as the exposition text writes it: the shortest decimal that
// reads back as the same double ("0.1", "5e-05", "60"), "+Inf", "-Inf" or "NaN".
std::string FormatValue(double v);

class Counter {
 public:
  void Inc(double amount = 1.0) { value_.fetch_add(amount, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  const std::vector<double>& upper_bounds() const { return bounds_; }
  // Cumulative counts per bound, then +Inf.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // [bounds + 1], not cumulative
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

// Bucket bounds from 50 us to 60 s: resolves ~1 ms GPU decode steps and multi-second requests.
std::vector<double> LatencyBuckets();
// 1, 2, 4, ... up to max.
std::vector<double> PowerOfTwoBuckets(double max);

class MetricsRegistry {
 public:
  // The same name with different labels adds a child to one family. Pointers stay valid for the
  // registry's life.
  Counter* AddCounter(const std::string& name, const std::string& help, Labels labels = {});
  Gauge* AddGauge(const std::string& name, const std::string& help, Labels labels = {});
  Histogram* AddHistogram(const std::string& name, const std::string& help,
                          std::vector<double> bounds, Labels labels = {});

  // Runs before each rendering, under the registry's lock: refreshes values read on demand
  // (the process_* series). It must not call the registry.
  void AddCollector(std::function<void()> collect);

  std::string RenderText() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Child {
    Labels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    std::string help;
    Type type;
    std::vector<Child> children;
  };
  Family& GetFamily(const std::string& name, const std::string& help, Type type);

  mutable std::mutex mu_;  // guards the maps' structure, not the values
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
  std::vector<std::function<void()>> collectors_;
};

}  // namespace gqa
