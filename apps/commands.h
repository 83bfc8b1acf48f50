#pragma once

#include <CLI/CLI.hpp>

namespace ponder::apps {

// Each Add*Command registers a subcommand on `app`; its callback returns the process exit
// status through `exit_code` (0 on success, 1 on an error printed to stderr).
void AddInspectCommand(CLI::App& app, int& exit_code);
void AddGenerateCommand(CLI::App& app, int& exit_code);
void AddLogitsCommand(CLI::App& app, int& exit_code);
void AddReplayCommand(CLI::App& app, int& exit_code);
void AddSweepCommand(CLI::App& app, int& exit_code);
void AddCalibrateCommand(CLI::App& app, int& exit_code);
void AddTokenizeCommand(CLI::App& app, int& exit_code);
void AddServeCommand(CLI::App& app, int& exit_code);

}  // namespace ponder::apps
