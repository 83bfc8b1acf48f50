#pragma once

// A Huginn-layout model with random weights held in memory, for tests and benchmarks
// that need no checkpoint file. Header-only; not part of the product libraries.

#include <cmath>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"
#include "model/weights.h"

namespace ponder::testing {

inline model::Config SmallConfig(int64_t d = 64, int64_t heads = 4, int64_t ffn = 160,
                                 int64_t prelude = 1, int64_t core = 3, int64_t coda = 2,
                                 int64_t vocab = 96) {
  model::Config c;
  c.model_type = "huginn_raven";
  c.n_embd = d;
  c.n_heads = heads;
  c.num_key_value_heads = heads;
  c.head_dim = d / heads;
  c.vocab_size = vocab;
  c.padded_vocab_size = vocab;
  c.n_layers_in_prelude = prelude;
  c.n_layers_in_recurrent_block = core;
  c.n_layers_in_coda = coda;
  c.n_layers = prelude + core + coda;
  c.intermediate_size = ffn;
  c.block_size = 256;
  c.init_std = std::sqrt(2.0 / (5.0 * d));
  c.embed_scale = std::sqrt(static_cast<double>(d));
  return c;
}

class RandomModel {
 public:
  RandomModel(const model::Config& config, DType dtype, uint64_t seed)
      : config_(config), dtype_(dtype), rng_(seed * 0x9e3779b97f4a7c15ull + 1) {
    const int64_t d = config.n_embd, f = config.intermediate_size;
    const int64_t v = config.padded_vocab_size;
    w_.wte = Make({v, d}, 1.0 / std::sqrt(static_cast<double>(d)), 0.0);
    w_.adapter = Make({d, 2 * d}, 1.0 / std::sqrt(2.0 * d), 0.0);
    w_.ln_f = Make({d}, 0.1, 1.0);
    w_.lm_head = config.tie_embeddings ? w_.wte : Make({v, d}, 1.0 / std::sqrt(1.0 * d), 0.0);
    auto block = [&] {
      model::BlockWeights b;
      b.norm_1 = Make({d}, 0.1, 1.0);
      b.norm_2 = Make({d}, 0.1, 1.0);
      b.norm_3 = Make({d}, 0.1, 1.0);
      b.norm_4 = Make({d}, 0.1, 1.0);
      b.wqkv = Make({3 * d, d}, 1.0 / std::sqrt(1.0 * d), 0.0);
      if (config.qk_bias) b.qk_bias = Make({2, 1, config.n_heads, config.head_dim}, 0.1, 0.0);
      b.attn_proj = Make({d, d}, 1.0 / std::sqrt(1.0 * d), 0.0);
      b.mlp_fc = Make({2 * f, d}, 1.0 / std::sqrt(1.0 * d), 0.0);
      b.mlp_proj = Make({d, f}, 1.0 / std::sqrt(1.0 * f), 0.0);
      return b;
    };
    for (int64_t i = 0; i < config.n_layers_in_prelude; ++i) w_.prelude.push_back(block());
    for (int64_t i = 0; i < config.n_layers_in_recurrent_block; ++i) w_.core.push_back(block());
    for (int64_t i = 0; i < config.n_layers_in_coda; ++i) w_.coda.push_back(block());
  }

  const model::Config& config() const { return config_; }
  const model::Weights& weights() const { return w_; }

 private:
  // Zero mean, unit variance: uniform on [-sqrt(3), sqrt(3)] (fast enough for the
  // billions of weights of a Huginn-width benchmark).
  double Normal() {
    rng_ ^= rng_ >> 12;
    rng_ ^= rng_ << 25;
    rng_ ^= rng_ >> 27;
    const double u = static_cast<double>((rng_ * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
    return 1.7320508075688772 * (2.0 * u - 1.0);
  }

  TensorView Make(std::vector<int64_t> shape, double std, double mean) {
    TensorView t;
    t.shape = std::move(shape);
    t.dtype = dtype_;
    const int64_t n = t.numel();
    if (dtype_ == DType::kF32) {
      auto& buf = f32_.emplace_back(n);
      for (auto& x : buf) x = static_cast<float>(mean + std * Normal());
      t.data = buf.data();
    } else {
      auto& buf = u16_.emplace_back(n);
      for (auto& x : buf) {
        const float val = static_cast<float>(mean + std * Normal());
        x = dtype_ == DType::kBF16 ? F32ToBf16(val) : F32ToF16(val);
      }
      t.data = buf.data();
    }
    return t;
  }

  model::Config config_;
  DType dtype_;
  uint64_t rng_;
  model::Weights w_;
  std::deque<std::vector<float>> f32_;
  std::deque<std::vector<uint16_t>> u16_;
};

}  // namespace ponder::testing
