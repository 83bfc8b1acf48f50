#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace ponder::model {

// A byte-level BPE tokenizer read from a Hugging Face `tokenizer.json`: the BPE model
// (vocab, merges as "a b" strings or [a, b] pairs, optional byte_fallback to <0xNN>
// tokens), added/special tokens (matched before pre-tokenisation), the pre-tokenizer
// (ByteLevel, Split with a regex, or a Sequence of them), the ByteLevel decoder and the
// TemplateProcessing post-processor. Also: Digits pre-tokenizer, Prepend/Replace normalizers,
// ByteFallback/Fuse/Strip/Replace decoders, unk_token/fuse_unk, ignore_merges. Any other
// component type is refused at load time with kUnimplemented naming its JSON path.
// Immutable after loading; thread-safe for reads (an internal BPE cache is locked).
class Tokenizer {
 public:
  [[nodiscard]] static Result<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // `source` names the text's origin in error messages.
  [[nodiscard]] static Result<std::unique_ptr<Tokenizer>> FromJson(const std::string& json_text,
                                                                   const std::string& source);
  ~Tokenizer();

  // Encodes UTF-8 text (invalid UTF-8 bytes are encoded byte-wise, nothing is lost).
  // `add_special_tokens` applies the post-processor template (e.g. BOS ... EOS). Fails with
  // kInvalidArgument if a character has no token and the model has neither byte_fallback
  // tokens nor an unk_token for it.
  [[nodiscard]] Result<std::vector<int32_t>> Encode(const std::string& text,
                                                    bool add_special_tokens = false) const;
  // Decodes ids to text; `skip_special_tokens` drops special added tokens. Unknown ids
  // are an error.
  [[nodiscard]] Result<std::string> Decode(const std::vector<int32_t>& ids,
                                           bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  // largest id + 1
  // Id of a token's string (e.g. "<|end_turn|>"), or -1.
  int32_t TokenToId(const std::string& token) const;
  std::string IdToToken(int32_t id) const;  // "" when unknown
  bool IsSpecial(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// The Huginn chat template (reference/huginn.md §8): per message
// `<|begin_header|>{role}<|end_header|>\n\n{content|trim}<|end_turn|>`, BOS before the first,
// role "assistant" written "Huginn"; `add_generation_prompt` appends the Huginn header,
// otherwise `<|end_text|>` is appended. Encode the result with add_special_tokens=false.
std::string ApplyChatTemplate(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

}  // namespace ponder::model
