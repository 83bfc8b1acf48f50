#include "exec/cpu/cpu_model.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "exec/cpu/madd_counter.h"

namespace ponder::exec::cpu {
namespace {

void Grow(std::vector<float>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
}

// x[i] += y[i].
void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// One decode query against ctx keys and values of one head: out[hd] =
// softmax(q . k^T * scale) . v. `k(p)` and `v(p)` give the head's row at position p (from a
// contiguous buffer or a slot's pages: the same numbers, read in position order). Loops
// written for the vectoriser (omp simd).
template <typename KRows, typename VRows>
void AttendOne(const float* q, const KRows& k, const VRows& v, int64_t hd, int64_t ctx, float scale,
               std::vector<float>& scores, float* out) {
  scores.resize(ctx);
  float mx = -INFINITY;
  for (int64_t p = 0; p < ctx; ++p) {
    const float* kp = k(p);
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < hd; ++i) dot += q[i] * kp[i];
    scores[p] = dot * scale;
    mx = std::max(mx, scores[p]);
  }
  float sum = 0.0f;
  for (int64_t p = 0; p < ctx; ++p) {
    scores[p] = std::exp(scores[p] - mx);
    sum += scores[p];
  }
  const float inv = 1.0f / sum;
  std::fill(out, out + hd, 0.0f);
  for (int64_t p = 0; p < ctx; ++p) {
    const float* vp = v(p);
    const float w = scores[p] * inv;
#pragma omp simd
    for (int64_t i = 0; i < hd; ++i) out[i] += w * vp[i];
  }
}

}  // namespace

CpuModel::CpuModel(const model::Config& config, const model::Weights& weights, int threads)
    : CpuModel(config, weights, static_cast<ThreadPool*>(nullptr)) {
  own_pool_ = std::make_unique<ThreadPool>(threads);
  pool_ = own_pool_.get();
}

CpuModel::CpuModel(const model::Config& config, const model::Weights& weights, ThreadPool* pool)
    : Backend(config, weights),
      pool_(pool),
      d_(config.n_embd),
      heads_(config.n_heads),
      head_dim_(config.head_dim),
      ffn_(config.intermediate_size) {
  RopeTables(config, &rope_cos_, &rope_sin_);
}

Status CpuModel::Prelude(std::span<const Chunk> chunks, std::span<const int32_t> tokens, float* e) {
  PONDER_RETURN_IF_ERROR(CheckPrelude(chunks, tokens));
  const int64_t n = TotalRows(chunks);
  const float scale = static_cast<float>(config_.embed_scale);
  for (int64_t r = 0; r < n; ++r) {
    float* row = e + r * d_;
    ToF32(weights_.wte, static_cast<int64_t>(tokens[r]) * d_, d_, row);
    for (int64_t j = 0; j < d_; ++j) row[j] *= scale;
  }
  slot_ptrs_.resize(chunks.size());
  for (int64_t l = 0; l < config_.n_layers_in_prelude; ++l) {
    for (size_t b = 0; b < chunks.size(); ++b) slot_ptrs_[b] = &chunks[b].cache->Prelude(l);
    Block(chunks, weights_.prelude[l], slot_ptrs_, e);
  }
  return Status::Ok();
}

void CpuModel::CoreStep(std::span<const Chunk> chunks, std::span<const int64_t> iterations,
                        const float* e, float* s) {
  const int64_t n = TotalRows(chunks);
  // Adapter input: [state, embedded input] per row, [N, 2d].
  Grow(cat_, n * 2 * d_);
  for (int64_t r = 0; r < n; ++r) {
    std::memcpy(&cat_[r * 2 * d_], s + r * d_, d_ * sizeof(float));
    std::memcpy(&cat_[r * 2 * d_ + d_], e + r * d_, d_ * sizeof(float));
  }
  Lin(cat_.data(), n, 2 * d_, weights_.adapter, s, d_);
  slot_ptrs_.resize(chunks.size());
  core_iterations_ = iterations.data();
  for (int64_t l = 0; l < config_.n_layers_in_recurrent_block; ++l) {
    for (size_t b = 0; b < chunks.size(); ++b) {
      slot_ptrs_[b] = &chunks[b].cache->Core(iterations[b], l);
    }
    core_layer_ = l;
    Block(chunks, weights_.core[l], slot_ptrs_, s);
  }
  core_layer_ = -1;
  core_iterations_ = nullptr;
  RecordDepths(chunks, iterations);
}

void CpuModel::Lin(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y,
                   int64_t ldy) {
  if (batch_invariant_) {
    auto it = packed_.find(w.data);
    if (it == packed_.end() &&
        packed_bytes_ + static_cast<uint64_t>(w.numel()) * 4 <= kMaxPackedBytes) {
      it = packed_.emplace(w.data, PackLinear(w)).first;
      packed_bytes_ += it->second.bytes();
    }
    if (it != packed_.end()) {
      LinearPacked(x, n, ldx, it->second, y, ldy, pool_);
    } else {
      LinearRowInvariant(x, n, ldx, w, y, ldy, pool_);
    }
  } else {
    Linear(x, n, ldx, w, y, ldy, pool_);
  }
}

