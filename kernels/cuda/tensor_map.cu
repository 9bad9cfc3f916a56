// Tensor maps of the paged KV cache (see tensor_map.h).
#include <cudaTypedefs.h>

#include <cstdint>

#include "gqa/kernels/paged_attention_cuda.h"
#include "tensor_map.h"

namespace gqa::kernels::cuda {
namespace {

// cuTensorMapEncodeTiled from the driver the runtime loaded; nullptr where it has none.
PFN_cuTensorMapEncodeTiled_v12000 EncodeTiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return PFN_cuTensorMapEncodeTiled_v12000{nullptr};
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

}  // namespace

bool TensorMapsAvailable() { return EncodeTiled() != nullptr; }

cudaError_t EncodeKvPoolMap(CUtensorMap* map, const void* pool, int head_dim) {
  if (reinterpret_cast<uintptr_t>(pool) % 16 != 0 || head_dim <= 0 ||
      head_dim % kKvMapBoxColumns != 0) {
    return cudaErrorInvalidValue;
  }
  const PFN_cuTensorMapEncodeTiled_v12000 encode = EncodeTiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  // The pool's length is not known here: the rows dimension is the largest a signed 32-bit
  // coordinate reaches. The kernels only ask for rows of blocks the tables name.
  const cuuint64_t dims[2] = {cuuint64_t(head_dim), (cuuint64_t(1) << 31) - 1};
  const cuuint64_t row_stride[1] = {cuuint64_t(head_dim) * 2};
  const cuuint32_t box[2] = {kKvMapBoxColumns, kKvMapBoxRows};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r =
      encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, const_cast<void*>(pool), dims, row_stride, box,
             element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t EncodeKvPoolMaps(KvPoolMaps* maps, const void* k_pool, const void* v_pool,
                             int head_dim) {
  if (const cudaError_t e = EncodeKvPoolMap(&maps->k, k_pool, head_dim); e != cudaSuccess) {
    return e;
  }
  return EncodeKvPoolMap(&maps->v, v_pool, head_dim);
}

}  // namespace gqa::kernels::cuda
