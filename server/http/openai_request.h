// The OpenAI-compatible request bodies (/v1/completions, /v1/chat/completions) read from JSON into
// plain values, with the per-request limits on what a client may send, and turned into the
// engine's Requests. Free of HTTP and of the engine loop, so a fuzzer can drive it with arbitrary
// bytes. Every error is INVALID_ARGUMENT (NOT_FOUND for an unknown model) whose message starts
// with the parameter at fault, "<param>: ...", and quotes the value sent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <variant>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/request.h"
#include "engine/validation.h"
#include "tokenizer/tokenizer.h"

namespace gqa::http {

// Beyond these: 400.
inline constexpr int kMaxChoices = 16;              // n
inline constexpr int kMaxStopStrings = 32;          // stop
inline constexpr size_t kMaxStopStringBytes = 512;  // one stop string
inline constexpr size_t kMaxMessages = 2048;        // messages
inline constexpr size_t kMaxPromptTokenIds = 1 << 20;
inline constexpr int kMaxJsonDepth = 64;  // nesting of arrays and objects in a body

// What both endpoints share: sampling, stopping, streaming and the choice count.
struct CommonParams {
  std::string model;  // empty: the served model
  std::optional<int> max_tokens;
  float temperature = 1.0f;  // OpenAI's default
  float top_p = 1.0f;
  int top_k = 0;  // 0 (or -1, vLLM's spelling): no limit
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // vLLM's extension: generate max_tokens whatever the model says
  // -1: no logprobs; otherwise the number of top alternatives per token (0: the token's only).
  int top_logprobs = -1;
};

struct CompletionParams {
  CommonParams common;
  // The prompt: text, or token ids.
  std::variant<std::string, std::vector<int32_t>> prompt;
  bool echo = false;
};

struct ChatMessageParam {
  std::string role;
  std::string content;
};

struct ChatParams {
  CommonParams common;
  std::vector<ChatMessageParam> messages;
  bool add_generation_prompt = true;
};

// The parameter an error message names: its text before the first ": " ("top_p: 2 must be in
// (0, 1]" -> "top_p"), or empty.
std::string ParamOf(absl::string_view message);

// Refuses a body nested deeper than kMaxJsonDepth before it is parsed (a parser's stack).
absl::Status CheckJsonDepth(absl::string_view body);

// `served_model` is the name /v1/models lists; a request naming another model gets NOT_FOUND.
absl::StatusOr<CompletionParams> ParseCompletionRequest(absl::string_view body,
                                                        absl::string_view served_model);
absl::StatusOr<ChatParams> ParseChatRequest(absl::string_view body, absl::string_view served_model);

struct EngineDefaults {
  const Tokenizer* tokenizer = nullptr;  // text prompts and stop strings need one
  ModelLimits limits;
  int default_max_new_tokens = 256;
};

// The engine Request of choice `index` (0..n-1) for an already tokenized prompt, validated against
// the model with the engine's own checks (their messages renamed to the OpenAI parameters).
// `random_seed` seeds a request that brings no seed; choice i uses seed + i. Errors about the
// prompt name `prompt_param`: "prompt" for a completion, "messages" for a chat.
absl::StatusOr<Request> ToEngineRequest(const CommonParams& params, std::vector<int32_t> prompt,
                                        const EngineDefaults& defaults, const std::string& id,
                                        int index, uint64_t random_seed,
                                        absl::string_view prompt_param = "prompt");

// The prompt's token ids: text through the tokenizer (with BOS when it asks for one), or the ids.
absl::StatusOr<std::vector<int32_t>> CompletionPromptIds(const CompletionParams& params,
                                                         const EngineDefaults& defaults);

}  // namespace gqa::http
