#include "apps/server/openai.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <random>
#include <set>

#include "policy/criteria.h"

namespace ponder::apps::server {
namespace {

using nlohmann::json;

// ---- Typed field access: JSON null and a missing field are both "absent".

const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

Status TypeError(const std::string& name, const std::string& what) {
  return InvalidArgument(name + ": must be " + what);
}

Result<std::optional<std::string>> OptString(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return TypeError(name, "a string");
  return std::optional<std::string>(v->get<std::string>());
}

Result<std::optional<bool>> OptBool(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return TypeError(name, "a boolean");
  return std::optional<bool>(v->get<bool>());
}

// A whole number in [lo, hi] (a float with an integral value counts: JavaScript has one
// number type).
Result<std::optional<int64_t>> OptInt(const json& body, const char* name, int64_t lo, int64_t hi) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::optional<int64_t>();
  const std::string range =
      "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  int64_t value = 0;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TypeError(name, range);
    }
    value = static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    value = v->get<int64_t>();
  } else if (v->is_number_float()) {
    const double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) {
      return TypeError(name, range);
    }
    value = static_cast<int64_t>(d);
  } else {
    return TypeError(name, range);
  }
  if (value < lo || value > hi) return TypeError(name, range);
  return std::optional<int64_t>(value);
}

Result<std::optional<double>> OptNumber(const json& body, const char* name, double lo, double hi,
                                        bool lo_open) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::optional<double>();
  char range[96];
  std::snprintf(range, sizeof(range), "a number in %c%g, %g]", lo_open ? '(' : '[', lo, hi);
  if (!v->is_number()) return TypeError(name, range);
  const double d = v->get<double>();
  if (!std::isfinite(d) || d > hi || d < lo || (lo_open && d == lo)) return TypeError(name, range);
  return std::optional<double>(d);
}

// OpenAI message content: a string, or an array of {"type": "text", "text": ...} parts.
Result<std::string> MessageContent(const json& message, size_t index) {
  const std::string where = "messages[" + std::to_string(index) + "].content";
  const json* c = Field(message, "content");
  if (c == nullptr) return std::string();  // e.g. an assistant turn without text
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) return TypeError(where, "a string or an array of text parts");
  std::string text;
  for (size_t i = 0; i < c->size(); ++i) {
    const json& part = (*c)[i];
    const std::string pw = where + "[" + std::to_string(i) + "]";
    if (!part.is_object()) return TypeError(pw, "an object {\"type\": \"text\", \"text\": ...}");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string() || type->get<std::string>() != "text") {
      return InvalidArgument(pw + ".type: only \"text\" parts are supported");
    }
    auto t = part.find("text");
    if (t == part.end() || !t->is_string()) return TypeError(pw + ".text", "a string");
    text += t->get<std::string>();
  }
  return text;
}

Result<std::vector<model::ChatMessage>> ParseMessages(const json& body) {
  const json* m = Field(body, "messages");
  if (m == nullptr) return InvalidArgument("messages: required");
  if (!m->is_array()) return TypeError("messages", "an array of {role, content} objects");
  if (m->empty()) return InvalidArgument("messages: must not be empty");
  std::vector<model::ChatMessage> out;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!msg.is_object()) return TypeError(where, "an object with role and content");
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) return TypeError(where + ".role", "a string");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r != "system" && r != "user" && r != "assistant") {
      return InvalidArgument(where + ".role: \"" + role->get<std::string>() +
                             "\" is not supported (system, developer, user, assistant)");
    }
    PONDER_ASSIGN_OR_RETURN(std::string content, MessageContent(msg, i));
    out.push_back({r, std::move(content)});
  }
  return out;
}

Result<std::string> ParsePrompt(const json& body) {
  const json* p = Field(body, "prompt");
  if (p == nullptr) return InvalidArgument("prompt: required");
  if (p->is_string()) return p->get<std::string>();
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) return (*p)[0].get<std::string>();
  if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
    return InvalidArgument("prompt: token-id prompts are not supported; send text");
  }
  return TypeError("prompt", "a string (or an array of one string)");
}

