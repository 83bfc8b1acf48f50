#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "exec/cpu/kernels.h"
#include "exec/cuda/cuda_model.h"

namespace ponder::exec::cuda {
namespace {

// A failed CUDA or cuBLAS call inside a forward phase is a device fault, not bad input: the
// phases have no error path (their inputs were checked), so the process reports and stops.
void Die(const char* what, const char* detail, const char* file, int line) {
  std::fprintf(stderr, "ponder: fatal: CUDA backend: %s: %s (%s:%d)\n", what, detail, file, line);
  std::abort();
}

#define PONDER_CUDA_CHECK(call)                                                        \
  do {                                                                                 \
    const cudaError_t err_ = (call);                                                   \
    if (err_ != cudaSuccess) Die(#call, cudaGetErrorString(err_), __FILE__, __LINE__); \
  } while (0)

Status CudaStatus(cudaError_t err, const std::string& what) {
  return Unavailable("backend cuda: " + what + ": " + cudaGetErrorString(err));
}

// Whether every chunk of a call has one new row (a decode call; the chunks of a call are
// distinct sequences, so no row reads a key or value another row of the call writes).
bool OneRowEach(std::span<const Chunk> chunks) {
  return std::all_of(chunks.begin(), chunks.end(), [](const Chunk& c) { return c.count == 1; });
}

constexpr int kThreads = 256;
// Threads of the kernels that give one block to a row (norms, RoPE): a decode call has a few
// rows, so each row's d elements are spread over many threads, several loads in flight each.
constexpr int kRowThreads = 1024;

// ---- kernels ----------------------------------------------------------------------------

__device__ inline float Load(const float* p, int64_t i) { return p[i]; }
__device__ inline float Load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

// Programmatic dependent launch (sm_90; Impl::Launch, set_pdl): a kernel may be launched
// while the one before it in the stream still runs. WaitForPrevious blocks until that
// kernel has finished and its writes are visible (everything a kernel reads or writes,
// except weights, comes after it); LetNextStart then lets the next kernel's blocks be
// scheduled, so that its launch (and MmaKernel's first weight loads) overlap this kernel.
// Both are no-ops for a kernel launched without the attribute.
__device__ inline void WaitForPrevious() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ inline void LetNextStart() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Both, for kernels with nothing to do before the previous one ends.
__device__ inline void AfterPrevious() {
  WaitForPrevious();
  LetNextStart();
}

// Sum over the block; every thread gets the result. `red` holds blockDim.x / 32 values.
template <typename T>
__device__ T BlockSum(T v, T* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  __syncthreads();  // `red` may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T t = 0;
  for (int w = 0; w < warps; ++w) t += red[w];
  return t;
}

__device__ float BlockMax(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = -INFINITY;
  for (int w = 0; w < warps; ++w) t = fmaxf(t, red[w]);
  return t;
}

// e[r] = wte[tokens[r]] * scale. One block per row.
template <typename W>
__global__ void EmbedKernel(const int32_t* tokens, const W* wte, int64_t d, float scale, float* e) {
  AfterPrevious();
  const int64_t r = blockIdx.x;
  const W* src = wte + static_cast<int64_t>(tokens[r]) * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) e[r * d + j] = Load(src, j) * scale;
}

// 1 / rms of a row (with eps) from each thread's sum of squares of its elements.
__device__ inline float RmsScale(float ss, int64_t d, float eps, float* red) {
  return 1.0f / sqrtf(BlockSum(ss, red) / static_cast<float>(d) + eps);
}

// The first half of a row norm, shared by the norm kernels: with `yr`, xr += yr in place;
// returns 1 / rms(xr) (with eps). Each thread writes only the elements it read.
__device__ float AddAndRmsScale(float* xr, const float* yr, int64_t d, float eps, float* red) {
  float ss = 0.0f;
#pragma unroll 4
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float v = xr[j];
    if (yr != nullptr) {
      v += yr[j];
      xr[j] = v;
    }
    ss += v * v;
  }
  return RmsScale(ss, d, eps, red);
}

// Elements of a row each thread of a norm kernel keeps in registers in the norms' lean form
// (set_lean_kernels): rows up to kNormRegs * kRowThreads = 8192 wide (int indices).
constexpr int kNormRegs = 8;

// Thread t's elements of a row p: j = t + i * blockDim.x for i < P, 0 where j >= d.
template <int P>
__device__ inline void LoadRow(const float* p, int64_t d, float (&v)[P]) {
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int j = static_cast<int>(threadIdx.x + i * blockDim.x);
    v[i] = j < d ? p[j] : 0.0f;
  }
}

// v += thread t's elements of the row yr (LoadRow's), when yr is not null.
template <int P>
__device__ inline void AddRow(const float* yr, int64_t d, float (&v)[P]) {
  if (yr == nullptr) return;
  float yv[P];
  LoadRow(yr, d, yv);
#pragma unroll
  for (int i = 0; i < P; ++i) v[i] += yv[i];
}

// RmsScale of a row held in registers (LoadRow's slots), its squares summed in slot order.
template <int P>
__device__ inline float RmsScaleInRegisters(const float (&v)[P], int64_t d, float eps, float* red) {
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    if (static_cast<int>(threadIdx.x + i * blockDim.x) < d) ss += v[i] * v[i];
  }
  return RmsScale(ss, d, eps, red);
}

// out[r] = rmsnorm(x[r] (+ y[r])) * w; x, y and out may alias (each thread writes only the
// elements it read). With `add`, x[r] + y[r] is also the normalised input. One block per row.
// P = 0: the row streamed in passes (each pass's loads wait for the reduction before it);
// P > 0 (d <= P * blockDim.x): the row held in registers, every load issued at the start,
// the same values computed in the same order.
template <int P>
__global__ void __launch_bounds__(kRowThreads)
    RmsNormKernel(float* x, const float* y, const float* w, int64_t d, float eps, float* out) {
  AfterPrevious();
  __shared__ float red[kRowThreads / 32];
  const int64_t r = blockIdx.x;
  float* xr = x + r * d;
  const float* yr = y != nullptr ? y + r * d : nullptr;
  if constexpr (P == 0) {
    const float scale = AddAndRmsScale(xr, yr, d, eps, red);
#pragma unroll 4
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[r * d + j] = (xr[j] * scale) * w[j];
  } else {
    float v[P], wv[P];
    LoadRow(xr, d, v);
    LoadRow(w, d, wv);
    AddRow(yr, d, v);
    const float scale = RmsScaleInRegisters(v, d, eps, red);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int j = static_cast<int>(threadIdx.x + i * blockDim.x);
      if (j >= d) continue;
      if (yr != nullptr) xr[j] = v[i];
      out[r * d + j] = (v[i] * scale) * wv[i];
    }
  }
}

// x[r] = rmsnorm(x[r] (+ y[r])) * wa in place, then h[r] = rmsnorm(x[r]) * wb: the two norms
// that meet between sublayers (norm_2 and norm_3; a block's norm_4 and the next block's
// norm_1) in one kernel, each value computed as RmsNormKernel computes it. One block per row;
// P as for RmsNormKernel.
template <int P>
__global__ void __launch_bounds__(kRowThreads)
    RmsNorm2Kernel(float* x, const float* y, const float* wa, const float* wb, int64_t d, float eps,
                   float* h) {
  AfterPrevious();
  __shared__ float red[kRowThreads / 32];
  const int64_t r = blockIdx.x;
  float* xr = x + r * d;
  const float* yr = y != nullptr ? y + r * d : nullptr;
  if constexpr (P == 0) {
    const float scale = AddAndRmsScale(xr, yr, d, eps, red);
    float ss2 = 0.0f;
#pragma unroll 4
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float v = (xr[j] * scale) * wa[j];
      xr[j] = v;
      ss2 += v * v;
    }
    const float scale2 = RmsScale(ss2, d, eps, red);
#pragma unroll 4
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) h[r * d + j] = (xr[j] * scale2) * wb[j];
  } else {
    float v[P], av[P], bv[P];
    LoadRow(xr, d, v);
    LoadRow(wa, d, av);
    LoadRow(wb, d, bv);
    AddRow(yr, d, v);
    const float scale = RmsScaleInRegisters(v, d, eps, red);
    float ss2 = 0.0f;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int j = static_cast<int>(threadIdx.x + i * blockDim.x);
      v[i] = (v[i] * scale) * av[i];
      if (j < d) {
        xr[j] = v[i];
        ss2 += v[i] * v[i];
      }
    }
    const float scale2 = RmsScale(ss2, d, eps, red);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int j = static_cast<int>(threadIdx.x + i * blockDim.x);
      if (j < d) h[r * d + j] = (v[i] * scale2) * bv[i];
    }
  }
}

// Copies f32 rows into a contiguous block: y[r, j] = x[r * ldx + j].
__global__ void CompactKernel(const float* x, int64_t n, int64_t cols, int64_t ldx, float* y) {
  AfterPrevious();
  const int64_t total = n * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = x[(i / cols) * ldx + i % cols];
  }
}

// Splits f32 rows into two bf16 parts for a product with bf16 weights: hi = bf16(x) in rows
// [0, n), lo = bf16(x - hi) in rows [n, 2n). hi + lo keeps about 16 significant bits of x,
// where hi alone keeps 8: W.hi + W.lo is, to f32 rounding, the product with f32 rows
// that the CPU executor computes.
__global__ void SplitBf16Kernel(const float* x, int64_t n, int64_t cols, int64_t ldx,
                                __nv_bfloat16* y) {
  AfterPrevious();
  const int64_t total = n * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[(i / cols) * ldx + i % cols];
    const __nv_bfloat16 hi = __float2bfloat16(v);
    y[i] = hi;
    y[total + i] = __float2bfloat16(v - __bfloat162float(hi));
  }
}

// y[r, j] (row stride ldy) = parts[r, j] + parts[n + r, j] (+ y[r, j] when accumulate):
// the two halves of a split product added. parts: [2n, out].
__global__ void FoldKernel(const float* parts, int64_t n, int64_t out, float* y, int64_t ldy,
                           int accumulate) {
  AfterPrevious();
  const int64_t total = n * out;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float* dst = y + (i / out) * ldy + i % out;
    const float v = parts[i] + parts[total + i];
    *dst = accumulate ? *dst + v : v;
  }
}

// acc + sum_i bf16(w)[i] * x[i] over 8 bf16 weights (one 16-byte load) and 8 f32 inputs
// (a: the first four, b: the last four). A bf16 is the high half of an f32.
__device__ inline float Dot8(uint4 w, float4 a, float4 b, float acc) {
  acc = fmaf(__uint_as_float(w.x << 16), a.x, acc);
  acc = fmaf(__uint_as_float(w.x & 0xffff0000u), a.y, acc);
  acc = fmaf(__uint_as_float(w.y << 16), a.z, acc);
  acc = fmaf(__uint_as_float(w.y & 0xffff0000u), a.w, acc);
  acc = fmaf(__uint_as_float(w.z << 16), b.x, acc);
  acc = fmaf(__uint_as_float(w.z & 0xffff0000u), b.y, acc);
  acc = fmaf(__uint_as_float(w.w << 16), b.z, acc);
  acc = fmaf(__uint_as_float(w.w & 0xffff0000u), b.w, acc);
  return acc;
}

// The most input rows GemvKernel takes.
constexpr int64_t kGemvMaxN = 8;

// Decode products of a few rows with bf16 weights and f32 inputs (no rounding of the
// inputs): y[n, o] (row stride ldy) = sum_j x[n, j] W[o, j] (+ y when accumulate) for
// N rows of x. Bound by reading W once: each block owns R output rows and its threads
// stride over k together, 16 bytes of each row per load (streamed past L1); x is read once
// per block (more output rows per block read x less often, fewer need fewer registers and
// give more blocks). Partial sums are reduced in a fixed order (warp shuffles, then the
// warps in index order), so a row's result does not depend on N, R or the launch.
// Columns from k1 on read their inputs from x2 (the adapter's [s, e] without the
// concatenation; x2 = null and k1 = k otherwise).
// Needs k, k1, ldw % 8 == 0, ldx % 4 == 0, and W, x, x2 16-byte aligned (PathFor).
template <int N, int R>
__global__ void __launch_bounds__(kThreads)
    GemvKernel(const __nv_bfloat16* __restrict__ w, int64_t ldw, int64_t rows, int64_t k,
               const float* __restrict__ x, int64_t ldx, const float* __restrict__ x2, int64_t k1,
               float* __restrict__ y, int64_t ldy, int accumulate) {
  __shared__ float part[kThreads / 32][R * N];
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * R;
  float acc[R][N];
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int n = 0; n < N; ++n) acc[i][n] = 0.0f;
  }
  AfterPrevious();
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * 8; j < k; j += kThreads * 8) {
    uint4 wv[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t o = o0 + i < rows ? o0 + i : rows - 1;
      wv[i] = __ldcs(reinterpret_cast<const uint4*>(w + o * ldw + j));
    }
    const float* xs = j < k1 ? x + j : x2 + (j - k1);
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(xs + n * ldx));
      const float4 b = __ldg(reinterpret_cast<const float4*>(xs + n * ldx + 4));
