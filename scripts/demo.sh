#!/usr/bin/env bash
# The demo: generation at several fixed depths on the small test checkpoint.
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$ROOT/tests/data/tiny
PONDER=$BUILD/apps/ponder
echo "== ponder inspect --model $MODEL"
"$PONDER" inspect --model "$MODEL" --steps 32
for r in 1 4 32; do
  echo
  echo "== ponder generate --model $MODEL --prompt 'The answer is' --steps $r --max-tokens 24"
  "$PONDER" generate --model "$MODEL" --prompt "The answer is" --steps "$r" --max-tokens 24
done
