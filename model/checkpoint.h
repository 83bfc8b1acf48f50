#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace ponder::model {

// A loaded model directory: config.json, model.safetensors (or shards with
// model.safetensors.index.json) and tokenizer.json. Owns the loaded files the weight
// views point into; keep it alive (and at a stable address) while the weights are used.
struct Checkpoint {
  std::string dir;
  Config config;
  TensorStore store;
  Weights weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the directory has no tokenizer.json
};

struct LoadOptions {
  bool require_tokenizer = true;
};

[[nodiscard]] Result<std::unique_ptr<Checkpoint>> LoadCheckpoint(const std::string& dir,
                                                                 const LoadOptions& options = {});

}  // namespace ponder::model
