#include "policy/profile.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/file.h"
#include "core/json_path.h"
#include "policy/names.h"

namespace ponder::policy {
namespace {

using json = nlohmann::json;

template <typename K>
std::string Child(const std::string& path, K key) {
  return JsonChild(path, key);
}

bool ValidName(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

// "full" or "compress-sN" with 1 <= N <= kMaxStepsLimit (the string form exec's KvStrategy
// accepts; policy only checks the form).
bool ValidKvStrategy(const std::string& text) {
  if (text == "full") return true;
  const std::string prefix = "compress-s";
  if (text.rfind(prefix, 0) != 0) return false;
  const std::string digits = text.substr(prefix.size());
  if (digits.empty() || digits.size() > 4 || digits[0] == '0') return false;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
  }
  return std::stoi(digits) <= kMaxStepsLimit;
}

std::string Num(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// Field access with messages `source: /json/pointer: reason`.
class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  Status Fail(const std::string& path, const std::string& reason) const {
    return InvalidArgument(source_ + ": " + (path.empty() ? "/" : path) + ": " + reason);
  }

  Status RequireObject(const json& value, const std::string& path) const {
    if (!value.is_object()) return Fail(path, "must be an object");
    return Status::Ok();
  }

  // Every member of `object` must be one of `names`.
  Status Known(const json& object, const std::string& path,
               const std::vector<std::string>& names) const {
    for (const auto& [key, unused] : object.items()) {
      if (std::find(names.begin(), names.end(), key) != names.end()) continue;
      return Fail(Child(path, key), WithSuggestion("unknown field", key, names));
    }
    return Status::Ok();
  }

  // Readers: `*out` is left as is when the field is absent and not required.
  Status String(const json& object, const std::string& path, const char* key, std::string* out,
                bool required) const {
    const json* value = Find(object, key);
    if (value == nullptr) return Missing(path, key, required);
    if (!value->is_string()) return Fail(Child(path, key), "must be a string");
    *out = value->get<std::string>();
    return Status::Ok();
  }

  Status Int(const json& object, const std::string& path, const char* key, int* out,
             bool required) const {
    const json* value = Find(object, key);
    if (value == nullptr) return Missing(path, key, required);
    if (!value->is_number_integer()) return Fail(Child(path, key), "must be an integer");
    if (value->is_number_unsigned()) {
      if (value->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
        return Fail(Child(path, key), "out of range");
      }
    } else {
      const int64_t v = value->get<int64_t>();
      if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
        return Fail(Child(path, key), "out of range");
      }
    }
    *out = static_cast<int>(value->get<int64_t>());
    return Status::Ok();
  }

  Status Double(const json& object, const std::string& path, const char* key, double* out,
                bool required) const {
    const json* value = Find(object, key);
    if (value == nullptr) return Missing(path, key, required);
    if (!value->is_number()) return Fail(Child(path, key), "must be a number");
    const double v = value->get<double>();
    if (!std::isfinite(v)) return Fail(Child(path, key), "must be finite");
    *out = v;
    return Status::Ok();
  }

  Status Bool(const json& object, const std::string& path, const char* key, bool* out,
              bool required) const {
    const json* value = Find(object, key);
    if (value == nullptr) return Missing(path, key, required);
    if (!value->is_boolean()) return Fail(Child(path, key), "must be true or false");
    *out = value->get<bool>();
    return Status::Ok();
  }

  static const json* Find(const json& object, const char* key) {
    auto it = object.find(key);
    return it == object.end() ? nullptr : &*it;
  }

  Status ParseExit(const json& value, const std::string& path, const TaskClass& cls,
                   ExitSpec* out) const;
  Status ParseSampling(const json& value, const std::string& path, SamplingSpec* out) const;
  Status ParseClass(const json& value, const std::string& path, TaskClass* out) const;
  Status ParseRoute(const json& value, const std::string& path, const DomainProfile& profile,
                    RoutingRule* out) const;
  Status ParseTenant(const json& value, const std::string& path, TenantBudget* out) const;
  Status ParsePricing(const json& value, const std::string& path, Pricing* out) const;
  Status ParseRoot(const json& root, DomainProfile* out) const;

