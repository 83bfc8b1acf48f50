// Serving benchmark: continuous depth batching against lockstep batching and against one
// request at a time, on a mixed workload with Poisson arrivals; and (--kv-memory) the KV
// bytes per token of the cache strategies at a fixed depth.
//
//   build/bench/serving_bench [--model model/zoo/ponder-micro] [--scenarios scenarios]
//       [--workloads chat,education,finance] [--requests 400] [--rate 2000] [--max-active 16]
//       [--max-tokens 16] [--repeats 3] [--threads 1] [--seed 1]
//   build/bench/serving_bench --kv-memory [--steps 32] [--kv full,compress-s2]
//       [--kv-workloads chat,education,finance,math] [--model ...]
//   build/bench/serving_bench --tick-cost [--threads 1] [--model ...]
//
// Workload: --requests items drawn (seeded, with replacement) from the named workloads
// (scenarios/workloads/NAME.jsonl), each planned by policy::Planner on its own profile
// (scenarios/profiles/NAME.json) with the item's class, exiting per token by the class's
// rule, encoded and decoded as `ponder replay --profile` does (greedy, stop at
// <|end_text|>, the plan's KV strategy, seed + index for the initial state). Deadlines are
// taken out of the plans: a deadline makes a request's tokens depend on how long it queued,
// and the three schedulers must produce the same outputs for the comparison to be fair.
//
// Clock: simulated, driven by real compute. Request i arrives at the sum of i exponential
// gaps of mean 1/rate; the clock advances by the measured wall time of each scheduler step
// (admission + DepthBatcher::Tick + collection), and jumps to the next arrival when nothing
// is running. Wall time runs from the first arrival to the last completion; latency is
// completion - arrival (queueing included). Schedulers, over the same requests:
//   continuous     each tick, admit arrived requests (FIFO) up to --max-active, then Tick;
//   lockstep       admit a group of up to --max-active arrived requests only when the
//                  batcher is empty; DepthBatcher::set_lockstep(true), so the group
//                  advances token by token at the pace of its deepest member;
//   one-at-a-time  continuous with max-active 1.
// Every request's tokens, per-token steps and exit reasons must be identical across the
// three (exit status 1 otherwise). Throughput ratios are taken per repeat (the three run
// back to back) and summarised by their median over repeats.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "exec/adaptive.h"
#include "exec/cpu/cpu_model.h"
#include "exec/depth_batcher.h"
#include "exec/kv_cache.h"
#include "model/checkpoint.h"
#include "model/task_protocol.h"
#include "policy/planner.h"
#include "policy/profile.h"
#include "scenarios/workload.h"

namespace {

using ponder::Result;
using ponder::Status;
namespace exec = ponder::exec;
namespace policy = ponder::policy;

struct Flags {
  std::string model = "model/zoo/ponder-micro";
  std::string scenarios = "scenarios";
  std::string workloads = "chat,education,finance";
  int64_t requests = 400;
  double rate = 2000.0;  // requests per second (Poisson)
  int64_t max_active = 16;
  int64_t max_tokens = 16;
  int repeats = 3;
  int threads = 1;
  uint64_t seed = 1;
  bool kv_memory = false;
  bool tick_cost = false;
  int64_t steps = 32;
  std::string kv = "";  // default: full,compress-s<core layers>
  std::string kv_workloads = "chat,education,finance,math";
};

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool ParseFlags(int argc, char** argv, Flags& f) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--kv-memory" || k == "--tick-cost") {
      (k == "--kv-memory" ? f.kv_memory : f.tick_cost) = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "serving_bench: %s needs a value\n", k.c_str());
      return false;
    }
    const std::string v = argv[++i];
    try {
      if (k == "--model")
        f.model = v;
      else if (k == "--scenarios")
        f.scenarios = v;
      else if (k == "--workloads")
        f.workloads = v;
      else if (k == "--requests")
        f.requests = std::stoll(v);
      else if (k == "--rate")
        f.rate = std::stod(v);
      else if (k == "--max-active")
        f.max_active = std::stoll(v);
      else if (k == "--max-tokens")
        f.max_tokens = std::stoll(v);
      else if (k == "--repeats")
        f.repeats = std::stoi(v);
      else if (k == "--threads")
        f.threads = std::stoi(v);
      else if (k == "--seed")
        f.seed = std::stoull(v);
      else if (k == "--steps")
        f.steps = std::stoll(v);
      else if (k == "--kv")
        f.kv = v;
      else if (k == "--kv-workloads")
        f.kv_workloads = v;
      else {
        std::fprintf(stderr, "serving_bench: unknown option %s\n", k.c_str());
        return false;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "serving_bench: %s: bad value \"%s\"\n", k.c_str(), v.c_str());
      return false;
    }
  }
  if (f.requests < 1 || f.rate <= 0 || f.max_active < 1 || f.max_tokens < 1 || f.repeats < 1 ||
      f.steps < 1) {
    std::fprintf(stderr, "serving_bench: counts and the rate must be positive\n");
    return false;
  }
  return true;
}

