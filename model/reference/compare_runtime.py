#!/usr/bin/python3
"""The C++ runtime against the PyTorch reference on the same held-out examples.

Writes the held-out split (per family and level, --per-level examples) as a workload
JSONL, scores it with `ponder replay --fixed-steps r --json` and with the reference's
greedy decoding (evaluate.py) at each depth, and prints accuracy per family and depth
for both, with the difference in points. With --init-scale 0 (the zero initial state)
both compute the same function and answers should agree one by one; with the default
random state (init_scale 1) each runtime draws from its own generator, so single
answers may differ and only the accuracies should agree (within sampling noise).

    /usr/bin/python3 model/reference/compare_runtime.py model/zoo/ponder-micro \\
        --ponder build/apps/ponder [--per-level 50] [--depths 1,2,4,8,16,32,64]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import evaluate  # noqa: E402
import tasks  # noqa: E402
from bpe import Tokenizer  # noqa: E402
from huginn import Huginn  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--ponder", required=True, help="path of the ponder binary")
    ap.add_argument("--per-level", type=int, default=50)
    ap.add_argument("--depths", default="1,2,4,8,16,32,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-scale", type=float, default=1.0)
    ap.add_argument("--out", help="write the comparison as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    depths = [int(x) for x in a.depths.split(",")]
    examples = []
    for fam in tasks.FAMILIES:
        lo, hi = tasks.LEVELS[fam]
        for level in range(lo, hi + 1):
            for ex in tasks.test_set(fam, level, a.per_level):
                examples.append({"id": f"{fam}-{level}-{len(examples)}", "prompt": ex["prompt"],
                                 "expected": ex["answer"], "family": fam,
                                 "difficulty": level, "class": fam})
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
        path = f.name
    cpp = {}
    for r in depths:
        out = subprocess.run([a.ponder, "replay", "--model", a.model, "--workload", path,
                              "--fixed-steps", str(r), "--json", "--threads", str(a.threads),
                              "--init-scale", str(a.init_scale)],
                             capture_output=True, text=True, check=True)
        cpp[r] = json.loads(out.stdout)["families"]
    os.unlink(path)
    model = Huginn.from_dir(a.model)
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    res = evaluate.run_examples(model, tok, examples, depths, init_scale=a.init_scale, seed=0,
                                mode="greedy")
    ref = evaluate.summarize(examples, res, ["family"])["family"]
    worst = 0.0
    rows = []
    print(f"{'family':10s} {'n':>5s}  " + "  ".join(f"r={r:<3d} torch/c++ " for r in depths))
    for fam in tasks.FAMILIES:
        n = ref[fam]["n"]
        cells = []
        for r in depths:
            t, c = ref[fam][str(r)], cpp[r][fam]["accuracy"]
            worst = max(worst, abs(t - c))
            cells.append(f"{100 * t:5.1f}/{100 * c:5.1f}")
            rows.append({"family": fam, "steps": r, "torch": t, "cpp": c, "n": n})
        print(f"{fam:10s} {n:5d}  " + "  ".join(f"{cell:14s}" for cell in cells))
    print(f"largest difference: {100 * worst:.1f} points")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "max_abs_diff": worst}, f, indent=1)


if __name__ == "__main__":
    main()
