#include "apps/common.h"

#include <cmath>
#include <cstdio>

namespace ponder::apps {

int Fail(const Status& status) {
  std::fprintf(stderr, "ponder: error: %s\n", status.message().c_str());
  return 1;
}

Result<Runtime> Open(const std::string& dir, const exec::BackendOptions& backend,
                     bool require_tokenizer) {
  Runtime rt;
  model::LoadOptions lo;
  lo.require_tokenizer = require_tokenizer;
  PONDER_ASSIGN_OR_RETURN(rt.ckpt, model::LoadCheckpoint(dir, lo));
  PONDER_ASSIGN_OR_RETURN(rt.model, exec::MakeBackend(backend, rt.ckpt->config, rt.ckpt->weights));
  return rt;
}

void AddBackendFlag(CLI::App* cmd, exec::BackendOptions* backend) {
  std::string kinds;
  for (const std::string& k : exec::BackendKinds()) kinds += (kinds.empty() ? "" : ", ") + k;
  cmd->add_option("--backend", backend->kind,
                  "executor: cpu or cuda (in this build: " + kinds + ")")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--threads", backend->threads, "CPU threads (0: all)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--device", backend->device, "CUDA device ordinal (--backend cuda)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--cuda-weights", backend->cuda_weights,
                  "CUDA weight storage, f32 accumulation either way: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}));
  // Not yet run on a GPU in this version (bench/gpu/README.md): off by default.
  cmd->add_option("--cuda-mma-rows", backend->cuda_mma_rows,
                  "CUDA: tensor-core kernel for products of up to N rows (0: off; default: off)")
      ->check(CLI::Range(0, 32));
  cmd->add_flag("--cuda-pdl", backend->cuda_pdl,
                "CUDA: programmatic dependent launch between kernels");
  cmd->add_flag("--cuda-device-signals", backend->cuda_device_signals,
                "CUDA: compute the logit rules' values on the device (only they come back)");
  cmd->add_flag("--cuda-lean-kernels", backend->cuda_lean_kernels,
                "CUDA: norms holding their row in registers; RoPE and attention in one kernel "
                "when decoding");
}

CLI::Validator FiniteIn(double lo, double hi, bool open_low) {
  char range[96];
  std::snprintf(range, sizeof(range), "%s%g, %g]", open_low ? "(" : "[", lo, hi);
  const std::string name = range;
  return CLI::Validator(
      [lo, hi, open_low, name](std::string& text) -> std::string {
        double v = 0.0;
        size_t used = 0;
        try {
          v = std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != text.size()) return "\"" + text + "\" is not a number";
        if (!std::isfinite(v) || v < lo || v > hi || (open_low && v == lo)) {
          return text + " is not a finite number in " + name;
        }
        return std::string();
      },
      "FINITE in " + name);
}

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace ponder::apps
