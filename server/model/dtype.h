// Element types of checkpoint tensors and their conversion to fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace gqa {

enum class DType { kF32, kF16, kBF16 };

size_t DTypeSize(DType dtype);
std::string_view DTypeName(DType dtype);       // "F32", "F16", "BF16" (safetensors)
std::string_view DTypeTorchName(DType dtype);  // "float32", "float16", "bfloat16"
std::optional<DType> ParseSafetensorsDType(std::string_view name);
std::optional<DType> ParseDTypeName(std::string_view name);  // either spelling, any case

float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);  // round to nearest even

inline float BFloat16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
uint16_t FloatToBFloat16(float value);  // round to nearest even

// Converts n elements of `dtype` at src to fp32.
void ConvertToFloat(DType dtype, const void* src, size_t n, float* dst);
// Converts n fp32 values to `dtype` at dst.
void ConvertFromFloat(DType dtype, const float* src, size_t n, void* dst);

}  // namespace gqa
