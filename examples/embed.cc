// Embedding Ponder in a backend: load the bundled model with two domain profiles, submit a
// few requests from several threads, stream one of them, and print what each cost.
//
//   build/examples/ponder_embed_example model/zoo/ponder-micro scenarios/profiles
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "exec/engine.h"

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "model/zoo/ponder-micro";
  const std::string profiles = argc > 2 ? argv[2] : "scenarios/profiles";
  ponder::exec::EngineOptions options;
  options.model_dir = model;
  options.profile_paths = {profiles + "/finance.json", profiles + "/education.json"};
  options.max_active = 16;  // sequences iterating together
  auto engine = ponder::exec::Engine::Create(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }

  // A finance backend: a routine lookup and a deep risk question, planned by the profile's
  // routing (here by explicit class), for tenant "acme".
  struct Job {
    std::string profile, task_class, prompt;
  };
  const std::vector<Job> jobs = {
      {"finance", "routine_transaction", "k3a7q1?a"},
      {"finance", "risk_assessment", "+4*3+7*9+2+5*7="},
      {"education", "concept_explanation", "dolphin|"},
      {"education", "complex_problem_solving", "+8+1*9+3*3+6="},
  };
  std::vector<std::thread> threads;
  for (const Job& job : jobs) {
    threads.emplace_back([&engine, job] {
      ponder::exec::GenerationRequest req;
      req.profile = job.profile;
      req.prompt = job.prompt;
      req.policy.task_class = job.task_class;
      req.policy.tenant = "acme";
      std::string streamed;
      auto handle = (*engine)->Submit(req, [&streamed](const ponder::exec::TokenEvent& t) {
        streamed += t.text;  // arrives token by token, on the engine's thread
      });
      if (!handle.ok()) {
        std::fprintf(stderr, "%s: %s\n", job.prompt.c_str(), handle.status().ToString().c_str());
        return;
      }
      auto result = handle->result.get();
      if (!result.ok()) {
        std::fprintf(stderr, "%s: %s\n", job.prompt.c_str(), result.status().ToString().c_str());
        return;
      }
      const auto& u = result->usage;
      std::printf("%-10s %-24s %-18s -> %-8s %5.1f iterations/token, %.2f MFLOP, %.8f %s\n",
                  job.profile.c_str(), job.task_class.c_str(), job.prompt.c_str(),
                  result->text.c_str(), u.mean_steps_per_token, u.flops / 1e6, u.cost,
                  u.currency.c_str());
    });
  }
  for (auto& t : threads) t.join();
  const auto stats = (*engine)->Stats();
  std::printf("completed %lld requests in %lld ticks; acme has %.6f USD left this hour\n",
              static_cast<long long>(stats.completed), static_cast<long long>(stats.ticks),
              (*engine)->RemainingBudget("finance", "acme"));
  return 0;
}
