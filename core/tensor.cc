#include "core/tensor.h"

namespace ponder {

// Tensors in a safetensors file need not be aligned for their dtype: read with memcpy.
float TensorView::At(int64_t i) const {
  const char* p = static_cast<const char*>(data) + i * static_cast<int64_t>(DTypeSize(dtype));
  if (dtype == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return dtype == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

}  // namespace ponder
