#include "model/tokenizer_steps.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <queue>

namespace ponder::model::tokenizer_internal {
namespace {

// The GPT-2 pre-tokenization pattern used by the ByteLevel pre-tokenizer.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

bool IsCont(unsigned char c) { return (c & 0xC0) == 0x80; }

// Decodes the code point of a valid UTF-8 character of length `len` at s[i].
uint32_t DecodeCodePoint(std::string_view s, size_t i, size_t len) {
  const auto b = [&](size_t k) {
    return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k]));
  };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order. The highest code point is U+0143.
struct ByteLevelTables {
  std::array<std::string, 256> encode;  // byte -> UTF-8 of its character
  std::array<int, 0x144> decode;        // code point -> byte, or -1

  ByteLevelTables() {
    decode.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      AppendUtf8(cp, &encode[b]);
      decode[cp] = b;
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

std::string Hex2(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%02X", b);
  return buf;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

const Regex* Gpt2Regex() {
  static const std::shared_ptr<const Regex> regex = [] {
    auto r = Regex::Compile(kGpt2Pattern);
    return r.ok() ? r.value() : nullptr;
  }();
  return regex.get();
}

const Regex* DigitRegex() {
  static const std::shared_ptr<const Regex> regex = [] {
    auto r = Regex::Compile(R"(\p{N})");
    return r.ok() ? r.value() : nullptr;
  }();
  return regex.get();
}

// Replaces every match of `pattern` in `s` with `replacement`.
Status ReplaceAll(const Pattern& pattern, const std::string& replacement, std::string* s) {
  std::vector<Span> matches;
  PONDER_RETURN_IF_ERROR(pattern.FindAll(*s, &matches));
  if (matches.empty()) return Status::Ok();
  std::string out;
  size_t prev = 0;
  for (const auto& [start, end] : matches) {
    out.append(*s, prev, start - prev);
    out += replacement;
    prev = end;
  }
  out.append(*s, prev, std::string::npos);
  *s = std::move(out);
  return Status::Ok();
}

}  // namespace

size_t Utf8CharLen(std::string_view s, size_t i) {
  const size_t n = s.size() - i;
  const auto c = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char b0 = c(0);
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) return n >= 2 && IsCont(c(1)) ? 2 : 1;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (n < 3) return 1;
    const unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80;
    const unsigned char hi = b0 == 0xED ? 0x9F : 0xBF;
    return c(1) >= lo && c(1) <= hi && IsCont(c(2)) ? 3 : 1;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (n < 4) return 1;
    const unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80;
    const unsigned char hi = b0 == 0xF4 ? 0x8F : 0xBF;
    return c(1) >= lo && c(1) <= hi && IsCont(c(2)) && IsCont(c(3)) ? 4 : 1;
  }
  return 1;
}

std::string ByteLevelEncode(std::string_view bytes) {
  const auto& t = Tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) out += t.encode[static_cast<unsigned char>(ch)];
  return out;
}

std::optional<std::string> ByteLevelDecode(std::string_view token) {
  const auto& t = Tables();
  std::string out;
  out.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    const size_t len = Utf8CharLen(token, i);
    if (len == 1 && static_cast<unsigned char>(token[i]) >= 0x80) return std::nullopt;
    const uint32_t cp = DecodeCodePoint(token, i, len);
    if (cp >= t.decode.size() || t.decode[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(t.decode[cp]));
    i += len;
  }
  return out;
}

// ---- Regex ----

Result<std::shared_ptr<const Regex>> Regex::Compile(const std::string& pattern) {
  // Ruby-syntax \h (a hex digit, as the reference implementation's regex engine reads it)
  // means horizontal space in PCRE2, so it is rewritten.
  std::string translated;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char ch = pattern[i];
    if (ch == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if (next == 'h') {
        translated += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
      } else if (next == 'H' && !in_class) {
        translated += "[^0-9a-fA-F]";
      } else {
        translated += ch;
        translated += next;
      }
      ++i;
      continue;
    }
    if (ch == '[' && !in_class) {
      in_class = true;
      translated += ch;
      // A ']' (possibly after '^') right after '[' is a literal member.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') translated += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') translated += pattern[++i];
      continue;
    }
    if (ch == ']' && in_class) in_class = false;
    translated += ch;
  }

  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(
      reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(error_code, buf, sizeof(buf));
    return InvalidArgument("invalid regex \"" + pattern + "\" at offset " +
                           std::to_string(error_offset) + ": " +
                           reinterpret_cast<const char*>(buf));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; failure is harmless
  return std::shared_ptr<const Regex>(new Regex(code));
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

Status Regex::FindAll(std::string_view text, std::vector<Span>* out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  if (md == nullptr) return ResourceExhausted("regex: cannot allocate match data");
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  Status status;
  size_t offset = 0;
  while (offset <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), offset, 0, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(code, subject, text.size(), offset, PCRE2_NO_JIT, md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof(buf));
      status = ResourceExhausted(std::string("regex match failed: ") +
                                 reinterpret_cast<const char*>(buf));
      break;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0];
    const size_t end = ov[1];
    if (end > start) {
      out->emplace_back(start, end);
      offset = end;
    } else {  // empty match: step over one character
      if (start >= text.size()) break;
      offset = start + Utf8CharLen(text, start);
    }
  }
  pcre2_match_data_free(md);
  return status;
}

