// The calibration runner on the bundled model (model/zoo/ponder-micro) with a few items, and
// the in-place profile edit that `ponder calibrate` writes thresholds with.

#include "scenarios/calibrate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "exec/cpu/cpu_model.h"
#include "model/checkpoint.h"
#include "policy/profile.h"
#include "scenarios/profile_edit.h"

namespace ponder::scenarios {
namespace {

WorkloadItem Item(const std::string& prompt, const std::string& expected, const std::string& family,
                  const std::string& task_class, int line) {
  WorkloadItem it;
  it.id = "t-" + std::to_string(line);
  it.prompt = prompt;
  it.expected = expected;
  it.family = family;
  it.task_class = task_class;
  it.line = line;
  return it;
}

// Easy held-out-style prompts; the last one has no class and is routed by the profile's
// keyword rule ("explain" -> concept_explanation).
std::vector<WorkloadItem> EasyItems() {
  return {Item("qhbzt|", "qhbzt", "copy", "concept_explanation", 1),
          Item("a3q7x1?q", "7", "lookup", "concept_explanation", 2),
          Item("mwkdre|", "mwkdre", "copy", "concept_explanation", 3),
          Item("k2p9?k", "2", "lookup", "concept_explanation", 4),
          Item("zzyxv|", "zzyxv", "copy", "concept_explanation", 5),
          Item("b5c1d8e0?d", "8", "lookup", "concept_explanation", 6),
          Item("explain|", "explain", "copy", "", 7)};
}

class CalibrateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto ckpt = model::LoadCheckpoint(std::string(PONDER_SOURCE_DIR) + "/model/zoo/ponder-micro");
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    ckpt_ = std::move(*ckpt).release();
    model_ = new exec::cpu::CpuModel(ckpt_->config, ckpt_->weights, nullptr);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete ckpt_;
  }
  static policy::DomainProfile Education() {
    auto p =
        policy::LoadProfile(std::string(PONDER_SOURCE_DIR) + "/scenarios/profiles/education.json");
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return *p;
  }
  static model::Checkpoint* ckpt_;
  static exec::cpu::CpuModel* model_;
};
model::Checkpoint* CalibrateTest::ckpt_ = nullptr;
exec::cpu::CpuModel* CalibrateTest::model_ = nullptr;

// Few tokens cannot certify 0.99 at delta 0.05 (299 agreeing tokens are needed): the class
// is reported as not calibrated, keeps its threshold, and no candidate is run.
TEST_F(CalibrateTest, TooFewTokensIsNotCalibrated) {
  const policy::DomainProfile profile = Education();
  CalibrateOptions options;
  int reference_items = 0, candidate_items = 0;
  options.progress = [&](const CalibrationProgress& p) {
    (p.candidate < 0 ? reference_items : candidate_items)++;
  };
  auto report = Calibrate(*model_, *ckpt_->tokenizer, profile, EasyItems(), options);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->classes.size(), 1u);  // the other classes have no items
  EXPECT_EQ(report->skipped.size(), 2u);
  const ClassCalibration& c = report->classes[0];
  EXPECT_EQ(c.task_class, "concept_explanation");
  EXPECT_EQ(c.items, 7);  // the unlabelled item was routed here
  EXPECT_FALSE(c.calibrated());
  EXPECT_TRUE(c.evaluated.empty());
  EXPECT_NE(c.note.find("299 all agreeing are needed"), std::string::npos) << c.note;
  EXPECT_EQ(c.threshold(), c.old_threshold);
  EXPECT_DOUBLE_EQ(c.reference_steps_per_token, 8.0);  // rule none at max_steps 8
  EXPECT_EQ(reference_items, 7);
  EXPECT_EQ(candidate_items, 0);
}

