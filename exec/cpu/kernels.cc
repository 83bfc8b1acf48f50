// CPU kernels. Three code paths share one set of templates, chosen at compile time:
//   AVX-512 (F + BW + VL): 16 lanes, masked loads for the tail of a row;
//   AVX2 + FMA (+ F16C for f16 weights): 8 lanes, a zero-padded copy for the tail;
//   portable: scalar loops.
//
// Linear has two regimes:
//   n <= kMaxStreamingBatch: weight rows are streamed once from their storage (the
//     loaded checkpoint), widened to f32 in registers and multiplied with up to
//     kMaxGemvRows rows of x while they are in registers (larger batches revisit a block
//     of rows from L2). Batch-1 decode is bound by memory bandwidth, so the kernel only has
//     to keep the loads flowing: several weight rows per pass share each x load, and the
//     next pass's rows are prefetched.
//   n > kMaxStreamingBatch: a tile of weight rows is widened into a per-thread f32 buffer
//     (f32 weights are used in place) and multiplied with Eigen's GEMM.
// Both parallelise over weight rows and run inline below kParallelMinElements so that
// the matrices of small models pay no dispatch cost.
//
// LinearPacked is the batch-invariant kernel for weights small enough to keep a transposed
// f32 copy of (CpuModel packs up to 256 MiB): an outer product per tile of rows x columns,
// each output one chain of FMAs over k in order, so rows never depend on their neighbours
// and batched rows share every weight load (on ponder-micro, one core: 41.6 us per row
// alone, 15.3 us per row at 16 rows; the streaming kernel: 38.9 and 21.6).

#include "exec/cpu/kernels.h"

#include "exec/cpu/madd_counter.h"

// GCC 12's AVX-512 intrinsic headers initialise their "undefined" operands from themselves,
// which -Wmaybe-uninitialized reports at every inlined use (here and inside Eigen). The
// values are never read; silence that one false positive for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace ponder::exec::cpu {
namespace {

// Rows of x the streaming kernel multiplies per pass over the weights.
constexpr int kMaxGemvRows = 8;
// Largest batch handled by the streaming kernel (in slices of kMaxGemvRows); larger
// batches use the GEMM path. Measured on [35840, 5280] bf16 weights, 2 cores: streaming
// is 1.4x Eigen at n = 64 and 0.8x at n = 256.
constexpr int64_t kMaxStreamingBatch = 64;
// Weight rows kept in L2 while every slice of a larger batch passes over them.
constexpr int64_t kL2RowBlock = 24;
// Matrices with fewer weight elements than this run on the calling thread.
constexpr int64_t kParallelMinElements = 64 * 1024;
// Smallest amount of weight elements one parallel chunk should cover.
constexpr int64_t kChunkMinElements = 32 * 1024;
// Streaming kernel: weight rows per parallel work item (a multiple of every pass height).
constexpr int64_t kGemvRowBlock = 48;
// GEMM path: f32 elements of one widened weight tile (sized to stay in L2).
constexpr int64_t kGemmTileElements = 128 * 1024;

template <DType DT>
using WElem = std::conditional_t<DT == DType::kF32, float, uint16_t>;

// One weight element converted to f32.
template <DType DT>
float ScalarLoad(const WElem<DT>* p) {
  if constexpr (DT == DType::kF32) {
    return *p;
  } else if constexpr (DT == DType::kBF16) {
    return Bf16ToF32(*p);
  } else {
    return F16ToF32(*p);
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)

struct Simd {
  using V = __m512;
  static constexpr int kWidth = 16;
  // Registers hold the accumulators of one pass: rows x batch rows. Batch-1 f32 takes 8
  // rows so that 8 independent FMA chains hide the FMA latency when the weights are in
  // cache (small models); for 16-bit weights 4 rows stream DRAM best (measured).
  static constexpr int RowsPerPass(int batch, size_t weight_bytes) {
    return batch == 1 && weight_bytes == 4 ? 8 : (batch <= 5 ? 4 : 3);
  }

  static V Zero() { return _mm512_setzero_ps(); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Set1(float f) { return _mm512_set1_ps(f); }
  // The horizontal sum in the order Sum4 uses, ((h0+h1)+(h2+h3))+((h4+h5)+(h6+h7)) with
  // h_i = v_i + v_(i+8), so that a dot product's bits do not depend on which of the two
  // reduced it (the streaming kernel picks by batch size; batch invariance needs equal bits).
  static float Sum(V v) {
    const __m256 h =
        _mm256_add_ps(_mm512_castps512_ps256(v),
                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h, h), _mm256_hadd_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
  }
  // out[i] = Sum(v[i]) for i < 4, sharing the shuffles of the four reductions.
  static void Sum4(const V* v, float* out) {
    __m256 h[4];
    for (int i = 0; i < 4; ++i) {
      h[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[i]), 1)));
    }
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
  }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }

  static __mmask16 Mask(int64_t rem) { return static_cast<__mmask16>((1u << rem) - 1u); }
  static void StoreTail(float* p, V v, int64_t rem) { _mm512_mask_storeu_ps(p, Mask(rem), v); }

  static V Widen16(__m256i h, DType dt) {
    if (dt == DType::kBF16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_cvtph_ps(h);
  }

  template <DType DT>
  static V Load(const WElem<DT>* p) {
    if constexpr (DT == DType::kF32) {
      return _mm512_loadu_ps(p);
    } else {
      return Widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), DT);
    }
  }
  // Loads the first `rem` (< kWidth) elements; the other lanes are zero and the memory
  // behind them is not touched.
  template <DType DT>
  static V LoadTail(const WElem<DT>* p, int64_t rem) {
    if constexpr (DT == DType::kF32) {
      return _mm512_maskz_loadu_ps(Mask(rem), p);
    } else {
      return Widen16(_mm256_maskz_loadu_epi16(Mask(rem), p), DT);
    }
  }
};

