#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "core/status.h"
#include "exec/backend.h"
#include "model/checkpoint.h"

namespace ponder::apps {

// Prints "ponder: error: <message>" to stderr; returns the exit status 1.
int Fail(const Status& status);

// The model directory plus the runtime objects built on it.
struct Runtime {
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<exec::Backend> model;
};

// Loads a model directory and builds the backend `backend`.
[[nodiscard]] Result<Runtime> Open(const std::string& dir, const exec::BackendOptions& backend,
                                   bool require_tokenizer);

// Adds `--backend cpu|cuda` (the executor that runs the model), `--threads N` (its CPU
// threads), `--device N`, `--cuda-weights bf16|f32`, `--cuda-mma-rows N`, `--cuda-pdl`,
// `--cuda-device-signals` and `--cuda-lean-kernels` to a command.
void AddBackendFlag(CLI::App* cmd, exec::BackendOptions* backend);

// "1.50 MiB".
std::string HumanBytes(double bytes);

// A check for a number option: finite (CLI::Range lets NaN through) and in [lo, hi], or in
// (lo, hi] with `open_low`.
CLI::Validator FiniteIn(double lo, double hi, bool open_low = false);

}  // namespace ponder::apps
