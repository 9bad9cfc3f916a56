#include "http/openai_request.h"

#include <charconv>
#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace gqa::http {
namespace {

using nlohmann::json;

// A value as the client sent it, for error messages: its JSON text, cut at 64 bytes.
std::string Quote(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 64) text = text.substr(0, 61) + "...";
  return text;
}

absl::Status Invalid(absl::string_view param, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", what));
}

absl::Status WrongType(absl::string_view param, absl::string_view expected, const json& value) {
  return Invalid(param, absl::StrCat("expected ", expected, ", got ", Quote(value)));
}

// The member `key` unless it is absent or null.
const json* Member(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status ReadBool(const json& body, const char* key, bool* out) {
  const json* v = Member(body, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return WrongType(key, "true or false", *v);
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadFloat(const json& body, const char* key, float* out) {
  const json* v = Member(body, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number()) return WrongType(key, "a number", *v);
  *out = static_cast<float>(v->get<double>());
  return absl::OkStatus();
}

// An integer in [lo, hi]; a JSON number with no fraction (2.0) counts as an integer.
absl::Status ReadInt(const json& body, const char* key, int64_t lo, int64_t hi,
                     std::optional<int64_t>* out) {
  const json* v = Member(body, key);
  if (v == nullptr) return absl::OkStatus();
  int64_t value;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() &&
        v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Invalid(key, absl::StrCat(Quote(*v), " must be in [", lo, ", ", hi, "]"));
    }
    value = v->get<int64_t>();
  } else if (v->is_number_float() && std::trunc(v->get<double>()) == v->get<double>() &&
             std::abs(v->get<double>()) < 9e18) {
    value = static_cast<int64_t>(v->get<double>());
  } else {
    return WrongType(key, "an integer", *v);
  }
  if (value < lo || value > hi) {
    return Invalid(key, absl::StrCat(Quote(*v), " must be in [", lo, ", ", hi, "]"));
  }
  *out = value;
  return absl::OkStatus();
}

absl::Status ReadModel(const json& body, absl::string_view served, std::string* out) {
  const json* v = Member(body, "model");
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_string()) return WrongType("model", "a string", *v);
  const std::string& name = v->get_ref<const std::string&>();
  if (!name.empty() && name != served) {
    return absl::NotFoundError(absl::StrCat("model: ", Quote(*v),
                                            " is not served here; this "
                                            "server serves \"",
                                            served, "\" (GET /v1/models)"));
  }
  *out = name;
  return absl::OkStatus();
}

absl::Status ReadStop(const json& body, std::vector<std::string>* out) {
  const json* v = Member(body, "stop");
  if (v == nullptr) return absl::OkStatus();
  std::vector<const json*> items;
  if (v->is_string()) {
    items.push_back(v);
  } else if (v->is_array()) {
    if (v->size() > static_cast<size_t>(kMaxStopStrings)) {
      return Invalid("stop", absl::StrCat(v->size(), " stop strings; at most ", kMaxStopStrings));
    }
    for (const json& item : *v) items.push_back(&item);
  } else {
    return WrongType("stop", "a string or a list of strings", *v);
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string param = v->is_array() ? absl::StrCat("stop[", i, "]") : "stop";
    if (!items[i]->is_string()) return WrongType(param, "a string", *items[i]);
    const std::string& s = items[i]->get_ref<const std::string&>();
    if (s.empty()) return Invalid(param, "empty string");
    if (s.size() > kMaxStopStringBytes) {
      return Invalid(param, absl::StrCat(s.size(), " bytes; at most ", kMaxStopStringBytes));
    }
    out->push_back(s);
  }
  return absl::OkStatus();
}

// Parameters OpenAI defines that this server does not implement: refused unless left at their
// neutral value, so that a client never silently gets something else than it asked for.
absl::Status RefuseUnsupported(const json& body) {
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    const json* v = Member(body, key);
    if (v != nullptr && !(v->is_number() && v->get<double>() == 0.0)) {
      return Invalid(key, absl::StrCat(Quote(*v), " is not supported (only 0)"));
    }
  }
  if (const json* v = Member(body, "logit_bias"); v != nullptr && !(v->is_object() && v->empty())) {
    return Invalid("logit_bias", "is not supported");
  }
  if (const json* v = Member(body, "best_of"); v != nullptr && !(v->is_number() && *v == 1)) {
    return Invalid("best_of", absl::StrCat(Quote(*v), " is not supported (only 1)"));
  }
  if (const json* v = Member(body, "suffix"); v != nullptr) {
    return Invalid("suffix", "is not supported");
  }
  if (const json* v = Member(body, "tools"); v != nullptr) {
    return Invalid("tools", "tool calls are not supported");
  }
  return absl::OkStatus();
}

