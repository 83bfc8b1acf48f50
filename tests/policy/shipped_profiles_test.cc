// The profiles shipped under scenarios/profiles/ validate, have the documented depth ranges,
// route sensibly, and cover every class their workload uses.

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "policy/profile.h"
#include "policy/router.h"
#include "scenarios/workload.h"

namespace ponder::policy {
namespace {

std::string ProfilePath(const std::string& name) {
  return std::string(PONDER_SOURCE_DIR) + "/scenarios/profiles/" + name + ".json";
}

DomainProfile MustLoad(const std::string& name) {
  Result<DomainProfile> profile = LoadProfile(ProfilePath(name));
  EXPECT_TRUE(profile.ok()) << profile.status().ToString();
  return profile.ok() ? std::move(profile).value() : DomainProfile{};
}

void ExpectRange(const DomainProfile& profile, const std::string& cls, int min_steps,
                 int max_steps) {
  const TaskClass* task_class = profile.FindClass(cls);
  ASSERT_NE(task_class, nullptr) << profile.name << "/" << cls;
  EXPECT_EQ(task_class->min_steps, min_steps) << cls;
  EXPECT_EQ(task_class->max_steps, max_steps) << cls;
}

std::string RouteOf(const DomainProfile& profile, const std::string& prompt,
                    std::map<std::string, std::string> metadata = {}) {
  Request request;
  request.prompt = prompt;
  request.metadata = std::move(metadata);
  Result<Route> route = RouteRequest(request, profile);
  EXPECT_TRUE(route.ok()) << route.status().ToString();
  return route.ok() ? route->task_class->name : "";
}

TEST(ShippedProfilesTest, AllValidateAndNameThemselves) {
  for (const char* name : {"education", "finance", "chat"}) {
    const DomainProfile profile = MustLoad(name);
    EXPECT_EQ(profile.name, name);
    EXPECT_EQ(profile.currency, "USD");
    EXPECT_GT(profile.pricing.per_device_second + profile.pricing.per_tflop, 0);
    EXPECT_NE(profile.FindTenant("default"), nullptr) << name;
  }
}

// The maxima are the depth each class may spend (education ~8 / ~16 / up to 64; finance
// 4-8 / 16-32 / 64+); the minima are floors under which convergence may not stop a token,
// low enough for calibrated exits to save what the easy tokens do not need.
TEST(ShippedProfilesTest, DepthRanges) {
  const DomainProfile education = MustLoad("education");
  ExpectRange(education, "concept_explanation", 2, 8);
  ExpectRange(education, "wrong_answer_analysis", 4, 16);
  ExpectRange(education, "complex_problem_solving", 8, 64);
  const DomainProfile finance = MustLoad("finance");
  ExpectRange(finance, "routine_transaction", 2, 8);
  ExpectRange(finance, "market_analysis", 8, 32);
  ExpectRange(finance, "risk_assessment", 16, 96);
  const DomainProfile chat = MustLoad("chat");
  ASSERT_EQ(chat.task_classes.size(), 1u);
  ExpectRange(chat, "chat", 8, 16);
}

TEST(ShippedProfilesTest, Routing) {
  const DomainProfile finance = MustLoad("finance");
  EXPECT_EQ(RouteOf(finance, "How did EUR/USD move?", {{"channel", "realtime"}}),
            "market_analysis");
  EXPECT_EQ(RouteOf(finance, "What is the value at risk of my portfolio?"), "risk_assessment");
  EXPECT_EQ(RouteOf(finance, "Please transfer 100 USD to savings"), "routine_transaction");
  EXPECT_EQ(RouteOf(finance, "z6v0l0n2c2?v"), "routine_transaction");  // default
  const DomainProfile education = MustLoad("education");
  EXPECT_EQ(RouteOf(education, "Explain photosynthesis"), "concept_explanation");
  EXPECT_EQ(RouteOf(education, "Here is my wrong answer: 3 + 4 = 8"), "wrong_answer_analysis");
  EXPECT_EQ(RouteOf(education, "Solve for x, step by step: 3x + 7 = 22, then check it"),
            "complex_problem_solving");
  EXPECT_EQ(RouteOf(education, "+4*3+7=", {{"difficulty", "hard"}}), "complex_problem_solving");
}

TEST(ShippedProfilesTest, CoverTheirWorkloadClasses) {
  for (const char* name : {"education", "finance", "chat"}) {
    const DomainProfile profile = MustLoad(name);
    Result<std::vector<scenarios::WorkloadItem>> items = scenarios::LoadWorkload(
        std::string(PONDER_SOURCE_DIR) + "/scenarios/workloads/" + name + ".jsonl");
    ASSERT_TRUE(items.ok()) << items.status().ToString();
    std::set<std::string> classes;
    for (const auto& item : *items) classes.insert(item.task_class);
    for (const std::string& cls : classes) {
      EXPECT_NE(profile.FindClass(cls), nullptr) << name << " lacks class " << cls;
    }
  }
}

}  // namespace
}  // namespace ponder::policy
