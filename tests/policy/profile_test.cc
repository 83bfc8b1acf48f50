// DomainProfile parsing: the valid schema, and one case per validation error, each checked
// for the file, the JSON pointer path and the reason.

#include "policy/profile.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace ponder::policy {
namespace {

using json = nlohmann::json;

constexpr const char* kSource = "finance.json";

json BaseProfile() {
  return json::parse(R"({
    "name": "finance", "description": "test profile", "currency": "USD",
    "pricing": {"per_device_second": 0.0005, "per_tflop": 0.0},
    "default_class": "routine_transaction",
    "task_classes": [
      {"name": "routine_transaction", "description": "small", "min_steps": 4, "max_steps": 8,
       "exit": {"rule": "kl", "threshold": 5e-4, "check_every": 1, "check_from": 2},
       "warm_start": false, "kv_strategy": "full", "priority": 7, "deadline_ms": 2000,
       "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 32}},
      {"name": "market_analysis", "min_steps": 16, "max_steps": 32,
       "exit": {"rule": "kl", "gate_latent_below": 0.1}, "kv_strategy": "compress-s16"},
      {"name": "risk_assessment", "min_steps": 8, "max_steps": 96,
       "exit": {"rule": "argmax-stability"}}
    ],
    "routing": [
      {"class": "risk_assessment", "keywords": ["Portfolio", "risk"]},
      {"class": "market_analysis", "metadata": {"channel": "realtime"}},
      {"class": "routine_transaction", "regex": "\\btransfer\\b", "min_prompt_chars": 0,
       "max_prompt_chars": 200}
    ],
    "tenants": {
      "default": {"budget": 100.0, "window_seconds": 3600, "on_exhausted": "degrade"},
      "acme": {"budget": 10.0, "on_exhausted": "reject"}
    }
  })");
}

TEST(ProfileTest, ParsesTheFullSchema) {
  Result<DomainProfile> parsed = ParseProfile(BaseProfile().dump(), kSource);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const DomainProfile& profile = *parsed;
  EXPECT_EQ(profile.name, "finance");
  EXPECT_EQ(profile.source, kSource);
  EXPECT_EQ(profile.currency, "USD");
  EXPECT_DOUBLE_EQ(profile.pricing.per_device_second, 0.0005);
  ASSERT_EQ(profile.task_classes.size(), 3u);
  const TaskClass& routine = profile.task_classes[0];
  EXPECT_EQ(routine.min_steps, 4);
  EXPECT_EQ(routine.max_steps, 8);
  EXPECT_EQ(routine.exit.rule, ExitRule::kKl);
  EXPECT_DOUBLE_EQ(routine.exit.threshold, 5e-4);
  EXPECT_EQ(routine.exit.check_from, 2);
  EXPECT_EQ(routine.priority, 7);
  EXPECT_EQ(routine.deadline_ms, 2000);
  EXPECT_EQ(routine.sampling.max_tokens, 32);
  // Defaults: the rule's auto threshold, cadence 1 from step 1, full KV, sampling.
  const TaskClass& market = profile.task_classes[1];
  EXPECT_DOUBLE_EQ(market.exit.threshold, DefaultThreshold(ExitRule::kKl));
  EXPECT_EQ(market.exit.check_every, 1);
  EXPECT_EQ(market.exit.check_from, 1);
  ASSERT_TRUE(market.exit.gate_latent_below.has_value());
  EXPECT_DOUBLE_EQ(*market.exit.gate_latent_below, 0.1);
  EXPECT_EQ(market.kv_strategy, "compress-s16");
  EXPECT_EQ(market.sampling.max_tokens, 64);
  EXPECT_DOUBLE_EQ(profile.task_classes[2].exit.threshold, 5);
  // Routing: keywords lower-cased, regex compiled.
  ASSERT_EQ(profile.routing.size(), 3u);
  EXPECT_EQ(profile.routing[0].keywords, (std::vector<std::string>{"portfolio", "risk"}));
  EXPECT_EQ(profile.routing[1].metadata.at("channel"), "realtime");
  EXPECT_TRUE(profile.routing[2].regex.has_value());
  EXPECT_EQ(profile.routing[2].max_prompt_chars, 200);
  // Tenants, with "default" for the others.
  ASSERT_NE(profile.FindTenant("acme"), nullptr);
  EXPECT_EQ(profile.FindTenant("acme")->on_exhausted, OnExhausted::kReject);
  EXPECT_DOUBLE_EQ(profile.FindTenant("acme")->window_seconds, 3600);
  EXPECT_DOUBLE_EQ(profile.FindTenant("someone")->budget, 100.0);
  EXPECT_EQ(profile.FindClass("nope"), nullptr);
}

TEST(ProfileTest, MinimalProfileNeedsNoOptionalFields) {
  const char* text = R"({"name": "mini", "pricing": {"per_tflop": 0.01},
    "default_class": "a", "task_classes": [{"name": "a", "min_steps": 1, "max_steps": 1}]})";
  Result<DomainProfile> parsed = ParseProfile(text, "mini.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->task_classes[0].exit.rule, ExitRule::kNone);
  EXPECT_TRUE(parsed->routing.empty());
  EXPECT_EQ(parsed->FindTenant("x"), nullptr);
}

