// The server's wire format without sockets: request parsing, error mapping, response and
// stream-chunk shapes, API keys, the metrics text.
#include "apps/server/openai.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "apps/server/auth.h"

namespace ponder::apps::server {
namespace {

using nlohmann::json;

ApiRequest ParseOk(const json& body, Endpoint endpoint = Endpoint::kCompletions) {
  Result<ApiRequest> r = ParseRequest(body.dump(), endpoint);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? *r : ApiRequest{};
}

// The HTTP error a body gets.
ApiError ParseError(const std::string& body, Endpoint endpoint = Endpoint::kCompletions) {
  Result<ApiRequest> r = ParseRequest(body, endpoint);
  EXPECT_FALSE(r.ok()) << body;
  return r.ok() ? ApiError{} : ErrorFromStatus(r.status(), endpoint);
}

TEST(ParseRequest, CompletionWithEveryField) {
  const ApiRequest r = ParseOk({{"model", "ponder-micro"},
                                {"prompt", "+4*3+7*9="},
                                {"max_tokens", 12},
                                {"temperature", 0.5},
                                {"top_p", 0.9},
                                {"stream", true},
                                {"stream_options", {{"include_usage", true}}},
                                {"seed", 42},
                                {"stop", "\n"},
                                {"user", "u-17"},
                                {"profile", "finance"},
                                {"task_class", "risk_assessment"},
                                {"tenant", "acme"},
                                {"min_steps", 4},
                                {"max_steps", 16},
                                {"exit", {{"rule", "kl"}, {"threshold", 1e-4}}},
                                {"deadline_ms", 1500},
                                {"metadata", {{"desk", "risk"}}},
                                {"return_token_steps", true},
                                {"some_future_field", {1, 2, 3}}});
  const exec::GenerationRequest& g = r.generation;
  EXPECT_EQ(r.model, "ponder-micro");
  EXPECT_EQ(g.format, exec::PromptFormat::kCompletion);
  EXPECT_EQ(g.prompt, "+4*3+7*9=");
  EXPECT_EQ(g.max_tokens, 12);
  EXPECT_DOUBLE_EQ(*g.temperature, 0.5);
  EXPECT_DOUBLE_EQ(*g.top_p, 0.9);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(g.seed, 42u);
  EXPECT_EQ(g.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.user, "u-17");
  EXPECT_EQ(g.profile, "finance");
  EXPECT_EQ(g.policy.task_class, "risk_assessment");
  EXPECT_EQ(g.policy.tenant, "acme");
  EXPECT_EQ(g.policy.min_steps, 4);
  EXPECT_EQ(g.policy.max_steps, 16);
  EXPECT_EQ(g.policy.exit_rule, "kl");
  EXPECT_DOUBLE_EQ(*g.policy.exit_threshold, 1e-4);
  EXPECT_EQ(g.policy.deadline_ms, 1500);
  EXPECT_EQ(g.policy.metadata.at("desk"), "risk");
  EXPECT_TRUE(r.return_token_steps);
}

TEST(ParseRequest, DefaultsAndNulls) {
  const ApiRequest r = ParseOk({{"prompt", "hi"},
                                {"max_tokens", nullptr},
                                {"temperature", nullptr},
                                {"stop", nullptr},
                                {"exit", "latent-diff"}});
  const exec::GenerationRequest& g = r.generation;
  EXPECT_FALSE(g.max_tokens.has_value());
  EXPECT_FALSE(g.temperature.has_value());
  EXPECT_FALSE(g.top_p.has_value());
  EXPECT_TRUE(g.stop.empty());
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(g.profile, "");
  EXPECT_EQ(g.policy.tenant, "default");
  EXPECT_EQ(g.policy.exit_rule, "latent-diff");
  EXPECT_FALSE(g.policy.exit_threshold.has_value());
  EXPECT_EQ(g.policy.deadline_ms, 0);
  // A prompt array of one string, a float with an integral value for an integer field.
  const ApiRequest a = ParseOk({{"prompt", {"x"}}, {"max_tokens", 8.0}});
  EXPECT_EQ(a.generation.prompt, "x");
  EXPECT_EQ(a.generation.max_tokens, 8);
}

TEST(ParseRequest, ChatMessages) {
  const ApiRequest r =
      ParseOk({{"messages",
                {{{"role", "developer"}, {"content", "Be brief."}},
                 {{"role", "user"},
                  {"content",
                   {{{"type", "text"}, {"text", "Hello "}}, {{"type", "text"}, {"text", "you"}}}}},
                 {{"role", "assistant"}, {"content", nullptr}}}},
               {"max_completion_tokens", 5},
               {"max_tokens", 9}},
              Endpoint::kChatCompletions);
  const exec::GenerationRequest& g = r.generation;
  EXPECT_EQ(g.format, exec::PromptFormat::kChat);
  ASSERT_EQ(g.messages.size(), 3u);
  EXPECT_EQ(g.messages[0].role, "system");
  EXPECT_EQ(g.messages[1].content, "Hello you");
  EXPECT_EQ(g.messages[2].content, "");
  EXPECT_EQ(g.max_tokens, 5);  // max_completion_tokens wins
}

TEST(ParseRequest, WrongTypesNameTheField) {
  struct Case {
    std::string body;
    std::string param;
  };
  const std::vector<Case> cases = {
      {R"({"prompt": 5})", "prompt"},
      {R"({"prompt": [1, 2]})", "prompt"},
      {R"({})", "prompt"},
      {R"({"prompt": "x", "max_tokens": "10"})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens"},
      {R"({"prompt": "x", "temperature": 3})", "temperature"},
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "seed": "1"})", "seed"},
      {R"({"prompt": "x", "stop": [1]})", "stop"},
      {R"({"prompt": "x", "stop": ["a","b","c","d","e"]})", "stop"},
      {R"({"prompt": "x", "profile": 3})", "profile"},
      {R"({"prompt": "x", "task_class": false})", "task_class"},
      {R"({"prompt": "x", "tenant": {}})", "tenant"},
      {R"({"prompt": "x", "min_steps": 0})", "min_steps"},
      {R"({"prompt": "x", "max_steps": 5000})", "max_steps"},
      {R"({"prompt": "x", "min_steps": 8, "max_steps": 4})", "min_steps"},
      {R"({"prompt": "x", "exit": 1})", "exit"},
      {R"({"prompt": "x", "exit": "klx"})", "exit"},
      {R"({"prompt": "x", "exit": {"threshold": 0.1}})", "exit"},
      {R"({"prompt": "x", "exit": {"rule": "kl", "threshold": -1}})", "exit.threshold"},
      {R"({"prompt": "x", "deadline_ms": -5})", "deadline_ms"},
      {R"({"prompt": "x", "metadata": {"a": 1}})", "metadata"},
      {R"({"prompt": "x", "metadata": []})", "metadata"},
      {R"({"prompt": "x", "return_token_steps": 1})", "return_token_steps"},
      {R"({"prompt": "x", "n": 2})", "n"},
      {R"({"prompt": "x", "logprobs": 3})", "logprobs"},
      {R"({"prompt": "x", "user": 7})", "user"},
      {R"({"prompt": "x", "exit": {"rule": 5}})", "exit.rule"},
      // OpenAI fields Ponder does not implement, refused unless neutral.
      {R"({"prompt": "x", "logit_bias": {"55": -100}})", "logit_bias"},
      {R"({"prompt": "x", "response_format": {"type": "json_object"}})", "response_format"},
      {R"({"prompt": "x", "frequency_penalty": 0.5})", "frequency_penalty"},
      {R"({"prompt": "x", "presence_penalty": -1})", "presence_penalty"},
      {R"({"prompt": "x", "top_logprobs": 2})", "top_logprobs"},
  };
  for (const Case& c : cases) {
    const ApiError e = ParseError(c.body);
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.message;
    EXPECT_FALSE(e.message.empty());
  }
}

