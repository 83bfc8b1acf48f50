// The cost model against independent counts: hand arithmetic from the Huginn-0125 shapes
// (reference/huginn.md §1-2), the bytes of the bound weight tensors, and the multiply-adds
// the CPU forward pass actually does (exec/cpu/madd_counter.h) on the bundled ponder-micro
// and the test checkpoints.

#include "telemetry/cost_model.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "exec/adaptive.h"
#include "exec/cost.h"
#include "exec/cpu/cpu_model.h"
#include "exec/cpu/madd_counter.h"
#include "exec/generator.h"
#include "model/checkpoint.h"
#include "policy/plan.h"

namespace ponder::telemetry {
namespace {

ModelDims HuginnDims() {
  ModelDims d;
  d.n_embd = 5280;
  d.n_heads = d.n_kv_heads = 55;
  d.head_dim = 96;
  d.intermediate_size = 17920;
  d.padded_vocab_size = 65536;
  d.n_prelude = 2;
  d.n_core = 4;
  d.n_coda = 2;
  d.qk_bias = true;
  d.weight_bytes_per_param = 4.0;
  return d;
}

TEST(CostModelTest, HuginnShapesByHand) {
  const CostModel cm(HuginnDims());
  // huginn.md §1: one block = 395,398,080 parameters, of which 4 norms (4 x 5280) and the
  // qk bias (2 x 55 x 96) are not matrices; a multiply-add per matrix parameter per row.
  const double block_params = 395398080.0;
  const double block_matrix = block_params - 4 * 5280 - 2 * 55 * 96;
  EXPECT_DOUBLE_EQ(cm.Layer(1).flops, 2 * block_matrix + 4.0 * 1 * 55 * 96);
  EXPECT_DOUBLE_EQ(cm.Layer(4096).flops, 2 * block_matrix + 4.0 * 4096 * 55 * 96);
  EXPECT_DOUBLE_EQ(cm.Layer(7).weight_bytes, 4 * block_params);
  EXPECT_DOUBLE_EQ(cm.Layer(7).kv_bytes, 2.0 * 7 * 5280 * 4);
  // The adapter: 55,756,800 parameters ([5280, 10560]).
  const double adapter = 55756800.0;
  EXPECT_DOUBLE_EQ(cm.CoreIteration(1).flops, 2 * adapter + 4 * cm.Layer(1).flops);
  EXPECT_DOUBLE_EQ(cm.CoreIteration(1).weight_bytes, 4 * (adapter + 4 * block_params));
  // Head: wte / lm_head is 346,030,080 parameters.
  EXPECT_DOUBLE_EQ(cm.Head().flops, 2 * 346030080.0);
  EXPECT_DOUBLE_EQ(cm.Head().weight_bytes, 4 * (346030080.0 + 5280));
  EXPECT_DOUBLE_EQ(cm.Embedding().flops, 0.0);
  EXPECT_DOUBLE_EQ(cm.LatentCheck().flops, 4.0 * 5280);
  // One token at r = 32 with its context of 1: 2 + 4 x 32 + 2 = 132 layers, 32 adapters,
  // the head: ~108.6 GFLOPs, i.e. ~54.3e9 "materialized" parameters (2 FLOPs each).
  const double token =
      132 * (2 * block_matrix + 4.0 * 55 * 96) + 32 * 2 * adapter + 2 * 346030080.0;
  EXPECT_DOUBLE_EQ(cm.Token(1, 32).flops, token);
  EXPECT_NEAR(cm.Token(1, 32).flops / 2 / 1e9, 54.32, 0.01);
  // A logit check is one coda + head pass.
  EXPECT_DOUBLE_EQ(cm.LogitCheck(100).flops, 2 * cm.Layer(100).flops + cm.Head().flops);
}

TEST(CostModelTest, PassesSumTheirRowsAndChecksAreExtra) {
  const CostModel cm(HuginnDims());
  // A prefill pass of 5 rows at positions 3..7 = the sum of 5 one-row tokens, except that
  // weights are read once and the head runs on the last row only.
  PassWork p;
  p.position = 3;
  p.rows = 5;
  p.steps = 6;
  double rows = 0;
  for (int64_t ctx = 4; ctx <= 8; ++ctx) {
    rows += cm.Prelude(ctx).flops + 6 * cm.CoreIteration(ctx).flops + cm.Coda(ctx).flops;
  }
  EXPECT_DOUBLE_EQ(cm.Pass(p).flops, rows + cm.Head().flops);
  EXPECT_DOUBLE_EQ(cm.Pass(p).weight_bytes, 5 * cm.Embedding().weight_bytes +
                                                cm.Prelude(1).weight_bytes +
                                                6 * cm.CoreIteration(1).weight_bytes +
                                                cm.Coda(1).weight_bytes + cm.Head().weight_bytes);
  // Checks: 3 logit checks, the last one giving the output -> 2 extra coda + head passes
  // (over the pass's 5 rows, head on the last); 4 latent checks.
  p.logit_checks = 3;
  p.latent_checks = 4;
  p.output_from_check = true;
  Cost checks;
  const Cost pass = cm.Pass(p, &checks);
  double coda_rows = 0;
  for (int64_t ctx = 4; ctx <= 8; ++ctx) coda_rows += cm.Coda(ctx).flops;
  EXPECT_DOUBLE_EQ(checks.flops, 2 * (coda_rows + cm.Head().flops) + 4 * cm.LatentCheck().flops);
  EXPECT_DOUBLE_EQ(pass.flops, rows + cm.Head().flops);  // checks are not in the pass
  p.output_from_check = false;
  cm.Pass(p, &checks);
  EXPECT_DOUBLE_EQ(checks.flops, 3 * (coda_rows + cm.Head().flops) + 4 * cm.LatentCheck().flops);

  // FixedPasses: the prompt, then one row per later token at the next positions.
  const std::vector<int64_t> decode = {2, 9};
  const auto passes = CostModel::FixedPasses(10, 4, decode);
  ASSERT_EQ(passes.size(), 3u);
  EXPECT_EQ(passes[0].rows, 10);
  EXPECT_EQ(passes[1].position, 10);
  EXPECT_EQ(passes[2].position, 11);
  EXPECT_EQ(passes[2].steps, 9);
  const RequestCost req = cm.Request(passes);
  EXPECT_DOUBLE_EQ(req.decode.flops, cm.Token(11, 2).flops + cm.Token(12, 9).flops);
  EXPECT_DOUBLE_EQ(req.checks.flops, 0.0);
  EXPECT_EQ(req.rows, 12);
  EXPECT_EQ(req.steps, 15);
  EXPECT_DOUBLE_EQ(req.total().flops, req.prefill.flops + req.decode.flops);
}

TEST(CostModelTest, RejectsBadDims) {
  ModelDims d = HuginnDims();
  d.head_dim = 0;
  auto cm = CostModel::Create(d);
  ASSERT_FALSE(cm.ok());
  EXPECT_NE(cm.status().message().find("head_dim"), std::string::npos);
  d = HuginnDims();
  d.weight_bytes_per_param = 0;
  EXPECT_FALSE(CostModel::Create(d).ok());
  EXPECT_TRUE(CostModel::Create(HuginnDims()).ok());
}

// ---- Against the CPU forward pass and the bound weights.

struct ModelCase {
  const char* name;
  std::string dir;
};

std::vector<ModelCase> Models() {
  return {{"ponder-micro", std::string(PONDER_SOURCE_DIR) + "/model/zoo/ponder-micro"},
          {"tiny", std::string(PONDER_TEST_DATA) + "/tiny"},
          {"tiny-bf16", std::string(PONDER_TEST_DATA) + "/tiny-bf16"}};
}

class ForwardCountTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    model::LoadOptions lo;
    lo.require_tokenizer = false;
    auto ckpt = model::LoadCheckpoint(GetParam().dir, lo);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    ckpt_ = std::move(*ckpt);
    pool_ = std::make_unique<exec::cpu::ThreadPool>(2);
    model_ = std::make_unique<exec::cpu::CpuModel>(ckpt_->config, ckpt_->weights, pool_.get());
    cm_ = std::make_unique<CostModel>(exec::DimsOf(ckpt_->config, ckpt_->weights));
  }
  std::vector<int32_t> Tokens(int64_t n) const {
    std::vector<int32_t> t(n);
    for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((7 * i + 3) % 200);
    return t;
  }
  // Runs `plan` on an n-token prompt under the multiply-add counter and checks the cost
  // model's passes against it: check counts equal the runtime's, FLOPs within `tol` of the
  // counted ones (latent checks, which the kernels do not do, taken out).
  void ExpectPassesMatchCount(const policy::DepthPlan& plan, int64_t n, double tol,
                              const std::string& what) {
    exec::AdaptiveOptions ao;
    ao.max_tokens = 6;
    exec::cpu::ScopedMaddCounter counter;
    auto res = exec::GenerateAdaptive(*model_, Tokens(n), plan, ao);
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    const double measured = 2.0 * static_cast<double>(counter.Read().total());
    const auto passes = exec::PassesOf(*res, n);
    ASSERT_EQ(passes.size(), res->tokens.size());
    const RequestCost rc = cm_->Request(passes);
    int64_t logit = 0, latent = 0;
    for (const auto& p : passes) {
      logit += p.logit_checks;
      latent += p.latent_checks;
    }
    EXPECT_EQ(logit, res->checks.logit_checks) << what;
    EXPECT_EQ(latent, res->checks.latent_checks) << what;
    // The phases split the passes exactly (what /metrics reports by phase).
    const double passes_flops = (rc.prefill + rc.decode).flops;
    EXPECT_NEAR(rc.phases.prelude.flops + rc.phases.core.flops + rc.phases.coda_head.flops,
                passes_flops, 1e-9 * passes_flops)
        << what;
    EXPECT_GT(rc.phases.core.flops, 0) << what;
    const double predicted = rc.total().flops - latent * cm_->LatentCheck().flops;
    EXPECT_LT(std::abs(predicted - measured) / measured, tol)
        << GetParam().name << " " << what << ": model " << predicted << " measured " << measured;
  }
  std::unique_ptr<model::Checkpoint> ckpt_;
  std::unique_ptr<exec::cpu::ThreadPool> pool_;
  std::unique_ptr<exec::cpu::CpuModel> model_;
  std::unique_ptr<CostModel> cm_;
};

