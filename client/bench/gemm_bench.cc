// gqa-bench gemm: the decode step's weight products alone (Llama-3.2-1B and Llama-3.1-8B shapes,
// bf16, 1-64 rows), each timed three ways: cuBLASLt (the fastest of its heuristic's candidates,
// as the backend picks it at startup), our tensor-core skinny kernel, and our CUDA-core skinny
// kernel (up to 8 rows), printed beside the floor (weight bytes / the device-to-device copy
// bandwidth measured in the same run).
//
// With --variants, each row is followed by the tensor-core kernel's tuning variants
// (gqa/kernels/skinny_mma_tuning_cuda.h): one line per variant (register ring depth, 16-row
// weight tiles per warp), microseconds per call at the plan's splits and at 1, 2, 4, 8 and 16
// splits forced ("-" where the workspace holds no such cut), so one GPU run picks the defaults.
//
// Each method runs 30 times back to back on the stream (as a step's kernels follow each other),
// each call on another copy of the weight so that L2 (50-60 MB) never serves it; the time is the
// mean per call between two events.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/gemm.h"
#include "copy_bandwidth.h"
#include "gqa/kernels/skinny_gemm_cuda.h"
#include "gqa/kernels/skinny_mma_plan.h"
#include "gqa/kernels/skinny_mma_tuning_cuda.h"

namespace gqa {
namespace {

using T = __nv_bfloat16;
namespace k = kernels::cuda;

struct Product {
  const char* name;
  int n, k;
};

// The products of one decoder layer and the lm_head, as the CUDA backend stores them (fused
// QKV and gate|up weights).
const std::vector<Product> kProducts = {
    {"1b.qkv", 3072, 2048},  {"1b.o", 2048, 2048},         {"1b.gate_up", 16384, 2048},
    {"1b.down", 2048, 8192}, {"1b.lm_head", 128256, 2048}, {"8b.qkv", 6144, 4096},
    {"8b.o", 4096, 4096},    {"8b.gate_up", 28672, 4096},  {"8b.down", 4096, 14336},
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "gqa-bench gemm: %s\n", what.c_str());
  std::exit(1);
}

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) Die(std::string(what) + ": " + cudaGetErrorString(e));
}

// Microseconds per call of `launch(copy)` over 30 calls that cycle through `copies` weights.
double MeanUs(cudaStream_t stream, int copies, const std::function<cudaError_t(int)>& launch) {
  for (int i = 0; i < 3; ++i) Check(launch(i % copies), "warm-up");
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  constexpr int kCalls = 30;
  cudaEventRecord(start, stream);
  for (int i = 0; i < kCalls; ++i) Check(launch(i % copies), "launch");
  cudaEventRecord(stop, stream);
  Check(cudaEventSynchronize(stop), "sync");
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms * 1000 / kCalls;
}

// One line per variant: the tuned kernel's microseconds per call at each cut.
void VariantRows(const Product& p, int m, cudaStream_t stream, int copies,
                 const std::function<const T*(int)>& w, const T* x, T* y,
                 const k::SkinnyMmaWorkspace& workspace) {
  constexpr int kSplits[] = {0, 1, 2, 4, 8, 16};
  const k::SkinnyMmaVariant d = k::SkinnyMmaDefaultVariant(m);
  std::printf("%-11s %3d variants (default ring %d tiles %d) | us at splits plan(%d) 1 2 4 8 16\n",
              p.name, m, d.ring_stages, d.row_tiles,
              kernels::PlanSkinnyMma(m, p.n, p.k, workspace.sm_count).splits);
  for (const k::SkinnyMmaVariant& variant : k::kSkinnyMmaVariants) {
    std::printf("%-11s %3d ring %d tiles %d |", p.name, m, variant.ring_stages, variant.row_tiles);
    for (int splits : kSplits) {
      const kernels::SkinnyMmaPlan plan =
          splits > 0 ? kernels::SkinnyMmaPlanOfSplits(p.n, p.k, splits)
                     : kernels::PlanSkinnyMma(m, p.n, p.k, workspace.sm_count);
      if (kernels::SkinnyMmaPartialFloats(plan, m) > workspace.partial_floats ||
          kernels::SkinnyMmaCounters(plan) > workspace.counters_size) {
        std::printf(" %7s", "-");
        continue;
      }
      const k::SkinnyMmaTuning tuning{variant, splits};
      std::printf(" %7.1f", MeanUs(stream, copies, [&](int c) {
                    return k::SkinnyMmaGemmTuned<T>(x, p.k, w(c), nullptr, m, p.n, p.k, y, tuning,
                                                    workspace, stream);
                  }));
    }
    std::printf("\n");
    std::fflush(stdout);
  }
}

