#include "common/dashed_flags.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/flags/reflection.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace gqa {
namespace {

bool IsDefinedFlag(const std::string& name) {
  if (absl::FindCommandLineFlag(name) != nullptr) return true;
  return name.starts_with("no") && absl::FindCommandLineFlag(name.substr(2)) != nullptr;
}

// Flags defined outside Abseil, whose files absl names "absl/..." or "./absl/...".
bool IsProgramFlagFile(absl::string_view file) {
  return !absl::StartsWith(file, "absl/") && !absl::StartsWith(file, "./absl/") &&
         !absl::StrContains(file, "/absl/");
}

}  // namespace

void ShowProgramFlagsInHelp() {
  absl::FlagsUsageConfig config;
  config.contains_helpshort_flags = IsProgramFlagFile;
  config.contains_help_flags = IsProgramFlagFile;
  config.contains_helppackage_flags = IsProgramFlagFile;
  absl::SetFlagsUsageConfig(config);
}

void AcceptDashedFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* arg = argv[i];
    if (std::strcmp(arg, "--") == 0) return;
    if (std::strncmp(arg, "--", 2) != 0) continue;
    char* name = arg + 2;
    char* name_end = name + std::strcspn(name, "=");
    std::string underscored(name, name_end);
    std::replace(underscored.begin(), underscored.end(), '-', '_');
    if (underscored != std::string(name, name_end) && IsDefinedFlag(underscored)) {
      std::copy(underscored.begin(), underscored.end(), name);
    }
  }
}

}  // namespace gqa
