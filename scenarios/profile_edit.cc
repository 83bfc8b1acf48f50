#include "scenarios/profile_edit.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

namespace ponder::scenarios {
namespace {

using nlohmann::ordered_json;

// A JSON value located in the text: [begin, end) spans it. Objects keep their members in
// order (keys[i], elements[i]); arrays their elements. Only what the edit needs is decoded.
struct Span {
  char kind = 0;  // '{', '[', '"', or 'v' (number / literal)
  size_t begin = 0, end = 0;
  std::string text;               // strings: the raw characters between the quotes
  std::vector<std::string> keys;  // objects: member keys, parallel to elements
  std::vector<Span> elements;     // array elements, or object member values

  const Span* Member(const std::string& key) const {
    const Span* found = nullptr;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) found = &elements[i];  // last one wins, as nlohmann's parser
    }
    return found;
  }
};

// A small recursive-descent scanner; the text was already validated by nlohmann, so it
// only needs to be right on valid JSON (it still stops on malformed input, never loops).
class Scanner {
 public:
  explicit Scanner(const std::string& text) : s_(text) {}

  std::optional<Span> Value(int depth = 0) {
    if (depth > 256) return std::nullopt;
    Skip();
    if (i_ >= s_.size()) return std::nullopt;
    Span v;
    v.begin = i_;
    const char c = s_[i_];
    if (c == '{') {
      v.kind = '{';
      ++i_;
      Skip();
      if (Peek('}')) {
        ++i_;
      } else {
        while (true) {
          Skip();
          auto key = String();
          if (!key) return std::nullopt;
          Skip();
          if (!Peek(':')) return std::nullopt;
          ++i_;
          auto val = Value(depth + 1);
          if (!val) return std::nullopt;
          v.keys.push_back(key->text);
          v.elements.push_back(std::move(*val));
          Skip();
          if (Peek(',')) {
            ++i_;
            continue;
          }
          if (!Peek('}')) return std::nullopt;
          ++i_;
          break;
        }
      }
    } else if (c == '[') {
      v.kind = '[';
      ++i_;
      Skip();
      if (Peek(']')) {
        ++i_;
      } else {
        while (true) {
          auto val = Value(depth + 1);
          if (!val) return std::nullopt;
          v.elements.push_back(std::move(*val));
          Skip();
          if (Peek(',')) {
            ++i_;
            continue;
          }
          if (!Peek(']')) return std::nullopt;
          ++i_;
          break;
        }
      }
    } else if (c == '"') {
      return String();
    } else {
      v.kind = 'v';
      while (i_ < s_.size() &&
             std::string_view("{}[],: \t\r\n").find(s_[i_]) == std::string_view::npos) {
        ++i_;
      }
      if (i_ == v.begin) return std::nullopt;
    }
    v.end = i_;
    return v;
  }

 private:
  void Skip() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  bool Peek(char c) const { return i_ < s_.size() && s_[i_] == c; }
  std::optional<Span> String() {
    if (!Peek('"')) return std::nullopt;
    Span v;
    v.kind = '"';
    v.begin = i_++;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\') ++i_;
      ++i_;
    }
    if (i_ >= s_.size()) return std::nullopt;
    v.text = s_.substr(v.begin + 1, i_ - v.begin - 1);
    ++i_;
    v.end = i_;
    return v;
  }

  const std::string& s_;
  size_t i_ = 0;
};

struct Edit {
  size_t begin, end;  // replaced range (begin == end: insertion)
  std::string text;
};

}  // namespace

std::string FormatThreshold(double value) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  if (ec != std::errc()) return std::to_string(value);
  std::string out(buf, end);
  const size_t e = out.find('e');
  if (e != std::string::npos) {
    size_t digits = e + 1;
    if (digits < out.size() && (out[digits] == '-' || out[digits] == '+')) {
      if (out[digits] == '+') {
        out.erase(digits, 1);
      } else {
        ++digits;
      }
    }
    while (digits + 1 < out.size() && out[digits] == '0') out.erase(digits, 1);
  }
  return out;
}

Result<std::string> SetExitThresholds(const std::string& text,
                                      const std::map<std::string, double>& thresholds,
                                      const std::string& source) {
  ordered_json doc;
  try {
    doc = ordered_json::parse(text);
  } catch (const std::exception& e) {
    return InvalidArgument(source + ": not valid JSON (" + e.what() + ")");
  }
  if (!doc.is_object() || !doc.contains("task_classes") || !doc["task_classes"].is_array()) {
    return InvalidArgument(source + ": /task_classes: missing or not an array");
  }
  // The expected document, and where each class sits.
  ordered_json expected = doc;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < doc["task_classes"].size(); ++i) {
    const ordered_json& c = doc["task_classes"][i];
    if (c.is_object() && c.contains("name") && c["name"].is_string()) {
      index.emplace(c["name"].get<std::string>(), i);
    }
  }
  for (const auto& [name, value] : thresholds) {
    auto it = index.find(name);
    const std::string path =
        "/task_classes/" + (it == index.end() ? std::string("?") : std::to_string(it->second));
    if (it == index.end()) return NotFound(source + ": no task class named \"" + name + "\"");
    ordered_json& c = expected["task_classes"][it->second];
    if (!c.contains("exit") || !c["exit"].is_object() || !c["exit"].contains("rule")) {
      return InvalidArgument(source + ": " + path + "/exit: missing, or without a \"rule\"");
    }
    const ordered_json number = value == std::floor(value) && std::fabs(value) < 1e15
                                    ? ordered_json(static_cast<int64_t>(value))
                                    : ordered_json(value);
    if (c["exit"].contains("threshold")) {
      c["exit"]["threshold"] = number;
    } else {  // inserted right after "rule", as the textual edit does
      ordered_json exit = ordered_json::object();
      for (const auto& [key, v] : c["exit"].items()) {
        exit[key] = v;
        if (key == "rule") exit["threshold"] = number;
      }
      c["exit"] = std::move(exit);
    }
  }

  // The textual edit.
  std::optional<std::string> edited;
  Scanner scanner(text);
  if (auto root = scanner.Value(); root && root->kind == '{') {
    const Span* classes = root->Member("task_classes");
    std::vector<Edit> edits;
    bool ok = classes != nullptr && classes->kind == '[';
    for (const auto& [name, value] : thresholds) {
      if (!ok) break;
      const size_t i = index.at(name);
      ok = i < classes->elements.size() && classes->elements[i].kind == '{';
      const Span* exit = ok ? classes->elements[i].Member("exit") : nullptr;
      ok = exit != nullptr && exit->kind == '{';
      if (!ok) break;
      const std::string number = FormatThreshold(value);
      if (const Span* t = exit->Member("threshold")) {
        edits.push_back({t->begin, t->end, number});
      } else if (const Span* rule = exit->Member("rule")) {
        edits.push_back({rule->end, rule->end, ", \"threshold\": " + number});
      } else {
        ok = false;
      }
    }
    if (ok) {
      std::sort(edits.begin(), edits.end(),
                [](const Edit& a, const Edit& b) { return a.begin > b.begin; });
      std::string out = text;
      for (const Edit& e : edits) out.replace(e.begin, e.end - e.begin, e.text);
      try {
        if (ordered_json::parse(out) == expected) edited = std::move(out);
      } catch (const std::exception&) {
      }
    }
  }
  if (edited) return *edited;
  return expected.dump(2) + "\n";
}

}  // namespace ponder::scenarios
