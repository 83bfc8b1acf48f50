#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer_steps.h"

namespace ponder::model {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;
namespace ti = tokenizer_internal;

// ---- Helpers ----

std::unique_ptr<Tokenizer> Load(const json& j) {
  auto t = Tokenizer::FromJson(j.dump(), "test.json");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

Status LoadError(const std::string& text) {
  auto t = Tokenizer::FromJson(text, "test.json");
  EXPECT_FALSE(t.ok());
  return t.ok() ? Status::Ok() : t.status();
}

Ids Encode(const Tokenizer& t, const std::string& text, bool add_special = false) {
  auto ids = t.Encode(text, add_special);
  EXPECT_TRUE(ids.ok()) << ids.status().ToString();
  return ids.ok() ? ids.value() : Ids{};
}

std::string Decode(const Tokenizer& t, const Ids& ids, bool skip_special = false) {
  auto text = t.Decode(ids, skip_special);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? text.value() : "";
}

// A character-level BPE model over `chars` (ids in order) plus merges, no pipeline.
json CharModel(const std::vector<std::string>& vocab, const json& merges) {
  json v = json::object();
  for (size_t i = 0; i < vocab.size(); ++i) v[vocab[i]] = i;
  return {{"model", {{"type", "BPE"}, {"vocab", v}, {"merges", merges}}}};
}

// GPT-2 bytes_to_unicode, written independently of the implementation.
std::string ByteChar(int b) {
  int cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A byte-level tokenizer: ids 0..255 are the byte characters (id == byte), then one token
// per merge in order.
json ByteLevelTokenizer(const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  json m = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = vocab.size();
    m.push_back(a + " " + b);
  }
  return {
      {"version", "1.0"},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"added_tokens", json::array()},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}, {"byte_fallback", false}}},
  };
}

const std::vector<std::pair<std::string, std::string>> kHelloMerges = {
    {"h", "e"}, {"l", "l"},   {"he", "ll"}, {"hell", "o"},  {"Ġ", "w"},
    {"o", "r"}, {"Ġw", "or"}, {"l", "d"},   {"Ġwor", "ld"},
};

// ---- BPE merges ----

TEST(TokenizerBpe, MergeRankDecidesOverPosition) {
  // "a b" ranks first, so "abc" -> "ab" "c" -> "abc"; "b c" is never used.
  auto t = Load(CharModel({"a", "b", "c", "ab", "bc", "abc"}, {"a b", "ab c", "b c"}));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "abc"), (Ids{5}));
  // With "b c" first the result is "a" "bc", which has no merge.
  t = Load(CharModel({"a", "b", "c", "ab", "bc", "abc"}, {"b c", "a b", "ab c"}));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "abc"), (Ids{0, 4}));
  EXPECT_EQ(Encode(*t, "cab"), (Ids{2, 3}));
}

TEST(TokenizerBpe, OverlappingPairsMergeLeftmostFirst) {
  auto t = Load(CharModel({"a", "aa"}, {"a a"}));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "aaa"), (Ids{1, 0}));
  EXPECT_EQ(Encode(*t, "aaaa"), (Ids{1, 1}));
}

TEST(TokenizerBpe, BothMergeFormatsGiveTheSameResult) {
  const std::vector<std::string> vocab = {"x", "y", "z", "xy", "xyz", "yz"};
  auto strings = Load(CharModel(vocab, {"x y", "xy z", "y z"}));
  auto pairs = Load(CharModel(vocab, json::parse(R"([["x","y"],["xy","z"],["y","z"]])")));
  ASSERT_NE(strings, nullptr);
  ASSERT_NE(pairs, nullptr);
  for (const std::string text : {"xyz", "zyx", "yzxy", "xxyzz"}) {
    EXPECT_EQ(Encode(*strings, text), Encode(*pairs, text)) << text;
  }
  EXPECT_EQ(Encode(*pairs, "xyz"), (Ids{4}));
  EXPECT_EQ(Encode(*pairs, "yzxy"), (Ids{5, 3}));
}

TEST(TokenizerBpe, PairFormatAllowsSpacesInsideTokens) {
  auto t = Load(CharModel({"a", " ", "a ", "a a"}, json::parse(R"([["a"," "],["a ","a"]])")));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "a a"), (Ids{3}));
}

