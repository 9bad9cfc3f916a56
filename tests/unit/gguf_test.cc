// The GGUF reader on files built byte by byte: a valid file reads back exactly, and every
// truncation or corrupted count, length, rank, type or offset is an error naming the file, never a
// crash or a huge allocation. (Bitwise dequantization of every type against the `gguf` package
// is tests/parity/test_gguf.py.)
#include "convert/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/test_checkpoint.h"

namespace gqa {
namespace {

// Little-endian GGUF bytes, appended field by field.
class GgufBytes {
 public:
  template <typename T>
  GgufBytes& Put(T value) {
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof value);
    std::memcpy(bytes_.data() + at, &value, sizeof value);
    return *this;
  }
  GgufBytes& String(const std::string& text) {
    Put<uint64_t>(text.size());
    bytes_.insert(bytes_.end(), text.begin(), text.end());
    return *this;
  }
  GgufBytes& PadTo(size_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back(0);
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  const std::string& bytes() const { return bytes_; }
  std::string& mutable_bytes() { return bytes_; }

 private:
  std::string bytes_;
};

struct Layout {
  size_t tensor_count_at, kv_count_at, array_length_at, rank_at, type_at, offset_at;
};

// A file with three metadata values and one [2, 32] Q8_0 tensor whose scale is 0.5 and whose
// quants are 0..63 minus 32.
GgufBytes ValidFile(Layout* layout) {
  GgufBytes b;
  b.Put<uint32_t>(0x46554747u).Put<uint32_t>(3);
  layout->tensor_count_at = b.size();
  b.Put<uint64_t>(1);
  layout->kv_count_at = b.size();
  b.Put<uint64_t>(3);
  b.String("general.architecture").Put<uint32_t>(8).String("llama");
  b.String("llama.block_count").Put<uint32_t>(4).Put<uint32_t>(30);
  b.String("tokenizer.ggml.tokens").Put<uint32_t>(9).Put<uint32_t>(8);
  layout->array_length_at = b.size();
  b.Put<uint64_t>(2).String("a").String("b");
  b.String("blk.0.attn_q.weight");
  layout->rank_at = b.size();
  b.Put<uint32_t>(2).Put<uint64_t>(32).Put<uint64_t>(2);
  layout->type_at = b.size();
  b.Put<uint32_t>(8);
  layout->offset_at = b.size();
  b.Put<uint64_t>(0);
  b.PadTo(32);
  for (int block = 0; block < 2; ++block) {
    b.Put<uint16_t>(0x3800);  // fp16 0.5
    for (int j = 0; j < 32; ++j) b.Put<int8_t>(static_cast<int8_t>(block * 32 + j - 32));
  }
  return b;
}

class GgufTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<GgufFile>> OpenBytes(const std::string& bytes) {
    const auto path = dir_.path() / "model.gguf";
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
    return GgufFile::Open(path);
  }
  testing::TempDir dir_;
};

TEST_F(GgufTest, ReadsMetadataAndTensors) {
  Layout layout;
  auto file = OpenBytes(ValidFile(&layout).bytes());
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(*f.Find("general.architecture")->AsString(), "llama");
  EXPECT_EQ(f.Find("llama.block_count")->AsInt(), 30);
  ASSERT_NE(f.Find("tokenizer.ggml.tokens")->AsArray(), nullptr);
  EXPECT_EQ(f.Find("tokenizer.ggml.tokens")->AsArray()->size(), 2u);
  EXPECT_EQ(f.Find("missing"), nullptr);
  const GgufTensor* tensor = f.FindTensor("blk.0.attn_q.weight");
  ASSERT_NE(tensor, nullptr);
  EXPECT_EQ(tensor->type, GgmlType::kQ8_0);
  EXPECT_EQ(tensor->torch_shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(tensor->nbytes, 68u);
  std::vector<float> values(64);
  DequantizeToFloat(tensor->type, tensor->data, 64, values.data());
  for (int i = 0; i < 64; ++i) EXPECT_EQ(values[i], 0.5f * float(i - 32)) << i;
}

TEST_F(GgufTest, EveryTruncationIsAnErrorNamingTheFile) {
  Layout layout;
  const std::string bytes = ValidFile(&layout).bytes();
  for (size_t length = 0; length < bytes.size(); ++length) {
    auto file = OpenBytes(bytes.substr(0, length));
    ASSERT_FALSE(file.ok()) << "a file cut at byte " << length << " was accepted";
    EXPECT_NE(file.status().message().find("model.gguf"), std::string::npos) << file.status();
  }
}

TEST_F(GgufTest, CorruptFieldsAreRefused) {
  struct Corruption {
    const char* what;
    size_t Layout::*field;
    uint64_t value;
    int width;
    const char* expect;
  };
  const Corruption corruptions[] = {
      {"tensor count", &Layout::tensor_count_at, 1ull << 60, 8, "counts exceed"},
      {"metadata count", &Layout::kv_count_at, 1ull << 60, 8, "counts exceed"},
      {"array length", &Layout::array_length_at, 1ull << 61, 8, "exceeds the file"},
      {"rank", &Layout::rank_at, 5, 4, "rank 5"},
      {"type", &Layout::type_at, 99, 4, "unknown type 99"},
      {"offset", &Layout::offset_at, 7, 8, "not aligned"},
      {"offset past the end", &Layout::offset_at, 1ull << 40, 8, "past the end"},
  };
  for (const Corruption& c : corruptions) {
    Layout layout;
    GgufBytes b = ValidFile(&layout);
    std::memcpy(b.mutable_bytes().data() + layout.*(c.field), &c.value, c.width);
    auto file = OpenBytes(b.bytes());
    ASSERT_FALSE(file.ok()) << c.what;
    EXPECT_NE(file.status().message().find(c.expect), std::string::npos)
        << c.what << ": " << file.status();
  }
  auto not_gguf = OpenBytes("GGML and then some bytes that are not a GGUF header at all");
  ASSERT_FALSE(not_gguf.ok());
  EXPECT_NE(not_gguf.status().message().find("magic"), std::string::npos);
}

TEST(GgmlTypesTest, NamesAndLayouts) {
  EXPECT_EQ(GgmlTypeName(12), "Q4_K");
  EXPECT_EQ(GgmlTypeName(16), "IQ2_XXS");
  EXPECT_EQ(GgmlTypeName(77), "type 77");
  EXPECT_TRUE(DequantizableLayout(14).has_value());   // Q6_K
  EXPECT_FALSE(DequantizableLayout(16).has_value());  // IQ2_XXS
  EXPECT_EQ(GgmlLayout(16)->bytes, 66);               // measurable all the same
  EXPECT_FALSE(GgmlLayout(77).has_value());
}

}  // namespace
}  // namespace gqa
