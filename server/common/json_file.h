// Writing a JSON document to a file: what checkpoints, converted models and trained tokenizers
// all write.
#pragma once

#include <filesystem>

#include "absl/status/status.h"
#include "nlohmann/json_fwd.hpp"

namespace gqa {

// Writes `doc` pretty-printed to `path` (replacing it); an error naming the file on failure.
absl::Status WriteJsonFile(const std::filesystem::path& path, const nlohmann::json& doc);

}  // namespace gqa
