#pragma once

// Small helpers the benchmarks share: list arguments, medians, weight bytes.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"

namespace ponder::bench {

// "1,8,32" -> {"1", "8", "32"}.
inline std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Bytes of one block's weights (norms, projections, qk bias): what one pass through it reads.
inline uint64_t BlockBytes(const model::BlockWeights& b) {
  uint64_t n = 0;
  for (const TensorView* t : {&b.norm_1, &b.norm_2, &b.norm_3, &b.norm_4, &b.wqkv, &b.qk_bias,
                              &b.attn_proj, &b.mlp_fc, &b.mlp_proj}) {
    n += t->empty() ? 0 : t->bytes();
  }
  return n;
}

}  // namespace ponder::bench
