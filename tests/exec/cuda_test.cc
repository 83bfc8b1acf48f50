// The CUDA backend against the CPU executor (exec/cuda/). Every test that needs a device
// skips (GTEST_SKIP) when MakeBackend("cuda") reports none, or when this build has no CUDA
// backend, unless PONDER_REQUIRE_CUDA=1 (bench/gpu/run.sh sets it: there a missing device is
// a failure). The choice of backend itself is tested everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "exec/backend.h"
#include "exec/cpu/cpu_model.h"
#ifdef PONDER_HAVE_CUDA
#include "exec/cuda/cuda_model.h"
#endif
#include "model/checkpoint.h"
#include "policy/profile.h"
#include "scenarios/replay.h"
#include "scenarios/workload.h"
#include "tests/random_model.h"

namespace ponder::exec {
namespace {

// The repository: PONDER_SOURCE_DIR from the environment when set (a build carried to a
// GPU machine, bench/gpu/README.md), else the source tree this test was built from.
std::string Root() {
  const char* env = std::getenv("PONDER_SOURCE_DIR");
  return env != nullptr && *env != '\0' ? env : PONDER_SOURCE_DIR;
}

TEST(MakeBackendTest, ChoosesByNameAndRejectsUnknownKinds) {
  auto ckpt = model::LoadCheckpoint(Root() + "/tests/data/tiny");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  BackendOptions o;
  auto cpu = MakeBackend(o, (*ckpt)->config, (*ckpt)->weights);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  EXPECT_EQ((*cpu)->name(), "cpu");
  o.kind = "tpu";
  auto bad = MakeBackend(o, (*ckpt)->config, (*ckpt)->weights);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown backend \"tpu\""), std::string::npos);
  o.kind = "cuda";
  auto gpu = MakeBackend(o, (*ckpt)->config, (*ckpt)->weights);
  if (!gpu.ok()) {  // no device, or no CUDA in this build: the error says which
    EXPECT_EQ(gpu.status().code(), StatusCode::kUnavailable) << gpu.status().ToString();
    EXPECT_NE(gpu.status().message().find("backend cuda"), std::string::npos);
  } else {
    EXPECT_EQ((*gpu)->name(), "cuda");
    o.cuda_weights = "f8";
    auto bad_dtype = MakeBackend(o, (*ckpt)->config, (*ckpt)->weights);
    ASSERT_FALSE(bad_dtype.ok());
    EXPECT_NE(bad_dtype.status().message().find("\"f8\""), std::string::npos);
  }
}

std::unique_ptr<Backend> CudaOrSkipReason(const model::Config& config,
                                          const model::Weights& weights, const std::string& dtype,
                                          std::string* why) {
  BackendOptions o;
  o.kind = "cuda";
  o.cuda_weights = dtype;
  auto b = MakeBackend(o, config, weights);
  if (!b.ok()) {
    *why = b.status().ToString();
    return nullptr;
  }
  return std::move(*b);
}

bool CudaRequired() {
  const char* v = std::getenv("PONDER_REQUIRE_CUDA");
  return v != nullptr && std::string(v) == "1";
}

#define CUDA_OR_SKIP(var, config, weights, dtype)                               \
  std::string why_##var;                                                        \
  auto var = CudaOrSkipReason(config, weights, dtype, &why_##var);              \
  if (!var && CudaRequired()) FAIL() << "PONDER_REQUIRE_CUDA=1: " << why_##var; \
  if (!var) GTEST_SKIP() << why_##var

// Normalised MSE: sum (a - b)^2 / sum b^2.
double Nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return num / den;
}

// Rows of [rows, v] logits (`a` the reference) whose greedy token (over the first `vocab`
// entries) differs, among the rows where the reference's top two are further apart than
// `margin` x the row's spread (closer pairs may swap under rounding either way).
int64_t ArgmaxDisagree(const std::vector<float>& a, const std::vector<float>& b, int64_t v,
                       int64_t vocab, double margin) {
  int64_t differ = 0;
  for (size_t r = 0; r * v < a.size(); ++r) {
    const float* ra = a.data() + r * v;
    const float* rb = b.data() + r * v;
    std::vector<float> sorted(ra, ra + vocab);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    double mean = 0, sq = 0;
    for (int64_t i = 0; i < vocab; ++i) mean += ra[i];
    mean /= vocab;
    for (int64_t i = 0; i < vocab; ++i) sq += (ra[i] - mean) * (ra[i] - mean);
    if (sorted[0] - sorted[1] <= margin * std::sqrt(sq / vocab)) continue;
    differ += (std::max_element(ra, ra + vocab) - ra) != (std::max_element(rb, rb + vocab) - rb);
  }
  return differ;
}

