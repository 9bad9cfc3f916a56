// Imports a llama.cpp GGUF checkpoint as a Hugging Face model directory the server loads:
// tensors dequantized to `dtype` under their Hugging Face names (llama.cpp's rotary permutation
// of Q and K undone), config.json from the `<arch>.*` metadata, the tokenizer files from
// `tokenizer.ggml.*`, generation_config.json with the EOS ids.
#pragma once

#include <cstdint>
#include <filesystem>

#include "absl/status/status.h"
#include "model/dtype.h"

namespace gqa {

struct GgufImportOptions {
  DType dtype = DType::kBF16;             // of every written tensor
  uint64_t max_shard_bytes = 5ull << 30;  // output shards of at most this size
};

// Architectures "llama" (Llama 1-3, Mistral, SmolLM2, TinyLlama, ...) and "qwen2"; tensor types
// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Anything else, a file
// that is broken or a dst that exists gives one error naming the file and what is wrong, and leaves
// nothing at dst. Streams one tensor at a time from the memory-mapped file.
absl::Status ImportGguf(const std::filesystem::path& gguf, const std::filesystem::path& dst,
                        const GgufImportOptions& options);

}  // namespace gqa