#pragma unroll
      for (int i = 0; i < R; ++i) acc[i][n] = Dot8(wv[i], a, b, acc[i][n]);
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
      float v = acc[i][n];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) part[warp][i * N + n] = v;
    }
  }
  __syncthreads();
  for (int t = threadIdx.x; t < R * N; t += blockDim.x) {
    const int i = t / N, n = t % N;
    if (o0 + i >= rows) continue;
    float v = 0.0f;
    for (int q = 0; q < kThreads / 32; ++q) v += part[q][t];
    float* dst = y + n * ldy + o0 + i;
    *dst = accumulate ? *dst + v : v;
  }
}

// ---- tensor-core products of a few rows ---------------------------------------------------
//
// MmaKernel: y[n, o] (row stride ldy) = sum_j x[n, j] W[o, j] (+ y when accumulate) for up to
// 32 input rows, bf16 weights and f32 inputs, on the tensor cores (mma.sync m16n8k16, f32
// accumulation). Each input value is split into hi = bf16(x) and lo = bf16(x - hi) (about
// 16 significant bits, as the cuBLAS path's two parts) and both parts are multiplied with
// the same weight fragment into one accumulator, so the weights are read once.
//
// Like GemvKernel it is bound by reading W, and what limits it is the inputs' traffic
// beside it: a block owns a tile of 64 output rows (16 per warp) and a range of k, so the
// x columns it reads serve 64 rows, and its four warps read the same x columns (from L1
// after the first). Thread (g, t) streams 16 bytes of each of its two weight rows per
// 32-column chunk straight into its A fragments (the columns' order inside a chunk is
// permuted the same way in A and B, which leaves the sums as they are). When k is split
// over gridDim.y blocks, each writes its partial tile to `ws` and the last to finish adds
// the partials in split order, so a row's result depends only on the product's shape,
// never on n, the other rows, or the order the blocks ran in. Columns from k1 on read
// their inputs from x2. Needs k, k1 % 32 == 0, ldw % 8 == 0, ldx % 4 == 0, and W, x, x2
// 16-byte aligned (PathFor); `done` (one counter per row tile) starts at zero and is left so.
constexpr int kMmaWarps = 4;
constexpr int64_t kMmaTileRows = 16 * kMmaWarps;
constexpr int64_t kMmaMaxN = 32;
constexpr int64_t kMmaMaxSplits = 16;

// Two f32 values as a bf16x2 register: `first` in the low half (the lower-indexed element
// of an mma fragment pair).
__device__ inline uint32_t PackBf16x2(float first, float second) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(first, second);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// c += A(16x16, row) . B(16x8, col), bf16 inputs, f32 accumulators.
__device__ inline void Mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// NT tiles of 8 input rows. Grid: (row tiles, k splits of `split_chunks` chunks each).
template <int NT>
__global__ void __launch_bounds__(kMmaWarps * 32)
    MmaKernel(const __nv_bfloat16* __restrict__ w, int64_t ldw, int64_t rows, int64_t k,
              const float* __restrict__ x, int64_t ldx, const float* __restrict__ x2, int64_t k1,
              int n, float* __restrict__ y, int64_t ldy, int accumulate, int64_t split_chunks,
              float* __restrict__ ws, unsigned* __restrict__ done) {
  constexpr int U = NT <= 2 ? 4 : 2;  // chunks whose weights a warp loads before using them
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // the fragments' group and thread-in-group
  const int64_t ob = static_cast<int64_t>(blockIdx.x) * kMmaTileRows + warp * 16;
  // Thread (g, t) reads weight rows g and g + 8 of its warp's 16, columns [8t, 8t + 8) of
  // each chunk: words 0-1 are its A fragment for the chunk's first k16 step, words 2-3 for
  // the second. Rows past the end are read clamped and their sums dropped.
  const __nv_bfloat16* w0 = w + (ob + g < rows ? ob + g : rows - 1) * ldw + 8 * t;
  const __nv_bfloat16* w8 = w + (ob + g + 8 < rows ? ob + g + 8 : rows - 1) * ldw + 8 * t;
  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
  }
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * split_chunks;
  const int64_t c_end = min(k / 32, c_begin + split_chunks);
  // Weights of U chunks from c0 (the group after the one being multiplied is in flight;
  // the first is loaded before the previous kernel has ended).
  uint4 a0[U] = {}, a8[U] = {};
  auto load = [&](int64_t c0, uint4(&r0)[U], uint4(&r8)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (c0 + u < c_end) {
        r0[u] = __ldcs(reinterpret_cast<const uint4*>(w0 + (c0 + u) * 32));
        r8[u] = __ldcs(reinterpret_cast<const uint4*>(w8 + (c0 + u) * 32));
      }
    }
  };
  load(c_begin, a0, a8);
  AfterPrevious();
  for (int64_t c0 = c_begin; c0 < c_end; c0 += U) {
    uint4 n0[U] = {}, n8[U] = {};
    load(c0 + U, n0, n8);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + u;
      if (c >= c_end) break;
      // B fragments: thread (g, t) holds input row 8 nt + g, columns [8t, 8t + 8) of the
      // chunk, the same columns as its A words, as hi and lo parts.
      const int64_t col = c * 32 + 8 * t;
      const float* xs = col < k1 ? x + col : x2 + (col - k1);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int r = nt * 8 + g;
        float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (r < n) {
          const float4 p = __ldg(reinterpret_cast<const float4*>(xs + r * ldx));
          const float4 q = __ldg(reinterpret_cast<const float4*>(xs + r * ldx + 4));
          v[0] = p.x, v[1] = p.y, v[2] = p.z, v[3] = p.w;
          v[4] = q.x, v[5] = q.y, v[6] = q.z, v[7] = q.w;
        }
        uint32_t bh[4], bl[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float h0 = __bfloat162float(__float2bfloat16(v[2 * i]));
          const float h1 = __bfloat162float(__float2bfloat16(v[2 * i + 1]));
          bh[i] = PackBf16x2(h0, h1);
          bl[i] = PackBf16x2(v[2 * i] - h0, v[2 * i + 1] - h1);
        }
        Mma16816(acc[nt], a0[u].x, a8[u].x, a0[u].y, a8[u].y, bh[0], bh[1]);
        Mma16816(acc[nt], a0[u].x, a8[u].x, a0[u].y, a8[u].y, bl[0], bl[1]);
        Mma16816(acc[nt], a0[u].z, a8[u].z, a0[u].w, a8[u].w, bh[2], bh[3]);
        Mma16816(acc[nt], a0[u].z, a8[u].z, a0[u].w, a8[u].w, bl[2], bl[3]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      a0[u] = n0[u];
      a8[u] = n8[u];
    }
  }
  // Accumulator i of lane (g, t) in n-tile nt: output row ob + g (+ 8 for i >= 2), input
  // row 8 nt + 2t + (i & 1).
  auto out_row = [&](int i) { return ob + g + (i >= 2 ? 8 : 0); };
  auto in_row = [&](int nt, int i) { return nt * 8 + 2 * t + (i & 1); };
  auto store = [&](int64_t o, int r, float v) {
    float* dst = y + r * ldy + o;
    *dst = accumulate ? *dst + v : v;
  };
  if (gridDim.y == 1) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (out_row(i) < rows && in_row(nt, i) < n) store(out_row(i), in_row(nt, i), acc[nt][i]);
      }
    }
    return;
  }
  // Split k: partial tiles to ws [splits, n, rows]; the last block of the tile adds them.
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (out_row(i) < rows && in_row(nt, i) < n) {
        ws[(blockIdx.y * static_cast<int64_t>(n) + in_row(nt, i)) * rows + out_row(i)] = acc[nt][i];
      }
    }
  }
  __threadfence();
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) last = atomicAdd(&done[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t o = out_row(i);
      const int r = in_row(nt, i);
      if (o >= rows || r >= n) continue;
      float sum = 0.0f;
      for (unsigned q = 0; q < gridDim.y; ++q)
        sum += __ldcg(ws + (q * static_cast<int64_t>(n) + r) * rows + o);
      store(o, r, sum);
    }
  }
  if (threadIdx.x == 0) done[blockIdx.x] = 0;  // ready for the next product
}

// A pattern for timing inputs (never zeros): x[i] = sin(i * 0.37) * 0.5.
__global__ void PatternKernel(float* x, int64_t total) {
  AfterPrevious();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = 0.5f * sinf(static_cast<float>(i % 100003) * 0.37f);
  }
}

// qk bias (before RoPE) and RoPE on one adjacent pair (j, j + 1) of q and of k at `pos`
// (pair i of its head), into qo and ko. The roundings are spelled out (no fused
// multiply-add), so that every kernel calling this computes the same values.
__device__ inline void RopePair(const float* q, const float* k, const float* bias, int64_t d,
                                int64_t j, const float* cos_t, const float* sin_t, int64_t pos,
                                int64_t half, int64_t i, float (&qo)[2], float (&ko)[2]) {
  const float c = cos_t[pos * half + i], s = sin_t[pos * half + i];
  float q0 = q[j], q1 = q[j + 1], k0 = k[j], k1 = k[j + 1];
  if (bias != nullptr) {
    q0 += bias[j];
    q1 += bias[j + 1];
    k0 += bias[d + j];
    k1 += bias[d + j + 1];
  }
  qo[0] = __fsub_rn(__fmul_rn(q0, c), __fmul_rn(q1, s));
  qo[1] = __fadd_rn(__fmul_rn(q0, s), __fmul_rn(q1, c));
  ko[0] = __fsub_rn(__fmul_rn(k0, c), __fmul_rn(k1, s));
  ko[1] = __fadd_rn(__fmul_rn(k0, s), __fmul_rn(k1, c));
}

// qk bias (before RoPE), RoPE on adjacent pairs of q and k, then the row's k and v go to
// its KV page rows. One block per row. qkv: [N, 3d]; bias: [2d] or null.
__global__ void __launch_bounds__(kRowThreads)
    RopeStoreKernel(float* qkv, const float* bias, const float* cos_t, const float* sin_t,
                    const int32_t* positions, float* const* kdst, float* const* vdst, int64_t d,
                    int64_t hd) {
  AfterPrevious();
  const int64_t r = blockIdx.x;
  float* q = qkv + r * 3 * d;
  const float* k = q + d;
  const float* v = k + d;
  const int64_t half = hd / 2;
  const int64_t pos = positions[r];
  float* kout = kdst[r];
  float* vout = vdst[r];
#pragma unroll 2
  for (int64_t m = threadIdx.x; m < d / 2; m += blockDim.x) {
    const int64_t h = m / half, i = m % half;
    const int64_t j = h * hd + 2 * i;
    float qo[2], ko[2];
    RopePair(q, k, bias, d, j, cos_t, sin_t, pos, half, i, qo, ko);
    q[j] = qo[0];
    q[j + 1] = qo[1];
    kout[j] = ko[0];
    kout[j + 1] = ko[1];
  }
#pragma unroll 4
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) vout[j] = v[j];
}

constexpr int kWarps = kThreads / 32;

// Shared memory of AttentionKernel for `visible` positions (RopeAttentionKernel: hd more,
// its row's query).
size_t AttentionSmem(int64_t hd, int64_t visible) {
  return static_cast<size_t>(kWarps + kWarps * hd + visible) * sizeof(float);
}

