// libFuzzer: a GGUF file from fuzz bytes: the reader, then the importer (metadata to config and
// tokenizer files, every tensor dequantized) into a scratch directory.
#include "convert/gguf.h"
#include "convert/gguf_import.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gqa::fuzz::MemoryFile file(data, size);
  auto opened = gqa::GgufFile::Open(file.path());
  if (!opened.ok()) return 0;
  for (const gqa::GgufTensor& tensor : (*opened)->tensors()) {
    if (!gqa::DequantizableLayout(static_cast<uint32_t>(tensor.type)) ||
        tensor.numel() > (1 << 20)) {
      continue;
    }
    std::vector<float> values(static_cast<size_t>(tensor.numel()));
    gqa::DequantizeToFloat(tensor.type, tensor.data, tensor.numel(), values.data());
  }
  gqa::fuzz::ResetScratch();
  gqa::GgufImportOptions options;
  options.dtype = gqa::DType::kF32;
  (void)gqa::ImportGguf(file.path(), gqa::fuzz::ScratchDir() / "out", options);
  return 0;
}