 private:
  Status Missing(const std::string& path, const char* key, bool required) const {
    if (!required) return Status::Ok();
    return Fail(Child(path, key), "missing required field");
  }

  std::string source_;
};

Status Parser::ParseExit(const json& value, const std::string& path, const TaskClass& cls,
                         ExitSpec* out) const {
  PONDER_RETURN_IF_ERROR(RequireObject(value, path));
  PONDER_RETURN_IF_ERROR(
      Known(value, path, {"rule", "threshold", "check_every", "check_from", "gate_latent_below"}));
  std::string rule_name;
  PONDER_RETURN_IF_ERROR(String(value, path, "rule", &rule_name, true));
  Result<ExitRule> rule = ParseExitRule(rule_name);
  if (!rule.ok()) return Fail(Child(path, "rule"), rule.status().message());
  out->rule = *rule;
  out->threshold = DefaultThreshold(out->rule);
  PONDER_RETURN_IF_ERROR(Double(value, path, "threshold", &out->threshold, false));
  if (Find(value, "threshold") != nullptr && !ThresholdSuits(out->rule, out->threshold)) {
    return Fail(Child(path, "threshold"),
                (out->rule == ExitRule::kArgmaxStability
                     ? "must be a whole number of checks >= 1 for argmax-stability (got "
                     : "must be > 0 (got ") +
                    Num(out->threshold) + ")");
  }
  PONDER_RETURN_IF_ERROR(Int(value, path, "check_every", &out->check_every, false));
  if (out->check_every < 1) {
    return Fail(Child(path, "check_every"),
                "must be >= 1 (got " + std::to_string(out->check_every) + ")");
  }
  PONDER_RETURN_IF_ERROR(Int(value, path, "check_from", &out->check_from, false));
  if (out->check_from < 1) {
    return Fail(Child(path, "check_from"),
                "must be >= 1 (got " + std::to_string(out->check_from) + ")");
  }
  if (out->rule != ExitRule::kNone && out->check_from > cls.max_steps) {
    return Fail(Child(path, "check_from"),
                "must be <= max_steps (" + std::to_string(out->check_from) + " > " +
                    std::to_string(cls.max_steps) + "), or the rule is never checked");
  }
  if (Find(value, "gate_latent_below") != nullptr) {
    double gate = 0;
    PONDER_RETURN_IF_ERROR(Double(value, path, "gate_latent_below", &gate, true));
    if (gate <= 0) {
      return Fail(Child(path, "gate_latent_below"), "must be > 0 (got " + Num(gate) + ")");
    }
    if (RequiredSignal(out->rule) != SignalKind::kLogits) {
      return Fail(Child(path, "gate_latent_below"),
                  "only applies to logit rules (kl, minp-kl, entropy-diff, argmax-stability), "
                  "not \"" +
                      std::string(ExitRuleName(out->rule)) + "\"");
    }
    out->gate_latent_below = gate;
  }
  return Status::Ok();
}

Status Parser::ParseSampling(const json& value, const std::string& path, SamplingSpec* out) const {
  PONDER_RETURN_IF_ERROR(RequireObject(value, path));
  PONDER_RETURN_IF_ERROR(Known(value, path, {"temperature", "top_p", "max_tokens"}));
  PONDER_RETURN_IF_ERROR(Double(value, path, "temperature", &out->temperature, false));
  if (out->temperature < 0) {
    return Fail(Child(path, "temperature"), "must be >= 0 (got " + Num(out->temperature) + ")");
  }
  PONDER_RETURN_IF_ERROR(Double(value, path, "top_p", &out->top_p, false));
  if (out->top_p <= 0 || out->top_p > 1) {
    return Fail(Child(path, "top_p"), "must be in (0, 1] (got " + Num(out->top_p) + ")");
  }
  PONDER_RETURN_IF_ERROR(Int(value, path, "max_tokens", &out->max_tokens, false));
  if (out->max_tokens < 1) {
    return Fail(Child(path, "max_tokens"),
                "must be >= 1 (got " + std::to_string(out->max_tokens) + ")");
  }
  return Status::Ok();
}

Status Parser::ParseClass(const json& value, const std::string& path, TaskClass* out) const {
  PONDER_RETURN_IF_ERROR(RequireObject(value, path));
  PONDER_RETURN_IF_ERROR(
      Known(value, path,
            {"name", "description", "min_steps", "max_steps", "exit", "warm_start", "kv_strategy",
             "priority", "deadline_ms", "sampling"}));
  PONDER_RETURN_IF_ERROR(String(value, path, "name", &out->name, true));
  if (!ValidName(out->name)) {
    return Fail(
        Child(path, "name"),
        "must be a non-empty name of letters, digits, '_', '-' or '.' (got \"" + out->name + "\")");
  }
  PONDER_RETURN_IF_ERROR(String(value, path, "description", &out->description, false));
  PONDER_RETURN_IF_ERROR(Int(value, path, "min_steps", &out->min_steps, true));
  PONDER_RETURN_IF_ERROR(Int(value, path, "max_steps", &out->max_steps, true));
  if (out->min_steps < 1) {
    return Fail(Child(path, "min_steps"),
                "must be >= 1 (got " + std::to_string(out->min_steps) + ")");
  }
  if (out->max_steps > kMaxStepsLimit) {
    return Fail(Child(path, "max_steps"), "must be <= " + std::to_string(kMaxStepsLimit) +
                                              " (got " + std::to_string(out->max_steps) + ")");
  }
  if (out->max_steps < out->min_steps) {
    return Fail(Child(path, "max_steps"), "must be >= min_steps (" +
                                              std::to_string(out->max_steps) + " < " +
                                              std::to_string(out->min_steps) + ")");
  }
  if (const json* exit = Find(value, "exit")) {
    PONDER_RETURN_IF_ERROR(ParseExit(*exit, Child(path, "exit"), *out, &out->exit));
  }
  PONDER_RETURN_IF_ERROR(Bool(value, path, "warm_start", &out->warm_start, false));
  PONDER_RETURN_IF_ERROR(String(value, path, "kv_strategy", &out->kv_strategy, false));
  if (!ValidKvStrategy(out->kv_strategy)) {
    return Fail(Child(path, "kv_strategy"), "must be \"full\" or \"compress-sN\" with 1 <= N <= " +
                                                std::to_string(kMaxStepsLimit) + " (got \"" +
                                                out->kv_strategy + "\")");
  }
  PONDER_RETURN_IF_ERROR(Int(value, path, "priority", &out->priority, false));
  if (out->priority < 0 || out->priority > kMaxPriority) {
    return Fail(Child(path, "priority"), "must be in 0.." + std::to_string(kMaxPriority) +
                                             " (got " + std::to_string(out->priority) + ")");
  }
  PONDER_RETURN_IF_ERROR(Int(value, path, "deadline_ms", &out->deadline_ms, false));
  if (out->deadline_ms < 0) {
    return Fail(Child(path, "deadline_ms"),
                "must be >= 0, 0 for none (got " + std::to_string(out->deadline_ms) + ")");
  }
  if (const json* sampling = Find(value, "sampling")) {
    PONDER_RETURN_IF_ERROR(ParseSampling(*sampling, Child(path, "sampling"), &out->sampling));
  }
  return Status::Ok();
}

Status Parser::ParseRoute(const json& value, const std::string& path, const DomainProfile& profile,
                          RoutingRule* out) const {
  PONDER_RETURN_IF_ERROR(RequireObject(value, path));
  PONDER_RETURN_IF_ERROR(
      Known(value, path,
            {"class", "keywords", "regex", "min_prompt_chars", "max_prompt_chars", "metadata"}));
  PONDER_RETURN_IF_ERROR(String(value, path, "class", &out->task_class, true));
  if (profile.FindClass(out->task_class) == nullptr) {
    std::vector<std::string> names;
    for (const TaskClass& cls : profile.task_classes) names.push_back(cls.name);
    return Fail(Child(path, "class"), WithSuggestion("unknown class \"" + out->task_class + "\"",
                                                     out->task_class, names));
  }
  bool has_condition = false;
  if (const json* keywords = Find(value, "keywords")) {
    const std::string kpath = Child(path, "keywords");
    if (!keywords->is_array()) return Fail(kpath, "must be an array of strings");
    for (size_t i = 0; i < keywords->size(); ++i) {
      const json& keyword = (*keywords)[i];
      if (!keyword.is_string() || keyword.get<std::string>().empty()) {
        return Fail(Child(kpath, i), "must be a non-empty string");
      }
      out->keywords.push_back(AsciiLower(keyword.get<std::string>()));
    }
    if (out->keywords.empty()) return Fail(kpath, "must not be empty (omit it instead)");
    has_condition = true;
  }
  if (Find(value, "regex") != nullptr) {
    PONDER_RETURN_IF_ERROR(String(value, path, "regex", &out->regex_source, true));
    if (out->regex_source.empty()) return Fail(Child(path, "regex"), "must not be empty");
    try {
      out->regex.emplace(out->regex_source,
                         std::regex::ECMAScript | std::regex::icase | std::regex::optimize);
    } catch (const std::regex_error& e) {
      return Fail(Child(path, "regex"),
                  "invalid regular expression \"" + out->regex_source + "\" (" + e.what() + ")");
    }
    has_condition = true;
  }
  PONDER_RETURN_IF_ERROR(Int(value, path, "min_prompt_chars", &out->min_prompt_chars, false));
  if (out->min_prompt_chars < 0) {
    return Fail(Child(path, "min_prompt_chars"),
                "must be >= 0 (got " + std::to_string(out->min_prompt_chars) + ")");
  }
  PONDER_RETURN_IF_ERROR(Int(value, path, "max_prompt_chars", &out->max_prompt_chars, false));
  if (out->max_prompt_chars < 0) {
    return Fail(Child(path, "max_prompt_chars"),
                "must be >= 0, 0 for no limit (got " + std::to_string(out->max_prompt_chars) + ")");
  }
  if (out->max_prompt_chars > 0 && out->max_prompt_chars < out->min_prompt_chars) {
    return Fail(Child(path, "max_prompt_chars"), "must be >= min_prompt_chars (" +
                                                     std::to_string(out->max_prompt_chars) + " < " +
                                                     std::to_string(out->min_prompt_chars) + ")");
  }
  if (out->min_prompt_chars > 0 || out->max_prompt_chars > 0) has_condition = true;
  if (const json* metadata = Find(value, "metadata")) {
    const std::string mpath = Child(path, "metadata");
    if (!metadata->is_object()) return Fail(mpath, "must be an object of strings");
    for (const auto& [key, entry] : metadata->items()) {
      if (!entry.is_string()) return Fail(Child(mpath, key), "must be a string");
      out->metadata[key] = entry.get<std::string>();
    }
    if (out->metadata.empty()) return Fail(mpath, "must not be empty (omit it instead)");
    has_condition = true;
  }
  if (!has_condition) {
    return Fail(path,
                "has no condition (keywords, regex, min/max_prompt_chars or metadata); "
                "use default_class for a catch-all");
  }
  return Status::Ok();
}

Status Parser::ParseTenant(const json& value, const std::string& path, TenantBudget* out) const {
  PONDER_RETURN_IF_ERROR(RequireObject(value, path));
  PONDER_RETURN_IF_ERROR(Known(value, path, {"budget", "window_seconds", "on_exhausted"}));
  PONDER_RETURN_IF_ERROR(Double(value, path, "budget", &out->budget, true));
  if (out->budget < 0) {
    return Fail(Child(path, "budget"), "must be >= 0 (got " + Num(out->budget) + ")");
  }
  PONDER_RETURN_IF_ERROR(Double(value, path, "window_seconds", &out->window_seconds, false));
  if (out->window_seconds <= 0) {
    return Fail(Child(path, "window_seconds"),
                "must be > 0 (got " + Num(out->window_seconds) + ")");
  }
  std::string on_exhausted = OnExhaustedName(out->on_exhausted);
  PONDER_RETURN_IF_ERROR(String(value, path, "on_exhausted", &on_exhausted, false));
  if (on_exhausted == "degrade") {
    out->on_exhausted = OnExhausted::kDegrade;
  } else if (on_exhausted == "reject") {
    out->on_exhausted = OnExhausted::kReject;
  } else {
    return Fail(Child(path, "on_exhausted"),
                WithSuggestion("must be \"degrade\" or \"reject\" (got \"" + on_exhausted + "\")",
                               on_exhausted, {"degrade", "reject"}));
  }
  return Status::Ok();
}

Status Parser::ParsePricing(const json& value, const std::string& path, Pricing* out) const {
  PONDER_RETURN_IF_ERROR(RequireObject(value, path));
  PONDER_RETURN_IF_ERROR(Known(value, path, {"per_device_second", "per_tflop"}));
  PONDER_RETURN_IF_ERROR(Double(value, path, "per_device_second", &out->per_device_second, false));
  if (out->per_device_second < 0) {
    return Fail(Child(path, "per_device_second"),
                "must be >= 0 (got " + Num(out->per_device_second) + ")");
  }
  PONDER_RETURN_IF_ERROR(Double(value, path, "per_tflop", &out->per_tflop, false));
  if (out->per_tflop < 0) {
    return Fail(Child(path, "per_tflop"), "must be >= 0 (got " + Num(out->per_tflop) + ")");
  }
  if (out->per_device_second == 0 && out->per_tflop == 0) {
    return Fail(path, "at least one of per_device_second and per_tflop must be > 0");
  }
  return Status::Ok();
}

Status Parser::ParseRoot(const json& root, DomainProfile* out) const {
  const std::string path;  // the root
  PONDER_RETURN_IF_ERROR(RequireObject(root, path));
  PONDER_RETURN_IF_ERROR(Known(root, path,
                               {"name", "description", "currency", "pricing", "default_class",
                                "task_classes", "routing", "tenants"}));
  PONDER_RETURN_IF_ERROR(String(root, path, "name", &out->name, true));
  if (!ValidName(out->name)) {
    return Fail("/name", "must be a non-empty name of letters, digits, '_', '-' or '.' (got \"" +
                             out->name + "\")");
  }
  PONDER_RETURN_IF_ERROR(String(root, path, "description", &out->description, false));
  PONDER_RETURN_IF_ERROR(String(root, path, "currency", &out->currency, false));
  const bool currency_ok =
      out->currency.size() == 3 && std::all_of(out->currency.begin(), out->currency.end(),
                                               [](char c) { return c >= 'A' && c <= 'Z'; });
  if (!currency_ok) {
    return Fail("/currency", "must be a three-letter ISO 4217 code such as \"USD\" (got \"" +
                                 out->currency + "\")");
  }
  const json* pricing = Find(root, "pricing");
  if (pricing == nullptr) return Fail("/pricing", "missing required field");
  PONDER_RETURN_IF_ERROR(ParsePricing(*pricing, "/pricing", &out->pricing));

  const json* classes = Find(root, "task_classes");
  if (classes == nullptr) return Fail("/task_classes", "missing required field");
  if (!classes->is_array()) return Fail("/task_classes", "must be an array of classes");
  if (classes->empty()) return Fail("/task_classes", "must contain at least one class");
  std::map<std::string, size_t> first_index;
  for (size_t i = 0; i < classes->size(); ++i) {
    const std::string cpath = Child("/task_classes", i);
    TaskClass cls;
    PONDER_RETURN_IF_ERROR(ParseClass((*classes)[i], cpath, &cls));
    auto [it, inserted] = first_index.emplace(cls.name, i);
    if (!inserted) {
      return Fail(Child(cpath, "name"), "duplicate class \"" + cls.name + "\" (first at " +
                                            Child("/task_classes", it->second) + ")");
    }
    out->task_classes.push_back(std::move(cls));
  }

  PONDER_RETURN_IF_ERROR(String(root, path, "default_class", &out->default_class, true));
  if (out->FindClass(out->default_class) == nullptr) {
    std::vector<std::string> names;
    for (const TaskClass& cls : out->task_classes) names.push_back(cls.name);
    return Fail("/default_class", WithSuggestion("unknown class \"" + out->default_class + "\"",
                                                 out->default_class, names));
  }

  if (const json* routing = Find(root, "routing")) {
    if (!routing->is_array()) return Fail("/routing", "must be an array of rules");
    for (size_t i = 0; i < routing->size(); ++i) {
      RoutingRule rule;
      PONDER_RETURN_IF_ERROR(ParseRoute((*routing)[i], Child("/routing", i), *out, &rule));
      out->routing.push_back(std::move(rule));
    }
  }

  if (const json* tenants = Find(root, "tenants")) {
    if (!tenants->is_object()) return Fail("/tenants", "must be an object of tenant budgets");
    for (const auto& [tenant, entry] : tenants->items()) {
      const std::string tpath = Child("/tenants", tenant);
      if (tenant.empty()) return Fail(tpath, "tenant names must not be empty");
      TenantBudget budget;
      PONDER_RETURN_IF_ERROR(ParseTenant(entry, tpath, &budget));
      out->tenants[tenant] = budget;
    }
  }
  return Status::Ok();
}

}  // namespace

