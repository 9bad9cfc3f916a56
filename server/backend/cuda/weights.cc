#include "backend/cuda/weights.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gqa/kernels/elementwise_cuda.h"
#include "model/tensor_names.h"
#include "model/tensor_parallel.h"
#include "spdlog/spdlog.h"

namespace gqa::cuda {
namespace {

constexpr size_t kStagingBytes = 64ull << 20;

// What part of a checkpoint tensor, seen as [rows, cols] (a vector is [n, 1]), one rank takes.
enum class SliceKind {
  kWhole,    // every element
  kRows,     // rows [begin, end): column-parallel matrices, their biases, vocabulary rows
  kColumns,  // columns [begin, end) of every row: row-parallel matrices (O, down)
  kZeros,    // zeros of the whole tensor's size: a row-parallel bias on ranks other than 0
};

// One weight tensor's destination and where its values come from.
struct Piece {
  std::string name;  // checkpoint tensor name
  void* dst;         // device address
  SliceKind kind = SliceKind::kWhole;
  IndexRange range;  // rows or columns, for kRows and kColumns
};

// Converts n elements of src_dtype to dst_dtype (F16 or BF16) at dst.
void ConvertElements(DType src_dtype, const std::byte* src, size_t n, DType dst_dtype, void* dst,
                     std::vector<float>& scratch) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, n * DTypeSize(dst_dtype));
    return;
  }
  scratch.resize(n);
  ConvertToFloat(src_dtype, src, n, scratch.data());
  ConvertFromFloat(dst_dtype, scratch.data(), n, dst);
}

// The elements of a piece's tensor one rank takes: rows [row0, row0 + rows) and columns
// [col0, col0 + cols) of the tensor seen as [numel / stride, stride].
struct TensorSlice {
  size_t row0 = 0, rows = 0, col0 = 0, cols = 0, stride = 0;
};

TensorSlice SliceOf(const TensorView& t, const Piece& piece) {
  const size_t n = static_cast<size_t>(t.numel());
  const size_t begin = piece.range.begin, size = piece.range.size();
  const bool matrix = t.shape.size() >= 2;
  const size_t stride = matrix ? static_cast<size_t>(t.shape.back()) : n;
  switch (piece.kind) {
    case SliceKind::kRows:  // a vector's "rows" are its elements
      return matrix ? TensorSlice{begin, size, 0, stride, stride}
                    : TensorSlice{0, 1, begin, size, n};
    case SliceKind::kColumns:
      return TensorSlice{0, n / stride, begin, size, stride};
    case SliceKind::kWhole:
    case SliceKind::kZeros:
      break;
  }
  return TensorSlice{0, 1, 0, n, n};
}

}  // namespace

size_t DeviceWeights::Carve(const ModelConfig& c, void* base) {
  BufferCarver carve(base);
  const size_t e = DTypeSize(dtype_);
  auto take = [&](size_t elems) -> const void* { return carve.Take<std::byte>(elems * e); };
  const size_t h = c.hidden_size, qkv = c.q_size() + 2 * c.kv_size(), inter = c.intermediate_size;
  embed_ = take(size_t(c.vocab_size) * h);
  layers_.assign(c.num_layers, {});
  for (LayerWeights& L : layers_) {
    L.input_norm = take(h);
    L.qkv = take(qkv * h);
    if (c.qkv_bias) L.qkv_bias = take(qkv);
    L.o = take(h * c.q_size());
    if (c.o_bias) L.o_bias = take(h);
    L.post_norm = take(h);
    L.gate_up = take(2 * inter * h);
    if (c.mlp_bias) L.gate_up_bias = take(2 * inter);
    L.down = take(h * inter);
    if (c.mlp_bias) L.down_bias = take(h);
  }
  norm_ = take(h);
  lm_head_ = c.tie_word_embeddings ? embed_ : take(size_t(c.vocab_size) * h);
  return carve.bytes();
}

absl::StatusOr<DeviceWeights> DeviceWeights::Allocate(const ModelConfig& c, DType dtype) {
  DeviceWeights w;
  w.dtype_ = dtype;
  ASSIGN_OR_RETURN(w.memory_, DeviceMemory::Allocate(w.Carve(c, nullptr), "the model weights"));
  w.Carve(c, w.memory_.get());
  return w;
}

