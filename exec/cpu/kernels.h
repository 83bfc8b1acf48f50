#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "core/tensor.h"

// oneTBB's task_arena, forward-declared under its real name (tbb::task_arena is a
// using-declaration of it) so that this header does not pull in TBB.
namespace tbb {
namespace detail {
namespace d1 {
class task_arena;
}  // namespace d1
}  // namespace detail
}  // namespace tbb

namespace ponder::exec::cpu {

// The threads the CPU kernels may use: a bounded oneTBB task_arena. Thread-safe; kernels
// called from several threads share the arena.
class ThreadPool {
 public:
  // threads <= 0: all hardware threads.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  int threads() const { return threads_; }
  // Runs body(begin, end) over [0, n) in chunks of at least `grain`, inside the arena.
  // Runs inline when n <= grain or the pool has one thread.
  template <typename F>
  void ParallelFor(int64_t n, int64_t grain, F&& body);

 private:
  void ParallelForImpl(int64_t n, int64_t grain, void (*fn)(void*, int64_t, int64_t), void* ctx);
  int threads_;
  std::unique_ptr<tbb::detail::d1::task_arena> arena_;
};

template <typename F>
void ThreadPool::ParallelFor(int64_t n, int64_t grain, F&& body) {
  if (n <= 0) return;
  if (threads_ <= 1 || n <= grain) {
    body(int64_t{0}, n);
    return;
  }
  using Body = std::remove_reference_t<F>;
  auto tramp = [](void* ctx, int64_t b, int64_t e) { (*static_cast<Body*>(ctx))(b, e); };
  ParallelForImpl(n, grain, tramp, const_cast<void*>(static_cast<const void*>(&body)));
}

// y[n, out] = x[n, in] . w[out, in]^T  (torch Linear layout, no bias).
// `w` is a 2-D F32, BF16 or F16 view (read in place, e.g. from the loaded checkpoint;
// 16-bit weights are converted exactly to f32). x and y are f32 row-major with row
// strides ldx and ldy (elements). `pool` may be null (single thread). y must not alias x.
void Linear(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y, int64_t ldy,
            ThreadPool* pool);

// Same on rows [row_begin, row_end) of w only: y[n, row_end-row_begin].
void LinearRows(const float* x, int64_t n, int64_t ldx, const TensorView& w, int64_t row_begin,
                int64_t row_end, float* y, int64_t ldy, ThreadPool* pool);

// Same as Linear, but each row of y gets the same arithmetic whatever n: batches above the
// streaming kernel's size are cut into slices of at most kBatchInvariantRows rows (the
// weights are streamed once per slice). A row's result then never depends on how many
// neighbours share its call, which batched serving needs for batch-1-equal outputs.
inline constexpr int64_t kBatchInvariantRows = 64;
void LinearRowInvariant(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y,
                        int64_t ldy, ThreadPool* pool);

// A Linear's weights packed for the outer-product kernel: w^T as f32 [in, out_pad], out_pad
// the output width rounded up to the SIMD width (zero columns).
struct PackedLinear {
  int64_t in = 0, out = 0, out_pad = 0;
  std::vector<float> wt;
  uint64_t bytes() const { return wt.size() * sizeof(float); }
};
PackedLinear PackLinear(const TensorView& w);

// y[n, out] = x[n, in] . w^T from packed weights. Each output element is one chain of fused
// multiply-adds over k = 0 .. in-1 in order, whatever n, the tiling and the threads, so a
// row's result never depends on its neighbours (batch invariance by construction). Tiles of
// up to 6 rows x 64 columns (AVX-512) keep the weights in registers across rows: batched
// rows cost a fraction of single rows when the weights are small enough to live in cache.
void LinearPacked(const float* x, int64_t n, int64_t ldx, const PackedLinear& w, float* y,
                  int64_t ldy, ThreadPool* pool);

// Reference loops for the tests (single thread, double accumulation).
void LinearReference(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y,
                     int64_t ldy);

// x[n, d] <- rmsnorm(x) * weight, in f32: x * rsqrt(mean(x^2) + eps) * weight.
// out may equal x.
void RmsNorm(const float* x, int64_t n, int64_t d, const TensorView& weight, double eps,
             float* out);

// Converts `count` elements of a view starting at element `offset` to f32.
void ToF32(const TensorView& v, int64_t offset, int64_t count, float* out);

}  // namespace ponder::exec::cpu
