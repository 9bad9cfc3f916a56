// Memory-mapped safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/dtype.h"

namespace gqa {

// A read-only view of one tensor's bytes (in a mapped file or an owned buffer).
struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
};

std::string ShapeToString(const std::vector<int64_t>& shape);

// Tells the kernel a memory-mapped tensor's pages are not needed for now (they are re-read from
// the file if touched again), so streaming through a large checkpoint keeps memory flat.
void ReleaseMappedPages(const TensorView& view);

// A read-only memory mapping of a whole file; unmapped on destruction.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(const std::byte* data, size_t size) : data_(data), size_(size) {}
  const std::byte* data_;
  size_t size_;
};

class SafetensorsFile {
 public:
  // Maps the file and validates its header: every tensor's dtype is supported, its byte range
  // matches its shape and lies inside the file, and no two ranges overlap.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: name, dtype, shape and its bytes.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};

// Name, dtype and shape of a tensor a streaming writer will receive.
struct TensorHeader {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t nbytes() const;
};

// Writes a safetensors file tensor by tensor: the header (all shapes known up front), then each
// tensor's bytes in header order, so only one tensor need be in memory at a time.
class SafetensorsStreamWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> Create(
      const std::filesystem::path& path, std::vector<TensorHeader> tensors,
      const std::map<std::string, std::string>& metadata);
  // The next tensor's bytes; exactly its nbytes().
  absl::Status Append(const void* data, size_t nbytes);
  // Checks every tensor arrived and flushes.
  absl::Status Close();

 private:
  SafetensorsStreamWriter() = default;
  std::filesystem::path path_;
  std::vector<TensorHeader> tensors_;
  size_t next_ = 0;
  std::ofstream out_;
};

// Writes a safetensors file (tensors in the given order, header padded to 8 bytes).
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace gqa
