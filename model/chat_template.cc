// ApplyChatTemplate (declared in tokenizer.h): the Huginn chat format as plain text.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"
#include "model/tokenizer_steps.h"

namespace ponder::model {
namespace {

// Python's str.isspace() for one code point (what the template's `trim` strips).
bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// The code point of the valid UTF-8 character [i, i + len), or 0xFFFFFFFF if invalid.
uint32_t CodePointAt(std::string_view s, size_t i, size_t len) {
  const auto b = [&](size_t k) {
    return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k]));
  };
  if (len == 1) return b(0) < 0x80 ? b(0) : 0xFFFFFFFF;
  if (len == 2) return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
  if (len == 3) return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

std::string Trim(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    const size_t len = tokenizer_internal::Utf8CharLen(s, begin);
    if (!IsPythonSpace(CodePointAt(s, begin, len))) break;
    begin += len;
  }
  size_t end = begin;  // end of the last non-space character
  for (size_t i = begin; i < s.size();) {
    const size_t len = tokenizer_internal::Utf8CharLen(s, i);
    if (!IsPythonSpace(CodePointAt(s, i, len))) end = i + len;
    i += len;
  }
  return std::string(s.substr(begin, end - begin));
}

}  // namespace

std::string ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += "<|begin_text|>";
    const std::string role = messages[i].role == "assistant" ? "Huginn" : messages[i].role;
    out += "<|begin_header|>" + role + "<|end_header|>\n\n" + Trim(messages[i].content) +
           "<|end_turn|>";
  }
  out += add_generation_prompt ? "<|begin_header|>Huginn<|end_header|>\n\n" : "<|end_text|>";
  return out;
}

}  // namespace ponder::model