TEST(ParseRequest, NeutralValuesOfUnimplementedFieldsAreAccepted) {
  ParseOk(json::parse(R"({"prompt": "x", "logit_bias": {}, "response_format": {"type": "text"},
                          "frequency_penalty": 0, "presence_penalty": 0.0, "top_logprobs": 0,
                          "n": 1, "echo": false, "logprobs": null, "tools": []})"));
}

TEST(ParseRequest, BadChatAndBadJson) {
  EXPECT_EQ(ParseError(R"({"messages": []})", Endpoint::kChatCompletions).param, "messages");
  EXPECT_EQ(ParseError(R"({"prompt": "x"})", Endpoint::kChatCompletions).param, "messages");
  const ApiError role =
      ParseError(R"({"messages": [{"role": "tool", "content": "x"}]})", Endpoint::kChatCompletions);
  EXPECT_EQ(role.param, "messages[0].role");
  EXPECT_NE(role.message.find("tool"), std::string::npos);
  const ApiError part =
      ParseError(R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
                 Endpoint::kChatCompletions);
  EXPECT_EQ(part.param, "messages[0].content[0].type");
  const ApiError bad = ParseError("{\"prompt\": ");
  EXPECT_EQ(bad.http_status, 400);
  EXPECT_NE(bad.message.find("JSON"), std::string::npos);
  EXPECT_EQ(ParseError("[1, 2]").http_status, 400);
}

