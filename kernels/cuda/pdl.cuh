// Launch helpers. Programmatic dependent launch (Hopper): a kernel launched with
// LaunchAfterPrevious may start while the kernel before it on the stream is finishing. Before
// WaitForPrevious() it may read only what no kernel of the step writes (weights, the step's
// uploaded inputs) and may write nothing; after it, everything the earlier kernels wrote is
// visible. AllowNext() lets the next such kernel start (a kernel that never calls it lets the next
// start when it exits).
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>

namespace gqa::kernels::cuda {

__device__ __forceinline__ void WaitForPrevious() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void AllowNext() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <typename... Params, typename... Args>
cudaError_t LaunchAfterPrevious(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// Raises Kernel's dynamic shared memory limit to at least `bytes` on the current device. The
// attribute belongs to each device's context, so it is set once per device, not once per
// process.
template <auto Kernel>
cudaError_t AllowDynamicSmem(int bytes) {
  static std::array<std::atomic<int>, 64> allowed{};  // per device: the largest limit set
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const bool tracked = device < static_cast<int>(allowed.size());
  if (tracked && allowed[device].load(std::memory_order_acquire) >= bytes) return cudaSuccess;
  const cudaError_t e =
      cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess && tracked) allowed[device].store(bytes, std::memory_order_release);
  return e;
}

}  // namespace gqa::kernels::cuda
