#!/usr/bin/python3
"""Writes the JSONL workloads of ponder-micro (model/zoo/ponder-micro) from the held-out
split of model/reference/tasks.py (prompts never seen in training).

Each line: {"id", "prompt", "expected", "family", "difficulty", "class"}.

  chat.jsonl       easy families (copy, reverse, lookup), class "chat"
  math.jsonl       chain at every k = 1..12; class math_easy (k 1-4), math_medium (5-8),
                   math_hard (9-12)
  education.jsonl  concept_explanation (copy/lookup), wrong_answer_analysis (chain k 4-6),
                   complex_problem_solving (chain k 9-12)
  finance.jsonl    routine_transaction (lookup/copy), market_analysis (chain k 5-8),
                   risk_assessment (chain k 11-12)

Replay protocol (what the runtime does with a line): encode `prompt` with
add_special_tokens=false, prepend <|begin_text|>, generate greedily until <|end_text|>
(at most 16 new tokens); the text before <|end_text|> must equal `expected`.

    /usr/bin/python3 scenarios/workloads/make_workloads.py
"""

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "model", "reference"))
import tasks  # noqa: E402

SEED = 4242


def pool(family, levels, per_level):
    out = []
    for lvl in levels:
        out.extend(tasks.test_set(family, lvl, per_level, seed=SEED))
    return out


def pick(rng, examples, n):
    examples = list(examples)
    rng.shuffle(examples)
    return examples[:n]


def mixed(rng, parts, n):
    """n examples drawn evenly from the (family, levels) parts."""
    out = []
    per = [n // len(parts) + (1 if i < n % len(parts) else 0) for i in range(len(parts))]
    for (fam, levels), m in zip(parts, per):
        out.extend(pick(rng, pool(fam, levels, m), m))
    return out


def line(ex, cls):
    return {"prompt": ex["prompt"], "expected": ex["answer"], "family": ex["family"],
            "difficulty": ex["difficulty"], "class": cls}


def build():
    rng = random.Random(SEED)
    easy = [("copy", range(3, 9)), ("reverse", range(3, 9)), ("lookup", range(2, 7))]
    workloads = {}

    workloads["chat"] = [line(ex, "chat") for ex in mixed(rng, easy, 150)]

    math = []
    for cls, ks in (("math_easy", range(1, 5)), ("math_medium", range(5, 9)), ("math_hard", range(9, 13))):
        for k in ks:
            math.extend(line(ex, cls) for ex in tasks.test_set("chain", k, 13, seed=SEED))
    workloads["math"] = math

    workloads["education"] = (
        [line(ex, "concept_explanation") for ex in mixed(rng, [("copy", range(3, 9)), ("lookup", range(2, 7))], 50)]
        + [line(ex, "wrong_answer_analysis") for ex in mixed(rng, [("chain", range(4, 7))], 50)]
        + [line(ex, "complex_problem_solving") for ex in mixed(rng, [("chain", range(9, 13))], 50)])

    workloads["finance"] = (
        [line(ex, "routine_transaction") for ex in mixed(rng, [("lookup", range(2, 7)), ("copy", range(3, 9))], 50)]
        + [line(ex, "market_analysis") for ex in mixed(rng, [("chain", range(5, 9))], 50)]
        + [line(ex, "risk_assessment") for ex in mixed(rng, [("chain", range(11, 13))], 50)])

    for name, rows in workloads.items():
        rng.shuffle(rows)
        seen = set()
        for i, row in enumerate(rows):
            assert tasks.is_heldout(row["family"], row["prompt"]), row
            assert tasks.solve(row["family"], row["prompt"]) == row["expected"], row
            assert (row["family"], row["prompt"]) not in seen, row
            seen.add((row["family"], row["prompt"]))
            rows[i] = {"id": f"{name}-{i:04d}", **row}
    return workloads


def main():
    for name, rows in build().items():
        path = os.path.join(HERE, f"{name}.jsonl")
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        classes = {}
        for row in rows:
            classes[row["class"]] = classes.get(row["class"], 0) + 1
        print(f"{path}: {len(rows)} lines {classes}")


if __name__ == "__main__":
    main()
