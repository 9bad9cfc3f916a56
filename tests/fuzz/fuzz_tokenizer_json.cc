// libFuzzer: a tokenizer.json from fuzz bytes; when it loads, encode and decode a fixed text.
#include <string_view>

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tokenizer =
      gqa::Tokenizer::FromJson(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!tokenizer.ok()) return 0;
  const std::vector<int32_t> ids = (*tokenizer)->EncodePrompt("Hello, world! 123 ünï 日本 😀\n\t");
  (void)(*tokenizer)->Decode(ids);
  gqa::IncrementalDetokenizer stream(tokenizer->get());
  for (int32_t id : ids) (void)stream.Add({id});
  (void)stream.Flush();
  return 0;
}
