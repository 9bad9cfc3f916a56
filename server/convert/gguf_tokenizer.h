// A GGUF file's vocabulary (tokenizer.ggml.*) as Hugging Face tokenizer files: tokenizer.json,
// with the pre-tokenizer of the model family that `tokenizer.ggml.pre` names, and
// tokenizer_config.json (BOS/EOS tokens, add_bos_token, the chat template).
#pragma once

#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "convert/gguf.h"
#include "nlohmann/json.hpp"

namespace gqa {

struct GgufTokenizerFiles {
  nlohmann::json tokenizer;         // tokenizer.json
  nlohmann::json tokenizer_config;  // tokenizer_config.json
  int vocab_size = 0;
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;  // EOS, then end-of-turn/end-of-message when distinct
};

// Byte-level BPE vocabularies (tokenizer.ggml.model "gpt2") whose pre-tokenizer is one of:
// "default"/"gpt-2", "smollm"/"starcoder", "llama-bpe"/"llama3"/"llama-v3" (Llama 3), "qwen2";
// and SentencePiece BPE vocabularies ("llama": Llama 2, Mistral, TinyLlama), whose merges are
// rebuilt from the piece scores as transformers does. Anything else is refused with a message
// naming the value.
absl::StatusOr<GgufTokenizerFiles> GgufTokenizerToJson(const GgufFile& file, int context_length);

}  // namespace gqa
