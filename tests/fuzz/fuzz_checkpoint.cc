// libFuzzer: a model directory's JSON files from fuzz bytes: config.json, generation_config.json
// and model.safetensors.index.json (the input split at "\n#--\n"), loaded as the server loads a
// checkpoint (the shards the index names do not exist, so loading stops there or earlier).
#include <string_view>

#include "fuzz_util.h"
#include "model/checkpoint.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const char* names[] = {"config.json", "generation_config.json", "model.safetensors.index.json"};
  gqa::fuzz::ResetScratch();
  size_t begin = 0;
  for (const char* name : names) {
    const size_t end = std::min(input.find("\n#--\n", begin), input.size());
    gqa::fuzz::WriteFile(gqa::fuzz::ScratchDir() / name, input.substr(begin, end - begin));
    begin = std::min(end + 5, input.size());
  }
  (void)gqa::LoadModelConfig(gqa::fuzz::ScratchDir());
  (void)gqa::Checkpoint::Load(gqa::fuzz::ScratchDir(), gqa::LoadFormat::kSafetensors);
  return 0;
}
