// BudgetLedger with a fake clock: windows roll over, limits fall back to "default".

#include "policy/budget.h"

#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

namespace ponder::policy {
namespace {

TenantBudget Limit(double budget, double window) {
  TenantBudget limit;
  limit.budget = budget;
  limit.window_seconds = window;
  return limit;
}

TEST(BudgetLedgerTest, TumblingWindowRollsOver) {
  double now = 0;
  LedgerOptions options;
  options.kind = WindowKind::kTumbling;
  options.clock = [&now] { return now; };
  BudgetLedger ledger(options);
  ledger.SetLimit("acme", Limit(10.0, 60));
  // Table: (time, charge, spent after, remaining after).
  struct Row {
    double time;
    double charge;
    double spent;
    double remaining;
  };
  const Row table[] = {
      {1, 3, 3, 7},                                     // window [0, 60)
      {59, 4, 7, 3}, {59.9, 0, 7, 3},  {60, 0, 0, 10},  // new window [60, 120): spend resets
      {61, 2, 2, 8}, {130, 11, 11, 0},                  // over budget: remaining floors at 0
  };
  for (const Row& row : table) {
    now = row.time;
    ledger.Charge("acme", row.charge);  // through the injected clock
    EXPECT_DOUBLE_EQ(ledger.Spent("acme", row.time), row.spent) << "t=" << row.time;
    EXPECT_DOUBLE_EQ(ledger.Remaining("acme", row.time), row.remaining) << "t=" << row.time;
  }
  EXPECT_DOUBLE_EQ(ledger.Now(), 130);
}

TEST(BudgetLedgerTest, SlidingWindowForgetsOldCharges) {
  LedgerOptions options;
  options.kind = WindowKind::kSliding;
  BudgetLedger ledger(options);
  ledger.SetLimit("acme", Limit(10.0, 10));
  ledger.Charge("acme", 3, 1.0);
  ledger.Charge("acme", 4, 9.0);
  EXPECT_DOUBLE_EQ(ledger.Spent("acme", 9.0), 7);
  EXPECT_DOUBLE_EQ(ledger.Spent("acme", 10.5), 7);  // (0.5, 10.5] still holds t=1
  EXPECT_DOUBLE_EQ(ledger.Spent("acme", 11.0), 4);  // (1, 11] does not
  EXPECT_DOUBLE_EQ(ledger.Spent("acme", 19.0), 0);
  ledger.Charge("acme", 1, 12.0);  // prunes t=1
  EXPECT_DOUBLE_EQ(ledger.Spent("acme", 12.0), 5);
  EXPECT_DOUBLE_EQ(ledger.Remaining("acme", 12.0), 5);
}

TEST(BudgetLedgerTest, LimitsFromAProfileWithDefault) {
  DomainProfile profile;
  profile.tenants["default"] = Limit(5.0, 100);
  profile.tenants["big"] = Limit(1000.0, 3600);
  BudgetLedger ledger;
  ledger.Configure(profile);
  ledger.Charge("small", 2, 10);
  ledger.Charge("big", 2, 10);
  EXPECT_DOUBLE_EQ(ledger.Remaining("small", 10), 3);
  EXPECT_DOUBLE_EQ(ledger.Remaining("big", 10), 998);
  // The default entry's window (100 s) applies to "small"; big's is an hour.
  EXPECT_DOUBLE_EQ(ledger.Spent("small", 100), 0);
  EXPECT_DOUBLE_EQ(ledger.Spent("big", 100), 2);
  // Each tenant has its own account even when sharing the default limit.
  EXPECT_DOUBLE_EQ(ledger.Spent("other", 10), 0);
}

TEST(BudgetLedgerTest, NoLimitMeansUnlimitedAndSnapshotListsSpenders) {
  LedgerOptions options;
  options.default_window_seconds = 50;
  BudgetLedger ledger(options);
  ledger.Charge("a", 1.5, 10);
  ledger.Charge("b", 0, 10);   // nothing
  ledger.Charge("c", -3, 10);  // ignored
  EXPECT_TRUE(std::isinf(ledger.Remaining("a", 10)));
  const auto snapshot = ledger.Snapshot(10);
  ASSERT_EQ(snapshot.size(), 1u);
  EXPECT_DOUBLE_EQ(snapshot.at("a"), 1.5);
  EXPECT_TRUE(ledger.Snapshot(50).empty());  // next 50 s window
}

TEST(BudgetLedgerTest, ConcurrentChargesAreAllCounted) {
  BudgetLedger ledger;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&ledger] {
      for (int i = 0; i < 1000; ++i) ledger.Charge("acme", 0.5, 1.0);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_DOUBLE_EQ(ledger.Spent("acme", 1.0), 2000.0);
}

}  // namespace
}  // namespace ponder::policy
