#include "http/openai_format.h"

#include "absl/strings/str_cat.h"

namespace gqa::http {
namespace {

using nlohmann::json;

const char* ErrorType(int http_status) {
  switch (http_status) {
    case 401:
      return "authentication_error";
    case 404:
      return "not_found_error";
    case 429:
      return "rate_limit_error";
    case 503:
      return "service_unavailable_error";
    default:
      return http_status >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string TokenText(const Tokenizer* tokenizer, int32_t id) {
  return tokenizer ? tokenizer->Decode({id}) : absl::StrCat("token_id:", id);
}

json Bytes(const std::string& text) {
  json bytes = json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}

// Completions' shape: parallel lists. `null_first` marks the prompt's first token, which has no
// logprob. `offset` is the text offset of the first token; it advances past each token's text.
void AppendCompletionLogprobs(json& out, const std::vector<TokenLogprob>& logprobs,
                              const Tokenizer* tokenizer, bool null_first, size_t* offset) {
  for (size_t i = 0; i < logprobs.size(); ++i) {
    const TokenLogprob& lp = logprobs[i];
    const std::string text = TokenText(tokenizer, lp.token);
    out["tokens"].push_back(text);
    out["text_offset"].push_back(*offset);
    *offset += text.size();
    if (null_first && i == 0) {
      out["token_logprobs"].push_back(nullptr);
      out["top_logprobs"].push_back(nullptr);
      continue;
    }
    out["token_logprobs"].push_back(lp.logprob);
    json top = json::object();
    for (const auto& [id, logprob] : lp.top) top[TokenText(tokenizer, id)] = logprob;
    out["top_logprobs"].push_back(std::move(top));
  }
}

json EmptyCompletionLogprobs() {
  return json{{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
}

// Chat's shape: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
json ChatLogprobs(const std::vector<TokenLogprob>& logprobs, const Tokenizer* tokenizer) {
  json content = json::array();
  for (const TokenLogprob& lp : logprobs) {
    const std::string text = TokenText(tokenizer, lp.token);
    json top = json::array();
    for (const auto& [id, logprob] : lp.top) {
      const std::string t = TokenText(tokenizer, id);
      top.push_back(json{{"token", t}, {"logprob", logprob}, {"bytes", Bytes(t)}});
    }
    content.push_back(json{
        {"token", text}, {"logprob", lp.logprob}, {"bytes", Bytes(text)}, {"top_logprobs", top}});
  }
  return json{{"content", std::move(content)}};
}

json FinishJson(const std::optional<FinishReason>& finish) {
  return finish ? json(OpenAiFinishReason(*finish)) : json(nullptr);
}

class CompletionBuilder : public ResponseBuilder {
 public:
  CompletionBuilder(FormatContext context, const CommonParams& params, bool echo,
                    std::string echo_text)
      : ResponseBuilder(std::move(context), params), echo_(echo), echo_text_(std::move(echo_text)) {
    offsets_.assign(choices_.size(), 0);
    started_.assign(choices_.size(), false);
  }

  std::vector<json> StreamStart() const override { return {}; }

 private:
  json ChoiceBody(int index, const Choice& choice) const override {
    json logprobs = nullptr;
    if (want_logprobs_) {
      logprobs = EmptyCompletionLogprobs();
      size_t offset = 0;
      if (echo_)
        AppendCompletionLogprobs(logprobs, prompt_logprobs_, context_.tokenizer, true, &offset);
      offset = echo_ ? echo_text_.size() : 0;
      AppendCompletionLogprobs(logprobs, choice.logprobs, context_.tokenizer, false, &offset);
    }
    return json{{"index", index},
                {"text", echo_ ? echo_text_ + choice.text : choice.text},
                {"logprobs", std::move(logprobs)},
                {"finish_reason", FinishJson(choice.finish)}};
  }

  json ChoiceChunk(int index, const Delta& delta) const override {
    const TokenEvent& e = delta.event;
    std::string text = e.text;
    json logprobs = nullptr;
    const bool first = !started_[index];
    if (want_logprobs_) {
      logprobs = EmptyCompletionLogprobs();
      size_t offset = offsets_[index];
      if (first && echo_) {
        AppendCompletionLogprobs(logprobs, e.prompt_logprobs, context_.tokenizer, true, &offset);
        offset = echo_text_.size();
      }
      AppendCompletionLogprobs(logprobs, e.logprobs, context_.tokenizer, false, &offset);
      offsets_[index] = offset;
    }
    if (first && echo_) text = echo_text_ + text;
    started_[index] = true;
    return json{{"index", index},
                {"text", std::move(text)},
                {"logprobs", std::move(logprobs)},
                {"finish_reason", FinishJson(e.finish)}};
  }

  const char* object_name(bool) const override { return "text_completion"; }

  const bool echo_;
  const std::string echo_text_;
  // Streaming: each choice's text offset so far and whether it has sent a chunk (the chunk
  // builder is called once per event, in order, from one thread).
  mutable std::vector<size_t> offsets_;
  mutable std::vector<bool> started_;
};

class ChatBuilder : public ResponseBuilder {
 public:
  ChatBuilder(FormatContext context, const CommonParams& params)
      : ResponseBuilder(std::move(context), params) {}

  // Each choice's first chunk carries the role.
  std::vector<json> StreamStart() const override {
    std::vector<json> events;
    for (size_t i = 0; i < choices_.size(); ++i) {
      json event = Envelope(true);
      event["choices"] = json::array({json{{"index", i},
                                           {"delta", {{"role", "assistant"}, {"content", ""}}},
                                           {"logprobs", nullptr},
                                           {"finish_reason", nullptr}}});
      events.push_back(std::move(event));
    }
    return events;
  }

 private:
  json ChoiceBody(int index, const Choice& choice) const override {
    return json{
        {"index", index},
        {"message", {{"role", "assistant"}, {"content", choice.text}}},
        {"logprobs", want_logprobs_ ? ChatLogprobs(choice.logprobs, context_.tokenizer) : json()},
        {"finish_reason", FinishJson(choice.finish)}};
  }

  json ChoiceChunk(int index, const Delta& delta) const override {
    const TokenEvent& e = delta.event;
    json d = json::object();
    if (!e.text.empty() || !e.finish) d["content"] = e.text;
    return json{
        {"index", index},
        {"delta", std::move(d)},
        {"logprobs", want_logprobs_ ? ChatLogprobs(e.logprobs, context_.tokenizer) : json()},
        {"finish_reason", FinishJson(e.finish)}};
  }

  const char* object_name(bool chunk) const override {
    return chunk ? "chat.completion.chunk" : "chat.completion";
  }
};

}  // namespace

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kCancelled:
      return 499;
    default:
      return 500;
  }
}

json ErrorBody(int http_status, absl::string_view message) {
  const std::string param = ParamOf(message);
  json code = nullptr;
  if (http_status == 404 && param == "model") code = "model_not_found";
  if (http_status == 429) code = "rate_limit_exceeded";
  return json{{"error",
               {{"message", std::string(message)},
                {"type", ErrorType(http_status)},
                {"param", param.empty() ? json(nullptr) : json(param)},
                {"code", std::move(code)}}}};
}

const char* OpenAiFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "abort";
    default:
      return "stop";
  }
}

ResponseBuilder::ResponseBuilder(FormatContext context, const CommonParams& params)
    : context_(std::move(context)),
      want_logprobs_(params.top_logprobs >= 0),
      include_usage_(params.include_usage),
      choices_(params.n) {}

void ResponseBuilder::Add(const Delta& delta) {
  const TokenEvent& e = delta.event;
  if (!e.error.ok()) {
    if (error_.ok()) error_ = e.error;
    return;
  }
  Choice& c = choices_.at(delta.index);
  c.text += e.text;
  c.logprobs.insert(c.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
  if (!e.prompt_logprobs.empty()) prompt_logprobs_ = e.prompt_logprobs;
  if (e.finish) {
    c.finish = e.finish;
    c.completion_tokens = e.completion_tokens;
    prompt_tokens_ = e.prompt_tokens;
  }
}

json ResponseBuilder::Envelope(bool chunk) const {
  json body{{"id", context_.id},
            {"object", object_name(chunk)},
            {"created", context_.created},
            {"model", context_.model}};
  if (chunk && include_usage_) body["usage"] = nullptr;
  return body;
}

json ResponseBuilder::Usage() const {
  int completion = 0;
  for (const Choice& c : choices_) completion += c.completion_tokens;
  return json{{"prompt_tokens", prompt_tokens_},
              {"completion_tokens", completion},
              {"total_tokens", prompt_tokens_ + completion}};
}

json ResponseBuilder::Body() const {
  json body = Envelope(false);
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    choices.push_back(ChoiceBody(static_cast<int>(i), choices_[i]));
  }
  body["choices"] = std::move(choices);
  body["usage"] = Usage();
  return body;
}

std::optional<json> ResponseBuilder::StreamEvent(const Delta& delta) {
  Add(delta);
  const TokenEvent& e = delta.event;
  if (!e.error.ok()) return std::nullopt;  // StreamEnd reports it
  // A token whose text is not complete yet (part of a UTF-8 character) waits for the next; a
  // model without a tokenizer has no text, and sends each token as a chunk of empty text.
  if (e.text.empty() && !e.finish && e.logprobs.empty() && e.prompt_logprobs.empty() &&
      context_.tokenizer != nullptr) {
    return std::nullopt;
  }
  json event = Envelope(true);
  event["choices"] = json::array({ChoiceChunk(delta.index, delta)});
  return event;
}

std::vector<json> ResponseBuilder::StreamEnd() const {
  std::vector<json> events;
  if (!error_.ok()) events.push_back(ErrorBody(HttpStatusOf(error_.code()), error_.message()));
  if (include_usage_) {
    json event = Envelope(true);
    event["choices"] = json::array();
    event["usage"] = Usage();
    events.push_back(std::move(event));
  }
  return events;
}

std::unique_ptr<ResponseBuilder> MakeCompletionBuilder(FormatContext context,
                                                       const CommonParams& params, bool echo,
                                                       std::string echo_text) {
  return std::make_unique<CompletionBuilder>(std::move(context), params, echo,
                                             std::move(echo_text));
}

std::unique_ptr<ResponseBuilder> MakeChatBuilder(FormatContext context,
                                                 const CommonParams& params) {
  return std::make_unique<ChatBuilder>(std::move(context), params);
}

}  // namespace gqa::http