ModelConfig ShardConfig(const ModelConfig& c, const TensorParallelShard& shard) {
  ModelConfig local = c;
  local.num_heads = shard.query_heads.size();
  local.num_kv_heads = shard.kv_heads.size();
  local.intermediate_size = shard.intermediate.size();
  local.vocab_size = shard.vocab.size();
  return local;
}

absl::StatusOr<DeviceWeights> DeviceWeights::Upload(const Checkpoint& ckpt, DType dtype,
                                                    Shard shard, const CudaDevice& device) {
  const ModelConfig& full = ckpt.config();
  ASSIGN_OR_RETURN(const TensorParallelShard plan,
                   PlanTensorParallelShard(full, shard.rank, shard.world_size));
  const ModelConfig c = ShardConfig(full, plan);
  ASSIGN_OR_RETURN(DeviceWeights w, Allocate(c, dtype));

  // Every checkpoint tensor and its place; fused matrices are their parts back to back.
  const size_t e = DTypeSize(dtype);
  auto at = [&](const void* p, size_t elems) {
    return static_cast<std::byte*>(const_cast<void*>(p)) + elems * e;
  };
  // Column-parallel pieces take rows, row-parallel ones columns; a row-parallel bias is added
  // once, by rank 0, so the all-reduce after the product sums it once.
  const SliceKind once = plan.rank == 0 ? SliceKind::kWhole : SliceKind::kZeros;
  const IndexRange q_rows = plan.query_rows(full), kv_rows = plan.kv_rows(full);
  std::vector<Piece> pieces = {
      {tensor_names::kEmbed, at(w.embed_, 0), SliceKind::kRows, plan.vocab},
      {tensor_names::kFinalNorm, at(w.norm_, 0), SliceKind::kWhole, {}}};
  if (!c.tie_word_embeddings) {
    pieces.push_back({tensor_names::kLmHead, at(w.lm_head_, 0), SliceKind::kRows, plan.vocab});
  }
  const size_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), inter = c.intermediate_size;
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w.layers_[l];
    auto add = [&](const char* suffix, void* dst, SliceKind kind = SliceKind::kWhole,
                   IndexRange range = {}) {
      pieces.push_back({LayerTensorName(l, suffix), dst, kind, range});
    };
    constexpr SliceKind kRows = SliceKind::kRows, kColumns = SliceKind::kColumns;
    add(tensor_names::kInputNorm, at(L.input_norm, 0));
    add(tensor_names::kQ, at(L.qkv, 0), kRows, q_rows);
    add(tensor_names::kK, at(L.qkv, q * h), kRows, kv_rows);
    add(tensor_names::kV, at(L.qkv, (q + kv) * h), kRows, kv_rows);
    if (c.qkv_bias) {
      add(tensor_names::kQBias, at(L.qkv_bias, 0), kRows, q_rows);
      add(tensor_names::kKBias, at(L.qkv_bias, q), kRows, kv_rows);
      add(tensor_names::kVBias, at(L.qkv_bias, q + kv), kRows, kv_rows);
    }
    add(tensor_names::kO, at(L.o, 0), kColumns, q_rows);
    if (c.o_bias) add(tensor_names::kOBias, at(L.o_bias, 0), once);
    add(tensor_names::kPostNorm, at(L.post_norm, 0));
    add(tensor_names::kGate, at(L.gate_up, 0), kRows, plan.intermediate);
    add(tensor_names::kUp, at(L.gate_up, inter * h), kRows, plan.intermediate);
    add(tensor_names::kDown, at(L.down, 0), kColumns, plan.intermediate);
    if (c.mlp_bias) {
      add(tensor_names::kGateBias, at(L.gate_up_bias, 0), kRows, plan.intermediate);
      add(tensor_names::kUpBias, at(L.gate_up_bias, inter), kRows, plan.intermediate);
      add(tensor_names::kDownBias, at(L.down_bias, 0), once);
    }
  }

  auto staging = PinnedMemory::Allocate(kStagingBytes);
  if (!staging.ok()) return staging.status();
  std::vector<float> scratch;
  const size_t per_chunk = kStagingBytes / e;
  const bool verbose = w.bytes() > (1ull << 30);
  size_t done_bytes = 0, next_report = w.bytes() / 10;
  for (const Piece& piece : pieces) {
    const TensorView& t = ckpt.Get(piece.name);
    const TensorSlice slice = SliceOf(t, piece);
    const size_t n = slice.rows * slice.cols;
    if (piece.kind == SliceKind::kZeros) {
      GQA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(piece.dst, 0, n * e, device.stream()));
    }
    // Whole rows of the slice per chunk (a row longer than a chunk is split within itself).
    for (size_t first = 0; first < n && piece.kind != SliceKind::kZeros; first += per_chunk) {
      const size_t count = std::min(per_chunk, n - first);
      for (size_t done = 0; done < count;) {
        const size_t i = first + done, row = i / slice.cols, col = i % slice.cols;
        const size_t run = std::min(slice.cols - col, count - done);
        const size_t src = (slice.row0 + row) * slice.stride + slice.col0 + col;
        ConvertElements(t.dtype, t.data + src * DTypeSize(t.dtype), run, dtype,
                        static_cast<std::byte*>(staging->get()) + done * e, scratch);
        done += run;
      }
      GQA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(static_cast<std::byte*>(piece.dst) + first * e,
                                               staging->get(), count * e, cudaMemcpyHostToDevice,
                                               device.stream()));
      GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(device.stream()));
    }
    done_bytes += n * e;
    if (verbose && done_bytes >= next_report) {
      spdlog::info("uploading weights: {:.1f} of {:.1f} GiB", done_bytes / 1073741824.0,
                   w.bytes() / 1073741824.0);
      next_report += w.bytes() / 10;
    }
  }
  return w;
}

