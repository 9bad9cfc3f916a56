// gqa-convert --kv-heads G [--max-shard-size 5GiB] SRC_DIR DST_DIR
//   Turns a multi-head (or grouped-query) checkpoint into one with G KV heads by mean-pooling
//   the key and value heads of each group.
// gqa-convert --from-gguf FILE [--dtype bf16|f16|f32] [--max-shard-size 5GiB] DST_DIR
//   Imports a llama.cpp GGUF checkpoint as a Hugging Face directory the server loads.
// One error line and a non-zero exit on failure; nothing is left at DST_DIR then.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "common/byte_size.h"
#include "convert/converter.h"
#include "convert/gguf_import.h"

namespace {

int Usage() {
  std::cerr << "usage: gqa-convert --kv-heads G [--max-shard-size 5GiB] SRC_DIR DST_DIR | "
               "--from-gguf FILE [--dtype bf16|f16|f32] [--max-shard-size 5GiB] DST_DIR\n";
  return 2;
}

struct Arguments {
  gqa::ConvertOptions convert;
  gqa::GgufImportOptions import;
  std::string gguf;
  std::vector<std::string> dirs;
};

bool Parse(int argc, char** argv, Arguments& args) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if ((arg == "--kv-heads" || arg == "--kv_heads") && has_value) {
      char* end = nullptr;
      args.convert.kv_heads = static_cast<int>(std::strtol(argv[++i], &end, 10));
      if (*end != '\0') return false;
    } else if ((arg == "--max-shard-size" || arg == "--max_shard_size") && has_value) {
      if (!gqa::ParseByteSize(argv[++i], &args.convert.max_shard_bytes)) return false;
      args.import.max_shard_bytes = args.convert.max_shard_bytes;
    } else if ((arg == "--from-gguf" || arg == "--from_gguf") && has_value) {
      args.gguf = argv[++i];
    } else if (arg == "--dtype" && has_value) {
      const std::optional<gqa::DType> dtype = gqa::ParseDTypeName(argv[++i]);
      if (!dtype) return false;
      args.import.dtype = *dtype;
    } else if (!arg.empty() && arg[0] == '-') {
      return false;
    } else {
      args.dirs.push_back(arg);
    }
  }
  return true;
}

int Report(const absl::Status& status, const std::string& done) {
  if (!status.ok()) {
    std::cerr << "gqa-convert: " << status.message() << "\n";
    return 1;
  }
  std::cout << "gqa-convert: " << done << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args;
  if (!Parse(argc, argv, args)) return Usage();
  if (!args.gguf.empty()) {
    if (args.dirs.size() != 1 || args.convert.kv_heads != 0) return Usage();
    return Report(gqa::ImportGguf(args.gguf, args.dirs[0], args.import),
                  "imported " + args.gguf + " into " + args.dirs[0]);
  }
  if (args.dirs.size() != 2 || args.convert.kv_heads == 0) return Usage();
  return Report(
      gqa::ConvertToGqa(args.dirs[0], args.dirs[1], args.convert),
      "wrote " + args.dirs[1] + " with " + std::to_string(args.convert.kv_heads) + " KV heads");
}
