#pragma once

// Small string helpers shared by the policy parsers: "did you mean" suggestions and
// case-insensitive matching.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ponder::policy {

// Levenshtein distance (insertions, deletions, substitutions each cost 1).
size_t EditDistance(std::string_view a, std::string_view b);

// The candidate nearest to `name` when it is close enough to be a plausible typo
// (distance <= max(1, min(3, |name| / 2))); nullopt otherwise. Ties go to the first.
std::optional<std::string> NearestName(std::string_view name,
                                       const std::vector<std::string>& candidates);

// `reason` followed by ` (did you mean "x"?)` when a candidate is near `name`.
std::string WithSuggestion(std::string reason, std::string_view name,
                           const std::vector<std::string>& candidates);

// ASCII lower case (prompts are matched case-insensitively on ASCII letters).
std::string AsciiLower(std::string_view text);

// Number of UTF-8 code points (bytes that are not continuation bytes).
size_t Utf8Length(std::string_view text);

}  // namespace ponder::policy
