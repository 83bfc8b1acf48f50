// The CUDA backend against the CPU executor (exec/cuda/). Every test that needs a device
// skips (GTEST_SKIP) when MakeBackend("cuda") reports none, or when this build has no CUDA
// backend, unless PONDER_REQUIRE_CUDA=1 (bench/gpu/run.sh sets it: there a missing device is
// a failure). The choice of backend itself is tested everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
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
  o.cuda_mma_rows = 33;  // refused before any device is looked for
  auto bad_rows = MakeBackend(o, (*ckpt)->config, (*ckpt)->weights);
  ASSERT_FALSE(bad_rows.ok());
  EXPECT_EQ(bad_rows.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_rows.status().message().find("33"), std::string::npos);
  o.cuda_mma_rows = -1;
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

// The weights a CUDA backend with bf16 storage computes with: the matrices rounded to bf16
// as CudaModel::Create rounds them (norms and biases stay f32). The views point into
// `storage`, or into the source where a matrix is bf16 already.
struct Bf16Matrices {
  std::deque<std::vector<uint16_t>> storage;
  model::Weights weights;
};

std::unique_ptr<Bf16Matrices> RoundMatricesToBf16(const model::Weights& src) {
  auto out = std::make_unique<Bf16Matrices>();
  out->weights = src;
  std::vector<std::pair<const void*, const void*>> rounded;  // a tied head is rounded once
  auto round = [&](TensorView& v) {
    if (v.empty() || v.dtype == DType::kBF16) return;
    for (const auto& [from, to] : rounded) {
      if (from == v.data) {
        v.data = to;
        v.dtype = DType::kBF16;
        return;
      }
    }
    std::vector<uint16_t>& b = out->storage.emplace_back(v.numel());
    for (int64_t i = 0; i < v.numel(); ++i) b[i] = F32ToBf16(v.At(i));
    rounded.emplace_back(v.data, b.data());
    v.data = b.data();
    v.dtype = DType::kBF16;
  };
  model::Weights& w = out->weights;
  for (TensorView* v : {&w.wte, &w.adapter, &w.lm_head}) round(*v);
  for (auto* blocks : {&w.prelude, &w.core, &w.coda}) {
    for (model::BlockWeights& b : *blocks) {
      for (TensorView* v : {&b.wqkv, &b.attn_proj, &b.mlp_fc, &b.mlp_proj}) round(*v);
    }
  }
  return out;
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
  // bf16 storage against the CPU on the same rounded weights: what differs is the
  // arithmetic, not the weights. (Against the f32 weights, the rounding of the weights
  // themselves shows: ponder-micro at r = 4 moves by NMSE up to 4.4e-4 on an H200.)
  const auto rounded = RoundMatricesToBf16(w);
  cpu::CpuModel cpu16(cfg, rounded->weights, nullptr);
  CUDA_OR_SKIP(gpu, cfg, w, "bf16");
  for (int64_t prompt : {1, 9, 17}) {
    for (int64_t r : {1, 4, 16}) CompareForward(cpu16, *gpu, prompt, r, 1e-4);
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
// A random checkpoint of `cfg` with an untied head (as Huginn-0125's).
ponder::testing::RandomModel Untied(model::Config cfg, DType dtype, uint64_t seed) {
  cfg.tie_embeddings = false;
  return ponder::testing::RandomModel(cfg, dtype, seed);
}

ponder::testing::RandomModel HuginnShaped(uint64_t seed) {
  return Untied(ponder::testing::SmallConfig(256, 4, 640, 2, 4, 2), DType::kBF16, seed);
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
#ifdef PONDER_HAVE_CUDA
  // (Decode steps with f32 weights run as graphs with cuBLAS's products.)
  EXPECT_TRUE(static_cast<cuda::CudaModel*>(gpu.get())->graphs())
      << "a graph capture failed (stderr says why)";
#endif
}

// `batch` sequences of one new token at position 0 on both backends: their caches, their
// chunks on each side, and token ids (mul * b + 5) % vocab.
struct TwinBatch {
  std::vector<std::unique_ptr<SequenceCache>> caches;
  std::vector<Chunk> cpu, gpu;
  std::vector<int32_t> tokens;
};

TwinBatch NewTwinBatch(Backend& cpu, Backend& gpu, int64_t batch, int64_t mul) {
  TwinBatch t;
  for (int64_t b = 0; b < batch; ++b) {
    t.caches.push_back(cpu.NewCache());
    t.cpu.push_back({t.caches.back().get(), 0, 1});
    t.caches.push_back(gpu.NewCache());
    t.gpu.push_back({t.caches.back().get(), 0, 1});
    t.tokens.push_back(static_cast<int32_t>((mul * b + 5) % cpu.config().vocab_size));
  }
  return t;
}

// Batched decode of 1 to 9, 16 and 32 sequences against the CPU, step by step, with each
// setting of the backend's own kernels: the defaults (GemvKernel up to 3 rows, cuBLAS above)
// with CUDA graphs and without, and with the small kernels' lean forms (norms in registers,
// RoPE and attention in one kernel); MmaKernel for 4 to 32 rows with programmatic dependent
// launch, with and without graphs, each with and without the lean kernels, and without the
// launch; GemvKernel up to 8 rows with 4 or 8 output rows per block; MmaKernel for every row
// count; every product in cuBLAS. With graphs on, cuBLAS's products are captured in the
// step's graph too, and no capture may fail.
// Between core steps the host changes part of the state, which the device must pick up
// rather than reuse its own copy, and reads logits, which must leave the state it holds as
// it was.
TEST(CudaBatchTest, BatchedCoreStepsMatchTheCpuAtEveryBatchSize) {
  ponder::testing::RandomModel rm = HuginnShaped(9);
  const model::Config& cfg = rm.config();
  cpu::CpuModel cpu(rm.config(), rm.weights(), nullptr);
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "bf16");
  const int64_t d = cfg.n_embd, v = cfg.padded_vocab_size;
  struct Setting {
    int64_t gemv_rows;
    int block_rows;
    int64_t mma_rows;
    bool graphs;
    bool pdl = true;
    bool lean = false;  // the small kernels' lean forms
  };
  for (const Setting setting :
       {Setting{3, 4, 0, true, false}, Setting{3, 4, 0, false, false},
        Setting{3, 4, 0, true, false, true}, Setting{3, 4, 32, true, true, true},
        Setting{3, 4, 32, false, true, true}, Setting{3, 4, 32, true}, Setting{3, 4, 32, false},
        Setting{3, 4, 32, true, false}, Setting{8, 4, 0, true, false},
        Setting{8, 8, 0, true, false}, Setting{0, 4, 32, true}, Setting{0, 4, 0, true, false}}) {
#ifdef PONDER_HAVE_CUDA
    auto* model = static_cast<cuda::CudaModel*>(gpu.get());
    model->set_gemv(setting.gemv_rows, setting.block_rows);
    model->set_mma(setting.mma_rows);
    model->set_graphs(setting.graphs);
    model->set_pdl(setting.pdl);
    model->set_lean_kernels(setting.lean);
#endif
    SCOPED_TRACE("gemv up to " + std::to_string(setting.gemv_rows) + " rows, " +
                 std::to_string(setting.block_rows) + " per block, mma up to " +
                 std::to_string(setting.mma_rows) + ", graphs " + (setting.graphs ? "on" : "off") +
                 ", pdl " + (setting.pdl ? "on" : "off") + ", lean kernels " +
                 (setting.lean ? "on" : "off"));
    for (int64_t batch : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 32}) {
      TwinBatch twin = NewTwinBatch(cpu, *gpu, batch, 13);
      std::vector<Chunk>&cc = twin.cpu, &gc = twin.gpu;
      std::vector<int32_t>& tokens = twin.tokens;
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
#ifdef PONDER_HAVE_CUDA
    EXPECT_EQ(model->graphs(), setting.graphs) << "a graph capture failed (stderr says why)";
#endif
  }
}

// MmaKernel at a width where k is split over many blocks (on an H200: 4 splits for qkv, 8
// for the adapter, 11 for the MLP's down projection; at the batched test's width, 1 or 2):
// core steps and logits of 4 to 32 sequences against the CPU, with and without
// programmatic dependent launch, graphs on.
TEST(CudaBatchTest, MmaKernelWithSplitKMatchesTheCpu) {
  ponder::testing::RandomModel rm =
      Untied(ponder::testing::SmallConfig(1024, 8, 2816, 1, 2, 1, 4096), DType::kBF16, 21);
  const model::Config& cfg = rm.config();
  cpu::CpuModel cpu(rm.config(), rm.weights(), nullptr);
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "bf16");
#ifdef PONDER_HAVE_CUDA
  auto* model = static_cast<cuda::CudaModel*>(gpu.get());
  const int64_t d = cfg.n_embd, v = rm.config().padded_vocab_size;
  model->set_gemv(0);
  model->set_mma(32);
  for (const bool pdl : {true, false}) {
    model->set_pdl(pdl);
    for (int64_t batch : {4, 8, 13, 32}) {
      SCOPED_TRACE("batch " + std::to_string(batch) + (pdl ? ", pdl" : ""));
      TwinBatch twin = NewTwinBatch(cpu, *gpu, batch, 97);
      std::vector<Chunk>&cc = twin.cpu, &gc = twin.gpu;
      const std::vector<int32_t>& tokens = twin.tokens;
      std::vector<float> e(batch * d), eg(batch * d), sc(batch * d);
      ASSERT_TRUE(cpu.Prelude(cc, tokens, e.data()).ok());
      ASSERT_TRUE(gpu->Prelude(gc, tokens, eg.data()).ok());
      EXPECT_LE(Nmse(eg, e), 1e-8) << "prelude";
      cpu.InitState(cc, 3, 0, 1.0, sc.data());
      std::vector<float> sg = sc;
      for (int64_t it = 1; it <= 4; ++it) {  // the graph is captured at 2 and 3, replayed at 4
        const std::vector<int64_t> its(batch, it);
        cpu.CoreStep(cc, its, e.data(), sc.data());
        gpu->CoreStep(gc, its, e.data(), sg.data());
        EXPECT_LE(Nmse(sg, sc), 1e-8) << "iteration " << it;
      }
      std::vector<float> lc(batch * v), lg(batch * v);
      cpu.Coda(cc, sc.data(), true, lc.data());
      gpu->Coda(gc, sg.data(), true, lg.data());
      EXPECT_LE(Nmse(lg, lc), 1e-8) << "coda";
    }
  }
  EXPECT_TRUE(model->graphs()) << "a graph capture failed (stderr says why)";
  model->set_gemv(cuda::CudaModel::kGemvDefaultRows);
  model->set_mma(cuda::CudaModel::kMmaDefaultRows);
  model->set_pdl(false);
#endif
}

