#include "policy/budget.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

namespace ponder::policy {
namespace {

double WindowStart(double now, double window) { return std::floor(now / window) * window; }

}  // namespace

BudgetLedger::BudgetLedger(LedgerOptions options) : options_(std::move(options)) {
  if (!options_.clock) {
    options_.clock = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
    };
  }
  if (!(options_.default_window_seconds > 0)) options_.default_window_seconds = 3600;
}

void BudgetLedger::Configure(const DomainProfile& profile) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [tenant, limit] : profile.tenants) limits_[tenant] = limit;
}

void BudgetLedger::SetLimit(const std::string& tenant, const TenantBudget& limit) {
  std::lock_guard<std::mutex> lock(mu_);
  limits_[tenant] = limit;
}

const TenantBudget* BudgetLedger::LimitLocked(const std::string& tenant) const {
  if (auto it = limits_.find(tenant); it != limits_.end()) return &it->second;
  if (auto it = limits_.find("default"); it != limits_.end()) return &it->second;
  return nullptr;
}

double BudgetLedger::WindowLocked(const std::string& tenant) const {
  const TenantBudget* limit = LimitLocked(tenant);
  return limit != nullptr && limit->window_seconds > 0 ? limit->window_seconds
                                                       : options_.default_window_seconds;
}

double BudgetLedger::SpentLocked(const std::string& tenant, const Account& account,
                                 double now) const {
  const double window = WindowLocked(tenant);
  if (options_.kind == WindowKind::kTumbling) {
    return account.window_start == WindowStart(now, window) ? account.spent : 0.0;
  }
  double spent = 0;
  for (const Entry& entry : account.entries) {
    if (entry.time > now - window && entry.time <= now) spent += entry.amount;
  }
  return spent;
}

void BudgetLedger::Charge(const std::string& tenant, double amount, double now) {
  if (!(amount > 0)) return;
  std::lock_guard<std::mutex> lock(mu_);
  const double window = WindowLocked(tenant);
  Account& account = accounts_[tenant];
  if (options_.kind == WindowKind::kTumbling) {
    const double start = WindowStart(now, window);
    if (account.window_start != start) {
      account.window_start = start;
      account.spent = 0;
    }
    account.spent += amount;
    return;
  }
  while (!account.entries.empty() && account.entries.front().time <= now - window) {
    account.entries.pop_front();
  }
  account.entries.push_back({now, amount});
}

double BudgetLedger::Spent(const std::string& tenant, double now) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = accounts_.find(tenant);
  return it == accounts_.end() ? 0.0 : SpentLocked(tenant, it->second, now);
}

double BudgetLedger::Remaining(const std::string& tenant, double now) const {
  std::lock_guard<std::mutex> lock(mu_);
  const TenantBudget* limit = LimitLocked(tenant);
  if (limit == nullptr) return std::numeric_limits<double>::infinity();
  auto it = accounts_.find(tenant);
  const double spent = it == accounts_.end() ? 0.0 : SpentLocked(tenant, it->second, now);
  return std::max(0.0, limit->budget - spent);
}

std::map<std::string, double> BudgetLedger::Snapshot(double now) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, double> out;
  for (const auto& [tenant, account] : accounts_) {
    const double spent = SpentLocked(tenant, account, now);
    if (spent > 0) out[tenant] = spent;
  }
  return out;
}

double BudgetLedger::Now() const { return options_.clock(); }

}  // namespace ponder::policy
