#pragma once

// Building blocks of Tokenizer (tokenizer.cc): the PCRE2 wrapper, splitting, pre-tokenizer,
// normalizer and decoder steps, and the BPE model. Internal to the model folder.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"

namespace ponder::model::tokenizer_internal {

// A [start, end) byte range.
using Span = std::pair<size_t, size_t>;

// Length in bytes of the UTF-8 character starting at s[i]; 1 for a byte that does not start a
// valid sequence, so every byte string splits into "characters" without loss.
size_t Utf8CharLen(std::string_view s, size_t i);

// GPT-2 bytes_to_unicode: every byte written as one printable code point (UTF-8 encoded).
std::string ByteLevelEncode(std::string_view bytes);
// The inverse for one token; nullopt when some character is not a byte-level character.
std::optional<std::string> ByteLevelDecode(std::string_view token);

// A compiled PCRE2 pattern (UTF + Unicode properties; invalid UTF-8 in the subject never
// matches and never fails). Immutable; safe to use from several threads.
class Regex {
 public:
  // Errors carry only the reason; callers add the file and JSON path.
  [[nodiscard]] static Result<std::shared_ptr<const Regex>> Compile(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every non-empty match, left to right, as byte spans of `text`.
  [[nodiscard]] Status FindAll(std::string_view text, std::vector<Span>* out) const;

 private:
  explicit Regex(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*, owned
};

// A Split / Replace pattern: a regex or a literal string.
struct Pattern {
  std::shared_ptr<const Regex> regex;  // null: `literal` is used
  std::string literal;

  [[nodiscard]] Status FindAll(std::string_view text, std::vector<Span>* out) const;
};

// How a split treats the delimiters it found (the HF SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `text` around `matches` (sorted, non-overlapping); `invert` swaps what counts as the
// delimiter. Appends the non-empty pieces to `out`.
void SplitByMatches(std::string_view text, const std::vector<Span>& matches, SplitBehavior behavior,
                    bool invert, std::vector<std::string>* out);

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace };
  Kind kind = Kind::kPrepend;
  std::string text;  // kPrepend: the prefix; kReplace: the replacement
  Pattern pattern;   // kReplace

  [[nodiscard]] Status Apply(std::string* s) const;
};

struct PreTokenizerStep {
  enum class Kind { kByteLevel, kSplit, kDigits };
  Kind kind = Kind::kByteLevel;
  bool add_prefix_space = false;  // kByteLevel
  bool use_regex = true;          // kByteLevel: split with the GPT-2 pattern first
  Pattern pattern;                // kSplit
  SplitBehavior behavior = SplitBehavior::kIsolated;  // kSplit
  bool invert = false;                                // kSplit
  bool individual_digits = false;                     // kDigits

  // Replaces every piece by its sub-pieces (and, for ByteLevel, maps bytes to characters).
  [[nodiscard]] Status Apply(std::vector<std::string>* pieces) const;
};

struct DecoderStep {
  enum class Kind { kByteLevel, kByteFallback, kFuse, kStrip, kReplace };
  Kind kind = Kind::kByteLevel;
  std::string text;  // kStrip: the character to strip; kReplace: the replacement
  int start = 0;     // kStrip: how many to strip at the front of each token
  int stop = 0;      // kStrip: how many at the back
  Pattern pattern;   // kReplace

  // Tokens are byte strings; the result may be invalid UTF-8.
  [[nodiscard]] Status Apply(std::vector<std::string>* tokens) const;
};

// The BPE model: vocabulary, ranked merges and the unknown-character policy.
class BpeModel {
 public:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };

  std::unordered_map<std::string, int32_t> vocab;
  std::unordered_map<uint64_t, Merge> merges;  // key: PairKey(left id, right id)
  bool byte_fallback = false;                  // unknown characters become <0xNN> tokens
  bool ignore_merges = false;  // a piece that is itself in the vocab is emitted whole
  bool fuse_unk = false;       // consecutive unknowns become one unk token
  int32_t unk_id = -1;         // -1: no unk token

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // Appends the ids of one pre-tokenized piece. Fails when a character is not in the vocab
  // and neither byte_fallback nor an unk token can represent it.
  [[nodiscard]] Status Tokenize(std::string_view piece, std::vector<int32_t>* out) const;

 private:
  [[nodiscard]] Status MergeWord(std::string_view piece, std::vector<int32_t>* out) const;

  static constexpr size_t kCacheMaxEntries = 65536;
  static constexpr size_t kCacheMaxPieceBytes = 256;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace ponder::model::tokenizer_internal
