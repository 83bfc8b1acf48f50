#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>

#include "exec/cpu/kernels.h"

namespace ponder::exec::cpu {

ThreadPool::ThreadPool(int threads)
    : threads_(threads > 0 ? threads : std::max(1, tbb::this_task_arena::max_concurrency())),
      arena_(std::make_unique<tbb::task_arena>(threads_)) {}

ThreadPool::~ThreadPool() = default;

void ThreadPool::ParallelForImpl(int64_t n, int64_t grain, void (*fn)(void*, int64_t, int64_t),
                                 void* ctx) {
  const int64_t g = std::max<int64_t>(1, grain);
  arena_->execute([&] {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, static_cast<size_t>(g)),
                      [&](const tbb::blocked_range<int64_t>& r) { fn(ctx, r.begin(), r.end()); });
  });
}

}  // namespace ponder::exec::cpu
