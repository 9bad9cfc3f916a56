// libFuzzer: a safetensors file (header JSON, offsets, dtypes) from fuzz bytes.
#include "fuzz_util.h"
#include "model/safetensors.h"

// Where the test of each tensor's first and last byte goes, so the compiler keeps the reads.
volatile uint8_t g_sink = 0;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gqa::fuzz::MemoryFile file(data, size);
  auto opened = gqa::SafetensorsFile::Open(file.path());
  if (opened.ok()) {
    // Touch every accepted tensor's first and last byte: the ranges must lie inside the file.
    for (const auto& [name, view] : (*opened)->tensors()) {
      if (view.nbytes > 0) {
        g_sink = static_cast<uint8_t>(uint8_t(view.data[0]) ^ uint8_t(view.data[view.nbytes - 1]));
      }
    }
  }
  return 0;
}
