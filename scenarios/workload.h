#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace ponder::scenarios {

// One line of a workload JSONL file (scenarios/workloads/*.jsonl):
// {"id": "...", "prompt": "+4*3+7=", "expected": "1", "family": "chain",
//  "difficulty": 3, "class": "complex_problem_solving"}. `id`, `difficulty` and `class`
// are optional; `prompt`, `expected` and `family` are required strings.
struct WorkloadItem {
  std::string id;
  std::string prompt;
  std::string expected;
  std::string family;
  int difficulty = 0;
  std::string task_class;  // the suggested class ("" when absent)
  int line = 0;            // 1-based line in the file, for messages
};

// Parses JSONL text; blank lines are skipped. Every error names `source`, the line and
// the field, e.g. `math.jsonl:12: "expected": must be a string`.
[[nodiscard]] Result<std::vector<WorkloadItem>> ParseWorkload(const std::string& text,
                                                              const std::string& source);
[[nodiscard]] Result<std::vector<WorkloadItem>> LoadWorkload(const std::string& path);

}  // namespace ponder::scenarios