struct ErrorCase {
  const char* name;
  std::function<void(json&)> mutate;
  const char* path;
  const char* reason;
};

void PrintTo(const ErrorCase& c, std::ostream* os) { *os << c.name; }

class ProfileErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(ProfileErrorTest, NamesFilePathAndReason) {
  const ErrorCase& c = GetParam();
  json j = BaseProfile();
  c.mutate(j);
  Result<DomainProfile> parsed = ParseProfile(j.dump(), kSource);
  ASSERT_FALSE(parsed.ok()) << "accepted: " << j.dump();
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  const std::string& message = parsed.status().message();
  EXPECT_NE(message.find(std::string(kSource) + ": " + c.path + ": "), std::string::npos)
      << message;
  EXPECT_NE(message.find(c.reason), std::string::npos) << message;
}

json& Class(json& j, int i) { return j["task_classes"][i]; }
json& Route(json& j, int i) { return j["routing"][i]; }

const ErrorCase kErrorCases[] = {
    // Root and top-level fields.
    {"UnknownTopLevelField", [](json& j) { j["taks_classes"] = 1; }, "/taks_classes",
     "unknown field (did you mean \"task_classes\"?)"},
    {"UnknownFieldNoSuggestion", [](json& j) { j["zzzzzzzz"] = 1; }, "/zzzzzzzz", "unknown field"},
    {"UnknownFieldEscapedPointer", [](json& j) { j["a/b~c"] = 1; }, "/a~1b~0c", "unknown field"},
    {"MissingName", [](json& j) { j.erase("name"); }, "/name", "missing required field"},
    {"NameNotString", [](json& j) { j["name"] = 7; }, "/name", "must be a string"},
    {"NameInvalid", [](json& j) { j["name"] = "fin ance"; }, "/name", "must be a non-empty name"},
    {"DescriptionNotString", [](json& j) { j["description"] = false; }, "/description",
     "must be a string"},
    {"CurrencyInvalid", [](json& j) { j["currency"] = "usd"; }, "/currency",
     "three-letter ISO 4217 code"},
    // Pricing.
    {"PricingMissing", [](json& j) { j.erase("pricing"); }, "/pricing", "missing required field"},
    {"PricingNotObject", [](json& j) { j["pricing"] = 1; }, "/pricing", "must be an object"},
    {"PricingUnknownField", [](json& j) { j["pricing"]["per_device_secnd"] = 1; },
     "/pricing/per_device_secnd", "unknown field (did you mean \"per_device_second\"?)"},
    {"PricingNotNumber", [](json& j) { j["pricing"]["per_tflop"] = "1"; }, "/pricing/per_tflop",
     "must be a number"},
    {"PricingNegative", [](json& j) { j["pricing"]["per_device_second"] = -1; },
     "/pricing/per_device_second", "must be >= 0 (got -1)"},
    {"PricingAllZero", [](json& j) { j["pricing"]["per_device_second"] = 0; }, "/pricing",
     "at least one of per_device_second and per_tflop must be > 0"},
    // Task classes.
    {"ClassesMissing", [](json& j) { j.erase("task_classes"); }, "/task_classes",
     "missing required field"},
    {"ClassesNotArray", [](json& j) { j["task_classes"] = json::object(); }, "/task_classes",
     "must be an array of classes"},
    {"ClassesEmpty", [](json& j) { j["task_classes"] = json::array(); }, "/task_classes",
     "must contain at least one class"},
    {"ClassNotObject", [](json& j) { Class(j, 1) = "x"; }, "/task_classes/1", "must be an object"},
    {"ClassUnknownField", [](json& j) { Class(j, 0)["max_step"] = 8; }, "/task_classes/0/max_step",
     "unknown field (did you mean \"max_steps\"?)"},
    {"ClassNameMissing", [](json& j) { Class(j, 1).erase("name"); }, "/task_classes/1/name",
     "missing required field"},
    {"ClassNameEmpty", [](json& j) { Class(j, 1)["name"] = ""; }, "/task_classes/1/name",
     "must be a non-empty name"},
    {"DuplicateClass", [](json& j) { Class(j, 2)["name"] = "routine_transaction"; },
     "/task_classes/2/name", "duplicate class \"routine_transaction\" (first at /task_classes/0)"},
    {"MinStepsMissing", [](json& j) { Class(j, 0).erase("min_steps"); },
     "/task_classes/0/min_steps", "missing required field"},
    {"MinStepsNotInteger", [](json& j) { Class(j, 0)["min_steps"] = 4.5; },
     "/task_classes/0/min_steps", "must be an integer"},
    {"MinStepsOutOfRange", [](json& j) { Class(j, 0)["min_steps"] = 1000000000000LL; },
     "/task_classes/0/min_steps", "out of range"},
    {"MinStepsHugeUnsigned", [](json& j) { Class(j, 0)["min_steps"] = 18446744073709551615ULL; },
     "/task_classes/0/min_steps", "out of range"},
    {"MinStepsBelowOne", [](json& j) { Class(j, 0)["min_steps"] = 0; }, "/task_classes/0/min_steps",
     "must be >= 1 (got 0)"},
    {"MaxStepsAboveLimit", [](json& j) { Class(j, 2)["max_steps"] = 5000; },
     "/task_classes/2/max_steps", "must be <= 4096 (got 5000)"},
    {"MaxBelowMin", [](json& j) { Class(j, 2)["max_steps"] = 4; }, "/task_classes/2/max_steps",
     "must be >= min_steps (4 < 8)"},
    {"WarmStartNotBool", [](json& j) { Class(j, 0)["warm_start"] = "yes"; },
     "/task_classes/0/warm_start", "must be true or false"},
    {"KvStrategyUnknown", [](json& j) { Class(j, 0)["kv_strategy"] = "latest-m4"; },
     "/task_classes/0/kv_strategy", "must be \"full\" or \"compress-sN\""},
    {"KvStrategyZeroRing", [](json& j) { Class(j, 0)["kv_strategy"] = "compress-s0"; },
     "/task_classes/0/kv_strategy", "(got \"compress-s0\")"},
    {"PriorityOutOfRange", [](json& j) { Class(j, 0)["priority"] = 10; },
     "/task_classes/0/priority", "must be in 0..9 (got 10)"},
    {"DeadlineNegative", [](json& j) { Class(j, 0)["deadline_ms"] = -5; },
     "/task_classes/0/deadline_ms", "must be >= 0, 0 for none (got -5)"},
    // Exit.
    {"ExitNotObject", [](json& j) { Class(j, 0)["exit"] = "kl"; }, "/task_classes/0/exit",
     "must be an object"},
    {"ExitUnknownField", [](json& j) { Class(j, 0)["exit"]["threshhold"] = 1; },
     "/task_classes/0/exit/threshhold", "unknown field (did you mean \"threshold\"?)"},
    {"ExitRuleMissing", [](json& j) { Class(j, 0)["exit"].erase("rule"); },
     "/task_classes/0/exit/rule", "missing required field"},
    {"ExitRuleUnknown", [](json& j) { Class(j, 0)["exit"]["rule"] = "kll"; },
     "/task_classes/0/exit/rule", "unknown exit rule \"kll\" (did you mean \"kl\"?)"},
    {"ThresholdNotNumber", [](json& j) { Class(j, 0)["exit"]["threshold"] = "auto"; },
     "/task_classes/0/exit/threshold", "must be a number"},
    {"ThresholdNotPositive", [](json& j) { Class(j, 0)["exit"]["threshold"] = 0; },
     "/task_classes/0/exit/threshold", "must be > 0 (got 0)"},
    {"ArgmaxThresholdFractional", [](json& j) { Class(j, 2)["exit"]["threshold"] = 2.5; },
     "/task_classes/2/exit/threshold", "must be a whole number of checks >= 1"},
    {"CheckEveryBelowOne", [](json& j) { Class(j, 0)["exit"]["check_every"] = 0; },
     "/task_classes/0/exit/check_every", "must be >= 1 (got 0)"},
    {"CheckFromBelowOne", [](json& j) { Class(j, 0)["exit"]["check_from"] = 0; },
     "/task_classes/0/exit/check_from", "must be >= 1 (got 0)"},
    {"CheckFromAfterMax", [](json& j) { Class(j, 0)["exit"]["check_from"] = 9; },
     "/task_classes/0/exit/check_from", "must be <= max_steps (9 > 8)"},
    {"GateNotPositive", [](json& j) { Class(j, 1)["exit"]["gate_latent_below"] = -0.1; },
     "/task_classes/1/exit/gate_latent_below", "must be > 0 (got -0.1)"},
    {"GateOnLatentRule", [](json& j) { Class(j, 1)["exit"]["rule"] = "latent-diff"; },
     "/task_classes/1/exit/gate_latent_below", "only applies to logit rules"},
    // Sampling.
    {"SamplingNotObject", [](json& j) { Class(j, 0)["sampling"] = 1; }, "/task_classes/0/sampling",
     "must be an object"},
    {"SamplingUnknownField", [](json& j) { Class(j, 0)["sampling"]["top_k"] = 5; },
     "/task_classes/0/sampling/top_k", "unknown field (did you mean \"top_p\"?)"},
    {"TemperatureNegative", [](json& j) { Class(j, 0)["sampling"]["temperature"] = -1; },
     "/task_classes/0/sampling/temperature", "must be >= 0 (got -1)"},
    {"TopPOutOfRange", [](json& j) { Class(j, 0)["sampling"]["top_p"] = 1.5; },
     "/task_classes/0/sampling/top_p", "must be in (0, 1] (got 1.5)"},
    {"MaxTokensBelowOne", [](json& j) { Class(j, 0)["sampling"]["max_tokens"] = 0; },
     "/task_classes/0/sampling/max_tokens", "must be >= 1 (got 0)"},
    // Default class.
    {"DefaultClassMissing", [](json& j) { j.erase("default_class"); }, "/default_class",
     "missing required field"},
    {"DefaultClassUnknown", [](json& j) { j["default_class"] = "routine_transactions"; },
     "/default_class",
     "unknown class \"routine_transactions\" (did you mean \"routine_transaction\"?)"},
    // Routing.
    {"RoutingNotArray", [](json& j) { j["routing"] = json::object(); }, "/routing",
     "must be an array of rules"},
    {"RouteNotObject", [](json& j) { Route(j, 0) = 3; }, "/routing/0", "must be an object"},
    {"RouteUnknownField", [](json& j) { Route(j, 0)["keyword"] = json::array({"x"}); },
     "/routing/0/keyword", "unknown field (did you mean \"keywords\"?)"},
    {"RouteClassMissing", [](json& j) { Route(j, 1).erase("class"); }, "/routing/1/class",
     "missing required field"},
    {"RouteClassUnknown", [](json& j) { Route(j, 1)["class"] = "market_analysys"; },
     "/routing/1/class", "unknown class \"market_analysys\" (did you mean \"market_analysis\"?)"},
    {"KeywordsNotArray", [](json& j) { Route(j, 0)["keywords"] = "risk"; }, "/routing/0/keywords",
     "must be an array of strings"},
    {"KeywordEmpty", [](json& j) { Route(j, 0)["keywords"][1] = ""; }, "/routing/0/keywords/1",
     "must be a non-empty string"},
    {"KeywordsEmptyArray", [](json& j) { Route(j, 0)["keywords"] = json::array(); },
     "/routing/0/keywords", "must not be empty"},
    {"RegexInvalid", [](json& j) { Route(j, 2)["regex"] = "([a-"; }, "/routing/2/regex",
     "invalid regular expression \"([a-\""},
    {"RegexEmpty", [](json& j) { Route(j, 2)["regex"] = ""; }, "/routing/2/regex",
     "must not be empty"},
    {"RegexNotString", [](json& j) { Route(j, 2)["regex"] = 5; }, "/routing/2/regex",
     "must be a string"},
    {"MinPromptCharsNegative", [](json& j) { Route(j, 2)["min_prompt_chars"] = -1; },
     "/routing/2/min_prompt_chars", "must be >= 0 (got -1)"},
    {"MaxPromptCharsNegative", [](json& j) { Route(j, 2)["max_prompt_chars"] = -1; },
     "/routing/2/max_prompt_chars", "must be >= 0, 0 for no limit (got -1)"},
    {"MaxPromptCharsBelowMin", [](json& j) { Route(j, 2)["min_prompt_chars"] = 300; },
     "/routing/2/max_prompt_chars", "must be >= min_prompt_chars (200 < 300)"},
    {"MetadataNotObject", [](json& j) { Route(j, 1)["metadata"] = "realtime"; },
     "/routing/1/metadata", "must be an object of strings"},
    {"MetadataValueNotString", [](json& j) { Route(j, 1)["metadata"]["channel"] = 1; },
     "/routing/1/metadata/channel", "must be a string"},
    {"MetadataEmpty", [](json& j) { Route(j, 1)["metadata"] = json::object(); },
     "/routing/1/metadata", "must not be empty"},
    {"RouteWithoutCondition", [](json& j) { Route(j, 1).erase("metadata"); }, "/routing/1",
     "has no condition"},
    // Tenants.
    {"TenantsNotObject", [](json& j) { j["tenants"] = json::array(); }, "/tenants",
     "must be an object of tenant budgets"},
    {"TenantNameEmpty", [](json& j) { j["tenants"][""] = j["tenants"]["acme"]; }, "/tenants/",
     "tenant names must not be empty"},
    {"TenantNotObject", [](json& j) { j["tenants"]["acme"] = 10; }, "/tenants/acme",
     "must be an object"},
    {"TenantUnknownField", [](json& j) { j["tenants"]["acme"]["window_second"] = 10; },
     "/tenants/acme/window_second", "unknown field (did you mean \"window_seconds\"?)"},
    {"TenantBudgetMissing", [](json& j) { j["tenants"]["acme"].erase("budget"); },
     "/tenants/acme/budget", "missing required field"},
    {"TenantBudgetNegative", [](json& j) { j["tenants"]["acme"]["budget"] = -1; },
     "/tenants/acme/budget", "must be >= 0 (got -1)"},
    {"TenantWindowNotPositive", [](json& j) { j["tenants"]["default"]["window_seconds"] = 0; },
     "/tenants/default/window_seconds", "must be > 0 (got 0)"},
    {"TenantOnExhaustedUnknown", [](json& j) { j["tenants"]["acme"]["on_exhausted"] = "rejct"; },
     "/tenants/acme/on_exhausted",
     "must be \"degrade\" or \"reject\" (got \"rejct\") (did you mean \"reject\"?)"},
};

