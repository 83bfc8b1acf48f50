#pragma once

// Editing a profile file in place without disturbing it: `ponder calibrate` writes new exit
// thresholds into a hand-formatted profile, and everything else (key order, layout,
// comments-free JSON as written, other classes) stays byte for byte.

#include <map>
#include <string>

#include "core/status.h"

namespace ponder::scenarios {

// Shortest text that reads back as `value` (to_chars), with the exponent's leading zeros
// removed: 0.00215 -> "0.00215", 2.15e-05 -> "2.15e-5", 5.0 -> "5".
std::string FormatThreshold(double value);

// `text` (a profile's JSON) with `/task_classes/i/exit/threshold` set to `thresholds[name]`
// for each class i whose "name" is a key of `thresholds`. Only the threshold's number
// changes (or, when the class has no "threshold", `, "threshold": X` is inserted after its
// "rule"); the rest of the text is kept byte for byte. The result is checked by parsing it
// again (ordered JSON) against the expected document; should the textual edit not match,
// the expected document is written out instead (2-space indent, key order kept).
// Errors: `text` is not JSON, a class named in `thresholds` is absent or has no "exit"
// object with a "rule". Messages are prefixed with `source`.
[[nodiscard]] Result<std::string> SetExitThresholds(const std::string& text,
                                                    const std::map<std::string, double>& thresholds,
                                                    const std::string& source);

}  // namespace ponder::scenarios