// The acceptance bound: the model within 1 % of the forward pass's count.
constexpr double kTol = 0.01;

double RelErr(double model, double measured) { return std::abs(model - measured) / measured; }

// Weight bytes per phase equal the bytes of the tensors the phase reads.
TEST_P(ForwardCountTest, WeightBytesAreTheTensorsBytes) {
  const model::Weights& w = ckpt_->weights;
  auto block_bytes = [](const model::BlockWeights& b) {
    double n = 0;
    for (const TensorView* t : {&b.norm_1, &b.norm_2, &b.norm_3, &b.norm_4, &b.wqkv, &b.qk_bias,
                                &b.attn_proj, &b.mlp_fc, &b.mlp_proj}) {
      n += t->empty() ? 0 : static_cast<double>(t->bytes());
    }
    return n;
  };
  double prelude = 0, core = static_cast<double>(w.adapter.bytes()), coda = w.ln_f.bytes();
  for (const auto& b : w.prelude) prelude += block_bytes(b);
  for (const auto& b : w.core) core += block_bytes(b);
  for (const auto& b : w.coda) coda += block_bytes(b);
  EXPECT_DOUBLE_EQ(cm_->Prelude(5).weight_bytes, prelude);
  EXPECT_DOUBLE_EQ(cm_->CoreIteration(5).weight_bytes, core);
  EXPECT_DOUBLE_EQ(cm_->Coda(5).weight_bytes, coda);
  EXPECT_DOUBLE_EQ(cm_->Head().weight_bytes,
                   static_cast<double>(w.lm_head.bytes() + w.ln_f.bytes()));
  EXPECT_DOUBLE_EQ(cm_->Embedding().weight_bytes,
                   static_cast<double>(w.wte.bytes()) / static_cast<double>(w.wte.shape[0]));
}

