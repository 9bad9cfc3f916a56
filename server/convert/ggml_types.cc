// Compiled with -ffp-contract=off (server/CMakeLists.txt): a fused multiply-add would round
// once where ggml rounds twice, and the results would stop being bitwise ggml's.
#include "convert/ggml_types.h"

#include <cstring>

#include "model/dtype.h"

namespace gqa {
namespace {

constexpr int64_t kSuperBlock = 256;  // QK_K

float Half(const std::byte* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return HalfToFloat(bits);
}

uint8_t U8(const std::byte* p, int64_t i) { return static_cast<uint8_t>(p[i]); }

// Q4_0: fp16 d, 16 bytes of nibbles (low nibbles are elements 0-15, high 16-31); x = d * (q - 8).
void DequantizeQ4_0(const std::byte* block, float* out) {
  const float d = Half(block);
  for (int j = 0; j < 16; ++j) {
    const uint8_t q = U8(block + 2, j);
    out[j] = d * static_cast<float>((q & 0x0F) - 8);
    out[j + 16] = d * static_cast<float>((q >> 4) - 8);
  }
}

// Q4_1: fp16 d, fp16 m, nibbles as Q4_0; x = d * q + m.
void DequantizeQ4_1(const std::byte* block, float* out) {
  const float d = Half(block), m = Half(block + 2);
  for (int j = 0; j < 16; ++j) {
    const uint8_t q = U8(block + 4, j);
    out[j] = d * static_cast<float>(q & 0x0F) + m;
    out[j + 16] = d * static_cast<float>(q >> 4) + m;
  }
}

// The fifth bit of element j of a Q5_0/Q5_1 block: bit j of a little-endian uint32.
int HighBit(const std::byte* qh, int j) { return (U8(qh, j / 8) >> (j % 8)) & 1; }

// Q5_0: fp16 d, 4 bytes of fifth bits, nibbles; x = d * (q - 16).
void DequantizeQ5_0(const std::byte* block, float* out) {
  const float d = Half(block);
  const std::byte* qh = block + 2;
  for (int j = 0; j < 16; ++j) {
    const uint8_t q = U8(block + 6, j);
    out[j] = d * static_cast<float>(((q & 0x0F) | (HighBit(qh, j) << 4)) - 16);
    out[j + 16] = d * static_cast<float>(((q >> 4) | (HighBit(qh, j + 16) << 4)) - 16);
  }
}

// Q5_1: fp16 d, fp16 m, fifth bits, nibbles; x = d * q + m.
void DequantizeQ5_1(const std::byte* block, float* out) {
  const float d = Half(block), m = Half(block + 2);
  const std::byte* qh = block + 4;
  for (int j = 0; j < 16; ++j) {
    const uint8_t q = U8(block + 8, j);
    out[j] = d * static_cast<float>((q & 0x0F) | (HighBit(qh, j) << 4)) + m;
    out[j + 16] = d * static_cast<float>((q >> 4) | (HighBit(qh, j + 16) << 4)) + m;
  }
}

// Q8_0: fp16 d, 32 int8; x = q * d.
void DequantizeQ8_0(const std::byte* block, float* out) {
  const float d = Half(block);
  for (int j = 0; j < 32; ++j)
    out[j] = static_cast<float>(static_cast<int8_t>(U8(block + 2, j))) * d;
}

// Q2_K: 16 bytes of 4-bit scale | 4-bit min per 16 elements, 64 bytes of 2-bit quants, fp16 d,
// fp16 dmin. In each half of 128 elements, element r takes bit pair r / 32 of byte r % 32;
// x = (d * scale) * q - (dmin * min).
void DequantizeQ2_K(const std::byte* block, float* out) {
  const std::byte* scales = block;
  const std::byte* qs = block + 16;
  const float d = Half(block + 80), dmin = Half(block + 82);
  for (int e = 0; e < kSuperBlock; ++e) {
    const int half = e / 128, r = e % 128;
    const int q = (U8(qs, half * 32 + r % 32) >> (2 * (r / 32))) & 3;
    const uint8_t sc = U8(scales, e / 16);
    const float scale = d * static_cast<float>(sc & 0x0F);
    const float offset = dmin * static_cast<float>(sc >> 4);
    out[e] = scale * static_cast<float>(q) - offset;
  }
}

// The 6-bit scale of sub-block s (0-15) of a Q3_K block, minus 32: low nibbles from bytes 0-7
// (low halves first), high bit pairs from bytes 8-11.
int ScaleK3(const std::byte* scales, int s) {
  const int low = s < 8 ? U8(scales, s) & 0x0F : U8(scales, s - 8) >> 4;
  const int high = (U8(scales, 8 + s % 4) >> (2 * (s / 4))) & 0x03;
  return (low | (high << 4)) - 32;
}

// Q3_K: 32 bytes of high-bit masks, 64 bytes of 2-bit quants, 12 bytes of 6-bit scales, fp16 d.
// Element e takes its 2-bit quant as Q2_K does and bit e / 32 of mask byte e % 32; a clear bit
// subtracts 4. x = (d * scale[e / 16]) * q.
void DequantizeQ3_K(const std::byte* block, float* out) {
  const std::byte* hmask = block;
  const std::byte* qs = block + 32;
  const std::byte* scales = block + 96;
  const float d = Half(block + 108);
  for (int e = 0; e < kSuperBlock; ++e) {
    const int half = e / 128, r = e % 128;
    const int low = (U8(qs, half * 32 + r % 32) >> (2 * (r / 32))) & 3;
    const int high_bit = (U8(hmask, e % 32) >> (e / 32)) & 1;
    const float scale = d * static_cast<float>(ScaleK3(scales, e / 16));
    out[e] = scale * static_cast<float>(low - (high_bit ? 0 : 4));
  }
}

// The 6-bit scale and min of sub-block j (0-7) of a Q4_K/Q5_K block (ggml's get_scale_min_k4).
void ScaleMinK4(const std::byte* scales, int j, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = U8(scales, j) & 63;
    *min = U8(scales, j + 4) & 63;
  } else {
    *scale = (U8(scales, j + 4) & 0x0F) | ((U8(scales, j - 4) >> 6) << 4);
    *min = (U8(scales, j + 4) >> 4) | ((U8(scales, j) >> 6) << 4);
  }
}

// Q4_K: fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles. Sub-block j
// (32 elements) reads the low (even j) or high (odd j) nibbles of bytes 32*(j/2)...;
// x = (d * scale) * q - (dmin * min).
void DequantizeQ4_K(const std::byte* block, float* out) {
  const float d = Half(block), dmin = Half(block + 2);
  const std::byte* scales = block + 4;
  const std::byte* qs = block + 16;
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    ScaleMinK4(scales, j, &sc, &m);
    const float scale = d * static_cast<float>(sc), offset = dmin * static_cast<float>(m);
    const int shift = (j % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const int q = (U8(qs, (j / 2) * 32 + l) >> shift) & 0x0F;
      out[j * 32 + l] = scale * static_cast<float>(q) - offset;
    }
  }
}