INSTANTIATE_TEST_SUITE_P(AllErrors, ProfileErrorTest, ::testing::ValuesIn(kErrorCases),
                         [](const ::testing::TestParamInfo<ErrorCase>& info) {
                           return std::string(info.param.name);
                         });

TEST(ProfileTest, UnknownFieldFarFromAnyNameHasNoSuggestion) {
  json j = BaseProfile();
  j["zzzzzzzz"] = 1;
  Result<DomainProfile> parsed = ParseProfile(j.dump(), kSource);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message().find("did you mean"), std::string::npos);
}

TEST(ProfileTest, MalformedJsonNamesTheFile) {
  Result<DomainProfile> parsed = ParseProfile("{\"name\": \"x\",,}", kSource);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("finance.json: /: not valid JSON"), std::string::npos)
      << parsed.status().message();
}

TEST(ProfileTest, RootMustBeAnObject) {
  Result<DomainProfile> parsed = ParseProfile("[1, 2]", kSource);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("finance.json: /: must be an object"), std::string::npos)
      << parsed.status().message();
}

TEST(ProfileTest, MissingFileIsNotFound) {
  Result<DomainProfile> parsed = LoadProfile("/nonexistent/dir/finance.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), StatusCode::kNotFound);
  EXPECT_NE(parsed.status().message().find("/nonexistent/dir/finance.json: /: cannot open"),
            std::string::npos)
      << parsed.status().message();
}

class TempFile {
 public:
  TempFile() {
    path_ = (std::filesystem::temp_directory_path() /
             ("ponder_profile_" + std::to_string(::getpid()) + ".json"))
                .string();
  }
  ~TempFile() { std::remove(path_.c_str()); }
  void Write(const std::string& text) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out << text;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ProfileRegistryTest, ReloadKeepsTheOldProfileWhenTheNewOneFails) {
  TempFile file;
  file.Write(BaseProfile().dump());
  ProfileRegistry registry;
  ASSERT_TRUE(registry.Load(file.path()).ok());
  Result<std::shared_ptr<const DomainProfile>> before = registry.Get("finance");
  ASSERT_TRUE(before.ok());
  EXPECT_EQ((*before)->task_classes[0].max_steps, 8);

  json broken = BaseProfile();
  broken["task_classes"][0]["max_steps"] = 2;
  file.Write(broken.dump());
  const Status failed = registry.Reload(file.path());
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.message().find("/task_classes/0/max_steps: must be >= min_steps (2 < 4)"),
            std::string::npos)
      << failed.message();
  EXPECT_NE(failed.message().find(file.path()), std::string::npos);
  Result<std::shared_ptr<const DomainProfile>> kept = registry.Get("finance");
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->get(), before->get());  // the very same profile object

  json changed = BaseProfile();
  changed["task_classes"][0]["max_steps"] = 12;
  file.Write(changed.dump());
  ASSERT_TRUE(registry.Reload(file.path()).ok());
  Result<std::shared_ptr<const DomainProfile>> after = registry.Get("finance");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)->task_classes[0].max_steps, 12);
  // Holders of the old profile keep a valid object.
  EXPECT_EQ((*before)->task_classes[0].max_steps, 8);
  EXPECT_EQ(registry.Names(), (std::vector<std::string>{"finance"}));
}

TEST(ProfileRegistryTest, UnknownProfileIsNotFoundWithSuggestion) {
  ProfileRegistry registry;
  Result<DomainProfile> parsed = ParseProfile(BaseProfile().dump(), kSource);
  ASSERT_TRUE(parsed.ok());
  registry.Add(std::move(parsed).value());
  Result<std::shared_ptr<const DomainProfile>> missing = registry.Get("finanse");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("did you mean \"finance\"?"), std::string::npos);
}

}  // namespace
}  // namespace ponder::policy
