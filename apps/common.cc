#include "apps/common.h"

#include <cstdio>

namespace ponder::apps {

int Fail(const Status& status) {
  std::fprintf(stderr, "ponder: error: %s\n", status.message().c_str());
  return 1;
}

Result<Runtime> Open(const std::string& dir, int threads, bool require_tokenizer) {
  Runtime rt;
  model::LoadOptions lo;
  lo.require_tokenizer = require_tokenizer;
  PONDER_ASSIGN_OR_RETURN(rt.ckpt, model::LoadCheckpoint(dir, lo));
  rt.pool = std::make_unique<exec::cpu::ThreadPool>(threads);
  rt.model =
      std::make_unique<exec::cpu::CpuModel>(rt.ckpt->config, rt.ckpt->weights, rt.pool.get());
  return rt;
}

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace ponder::apps