void CpuModel::Coda(std::span<const Chunk> chunks, const float* s, bool last_only, float* logits) {
  const int64_t n = TotalRows(chunks);
  std::vector<float> x(n * d_);
  RmsNorm(s, n, d_, weights_.ln_f, config_.norm_eps, x.data());
  slot_ptrs_.resize(chunks.size());
  for (int64_t l = 0; l < config_.n_layers_in_coda; ++l) {
    for (size_t b = 0; b < chunks.size(); ++b) slot_ptrs_[b] = &chunks[b].cache->Coda(l);
    Block(chunks, weights_.coda[l], slot_ptrs_, x.data());
  }
  RecordTokens(chunks);
  if (logits == nullptr) return;
  if (last_only) {
    // Gather the last row of each chunk.
    std::vector<float> last(chunks.size() * d_);
    int64_t row = 0;
    for (size_t b = 0; b < chunks.size(); ++b) {
      row += chunks[b].count;
      std::memcpy(&last[b * d_], &x[(row - 1) * d_], d_ * sizeof(float));
    }
    x.swap(last);
  }
  const int64_t rows = last_only ? static_cast<int64_t>(chunks.size()) : n;
  RmsNorm(x.data(), rows, d_, weights_.ln_f, config_.norm_eps, x.data());
  const int64_t vocab = weights_.lm_head.shape[0];
  Lin(x.data(), rows, d_, weights_.lm_head, logits, vocab);
}

