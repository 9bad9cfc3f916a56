#include "backend/cuda/gemm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gqa/kernels/skinny_gemm_cuda.h"
#include "gqa/kernels/skinny_mma_plan.h"

namespace gqa::cuda {

// Column-major view: D[n, m] = W^T[n, k] . X[k, m], with W stored [k, n] (lda k, transposed)
// and X stored [k, m] (ldb k); D[n, m] column-major is y[m, n] row-major.
struct Gemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool skinny_mma = false;  // our tensor-core skinny kernel instead of cuBLASLt
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

namespace {

absl::Status MakeLayouts(cudaDataType_t io, bool fp32_out, int m, int n, int k,
                         cublasLtMatrixLayout_t* a, cublasLtMatrixLayout_t* b,
                         cublasLtMatrixLayout_t* d) {
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(a, io, k, n, k));
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(b, io, k, m, k));
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(d, fp32_out ? CUDA_R_32F : io, n, m, n));
  return absl::OkStatus();
}

int SplitK(const cublasLtMatmulAlgo_t& algo) {
  int32_t splits = 1;
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits,
                                       sizeof splits, &written);
  return splits;
}

}  // namespace

Gemm::Gemm(const CudaDevice* device, cudaDataType_t io_type, const GemmOptions& options)
    : device_(device), io_type_(io_type), options_(options) {}

Gemm::~Gemm() = default;

absl::Status Gemm::Launch(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const Operands& o) {
  const float alpha = 1.0f, beta = 0.0f;
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(device_->cublaslt(), plan.op, &alpha, o.w, plan.a, o.x,
                                            plan.b, &beta, o.y, plan.d, o.y, plan.d, &algo,
                                            device_->cublas_workspace(),
                                            CudaDevice::kCublasWorkspaceBytes, device_->stream()));
  return absl::OkStatus();
}

