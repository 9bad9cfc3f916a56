#include "model/checkpoint.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/test_checkpoint.h"
#include "convert/checkpoint_writer.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using testing::TempDir;
using testing::TinyConfig;
using testing::WriteRandomCheckpoint;

std::string Load(const std::filesystem::path& dir) {
  auto c = Checkpoint::Load(dir, LoadFormat::kSafetensors);
  return c.ok() ? "" : std::string(c.status().message());
}

void ExpectError(const std::filesystem::path& dir, std::initializer_list<std::string> parts) {
  const std::string message = Load(dir);
  ASSERT_FALSE(message.empty()) << "loaded a broken checkpoint";
  for (const auto& p : parts) EXPECT_NE(message.find(p), std::string::npos) << message;
}

// Writes the checkpoint with `edit` applied to its tensor list first.
void WriteEdited(const std::filesystem::path& dir, const ModelConfig& c,
                 const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  static std::vector<std::vector<std::byte>> storage;
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : ExpectedTensors(c)) {
    storage.push_back(RandomTensorBytes(spec, c, c.dtype, 3));
    tensors.push_back(
        {spec.name, c.dtype, spec.shape, storage.back().data(), storage.back().size()});
  }
  edit(tensors);
  ASSERT_TRUE(WriteCheckpoint(dir, c, tensors, {}).ok());
}

TEST(CheckpointTest, LoadsEveryDtypeAndShards) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    TempDir dir;
    WriteRandomCheckpoint(dir.path(), TinyConfig(2, dtype), 1, /*max_shard_bytes=*/20000);
    EXPECT_TRUE(std::filesystem::exists(dir.path() / "model.safetensors.index.json"));
    auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_EQ((*ckpt)->Get("model.layers.1.self_attn.k_proj.weight").shape,
              (std::vector<int64_t>{16, 64}));
    EXPECT_EQ((*ckpt)->Get("model.norm.weight").dtype, dtype);
  }
}

TEST(CheckpointTest, DummyWeightsNeedOnlyConfig) {
  TempDir dir;
  WriteRandomCheckpoint(dir.path(), TinyConfig(1));
  std::filesystem::remove(dir.path() / "model.safetensors");
  EXPECT_FALSE(Load(dir.path()).empty());
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kDummy, 5);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->config().num_kv_heads, 1);
  EXPECT_GT((*ckpt)->weight_bytes(), 0u);
}

TEST(CheckpointTest, MissingTensor) {
  TempDir dir;
  WriteEdited(dir.path(), TinyConfig(), [](auto& t) {
    std::erase_if(t, [](auto& x) { return x.name == "model.layers.1.mlp.up_proj.weight"; });
  });
  ExpectError(dir.path(), {dir.path().string(), "model.layers.1.mlp.up_proj.weight", "missing"});
}

TEST(CheckpointTest, ExtraTensor) {
  TempDir dir;
  static float extra[4] = {1, 2, 3, 4};
  WriteEdited(dir.path(), TinyConfig(), [](auto& t) {
    t.push_back({"model.layers.0.self_attn.rogue.weight", DType::kF32, {4}, extra, sizeof extra});
  });
  ExpectError(dir.path(), {"model.safetensors", "model.layers.0.self_attn.rogue.weight"});
}

TEST(CheckpointTest, WrongShape) {
  TempDir dir;
  WriteEdited(dir.path(), TinyConfig(), [](auto& t) {
    for (auto& x : t) {
      if (x.name == "model.layers.0.self_attn.v_proj.weight") x.shape = {64, 16};
    }
  });
  ExpectError(dir.path(), {"model.safetensors", "model.layers.0.self_attn.v_proj.weight",
                           "[64, 16]", "expected [16, 64]"});
}

TEST(CheckpointTest, TruncatedFile) {
  TempDir dir;
  WriteRandomCheckpoint(dir.path(), TinyConfig());
  const auto file = dir.path() / "model.safetensors";
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 100);
  ExpectError(dir.path(), {"model.safetensors", "truncated"});
}

TEST(CheckpointTest, CorruptHeader) {
  TempDir dir;
  WriteRandomCheckpoint(dir.path(), TinyConfig());
  const auto file = dir.path() / "model.safetensors";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("#garbage#", 9);
  }
  ExpectError(dir.path(), {"model.safetensors", "header"});
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t huge = 1ull << 40;
    f.write(reinterpret_cast<const char*>(&huge), 8);
  }
  ExpectError(dir.path(), {"model.safetensors", "header length"});
}

TEST(CheckpointTest, UnsupportedArchitectureAndIndivisibleHeads) {
  TempDir dir;
  WriteRandomCheckpoint(dir.path(), TinyConfig());
  auto edit_config = [&](const char* key, nlohmann::json value) {
    std::ifstream in(dir.path() / "config.json");
    nlohmann::json doc = nlohmann::json::parse(in);
    doc[key] = value;
    std::ofstream(dir.path() / "config.json") << doc.dump();
  };
  edit_config("num_key_value_heads", 3);
  ExpectError(dir.path(), {"config.json", "not divisible"});
  edit_config("num_key_value_heads", 2);
  edit_config("architectures", {"FalconForCausalLM"});
  ExpectError(dir.path(), {"config.json", "FalconForCausalLM"});
}

TEST(CheckpointTest, ShardMissingAnIndexedTensor) {
  TempDir dir;
  WriteRandomCheckpoint(dir.path(), TinyConfig(), 1, 20000);
  std::ifstream in(dir.path() / "model.safetensors.index.json");
  nlohmann::json index = nlohmann::json::parse(in);
  const std::string first_shard = index["weight_map"]["model.norm.weight"];
  index["weight_map"]["model.layers.0.phantom.weight"] = first_shard;
  std::ofstream(dir.path() / "model.safetensors.index.json") << index.dump();
  ExpectError(dir.path(), {"model.layers.0.phantom.weight", "missing"});
}

TEST(CheckpointTest, MissingConfig) {
  TempDir dir;
  ExpectError(dir.path(), {"config.json"});
}

TEST(DTypeTest, RoundTripsHalfAndBfloat16) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1e-5f, 3.0e-7f, 0.1f}) {
    EXPECT_NEAR(HalfToFloat(FloatToHalf(v)), v, std::abs(v) * 1e-3f + 6e-8f) << v;
    EXPECT_NEAR(BFloat16ToFloat(FloatToBFloat16(v)), v, std::abs(v) * 8e-3f) << v;
  }
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3c00);  // ties to even
}

}  // namespace
}  // namespace gqa
