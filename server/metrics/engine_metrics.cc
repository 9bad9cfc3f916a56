#include "metrics/engine_metrics.h"

#include "backend/kv_cache_spec.h"
#include "model/config.h"

namespace gqa {
namespace {

// Predicted over measured step time: 1 is a step at the bandwidth floor.
std::vector<double> FractionBuckets() {
  return {0.02, 0.05, 0.1,  0.2, 0.3,  0.4, 0.5, 0.6, 0.7,
          0.75, 0.8,  0.85, 0.9, 0.95, 1.0, 1.1, 1.25};
}

}  // namespace

void EngineMetrics::AddStepSeries(MetricsRegistry& r) {
  const auto latency = LatencyBuckets();
  for (StepPhase phase : {StepPhase::kPrefill, StepPhase::kDecode, StepPhase::kMixed}) {
    const Labels by_phase = {{"phase", StepPhaseName(phase)}};
    PhaseSeries& p = phase_series_[static_cast<int>(phase)];
    p.device = r.AddHistogram("gqa_step_device_seconds",
                              "Device time of a profiled step (forward and sampling; one step "
                              "in --step_profile_interval, at random).",
                              latency, by_phase);
    p.attention = r.AddHistogram(
        "gqa_step_attention_seconds",
        "Device time of the attention (K/V append and attention, all layers) of a profiled step.",
        latency, by_phase);
    p.roofline = r.AddHistogram("gqa_step_roofline_seconds",
                                "Roofline time of a step: the bytes it must read over the "
                                "device's read bandwidth.",
                                latency, by_phase);
    p.roofline_fraction = r.AddHistogram(
        "gqa_step_roofline_fraction",
        "Roofline time over wall time of a step (1: the step ran at the bandwidth floor).",
        FractionBuckets(), by_phase);
    auto read_bytes = [&](const char* kind) {
      return r.AddCounter("gqa_step_read_bytes_total",
                          "Bytes steps must read: weights, and K/V of attended tokens.",
                          Labels{{"phase", StepPhaseName(phase)}, {"kind", kind}});
    };
    p.weight_bytes = read_bytes("weights");
    p.kv_bytes = read_bytes("kv");
  }
  int i = 0;
  for (const char* state : {"decoding", "prefilling", "resumed"}) {
    step_sequences_[i++] = r.AddHistogram(
        "gqa_step_sequences",
        "Sequences in the steps that hold any in that state (resumed: back from preemption in "
        "their first chunk, also prefilling, or decoding where the prefix cache held the rest).",
        PowerOfTwoBuckets(1024), {{"state", state}});
  }
  scheduled_tokens_[0] = r.AddCounter("gqa_step_scheduled_tokens_total",
                                      "Tokens computed by steps, by kind.", {{"kind", "decode"}});
  scheduled_tokens_[1] = r.AddCounter("gqa_step_scheduled_tokens_total",
                                      "Tokens computed by steps, by kind.", {{"kind", "prefill"}});
  device_bandwidth_ = r.AddGauge("gqa_device_read_bandwidth_bytes_per_second",
                                 "Memory bandwidth the roofline uses, measured at startup.");
}

void EngineMetrics::SetDeviceBandwidth(double bytes_per_second) {
  bandwidth_ = bytes_per_second;
  device_bandwidth_->Set(bytes_per_second);
}

void EngineMetrics::ObserveStep(const StepStats& step) {
  const int phase = static_cast<int>(step.phase);
  PhaseSeries& p = phase_series_[phase];
  step_duration[phase]->Observe(step.wall_seconds);
  step_batch_size->Observe(step.num_sequences());
  step_tokens->Observe(step.num_tokens());
  // Only steps that hold the state: _sum / _count is the mean count where it occurs.
  if (step.decoding > 0) step_sequences_[0]->Observe(step.decoding);
  if (step.prefilling > 0) step_sequences_[1]->Observe(step.prefilling);
  if (step.resumed > 0) step_sequences_[2]->Observe(step.resumed);
  scheduled_tokens_[0]->Inc(step.decode_tokens);
  scheduled_tokens_[1]->Inc(step.prefill_tokens);
  prefix_cache_queries->Inc(step.prefix_cache_queried_tokens);
  prefix_cache_hits->Inc(step.prefix_cache_hit_tokens);
  p.weight_bytes->Inc(static_cast<double>(step.weight_bytes));
  p.kv_bytes->Inc(static_cast<double>(step.kv_bytes));
  if (bandwidth_ > 0) {
    const double predicted = static_cast<double>(step.read_bytes()) / bandwidth_;
    p.roofline->Observe(predicted);
    if (step.wall_seconds > 0) p.roofline_fraction->Observe(predicted / step.wall_seconds);
  }
  if (step.device) {
    p.device->Observe(step.device->step_seconds);
    p.attention->Observe(step.device->attention_seconds);
  }
}

void EngineMetrics::OnPreemptions(size_t count) { preemptions->Inc(static_cast<double>(count)); }

void EngineMetrics::OnRequestScheduled(double queue_seconds, int prompt_tokens) {
  request_queue_time->Observe(queue_seconds);
  this->prompt_tokens->Inc(prompt_tokens);
}

void EngineMetrics::OnTokensEmitted(size_t count, std::optional<double> since_last_token,
                                    std::optional<double> time_to_first_token) {
  generation_tokens->Inc(static_cast<double>(count));
  if (since_last_token) inter_token_latency->Observe(*since_last_token);
  if (time_to_first_token) this->time_to_first_token->Observe(*time_to_first_token);
}

void EngineMetrics::OnRequestFinished(FinishReason reason, double total_seconds) {
  requests_finished[static_cast<int>(reason)]->Inc();
  e2e_request_latency->Observe(total_seconds);
}

void EngineMetrics::OnOccupancy(const EngineOccupancy& o) {
  requests_running->Set(o.running);
  requests_waiting->Set(o.waiting);
  kv_cache_usage_ratio->Set(o.kv_usage_ratio);
  prefix_cache_blocks->Set(o.prefix_cached_blocks);
}

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
  AddStepSeries(r);
  step_batch_size = r.AddHistogram("gqa_step_batch_size", "Sequences in one engine step.",
                                   PowerOfTwoBuckets(1024));
  step_tokens = r.AddHistogram("gqa_step_tokens", "Tokens computed in one engine step.",
                               PowerOfTwoBuckets(65536));
  // The model-server protocol's gauges (docs/gateway-api-inference-extension.md): queued and
  // running requests, KV-cache utilisation in [0, 1].
  requests_running = r.AddGauge("gqa_requests_running", "Sequences being computed.");
  requests_waiting = r.AddGauge("gqa_requests_waiting", "Sequences queued (new or preempted).");
  kv_cache_usage_ratio = r.AddGauge(
      "gqa_kv_cache_usage_ratio",
      "Fraction of KV blocks in use; blocks held only by the prefix cache count as free (they are "
      "evicted when needed).");
  kv_cache_blocks = r.AddGauge("gqa_kv_cache_blocks", "KV blocks in the pool.");
  // The old name of gqa_kv_cache_blocks (a gauge with a counter's _total suffix), still exported
  // in 0.1.x so that dashboards and alerts can move; removed in the next release.
  kv_cache_blocks_deprecated = r.AddGauge("gqa_kv_cache_blocks_total",
                                          "Deprecated: use gqa_kv_cache_blocks (same value); this "
                                          "name is removed in the next release.");
  prompt_tokens = r.AddCounter("gqa_prompt_tokens_total", "Prompt tokens admitted.");
  generation_tokens = r.AddCounter("gqa_generation_tokens_total", "Tokens generated.");
  preemptions = r.AddCounter("gqa_preemptions_total", "Sequences preempted for KV blocks.");
  prefix_cache_queries = r.AddCounter(
      "gqa_prefix_cache_queries_tokens_total",
      "Tokens of the sequences admitted while prefix caching is on (looked up in the cache).");
  prefix_cache_hits = r.AddCounter("gqa_prefix_cache_hits_tokens_total",
                                   "Tokens of admitted sequences whose K/V came from the prefix "
                                   "cache (hit rate: over the queries).");
  prefix_cache_blocks = r.AddGauge("gqa_prefix_cache_blocks",
                                   "KV blocks holding prefix-cache content, in use or free (the "
                                   "free ones are evicted least recently used first).");
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
                                 const std::vector<std::pair<std::string, uint64_t>>& memory,
                                 int tensor_parallel_size) {
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
  // The cache-config info metric of the Gateway API Inference Extension's model-server protocol,
  // with vLLM's name and label names (an endpoint picker's defaults): num_gpu_blocks is the pool's
  // block count on either backend.
  registry_
      .AddGauge("gqa_cache_config_info",
                "The KV cache's configuration (value is always 1): tokens per block and blocks in "
                "the pool.",
                {{"block_size", s(kv.block_size)}, {"num_gpu_blocks", s(kv.num_blocks)}})
      ->Set(1);
  registry_
      .AddGauge("gqa_tensor_parallel_size",
                "GPUs the model is split across (--tensor_parallel_size). Above 1, the KV pool "
                "gauges and gqa_gpu_memory_bytes are one rank's (each rank holds as much).")
      ->Set(tensor_parallel_size);
  kv_cache_blocks->Set(kv.num_blocks);
  kv_cache_blocks_deprecated->Set(kv.num_blocks);
  for (const auto& [kind, bytes] : memory) {
    registry_
        .AddGauge("gqa_gpu_memory_bytes", "GPU memory the backend holds, by kind.",
                  {{"kind", kind}})
        ->Set(static_cast<double>(bytes));
  }
}

}  // namespace gqa