// CoreSteps: several iterations in one call (on CUDA one graph, the state staying on the
// device in between) equal as many CoreStep calls on the CPU; over four tokens, so that
// each call's graph is captured and then replayed with new tables.
TEST(CudaBatchTest, CoreStepsInOneCallMatchTheCpu) {
  ponder::testing::RandomModel rm = HuginnShaped(13);
  const model::Config& cfg = rm.config();
  cpu::CpuModel cpu(rm.config(), rm.weights(), nullptr);
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "bf16");
  const int64_t d = cfg.n_embd, v = cfg.padded_vocab_size;
  // The defaults, then MmaKernel for 4 to 32 rows with programmatic dependent launch and the
  // lean small kernels.
  for (const bool candidate : {false, true}) {
#ifdef PONDER_HAVE_CUDA
    auto* model = static_cast<cuda::CudaModel*>(gpu.get());
    model->set_mma(candidate ? 32 : cuda::CudaModel::kMmaDefaultRows);
    model->set_pdl(candidate);
    model->set_lean_kernels(candidate);
#endif
    SCOPED_TRACE(candidate ? "mma, pdl and lean kernels" : "defaults");
    for (int64_t batch : {1, 3, 8}) {
      TwinBatch twin = NewTwinBatch(cpu, *gpu, batch, 1);
      std::vector<Chunk>&cc = twin.cpu, &gc = twin.gpu;
      for (int64_t token = 0; token < 4; ++token) {
        std::vector<int32_t> tokens;
        for (int64_t b = 0; b < batch; ++b) {
          cc[b].pos = gc[b].pos = token;
          tokens.push_back(static_cast<int32_t>((11 * b + 3 * token + 1) % cfg.vocab_size));
        }
        std::vector<float> e(batch * d), eg(batch * d), sc(batch * d);
        ASSERT_TRUE(cpu.Prelude(cc, tokens, e.data()).ok());
        ASSERT_TRUE(gpu->Prelude(gc, tokens, eg.data()).ok());
        cpu.InitState(cc, 5, 0, 1.0, sc.data());
        std::vector<float> sg = sc;
        // Iterations 1-5 in one call, then 6-8 in another.
        for (const auto& [first, steps] : {std::pair<int64_t, int64_t>{1, 5}, {6, 3}}) {
          const std::vector<int64_t> its(batch, first);
          for (int64_t j = 0; j < steps; ++j) {
            const std::vector<int64_t> it(batch, first + j);
            cpu.CoreStep(cc, it, e.data(), sc.data());
          }
          gpu->CoreSteps(gc, its, steps, e.data(), sg.data());
          EXPECT_LE(Nmse(sg, sc), 1e-8) << "batch " << batch << " token " << token << " iterations "
                                        << first << ".." << first + steps - 1;
        }
        EXPECT_EQ(gc[0].cache->depth(token), 8);
        std::vector<float> lc(batch * v), lg(batch * v);
        cpu.Coda(cc, sc.data(), true, lc.data());
        gpu->Coda(gc, sg.data(), true, lg.data());
        EXPECT_LE(Nmse(lg, lc), 1e-8) << "coda, batch " << batch << " token " << token;
      }
    }
#ifdef PONDER_HAVE_CUDA
    EXPECT_TRUE(model->graphs()) << "a graph capture failed (stderr says why)";
#endif
  }
}

