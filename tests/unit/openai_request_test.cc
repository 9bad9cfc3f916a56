// The HTTP front end's request parsing and response shapes (server/http/), without a server.
#include <gtest/gtest.h>

#include "http/openai_format.h"
#include "http/openai_request.h"

namespace gqa::http {
namespace {

using nlohmann::json;

absl::Status CompletionError(const std::string& body) {
  return ParseCompletionRequest(body, "m").status();
}

TEST(OpenAiRequestTest, ReadsACompletionRequest) {
  auto p = ParseCompletionRequest(
      R"({"model": "m", "prompt": "hi", "max_tokens": 5, "temperature": 0, "top_p": 0.5,
          "top_k": -1, "seed": 7, "stop": "x", "n": 2, "stream": true,
          "stream_options": {"include_usage": true}, "echo": true, "user": "ignored"})",
      "m");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(std::get<std::string>(p->prompt), "hi");
  EXPECT_EQ(p->common.max_tokens, 5);
  EXPECT_EQ(p->common.temperature, 0.0f);
  EXPECT_EQ(p->common.top_k, 0);
  EXPECT_EQ(p->common.seed, 7u);
  EXPECT_EQ(p->common.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(p->common.n, 2);
  EXPECT_TRUE(p->common.stream && p->common.include_usage && p->echo);
}

TEST(OpenAiRequestTest, ReadsTokenIdsAndAListOfOnePrompt) {
  auto ids = ParseCompletionRequest(R"({"prompt": [1, 2, 3]})", "m");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(std::get<std::vector<int32_t>>(ids->prompt), (std::vector<int32_t>{1, 2, 3}));
  auto nested = ParseCompletionRequest(R"({"prompt": [[4, 5]]})", "m");
  ASSERT_TRUE(nested.ok());
  EXPECT_EQ(std::get<std::vector<int32_t>>(nested->prompt), (std::vector<int32_t>{4, 5}));
  auto text = ParseCompletionRequest(R"({"prompt": ["a"]})", "m");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(std::get<std::string>(text->prompt), "a");
}

TEST(OpenAiRequestTest, RefusalsNameTheParameterAndQuoteTheValue) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"prompt": "x", "temperature": "hot"})", "temperature: expected a number, got \"hot\""},
      {R"({"prompt": "x", "n": 99})", "n: 99 must be in [1, 16]"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens: 0 must be in"},
      {R"({"prompt": ["a", "b"]})", "prompt: a batch of 2 prompts"},
      {R"({"prompt": [1, -2]})", "prompt[1]: expected a token id, got -2"},
      {R"({"prompt": "x", "stop": [""]})", "stop[0]: empty string"},
      {R"({"prompt": "x", "logprobs": 21})", "logprobs: 21 must be in [0, 20]"},
      {R"({"prompt": "x", "frequency_penalty": 1})", "frequency_penalty: 1 is not supported"},
      {R"({"prompt": "x", "stream_options": {}})", "stream_options: only with"},
      {R"({"max_tokens": 3})", "prompt: required"},
      {"{", "body: not valid JSON"},
      {"3", "body: expected a JSON object, got 3"},
  };
  for (const auto& [body, message] : cases) {
    const absl::Status s = CompletionError(body);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_NE(s.message().find(message), std::string::npos) << body << " -> " << s.message();
    EXPECT_FALSE(ParamOf(s.message()).empty()) << s.message();
  }
  EXPECT_EQ(CompletionError(R"({"model": "other", "prompt": "x"})").code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(CompletionError(std::string(100, '[') + std::string(100, ']')).message(),
            "body: JSON nested deeper than 64 levels");
}

TEST(OpenAiRequestTest, ReadsChatMessages) {
  auto p = ParseChatRequest(R"({"messages": [{"role": "system", "content": "s"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null}], "add_generation_prompt": false,
      "max_completion_tokens": 3, "logprobs": true, "top_logprobs": 2})",
                            "m");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->messages.size(), 3u);
  EXPECT_EQ(p->messages[1].content, "ab");
  EXPECT_FALSE(p->add_generation_prompt);
  EXPECT_EQ(p->common.max_tokens, 3);
  EXPECT_EQ(p->common.top_logprobs, 2);
  const absl::Status role =
      ParseChatRequest(R"({"messages": [{"role": "wizard", "content": "x"}]})", "m").status();
  EXPECT_EQ(role.message(), "messages[0].role: \"wizard\" is not one of system, user, assistant");
  json many = {{"messages", json::array()}};
  for (int i = 0; i < 10000; ++i) many["messages"].push_back({{"role", "user"}, {"content", "x"}});
  EXPECT_EQ(ParseChatRequest(many.dump(), "m").status().message(),
            "messages: 10000 messages; at most 2048");
}

