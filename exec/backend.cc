#include "exec/backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "exec/cpu/cpu_model.h"
#ifdef PONDER_HAVE_CUDA
#include "exec/cuda/cuda_model.h"
#endif

namespace ponder::exec {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in (0, 1).
double Uniform(uint64_t& state) {
  return (static_cast<double>(SplitMix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

}  // namespace

void Backend::InitState(std::span<const Chunk> chunks, uint64_t seed, uint64_t stream, double scale,
                        float* s) const {
  const int64_t d = config_.n_embd;
  int64_t row = 0;
  const double std = config_.init_std;
  const double mult = config_.embed_scale * scale;
  for (const Chunk& c : chunks) {
    for (int64_t t = 0; t < c.count; ++t, ++row) {
      float* out = s + row * d;
      if (scale == 0.0) {
        std::fill(out, out + d, 0.0f);
        continue;
      }
      uint64_t state = seed;
      SplitMix64(state);
      state ^= 0xd1b54a32d192ed03ull * (stream + 1);
      SplitMix64(state);
      state ^= 0x8cb92ba72f3d8dd7ull * static_cast<uint64_t>(c.pos + t + 1);
      for (int64_t j = 0; j < d; ++j) {
        double z;
        do {  // Box-Muller, rejecting draws beyond 3 standard deviations.
          z = std::sqrt(-2.0 * std::log(Uniform(state))) * std::cos(2.0 * M_PI * Uniform(state));
        } while (std::fabs(z) > 3.0);
        out[j] = static_cast<float>(z * std * mult);
      }
    }
  }
}

std::unique_ptr<SequenceCache> Backend::NewCache(KvStrategy strategy, KvPagePool* pool) {
  return std::make_unique<SequenceCache>(
      config_.n_layers_in_prelude, config_.n_layers_in_recurrent_block, config_.n_layers_in_coda,
      config_.n_embd, strategy, pool, page_memory());
}

void Backend::RecordDepths(std::span<const Chunk> chunks, std::span<const int64_t> iterations) {
  for (size_t b = 0; b < chunks.size(); ++b) {
    chunks[b].cache->SetDepth(chunks[b].pos, chunks[b].count, iterations[b]);
  }
}

void Backend::RecordTokens(std::span<const Chunk> chunks) {
  for (const Chunk& c : chunks) c.cache->set_tokens(std::max(c.cache->tokens(), c.pos + c.count));
}

Status Backend::CheckPrelude(std::span<const Chunk> chunks, std::span<const int32_t> tokens) const {
  const int64_t n = TotalRows(chunks);
  if (static_cast<int64_t>(tokens.size()) != n) {
    return InvalidArgument("prelude: " + std::to_string(tokens.size()) + " tokens for " +
                           std::to_string(n) + " rows");
  }
  for (const Chunk& c : chunks) {
    if (c.count < 1 || c.pos < 0 || c.pos + c.count > config_.block_size) {
      return OutOfRange("prelude: positions [" + std::to_string(c.pos) + ", " +
                        std::to_string(c.pos + c.count) + ") exceed block_size " +
                        std::to_string(config_.block_size));
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    const int32_t id = tokens[r];
    if (id < 0 || id >= weights_.wte.shape[0]) {
      return OutOfRange("prelude: token id " + std::to_string(id) + " at row " + std::to_string(r) +
                        " is outside the vocabulary [0, " + std::to_string(weights_.wte.shape[0]) +
                        ")");
    }
  }
  return Status::Ok();
}

std::unique_ptr<LogitHistory> Backend::NewLogitHistory() {
  return std::make_unique<TrackedLogitHistory>();
}

void Backend::CodaChecks(std::span<const Chunk> chunks, const float* s,
                         std::span<const LogitCheck> checks, double* values) {
  const int64_t v = config_.padded_vocab_size;
  check_logits_.resize(chunks.size() * v);
  Coda(chunks, s, /*last_only=*/true, check_logits_.data());
  for (size_t b = 0; b < chunks.size(); ++b) {
    auto* history = dynamic_cast<TrackedLogitHistory*>(checks[b].history);
    if (history == nullptr) {  // a programmer error: a history from another backend, or none
      std::fprintf(stderr, "ponder: fatal: CodaChecks: chunk %zu has no history of this backend\n",
                   b);
      std::abort();
    }
    values[b] = history->tracker.ObserveLogits(
        checks[b].rule, std::span<const float>(check_logits_.data() + b * v, config_.vocab_size));
  }
}

void Backend::LastLogits(std::span<const size_t> which, float* logits) {
  const int64_t v = config_.padded_vocab_size;
  for (size_t k = 0; k < which.size(); ++k) {
    std::memcpy(logits + k * v, check_logits_.data() + which[k] * v, v * sizeof(float));
  }
}

void Backend::CoreSteps(std::span<const Chunk> chunks, std::span<const int64_t> iterations,
                        int64_t steps, const float* e, float* s) {
  std::vector<int64_t> its(iterations.begin(), iterations.end());
  for (int64_t j = 0; j < steps; ++j) {
    CoreStep(chunks, its, e, s);
    for (int64_t& it : its) ++it;
  }
}

Result<std::vector<float>> Backend::Forward(SequenceCache& cache, std::span<const int32_t> tokens,
                                            int64_t steps, const float* state, uint64_t seed,
                                            double init_scale, std::vector<float>* final_state) {
  if (tokens.empty()) return InvalidArgument("forward: no tokens");
  if (steps < 1) return InvalidArgument("forward: steps must be >= 1");
  const int64_t d = config_.n_embd;
  const int64_t n = static_cast<int64_t>(tokens.size());
  Chunk chunk{&cache, cache.tokens(), n};
  std::span<const Chunk> chunks(&chunk, 1);
  std::vector<float> e(n * d), s(n * d);
  PONDER_RETURN_IF_ERROR(Prelude(chunks, tokens, e.data()));
  if (state != nullptr) {
    std::memcpy(s.data(), state, s.size() * sizeof(float));
  } else {
    InitState(chunks, seed, 0, init_scale, s.data());
  }
  const int64_t first = 1;
  CoreSteps(chunks, std::span<const int64_t>(&first, 1), steps, e.data(), s.data());
  std::vector<float> logits(n * weights_.lm_head.shape[0]);
  Coda(chunks, s.data(), /*last_only=*/false, logits.data());
  if (final_state != nullptr) *final_state = std::move(s);
  return logits;
}

void RopeTables(const model::Config& config, std::vector<float>* cos, std::vector<float>* sin) {
  const int64_t hd = config.head_dim;
  const int64_t half = hd / 2;
  cos->assign(config.block_size * half, 0.0f);
  sin->assign(config.block_size * half, 0.0f);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(hd);
    const float inv_freq = 1.0f / static_cast<float>(std::pow(
                                      static_cast<double>(static_cast<float>(config.rope_base)),
                                      static_cast<double>(exponent)));
    for (int64_t p = 0; p < config.block_size; ++p) {
      const float angle = static_cast<float>(p) * inv_freq;
      (*cos)[p * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      (*sin)[p * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

std::vector<std::string> BackendKinds() {
#ifdef PONDER_HAVE_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

Result<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options,
                                             const model::Config& config,
                                             const model::Weights& weights) {
  if (options.kind == "cpu") {
    return std::unique_ptr<Backend>(
        std::make_unique<cpu::CpuModel>(config, weights, options.threads));
  }
  if (options.kind == "cuda") {
    if (options.cuda_mma_rows < -1 || options.cuda_mma_rows > 32) {
      return InvalidArgument("backend cuda: MmaKernel rows " +
                             std::to_string(options.cuda_mma_rows) +
                             " (expected 0 to turn it off, or up to 32)");
    }
#ifdef PONDER_HAVE_CUDA
    auto made = cuda::CudaModel::Create(config, weights, options.device, options.cuda_weights);
    if (made.ok()) {
      auto* gpu = static_cast<cuda::CudaModel*>(made->get());
      if (options.cuda_mma_rows >= 0) gpu->set_mma(options.cuda_mma_rows);
      gpu->set_pdl(options.cuda_pdl);
      gpu->set_device_signals(options.cuda_device_signals);
      gpu->set_lean_kernels(options.cuda_lean_kernels);
    }
    return made;
#else
    return Unavailable(
        "backend cuda: this build of Ponder has no CUDA backend (configure with nvcc present "
        "and PONDER_CUDA on)");
#endif
  }
  return InvalidArgument("unknown backend \"" + options.kind + "\" (expected \"cpu\" or \"cuda\")");
}

}  // namespace ponder::exec
