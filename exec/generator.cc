#include "exec/generator.h"

#include <algorithm>
#include <chrono>

namespace ponder::exec {

Result<GenerateResult> Generate(cpu::CpuModel& model, std::span<const int32_t> prompt,
                                const GenerateOptions& options,
                                const std::function<void(int32_t)>& on_token) {
  const model::Config& cfg = model.config();
  if (prompt.empty()) return InvalidArgument("generate: the prompt has no tokens");
  if (options.steps < 1) return InvalidArgument("generate: steps must be >= 1");
  if (options.max_tokens < 1) return InvalidArgument("generate: max_tokens must be >= 1");
  if (static_cast<int64_t>(prompt.size()) >= cfg.block_size) {
    return OutOfRange("generate: prompt of " + std::to_string(prompt.size()) +
                      " tokens leaves no room in the context of " + std::to_string(cfg.block_size));
  }
  using Clock = std::chrono::steady_clock;
  auto cache = model.NewCache(options.kv);
  GenerateResult result;
  uint64_t rng = options.seed ^ 0x5851f42d4c957f2dull;
  const int64_t d = cfg.n_embd;
  const int64_t vocab = cfg.vocab_size;
  const int64_t head_rows = cfg.padded_vocab_size;

  std::vector<int32_t> input(prompt.begin(), prompt.end());
  std::vector<float> e, s, logits(head_rows);
  for (int64_t produced = 0; produced < options.max_tokens; ++produced) {
    const auto t0 = Clock::now();
    const int64_t n = static_cast<int64_t>(input.size());
    cpu::Chunk chunk{cache.get(), cache->tokens(), n};
    std::span<const cpu::Chunk> chunks(&chunk, 1);
    e.resize(n * d);
    s.resize(n * d);
    PONDER_RETURN_IF_ERROR(model.Prelude(chunks, input, e.data()));
    model.InitState(chunks, options.seed, 0, options.init_scale, s.data());
    for (int64_t i = 1; i <= options.steps; ++i) {
      model.CoreStep(chunks, std::span<const int64_t>(&i, 1), e.data(), s.data());
    }
    model.Coda(chunks, s.data(), /*last_only=*/true, logits.data());
    const int32_t next =
        Sample(std::span<const float>(logits.data(), vocab), options.sampling, rng);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    (produced == 0 ? result.prefill_seconds : result.decode_seconds) += secs;
    result.tokens.push_back(next);
    if (on_token) on_token(next);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
        options.stop_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    if (cache->tokens() + 1 >= cfg.block_size) break;  // context full
    input.assign(1, next);
  }
  if (result.finish_reason.empty()) result.finish_reason = "length";
  result.kv_bytes = cache->bytes();
  return result;
}

Result<std::vector<GenerateResult>> GenerateBatch(cpu::CpuModel& model,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  const GenerateOptions& options) {
  const model::Config& cfg = model.config();
  if (options.steps < 1) return InvalidArgument("generate: steps must be >= 1");
  if (options.max_tokens < 1) return InvalidArgument("generate: max_tokens must be >= 1");
  const size_t batch = prompts.size();
  for (size_t b = 0; b < batch; ++b) {
    if (prompts[b].empty()) {
      return InvalidArgument("generate: prompt " + std::to_string(b) + " has no tokens");
    }
    if (static_cast<int64_t>(prompts[b].size()) >= cfg.block_size) {
      return OutOfRange(
          "generate: prompt " + std::to_string(b) + " of " + std::to_string(prompts[b].size()) +
          " tokens leaves no room in the context of " + std::to_string(cfg.block_size));
    }
  }
  std::vector<std::unique_ptr<SequenceCache>> caches;
  std::vector<uint64_t> rng(batch);
  std::vector<GenerateResult> results(batch);
  std::vector<std::vector<int32_t>> input(prompts);
  std::vector<bool> done(batch, false);
  for (size_t b = 0; b < batch; ++b) {
    caches.push_back(model.NewCache(options.kv));
    rng[b] = (options.seed + b) ^ 0x5851f42d4c957f2dull;  // as Generate with seed + b
  }
  const int64_t d = cfg.n_embd;
  const int64_t rows_v = cfg.padded_vocab_size;
  std::vector<float> e, s, logits;
  std::vector<cpu::Chunk> chunks;
  std::vector<int32_t> tokens;
  std::vector<size_t> who;
  std::vector<int64_t> its;
  for (int64_t round = 0; round < options.max_tokens; ++round) {
    chunks.clear();
    tokens.clear();
    who.clear();
    for (size_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      chunks.push_back(
          {caches[b].get(), caches[b]->tokens(), static_cast<int64_t>(input[b].size())});
      tokens.insert(tokens.end(), input[b].begin(), input[b].end());
      who.push_back(b);
    }
    if (chunks.empty()) break;
    const int64_t n = static_cast<int64_t>(tokens.size());
    e.resize(n * d);
    s.resize(n * d);
    PONDER_RETURN_IF_ERROR(model.Prelude(chunks, tokens, e.data()));
    // Sequence b draws as Generate with seed + b does: batching changes nothing.
    int64_t row = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      model.InitState(std::span<const cpu::Chunk>(&chunks[i], 1), options.seed + who[i], 0,
                      options.init_scale, s.data() + row * d);
      row += chunks[i].count;
    }
    for (int64_t it = 1; it <= options.steps; ++it) {
      its.assign(chunks.size(), it);
      model.CoreStep(chunks, its, e.data(), s.data());
    }
    logits.resize(chunks.size() * rows_v);
    model.Coda(chunks, s.data(), /*last_only=*/true, logits.data());
    for (size_t i = 0; i < chunks.size(); ++i) {
      const size_t b = who[i];
      const int32_t next = Sample(std::span<const float>(&logits[i * rows_v], cfg.vocab_size),
                                  options.sampling, rng[b]);
      results[b].tokens.push_back(next);
      input[b].assign(1, next);
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
          options.stop_ids.end()) {
        results[b].finish_reason = "stop";
        done[b] = true;
      } else if (caches[b]->tokens() + 1 >= cfg.block_size) {
        done[b] = true;
      }
    }
  }
  for (size_t b = 0; b < batch; ++b) {
    if (results[b].finish_reason.empty()) results[b].finish_reason = "length";
    results[b].kv_bytes = caches[b]->bytes();
  }
  return results;
}

}  // namespace ponder::exec
