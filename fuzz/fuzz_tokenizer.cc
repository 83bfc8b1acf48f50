// libFuzzer harness: the tokenizer. The first byte chooses the mode:
//   even: the input (after it) is a tokenizer.json to load; when it loads, a fixed text is
//         encoded and decoded with it;
//   odd:  the input is text for the bundled model's tokenizer: encode, decode, and the
//         decoded text must equal the input (byte-level BPE loses nothing).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "model/tokenizer.h"

namespace {
const ponder::model::Tokenizer* Bundled() {
  static std::unique_ptr<ponder::model::Tokenizer> tok = [] {
    auto t = ponder::model::Tokenizer::FromFile(PONDER_SOURCE_DIR
                                                "/model/zoo/ponder-micro/tokenizer.json");
    if (!t.ok()) std::abort();
    return std::move(*t);
  }();
  return tok.get();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    auto tok = ponder::model::Tokenizer::FromJson(rest, "fuzz/tokenizer.json");
    if (!tok.ok()) return 0;
    auto ids = (*tok)->Encode("Hello, world! 12+34=46 <|end_text|>", true);
    if (ids.ok()) (void)(*tok)->Decode(*ids, false);
    return 0;
  }
  const ponder::model::Tokenizer* tok = Bundled();
  auto ids = tok->Encode(rest, false);
  if (!ids.ok()) return 0;
  auto text = tok->Decode(*ids, false);
  if (!text.ok() || *text != rest) std::abort();  // the round trip must be exact
  return 0;
}
