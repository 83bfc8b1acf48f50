#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace ponder {

// Element types of stored tensors. Compute is f32; bf16 and f16 weights are converted
// exactly to f32 when used.
enum class DType { kF32, kBF16, kF16 };

inline size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }
const char* DTypeName(DType t);  // "F32", "BF16", "F16" (safetensors spelling)

// Exact: every bf16 value is an f32 value with the low 16 mantissa bits zero.
inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even, NaN preserved (matches torch's f32 -> bf16 cast).
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// IEEE half to f32, exact (subnormals, inf, NaN handled).
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

}  // namespace ponder
