#include "metrics/engine_metrics.h"

#include "backend/kv_cache_spec.h"
#include "model/config.h"

namespace gqa {

EngineMetrics::EngineMetrics(MetricsRegistry& r) : registry_(r) {
  const auto latency = LatencyBuckets();
  time_to_first_token = r.AddHistogram("gqa_time_to_first_token_seconds",
                                       "Arrival to first generated token.", latency);
  inter_token_latency = r.AddHistogram("gqa_inter_token_latency_seconds",
                                       "Time between consecutive tokens of a request.", latency);
  e2e_request_latency =
      r.AddHistogram("gqa_e2e_request_latency_seconds", "Arrival to the final token.", latency);
  request_queue_time =
      r.AddHistogram("gqa_request_queue_time_seconds",
                     "Arrival to the first step that computes the request.", latency);
  for (StepPhase phase : {StepPhase::kPrefill, StepPhase::kDecode, StepPhase::kMixed}) {
    step_duration[static_cast<int>(phase)] = r.AddHistogram(
        "gqa_step_duration_seconds", "Wall time of one engine step (forward and sampling).",
        latency, {{"phase", StepPhaseName(phase)}});
  }
  step_batch_size = r.AddHistogram("gqa_step_batch_size", "Sequences in one engine step.",
                                   PowerOfTwoBuckets(1024));
  step_tokens = r.AddHistogram("gqa_step_tokens", "Tokens computed in one engine step.",
                               PowerOfTwoBuckets(65536));
  requests_running = r.AddGauge("gqa_requests_running", "Sequences being computed.");
  requests_waiting = r.AddGauge("gqa_requests_waiting", "Sequences queued (new or preempted).");
  kv_cache_usage_ratio = r.AddGauge("gqa_kv_cache_usage_ratio", "Fraction of KV blocks in use.");
  kv_cache_blocks_total = r.AddGauge("gqa_kv_cache_blocks_total", "KV blocks in the pool.");
  prompt_tokens = r.AddCounter("gqa_prompt_tokens_total", "Prompt tokens admitted.");
  generation_tokens = r.AddCounter("gqa_generation_tokens_total", "Tokens generated.");
  preemptions = r.AddCounter("gqa_preemptions_total", "Sequences preempted for KV blocks.");
  for (FinishReason reason : {FinishReason::kLength, FinishReason::kEos, FinishReason::kStopToken,
                              FinishReason::kStopString, FinishReason::kCancelled}) {
    requests_finished[static_cast<int>(reason)] =
        r.AddCounter("gqa_requests_finished_total", "Finished requests by reason.",
                     {{"finish_reason", FinishReasonName(reason)}});
  }
  for (const char* reason : {"invalid_argument", "overloaded", "unauthenticated", "unavailable"}) {
    rejected_.emplace_back(
        reason, r.AddCounter("gqa_requests_rejected_total",
                             "Requests refused before they ran, by reason.", {{"reason", reason}}));
  }
}

Counter* EngineMetrics::RequestsRejected(const std::string& reason) {
  for (const auto& [name, counter] : rejected_) {
    if (name == reason) return counter;
  }
  return rejected_.front().second;
}

void EngineMetrics::SetModelInfo(const ModelConfig& c, const KvCacheSpec& kv,
                                 const std::string& backend, const std::string& device,
                                 const std::vector<std::pair<std::string, uint64_t>>& memory) {
  auto s = [](auto v) { return std::to_string(v); };
  registry_
      .AddGauge("gqa_model_info", "The loaded model (value is always 1).",
                {{"architecture", c.architecture_name},
                 {"num_layers", s(c.num_layers)},
                 {"num_attention_heads", s(c.num_heads)},
                 {"num_key_value_heads", s(c.num_kv_heads)},
                 {"group_size", s(c.group_size())},
                 {"head_dim", s(c.head_dim)},
                 {"hidden_size", s(c.hidden_size)},
                 {"dtype", std::string(DTypeTorchName(c.dtype))},
                 {"kv_block_size", s(kv.block_size)},
                 {"converted_from_kv_heads",
                  c.converted_from_kv_heads ? s(*c.converted_from_kv_heads) : ""},
                 {"backend", backend},
                 {"device", device},
                 {"compute_dtype", std::string(DTypeTorchName(kv.dtype))}})
      ->Set(1);
  kv_cache_blocks_total->Set(kv.num_blocks);
  for (const auto& [kind, bytes] : memory) {
    registry_
        .AddGauge("gqa_gpu_memory_bytes", "GPU memory the backend holds, by kind.",
                  {{"kind", kind}})
        ->Set(static_cast<double>(bytes));
  }
}

}  // namespace gqa