TEST(TokenizerBpe, IgnoreMergesEmitsWholeVocabPieces) {
  // "abc" is in the vocab but no merge sequence reaches it.
  json j = CharModel({"a", "b", "c", "ab", "abc"}, {"a b"});
  auto plain = Load(j);
  ASSERT_NE(plain, nullptr);
  EXPECT_EQ(Encode(*plain, "abc"), (Ids{3, 2}));
  j["model"]["ignore_merges"] = true;
  auto ignoring = Load(j);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_EQ(Encode(*ignoring, "abc"), (Ids{4}));
  EXPECT_EQ(Encode(*ignoring, "abca"), (Ids{3, 2, 0}));  // not a vocab piece: merged
}

TEST(TokenizerBpe, ByteFallbackOnCharacterVocab) {
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    vocab.push_back(buf);
  }
  vocab.insert(vocab.end(), {"a", "b", "ab"});
  json j = CharModel(vocab, {"a b"});
  j["model"]["byte_fallback"] = true;
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  auto t = Load(j);
  ASSERT_NE(t, nullptr);
  // "é" is U+00E9 = C3 A9.
  EXPECT_EQ(Encode(*t,
                   "ab\xC3\xA9"
                   "a"),
            (Ids{258, 0xC3, 0xA9, 256}));
  EXPECT_EQ(Decode(*t, {258, 0xC3, 0xA9, 256}),
            "ab\xC3\xA9"
            "a");
  // An invalid byte is one fallback token, and decodes back to itself.
  EXPECT_EQ(Encode(*t, "a\xFF"), (Ids{256, 0xFF}));
  EXPECT_EQ(Decode(*t, {256, 0xFF, 0xFE}), "a\xFF\xFE");
}

TEST(TokenizerBpe, UnknownCharactersUseUnkOrFail) {
  json j = CharModel({"<unk>", "a"}, json::array());
  auto strict = Load(j);
  ASSERT_NE(strict, nullptr);
  auto err = strict->Encode("a\xE2\x82\xAC");  // "a€"
  ASSERT_FALSE(err.ok());
  EXPECT_NE(err.status().message().find("U+20AC"), std::string::npos) << err.status().message();

  j["model"]["unk_token"] = "<unk>";
  auto unk = Load(j);
  ASSERT_NE(unk, nullptr);
  EXPECT_EQ(Encode(*unk, "a??a"), (Ids{1, 0, 0, 1}));
  j["model"]["fuse_unk"] = true;
  auto fused = Load(j);
  ASSERT_NE(fused, nullptr);
  EXPECT_EQ(Encode(*fused, "a??a?"), (Ids{1, 0, 1, 0}));
}

// ---- Added tokens and post-processing ----

json WithAdded(json j) {
  j["added_tokens"] = json::parse(R"([
    {"id": 300, "content": "<|x|>", "special": true, "lstrip": false, "rstrip": false},
    {"id": 301, "content": "<|x|>y", "special": false},
    {"id": 302, "content": "<|s|>", "special": true, "rstrip": true},
    {"id": 303, "content": "   ", "special": false}
  ])");
  return j;
}

TEST(TokenizerAdded, MatchedBeforePreTokenizationLongestFirst) {
  auto t = Load(WithAdded(ByteLevelTokenizer(kHelloMerges)));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "hello<|x|>world"), (Ids{259, 300, 'w', 261, 263}));
  EXPECT_EQ(Encode(*t, "<|x|>y<|x|>"), (Ids{301, 300}));
  EXPECT_EQ(Encode(*t, "<|x|"), (Ids{'<', '|', 'x', '|'}));
  // rstrip swallows the whitespace after the token.
  EXPECT_EQ(Encode(*t, "<|s|>  hello"), (Ids{302, 259}));
  // A non-special run of spaces is an added token too.
  EXPECT_EQ(Encode(*t, "hello    world"), (Ids{259, 303, 264}));

  EXPECT_EQ(Decode(*t, {259, 300, 264}), "hello<|x|> world");
  EXPECT_EQ(Decode(*t, {259, 300, 264}, /*skip_special=*/true), "hello world");
  EXPECT_EQ(Decode(*t, {259, 303, 264}), "hello    world");
  EXPECT_TRUE(t->IsSpecial(300));
  EXPECT_FALSE(t->IsSpecial(301));
  EXPECT_FALSE(t->IsSpecial(259));
  EXPECT_EQ(t->TokenToId("<|s|>"), 302);
  EXPECT_EQ(t->TokenToId("hello"), 259);
  EXPECT_EQ(t->TokenToId("nope"), -1);
  EXPECT_EQ(t->IdToToken(264), "Ġworld");
  EXPECT_EQ(t->IdToToken(299), "");
  EXPECT_EQ(t->vocab_size(), 304);
  auto bad = t->Decode({259, 299});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("299"), std::string::npos);
}

