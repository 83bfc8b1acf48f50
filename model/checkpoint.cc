#include "model/checkpoint.h"

#include <filesystem>

namespace ponder::model {

Result<std::unique_ptr<Checkpoint>> LoadCheckpoint(const std::string& dir,
                                                   const LoadOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound(dir + ": not a model directory");
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->dir = dir;
  PONDER_ASSIGN_OR_RETURN(ckpt->config, LoadConfig((fs::path(dir) / "config.json").string()));
  PONDER_ASSIGN_OR_RETURN(ckpt->store, TensorStore::OpenDir(dir));
  PONDER_ASSIGN_OR_RETURN(ckpt->weights, BindWeights(ckpt->config, ckpt->store));
  const fs::path tok = fs::path(dir) / "tokenizer.json";
  if (fs::exists(tok, ec)) {
    PONDER_ASSIGN_OR_RETURN(ckpt->tokenizer, Tokenizer::FromFile(tok.string()));
    if (ckpt->tokenizer->vocab_size() > ckpt->config.padded_vocab_size) {
      return InvalidArgument(tok.string() + ": tokenizer has " +
                             std::to_string(ckpt->tokenizer->vocab_size()) +
                             " tokens but the model's head has " +
                             std::to_string(ckpt->config.padded_vocab_size) + " rows");
    }
  } else if (options.require_tokenizer) {
    return NotFound(tok.string() + ": missing tokenizer.json");
  }
  return ckpt;
}

}  // namespace ponder::model