int Fail(const Status& s) {
  std::fprintf(stderr, "serving_bench: error: %s\n", s.message().c_str());
  return 1;
}

// FNV-1a of a file's bytes: names the model version in the output.
std::string FileDigest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "unreadable";
  uint64_t h = 1469598103934665603ull;
  char buf[1 << 16];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      h = (h ^ static_cast<unsigned char>(buf[i])) * 1099511628211ull;
    }
  }
  char out[20];
  std::snprintf(out, sizeof(out), "%016llx", (unsigned long long)h);
  return out;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Nearest-rank quantile, as scenarios::Score.
double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

double Median(std::vector<double> v) { return Quantile(std::move(v), 0.5); }

// ---------------------------------------------------------------------------------------
// Workload.

struct Request {
  std::string source;  // workload name
  ponder::scenarios::WorkloadItem item;
  exec::SequenceSpec spec;  // prompt, plan (no deadline), options
  double arrival = 0.0;     // seconds on the simulated clock
};

Result<std::vector<Request>> BuildWorkload(const Flags& f, const ponder::model::Tokenizer& tok) {
  PONDER_ASSIGN_OR_RETURN(const auto protocol, ponder::model::ProtocolOf(tok, "serving_bench"));
  struct Source {
    std::string name;
    std::vector<ponder::scenarios::WorkloadItem> items;
    policy::DomainProfile profile;
  };
  std::vector<Source> sources;
  for (const std::string& name : Split(f.workloads, ',')) {
    Source s;
    s.name = name;
    PONDER_ASSIGN_OR_RETURN(
        s.items, ponder::scenarios::LoadWorkload(f.scenarios + "/workloads/" + name + ".jsonl"));
    PONDER_ASSIGN_OR_RETURN(s.profile,
                            policy::LoadProfile(f.scenarios + "/profiles/" + name + ".json"));
    if (s.items.empty()) return ponder::InvalidArgument("workload " + name + " has no items");
    sources.push_back(std::move(s));
  }
  if (sources.empty()) return ponder::InvalidArgument("--workloads names no workload");
  std::mt19937_64 rng(f.seed);
  std::exponential_distribution<double> gap(f.rate);
  std::vector<Request> out;
  double t = 0.0;
  for (int64_t i = 0; i < f.requests; ++i) {
    const Source& src = sources[rng() % sources.size()];
    Request r;
    r.source = src.name;
    r.item = src.items[rng() % src.items.size()];
    PONDER_ASSIGN_OR_RETURN(r.spec.prompt,
                            ponder::model::EncodeTaskPrompt(tok, protocol, r.item.prompt));
    policy::Request pr;
    pr.prompt = r.item.prompt;
    pr.prompt_tokens = static_cast<int>(r.spec.prompt.size());
    for (const auto& c : src.profile.task_classes) {
      if (c.name == r.item.task_class) pr.task_class = r.item.task_class;
    }
    PONDER_ASSIGN_OR_RETURN(r.spec.plan, policy::Planner().Plan(pr, src.profile, {}));
    r.spec.plan.deadline_seconds = 0.0;  // see the header comment
    r.spec.options.max_tokens = f.max_tokens;
    r.spec.options.seed = f.seed + static_cast<uint64_t>(i);
    r.spec.options.stop_ids = {protocol.eos};
    auto kv = exec::KvStrategy::Parse(r.spec.plan.kv_strategy);
    if (kv.ok()) r.spec.options.kv = *kv;
    if (i > 0) t += gap(rng);
    r.arrival = t;
    out.push_back(std::move(r));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Schedulers.

enum class Mode { kContinuous, kLockstep, kOneAtATime };
const char* ModeName(Mode m) {
  return m == Mode::kContinuous ? "continuous"
         : m == Mode::kLockstep ? "lockstep"
                                : "one-at-a-time";
}

double sim_now = 0.0;
double SimNow() { return sim_now; }

struct RunResult {
  std::vector<exec::AdaptiveResult> results;  // per request
  std::vector<double> latency;                // seconds, per request
  double wall = 0.0;                          // first arrival -> last completion
  int64_t tokens = 0;                         // generated
  int64_t ticks = 0, rows = 0;                // rows: sequence-iterations (one per sequence
                                              // per tick)
  uint64_t peak_kv_bytes = 0;
  double tokens_per_second() const { return wall > 0 ? tokens / wall : 0.0; }
  double requests_per_second() const { return wall > 0 ? results.size() / wall : 0.0; }
};

Result<RunResult> RunSchedule(exec::Backend& model, const std::vector<Request>& reqs, Mode mode,
                              int64_t max_active_flag) {
  const int64_t max_active = mode == Mode::kOneAtATime ? 1 : max_active_flag;
  sim_now = reqs.front().arrival;
  exec::DepthBatcher batcher(model, &SimNow);
  batcher.set_lockstep(mode == Mode::kLockstep);
  RunResult out;
  out.results.resize(reqs.size());
  out.latency.resize(reqs.size());
  std::map<exec::DepthBatcher::Id, size_t> running;  // batcher id -> request index
  size_t next = 0, done = 0;
  double last_completion = sim_now;
  while (done < reqs.size()) {
    if (batcher.active() == 0 && next < reqs.size() && reqs[next].arrival > sim_now) {
      sim_now = reqs[next].arrival;  // idle until the next arrival
    }
    const auto t0 = std::chrono::steady_clock::now();
    const bool may_admit = mode != Mode::kLockstep || batcher.active() == 0;
    while (may_admit && next < reqs.size() && reqs[next].arrival <= sim_now &&
           batcher.active() < max_active) {
      PONDER_ASSIGN_OR_RETURN(const auto id, batcher.Add(reqs[next].spec));
      running[id] = next++;
    }
    PONDER_RETURN_IF_ERROR(batcher.Tick());
    ++out.ticks;
    out.rows += batcher.last_tick_rows();
    std::vector<std::pair<size_t, exec::AdaptiveResult>> finished;
    for (const auto id : batcher.FinishedIds()) {
      PONDER_ASSIGN_OR_RETURN(auto r, batcher.TakeResult(id));
      finished.emplace_back(running.at(id), std::move(r));
      running.erase(id);
    }
    sim_now += Seconds(t0, std::chrono::steady_clock::now());
    out.peak_kv_bytes = std::max(out.peak_kv_bytes, batcher.kv_bytes());  // untimed
    for (auto& [i, r] : finished) {
      out.latency[i] = sim_now - reqs[i].arrival;
      out.tokens += static_cast<int64_t>(r.tokens.size());
      out.results[i] = std::move(r);
      last_completion = sim_now;
      ++done;
    }
  }
  out.wall = last_completion - reqs.front().arrival;
  return out;
}

// First difference between two runs' outputs ("" when identical).
std::string Difference(const RunResult& a, const RunResult& b, const std::vector<Request>& reqs) {
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& x = a.results[i];
    const auto& y = b.results[i];
    const std::string who = "request " + std::to_string(i) + " (" + reqs[i].item.id + ")";
    if (x.tokens.size() != y.tokens.size()) {
      return who + ": " + std::to_string(x.tokens.size()) + " vs " +
             std::to_string(y.tokens.size()) + " tokens";
    }
    for (size_t t = 0; t < x.tokens.size(); ++t) {
      if (x.tokens[t].token != y.tokens[t].token || x.tokens[t].steps != y.tokens[t].steps ||
          x.tokens[t].reason != y.tokens[t].reason) {
        return who + ": token " + std::to_string(t) + " differs (id " +
               std::to_string(x.tokens[t].token) + "/" + std::to_string(y.tokens[t].token) +
               ", steps " + std::to_string(x.tokens[t].steps) + "/" +
               std::to_string(y.tokens[t].steps) + ")";
      }
    }
    if (x.finish_reason != y.finish_reason) return who + ": finish reasons differ";
  }
  return "";
}

int RunServing(const Flags& f, exec::Backend& model, const ponder::model::Checkpoint& ckpt) {
  auto reqs = BuildWorkload(f, *ckpt.tokenizer);
  if (!reqs.ok()) return Fail(reqs.status());
  std::map<std::string, int> per_source, per_class;
  for (const auto& r : *reqs) {
    ++per_source[r.source];
    ++per_class[r.spec.plan.task_class];
  }
  std::printf("model       %s (model.safetensors fnv1a %s)\n", f.model.c_str(),
              FileDigest(f.model + "/model.safetensors").c_str());
  std::printf("workload    %lld requests:", (long long)f.requests);
  for (const auto& [name, n] : per_source) std::printf(" %s %d", name.c_str(), n);
  std::printf("; classes:");
  for (const auto& [name, n] : per_class) std::printf(" %s %d", name.c_str(), n);
  std::printf(
      "\n            Poisson arrivals at %.0f/s over %.3f s (seed %llu), max-active %lld, "
      "max-tokens %lld, %d thread(s), %d repeats\n",
      f.rate, reqs->back().arrival, (unsigned long long)f.seed, (long long)f.max_active,
      (long long)f.max_tokens, f.threads, f.repeats);

  // Warm-up (untimed): the first requests, continuous.
  {
    std::vector<Request> warm(reqs->begin(), reqs->begin() + std::min<size_t>(16, reqs->size()));
    auto w = RunSchedule(model, warm, Mode::kContinuous, f.max_active);
    if (!w.ok()) return Fail(w.status());
  }
  const Mode modes[] = {Mode::kContinuous, Mode::kLockstep, Mode::kOneAtATime};
  std::map<Mode, std::vector<RunResult>> runs;
  std::vector<double> vs_lockstep, vs_one, ticks_lockstep, ticks_one;
  for (int rep = 0; rep < f.repeats; ++rep) {
    for (Mode m : modes) {
      auto r = RunSchedule(model, *reqs, m, f.max_active);
      if (!r.ok()) return Fail(r.status());
      runs[m].push_back(std::move(*r));
    }
    const double c = runs[Mode::kContinuous].back().tokens_per_second();
    vs_lockstep.push_back(c / runs[Mode::kLockstep].back().tokens_per_second());
    vs_one.push_back(c / runs[Mode::kOneAtATime].back().tokens_per_second());
    const double ct = static_cast<double>(runs[Mode::kContinuous].back().ticks);
    ticks_lockstep.push_back(runs[Mode::kLockstep].back().ticks / ct);
    ticks_one.push_back(runs[Mode::kOneAtATime].back().ticks / ct);
    std::fprintf(stderr, "repeat %d: continuous/lockstep %.2fx, continuous/one-at-a-time %.2fx\n",
                 rep + 1, vs_lockstep.back(), vs_one.back());
  }
  // Same outputs, every repeat against the first continuous run.
  const RunResult& ref = runs[Mode::kContinuous].front();
  for (Mode m : modes) {
    for (const RunResult& r : runs[m]) {
      const std::string diff = Difference(ref, r, *reqs);
      if (!diff.empty()) {
        std::printf("OUTPUTS DIFFER (%s against continuous): %s\n", ModeName(m), diff.c_str());
        return 1;
      }
    }
  }
  // Core row-iterations (rows x iterations) of the prompts' prefill and of the decoded
  // tokens: the work every scheduler does alike.
  int64_t prefill_rows = 0, decode_rows = 0;
  for (size_t i = 0; i < reqs->size(); ++i) {
    const auto& toks = ref.results[i].tokens;
    prefill_rows +=
        static_cast<int64_t>((*reqs)[i].spec.prompt.size()) * ref.results[i].prompt_steps;
    for (size_t t = 1; t < toks.size(); ++t) decode_rows += toks[t].steps;
  }
  int64_t correct = 0;
  for (size_t i = 0; i < reqs->size(); ++i) {
    std::vector<int32_t> ids;
    for (const auto& t : ref.results[i].tokens) ids.push_back(t.token);
    auto text = ckpt.tokenizer->Decode(ids, true);
    correct += text.ok() && *text == (*reqs)[i].item.expected;
  }

  std::printf("\n%-14s %8s %9s %8s %8s %8s %8s %7s %9s %8s\n", "scheduler", "wall s", "tokens/s",
              "req/s", "mean ms", "p50 ms", "p99 ms", "ticks", "seqs/tick", "peak KV");
  for (Mode m : modes) {
    std::vector<double> wall, tps, rps, mean, p50, p99, ticks, rows;
    double peak = 0;
    for (const RunResult& r : runs[m]) {
      wall.push_back(r.wall);
      tps.push_back(r.tokens_per_second());
      rps.push_back(r.requests_per_second());
      double sum = 0;
      for (double l : r.latency) sum += l;
      mean.push_back(1e3 * sum / r.latency.size());
      p50.push_back(1e3 * Quantile(r.latency, 0.5));
      p99.push_back(1e3 * Quantile(r.latency, 0.99));
      ticks.push_back(static_cast<double>(r.ticks));
      rows.push_back(static_cast<double>(r.rows) / r.ticks);
      peak = std::max(peak, static_cast<double>(r.peak_kv_bytes));
    }
    std::printf("%-14s %8.3f %9.1f %8.1f %8.1f %8.1f %8.1f %7.0f %9.2f %7.0fK\n", ModeName(m),
                Median(wall), Median(tps), Median(rps), Median(mean), Median(p50), Median(p99),
                Median(ticks), Median(rows), peak / 1024);
  }
  std::printf(
      "(medians over %d repeats; wall: first arrival to last completion on the simulated "
      "clock;\n latency includes queueing; seqs/tick: sequences iterated per tick)\n",
      f.repeats);
  auto range = [](const std::vector<double>& v) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%.2fx  (repeats %.2f .. %.2f)", Median(v),
                  *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end()));
    return std::string(buf);
  };
  std::printf("\nthroughput continuous / lockstep       %s  goal >= 1.5x\n",
              range(vs_lockstep).c_str());
  std::printf("throughput continuous / one-at-a-time  %s  goal >= 3x\n", range(vs_one).c_str());
  std::printf("ticks      lockstep / continuous          %.2fx\n", Median(ticks_lockstep));
  std::printf("ticks      one-at-a-time / continuous     %.2fx\n", Median(ticks_one));
  std::printf(
      "(the throughput ratios where a tick costs the same whatever its rows, i.e. when "
      "reading the\n weights dominates; see --tick-cost for how a tick's cost grows with "
      "its rows here)\n");
  std::printf(
      "outputs    identical tokens, per-token steps and exit reasons for all %zu requests "
      "across the schedulers and repeats (%lld generated tokens, %lld core iterations); "
      "exact-match accuracy %.3f\n",
      reqs->size(), (long long)ref.tokens, (long long)ref.rows,
      static_cast<double>(correct) / reqs->size());
  std::printf(
      "work       core row-iterations: prefill %lld (%.0f%%), decode %lld (the same for "
      "every scheduler)\n",
      (long long)prefill_rows, 100.0 * prefill_rows / (prefill_rows + decode_rows),
      (long long)decode_rows);
  return 0;
}

