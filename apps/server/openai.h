#pragma once

// The OpenAI-compatible wire format of `ponder serve`: request bodies of /v1/completions and
// /v1/chat/completions parsed into an exec::GenerationRequest, results turned into OpenAI
// response and stream-chunk objects, errors into OpenAI error bodies. Pure functions over
// JSON and plain data (no sockets, no engine), so that the mapping is tested on its own.
//
// Requests take OpenAI's fields (model, prompt, messages, max_tokens, max_completion_tokens,
// temperature, top_p, stream, stream_options.include_usage, seed, stop, user, n = 1) and
// Ponder's (profile, task_class, tenant, min_steps, max_steps, exit, deadline_ms, metadata,
// return_token_steps). Unknown fields are ignored and JSON null is "absent", as OpenAI does;
// a known field of the wrong type or range is an error naming the field. Responses add
// Ponder's usage fields (steps_total, mean_steps_per_token, flops, cost, currency,
// task_class, profile, tenant, token_steps on request) to OpenAI's usage object. finish_reason is
// the engine's: "stop", "length", and Ponder's "deadline" (the request's deadline passed)
// and "cancelled" (the request was cancelled, e.g. at shutdown).

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "core/status.h"
#include "exec/engine.h"
#include "policy/profile.h"

namespace ponder::apps::server {

enum class Endpoint { kCompletions, kChatCompletions };

// One parsed /v1/completions or /v1/chat/completions request.
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  exec::GenerationRequest generation;  // format, prompt or messages, sampling, policy fields
  std::string model;                   // as given; "" when absent
  std::string user;                    // OpenAI's end-user id (validated, not used)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  bool return_token_steps = false;
};

// Parses a request body. Errors are kInvalidArgument whose message starts with the field,
// "temperature: must be a number in [0, 2]" (ErrorFromStatus turns the prefix into `param`).
[[nodiscard]] Result<ApiRequest> ParseRequest(std::string_view body, Endpoint endpoint);

// An error as the HTTP layer sends it: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type;   // "invalid_request_error", "rate_limit_error", "insufficient_quota", ...
  std::string param;  // the offending request field; "" is sent as null
  std::string code;   // machine-readable; "" is sent as null
  int retry_after_seconds = 0;  // > 0: send a Retry-After header
};

// Maps a Status from ParseRequest or Engine::Submit to an ApiError:
//   kInvalidArgument, kNotFound, kOutOfRange -> 400 invalid_request_error (param from the
//     message's "field:" prefix when it names a request field; "prompt" reads "messages" on
//     the chat endpoint)
//   kResourceExhausted "budget: ..." (the tenant's budget, profile on_exhausted = reject)
//     -> 429 insufficient_quota, code "budget_exhausted", no Retry-After
//   kResourceExhausted "kv: ..." (the request's worst-case KV cache exceeds the engine's
//     whole budget: it can never be admitted) -> 400, code "kv_budget_exceeded"
//   other kResourceExhausted (the queue is full) -> 429 rate_limit_error, code
//     "server_overloaded", Retry-After 1
//   kUnavailable -> 503; kDeadlineExceeded -> 504; anything else -> 500 server_error.
ApiError ErrorFromStatus(const Status& status, Endpoint endpoint = Endpoint::kCompletions);
ApiError MakeError(int http_status, std::string message, std::string type, std::string param = "",
                   std::string code = "");
nlohmann::json ErrorBody(const ApiError& error);

// What every response object of one request shares.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;    // the served model's name
  bool return_token_steps = false;
};

// "cmpl-" or "chatcmpl-" and 24 random hex digits.
std::string NewResponseId(Endpoint endpoint);

// OpenAI usage plus Ponder's fields.
nlohmann::json UsageJson(const exec::GenerationResult& result, bool token_steps);
// The non-streaming response: object "text_completion" or "chat.completion".
nlohmann::json CompletionResponse(const exec::GenerationResult& result, const ResponseMeta& meta);

// Stream chunks (object "text_completion" or "chat.completion.chunk"). The chat stream
// opens with a chunk whose delta is {"role": "assistant", "content": ""}.
nlohmann::json StreamRoleChunk(const ResponseMeta& meta);
nlohmann::json StreamTextChunk(const ResponseMeta& meta, const std::string& text);
// The last choice chunk: empty text or delta, with the finish_reason.
nlohmann::json StreamFinishChunk(const ResponseMeta& meta, const std::string& finish_reason);
// With stream_options.include_usage: a chunk with no choices and the usage.
nlohmann::json StreamUsageChunk(const ResponseMeta& meta, const exec::GenerationResult& result);
// "data: <compact json>\n\n".
std::string SseData(const nlohmann::json& chunk);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// GET /v1/profiles entry: name, description, currency, default, classes with their depth
// range, exit rule, priority, deadline and sampling defaults.
nlohmann::json ProfileJson(const policy::DomainProfile& profile, bool is_default);

}  // namespace ponder::apps::server
