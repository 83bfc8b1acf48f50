#pragma once

// Workload items for tests that need requests of given classes, not answers: every prompt
// once per class, expected answer "?" (never right), family "f".
#include <string>
#include <utility>
#include <vector>

#include "scenarios/workload.h"

namespace ponder::scenarios::testing {

inline std::vector<WorkloadItem> SyntheticItems(const std::vector<std::string>& classes,
                                                const std::vector<std::string>& prompts) {
  std::vector<WorkloadItem> items;
  for (const std::string& cls : classes) {
    for (const std::string& prompt : prompts) {
      WorkloadItem item;
      item.prompt = prompt;
      item.expected = std::string(1, '?');
      item.family = std::string(1, 'f');
      item.task_class = cls;
      items.push_back(std::move(item));
    }
  }
  return items;
}

}  // namespace ponder::scenarios::testing
