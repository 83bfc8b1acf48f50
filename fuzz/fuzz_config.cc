// libFuzzer harness: config.json parsing and validation (model/config.h).
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = ponder::model::ParseConfig(text, "fuzz/config.json");
  if (config.ok()) (void)config->UniqueParams();
  return 0;
}