void CpuModel::Block(std::span<const Chunk> chunks, const model::BlockWeights& w,
                     std::span<KvSlot* const> slots, float* x) {
  const int64_t n = TotalRows(chunks);
  Grow(h_, n * d_);
  Grow(qkv_, n * 3 * d_);
  Grow(attn_, n * d_);
  Grow(tmp_, n * d_);
  Grow(ffn_buf_, n * 2 * ffn_);
  // x = norm_2(x + attn(norm_1(x)))
  RmsNorm(x, n, d_, w.norm_1, config_.norm_eps, h_.data());
  Lin(h_.data(), n, d_, w.wqkv, qkv_.data(), 3 * d_);
  Attention(chunks, slots, w, qkv_.data(), attn_.data());
  Lin(attn_.data(), n, d_, w.attn_proj, tmp_.data(), d_);
  AddInPlace(x, tmp_.data(), n * d_);
  RmsNorm(x, n, d_, w.norm_2, config_.norm_eps, x);
  // x = norm_4(x + mlp(norm_3(x))), mlp = proj(silu(gate) * up)
  RmsNorm(x, n, d_, w.norm_3, config_.norm_eps, h_.data());
  Lin(h_.data(), n, d_, w.mlp_fc, ffn_buf_.data(), 2 * ffn_);
  for (int64_t r = 0; r < n; ++r) {
    float* g = &ffn_buf_[r * 2 * ffn_];
    const float* u = g + ffn_;
    for (int64_t j = 0; j < ffn_; ++j) g[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
  }
  Lin(ffn_buf_.data(), n, 2 * ffn_, w.mlp_proj, tmp_.data(), d_);
  AddInPlace(x, tmp_.data(), n * d_);
  RmsNorm(x, n, d_, w.norm_4, config_.norm_eps, x);
}

void CpuModel::Attention(std::span<const Chunk> chunks, std::span<KvSlot* const> slots,
                         const model::BlockWeights& w, float* qkv, float* out) {
  const int64_t half = head_dim_ / 2;
  const int64_t ld = 3 * d_;
  // qk bias (before RoPE), RoPE on q and k, then write k and v into the slots.
  std::vector<float> qb, kb;
  if (!w.qk_bias.empty()) {
    qb.resize(d_);
    kb.resize(d_);
    ToF32(w.qk_bias, 0, d_, qb.data());
    ToF32(w.qk_bias, d_, d_, kb.data());
  }
  int64_t row = 0;
  for (size_t b = 0; b < chunks.size(); ++b) {
    const Chunk& c = chunks[b];
    KvSlot& slot = *slots[b];
    slot.Extend(c.pos + c.count);
    for (int64_t t = 0; t < c.count; ++t, ++row) {
      float* q = qkv + row * ld;
      float* k = q + d_;
      const float* v = k + d_;
      if (!qb.empty()) {
        AddInPlace(q, qb.data(), d_);
        AddInPlace(k, kb.data(), d_);
      }
      const float* cs = &rope_cos_[(c.pos + t) * half];
      const float* sn = &rope_sin_[(c.pos + t) * half];
      for (int64_t h = 0; h < heads_; ++h) {
        for (float* x : {q + h * head_dim_, k + h * head_dim_}) {
          for (int64_t i = 0; i < half; ++i) {
            const float x0 = x[2 * i], x1 = x[2 * i + 1];
            x[2 * i] = x0 * cs[i] - x1 * sn[i];
            x[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
          }
        }
      }
      std::memcpy(slot.K(c.pos + t), k, d_ * sizeof(float));
      std::memcpy(slot.V(c.pos + t), v, d_ * sizeof(float));
    }
  }
  // Causal attention per (chunk, head): the query at position p sees keys 0..p.
  std::vector<int64_t> offsets(chunks.size() + 1, 0);
  for (size_t b = 0; b < chunks.size(); ++b) offsets[b + 1] = offsets[b] + chunks[b].count;
  // Keys and values per chunk. A decode row (count 1) reads the slot's pages in place. A
  // prefill chunk, and a core layer where some earlier token stopped iterating before this
  // iteration, read a contiguous copy: the slot's rows, or for such a token its rows from its
  // last iteration of the same layer.
  std::vector<const float*> keys(chunks.size(), nullptr), values(chunks.size(), nullptr);
  gathered_k_.resize(chunks.size());
  gathered_v_.resize(chunks.size());
  for (size_t b = 0; b < chunks.size(); ++b) {
    const Chunk& c = chunks[b];
    const int64_t it = core_layer_ >= 0 ? core_iterations_[b] : 0;
    const bool gap = core_layer_ >= 0 && c.cache->HasGap(c.pos, it);
    if (c.count == 1 && !gap) continue;
    const int64_t ctx = c.pos + c.count;
    auto& gk = gathered_k_[b];
    auto& gv = gathered_v_[b];
    gk.resize(ctx * d_);
    gv.resize(ctx * d_);
    for (int64_t p = 0; p < ctx; ++p) {
      const KvSlot& src = gap && p < c.pos ? c.cache->CoreRead(it, core_layer_, p) : *slots[b];
      std::memcpy(&gk[p * d_], src.K(p), d_ * sizeof(float));
      std::memcpy(&gv[p * d_], src.V(p), d_ * sizeof(float));
    }
    keys[b] = gk.data();
    values[b] = gv.data();
  }
  const int64_t tasks = static_cast<int64_t>(chunks.size()) * heads_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
  int64_t work = 0;
  for (const Chunk& c : chunks) work += c.count * (c.pos + c.count);
  const int64_t grain = work * head_dim_ * heads_ < (1 << 16) ? tasks : 1;
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstStrided = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;
  using Strided = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;
  auto body = [&](int64_t begin, int64_t end) {
    RowMajor probs;
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads_, h = task % heads_;
      const Chunk& c = chunks[b];
      const int64_t ctx = c.pos + c.count;  // keys visible to the last new row
      // Q [count, hd], K and V [ctx, hd]: views with row strides into qkv and the slot.
      const float* qrow = qkv + offsets[b] * ld + h * head_dim_;
      if (c.count == 1) {  // decode: one query, plain vector loops (no GEMV overhead)
        float* o = out + offsets[b] * d_ + h * head_dim_;
        const int64_t col = h * head_dim_;
        if (keys[b] != nullptr) {
          const float* kb = keys[b] + col;
          const float* vb = values[b] + col;
          AttendOne(
              qrow, [&](int64_t p) { return kb + p * d_; }, [&](int64_t p) { return vb + p * d_; },
              head_dim_, ctx, scale, scores, o);
        } else {
          const KvSlot& slot = *slots[b];
          AttendOne(
              qrow, [&](int64_t p) { return slot.K(p) + col; },
              [&](int64_t p) { return slot.V(p) + col; }, head_dim_, ctx, scale, scores, o);
        }
        if (MaddCounterEnabled()) CountAttentionMadds(2 * ctx * head_dim_);
        continue;
      }
      ConstStrided q(qrow, c.count, head_dim_, Eigen::OuterStride<>(ld));
      ConstStrided k(keys[b] + h * head_dim_, ctx, head_dim_, Eigen::OuterStride<>(d_));
      ConstStrided v(values[b] + h * head_dim_, ctx, head_dim_, Eigen::OuterStride<>(d_));
      probs.resize(c.count, ctx);
      probs.noalias() = q * k.transpose();
      // Row t is the query at position pos + t: causal (lower-right) mask, softmax.
      for (int64_t t = 0; t < c.count; ++t) {
        const int64_t visible = c.pos + t + 1;
        float* row = probs.row(t).data();
        float mx = -INFINITY;
        for (int64_t p = 0; p < visible; ++p) mx = std::max(mx, row[p] * scale);
        float sum = 0.0f;
        for (int64_t p = 0; p < visible; ++p) {
          row[p] = std::exp(row[p] * scale - mx);
          sum += row[p];
        }
        const float inv = 1.0f / sum;
        for (int64_t p = 0; p < visible; ++p) row[p] *= inv;
        for (int64_t p = visible; p < ctx; ++p) row[p] = 0.0f;
      }
      Strided o(out + offsets[b] * d_ + h * head_dim_, c.count, head_dim_,
                Eigen::OuterStride<>(d_));
      o.noalias() = probs * v;
      if (MaddCounterEnabled()) {  // the causal part: row t sees pos + t + 1 keys
        CountAttentionMadds(2 * (c.count * c.pos + c.count * (c.count + 1) / 2) * head_dim_);
      }
    }
  };
  if (pool_ != nullptr) {
    pool_->ParallelFor(tasks, grain, body);
  } else {
    body(0, tasks);
  }
}

}  // namespace ponder::exec::cpu