Status Pattern::FindAll(std::string_view text, std::vector<Span>* out) const {
  if (regex) return regex->FindAll(text, out);
  if (literal.empty()) return Status::Ok();
  for (size_t pos = text.find(literal); pos != std::string_view::npos;
       pos = text.find(literal, pos + literal.size())) {
    out->emplace_back(pos, pos + literal.size());
  }
  return Status::Ok();
}

// ---- Splitting ----

void SplitByMatches(std::string_view text, const std::vector<Span>& matches, SplitBehavior behavior,
                    bool invert, std::vector<std::string>* out) {
  // The whole text as alternating (span, is_delimiter) parts.
  std::vector<std::pair<Span, bool>> parts;
  size_t prev = 0;
  for (const auto& m : matches) {
    if (m.first > prev) parts.push_back({{prev, m.first}, invert});
    parts.push_back({m, !invert});
    prev = m.second;
  }
  if (prev < text.size()) parts.push_back({{prev, text.size()}, invert});

  std::vector<Span> result;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const auto& [span, is_delim] : parts) {
        if (!is_delim) result.push_back(span);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const auto& [span, is_delim] : parts) result.push_back(span);
      break;
    case SplitBehavior::kContiguous:
    case SplitBehavior::kMergedWithPrevious: {
      const bool contiguous = behavior == SplitBehavior::kContiguous;
      bool previous_delim = false;
      for (const auto& [span, is_delim] : parts) {
        const bool merge = contiguous ? is_delim == previous_delim : is_delim && !previous_delim;
        if (merge && !result.empty()) {
          result.back().second = span.second;
        } else {
          result.push_back(span);
        }
        previous_delim = is_delim;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_delim = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        const auto& [span, is_delim] = *it;
        if (is_delim && !previous_delim && !result.empty()) {
          result.back().first = span.first;
        } else {
          result.push_back(span);
        }
        previous_delim = is_delim;
      }
      std::reverse(result.begin(), result.end());
      break;
    }
  }
  for (const auto& [start, end] : result) {
    if (end > start) {
      out->emplace_back(text.substr(start, end - start));
    }
  }
}

// ---- Normalizers, pre-tokenizers, decoders ----

Status NormalizerStep::Apply(std::string* s) const {
  switch (kind) {
    case Kind::kPrepend:
      if (!s->empty()) s->insert(0, text);
      return Status::Ok();
    case Kind::kReplace:
      return ReplaceAll(pattern, text, s);
  }
  return Internal("unknown normalizer step");
}

Status PreTokenizerStep::Apply(std::vector<std::string>* pieces) const {
  std::vector<std::string> out;
  std::vector<Span> matches;
  for (std::string& piece : *pieces) {
    matches.clear();
    switch (kind) {
      case Kind::kByteLevel: {
        if (add_prefix_space && (piece.empty() || piece[0] != ' ')) piece = " " + piece;
        std::vector<std::string> parts;
        if (use_regex) {
          const Regex* re = Gpt2Regex();
          if (re == nullptr) return Internal("the GPT-2 pattern does not compile");
          PONDER_RETURN_IF_ERROR(re->FindAll(piece, &matches));
          SplitByMatches(piece, matches, SplitBehavior::kIsolated, false, &parts);
        } else if (!piece.empty()) {
          parts.push_back(std::move(piece));
        }
        for (const auto& part : parts) out.push_back(ByteLevelEncode(part));
        break;
      }
      case Kind::kSplit:
        PONDER_RETURN_IF_ERROR(pattern.FindAll(piece, &matches));
        SplitByMatches(piece, matches, behavior, invert, &out);
        break;
      case Kind::kDigits: {
        const Regex* re = DigitRegex();
        if (re == nullptr) return Internal("the digit pattern does not compile");
        PONDER_RETURN_IF_ERROR(re->FindAll(piece, &matches));
        SplitByMatches(piece, matches,
                       individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                       false, &out);
        break;
      }
    }
  }
  *pieces = std::move(out);
  return Status::Ok();
}

