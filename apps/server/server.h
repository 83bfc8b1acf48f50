#pragma once

// `ponder serve`: an OpenAI-compatible HTTP server over exec::Engine (cpp-httplib).
//
//   POST /v1/completions, /v1/chat/completions  OpenAI requests plus Ponder's fields
//                                               (apps/server/openai.h); `stream: true`
//                                               answers with server-sent events
//   GET  /v1/models                             the loaded model
//   GET  /v1/profiles                           profiles with their classes
//   POST /v1/profiles/reload                    re-reads every profile file (admin)
//   GET  /health                                503 while the model loads, then 200
//   GET  /metrics                               Prometheus text (admin when keys are set)
//
// The server listens before the model is loaded and loads it on a background thread.
// With API keys every /v1 request needs `Authorization: Bearer <key>` (401 otherwise) and
// runs as the key's tenant; /metrics and /v1/profiles/reload then need the admin key (403
// otherwise). Without keys and without an admin key everything is open: bind to loopback.
// A streaming client that goes away is noticed at the next write (a token, or a keep-alive
// comment every second) and its request is cancelled, freeing its KV cache. A client of a
// non-streaming request that goes away is not noticed: its request runs to its end.

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "core/status.h"
#include "exec/engine.h"

namespace ponder::apps::server {

struct ServerOptions {
  exec::EngineOptions engine;  // model, profiles, threads, queue and KV limits
  std::string host = "127.0.0.1";
  int port = 8000;                              // 0: any free port (see Server::Bind)
  std::map<std::string, std::string> api_keys;  // key -> tenant; empty: /v1 is open
  std::string admin_key;                        // "" with api_keys: admin endpoints closed
  size_t max_body_bytes = 1 << 20;              // larger request bodies get 413
  int max_streams_per_tenant = 0;               // open streams per tenant; beyond: 429 (0: any)
  // HTTP worker threads; every streaming or waiting request holds one. 0: enough for
  // max_active + max_queue requests plus a few for /health and /metrics (at most 1024).
  int http_threads = 0;
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port; returns the port (the chosen one when port is 0).
  [[nodiscard]] Result<int> Bind();
  // After Bind: loads the engine in the background and serves until Stop() or a failed
  // load. Returns the load error, or OK after Stop().
  [[nodiscard]] Status Run();
  // Thread-safe; cancels streaming and waiting requests and makes Run return.
  void Stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ponder::apps::server
