#include "apps/server/auth.h"

#include <nlohmann/json.hpp>

#include "core/file.h"

namespace ponder::apps::server {

Result<std::map<std::string, std::string>> ParseApiKeys(const std::string& text,
                                                        const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(source + ": not valid JSON");
  if (!j.is_object()) {
    return InvalidArgument(source + ": must be a JSON object {\"<key>\": \"<tenant>\", ...}");
  }
  std::map<std::string, std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().empty()) return InvalidArgument(source + ": an API key is empty");
    if (!it.value().is_string() || it.value().get<std::string>().empty()) {
      // The key itself is a secret: name its position, not its text.
      return InvalidArgument(source + ": the tenant of key #" +
                             std::to_string(std::distance(j.begin(), it) + 1) +
                             " must be a non-empty string");
    }
    keys[it.key()] = it.value().get<std::string>();
  }
  if (keys.empty()) return InvalidArgument(source + ": no API keys");
  return keys;
}

Result<std::map<std::string, std::string>> LoadApiKeys(const std::string& path) {
  PONDER_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path, "the API key file"));
  return ParseApiKeys(text, path);
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  // Keep the compiler from turning the loop into an early-exit comparison.
  volatile unsigned result = diff;
  return result == 0;
}

std::optional<std::string> BearerToken(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) {
      return std::nullopt;
    }
  }
  std::string_view token = authorization.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
  if (token.empty()) return std::nullopt;
  return std::string(token);
}

std::optional<std::string> KeyTable::Tenant(std::string_view key) const {
  const std::string* found = nullptr;
  for (const auto& [k, tenant] : keys_) {
    if (ConstantTimeEquals(k, key)) found = &tenant;
  }
  if (found == nullptr) return std::nullopt;
  return *found;
}

}  // namespace ponder::apps::server
