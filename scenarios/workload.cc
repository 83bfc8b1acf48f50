#include "scenarios/workload.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/file.h"

namespace ponder::scenarios {

Result<std::vector<WorkloadItem>> ParseWorkload(const std::string& text,
                                                const std::string& source) {
  std::vector<WorkloadItem> items;
  std::istringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = source + ":" + std::to_string(number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      return InvalidArgument(where + ": not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object()) return InvalidArgument(where + ": a line must be a JSON object");
    WorkloadItem item;
    item.line = number;
    auto string_field = [&](const char* name, std::string& out, bool required) -> Status {
      auto it = j.find(name);
      if (it == j.end()) {
        return required ? InvalidArgument(where + ": missing \"" + name + "\"") : Status::Ok();
      }
      if (!it->is_string()) {
        return InvalidArgument(where + ": \"" + name + "\": must be a string");
      }
      out = it->get<std::string>();
      return Status::Ok();
    };
    PONDER_RETURN_IF_ERROR(string_field("prompt", item.prompt, true));
    PONDER_RETURN_IF_ERROR(string_field("expected", item.expected, true));
    PONDER_RETURN_IF_ERROR(string_field("family", item.family, true));
    PONDER_RETURN_IF_ERROR(string_field("class", item.task_class, false));
    if (auto it = j.find("id"); it != j.end()) {
      item.id = it->is_string() ? it->get<std::string>() : it->dump();
    }
    if (auto it = j.find("difficulty"); it != j.end()) {
      if (!it->is_number_integer()) {
        return InvalidArgument(where + ": \"difficulty\": must be an integer");
      }
      item.difficulty = it->get<int>();
    }
    if (item.prompt.empty()) return InvalidArgument(where + ": \"prompt\": must not be empty");
    items.push_back(std::move(item));
  }
  if (items.empty()) return InvalidArgument(source + ": the workload has no requests");
  return items;
}

Result<std::vector<WorkloadItem>> LoadWorkload(const std::string& path) {
  PONDER_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path, "the workload file"));
  return ParseWorkload(text, path);
}

}  // namespace ponder::scenarios
