#include "engine/validation.h"

#include <charconv>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace gqa {
namespace {

// A float as the client sent it: the shortest text that reads back as the same float (1.0000001,
// not absl's six digits "1"), "nan", "inf" or "-inf".
std::string AsSent(float v) {
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, result.ptr);
}

absl::Status CheckPrompt(const Request& r, const ModelLimits& limits) {
  if (r.prompt.empty()) return absl::InvalidArgumentError("prompt.token_ids: the prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= limits.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt.token_ids[", i, "]: ", static_cast<uint32_t>(r.prompt[i]),
                       " is not a token id (vocab_size is ", limits.vocab_size, ")"));
    }
  }
  if (static_cast<int64_t>(r.prompt.size()) >= limits.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt.token_ids: ", r.prompt.size(),
        " tokens leave no room to generate under max_model_len ", limits.max_model_len));
  }
  return absl::OkStatus();
}

absl::Status CheckSampling(const SamplingParams& s) {
  if (!std::isfinite(s.temperature) || s.temperature < 0.0f) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.temperature: ", AsSent(s.temperature),
                                                   " must be a finite number >= 0 (0 = greedy)"));
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p: ", AsSent(s.top_p), " must be in (0, 1]"));
  }
  if (s.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k: ", s.top_k, " must be >= 0 (0 = no limit)"));
  }
  return absl::OkStatus();
}

absl::Status CheckStopping(const Request& r, const ModelLimits& limits) {
  const StoppingParams& s = r.stopping;
  if (s.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.max_new_tokens: ", s.max_new_tokens, " must be >= 1"));
  }
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + s.max_new_tokens;
  if (total > limits.max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.max_new_tokens: ", s.max_new_tokens, " plus the prompt's ",
                     r.prompt.size(), " tokens exceeds max_model_len ", limits.max_model_len));
  }
  for (size_t i = 0; i < s.stop_token_ids.size(); ++i) {
    if (s.stop_token_ids[i] < 0 || s.stop_token_ids[i] >= limits.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("stopping.stop_token_ids[", i,
                       "]: ", static_cast<uint32_t>(s.stop_token_ids[i]), " is not a token id"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTopLogprobs(std::string_view field, int64_t value) {
  if (value < -1 || value > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": ", value, " must be in [0, ", kMaxTopLogprobs, "]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateRequest(const Request& request, const ModelLimits& limits) {
  if (absl::Status st = CheckPrompt(request, limits); !st.ok()) return st;
  if (absl::Status st = CheckSampling(request.sampling); !st.ok()) return st;
  if (absl::Status st = CheckTopLogprobs("logprobs.top_logprobs", request.logprobs.top_logprobs);
      !st.ok()) {
    return st;
  }
  if (absl::Status st =
          CheckTopLogprobs("logprobs.prompt_top_logprobs", request.logprobs.prompt_top_logprobs);
      !st.ok()) {
    return st;
  }
  return CheckStopping(request, limits);
}

}  // namespace gqa
