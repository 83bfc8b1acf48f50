#include "apps/server/server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "apps/server/auth.h"
#include "apps/server/openai.h"
#include "telemetry/prometheus_sink.h"

namespace ponder::apps::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr auto kPollInterval = std::chrono::milliseconds(20);
constexpr auto kKeepAliveInterval = std::chrono::seconds(1);
// Connections that may wait to be accepted (Server::Bind).
constexpr int kListenBacklog = 1024;

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void SendError(httplib::Response& res, const ApiError& error) {
  if (error.retry_after_seconds > 0) {
    res.set_header("Retry-After", std::to_string(error.retry_after_seconds));
  }
  if (error.http_status == 401) res.set_header("WWW-Authenticate", "Bearer");
  SendJson(res, error.http_status, ErrorBody(error));
}

// What the engine's worker thread hands a streaming response: token texts as they come.
struct StreamState {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> pieces;
  int64_t request_id = -1;
  bool opened = false;     // the chat role chunk is out
  bool completed = false;  // [DONE] is out: nothing to cancel
  bool cancel_sent = false;
  std::string sent;  // the text streamed so far
  Clock::time_point last_write = Clock::now();
};

}  // namespace

struct Server::Impl {
  ServerOptions options;
  KeyTable keys;
  httplib::Server http;
  int listen_socket = -1;  // the socket http listens on, once bound
  std::atomic<bool> stopping{false};
  std::atomic<bool> run_entered{false};
  std::atomic<bool> listen_done{false};
  std::once_flag stop_once;
  int64_t started_unix = 0;

  mutable std::mutex engine_mu;
  std::shared_ptr<exec::Engine> engine;  // null while loading
  std::string model_name;                // set with `engine`
  Status load_status;

  std::mutex streams_mu;
  std::map<std::string, int> streams_by_tenant;  // open streams (entries at zero are erased)

  // /metrics: the engine's telemetry (ponder_engine_ready 0 while it loads).
  std::shared_ptr<telemetry::PrometheusSink> sink;

  explicit Impl(ServerOptions o) : options(std::move(o)), keys(options.api_keys) {
    sink = std::make_shared<telemetry::PrometheusSink>(
        telemetry::PrometheusOptions{.model_name = exec::ModelNameOf(options.engine.model_dir)});
    for (const auto& [key, tenant] : options.api_keys) sink->AllowTenant(tenant);
    sink->OnReady(false);
    options.engine.sink = sink;
  }

  std::shared_ptr<exec::Engine> Engine() const {
    std::lock_guard<std::mutex> lock(engine_mu);
    return engine;
  }

  void Routes();
  void Load();
  // Makes listen_after_bind return, also when it is about to start (a load that failed at
  // once, a signal during start-up).
  void StopHttp();

  // nullptr after answering 503 while the model loads.
  std::shared_ptr<exec::Engine> RequireEngine(httplib::Response& res) const;
  // With API keys: the caller's tenant, or false after answering 401.
  bool Authorize(const httplib::Request& req, httplib::Response& res,
                 std::optional<std::string>* tenant) const;
  // Admin endpoints: false after answering 403.
  bool AuthorizeAdmin(const httplib::Request& req, httplib::Response& res) const;