absl::Status ReadCommon(const json& body, absl::string_view served, CommonParams* p) {
  if (absl::Status s = ReadModel(body, served, &p->model); !s.ok()) return s;
  if (absl::Status s = RefuseUnsupported(body); !s.ok()) return s;
  std::optional<int64_t> value;
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    value.reset();
    if (absl::Status s = ReadInt(body, key, 1, std::numeric_limits<int32_t>::max(), &value);
        !s.ok()) {
      return s;
    }
    if (value) p->max_tokens = static_cast<int>(*value);
  }
  if (absl::Status s = ReadFloat(body, "temperature", &p->temperature); !s.ok()) return s;
  if (absl::Status s = ReadFloat(body, "top_p", &p->top_p); !s.ok()) return s;
  value.reset();
  if (absl::Status s = ReadInt(body, "top_k", -1, std::numeric_limits<int32_t>::max(), &value);
      !s.ok()) {
    return s;
  }
  if (value) p->top_k = *value < 0 ? 0 : static_cast<int>(*value);
  if (const json* v = Member(body, "seed"); v != nullptr) {
    if (!v->is_number_integer()) return WrongType("seed", "an integer", *v);
    p->seed =
        v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
  }
  if (absl::Status s = ReadStop(body, &p->stop); !s.ok()) return s;
  value.reset();
  if (absl::Status s = ReadInt(body, "n", 1, kMaxChoices, &value); !s.ok()) return s;
  if (value) p->n = static_cast<int>(*value);
  if (absl::Status s = ReadBool(body, "stream", &p->stream); !s.ok()) return s;
  if (absl::Status s = ReadBool(body, "ignore_eos", &p->ignore_eos); !s.ok()) return s;
  if (const json* v = Member(body, "stream_options"); v != nullptr) {
    if (!v->is_object()) return WrongType("stream_options", "an object", *v);
    if (!p->stream) return Invalid("stream_options", "only with \"stream\": true");
    const json* usage = Member(*v, "include_usage");
    if (usage != nullptr && !usage->is_boolean()) {
      return WrongType("stream_options.include_usage", "true or false", *usage);
    }
    p->include_usage = usage != nullptr && usage->get<bool>();
  }
  return absl::OkStatus();
}

absl::StatusOr<json> ParseObject(absl::string_view body) {
  if (absl::Status s = CheckJsonDepth(body); !s.ok()) return s;
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError("body: not valid JSON (a JSON object is expected)");
  }
  if (!parsed.is_object()) return WrongType("body", "a JSON object", parsed);
  return parsed;
}

absl::Status ReadPrompt(const json& body, CompletionParams* p) {
  const json* v = Member(body, "prompt");
  if (v == nullptr) return Invalid("prompt", "required");
  const json* one = v;
  // A list of one prompt (a string or a list of ids) is that prompt.
  if (v->is_array() && v->size() == 1 && ((*v)[0].is_string() || (*v)[0].is_array())) {
    one = &(*v)[0];
  } else if (v->is_array() && !v->empty() && ((*v)[0].is_string() || (*v)[0].is_array())) {
    return Invalid("prompt",
                   absl::StrCat("a batch of ", v->size(), " prompts; send one prompt per request"));
  }
  if (one->is_string()) {
    if (one->get_ref<const std::string&>().empty()) return Invalid("prompt", "the prompt is empty");
    p->prompt = one->get<std::string>();
    return absl::OkStatus();
  }
  if (!one->is_array()) return WrongType("prompt", "a string or a list of token ids", *v);
  if (one->empty()) return Invalid("prompt", "the prompt is empty");
  if (one->size() > kMaxPromptTokenIds) {
    return Invalid("prompt", absl::StrCat(one->size(), " token ids; at most ", kMaxPromptTokenIds));
  }
  std::vector<int32_t> ids;
  ids.reserve(one->size());
  for (size_t i = 0; i < one->size(); ++i) {
    const json& id = (*one)[i];
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max() ||
        (id.is_number_unsigned() &&
         id.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max()))) {
      return WrongType(absl::StrCat("prompt[", i, "]"), "a token id", id);
    }
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  p->prompt = std::move(ids);
  return absl::OkStatus();
}