#elif defined(__AVX2__) && defined(__FMA__)

struct Simd {
  using V = __m256;
  static constexpr int kWidth = 8;
  static constexpr int RowsPerPass(int batch, size_t /*weight_bytes*/) {
    return batch <= 2 ? 4 : (batch <= 3 ? 3 : (batch <= 6 ? 2 : 1));
  }

  static V Zero() { return _mm256_setzero_ps(); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Set1(float f) { return _mm256_set1_ps(f); }
  // The horizontal sum in the order Sum4 uses, ((v0+v1)+(v2+v3))+((v4+v5)+(v6+v7)): a
  // dot product's bits must not depend on which of the two reduced it (batch invariance).
  static float Sum(V v) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v, v), _mm256_hadd_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
  }
  // out[i] = Sum(v[i]) for i < 4, sharing the shuffles of the four reductions.
  static void Sum4(const V* v, float* out) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
  }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }

  template <DType DT>
  static V Load(const WElem<DT>* p) {
    if constexpr (DT == DType::kF32) {
      return _mm256_loadu_ps(p);
    } else if constexpr (DT == DType::kBF16) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
#if defined(__F16C__)
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
      alignas(32) float f[8];
      for (int i = 0; i < 8; ++i) f[i] = F16ToF32(p[i]);
      return _mm256_load_ps(f);
#endif
    }
  }
  // The first `rem` (< kWidth) elements, through a zero-padded copy.
  template <DType DT>
  static V LoadTail(const WElem<DT>* p, int64_t rem) {
    WElem<DT> buf[kWidth] = {};
    std::memcpy(buf, p, static_cast<size_t>(rem) * sizeof(WElem<DT>));
    return Load<DT>(buf);
  }
  static void StoreTail(float* p, V v, int64_t rem) {
    alignas(32) float buf[kWidth];
    _mm256_store_ps(buf, v);
    std::memcpy(p, buf, static_cast<size_t>(rem) * sizeof(float));
  }
};

#else

// Portable fallback: one lane.
struct Simd {
  using V = float;
  static constexpr int kWidth = 1;
  static constexpr int RowsPerPass(int /*batch*/, size_t /*weight_bytes*/) { return 2; }

  static V Zero() { return 0.0f; }
  static V Fma(V a, V b, V c) { return a * b + c; }
  static V Mul(V a, V b) { return a * b; }
  static V Set1(float f) { return f; }
  static float Sum(V v) { return v; }
  static void Sum4(const V* v, float* out) {
    for (int i = 0; i < 4; ++i) out[i] = v[i];
  }
  static void Store(float* p, V v) { *p = v; }

  template <DType DT>
  static V Load(const WElem<DT>* p) {
    return ScalarLoad<DT>(p);
  }
  // With one lane there is never a partial vector (rem is always 0).
  template <DType DT>
  static V LoadTail(const WElem<DT>* /*p*/, int64_t /*rem*/) {
    return 0.0f;
  }
  static void StoreTail(float* /*p*/, V /*v*/, int64_t /*rem*/) {}
};

