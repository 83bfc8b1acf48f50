#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace ponder {

// A non-owning view of a stored tensor (row-major, contiguous). The owner (for example a
// memory-mapped checkpoint) must outlive the view.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
  bool empty() const { return data == nullptr; }
  // Element i converted to f32.
  float At(int64_t i) const;
};

// "[a, b, c]".
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace ponder