// A loose target that a handful of tokens can certify: the chosen threshold is a candidate,
// the tested candidates are a prefix of the grid that stops at the first failure, and the
// chosen one's agreement is at least the target.
TEST_F(CalibrateTest, ChoosesACertifiedCandidate) {
  const policy::DomainProfile profile = Education();
  CalibrateOptions options;
  options.target = {0.8, 0.2};
  options.grids["concept_explanation"] = {1e-6, 1e-4, 1e-2, 1.0, 100.0};
  auto report = Calibrate(*model_, *ckpt_->tokenizer, profile, EasyItems(), options);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->classes.size(), 1u);
  const ClassCalibration& c = report->classes[0];
  ASSERT_FALSE(c.evaluated.empty());
  EXPECT_GT(c.tokens, 7);  // every answer has its end marker at least
  for (size_t i = 0; i < c.evaluated.size(); ++i) {
    EXPECT_EQ(c.evaluated[i].test.count.threshold, c.grid[i]);
    EXPECT_EQ(c.evaluated[i].test.count.total, c.tokens);
    EXPECT_LE(c.evaluated[i].test.count.agree, c.tokens);
    if (i + 1 < c.evaluated.size()) {
      EXPECT_TRUE(c.evaluated[i].test.rejected) << i;
    }
    // Exits at the class's min_steps at the earliest, at its max_steps at the latest.
    const policy::TaskClass* tc = profile.FindClass("concept_explanation");
    ASSERT_NE(tc, nullptr);
    EXPECT_GE(c.evaluated[i].mean_steps_per_token(), tc->min_steps);
    EXPECT_LE(c.evaluated[i].mean_steps_per_token(), tc->max_steps);
  }
  if (c.calibrated()) {
    const CandidateResult& chosen = c.evaluated[c.chosen];
    EXPECT_NE(std::find(c.grid.begin(), c.grid.end(), c.threshold()), c.grid.end());
    EXPECT_GE(chosen.agreement(), options.target.target_agreement);
    EXPECT_LE(chosen.test.p_value, options.target.delta);
    EXPECT_EQ(c.chosen + 1 == static_cast<int>(c.evaluated.size()),
              c.evaluated.back().test.rejected);
  } else {
    EXPECT_FALSE(c.note.empty());
  }
}

// argmax-stability with a count that can only complete at the last check behaves as no
// early exit: it reproduces the reference exactly (agreement 1, max steps).
TEST_F(CalibrateTest, LongestStreakReproducesTheReference) {
  const std::string text = R"({
    "name": "t", "pricing": {"per_device_second": 1.0}, "default_class": "c",
    "task_classes": [{"name": "c", "min_steps": 2, "max_steps": 8,
                      "exit": {"rule": "argmax-stability", "threshold": 3, "check_from": 2}}]})";
  auto profile = policy::ParseProfile(text, "t.json");
  ASSERT_TRUE(profile.ok()) << profile.status().ToString();
  // Checks at 2..8: 7 checks, so the grid starts at 6, which only converges at step 8.
  EXPECT_EQ(policy::CandidateThresholds(policy::ExitRule::kArgmaxStability,
                                        policy::ChecksPerToken(profile->task_classes[0])),
            (std::vector<double>{6, 5, 4, 3, 2, 1}));
  CalibrateOptions options;
  options.target = {0.5, 0.3};
  options.grids["c"] = {6};
  auto report = Calibrate(*model_, *ckpt_->tokenizer, *profile, EasyItems(), options);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  const ClassCalibration& c = report->classes.at(0);
  EXPECT_EQ(c.items, 7);  // no item names class "c": all go to the default class
  ASSERT_EQ(c.evaluated.size(), 1u);
  EXPECT_EQ(c.evaluated[0].test.count.agree, c.tokens);
  EXPECT_DOUBLE_EQ(c.evaluated[0].mean_steps_per_token(), 8.0);
  EXPECT_TRUE(c.calibrated());
  EXPECT_EQ(c.threshold(), 6);
}

TEST_F(CalibrateTest, ErrorsAreMessagesNotAborts) {
  const policy::DomainProfile profile = Education();
  struct Case {
    std::string name;
    CalibrateOptions options;
    std::string needle;
  } cases[3];
  cases[0].name = "unknown class";
  cases[0].options.classes = {"concept_explanaton"};
  cases[0].needle = "no class \"concept_explanaton\" (classes: concept_explanation,";
  cases[1].name = "class without items";
  cases[1].options.classes = {"complex_problem_solving"};
  cases[1].needle = "complex_problem_solving: no items";
  cases[2].name = "bad target";
  cases[2].options.target = {1.0, 0.05};
  cases[2].needle = "target agreement must be in (0, 1)";
  for (const Case& c : cases) {
    auto r = Calibrate(*model_, *ckpt_->tokenizer, profile, EasyItems(), c.options);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos)
        << c.name << ": " << r.status().message();
  }
  CalibrateOptions bad_grid;
  bad_grid.grids["concept_explanation"] = {1e-3, -1.0};
  auto r = Calibrate(*model_, *ckpt_->tokenizer, profile, EasyItems(), bad_grid);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("-1 is not valid for rule kl"), std::string::npos)
      << r.status().message();
}

TEST(AgreeingPrefixTest, StopsAtTheFirstDifference) {
  struct Case {
    std::vector<int32_t> ref, cand;
    int64_t agree;
  } cases[] = {
      {{1, 2, 3}, {1, 2, 3}, 3}, {{1, 2, 3}, {1, 9, 3}, 1}, {{1, 2, 3}, {1, 2}, 2},
      {{1, 2}, {1, 2, 3, 4}, 2}, {{1, 2, 3}, {}, 0},        {{}, {1}, 0},
      {{5, 2, 3}, {4, 2, 3}, 0},  // later matches after a difference do not count
  };
  for (const Case& c : cases) EXPECT_EQ(AgreeingPrefix(c.ref, c.cand), c.agree);
}