// Causal attention of one query row q (head h's hd elements) and one head: out[r, h] =
// softmax(q . K^T * scale) V over the row's visible positions, whose key and value rows are
// given by pointer tables (a chunk's table lists its positions in order; a token that
// stopped iterating early points at its last iteration's rows). Each warp takes every
// kWarps-th position: a score is one warp's dot product (lanes over the head's elements),
// and the weighted sum of values is summed per warp, then over the warps in order. `smem`
// (AttentionSmem): the reduction slots, the warps' partial outputs and the scores.
__device__ void AttendRow(const float* q, int64_t r, int64_t h, const int32_t* row_table,
                          const int32_t* row_visible, const float* const* kp,
                          const float* const* vp, int64_t d, int64_t hd, float scale, float* out,
                          float* smem) {
  float* red = smem;                   // kWarps
  float* part = smem + kWarps;         // kWarps x hd
  float* scores = part + kWarps * hd;  // visible
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t base = row_table[r];
  const int64_t visible = row_visible[r];
  float mx = -INFINITY;
  for (int64_t p = warp; p < visible; p += kWarps) {
    const float* k = kp[base + p] + h * hd;
    float dot = 0.0f;
    for (int64_t i = lane; i < hd; i += 32) dot += q[i] * k[i];
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    dot *= scale;
    if (lane == 0) scores[p] = dot;
    mx = fmaxf(mx, dot);
  }
  mx = BlockMax(mx, red);  // its barrier also orders the scores' writes before the reads
  float sum = 0.0f;
  for (int64_t p = threadIdx.x; p < visible; p += blockDim.x) {
    const float e = expf(scores[p] - mx);
    scores[p] = e;
    sum += e;
  }
  sum = BlockSum(sum, red);  // also orders the scores' writes before the reads below
  for (int64_t i = lane; i < hd; i += 32) {
    float acc = 0.0f;
#pragma unroll 4
    for (int64_t p = warp; p < visible; p += kWarps) acc += scores[p] * vp[base + p][h * hd + i];
    part[warp * hd + i] = acc;
  }
  __syncthreads();
  const float inv = 1.0f / sum;
  for (int64_t i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0.0f;
    for (int w = 0; w < kWarps; ++w) acc += part[w * hd + i];
    out[r * d + h * hd + i] = acc * inv;
  }
}

// Attention of each new row (after RopeStoreKernel), AttendRow. Grid (N, heads).
__global__ void AttentionKernel(const float* qkv, const int32_t* row_table,
                                const int32_t* row_visible, const float* const* kp,
                                const float* const* vp, int64_t d, int64_t hd, float scale,
                                float* out) {
  AfterPrevious();
  extern __shared__ float smem[];
  const int64_t r = blockIdx.x, h = blockIdx.y;
  AttendRow(qkv + r * 3 * d + h * hd, r, h, row_table, row_visible, kp, vp, d, hd, scale, out,
            smem);
}

// RopeStoreKernel and AttentionKernel in one launch, for calls whose every chunk has one
// new row (decode): no row attends to a key another block writes. Block (r, h) applies the
// bias and RoPE to head h of row r's q (into shared memory) and k, stores that head's k and
// v in the row's KV page rows, then attends with them as AttentionKernel does (the same
// helpers, RopePair and AttendRow). Grid (N, heads); shared memory AttentionSmem + hd
// floats.
__global__ void RopeAttentionKernel(const float* qkv, const float* bias, const float* cos_t,
                                    const float* sin_t, const int32_t* positions,
                                    float* const* kdst, float* const* vdst,
                                    const int32_t* row_table, const int32_t* row_visible,
                                    const float* const* kp, const float* const* vp, int64_t d,
                                    int64_t hd, float scale, float* out) {
  AfterPrevious();
  extern __shared__ float smem[];
  const int64_t r = blockIdx.x, h = blockIdx.y;
  float* qs = smem;  // hd
  const float* q = qkv + r * 3 * d;
  const float* k = q + d;
  const float* v = k + d;
  const int64_t half = hd / 2;
  const int64_t pos = positions[r];
  float* kout = kdst[r];
  float* vout = vdst[r];
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const int64_t j = h * hd + 2 * i;
    float qo[2], ko[2];
    RopePair(q, k, bias, d, j, cos_t, sin_t, pos, half, i, qo, ko);
    qs[2 * i] = qo[0];
    qs[2 * i + 1] = qo[1];
    kout[j] = ko[0];
    kout[j + 1] = ko[1];
  }
  for (int64_t j = h * hd + threadIdx.x; j < (h + 1) * hd; j += blockDim.x) vout[j] = v[j];
  __syncthreads();  // the query, key and value are written (and seen by this block)
  AttendRow(qs, r, h, row_table, row_visible, kp, vp, d, hd, scale, out, smem + hd);
}

// g[r, j] = silu(f[r, j]) * f[r, ffn + j]; f: [N, 2 ffn], g: [N, ffn].
__global__ void SiluGateKernel(const float* f, int64_t n, int64_t ffn, float* g) {
  AfterPrevious();
  const int64_t total = n * ffn;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / ffn, j = i % ffn;
    const float gate = f[r * 2 * ffn + j];
    g[i] = gate / (1.0f + expf(-gate)) * f[r * 2 * ffn + ffn + j];
  }
}

// ---- exit signals of logit rules -------------------------------------------------------

// One row of a logit check (CodaChecks): the rule, and the sequence's previous check's
// log-probabilities (kl, minp-kl; null for the other rules) with whether there was one.
struct RowCheck {
  double* prev;
  int32_t rule;  // a policy::ExitRule
  int32_t has_prev;
};

// The value of a logit rule on one row of logits (its first `vocab` entries), in double as
// policy::SignalTracker computes it on the host: kl and minp-kl against `prev` (or the
// uniform distribution), which then receives this row's log-probabilities; the entropy (the
// host takes the difference); the argmax (first on ties), as a double. One block per row
// (kRowThreads). Sums run in a different order than the host's, so values agree to double
// rounding.
__global__ void __launch_bounds__(kRowThreads)
    LogitSignalKernel(const float* logits, int64_t ld, int64_t vocab, const RowCheck* checks,
                      double min_p, double* out) {
  AfterPrevious();
  __shared__ double red[kRowThreads / 32];
  __shared__ float best_v[kRowThreads / 32];
  __shared__ int64_t best_i[kRowThreads / 32];
  const int64_t r = blockIdx.x;
  const RowCheck c = checks[r];
  const float* x = logits + r * ld;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // max and its first index
  float m = -INFINITY;
  int64_t mi = vocab;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (x[i] > m) {
      m = x[i];
      mi = i;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, m, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, mi, o);
    if (ov > m || (ov == m && oi < mi)) {
      m = ov;
      mi = oi;
    }
  }
  if (lane == 0) {
    best_v[warp] = m;
    best_i[warp] = mi;
  }
  __syncthreads();
  m = best_v[0];
  mi = best_i[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
    if (best_v[w] > m || (best_v[w] == m && best_i[w] < mi)) {
      m = best_v[w];
      mi = best_i[w];
    }
  }
  const auto rule = static_cast<policy::ExitRule>(c.rule);
  if (rule == policy::ExitRule::kArgmaxStability) {
    // As the host's Argmax: index 0 when no entry beats the first (all -inf, or a NaN first).
    if (mi == vocab || isnan(x[0])) mi = 0;
    if (threadIdx.x == 0) out[r] = static_cast<double>(mi);
    return;
  }
  const double mx = m;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
    sum += exp(static_cast<double>(x[i]) - mx);
  const double log_norm = mx + log(BlockSum(sum, red));
  double value = 0.0;
  if (rule == policy::ExitRule::kEntropyDiff) {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const double lp = static_cast<double>(x[i]) - log_norm;
      if (lp != -INFINITY) value -= exp(lp) * lp;
    }
  } else {
    const double uniform = -log(static_cast<double>(vocab));
    const bool minp = rule == policy::ExitRule::kMinpKl;
    // min-p: probabilities below min_p * max(p) become 1 / vocab, then all renormalised.
    const double cut = min_p * exp(mx - log_norm), fill = 1.0 / static_cast<double>(vocab);
    double norm = 0.0;
    if (minp) {
      double kept = 0.0;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const double p = exp(static_cast<double>(x[i]) - log_norm);
        kept += p < cut ? fill : p;
      }
      norm = BlockSum(kept, red);
    }
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      double lp = static_cast<double>(x[i]) - log_norm;
      if (minp) {
        const double p = exp(lp);
        lp = log((p < cut ? fill : p) / norm);
      }
      const double prev = c.has_prev ? c.prev[i] : uniform;
      if (prev != -INFINITY) value += exp(prev) * (prev - lp);
      c.prev[i] = lp;
    }
  }
  value = BlockSum(value, red);
  if (threadIdx.x == 0) out[r] = value;
}

// out[b] = x[rows[b]]; rows of d floats.
__global__ void GatherRowsKernel(const float* x, const int32_t* rows, int64_t d, float* out) {
  AfterPrevious();
  const int64_t b = blockIdx.x;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[b * d + j] = x[rows[b] * d + j];
}

int Blocks(int64_t total) {
  return static_cast<int>(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1, 65535));
}

// ---- device memory ----------------------------------------------------------------------

// Memory that grows on demand (contents are not kept across growth): device memory, or
// page-locked host memory, which the device copies to and from directly (without the
// driver's staging of pageable memory). Growth first waits for the device: queued work may
// still read the old block.
enum class Memory { kDevice, kPinned };

template <typename T, Memory M>
struct GrowingBuffer {
  T* ptr = nullptr;
  size_t size = 0;
  ~GrowingBuffer() {
    if (ptr != nullptr) Release(ptr);
  }
  T* Get(size_t n) {
    if (n > size) {
      if (ptr != nullptr) {
        PONDER_CUDA_CHECK(cudaDeviceSynchronize());
        PONDER_CUDA_CHECK(Release(ptr));
      }
      size = std::max(n, size * 2);
      void* p = nullptr;
      PONDER_CUDA_CHECK(M == Memory::kDevice ? cudaMalloc(&p, size * sizeof(T))
                                             : cudaMallocHost(&p, size * sizeof(T)));
      ptr = static_cast<T*>(p);
    }
    return ptr;
  }
  static cudaError_t Release(T* p) { return M == Memory::kDevice ? cudaFree(p) : cudaFreeHost(p); }
};

template <typename T>
using DeviceBuffer = GrowingBuffer<T, Memory::kDevice>;
template <typename T>
using PinnedBuffer = GrowingBuffer<T, Memory::kPinned>;

// KV pages in device memory. Pages a pool gives back are kept for the next pool (a
// replay or calibration builds one per request) instead of going back to the driver, whose
// cudaFree would stall the device each time; all are freed with the model.
class DevicePages : public PageMemory {
 public:
  ~DevicePages() override {
    cudaSetDevice(device_);
    for (const auto& [page, floats] : sizes_) cudaFree(page);
  }
  void set_device(int device) { device_ = device; }
  float* Allocate(size_t floats) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto& spare = free_[floats];
    if (!spare.empty()) {
      float* page = spare.back();
      spare.pop_back();
      return page;
    }
    PONDER_CUDA_CHECK(cudaSetDevice(device_));
    void* p = nullptr;
    if (cudaMalloc(&p, floats * sizeof(float)) != cudaSuccess) {
      cudaGetLastError();  // clear the error: the caller sees an allocation failure
      throw std::bad_alloc();
    }
    sizes_.emplace(static_cast<float*>(p), floats);
    return static_cast<float*>(p);
  }
  void Free(float* page) override {
    std::lock_guard<std::mutex> lock(mu_);
    free_[sizes_.at(page)].push_back(page);
  }

 private:
  int device_ = 0;
  std::mutex mu_;
  std::unordered_map<float*, size_t> sizes_;              // every page allocated
  std::unordered_map<size_t, std::vector<float*>> free_;  // given back, by size
};

// A weight matrix on the device: [rows, cols] row-major, bf16 or f32.
struct DeviceMatrix {
  void* ptr = nullptr;
  int64_t rows = 0, cols = 0;
};

struct DeviceBlock {
  const float *norm_1, *norm_2, *norm_3, *norm_4, *qk_bias;  // qk_bias null without bias
  DeviceMatrix wqkv, attn_proj, mlp_fc, mlp_proj;
};

// A sequence's logit history on this backend: on the device (the previous check's
// log-probabilities, `vocab` doubles taken from a pool of device buffers at its first kl or
// minp-kl check and given back with the history; the previous entropy on the host), or,
// with device signals off, the host tracker's. The pool outlives the last history.
class CudaLogitHistory : public TrackedLogitHistory {
 public:
  CudaLogitHistory(std::shared_ptr<DevicePages> pool, int64_t vocab)
      : pool_(std::move(pool)), vocab_(vocab) {}
  CudaLogitHistory(const CudaLogitHistory&) = delete;
  CudaLogitHistory& operator=(const CudaLogitHistory&) = delete;
  ~CudaLogitHistory() override {
    if (prev != nullptr) pool_->Free(reinterpret_cast<float*>(prev));
  }
  void Reset() override {
    TrackedLogitHistory::Reset();
    has_prev = false;
    prev_entropy = policy::kInitialEntropy;
  }
  double* Buffer() {
    // (cudaMalloc's alignment suits doubles.)
    if (prev == nullptr) prev = reinterpret_cast<double*>(pool_->Allocate(2 * vocab_));
    return prev;
  }

