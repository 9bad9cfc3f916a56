// The metrics the engine exports, registered once under their public names. The engine reports
// plain facts through EngineObserver (engine/engine_observer.h); this is where they become series.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine_observer.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/step_stats.h"
#include "metrics/registry.h"

namespace gqa {

struct ModelConfig;
struct KvCacheSpec;

struct EngineMetrics : EngineObserver {
  explicit EngineMetrics(MetricsRegistry& registry);
  // gqa_model_info{...} 1, gqa_cache_config_info{block_size,num_gpu_blocks} 1,
  // gqa_kv_cache_blocks (and its deprecated name gqa_kv_cache_blocks_total) and
  // gqa_gpu_memory_bytes{kind}.
  void SetModelInfo(const ModelConfig& config, const KvCacheSpec& kv, const std::string& backend,
                    const std::string& device = "cpu",
                    const std::vector<std::pair<std::string, uint64_t>>& memory_by_kind = {},
                    int tensor_parallel_size = 1);

  // The memory bandwidth the roofline divides by (bytes/s), measured once at startup.
  void SetDeviceBandwidth(double bytes_per_second);
  // Every step-explaining series of one engine step: its wall time, what it ran, the bytes it
  // had to read and their roofline time, and on profiled steps its device and attention time.
  void ObserveStep(const StepStats& step);

  // EngineObserver: what the engine reports, into the series below.
  void OnPreemptions(size_t count) override;
  void OnRequestScheduled(double queue_seconds, int prompt_tokens) override;
  void OnTokensEmitted(size_t count, std::optional<double> since_last_token,
                       std::optional<double> time_to_first_token) override;
  void OnRequestFinished(FinishReason reason, double total_seconds) override;
  void OnStep(const StepStats& step) override { ObserveStep(step); }
  void OnOccupancy(const EngineOccupancy& occupancy) override;

  Histogram* time_to_first_token;
  Histogram* inter_token_latency;
  Histogram* e2e_request_latency;
  Histogram* request_queue_time;
  std::array<Histogram*, 3> step_duration;  // by StepPhase
  Histogram* step_batch_size;
  Histogram* step_tokens;
  Gauge* requests_running;
  Gauge* requests_waiting;
  Gauge* kv_cache_usage_ratio;
  Gauge* kv_cache_blocks;
  Gauge* kv_cache_blocks_deprecated;  // gqa_kv_cache_blocks_total: a gauge named like a counter
  Counter* prompt_tokens;
  Counter* generation_tokens;
  Counter* preemptions;
  Counter* prefix_cache_queries;  // tokens
  Counter* prefix_cache_hits;     // tokens
  Gauge* prefix_cache_blocks;
  std::array<Counter*, 5> requests_finished;  // by FinishReason
  // Requests refused before they ran, by reason: "invalid_argument", "overloaded",
  // "unauthenticated", "unavailable" (loading or draining).
  Counter* RequestsRejected(const std::string& reason);

 private:
  void AddStepSeries(MetricsRegistry& registry);
  struct PhaseSeries {  // the step series of one phase, beside step_duration
    Histogram* device;
    Histogram* attention;
    Histogram* roofline;
    Histogram* roofline_fraction;
    Counter* weight_bytes;
    Counter* kv_bytes;
  };
  MetricsRegistry& registry_;
  std::array<PhaseSeries, 3> phase_series_{};   // by StepPhase
  std::array<Histogram*, 3> step_sequences_{};  // decoding, prefilling, resumed
  std::array<Counter*, 2> scheduled_tokens_{};  // decode, prefill
  Gauge* device_bandwidth_ = nullptr;
  double bandwidth_ = 0;
  std::vector<std::pair<std::string, Counter*>> rejected_;
};

}  // namespace gqa
