#include "common/dashed_flags.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/flags/reflection.h"

namespace gqa {
namespace {

bool IsDefinedFlag(const std::string& name) {
  if (absl::FindCommandLineFlag(name) != nullptr) return true;
  return name.starts_with("no") && absl::FindCommandLineFlag(name.substr(2)) != nullptr;
}

}  // namespace

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
