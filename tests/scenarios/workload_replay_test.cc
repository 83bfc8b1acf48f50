#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "exec/cpu/cpu_model.h"
#include "exec/generator.h"
#include "model/checkpoint.h"
#include "policy/profile.h"
#include "scenarios/replay.h"
#include "scenarios/sweep.h"
#include "scenarios/workload.h"
#include "tests/scenarios/synthetic_items.h"

namespace ponder::scenarios {
namespace {

TEST(WorkloadTest, ParsesLinesAndSkipsBlanks) {
  const std::string text =
      "{\"id\": \"a\", \"prompt\": \"+4*3=\", \"expected\": \"2\", \"family\": \"chain\", "
      "\"difficulty\": 2, \"class\": \"math_easy\"}\n\n"
      "{\"prompt\": \"abc|\", \"expected\": \"abc\", \"family\": \"copy\"}\n";
  auto items = ParseWorkload(text, "w.jsonl");
  ASSERT_TRUE(items.ok()) << items.status().ToString();
  ASSERT_EQ(items->size(), 2u);
  EXPECT_EQ((*items)[0].task_class, "math_easy");
  EXPECT_EQ((*items)[0].difficulty, 2);
  EXPECT_EQ((*items)[1].line, 3);
  EXPECT_EQ((*items)[1].task_class, "");
}

TEST(WorkloadTest, ErrorsNameFileLineAndField) {
  struct Case {
    std::string text, needle;
  } cases[] = {
      {"{\"prompt\": \"x\", \"expected\": 3, \"family\": \"f\"}", "w.jsonl:1: \"expected\""},
      {"\n{\"prompt\": \"x\", \"family\": \"f\"}", "w.jsonl:2: missing \"expected\""},
      {"{not json", "w.jsonl:1: not valid JSON"},
      {"[1, 2]", "w.jsonl:1: a line must be a JSON object"},
      {"{\"prompt\": \"x\", \"expected\": \"y\", \"family\": \"f\", \"difficulty\": \"hard\"}",
       "\"difficulty\": must be an integer"},
      {"\n\n", "no requests"},
  };
  for (const auto& c : cases) {
    auto r = ParseWorkload(c.text, "w.jsonl");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << r.status().message();
  }
  auto missing = LoadWorkload("/nonexistent/w.jsonl");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/w.jsonl"), std::string::npos);
}

class ReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ckpt = model::LoadCheckpoint(std::string(PONDER_TEST_DATA) + "/tiny");
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    ckpt_ = std::move(*ckpt);
    model_ = std::make_unique<exec::cpu::CpuModel>(ckpt_->config, ckpt_->weights, nullptr);
  }
  // What the runtime answers for `prompt` at r steps (the replay protocol by hand).
  std::string Answer(const std::string& prompt, int64_t steps, uint64_t seed) {
    auto ids = ckpt_->tokenizer->Encode(prompt, false);
    EXPECT_TRUE(ids.ok());
    ids->insert(ids->begin(), ckpt_->tokenizer->TokenToId("<|begin_text|>"));
    exec::GenerateOptions go;
    go.steps = steps;
    go.max_tokens = 4;
    go.seed = seed;
    go.stop_ids = {ckpt_->tokenizer->TokenToId("<|end_text|>")};
    auto r = exec::Generate(*model_, *ids, go);
    EXPECT_TRUE(r.ok());
    return *ckpt_->tokenizer->Decode(r->tokens, true);
  }
  std::unique_ptr<model::Checkpoint> ckpt_;
  std::unique_ptr<exec::cpu::CpuModel> model_;
};

