#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "scenarios/replay.h"

namespace ponder::scenarios {

// Accuracy of named groups (task classes or families) at several fixed depths.
struct DepthCurve {
  std::string name;
  std::vector<double> accuracy;  // one per depth
};

struct SweepTable {
  std::vector<int64_t> depths;
  std::vector<DepthCurve> curves;
};

// Collects the per-class accuracy of replay reports, one report per depth.
SweepTable ClassCurves(const std::vector<int64_t>& depths,
                       const std::vector<ReplayReport>& reports);

// A self-contained SVG line chart of accuracy (0..1) against depth (log2 axis).
std::string RenderSvg(const SweepTable& table, const std::string& title);

}  // namespace ponder::scenarios
