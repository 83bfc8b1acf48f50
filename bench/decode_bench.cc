// Decode speed of one sequence at fixed depth on a checkpoint directory: prefill a
// 16-token prompt, then decode greedily; median ms per decoded token over repeats.
//
//   build/bench/decode_bench --model DIR [--steps 32] [--tokens 64] [--threads 2]
//                            [--repeats 3]
// Prints one JSON line (the PyTorch counterpart, bench/torch_decode.py, prints the same).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "exec/cpu/cpu_model.h"
#include "exec/generator.h"
#include "model/checkpoint.h"

int main(int argc, char** argv) {
  std::string dir;
  int64_t steps = 32, tokens = 64;
  int threads = 2, repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      dir = v;
    else if (k == "--steps")
      steps = std::stoll(v);
    else if (k == "--tokens")
      tokens = std::stoll(v);
    else if (k == "--threads")
      threads = std::stoi(v);
    else if (k == "--repeats")
      repeats = std::stoi(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  ponder::model::LoadOptions lo;
  lo.require_tokenizer = false;
  auto ckpt = ponder::model::LoadCheckpoint(dir, lo);
  if (!ckpt.ok()) {
    std::fprintf(stderr, "error: %s\n", ckpt.status().message().c_str());
    return 1;
  }
  ponder::exec::cpu::ThreadPool pool(threads);
  ponder::exec::cpu::CpuModel model((*ckpt)->config, (*ckpt)->weights, &pool);
  std::vector<int32_t> prompt(16);
  for (int i = 0; i < 16; ++i) prompt[i] = (i * 7 + 3) % (*ckpt)->config.vocab_size;
  ponder::exec::GenerateOptions go;
  go.steps = steps;
  go.max_tokens = tokens + 1;  // the first token comes from the prefill
  go.init_scale = 0.0;
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    auto res = ponder::exec::Generate(model, prompt, go);
    if (!res.ok()) {
      std::fprintf(stderr, "error: %s\n", res.status().message().c_str());
      return 1;
    }
    ms.push_back(1e3 * res->decode_seconds / (res->tokens.size() - 1));
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  std::printf(
      "{\"runtime\": \"ponder-cpu\", \"steps\": %lld, \"threads\": %d, \"ms_per_token\": %.4f, "
      "\"tokens_per_second\": %.1f, \"params\": %lld}\n",
      (long long)steps, pool.threads(), med, 1e3 / med, (long long)(*ckpt)->config.UniqueParams());
  return 0;
}
