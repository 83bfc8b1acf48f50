#!/usr/bin/env bash
# The demo: the bundled model ponder-micro answers the scenario workloads at several fixed
# depths. Hard classes (multi-step arithmetic chains) gain accuracy with depth; easy ones
# (copy, recall) are already right after a few iterations. Writes the chart to
# build/demo-depth.svg, and shows what the finance profile's per-token exits save.
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$ROOT/model/zoo/ponder-micro
W=$ROOT/scenarios/workloads
PONDER=$BUILD/apps/ponder
echo "== ponder inspect --model model/zoo/ponder-micro"
"$PONDER" inspect --model "$MODEL"
echo
echo "== accuracy per scenario class at fixed depths (education and finance workloads)"
"$PONDER" sweep --model "$MODEL" --workload "$W/education.jsonl" --workload "$W/finance.jsonl" \
  --depths 1,2,4,8,32 --limit 60 --plot "$BUILD/demo-depth.svg"
echo
echo "== one held-out question (a 22-step chain; the answer is 9), four depths: ponder generate --steps R"
for r in 2 4 8 32; do
  printf 'r=%-3s ' "$r"
  "$PONDER" generate --model "$MODEL" --prompt '+4*3+6+3+9*3*9+5*7+4+4+6+8*7+9+1+1*3+8+0+0+1=' --steps "$r" \
    --max-tokens 4 \
    2>/dev/null
done
echo
echo "== the finance profile: per-token exits with calibrated thresholds (ponder replay --profile)"
adaptive=$("$PONDER" replay --model "$MODEL" --profile "$ROOT/scenarios/profiles/finance.json" \
  --workload "$W/finance.jsonl")
echo "$adaptive" | sed -n 1,8p
echo "== ... against every class at its maximum depth (--class-max)"
fixed=$("$PONDER" replay --model "$MODEL" --profile "$ROOT/scenarios/profiles/finance.json" \
  --workload "$W/finance.jsonl" --class-max)
echo "$fixed" | sed -n 2p
