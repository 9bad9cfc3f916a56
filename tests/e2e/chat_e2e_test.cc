// prompt.messages end to end: a model whose tokenizer_config.json has a chat template renders the
// conversation, tokenizes it as is and generates; the template's raise_exception and a model
// without a template are INVALID_ARGUMENT naming prompt.messages; a template we cannot render
// stops the startup with one line naming the file and the construct.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "chat_template/chat_template.h"
#include "common/generate_client.h"
#include "common/test_checkpoint.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "server_process.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/train_bpe.h"

namespace gqa::testing {
namespace {

namespace pb = gqa::v1;

constexpr char kTemplate[] =
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'system' and not loop.first %}{{ raise_exception('system goes first') }}"
    "{% endif %}<|{{ m.role }}|>\n{{ m.content | trim }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

// A random model with a trained tokenizer; `chat_template` (when not empty) written into its
// tokenizer_config.json.
void WriteChatModel(const std::filesystem::path& dir, const std::string& chat_template) {
  ModelConfig config = E2eConfig(2);
  config.vocab_size = 400;
  WriteRandomCheckpoint(dir, config, std::random_device{}());
  ASSERT_TRUE(WriteTrainedTokenizer(dir, config.vocab_size).ok());
  if (chat_template.empty()) return;
  const auto path = dir / "tokenizer_config.json";
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(path));
  cfg["chat_template"] = chat_template;
  std::ofstream(path) << cfg.dump(2);
}

pb::GenerateRequest ChatRequest(std::vector<std::pair<std::string, std::string>> turns,
                                std::optional<bool> add_generation_prompt = std::nullopt) {
  pb::GenerateRequest req;
  req.mutable_messages();  // the prompt form, even with no turns
  for (const auto& [role, content] : turns) {
    auto* m = req.mutable_messages()->add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  if (add_generation_prompt)
    req.mutable_messages()->set_add_generation_prompt(*add_generation_prompt);
  req.mutable_stopping()->set_max_new_tokens(4);
  req.mutable_stopping()->set_ignore_eos(true);
  return req;
}

struct Result {
  grpc::Status status;
  uint32_t prompt_tokens = 0;
};

Result Generate(pb::Generation::Stub& stub, const pb::GenerateRequest& request) {
  const GenerateOutcome out = GenerateAll(stub, request);
  return Result{out.status, out.usage.prompt_tokens()};
}

TEST(ChatE2eTest, MessagesAreRenderedWithTheTemplateThenTokenizedAsIs) {
  TempDir model;
  WriteChatModel(model.path(), kTemplate);
  ServerProcess server(model.path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  EXPECT_NE(server.Log().find("chat template: from"), std::string::npos) << server.Log();
  auto tokenizer = Tokenizer::Load(model.path());
  ASSERT_TRUE(tokenizer.ok());
  auto loaded = chat::LoadChatTemplate(model.path());
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  auto stub = server.Stub();
  for (const std::optional<bool> add : {std::optional<bool>(), std::optional<bool>(false)}) {
    const std::vector<std::pair<std::string, std::string>> turns = {
        {"system", "Be brief."}, {"user", " Hello there "}, {"assistant", "Hi"}, {"user", "Bye"}};
    Result out = Generate(*stub, ChatRequest(turns, add));
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    std::vector<chat::ChatMessage> messages;
    for (const auto& [role, content] : turns) messages.push_back({role, content});
    const std::string rendered = *(*loaded)->Render(messages, add.value_or(true));
    EXPECT_EQ(rendered.rfind("<s><|system|>\nBe brief.</s>\n<|user|>\nHello there</s>", 0), 0u);
    EXPECT_EQ(out.prompt_tokens, (*tokenizer)->Encode(rendered).size()) << rendered;
  }
}

TEST(ChatE2eTest, RaiseExceptionAndMissingTemplateAreInvalidArgumentNamingTheField) {
  TempDir model;
  WriteChatModel(model.path(), kTemplate);
  ServerProcess server(model.path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  auto stub = server.Stub();
  Result raised = Generate(*stub, ChatRequest({{"user", "a"}, {"system", "late"}}));
  EXPECT_EQ(raised.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(raised.status.error_message(),
            "prompt.messages: the chat template refused it: system goes first");
  Result empty = Generate(*stub, ChatRequest({}));
  EXPECT_EQ(empty.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(empty.status.error_message().rfind("prompt.messages.messages", 0), 0u);

  TempDir plain;
  WriteChatModel(plain.path(), "");
  ServerProcess no_template(plain.path(), {});
  ASSERT_TRUE(no_template.started()) << no_template.Log();
  EXPECT_NE(no_template.Log().find("no chat template"), std::string::npos) << no_template.Log();
  Result refused = Generate(*no_template.Stub(), ChatRequest({{"user", "hi"}}));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      refused.status.error_message().rfind("prompt.messages: this model has no chat template", 0),
      0u)
      << refused.status.error_message();
}

TEST(ChatE2eTest, TemplateWeCannotRenderStopsStartupWithOneLineNamingFileAndConstruct) {
  TempDir model;
  WriteChatModel(model.path(),
                 "{% for m in messages %}\n{{ m.content | wordwrap(5) }}{% endfor %}");
  auto [code, output] = RunCommand({ServerBin(), "--model=" + model.path().string(), "--port=0",
                                    "--metrics_port=0", "--http_port=0"});
  EXPECT_NE(code, 0);
  const std::vector<std::string> errors = ErrorLines(output);
  ASSERT_EQ(errors.size(), 1u) << output;
  EXPECT_NE(errors[0].find((model.path() / "tokenizer_config.json").string()), std::string::npos)
      << output;
  EXPECT_NE(errors[0].find("the filter 'wordwrap' is not supported (line 2)"), std::string::npos)
      << output;
}

TEST(ChatE2eTest, CliSendsOneUserMessage) {
  TempDir model;
  WriteChatModel(model.path(), kTemplate);
  ServerProcess server(model.path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  auto [code, output] = RunCommand({CliBin(), "--server=" + server.address(), "--chat=Hello",
                                    "--system=Be brief.", "--max_new_tokens=3", "--json"});
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("prompt_tokens"), std::string::npos) << output;
  auto [bad_code, bad_output] =
      RunCommand({CliBin(), "--server=" + server.address(), "--messages=[{\"role\": 1}]"});
  EXPECT_NE(bad_code, 0);
  EXPECT_NE(bad_output.find("--messages"), std::string::npos) << bad_output;
}

}  // namespace
}  // namespace gqa::testing
