// libFuzzer harness: the bodies of POST /v1/completions and /v1/chat/completions
// (apps/server/openai.h ParseRequest). The first byte chooses the endpoint; errors must map
// to an OpenAI error body.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "apps/server/openai.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  using ponder::apps::server::Endpoint;
  const Endpoint endpoint = data[0] % 2 ? Endpoint::kChatCompletions : Endpoint::kCompletions;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  auto request = ponder::apps::server::ParseRequest(body, endpoint);
  if (!request.ok()) {
    const auto error = ponder::apps::server::ErrorFromStatus(request.status());
    (void)ponder::apps::server::ErrorBody(error).dump();
  }
  return 0;
}
