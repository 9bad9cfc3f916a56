// OpenAI's response shapes: error objects, completion and chat bodies, their SSE chunks, usage
// and logprobs, built from the engine's TokenEvents. Free of HTTP.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "engine/request.h"
#include "http/openai_request.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"

namespace gqa::http {

// Whether the engine fills TokenEvent::logprobs; while false a request asking for logprobs gets
// 400 "logprobs: logprobs is not supported yet".
inline constexpr bool kLogprobsSupported = true;

// The JSON text of `value`; invalid UTF-8 in strings is replaced, never thrown on.
std::string Dump(const nlohmann::json& value);

// 400 INVALID_ARGUMENT, 401, 404, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 500 otherwise.
int HttpStatusOf(absl::StatusCode code);
// {"error": {"message", "type", "param", "code"}}; param is the message's leading "<param>: ".
nlohmann::json ErrorBody(int http_status, absl::string_view message);

// One engine event of choice `index`.
struct Delta {
  int index = 0;
  TokenEvent event;
};

struct FormatContext {
  std::string id;     // cmpl-... or chatcmpl-...
  std::string model;  // the served model name
  int64_t created = 0;
  const Tokenizer* tokenizer = nullptr;  // token text in logprobs
};

// Builds one request's answer from its events: a whole body (Add each event, then Body) or SSE
// events (StreamStart, StreamEvent for each event, StreamEnd).
class ResponseBuilder {
 public:
  virtual ~ResponseBuilder() = default;
  // Non-streaming.
  void Add(const Delta& delta);
  nlohmann::json Body() const;
  // The first engine error among the events (OK when none): the whole answer is that error.
  const absl::Status& error() const { return error_; }
  // Streaming.
  virtual std::vector<nlohmann::json> StreamStart() const = 0;
  std::optional<nlohmann::json> StreamEvent(const Delta& delta);
  std::vector<nlohmann::json> StreamEnd() const;

 protected:
  struct Choice {
    std::string text;
    std::vector<TokenLogprob> logprobs;
    std::optional<FinishReason> finish;
    int completion_tokens = 0;
  };
  ResponseBuilder(FormatContext context, const CommonParams& params);
  virtual nlohmann::json ChoiceBody(int index, const Choice& choice) const = 0;
  // The chunk of one event's text and logprobs (finish_reason when it is the last).
  virtual nlohmann::json ChoiceChunk(int index, const Delta& delta) const = 0;
  virtual const char* object_name(bool chunk) const = 0;
  nlohmann::json Envelope(bool chunk) const;
  nlohmann::json Usage() const;

  FormatContext context_;
  bool want_logprobs_ = false;
  bool include_usage_ = false;
  std::vector<Choice> choices_;
  std::vector<TokenLogprob> prompt_logprobs_;
  int prompt_tokens_ = 0;
  absl::Status error_;
};

std::unique_ptr<ResponseBuilder> MakeCompletionBuilder(FormatContext context,
                                                       const CommonParams& params, bool echo,
                                                       std::string echo_text);
std::unique_ptr<ResponseBuilder> MakeChatBuilder(FormatContext context, const CommonParams& params);

// "stop" (EOS, a stop token or string), "length", or "abort" (cancelled: the server drained).
const char* OpenAiFinishReason(FinishReason reason);

}  // namespace gqa::http
