// libFuzzer harness: the safetensors header parser (model/safetensors.h) on arbitrary bytes.
// Every input must end in a result or a Status, never a crash, a hang or a leak; a file that
// opens must have tensor views inside its bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto file = ponder::model::SafetensorsFile::FromBytes(bytes, "fuzz.safetensors");
  if (!file.ok()) return 0;
  for (const auto& [name, view] : (*file)->tensors()) {
    // Touch every byte of every view (an out-of-range view is an ASan report).
    const auto* p = static_cast<const unsigned char*>(view.data);
    unsigned sum = 0;
    for (uint64_t i = 0; i < view.bytes(); ++i) sum += p[i];
    if (sum == 0xFFFFFFFFu) std::abort();  // keeps the loop
  }
  return 0;
}
