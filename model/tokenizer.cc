#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/file.h"
#include "core/json_path.h"
#include "model/tokenizer_steps.h"

namespace ponder::model {

using tokenizer_internal::BpeModel;
using tokenizer_internal::DecoderStep;
using tokenizer_internal::NormalizerStep;
using tokenizer_internal::Pattern;
using tokenizer_internal::PreTokenizerStep;
using tokenizer_internal::SplitBehavior;

struct Tokenizer::Impl {
  struct AddedToken {
    int32_t id = 0;
    std::string content;
    bool special = false;
    bool lstrip = false;       // the match also takes the whitespace on its left
    bool rstrip = false;       // ... and on its right
    bool single_word = false;  // only matches when not inside a word
  };
  // One element of the post-processor's single-sequence template.
  struct TemplateItem {
    bool is_sequence = false;  // the encoded text ($A)
    std::vector<int32_t> ids;  // otherwise: a special token's ids
  };

  BpeModel bpe;
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  bool has_decoder = false;  // without one, decoded tokens are joined with spaces
  std::vector<DecoderStep> decoders;
  bool has_template = false;
  std::vector<TemplateItem> single_template;

  std::vector<AddedToken> added;
  // Indices into `added` by the first byte of their content, longest content first.
  std::array<std::vector<size_t>, 256> added_by_first_byte;
  std::unordered_map<std::string, int32_t> added_ids;

  std::vector<std::string> id_to_token;  // index: id
  std::vector<bool> id_known;
  std::vector<bool> id_special;

  Status EncodeSegment(std::string_view segment, std::vector<int32_t>* ids) const;
  // The longest added token matching at text[pos], or nullptr.
  const AddedToken* MatchAdded(std::string_view text, size_t pos) const;
};

namespace {

using json = nlohmann::json;

constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

template <typename K>
std::string Child(const std::string& path, K key) {
  return JsonChild(path, key);
}

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool IsWordByte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '_' || u >= 0x80;
}

// Reads tokenizer.json values, producing errors that name the source and the JSON path.
class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  Status Error(const std::string& path, const std::string& message) const {
    return InvalidArgument(source_ + ": " + (path.empty() ? "/" : path) + ": " + message);
  }
  Status Unsupported(const std::string& path, const std::string& message) const {
    return Unimplemented(source_ + ": " + (path.empty() ? "/" : path) + ": " + message);
  }

  Status ExpectObject(const json& j, const std::string& path) const {
    return j.is_object() ? Status::Ok() : Error(path, "expected an object");
  }

