#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100u << 20;

absl::Status Corrupt(const std::filesystem::path& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path.string(), ": ", what));
}

absl::StatusOr<TensorView> ParseEntry(const std::filesystem::path& path, const std::string& name,
                                      const json& entry, const std::byte* data,
                                      uint64_t data_size) {
  const std::string where = absl::StrCat("tensor \"", name, "\"");
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
      !entry.contains("data_offsets")) {
    return Corrupt(path, absl::StrCat(where, " lacks dtype, shape or data_offsets"));
  }
  TensorView view;
  const json& dtype = entry["dtype"];
  auto parsed = dtype.is_string() ? ParseSafetensorsDType(dtype.get<std::string>()) : std::nullopt;
  if (!parsed) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": ", where, " has unsupported dtype ", dtype.dump(), " (F32, F16, BF16)"));
  }
  view.dtype = *parsed;
  uint64_t numel = 1;
  if (!entry["shape"].is_array()) return Corrupt(path, absl::StrCat(where, ": bad shape"));
  for (const auto& d : entry["shape"]) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > (1ull << 40)) {
      return Corrupt(path, absl::StrCat(where, ": bad shape"));
    }
    view.shape.push_back(d.get<int64_t>());
    numel *= d.get<uint64_t>();
  }
  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return Corrupt(path, absl::StrCat(where, ": bad data_offsets"));
  }
  const uint64_t begin = offsets[0].get<uint64_t>();
  const uint64_t end = offsets[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    return Corrupt(path, absl::StrCat(where, " lies past the end of the file (truncated?)"));
  }
  if (end - begin != numel * DTypeSize(view.dtype)) {
    return Corrupt(
        path, absl::StrCat(where, " has ", end - begin, " bytes but shape ",
                           ShapeToString(view.shape), " needs ", numel * DTypeSize(view.dtype)));
  }
  view.data = data + begin;
  view.nbytes = end - begin;
  return view;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void ReleaseMappedPages(const TensorView& view) {
  if (view.data == nullptr || view.nbytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(view.data) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(view.data) + view.nbytes;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // advisory
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat(path.string(), ": cannot open: ", std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path.string(), ": cannot stat"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* addr = nullptr;
  if (size > 0) {
    addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      ::close(fd);
      return absl::InternalError(
          absl::StrCat(path.string(), ": mmap failed: ", std::strerror(errno)));
    }
  }
  ::close(fd);
  return std::unique_ptr<MappedFile>(new MappedFile(static_cast<const std::byte*>(addr), size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  auto result = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  result->path_ = path;
  ASSIGN_OR_RETURN(result->file_, MappedFile::Open(path));
  const MappedFile& file = *result->file_;
  if (file.size() < 8) return Corrupt(path, "too short for a safetensors header");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file.data(), 8);  // little-endian host
  if (header_len > kMaxHeaderBytes || header_len > file.size() - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds the file"));
  }
  const char* header_begin = reinterpret_cast<const char*>(file.data() + 8);
  json header = json::parse(header_begin, header_begin + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return Corrupt(path, "header is not a JSON object");
  }
  const std::byte* data = file.data() + 8 + header_len;
  const uint64_t data_size = file.size() - 8 - header_len;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Corrupt(path, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (value.is_string()) result->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    ASSIGN_OR_RETURN(TensorView view, ParseEntry(path, name, entry, data, data_size));
    ranges.emplace_back(view.data - data, view.data - data + view.nbytes);
    result->tensors_.emplace(name, std::move(view));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) return Corrupt(path, "tensor data ranges overlap");
  }
  return result;
}

size_t TensorHeader::nbytes() const {
  size_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> SafetensorsStreamWriter::Create(
    const std::filesystem::path& path, std::vector<TensorHeader> tensors,
    const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  auto writer = std::unique_ptr<SafetensorsStreamWriter>(new SafetensorsStreamWriter());
  writer->path_ = path;
  writer->tensors_ = std::move(tensors);
  writer->out_.open(path, std::ios::binary | std::ios::trunc);
  if (!writer->out_) return absl::InternalError(absl::StrCat(path.string(), ": cannot create"));
  const uint64_t header_len = text.size();
  writer->out_.write(reinterpret_cast<const char*>(&header_len), 8);
  writer->out_.write(text.data(), static_cast<std::streamsize>(text.size()));
  return writer;
}

absl::Status SafetensorsStreamWriter::Append(const void* data, size_t nbytes) {
  if (next_ >= tensors_.size() || tensors_[next_].nbytes() != nbytes) {
    return absl::InternalError(
        absl::StrCat(path_.string(), ": tensor ", next_, " does not match the header"));
  }
  ++next_;
  out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  if (!out_) return absl::InternalError(absl::StrCat(path_.string(), ": write failed"));
  return absl::OkStatus();
}

absl::Status SafetensorsStreamWriter::Close() {
  if (next_ != tensors_.size()) {
    return absl::InternalError(
        absl::StrCat(path_.string(), ": ", tensors_.size() - next_, " tensors never written"));
  }
  out_.close();
  if (!out_) return absl::InternalError(absl::StrCat(path_.string(), ": write failed"));
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<TensorHeader> headers;
  for (const auto& t : tensors) headers.push_back({t.name, t.dtype, t.shape});
  ASSIGN_OR_RETURN(auto writer, SafetensorsStreamWriter::Create(path, headers, metadata));
  for (const auto& t : tensors) RETURN_IF_ERROR(writer->Append(t.data, t.nbytes));
  return writer->Close();
}

}  // namespace gqa
