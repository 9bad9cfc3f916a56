// The tensor-core skinny product (SkinnyMmaGemm in skinny_gemm_cuda.h) with its tuning knobs
// forced, for `gqa-bench gemm --variants` (which picks the defaults on a GPU) and the tests that
// check every variant against the CPU reference. Serving code calls SkinnyMmaGemm, which uses
// the defaults.
#pragma once

#include <cuda_runtime.h>

#include "gqa/kernels/skinny_gemm_cuda.h"

namespace gqa::kernels::cuda {

// Depths of the register ring of weight stages (64 k each) a kernel is built for.
constexpr int kSkinnyMmaRingChoices[] = {2, 4, 6, 8};

struct SkinnyMmaTuning {
  int ring_stages = 0;  // one of kSkinnyMmaRingChoices; 0: the default for m's row bucket
  int splits = 0;       // k splits (SkinnyMmaPlanOfSplits); 0: PlanSkinnyMma's
};

// The default ring depth for m's row bucket (what SkinnyMmaGemm uses).
int SkinnyMmaDefaultRingStages(int m);

// SkinnyMmaGemm (Out = T) cut and pipelined as `tuning` says. cudaErrorInvalidValue for a ring
// depth not in kSkinnyMmaRingChoices or a workspace too small for the forced splits.
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