Result<std::vector<std::string>> ParseStop(const json& body) {
  const json* s = Field(body, "stop");
  if (s == nullptr) return std::vector<std::string>();
  if (s->is_string()) return std::vector<std::string>{s->get<std::string>()};
  if (!s->is_array()) return TypeError("stop", "a string or an array of strings");
  std::vector<std::string> out;
  for (const json& x : *s) {
    if (!x.is_string()) return TypeError("stop", "a string or an array of strings");
    out.push_back(x.get<std::string>());
  }
  if (out.size() > 4) return InvalidArgument("stop: at most 4 stop sequences");
  return out;
}

// `exit`: a rule name, or {"rule": name, "threshold": number}.
Status ParseExit(const json& body, policy::Request* req) {
  const json* e = Field(body, "exit");
  if (e == nullptr) return Status::Ok();
  const std::string what = "a rule name or an object {\"rule\", \"threshold\"}";
  std::string rule;
  if (e->is_string()) {
    rule = e->get<std::string>();
  } else if (e->is_object()) {
    auto r = OptString(*e, "rule");
    if (!r.ok()) return TypeError("exit.rule", "a rule name (a string)");
    if (!r->has_value()) return InvalidArgument("exit: \"rule\" is required (a rule name)");
    rule = **r;
    auto t = OptNumber(*e, "threshold", 0.0, std::numeric_limits<double>::max(), true);
    if (!t.ok()) return TypeError("exit.threshold", "a number > 0");
    req->exit_threshold = *t;
  } else {
    return TypeError("exit", what);
  }
  Result<policy::ExitRule> parsed = policy::ParseExitRule(rule);
  if (!parsed.ok()) return InvalidArgument("exit: " + parsed.status().message());
  req->exit_rule = rule;
  return Status::Ok();
}

// Fields OpenAI defines that Ponder does not implement: refusing them beats silently
// returning something else than asked.
Status RejectUnsupported(const json& body) {
  PONDER_ASSIGN_OR_RETURN(auto n, OptInt(body, "n", 1, 128));
  if (n.has_value() && *n != 1) return InvalidArgument("n: only n = 1 is supported");
  PONDER_ASSIGN_OR_RETURN(auto best_of, OptInt(body, "best_of", 1, 128));
  if (best_of.has_value() && *best_of != 1) {
    return InvalidArgument("best_of: only best_of = 1 is supported");
  }
  if (const json* echo = Field(body, "echo"); echo && !(echo->is_boolean() && !echo->get<bool>())) {
    return InvalidArgument("echo: not supported");
  }
  if (const json* lp = Field(body, "logprobs"); lp && !(lp->is_boolean() && !lp->get<bool>()) &&
                                                !(lp->is_number() && lp->get<double>() == 0)) {
    return InvalidArgument("logprobs: not supported");
  }
  if (const json* suffix = Field(body, "suffix");
      suffix && !(suffix->is_string() && suffix->get<std::string>().empty())) {
    return InvalidArgument("suffix: not supported");
  }
  if (const json* tools = Field(body, "tools"); tools && !(tools->is_array() && tools->empty())) {
    return InvalidArgument("tools: not supported");
  }
  if (const json* bias = Field(body, "logit_bias"); bias && !(bias->is_object() && bias->empty())) {
    return InvalidArgument("logit_bias: not supported");
  }
  if (const json* format = Field(body, "response_format");
      format && !(format->is_object() && format->size() == 1 && format->contains("type") &&
                  (*format)["type"] == "text")) {
    return InvalidArgument("response_format: only {\"type\": \"text\"} is supported");
  }
  for (const char* name : {"frequency_penalty", "presence_penalty", "top_logprobs"}) {
    if (const json* v = Field(body, name); v && !(v->is_number() && v->get<double>() == 0)) {
      return InvalidArgument(std::string(name) + ": not supported (only 0)");
    }
  }
  return Status::Ok();
}

