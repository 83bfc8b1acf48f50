#pragma once

// The prompt protocol of the bundled model's tasks (model/reference/tasks.py), shared by the
// drivers that run workloads (replay, calibrate): a prompt is encoded without specials after
// <|begin_text|>, and generation stops at <|end_text|>.

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/tokenizer.h"

namespace ponder::model {

struct TaskProtocol {
  int32_t bos = -1;  // <|begin_text|>; -1 when the tokenizer has none (nothing prepended)
  int32_t eos = -1;  // <|end_text|>: the stop token
};

// The protocol's token ids; kInvalidArgument when the tokenizer has no <|end_text|>.
// `who` prefixes the message ("replay", "calibrate").
[[nodiscard]] Result<TaskProtocol> ProtocolOf(const Tokenizer& tokenizer, const std::string& who);

// <|begin_text|> + the prompt encoded with add_special_tokens=false.
[[nodiscard]] Result<std::vector<int32_t>> EncodeTaskPrompt(const Tokenizer& tokenizer,
                                                            const TaskProtocol& protocol,
                                                            const std::string& prompt);

}  // namespace ponder::model
