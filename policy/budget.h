#pragma once

// BudgetLedger: what each tenant has spent (in the profile's currency) in its current
// window. In-process and thread-safe (one mutex); all times are seconds on one clock, passed
// in explicitly or read from the injectable clock.

#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "policy/profile.h"

namespace ponder::policy {

enum class WindowKind {
  kTumbling,  // windows [k*w, (k+1)*w): spend resets at each boundary
  kSliding,   // spend of the last w seconds, (now - w, now]
};

struct LedgerOptions {
  WindowKind kind = WindowKind::kTumbling;
  // Window of tenants with no limit configured (no "default" entry either), seconds.
  double default_window_seconds = 3600;
  // The clock of the overloads without `now`; seconds. Defaults to std::steady_clock.
  std::function<double()> clock;
};

class BudgetLedger {
 public:
  explicit BudgetLedger(LedgerOptions options = {});

  // Budgets and windows of every tenant of a profile ("default" applies to the others).
  void Configure(const DomainProfile& profile);
  void SetLimit(const std::string& tenant, const TenantBudget& limit);

  // Adds `amount` (>= 0; negative amounts are ignored) to the tenant's spend at `now`.
  void Charge(const std::string& tenant, double amount, double now);
  void Charge(const std::string& tenant, double amount) { Charge(tenant, amount, Now()); }

  // Spend in the window containing `now`.
  double Spent(const std::string& tenant, double now) const;
  // Budget minus spend, floored at 0; +infinity for a tenant without a budget.
  double Remaining(const std::string& tenant, double now) const;
  // Spend in the current window of every tenant that has spent something (for PlanContext).
  std::map<std::string, double> Snapshot(double now) const;

  double Now() const;

 private:
  struct Entry {
    double time;
    double amount;
  };
  struct Account {
    double window_start = 0;    // tumbling: start of the window `spent` belongs to
    double spent = 0;           // tumbling
    std::deque<Entry> entries;  // sliding, oldest first
  };

  // The tenant's limit, else "default", else nullptr. Caller holds mu_.
  const TenantBudget* LimitLocked(const std::string& tenant) const;
  double WindowLocked(const std::string& tenant) const;
  double SpentLocked(const std::string& tenant, const Account& account, double now) const;

  LedgerOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, TenantBudget> limits_;
  std::map<std::string, Account> accounts_;
};

}  // namespace ponder::policy
