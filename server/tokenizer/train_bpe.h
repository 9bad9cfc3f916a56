// A small byte-level BPE trainer, for demo and test checkpoints that need a tokenizer.json
// without Python: <s> and </s> (ids 0 and 1, special), the 256 byte symbols, then merges of the
// most frequent adjacent pairs in the corpus until vocab_size.
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/status.h"

namespace gqa {

// Writes tokenizer.json (ByteLevel pre-tokenizer and decoder) and tokenizer_config.json
// (add_bos_token) into dir. corpus empty: a built-in English text.
absl::Status WriteTrainedTokenizer(const std::filesystem::path& dir, int vocab_size,
                                   const std::string& corpus = "");

}  // namespace gqa
