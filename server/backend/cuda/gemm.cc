#include "backend/cuda/gemm.h"

#include <vector>

#include "absl/strings/str_cat.h"

namespace gqa::cuda {

// Column-major view: D[n, m] = W^T[n, k] . X[k, m], with W stored [k, n] (lda k, transposed)
// and X stored [k, m] (ldb k); D[n, m] column-major is y[m, n] row-major.
struct Gemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
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

Gemm::Gemm(const CudaDevice* device, cudaDataType_t io_type, GemmMode mode, int max_m)
    : device_(device), io_type_(io_type), mode_(mode), max_m_(max_m) {}

Gemm::~Gemm() = default;

absl::StatusOr<cublasLtMatmulAlgo_t> Gemm::PickAlgorithm(Plan& plan, const Key& key) {
  const auto [m, n, k, bias, fp32_out] = key;
  cublasLtMatmulPreference_t pref = nullptr;
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = CudaDevice::kCublasWorkspaceBytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                       sizeof workspace);
  // Batch-invariant mode asks at the largest m and keeps that algorithm for every m.
  const int ask_m = mode_ == GemmMode::kBatchInvariant ? max_m_ : m;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  absl::Status st = MakeLayouts(io_type_, fp32_out, ask_m, n, k, &a, &b, &d);
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
  for (int i = 0; i < found; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    if (mode_ == GemmMode::kFastest) return results[i].algo;
    if (SplitK(results[i].algo) > 1) continue;
    cublasLtMatmulHeuristicResult_t check{};
    if (cublasLtMatmulAlgoCheck(device_->cublaslt(), plan.op, plan.a, plan.b, plan.d, plan.d,
                                &results[i].algo, &check) == CUBLAS_STATUS_SUCCESS) {
      return results[i].algo;
    }
  }
  return absl::InternalError(
      absl::StrCat("cuBLASLt has no algorithm for a ", m, "x", n, "x", k, " product",
                   mode_ == GemmMode::kBatchInvariant ? " without split-K" : ""));
}

absl::StatusOr<Gemm::Plan*> Gemm::GetPlan(const Key& key) {
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
  }
  if (auto st = MakeLayouts(io_type_, fp32_out, m, n, k, &plan->a, &plan->b, &plan->d); !st.ok()) {
    return st;
  }
  auto algo = PickAlgorithm(*plan, key);
  if (!algo.ok()) return algo.status();
  plan->algo = *algo;
  return plans_.emplace(key, std::move(plan)).first->second.get();
}

absl::Status Gemm::Run(const void* x, const void* w, const void* bias, int m, int n, int k, void* y,
                       bool fp32_out) {
  if (m == 0) return absl::OkStatus();
  auto plan = GetPlan({m, n, k, bias != nullptr, fp32_out});
  if (!plan.ok()) return plan.status();
  if (bias) {
    GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        (*plan)->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  const float alpha = 1.0f, beta = 0.0f;
  GQA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(device_->cublaslt(), (*plan)->op, &alpha, w, (*plan)->a,
                                            x, (*plan)->b, &beta, y, (*plan)->d, y, (*plan)->d,
                                            &(*plan)->algo, device_->cublas_workspace(),
                                            CudaDevice::kCublasWorkspaceBytes, device_->stream()));
  return absl::OkStatus();
}

}  // namespace gqa::cuda
