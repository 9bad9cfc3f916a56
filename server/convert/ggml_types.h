// ggml's tensor element types (as stored in GGUF files) and their dequantization to fp32.
// The arithmetic follows ggml's reference dequantizers operation for operation (fp16 scales
// widened exactly, one rounding per product or sum, no fused multiply-add), so the results are
// bitwise those of ggml and of the `gguf` Python package.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace gqa {

// The numbering of ggml.h's enum ggml_type (stable: it is written into files).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

// "Q4_K", "BF16", ...; for a number ggml never assigned, "type <n>".
std::string GgmlTypeName(uint32_t type);

// Elements per block and bytes per block of a type this project can dequantize; nullopt for the
// others (known to ggml or not).
struct GgmlBlockLayout {
  int64_t elements;
  int64_t bytes;
};
std::optional<GgmlBlockLayout> DequantizableLayout(uint32_t type);

// Bytes per block of any type ggml defines (to measure tensors we cannot dequantize); nullopt
// for numbers ggml never assigned.
std::optional<GgmlBlockLayout> GgmlLayout(uint32_t type);

// Dequantizes n elements (a whole number of blocks) of `type` at src into dst. The type must be
// one DequantizableLayout accepts.
void DequantizeToFloat(GgmlType type, const std::byte* src, int64_t n, float* dst);

}  // namespace gqa