  double* prev = nullptr;
  bool has_prev = false;
  double prev_entropy = policy::kInitialEntropy;

 private:
  std::shared_ptr<DevicePages> pool_;
  int64_t vocab_;
};

}  // namespace

struct CudaModel::Impl {
  DeviceInfo info;
  bool bf16 = true;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DevicePages pages;
  std::vector<void*> allocations;  // weights and tables, freed at the end
  uint64_t weight_bytes = 0;
  std::unordered_map<const void*, DeviceMatrix> matrices;  // by host data pointer (tied head)
  std::unordered_map<const void*, const float*> vectors;
  DeviceMatrix wte, adapter, lm_head;
  const float* ln_f = nullptr;
  std::vector<DeviceBlock> prelude, core, coda;
  const float *rope_cos = nullptr, *rope_sin = nullptr;
  // Scratch.
  DeviceBuffer<float> x, e, s, h, qkv, attn, tmp, ffn, gate, logits, last, parts;
  DeviceBuffer<unsigned char> stage;  // inputs of a cuBLAS product (bf16 parts or compact f32)
  // The core state on the device: CoreStep reads one and writes the other. `resident` is
  // the one holding the last CoreStep's output (-1: none), which reached the host through
  // `state_out` (resident_count floats, still there: only CoreStep writes it); a call whose
  // input has exactly these bytes reads it in place instead of uploading it again. Likewise
  // `e_host`: the embeddings CoreStep last uploaded into `e`.
  DeviceBuffer<float> state[2];
  int resident = -1;
  size_t resident_count = 0;
  PinnedBuffer<float> state_out;  // CoreStep's output on its way to the host
  std::vector<float> e_host;

  // Whether the host rows `s` (count floats) are the state the device holds.
  bool Resident(const float* s, size_t count) const {
    return resident >= 0 && resident_count == count &&
           std::memcmp(state_out.ptr, s, count * sizeof(float)) == 0;
  }
  bool e_valid = false;
  int64_t gemv_max_rows = kGemvDefaultRows;
  int gemv_block_rows = 4;  // output rows per GemvKernel block: 4 or 8
  int64_t mma_max_rows = kMmaDefaultRows;
  // Logit checks (CodaChecks): on the device, or on the host from downloaded logits.
  bool device_signals = false;
  std::shared_ptr<DevicePages> histories;  // CudaLogitHistory's buffers
  DeviceBuffer<RowCheck> check_rows;       // the RowCheck of each row
  DeviceBuffer<double> check_out;
  bool checks_on_host = true;       // the last CodaChecks ran the host computation
  DeviceBuffer<float> mma_ws;       // MmaKernel's partial tiles
  DeviceBuffer<unsigned> mma_done;  // MmaKernel's counters, one per row tile
  int64_t sm_count = 132;
  // Blocks of MmaKernel<NT> a multiprocessor holds at once, NT = 1..4 (set at creation).
  int64_t mma_blocks_per_sm[4] = {4, 4, 4, 4};
  DeviceBuffer<int32_t> tokens;
  DeviceBuffer<unsigned char> table;  // per-call row tables (positions, KV row pointers)
  unsigned char* table_dev = nullptr;
  size_t table_bytes = 0;
  std::vector<unsigned char> host_table;
  PinnedBuffer<unsigned char> table_pinned;  // the tables on their way to the device
  int64_t d = 0, heads = 0, hd = 0, ffn_dim = 0, vocab = 0, block_size = 0;
  size_t attn_smem_limit = 48 * 1024;

  ~Impl() {
    if (info.ordinal >= 0) cudaSetDevice(info.ordinal);
    for (cudaEvent_t ev : events) cudaEventDestroy(ev);
    for (const auto& [key, exec] : graph_cache) cudaGraphExecDestroy(exec);
    if (last_end != nullptr) cudaEventDestroy(last_end);
    if (blas != nullptr) cublasDestroy(blas);  // (before its workspace, in `allocations`)
    for (void* p : allocations) cudaFree(p);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  void* Upload(const void* host, size_t bytes) {
    void* p = nullptr;
    PONDER_CUDA_CHECK(cudaMalloc(&p, bytes));
    allocations.push_back(p);
    PONDER_CUDA_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    weight_bytes += bytes;
    return p;
  }

  const float* Vector(const TensorView& v) {
    if (v.empty()) return nullptr;
    auto it = vectors.find(v.data);
    if (it != vectors.end()) return it->second;
    std::vector<float> f(v.numel());
    cpu::ToF32(v, 0, v.numel(), f.data());
    const auto* p = static_cast<const float*>(Upload(f.data(), f.size() * sizeof(float)));
    vectors.emplace(v.data, p);
    return p;
  }

  DeviceMatrix Matrix(const TensorView& v) {
    auto it = matrices.find(v.data);
    if (it != matrices.end()) return it->second;
    DeviceMatrix m;
    m.rows = v.shape[0];
    m.cols = v.numel() / v.shape[0];
    const int64_t n = v.numel();
    if (bf16 && v.dtype == DType::kBF16) {
      m.ptr = Upload(v.data, n * 2);
    } else {
      std::vector<float> f(n);
      cpu::ToF32(v, 0, n, f.data());
      if (bf16) {
        std::vector<uint16_t> b(n);
        for (int64_t i = 0; i < n; ++i) b[i] = F32ToBf16(f[i]);
        m.ptr = Upload(b.data(), n * 2);
      } else {
        m.ptr = Upload(f.data(), n * 4);
      }
    }
    matrices.emplace(v.data, m);
    return m;
  }

  DeviceBlock Block(const model::BlockWeights& w) {
    DeviceBlock b;
    b.norm_1 = Vector(w.norm_1);
    b.norm_2 = Vector(w.norm_2);
    b.norm_3 = Vector(w.norm_3);
    b.norm_4 = Vector(w.norm_4);
    b.qk_bias = Vector(w.qk_bias);
    b.wqkv = Matrix(w.wqkv);
    b.attn_proj = Matrix(w.attn_proj);
    b.mlp_fc = Matrix(w.mlp_fc);
    b.mlp_proj = Matrix(w.mlp_proj);
    return b;
  }

  size_t TypeSize() const { return bf16 ? 2 : 4; }

  // Programmatic dependent launch between this backend's kernels (set_pdl; off while
  // profiling, whose events sit between the kernels).
  bool pdl = false;
  // The small kernels' lean forms (set_lean_kernels): norms holding their row in registers
  // (rows up to kNormRegs * kRowThreads wide), and RoPE and attention in one kernel where
  // every chunk has one row and its shared memory fits (block_size).
  bool lean_kernels = false;
  bool fused_fits = true;

  bool LeanNorms() const { return lean_kernels && d <= kNormRegs * kRowThreads; }

  // RmsNormKernel / RmsNorm2Kernel on `rows` rows in the form set_lean_kernels chose.
  void Norm(int64_t rows, float* x, const float* y, const float* w, float eps, float* out) {
    if (LeanNorms()) {
      Launch(RmsNormKernel<kNormRegs>, dim3(rows), dim3(kRowThreads), 0, x, y, w, d, eps, out);
    } else {
      Launch(RmsNormKernel<0>, dim3(rows), dim3(kRowThreads), 0, x, y, w, d, eps, out);
    }
  }
  void Norm2(int64_t rows, float* x, const float* y, const float* wa, const float* wb, float eps,
             float* out) {
    if (LeanNorms()) {
      Launch(RmsNorm2Kernel<kNormRegs>, dim3(rows), dim3(kRowThreads), 0, x, y, wa, wb, d, eps,
             out);
    } else {
      Launch(RmsNorm2Kernel<0>, dim3(rows), dim3(kRowThreads), 0, x, y, wa, wb, d, eps, out);
    }
  }

  // Launches `kernel` on the stream, with programmatic dependent launch when it is on
  // (every kernel of this file waits for the previous one before touching activations:
  // WaitForPrevious).
  template <typename... P, typename... A>
  void Launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = pdl && !profiling ? 1 : 0;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    Check(cudaLaunchKernelEx(&cfg, kernel, static_cast<P>(args)...), "cudaLaunchKernelEx");
  }

  // Which kernel computes a product of n input rows: GemvKernel (up to gemv_max_rows rows),
  // MmaKernel (up to mma_max_rows) or cuBLAS (more, f32 weights, or shapes the own kernels
  // do not take). The own kernels need bf16 weights and 16-byte aligned rows (scratch
  // buffers come from cudaMalloc); MmaKernel also whole 32-column chunks (k, k1).
  enum class Path { kGemv, kMma, kBlas };
  Path PathFor(const float* x, int64_t n, int64_t ldx, const DeviceMatrix& w, int64_t col0,
               int64_t k, int64_t k1) const {
    const auto* wp = static_cast<const __nv_bfloat16*>(w.ptr) + col0;
    const bool aligned = bf16 && k % 8 == 0 && k1 % 8 == 0 && w.cols % 8 == 0 && ldx % 4 == 0 &&
                         reinterpret_cast<uintptr_t>(wp) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(x) % 16 == 0;
    if (aligned && GemvRows(n)) return Path::kGemv;
    if (aligned && MmaRows(n) && k % 32 == 0 && k1 % 32 == 0) return Path::kMma;
    return Path::kBlas;
  }

  // The most any cuBLAS product of a core step of n rows needs of `stage` (bytes: the
  // inputs' bf16 parts, or compacted f32 inputs) and of `parts` (floats: the two halves'
  // outputs), grown before a step is captured in a graph.
  // (With f32 weights a core step's products use neither: their inputs are compact.)
  size_t BlasStageBytes(int64_t n) const {
    return bf16 ? static_cast<size_t>(4 * n * std::max(d, ffn_dim)) : 0;
  }
  size_t BlasPartsFloats(int64_t n) const {
    return bf16 ? static_cast<size_t>(2 * n * std::max(3 * d, 2 * ffn_dim)) : 0;
  }

  bool GemvRows(int64_t n) const { return bf16 && n >= 1 && n <= gemv_max_rows && n <= kGemvMaxN; }
  bool MmaRows(int64_t n) const { return bf16 && n >= 1 && n <= mma_max_rows && n <= kMmaMaxN; }

  // How MmaKernel splits k for a product of `rows` outputs over k columns and n input rows:
  // as many blocks as the device holds at once (so that no second wave runs a few blocks
  // alone at the end), at least 8 chunks per split. Returns the chunks per split; *splits
  // receives their number.
  int64_t MmaSplit(int64_t n, int64_t rows, int64_t k, int64_t* splits) const {
    const int64_t tiles = (rows + kMmaTileRows - 1) / kMmaTileRows;
    const int64_t chunks = k / 32;
    const int64_t resident =
        sm_count * mma_blocks_per_sm[std::clamp<int64_t>((n + 7) / 8, 1, 4) - 1];
    int64_t want = resident / tiles;
    want = std::clamp<int64_t>(want, 1,
                               std::min<int64_t>(kMmaMaxSplits, std::max<int64_t>(1, chunks / 8)));
    const int64_t per = (chunks + want - 1) / want;
    *splits = (chunks + per - 1) / per;
    return per;
  }

  // Floats of MmaKernel's partial tiles for n input rows of a product.
  size_t MmaWorkspace(int64_t n, int64_t rows, int64_t k) const {
    int64_t splits = 1;
    MmaSplit(n, rows, k, &splits);
    return MmaPartials(splits, n, rows);
  }
  // ... for `splits` splits (none without a split).
  static size_t MmaPartials(int64_t splits, int64_t n, int64_t rows) {
    return splits > 1 ? static_cast<size_t>(splits * n * rows) : 0;
  }

  // The partial-tile workspace for the products of a core step of n rows, grown before a
  // step is captured in a graph.
  float* MmaStepWorkspace(int64_t n) {
    const size_t need =
        std::max({MmaWorkspace(n, d, 2 * d), MmaWorkspace(n, 3 * d, d), MmaWorkspace(n, d, d),
                  MmaWorkspace(n, 2 * ffn_dim, d), MmaWorkspace(n, d, ffn_dim), size_t{1}});
    return mma_ws.Get(need);
  }

