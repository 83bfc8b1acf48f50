#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ponder {

// JSON Pointer (RFC 6901) paths for error messages: Child("/a", "b/c") == "/a/b~1c",
// Child("/a", 3) == "/a/3".
inline std::string JsonChild(const std::string& path, std::string_view key) {
  std::string out = path + "/";
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

inline std::string JsonChild(const std::string& path, size_t index) {
  return path + "/" + std::to_string(index);
}

}  // namespace ponder
