// One core iteration (adapter + the core block) at Huginn-0125 width, batch 1/4/16,
// bf16 and f32 random weights, against the memory-bandwidth floor measured in the same
// run: floor = bytes of weights one iteration reads / STREAM-style read bandwidth.
//
//   build/bench/core_iteration_bench [--threads N] [--repeats R] [--dtypes bf16,f32]
//                                    [--batches 1,4,16] [--width huginn|small]
// Prints one table row per (dtype, batch): median ms per iteration and the median over
// repeats of floor / time, where each repeat's floor comes from a bandwidth pass taken
// right before the iteration (this machine's bandwidth drifts by tens of percent).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bandwidth.h"
#include "bench/common.h"
#include "exec/cpu/cpu_model.h"
#include "tests/random_model.h"

namespace {

using ponder::DType;
using namespace ponder::exec;
using ponder::bench::Median;

}  // namespace

int main(int argc, char** argv) {
  int threads = 0, repeats = 7;
  std::string dtypes = "bf16,f32", batches = "1,4,16", width = "huginn";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--threads")
      threads = std::stoi(v);
    else if (k == "--repeats")
      repeats = std::stoi(v);
    else if (k == "--dtypes")
      dtypes = v;
    else if (k == "--batches")
      batches = v;
    else if (k == "--width")
      width = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  cpu::ThreadPool pool(threads);
  // Huginn-0125: n_embd 5280, 55 heads, mlp 17920, a 4-layer core block. Prelude and
  // coda are not part of one iteration; a tiny vocabulary keeps memory for the core.
  ponder::model::Config cfg = width == "huginn"
                                  ? ponder::testing::SmallConfig(5280, 55, 17920, 0, 4, 0, 64)
                                  : ponder::testing::SmallConfig(512, 8, 1536, 0, 4, 0, 64);
  ponder::bench::BandwidthProbe probe(&pool);
  if (!probe.ok()) {
    std::fprintf(stderr, "cannot allocate the bandwidth buffer\n");
    return 1;
  }
  std::printf("machine: %d threads; floor = weight bytes / STREAM-style read bandwidth\n",
              pool.threads());
  std::printf("%-6s %6s %12s %10s %12s %12s %10s\n", "dtype", "batch", "weights_MB", "bw_GB/s",
              "floor_ms", "median_ms", "of_floor");
  for (const std::string& dt : ponder::bench::SplitList(dtypes)) {
    const DType dtype = dt == "f32" ? DType::kF32 : dt == "f16" ? DType::kF16 : DType::kBF16;
    ponder::testing::RandomModel rm(cfg, dtype, 1);
    const auto& w = rm.weights();
    uint64_t bytes = w.adapter.bytes();
    for (const auto& b : w.core) bytes += ponder::bench::BlockBytes(b);
    cpu::CpuModel model(rm.config(), w, &pool);
    for (const std::string& bs : ponder::bench::SplitList(batches)) {
      const int64_t batch = std::stoll(bs);
      std::vector<std::unique_ptr<SequenceCache>> caches;
      std::vector<cpu::Chunk> chunks;
      for (int64_t b = 0; b < batch; ++b) {
        caches.push_back(model.NewCache());
        chunks.push_back({caches.back().get(), 0, 1});
      }
      const int64_t d = cfg.n_embd;
      std::vector<float> e(batch * d, 0.01f), s(batch * d);
      std::vector<int64_t> its(batch, 1);
      model.InitState(chunks, 1, 0, 1.0, s.data());
      model.CoreStep(chunks, its, e.data(), s.data());  // warm-up
      std::vector<double> times, bws, fractions;
      for (int r = 0; r < repeats; ++r) {
        const double bw = probe.Pass();
        const auto t0 = std::chrono::steady_clock::now();
        model.CoreStep(chunks, its, e.data(), s.data());
        const double t =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        times.push_back(t);
        bws.push_back(bw);
        fractions.push_back(static_cast<double>(bytes) / bw / t);
      }
      const double med_bw = Median(bws);
      std::printf("%-6s %6lld %12.1f %10.1f %12.2f %12.2f %9.1f%%\n", dt.c_str(), (long long)batch,
                  bytes / 1e6, med_bw / 1e9, bytes / med_bw * 1e3, Median(times) * 1e3,
                  100.0 * Median(fractions));
      std::fflush(stdout);
    }
  }
  return 0;
}