// Completions: `logprobs` is the number of alternatives (0..20) or null.
absl::Status ReadCompletionLogprobs(const json& body, CommonParams* p) {
  const json* v = Member(body, "logprobs");
  if (v == nullptr) return absl::OkStatus();
  if (v->is_boolean()) return WrongType("logprobs", "an integer in [0, 20]", *v);
  std::optional<int64_t> k;
  if (absl::Status s = ReadInt(body, "logprobs", 0, kMaxTopLogprobs, &k); !s.ok()) return s;
  p->top_logprobs = static_cast<int>(*k);
  return absl::OkStatus();
}

// Chat: `logprobs` true turns them on, `top_logprobs` (0..20) asks for alternatives.
absl::Status ReadChatLogprobs(const json& body, CommonParams* p) {
  bool on = false;
  if (absl::Status s = ReadBool(body, "logprobs", &on); !s.ok()) return s;
  std::optional<int64_t> k;
  if (absl::Status s = ReadInt(body, "top_logprobs", 0, kMaxTopLogprobs, &k); !s.ok()) return s;
  if (k && !on) return Invalid("top_logprobs", "needs \"logprobs\": true");
  if (on) p->top_logprobs = k ? static_cast<int>(*k) : 0;
  return absl::OkStatus();
}

absl::StatusOr<std::string> MessageContent(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return WrongType(param, "a string or a list of content parts", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string part_param = absl::StrCat(param, "[", i, "]");
    if (!part.is_object()) return WrongType(part_param, "a content part object", part);
    const json* type = Member(part, "type");
    if (type == nullptr || *type != "text") {
      return Invalid(
          absl::StrCat(part_param, ".type"),
          absl::StrCat(type ? Quote(*type) : "null", " is not supported; only \"text\" parts"));
    }
    const json* t = Member(part, "text");
    if (t == nullptr || !t->is_string()) {
      return WrongType(absl::StrCat(part_param, ".text"), "a string", t ? *t : json());
    }
    text += t->get_ref<const std::string&>();
  }
  return text;
}

absl::Status ReadMessages(const json& body, ChatParams* p) {
  const json* v = Member(body, "messages");
  if (v == nullptr) return Invalid("messages", "required");
  if (!v->is_array()) return WrongType("messages", "a list of messages", *v);
  if (v->empty()) return Invalid("messages", "the list is empty");
  if (v->size() > kMaxMessages) {
    return Invalid("messages", absl::StrCat(v->size(), " messages; at most ", kMaxMessages));
  }
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return WrongType(param, "a message object", m);
    const json* role = Member(m, "role");
    if (role == nullptr || !role->is_string()) {
      return WrongType(param + ".role", "a string", role ? *role : json());
    }
    const std::string& r = role->get_ref<const std::string&>();
    if (r != "system" && r != "user" && r != "assistant" && r != "developer") {
      return Invalid(param + ".role",
                     absl::StrCat(Quote(*role), " is not one of system, user, assistant"));
    }
    const json* content = Member(m, "content");
    std::string text;
    if (content != nullptr) {
      absl::StatusOr<std::string> c = MessageContent(*content, param + ".content");
      if (!c.ok()) return c.status();
      text = *std::move(c);
    } else if (r != "assistant") {
      return Invalid(param + ".content", "required");
    }
    p->messages.push_back({r == "developer" ? "system" : r, std::move(text)});
  }
  return absl::OkStatus();
}

