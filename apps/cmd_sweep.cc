// `ponder sweep`: accuracy per task class at several fixed depths, as a table, JSON and
// an SVG chart. The demo's view of "depth pays on hard questions, not on easy ones".
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/commands.h"
#include "apps/common.h"
#include "scenarios/replay.h"
#include "scenarios/sweep.h"

namespace ponder::apps {

void AddSweepCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("sweep", "Accuracy per class at several fixed depths");
  struct Args {
    std::string dir, depths = "1,4,32", plot;
    std::vector<std::string> workloads;
    int64_t limit = 0, max_tokens = 16, batch = 32;
    uint64_t seed = 0;
    exec::BackendOptions backend;
    bool as_json = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->dir, "Model directory")->required();
  cmd->add_option("--workload", a->workloads, "Workload JSONL file (repeatable)")->required();
  cmd->add_option("--depths", a->depths, "Comma-separated depths, e.g. 1,4,32");
  cmd->add_option("--limit", a->limit, "Requests per class at most (0: all)");
  cmd->add_option("--max-tokens", a->max_tokens, "Answer tokens at most");
  cmd->add_option("--batch", a->batch, "Sequences decoded together")->check(CLI::Range(1, 4096));
  cmd->add_option("--seed", a->seed, "Seed of the initial states");
  AddBackendFlag(cmd, &a->backend);
  cmd->add_option("--plot", a->plot, "Write an SVG chart of accuracy against depth");
  cmd->add_flag("--json", a->as_json, "Print JSON");
  cmd->callback([a, &exit_code] {
    std::vector<int64_t> depths;
    std::stringstream ss(a->depths);
    for (std::string item; std::getline(ss, item, ',');) {
      try {
        depths.push_back(std::stoll(item));
      } catch (const std::exception&) {
        depths.push_back(0);
      }
      if (depths.back() < 1 || depths.back() > 4096) {
        exit_code = Fail(InvalidArgument("--depths: \"" + item + "\" is not a depth in 1..4096"));
        return;
      }
    }
    if (depths.empty()) {
      exit_code = Fail(InvalidArgument("--depths: no depths given"));
      return;
    }
    std::vector<scenarios::WorkloadItem> items;
    std::map<std::string, int64_t> per_class;
    for (const auto& path : a->workloads) {
      auto loaded = scenarios::LoadWorkload(path);
      if (!loaded.ok()) {
        exit_code = Fail(loaded.status());
        return;
      }
      for (auto& it : *loaded) {
        if (a->limit > 0 && per_class[it.task_class]++ >= a->limit) continue;
        items.push_back(std::move(it));
      }
    }
    auto rt = Open(a->dir, a->backend, /*require_tokenizer=*/true);
    if (!rt.ok()) {
      exit_code = Fail(rt.status());
      return;
    }
    std::vector<scenarios::ReplayReport> reports;
    for (int64_t r : depths) {
      scenarios::ReplayOptions ro;
      ro.steps = r;
      ro.max_tokens = a->max_tokens;
      ro.batch = a->batch;
      ro.seed = a->seed;
      auto rep = scenarios::Replay(*rt->model, *rt->ckpt->tokenizer, items, ro);
      if (!rep.ok()) {
        exit_code = Fail(rep.status());
        return;
      }
      reports.push_back(std::move(*rep));
    }
    const auto table = scenarios::ClassCurves(depths, reports);
    if (!a->plot.empty()) {
      std::ofstream out(a->plot);
      out << scenarios::RenderSvg(table, "Accuracy against depth per task class");
      if (!out) {
        exit_code = Fail(InvalidArgument(a->plot + ": cannot write the plot"));
        return;
      }
    }
    if (a->as_json) {
      nlohmann::json j = {{"depths", depths}};
      for (const auto& c : table.curves) j["classes"][c.name] = c.accuracy;
      std::cout << j.dump() << "\n";
      return;
    }
    std::printf("%-28s %9s", "class (requests)", "");
    for (int64_t r : depths) std::printf("   r=%-4lld", (long long)r);
    std::printf("\n");
    for (const auto& c : table.curves) {
      const int64_t n = reports.front().classes.at(c.name).requests;
      std::printf("%-28s %9s", c.name.c_str(), ("(" + std::to_string(n) + ")").c_str());
      for (double acc : c.accuracy) std::printf("   %5.1f%%", 100.0 * acc);
      std::printf("\n");
    }
    std::printf("%-28s %9s", "steps per token", "");
    for (const auto& rep : reports) std::printf("   %6.1f", rep.total.mean_steps_per_token());
    std::printf("\n");
    if (!a->plot.empty()) std::printf("plot written to %s\n", a->plot.c_str());
  });
}

}  // namespace ponder::apps
