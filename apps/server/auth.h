#pragma once

// API keys of `ponder serve`: a JSON file mapping each key to its tenant,
//   {"sk-acme-1": "acme", "sk-trial-7": "trial"}
// and the bearer-token checks the routes make. Keys are compared in constant time (the time
// taken does not depend on how much of a key matched, nor on which key matched).

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace ponder::apps::server {

// Parses the key file's text; `source` names it in messages. Keys and tenants must be
// non-empty strings.
[[nodiscard]] Result<std::map<std::string, std::string>> ParseApiKeys(const std::string& text,
                                                                      const std::string& source);
[[nodiscard]] Result<std::map<std::string, std::string>> LoadApiKeys(const std::string& path);

// Equality whose running time depends only on the lengths of the two strings.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// The token of an "Authorization: Bearer <token>" header value; nullopt for anything else.
std::optional<std::string> BearerToken(std::string_view authorization);

// The keys, looked up without early exit. Immutable after construction; thread-safe.
class KeyTable {
 public:
  KeyTable() = default;
  explicit KeyTable(std::map<std::string, std::string> key_to_tenant)
      : keys_(std::move(key_to_tenant)) {}

  bool empty() const { return keys_.empty(); }
  // The tenant of `key`, or nullopt. Compares `key` with every key.
  std::optional<std::string> Tenant(std::string_view key) const;

 private:
  std::map<std::string, std::string> keys_;
};

}  // namespace ponder::apps::server
