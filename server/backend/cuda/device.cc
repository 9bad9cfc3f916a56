#include "backend/cuda/device.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gqa/kernels/elementwise_cuda.h"

namespace gqa::cuda {

absl::Status CudaStatus(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
}

absl::Status CublasStatus(cublasStatus_t status, absl::string_view what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLAS status ", static_cast<int>(status)));
}

bool IsStickyCudaError(cudaError_t error) {
  switch (error) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorContained:
    case cudaErrorDevicesUnavailable:
    case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<DeviceMemory> DeviceMemory::Allocate(size_t bytes, absl::string_view what) {
  DeviceMemory m;
  if (bytes == 0) return m;
  if (const cudaError_t e = cudaMalloc(&m.ptr_, bytes); e != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes / 1048576.0,
                                                     " MiB of GPU memory for ", what, ": ",
                                                     cudaGetErrorString(e)));
  }
  m.bytes_ = bytes;
  return m;
}

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceMemory::~DeviceMemory() {
  if (ptr_) cudaFree(ptr_);
}

absl::StatusOr<PinnedMemory> PinnedMemory::Allocate(size_t bytes) {
  PinnedMemory m;
  if (bytes == 0) return m;
  GQA_CUDA_RETURN_IF_ERROR(cudaMallocHost(&m.ptr_, bytes));
  m.bytes_ = bytes;
  return m;
}

PinnedMemory& PinnedMemory::operator=(PinnedMemory&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

PinnedMemory::~PinnedMemory() {
  if (ptr_) cudaFreeHost(ptr_);
}

namespace {

// An error naming the GPU when this build's kernels were not compiled for its architecture.
absl::Status CheckDeviceRunsOurKernels(int index) {
  cudaDeviceProp prop{};
  GQA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index));
  GQA_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
  if (const cudaError_t e = kernels::cuda::CheckKernelsRunHere(); e != cudaSuccess) {
    cudaGetLastError();  // not sticky
    return absl::FailedPreconditionError(
        absl::StrCat("GPU ", prop.name, " (compute capability ", prop.major, ".", prop.minor,
                     ") cannot run this build's kernels (", cudaGetErrorString(e),
                     "): rebuild with -DCMAKE_CUDA_ARCHITECTURES naming its architecture"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CudaEvent> CudaEvent::Create(EventTiming timing) {
  CudaEvent e;
  GQA_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(
      &e.event_, timing == EventTiming::kEnabled ? cudaEventDefault : cudaEventDisableTiming));
  return e;
}

absl::StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::Open(int index) {
  auto device = std::unique_ptr<CudaDevice>(new CudaDevice());
  device->index_ = index;
  GQA_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
  cudaDeviceProp prop{};
  GQA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index));
  device->name_ = prop.name;
  device->sm_count_ = prop.multiProcessorCount;
  device->compute_capability_ = 10 * prop.major + prop.minor;
  device->total_memory_ = prop.totalGlobalMem;
  if (prop.major < 8) {
    return absl::FailedPreconditionError(
        absl::StrCat("GPU ", prop.name, " has compute capability ", prop.major, ".", prop.minor,
                     "; the CUDA backend needs 8.0 or newer (bf16 tensor cores)"));
  }
  RETURN_IF_ERROR(CheckDeviceRunsOurKernels(index));
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&device->stream_, cudaStreamNonBlocking));
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&device->cublaslt_));
  auto workspace = DeviceMemory::Allocate(kCublasWorkspaceBytes, "the cuBLAS workspace");
  if (!workspace.ok()) return workspace.status();
  device->workspace_ = std::move(*workspace);
  return device;
}

CudaDevice::~CudaDevice() {
  if (stream_) cudaStreamSynchronize(stream_);
  workspace_ = DeviceMemory();
  if (cublaslt_) cublasLtDestroy(cublaslt_);
  if (stream_) cudaStreamDestroy(stream_);
}

absl::Status CudaDevice::MakeCurrent() const {
  GQA_CUDA_RETURN_IF_ERROR(cudaSetDevice(index_));
  return absl::OkStatus();
}

absl::StatusOr<std::string> FirstGpuName() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat(
        "no CUDA GPU is visible (", e == cudaSuccess ? "0 devices" : cudaGetErrorString(e), ")"));
  }
  RETURN_IF_ERROR(CheckDeviceRunsOurKernels(0));
  cudaDeviceProp prop{};
  GQA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));
  return std::string(prop.name);
}

}  // namespace gqa::cuda