// ---------------------------------------------------------------------------------------
// Tick cost: one core iteration for B decode rows (B sequences, one new token each after a
// 16-token context), median over repeats. Batching pays when a tick's cost grows slower
// than its rows (weights read once per tick); where it grows in proportion, every
// scheduler does the same work in the same time.

int RunTickCost(const Flags& f, exec::Backend& model, const ponder::model::Checkpoint& ckpt) {
  const ponder::model::Config& c = ckpt.config;
  const int64_t d = c.n_embd, ctx = 16;
  std::printf("model       %s (model.safetensors fnv1a %s), %d thread(s)\n", f.model.c_str(),
              FileDigest(f.model + "/model.safetensors").c_str(), f.threads);
  std::printf("\n%6s %12s %12s %14s\n", "rows", "us/tick", "us/row", "vs 1 row/tick");
  double one = 0.0;
  for (int64_t b : {1, 2, 4, 8, 16, 32, 64}) {
    std::vector<std::unique_ptr<exec::SequenceCache>> caches;
    std::vector<exec::cpu::Chunk> chunks;
    std::vector<int32_t> ids(ctx), next;
    for (int64_t i = 0; i < ctx; ++i) ids[i] = static_cast<int32_t>((5 * i + 1) % c.vocab_size);
    for (int64_t k = 0; k < b; ++k) {
      caches.push_back(model.NewCache());
      auto r = model.Forward(*caches.back(), ids, 4, nullptr, f.seed + k, 1.0);
      if (!r.ok()) return Fail(r.status());
      chunks.push_back({caches.back().get(), ctx, 1});
      next.push_back(static_cast<int32_t>((3 * k + 7) % c.vocab_size));
    }
    std::vector<float> e(b * d), s(b * d, 0.0f);
    if (auto st = model.Prelude(chunks, next, e.data()); !st.ok()) return Fail(st);
    const std::vector<int64_t> its(b, 1);
    std::vector<double> us;
    const int reps = std::max(5, static_cast<int>(400 / b));
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      model.CoreStep(chunks, its, e.data(), s.data());
      us.push_back(1e6 * Seconds(t0, std::chrono::steady_clock::now()));
    }
    const double m = Median(us);
    if (b == 1) one = m;
    std::printf("%6lld %12.1f %12.2f %13.2fx\n", (long long)b, m, m / b, m / one);
  }
  std::printf(
      "(one core iteration of %lld layers; vs 1 row/tick: the tick's time over a "
      "1-row tick's)\n",
      (long long)c.n_layers_in_recurrent_block);
  return 0;
}