// One token at r iterations and context L: the model's FLOPs against 2 x the multiply-adds
// the forward pass did (matrix products and causal attention).
TEST_P(ForwardCountTest, OneTokenMatchesTheForwardPass) {
  const int64_t block = ckpt_->config.block_size;
  for (int64_t r : {1, 4, 32}) {
    for (int64_t context : {int64_t{1}, int64_t{2}, int64_t{9}, block / 2, block - 1}) {
      auto cache = model_->NewCache();
      const auto tokens = Tokens(context);
      if (context > 1) {  // the earlier tokens, uncounted
        std::span<const int32_t> before(tokens.data(), context - 1);
        ASSERT_TRUE(model_->Forward(*cache, before, r, nullptr, 1, 1.0).ok());
      }
      exec::cpu::ScopedMaddCounter counter;
      ASSERT_TRUE(model_
                      ->Forward(*cache, std::span<const int32_t>(&tokens[context - 1], 1), r,
                                nullptr, 1, 1.0)
                      .ok());
      const double measured = 2.0 * static_cast<double>(counter.Read().total());
      const double predicted = cm_->Token(context, r).flops;
      EXPECT_LT(RelErr(predicted, measured), kTol)
          << GetParam().name << " r=" << r << " L=" << context << ": model " << predicted
          << " measured " << measured;
      // The attention term alone, as a check that contexts are counted the same way.
      const auto& d = cm_->dims();
      const double layers = d.n_prelude + r * d.n_core + d.n_coda;
      EXPECT_DOUBLE_EQ(2.0 * counter.Read().attention,
                       layers * 4.0 * context * d.n_heads * d.head_dim);
    }
  }
}

