#!/usr/bin/env bash
# Decode speed of a ~1M-parameter recurrent-depth model (width 128, 4 heads, mlp 384,
# 1 prelude / 2 core / 1 coda layers, f32) at r=32, batch 1: Ponder's CPU runtime against
# the PyTorch reference, same checkpoint, same thread count, one after the other.
#   bench/compare_decode.sh [BUILD_DIR] [THREADS] [STEPS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
THREADS=${2:-2}
STEPS=${3:-32}
CKPT=$BUILD/bench-1m
[ -f "$CKPT/model.safetensors" ] ||
  /usr/bin/python3 "$ROOT/model/reference/make_checkpoint.py" --preset bench-1m "$CKPT" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cpp=$("$BUILD/bench/decode_bench" --model "$CKPT" --steps "$STEPS" --threads "$THREADS" \
  --tokens 64 --repeats 5)
echo "$cpp"
py=$(OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 "$ROOT/bench/torch_decode.py" "$CKPT" \
  --steps "$STEPS" --threads "$THREADS" --new-tokens 64 --repeats 5)
echo "$py"
/usr/bin/python3 - "$cpp" "$py" <<'PY'
import json, sys
c, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pm = p.get("ms_per_token_median", p.get("ms_per_token"))
print(f"ponder {c['ms_per_token']:.3f} ms/token, pytorch {pm:.3f} ms/token: "
      f"{pm / c['ms_per_token']:.1f}x")
PY
