// `ponder serve`: the OpenAI-compatible HTTP server (apps/server/server.h). Listens at once
// (GET /health is 503 until the model is loaded), stops on SIGINT or SIGTERM after
// cancelling what runs.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <ctime>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apps/commands.h"
#include "apps/common.h"
#include "apps/server/auth.h"
#include "apps/server/server.h"

namespace ponder::apps {

void AddServeCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API");
  struct Args {
    std::string dir, host = "127.0.0.1", api_keys, admin_key;
    std::vector<std::string> profiles;
    int port = 8000, max_active = 32, max_queue = 256, http_threads = 0;
    exec::BackendOptions backend;
    int max_prompt_tokens = 0, max_tokens = 0, max_streams_per_tenant = 0, prefill_chunk = 512;
    uint64_t kv_budget_mb = 1024, max_body_bytes = 1 << 20;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->dir, "Model directory")->required();
  cmd->add_option("--profiles", a->profiles,
                  "Domain profiles (JSON), comma-separated; the first is the default")
      ->required()
      ->delimiter(',');
  cmd->add_option("--host", a->host, "Address to listen on (default 127.0.0.1: this host only)");
  cmd->add_option("--port", a->port, "Port (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--api-keys", a->api_keys,
                  "JSON file {\"<key>\": \"<tenant>\"}: /v1 then needs a bearer key, whose "
                  "tenant the request runs as");
  cmd->add_option("--admin-key", a->admin_key,
                  "Bearer key of /metrics and /v1/profiles/reload (needed there when set or "
                  "when --api-keys is given)");
  cmd->add_option("--max-active", a->max_active, "Sequences iterating together")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--max-queue", a->max_queue, "Waiting requests at most; beyond: 429")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--kv-budget-mb", a->kv_budget_mb, "KV cache budget in MiB")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 24));
  AddBackendFlag(cmd, &a->backend);
  cmd->add_option("--http-threads", a->http_threads,
                  "HTTP worker threads (0: max-active + max-queue + 8, at most 1024)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--max-body-bytes", a->max_body_bytes, "Request bodies larger get 413")
      ->check(CLI::Range(uint64_t{256}, uint64_t{1} << 30));
  cmd->add_option("--max-prompt-tokens", a->max_prompt_tokens,
                  "Prompt tokens at most (0: the model's context - 1)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--max-tokens", a->max_tokens,
                  "Cap on a request's max_tokens (0: the model's context)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--max-streams-per-tenant", a->max_streams_per_tenant,
                  "Streaming requests open at once per tenant; beyond: 429 (0: no limit)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--prefill-chunk", a->prefill_chunk,
                  "Prefill prompts longer than this in chunks of this many tokens (0: whole)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->callback([a, &exit_code] {
    spdlog::set_default_logger(spdlog::stderr_color_mt("ponder-serve"));
    server::ServerOptions o;
    o.engine.model_dir = a->dir;
    o.engine.profile_paths = a->profiles;
    o.engine.backend = a->backend;
    o.engine.max_active = a->max_active;
    o.engine.max_queue = a->max_queue;
    o.engine.kv_budget_bytes = a->kv_budget_mb << 20;
    o.engine.max_prompt_tokens = a->max_prompt_tokens;
    o.engine.max_new_tokens = a->max_tokens;
    o.engine.prefill_chunk_tokens = a->prefill_chunk;
    o.host = a->host;
    o.port = a->port;
    o.admin_key = a->admin_key;
    o.max_body_bytes = a->max_body_bytes;
    o.http_threads = a->http_threads;
    o.max_streams_per_tenant = a->max_streams_per_tenant;
    if (!a->api_keys.empty()) {
      auto keys = server::LoadApiKeys(a->api_keys);
      if (!keys.ok()) {
        exit_code = Fail(keys.status());
        return;
      }
      o.api_keys = std::move(*keys);
    }
    // Signals: a client that went away must not kill the process (SIGPIPE), and SIGINT or
    // SIGTERM go to one waiting thread (blocked here before any thread starts, so that every
    // thread inherits the mask).
    signal(SIGPIPE, SIG_IGN);
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    server::Server srv(o);
    Result<int> port = srv.Bind();
    if (!port.ok()) {
      exit_code = Fail(port.status());
      return;
    }
    spdlog::info("listening on http://{}:{} (loading {})", o.host, *port, o.engine.model_dir);
    if (a->api_keys.empty() && o.host != "127.0.0.1" && o.host != "localhost" && o.host != "::1") {
      spdlog::warn("no --api-keys: anyone who reaches {} can use the server", o.host);
    }
    std::atomic<bool> done{false};
    std::thread waiter([&] {
      const timespec tick{0, 200'000'000};
      while (!done.load()) {
        const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
          spdlog::info("signal {}: stopping", sig);
          srv.Stop();
          return;
        }
      }
    });
    const Status st = srv.Run();
    done = true;
    waiter.join();
    if (!st.ok()) exit_code = Fail(st);
  });
}

}  // namespace ponder::apps