// Q5_K: as Q4_K with 32 bytes of fifth bits before the nibbles (bit j of byte l for element
// 32*j + l).
void DequantizeQ5_K(const std::byte* block, float* out) {
  const float d = Half(block), dmin = Half(block + 2);
  const std::byte* scales = block + 4;
  const std::byte* qh = block + 16;
  const std::byte* qs = block + 48;
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    ScaleMinK4(scales, j, &sc, &m);
    const float scale = d * static_cast<float>(sc), offset = dmin * static_cast<float>(m);
    const int shift = (j % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const int q = ((U8(qs, (j / 2) * 32 + l) >> shift) & 0x0F) | (((U8(qh, l) >> j) & 1) << 4);
      out[j * 32 + l] = scale * static_cast<float>(q) - offset;
    }
  }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, fp16 d. In each half
// of 128 elements, element r takes the nibble (r / 64) of low byte r % 64 and the bit pair
// (r / 32) of high byte r % 32; x = (d * scale[e / 16]) * (q - 32).
void DequantizeQ6_K(const std::byte* block, float* out) {
  const std::byte* ql = block;
  const std::byte* qh = block + 128;
  const std::byte* scales = block + 192;
  const float d = Half(block + 208);
  for (int e = 0; e < kSuperBlock; ++e) {
    const int half = e / 128, r = e % 128;
    const int low = (U8(ql, half * 64 + r % 64) >> (4 * (r / 64))) & 0x0F;
    const int high = (U8(qh, half * 32 + r % 32) >> (2 * (r / 32))) & 0x03;
    const float scale = d * static_cast<float>(static_cast<int8_t>(U8(scales, e / 16)));
    out[e] = scale * static_cast<float>((low | (high << 4)) - 32);
  }
}

