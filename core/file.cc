#include "core/file.h"

#include <filesystem>
#include <fstream>
#include <system_error>

namespace ponder {

Result<std::string> ReadTextFile(const std::string& path, const std::string& what,
                                 const std::string& location, uint64_t max_bytes) {
  namespace fs = std::filesystem;
  const std::string where = path + ": " + location;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);  // (follows symbolic links)
  // A pipe (--api-keys <(...)) is read like a file, to max_bytes; a device or a directory
  // is refused (/dev/zero would fill max_bytes of memory first).
  if (!ec && fs::exists(st) && !fs::is_regular_file(st) && !fs::is_fifo(st)) {
    return InvalidArgument(where + what + " is not a regular file or a pipe");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(where + "cannot open " + what);
  const uint64_t size = fs::file_size(path, ec);
  if (!ec && size > max_bytes) {
    return InvalidArgument(where + what + " has " + std::to_string(size) + " bytes, more than " +
                           std::to_string(max_bytes));
  }
  // At most max_bytes + 1 bytes are read, whatever the size said (a file that grows, or a
  // path swapped since the check).
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > max_bytes) {
      return InvalidArgument(where + what + " has more than " + std::to_string(max_bytes) +
                             " bytes");
    }
  }
  if (in.bad()) return DataLoss(where + "cannot read " + what);
  return text;
}

}  // namespace ponder
