// Hopper warpgroup matrix products (wgmma, sm_90a): the PTX wrappers the warpgroup attention
// kernels use. A warpgroup is 4 consecutive warps (128 threads) that issue each product together.
//
// Operand B lives in shared memory in rows of 128 bytes (64 16-bit values) with the 128-byte
// swizzle: the 16-byte chunk c of row r sits at chunk c ^ (r % 8), and 8 rows (1024 bytes,
// 1024-byte aligned) form one swizzle atom. A tile wider than 64 values is stored as panels of
// 64 columns, one after another. Operand A comes from registers in mma.sync's m16n8k16 A layout
// (each warp its 16 rows of the 64), and the fp32 accumulator of an m64n64 product holds, per
// warp, mma.sync's m16n8 C layout for 8 column tiles: d[4 * i + e] is row g + 8 * (e / 2),
// column 8 * i + 2 * (lane % 4) + e % 2, with g = lane / 4.
//
// Only sm_90a has these instructions: the wrappers trap elsewhere, and the host only launches
// the kernels that use them on a compute capability 9.0 device of a build with sm_90a code
// (GQA_KERNELS_HAVE_SM90A).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "ptx.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GQA_WGMMA_ENABLED 1
#else
#define GQA_WGMMA_ENABLED 0
#endif

namespace gqa::kernels::cuda::wgmma {

// The offset of 16-byte chunk `chunk` (0-7) of row `row` in a 128-byte-swizzled panel.
__device__ __forceinline__ int SwizzledOffset(int row, int chunk) {
  return row * 128 + ((chunk ^ (row % 8)) * 16);
}

// The descriptor of a 128-byte-swizzled operand starting at `smem` (an 8-row-aligned row of a
// 1024-byte-aligned panel, plus 32 bytes per 16 columns): 8-row groups 1024 bytes apart. The
// products here span one swizzle atom (64 values) in the operand's contiguous dimension, so only
// the step between 8-row groups matters; which of the two offsets the hardware reads for it
// depends on the operand's major-ness, so both are that step.
__device__ __forceinline__ uint64_t SwizzledDescriptor(const void* smem) {
  const uint64_t address = SmemAddress(smem);
  uint64_t desc = (address & 0x3FFFF) >> 4;  // start address, 16-byte units
  desc |= uint64_t(1024 >> 4) << 16;         // leading byte offset
  desc |= uint64_t(1024 >> 4) << 32;         // stride byte offset
  desc |= uint64_t(1) << 62;                 // 128-byte swizzle
  return desc;
}

// Orders register accesses around the products (wgmma.fence), closes a group of issued products,
// and waits until at most N groups are in flight.
__device__ __forceinline__ void Fence() {
#if GQA_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void Commit() {
#if GQA_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void Wait() {
#if GQA_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Makes this thread's completed cp.async writes to shared memory visible to the products, which
// read through the async proxy. Call after cp.async.wait_group and before the barrier.
__device__ __forceinline__ void FenceProxyAsync() {
#if GQA_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Moves this warpgroup's registers per thread to N (kIncrease: up, waiting for the registers
// another warpgroup released; else down, releasing them). Every thread of the warpgroup calls it.
template <bool kIncrease, int N>
__device__ __forceinline__ void SetMaxRegisters() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes 24 .. 256 in steps of 8");
#if GQA_WGMMA_ENABLED
  if constexpr (kIncrease) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
  }
#endif
}

// Keeps the compiler from moving reads or writes of accumulator registers across the products'
// issue and wait (the products write them asynchronously).
template <int N>
__device__ __forceinline__ void PinRegisters(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (64 x 64, fp32) (+)= a (64 x 16, registers) * b (16 x 64, shared memory). kTransB = false: b
// is stored as 64 rows of N by 16 of K (K contiguous, e.g. K rows [key][dim] for Q.K^T); true: b
// is stored as 16 rows of K by 64 of N (N contiguous, e.g. V rows [key][dim] for P.V).
// accumulate = false overwrites d.
// One m64n64k16 product with A in registers for element type TYPE ("bf16" or "f16").
#define GQA_WGMMA_M64N64K16_REG_A(TYPE)                                                            \
  asm volatile(                                                                                    \
      "{\n"                                                                                        \
      ".reg .pred p;\n"                                                                            \
      "setp.ne.b32 p, %37, 0;\n"                                                                   \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                  \
      " "                                                                                          \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "     \
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "                         \
      "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n"                                                 \
      "}\n"                                                                                        \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                         \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(accumulate)),             \
        "n"(kTransB ? 1 : 0))

template <typename T, bool kTransB>
__device__ __forceinline__ void MmaRegA(float (&d)[32], const uint32_t (&a)[4], uint64_t b_desc,
                                        bool accumulate) {
#if GQA_WGMMA_ENABLED
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    GQA_WGMMA_M64N64K16_REG_A("bf16");
  } else {
    GQA_WGMMA_M64N64K16_REG_A("f16");
  }
#else
  __trap();
#endif
}

#undef GQA_WGMMA_M64N64K16_REG_A

// One m64n128k16 product with A in registers and B K-major (kTransB false: 128 rows of N by 16
// of K, 8-row groups 1024 bytes apart), for element type TYPE: the accumulator of 128 columns,
// d[4 * i + e] for column tiles i = 0 .. 15 (the m64n64 layout, continued).
#define GQA_WGMMA_M64N128K16_REG_A(TYPE)                                                           \
  asm volatile(                                                                                    \
      "{\n"                                                                                        \
      ".reg .pred p;\n"                                                                            \
      "setp.ne.b32 p, %69, 0;\n"                                                                   \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                                 \
      " "                                                                                          \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "     \
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, " \
      "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, " \
      "%55, %56, %57, %58, %59, %60, %61, %62, %63}, "                                             \
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n"                                                   \
      "}\n"                                                                                        \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63])                                                                                \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(accumulate)))

// d (64 x 128, fp32) (+)= a (64 x 16, registers) * b (16 x 128, K-major in shared memory).
template <typename T>
__device__ __forceinline__ void MmaRegAWide(float (&d)[64], const uint32_t (&a)[4], uint64_t b_desc,
                                            bool accumulate) {
#if GQA_WGMMA_ENABLED
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    GQA_WGMMA_M64N128K16_REG_A("bf16");
  } else {
    GQA_WGMMA_M64N128K16_REG_A("f16");
  }
#else
  __trap();
#endif
}

#undef GQA_WGMMA_M64N128K16_REG_A

}  // namespace gqa::kernels::cuda::wgmma