void Row(const Product& p, int m, double bandwidth, bool variants, cuda::CudaDevice& device) {
  cudaStream_t stream = device.stream();
  const size_t weight_bytes = size_t(p.n) * p.k * sizeof(T);
  const int copies = int(std::max<size_t>(2, (320ull << 20) / weight_bytes + 1));
  T* weights = nullptr;
  T *x = nullptr, *y = nullptr;
  Check(cudaMalloc(&weights, weight_bytes * copies), "cudaMalloc weights");
  Check(cudaMalloc(&x, size_t(m) * p.k * sizeof(T)), "cudaMalloc x");
  Check(cudaMalloc(&y, size_t(m) * p.n * sizeof(T)), "cudaMalloc y");
  Check(cudaMemset(weights, 0x3c, weight_bytes * copies), "memset");  // small finite values
  Check(cudaMemset(x, 0x3c, size_t(m) * p.k * sizeof(T)), "memset");
  auto w = [&](int copy) { return weights + size_t(copy) * p.n * p.k; };

  cuda::GemmOptions options;
  options.tune_max_m = kernels::kSkinnyMmaMaxRows;
  cuda::Gemm cublas(&device, CUDA_R_16BF, options);
  const double cublas_us = MeanUs(stream, copies, [&](int c) {
    return cublas.Run(x, w(c), nullptr, m, p.n, p.k, y).ok() ? cudaSuccess : cudaErrorUnknown;
  });

  const int sms = device.sm_count();
  float* partials = nullptr;
  int* counters = nullptr;
  Check(cudaMalloc(&partials, kernels::SkinnyMmaMaxPartialFloats(sms) * sizeof(float)), "malloc");
  Check(cudaMalloc(&counters, kernels::SkinnyMmaMaxCounters(sms) * sizeof(int)), "malloc");
  Check(cudaMemset(counters, 0, kernels::SkinnyMmaMaxCounters(sms) * sizeof(int)), "memset");
  const k::SkinnyMmaWorkspace workspace{partials, kernels::SkinnyMmaMaxPartialFloats(sms), counters,
                                        kernels::SkinnyMmaMaxCounters(sms), sms};
  const double mma_us = MeanUs(stream, copies, [&](int c) {
    return k::SkinnyMmaGemm<T, T>(x, p.k, w(c), nullptr, m, p.n, p.k, y, workspace, stream);
  });
  double cuda_core_us = 0;
  if (m <= k::kSkinnyGemmMaxRows && size_t(k::kSkinnyGemmMaxRows) * p.k * sizeof(T) <= 200 << 10) {
    cuda_core_us = MeanUs(stream, copies, [&](int c) {
      return k::SkinnyGemm<T, T>(x, p.k, k::SkinnyInput::kPlain, w(c), nullptr, m, p.n, p.k, y,
                                 stream);
    });
  }
  const double floor_us = weight_bytes / bandwidth * 1e6;
  const double best = std::min(cublas_us, mma_us);
  const kernels::SkinnyMmaPlan plan = kernels::PlanSkinnyMma(m, p.n, p.k, sms);
  std::printf("%-11s %3d %6d %6d %7.1f | %8.1f %8.1f %8.1f %8.1f | %5.0f%% %5.0f%% %6.2fx %3d\n",
              p.name, m, p.n, p.k, weight_bytes / 1e6, floor_us, cublas_us, mma_us, cuda_core_us,
              100 * floor_us / cublas_us, 100 * floor_us / best, cublas_us / mma_us, plan.splits);
  std::fflush(stdout);
  if (variants) VariantRows(p, m, stream, copies, w, x, y, workspace);
  cudaFree(weights);
  cudaFree(x);
  cudaFree(y);
  cudaFree(partials);
  cudaFree(counters);
}

}  // namespace

int GemmBenchMain(int argc, char** argv) {
  std::vector<int> rows = {1, 2, 4, 8, 16, 32, 64};
  std::string only;
  bool variants = false;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--variants") variants = true;  // the tensor-core kernel's tuning variants too
    if (arg == "--only" && i + 1 < argc) only = argv[++i];  // a product name prefix, e.g. 1b
    if (arg == "--rows" && i + 1 < argc) {                  // a comma-separated list, e.g. 1,8,64
      rows.clear();
      for (const char* p = argv[++i]; *p != 0;) {
        char* end = nullptr;
        rows.push_back(int(std::strtol(p, &end, 10)));
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p != 0) break;
      }
    }
  }
  auto device = cuda::CudaDevice::Open(0);
  if (!device.ok()) Die(std::string(device.status().message()));
  const double bandwidth = CopyBandwidth();
  std::printf("device: %s; device-to-device copy %.0f GB/s (read + written)\n",
              (*device)->name().c_str(), bandwidth / 1e9);
  std::printf("%-11s %3s %6s %6s %7s | %8s %8s %8s %8s | %6s %6s %7s %3s\n", "product", "m", "n",
              "k", "MB", "floor_us", "cublas", "mma", "cudacore", "cub%", "best%", "mma_x", "spl");
  for (const Product& p : kProducts) {
    if (!only.empty() && std::string(p.name).rfind(only, 0) != 0) continue;
    for (int m : rows) Row(p, m, bandwidth, variants, **device);
  }
  return 0;
}

}  // namespace gqa