TEST(TokenizerAdded, TemplatePostProcessorAddsBosAndEos) {
  json j = WithAdded(ByteLevelTokenizer(kHelloMerges));
  j["post_processor"] = json::parse(R"({
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|x|>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "<|s|>", "type_id": 0}}],
    "pair": [],
    "special_tokens": {"<|x|>": {"id": "<|x|>", "ids": [300], "tokens": ["<|x|>"]},
                       "<|s|>": {"id": "<|s|>", "ids": [302], "tokens": ["<|s|>"]}}})");
  auto t = Load(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "hello", /*add_special=*/true), (Ids{300, 259, 302}));
  EXPECT_EQ(Encode(*t, "hello", /*add_special=*/false), (Ids{259}));
}

// ---- Pre-tokenizers, normalizers, decoders ----

std::vector<std::string> Split(const std::string& text, const std::string& literal,
                               ti::SplitBehavior behavior, bool invert = false) {
  ti::Pattern p;
  p.literal = literal;
  std::vector<ti::Span> matches;
  EXPECT_TRUE(p.FindAll(text, &matches).ok());
  std::vector<std::string> out;
  ti::SplitByMatches(text, matches, behavior, invert, &out);
  return out;
}

TEST(TokenizerPreTokenizer, SplitBehaviors) {
  using B = ti::SplitBehavior;
  using V = std::vector<std::string>;
  EXPECT_EQ(Split("a-b--c", "-", B::kRemoved), (V{"a", "b", "c"}));
  EXPECT_EQ(Split("a-b--c", "-", B::kIsolated), (V{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(Split("a-b--c", "-", B::kMergedWithPrevious), (V{"a-", "b-", "-", "c"}));
  EXPECT_EQ(Split("a-b--c", "-", B::kMergedWithNext), (V{"a", "-b", "-", "-c"}));
  EXPECT_EQ(Split("a-b--c", "-", B::kContiguous), (V{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(Split("a-b--c", "-", B::kRemoved, /*invert=*/true), (V{"-", "-", "-"}));
  EXPECT_EQ(Split("-a-", "-", B::kMergedWithNext), (V{"-a", "-"}));
  EXPECT_EQ(Split("", "-", B::kIsolated), V{});
}

TEST(TokenizerPreTokenizer, RubyHexEscapeMeansHexDigit) {
  auto re = ti::Regex::Compile(R"(\h+|[\h_]x)");
  ASSERT_TRUE(re.ok()) << re.status().ToString();
  std::vector<ti::Span> m;
  ASSERT_TRUE((*re)->FindAll("zz 0aF9 _x", &m).ok());
  EXPECT_EQ(m, (std::vector<ti::Span>{{3, 7}, {8, 10}}));
}

TEST(TokenizerPreTokenizer, Gpt2PatternThroughByteLevel) {
  ti::PreTokenizerStep step;  // ByteLevel, use_regex, no prefix space
  std::vector<std::string> pieces = {"Hello world's  123!!"};
  ASSERT_TRUE(step.Apply(&pieces).ok());
  EXPECT_EQ(pieces, (std::vector<std::string>{"Hello", "Ġworld", "'s", "Ġ", "Ġ123", "!!"}));

  step.add_prefix_space = true;
  pieces = {"hi\n"};
  ASSERT_TRUE(step.Apply(&pieces).ok());
  EXPECT_EQ(pieces, (std::vector<std::string>{"Ġhi", "Ċ"}));
}

TEST(TokenizerPreTokenizer, SplitRegexAndDigitsInSequence) {
  // Huginn-style: every digit on its own, then byte-level mapping without the GPT-2 regex.
  json j = ByteLevelTokenizer(kHelloMerges);
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{N}{1,1}| ?\\p{L}+"}, "behavior": "Isolated",
       "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})");
  auto t = Load(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "hello 42"), (Ids{259, ' ', '4', '2'}));
  EXPECT_EQ(Decode(*t, Encode(*t, "hello 42")), "hello 42");

  ti::PreTokenizerStep digits;
  digits.kind = ti::PreTokenizerStep::Kind::kDigits;
  std::vector<std::string> pieces = {"ab123c4"};
  ASSERT_TRUE(digits.Apply(&pieces).ok());
  EXPECT_EQ(pieces, (std::vector<std::string>{"ab", "123", "c", "4"}));
  digits.individual_digits = true;
  pieces = {"ab123c4"};
  ASSERT_TRUE(digits.Apply(&pieces).ok());
  EXPECT_EQ(pieces, (std::vector<std::string>{"ab", "1", "2", "3", "c", "4"}));
}

TEST(TokenizerPreTokenizer, NormalizerAndMetaspaceStyleDecoder) {
  // Spaces become "▁" before BPE and are turned back on decoding.
  json j = CharModel({"▁", "a", "b", "▁a"}, {"▁ a"});
  j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})");
  j["decoder"] = json::parse(R"({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
      {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})");
  auto t = Load(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "a ba"), (Ids{3, 0, 2, 1}));
  EXPECT_EQ(Encode(*t, "a ab"), (Ids{3, 3, 2}));
  EXPECT_EQ(Decode(*t, {3, 3, 2}), "a ab");
}

// ---- Errors ----

TEST(TokenizerErrors, MalformedJson) {
  Status s = LoadError(R"({"model": {"vocab": {"a": 0,}})");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("test.json: malformed JSON at byte"), std::string::npos)
      << s.message();
  s = LoadError("");
  EXPECT_NE(s.message().find("test.json: malformed JSON"), std::string::npos) << s.message();
}