TEST(OpenAiRequestTest, EngineRequestsUseTheEngineChecksUnderOpenAiNames) {
  CommonParams p;
  p.top_p = 1.0000001f;
  const EngineDefaults defaults{nullptr, {100, 64}, 16};
  auto r = ToEngineRequest(p, {1, 2}, defaults, "id", 0, 5);
  EXPECT_EQ(r.status().message(), "top_p: 1.0000001 must be in (0, 1]");
  p.top_p = 1;
  p.seed = 10;
  r = ToEngineRequest(p, {1, 2}, defaults, "id", 2, 5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->sampling.seed, 12u);  // choice i: seed + i
  EXPECT_EQ(r->stopping.max_new_tokens, 16);
  p.max_tokens = 100;
  EXPECT_EQ(ToEngineRequest(p, {1, 2}, defaults, "id", 0, 5).status().message(),
            "max_tokens: 100 plus the prompt's 2 tokens exceeds max_model_len 64");
}

TEST(OpenAiRequestTest, AnOverLongPromptIsNamedAsSent) {
  const CommonParams p;
  const EngineDefaults defaults{nullptr, {100, 64}, 16};
  const std::vector<int32_t> long_prompt(70, 1);
  const absl::Status completion = ToEngineRequest(p, long_prompt, defaults, "id", 0, 5).status();
  EXPECT_EQ(ParamOf(completion.message()), "prompt") << completion;
  const absl::Status chat =
      ToEngineRequest(p, long_prompt, defaults, "id", 0, 5, "messages").status();
  EXPECT_EQ(ParamOf(chat.message()), "messages") << chat;
  EXPECT_EQ(ErrorBody(400, chat.message())["error"]["param"], "messages");
}

TEST(OpenAiFormatTest, ErrorObjectsAndStatuses) {
  const json e = ErrorBody(400, "top_p: 2 must be in (0, 1]");
  EXPECT_EQ(e["error"]["param"], "top_p");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_TRUE(e["error"]["code"].is_null());
  EXPECT_EQ(ErrorBody(404, "model: \"x\" is not served here")["error"]["code"], "model_not_found");
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnauthenticated), 401);
}

TEST(OpenAiFormatTest, ChatStreamAndBody) {
  CommonParams p;
  p.n = 1;
  p.include_usage = true;
  auto builder = MakeChatBuilder({"chatcmpl-1", "m", 5, nullptr}, p);
  const auto start = builder->StreamStart();
  ASSERT_EQ(start.size(), 1u);
  EXPECT_EQ(start[0]["choices"][0]["delta"]["role"], "assistant");
  Delta d{0, {}};
  d.event.text = "Hi";
  auto chunk = builder->StreamEvent(d);
  ASSERT_TRUE(chunk);
  EXPECT_EQ((*chunk)["object"], "chat.completion.chunk");
  EXPECT_EQ((*chunk)["choices"][0]["delta"]["content"], "Hi");
  EXPECT_TRUE((*chunk)["usage"].is_null());
  Delta last{0, {}};
  last.event.finish = FinishReason::kEos;
  last.event.prompt_tokens = 3;
  last.event.completion_tokens = 2;
  chunk = builder->StreamEvent(last);
  EXPECT_EQ((*chunk)["choices"][0]["finish_reason"], "stop");
  const auto end = builder->StreamEnd();
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0]["usage"]["total_tokens"], 5);
  EXPECT_TRUE(end[0]["choices"].empty());
  const json body = builder->Body();
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Hi");
  EXPECT_EQ(body["object"], "chat.completion");
}

TEST(OpenAiFormatTest, CompletionEchoAndLogprobShapes) {
  CommonParams p;
  p.top_logprobs = 1;
  auto builder = MakeCompletionBuilder({"cmpl-1", "m", 5, nullptr}, p, true, "ab");
  Delta d{0, {}};
  d.event.text = "c";
  d.event.finish = FinishReason::kLength;
  d.event.logprobs = {{7, -0.5f, {{7, -0.5f}}}};
  d.event.prompt_logprobs = {{1, 0, {}}, {2, -1.0f, {{3, -0.1f}}}};
  builder->Add(d);
  const json choice = builder->Body()["choices"][0];
  EXPECT_EQ(choice["text"], "abc");
  EXPECT_EQ(choice["finish_reason"], "length");
  const json& lp = choice["logprobs"];
  EXPECT_EQ(lp["tokens"].size(), 3u);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_EQ(lp["token_logprobs"][2], -0.5f);
  EXPECT_EQ(lp["top_logprobs"][1]["token_id:3"], -0.1f);
}

}  // namespace
}  // namespace gqa::http