// Prefill of `prompt` then three decode steps at r iterations on both backends, the same
// initial states; every call's logits compared.
void CompareForward(Backend& cpu, Backend& gpu, int64_t prompt, int64_t r, double bound) {
  const model::Config& c = cpu.config();
  std::vector<int32_t> tokens(prompt);
  for (int64_t i = 0; i < prompt; ++i) tokens[i] = static_cast<int32_t>((7 * i + 3) % c.vocab_size);
  auto cc = cpu.NewCache();
  auto gc = gpu.NewCache();
  for (int step = 0; step < 4; ++step) {
    auto a = cpu.Forward(*cc, tokens, r, nullptr, 11, 1.0);
    auto b = gpu.Forward(*gc, tokens, r, nullptr, 11, 1.0);
    ASSERT_TRUE(a.ok() && b.ok());
    const double nmse = Nmse(*b, *a);
    EXPECT_LE(nmse, bound) << "prompt " << prompt << " r=" << r << " call " << step;
    const int64_t v = c.padded_vocab_size;
    const int64_t rows = static_cast<int64_t>(a->size()) / v;
    EXPECT_EQ(ArgmaxDisagree(*a, *b, v, c.vocab_size, 0.05), 0) << "r=" << r << " call " << step;
    // Next call: the CPU's greedy token (both sides continue from the same text).
    const float* last = a->data() + (rows - 1) * v;
    tokens = {static_cast<int32_t>(std::max_element(last, last + c.vocab_size) - last)};
  }
}

class CudaParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaParityTest, LogitsMatchTheCpuOnCommittedCheckpoints) {
  auto ckpt = model::LoadCheckpoint(Root() + "/" + GetParam());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  const auto& cfg = (*ckpt)->config;
  const auto& w = (*ckpt)->weights;
  cpu::CpuModel cpu(cfg, w, nullptr);
  {
    CUDA_OR_SKIP(gpu, cfg, w, "f32");
    for (int64_t r : {1, 4, 16}) CompareForward(cpu, *gpu, 9, r, 1e-8);
  }
  CUDA_OR_SKIP(gpu, cfg, w, "bf16");
  for (int64_t prompt : {1, 9, 17}) {
    for (int64_t r : {1, 4, 16}) CompareForward(cpu, *gpu, prompt, r, 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, CudaParityTest,
                         ::testing::Values("tests/data/tiny", "tests/data/tiny-bf16",
                                           "model/zoo/ponder-micro"));

// A random checkpoint with Huginn-0125's structure (2 prelude, 4 core, 2 coda layers, qk
// bias, untied head) in bf16, at a width that fits a test: both sides read the same bf16
// weights with f32 activations (cuBLAS gets them as two bf16 parts, about 16 bits), so
// rounding and summation order differ. A random recurrence amplifies rounding with depth
// (tests/exec/golden_test.cc), so deep runs compare in f32.
// Huginn-0125's structure at a test's width, random bf16 weights.
ponder::testing::RandomModel HuginnShaped(uint64_t seed) {
  model::Config cfg = ponder::testing::SmallConfig(256, 4, 640, 2, 4, 2);
  cfg.tie_embeddings = false;
  return ponder::testing::RandomModel(cfg, DType::kBF16, seed);
}

TEST(CudaParityHuginnShapeTest, RandomBf16Checkpoint) {
  ponder::testing::RandomModel rm = HuginnShaped(5);
  cpu::CpuModel cpu(rm.config(), rm.weights(), nullptr);
  {
    CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "bf16");
    for (int64_t r : {1, 2, 4}) CompareForward(cpu, *gpu, 12, r, 1e-4);
  }
  // f32: the same arithmetic up to summation order, whose rounding the random recurrence
  // amplifies with depth (r = 32 lands near 7e-8 on an H200).
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "f32");
  CompareForward(cpu, *gpu, 12, 8, 1e-8);
  CompareForward(cpu, *gpu, 12, 32, 1e-6);
}

