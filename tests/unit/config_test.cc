#include "model/config.h"

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;

json LlamaDoc() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0,
    "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16", "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": false,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
}

TEST(ConfigTest, ParsesLlama3) {
  auto c = ParseModelConfig(LlamaDoc(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->group_size(), 4);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rope_scaling.type, kernels::RopeScalingType::kLlama3);
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 8.0f);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_FALSE(c->qkv_bias);
}

TEST(ConfigTest, KvHeadsDefaultToHeadsAndHeadDimToHiddenOverHeads) {
  json doc = LlamaDoc();
  doc.erase("num_key_value_heads");
  auto c = ParseModelConfig(doc, "config.json");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->group_size(), 1);
}

TEST(ConfigTest, ExplicitHeadDim) {
  json doc = LlamaDoc();
  doc["head_dim"] = 64;
  auto c = ParseModelConfig(doc, "config.json");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->q_size(), 32 * 64);
}

TEST(ConfigTest, Qwen2HasQkvBiasAndMistralWindow) {
  json doc = LlamaDoc();
  doc["architectures"] = {"Qwen2ForCausalLM"};
  auto q = ParseModelConfig(doc, "config.json");
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(q->qkv_bias);
  EXPECT_FALSE(q->o_bias);
  doc["architectures"] = {"MistralForCausalLM"};
  doc["sliding_window"] = 4096;
  auto m = ParseModelConfig(doc, "config.json");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->sliding_window, 4096);
}

TEST(ConfigTest, RefusesUnsupportedArchitecture) {
  json doc = LlamaDoc();
  doc["architectures"] = {"GPT2LMHeadModel"};
  auto c = ParseModelConfig(doc, "/m/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("/m/config.json"), std::string::npos);
  EXPECT_NE(c.status().message().find("GPT2LMHeadModel"), std::string::npos);
}

// Found by fuzzing (fuzz_gguf, then checked for config.json): a layer count of 2^30 allocated a
// tensor list of that length; fields of the wrong JSON type threw out of the parser; a float
// where an integer belongs was converted with undefined behaviour.
TEST(ConfigTest, HostileFieldsAreErrorsNamingTheFile) {
  const std::vector<std::pair<const char*, json>> cases = {
      {"num_hidden_layers", 100000},
      {"torch_dtype", json::array({1, 2})},
      {"rope_scaling", {{"rope_type", "llama3"}, {"original_max_position_embeddings", 4.5e33}}},
      {"rope_scaling", {{"rope_type", "llama3"}, {"original_max_position_embeddings", "8k"}}},
      {"architectures", "LlamaForCausalLM"},
  };
  for (const auto& [key, value] : cases) {
    json doc = LlamaDoc();
    doc[key] = value;
    auto c = ParseModelConfig(doc, "/m/config.json");
    ASSERT_FALSE(c.ok()) << key << " = " << value.dump();
    EXPECT_EQ(c.status().message().rfind("/m/config.json: ", 0), 0u) << c.status();
  }
  json doc = LlamaDoc();
  doc["gqa_conversion"] = {{"source_num_key_value_heads", 1e40}};
  auto c = ParseModelConfig(doc, "/m/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->converted_from_kv_heads.has_value());
}

TEST(ConfigTest, RefusesHeadsNotDivisibleByKvHeads) {
  json doc = LlamaDoc();
  doc["num_key_value_heads"] = 5;
  auto c = ParseModelConfig(doc, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("not divisible by num_key_value_heads"), std::string::npos);
}

TEST(ConfigTest, RefusesMissingAndBadFields) {
  for (const char* key : {"hidden_size", "num_hidden_layers", "vocab_size"}) {
    json doc = LlamaDoc();
    doc.erase(key);
    auto c = ParseModelConfig(doc, "config.json");
    ASSERT_FALSE(c.ok()) << key;
    EXPECT_NE(c.status().message().find(key), std::string::npos);
  }
  json doc = LlamaDoc();
  doc["num_attention_heads"] = -4;
  EXPECT_FALSE(ParseModelConfig(doc, "config.json").ok());
  doc = LlamaDoc();
  doc["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_FALSE(ParseModelConfig(doc, "config.json").ok());
  doc = LlamaDoc();
  doc["hidden_act"] = "gelu";
  EXPECT_FALSE(ParseModelConfig(doc, "config.json").ok());
}

TEST(ConfigTest, RoundTripsThroughJson) {
  auto c = ParseModelConfig(LlamaDoc(), "config.json");
  ASSERT_TRUE(c.ok());
  auto again = ParseModelConfig(ModelConfigToJson(*c), "again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->num_kv_heads, c->num_kv_heads);
  EXPECT_EQ(again->eos_token_ids, c->eos_token_ids);
  EXPECT_EQ(again->rope_scaling.type, c->rope_scaling.type);
  EXPECT_EQ(again->rope_scaling.original_max_position_embeddings, 8192);
}

}  // namespace
}  // namespace gqa
