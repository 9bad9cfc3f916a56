// FP8 E4M3 (OCP "E4M3FN": 4 exponent bits, bias 7, 3 mantissa bits, no infinities, one NaN
// pattern per sign) on the host: the reference the CPU backend stores its FP8 KV cache with and
// the CUDA kernels (cvt to __nv_fp8_e4m3 with saturation) are tested against.
//
// Finite values are 0, the subnormals m * 2^-9 (m = 1..7) and (1 + m / 8) * 2^(e - 7) for
// e = 1..15 (m <= 6 when e = 15): the largest is 448. Encoding rounds to the nearest value, ties
// to even mantissa, and saturates: every finite input (and an infinity) outside +-448 becomes
// +-448, so a finite input never becomes NaN. A NaN stays NaN.
#pragma once

#include <cmath>
#include <cstdint>

namespace gqa::kernels {

inline constexpr float kFp8E4M3Max = 448.0f;

inline float Fp8E4M3ToFloat(uint8_t bits) {
  const int exponent = (bits >> 3) & 0xf, mantissa = bits & 0x7;
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  if (exponent == 0xf && mantissa == 0x7) return std::nanf("");
  if (exponent == 0) return sign * std::ldexp(float(mantissa), -9);
  return sign * std::ldexp(1.0f + float(mantissa) / 8.0f, exponent - 7);
}

inline uint8_t Fp8E4M3FromFloat(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return sign | 0x7f;
  const float a = std::fabs(x);
  if (a >= kFp8E4M3Max) return sign | 0x7e;  // saturate (infinity included)
  if (a < 0x1p-6f) {
    // Subnormals: code m means m * 2^-9; m = 8 is the smallest normal, whose code is also 8.
    // std::nearbyint rounds ties to even in the default rounding mode.
    return sign | static_cast<uint8_t>(std::nearbyint(a * 0x1p9f));
  }
  int e;
  const float fraction = std::frexp(a, &e);  // a = fraction * 2^e, fraction in [0.5, 1)
  // a = (1 + m / 8) * 2^(e - 1): m = (2 * fraction - 1) * 8, exact in fp32 before rounding.
  int m = static_cast<int>(std::nearbyint((2.0f * fraction - 1.0f) * 8.0f));
  int biased = e - 1 + 7;
  if (m == 8) {
    m = 0;
    ++biased;
  }
  if (biased > 15 || (biased == 15 && m > 6)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((biased << 3) | m);
}

// The stored byte of x under `scale` (x / scale, rounded) and the value it reads back as.
inline uint8_t Fp8E4M3Quantize(float x, float scale) { return Fp8E4M3FromFloat(x / scale); }
inline float Fp8E4M3Dequantize(uint8_t bits, float scale) { return Fp8E4M3ToFloat(bits) * scale; }

}  // namespace gqa::kernels