Status DecoderStep::Apply(std::vector<std::string>* tokens) const {
  switch (kind) {
    case Kind::kByteLevel: {
      // Tokens that are not byte-level text (e.g. added tokens with raw spaces) pass through.
      std::string joined;
      for (const auto& t : *tokens) {
        auto bytes = ByteLevelDecode(t);
        joined += bytes ? *bytes : t;
      }
      *tokens = {std::move(joined)};
      return Status::Ok();
    }
    case Kind::kByteFallback: {
      std::vector<std::string> out;
      std::string bytes;
      for (auto& t : *tokens) {
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && HexValue(t[3]) >= 0 &&
            HexValue(t[4]) >= 0) {
          const int value = HexValue(t[3]) * 16 + HexValue(t[4]);
          bytes.push_back(static_cast<char>(value));
          continue;
        }
        if (!bytes.empty()) out.push_back(std::move(bytes));
        bytes.clear();
        out.push_back(std::move(t));
      }
      if (!bytes.empty()) out.push_back(std::move(bytes));
      *tokens = std::move(out);
      return Status::Ok();
    }
    case Kind::kFuse: {
      std::string joined;
      for (const auto& t : *tokens) joined += t;
      *tokens = {std::move(joined)};
      return Status::Ok();
    }
    case Kind::kStrip:
      for (auto& t : *tokens) {
        if (text.empty()) break;
        for (int i = 0; i < start && t.compare(0, text.size(), text) == 0; ++i) {
          t.erase(0, text.size());
        }
        for (int i = 0; i < stop && t.size() >= text.size() &&
                        t.compare(t.size() - text.size(), text.size(), text) == 0;
             ++i) {
          t.erase(t.size() - text.size());
        }
      }
      return Status::Ok();
    case Kind::kReplace:
      for (auto& t : *tokens) PONDER_RETURN_IF_ERROR(ReplaceAll(pattern, text, &t));
      return Status::Ok();
  }
  return Internal("unknown decoder step");
}

// ---- BPE ----

Status BpeModel::Tokenize(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.empty()) return Status::Ok();
  if (ignore_merges) {
    auto it = vocab.find(std::string(piece));
    if (it != vocab.end()) {
      out->push_back(it->second);
      return Status::Ok();
    }
  }
  const bool cacheable = piece.size() <= kCacheMaxPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return Status::Ok();
    }
  }
  std::vector<int32_t> ids;
  PONDER_RETURN_IF_ERROR(MergeWord(piece, &ids));
  out->insert(out->end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::move(ids));
  }
  return Status::Ok();
}

Status BpeModel::MergeWord(std::string_view piece, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int prev;
    int next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  const auto add = [&](int32_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, -1, true});
    if (index > 0) symbols[index - 1].next = index;
  };

  bool last_was_unk = false;
  std::string ch;
  for (size_t i = 0; i < piece.size();) {
    const size_t len = Utf8CharLen(piece, i);
    ch.assign(piece.substr(i, len));
    i += len;
    if (auto it = vocab.find(ch); it != vocab.end()) {
      add(it->second);
      last_was_unk = false;
      continue;
    }
    if (byte_fallback) {
      std::vector<int32_t> byte_ids;
      for (char b : ch) {
        auto it = vocab.find("<0x" + Hex2(static_cast<unsigned char>(b)) + ">");
        if (it == vocab.end()) break;
        byte_ids.push_back(it->second);
      }
      if (byte_ids.size() == ch.size()) {
        for (int32_t id : byte_ids) add(id);
        last_was_unk = false;
        continue;
      }
    }
    if (unk_id >= 0) {
      if (!(fuse_unk && last_was_unk)) add(unk_id);
      last_was_unk = true;
      continue;
    }
    std::string shown;
    if (len == 1 && static_cast<unsigned char>(ch[0]) >= 0x80) {
      shown = "byte 0x" + Hex2(static_cast<unsigned char>(ch[0]));
    } else {
      char buf[16];
      std::snprintf(buf, sizeof(buf), "U+%04X", DecodeCodePoint(ch, 0, len));
      shown = "character " + std::string(buf);
    }
    return InvalidArgument("cannot encode " + shown +
                           ": not in the vocabulary and the model has no byte_fallback tokens "
                           "or unk_token for it");
  }

  // Merge by rank: the lowest-ranked adjacent pair first, leftmost on ties.
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto push_pair = [&](int left) {
    if (left < 0) return;
    const int right = symbols[left].next;
    if (right < 0) return;
    auto it = merges.find(PairKey(symbols[left].id, symbols[right].id));
    if (it != merges.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push_pair(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges.find(PairKey(left.id, right.id));
    if (it == merges.end() || it->second.new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out->push_back(s.id);
  }
  return Status::Ok();
}

}  // namespace ponder::model::tokenizer_internal
