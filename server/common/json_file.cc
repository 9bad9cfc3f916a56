#include "common/json_file.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace gqa {

absl::Status WriteJsonFile(const std::filesystem::path& path, const nlohmann::json& doc) {
  std::string text;
  try {
    text = doc.dump(2);
  } catch (const nlohmann::json::exception& e) {  // a string that is not UTF-8
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", e.what()));
  }
  std::ofstream out(path, std::ios::trunc);
  out << text << "\n";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path.string(), ": write failed"));
  return absl::OkStatus();
}

}  // namespace gqa
