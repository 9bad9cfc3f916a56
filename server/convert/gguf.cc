#include "convert/gguf.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gqa {
namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxDims = 4;  // GGML_MAX_DIMS

// GGUF metadata value types.
enum ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// A bounds-checked little-endian reader over the mapped file.
class Reader {
 public:
  Reader(const std::byte* data, size_t size, const std::filesystem::path& path)
      : data_(data), size_(size), path_(path) {}

  size_t position() const { return position_; }
  size_t remaining() const { return size_ - position_; }

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(
        path_.string(), ": not a valid GGUF file: ", what, " (at byte ", position_, ")"));
  }

  template <typename T>
  absl::StatusOr<T> Read(const char* what) {
    if (remaining() < sizeof(T)) return Error(absl::StrCat("truncated ", what));
    T value;
    std::memcpy(&value, data_ + position_, sizeof value);
    position_ += sizeof value;
    return value;
  }

  absl::StatusOr<std::string> ReadString(const char* what) {
    ASSIGN_OR_RETURN(const uint64_t length, Read<uint64_t>(what));
    if (length > remaining()) return Error(absl::StrCat("truncated ", what));
    std::string text(reinterpret_cast<const char*>(data_ + position_), length);
    position_ += length;
    return text;
  }

 private:
  const std::byte* data_;
  size_t size_;
  size_t position_ = 0;
  const std::filesystem::path& path_;
};

using Scalar = std::variant<int64_t, uint64_t, double, bool, std::string>;

absl::StatusOr<Scalar> ReadScalar(Reader& in, uint32_t type, const std::string& key) {
  const char* what = "metadata value";
  switch (type) {
    case kUint8: {
      ASSIGN_OR_RETURN(uint8_t v, in.Read<uint8_t>(what));
      return Scalar(uint64_t{v});
    }
    case kInt8: {
      ASSIGN_OR_RETURN(int8_t v, in.Read<int8_t>(what));
      return Scalar(int64_t{v});
    }
    case kUint16: {
      ASSIGN_OR_RETURN(uint16_t v, in.Read<uint16_t>(what));
      return Scalar(uint64_t{v});
    }
    case kInt16: {
      ASSIGN_OR_RETURN(int16_t v, in.Read<int16_t>(what));
      return Scalar(int64_t{v});
    }
    case kUint32: {
      ASSIGN_OR_RETURN(uint32_t v, in.Read<uint32_t>(what));
      return Scalar(uint64_t{v});
    }
    case kInt32: {
      ASSIGN_OR_RETURN(int32_t v, in.Read<int32_t>(what));
      return Scalar(int64_t{v});
    }
    case kUint64: {
      ASSIGN_OR_RETURN(uint64_t v, in.Read<uint64_t>(what));
      return Scalar(v);
    }
    case kInt64: {
      ASSIGN_OR_RETURN(int64_t v, in.Read<int64_t>(what));
      return Scalar(v);
    }
    case kFloat32: {
      ASSIGN_OR_RETURN(float v, in.Read<float>(what));
      return Scalar(double{v});
    }
    case kFloat64: {
      ASSIGN_OR_RETURN(double v, in.Read<double>(what));
      return Scalar(v);
    }
    case kBool: {
      ASSIGN_OR_RETURN(uint8_t v, in.Read<uint8_t>(what));
      if (v > 1) return in.Error(absl::StrCat("metadata ", key, ": bool value ", int{v}));
      return Scalar(v == 1);
    }
    case kString: {
      ASSIGN_OR_RETURN(std::string v, in.ReadString(what));
      return Scalar(std::move(v));
    }
    default:
      return in.Error(absl::StrCat("metadata ", key, ": unknown value type ", type));
  }
}

// The smallest encoded size of one element of `type` (to bound an array's count by the bytes
// left before allocating for it).
size_t MinElementBytes(uint32_t type) {
  switch (type) {
    case kUint8:
    case kInt8:
    case kBool:
      return 1;
    case kUint16:
    case kInt16:
      return 2;
    case kUint32:
    case kInt32:
    case kFloat32:
      return 4;
    default:
      return 8;  // 64-bit scalars, and a string's length prefix
  }
}

absl::StatusOr<GgufValue> ReadValue(Reader& in, uint32_t type, const std::string& key) {
  if (type != kArray) {
    ASSIGN_OR_RETURN(Scalar scalar, ReadScalar(in, type, key));
    GgufValue value;
    std::visit([&](auto&& v) { value.value = std::move(v); }, std::move(scalar));
    return value;
  }
  ASSIGN_OR_RETURN(const uint32_t element_type, in.Read<uint32_t>("array type"));
  ASSIGN_OR_RETURN(const uint64_t count, in.Read<uint64_t>("array length"));
  if (element_type == kArray) return in.Error(absl::StrCat("metadata ", key, ": nested array"));
  if (count > in.remaining() / MinElementBytes(element_type)) {
    return in.Error(absl::StrCat("metadata ", key, ": array of ", count, " exceeds the file"));
  }
  GgufValue::Array array;
  array.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(Scalar scalar, ReadScalar(in, element_type, key));
    array.push_back(std::move(scalar));
  }
  GgufValue value;
  value.value = std::move(array);
  return value;
}

}  // namespace

