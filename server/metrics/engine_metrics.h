// The metrics the engine exports, registered once under their public names.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/request.h"
#include "engine/scheduler.h"
#include "metrics/registry.h"

namespace gqa {

struct ModelConfig;
struct KvCacheSpec;

struct EngineMetrics {
  explicit EngineMetrics(MetricsRegistry& registry);
  // gqa_model_info{...} 1, gqa_kv_cache_blocks_total and gqa_gpu_memory_bytes{kind}.
  void SetModelInfo(const ModelConfig& config, const KvCacheSpec& kv, const std::string& backend,
                    const std::string& device = "cpu",
                    const std::vector<std::pair<std::string, uint64_t>>& memory_by_kind = {});

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
  Gauge* kv_cache_blocks_total;
  Counter* prompt_tokens;
  Counter* generation_tokens;
  Counter* preemptions;
  std::array<Counter*, 5> requests_finished;  // by FinishReason
  // Requests refused before they ran, by reason: "invalid_argument", "overloaded",
  // "unauthenticated", "unavailable" (loading or draining).
  Counter* RequestsRejected(const std::string& reason);

 private:
  MetricsRegistry& registry_;
  std::vector<std::pair<std::string, Counter*>> rejected_;
};

}  // namespace gqa