// ---------------------------------------------------------------------------------------
// KV memory.

int RunKvMemory(const Flags& f, exec::Backend& model, const ponder::model::Checkpoint& ckpt) {
  const ponder::model::Config& c = ckpt.config;
  std::string kv_list = f.kv;
  if (kv_list.empty()) kv_list = "full,compress-s" + std::to_string(c.n_layers_in_recurrent_block);
  const int64_t width = c.n_heads * c.head_dim;
  const int64_t slot_bytes = 2 * width * static_cast<int64_t>(sizeof(float));  // K and V
  // Positions that fill every slot's pages exactly (a multiple of KvPagePool::kPageRows):
  // bytes() / positions is then the exact cost of one cached token.
  int64_t positions = 16;
  while (positions * 2 < c.block_size) positions *= 2;
  std::vector<int32_t> ids(positions);
  for (int64_t i = 0; i < positions; ++i) ids[i] = static_cast<int32_t>((7 * i + 3) % c.vocab_size);
  std::printf("model       %s (model.safetensors fnv1a %s)\n", f.model.c_str(),
              FileDigest(f.model + "/model.safetensors").c_str());
  std::printf(
      "kv cache    r=%lld, layers prelude %lld / core %lld / coda %lld, f32 K+V of width "
      "%lld: %lld bytes per slot per token; measured on %lld cached positions\n\n",
      (long long)f.steps, (long long)c.n_layers_in_prelude,
      (long long)c.n_layers_in_recurrent_block, (long long)c.n_layers_in_coda, (long long)width,
      (long long)slot_bytes, (long long)positions);
  std::printf("%-16s %6s %14s %14s %10s\n", "strategy", "slots", "formula B/tok", "bytes()/tok",
              "vs first");
  double first = 0.0;
  for (const std::string& name : Split(kv_list, ',')) {
    auto kv = exec::KvStrategy::Parse(name);
    if (!kv.ok()) return Fail(kv.status());
    const int64_t slots = c.n_layers_in_prelude + c.n_layers_in_coda +
                          kv->CoreSlots(f.steps, c.n_layers_in_recurrent_block);
    auto cache = model.NewCache(*kv);
    auto logits = model.Forward(*cache, ids, f.steps, nullptr, f.seed, 1.0);
    if (!logits.ok()) return Fail(logits.status());
    const double measured = static_cast<double>(cache->bytes()) / positions;
    const double formula = static_cast<double>(slots * slot_bytes);
    if (first == 0.0) first = measured;
    std::printf("%-16s %6lld %14.0f %14.0f %9.2fx\n", name.c_str(), (long long)slots, formula,
                measured, first / measured);
    if (measured != formula) {
      std::printf("MISMATCH: bytes() gives %.1f bytes per token, the formula %.0f\n", measured,
                  formula);
      return 1;
    }
  }

  // Real runs: every item of the scenario workloads at fixed depth r through the batcher
  // (16 at a time), per strategy: the KV bytes each request holds when it completes
  // (whole pages, SequenceCache::bytes()), summed, and the peak over the run.
  auto protocol = ponder::model::ProtocolOf(*ckpt.tokenizer, "serving_bench");
  if (!protocol.ok()) return Fail(protocol.status());
  std::vector<exec::SequenceSpec> specs;
  for (const std::string& name : Split(f.kv_workloads, ',')) {
    auto items = ponder::scenarios::LoadWorkload(f.scenarios + "/workloads/" + name + ".jsonl");
    if (!items.ok()) return Fail(items.status());
    for (const auto& item : *items) {
      exec::SequenceSpec s;
      auto prompt = ponder::model::EncodeTaskPrompt(*ckpt.tokenizer, *protocol, item.prompt);
      if (!prompt.ok()) return Fail(prompt.status());
      s.prompt = std::move(*prompt);
      s.plan.min_steps = s.plan.max_steps = s.plan.class_max_steps = static_cast<int>(f.steps);
      s.options.max_tokens = f.max_tokens;
      s.options.seed = f.seed + specs.size();
      s.options.stop_ids = {protocol->eos};
      specs.push_back(std::move(s));
    }
  }
  std::printf("\nworkloads %s at r=%lld: %zu requests, 16 at a time\n", f.kv_workloads.c_str(),
              (long long)f.steps, specs.size());
  std::printf("%-16s %16s %14s %16s %10s\n", "strategy", "cached positions", "sum bytes()",
              "peak bytes()", "vs first");
  double first_sum = 0.0;
  for (const std::string& name : Split(kv_list, ',')) {
    auto kv = exec::KvStrategy::Parse(name);
    if (!kv.ok()) return Fail(kv.status());
    exec::DepthBatcher batcher(model);
    uint64_t sum = 0, peak = 0;
    int64_t cached = 0;
    size_t next = 0;
    std::map<exec::DepthBatcher::Id, size_t> index;
    while (next < specs.size() || batcher.active() > 0) {
      while (next < specs.size() && batcher.active() < 16) {
        exec::SequenceSpec s = specs[next];
        s.options.kv = *kv;
        auto id = batcher.Add(std::move(s));
        if (!id.ok()) return Fail(id.status());
        index[*id] = next++;
      }
      if (auto st = batcher.Tick(); !st.ok()) return Fail(st);
      peak = std::max(peak, batcher.kv_bytes());
      for (const auto id : batcher.FinishedIds()) {
        auto r = batcher.TakeResult(id);
        if (!r.ok()) return Fail(r.status());
        sum += r->kv_bytes;
        // Cached: the prompt and every generated token but the last (never fed back).
        cached += static_cast<int64_t>(specs[index.at(id)].prompt.size() + r->tokens.size()) - 1;
      }
    }
    if (first_sum == 0.0) first_sum = static_cast<double>(sum);
    std::printf("%-16s %16lld %14llu %16llu %9.2fx\n", name.c_str(), (long long)cached,
                (unsigned long long)sum, (unsigned long long)peak, first_sum / sum);
  }
  std::printf("(bytes() counts whole pages of %lld positions per slot)\n",
              (long long)exec::KvPagePool::kPageRows);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  if (!ParseFlags(argc, argv, f)) return 2;
  auto ckpt = ponder::model::LoadCheckpoint(f.model);
  if (!ckpt.ok()) return Fail(ckpt.status());
  exec::cpu::ThreadPool pool(f.threads);
  exec::cpu::CpuModel model((*ckpt)->config, (*ckpt)->weights, &pool);
  if (f.tick_cost) return RunTickCost(f, model, **ckpt);
  return f.kv_memory ? RunKvMemory(f, model, **ckpt) : RunServing(f, model, **ckpt);
}