const char* OnExhaustedName(OnExhausted value) {
  return value == OnExhausted::kReject ? "reject" : "degrade";
}

const TaskClass* DomainProfile::FindClass(const std::string& class_name) const {
  for (const TaskClass& cls : task_classes) {
    if (cls.name == class_name) return &cls;
  }
  return nullptr;
}

const TenantBudget* DomainProfile::FindTenant(const std::string& tenant) const {
  if (auto it = tenants.find(tenant); it != tenants.end()) return &it->second;
  if (auto it = tenants.find("default"); it != tenants.end()) return &it->second;
  return nullptr;
}

Result<DomainProfile> ParseProfile(const std::string& text, const std::string& source) {
  Parser parser(source);
  try {
    json root;
    try {
      root = json::parse(text);
    } catch (const json::parse_error& e) {
      return parser.Fail("", std::string("not valid JSON (") + e.what() + ")");
    }
    DomainProfile profile;
    profile.source = source;
    PONDER_RETURN_IF_ERROR(parser.ParseRoot(root, &profile));
    return profile;
  } catch (const json::exception& e) {
    // The checks above leave nothing for the library to throw on; kept as the boundary.
    return parser.Fail("", std::string("JSON error (") + e.what() + ")");
  }
}

Result<DomainProfile> LoadProfile(const std::string& path) {
  PONDER_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path, "the profile file", "/: "));
  return ParseProfile(text, path);
}

