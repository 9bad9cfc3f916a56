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
  for (const std::string text :
       {fuzz_crash, std::string("\xff"), std::string("a\xf2:b"), std::string("\xe2\x82"),
        std::string("ok \xed\xa0\x80 surrogate")}) {
    const std::vector<int32_t> ids = (*tokenizer)->Encode(text);
    EXPECT_EQ((*tokenizer)->Decode(ids), Utf8Lossy(text));
    EXPECT_EQ(ids, (*tokenizer)->Encode(Utf8Lossy(text)));
  }
}

}  // namespace
}  // namespace gqa
