#include "tokenizer/utf8.h"

#include <array>
#include <unordered_map>

namespace gqa {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

std::string EncodeCodePoint(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

struct ByteLevelTables {
  std::array<std::string, 256> encode;
  std::unordered_map<std::string, uint8_t> decode;
  ByteLevelTables() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
      encode[b] = EncodeCodePoint(cp);
      decode[encode[b]] = uint8_t(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

// Length of the valid UTF-8 sequence at pos (0 if none), and how many bytes form the maximal
// prefix of a valid sequence when it is not (at least 1).
size_t ValidSequence(std::string_view s, size_t pos, size_t* invalid_run) {
  const uint8_t b0 = uint8_t(s[pos]);
  *invalid_run = 1;
  if (b0 < 0x80) return 1;
  int need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (int i = 1; i <= need; ++i) {
    if (pos + i >= s.size()) return 0;
    const uint8_t b = uint8_t(s[pos + i]);
    const uint8_t low = i == 1 ? lo : 0x80, high = i == 1 ? hi : 0xBF;
    if (b < low || b > high) return 0;
    *invalid_run = i + 1;
  }
  return need + 1;
}

}  // namespace

size_t Utf8Length(std::string_view text, size_t pos) {
  size_t run;
  const size_t n = ValidSequence(text, pos, &run);
  return n ? n : 1;
}

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += Tables().encode[b];
  return out;
}

std::string ByteLevelToBytes(std::string_view text) {
  std::string out;
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = Utf8Length(text, pos);
    const std::string ch(text.substr(pos, len));
    auto it = Tables().decode.find(ch);
    if (it != Tables().decode.end()) {
      out += char(it->second);
    } else {
      out += ch;
    }
    pos += len;
  }
  return out;
}

bool IsValidUtf8(std::string_view bytes) {
  for (size_t pos = 0; pos < bytes.size();) {
    size_t run;
    const size_t n = ValidSequence(bytes, pos, &run);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t pos = 0; pos < bytes.size();) {
    size_t run;
    const size_t n = ValidSequence(bytes, pos, &run);
    if (n) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out.append(kReplacement);
      pos += run;
    }
  }
  return out;
}

std::vector<std::string> ByteFallbackTokens(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string pending;  // bytes of consecutive <0xXX> tokens
  size_t pending_count = 0;
  auto flush = [&] {
    if (pending_count == 0) return;
    const std::string text = Utf8Lossy(pending);
    if (text.find(kReplacement) == std::string::npos || text == pending) {
      out.push_back(text);
    } else {
      for (size_t i = 0; i < pending_count; ++i) out.emplace_back(kReplacement);
    }
    pending.clear();
    pending_count = 0;
  };
  for (const std::string& t : tokens) {
    unsigned value;
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
        std::sscanf(t.c_str() + 3, "%2X", &value) == 1) {
      pending += char(value);
      ++pending_count;
      continue;
    }
    flush();
    out.push_back(t);
  }
  flush();
  return out;
}

bool EndsWithReplacement(std::string_view text) {
  return text.size() >= kReplacement.size() &&
         text.substr(text.size() - kReplacement.size()) == kReplacement;
}

}  // namespace gqa