// Batched decode of 1 to 9 and 16 sequences against the CPU, step by step, with each setting
// of the backend's own product kernel (the default: up to 3 rows, with CUDA graphs or
// without; up to 8 rows with 4 or 8 output rows per block; off, every product in cuBLAS). Between
// core steps the host changes part of the state, which the device must pick up rather than reuse
// its own copy, and reads logits, which must leave the state it holds as it was.
TEST(CudaBatchTest, BatchedCoreStepsMatchTheCpuAtEveryBatchSize) {
  ponder::testing::RandomModel rm = HuginnShaped(9);
  const model::Config& cfg = rm.config();
  cpu::CpuModel cpu(rm.config(), rm.weights(), nullptr);
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "bf16");
  const int64_t d = cfg.n_embd, v = cfg.padded_vocab_size;
  struct Setting {
    int64_t max_rows;
    int block_rows;
    bool graphs;
  };
  for (const Setting setting : {Setting{3, 4, true}, Setting{3, 4, false}, Setting{8, 4, true},
                                Setting{8, 8, true}, Setting{0, 4, true}}) {
#ifdef PONDER_HAVE_CUDA
    static_cast<cuda::CudaModel*>(gpu.get())->set_gemv(setting.max_rows, setting.block_rows);
    static_cast<cuda::CudaModel*>(gpu.get())->set_graphs(setting.graphs);
#endif
    SCOPED_TRACE("gemv up to " + std::to_string(setting.max_rows) + " rows, " +
                 std::to_string(setting.block_rows) + " per block, graphs " +
                 (setting.graphs ? "on" : "off"));
    for (int64_t batch : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16}) {
      std::vector<std::unique_ptr<SequenceCache>> caches;
      std::vector<Chunk> cc, gc;
      std::vector<int32_t> tokens;
      for (int64_t b = 0; b < batch; ++b) {
        caches.push_back(cpu.NewCache());
        cc.push_back({caches.back().get(), 0, 1});
        caches.push_back(gpu->NewCache());
        gc.push_back({caches.back().get(), 0, 1});
        tokens.push_back(static_cast<int32_t>((13 * b + 5) % cfg.vocab_size));
      }
      std::vector<float> e(batch * d), eg(batch * d), sc(batch * d);
      ASSERT_TRUE(cpu.Prelude(cc, tokens, e.data()).ok());
      ASSERT_TRUE(gpu->Prelude(gc, tokens, eg.data()).ok());
      EXPECT_LE(Nmse(eg, e), 1e-10) << "prelude, batch " << batch;
      cpu.InitState(cc, 3, 0, 1.0, sc.data());
      std::vector<float> sg = sc;
      // Six steps: a decode step's CUDA graph is captured at the second sighting of its
      // shape and buffers (the state buffers alternate, so steps 2 and 5) and replayed
      // after (steps 4 and 6).
      for (int64_t it = 1; it <= 6; ++it) {
        if (it == 2) {  // the host edits the state between steps
          for (int64_t b = 0; b < batch; ++b) sc[b * d + 7] = sg[b * d + 7] = 1.25f;
        }
        if (it == 3 || it == 5) {  // a logit check between steps
          std::vector<float> lc(batch * v), lg(batch * v);
          cpu.Coda(cc, sc.data(), true, lc.data());
          gpu->Coda(gc, sg.data(), true, lg.data());
          EXPECT_LE(Nmse(lg, lc), 1e-8) << "coda, batch " << batch << " iteration " << it;
        }
        const std::vector<int64_t> its(batch, it);
        cpu.CoreStep(cc, its, e.data(), sc.data());
        gpu->CoreStep(gc, its, e.data(), sg.data());
        EXPECT_LE(Nmse(sg, sc), 1e-8) << "batch " << batch << " iteration " << it;
      }
      // The next token (new embeddings, attention over the first): the graphs of the first
      // token's shape replay with the new tables.
      for (int64_t b = 0; b < batch; ++b) {
        cc[b].pos = gc[b].pos = 1;
        tokens[b] = static_cast<int32_t>((7 * b + 2) % cfg.vocab_size);
      }
      ASSERT_TRUE(cpu.Prelude(cc, tokens, e.data()).ok());
      ASSERT_TRUE(gpu->Prelude(gc, tokens, eg.data()).ok());
      EXPECT_LE(Nmse(eg, e), 1e-10) << "second prelude, batch " << batch;
      cpu.InitState(cc, 3, 0, 1.0, sc.data());
      sg = sc;
      for (int64_t it = 1; it <= 6; ++it) {
        const std::vector<int64_t> its(batch, it);
        cpu.CoreStep(cc, its, e.data(), sc.data());
        gpu->CoreStep(gc, its, e.data(), sg.data());
        EXPECT_LE(Nmse(sg, sc), 1e-8) << "second token, batch " << batch << " iteration " << it;
      }
    }
  }
}

