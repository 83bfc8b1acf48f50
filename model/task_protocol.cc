#include "model/task_protocol.h"

namespace ponder::model {

Result<TaskProtocol> ProtocolOf(const Tokenizer& tokenizer, const std::string& who) {
  TaskProtocol p;
  p.bos = tokenizer.TokenToId("<|begin_text|>");
  p.eos = tokenizer.TokenToId("<|end_text|>");
  if (p.eos < 0) return InvalidArgument(who + ": the tokenizer has no <|end_text|> token");
  return p;
}

Result<std::vector<int32_t>> EncodeTaskPrompt(const Tokenizer& tokenizer,
                                              const TaskProtocol& protocol,
                                              const std::string& prompt) {
  PONDER_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(prompt, false));
  if (protocol.bos >= 0) ids.insert(ids.begin(), protocol.bos);
  return ids;
}

}  // namespace ponder::model