// Whole requests: a fixed-depth generation (prefill of the prompt, then one row per token)
// and adaptive ones, against the forward passes GenerateAdaptive ran.
TEST_P(ForwardCountTest, RequestsMatchTheForwardPasses) {
  const int64_t n = 7;
  const auto prompt = Tokens(n);
  for (int64_t r : {1, 4, 32}) {
    exec::GenerateOptions go;
    go.steps = r;
    go.max_tokens = 5;
    exec::cpu::ScopedMaddCounter counter;
    auto res = exec::Generate(*model_, prompt, go);
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    ASSERT_EQ(res->tokens.size(), 5u);
    const double measured = 2.0 * static_cast<double>(counter.Read().total());
    const std::vector<int64_t> decode(4, r);
    const RequestCost rc = cm_->Request(CostModel::FixedPasses(n, r, decode));
    EXPECT_LT(RelErr(rc.total().flops, measured), kTol)
        << GetParam().name << " r=" << r << ": model " << rc.total().flops << " measured "
        << measured;
  }
  // Per-token exits: a logit rule checked every 3rd step (each check one coda + head, the
  // last check's logits reused as the output when it falls on the exit step) and a latent
  // rule (checks not done by the kernels: subtracted from the model's count).
  for (policy::ExitRule rule :
       {policy::ExitRule::kKl, policy::ExitRule::kLatentDiff, policy::ExitRule::kArgmaxStability}) {
    policy::DepthPlan plan;
    plan.min_steps = 2;
    plan.max_steps = plan.class_max_steps = 12;
    plan.rule = rule;
    plan.threshold = rule == policy::ExitRule::kArgmaxStability ? 2 : 0.05;
    plan.check_every = 3;
    plan.check_from = 2;
    ExpectPassesMatchCount(plan, n, kTol, "rule " + std::string(policy::ExitRuleName(rule)));
  }
}

// A gated logit rule: each token reports its own gate openings, so the FLOPs are exact too
// (a prefill check costs a coda over every prompt row, a decode check over one).
TEST_P(ForwardCountTest, GatedChecksMatchTheForwardPasses) {
  const int64_t n = 7;
  for (double gate : {0.05, 0.3, 1.0, 10.0}) {
    policy::DepthPlan plan;
    plan.min_steps = 2;
    plan.max_steps = plan.class_max_steps = 16;
    plan.rule = policy::ExitRule::kKl;
    plan.threshold = 1e-3;
    plan.check_every = 2;
    plan.check_from = 2;
    plan.gate_latent_below = gate;
    ExpectPassesMatchCount(plan, n, kTol, "gate " + std::to_string(gate));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ForwardCountTest, ::testing::ValuesIn(Models()),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           for (char& c : n)
                             c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

}  // namespace
}  // namespace ponder::telemetry
