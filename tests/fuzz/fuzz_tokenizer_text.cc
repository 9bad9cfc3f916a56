// libFuzzer: text from fuzz bytes through a trained byte-level tokenizer (encode, decode, stream),
// and the same bytes read as token ids, decoded and streamed.
#include <string_view>

#include "fuzz_util.h"
#include "tokenizer/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const gqa::Tokenizer& tokenizer = gqa::fuzz::TrainedTokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tokenizer.Encode(text);
  // Byte-level BPE round-trips any valid UTF-8; invalid bytes decode as U+FFFD, as in tokenizers.
  if (tokenizer.Decode(ids) != gqa::Utf8Lossy(text)) std::abort();
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 1 < size; i += 2) {
    raw.push_back(static_cast<int32_t>((data[i] | (data[i + 1] << 8)) % tokenizer.vocab_size()));
  }
  const std::string decoded = tokenizer.Decode(raw);
  gqa::IncrementalDetokenizer stream(&tokenizer);
  std::string streamed;
  for (int32_t id : raw) streamed += stream.Add({id});
  streamed += stream.Flush();
  if (streamed != decoded) std::abort();  // streaming promises the full decode
  return 0;
}