Status ProfileRegistry::Load(const std::string& path) {
  PONDER_ASSIGN_OR_RETURN(DomainProfile profile, LoadProfile(path));
  Add(std::move(profile));
  return Status::Ok();
}

Status ProfileRegistry::Reload(const std::string& path) {
  Result<DomainProfile> profile = LoadProfile(path);
  if (!profile.ok()) {
    return profile.status().WithContext("reload kept the previous profile");
  }
  Add(std::move(profile).value());
  return Status::Ok();
}

void ProfileRegistry::Add(DomainProfile profile) {
  auto shared = std::make_shared<const DomainProfile>(std::move(profile));
  std::lock_guard<std::mutex> lock(mu_);
  profiles_[shared->name] = std::move(shared);
}

Result<std::shared_ptr<const DomainProfile>> ProfileRegistry::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = profiles_.find(name); it != profiles_.end()) return it->second;
  std::vector<std::string> names;
  std::string list;
  for (const auto& [key, unused] : profiles_) {
    names.push_back(key);
    list += (list.empty() ? "" : ", ") + key;
  }
  return NotFound(WithSuggestion("unknown profile \"" + name + "\"", name, names) +
                  "; registered: " + (list.empty() ? "none" : list));
}

std::vector<std::string> ProfileRegistry::Names() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> names;
  for (const auto& [key, unused] : profiles_) names.push_back(key);
  return names;
}

}  // namespace ponder::policy
