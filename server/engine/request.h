// What a client asks for, and what the engine tells it back, independent of gRPC.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
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
  // Not OK when the engine failed the request: the failed step's status, code and message,
  // which the client gets as its final status.
  absl::Status error;
};

// Called on the engine thread; must not block.
using EventSink = std::function<void(TokenEvent)>;

struct Request {
  std::string id;  // for logs and responses
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StoppingParams stopping;
  Clock::time_point arrival = Clock::now();
  EventSink sink;
};

}  // namespace gqa