// Dequantizes `blocks` whole blocks from src into dst.
using Dequantizer = void (*)(const std::byte* src, int64_t blocks, float* dst);

template <void (*Block)(const std::byte*, float*), int64_t kElements, int64_t kBytes>
void Blocks(const std::byte* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b) Block(src + b * kBytes, dst + b * kElements);
}

void F32(const std::byte* src, int64_t n, float* dst) {
  std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}
void F16(const std::byte* src, int64_t n, float* dst) {
  ConvertToFloat(DType::kF16, src, static_cast<size_t>(n), dst);
}
void BF16(const std::byte* src, int64_t n, float* dst) {
  ConvertToFloat(DType::kBF16, src, static_cast<size_t>(n), dst);
}

struct TypeInfo {
  uint32_t id;
  const char* name;
  int64_t elements, bytes;
  Dequantizer dequantize;  // null: known to ggml, not dequantized here
};

// ggml.h's types with their block layouts (ggml.c's type_traits).
constexpr TypeInfo kTypes[] = {
    {0, "F32", 1, 4, F32},
    {1, "F16", 1, 2, F16},
    {2, "Q4_0", 32, 18, Blocks<DequantizeQ4_0, 32, 18>},
    {3, "Q4_1", 32, 20, Blocks<DequantizeQ4_1, 32, 20>},
    {6, "Q5_0", 32, 22, Blocks<DequantizeQ5_0, 32, 22>},
    {7, "Q5_1", 32, 24, Blocks<DequantizeQ5_1, 32, 24>},
    {8, "Q8_0", 32, 34, Blocks<DequantizeQ8_0, 32, 34>},
    {9, "Q8_1", 32, 40, nullptr},
    {10, "Q2_K", 256, 84, Blocks<DequantizeQ2_K, 256, 84>},
    {11, "Q3_K", 256, 110, Blocks<DequantizeQ3_K, 256, 110>},
    {12, "Q4_K", 256, 144, Blocks<DequantizeQ4_K, 256, 144>},
    {13, "Q5_K", 256, 176, Blocks<DequantizeQ5_K, 256, 176>},
    {14, "Q6_K", 256, 210, Blocks<DequantizeQ6_K, 256, 210>},
    {15, "Q8_K", 256, 292, nullptr},
    {16, "IQ2_XXS", 256, 66, nullptr},
    {17, "IQ2_XS", 256, 74, nullptr},
    {18, "IQ3_XXS", 256, 98, nullptr},
    {19, "IQ1_S", 256, 50, nullptr},
    {20, "IQ4_NL", 32, 18, nullptr},
    {21, "IQ3_S", 256, 110, nullptr},
    {22, "IQ2_S", 256, 82, nullptr},
    {23, "IQ4_XS", 256, 136, nullptr},
    {24, "I8", 1, 1, nullptr},
    {25, "I16", 1, 2, nullptr},
    {26, "I32", 1, 4, nullptr},
    {27, "I64", 1, 8, nullptr},
    {28, "F64", 1, 8, nullptr},
    {29, "IQ1_M", 256, 56, nullptr},
    {30, "BF16", 1, 2, BF16},
    {34, "TQ1_0", 256, 54, nullptr},
    {35, "TQ2_0", 256, 66, nullptr},
    {39, "MXFP4", 32, 17, nullptr},
};

const TypeInfo* FindType(uint32_t id) {
  for (const TypeInfo& t : kTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

}  // namespace

std::string GgmlTypeName(uint32_t type) {
  const TypeInfo* info = FindType(type);
  return info != nullptr ? info->name : "type " + std::to_string(type);
}

std::optional<GgmlBlockLayout> GgmlLayout(uint32_t type) {
  const TypeInfo* info = FindType(type);
  if (info == nullptr) return std::nullopt;
  return GgmlBlockLayout{info->elements, info->bytes};
}

std::optional<GgmlBlockLayout> DequantizableLayout(uint32_t type) {
  const TypeInfo* info = FindType(type);
  if (info == nullptr || info->dequantize == nullptr) return std::nullopt;
  return GgmlBlockLayout{info->elements, info->bytes};
}

void DequantizeToFloat(GgmlType type, const std::byte* src, int64_t n, float* dst) {
  const TypeInfo& info = *FindType(static_cast<uint32_t>(type));
  info.dequantize(src, n / info.elements, dst);
}

}  // namespace gqa