std::optional<int64_t> GgufValue::AsInt() const {
  if (const auto* v = std::get_if<int64_t>(&value)) return *v;
  if (const auto* v = std::get_if<uint64_t>(&value)) {
    if (*v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(*v);
    }
  }
  return std::nullopt;
}

std::optional<double> GgufValue::AsDouble() const {
  if (const auto* v = std::get_if<double>(&value)) return *v;
  if (auto i = AsInt()) return static_cast<double>(*i);
  return std::nullopt;
}

std::optional<bool> GgufValue::AsBool() const {
  if (const auto* v = std::get_if<bool>(&value)) return *v;
  return std::nullopt;
}

const std::string* GgufValue::AsString() const { return std::get_if<std::string>(&value); }

const GgufValue::Array* GgufValue::AsArray() const { return std::get_if<Array>(&value); }

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> GgufTensor::torch_shape() const {
  return std::vector<int64_t>(dims.rbegin(), dims.rend());
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::filesystem::path& path) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  ASSIGN_OR_RETURN(file->file_, MappedFile::Open(path));
  Reader in(file->file_->data(), file->file_->size(), file->path_);

  ASSIGN_OR_RETURN(const uint32_t magic, in.Read<uint32_t>("magic"));
  if (magic != 0x46554747u) return in.Error("no GGUF magic at the start");  // "GGUF"
  ASSIGN_OR_RETURN(file->version_, in.Read<uint32_t>("version"));
  if (file->version_ != 2 && file->version_ != 3) {
    return in.Error(absl::StrCat("version ", file->version_, " (2 and 3 are supported)"));
  }
  ASSIGN_OR_RETURN(const uint64_t tensor_count, in.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(const uint64_t kv_count, in.Read<uint64_t>("metadata count"));
  // Each key/value pair takes at least 12 bytes and each tensor description at least 24.
  if (kv_count > in.remaining() / 12 || tensor_count > in.remaining() / 24) {
    return in.Error("counts exceed the file");
  }
  for (uint64_t i = 0; i < kv_count; ++i) {
    ASSIGN_OR_RETURN(std::string key, in.ReadString("metadata key"));
    ASSIGN_OR_RETURN(const uint32_t type, in.Read<uint32_t>("metadata type"));
    ASSIGN_OR_RETURN(GgufValue value, ReadValue(in, type, key));
    if (!file->metadata_.emplace(key, std::move(value)).second) {
      return in.Error("duplicate metadata key " + key);
    }
  }
  uint64_t alignment = kDefaultAlignment;
  if (const GgufValue* a = file->Find("general.alignment")) {
    const std::optional<int64_t> value = a->AsInt();
    if (!value || *value <= 0 || (*value & (*value - 1)) != 0) {
      return in.Error("general.alignment is not a power of two");
    }
    alignment = static_cast<uint64_t>(*value);
  }

  struct Description {
    uint64_t offset;
  };
  std::vector<Description> offsets;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensor tensor;
    ASSIGN_OR_RETURN(tensor.name, in.ReadString("tensor name"));
    ASSIGN_OR_RETURN(const uint32_t n_dims, in.Read<uint32_t>("tensor rank"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return in.Error(absl::StrCat("tensor ", tensor.name, ": rank ", n_dims));
    }
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(const uint64_t dim, in.Read<uint64_t>("tensor dimension"));
      if (dim == 0 || dim > (1ull << 40) || numel > (1ull << 62) / dim) {
        return in.Error(absl::StrCat("tensor ", tensor.name, ": dimension ", dim));
      }
      numel *= dim;
      tensor.dims.push_back(static_cast<int64_t>(dim));
    }
    ASSIGN_OR_RETURN(const uint32_t type, in.Read<uint32_t>("tensor type"));
    const std::optional<GgmlBlockLayout> layout = GgmlLayout(type);
    if (!layout) return in.Error(absl::StrCat("tensor ", tensor.name, ": unknown type ", type));
    if (tensor.dims[0] % layout->elements != 0) {
      return in.Error(absl::StrCat("tensor ", tensor.name, ": row of ", tensor.dims[0],
                                   " is not a whole number of ", GgmlTypeName(type), " blocks"));
    }
    tensor.type = static_cast<GgmlType>(type);
    tensor.nbytes = numel / layout->elements * layout->bytes;
    ASSIGN_OR_RETURN(const uint64_t offset, in.Read<uint64_t>("tensor offset"));
    if (offset % alignment != 0) {
      return in.Error(absl::StrCat("tensor ", tensor.name, ": offset ", offset, " not aligned"));
    }
    offsets.push_back({offset});
    if (!file->tensor_index_.emplace(tensor.name, file->tensors_.size()).second) {
      return in.Error("duplicate tensor " + tensor.name);
    }
    file->tensors_.push_back(std::move(tensor));
  }
  const uint64_t data_start = (in.position() + alignment - 1) / alignment * alignment;
  const uint64_t file_size = file->file_->size();
  for (size_t i = 0; i < file->tensors_.size(); ++i) {
    GgufTensor& tensor = file->tensors_[i];
    const uint64_t offset = offsets[i].offset;
    if (data_start > file_size || offset > file_size - data_start ||
        tensor.nbytes > file_size - data_start - offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), ": not a valid GGUF file: tensor ", tensor.name,
                       " lies past the end of the file (truncated?)"));
    }
    tensor.data = file->file_->data() + data_start + offset;
  }
  return file;
}

}  // namespace gqa
