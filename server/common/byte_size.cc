#include "common/byte_size.h"

#include <cctype>

namespace gqa {

bool ParseByteSize(const std::string& text, uint64_t* bytes) {
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0 || digits > 15) return false;
  const uint64_t value = std::stoull(text.substr(0, digits));
  const std::string unit = text.substr(digits);
  uint64_t scale;
  if (unit.empty() || unit == "B")
    scale = 1;
  else if (unit == "KiB")
    scale = 1ull << 10;
  else if (unit == "MiB")
    scale = 1ull << 20;
  else if (unit == "GiB")
    scale = 1ull << 30;
  else if (unit == "KB")
    scale = 1000;
  else if (unit == "MB")
    scale = 1000000;
  else if (unit == "GB")
    scale = 1000000000;
  else
    return false;
  *bytes = value * scale;
  return true;
}

}  // namespace gqa