// The lean small kernels do the streamed ones' arithmetic in the same order: a prefill of
// three tokens and three decode tokens of 1, 3 and 8 sequences, at a width whose rows the
// register norms hold in three slots per thread (2304 = 2 x 1024 + 256) with Huginn's head
// size, give bitwise the same states and logits either way (graphs on: the third decode
// token replays the second's graph).
TEST(CudaLeanKernelsTest, SameResultsAsTheStreamedKernels) {
  ponder::testing::RandomModel rm =
      Untied(ponder::testing::SmallConfig(2304, 24, 2048, 1, 2, 1, 4096), DType::kBF16, 29);
  const model::Config& cfg = rm.config();
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "bf16");
#ifdef PONDER_HAVE_CUDA
  auto* model = static_cast<cuda::CudaModel*>(gpu.get());
  const int64_t d = cfg.n_embd, v = rm.config().padded_vocab_size;
  for (int64_t batch : {1, 3, 8}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    // Every state and logit row the calls return, in order.
    auto run = [&](bool lean) {
      model->set_lean_kernels(lean);
      std::vector<float> out;
      std::vector<std::unique_ptr<SequenceCache>> caches;
      std::vector<Chunk> chunks;
      for (int64_t b = 0; b < batch; ++b) {
        caches.push_back(gpu->NewCache());
        chunks.push_back({caches.back().get(), 0, 3});
      }
      for (int64_t token = 0; token < 4; ++token) {  // the prompt, then one token at a time
        std::vector<int32_t> tokens;
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t i = 0; i < chunks[b].count; ++i) {
            tokens.push_back(static_cast<int32_t>((17 * b + 5 * token + i + 1) % cfg.vocab_size));
          }
        }
        const int64_t n = static_cast<int64_t>(tokens.size());
        std::vector<float> e(n * d), s(n * d), logits(batch * v);
        EXPECT_TRUE(gpu->Prelude(chunks, tokens, e.data()).ok());
        gpu->InitState(chunks, 3, 0, 1.0, s.data());
        const std::vector<int64_t> its(batch, 1);
        gpu->CoreSteps(chunks, its, 6, e.data(), s.data());
        gpu->Coda(chunks, s.data(), /*last_only=*/true, logits.data());
        out.insert(out.end(), e.begin(), e.end());
        out.insert(out.end(), s.begin(), s.end());
        out.insert(out.end(), logits.begin(), logits.end());
        for (int64_t b = 0; b < batch; ++b) {
          chunks[b].pos += chunks[b].count;
          chunks[b].count = 1;
        }
      }
      return out;
    };
    const std::vector<float> streamed = run(false), lean = run(true);
    ASSERT_EQ(lean.size(), streamed.size());
    size_t differ = 0;
    for (size_t i = 0; i < lean.size(); ++i) {
      differ += std::memcmp(&lean[i], &streamed[i], sizeof(float)) != 0;
    }
    EXPECT_EQ(differ, 0u) << "of " << lean.size() << " values; NMSE " << Nmse(lean, streamed)
                          << " (a small NMSE means the compiler rounded differently in one "
                             "form, not that a lean kernel is wrong)";
  }
  EXPECT_TRUE(model->graphs()) << "a graph capture failed (stderr says why)";
  model->set_lean_kernels(false);
