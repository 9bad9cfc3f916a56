// One GPU: its stream, cuBLASLt handle and workspace, and the RAII owners of device and pinned
// host memory. No global device state: several CudaDevice objects (one per rank) can coexist.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gqa::cuda {

// "what: cudaErrorX (message)" as INTERNAL; OK for cudaSuccess.
absl::Status CudaStatus(cudaError_t error, absl::string_view what);
absl::Status CublasStatus(cublasStatus_t status, absl::string_view what);

#define GQA_CUDA_RETURN_IF_ERROR(expr)                                                          \
  do {                                                                                          \
    if (const absl::Status _st = ::gqa::cuda::CudaStatus((expr), #expr); !_st.ok()) return _st; \
  } while (0)

#define GQA_CUBLAS_RETURN_IF_ERROR(expr)                                                          \
  do {                                                                                            \
    if (const absl::Status _st = ::gqa::cuda::CublasStatus((expr), #expr); !_st.ok()) return _st; \
  } while (0)

// True for errors after which the CUDA context is unusable (illegal address, device lost...):
// the process must exit and be restarted.
bool IsStickyCudaError(cudaError_t error);

// Device memory, freed by the destructor. Move-only.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  static absl::StatusOr<DeviceMemory> Allocate(size_t bytes, absl::string_view what);
  DeviceMemory(DeviceMemory&& other) noexcept { *this = std::move(other); }
  DeviceMemory& operator=(DeviceMemory&& other) noexcept;
  ~DeviceMemory();
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (for asynchronous copies), freed by the destructor. Move-only.
class PinnedMemory {
 public:
  PinnedMemory() = default;
  static absl::StatusOr<PinnedMemory> Allocate(size_t bytes);
  PinnedMemory(PinnedMemory&& other) noexcept { *this = std::move(other); }
  PinnedMemory& operator=(PinnedMemory&& other) noexcept;
  ~PinnedMemory();
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

enum class EventTiming { kDisabled, kEnabled };

// A CUDA event, destroyed by the destructor. Move-only.
class CudaEvent {
 public:
  CudaEvent() = default;
  static absl::StatusOr<CudaEvent> Create(EventTiming timing = EventTiming::kDisabled);
  CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& other) noexcept {
    if (this != &other) {
      if (event_) cudaEventDestroy(event_);
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }
  ~CudaEvent() {
    if (event_) cudaEventDestroy(event_);
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Carves aligned sub-buffers out of one allocation: first a sizing pass (base null), then the
// same calls again over the allocation.
class BufferCarver {
 public:
  explicit BufferCarver(void* base) : base_(static_cast<std::byte*>(base)) {}
  template <typename T>
  T* Take(size_t count) {
    offset_ = (offset_ + kAlign - 1) / kAlign * kAlign;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * sizeof(T);
    return p;
  }
  size_t bytes() const { return offset_; }

 private:
  static constexpr size_t kAlign = 256;
  std::byte* base_;
  size_t offset_ = 0;
};

class CudaDevice {
 public:
  static constexpr size_t kCublasWorkspaceBytes = 32ull << 20;

  // Makes `index` current for this thread and creates the stream and cuBLASLt handle.
  static absl::StatusOr<std::unique_ptr<CudaDevice>> Open(int index);
  ~CudaDevice();
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  int index() const { return index_; }
  const std::string& name() const { return name_; }
  int sm_count() const { return sm_count_; }
  int compute_capability() const { return compute_capability_; }  // 10 * major + minor, e.g. 90
  size_t total_memory() const { return total_memory_; }
  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t cublaslt() const { return cublaslt_; }
  void* cublas_workspace() const { return workspace_.get(); }
  // Makes this device current for the calling thread (the engine thread runs every step).
  absl::Status MakeCurrent() const;

 private:
  CudaDevice() = default;
  int index_ = 0;
  std::string name_;
  int sm_count_ = 0;
  int compute_capability_ = 0;
  size_t total_memory_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  DeviceMemory workspace_;
};

// The name of the first visible GPU, or an error saying why none can be used.
absl::StatusOr<std::string> FirstGpuName();

}  // namespace gqa::cuda