absl::StatusOr<DeviceWeights> DeviceWeights::Random(const ModelConfig& c, DType dtype,
                                                    uint64_t seed, const CudaDevice& device) {
  ASSIGN_OR_RETURN(DeviceWeights w, Allocate(c, dtype));
  // Everything uniform first, then the norms set to 1 and the biases to 0.
  const size_t e = DTypeSize(dtype);
  cudaStream_t s = device.stream();
  auto fill = [&](const void* p, size_t n, float lo, float hi) {
    void* dst = const_cast<void*>(p);
    return dtype == DType::kBF16
               ? kernels::cuda::FillUniform(static_cast<__nv_bfloat16*>(dst), n, lo, hi, seed++, s)
               : kernels::cuda::FillUniform(static_cast<__half*>(dst), n, lo, hi, seed++, s);
  };
  GQA_CUDA_RETURN_IF_ERROR(fill(w.memory_.get(), w.bytes() / e, -0.02f, 0.02f));
  const size_t h = c.hidden_size, qkv = c.q_size() + 2 * c.kv_size();
  GQA_CUDA_RETURN_IF_ERROR(fill(w.norm_, h, 1.0f, 1.0f));
  for (const LayerWeights& L : w.layers_) {
    GQA_CUDA_RETURN_IF_ERROR(fill(L.input_norm, h, 1.0f, 1.0f));
    GQA_CUDA_RETURN_IF_ERROR(fill(L.post_norm, h, 1.0f, 1.0f));
    if (L.qkv_bias) GQA_CUDA_RETURN_IF_ERROR(fill(L.qkv_bias, qkv, 0.0f, 0.0f));
    if (L.o_bias) GQA_CUDA_RETURN_IF_ERROR(fill(L.o_bias, h, 0.0f, 0.0f));
    if (L.gate_up_bias) {
      GQA_CUDA_RETURN_IF_ERROR(fill(L.gate_up_bias, 2 * c.intermediate_size, 0.0f, 0.0f));
    }
    if (L.down_bias) GQA_CUDA_RETURN_IF_ERROR(fill(L.down_bias, h, 0.0f, 0.0f));
  }
  GQA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return w;
}

}  // namespace gqa::cuda