absl::StatusOr<float> Gemm::MedianUs(const std::function<absl::Status()>& launch) {
  constexpr size_t kFlushBytes = 128ull << 20;  // > 2x the L2 of a Hopper card
  if (flush_.bytes() == 0) {
    ASSIGN_OR_RETURN(flush_, DeviceMemory::Allocate(kFlushBytes, "GEMM tuning"));
  }
  cudaStream_t stream = device_->stream();
  cudaEvent_t start = nullptr, stop = nullptr;
  GQA_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  GQA_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int rep = 0; rep < 7; ++rep) {
    cudaMemsetAsync(flush_.get(), rep, kFlushBytes, stream);
    cudaEventRecord(start, stream);
    const absl::Status launched = launch();
    cudaEventRecord(stop, stream);
    if (!launched.ok()) break;
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (rep > 0) times.push_back(ms * 1000);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  if (times.size() < 6) return INFINITY;
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

absl::StatusOr<Gemm::Timed> Gemm::Fastest(Plan& plan,
                                          const std::vector<cublasLtMatmulAlgo_t>& candidates,
                                          const Operands& operands) {
  Timed best{candidates.front(), INFINITY};
  for (const cublasLtMatmulAlgo_t& algo : candidates) {
    ASSIGN_OR_RETURN(const float us, MedianUs([&] { return Launch(plan, algo, operands); }));
    if (us < best.us) best = {algo, us};
  }
  if (best.us == INFINITY) return absl::InternalError("no cuBLASLt candidate ran");
  return best;
}

absl::StatusOr<kernels::cuda::SkinnyMmaWorkspace> Gemm::SkinnyMmaWorkspace() {
  const int sms = options_.sm_count;
  const size_t partials = kernels::SkinnyMmaMaxPartialFloats(sms);
  const size_t counters = kernels::SkinnyMmaMaxCounters(sms);
  if (skinny_workspace_.bytes() == 0) {
    const size_t bytes = partials * sizeof(float) + counters * sizeof(int);
    ASSIGN_OR_RETURN(skinny_workspace_, DeviceMemory::Allocate(bytes, "skinny GEMM workspace"));
    GQA_CUDA_RETURN_IF_ERROR(cudaMemset(skinny_workspace_.get(), 0, bytes));  // the counters
  }
  float* base = static_cast<float*>(skinny_workspace_.get());
  return kernels::cuda::SkinnyMmaWorkspace{base, partials, reinterpret_cast<int*>(base + partials),
                                           counters, sms};
}

absl::Status Gemm::LaunchSkinnyMma(const Key& key, const Operands& o) {
  namespace k = kernels::cuda;
  const auto [m, n, k_dim, bias, fp32_out] = key;
  ASSIGN_OR_RETURN(const k::SkinnyMmaWorkspace workspace, SkinnyMmaWorkspace());
  cudaStream_t stream = device_->stream();
  auto run = [&]<typename T>(T*) {
    if (fp32_out) {
      return k::SkinnyMmaGemm<T, float>(static_cast<const T*>(o.x), k_dim,
                                        static_cast<const T*>(o.w), static_cast<const T*>(o.bias),
                                        m, n, k_dim, static_cast<float*>(o.y), workspace, stream);
    }
    return k::SkinnyMmaGemm<T, T>(static_cast<const T*>(o.x), k_dim, static_cast<const T*>(o.w),
                                  static_cast<const T*>(o.bias), m, n, k_dim, static_cast<T*>(o.y),
                                  workspace, stream);
  };
  const cudaError_t e = io_type_ == CUDA_R_16BF ? run(static_cast<__nv_bfloat16*>(nullptr))
                                                : run(static_cast<__half*>(nullptr));
  return CudaStatus(e, "SkinnyMmaGemm");
}

absl::StatusOr<bool> Gemm::SkinnyMmaWins(const Key& key, const Operands& operands,
                                         float cublas_us) {
  const int m = std::get<0>(key), k = std::get<2>(key);
  if (m > std::min(options_.skinny_mma_max_m, kernels::kSkinnyMmaMaxRows) || k % 8 != 0) {
    return false;
  }
  ASSIGN_OR_RETURN(const float us, MedianUs([&] { return LaunchSkinnyMma(key, operands); }));
  return us < cublas_us;
}

absl::StatusOr<std::vector<cublasLtMatmulAlgo_t>> Gemm::Candidates(const Plan& plan, int m, int n,
                                                                   int k, bool fp32_out) const {
  cublasLtMatmulPreference_t pref = nullptr;
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = CudaDevice::kCublasWorkspaceBytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                       sizeof workspace);
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  absl::Status st = MakeLayouts(io_type_, fp32_out, m, n, k, &a, &b, &d);
  std::vector<cublasLtMatmulHeuristicResult_t> results(16);
  int found = 0;
  if (st.ok()) {
    st = CublasStatus(
        cublasLtMatmulAlgoGetHeuristic(device_->cublaslt(), plan.op, a, b, d, d, pref,
                                       static_cast<int>(results.size()), results.data(), &found),
        "cublasLtMatmulAlgoGetHeuristic");
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (a) cublasLtMatrixLayoutDestroy(a);
  if (b) cublasLtMatrixLayoutDestroy(b);
  if (d) cublasLtMatrixLayoutDestroy(d);
  if (!st.ok()) return st;
  std::vector<cublasLtMatmulAlgo_t> candidates;
  for (int i = 0; i < found; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) candidates.push_back(results[i].algo);
  }
  return candidates;
}

bool Gemm::Runs(const Plan& plan, const cublasLtMatmulAlgo_t& algo) const {
  cublasLtMatmulHeuristicResult_t check{};
  return cublasLtMatmulAlgoCheck(device_->cublaslt(), plan.op, plan.a, plan.b, plan.d, plan.d,
                                 &algo, &check) == CUBLAS_STATUS_SUCCESS;
}

