#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace ponder {

// The most a text file (config, tokenizer, profile, workload, key file) may hold: 256 MiB.
inline constexpr uint64_t kMaxTextFileBytes = uint64_t{256} << 20;

// The whole of the text file `path` (a regular file or a pipe), with errors that name it and
// the kind of file (`what`, "the profile file"): it cannot be opened, is a device or a
// directory, holds more than `max_bytes` (no more than max_bytes + 1 are read), or cannot be
// read. `location` goes between the path and the message (a JSON pointer, "/: ").
[[nodiscard]] Result<std::string> ReadTextFile(const std::string& path, const std::string& what,
                                               const std::string& location = "",
                                               uint64_t max_bytes = kMaxTextFileBytes);

}  // namespace ponder