#endif

using V = Simd::V;
constexpr int64_t kW = Simd::kWidth;

// Widens src[0, count) to f32.
template <DType DT>
void Widen(const WElem<DT>* src, int64_t count, float* dst) {
  if constexpr (DT == DType::kF32) {
    std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
  } else {
    int64_t i = 0;
    for (; i + kW <= count; i += kW) Simd::Store(dst + i, Simd::Load<DT>(src + i));
    if (i < count) Simd::StoreTail(dst + i, Simd::LoadTail<DT>(src + i, count - i), count - i);
  }
}

// The streaming kernel's inner block: for r < R and j < N,
//   y[j * ldy + r] = sum_k x[j * ldx + k] * w[r * in + k].
// Each weight vector is loaded once and used for all N rows of x. `next` is the start of
// the R rows the caller will pass next (or w itself when there are none): they are
// prefetched into L2 at the same offset. The hardware prefetcher alone restarts on every
// short row and leaves DRAM bandwidth unused (about 65% of the floor for bf16 rows of
// 5280 elements, 95% with this).
template <DType DT, int R, int N>
inline void DotBlock(const float* x, int64_t ldx, const WElem<DT>* w, const WElem<DT>* next,
                     int64_t in, float* y, int64_t ldy) {
  V acc[N][R];
  for (int j = 0; j < N; ++j) {
    for (int r = 0; r < R; ++r) acc[j][r] = Simd::Zero();
  }
  int64_t k = 0;
  for (; k + kW <= in; k += kW) {
    V wv[R];
    for (int r = 0; r < R; ++r) {
      if constexpr (kW >= 8) __builtin_prefetch(next + r * in + k, 0, 2);  // into L2
      wv[r] = Simd::Load<DT>(w + r * in + k);
    }
    for (int j = 0; j < N; ++j) {
      const V xv = Simd::Load<DType::kF32>(x + j * ldx + k);
      for (int r = 0; r < R; ++r) acc[j][r] = Simd::Fma(wv[r], xv, acc[j][r]);
    }
  }
  if (k < in) {
    const int64_t rem = in - k;
    V wv[R];
    for (int r = 0; r < R; ++r) wv[r] = Simd::LoadTail<DT>(w + r * in + k, rem);
    for (int j = 0; j < N; ++j) {
      const V xv = Simd::LoadTail<DType::kF32>(x + j * ldx + k, rem);
      for (int r = 0; r < R; ++r) acc[j][r] = Simd::Fma(wv[r], xv, acc[j][r]);
    }
  }
  for (int j = 0; j < N; ++j) {
    int r = 0;
    for (; r + 4 <= R; r += 4) Simd::Sum4(&acc[j][r], y + j * ldy + r);
    for (; r < R; ++r) y[j * ldy + r] = Simd::Sum(acc[j][r]);
  }
}

// Streaming kernel over `rows` consecutive weight rows starting at w.
template <DType DT, int N>
void GemvRows(const float* x, int64_t ldx, const WElem<DT>* w, int64_t in, int64_t rows, float* y,
              int64_t ldy) {
  constexpr int R = Simd::RowsPerPass(N, sizeof(WElem<DT>));
  int64_t r = 0;
  for (; r + R <= rows; r += R) {
    const WElem<DT>* block = w + r * in;
    DotBlock<DT, R, N>(x, ldx, block, r + 2 * R <= rows ? block + R * in : block, in, y + r, ldy);
  }
  for (; r < rows; ++r) DotBlock<DT, 1, N>(x, ldx, w + r * in, w + r * in, in, y + r, ldy);
}

template <DType DT>
using GemvFn = void (*)(const float*, int64_t, const WElem<DT>*, int64_t, int64_t, float*, int64_t);

template <DType DT>
GemvFn<DT> SelectGemv(int64_t n) {
  switch (n) {
    case 1:
      return &GemvRows<DT, 1>;
    case 2:
      return &GemvRows<DT, 2>;
    case 3:
      return &GemvRows<DT, 3>;
    case 4:
      return &GemvRows<DT, 4>;
    case 5:
      return &GemvRows<DT, 5>;
    case 6:
      return &GemvRows<DT, 6>;
    case 7:
      return &GemvRows<DT, 7>;
    default:
      return &GemvRows<DT, 8>;
  }
}