TEST_F(ReplayTest, ScoresAgainstExpectedAnswersPerClassAndFamily) {
  const std::vector<std::string> prompts = {"The answer", "a b c", "12+3=", "hello", "x"};
  std::vector<WorkloadItem> items;
  for (size_t i = 0; i < prompts.size(); ++i) {
    WorkloadItem it;
    it.prompt = prompts[i];
    // Item i gets seed (0 + i) in a batch starting at 0: the expected answer is the one
    // the single-sequence generator gives with that seed, except item 4 (made wrong).
    it.expected = Answer(prompts[i], 2, i) + (i == 4 ? "#wrong" : "");
    it.family = i < 2 ? "easy" : "hard";
    it.task_class = i % 2 ? "odd" : "even";
    items.push_back(it);
  }
  ReplayOptions ro;
  ro.steps = 2;
  ro.max_tokens = 4;
  ro.batch = 8;
  auto report = Replay(*model_, *ckpt_->tokenizer, items, ro);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->total.requests, 5);
  EXPECT_EQ(report->total.correct, 4);
  EXPECT_DOUBLE_EQ(report->families.at("easy").accuracy(), 1.0);
  EXPECT_DOUBLE_EQ(report->families.at("hard").accuracy(), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(report->classes.at("even").accuracy(), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(report->total.mean_steps_per_token(), 2.0);
  // The same answers one request at a time (batch 1): batched decoding changes nothing.
  ro.batch = 1;
  auto single = Replay(*model_, *ckpt_->tokenizer, items, ro);
  ASSERT_TRUE(single.ok());
  for (size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ(single->items[i].answer, report->items[i].answer) << i;
  }
  const std::string json = ReportJson(*report, 2, false);
  for (const char* key : {"\"accuracy\"", "\"requests\"", "\"mean_steps_per_token\"", "\"classes\"",
                          "\"families\""}) {
    EXPECT_NE(json.find(key), std::string::npos) << key;
  }
}

TEST_F(ReplayTest, ProfilePlansEachClassAndExitsPerToken) {
  auto profile =
      policy::LoadProfile(std::string(PONDER_SOURCE_DIR) + "/scenarios/profiles/education.json");
  ASSERT_TRUE(profile.ok()) << profile.status().ToString();
  const std::vector<WorkloadItem> items = testing::SyntheticItems(
      {"concept_explanation", "complex_problem_solving"}, {"+4*3=", "abc|"});
  ReplayOptions ro;
  ro.max_tokens = 3;
  ro.profile = &*profile;
  auto report = Replay(*model_, *ckpt_->tokenizer, items, ro);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  // Each class's tokens stay inside its [min_steps, max_steps].
  const Score& easy = report->classes.at("concept_explanation");
  const Score& hard = report->classes.at("complex_problem_solving");
  const policy::TaskClass* ec = profile->FindClass("concept_explanation");
  const policy::TaskClass* hc = profile->FindClass("complex_problem_solving");
  ASSERT_TRUE(ec != nullptr && hc != nullptr);
  ASSERT_FALSE(easy.token_steps.empty());
  for (int32_t s : easy.token_steps) EXPECT_TRUE(s >= ec->min_steps && s <= ec->max_steps) << s;
  for (int32_t s : hard.token_steps) EXPECT_TRUE(s >= hc->min_steps && s <= hc->max_steps) << s;
  EXPECT_LT(easy.mean_steps_per_token(), hard.mean_steps_per_token());
  int64_t reasons = 0;
  for (const auto& [name, n] : hard.exits) {
    EXPECT_TRUE(name == "converged" || name == "max_steps") << name;
    reasons += n;
  }
  EXPECT_EQ(reasons, hard.tokens);
}

TEST(SweepTest, CurvesAndSvg) {
  ReplayReport a, b;
  a.classes["hard"].Add(false, {1}, {"max_steps"});
  a.classes["hard"].Add(true, {1}, {"max_steps"});
  b.classes["hard"].Add(true, {8}, {"max_steps"});
  b.classes["hard"].Add(true, {8}, {"max_steps"});
  b.classes["easy<&>"].Add(true, {8}, {"max_steps"});
  auto table = ClassCurves({1, 8}, {a, b});
  ASSERT_EQ(table.curves.size(), 2u);
  EXPECT_EQ(table.curves[1].name, "hard");
  EXPECT_DOUBLE_EQ(table.curves[1].accuracy[0], 0.5);
  EXPECT_DOUBLE_EQ(table.curves[1].accuracy[1], 1.0);
  EXPECT_TRUE(std::isnan(table.curves[0].accuracy[0]));
  const std::string svg = RenderSvg(table, "t");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("easy&lt;&amp;&gt;"), std::string::npos);
  EXPECT_EQ(svg.find("easy<&>"), std::string::npos);
}

}  // namespace
}  // namespace ponder::scenarios
