#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "exec/cpu/cpu_model.h"
#include "model/checkpoint.h"

namespace ponder::apps {

// Prints "ponder: error: <message>" to stderr; returns the exit status 1.
int Fail(const Status& status);

// The model directory plus the runtime objects built on it.
struct Runtime {
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<exec::cpu::ThreadPool> pool;
  std::unique_ptr<exec::cpu::CpuModel> model;
};

// Loads a model directory and builds a CPU model with `threads` threads (0: all).
[[nodiscard]] Result<Runtime> Open(const std::string& dir, int threads, bool require_tokenizer);

// "1.50 MiB".
std::string HumanBytes(double bytes);

}  // namespace ponder::apps
