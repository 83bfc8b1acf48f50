#!/bin/bash
# The CUDA backend's device checks in one run (bench/gpu/README.md): the parity tests
# against the CPU executor, then decode timing for the Huginn-0125 shape with the card's
# copy bandwidth measured in the same run.
#
#   bench/gpu/run.sh [OUT_DIR]                 build here (./run's Debian packages + nvcc)
#   bench/gpu/run.sh --bundle DIR [OUT_DIR]    run a bundle made by bench/gpu/pack.sh
#
# OUT_DIR (default build-gpu/results) receives device.txt, parity.log, decode.log and
# results.json. Exit status: non-zero when a parity test fails or the benchmark cannot run.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUNDLE=""
if [ "${1:-}" = "--bundle" ]; then
  BUNDLE="$(cd "$2" && pwd)"
  shift 2
fi
OUT="${1:-$ROOT/build-gpu/results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/device.txt"

if [ -n "$BUNDLE" ]; then
  TEST="$BUNDLE/bin/ponder_exec_test"
  BENCH="$BUNDLE/bin/gpu_decode_bench"
  export LD_LIBRARY_PATH="$BUNDLE/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
else
  BUILD="${BUILD:-$ROOT/build-gpu}"
  set -e
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPONDER_CUDA=ON \
    -DPONDER_NATIVE=OFF >"$OUT/configure.log" 2>&1
  cmake --build "$BUILD" -j "$(nproc)" --target ponder_exec_test gpu_decode_bench \
    >"$OUT/build.log" 2>&1
  set +e
  TEST="$BUILD/tests/ponder_exec_test"
  BENCH="$BUILD/bench/gpu_decode_bench"
fi
# The tests read the checkpoints, workloads and profiles of this checkout.
export PONDER_SOURCE_DIR="$ROOT"

# Parity: logits (f32 and bf16 weights) on the committed checkpoints and a random
# Huginn-structured one, per-token exit steps on the scenario workloads, device KV pages.
# PONDER_REQUIRE_CUDA=1: a test that finds no usable device fails instead of skipping.
# Each test runs in a process of its own, so that one that breaks the device (an illegal
# address ends the process's CUDA context) leaves the others their verdicts.
: >"$OUT/parity.log"
parity=0
failed=()
for t in $("$TEST" --gtest_filter='*Cuda*:MakeBackend*' --gtest_list_tests |
  awk '/^[^ ]/ {suite = $1} /^  / {print suite $1}'); do
  PONDER_REQUIRE_CUDA=1 "$TEST" --gtest_filter="$t" 2>&1 | tee -a "$OUT/parity.log"
  if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    parity=1
    failed+=("$t")
  fi
done
echo "parity tests failed: ${#failed[@]} ${failed[*]:-}" | tee -a "$OUT/parity.log"

# Decode at r in {4, 32, 64}, batch in {1, 8, 32}.
"$BENCH" --depths 4,32,64 --batches 1,8,32 --json "$OUT/results.json" 2>&1 | tee "$OUT/decode.log"
bench=${PIPESTATUS[0]}

echo "parity tests: exit $parity; decode benchmark: exit $bench"
[ "$parity" -eq 0 ] && [ "$bench" -eq 0 ]
