// gqa-convert --kv-heads G [--max-shard-size 5GiB] SRC_DIR DST_DIR
// Turns a multi-head (or grouped-query) checkpoint into one with G KV heads by mean-pooling
// the key and value heads of each group. One error line and a non-zero exit on failure.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "common/byte_size.h"
#include "model/converter.h"

namespace {

int Usage() {
  std::cerr << "usage: gqa-convert --kv-heads G [--max-shard-size 5GiB] SRC_DIR DST_DIR\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  gqa::ConvertOptions options;
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--kv-heads" || arg == "--kv_heads") && i + 1 < argc) {
      char* end = nullptr;
      options.kv_heads = static_cast<int>(std::strtol(argv[++i], &end, 10));
      if (*end != '\0') return Usage();
    } else if ((arg == "--max-shard-size" || arg == "--max_shard_size") && i + 1 < argc) {
      if (!gqa::ParseByteSize(argv[++i], &options.max_shard_bytes)) return Usage();
    } else if (!arg.empty() && arg[0] == '-') {
      return Usage();
    } else {
      dirs.push_back(arg);
    }
  }
  if (dirs.size() != 2 || options.kv_heads == 0) return Usage();
  const absl::Status status = gqa::ConvertToGqa(dirs[0], dirs[1], options);
  if (!status.ok()) {
    std::cerr << "gqa-convert: " << status.message() << "\n";
    return 1;
  }
  std::cout << "gqa-convert: wrote " << dirs[1] << " with " << options.kv_heads << " KV heads\n";
  return 0;
}
