#include "core/file.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

namespace ponder {

Result<std::string> ReadTextFile(const std::string& path, const std::string& what,
                                 const std::string& location, uint64_t max_bytes) {
  namespace fs = std::filesystem;
  const std::string where = path + ": " + location;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);  // (follows symbolic links)
  if (!ec && fs::exists(st) && !fs::is_regular_file(st)) {
    return InvalidArgument(where + what + " is not a regular file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(where + "cannot open " + what);
  const uint64_t size = fs::file_size(path, ec);
  if (!ec && size > max_bytes) {
    return InvalidArgument(where + what + " has " + std::to_string(size) + " bytes, more than " +
                           std::to_string(max_bytes));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return DataLoss(where + "cannot read " + what);
  return text.str();
}

}  // namespace ponder