TEST(ProfileEditTest, FormatsThresholdsShortly) {
  struct Case {
    double v;
    const char* text;
  } cases[] = {{0.00215, "0.00215"}, {2.15e-05, "2.15e-5"}, {5.0, "5"},
               {1e-6, "1e-6"},       {0.03, "0.03"},        {1e21, "1e21"}};
  for (const Case& c : cases) EXPECT_EQ(FormatThreshold(c.v), c.text) << c.v;
}

TEST(ProfileEditTest, ChangesOnlyTheThresholds) {
  // The layout of the shipped profiles (several keys per line, nested exit objects).
  const std::string path = "edu.json";
  const std::string text = R"({
  "name": "edu",
  "pricing": {"per_device_second": 0.0007},
  "default_class": "concept_explanation",
  "task_classes": [
    {
      "name": "concept_explanation",
      "min_steps": 2, "max_steps": 8,
      "exit": {"rule": "kl", "threshold": 5e-4, "check_every": 1, "check_from": 2},
      "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64}
    },
    {
      "name": "wrong_answer_analysis",
      "min_steps": 4, "max_steps": 16,
      "exit": {"rule": "kl", "threshold": 5e-4, "check_every": 1, "check_from": 2,
               "gate_latent_below": 0.1}
    },
    {
      "name": "complex_problem_solving",
      "min_steps": 8, "max_steps": 64,
      "exit": {"rule": "argmax-stability", "threshold": 5, "check_every": 2, "check_from": 2}
    }
  ]
}
)";
  auto edited = SetExitThresholds(
      text, {{"concept_explanation", 0.00215}, {"complex_problem_solving", 7}}, path);
  ASSERT_TRUE(edited.ok()) << edited.status().ToString();
  // Byte for byte the same but for the two numbers.
  std::string expected = text;
  const auto replace_in_class = [&](const std::string& cls, const std::string& from,
                                    const std::string& to) {
    const size_t at = expected.find(from, expected.find("\"" + cls + "\""));
    ASSERT_NE(at, std::string::npos);
    expected.replace(at, from.size(), to);
  };
  replace_in_class("concept_explanation", "\"threshold\": 5e-4", "\"threshold\": 0.00215");
  replace_in_class("complex_problem_solving", "\"threshold\": 5,", "\"threshold\": 7,");
  EXPECT_EQ(*edited, expected);
  auto parsed = policy::ParseProfile(*edited, path);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->FindClass("concept_explanation")->exit.threshold, 0.00215);
  EXPECT_EQ(parsed->FindClass("complex_problem_solving")->exit.threshold, 7);
  EXPECT_EQ(parsed->FindClass("wrong_answer_analysis")->exit.threshold, 5e-4);
}

TEST(ProfileEditTest, InsertsAMissingThresholdAfterTheRule) {
  const std::string text =
      "{\"name\": \"t\", \"task_classes\": [\n  {\"name\": \"a\", \"exit\": {\"rule\": \"kl\"}},\n"
      "  {\"name\": \"b\", \"exit\": {\"rule\" : \"cosine\" , \"check_every\": 2}}]}\n";
  auto edited = SetExitThresholds(text, {{"a", 1e-4}, {"b", 0.5}}, "t.json");
  ASSERT_TRUE(edited.ok()) << edited.status().ToString();
  EXPECT_EQ(*edited,
            "{\"name\": \"t\", \"task_classes\": [\n  {\"name\": \"a\", \"exit\": {\"rule\": "
            "\"kl\", \"threshold\": 1e-4}},\n  {\"name\": \"b\", \"exit\": {\"rule\" : "
            "\"cosine\", \"threshold\": 0.5 , \"check_every\": 2}}]}\n");
}

TEST(ProfileEditTest, Errors) {
  struct Case {
    std::string text;
    std::map<std::string, double> thresholds;
    std::string needle;
  } cases[] = {
      {"{\"task_classes\": [", {{"a", 1}}, "p.json: not valid JSON"},
      {"{\"task_classes\": {}}", {{"a", 1}}, "p.json: /task_classes: missing or not an array"},
      {"{\"task_classes\": [{\"name\": \"a\"}]}", {{"b", 1}}, "no task class named \"b\""},
      {"{\"task_classes\": [{\"name\": \"a\"}]}",
       {{"a", 1}},
       "/task_classes/0/exit: missing, or without a \"rule\""},
  };
  for (const Case& c : cases) {
    auto r = SetExitThresholds(c.text, c.thresholds, "p.json");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << r.status().message();
  }
}

}  // namespace
}  // namespace ponder::scenarios
