#!/bin/bash
# The CUDA backend's device checks in one run (bench/gpu/README.md): build with CUDA, the
# parity tests against the CPU executor, then decode timing for the Huginn-0125 shape with
# the card's copy bandwidth measured in the same run.
#
#   bench/gpu/run.sh [OUT_DIR]        (OUT_DIR: where the logs and results.json go)
#
# Needs the build's Debian packages (./run build installs them) and nvcc (PATH or
# /usr/local/cuda). BUILD (default build-gpu) is the build directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/build-gpu/results}"
BUILD="${BUILD:-$ROOT/build-gpu}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/device.txt" || true
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPONDER_CUDA=ON \
  -DPONDER_NATIVE=OFF >"$OUT/configure.log" 2>&1
cmake --build "$BUILD" -j "$JOBS" --target ponder_exec_test gpu_decode_bench \
  >"$OUT/build.log" 2>&1

# Parity: logits (f32 and bf16 weights) on the committed checkpoints and a random
# Huginn-structured one, per-token exit steps on the scenario workloads, device KV pages.
# PONDER_REQUIRE_CUDA=1: a test that finds no usable device fails instead of skipping.
PONDER_REQUIRE_CUDA=1 "$BUILD/tests/ponder_exec_test" --gtest_filter='*Cuda*:MakeBackend*' 2>&1 | tee "$OUT/parity.log"

# Decode at r in {4, 32, 64}, batch in {1, 8, 32}.
"$BUILD/bench/gpu_decode_bench" --depths 4,32,64 --batches 1,8,32 \
  --json "$OUT/results.json" 2>&1 | tee "$OUT/decode.log"
