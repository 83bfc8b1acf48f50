// The CPU runtime against the PyTorch reference: logits of the committed tiny checkpoints
// (f32 with a tied head, bf16 with a separate lm_head; 1 prelude, 3 core, 2 coda layers)
// against goldens written by model/reference/make_goldens.py in float64.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "exec/cpu/cpu_model.h"
#include "model/checkpoint.h"

namespace ponder::exec::cpu {
namespace {

using nlohmann::json;

json ReadJson(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);
}

double RelL2(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

std::vector<double> Flatten(const json& rows) {
  std::vector<double> out;
  for (const auto& r : rows) {
    for (const auto& x : r) out.push_back(x.get<double>());
  }
  return out;
}

// Tolerance per depth. Up to r = 4 the bar, 1e-4. Deeper random-weight recurrences
// amplify f32 rounding geometrically with depth; the goldens' checkpoints damp the state
// path (adapter state columns x 0.5) so the measured error at r = 16 stays ~1e-6, and 1e-3
// leaves room for a change of summation order without hiding a wrong formula (a wrong
// RoPE, bias or norm moves the logits by 1e-1 or more).
double Tolerance(int64_t steps) { return steps <= 4 ? 1e-4 : 1e-3; }

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsMatchReference) {
  const std::string name = GetParam();
  auto ckpt = model::LoadCheckpoint(std::string(PONDER_TEST_DATA) + "/" + name);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  const json golden = ReadJson(std::string(PONDER_TEST_DATA) + "/goldens/" + name + ".json");
  ThreadPool pool(2);
  CpuModel model((*ckpt)->config, (*ckpt)->weights, &pool);
  const int64_t d = (*ckpt)->config.n_embd;
  ASSERT_GE(golden["cases"].size(), 10u);
  for (const auto& c : golden["cases"]) {
    const auto tokens = c["tokens"].get<std::vector<int32_t>>();
    const int64_t steps = c["steps"].get<int64_t>();
    std::vector<float> state;
    if (c["init"] == "given") {
      for (const auto& row : c["state"]) {
        for (const auto& x : row) state.push_back(x.get<float>());
      }
      ASSERT_EQ(state.size(), tokens.size() * d);
    }
    auto cache = model.NewCache();
    auto logits =
        model.Forward(*cache, tokens, steps, state.empty() ? nullptr : state.data(), 0, 0.0);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    const auto want = Flatten(c["logits"]);
    ASSERT_EQ(logits->size(), want.size()) << c["name"];
    const double err = RelL2(*logits, want);
    EXPECT_LT(err, Tolerance(steps)) << name << " " << c["name"];
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.3e", err);
    RecordProperty(c["name"].get<std::string>() + "_rel_l2", buf);
  }
}

TEST_P(GoldenTest, IncrementalDecodeMatchesReference) {
  const std::string name = GetParam();
  auto ckpt = model::LoadCheckpoint(std::string(PONDER_TEST_DATA) + "/" + name);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  const json golden = ReadJson(std::string(PONDER_TEST_DATA) + "/goldens/" + name + ".json");
  CpuModel model((*ckpt)->config, (*ckpt)->weights, nullptr);
  const int64_t v = (*ckpt)->config.padded_vocab_size;
  ASSERT_FALSE(golden["decode"].empty());
  for (const auto& c : golden["decode"]) {
    const auto tokens = c["tokens"].get<std::vector<int32_t>>();
    const int64_t prefill = c["prefill"].get<int64_t>();
    const int64_t steps = c["steps"].get<int64_t>();
    auto cache = model.NewCache();
    auto pre = model.Forward(*cache, std::span(tokens).first(prefill), steps, nullptr, 0, 0.0);
    ASSERT_TRUE(pre.ok());
    std::vector<float> got(pre->end() - v, pre->end());  // the last prefill row
    for (size_t i = prefill; i < tokens.size(); ++i) {
      auto one = model.Forward(*cache, std::span(tokens).subspan(i, 1), steps, nullptr, 0, 0.0);
      ASSERT_TRUE(one.ok());
      got.insert(got.end(), one->begin(), one->end());
    }
    EXPECT_LT(RelL2(got, Flatten(c["logits"])), Tolerance(steps)) << c["name"];
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GoldenTest, ::testing::Values("tiny", "tiny-bf16"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace ponder::exec::cpu