// Batch-invariant mode: one algorithm per (n, k, bias, output type), without split-K, chosen
// the first time the product is seen, from the heuristic's candidates at invariant_m rows (at
// fallback_m rows when none of those qualifies); every later row count runs it or fails loudly.
absl::StatusOr<cublasLtMatmulAlgo_t> Gemm::InvariantAlgorithm(const Plan& plan, const Key& key) {
  const auto [m, n, k, bias, fp32_out] = key;
  const InvariantKey product{n, k, bias, fp32_out};
  if (auto it = invariant_algos_.find(product); it != invariant_algos_.end()) {
    if (Runs(plan, it->second)) return it->second;
    return absl::InternalError(absl::StrCat("--deterministic: cuBLASLt's algorithm for the ", n,
                                            "x", k, " product does not run ", m, " rows"));
  }
  for (const int ask_m : {options_.invariant_m, options_.fallback_m}) {
    ASSIGN_OR_RETURN(const auto candidates, Candidates(plan, ask_m, n, k, fp32_out));
    for (const cublasLtMatmulAlgo_t& algo : candidates) {
      if (SplitK(algo) > 1 || !Runs(plan, algo)) continue;
      invariant_algos_.emplace(product, algo);
      return algo;
    }
  }
  return absl::InternalError(absl::StrCat("--deterministic: cuBLASLt has no algorithm without ",
                                          "split-K for the ", n, "x", k, " product"));
}

absl::StatusOr<cublasLtMatmulAlgo_t> Gemm::PickAlgorithm(Plan& plan, const Key& key,
                                                         const Operands& operands) {
  if (options_.mode == GemmMode::kBatchInvariant) return InvariantAlgorithm(plan, key);
  const auto [m, n, k, bias, fp32_out] = key;
  ASSIGN_OR_RETURN(const auto candidates, Candidates(plan, m, n, k, fp32_out));
  if (candidates.empty()) {
    return absl::InternalError(
        absl::StrCat("cuBLASLt has no algorithm for a ", m, "x", n, "x", k, " product"));
  }
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(device_->stream(), &capturing);
  if (tuning_ && m <= options_.tune_max_m && capturing == cudaStreamCaptureStatusNone) {
    auto fastest = Fastest(plan, candidates, operands);
    if (!fastest.ok()) return candidates.front();  // (no memory to flush L2) the heuristic's
    ASSIGN_OR_RETURN(plan.skinny_mma, SkinnyMmaWins(key, operands, fastest->us));
    return fastest->algo;
  }
  return candidates.front();
}

absl::StatusOr<Gemm::Plan*> Gemm::GetPlan(const Key& key, const Operands& operands) {
  if (auto it = plans_.find(key); it != plans_.end()) return it->second.get();
  const auto [m, n, k, bias, fp32_out] = key;
  auto plan = std::make_unique<Plan>();
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  GQA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof trans));
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                            &no_trans, sizeof no_trans));
  if (bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &io_type_, sizeof io_type_));
    GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &operands.bias, sizeof operands.bias));
  }
  if (auto st = MakeLayouts(io_type_, fp32_out, m, n, k, &plan->a, &plan->b, &plan->d); !st.ok()) {
    return st;
  }
  auto algo = PickAlgorithm(*plan, key, operands);
  if (!algo.ok()) return algo.status();
  plan->algo = *algo;
  return plans_.emplace(key, std::move(plan)).first->second.get();
}

absl::Status Gemm::Run(const void* x, const void* w, const void* bias, int m, int n, int k, void* y,
                       bool fp32_out) {
  if (m == 0) return absl::OkStatus();
  const Operands operands{x, w, bias, y};
  const Key key{m, n, k, bias != nullptr, fp32_out};
  ASSIGN_OR_RETURN(Plan * plan, GetPlan(key, operands));
  if (plan->skinny_mma) return LaunchSkinnyMma(key, operands);
  if (bias) {
    GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  return Launch(*plan, plan->algo, operands);
}

}  // namespace gqa::cuda