TEST(TokenizerErrors, MergeReferencesUnknownToken) {
  Status s = LoadError(CharModel({"a", "b", "ab"}, {"a b", "xy b"}).dump());
  EXPECT_EQ(s.message(), "test.json: /model/merges/1: unknown token \"xy\"");
  s = LoadError(CharModel({"a", "b"}, {"a b"}).dump());
  EXPECT_EQ(s.message(),
            "test.json: /model/merges/0: merged token \"ab\" is not in the vocabulary");
  s = LoadError(CharModel({"a", "b", "ab"}, {"ab"}).dump());
  EXPECT_NE(s.message().find("test.json: /model/merges/0: expected"), std::string::npos);
  s = LoadError(CharModel({"a", "b", "ab"}, json::parse(R"([["a", 1]])")).dump());
  EXPECT_NE(s.message().find("test.json: /model/merges/0: expected"), std::string::npos);
}

TEST(TokenizerErrors, MissingOrBadModel) {
  Status s = LoadError(R"({"model": {"type": "BPE", "merges": []}})");
  EXPECT_EQ(s.message(), "test.json: /model/vocab: missing vocabulary");
  s = LoadError(R"({"normalizer": null})");
  EXPECT_EQ(s.message(), "test.json: /model: missing model");
  s = LoadError(R"({"model": {"vocab": {"a": 0, "b/c": "one"}}})");
  EXPECT_EQ(s.message(), "test.json: /model/vocab/b~1c: expected an integer");
  s = LoadError(R"({"model": {"vocab": {"a": -4}}})");
  EXPECT_NE(s.message().find("test.json: /model/vocab/a: token id -4 out of range"),
            std::string::npos);
  s = LoadError("[1, 2]");
  EXPECT_EQ(s.message(), "test.json: /: expected an object");
}

TEST(TokenizerErrors, UnsupportedComponentsAreUnimplemented) {
  json j = CharModel({"a"}, json::array());
  j["model"]["type"] = "WordPiece";
  Status s = LoadError(j.dump());
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_EQ(s.message(), "test.json: /model/type: unsupported model type \"WordPiece\"");

  j = CharModel({"a"}, json::array());
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": true}, {"type": "Metaspace"}]})");
  s = LoadError(j.dump());
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_EQ(s.message(),
            "test.json: /pre_tokenizer/pretokenizers/1/type: unsupported pre-tokenizer "
            "\"Metaspace\"");

  j = CharModel({"a"}, json::array());
  j["normalizer"] = {{"type", "NFC"}};
  s = LoadError(j.dump());
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_EQ(s.message(), "test.json: /normalizer/type: unsupported normalizer \"NFC\"");

  j = CharModel({"a"}, json::array());
  j["decoder"] = {{"type", "WordPiece"}};
  s = LoadError(j.dump());
  EXPECT_EQ(s.message(), "test.json: /decoder/type: unsupported decoder \"WordPiece\"");

  j = CharModel({"a"}, json::array());
  j["post_processor"] = {{"type", "BertProcessing"}};
  s = LoadError(j.dump());
  EXPECT_EQ(s.message(),
            "test.json: /post_processor/type: unsupported post-processor \"BertProcessing\"");
}

