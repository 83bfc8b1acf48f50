#pragma once

// The runner of `ponder calibrate`: per task class, measures how often each candidate exit
// threshold reproduces the class's maximum-depth output on a calibration workload, and
// picks the loosest threshold certified by fixed-sequence Learn-then-Test
// (policy/calibration.h; method and assumptions in policy/README.md, "Calibration").
//
// Per class (items routed as replay does: the item's `class` when the profile has it, else
// the profile's routing):
//  1. reference: every item at the class's max_steps with no early exit (rule none);
//  2. candidates, tightest first: every item with the class's plan and that threshold. An
//     item's compared positions are the reference's tokens (its <|end_text|> included when
//     it stopped); position t agrees when the candidate's token t equals the reference's
//     AND every earlier position agreed; positions the candidate never produced disagree;
//  3. stop after the first candidate not certified (fixed sequence).
// Both runs of an item share its seed (seed + the item's index in the workload, as
// replay), the init scale, the class's KV strategy and warm start, greedy decoding and
// max_tokens, so that the exit rule is the only difference. Deadlines are ignored (they
// would make the outcome depend on the machine's speed); budgets and load do not apply.
//
// Not thread-safe (one backend, items run one after another; the model's pool parallelises
// inside each step).

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/backend.h"
#include "model/tokenizer.h"
#include "policy/calibration.h"
#include "policy/profile.h"
#include "scenarios/workload.h"

namespace ponder::scenarios {

// Where the runner is, for a progress bar. Reported after every item run.
struct CalibrationProgress {
  std::string task_class;
  int class_index = 0;  // 0-based among the classes being calibrated
  int classes = 0;
  int candidate = -1;      // -1: the reference pass; else index in the class's grid
  int candidates = 0;      // size of the class's grid
  double threshold = 0.0;  // the candidate's threshold (0 for the reference)
  int64_t item = 0;        // items done in this pass, 1..items
  int64_t items = 0;
};

struct CalibrateOptions {
  policy::CalibrationTarget target;
  int64_t max_tokens = 16;  // answer tokens at most (replay's default)
  uint64_t seed = 0;        // item i runs with seed + i (replay's convention)
  double init_scale = 1.0;  // scale of the random initial state (replay's default)
  int64_t max_items = 0;    // items per class at most, first ones in file order; 0 = all
  // Classes to calibrate; empty = every class with items and a rule other than none. A
  // class named here that is unknown, has rule none or has no items is an error.
  std::vector<std::string> classes;
  // Candidate grid per class name (tightest first), replacing policy::CandidateThresholds;
  // for tests and experiments. Values must be valid thresholds of the class's rule.
  std::map<std::string, std::vector<double>> grids;
  std::function<void(const CalibrationProgress&)> progress;
};

// One evaluated candidate.
struct CandidateResult {
  policy::CandidateTest test;  // threshold, agree / total, p-value, rejected
  int64_t generated_tokens = 0;
  int64_t steps = 0;  // core iterations of the generated tokens (prefill: its last row's)
  double mean_steps_per_token() const {
    return generated_tokens ? double(steps) / generated_tokens : 0.0;
  }
  double agreement() const {
    return test.count.total ? double(test.count.agree) / test.count.total : 0.0;
  }
};

struct ClassCalibration {
  std::string task_class;
  policy::ExitRule rule = policy::ExitRule::kNone;
  double old_threshold = 0.0;  // the profile's (or the rule's default)
  int max_steps = 0;
  int64_t items = 0;
  int64_t tokens = 0;  // n: compared tokens (the reference's)
  double reference_steps_per_token = 0.0;
  std::vector<double> grid;                // tightest first
  std::vector<CandidateResult> evaluated;  // grid prefix: up to the first non-rejection
  int chosen = -1;  // index in `evaluated` of the certified threshold; -1: none
  // Set when no candidate was certified: why, in words (e.g. too few tokens for the target).
  std::string note;

  bool calibrated() const { return chosen >= 0; }
  // The threshold to write: the chosen one, else the old one (an uncalibrated class keeps
  // its threshold; it has no guarantee).
  double threshold() const;
};

struct CalibrationReport {
  policy::CalibrationTarget target;
  std::vector<ClassCalibration> classes;  // in profile order
  // Classes left out and why ("chat: no items in the workload", "x: rule none").
  std::vector<std::string> skipped;
};

// Runs the calibration. Errors: invalid target, unknown / unusable class in
// options.classes, an item the tokenizer or the planner rejects, a generation error.
[[nodiscard]] Result<CalibrationReport> Calibrate(exec::Backend& model,
                                                  const model::Tokenizer& tokenizer,
                                                  const policy::DomainProfile& profile,
                                                  const std::vector<WorkloadItem>& items,
                                                  const CalibrateOptions& options);

// The agreeing prefix length of `candidate` against `reference` (position by position,
// stopping at the first difference or at the end of either).
int64_t AgreeingPrefix(const std::vector<int32_t>& reference,
                       const std::vector<int32_t>& candidate);

}  // namespace ponder::scenarios
