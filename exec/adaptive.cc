#include "exec/adaptive.h"

#include <algorithm>
#include <chrono>

#include "exec/depth_batcher.h"

namespace ponder::exec {
double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Result<AdaptiveResult> GenerateAdaptive(Backend& model, std::span<const int32_t> prompt,
                                        const policy::DepthPlan& plan,
                                        const AdaptiveOptions& options, double (*now)(),
                                        const std::function<void(int32_t)>& on_token) {
  // The batch-1 path is the batched one with a single sequence: one code path decides
  // exits, so batched serving cannot drift from it.
  DepthBatcher batcher(model, now);
  SequenceSpec spec;
  spec.prompt.assign(prompt.begin(), prompt.end());
  spec.plan = plan;
  spec.options = options;
  if (on_token) spec.on_token = [&on_token](const TokenTrace& t) { on_token(t.token); };
  PONDER_ASSIGN_OR_RETURN(const DepthBatcher::Id id, batcher.Add(std::move(spec)));
  while (!batcher.finished(id)) PONDER_RETURN_IF_ERROR(batcher.Tick());
  return batcher.TakeResult(id);
}

}  // namespace ponder::exec