bool UseThreads(const ThreadPool* pool, int64_t weight_elements) {
  return pool != nullptr && pool->threads() > 1 && weight_elements >= kParallelMinElements;
}

// Streaming kernel for any batch: up to kMaxGemvRows rows of x at once; larger batches
// take the weights kL2RowBlock rows at a time and multiply them with every slice of x
// while they are in L2, so that the weights still come from memory once.
template <DType DT>
void GemvRange(const float* x, int64_t n, int64_t ldx, const WElem<DT>* w, int64_t in, int64_t rows,
               float* y, int64_t ldy) {
  if (n <= kMaxGemvRows) {
    SelectGemv<DT>(n)(x, ldx, w, in, rows, y, ldy);
    return;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += kL2RowBlock) {
    const int64_t nr = std::min(kL2RowBlock, rows - r0);
    for (int64_t j = 0; j < n; j += kMaxGemvRows) {
      const int64_t nj = std::min<int64_t>(kMaxGemvRows, n - j);
      SelectGemv<DT>(nj)(x + j * ldx, ldx, w + r0 * in, in, nr, y + j * ldy + r0, ldy);
    }
  }
}

template <DType DT>
void Gemv(const float* x, int64_t n, int64_t ldx, const WElem<DT>* w, int64_t in, int64_t rows,
          float* y, int64_t ldy, ThreadPool* pool) {
  if (!UseThreads(pool, rows * in)) {
    GemvRange<DT>(x, n, ldx, w, in, rows, y, ldy);
    return;
  }
  const int64_t blocks = (rows + kGemvRowBlock - 1) / kGemvRowBlock;
  const int64_t grain = std::max<int64_t>(1, kChunkMinElements / (kGemvRowBlock * in));
  pool->ParallelFor(blocks, grain, [&](int64_t b, int64_t e) {
    const int64_t r0 = b * kGemvRowBlock;
    const int64_t r1 = std::min(rows, e * kGemvRowBlock);
    GemvRange<DT>(x, n, ldx, w + r0 * in, in, r1 - r0, y + r0, ldy);
  });
}

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
using StridedMap = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;

// y[:, 0:rows] = x . w[0:rows]^T with Eigen, w widened tile by tile.
template <DType DT>
void Gemm(const float* x, int64_t n, int64_t ldx, const WElem<DT>* w, int64_t in, int64_t rows,
          float* y, int64_t ldy, ThreadPool* pool) {
  const ConstStridedMap xm(x, n, in, Eigen::OuterStride<>(ldx));
  const int64_t tile =
      std::clamp<int64_t>(kGemmTileElements / std::max<int64_t>(in, 1) / 8 * 8, 8, 256);
  const int64_t tiles = (rows + tile - 1) / tile;
  auto body = [&](int64_t b, int64_t e) {
    const int64_t r_begin = b * tile;
    const int64_t r_end = std::min(rows, e * tile);
    if constexpr (DT == DType::kF32) {
      // In place: one product over the whole chunk lets Eigen block for the cache itself.
      const Eigen::Map<const RowMatrix> wm(w + r_begin * in, r_end - r_begin, in);
      StridedMap ym(y + r_begin, n, r_end - r_begin, Eigen::OuterStride<>(ldy));
      ym.noalias() = xm * wm.transpose();
    } else {
      thread_local std::vector<float> buffer;
      if (buffer.size() < static_cast<size_t>(tile * in)) buffer.resize(tile * in);
      for (int64_t r0 = r_begin; r0 < r_end; r0 += tile) {
        const int64_t nr = std::min(tile, r_end - r0);
        Widen<DT>(w + r0 * in, nr * in, buffer.data());
        const Eigen::Map<const RowMatrix> wm(buffer.data(), nr, in);
        StridedMap ym(y + r0, n, nr, Eigen::OuterStride<>(ldy));
        ym.noalias() = xm * wm.transpose();
      }
    }
  };
  if (!UseThreads(pool, rows * in)) {
    body(0, tiles);
    return;
  }
  pool->ParallelFor(tiles, 1, body);
}