Status ParseInto(const json& body, Endpoint endpoint, ApiRequest* out) {
  if (!body.is_object()) return InvalidArgument("body: must be a JSON object");
  PONDER_RETURN_IF_ERROR(RejectUnsupported(body));
  exec::GenerationRequest& g = out->generation;
  out->endpoint = endpoint;
  PONDER_ASSIGN_OR_RETURN(auto model, OptString(body, "model"));
  out->model = model.value_or("");
  if (endpoint == Endpoint::kChatCompletions) {
    g.format = exec::PromptFormat::kChat;
    PONDER_ASSIGN_OR_RETURN(g.messages, ParseMessages(body));
  } else {
    g.format = exec::PromptFormat::kCompletion;
    PONDER_ASSIGN_OR_RETURN(g.prompt, ParsePrompt(body));
  }
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  PONDER_ASSIGN_OR_RETURN(auto max_tokens, OptInt(body, "max_tokens", 1, kIntMax));
  if (endpoint == Endpoint::kChatCompletions) {
    PONDER_ASSIGN_OR_RETURN(auto mct, OptInt(body, "max_completion_tokens", 1, kIntMax));
    if (mct.has_value()) max_tokens = mct;
  }
  if (max_tokens.has_value()) g.max_tokens = static_cast<int>(*max_tokens);
  PONDER_ASSIGN_OR_RETURN(g.temperature, OptNumber(body, "temperature", 0.0, 2.0, false));
  PONDER_ASSIGN_OR_RETURN(g.top_p, OptNumber(body, "top_p", 0.0, 1.0, /*lo_open=*/true));
  PONDER_ASSIGN_OR_RETURN(auto seed, OptInt(body, "seed", std::numeric_limits<int64_t>::min(),
                                            std::numeric_limits<int64_t>::max()));
  if (seed.has_value()) g.seed = static_cast<uint64_t>(*seed);
  PONDER_ASSIGN_OR_RETURN(g.stop, ParseStop(body));
  PONDER_ASSIGN_OR_RETURN(auto stream, OptBool(body, "stream"));
  out->stream = stream.value_or(false);
  if (const json* so = Field(body, "stream_options")) {
    if (!so->is_object()) return TypeError("stream_options", "an object");
    PONDER_ASSIGN_OR_RETURN(auto iu, OptBool(*so, "include_usage"));
    out->include_usage = iu.value_or(false);
  }
  PONDER_ASSIGN_OR_RETURN(auto user, OptString(body, "user"));
  out->user = user.value_or("");

  // Ponder's fields.
  PONDER_ASSIGN_OR_RETURN(auto profile, OptString(body, "profile"));
  g.profile = profile.value_or("");
  policy::Request& p = g.policy;
  PONDER_ASSIGN_OR_RETURN(p.task_class, OptString(body, "task_class"));
  if (p.task_class.has_value() && p.task_class->empty()) p.task_class.reset();
  PONDER_ASSIGN_OR_RETURN(auto tenant, OptString(body, "tenant"));
  if (tenant.has_value() && !tenant->empty()) p.tenant = *tenant;
  PONDER_ASSIGN_OR_RETURN(auto min_steps, OptInt(body, "min_steps", 1, policy::kMaxStepsLimit));
  PONDER_ASSIGN_OR_RETURN(auto max_steps, OptInt(body, "max_steps", 1, policy::kMaxStepsLimit));
  if (min_steps.has_value()) p.min_steps = static_cast<int>(*min_steps);
  if (max_steps.has_value()) p.max_steps = static_cast<int>(*max_steps);
  if (min_steps.has_value() && max_steps.has_value() && *min_steps > *max_steps) {
    return InvalidArgument("min_steps: must be <= max_steps (" + std::to_string(*min_steps) +
                           " > " + std::to_string(*max_steps) + ")");
  }
  PONDER_RETURN_IF_ERROR(ParseExit(body, &p));
  PONDER_ASSIGN_OR_RETURN(auto deadline, OptInt(body, "deadline_ms", 0, 24LL * 3600 * 1000));
  p.deadline_ms = static_cast<int>(deadline.value_or(0));
  if (const json* md = Field(body, "metadata")) {
    if (!md->is_object()) return TypeError("metadata", "an object of strings");
    for (auto it = md->begin(); it != md->end(); ++it) {
      if (!it.value().is_string()) {
        return InvalidArgument("metadata: \"" + it.key() + "\" must be a string");
      }
      p.metadata[it.key()] = it.value().get<std::string>();
    }
  }
  PONDER_ASSIGN_OR_RETURN(auto rts, OptBool(body, "return_token_steps"));
  out->return_token_steps = rts.value_or(false);
  return Status::Ok();
}

