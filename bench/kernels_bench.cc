// Linear kernel throughput against the memory-bandwidth floor.
//
//   kernels_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// The big shape is Huginn-0125's fused MLP input projection, [2 * 17920, 5280]. Batch-1
// decode reads every weight once per token, so bytes_per_second of BM_Linear/bf16 n=1 is
// directly comparable to the read bandwidth measured at start-up (counter
// frac_of_read_bw, which is 1.0 at the floor).

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bandwidth.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "exec/cpu/kernels.h"
#include "policy/criteria.h"

namespace ponder {
namespace {

using exec::cpu::ThreadPool;

constexpr int64_t kBigOut = 2 * 17920;
constexpr int64_t kBigIn = 5280;
constexpr int64_t kTinyOut = 384;
constexpr int64_t kTinyIn = 128;

ThreadPool& Pool() {
  static ThreadPool pool(2);
  return pool;
}

// Median read bandwidth in bytes/s, measured in main() before the benchmarks run.
double g_read_bandwidth = 0.0;

// Weights owned for the whole run (the big ones are created once: ~0.4 GB bf16, ~0.8 GB f32).
struct Weights {
  std::vector<float> f32;
  std::vector<uint16_t> u16;
  TensorView view;
};

Weights MakeWeights(DType dtype, int64_t out, int64_t in) {
  Weights w;
  w.view.dtype = dtype;
  w.view.shape = {out, in};
  const int64_t n = out * in;
  uint32_t state = 12345u;
  auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(static_cast<int32_t>(state >> 8) - (1 << 23)) / (1 << 26);
  };
  if (dtype == DType::kF32) {
    w.f32.resize(n);
    for (float& v : w.f32) v = next();
    w.view.data = w.f32.data();
  } else {
    w.u16.resize(n);
    for (uint16_t& v : w.u16) v = dtype == DType::kBF16 ? F32ToBf16(next()) : F32ToF16(next());
    w.view.data = w.u16.data();
  }
  return w;
}

const Weights& BigWeights(DType dtype) {
  static const Weights bf16 = MakeWeights(DType::kBF16, kBigOut, kBigIn);
  static const Weights f32 = MakeWeights(DType::kF32, kBigOut, kBigIn);
  return dtype == DType::kBF16 ? bf16 : f32;
}

// Fits the per-core L2 cache: measures the kernel's own ceiling, not the memory's.
const Weights& CachedWeights(DType dtype) {
  static const Weights bf16 = MakeWeights(DType::kBF16, 64, kBigIn);
  static const Weights f32 = MakeWeights(DType::kF32, 32, kBigIn);
  return dtype == DType::kBF16 ? bf16 : f32;
}

const Weights& TinyWeights() {
  static const Weights f32 = MakeWeights(DType::kF32, kTinyOut, kTinyIn);
  return f32;
}

void RunLinear(benchmark::State& state, const TensorView& w, ThreadPool* pool = &Pool()) {
  const int64_t n = state.range(0);
  const int64_t out = w.shape[0];
  const int64_t in = w.shape[1];
  std::vector<float> x(n * in, 0.5f);
  std::vector<float> y(n * out);
  for (auto _ : state) {
    exec::cpu::Linear(x.data(), n, in, w, y.data(), out, pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double weight_bytes = static_cast<double>(w.bytes());
  state.SetBytesProcessed(static_cast<int64_t>(weight_bytes) * state.iterations());
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(n * out * in) * static_cast<double>(state.iterations()) * 1e-9,
      benchmark::Counter::kIsRate);
  if (g_read_bandwidth > 0.0) {
    // Rate counter: (weight bytes / s) / (read bytes / s).
    state.counters["frac_of_read_bw"] = benchmark::Counter(
        weight_bytes * static_cast<double>(state.iterations()) / g_read_bandwidth,
        benchmark::Counter::kIsRate);
  }
}

void BM_LinearBigBf16(benchmark::State& state) { RunLinear(state, BigWeights(DType::kBF16).view); }
void BM_LinearBigF32(benchmark::State& state) { RunLinear(state, BigWeights(DType::kF32).view); }
void BM_LinearTinyF32(benchmark::State& state) { RunLinear(state, TinyWeights().view); }

BENCHMARK(BM_LinearBigBf16)
    ->ArgName("n")
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Arg(32)
    ->Arg(64)
    ->Arg(256)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LinearBigF32)
    ->ArgName("n")
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Arg(32)
    ->Arg(64)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Single thread, weights resident in L2 (reported bytes/s is the kernel's compute ceiling).
void BM_LinearCachedBf16(benchmark::State& state) {
  RunLinear(state, CachedWeights(DType::kBF16).view, nullptr);
}
void BM_LinearCachedF32(benchmark::State& state) {
  RunLinear(state, CachedWeights(DType::kF32).view, nullptr);
}

BENCHMARK(BM_LinearCachedBf16)
    ->ArgName("n")
    ->Arg(1)
    ->Arg(4)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LinearCachedF32)
    ->ArgName("n")
    ->Arg(1)
    ->Arg(4)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LinearTinyF32)->ArgName("n")->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond);

// One logit check of one sequence computed on the host, as a backend without device signals
// leaves it (policy::SignalTracker on a downloaded row) at Huginn-0125's vocabulary of 65536:
// log-softmax in double and the rule's value against the previous check. Arg: 0 kl,
// 1 minp-kl, 2 entropy-diff.
void BM_LogitCheckHost(benchmark::State& state) {
  constexpr int64_t kVocab = 65536;
  const policy::ExitRule rule = state.range(0) == 0   ? policy::ExitRule::kKl
                                : state.range(0) == 1 ? policy::ExitRule::kMinpKl
                                                      : policy::ExitRule::kEntropyDiff;
  std::vector<float> a(kVocab), b(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) {
    a[i] = 4.0f * std::sin(0.37f * static_cast<float>(i));
    b[i] = 4.0f * std::sin(0.41f * static_cast<float>(i));
  }
  policy::SignalTracker tracker;
  tracker.Begin({});
  bool odd = false;
  for (auto _ : state) {
    benchmark::DoNotOptimize(tracker.ObserveLogits(rule, odd ? a : b));
    odd = !odd;
  }
  state.SetLabel(std::string(policy::ExitRuleName(rule)));
}
BENCHMARK(BM_LogitCheckHost)
    ->ArgName("rule")
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// One parallel summing pass over a 1 GiB buffer per iteration.
void BM_ReadBandwidth(benchmark::State& state) {
  bench::BandwidthOptions options;
  options.passes = 1;
  for (auto _ : state) {
    const bench::BandwidthResult r = bench::MeasureReadBandwidth(&Pool(), options);
    state.counters["GB/s"] = r.best_bytes_per_second * 1e-9;
  }
}
BENCHMARK(BM_ReadBandwidth)->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace ponder

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const ponder::bench::BandwidthResult bw =
      ponder::bench::MeasureReadBandwidth(&ponder::Pool(), ponder::bench::BandwidthOptions{});
  ponder::g_read_bandwidth = bw.median_bytes_per_second;
  std::printf("read bandwidth (%d threads, 1 GiB): median %.2f GB/s, best %.2f GB/s\n",
              ponder::Pool().threads(), bw.median_bytes_per_second * 1e-9,
              bw.best_bytes_per_second * 1e-9);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