  // MmaKernel for n (<= kMmaMaxN) rows, as Gemv.
  void Mma(int64_t n, const DeviceMatrix& w, int64_t col0, int64_t rows, int64_t k, const float* x,
           int64_t ldx, const float* x2, int64_t k1, float* y, int64_t ldy, bool accumulate) {
    const auto* wp = static_cast<const __nv_bfloat16*>(w.ptr) + col0;
    const int acc = accumulate ? 1 : 0;
    const int nn = static_cast<int>(n);
    int64_t splits = 1;
    const int64_t per = MmaSplit(n, rows, k, &splits);
    const int64_t tiles = (rows + kMmaTileRows - 1) / kMmaTileRows;
    float* ws = mma_ws.Get(std::max<size_t>(MmaPartials(splits, n, rows), 1));
    unsigned* done = MmaCounters(tiles);
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
    constexpr unsigned threads = kMmaWarps * 32;
    switch ((n + 7) / 8) {
#define PONDER_MMA_CASE(NT)                                                                        \
  case NT:                                                                                         \
    Launch(MmaKernel<NT>, grid, dim3(threads), 0, wp, w.cols, rows, k, x, ldx, x2, k1, nn, y, ldy, \
           acc, per, ws, done);                                                                    \
    return;
      PONDER_MMA_CASE(1)
      PONDER_MMA_CASE(2)
      PONDER_MMA_CASE(3)
      PONDER_MMA_CASE(4)
#undef PONDER_MMA_CASE
      default:
        Die("Mma", "more rows than kMmaMaxN", __FILE__, __LINE__);
    }
  }

  // MmaKernel's per-tile counters (zero between products), at least `tiles` of them.
  unsigned* MmaCounters(int64_t tiles) {
    if (static_cast<size_t>(tiles) > mma_done.size) {
      unsigned* p = mma_done.Get(static_cast<size_t>(tiles));
      PONDER_CUDA_CHECK(cudaMemsetAsync(p, 0, mma_done.size * sizeof(unsigned), stream));
    }
    return mma_done.ptr;
  }

  template <int N>
  void LaunchGemv(const __nv_bfloat16* wp, int64_t ldw, int64_t rows, int64_t k, const float* x,
                  int64_t ldx, const float* x2, int64_t k1, float* y, int64_t ldy,
                  bool accumulate) {
    const int acc = accumulate ? 1 : 0;
    if (gemv_block_rows == 4) {
      const auto blocks = static_cast<unsigned>((rows + 3) / 4);
      Launch(GemvKernel<N, 4>, dim3(blocks), dim3(kThreads), 0, wp, ldw, rows, k, x, ldx, x2, k1, y,
             ldy, acc);
    } else {
      const auto blocks = static_cast<unsigned>((rows + 7) / 8);
      Launch(GemvKernel<N, 8>, dim3(blocks), dim3(kThreads), 0, wp, ldw, rows, k, x, ldx, x2, k1, y,
             ldy, acc);
    }
  }

  // GemvKernel for n (<= kGemvMaxN) rows: `rows` outputs over k columns of W from col0,
  // columns from k1 on read from x2.
  void Gemv(int64_t n, const DeviceMatrix& w, int64_t col0, int64_t rows, int64_t k, const float* x,
            int64_t ldx, const float* x2, int64_t k1, float* y, int64_t ldy, bool accumulate) {
    const auto* wp = static_cast<const __nv_bfloat16*>(w.ptr) + col0;
    switch (n) {
#define PONDER_GEMV_CASE(N) \
  case N:                   \
    return LaunchGemv<N>(wp, w.cols, rows, k, x, ldx, x2, k1, y, ldy, accumulate);
      PONDER_GEMV_CASE(1)
      PONDER_GEMV_CASE(2)
      PONDER_GEMV_CASE(3)
      PONDER_GEMV_CASE(4)
      PONDER_GEMV_CASE(5)
      PONDER_GEMV_CASE(6)
      PONDER_GEMV_CASE(7)
      PONDER_GEMV_CASE(8)
#undef PONDER_GEMV_CASE
      default:
        Die("Gemv", "more rows than kGemvMaxN", __FILE__, __LINE__);
    }
  }

