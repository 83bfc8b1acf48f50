// libFuzzer harness: domain profile parsing and validation (policy/profile.h), then routing
// a request through the profile when it loads.
#include <cstddef>
#include <cstdint>
#include <string>

#include "policy/planner.h"
#include "policy/profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto profile = ponder::policy::ParseProfile(text, "fuzz/profile.json");
  if (!profile.ok()) return 0;
  ponder::policy::Planner planner;
  ponder::policy::Request request;
  request.prompt = "+4*3+7*9= explain why";
  request.prompt_tokens = 12;
  request.tenant = "acme";
  ponder::policy::PlanContext context;
  (void)planner.Plan(request, *profile, context);
  return 0;
}