  void HandleGeneration(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  void Stream(httplib::Response& res, std::shared_ptr<exec::Engine> engine, ApiRequest request,
              ResponseMeta meta);
  void HandleModels(const httplib::Request& req, httplib::Response& res);
  void HandleProfiles(const httplib::Request& req, httplib::Response& res, bool reload);
  void HandleMetrics(const httplib::Request& req, httplib::Response& res);
};

std::shared_ptr<exec::Engine> Server::Impl::RequireEngine(httplib::Response& res) const {
  auto e = Engine();
  if (!e) {
    SendError(res, MakeError(503, "the model is loading; retry shortly", "unavailable_error", "",
                             "loading"));
    res.set_header("Retry-After", "1");
  }
  return e;
}

bool Server::Impl::Authorize(const httplib::Request& req, httplib::Response& res,
                             std::optional<std::string>* tenant) const {
  if (keys.empty()) return true;
  const auto token = BearerToken(req.get_header_value("Authorization"));
  if (!token.has_value()) {
    SendError(res, MakeError(401, "missing API key: send \"Authorization: Bearer <key>\"",
                             "invalid_request_error", "", "invalid_api_key"));
    return false;
  }
  auto t = keys.Tenant(*token);
  if (!t.has_value()) {
    SendError(res,
              MakeError(401, "invalid API key", "invalid_request_error", "", "invalid_api_key"));
    return false;
  }
  *tenant = std::move(t);
  return true;
}

bool Server::Impl::AuthorizeAdmin(const httplib::Request& req, httplib::Response& res) const {
  if (keys.empty() && options.admin_key.empty()) return true;
  const auto token = BearerToken(req.get_header_value("Authorization"));
  if (!options.admin_key.empty() && token.has_value() &&
      ConstantTimeEquals(*token, options.admin_key)) {
    return true;
  }
  SendError(res, MakeError(403,
                           options.admin_key.empty()
                               ? "this endpoint is disabled: the server has API keys but no "
                                 "--admin-key"
                               : "this endpoint needs the admin key as a bearer token",
                           "permission_error", "", "forbidden"));
  return false;
}

void Server::Impl::HandleGeneration(const httplib::Request& req, httplib::Response& res,
                                    Endpoint endpoint) {
  std::optional<std::string> tenant;
  if (!Authorize(req, res, &tenant)) return;
  auto engine = RequireEngine(res);
  if (!engine) return;
  Result<ApiRequest> parsed = ParseRequest(req.body, endpoint);
  if (!parsed.ok()) return SendError(res, ErrorFromStatus(parsed.status(), endpoint));
  ApiRequest& api = *parsed;
  const exec::ModelInfo info = engine->model_info();
  if (!api.model.empty() && api.model != info.name) {
    const std::string message =
        "model \"" + api.model + "\" does not exist; this server serves \"" + info.name + "\"";
    return SendError(res,
                     MakeError(404, message, "invalid_request_error", "model", "model_not_found"));
  }
  // Profile and class are checked here for precise errors (the engine would refuse too).
  exec::GenerationRequest& gen = api.generation;
  auto profile = engine->Profile(gen.profile.empty() ? engine->default_profile() : gen.profile);
  if (!profile.ok()) {
    return SendError(res, MakeError(400, profile.status().message(), "invalid_request_error",
                                    "profile", "profile_not_found"));
  }
  if (gen.policy.task_class.has_value() &&
      (*profile)->FindClass(*gen.policy.task_class) == nullptr) {
    std::string list;
    for (const auto& c : (*profile)->task_classes) list += (list.empty() ? "" : ", ") + c.name;
    return SendError(res, MakeError(400,
                                    "task_class: unknown class \"" + *gen.policy.task_class +
                                        "\" of profile " + (*profile)->name + " (" + list + ")",
                                    "invalid_request_error", "task_class", "task_class_not_found"));
  }
  if (tenant.has_value()) gen.policy.tenant = *tenant;  // the key decides, not the body

  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id = NewResponseId(endpoint);
  meta.created = static_cast<int64_t>(std::time(nullptr));
  meta.model = info.name;
  meta.return_token_steps = api.return_token_steps;
  if (api.stream) return Stream(res, std::move(engine), std::move(api), std::move(meta));

  Result<exec::RequestHandle> handle = engine->Submit(gen);
  if (!handle.ok()) return SendError(res, ErrorFromStatus(handle.status(), endpoint));
  bool cancel_sent = false;
  while (handle->result.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready) {
    if (stopping.load() && !cancel_sent) {
      cancel_sent = true;
      engine->Cancel(handle->id);  // shutting down: answer with what there is
    }
  }
  const Result<exec::GenerationResult>& result = handle->result.get();
  if (!result.ok()) return SendError(res, ErrorFromStatus(result.status(), endpoint));
  SendJson(res, 200, CompletionResponse(*result, meta));
}

void Server::Impl::Stream(httplib::Response& res, std::shared_ptr<exec::Engine> engine,
                          ApiRequest api, ResponseMeta meta) {
  // Streams a tenant holds open at once: each holds an HTTP thread for its whole length.
  const std::string tenant = api.generation.policy.tenant;
  {
    std::lock_guard<std::mutex> lock(streams_mu);
    int& open = streams_by_tenant[tenant];
    if (options.max_streams_per_tenant > 0 && open >= options.max_streams_per_tenant) {
      if (open == 0) streams_by_tenant.erase(tenant);
      engine->CountRejected(api.generation);
      ApiError error = MakeError(429,
                                 "tenant " + tenant + " has " + std::to_string(open) +
                                     " streams open, the limit; retry when one ends",
                                 "rate_limit_error", "", "too_many_streams");
      error.retry_after_seconds = 1;
      return SendError(res, error);
    }
    ++open;
  }
  // Releases the tenant's stream slot once, whichever way the stream ends.
  auto slot = std::shared_ptr<void>(nullptr, [this, tenant](void*) {
    std::lock_guard<std::mutex> lock(streams_mu);
    auto it = streams_by_tenant.find(tenant);
    if (it != streams_by_tenant.end() && --it->second <= 0) streams_by_tenant.erase(it);
  });
  auto st = std::make_shared<StreamState>();
  Result<exec::RequestHandle> submitted =
      engine->Submit(api.generation, [st](const exec::TokenEvent& t) {
        if (t.text.empty()) return;  // mid UTF-8 sequence: the text comes with a later token
        {
          std::lock_guard<std::mutex> lock(st->mu);
          st->pieces.push_back(t.text);
        }
        st->cv.notify_one();
      });
  // Refusals come before any event: an ordinary JSON error with its HTTP status.
  if (!submitted.ok()) return SendError(res, ErrorFromStatus(submitted.status(), meta.endpoint));
  st->request_id = submitted->id;
  auto result = submitted->result;
  const bool include_usage = api.include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");

  // Called by httplib again and again until sink.done(); false (or a failed write) ends the
  // response, and the releaser then cancels a request that did not finish.
  auto provider = [this, st, engine, result, meta, include_usage](size_t, httplib::DataSink& sink) {
    auto write = [&](const std::string& s) {
      if (!sink.write(s.data(), s.size())) return false;
      st->last_write = Clock::now();
      return true;
    };
    if (!st->opened) {
      st->opened = true;
      if (meta.endpoint == Endpoint::kChatCompletions && !write(SseData(StreamRoleChunk(meta)))) {
        return false;
      }
    }
    std::deque<std::string> pieces;
    {
      std::unique_lock<std::mutex> lock(st->mu);
      st->cv.wait_for(lock, kPollInterval, [&] { return !st->pieces.empty(); });
      pieces.swap(st->pieces);
    }
    const bool ready = result.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
    if (ready) {  // the last tokens' callbacks ran before the result was set
      std::lock_guard<std::mutex> lock(st->mu);
      for (auto& p : st->pieces) pieces.push_back(std::move(p));
      st->pieces.clear();
    }
    for (const std::string& text : pieces) {
      if (!write(SseData(StreamTextChunk(meta, text)))) return false;
      st->sent += text;
    }
    if (ready) {
      const Result<exec::GenerationResult>& r = result.get();
      if (!r.ok()) {
        if (!write(SseData(ErrorBody(ErrorFromStatus(r.status(), meta.endpoint))))) return false;
      } else {
        // Text the token events did not carry (a trailing partial UTF-8 sequence) comes last.
        if (r->text.size() > st->sent.size() &&
            r->text.compare(0, st->sent.size(), st->sent) == 0 &&
            !write(SseData(StreamTextChunk(meta, r->text.substr(st->sent.size()))))) {
          return false;
        }
        if (!write(SseData(StreamFinishChunk(meta, r->finish_reason)))) return false;
        if (include_usage && !write(SseData(StreamUsageChunk(meta, *r)))) return false;
      }
      if (!write(std::string(kSseDone))) return false;
      st->completed = true;
      sink.done();
      return true;
    }
    // Nothing to send for a while (queued, long prefill, deep tokens): an SSE comment, whose
    // failure tells that the client is gone.
    if (Clock::now() - st->last_write >= kKeepAliveInterval && !write(": keep-alive\n\n")) {
      return false;
    }
    if (stopping.load() && !st->cancel_sent) {
      st->cancel_sent = true;
      engine->Cancel(st->request_id);  // the result ("cancelled") ends the stream
    }
    return true;
  };
  auto releaser = [st, engine, slot](bool /*success*/) {
    if (!st->completed) {
      if (engine->Cancel(st->request_id)) {
        spdlog::info("request {}: client gone, cancelled", st->request_id);
      }
    }
  };
  res.set_chunked_content_provider("text/event-stream", std::move(provider), std::move(releaser));
}

void Server::Impl::HandleModels(const httplib::Request& req, httplib::Response& res) {
  std::optional<std::string> tenant;
  if (!Authorize(req, res, &tenant)) return;
  auto engine = RequireEngine(res);
  if (!engine) return;
  const exec::ModelInfo info = engine->model_info();
  json model = {{"id", info.name},
                {"object", "model"},
                {"created", started_unix},
                {"owned_by", "ponder"},
                {"parameters", info.parameters},
                {"context_length", info.context},
                {"mean_recurrence", info.mean_recurrence}};
  SendJson(res, 200, {{"object", "list"}, {"data", json::array({model})}});
}

void Server::Impl::HandleProfiles(const httplib::Request& req, httplib::Response& res,
                                  bool reload) {
  if (reload) {
    if (!AuthorizeAdmin(req, res)) return;
  } else {
    std::optional<std::string> tenant;
    if (!Authorize(req, res, &tenant)) return;
  }
  auto engine = RequireEngine(res);
  if (!engine) return;
  if (reload) {
    const Status s = engine->ReloadProfiles();
    if (!s.ok()) {
      spdlog::warn("profile reload failed, old profiles kept: {}", s.message());
      return SendError(res,
                       MakeError(400, s.message(), "invalid_request_error", "", "invalid_profile"));
    }
    spdlog::info("profiles reloaded");
  }
  json data = json::array();
  const std::string default_name = engine->default_profile();
  for (const std::string& name : engine->ProfileNames()) {
    auto p = engine->Profile(name);
    if (p.ok()) data.push_back(ProfileJson(**p, name == default_name));
  }
  SendJson(res, 200, {{"object", "list"}, {"data", data}});
}

void Server::Impl::HandleMetrics(const httplib::Request& req, httplib::Response& res) {
  if (!AuthorizeAdmin(req, res)) return;
  if (auto engine = Engine()) engine->PublishTelemetry();
  res.set_content(sink->Serialize(), "text/plain; version=0.0.4; charset=utf-8");
}

void Server::Impl::Routes() {
  http.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) {
    HandleGeneration(q, r, Endpoint::kCompletions);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) {
    HandleGeneration(q, r, Endpoint::kChatCompletions);
  });
  http.Get("/v1/models", [this](const auto& q, auto& r) { HandleModels(q, r); });
  http.Get("/v1/profiles", [this](const auto& q, auto& r) { HandleProfiles(q, r, false); });
  http.Post("/v1/profiles/reload", [this](const httplib::Request& q, httplib::Response& r) {
    HandleProfiles(q, r, true);
  });
  http.Get("/metrics", [this](const auto& q, auto& r) { HandleMetrics(q, r); });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    if (Engine()) return SendJson(r, 200, {{"status", "ok"}});
    // llama.cpp's shape of the loading answer.
    SendJson(
        r, 503,
        {{"error", {{"code", 503}, {"message", "Loading model"}, {"type", "unavailable_error"}}}});
  });
  // Range headers are ignored: cpp-httplib would answer 206 with the body once per range
  // asked for (a request of a few KB, an answer of MBs). The request object is httplib's
  // own, not const; the ranges are applied after routing.
  http.set_pre_routing_handler([](const httplib::Request& q, httplib::Response&) {
    const_cast<httplib::Request&>(q).ranges.clear();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's own refusals (no route, body too large, malformed request) get an OpenAI body
  // that says why where it can tell.
  http.set_error_handler([this](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    std::string message = "the request was refused (HTTP " + std::to_string(r.status) + ")";
    std::string code;
    const std::string type = q.get_header_value("Content-Type");
    if (r.status == 404) {
      message = "no route for " + q.method + " " + q.path;
      code = "not_found";
    } else if (r.status == 413 && type.rfind("application/x-www-form-urlencoded", 0) == 0) {
      message =
          "a body sent as application/x-www-form-urlencoded (curl -d's default) may be "
          "at most " +
          std::to_string(CPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH) +
          " bytes; send JSON with the header Content-Type: application/json";
      code = "payload_too_large";
    } else if (r.status == 413) {
      message = "request body larger than " + std::to_string(options.max_body_bytes) +
                " bytes (--max-body-bytes)";
      code = "payload_too_large";
    } else if (r.status == 400 && !q.has_header("REMOTE_ADDR")) {
      // (httplib sets REMOTE_ADDR once the request line and headers have parsed.)
      message = "malformed HTTP request (request line or headers)";
    } else if (r.status == 400 && q.method == "POST" && !q.has_header("Content-Length") &&
               !q.has_header("Transfer-Encoding")) {
      message = "a POST needs a Content-Length header, also for an empty body (curl: -d '')";
    } else if (r.status == 400 && q.has_header("Content-Encoding")) {
      message = "the body could not be decoded (Content-Encoding " +
                q.get_header_value("Content-Encoding") + ": corrupt or truncated?)";
    } else if (r.status == 416) {
      // (httplib checks Range before the pre-routing handler can drop it.)
      message = "unsupported or malformed Range header (Range is ignored otherwise)";
    }
    SendJson(r, r.status,
             ErrorBody(MakeError(r.status, message, "invalid_request_error", "", code)));
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& r, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        SendError(r, MakeError(500, what, "server_error", "", "internal_error"));
      });
  http.set_logger([](const httplib::Request& q, const httplib::Response& r) {
    spdlog::info("{} {} {}", q.method, q.path, r.status);
  });
}

void Server::Impl::Load() {
  const auto t0 = Clock::now();
  // (An exception on this thread would end the process: it becomes the load's error.)
  Result<std::unique_ptr<exec::Engine>> created = Internal("not loaded");
  try {
    created = exec::Engine::Create(options.engine);
  } catch (const std::bad_alloc&) {
    created = ResourceExhausted("loading " + options.engine.model_dir + ": out of memory");
  } catch (const std::exception& e) {
    created = Internal("loading " + options.engine.model_dir + ": " + e.what());
  }
  if (!created.ok()) {
    {
      std::lock_guard<std::mutex> lock(engine_mu);
      load_status = created.status();
    }
    spdlog::error("loading {} failed: {}", options.engine.model_dir, created.status().message());
    StopHttp();
    return;
  }
  std::shared_ptr<exec::Engine> e(std::move(*created));
  const exec::ModelInfo info = e->model_info();
  {
    std::lock_guard<std::mutex> lock(engine_mu);
    model_name = info.name;
    engine = std::move(e);
  }
  sink->OnReady(true);
  spdlog::info("model {} loaded in {:.2f} s ({} parameters, context {}); serving", info.name,
               std::chrono::duration<double>(Clock::now() - t0).count(), info.parameters,
               info.context);
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl& m = *impl_;
  m.started_unix = static_cast<int64_t>(std::time(nullptr));
  int threads = m.options.http_threads;
  if (threads <= 0) {
    threads = std::clamp(m.options.engine.max_active + m.options.engine.max_queue + 8, 8, 1024);
  }
  m.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // SO_REUSEADDR (a restarted server binds at once, past its old connections' TIME_WAIT),
  // but not cpp-httplib's default SO_REUSEPORT, with which a second server on the same port
  // binds too and the kernel splits the connections between the two.
  m.http.set_socket_options([&m](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    m.listen_socket = static_cast<int>(sock);
  });
  m.http.set_payload_max_length(m.options.max_body_bytes);
  m.Routes();
}

Server::~Server() { Stop(); }

Result<int> Server::Bind() {
  Impl& m = *impl_;
  int port = m.options.port;
  bool ok = false;
  if (port == 0) {
    port = m.http.bind_to_any_port(m.options.host);
    ok = port > 0;
  } else {
    ok = m.http.bind_to_port(m.options.host, port);
  }
  if (!ok) {
    return Status(StatusCode::kUnavailable, "cannot listen on " + m.options.host + ":" +
                                                std::to_string(m.options.port) +
                                                " (in use, or not an address of this host)");
  }
  // cpp-httplib listens with a backlog of 5 connections waiting to be accepted. Clients that
  // connect at once beyond that overflow the kernel's queue: their handshakes are dropped
  // and retried, and one whose request arrives after the server gave up on it is reset.
  // Listening again raises the backlog (the kernel caps it at net.core.somaxconn).
  if (m.listen_socket >= 0 && ::listen(m.listen_socket, kListenBacklog) != 0) {
    spdlog::warn("could not raise the listen backlog to {}: {}", kListenBacklog,
                 std::strerror(errno));
  }
  return port;
}

void Server::Impl::StopHttp() {
  stopping = true;
  if (!run_entered.load()) return;  // Run will not listen
  while (!listen_done.load()) {
    if (http.is_running()) {
      std::call_once(stop_once, [this] { http.stop(); });
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Status Server::Run() {
  Impl& m = *impl_;
  m.run_entered = true;
  std::thread loader([&m] { m.Load(); });
  if (!m.stopping.load()) m.http.listen_after_bind();  // returns after Stop or a failed load
  m.listen_done = true;
  m.stopping = true;
  loader.join();
  {
    std::lock_guard<std::mutex> lock(m.engine_mu);
    m.engine.reset();  // the last request thread holding it finishes it
  }
  std::lock_guard<std::mutex> lock(m.engine_mu);
  return m.load_status;
}

void Server::Stop() { impl_->StopHttp(); }

}  // namespace ponder::apps::server