  // y[n, w.rows] (row stride ldy) = x[n, k] (row stride ldx) . W[:, col0:col0 + k]^T
  // (+ y when accumulate), f32 accumulation. With bf16 weights the inputs are not rounded to
  // bf16: a few rows go through GemvKernel with f32 inputs; more rows are split into
  // hi + lo bf16 parts, one cuBLAS product of 2n rows, and the halves added (FoldKernel).
  void Product(const float* x, int64_t n, int64_t ldx, const DeviceMatrix& w, int64_t col0,
               int64_t k, float* y, int64_t ldy, bool accumulate) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const auto* wp = static_cast<const unsigned char*>(w.ptr) + col0 * TypeSize();
    switch (PathFor(x, n, ldx, w, col0, k, k)) {
      case Path::kGemv:
        return Gemv(n, w, col0, w.rows, k, x, ldx, nullptr, k, y, ldy, accumulate);
      case Path::kMma:
        return Mma(n, w, col0, w.rows, k, x, ldx, nullptr, k, y, ldy, accumulate);
      case Path::kBlas:
        break;
    }
    // Column-major view: C[out, m] = A^T[out, k] B[k, m], A = W^T stored [cols, rows].
    // (A product that fails while a graph is captured ends the capture, RunGraph.)
    auto gemm = [&](const void* xs, int64_t m, cudaDataType type, float* out, int64_t ldo,
                    const float* b) {
      const cublasStatus_t st =
          cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows),
                       static_cast<int>(m), static_cast<int>(k), &alpha, wp, type,
                       static_cast<int>(w.cols), xs, type, static_cast<int>(k), b, out, CUDA_R_32F,
                       static_cast<int>(ldo), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (st == CUBLAS_STATUS_SUCCESS) return;
      if (capturing) {
        if (capture_failure.empty()) {
          capture_failure = std::string("cublasGemmEx: ") + cublasGetStatusString(st);
        }
        return;
      }
      Die("cublasGemmEx", cublasGetStatusString(st), __FILE__, __LINE__);
    };
    if (!bf16) {
      const float* xs = x;
      if (ldx != k) {
        float* c = reinterpret_cast<float*>(stage.Get(static_cast<size_t>(n * k) * 4));
        Launch(CompactKernel, dim3(Blocks(n * k)), dim3(kThreads), 0, x, n, k, ldx, c);
        xs = c;
      }
      gemm(xs, n, CUDA_R_32F, y, ldy, &beta);
      return;
    }
    auto* xs = reinterpret_cast<__nv_bfloat16*>(stage.Get(static_cast<size_t>(2 * n * k) * 2));
    Launch(SplitBf16Kernel, dim3(Blocks(n * k)), dim3(kThreads), 0, x, n, k, ldx, xs);
    const float zero = 0.0f;
    float* p = parts.Get(2 * n * w.rows);
    gemm(xs, 2 * n, CUDA_R_16BF, p, w.rows, &zero);
    Launch(FoldKernel, dim3(Blocks(n * w.rows)), dim3(kThreads), 0, p, n, w.rows, y, ldy,
           accumulate ? 1 : 0);
  }

  // xd [n, d] = adapter . [s, e] without the concatenation: one own kernel over both
  // halves, or two products into the same output.
  void Adapter(const float* sd, const float* ed, int64_t n, float* xd) {
    const Path path = PathFor(sd, n, d, adapter, 0, 2 * d, d);
    if (path != Path::kBlas && PathFor(ed, n, d, adapter, 0, 2 * d, d) == path) {
      if (path == Path::kGemv) {
        Gemv(n, adapter, 0, d, 2 * d, sd, d, ed, d, xd, d, false);
      } else {
        Mma(n, adapter, 0, d, 2 * d, sd, d, ed, d, xd, d, false);
      }
    } else {
      Product(sd, n, d, adapter, 0, d, xd, d, false);
      Product(ed, n, d, adapter, d, d, xd, d, true);
    }
  }

  // gb [n, ffn] = silu(gate) * up of the MLP's first product on hb [n, d]. (The activation
  // in GemvKernel's epilogue, each block reading gate and up rows, made the product 30%
  // slower on an H200: bench/gpu/README.md.)
  void MlpIn(const float* hb, int64_t n, const DeviceBlock& w, float* gb) {
    float* fb = ffn.Get(n * 2 * ffn_dim);
    Lin(hb, n, d, w.mlp_fc, fb, 2 * ffn_dim);
    Mark("mlp_fc");
    Launch(SiluGateKernel, dim3(Blocks(n * ffn_dim)), dim3(kThreads), 0, fb, n, ffn_dim, gb);
    Mark("silu");
  }

  void Lin(const float* x, int64_t n, int64_t ldx, const DeviceMatrix& w, float* y, int64_t ldy) {
    Product(x, n, ldx, w, 0, w.cols, y, ldy, false);
  }

  // Row tables of one layer: where each new row writes its key and value, and which key and
  // value rows each new row attends to. A phase appends the tables of all its layers to
  // `host_table`, then uploads them at once (UploadTables) before it launches anything.
  // Offsets into the table; each part 8-byte aligned.
  struct TableOffsets {
    size_t positions, kdst, vdst, row_table, row_visible, kp, vp;
    int64_t max_visible;
    bool single_rows;  // every chunk has one new row (decode)
  };
  struct Tables {
    const int32_t* positions;
    float* const* kdst;
    float* const* vdst;
    const int32_t* row_table;
    const int32_t* row_visible;
    const float* const* kp;
    const float* const* vp;
    int64_t max_visible;
    bool single_rows;
  };

  // Appends one layer's tables. Each new row writes its own rows of `slots[b]`; attention
  // reads positions [0, pos + t] of the chunk. In a core layer (`iterations` not null), a
  // past token that ran fewer iterations than chunk b's current one is read at its last
  // iteration of the same layer, as on the CPU.
  TableOffsets AppendTables(std::span<const Chunk> chunks, std::span<KvSlot* const> slots,
                            const int64_t* iterations, int64_t layer) {
    const int64_t n = TotalRows(chunks);
    int64_t t_total = 0;
    for (const Chunk& c : chunks) t_total += c.pos + c.count;
    auto align = [](size_t x) { return (x + 7) & ~size_t{7}; };
    TableOffsets o{};
    o.single_rows = OneRowEach(chunks);
    o.positions = align(host_table.size());
    o.kdst = align(o.positions + n * 4);
    o.vdst = o.kdst + n * 8;
    o.row_table = o.vdst + n * 8;
    o.row_visible = align(o.row_table + n * 4);
    // Context pointers and the attention's shared memory are sized for the context rounded
    // up to 64 positions, so a decode step's tables keep their layout for 64 tokens (the key
    // of its CUDA graph, RunGraph).
    const int64_t t_cap = (t_total + 63) / 64 * 64;
    o.kp = align(o.row_visible + n * 4);
    o.vp = o.kp + t_cap * 8;
    host_table.resize(o.vp + t_cap * 8);
    unsigned char* base = host_table.data();
    auto* positions = reinterpret_cast<int32_t*>(base + o.positions);
    auto* kdst = reinterpret_cast<float**>(base + o.kdst);
    auto* vdst = reinterpret_cast<float**>(base + o.vdst);
    auto* rt = reinterpret_cast<int32_t*>(base + o.row_table);
    auto* rv = reinterpret_cast<int32_t*>(base + o.row_visible);
    auto* kp = reinterpret_cast<const float**>(base + o.kp);
    auto* vp = reinterpret_cast<const float**>(base + o.vp);
    int64_t row = 0, t = 0;
    o.max_visible = 0;
    for (size_t b = 0; b < chunks.size(); ++b) {
      const Chunk& c = chunks[b];
      KvSlot& slot = *slots[b];
      slot.Extend(c.pos + c.count);
      const int64_t it = iterations != nullptr ? iterations[b] : 0;
      const bool gap = iterations != nullptr && c.cache->HasGap(c.pos, it);
      const int64_t ctx = c.pos + c.count;
      for (int64_t p = 0; p < ctx; ++p) {
        const KvSlot& src = gap && p < c.pos ? c.cache->CoreRead(it, layer, p) : slot;
        kp[t + p] = src.K(p);
        vp[t + p] = src.V(p);
      }
      for (int64_t i = 0; i < c.count; ++i, ++row) {
        positions[row] = static_cast<int32_t>(c.pos + i);
        kdst[row] = slot.K(c.pos + i);
        vdst[row] = slot.V(c.pos + i);
        rt[row] = static_cast<int32_t>(t);
        rv[row] = static_cast<int32_t>(c.pos + i + 1);
      }
      o.max_visible = std::max({o.max_visible, ctx, std::min((ctx + 63) / 64 * 64, block_size)});
      t += ctx;
    }
    return o;
  }

  // Copies the appended tables to pinned memory and, with `copy`, on to the device
  // (asynchronously: the phase synchronises before the next one rewrites the pinned buffer;
  // without `copy` the caller issues CopyTables), and empties `host_table`.
  void UploadTables(bool copy) {
    const size_t bytes = host_table.size();
    std::memcpy(table_pinned.Get(bytes), host_table.data(), bytes);
    table_dev = table.Get(bytes);
    table_bytes = bytes;
    if (copy) CopyTables();
    host_table.clear();
  }

  void CopyTables() {
    Check(cudaMemcpyAsync(table_dev, table_pinned.ptr, table_bytes, cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (tables)");
  }

  Tables Resolve(const TableOffsets& o) const {
    const unsigned char* dev = table_dev;
    return {reinterpret_cast<const int32_t*>(dev + o.positions),
            reinterpret_cast<float* const*>(dev + o.kdst),
            reinterpret_cast<float* const*>(dev + o.vdst),
            reinterpret_cast<const int32_t*>(dev + o.row_table),
            reinterpret_cast<const int32_t*>(dev + o.row_visible),
            reinterpret_cast<const float* const*>(dev + o.kp),
            reinterpret_cast<const float* const*>(dev + o.vp),
            o.max_visible,
            o.single_rows};
  }

  // The tables of every layer of `blocks` (slots chosen by `slot_of(b, layer, iteration)`),
  // uploaded. Core layers (`iterations` not null): the tables of `steps` iterations, step
  // by step, chunk b at iterations[b], iterations[b] + 1, ...; a step reads KV slots of its
  // own iteration and of past tokens only, whose depths are already recorded, so all can be
  // laid out before the first runs. Other layers: one step, iteration 0.
  template <typename SlotOf>
  std::vector<TableOffsets> LayerTables(std::span<const Chunk> chunks, size_t layers,
                                        const int64_t* iterations, SlotOf slot_of, bool copy = true,
                                        int64_t steps = 1) {
    std::vector<TableOffsets> out;
    host_table.clear();  // (left filled only if an earlier call threw)
    std::vector<KvSlot*> slots(chunks.size());
    std::vector<int64_t> its(chunks.size(), 0);
    if (iterations != nullptr) its.assign(iterations, iterations + chunks.size());
    for (int64_t j = 0; j < steps; ++j) {
      for (size_t l = 0; l < layers; ++l) {
        for (size_t b = 0; b < chunks.size(); ++b) {
          slots[b] = slot_of(b, static_cast<int64_t>(l), its[b]);
        }
        out.push_back(AppendTables(chunks, slots, iterations != nullptr ? its.data() : nullptr,
                                   static_cast<int64_t>(l)));
      }
      for (int64_t& it : its) ++it;
    }
    UploadTables(copy);
    return out;
  }

  // One sandwich block on x [N, d] in place. With `normed`, h already holds norm_1(x) (the
  // previous block left it); with `next`, this block leaves next->norm_1 of its output in h.
  void RunBlock(int64_t n, const DeviceBlock& w, const Tables& tab, float* xd, float eps,
                bool normed, const DeviceBlock* next) {
    float* hb = h.Get(n * d);
    float* qkvb = qkv.Get(n * 3 * d);
    float* attnb = attn.Get(n * d);
    float* tmpb = tmp.Get(n * d);
    // x = norm_2(x + attn(norm_1(x)))
    if (!normed) {
      Norm(n, xd, nullptr, w.norm_1, eps, hb);
      Mark("norm");
    }
    Lin(hb, n, d, w.wqkv, qkvb, 3 * d);
    Mark("qkv");
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    if (lean_kernels && fused_fits && tab.single_rows) {
      Launch(RopeAttentionKernel, dim3(n, heads), dim3(kThreads),
             AttentionSmem(hd, tab.max_visible) + hd * sizeof(float), qkvb, w.qk_bias, rope_cos,
             rope_sin, tab.positions, tab.kdst, tab.vdst, tab.row_table, tab.row_visible, tab.kp,
             tab.vp, d, hd, scale, attnb);
      Mark("rope + attention");
    } else {
      Launch(RopeStoreKernel, dim3(n), dim3(kRowThreads), 0, qkvb, w.qk_bias, rope_cos, rope_sin,
             tab.positions, tab.kdst, tab.vdst, d, hd);
      Mark("rope");
      Launch(AttentionKernel, dim3(n, heads), dim3(kThreads), AttentionSmem(hd, tab.max_visible),
             qkvb, tab.row_table, tab.row_visible, tab.kp, tab.vp, d, hd, scale, attnb);
      Mark("attention");
    }
    Lin(attnb, n, d, w.attn_proj, tmpb, d);
    Mark("attn_proj");
    // then norm_3 of it: x = norm_4(x + mlp(norm_3(x))), mlp = proj(silu(gate) * up)
    Norm2(n, xd, tmpb, w.norm_2, w.norm_3, eps, hb);
    Mark("norm");
    float* gb = gate.Get(n * ffn_dim);
    MlpIn(hb, n, w, gb);
    Lin(gb, n, ffn_dim, w.mlp_proj, tmpb, d);
    Mark("mlp_proj");
    if (next != nullptr) {
      Norm2(n, xd, tmpb, w.norm_4, next->norm_1, eps, hb);
    } else {
      Norm(n, xd, tmpb, w.norm_4, eps, xd);
    }
    Mark("norm");
    Check(cudaGetLastError(), "a block's kernels");
  }

  // The blocks in order on x [N, d] in place, with their uploaded tables.
  void RunBlocks(int64_t n, const std::vector<DeviceBlock>& blocks,
                 std::span<const TableOffsets> tables, float* xd, float eps) {
    for (size_t l = 0; l < blocks.size(); ++l) {
      RunBlock(n, blocks[l], Resolve(tables[l]), xd, eps, l > 0,
               l + 1 < blocks.size() ? &blocks[l + 1] : nullptr);
    }
  }

  // Timing of CoreStep's kernels (set_profile): an event after each stage; the time between
  // consecutive events is credited to the later one's stage.
  bool profile = false, profiling = false;
  std::vector<cudaEvent_t> events;
  std::vector<const char*> event_names;
  size_t events_used = 0;
  cudaEvent_t last_end = nullptr;  // the end of the previous profiled CoreStep
  std::vector<std::pair<std::string, double>> profile_ms;
  int64_t profile_steps = 0;

  void Mark(const char* what) {
    if (!profiling) return;
    if (events_used == events.size()) {
      events.emplace_back();
      event_names.emplace_back();
      PONDER_CUDA_CHECK(cudaEventCreate(&events.back()));
    }
    event_names[events_used] = what;
    PONDER_CUDA_CHECK(cudaEventRecord(events[events_used++], stream));
  }

  void Credit(const std::string& what, double ms) {
    for (auto& [name, total] : profile_ms) {
      if (name == what) {
        total += ms;
        return;
      }
    }
    profile_ms.emplace_back(what, ms);
  }

  // After the stream is synchronised: credits the stages of this call's `steps` core steps.
  void CollectProfile(int64_t steps) {
    if (!profiling) return;
    float ms = 0.0f;
    if (last_end != nullptr && events_used > 0) {
      PONDER_CUDA_CHECK(cudaEventElapsedTime(&ms, last_end, events[0]));
      Credit("(device idle between core steps)", ms);
    }
    for (size_t i = 1; i < events_used; ++i) {
      PONDER_CUDA_CHECK(cudaEventElapsedTime(&ms, events[i - 1], events[i]));
      Credit(event_names[i], ms);
    }
    if (last_end == nullptr) PONDER_CUDA_CHECK(cudaEventCreate(&last_end));
    if (events_used > 0) PONDER_CUDA_CHECK(cudaEventRecord(last_end, stream));
    profile_steps += steps;
    events_used = 0;
    profiling = false;
  }

  // CUDA graphs of decode core steps (every sequence one new row): one per key, the
  // launch's shape and every buffer it touches. A key seen the second time is captured (by then
  // every scratch buffer has its size: nothing is allocated during the capture; cuBLAS has a
  // workspace of its own, set at creation); later steps with that key replay it, about 35 launches
  // (more with cuBLAS products) as one. A failed capture turns graphs off for this model and the
  // step runs as plain launches.
  using GraphKey = std::vector<uintptr_t>;
  bool graphs = true;
  bool capturing = false;
  std::string capture_failure;  // what failed first during the capture (empty: nothing)

  // A CUDA call's result in code a graph may capture: an error ends the process, except
  // during a capture, where the first one is kept and the capture goes on to its end
  // (RunGraph then runs the step as plain launches).
  void Check(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return;
    if (!capturing) Die(what, cudaGetErrorString(err), __FILE__, __LINE__);
    if (capture_failure.empty())
      capture_failure = std::string(what) + ": " + cudaGetErrorString(err);
  }
  std::vector<std::pair<GraphKey, cudaGraphExec_t>> graph_cache;
  std::vector<GraphKey> graph_seen;
  static constexpr size_t kGraphCacheSize = 16;

  template <typename Enqueue>
  void RunGraph(const GraphKey& key, Enqueue enqueue) {
    for (const auto& [k, exec] : graph_cache) {
      if (k == key) {
        PONDER_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        return;
      }
    }
    if (std::find(graph_seen.begin(), graph_seen.end(), key) == graph_seen.end()) {
      if (graph_seen.size() == kGraphCacheSize) graph_seen.erase(graph_seen.begin());
      graph_seen.push_back(key);
      enqueue();
      return;
    }
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
    capture_failure.clear();
    if (err == cudaSuccess) {
      capturing = true;
      try {
        enqueue();
      } catch (...) {  // (the stream leaves capture mode before the exception goes on)
        capturing = false;
        if (cudaStreamEndCapture(stream, &graph) == cudaSuccess) cudaGraphDestroy(graph);
        cudaGetLastError();
        throw;
      }
      capturing = false;
      err = cudaStreamEndCapture(stream, &graph);
    }
    if (err == cudaSuccess && capture_failure.empty()) {
      err = cudaGraphInstantiate(&exec, graph, 0);
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (err != cudaSuccess || !capture_failure.empty()) {
      cudaGetLastError();
      std::fprintf(stderr, "ponder: CUDA backend: graphs off (%s)\n",
                   capture_failure.empty() ? cudaGetErrorString(err) : capture_failure.c_str());
      graphs = false;
      enqueue();
      return;
    }
    if (graph_cache.size() == kGraphCacheSize) {
      cudaGraphExecDestroy(graph_cache.front().second);
      graph_cache.erase(graph_cache.begin());
    }
    graph_cache.emplace_back(key, exec);
    PONDER_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  }
};

CudaModel::CudaModel(const model::Config& config, const model::Weights& weights)
    : Backend(config, weights), impl_(std::make_unique<Impl>()) {}

CudaModel::~CudaModel() = default;

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

Result<std::unique_ptr<Backend>> CudaModel::Create(const model::Config& config,
                                                   const model::Weights& weights, int device,
                                                   const std::string& weights_dtype) {
  if (weights_dtype != "bf16" && weights_dtype != "f32") {
    return InvalidArgument("backend cuda: weights dtype \"" + weights_dtype +
                           "\" (expected \"bf16\" or \"f32\")");
  }
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();
    return Unavailable(std::string("backend cuda: no CUDA device is available (") +
                       (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") + ")");
  }
  if (device < 0 || device >= count) {
    return InvalidArgument("backend cuda: device " + std::to_string(device) + " does not exist (" +
                           std::to_string(count) + " visible)");
  }
  if (config.head_dim % 2 != 0) {
    return InvalidArgument("backend cuda: head_dim must be even for RoPE");
  }
  std::unique_ptr<CudaModel> m(new CudaModel(config, weights));
  Impl& im = *m->impl_;
  im.info.ordinal = device;
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
    return CudaStatus(e, "cudaSetDevice");
  if (cudaError_t e = cudaGetDeviceProperties(&prop, device); e != cudaSuccess) {
    return CudaStatus(e, "cudaGetDeviceProperties");
  }
  im.info.name = prop.name;
  im.info.sm_major = prop.major;
  im.info.sm_minor = prop.minor;
  im.info.memory_bytes = prop.totalGlobalMem;
  im.attn_smem_limit = prop.sharedMemPerBlockOptin;
  im.sm_count = prop.multiProcessorCount;
  {
    const void* mma[] = {
        reinterpret_cast<const void*>(MmaKernel<1>), reinterpret_cast<const void*>(MmaKernel<2>),
        reinterpret_cast<const void*>(MmaKernel<3>), reinterpret_cast<const void*>(MmaKernel<4>)};
    for (int i = 0; i < 4; ++i) {
      int blocks = 0;
      if (cudaError_t e =
              cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, mma[i], kMmaWarps * 32, 0);
          e != cudaSuccess) {
        return CudaStatus(e, "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      }
      im.mma_blocks_per_sm[i] = std::max(blocks, 1);
    }
  }
  const size_t need = AttentionSmem(config.head_dim, config.block_size);
  if (need > im.attn_smem_limit) {
    return InvalidArgument("backend cuda: block_size " + std::to_string(config.block_size) +
                           " needs " + std::to_string(need) +
                           " bytes of shared memory per attention block; the device has " +
                           std::to_string(im.attn_smem_limit));
  }
  // RopeAttentionKernel needs head_dim floats more; where they do not fit, the two kernels
  // run instead.
  const size_t need_fused = need + config.head_dim * sizeof(float);
  im.fused_fits = need_fused <= im.attn_smem_limit;
  for (const auto& [kernel, bytes] :
       {std::pair{reinterpret_cast<const void*>(AttentionKernel), need},
        std::pair{reinterpret_cast<const void*>(RopeAttentionKernel), need_fused}}) {
    if (bytes <= 48 * 1024 || bytes > im.attn_smem_limit) continue;
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes));
        e != cudaSuccess) {
      return CudaStatus(e, "cudaFuncSetAttribute");
    }
  }
  uint64_t bytes_needed = 0;
  const int64_t tsize = weights_dtype == "bf16" ? 2 : 4;
  for (const TensorView* v : {&weights.wte, &weights.adapter, &weights.lm_head}) {
    if (v == &weights.lm_head && v->data == weights.wte.data) continue;  // tied: one copy
    bytes_needed += v->numel() * tsize;
  }
  for (const auto* blocks : {&weights.prelude, &weights.core, &weights.coda}) {
    for (const model::BlockWeights& b : *blocks) {
      for (const TensorView* v : {&b.wqkv, &b.attn_proj, &b.mlp_fc, &b.mlp_proj}) {
        bytes_needed += v->numel() * tsize;
      }
    }
  }
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaError_t e = cudaMemGetInfo(&free_bytes, &total_bytes); e != cudaSuccess) {
    return CudaStatus(e, "cudaMemGetInfo");
  }
  if (bytes_needed > free_bytes) {
    return ResourceExhausted("backend cuda: the weights need " + std::to_string(bytes_needed) +
                             " bytes on " + im.info.name + ", " + std::to_string(free_bytes) +
                             " are free");
  }
  if (cudaError_t e = cudaStreamCreateWithFlags(&im.stream, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return CudaStatus(e, "cudaStreamCreate");
  }
  if (cublasCreate(&im.blas) != CUBLAS_STATUS_SUCCESS) {
    return Unavailable("backend cuda: cublasCreate failed");
  }
  cublasSetStream(im.blas, im.stream);
  // A workspace of cuBLAS's own, so that a product captured in a graph allocates nothing
  // (32 MiB, what cuBLAS suggests for Hopper).
  {
    constexpr size_t kBlasWorkspace = size_t{32} << 20;
    void* ws = nullptr;
    if (cudaError_t e = cudaMalloc(&ws, kBlasWorkspace); e != cudaSuccess) {
      return CudaStatus(e, "cudaMalloc (cuBLAS workspace)");
    }
    im.allocations.push_back(ws);
    if (cublasSetWorkspace(im.blas, ws, kBlasWorkspace) != CUBLAS_STATUS_SUCCESS) {
      return Unavailable("backend cuda: cublasSetWorkspace failed");
    }
  }
  im.pages.set_device(device);
  im.bf16 = weights_dtype == "bf16";
  im.d = config.n_embd;
  im.heads = config.n_heads;
  im.hd = config.head_dim;
  im.ffn_dim = config.intermediate_size;
  im.block_size = config.block_size;
  im.vocab = weights.lm_head.shape[0];
  im.wte = im.Matrix(weights.wte);
  im.adapter = im.Matrix(weights.adapter);
  im.lm_head = im.Matrix(weights.lm_head);
  im.ln_f = im.Vector(weights.ln_f);
  for (const auto& b : weights.prelude) im.prelude.push_back(im.Block(b));
  for (const auto& b : weights.core) im.core.push_back(im.Block(b));
  for (const auto& b : weights.coda) im.coda.push_back(im.Block(b));
  im.histories = std::make_shared<DevicePages>();
  im.histories->set_device(device);
  // MmaKernel's counters for the widest product (the head), zeroed once.
  im.MmaCounters((std::max({im.vocab, 2 * im.ffn_dim, 3 * im.d}) + kMmaTileRows - 1) /
                 kMmaTileRows);
  std::vector<float> cos_t, sin_t;
  RopeTables(config, &cos_t, &sin_t);
  im.rope_cos = static_cast<const float*>(im.Upload(cos_t.data(), cos_t.size() * 4));
  im.rope_sin = static_cast<const float*>(im.Upload(sin_t.data(), sin_t.size() * 4));
  return std::unique_ptr<Backend>(std::move(m));
}

