// libFuzzer: an OpenAI request body (/v1/completions, /v1/chat/completions) from fuzz bytes,
// through the HTTP front end's parsing, prompt tokenization, the conversion to engine requests
// (the engine's validation included) and the response builders fed a fake event. The first byte
// picks the endpoint. Every refusal must be INVALID_ARGUMENT or NOT_FOUND, naming a parameter.
#include <cstdlib>

#include "fuzz_util.h"
#include "http/openai_format.h"
#include "http/openai_request.h"

namespace {

void CheckRefusal(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kInvalidArgument &&
      status.code() != absl::StatusCode::kNotFound) {
    std::abort();
  }
  if (gqa::http::ParamOf(status.message()).empty()) std::abort();  // every error names its field
  (void)gqa::http::Dump(gqa::http::ErrorBody(400, status.message()));
}

// Builds the answer of `params` from one fake event per choice, streamed and not.
void Build(std::unique_ptr<gqa::http::ResponseBuilder> builder, const gqa::http::CommonParams& p) {
  for (int i = 0; i < p.n; ++i) {
    gqa::http::Delta delta{i, {}};
    delta.event.new_tokens = {5};
    delta.event.text = "\xff ok";  // invalid UTF-8 must not throw
    delta.event.finish = gqa::FinishReason::kLength;
    delta.event.completion_tokens = 1;
    (void)builder->StreamEvent(delta);
  }
  (void)gqa::http::Dump(builder->Body());
  for (const auto& event : builder->StreamEnd()) (void)gqa::http::Dump(event);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool chat = data[0] & 1;
  const absl::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  const gqa::Tokenizer& tokenizer = gqa::fuzz::TrainedTokenizer();
  const gqa::http::EngineDefaults defaults{&tokenizer, {tokenizer.vocab_size(), 4096}, 256};
  const gqa::http::FormatContext context{"id", "model", 0, &tokenizer};
  gqa::http::CommonParams common;
  std::vector<int32_t> prompt;
  std::unique_ptr<gqa::http::ResponseBuilder> builder;
  if (chat) {
    auto parsed = gqa::http::ParseChatRequest(body, "model");
    if (!parsed.ok()) return CheckRefusal(parsed.status()), 0;
    std::string text;
    for (const auto& m : parsed->messages) text += m.role + ": " + m.content + "\n";
    prompt = tokenizer.Encode(text);
    if (prompt.empty()) return 0;
    common = parsed->common;
    builder = gqa::http::MakeChatBuilder(context, common);
  } else {
    auto parsed = gqa::http::ParseCompletionRequest(body, "model");
    if (!parsed.ok()) return CheckRefusal(parsed.status()), 0;
    auto ids = gqa::http::CompletionPromptIds(*parsed, defaults);
    if (!ids.ok()) return CheckRefusal(ids.status()), 0;
    prompt = *ids;
    common = parsed->common;
    builder = gqa::http::MakeCompletionBuilder(context, common, parsed->echo, "echo");
  }
  for (int i = 0; i < common.n; ++i) {
    auto request = gqa::http::ToEngineRequest(common, prompt, defaults, "id", i, 1234);
    if (!request.ok()) return CheckRefusal(request.status()), 0;
  }
  Build(std::move(builder), common);
  return 0;
}
