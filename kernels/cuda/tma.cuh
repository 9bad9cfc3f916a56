// Hopper's bulk tensor copies (TMA) and the shared-memory barriers (mbarrier) that track them,
// sm_90a: the PTX wrappers of the producer-consumer kernels (prefill_warpgroup_tma.cu).
//
// A barrier completes a phase when its expected arrivals have arrived and the bytes announced
// with ArriveExpectingBytes have landed; waiters name the phase by its parity (0, 1, 0, ...).
// The copies read through a CUtensorMap (tensor_map.h) passed as a __grid_constant__ kernel
// parameter, and land 128-byte swizzled exactly as wgmma.cuh's SwizzledOffset lays rows out.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ptx.cuh"
#include "wgmma.cuh"  // GQA_WGMMA_ENABLED: sm_90a code

namespace gqa::kernels::cuda::tma {

__device__ __forceinline__ void InitBarrier(uint64_t* barrier, int arrivals) {
#if GQA_WGMMA_ENABLED
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddress(barrier)),
               "r"(arrivals)
               : "memory");
#endif
}

// Makes the initialized barriers visible to the copy engine and the other threads (then a block
// barrier).
__device__ __forceinline__ void FenceBarrierInit() {
#if GQA_WGMMA_ENABLED
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival that also announces `bytes` more to land in this phase.
__device__ __forceinline__ void ArriveExpectingBytes(uint64_t* barrier, uint32_t bytes) {
#if GQA_WGMMA_ENABLED
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SmemAddress(barrier)),
      "r"(bytes)
      : "memory");
#endif
}

__device__ __forceinline__ void Arrive(uint64_t* barrier) {
#if GQA_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(SmemAddress(barrier)) : "memory");
#endif
}

// Returns once the phase of parity `parity` has completed.
__device__ __forceinline__ void Wait(uint64_t* barrier, uint32_t parity) {
#if GQA_WGMMA_ENABLED
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(SmemAddress(barrier)),
      "r"(parity)
      : "memory");
#endif
}

// Copies the box at (column, row) of a 2-D tensor map into shared memory at `smem` (1024-byte
// aligned for the 128-byte swizzle), completing its bytes on `barrier`.
__device__ __forceinline__ void Load2d(void* smem, const CUtensorMap& map, int column, int row,
                                       uint64_t* barrier) {
#if GQA_WGMMA_ENABLED
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(SmemAddress(smem)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(column), "r"(row), "r"(SmemAddress(barrier))
      : "memory");
#endif
}

}  // namespace gqa::kernels::cuda::tma