PageMemory* CudaModel::page_memory() { return &impl_->pages; }
const DeviceInfo& CudaModel::device() const { return impl_->info; }
uint64_t CudaModel::device_weight_bytes() const { return impl_->weight_bytes; }

void CudaModel::Synchronize() {
  PONDER_CUDA_CHECK(cudaSetDevice(impl_->info.ordinal));
  PONDER_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

Status CudaModel::Prelude(std::span<const Chunk> chunks, std::span<const int32_t> tokens,
                          float* e) {
  PONDER_RETURN_IF_ERROR(CheckPrelude(chunks, tokens));
  Impl& im = *impl_;
  PONDER_CUDA_CHECK(cudaSetDevice(im.info.ordinal));
  const int64_t n = TotalRows(chunks);
  int32_t* tok = im.tokens.Get(n);
  PONDER_CUDA_CHECK(
      cudaMemcpyAsync(tok, tokens.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice, im.stream));
  float* ed = im.e.Get(n * im.d);
  im.e_valid = false;  // CoreStep's embeddings are overwritten
  const auto scale = static_cast<float>(config_.embed_scale);
  if (im.bf16) {
    im.Launch(EmbedKernel<__nv_bfloat16>, dim3(n), dim3(kThreads), 0, tok,
              static_cast<const __nv_bfloat16*>(im.wte.ptr), im.d, scale, ed);
  } else {
    im.Launch(EmbedKernel<float>, dim3(n), dim3(kThreads), 0, tok,
              static_cast<const float*>(im.wte.ptr), im.d, scale, ed);
  }
  PONDER_CUDA_CHECK(cudaGetLastError());
  const auto tables =
      im.LayerTables(chunks, im.prelude.size(), nullptr,
                     [&](size_t b, int64_t l, int64_t) { return &chunks[b].cache->Prelude(l); });
  im.RunBlocks(n, im.prelude, tables, ed, static_cast<float>(config_.norm_eps));
  PONDER_CUDA_CHECK(
      cudaMemcpyAsync(e, ed, n * im.d * sizeof(float), cudaMemcpyDeviceToHost, im.stream));
  PONDER_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  return Status::Ok();
}

void CudaModel::CoreStep(std::span<const Chunk> chunks, std::span<const int64_t> iterations,
                         const float* e, float* s) {
  CoreSteps(chunks, iterations, 1, e, s);
}

void CudaModel::CoreSteps(std::span<const Chunk> chunks, std::span<const int64_t> iterations,
                          int64_t steps, const float* e, float* s) {
  Impl& im = *impl_;
  PONDER_CUDA_CHECK(cudaSetDevice(im.info.ordinal));
  const int64_t n = TotalRows(chunks);
  if (n == 0 || steps < 1) return;
  const int64_t d = im.d;
  const size_t count = static_cast<size_t>(n * d), bytes = count * sizeof(float);
  im.profiling = im.profile;
  im.Mark("start");
  // Inputs already on the device (the same bytes) are not sent again: the state a previous
  // CoreStep returned, and the embeddings of the token being iterated.
  float* ed = im.e.Get(count);
  if (!im.e_valid || im.e_host.size() != count || std::memcmp(im.e_host.data(), e, bytes) != 0) {
    PONDER_CUDA_CHECK(cudaMemcpyAsync(ed, e, bytes, cudaMemcpyHostToDevice, im.stream));
    im.e_host.assign(e, e + count);
    im.e_valid = true;
  }
  int in = 0;
  if (im.Resident(s, count)) {
    in = im.resident;
  } else {
    PONDER_CUDA_CHECK(
        cudaMemcpyAsync(im.state[in].Get(count), s, bytes, cudaMemcpyHostToDevice, im.stream));
  }
  im.resident = -1;  // until this call's output has reached the host
  // The steps alternate between the two state buffers; the last one's output goes home.
  float* buf[2] = {im.state[0].Get(count), im.state[1].Get(count)};
  const int last = (in + static_cast<int>(steps % 2)) % 2;
  float* out = im.state_out.Get(count);
  im.Mark("upload");
  const auto eps = static_cast<float>(config_.norm_eps);
  const size_t layers = im.core.size();
  // Every step's tables at once, step-major.
  auto build_tables = [&](bool copy) {
    return im.LayerTables(
        chunks, layers, iterations.data(),
        [&](size_t b, int64_t l, int64_t it) { return &chunks[b].cache->Core(it, l); }, copy,
        steps);
  };
  // The steps' kernels, reading the uploaded tables (the first adapter product may already
  // be queued).
  auto enqueue_steps = [&](const std::vector<Impl::TableOffsets>& tables, bool adapter_queued) {
    int cur = in;
    for (int64_t j = 0; j < steps; ++j) {
      if (j > 0 || !adapter_queued) {
        im.Adapter(buf[cur], ed, n, buf[1 - cur]);
        im.Mark("adapter");
      }
      im.RunBlocks(n, im.core, std::span(tables).subspan(j * layers, layers), buf[1 - cur], eps);
      cur = 1 - cur;
    }
    im.Check(cudaMemcpyAsync(out, buf[last], bytes, cudaMemcpyDeviceToHost, im.stream),
             "cudaMemcpyAsync (state)");
    im.Mark("download");
  };
  // (Prefill and calls that mix prompts with decode rows run as plain launches: their shapes
  // seldom recur, and their graphs would push out the decode steps'.)
  if (!im.graphs || im.profile || !OneRowEach(chunks)) {
    im.Adapter(buf[in], ed, n, buf[1 - in]);  // while the host builds the tables
    im.Mark("adapter");
    const auto tables = build_tables(/*copy=*/true);
    im.Mark("tables");
    enqueue_steps(tables, /*adapter_queued=*/true);
  } else {
    const auto tables = build_tables(/*copy=*/false);
    // The scratch RunBlock takes, at its size before a capture; every buffer a captured step
    // touches is in the key (a buffer that grows moves).
    float* scratch[] = {im.h.Get(count),
                        im.qkv.Get(3 * count),
                        im.attn.Get(count),
                        im.tmp.Get(count),
                        im.ffn.Get(2 * n * im.ffn_dim),
                        im.gate.Get(n * im.ffn_dim),
                        im.MmaRows(n) ? im.MmaStepWorkspace(n) : nullptr,
                        reinterpret_cast<float*>(im.mma_done.ptr),
                        reinterpret_cast<float*>(im.stage.Get(im.BlasStageBytes(n))),
                        im.parts.Get(im.BlasPartsFloats(n))};
    Impl::GraphKey key = {static_cast<uintptr_t>(n),
                          static_cast<uintptr_t>(steps),
                          static_cast<uintptr_t>(in),
                          im.table_bytes,
                          static_cast<uintptr_t>(tables.empty() ? 0 : tables[0].max_visible),
                          static_cast<uintptr_t>(im.gemv_max_rows),
                          static_cast<uintptr_t>(im.gemv_block_rows),
                          static_cast<uintptr_t>(im.mma_max_rows),
                          static_cast<uintptr_t>(im.pdl),
                          static_cast<uintptr_t>(im.lean_kernels),
                          reinterpret_cast<uintptr_t>(ed),
                          reinterpret_cast<uintptr_t>(buf[0]),
                          reinterpret_cast<uintptr_t>(buf[1]),
                          reinterpret_cast<uintptr_t>(out),
                          reinterpret_cast<uintptr_t>(im.table_dev),
                          reinterpret_cast<uintptr_t>(im.table_pinned.ptr)};
    for (float* p : scratch) key.push_back(reinterpret_cast<uintptr_t>(p));
    im.RunGraph(key, [&] {
      im.CopyTables();
      enqueue_steps(tables, /*adapter_queued=*/false);
    });
  }
  PONDER_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  im.CollectProfile(steps);
  std::memcpy(s, out, bytes);
  im.resident = last;
  im.resident_count = count;
  std::vector<int64_t> its(iterations.begin(), iterations.end());
  for (int64_t j = 0; j < steps; ++j) {
    RecordDepths(chunks, its);
    for (int64_t& it : its) ++it;
  }
}

void CudaModel::Coda(std::span<const Chunk> chunks, const float* s, bool last_only, float* logits) {
  Impl& im = *impl_;
  if (TotalRows(chunks) == 0) return;  // (a launch of no blocks is an error)
  int64_t rows = 0;
  const float* ld = CodaOnDevice(chunks, s, last_only, logits != nullptr, &rows);
  if (logits != nullptr) {
    PONDER_CUDA_CHECK(cudaMemcpyAsync(logits, ld, rows * im.vocab * sizeof(float),
                                      cudaMemcpyDeviceToHost, im.stream));
  }
  PONDER_CUDA_CHECK(cudaStreamSynchronize(im.stream));
}

const float* CudaModel::CodaOnDevice(std::span<const Chunk> chunks, const float* s, bool last_only,
                                     bool head, int64_t* rows_out) {
  Impl& im = *impl_;
  PONDER_CUDA_CHECK(cudaSetDevice(im.info.ordinal));
  const int64_t n = TotalRows(chunks);
  const int64_t d = im.d;
  const auto eps = static_cast<float>(config_.norm_eps);
  const size_t count = static_cast<size_t>(n * d), bytes = count * sizeof(float);
  // The state CoreStep just returned is read where it is (and left as it is).
  float* sd = nullptr;
  if (im.Resident(s, count)) {
    sd = im.state[im.resident].ptr;
  } else {
    sd = im.s.Get(count);
    PONDER_CUDA_CHECK(cudaMemcpyAsync(sd, s, bytes, cudaMemcpyHostToDevice, im.stream));
  }
  float* xd = im.x.Get(count);
  im.Norm(n, sd, nullptr, im.ln_f, eps, xd);
  const auto tables =
      im.LayerTables(chunks, im.coda.size(), nullptr,
                     [&](size_t b, int64_t l, int64_t) { return &chunks[b].cache->Coda(l); });
  im.RunBlocks(n, im.coda, tables, xd, eps);
  RecordTokens(chunks);
  *rows_out = 0;
  if (!head) return nullptr;
  int64_t rows = n;
  const float* src = xd;
  if (last_only) {
    std::vector<int32_t> last(chunks.size());
    int64_t row = 0;
    for (size_t b = 0; b < chunks.size(); ++b) {
      row += chunks[b].count;
      last[b] = static_cast<int32_t>(row - 1);
    }
    rows = static_cast<int64_t>(chunks.size());
    int32_t* idx = im.tokens.Get(rows);
    PONDER_CUDA_CHECK(cudaMemcpyAsync(idx, last.data(), rows * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, im.stream));
    float* lastd = im.last.Get(rows * d);
    im.Launch(GatherRowsKernel, dim3(rows), dim3(kThreads), 0, xd, idx, d, lastd);
    src = lastd;  // (a copy from pageable memory has read `last` when it returns)
  }
  float* hd = im.h.Get(rows * d);
  im.Norm(rows, const_cast<float*>(src), nullptr, im.ln_f, eps, hd);
  float* ld = im.logits.Get(rows * im.vocab);
  im.Lin(hd, rows, d, im.lm_head, ld, im.vocab);
  PONDER_CUDA_CHECK(cudaGetLastError());
  *rows_out = rows;
  return ld;
}

std::unique_ptr<LogitHistory> CudaModel::NewLogitHistory() {
  return std::make_unique<CudaLogitHistory>(impl_->histories, config_.vocab_size);
}

void CudaModel::CodaChecks(std::span<const Chunk> chunks, const float* s,
                           std::span<const LogitCheck> checks, double* values) {
  Impl& im = *impl_;
  if (TotalRows(chunks) == 0) return;
  const auto b_count = static_cast<int64_t>(chunks.size());
  const int64_t v = im.vocab;
  std::vector<CudaLogitHistory*> hist(chunks.size());
  for (size_t b = 0; b < chunks.size(); ++b) {
    hist[b] = dynamic_cast<CudaLogitHistory*>(checks[b].history);
    if (hist[b] == nullptr) Die("CodaChecks", "a history from another backend", __FILE__, __LINE__);
  }
  im.checks_on_host = !im.device_signals;
  if (!im.device_signals) {  // the logits come to the host, which computes as the CPU does
    Backend::CodaChecks(chunks, s, checks, values);
    return;
  }
  int64_t rows = 0;
  const float* ld = CodaOnDevice(chunks, s, /*last_only=*/true, /*head=*/true, &rows);
  std::vector<RowCheck> rc(chunks.size());
  for (size_t b = 0; b < chunks.size(); ++b) {
    const policy::ExitRule rule = checks[b].rule;
    const bool kl = rule == policy::ExitRule::kKl || rule == policy::ExitRule::kMinpKl;
    if (!kl && rule != policy::ExitRule::kEntropyDiff &&
        rule != policy::ExitRule::kArgmaxStability) {
      Die("CodaChecks", "not a logit rule", __FILE__, __LINE__);
    }
    rc[b] = {kl ? hist[b]->Buffer() : nullptr, static_cast<int32_t>(rule),
             hist[b]->has_prev ? 1 : 0};
  }
  RowCheck* rows_dev = im.check_rows.Get(rc.size());
  PONDER_CUDA_CHECK(cudaMemcpyAsync(rows_dev, rc.data(), rc.size() * sizeof(RowCheck),
                                    cudaMemcpyHostToDevice, im.stream));
  double* outd = im.check_out.Get(chunks.size());
  im.Launch(LogitSignalKernel, dim3(static_cast<unsigned>(b_count)), dim3(kRowThreads), 0, ld, v,
            config_.vocab_size, rows_dev, policy::kMinP, outd);
  PONDER_CUDA_CHECK(cudaGetLastError());
  std::vector<double> raw(chunks.size());
  PONDER_CUDA_CHECK(cudaMemcpyAsync(raw.data(), outd, raw.size() * sizeof(double),
                                    cudaMemcpyDeviceToHost, im.stream));
  PONDER_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  for (size_t b = 0; b < chunks.size(); ++b) {
    CudaLogitHistory& h = *hist[b];
    switch (checks[b].rule) {
      case policy::ExitRule::kKl:
      case policy::ExitRule::kMinpKl:
        values[b] = raw[b];
        h.has_prev = true;
        break;
      case policy::ExitRule::kEntropyDiff:
        values[b] = std::abs(raw[b] - h.prev_entropy);
        h.prev_entropy = raw[b];
        break;
      default:  // argmax-stability
        values[b] = raw[b];
    }
  }
}

void CudaModel::LastLogits(std::span<const size_t> which, float* logits) {
  Impl& im = *impl_;
  const int64_t v = im.vocab;
  if (im.checks_on_host) return Backend::LastLogits(which, logits);
  PONDER_CUDA_CHECK(cudaSetDevice(im.info.ordinal));
  for (size_t k = 0; k < which.size(); ++k) {
    PONDER_CUDA_CHECK(cudaMemcpyAsync(logits + k * v, im.logits.ptr + which[k] * v,
                                      v * sizeof(float), cudaMemcpyDeviceToHost, im.stream));
  }
  PONDER_CUDA_CHECK(cudaStreamSynchronize(im.stream));
}

void CudaModel::set_device_signals(bool on) { impl_->device_signals = on; }

void CudaModel::set_profile(bool on) { impl_->profile = on; }
void CudaModel::set_graphs(bool on) { impl_->graphs = on; }
void CudaModel::set_lean_kernels(bool on) { impl_->lean_kernels = on; }
bool CudaModel::graphs() const { return impl_->graphs; }

std::vector<std::pair<std::string, double>> CudaModel::TakeProfile(int64_t* steps) {
  Impl& im = *impl_;
  if (steps != nullptr) *steps = im.profile_steps;
  auto out = std::move(im.profile_ms);
  im.profile_ms.clear();
  im.profile_steps = 0;
  if (im.last_end != nullptr) {
    PONDER_CUDA_CHECK(cudaEventDestroy(im.last_end));
    im.last_end = nullptr;
  }
  return out;
}

void CudaModel::set_gemv(int64_t max_rows, int block_rows) {
  impl_->gemv_max_rows = std::clamp<int64_t>(max_rows, 0, kGemvMaxN);
  impl_->gemv_block_rows = block_rows == 8 ? 8 : 4;
}

void CudaModel::set_pdl(bool on) { impl_->pdl = on; }

void CudaModel::set_mma(int64_t max_rows) {
  impl_->mma_max_rows = std::clamp<int64_t>(max_rows, 0, kMmaMaxN);
}

Result<double> CudaModel::TimeCoreProducts(int64_t rows, int repeats) {
  Impl& im = *impl_;
  PONDER_CUDA_CHECK(cudaSetDevice(im.info.ordinal));
  if (rows < 1) return InvalidArgument("TimeCoreProducts: rows must be >= 1");
  const int64_t d = im.d, f = im.ffn_dim;
  float* in = im.h.Get(rows * std::max(d, f));
  float* out = im.qkv.Get(rows * std::max(3 * d, 2 * f));
  im.Launch(PatternKernel, dim3(Blocks(rows * std::max(d, f))), dim3(kThreads), 0, in,
            rows * std::max(d, f));
  auto iteration = [&] {
    im.Adapter(in, in, rows, out);
    for (const DeviceBlock& b : im.core) {
      im.Lin(in, rows, d, b.wqkv, out, 3 * d);
      im.Lin(in, rows, d, b.attn_proj, out, d);
      im.MlpIn(in, rows, b, out);  // with the activation, as a core step runs it
      im.Lin(in, rows, f, b.mlp_proj, out, d);
    }
  };
  cudaEvent_t t0, t1;
  PONDER_CUDA_CHECK(cudaEventCreate(&t0));
  PONDER_CUDA_CHECK(cudaEventCreate(&t1));
  iteration();  // warm-up (cuBLAS heuristics, scratch growth)
  std::vector<double> ms;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    PONDER_CUDA_CHECK(cudaEventRecord(t0, im.stream));
    iteration();
    PONDER_CUDA_CHECK(cudaEventRecord(t1, im.stream));
    PONDER_CUDA_CHECK(cudaEventSynchronize(t1));
    float t = 0.0f;
    PONDER_CUDA_CHECK(cudaEventElapsedTime(&t, t0, t1));
    ms.push_back(t);
  }
  PONDER_CUDA_CHECK(cudaGetLastError());
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

Result<double> MeasureCopyBandwidth(int device, uint64_t bytes, int repeats) {
  if (DeviceCount() <= device)
    return Unavailable("copy bandwidth: no CUDA device " + std::to_string(device));
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
    return CudaStatus(e, "cudaSetDevice");
  void *a = nullptr, *b = nullptr;
  if (cudaError_t e = cudaMalloc(&a, bytes); e != cudaSuccess) return CudaStatus(e, "cudaMalloc");
  if (cudaError_t e = cudaMalloc(&b, bytes); e != cudaSuccess) {
    cudaFree(a);
    return CudaStatus(e, "cudaMalloc");
  }
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0);
  cudaEventCreate(&t1);
  cudaMemset(a, 1, bytes);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);  // warm-up
  std::vector<double> rates;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    cudaEventRecord(t0);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, t0, t1);
    rates.push_back(2.0 * static_cast<double>(bytes) / (ms * 1e-3));
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  cudaFree(a);
  cudaFree(b);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return CudaStatus(e, "copy");
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace ponder::exec::cuda