template <DType DT>
void LinearTyped(const float* x, int64_t n, int64_t ldx, const TensorView& w, int64_t row_begin,
                 int64_t row_end, float* y, int64_t ldy, ThreadPool* pool) {
  const int64_t in = w.shape[1];
  const int64_t rows = row_end - row_begin;
  const WElem<DT>* wp = static_cast<const WElem<DT>*>(w.data) + row_begin * in;
  if (n <= kMaxStreamingBatch) {
    Gemv<DT>(x, n, ldx, wp, in, rows, y, ldy, pool);
  } else {
    Gemm<DT>(x, n, ldx, wp, in, rows, y, ldy, pool);
  }
}

// Applies fn<DT>() for the view's dtype.
template <typename F>
void Dispatch(DType dt, F&& fn) {
  switch (dt) {
    case DType::kF32:
      fn.template operator()<DType::kF32>();
      return;
    case DType::kBF16:
      fn.template operator()<DType::kBF16>();
      return;
    case DType::kF16:
      fn.template operator()<DType::kF16>();
      return;
  }
}

template <DType DT>
void RmsNormTyped(const float* x, int64_t n, int64_t d, const WElem<DT>* weight, float eps,
                  float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    float* oi = out + i * d;
    V ss = Simd::Zero();
    int64_t k = 0;
    for (; k + kW <= d; k += kW) {
      const V v = Simd::Load<DType::kF32>(xi + k);
      ss = Simd::Fma(v, v, ss);
    }
    float sum = Simd::Sum(ss);
    for (int64_t t = k; t < d; ++t) sum += xi[t] * xi[t];
    const float scale = 1.0f / std::sqrt(sum / static_cast<float>(d) + eps);
    const V vscale = Simd::Set1(scale);
    k = 0;
    for (; k + kW <= d; k += kW) {
      const V v = Simd::Mul(Simd::Load<DType::kF32>(xi + k), vscale);
      Simd::Store(oi + k, Simd::Mul(v, Simd::Load<DT>(weight + k)));
    }
    for (; k < d; ++k) oi[k] = (xi[k] * scale) * ScalarLoad<DT>(weight + k);
  }
}

}  // namespace

void LinearRows(const float* x, int64_t n, int64_t ldx, const TensorView& w, int64_t row_begin,
                int64_t row_end, float* y, int64_t ldy, ThreadPool* pool) {
  assert(w.shape.size() == 2);
  assert(0 <= row_begin && row_begin <= row_end && row_end <= w.shape[0]);
  assert(ldx >= w.shape[1] && ldy >= row_end - row_begin);
  if (n <= 0 || row_end <= row_begin) return;
  if (MaddCounterEnabled()) CountLinearMadds(n * (row_end - row_begin) * w.shape[1]);
  if (w.shape[1] == 0) {
    for (int64_t j = 0; j < n; ++j) {
      std::fill(y + j * ldy, y + j * ldy + (row_end - row_begin), 0.0f);
    }
    return;
  }
  Dispatch(w.dtype,
           [&]<DType DT>() { LinearTyped<DT>(x, n, ldx, w, row_begin, row_end, y, ldy, pool); });
}

void Linear(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y, int64_t ldy,
            ThreadPool* pool) {
  assert(w.shape.size() == 2);
  LinearRows(x, n, ldx, w, 0, w.shape[0], y, ldy, pool);
}

void LinearRowInvariant(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y,
                        int64_t ldy, ThreadPool* pool) {
  static_assert(kBatchInvariantRows <= kMaxStreamingBatch);
  for (int64_t j = 0; j < n; j += kBatchInvariantRows) {
    Linear(x + j * ldx, std::min(kBatchInvariantRows, n - j), ldx, w, y + j * ldy, ldy, pool);
  }
}

namespace {

// Outer-product tile: R rows of x times C vectors of packed columns. acc[r][c] lane l is
// row r's output column c * kW + l, accumulated over k in order.
template <int R, int C>
void OuterTile(const float* x, int64_t ldx, const float* wt, int64_t ldw, int64_t in, float* y,
               int64_t ldy, int64_t valid) {
  V acc[R][C];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) acc[r][c] = Simd::Zero();
  }
  for (int64_t k = 0; k < in; ++k) {
    const float* wk = wt + k * ldw;
    V w[C];
    for (int c = 0; c < C; ++c) w[c] = Simd::Load<DType::kF32>(wk + c * kW);
    for (int r = 0; r < R; ++r) {
      const V xb = Simd::Set1(x[r * ldx + k]);
      for (int c = 0; c < C; ++c) acc[r][c] = Simd::Fma(xb, w[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const int64_t col = c * kW;
      if (col + kW <= valid) {
        Simd::Store(y + r * ldy + col, acc[r][c]);
      } else if (col < valid) {
        Simd::StoreTail(y + r * ldy + col, acc[r][c], valid - col);
      }
    }
  }
}

constexpr int kTileRows = kW >= 16 ? 6 : 4;
constexpr int kTileVecs = kW >= 16 ? 4 : kW >= 8 ? 2 : 4;

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                        int64_t);

