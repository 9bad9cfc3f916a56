// Every fixture family (tests/chat_template/fixtures/<family>/tokenizer_config.json, a model's
// template as it ships) rendered for every conversation and compared, byte for byte, with what
// transformers' apply_chat_template rendered (expected.json, from make_fixtures.py).
#include <filesystem>
#include <fstream>
#include <sstream>

#include "chat_template/chat_template.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace gqa::chat {
namespace {

const std::filesystem::path kFixtures = GQA_CHAT_FIXTURES;

nlohmann::json ReadJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

std::vector<std::string> Families() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(kFixtures)) {
    if (std::filesystem::exists(entry.path() / "expected.json")) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

class FixtureTest : public testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, RendersAsTransformers) {
  const std::filesystem::path dir = kFixtures / GetParam();
  absl::StatusOr<std::optional<LoadedChatTemplate>> loaded = LoadChatTemplate(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  const nlohmann::json conversations = ReadJson(kFixtures / ".." / "conversations.json");
  const nlohmann::json expected = ReadJson(dir / "expected.json")["cases"];
  ASSERT_EQ(conversations.size(), expected.size());
  for (size_t i = 0; i < conversations.size(); ++i) {
    const nlohmann::json& conversation = conversations[i];
    const nlohmann::json& want = expected[i];
    SCOPED_TRACE(conversation["name"].get<std::string>());
    std::vector<ChatMessage> messages;
    for (const auto& m : conversation["messages"]) {
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    absl::StatusOr<std::string> got =
        (*loaded)->Render(messages, conversation["add_generation_prompt"].get<bool>());
    if (want.contains("output")) {
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, want["output"].get<std::string>());
    } else {
      ASSERT_FALSE(got.ok()) << "rendered, transformers raised: " << want["error"];
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
      if (want["raised"].get<bool>()) {
        EXPECT_EQ(got.status().message(), want["error"].get<std::string>());
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FixtureTest, testing::ValuesIn(Families()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

TEST(FixtureTest, AtLeastEightFamilies) { EXPECT_GE(Families().size(), 8u); }

}  // namespace
}  // namespace gqa::chat
