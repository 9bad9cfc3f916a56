// What a client asks for, and what the engine tells it back, independent of gRPC.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace gqa {

using Clock = std::chrono::steady_clock;

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;        // (0, 1]
  int top_k = 0;             // 0 = whole vocabulary
  uint64_t seed = 0;
};

struct StoppingParams {
  int max_new_tokens = 0;  // >= 1 once the service has applied its default
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  std::vector<std::string> stop_strings;  // need a tokenizer
};

// Log-probabilities as vLLM and OpenAI give them: log_softmax of the model's raw logits (before
// temperature, top-k and top-p), in float32.
inline constexpr int kMaxTopLogprobs = 20;

struct LogprobsParams {
  // -1: off; 0: the sampled token's logprob only; k in [1, 20]: also the k most likely tokens.
  int top_logprobs = -1;
  // -1: off; otherwise the same for every prompt token (its logprob given the tokens before it).
  int prompt_top_logprobs = -1;
};

// One position's logprobs: the token there (sampled, or the prompt's) and the k most likely
// tokens, ordered by logprob descending, ties by lower id.
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // (token id, logprob)
};

enum class FinishReason { kLength, kEos, kStopToken, kStopString, kCancelled };

const char* FinishReasonName(FinishReason reason);  // "length", "eos", ... (metric labels)

// One message to a request's client: new tokens, and on the last one the finish.
struct TokenEvent {
  std::vector<int32_t> new_tokens;
  std::string text;  // the new tokens' text, when the engine has a tokenizer
  std::optional<FinishReason> finish;
  int32_t matched_stop = 0;  // kStopToken: the token id; kStopString: index into stop_strings
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int preemptions = 0;
  int cached_prompt_tokens = 0;  // prompt tokens whose K/V came from the prefix cache
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;
  double total_seconds = 0;
  // One entry per new_tokens entry when Request::logprobs.top_logprobs >= 0; empty otherwise.
  std::vector<TokenLogprob> logprobs;
  // Once, in the request's first event, when Request::logprobs.prompt_top_logprobs >= 0: one
  // entry per prompt token. The first prompt token has no context: its entry has logprob 0 and
  // top empty.
  std::vector<TokenLogprob> prompt_logprobs;
  // Not OK when the engine failed the request: the failed step's status, code and message,
  // which the client gets as its final status.
  absl::Status error;
};

// Called on the engine's delivery thread (engine/event_delivery.h), never on the engine thread:
// one request's events in order and never two at once; events that pile up while it runs are
// merged into one. Should not block: a blocked sink delays other requests' events (not steps).
using EventSink = std::function<void(TokenEvent)>;

struct Request {
  std::string id;  // for logs and responses
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StoppingParams stopping;
  LogprobsParams logprobs;
  Clock::time_point arrival = Clock::now();
  EventSink sink;
};

}  // namespace gqa
