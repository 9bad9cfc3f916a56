// GGUF files (llama.cpp's model format), read-only and memory-mapped: a header, typed metadata
// key/value pairs, tensor descriptions, then aligned tensor data. Versions 2 and 3, little-endian.
// Every count, string and tensor range is checked against the file before use, so a broken file
// gives one error naming it, never a crash or a huge allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "convert/ggml_types.h"
#include "model/safetensors.h"

namespace gqa {

// One metadata value. Integers keep their signedness; arrays hold one scalar type.
struct GgufValue {
  using Array = std::vector<std::variant<int64_t, uint64_t, double, bool, std::string>>;
  std::variant<int64_t, uint64_t, double, bool, std::string, Array> value;

  std::optional<int64_t> AsInt() const;    // any integer type that fits
  std::optional<double> AsDouble() const;  // a float or an integer
  std::optional<bool> AsBool() const;
  const std::string* AsString() const;
  const Array* AsArray() const;
};

struct GgufTensor {
  std::string name;
  GgmlType type;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the contiguous one
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  // The same tensor in PyTorch order (dims reversed).
  std::vector<int64_t> torch_shape() const;
};

class GgufFile {
 public:
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufValue* Find(const std::string& key) const;
  const GgufTensor* FindTensor(const std::string& name) const;

 private:
  GgufFile() = default;
  std::filesystem::path path_;
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace gqa