  Result<std::string> String(const json& obj, std::string_view key, const std::string& path) const {
    const std::string child = Child(path, key);
    auto it = obj.find(key);
    if (it == obj.end()) return Error(child, "missing string field");
    if (!it->is_string()) return Error(child, "expected a string");
    return it->get<std::string>();
  }
  // A missing or null string is "".
  Result<std::string> OptionalString(const json& obj, std::string_view key,
                                     const std::string& path) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::string();
    if (!it->is_string()) return Error(Child(path, key), "expected a string or null");
    return it->get<std::string>();
  }
  Result<bool> Bool(const json& obj, std::string_view key, const std::string& path,
                    bool default_value) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return default_value;
    if (!it->is_boolean()) return Error(Child(path, key), "expected a boolean");
    return it->get<bool>();
  }
  Result<int64_t> Int(const json& j, const std::string& path) const {
    if (!j.is_number_integer()) return Error(path, "expected an integer");
    return j.get<int64_t>();
  }
  Result<int32_t> TokenId(const json& j, const std::string& path) const {
    PONDER_ASSIGN_OR_RETURN(int64_t id, Int(j, path));
    if (id < 0 || id > kMaxTokenId)
      return Error(path, "token id " + std::to_string(id) + " out of range");
    return static_cast<int32_t>(id);
  }
  Result<std::string> Type(const json& obj, const std::string& path) const {
    PONDER_RETURN_IF_ERROR(ExpectObject(obj, path));
    return String(obj, "type", path);
  }

  Result<Pattern> ParsePattern(const json& j, const std::string& path) const {
    PONDER_RETURN_IF_ERROR(ExpectObject(j, path));
    Pattern pattern;
    if (j.contains("String")) {
      PONDER_ASSIGN_OR_RETURN(pattern.literal, String(j, "String", path));
    } else if (j.contains("Regex")) {
      PONDER_ASSIGN_OR_RETURN(std::string regex, String(j, "Regex", path));
      auto compiled = tokenizer_internal::Regex::Compile(regex);
      if (!compiled.ok()) return Error(Child(path, "Regex"), compiled.status().message());
      pattern.regex = std::move(compiled).value();
    } else {
      return Error(path, "expected {\"String\": ...} or {\"Regex\": ...}");
    }
    return pattern;
  }

  Status ParseNormalizer(const json& j, const std::string& path,
                         std::vector<NormalizerStep>* out) const {
    if (j.is_null()) return Status::Ok();
    PONDER_ASSIGN_OR_RETURN(std::string type, Type(j, path));
    if (type == "Sequence") {
      const std::string list_path = Child(path, "normalizers");
      auto it = j.find("normalizers");
      if (it == j.end() || !it->is_array()) return Error(list_path, "expected an array");
      for (size_t i = 0; i < it->size(); ++i) {
        PONDER_RETURN_IF_ERROR(ParseNormalizer((*it)[i], Child(list_path, i), out));
      }
      return Status::Ok();
    }
    NormalizerStep step;
    if (type == "Prepend") {
      step.kind = NormalizerStep::Kind::kPrepend;
      PONDER_ASSIGN_OR_RETURN(step.text, String(j, "prepend", path));
    } else if (type == "Replace") {
      step.kind = NormalizerStep::Kind::kReplace;
      PONDER_ASSIGN_OR_RETURN(step.pattern,
                              ParsePattern(j.value("pattern", json()), Child(path, "pattern")));
      PONDER_ASSIGN_OR_RETURN(step.text, String(j, "content", path));
    } else {
      return Unsupported(Child(path, "type"), "unsupported normalizer \"" + type + "\"");
    }
    out->push_back(std::move(step));
    return Status::Ok();
  }

  Status ParsePreTokenizer(const json& j, const std::string& path,
                           std::vector<PreTokenizerStep>* out) const {
    if (j.is_null()) return Status::Ok();
    PONDER_ASSIGN_OR_RETURN(std::string type, Type(j, path));
    if (type == "Sequence") {
      const std::string list_path = Child(path, "pretokenizers");
      auto it = j.find("pretokenizers");
      if (it == j.end() || !it->is_array()) return Error(list_path, "expected an array");
      for (size_t i = 0; i < it->size(); ++i) {
        PONDER_RETURN_IF_ERROR(ParsePreTokenizer((*it)[i], Child(list_path, i), out));
      }
      return Status::Ok();
    }
    PreTokenizerStep step;
    if (type == "ByteLevel") {
      step.kind = PreTokenizerStep::Kind::kByteLevel;
      PONDER_ASSIGN_OR_RETURN(step.add_prefix_space, Bool(j, "add_prefix_space", path, true));
      PONDER_ASSIGN_OR_RETURN(step.use_regex, Bool(j, "use_regex", path, true));
    } else if (type == "Split") {
      step.kind = PreTokenizerStep::Kind::kSplit;
      PONDER_ASSIGN_OR_RETURN(step.pattern,
                              ParsePattern(j.value("pattern", json()), Child(path, "pattern")));
      PONDER_ASSIGN_OR_RETURN(std::string behavior, String(j, "behavior", path));
      static const std::unordered_map<std::string, SplitBehavior> kBehaviors = {
          {"Removed", SplitBehavior::kRemoved},
          {"Isolated", SplitBehavior::kIsolated},
          {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
          {"MergedWithNext", SplitBehavior::kMergedWithNext},
          {"Contiguous", SplitBehavior::kContiguous}};
      auto b = kBehaviors.find(behavior);
      if (b == kBehaviors.end()) {
        return Error(Child(path, "behavior"), "unknown split behavior \"" + behavior + "\"");
      }
      step.behavior = b->second;
      PONDER_ASSIGN_OR_RETURN(step.invert, Bool(j, "invert", path, false));
    } else if (type == "Digits") {
      step.kind = PreTokenizerStep::Kind::kDigits;
      PONDER_ASSIGN_OR_RETURN(step.individual_digits, Bool(j, "individual_digits", path, false));
    } else {
      return Unsupported(Child(path, "type"), "unsupported pre-tokenizer \"" + type + "\"");
    }
    out->push_back(std::move(step));
    return Status::Ok();
  }

  Status ParseDecoder(const json& j, const std::string& path, std::vector<DecoderStep>* out) const {
    PONDER_ASSIGN_OR_RETURN(std::string type, Type(j, path));
    if (type == "Sequence") {
      const std::string list_path = Child(path, "decoders");
      auto it = j.find("decoders");
      if (it == j.end() || !it->is_array()) return Error(list_path, "expected an array");
      for (size_t i = 0; i < it->size(); ++i) {
        PONDER_RETURN_IF_ERROR(ParseDecoder((*it)[i], Child(list_path, i), out));
      }
      return Status::Ok();
    }
    DecoderStep step;
    if (type == "ByteLevel") {
      step.kind = DecoderStep::Kind::kByteLevel;
    } else if (type == "ByteFallback") {
      step.kind = DecoderStep::Kind::kByteFallback;
    } else if (type == "Fuse") {
      step.kind = DecoderStep::Kind::kFuse;
    } else if (type == "Strip") {
      step.kind = DecoderStep::Kind::kStrip;
      PONDER_ASSIGN_OR_RETURN(step.text, String(j, "content", path));
      for (const char* key : {"start", "stop"}) {
        const std::string child = Child(path, key);
        PONDER_ASSIGN_OR_RETURN(int64_t n, Int(j.value(key, json()), child));
        if (n < 0 || n > 1'000'000) return Error(child, "out of range");
        (std::string_view(key) == "start" ? step.start : step.stop) = static_cast<int>(n);
      }
    } else if (type == "Replace") {
      step.kind = DecoderStep::Kind::kReplace;
      PONDER_ASSIGN_OR_RETURN(step.pattern,
                              ParsePattern(j.value("pattern", json()), Child(path, "pattern")));
      PONDER_ASSIGN_OR_RETURN(step.text, String(j, "content", path));
    } else {
      return Unsupported(Child(path, "type"), "unsupported decoder \"" + type + "\"");
    }
    out->push_back(std::move(step));
    return Status::Ok();
  }

  Status ParsePostProcessor(const json& j, const std::string& path, Tokenizer::Impl* impl) const {
    if (j.is_null()) return Status::Ok();
    PONDER_ASSIGN_OR_RETURN(std::string type, Type(j, path));
    if (type == "ByteLevel") return Status::Ok();  // only adjusts offsets
    if (type == "Sequence") {
      const std::string list_path = Child(path, "processors");
      auto it = j.find("processors");
      if (it == j.end() || !it->is_array()) return Error(list_path, "expected an array");
      for (size_t i = 0; i < it->size(); ++i) {
        PONDER_RETURN_IF_ERROR(ParsePostProcessor((*it)[i], Child(list_path, i), impl));
      }
      return Status::Ok();
    }
    if (type != "TemplateProcessing") {
      return Unsupported(Child(path, "type"), "unsupported post-processor \"" + type + "\"");
    }
    if (impl->has_template) return Unsupported(path, "more than one TemplateProcessing");
    const std::string specials_path = Child(path, "special_tokens");
    const json specials = j.value("special_tokens", json::object());
    PONDER_RETURN_IF_ERROR(ExpectObject(specials, specials_path));
    const std::string single_path = Child(path, "single");
    auto single = j.find("single");
    if (single == j.end() || !single->is_array()) return Error(single_path, "expected an array");
    for (size_t i = 0; i < single->size(); ++i) {
      const std::string item_path = Child(single_path, i);
      const json& item = (*single)[i];
      PONDER_RETURN_IF_ERROR(ExpectObject(item, item_path));
      Tokenizer::Impl::TemplateItem out;
      if (item.contains("Sequence")) {
        const std::string seq_path = Child(item_path, "Sequence");
        PONDER_RETURN_IF_ERROR(ExpectObject(item["Sequence"], seq_path));
        PONDER_ASSIGN_OR_RETURN(std::string id, String(item["Sequence"], "id", seq_path));
        if (id != "A") {
          return Error(Child(seq_path, "id"), "the single template can only use sequence A");
        }
        out.is_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const std::string tok_path = Child(item_path, "SpecialToken");
        PONDER_RETURN_IF_ERROR(ExpectObject(item["SpecialToken"], tok_path));
        PONDER_ASSIGN_OR_RETURN(std::string name, String(item["SpecialToken"], "id", tok_path));
        auto sp = specials.find(name);
        if (sp == specials.end()) {
          return Error(Child(tok_path, "id"), "\"" + name + "\" is not in special_tokens");
        }
        const std::string sp_path = Child(specials_path, name);
        PONDER_RETURN_IF_ERROR(ExpectObject(*sp, sp_path));
        auto ids = sp->find("ids");
        if (ids == sp->end() || !ids->is_array()) {
          return Error(Child(sp_path, "ids"), "expected an array");
        }
        for (size_t k = 0; k < ids->size(); ++k) {
          PONDER_ASSIGN_OR_RETURN(int32_t id, TokenId((*ids)[k], Child(Child(sp_path, "ids"), k)));
          out.ids.push_back(id);
        }
      } else {
        return Error(item_path, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
      impl->single_template.push_back(std::move(out));
    }
    impl->has_template = true;
    return Status::Ok();
  }

  Status ParseModel(const json& j, const std::string& path, BpeModel* bpe) const {
    PONDER_RETURN_IF_ERROR(ExpectObject(j, path));
    if (j.contains("type")) {
      PONDER_ASSIGN_OR_RETURN(std::string type, String(j, "type", path));
      if (type != "BPE") {
        return Unsupported(Child(path, "type"), "unsupported model type \"" + type + "\"");
      }
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      PONDER_ASSIGN_OR_RETURN(std::string affix, OptionalString(j, key, path));
      if (!affix.empty()) return Unsupported(Child(path, key), "subword affixes are unsupported");
    }
    PONDER_ASSIGN_OR_RETURN(bpe->byte_fallback, Bool(j, "byte_fallback", path, false));
    PONDER_ASSIGN_OR_RETURN(bpe->ignore_merges, Bool(j, "ignore_merges", path, false));
    PONDER_ASSIGN_OR_RETURN(bpe->fuse_unk, Bool(j, "fuse_unk", path, false));

    const std::string vocab_path = Child(path, "vocab");
    auto vocab = j.find("vocab");
    if (vocab == j.end()) return Error(vocab_path, "missing vocabulary");
    PONDER_RETURN_IF_ERROR(ExpectObject(*vocab, vocab_path));
    bpe->vocab.reserve(vocab->size());
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      PONDER_ASSIGN_OR_RETURN(int32_t id, TokenId(it.value(), Child(vocab_path, it.key())));
      bpe->vocab[it.key()] = id;
    }

    PONDER_ASSIGN_OR_RETURN(std::string unk, OptionalString(j, "unk_token", path));
    if (!unk.empty()) {
      // A missing unk token only matters when it is needed; encoding then reports it.
      auto it = bpe->vocab.find(unk);
      if (it != bpe->vocab.end()) bpe->unk_id = it->second;
    }

    const std::string merges_path = Child(path, "merges");
    auto merges = j.find("merges");
    if (merges == j.end() || merges->is_null()) return Status::Ok();
    if (!merges->is_array()) return Error(merges_path, "expected an array");
    bpe->merges.reserve(merges->size());
    for (size_t rank = 0; rank < merges->size(); ++rank) {
      const std::string merge_path = Child(merges_path, rank);
      const json& m = (*merges)[rank];
      std::string left, right;
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return Error(merge_path,
                       "expected \"left right\" with exactly one space, got \"" + s + "\"");
        }
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        return Error(merge_path, "expected \"left right\" or [left, right]");
      }
      auto a = bpe->vocab.find(left);
      if (a == bpe->vocab.end()) return Error(merge_path, "unknown token \"" + left + "\"");
      auto b = bpe->vocab.find(right);
      if (b == bpe->vocab.end()) return Error(merge_path, "unknown token \"" + right + "\"");
      auto merged = bpe->vocab.find(left + right);
      if (merged == bpe->vocab.end()) {
        return Error(merge_path, "merged token \"" + left + right + "\" is not in the vocabulary");
      }
      // Like the reference implementation, a repeated pair keeps its last rank.
      bpe->merges[BpeModel::PairKey(a->second, b->second)] = {static_cast<int32_t>(rank),
                                                              merged->second};
    }
    return Status::Ok();
  }

  Status ParseAddedTokens(const json& j, const std::string& path, Tokenizer::Impl* impl) const {
    if (j.is_null()) return Status::Ok();
    if (!j.is_array()) return Error(path, "expected an array");
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string item_path = Child(path, i);
      const json& item = j[i];
      PONDER_RETURN_IF_ERROR(ExpectObject(item, item_path));
      Tokenizer::Impl::AddedToken token;
      auto id = item.find("id");
      if (id == item.end()) return Error(Child(item_path, "id"), "missing token id");
      PONDER_ASSIGN_OR_RETURN(token.id, TokenId(*id, Child(item_path, "id")));
      PONDER_ASSIGN_OR_RETURN(token.content, String(item, "content", item_path));
      if (token.content.empty()) return Error(Child(item_path, "content"), "empty token");
      PONDER_ASSIGN_OR_RETURN(token.special, Bool(item, "special", item_path, false));
      PONDER_ASSIGN_OR_RETURN(token.lstrip, Bool(item, "lstrip", item_path, false));
      PONDER_ASSIGN_OR_RETURN(token.rstrip, Bool(item, "rstrip", item_path, false));
      PONDER_ASSIGN_OR_RETURN(token.single_word, Bool(item, "single_word", item_path, false));
      impl->added.push_back(std::move(token));
    }
    return Status::Ok();
  }

  Status Parse(const json& root, Tokenizer::Impl* impl) const {
    PONDER_RETURN_IF_ERROR(ExpectObject(root, ""));
    auto model = root.find("model");
    if (model == root.end()) return Error("/model", "missing model");
    PONDER_RETURN_IF_ERROR(ParseModel(*model, "/model", &impl->bpe));
    const json null;
    const auto field = [&](const char* key) -> const json& {
      auto it = root.find(key);
      return it == root.end() ? null : *it;
    };
    PONDER_RETURN_IF_ERROR(ParseNormalizer(field("normalizer"), "/normalizer", &impl->normalizers));
    PONDER_RETURN_IF_ERROR(
        ParsePreTokenizer(field("pre_tokenizer"), "/pre_tokenizer", &impl->pre_tokenizers));
    if (!field("decoder").is_null()) {
      impl->has_decoder = true;
      PONDER_RETURN_IF_ERROR(ParseDecoder(field("decoder"), "/decoder", &impl->decoders));
    }
    PONDER_RETURN_IF_ERROR(ParsePostProcessor(field("post_processor"), "/post_processor", impl));
    return ParseAddedTokens(field("added_tokens"), "/added_tokens", impl);
  }

 private:
  std::string source_;
};

