// The C++ tokenizer's behaviour on input `tokenizers` never sees (its parity tests are in
// tests/tokenizer/): invalid UTF-8. Found by fuzz_tokenizer_text: such text made the pre-tokenizer
// regex loop forever (PCRE2 runs without its UTF check), growing memory until the process died.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include "common/test_checkpoint.h"
#include "tokenizer/train_bpe.h"
#include "tokenizer/utf8.h"

namespace gqa {
namespace {

TEST(TokenizerTest, InvalidUtf8IsReadAsReplacementCharacters) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteTrainedTokenizer(dir.path(), 400).ok());
  auto tokenizer = Tokenizer::Load(dir.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::string fuzz_crash =
      "Digits\xf2: 01 x\xc2\xb2 +  = \xc2\xbe,\xab \xe2\xe2 \x85\x85\xb3, </s>\xe2\x91\xa9 "
      "\xe3\x80\x87.\n";
  for (const std::string& text :
       {fuzz_crash, std::string("\xff"), std::string("a\xf2:b"), std::string("\xe2\x82"),
        std::string("ok \xed\xa0\x80 surrogate")}) {
    const std::vector<int32_t> ids = (*tokenizer)->Encode(text);
    EXPECT_EQ((*tokenizer)->Decode(ids), Utf8Lossy(text));
    EXPECT_EQ(ids, (*tokenizer)->Encode(Utf8Lossy(text)));
  }
}

// Found by fuzz_tokenizer_json: a field of the wrong JSON type threw out of FromJson and ended the
// process (std::terminate) instead of giving a startup error; huge or negative ids sized tables;
// a float id was converted to int with undefined behaviour (UBSan).
TEST(TokenizerTest, MalformedTokenizerJsonIsAnErrorNamingIt) {
  const char* cases[] = {
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", ["b"]]]}})",
      R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 2147483647}, "merges": []}})",
      R"({"model": {"type": "BPE", "vocab": {"a": -5}, "merges": []}})",
      R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "added_tokens": [{"id": -1}]})",
      R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": 7}})",
      R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "decoder": {"type": "Strip"}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 4.58e33}, "merges": []}})",
      R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "added_tokens": [{"id": 1e40}]})",
      R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
          "decoder": {"type": "Strip", "content": " ", "start": 1e30}})",
  };
  for (const char* json : cases) {
    auto tokenizer = Tokenizer::FromJson(json, "fuzzed/tokenizer.json");
    ASSERT_FALSE(tokenizer.ok()) << json;
    EXPECT_EQ(tokenizer.status().message().rfind("fuzzed/tokenizer.json: ", 0), 0u)
        << tokenizer.status();
  }
}

}  // namespace
}  // namespace gqa
