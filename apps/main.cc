// `ponder`: the command line of the Ponder runtime. Subcommands: inspect, generate, logits, replay,
// sweep.
#include <cstdio>
#include <exception>
#include <new>

#include "apps/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"Ponder: adaptive test-time compute for recurrent-depth language models"};
  app.require_subcommand(1);
  int exit_code = 0;
  ponder::apps::AddInspectCommand(app, exit_code);
  ponder::apps::AddGenerateCommand(app, exit_code);
  ponder::apps::AddLogitsCommand(app, exit_code);
  ponder::apps::AddReplayCommand(app, exit_code);
  ponder::apps::AddSweepCommand(app, exit_code);
  ponder::apps::AddCalibrateCommand(app, exit_code);
  ponder::apps::AddTokenizeCommand(app, exit_code);
  ponder::apps::AddServeCommand(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ponder: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ponder: %s\n", e.what());
    return 1;
  }
  return exit_code;
}