// Builds the id tables and the added-token index once parsing succeeded.
void Index(Tokenizer::Impl* impl) {
  int64_t size = 0;
  for (const auto& [token, id] : impl->bpe.vocab) size = std::max<int64_t>(size, id + 1);
  for (const auto& t : impl->added) size = std::max<int64_t>(size, t.id + 1);
  impl->id_to_token.assign(size, std::string());
  impl->id_known.assign(size, false);
  impl->id_special.assign(size, false);
  for (const auto& [token, id] : impl->bpe.vocab) {
    impl->id_to_token[id] = token;
    impl->id_known[id] = true;
  }
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const auto& t = impl->added[i];
    impl->id_to_token[t.id] = t.content;
    impl->id_known[t.id] = true;
    impl->id_special[t.id] = t.special;
    impl->added_ids[t.content] = t.id;
    impl->added_by_first_byte[static_cast<unsigned char>(t.content[0])].push_back(i);
  }
  for (auto& list : impl->added_by_first_byte) {
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      return impl->added[a].content.size() > impl->added[b].content.size();
    });
  }
}

}  // namespace

// ---- Encoding ----

const Tokenizer::Impl::AddedToken* Tokenizer::Impl::MatchAdded(std::string_view text,
                                                               size_t pos) const {
  for (size_t index : added_by_first_byte[static_cast<unsigned char>(text[pos])]) {
    const AddedToken& t = added[index];
    if (text.compare(pos, t.content.size(), t.content) != 0) continue;
    if (t.single_word) {
      const size_t end = pos + t.content.size();
      if ((pos > 0 && IsWordByte(text[pos - 1])) || (end < text.size() && IsWordByte(text[end]))) {
        continue;
      }
    }
    return &t;
  }
  return nullptr;
}

