// The decoder's matrix products through cuBLASLt: y = x @ w^T (+ bias), Hugging Face Linear
// layout, bf16 or fp16 in, T or fp32 out, fp32 accumulation. One plan (descriptors and the
// algorithm cuBLASLt's heuristic picks) per shape, made the first time the shape is seen
// (at warm-up and graph capture) and reused after.
#pragma once

#include <cublasLt.h>
#include <library_types.h>

#include <functional>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "backend/cuda/device.h"
#include "gqa/kernels/skinny_gemm_cuda.h"

namespace gqa::cuda {

enum class GemmMode {
  kFastest,        // per shape: the fastest heuristic candidate (decode shapes) or the first
  kBatchInvariant  // no split-K, and one algorithm per (n, k) for every m: a row's result does
                   // not depend on how many rows are batched with it (--deterministic)
};

struct GemmOptions {
  GemmMode mode = GemmMode::kFastest;
  // kBatchInvariant: each product's algorithm comes from the heuristic's candidates for
  // invariant_m rows (the largest decode batch: decode steps dominate), or fallback_m rows when
  // none of those runs without split-K.
  int invariant_m = 1;
  int fallback_m = 1;
  // kFastest: shapes of up to tune_max_m rows (decode steps, first seen at warm-up) time the
  // heuristic's candidates, with L2 flushed before each run as a decode step finds it, and keep
  // the fastest.
  int tune_max_m = 0;
  // kFastest: tuned shapes of up to this many rows (at most kernels::kSkinnyMmaMaxRows) also
  // time our tensor-core skinny kernel (gqa/kernels/skinny_gemm_cuda.h) and run it where it is
  // the fastest; 0: cuBLASLt only.
  int skinny_mma_max_m = 0;
  int sm_count = 1;  // for the skinny kernel's cut
};

class Gemm {
 public:
  // io_type: CUDA_R_16BF or CUDA_R_16F.
  Gemm(const CudaDevice* device, cudaDataType_t io_type, const GemmOptions& options);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y[m, n] = x[m, k] @ w[n, k]^T + bias[n]; y is io_type, or fp32 with fp32_out.
  absl::Status Run(const void* x,     // [m, k]
                   const void* w,     // [n, k]
                   const void* bias,  // [n] or nullptr
                   int m, int n, int k,
                   void* y,  // [m, n]
                   bool fp32_out = false);
  // The tensor-core skinny kernel's workspace, allocated (zeroed) on the first call: sized for
  // any product, shared by every skinny product on the stream (one at a time).
  absl::StatusOr<kernels::cuda::SkinnyMmaWorkspace> SkinnyMmaWorkspace();
  // Ends tuning (after warm-up and graph capture: never inside a serving step) and releases
  // what it needed. Shapes first seen later take the heuristic's first algorithm.
  void FinishTuning() {
    tuning_ = false;
    flush_ = DeviceMemory();
  }

 private:
  struct Plan;
  using Key = std::tuple<int, int, int, bool, bool>;  // m, n, k, bias, fp32_out
  struct Operands {
    const void *x, *w, *bias;
    void* y;
  };
  using InvariantKey = std::tuple<int, int, bool, bool>;  // n, k, bias, fp32_out
  absl::StatusOr<Plan*> GetPlan(const Key& key, const Operands& operands);
  // The heuristic's algorithms for `plan`'s product at m rows, best first.
  absl::StatusOr<std::vector<cublasLtMatmulAlgo_t>> Candidates(const Plan& plan, int m, int n,
                                                               int k, bool fp32_out) const;
  bool Runs(const Plan& plan, const cublasLtMatmulAlgo_t& algo) const;
  absl::StatusOr<cublasLtMatmulAlgo_t> InvariantAlgorithm(const Plan& plan, const Key& key);
  absl::StatusOr<cublasLtMatmulAlgo_t> PickAlgorithm(Plan& plan, const Key& key,
                                                     const Operands& operands);
  // The fastest of `candidates` on these operands and its time (median of a few runs).
  struct Timed {
    cublasLtMatmulAlgo_t algo;
    float us;
  };
  absl::StatusOr<Timed> Fastest(Plan& plan, const std::vector<cublasLtMatmulAlgo_t>& candidates,
                                const Operands& operands);
  // Median microseconds of `launch` on the stream with L2 flushed before each run; infinity when
  // it fails.
  absl::StatusOr<float> MedianUs(const std::function<absl::Status()>& launch);
  // Whether the tensor-core skinny kernel beats `cublas_us` on this product (tuning only).
  absl::StatusOr<bool> SkinnyMmaWins(const Key& key, const Operands& operands, float cublas_us);
  absl::Status Launch(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const Operands& operands);
  absl::Status LaunchSkinnyMma(const Key& key, const Operands& operands);

  const CudaDevice* device_;
  cudaDataType_t io_type_;
  GemmOptions options_;
  bool tuning_ = true;
  DeviceMemory flush_;  // written between timed runs to push the weights out of L2
  // The skinny kernel's partial sums and split counters, sized once for any product
  // (kernels::SkinnyMmaWorkspaceBytes) the first time it is timed: graphs keep the pointers.
  DeviceMemory skinny_workspace_;
  std::map<InvariantKey, cublasLtMatmulAlgo_t> invariant_algos_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace gqa::cuda