TEST(TokenizerErrors, BadRegexAndSplitFields) {
  json j = CharModel({"a"}, json::array());
  j["pre_tokenizer"] = json::parse(
      R"({"type": "Split", "pattern": {"Regex": "(ab"}, "behavior": "Isolated", "invert": false})");
  Status s = LoadError(j.dump());
  EXPECT_NE(s.message().find("test.json: /pre_tokenizer/pattern/Regex: invalid regex \"(ab\""),
            std::string::npos)
      << s.message();

  j["pre_tokenizer"] =
      json::parse(R"({"type": "Split", "pattern": {"String": "-"}, "behavior": "Sideways"})");
  s = LoadError(j.dump());
  EXPECT_EQ(s.message(), "test.json: /pre_tokenizer/behavior: unknown split behavior \"Sideways\"");

  j["pre_tokenizer"] = json::parse(R"({"type": "Split", "pattern": {}, "behavior": "Isolated"})");
  s = LoadError(j.dump());
  EXPECT_NE(s.message().find("test.json: /pre_tokenizer/pattern: expected"), std::string::npos);
}

TEST(TokenizerErrors, BadAddedTokensAndTemplate) {
  json j = CharModel({"a"}, json::array());
  j["added_tokens"] = json::parse(R"([{"id": 5, "content": "<s>"}, {"content": "</s>"}])");
  Status s = LoadError(j.dump());
  EXPECT_EQ(s.message(), "test.json: /added_tokens/1/id: missing token id");

  j = CharModel({"a"}, json::array());
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}})");
  s = LoadError(j.dump());
  EXPECT_EQ(s.message(),
            "test.json: /post_processor/single/0/SpecialToken/id: \"<s>\" is not in "
            "special_tokens");
}

TEST(TokenizerErrors, MissingFile) {
  auto t = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("/nonexistent/tokenizer.json"), std::string::npos);
}

// ---- Round trip ----

TEST(TokenizerRoundTrip, ArbitraryUtf8AndRandomBytes) {
  auto t = Load(WithAdded(ByteLevelTokenizer(kHelloMerges)));
  ASSERT_NE(t, nullptr);
  const std::vector<std::string> samples = {
      "",
      "hello world",
      "  leading and trailing  \n\n\t",
      "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧",
      "CJK 漢字かなカナ 한국어",
      "combining e\xCC\x81 a\xCC\x8A\xCC\x81 and Zalgo h\xCD\x9B\xCD\x8C",
      "invalid \xFF\xFE \xC3 truncated \xE2\x82 and overlong \xC0\xAF surrogate \xED\xA0\x80",
      "<|x|>y<|s|>\xF0\x9F   <|x|",  // rstrip would drop spaces right after <|s|>
      std::string("nul\0inside", 10),
  };
  for (const auto& s : samples) {
    EXPECT_EQ(Decode(*t, Encode(*t, s)), s) << s;
  }
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> length(0, 200);
  for (int iter = 0; iter < 300; ++iter) {
    std::string s(length(rng), '\0');
    for (char& c : s) c = static_cast<char>(byte(rng));
    ASSERT_EQ(Decode(*t, Encode(*t, s)), s) << "iteration " << iter;
  }
  // Random code points from several scripts, valid UTF-8.
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E},     {0xA0, 0x24F},      {0x300, 0x36F},  {0x400, 0x4FF},
      {0x4E00, 0x9FFF}, {0x1F300, 0x1F6FF}, {0x2000, 0x206F}};
  for (int iter = 0; iter < 200; ++iter) {
    std::string s;
    const int n = length(rng) / 4;
    for (int k = 0; k < n; ++k) {
      const auto& [lo, hi] = ranges[rng() % ranges.size()];
      const uint32_t cp = lo + rng() % (hi - lo + 1);
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    ASSERT_EQ(Decode(*t, Encode(*t, s)), s) << "iteration " << iter;
  }
}

