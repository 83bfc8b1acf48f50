#!/bin/bash
# Builds the CUDA device checks on this machine (./run's Debian packages + nvcc) and bundles
# them for a GPU machine that has the CUDA runtime but not this build's packages: the two
# binaries and the shared libraries they load from those packages. Run it there with
# `bench/gpu/run.sh --bundle DIR` in a checkout of the same commit.
#
#   bench/gpu/pack.sh [DIR]     (default build-gpu/bundle)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${BUILD:-$ROOT/build-gpu}"
BUNDLE="${1:-$BUILD/bundle}"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPONDER_CUDA=ON \
  -DPONDER_NATIVE=OFF >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target ponder_exec_test gpu_decode_bench
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib"
cp "$BUILD/tests/ponder_exec_test" "$BUILD/bench/gpu_decode_bench" "$BUNDLE/bin/"
# Everything the binaries load except the C library's own and the CUDA driver and toolkit
# libraries (the GPU machine has those; cuBLAS alone is hundreds of megabytes).
for bin in "$BUNDLE"/bin/*; do ldd "$bin"; done | awk '/=> \// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt)\.so' |
  while read -r lib; do cp -L "$lib" "$BUNDLE/lib/"; done
ls "$BUNDLE/lib"
du -sh "$BUNDLE"
