// What the engine reports as it runs: plain facts about requests and steps, handed to an
// observer on the engine thread. The engine knows nothing of how they are kept; the metrics layer
// (metrics/engine_metrics.h) implements this interface and turns them into Prometheus series.
#pragma once

#include <cstddef>
#include <optional>

#include "engine/request.h"
#include "engine/step_stats.h"

namespace gqa {

// How full the engine is, after anything changed it.
struct EngineOccupancy {
  int running = 0;               // sequences being computed
  int waiting = 0;               // sequences queued (new or preempted)
  double kv_usage_ratio = 0.0;   // fraction of KV blocks in use (cached but free ones: free)
  int prefix_cached_blocks = 0;  // blocks holding prefix-cache content, in use or free
};

// Called on the engine thread only; implementations must not block.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;

  // Sequences preempted by one step's schedule (0 on most steps).
  virtual void OnPreemptions(size_t count) = 0;
  // A request reached its first step: arrival to that step, and its prompt length.
  virtual void OnRequestScheduled(double queue_seconds, int prompt_tokens) = 0;
  // Tokens sent to a request's client. `since_last_token`: seconds since its previous tokens
  // (absent on its first); `time_to_first_token`: arrival to now, on its first tokens only.
  virtual void OnTokensEmitted(size_t count, std::optional<double> since_last_token,
                               std::optional<double> time_to_first_token) = 0;
  // A request finished (not on a failed step): why, and arrival to its final message.
  virtual void OnRequestFinished(FinishReason reason, double total_seconds) = 0;
  // One engine step, once its tokens are sampled.
  virtual void OnStep(const StepStats& step) = 0;
  virtual void OnOccupancy(const EngineOccupancy& occupancy) = 0;
};

}  // namespace gqa