// "sampling.top_p: ..." (the engine's field names) -> "top_p: ..."; the prompt's fields become
// `prompt_param` ("prompt", or "messages" for a chat).
std::string RenamedEngineMessage(absl::string_view message, absl::string_view prompt_param) {
  static constexpr std::pair<absl::string_view, absl::string_view> kNames[] = {
      {"sampling.temperature", "temperature"},
      {"sampling.top_p", "top_p"},
      {"sampling.top_k", "top_k"},
      {"stopping.max_new_tokens", "max_tokens"},
      {"stopping.stop_token_ids", "stop"},
      {"prompt.token_ids", "prompt"},
      {"prompt.text", "prompt"},
      {"logprobs.top_logprobs", "logprobs"},
      {"logprobs.prompt_top_logprobs", "logprobs"}};
  for (const auto& [engine_name, api_name] : kNames) {
    if (absl::StartsWith(message, engine_name)) {
      return absl::StrCat(api_name == "prompt" ? prompt_param : api_name,
                          message.substr(engine_name.size()));
    }
  }
  return std::string(message);
}

}  // namespace

std::string ParamOf(absl::string_view message) {
  const size_t colon = message.find(": ");
  if (colon == absl::string_view::npos || colon > 64) return "";
  const absl::string_view param = message.substr(0, colon);
  if (param.find(' ') != absl::string_view::npos) return "";
  return std::string(param);
}

absl::Status CheckJsonDepth(absl::string_view body) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(
            absl::StrCat("body: JSON nested deeper than ", kMaxJsonDepth, " levels"));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CompletionParams> ParseCompletionRequest(absl::string_view body,
                                                        absl::string_view served_model) {
  absl::StatusOr<json> parsed = ParseObject(body);
  if (!parsed.ok()) return parsed.status();
  CompletionParams p;
  if (absl::Status s = ReadCommon(*parsed, served_model, &p.common); !s.ok()) return s;
  if (absl::Status s = ReadPrompt(*parsed, &p); !s.ok()) return s;
  if (absl::Status s = ReadBool(*parsed, "echo", &p.echo); !s.ok()) return s;
  if (absl::Status s = ReadCompletionLogprobs(*parsed, &p.common); !s.ok()) return s;
  return p;
}

absl::StatusOr<ChatParams> ParseChatRequest(absl::string_view body,
                                            absl::string_view served_model) {
  absl::StatusOr<json> parsed = ParseObject(body);
  if (!parsed.ok()) return parsed.status();
  ChatParams p;
  if (absl::Status s = ReadCommon(*parsed, served_model, &p.common); !s.ok()) return s;
  if (absl::Status s = ReadMessages(*parsed, &p); !s.ok()) return s;
  if (absl::Status s = ReadBool(*parsed, "add_generation_prompt", &p.add_generation_prompt);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadChatLogprobs(*parsed, &p.common); !s.ok()) return s;
  return p;
}

absl::StatusOr<std::vector<int32_t>> CompletionPromptIds(const CompletionParams& params,
                                                         const EngineDefaults& defaults) {
  if (const auto* ids = std::get_if<std::vector<int32_t>>(&params.prompt)) return *ids;
  if (defaults.tokenizer == nullptr) {
    return Invalid("prompt", "this model has no tokenizer.json; send token ids");
  }
  return defaults.tokenizer->EncodePrompt(std::get<std::string>(params.prompt));
}

absl::StatusOr<Request> ToEngineRequest(const CommonParams& params, std::vector<int32_t> prompt,
                                        const EngineDefaults& defaults, const std::string& id,
                                        int index, uint64_t random_seed,
                                        absl::string_view prompt_param) {
  Request r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.sampling.temperature = params.temperature;
  r.sampling.top_p = params.top_p;
  r.sampling.top_k = params.top_k;
  r.sampling.seed = params.seed.value_or(random_seed) + static_cast<uint64_t>(index);
  if (!params.stop.empty() && defaults.tokenizer == nullptr) {
    return Invalid("stop", "stop strings need a tokenizer, which this model does not have");
  }
  r.stopping.stop_strings = params.stop;
  r.stopping.ignore_eos = params.ignore_eos;
  const int max_len = defaults.limits.max_model_len;
  const int room = max_len - static_cast<int>(r.prompt.size());
  r.stopping.max_new_tokens =
      params.max_tokens.value_or(std::max(1, std::min(defaults.default_max_new_tokens, room)));
  if (params.top_logprobs >= 0) r.logprobs.top_logprobs = params.top_logprobs;
  if (absl::Status s = ValidateRequest(r, defaults.limits); !s.ok()) {
    return absl::Status(s.code(), RenamedEngineMessage(s.message(), prompt_param));
  }
  return r;
}

}  // namespace gqa::http
