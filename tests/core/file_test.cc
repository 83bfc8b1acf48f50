#include "core/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <string>
#include <thread>

#include "tests/model/test_files.h"

namespace ponder {
namespace {

using model::testing::TempDir;
using model::testing::WriteFile;

void ExpectError(const Result<std::string>& r, const std::string& needle) {
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
}

TEST(ReadTextFile, ReadsTheWholeFile) {
  TempDir dir;
  WriteFile(dir.File("a.json"), "{\"a\": 1}\n");
  Result<std::string> r = ReadTextFile(dir.File("a.json"), "the test file");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, "{\"a\": 1}\n");
}

TEST(ReadTextFile, ErrorsNameThePathAndTheKindOfFile) {
  TempDir dir;
  ExpectError(ReadTextFile(dir.File("missing.json"), "the profile file", "/: "),
              dir.File("missing.json") + ": /: cannot open the profile file");
  // A device or a directory is refused before it is read (/dev/zero would never end).
  ExpectError(ReadTextFile("/dev/zero", "the profile file"),
              "/dev/zero: the profile file is not a regular file or a pipe");
  ExpectError(ReadTextFile(dir.path(), "the config file"),
              "the config file is not a regular file or a pipe");
  WriteFile(dir.File("big.json"), std::string(100, 'x'));
  ExpectError(ReadTextFile(dir.File("big.json"), "the workload file", "", 64),
              "the workload file has 100 bytes, more than 64");
}

// A pipe is read like a file, and no further than the limit.
TEST(ReadTextFile, ReadsPipesUpToTheLimit) {
  TempDir dir;
  const std::string fifo = dir.File("keys.fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  std::thread writer([&] {
    std::ofstream out(fifo, std::ios::binary);
    out << std::string(100, 'k');
  });
  ExpectError(ReadTextFile(fifo, "the API key file", "", 64),
              "the API key file has more than 64 bytes");
  writer.join();
  std::thread writer2([&] {
    std::ofstream out(fifo, std::ios::binary);
    out << "{\"sk\": \"t\"}";
  });
  Result<std::string> r = ReadTextFile(fifo, "the API key file");
  writer2.join();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, "{\"sk\": \"t\"}");
}

}  // namespace
}  // namespace ponder