// Request fields an error message may start with ("field: ..."), and array paths of them.
std::string ParamOf(const std::string& message, Endpoint endpoint) {
  static const std::set<std::string> kFields = {"model",
                                                "prompt",
                                                "messages",
                                                "max_tokens",
                                                "max_completion_tokens",
                                                "temperature",
                                                "top_p",
                                                "stream",
                                                "stream_options",
                                                "seed",
                                                "stop",
                                                "user",
                                                "n",
                                                "best_of",
                                                "echo",
                                                "logprobs",
                                                "suffix",
                                                "tools",
                                                "logit_bias",
                                                "response_format",
                                                "frequency_penalty",
                                                "presence_penalty",
                                                "top_logprobs",
                                                "profile",
                                                "task_class",
                                                "tenant",
                                                "min_steps",
                                                "max_steps",
                                                "exit",
                                                "deadline_ms",
                                                "metadata",
                                                "return_token_steps"};
  const size_t colon = message.find(':');
  const std::string head = colon == std::string::npos ? "" : message.substr(0, colon);
  const std::string base = head.substr(0, head.find_first_of("[."));
  if (!kFields.count(base)) {
    // Messages of the profile registry and the planner.
    if (message.rfind("unknown profile", 0) == 0) return "profile";
    if (message.find("exit_rule") != std::string::npos ||
        message.find("exit_threshold") != std::string::npos) {
      return "exit";
    }
    if (message.find("steps override") != std::string::npos) return "max_steps";
    return "";
  }
  if (base == "prompt" && endpoint == Endpoint::kChatCompletions) return "messages";
  return head;
}

std::string RandomHex(int digits) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  std::string s;
  uint64_t bits = 0;
  for (int i = 0; i < digits; ++i) {
    if (i % 16 == 0) bits = rng();
    s.push_back(kHex[bits & 15]);
    bits >>= 4;
  }
  return s;
}

const char* ObjectName(Endpoint endpoint, bool chunk) {
  if (endpoint == Endpoint::kCompletions) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json ChunkBase(const ResponseMeta& meta) {
  return {{"id", meta.id},
          {"object", ObjectName(meta.endpoint, true)},
          {"created", meta.created},
          {"model", meta.model}};
}

json ChunkChoice(const ResponseMeta& meta, const json& delta_or_text, const json& finish) {
  if (meta.endpoint == Endpoint::kCompletions) {
    return {
        {"index", 0}, {"text", delta_or_text}, {"logprobs", nullptr}, {"finish_reason", finish}};
  }
  return {{"index", 0}, {"delta", delta_or_text}, {"logprobs", nullptr}, {"finish_reason", finish}};
}

}  // namespace

Result<ApiRequest> ParseRequest(std::string_view body, Endpoint endpoint) {
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return InvalidArgument("body: not valid JSON");
  ApiRequest out;
  try {
    PONDER_RETURN_IF_ERROR(ParseInto(parsed, endpoint, &out));
  } catch (const json::exception& e) {  // defensive: every access above is type-checked
    return InvalidArgument(std::string("body: ") + e.what());
  }
  return out;
}

ApiError MakeError(int http_status, std::string message, std::string type, std::string param,
                   std::string code) {
  ApiError e;
  e.http_status = http_status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

ApiError ErrorFromStatus(const Status& status, Endpoint endpoint) {
  const std::string& msg = status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kNotFound:
      return MakeError(400, msg, "invalid_request_error", ParamOf(msg, endpoint),
                       status.code() == StatusCode::kNotFound ? "not_found" : "");
    case StatusCode::kResourceExhausted: {
      if (msg.rfind("budget:", 0) == 0) {
        return MakeError(429, msg, "insufficient_quota", "", "budget_exhausted");
      }
      if (msg.rfind("kv:", 0) == 0) {  // more KV than the whole budget: retrying cannot help
        return MakeError(400, msg, "invalid_request_error", "", "kv_budget_exceeded");
      }
      ApiError e = MakeError(429, msg, "rate_limit_error", "", "server_overloaded");
      e.retry_after_seconds = 1;
      return e;
    }
    case StatusCode::kUnavailable:
      return MakeError(503, msg, "unavailable_error", "", "unavailable");
    case StatusCode::kDeadlineExceeded:
      return MakeError(504, msg, "timeout_error", "", "deadline_exceeded");
    case StatusCode::kUnimplemented:
      return MakeError(400, msg, "invalid_request_error", ParamOf(msg, endpoint), "unsupported");
    default:
      return MakeError(500, msg, "server_error", "", "internal_error");
  }
}