TEST(ErrorFromStatus, EngineErrors) {
  // Engine messages start with the field they are about.
  ApiError e =
      ErrorFromStatus(InvalidArgument("prompt: 70 tokens, at most 63"), Endpoint::kChatCompletions);
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.param, "messages");
  e = ErrorFromStatus(InvalidArgument("max_tokens: 900 is above the limit of 64"));
  EXPECT_EQ(e.param, "max_tokens");
  e = ErrorFromStatus(NotFound("unknown profile \"fin\" (did you mean \"finance\"?)"));
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.param, "profile");
  e = ErrorFromStatus(InvalidArgument("request: exit_threshold must be > 0 for rule kl"));
  EXPECT_EQ(e.param, "exit");
  e = ErrorFromStatus(ResourceExhausted("queue: 1 requests are waiting (the limit); retry later"));
  EXPECT_EQ(e.http_status, 429);
  EXPECT_EQ(e.code, "server_overloaded");
  EXPECT_EQ(e.retry_after_seconds, 1);
  e = ErrorFromStatus(ResourceExhausted("budget: tenant trial exhausted (spent 5.00 of 5.00 USD)"));
  EXPECT_EQ(e.http_status, 429);
  EXPECT_EQ(e.type, "insufficient_quota");
  EXPECT_EQ(e.code, "budget_exhausted");
  EXPECT_EQ(e.retry_after_seconds, 0);
  e =
      ErrorFromStatus(ResourceExhausted("kv: the request needs up to 9 bytes of KV cache, more "
                                        "than the engine's budget of 8"));
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.code, "kv_budget_exceeded");
  EXPECT_EQ(e.retry_after_seconds, 0);
  EXPECT_EQ(ErrorFromStatus(Internal("bug")).http_status, 500);
  EXPECT_EQ(ErrorFromStatus(Status(StatusCode::kUnavailable, "x")).http_status, 503);
}

TEST(ErrorBody, OpenAIShape) {
  const json b = ErrorBody(MakeError(400, "bad", "invalid_request_error", "top_p"));
  EXPECT_EQ(b["error"]["message"], "bad");
  EXPECT_EQ(b["error"]["type"], "invalid_request_error");
  EXPECT_EQ(b["error"]["param"], "top_p");
  EXPECT_TRUE(b["error"]["code"].is_null());
}

exec::GenerationResult SampleResult() {
  exec::GenerationResult r;
  r.request_id = 3;
  r.text = "63";
  r.finish_reason = "stop";
  r.plan.profile = "finance";
  r.plan.task_class = "routine_transaction";
  r.usage.prompt_tokens = 10;
  r.usage.completion_tokens = 3;
  r.usage.steps_total = 20;
  r.usage.mean_steps_per_token = 20.0 / 3;
  r.usage.token_steps = {8, 8, 4};
  r.usage.flops = 1.5e9;
  r.usage.cost = 0.002;
  r.usage.currency = "USD";
  return r;
}

