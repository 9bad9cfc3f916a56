#include "model/dtype.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace gqa {

size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

std::string_view DTypeTorchName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
  }
  return "?";
}

std::optional<DType> ParseSafetensorsDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  return std::nullopt;
}

std::optional<DType> ParseDTypeName(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  if (lower == "f32" || lower == "float32" || lower == "float") return DType::kF32;
  if (lower == "f16" || lower == "float16" || lower == "half") return DType::kF16;
  if (lower == "bf16" || lower == "bfloat16") return DType::kBF16;
  return std::nullopt;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  float magnitude;
  if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    magnitude = mant ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &magnitude, sizeof bits);
  bits |= sign;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t FloatToHalf(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const float a = std::fabs(value);
  if (std::isnan(value)) return sign | 0x7e00u;
  if (a >= 65520.0f) return sign | 0x7c00u;  // rounds to infinity
  if (a < 6.103515625e-05f) {                // subnormal: multiples of 2^-24
    const float scaled = std::nearbyint(a * 16777216.0f);
    return sign | static_cast<uint16_t>(scaled);
  }
  int exp;
  const float frac = std::frexp(a, &exp);  // a = frac * 2^exp, frac in [0.5, 1)
  float mant = std::nearbyint((frac * 2.0f - 1.0f) * 1024.0f);
  int e = exp - 1 + 15;
  if (mant >= 1024.0f) {
    mant = 0.0f;
    ++e;
  }
  if (e >= 31) return sign | 0x7c00u;
  return sign | static_cast<uint16_t>((e << 10) | static_cast<int>(mant));
}

uint16_t FloatToBFloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

void ConvertToFloat(DType dtype, const void* src, size_t n, float* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  const auto* h = static_cast<const uint16_t*>(src);
  if (dtype == DType::kF16) {
    for (size_t i = 0; i < n; ++i) dst[i] = HalfToFloat(h[i]);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat(h[i]);
  }
}

void ConvertFromFloat(DType dtype, const float* src, size_t n, void* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  auto* h = static_cast<uint16_t*>(dst);
  if (dtype == DType::kF16) {
    for (size_t i = 0; i < n; ++i) h[i] = FloatToHalf(src[i]);
  } else {
    for (size_t i = 0; i < n; ++i) h[i] = FloatToBFloat16(src[i]);
  }
}

}  // namespace gqa
