// The tensor-core skinny product (SkinnyMmaGemm in skinny_gemm_cuda.h) with its tuning knobs
// forced, for `gqa-bench gemm --variants` (which picks the defaults on a GPU) and the tests that
// check every variant against the CPU reference. Serving code calls SkinnyMmaGemm, which uses
// the defaults.
#pragma once

#include <cuda_runtime.h>

#include "gqa/kernels/skinny_gemm_cuda.h"

namespace gqa::kernels::cuda {

// A kernel of the family: how many stages of weights (64 k each) each lane keeps in flight in
// registers, and how many 16-row weight tiles each warp multiplies with every x fragment it
// reads (2: 128 weight rows per block of 4 warps, half the x bytes read from L2 and shared
// memory per weight byte, twice the accumulator and ring registers). 0: m's default.
struct SkinnyMmaVariant {
  int ring_stages = 0;
  int row_tiles = 0;
};

// The variants the kernel is built for (the defaults among them).
constexpr SkinnyMmaVariant kSkinnyMmaVariants[] = {{2, 1}, {4, 1}, {6, 1}, {8, 1}, {2, 2}, {4, 2}};

struct SkinnyMmaTuning {
  SkinnyMmaVariant variant;
  int splits = 0;  // k splits (SkinnyMmaPlanOfSplits); 0: PlanSkinnyMma's
};

// The variant SkinnyMmaGemm runs for m rows (it depends on m's row bucket).
SkinnyMmaVariant SkinnyMmaDefaultVariant(int m);

// SkinnyMmaGemm (Out = T) cut and pipelined as `tuning` says. cudaErrorInvalidValue for a
// variant not in kSkinnyMmaVariants or a workspace too small for the forced splits.
template <typename T>
cudaError_t SkinnyMmaGemmTuned(const T* x,  // [m, x_stride]
                               int x_stride,
                               const T* w,     // [n, k]
                               const T* bias,  // [n] or nullptr
                               int m, int n, int k,
                               T* y,  // [m, n]
                               const SkinnyMmaTuning& tuning, const SkinnyMmaWorkspace& workspace,
                               cudaStream_t stream);

}  // namespace gqa::kernels::cuda