TEST(Responses, CompletionAndChat) {
  ResponseMeta meta;
  meta.id = NewResponseId(Endpoint::kCompletions);
  meta.created = 1700000000;
  meta.model = "ponder-micro";
  EXPECT_EQ(meta.id.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(meta.id.size(), 5u + 24u);
  EXPECT_NE(meta.id, NewResponseId(Endpoint::kCompletions));
  json c = CompletionResponse(SampleResult(), meta);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["model"], "ponder-micro");
  EXPECT_EQ(c["created"], 1700000000);
  EXPECT_EQ(c["choices"][0]["text"], "63");
  EXPECT_EQ(c["choices"][0]["index"], 0);
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  const json& u = c["usage"];
  EXPECT_EQ(u["prompt_tokens"], 10);
  EXPECT_EQ(u["completion_tokens"], 3);
  EXPECT_EQ(u["total_tokens"], 13);
  EXPECT_EQ(u["steps_total"], 20);
  EXPECT_DOUBLE_EQ(u["mean_steps_per_token"].get<double>(), 20.0 / 3);
  EXPECT_DOUBLE_EQ(u["flops"].get<double>(), 1.5e9);
  EXPECT_DOUBLE_EQ(u["cost"].get<double>(), 0.002);
  EXPECT_EQ(u["currency"], "USD");
  EXPECT_EQ(u["task_class"], "routine_transaction");
  EXPECT_EQ(u["profile"], "finance");
  EXPECT_FALSE(u.contains("token_steps"));

  meta.endpoint = Endpoint::kChatCompletions;
  meta.return_token_steps = true;
  exec::GenerationResult r = SampleResult();
  r.finish_reason = "deadline";
  c = CompletionResponse(r, meta);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "63");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "deadline");
  EXPECT_EQ(c["usage"]["token_steps"], json({8, 8, 4}));
}

TEST(Responses, StreamChunks) {
  ResponseMeta meta;
  meta.id = "cmpl-x";
  meta.model = "m";
  json t = StreamTextChunk(meta, "6");
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "6");
  EXPECT_TRUE(t["choices"][0]["finish_reason"].is_null());
  json f = StreamFinishChunk(meta, "length");
  EXPECT_EQ(f["choices"][0]["text"], "");
  EXPECT_EQ(f["choices"][0]["finish_reason"], "length");

  meta.endpoint = Endpoint::kChatCompletions;
  json role = StreamRoleChunk(meta);
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  t = StreamTextChunk(meta, "ab");
  EXPECT_EQ(t["choices"][0]["delta"]["content"], "ab");
  EXPECT_FALSE(t["choices"][0]["delta"].contains("role"));
  f = StreamFinishChunk(meta, "cancelled");
  EXPECT_TRUE(f["choices"][0]["delta"].empty());
  EXPECT_EQ(f["choices"][0]["finish_reason"], "cancelled");
  json u = StreamUsageChunk(meta, SampleResult());
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 13);

  const std::string sse = SseData(json{{"a", 1}});
  EXPECT_EQ(sse, "data: {\"a\":1}\n\n");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
  // Invalid UTF-8 does not throw.
  EXPECT_NO_THROW(SseData(StreamTextChunk(meta, std::string("\xff", 1))));
}

TEST(Auth, KeysFileAndBearer) {
  auto keys = ParseApiKeys(R"({"sk-a": "acme", "sk-b": "beta"})", "keys.json");
  ASSERT_TRUE(keys.ok()) << keys.status().message();
  KeyTable table(*keys);
  EXPECT_EQ(table.Tenant("sk-a"), "acme");
  EXPECT_EQ(table.Tenant("sk-b"), "beta");
  EXPECT_FALSE(table.Tenant("sk-").has_value());
  EXPECT_FALSE(table.Tenant("sk-ab").has_value());
  EXPECT_FALSE(table.Tenant("").has_value());
  for (const char* bad : {"[]", "{}", "{\"k\": 1}", "{\"k\": \"\"}", "{\"\": \"t\"}", "nope"}) {
    auto r = ParseApiKeys(bad, "keys.json");
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("keys.json"), std::string::npos);
    }
  }
  EXPECT_FALSE(LoadApiKeys("/nonexistent/keys.json").ok());
  EXPECT_EQ(BearerToken("Bearer sk-a"), "sk-a");
  EXPECT_EQ(BearerToken("bearer   sk-a "), "sk-a");
  EXPECT_FALSE(BearerToken("Basic abc").has_value());
  EXPECT_FALSE(BearerToken("Bearer ").has_value());
  EXPECT_FALSE(BearerToken("").has_value());
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

}  // namespace
}  // namespace ponder::apps::server
