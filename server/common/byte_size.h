// Sizes given on the command line: "1073741824", "512MiB", "2GiB", "100MB".
#pragma once

#include <cstdint>
#include <string>

namespace gqa {

// False when the text is not a size.
bool ParseByteSize(const std::string& text, uint64_t* bytes);

}  // namespace gqa