TEST(TokenizerRoundTrip, ByteLevelIdsFollowTheMerges) {
  auto t = Load(ByteLevelTokenizer(kHelloMerges));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(*t, "hello world"), (Ids{259, 264}));
  EXPECT_EQ(Encode(*t, "hello  world!"), (Ids{259, ' ', 264, '!'}));
  EXPECT_EQ(Encode(*t, "\xC3\xA9"), (Ids{0xC3, 0xA9}));
  EXPECT_EQ(Decode(*t, {259, ' ', 264, '!'}), "hello  world!");
  // A partial UTF-8 sequence decodes to its raw bytes.
  EXPECT_EQ(Decode(*t, {0xC3}), "\xC3");
}

// ---- Goldens from the independent Python encoder (model/reference/make_goldens.py) ----

TEST(TokenizerGolden, TinyTokenizerMatchesReferenceEncodings) {
  const std::string data = PONDER_TEST_DATA;
  auto t = Tokenizer::FromFile(data + "/tiny/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  std::ifstream in(data + "/goldens/tokenizer.json");
  ASSERT_TRUE(in) << "missing " << data << "/goldens/tokenizer.json";
  const json goldens = json::parse(in);
  ASSERT_TRUE(goldens.is_array());
  ASSERT_FALSE(goldens.empty());
  for (const auto& g : goldens) {
    const std::string text = g.at("text").get<std::string>();
    const Ids expected = g.at("ids").get<Ids>();
    EXPECT_EQ(Encode(**t, text), expected) << text;
    EXPECT_EQ(Decode(**t, expected), text) << text;
  }
  // Arbitrary bytes survive the Split regex path as well.
  std::mt19937 rng(7);
  for (int iter = 0; iter < 100; ++iter) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    ASSERT_EQ(Decode(**t, Encode(**t, s)), s) << "iteration " << iter;
  }
  // The special tokens the runtime relies on, and the BOS ... EOS template.
  const int32_t bos = (*t)->TokenToId("<|begin_text|>");
  const int32_t eos = (*t)->TokenToId("<|end_text|>");
  ASSERT_GE(bos, 0);
  ASSERT_GE(eos, 0);
  EXPECT_TRUE((*t)->IsSpecial(bos));
  const Ids plain = Encode(**t, "Hello world");
  Ids framed = {bos};
  framed.insert(framed.end(), plain.begin(), plain.end());
  framed.push_back(eos);
  EXPECT_EQ(Encode(**t, "Hello world", /*add_special=*/true), framed);
  EXPECT_EQ(Decode(**t, framed, /*skip_special=*/true), "Hello world");
}

TEST(TokenizerGolden, ChatTemplateEncodesWithSpecialTokens) {
  auto t = Tokenizer::FromFile(std::string(PONDER_TEST_DATA) + "/tiny/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  const std::string prompt = ApplyChatTemplate({{"user", "hi"}}, true);
  const Ids ids = Encode(**t, prompt);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), (*t)->TokenToId("<|begin_text|>"));
  EXPECT_EQ(ids[1], (*t)->TokenToId("<|begin_header|>"));
  EXPECT_EQ(Decode(**t, ids), prompt);
}

// ---- Chat template ----

TEST(ChatTemplate, SystemAndUser) {
  const std::vector<ChatMessage> messages = {{"system", "  You are helpful.\n"},
                                             {"user", "\tWhat is 2+2? "}};
  EXPECT_EQ(ApplyChatTemplate(messages, /*add_generation_prompt=*/true),
            "<|begin_text|><|begin_header|>system<|end_header|>\n\nYou are helpful.<|end_turn|>"
            "<|begin_header|>user<|end_header|>\n\nWhat is 2+2?<|end_turn|>"
            "<|begin_header|>Huginn<|end_header|>\n\n");
  EXPECT_EQ(ApplyChatTemplate(messages, /*add_generation_prompt=*/false),
            "<|begin_text|><|begin_header|>system<|end_header|>\n\nYou are helpful.<|end_turn|>"
            "<|begin_header|>user<|end_header|>\n\nWhat is 2+2?<|end_turn|><|end_text|>");
}

TEST(ChatTemplate, AssistantIsHuginnAndUnicodeSpaceIsTrimmed) {
  EXPECT_EQ(ApplyChatTemplate({{"user", "\xE3\x80\x80hi\xC2\xA0"}, {"assistant", " 4 "}}, false),
            "<|begin_text|><|begin_header|>user<|end_header|>\n\nhi<|end_turn|>"
            "<|begin_header|>Huginn<|end_header|>\n\n4<|end_turn|><|end_text|>");
}

}  // namespace
}  // namespace ponder::model
