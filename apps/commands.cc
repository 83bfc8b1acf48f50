#include "apps/commands.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "apps/common.h"
#include "exec/adaptive.h"
#include "exec/cost.h"
#include "exec/cpu/cpu_model.h"
#include "exec/generator.h"
#include "model/checkpoint.h"
#include "policy/profile.h"
#include "scenarios/replay.h"

namespace ponder::apps {
namespace {

using nlohmann::json;

Result<std::vector<int32_t>> ParseTokenList(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    while (used < item.size() && std::isspace(static_cast<unsigned char>(item[used]))) ++used;
    if (item.empty() || used != item.size() || v < 0 || v > INT32_MAX) {
      return InvalidArgument("--tokens: \"" + item + "\" is not a token id");
    }
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) return InvalidArgument("--tokens: no token ids given");
  return ids;
}

}  // namespace

void AddInspectCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("inspect", "Show a model's config, sizes and cache costs");
  auto dir = std::make_shared<std::string>();
  auto steps = std::make_shared<int64_t>(0);
  auto as_json = std::make_shared<bool>(false);
  cmd->add_option("--model", *dir, "Model directory (config.json, safetensors, tokenizer)")
      ->required();
  cmd->add_option("--steps", *steps, "Core iterations r (default: the config's mean_recurrence)");
  cmd->add_flag("--json", *as_json, "Print JSON");
  cmd->callback([=, &exit_code] {
    model::LoadOptions lo;
    lo.require_tokenizer = false;
    auto ckpt = model::LoadCheckpoint(*dir, lo);
    if (!ckpt.ok()) {
      exit_code = Fail(ckpt.status());
      return;
    }
    const model::Config& c = (*ckpt)->config;
    const model::Weights& w = (*ckpt)->weights;
    const int64_t r = *steps > 0 ? *steps : c.mean_recurrence;
    json out;
    out["model_type"] = c.model_type;
    out["n_embd"] = c.n_embd;
    out["n_heads"] = c.n_heads;
    out["head_dim"] = c.head_dim;
    out["intermediate_size"] = c.intermediate_size;
    out["vocab_size"] = c.vocab_size;
    out["padded_vocab_size"] = c.padded_vocab_size;
    out["layers"] = {{"prelude", c.n_layers_in_prelude},
                     {"core", c.n_layers_in_recurrent_block},
                     {"coda", c.n_layers_in_coda}};
    out["block_size"] = c.block_size;
    out["tie_embeddings"] = c.tie_embeddings;
    out["mean_recurrence"] = c.mean_recurrence;
    out["steps"] = r;
    out["params_unique"] = c.UniqueParams();
    out["params_unrolled"] = c.UnrolledParams(r);
    out["weight_bytes"] = w.weight_bytes;
    out["file_bytes"] = (*ckpt)->store.loaded_bytes();
    out["ignored_tensors"] = w.ignored;
    // The runtime caches keys and values in f32: 2 x n_embd x 4 bytes per slot per token.
    const int64_t slot_bytes = 2 * c.n_embd * 4;
    const int64_t fixed = c.n_layers_in_prelude + c.n_layers_in_coda;
    json kv;
    std::vector<std::string> names = {"full"};
    for (int64_t n : {c.n_layers_in_recurrent_block, 4 * c.n_layers_in_recurrent_block}) {
      names.push_back("compress-s" + std::to_string(n));
    }
    for (const std::string& name : names) {
      auto strategy = exec::KvStrategy::Parse(name);
      const int64_t slots = fixed + strategy->CoreSlots(r, c.n_layers_in_recurrent_block);
      kv[name] = {{"slots", slots}, {"bytes_per_token", slots * slot_bytes}};
    }
    out["kv_cache"] = kv;
    if (*as_json) {
      std::cout << out.dump(2) << "\n";
      return;
    }
    std::printf("model        %s (%s)\n", dir->c_str(), c.model_type.c_str());
    std::printf("width        n_embd %lld, %lld heads x %lld, mlp %lld, vocab %lld (padded %lld)\n",
                (long long)c.n_embd, (long long)c.n_heads, (long long)c.head_dim,
                (long long)c.intermediate_size, (long long)c.vocab_size,
                (long long)c.padded_vocab_size);
    std::printf("layers       prelude %lld, core %lld (iterated), coda %lld; context %lld\n",
                (long long)c.n_layers_in_prelude, (long long)c.n_layers_in_recurrent_block,
                (long long)c.n_layers_in_coda, (long long)c.block_size);
    std::printf("parameters   %lld unique, %lld unrolled at r=%lld\n", (long long)c.UniqueParams(),
                (long long)c.UnrolledParams(r), (long long)r);
    std::printf("weights      %s used, %s in files\n", HumanBytes(w.weight_bytes).c_str(),
                HumanBytes((*ckpt)->store.loaded_bytes()).c_str());
    if (!w.ignored.empty()) {
      std::printf("ignored      ");
      for (const auto& n : w.ignored) std::printf("%s ", n.c_str());
      std::printf("\n");
    }
    std::printf("kv cache     per token at r=%lld (f32 keys and values):\n", (long long)r);
    for (const std::string& name : names) {
      std::printf("  %-16s %5lld slots  %s\n", name.c_str(),
                  (long long)kv[name]["slots"].get<int64_t>(),
                  HumanBytes(kv[name]["bytes_per_token"].get<double>()).c_str());
    }
  });
}

void AddGenerateCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("generate", "Generate text at a fixed depth");
  struct Args {
    std::string dir, prompt, kv = "full", exit_rule;
    int64_t steps = 32, max_tokens = 32, min_steps = 1, check_every = 1;
    uint64_t seed = 0;
    double temperature = 0.0, top_p = 1.0, init_scale = 1.0, exit_threshold = -1.0;
    exec::BackendOptions backend;
    bool chat = false, as_json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::Option* exit = cmd->add_option("--exit", a->exit_rule,
                                      "Per-token exit rule (kl, minp-kl, entropy-diff, "
                                      "latent-diff, cosine, argmax-stability); --steps is then "
                                      "the maximum");
  cmd->add_option("--exit-threshold", a->exit_threshold, "Threshold of the exit rule")
      ->check(FiniteIn(0.0, 1e9, /*open_low=*/true))
      ->needs(exit);
  cmd->add_option("--min-steps", a->min_steps, "With --exit: iterations before any exit")
      ->check(CLI::Range(1, 4096))
      ->needs(exit);
  cmd->add_option("--check-every", a->check_every, "With --exit: iterations between checks")
      ->check(CLI::Range(1, 4096))
      ->needs(exit);
  cmd->add_option("--model", a->dir, "Model directory")->required();
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("--steps", a->steps, "Core iterations per token")->check(CLI::Range(1, 4096));
  cmd->add_option("--max-tokens", a->max_tokens, "New tokens at most")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--seed", a->seed, "Seed for the initial state and sampling");
  cmd->add_option("--temperature", a->temperature, "0 = greedy")->check(FiniteIn(0.0, 100.0));
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass")
      ->check(FiniteIn(0.0, 1.0, /*open_low=*/true));
  cmd->add_option("--init-scale", a->init_scale, "Scale of the random initial state (0: zero)")
      ->check(FiniteIn(0.0, 1e6));
  cmd->add_option("--kv", a->kv, "KV-cache strategy: full or compress-sN");
  AddBackendFlag(cmd, &a->backend);
  cmd->add_flag("--chat", a->chat, "Wrap the prompt in the chat template as a user message");
  cmd->add_flag("--json", a->as_json, "Print JSON");
  cmd->callback([a, &exit_code] {
    auto rt = Open(a->dir, a->backend, /*require_tokenizer=*/true);
    if (!rt.ok()) {
      exit_code = Fail(rt.status());
      return;
    }
    const model::Tokenizer& tok = *rt->ckpt->tokenizer;
    std::string text = a->prompt;
    if (a->chat) text = model::ApplyChatTemplate({{"user", a->prompt}}, true);
    auto ids = tok.Encode(text, false);
    if (!ids.ok()) {
      exit_code = Fail(ids.status());
      return;
    }
    const int32_t bos = tok.TokenToId("<|begin_text|>");
    if (!a->chat && bos >= 0) ids->insert(ids->begin(), bos);
    auto kv = exec::KvStrategy::Parse(a->kv);
    if (!kv.ok()) {
      exit_code = Fail(kv.status());
      return;
    }
    exec::GenerateOptions go;
    go.steps = a->steps;
    go.max_tokens = a->max_tokens;
    go.seed = a->seed;
    go.init_scale = a->init_scale;
    go.sampling.temperature = a->temperature;
    go.sampling.top_p = a->top_p;
    go.kv = *kv;
    for (const char* stop : {"<|end_text|>", "<|end_turn|>"}) {
      if (tok.TokenToId(stop) >= 0) go.stop_ids.push_back(tok.TokenToId(stop));
    }
    if (!a->exit_rule.empty()) {
      auto rule = policy::ParseExitRule(a->exit_rule);
      if (!rule.ok()) {
        exit_code = Fail(rule.status().WithContext("--exit"));
        return;
      }
      if (a->min_steps > a->steps) {
        exit_code = Fail(InvalidArgument("--min-steps must be <= --steps"));
        return;
      }
      if (*rule == policy::ExitRule::kArgmaxStability && a->exit_threshold >= 0 &&
          !policy::ThresholdSuits(*rule, a->exit_threshold)) {
        exit_code = Fail(InvalidArgument(
            "--exit-threshold: argmax-stability counts checks: a whole number >= 1"));
        return;
      }
      policy::DepthPlan plan;
      plan.min_steps = static_cast<int>(a->min_steps);
      plan.max_steps = plan.class_max_steps = static_cast<int>(a->steps);
      plan.rule = *rule;
      plan.threshold = a->exit_threshold >= 0 ? a->exit_threshold : policy::DefaultThreshold(*rule);
      plan.check_every = static_cast<int>(a->check_every);
      plan.check_from = 1;
      auto res = exec::GenerateAdaptive(*rt->model, *ids, plan, exec::ToAdaptiveOptions(go));
      if (!res.ok()) {
        exit_code = Fail(res.status());
        return;
      }
      std::vector<int32_t> ids_out;
      json per_token = json::array();
      int64_t total = 0;
      for (const auto& t : res->tokens) {
        ids_out.push_back(t.token);
        total += t.steps;
        per_token.push_back({{"token", t.token},
                             {"steps", t.steps},
                             {"exit", std::string(policy::ExitReasonName(t.reason))}});
      }
      auto decoded = tok.Decode(ids_out, /*skip_special_tokens=*/true);
      if (!decoded.ok()) {
        exit_code = Fail(decoded.status());
        return;
      }
      const double mean = ids_out.empty() ? 0.0 : double(total) / ids_out.size();
      if (a->as_json) {
        json out = {{"text", *decoded},
                    {"tokens", ids_out},
                    {"per_token", per_token},
                    {"mean_steps_per_token", mean},
                    {"max_steps", a->steps},
                    {"logit_checks", res->checks.logit_checks},
                    {"latent_checks", res->checks.latent_checks},
                    {"finish_reason", res->finish_reason}};
        std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
        return;
      }
      std::printf("%s\n", decoded->c_str());
      std::fprintf(stderr,
                   "[%zu tokens, %.1f iterations per token (max %lld), exits:", ids_out.size(),
                   mean, (long long)a->steps);
      for (const auto& t : res->tokens) std::fprintf(stderr, " %lld", (long long)t.steps);
      std::fprintf(stderr, "; %lld logit checks, %lld latent checks]\n",
                   (long long)res->checks.logit_checks, (long long)res->checks.latent_checks);
      return;
    }
    auto res = exec::Generate(*rt->model, *ids, go);
    if (!res.ok()) {
      exit_code = Fail(res.status());
      return;
    }
    auto decoded = tok.Decode(res->tokens, /*skip_special_tokens=*/true);
    if (!decoded.ok()) {
      exit_code = Fail(decoded.status());
      return;
    }
    const double tps = res->tokens.size() > 1
                           ? (res->tokens.size() - 1) / std::max(res->decode_seconds, 1e-9)
                           : 0.0;
    if (a->as_json) {
      json out = {{"text", *decoded},
                  {"tokens", res->tokens},
                  {"prompt_tokens", ids->size()},
                  {"steps", a->steps},
                  {"finish_reason", res->finish_reason},
                  {"prefill_seconds", res->prefill_seconds},
                  {"decode_tokens_per_second", tps},
                  {"kv_bytes", res->kv_bytes}};
      std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
      return;
    }
    std::printf("%s\n", decoded->c_str());
    std::fprintf(stderr,
                 "[%zu prompt tokens, %zu generated at r=%lld; prefill %.1f ms, decode %.1f "
                 "tokens/s; finish %s; kv %llu bytes]\n",
                 ids->size(), res->tokens.size(), (long long)a->steps, res->prefill_seconds * 1e3,
                 tps, res->finish_reason.c_str(), (unsigned long long)res->kv_bytes);
  });
}

void AddLogitsCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("logits", "Print the logits of a token sequence as JSON");
  struct Args {
    std::string dir, tokens;
    int64_t steps = 32;
    double init_scale = 1.0;
    uint64_t seed = 0;
    exec::BackendOptions backend;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->dir, "Model directory")->required();
  cmd->add_option("--tokens", a->tokens, "Comma-separated token ids, e.g. 5,17,3")->required();
  cmd->add_option("--steps", a->steps, "Core iterations")->check(CLI::Range(1, 4096));
  cmd->add_option("--init-scale", a->init_scale, "Scale of the random initial state (0: zero)")
      ->check(FiniteIn(0.0, 1e6));
  cmd->add_option("--seed", a->seed, "Seed of the initial state");
  AddBackendFlag(cmd, &a->backend);
  cmd->callback([a, &exit_code] {
    auto ids = ParseTokenList(a->tokens);
    if (!ids.ok()) {
      exit_code = Fail(ids.status());
      return;
    }
    auto rt = Open(a->dir, a->backend, /*require_tokenizer=*/false);
    if (!rt.ok()) {
      exit_code = Fail(rt.status());
      return;
    }
    auto cache = rt->model->NewCache();
    auto logits = rt->model->Forward(*cache, *ids, a->steps, nullptr, a->seed, a->init_scale);
    if (!logits.ok()) {
      exit_code = Fail(logits.status());
      return;
    }
    const size_t v = static_cast<size_t>(rt->ckpt->weights.lm_head.shape[0]);
    // (JSON has no NaN or infinity: such logits are an error, not output.)
    for (size_t i = 0; i < ids->size() * v; ++i) {
      if (!std::isfinite((*logits)[i])) {
        exit_code = Fail(Internal("logits: position " + std::to_string(i / v) + ", token " +
                                  std::to_string(i % v) + " is not finite (" +
                                  std::to_string((*logits)[i]) +
                                  "); the checkpoint's weights may hold NaN or infinity"));
        return;
      }
    }
    // Written by hand: one row per position, %.9g keeps every f32 exactly.
    std::string out = "{\"logits\": [";
    char buf[32];
    for (size_t r = 0; r < ids->size(); ++r) {
      out += r ? ", [" : "[";
      for (size_t j = 0; j < v; ++j) {
        std::snprintf(buf, sizeof(buf), j ? ", %.9g" : "%.9g", (*logits)[r * v + j]);
        out += buf;
      }
      out += "]";
    }
    out += "]}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
  });
}

void AddReplayCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("replay", "Score a workload (JSONL with expected answers)");
  struct Args {
    std::string dir, workload, kv = "full", profile;
    int64_t steps = 32, max_tokens = 16, batch = 32;
    uint64_t seed = 0;
    double init_scale = 1.0;
    exec::BackendOptions backend;
    bool as_json = false, items = false, class_max = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->dir, "Model directory")->required();
  cmd->add_option("--workload", a->workload, "Workload JSONL file")->required();
  CLI::Option* class_max =
      cmd->add_flag("--class-max", a->class_max,
                    "With --profile: run every class at its max_steps with no early exit (the "
                    "fixed-depth baseline of the profile)");
  CLI::Option* fixed = cmd->add_option("--fixed-steps", a->steps, "Core iterations per token")
                           ->check(CLI::Range(1, 4096));
  CLI::Option* profile =
      cmd->add_option("--profile", a->profile,
                      "Domain profile JSON: plan each request by its class and exit per token "
                      "(instead of --fixed-steps)");
  fixed->excludes(profile);
  class_max->needs(profile);
  cmd->add_option("--max-tokens", a->max_tokens, "Answer tokens at most")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--batch", a->batch,
                  "Sequences decoded together at fixed depth (their latency is the batch's; "
                  "--batch 1 for per-request latency)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--seed", a->seed, "Seed of the initial states");
  cmd->add_option("--init-scale", a->init_scale, "Scale of the random initial state (0: zero)")
      ->check(FiniteIn(0.0, 1e6));
  cmd->add_option("--kv", a->kv, "KV-cache strategy: full or compress-sN");
  AddBackendFlag(cmd, &a->backend);
  cmd->add_flag("--json", a->as_json, "Print one JSON object");
  cmd->add_flag("--items", a->items, "Include every item's answer in the JSON");
  cmd->callback([a, &exit_code] {
    auto items = scenarios::LoadWorkload(a->workload);
    if (!items.ok()) {
      exit_code = Fail(items.status());
      return;
    }
    auto kv = exec::KvStrategy::Parse(a->kv);
    if (!kv.ok()) {
      exit_code = Fail(kv.status());
      return;
    }
    auto rt = Open(a->dir, a->backend, /*require_tokenizer=*/true);
    if (!rt.ok()) {
      exit_code = Fail(rt.status());
      return;
    }
    std::optional<policy::DomainProfile> profile;
    if (!a->profile.empty()) {
      auto loaded = policy::LoadProfile(a->profile);
      if (!loaded.ok()) {
        exit_code = Fail(loaded.status());
        return;
      }
      profile = std::move(*loaded);
      if (a->class_max) {
        for (policy::TaskClass& c : profile->task_classes) {
          c.exit = policy::ExitSpec{};  // rule none
          c.min_steps = c.max_steps;
        }
      }
    } else if (a->class_max) {
      exit_code = Fail(InvalidArgument("replay: --class-max needs --profile"));
      return;
    }
    scenarios::ReplayOptions ro;
    ro.profile = profile ? &*profile : nullptr;
    ro.steps = a->steps;
    ro.max_tokens = a->max_tokens;
    ro.batch = a->batch;
    ro.seed = a->seed;
    ro.init_scale = a->init_scale;
    ro.kv = *kv;
    ro.dims = exec::DimsOf(rt->ckpt->config, rt->ckpt->weights);
    auto report = scenarios::Replay(*rt->model, *rt->ckpt->tokenizer, *items, ro);
    if (!report.ok()) {
      exit_code = Fail(report.status());
      return;
    }
    if (a->as_json) {
      std::cout << scenarios::ReportJson(*report, profile ? 0 : a->steps, a->items) << "\n";
      return;
    }
    const std::string title =
        a->workload + " (" +
        (profile ? "profile " + profile->name + (a->class_max ? ", every class at its max" : "")
                 : "r=" + std::to_string(a->steps)) +
        ")";
    std::fputs(scenarios::ReportText(*report, title).c_str(), stdout);
  });
}

void AddTokenizeCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("tokenize", "Encode text with a model's tokenizer");
  auto dir = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto specials = std::make_shared<bool>(false);
  cmd->add_option("--model", *dir, "Model directory (its tokenizer.json)")->required();
  cmd->add_option("--text", *text, "Text to encode")->required();
  cmd->add_flag("--add-special-tokens", *specials, "Apply the post-processor template");
  cmd->callback([=, &exit_code] {
    auto tok = model::Tokenizer::FromFile(*dir + "/tokenizer.json");
    if (!tok.ok()) {
      exit_code = Fail(tok.status());
      return;
    }
    auto ids = (*tok)->Encode(*text, *specials);
    if (!ids.ok()) {
      exit_code = Fail(ids.status());
      return;
    }
    json tokens = json::array();
    for (int32_t id : *ids) tokens.push_back((*tok)->IdToToken(id));
    std::cout << json{{"ids", *ids}, {"tokens", tokens}}.dump(-1, ' ', false,
                                                              json::error_handler_t::replace)
              << "\n";
  });
}

}  // namespace ponder::apps
