// Helpers shared by the libFuzzer targets: fuzz bytes as a file (an anonymous in-memory file, so
// parsers that take paths read them without touching the disk), a scratch directory, and a small
// trained tokenizer.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"
#include "tokenizer/train_bpe.h"

namespace gqa::fuzz {

// The bytes as a file at path(); closed on destruction.
class MemoryFile {
 public:
  MemoryFile(const uint8_t* data, size_t size) : fd_(memfd_create("fuzz", 0)) {
    if (size > 0 && write(fd_, data, size) != static_cast<ssize_t>(size)) std::abort();
  }
  ~MemoryFile() { close(fd_); }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

// A directory under /dev/shm (memory) for this process, emptied by Reset().
inline const std::filesystem::path& ScratchDir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::path("/dev/shm") / ("gqa-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void ResetScratch() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(ScratchDir(), ec)) {
    std::filesystem::remove_all(entry.path(), ec);
  }
}

inline void WriteFile(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

// A byte-level BPE tokenizer of 400 tokens trained once per process.
inline const Tokenizer& TrainedTokenizer() {
  static const std::unique_ptr<Tokenizer> tokenizer = [] {
    const auto dir =
        std::filesystem::path("/dev/shm") / ("gqa-fuzz-tok-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    if (!WriteTrainedTokenizer(dir, 400).ok()) std::abort();
    auto loaded = Tokenizer::Load(dir);
    std::filesystem::remove_all(dir);
    if (!loaded.ok()) std::abort();
    return std::move(*loaded);
  }();
  return *tokenizer;
}

}  // namespace gqa::fuzz