// Per-token exits on the bundled model's scenario workloads with their profiles: each
// token's steps agree with the CPU's on at least 99% of tokens (compared item by item; a
// token one side generated and the other did not counts as a disagreement), with f32 and
// with bf16 weights.
double ExitAgreement(Backend& cpu, Backend& gpu, const model::Tokenizer& tok,
                     const std::string& root) {
  int64_t tokens = 0, agree = 0;
  for (const char* domain : {"education", "finance", "chat"}) {
    auto items = scenarios::LoadWorkload(root + "/scenarios/workloads/" + domain + ".jsonl");
    EXPECT_TRUE(items.ok()) << items.status().ToString();
    auto profile = policy::LoadProfile(root + "/scenarios/profiles/" + domain + ".json");
    EXPECT_TRUE(profile.ok()) << profile.status().ToString();
    if (!items.ok() || !profile.ok()) return 0.0;
    for (auto& cls : profile->task_classes)
      cls.deadline_ms = 0;  // exits by the rules, not the clock
    scenarios::ReplayOptions o;
    o.profile = &*profile;
    auto a = scenarios::Replay(cpu, tok, *items, o);
    auto b = scenarios::Replay(gpu, tok, *items, o);
    EXPECT_TRUE(a.ok() && b.ok());
    if (!a.ok() || !b.ok()) return 0.0;
    const auto& sa = a->total.token_steps;
    const auto& sb = b->total.token_steps;
    size_t ia = 0, ib = 0;
    for (size_t i = 0; i < a->items.size(); ++i) {
      const auto na = static_cast<size_t>(a->items[i].tokens);
      const auto nb = static_cast<size_t>(b->items[i].tokens);
      tokens += static_cast<int64_t>(std::max(na, nb));
      for (size_t t = 0; t < std::min(na, nb); ++t) agree += sa[ia + t] == sb[ib + t];
      ia += na;
      ib += nb;
    }
  }
  return tokens ? static_cast<double>(agree) / tokens : 0.0;
}

TEST(CudaExitParityTest, PerTokenExitStepsAgreeOnScenarioWorkloads) {
  const std::string root = Root();
  auto ckpt = model::LoadCheckpoint(root + "/model/zoo/ponder-micro");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  cpu::CpuModel cpu((*ckpt)->config, (*ckpt)->weights, nullptr);
  {
    CUDA_OR_SKIP(gpu, (*ckpt)->config, (*ckpt)->weights, "f32");
    const double f32 = ExitAgreement(cpu, *gpu, *(*ckpt)->tokenizer, root);
    std::printf("per-token exit steps equal to the CPU's, f32 weights: %.4f\n", f32);
    EXPECT_GE(f32, 0.99);
  }
  CUDA_OR_SKIP(gpu, (*ckpt)->config, (*ckpt)->weights, "bf16");
  const double bf16 = ExitAgreement(cpu, *gpu, *(*ckpt)->tokenizer, root);
  std::printf("per-token exit steps equal to the CPU's, bf16 weights: %.4f\n", bf16);
  EXPECT_GE(bf16, 0.99);
}

// KV pages live in device memory and go back to the pool with the cache.
TEST(CudaKvTest, PagesAreDeviceMemoryAndReturnToThePool) {
  auto ckpt = model::LoadCheckpoint(Root() + "/tests/data/tiny");
  ASSERT_TRUE(ckpt.ok());
  CUDA_OR_SKIP(gpu, (*ckpt)->config, (*ckpt)->weights, "bf16");
  ASSERT_NE(gpu->page_memory(), nullptr);
  auto pool = gpu->NewPagePool();
  {
    auto cache = gpu->NewCache({}, pool.get());
    std::vector<int32_t> tokens = {1, 2, 3, 4, 5};
    ASSERT_TRUE(gpu->Forward(*cache, tokens, 4, nullptr, 1, 1.0).ok());
    EXPECT_GT(pool->bytes_in_use(), 0u);
    EXPECT_EQ(cache->bytes(), pool->bytes_in_use());
  }
  EXPECT_EQ(pool->bytes_in_use(), 0u);
}

}  // namespace
}  // namespace ponder::exec
