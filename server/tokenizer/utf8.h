// UTF-8 and byte-level helpers for the tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace gqa {

// Bytes in the UTF-8 sequence starting at text[pos] (1 for an invalid lead byte).
size_t Utf8Length(std::string_view text, size_t pos);

// GPT-2's byte-to-unicode map: every byte becomes a printable character (as UTF-8).
std::string BytesToByteLevel(std::string_view bytes);
// The inverse; characters outside the map keep their own UTF-8 bytes.
std::string ByteLevelToBytes(std::string_view text);

// Bytes as UTF-8 text, each maximal invalid subsequence replaced by U+FFFD (Rust's
// String::from_utf8_lossy, which `tokenizers` uses).
std::string Utf8Lossy(std::string_view bytes);
bool IsValidUtf8(std::string_view bytes);

// The ByteFallback decoder: runs of "<0xXX>" tokens become their bytes when those are valid
// UTF-8, else one U+FFFD per byte.
std::vector<std::string> ByteFallbackTokens(const std::vector<std::string>& tokens);

bool EndsWithReplacement(std::string_view text);

}  // namespace gqa
