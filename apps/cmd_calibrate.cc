// `ponder calibrate`: per task class of a profile, the loosest exit threshold whose outputs
// agree with the class's maximum-depth outputs on at least a target fraction of tokens, with
// a Learn-then-Test guarantee at level delta (policy/calibration.h, scenarios/calibrate.h;
// method in policy/README.md, "Calibration"). Writes the profile back (or to --out) with
// only the thresholds changed, and prints a table.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>

#include "apps/commands.h"
#include "apps/common.h"
#include "core/file.h"
#include "policy/calibration.h"
#include "policy/profile.h"
#include "scenarios/calibrate.h"
#include "scenarios/profile_edit.h"
#include "scenarios/workload.h"

namespace ponder::apps {
namespace {

// Whether a temporary file can be created beside `path` (checked before the long run, so
// that a bad --out fails at once).
Status CheckWritable(const std::string& path) {
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return InvalidArgument(path + ": cannot create a temporary file beside it");
  close(fd);
  std::remove(tmp.c_str());
  return Status::Ok();
}

// Writes `text` to `path` atomically: a temporary file in the same directory, flushed to
// disk, then renamed over `path`. On failure `path` is untouched and the temporary removed.
Status WriteAtomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return InvalidArgument(path + ": cannot create a temporary file beside it");
  size_t done = 0;
  bool ok = true;
  while (ok && done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  ok = ok && fsync(fd) == 0;
  // mkstemp creates 0600; a profile is an ordinary file (0644 less the umask).
  const mode_t mask = umask(0);
  umask(mask);
  ok = ok && fchmod(fd, 0644 & ~mask) == 0;
  ok = (close(fd) == 0) && ok;
  if (ok && std::rename(tmp.c_str(), path.c_str()) == 0) return Status::Ok();
  std::remove(tmp.c_str());
  return InvalidArgument(path + ": cannot write the profile (nothing was changed)");
}

std::string Num(double v, const char* format = "%g") {
  char buf[48];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

// One line redrawn in place on stderr, at most every 100 ms.
class ProgressBar {
 public:
  void Update(const scenarios::CalibrationProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (p.item < p.items && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 24;
    const int filled = p.items ? static_cast<int>(kWidth * p.item / p.items) : kWidth;
    const std::string phase = p.candidate < 0 ? "reference (max depth)"
                                              : "threshold " + std::to_string(p.candidate + 1) +
                                                    "/" + std::to_string(p.candidates) + " (" +
                                                    Num(p.threshold) + ")";
    std::fprintf(stderr, "\r\033[K[%d/%d] %s %s [%s%s] %lld/%lld", p.class_index + 1, p.classes,
                 p.task_class.c_str(), phase.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), (long long)p.item, (long long)p.items);
    std::fflush(stderr);
    drawn_ = true;
  }
  void Clear() {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  std::chrono::steady_clock::time_point last_{};
  bool drawn_ = false;
};

// Text tables, each line at most 100 columns.
void PrintReport(const scenarios::CalibrationReport& report) {
  std::printf(
      "calibration: target agreement %g, delta %g (Learn-then-Test, fixed sequence, "
      "exact binomial)\n",
      report.target.target_agreement, report.target.delta);
  for (const auto& c : report.classes) {
    std::printf("\nclass %s: rule %s, %lld items, n = %lld tokens at max_steps %d\n",
                c.task_class.c_str(), std::string(policy::ExitRuleName(c.rule)).c_str(),
                (long long)c.items, (long long)c.tokens, c.max_steps);
    if (c.evaluated.empty()) {
      std::printf("  no candidate run: %s\n", c.note.c_str());
      continue;
    }
    std::printf("  %-10s %8s %10s %10s %12s\n", "threshold", "agree", "agreement", "p-value",
                "steps/token");
    for (size_t i = 0; i < c.evaluated.size(); ++i) {
      const auto& e = c.evaluated[i];
      std::printf("  %-10s %8lld %10.4f %10.3g %12.2f  %s\n", Num(e.test.count.threshold).c_str(),
                  (long long)e.test.count.agree, e.agreement(), e.test.p_value,
                  e.mean_steps_per_token(),
                  static_cast<int>(i) == c.chosen ? "certified, chosen"
                  : e.test.rejected               ? "certified"
                                                  : "not certified: stop");
    }
    if (c.evaluated.size() == c.grid.size() && c.evaluated.back().test.rejected) {
      std::printf("  (every candidate certified: the grid's loosest is chosen)\n");
    }
  }
  // 24 + 16 + 8 + 8 + 6 + 7 + 8 + 9 + 6 columns and 8 spaces: 100.
  const char* row = "%-24s %-16s %8s %8s %6s %7s %8s %9s %6s\n";
  std::printf("\n");
  std::printf(row, "class", "rule", "old", "chosen", "n", "agree", "p-value", "steps/tok", "max");
  for (const auto& c : report.classes) {
    const bool ok = c.calibrated();
    const scenarios::CandidateResult* e = ok ? &c.evaluated[c.chosen] : nullptr;
    std::printf(row, c.task_class.c_str(), std::string(policy::ExitRuleName(c.rule)).c_str(),
                Num(c.old_threshold).c_str(), ok ? Num(c.threshold()).c_str() : "kept",
                std::to_string(c.tokens).c_str(), ok ? Num(e->agreement(), "%.4f").c_str() : "-",
                ok ? Num(e->test.p_value, "%.2g").c_str() : "-",
                ok ? Num(e->mean_steps_per_token(), "%.2f").c_str() : "-",
                Num(c.reference_steps_per_token, "%.2f").c_str());
  }
  for (const auto& c : report.classes) {
    if (!c.calibrated()) {
      std::printf("not calibrated: %s keeps %s (no guarantee)\n  %s\n", c.task_class.c_str(),
                  Num(c.old_threshold).c_str(), c.note.c_str());
    }
  }
  for (const auto& s : report.skipped) std::printf("skipped: %s\n", s.c_str());
}

}  // namespace

void AddCalibrateCommand(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "calibrate",
      "Choose each class's exit threshold with a Learn-then-Test guarantee and write the "
      "profile");
  struct Args {
    std::string dir, profile, workload, out, classes;
    double target = 0.99, delta = 0.05, init_scale = 1.0;
    int64_t max_items = 0, max_tokens = 16;
    uint64_t seed = 0;
    exec::BackendOptions backend;
    bool dry_run = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->dir, "Model directory")->required();
  cmd->add_option("--profile", a->profile, "Domain profile JSON to calibrate")->required();
  cmd->add_option("--workload", a->workload,
                  "Calibration workload JSONL (disjoint from evaluation data)")
      ->required();
  cmd->add_option("--target-agreement", a->target,
                  "Fraction of tokens that must agree with the max-depth output, in (0, 1)")
      ->check(FiniteIn(0.0, 1.0));
  cmd->add_option("--delta", a->delta, "Probability the guarantee may fail, in (0, 1)")
      ->check(FiniteIn(0.0, 1.0));
  cmd->add_option("--out", a->out, "Write the calibrated profile here (default: --profile)");
  cmd->add_option("--classes", a->classes, "Comma-separated classes (default: all with items)");
  cmd->add_option("--max-items", a->max_items, "Items per class at most (0: all)");
  cmd->add_option("--max-tokens", a->max_tokens, "Answer tokens at most")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--seed", a->seed, "Seed of the initial states (item i: seed + i)");
  cmd->add_option("--init-scale", a->init_scale, "Scale of the random initial state (0: zero)")
      ->check(FiniteIn(0.0, 1e6));
  AddBackendFlag(cmd, &a->backend);
  cmd->add_flag("--dry-run", a->dry_run, "Print the table; write nothing");
  cmd->callback([a, &exit_code] {
    scenarios::CalibrateOptions options;
    options.target.target_agreement = a->target;
    options.target.delta = a->delta;
    if (Status s = policy::ValidateTarget(options.target); !s.ok()) {
      exit_code = Fail(s.WithContext("--target-agreement / --delta"));
      return;
    }
    options.max_items = a->max_items;
    options.max_tokens = a->max_tokens;
    options.seed = a->seed;
    options.init_scale = a->init_scale;
    std::stringstream names(a->classes);
    for (std::string name; std::getline(names, name, ',');) {
      if (!name.empty()) options.classes.push_back(name);
    }
    auto text = ReadTextFile(a->profile, "the profile file");
    if (!text.ok()) {
      exit_code = Fail(text.status());
      return;
    }
    auto profile = policy::ParseProfile(*text, a->profile);
    if (!profile.ok()) {
      exit_code = Fail(profile.status());
      return;
    }
    const std::string out = a->out.empty() ? a->profile : a->out;
    if (!a->dry_run) {
      if (Status s = CheckWritable(out); !s.ok()) {
        exit_code = Fail(s);
        return;
      }
    }
    auto items = scenarios::LoadWorkload(a->workload);
    if (!items.ok()) {
      exit_code = Fail(items.status());
      return;
    }
    auto rt = Open(a->dir, a->backend, /*require_tokenizer=*/true);
    if (!rt.ok()) {
      exit_code = Fail(rt.status());
      return;
    }
    ProgressBar bar;
    if (isatty(STDERR_FILENO)) {
      options.progress = [&bar](const scenarios::CalibrationProgress& p) { bar.Update(p); };
    }
    auto report = scenarios::Calibrate(*rt->model, *rt->ckpt->tokenizer, *profile, *items, options);
    bar.Clear();
    if (!report.ok()) {
      exit_code = Fail(report.status());
      return;
    }
    PrintReport(*report);

    std::map<std::string, double> thresholds;
    for (const auto& c : report->classes) {
      if (c.calibrated()) thresholds[c.task_class] = c.threshold();
    }
    if (a->dry_run) {
      std::printf("dry run: nothing written\n");
      return;
    }
    if (thresholds.empty() && a->out.empty()) {
      std::printf("no class calibrated: %s unchanged\n", a->profile.c_str());
      return;
    }
    auto edited = scenarios::SetExitThresholds(*text, thresholds, a->profile);
    if (!edited.ok()) {
      exit_code = Fail(edited.status());
      return;
    }
    // Never write a profile the server would refuse, or one that says something else.
    auto check = policy::ParseProfile(*edited, out);
    if (!check.ok()) {
      exit_code = Fail(check.status().WithContext("calibrate: the edited profile is invalid"));
      return;
    }
    for (const auto& [name, value] : thresholds) {
      const policy::TaskClass* c = check->FindClass(name);
      if (c == nullptr || c->exit.threshold != value) {
        exit_code = Fail(Internal("calibrate: the edited profile does not carry threshold " +
                                  Num(value) + " for class " + name));
        return;
      }
    }
    if (Status s = WriteAtomically(out, *edited); !s.ok()) {
      exit_code = Fail(s);
      return;
    }
    std::printf("%s written (%zu of %zu classes calibrated)\n", out.c_str(), thresholds.size(),
                report->classes.size());
  });
}

}  // namespace ponder::apps
