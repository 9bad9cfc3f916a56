// Reading a small whole file (certificates, keys, tokens) with an error that names it.
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/statusor.h"

namespace gqa {

// The file's bytes; an error naming the file when it cannot be read or exceeds max_bytes.
absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path,
                                         size_t max_bytes = 1 << 20);

}  // namespace gqa