json ErrorBody(const ApiError& error) {
  json e = {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}};
  return {{"error", e}};
}

std::string NewResponseId(Endpoint endpoint) {
  return (endpoint == Endpoint::kCompletions ? "cmpl-" : "chatcmpl-") + RandomHex(24);
}

json UsageJson(const exec::GenerationResult& result, bool token_steps) {
  const exec::Usage& u = result.usage;
  json j = {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens},
            {"steps_total", u.steps_total},
            {"mean_steps_per_token", u.mean_steps_per_token},
            {"flops", u.flops},
            {"cost", u.cost},
            {"currency", u.currency},
            {"task_class", result.plan.task_class},
            {"profile", result.plan.profile},
            {"tenant", result.plan.tenant}};
  if (token_steps) j["token_steps"] = u.token_steps;
  return j;
}

json CompletionResponse(const exec::GenerationResult& result, const ResponseMeta& meta) {
  json choice;
  if (meta.endpoint == Endpoint::kCompletions) {
    choice = {{"index", 0},
              {"text", result.text},
              {"logprobs", nullptr},
              {"finish_reason", result.finish_reason}};
  } else {
    choice = {{"index", 0},
              {"message", {{"role", "assistant"}, {"content", result.text}}},
              {"logprobs", nullptr},
              {"finish_reason", result.finish_reason}};
  }
  return {{"id", meta.id},
          {"object", ObjectName(meta.endpoint, false)},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array({choice})},
          {"usage", UsageJson(result, meta.return_token_steps)}};
}

json StreamRoleChunk(const ResponseMeta& meta) {
  json c = ChunkBase(meta);
  c["choices"] =
      json::array({ChunkChoice(meta, {{"role", "assistant"}, {"content", ""}}, nullptr)});
  return c;
}

json StreamTextChunk(const ResponseMeta& meta, const std::string& text) {
  json c = ChunkBase(meta);
  const json payload =
      meta.endpoint == Endpoint::kCompletions ? json(text) : json({{"content", text}});
  c["choices"] = json::array({ChunkChoice(meta, payload, nullptr)});
  return c;
}

json StreamFinishChunk(const ResponseMeta& meta, const std::string& finish_reason) {
  json c = ChunkBase(meta);
  const json payload = meta.endpoint == Endpoint::kCompletions ? json("") : json(json::object());
  c["choices"] = json::array({ChunkChoice(meta, payload, finish_reason)});
  return c;
}

json StreamUsageChunk(const ResponseMeta& meta, const exec::GenerationResult& result) {
  json c = ChunkBase(meta);
  c["choices"] = json::array();
  c["usage"] = UsageJson(result, meta.return_token_steps);
  return c;
}

std::string SseData(const json& chunk) {
  // Invalid UTF-8 (never expected: the engine emits text at code point boundaries) is
  // replaced rather than thrown on.
  return "data: " + chunk.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

json ProfileJson(const policy::DomainProfile& profile, bool is_default) {
  json classes = json::array();
  for (const policy::TaskClass& c : profile.task_classes) {
    classes.push_back({{"name", c.name},
                       {"description", c.description},
                       {"min_steps", c.min_steps},
                       {"max_steps", c.max_steps},
                       {"exit",
                        {{"rule", std::string(policy::ExitRuleName(c.exit.rule))},
                         {"threshold", c.exit.threshold}}},
                       {"priority", c.priority},
                       {"deadline_ms", c.deadline_ms},
                       {"kv_strategy", c.kv_strategy},
                       {"sampling",
                        {{"temperature", c.sampling.temperature},
                         {"top_p", c.sampling.top_p},
                         {"max_tokens", c.sampling.max_tokens}}}});
  }
  return {{"name", profile.name},
          {"object", "profile"},
          {"description", profile.description},
          {"currency", profile.currency},
          {"default", is_default},
          {"default_class", profile.default_class},
          {"classes", classes}};
}

}  // namespace ponder::apps::server