Status Tokenizer::Impl::EncodeSegment(std::string_view segment, std::vector<int32_t>* ids) const {
  if (segment.empty()) return Status::Ok();
  std::string text(segment);
  for (const auto& step : normalizers) PONDER_RETURN_IF_ERROR(step.Apply(&text));
  std::vector<std::string> pieces;
  pieces.push_back(std::move(text));
  for (const auto& step : pre_tokenizers) PONDER_RETURN_IF_ERROR(step.Apply(&pieces));
  for (const auto& piece : pieces) PONDER_RETURN_IF_ERROR(bpe.Tokenize(piece, ids));
  return Status::Ok();
}

Result<std::vector<int32_t>> Tokenizer::Encode(const std::string& text,
                                               bool add_special_tokens) const {
  const Impl& impl = *impl_;
  std::vector<int32_t> ids;
  size_t pending = 0;  // start of the text not yet encoded
  for (size_t pos = 0; pos < text.size();) {
    const Impl::AddedToken* t = impl.MatchAdded(text, pos);
    if (t == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t end = pos + t->content.size();
    if (t->lstrip) {
      while (start > pending && IsAsciiSpace(text[start - 1])) --start;
    }
    if (t->rstrip) {
      while (end < text.size() && IsAsciiSpace(text[end])) ++end;
    }
    PONDER_RETURN_IF_ERROR(
        impl.EncodeSegment(std::string_view(text).substr(pending, start - pending), &ids));
    ids.push_back(t->id);
    pending = pos = end;
  }
  PONDER_RETURN_IF_ERROR(impl.EncodeSegment(std::string_view(text).substr(pending), &ids));

  if (!add_special_tokens || !impl.has_template) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const auto& item : impl.single_template) {
    const auto& part = item.is_sequence ? ids : item.ids;
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

// ---- Decoding ----

Result<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids,
                                      bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= static_cast<int64_t>(impl.id_to_token.size()) || !impl.id_known[id]) {
      return OutOfRange("decode: unknown token id " + std::to_string(id) + " at position " +
                        std::to_string(i));
    }
    if (skip_special_tokens && impl.id_special[id]) continue;
    tokens.push_back(impl.id_to_token[id]);
  }
  std::string out;
  if (!impl.has_decoder) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  for (const auto& step : impl.decoders) PONDER_RETURN_IF_ERROR(step.Apply(&tokens));
  for (const auto& t : tokens) out += t;
  return out;
}

// ---- Loading and lookups ----

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  PONDER_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path, "the tokenizer file"));
  return FromJson(text, path);
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& json_text,
                                                       const std::string& source) {
  auto impl = std::make_unique<Impl>();
  try {
    json root;
    try {
      root = json::parse(json_text);
    } catch (const json::parse_error& e) {
      return InvalidArgument(source + ": malformed JSON at byte " + std::to_string(e.byte) + ": " +
                             e.what());
    }
    PONDER_RETURN_IF_ERROR(Parser(source).Parse(root, impl.get()));
  } catch (const std::bad_alloc&) {
    return ResourceExhausted(source + ": out of memory while loading the tokenizer");
  } catch (const std::exception& e) {
    return InvalidArgument(source + ": invalid tokenizer: " + e.what());
  }
  Index(impl.get());
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }

int32_t Tokenizer::TokenToId(const std::string& token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->bpe.vocab.find(token); it != impl_->bpe.vocab.end()) return it->second;
  return -1;
}

std::string Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return impl_->id_to_token[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->id_special[id];
}

}  // namespace ponder::model
