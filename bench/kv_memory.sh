#!/usr/bin/env bash
# KV-cache memory and accuracy at a fixed depth: `full` (one slot per core iteration and
# layer) against `compress-sN` with N = the model's core layers (one slot per physical
# layer), on the scenario workloads.
#   bench/kv_memory.sh [BUILD_DIR] [STEPS] [SEEDS] [THREADS]
#     SEEDS: space-separated replay seeds (initial states), default "0 1 2"
# 1. bytes per token: build/bench/serving_bench --kv-memory (SequenceCache::bytes() on a
#    cache filled to whole pages, checked against slots x 2 x width x 4 bytes; then the
#    bytes every workload request holds at completion, per strategy);
# 2. accuracy: `ponder replay --fixed-steps STEPS --kv S` on each workload and seed; the
#    table pools the seeds (requests x seeds) per workload and over all workloads.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
STEPS=${2:-32}
SEEDS=${3:-0 1 2}
THREADS=${4:-1}
MODEL=${MODEL:-$ROOT/model/zoo/ponder-micro}
WORKLOADS=${WORKLOADS:-chat education finance math}
CORE=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['n_layers_in_recurrent_block'])" "$MODEL/config.json")
COMPRESS=compress-s$CORE
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model: $MODEL (model.safetensors sha256 $(sha256sum "$MODEL/model.safetensors" | cut -c1-16), $(date -r "$MODEL/model.safetensors" -u '+%F %T UTC'))"
"$BUILD/bench/serving_bench" --kv-memory --model "$MODEL" --scenarios "$ROOT/scenarios" \
  --steps "$STEPS" --kv "full,$COMPRESS" --threads "$THREADS"
echo
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for wl in $WORKLOADS; do
  for kv in full "$COMPRESS"; do
    for seed in $SEEDS; do
      "$BUILD/apps/ponder" replay --model "$MODEL" --workload "$ROOT/scenarios/workloads/$wl.jsonl" \
        --fixed-steps "$STEPS" --kv "$kv" --seed "$seed" --threads "$THREADS" --json \
        >"$OUT/$wl.$kv.$seed.json"
    done
  done
done
/usr/bin/python3 - "$OUT" "$STEPS" "$COMPRESS" "$WORKLOADS" "$SEEDS" <<'PY'
import json, sys
out, steps, comp, workloads, seeds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5].split()
def load(wl, kv):
    c = n = 0
    for s in seeds:
        j = json.load(open(f"{out}/{wl}.{kv}.{s}.json"))
        c += j["correct"]; n += j["requests"]
    return c, n
print(f"accuracy at r={steps} (ponder replay --fixed-steps {steps}, seeds {' '.join(seeds)} pooled)")
print(f"{'workload':<10} {'requests':>8} {'full':>8} {comp:>12} {'difference':>12}")
tot = {"full": [0, 0], comp: [0, 0]}
for wl in workloads:
    (cf, n), (cc, _) = load(wl, "full"), load(wl, comp)
    tot["full"][0] += cf; tot["full"][1] += n; tot[comp][0] += cc; tot[comp][1] += n
    print(f"{wl:<10} {n:>8} {cf / n:>8.3f} {cc / n:>12.3f} {100 * (cc - cf) / n:>+9.2f} pt")
(cf, n), (cc, _) = tot["full"], tot[comp]
print(f"{'all':<10} {n:>8} {cf / n:>8.3f} {cc / n:>12.3f} {100 * (cc - cf) / n:>+9.2f} pt")
print("(difference: compress minus full, in accuracy points; goal: no more than 1 point lost)")
PY