#endif
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
  // f32 and bf16 weights, each with the defaults and with the candidate settings (the logit
  // rules' values computed on the device, programmatic dependent launch, the lean small
  // kernels, MmaKernel up to 32 rows; the other tests check each on its own).
  for (const std::string dtype : {"f32", "bf16"}) {
    CUDA_OR_SKIP(gpu, (*ckpt)->config, (*ckpt)->weights, dtype);
    for (const bool candidates : {false, true}) {
#ifdef PONDER_HAVE_CUDA
      auto* model = static_cast<cuda::CudaModel*>(gpu.get());
      model->set_device_signals(candidates);
      model->set_pdl(candidates);
      model->set_lean_kernels(candidates);
      model->set_mma(candidates ? 32 : cuda::CudaModel::kMmaDefaultRows);
#endif
      const double agree = ExitAgreement(cpu, *gpu, *(*ckpt)->tokenizer, root);
      std::printf("per-token exit steps equal to the CPU's, %s weights, %s: %.4f\n", dtype.c_str(),
                  candidates ? "candidate settings" : "defaults", agree);
      EXPECT_GE(agree, 0.99) << dtype << (candidates ? ", candidate settings" : ", defaults");
    }
  }
}

// The logit rules' values computed on the device equal the host's on the same logits (to
// double rounding; argmax exactly), check after check for two sequences, one of which
// starts a new token; LastLogits gives the same rows either way.
TEST(CudaSignalsTest, DeviceValuesMatchTheHostsOnTheSameLogits) {
  ponder::testing::RandomModel rm =
      Untied(ponder::testing::SmallConfig(256, 4, 640, 2, 4, 2, 8192), DType::kF32, 17);
  const model::Config& cfg = rm.config();
  CUDA_OR_SKIP(gpu, rm.config(), rm.weights(), "f32");
#ifdef PONDER_HAVE_CUDA
  auto* model = static_cast<cuda::CudaModel*>(gpu.get());
  const int64_t d = cfg.n_embd, v = rm.config().padded_vocab_size;
  for (const policy::ExitRule rule :
       {policy::ExitRule::kKl, policy::ExitRule::kMinpKl, policy::ExitRule::kEntropyDiff,
        policy::ExitRule::kArgmaxStability}) {
    SCOPED_TRACE(policy::ExitRuleName(rule));
    auto c1 = gpu->NewCache(), c2 = gpu->NewCache();
    std::vector<float> s1, s2;
    const std::vector<int32_t> t1 = {5, 900, 17}, t2 = {8000, 3, 44, 1000, 7};
    ASSERT_TRUE(gpu->Forward(*c1, t1, 2, nullptr, 1, 1.0, &s1).ok());
    ASSERT_TRUE(gpu->Forward(*c2, t2, 3, nullptr, 2, 1.0, &s2).ok());
    const Chunk chunks[] = {{c1.get(), 0, 3}, {c2.get(), 0, 5}};
    std::vector<float> s = s1;
    s.insert(s.end(), s2.begin(), s2.end());
    auto h1 = gpu->NewLogitHistory(), h2 = gpu->NewLogitHistory();  // host
    auto g1 = gpu->NewLogitHistory(), g2 = gpu->NewLogitHistory();  // device
    for (auto* h : {h1.get(), h2.get(), g1.get(), g2.get()}) h->Reset();
    for (int check = 0; check < 4; ++check) {
      if (check == 3) {
        h1->Reset();
        g1->Reset();
      }
      for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
        s[i] += 0.05f * std::sin(0.1f * static_cast<float>(i + check * d));
      }
      const size_t both[] = {0, 1};
      double host[2], dev[2];
      std::vector<float> lh(2 * v), ld(2 * v);
      model->set_device_signals(false);
      const LogitCheck hc[] = {{h1.get(), rule}, {h2.get(), rule}};
      model->CodaChecks(chunks, s.data(), hc, host);
      model->LastLogits(both, lh.data());
      model->set_device_signals(true);
      const LogitCheck gc[] = {{g1.get(), rule}, {g2.get(), rule}};
      model->CodaChecks(chunks, s.data(), gc, dev);
      model->LastLogits(both, ld.data());
      EXPECT_EQ(ld, lh) << "check " << check;
      for (int b = 0; b < 2; ++b) {
        if (rule == policy::ExitRule::kArgmaxStability) {
          EXPECT_EQ(dev[b], host[b]) << "check " << check << " sequence " << b;
        } else {
          EXPECT_NEAR(dev[b], host[b], 1e-9 * std::max(1.0, std::abs(host[b])))
              << "check " << check << " sequence " << b;
        }
      }
    }
  }
  model->set_device_signals(false);
#endif
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