template <int R, int... Cs>
constexpr std::array<TileFn, sizeof...(Cs)> RowTiles(std::integer_sequence<int, Cs...>) {
  return {&OuterTile<R, Cs + 1>...};
}

template <int... Rs>
constexpr std::array<std::array<TileFn, kTileVecs>, sizeof...(Rs)> Tiles(
    std::integer_sequence<int, Rs...>) {
  return {RowTiles<Rs + 1>(std::make_integer_sequence<int, kTileVecs>{})...};
}

// kTiles[r - 1][c - 1]: the tile of r rows and c vectors.
constexpr auto kTiles = Tiles(std::make_integer_sequence<int, kTileRows>{});

}  // namespace

PackedLinear PackLinear(const TensorView& w) {
  assert(w.shape.size() == 2);
  PackedLinear p;
  p.out = w.shape[0];
  p.in = w.shape[1];
  p.out_pad = (p.out + kW - 1) / kW * kW;
  p.wt.assign(static_cast<size_t>(p.in * p.out_pad), 0.0f);
  std::vector<float> row(static_cast<size_t>(p.in));
  for (int64_t j = 0; j < p.out; ++j) {
    ToF32(w, j * p.in, p.in, row.data());
    for (int64_t k = 0; k < p.in; ++k) p.wt[k * p.out_pad + j] = row[k];
  }
  return p;
}

void LinearPacked(const float* x, int64_t n, int64_t ldx, const PackedLinear& w, float* y,
                  int64_t ldy, ThreadPool* pool) {
  if (n <= 0 || w.out == 0) return;
  if (MaddCounterEnabled()) CountLinearMadds(n * w.out * w.in);
  const int64_t block = static_cast<int64_t>(kTileVecs) * kW;  // columns per tile
  const int64_t blocks = (w.out_pad + block - 1) / block;
  auto body = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * block;
      const int64_t vecs = std::min(block, w.out_pad - c0) / kW;
      const int64_t valid = std::min(block, w.out - c0);
      for (int64_t r0 = 0; r0 < n; r0 += kTileRows) {
        const int64_t rows = std::min<int64_t>(kTileRows, n - r0);
        kTiles[rows - 1][vecs - 1](x + r0 * ldx, ldx, w.wt.data() + c0, w.out_pad, w.in,
                                   y + r0 * ldy + c0, ldy, valid);
      }
    }
  };
  if (!UseThreads(pool, w.in * w.out_pad)) {
    body(0, blocks);
    return;
  }
  const int64_t grain =
      std::max<int64_t>(1, kChunkMinElements / std::max<int64_t>(1, block * w.in));
  pool->ParallelFor(blocks, grain, body);
}

void LinearReference(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y,
                     int64_t ldy) {
  assert(w.shape.size() == 2);
  const int64_t out = w.shape[0];
  const int64_t in = w.shape[1];
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t r = 0; r < out; ++r) {
      double s = 0.0;
      for (int64_t k = 0; k < in; ++k) {
        s += static_cast<double>(x[j * ldx + k]) * static_cast<double>(w.At(r * in + k));
      }
      y[j * ldy + r] = static_cast<float>(s);
    }
  }
}

void RmsNorm(const float* x, int64_t n, int64_t d, const TensorView& weight, double eps,
             float* out) {
  assert(weight.numel() == d);
  Dispatch(weight.dtype, [&]<DType DT>() {
    RmsNormTyped<DT>(x, n, d, static_cast<const WElem<DT>*>(weight.data), static_cast<float>(eps),
                     out);
  });
}

void ToF32(const TensorView& v, int64_t offset, int64_t count, float* out) {
  assert(offset >= 0 && count >= 0 && offset + count <= v.numel());
  Dispatch(v.dtype, [&]<DType DT>() {
    Widen<DT>(static_cast<const WElem<DT>*>(v.data) + offset, count, out);
  });
}

}  // namespace ponder::exec::cpu
