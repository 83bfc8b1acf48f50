// The CUDA backend against the CPU executor (exec/cuda/). Every test that needs a device
// skips (GTEST_SKIP) when MakeBackend("cuda") reports none, or when this build has no CUDA
// backend; the choice of backend itself is tested everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "exec/backend.h"
#include "exec/cpu/cpu_model.h"
#include "model/checkpoint.h"
#include "policy/profile.h"
#include "scenarios/replay.h"
#include "scenarios/workload.h"
#include "tests/random_model.h"

namespace ponder::exec {
namespace {

TEST(MakeBackendTest, ChoosesByNameAndRejectsUnknownKinds) {
  auto ckpt = model::LoadCheckpoint(std::string(PONDER_TEST_DATA) + "/tiny");
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

#define CUDA_OR_SKIP(var, config, weights, dtype)                  \
  std::string why_##var;                                           \
  auto var = CudaOrSkipReason(config, weights, dtype, &why_##var); \
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

// Rows of [rows, v] logits whose argmax (over the first `vocab` entries) agrees.
int64_t ArgmaxAgree(const std::vector<float>& a, const std::vector<float>& b, int64_t v,
                    int64_t vocab) {
  int64_t agree = 0;
  for (size_t r = 0; r * v < a.size(); ++r) {
    auto am = std::max_element(a.begin() + r * v, a.begin() + r * v + vocab) - (a.begin() + r * v);
    auto bm = std::max_element(b.begin() + r * v, b.begin() + r * v + vocab) - (b.begin() + r * v);
    agree += am == bm;
  }
  return agree;
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
    EXPECT_EQ(ArgmaxAgree(*a, *b, v, c.vocab_size), rows) << "r=" << r << " call " << step;
    // Next call: the CPU's greedy token (both sides continue from the same text).
    const float* last = a->data() + (rows - 1) * v;
    tokens = {static_cast<int32_t>(std::max_element(last, last + c.vocab_size) - last)};
  }
}

class CudaParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaParityTest, LogitsMatchTheCpuOnCommittedCheckpoints) {
  auto ckpt = model::LoadCheckpoint(std::string(PONDER_SOURCE_DIR) + "/" + GetParam());
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
// bias, untied head), bf16, at a width that fits a test.
TEST(CudaParityHuginnShapeTest, RandomBf16Checkpoint) {
  model::Config cfg = ponder::testing::SmallConfig(256, 4, 640, 2, 4, 2);
  cfg.tie_embeddings = false;
  ponder::testing::RandomModel rm(cfg, DType::kBF16, 5);
  cpu::CpuModel cpu(rm.config(), rm.weights(), nullptr);
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "bf16");
  for (int64_t r : {1, 8, 32}) CompareForward(cpu, *gpu, 12, r, 1e-4);
}

// Per-token exits on the bundled model's scenario workloads with their profiles: the steps
// of each token agree with the CPU's on at least 99% of tokens.
TEST(CudaExitParityTest, PerTokenExitStepsAgreeOnScenarioWorkloads) {
  const std::string root = PONDER_SOURCE_DIR;
  auto ckpt = model::LoadCheckpoint(root + "/model/zoo/ponder-micro");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  cpu::CpuModel cpu((*ckpt)->config, (*ckpt)->weights, nullptr);
  CUDA_OR_SKIP(gpu, (*ckpt)->config, (*ckpt)->weights, "bf16");
  int64_t tokens = 0, agree = 0;
  for (const char* domain : {"education", "finance", "chat"}) {
    auto items = scenarios::LoadWorkload(root + "/scenarios/workloads/" + domain + ".jsonl");
    ASSERT_TRUE(items.ok()) << items.status().ToString();
    auto profile = policy::LoadProfile(root + "/scenarios/profiles/" + domain + ".json");
    ASSERT_TRUE(profile.ok()) << profile.status().ToString();
    scenarios::ReplayOptions o;
    o.profile = &*profile;
    auto a = scenarios::Replay(cpu, *(*ckpt)->tokenizer, *items, o);
    auto b = scenarios::Replay(*gpu, *(*ckpt)->tokenizer, *items, o);
    ASSERT_TRUE(a.ok() && b.ok());
    const auto& sa = a->total.token_steps;
    const auto& sb = b->total.token_steps;
    tokens += static_cast<int64_t>(std::max(sa.size(), sb.size()));
    for (size_t i = 0; i < std::min(sa.size(), sb.size()); ++i) agree += sa[i] == sb[i];
    EXPECT_NEAR(a->total.accuracy(), b->total.accuracy(), 0.01) << domain;
  }
  ASSERT_GT(tokens, 0);
  EXPECT_GE(static_cast<double>(agree) / tokens, 0.99) << agree << " of " << tokens;
}

// KV pages live in device memory and go back to the pool with the cache.
TEST(CudaKvTest, PagesAreDeviceMemoryAndReturnToThePool) {
  auto ckpt = model::LoadCheckpoint(std::string(PONDER_TEST_DATA) + "/tiny");
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
