#!/usr/bin/python3
"""Writes the JSONL workloads of ponder-micro (model/zoo/ponder-micro) from the held-out
split of model/reference/tasks.py (prompts never seen in training).

Each line: {"id", "prompt", "expected", "family", "difficulty", "class"}.

  chat.jsonl       easy families (copy, reverse, lookup), class "chat"
  math.jsonl       chain at every k = 1..24; class math_easy (k 1-8), math_medium (9-16),
                   math_hard (17-24)
  education.jsonl  concept_explanation (copy/lookup), wrong_answer_analysis (chain k 5-10),
                   complex_problem_solving (chain k 17-24)
  finance.jsonl    routine_transaction (lookup/copy), market_analysis (chain k 9-16),
                   risk_assessment (chain k 21-24)

Calibration workloads (`ponder calibrate`, policy/README.md "Calibration"), drawn with a
different seed and no prompt in common with any evaluation workload above (asserted), 300
items per class, the same class mix:

  calibration/education.jsonl, calibration/finance.jsonl, calibration/chat.jsonl

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
CALIBRATION_SEED = 9191  # calibration sets: another seed, and evaluation prompts excluded
CALIBRATION_PER_CLASS = 300

# (class, [(family, levels), ...]) of each domain workload, in the order they are drawn.
EASY = [("copy", range(3, 9)), ("reverse", range(3, 9)), ("lookup", range(2, 7))]
CLASSES = {
    "chat": [("chat", EASY)],
    "education": [
        ("concept_explanation", [("copy", range(3, 9)), ("lookup", range(2, 7))]),
        ("wrong_answer_analysis", [("chain", range(5, 11))]),
        ("complex_problem_solving", [("chain", range(17, 25))]),
    ],
    "finance": [
        ("routine_transaction", [("lookup", range(2, 7)), ("copy", range(3, 9))]),
        ("market_analysis", [("chain", range(9, 17))]),
        ("risk_assessment", [("chain", range(21, 25))]),
    ],
}


def pool(family, levels, per_level, seed=SEED, exclude=frozenset()):
    out = []
    for lvl in levels:
        out.extend(ex for ex in tasks.test_set(family, lvl, per_level, seed=seed)
                   if ex["prompt"] not in exclude)
    return out


def pick(rng, examples, n):
    examples = list(examples)
    rng.shuffle(examples)
    return examples[:n]


def mixed(rng, parts, n, seed=SEED, exclude=frozenset()):
    """n examples drawn evenly from the (family, levels) parts (prompts in `exclude` left out)."""
    out = []
    per = [n // len(parts) + (1 if i < n % len(parts) else 0) for i in range(len(parts))]
    for (fam, levels), m in zip(parts, per):
        examples = pool(fam, levels, m, seed, exclude)
        assert len(examples) >= m, (fam, list(levels), len(examples), m)
        out.extend(pick(rng, examples, m))
    return out


def line(ex, cls):
    return {"prompt": ex["prompt"], "expected": ex["answer"], "family": ex["family"],
            "difficulty": ex["difficulty"], "class": cls}


def domain(rng, name, per_class, seed=SEED, exclude=frozenset()):
    """The rows of a domain workload: per_class examples of each of its classes."""
    return [line(ex, cls) for cls, parts in CLASSES[name]
            for ex in mixed(rng, parts, per_class, seed, exclude)]


def finish(workloads, rng, suffix=""):
    """Shuffles each workload, checks its rows and numbers them ("<name><suffix>-0000")."""
    for name, rows in workloads.items():
        rng.shuffle(rows)
        seen = set()
        for i, row in enumerate(rows):
            assert tasks.is_heldout(row["family"], row["prompt"]), row
            assert tasks.solve(row["family"], row["prompt"]) == row["expected"], row
            assert (row["family"], row["prompt"]) not in seen, row
            seen.add((row["family"], row["prompt"]))
            rows[i] = {"id": f"{name}{suffix}-{i:04d}", **row}
    return workloads


def build():
    rng = random.Random(SEED)
    workloads = {}

    workloads["chat"] = domain(rng, "chat", 150)

    math = []
    for cls, ks in (("math_easy", range(1, 9)), ("math_medium", range(9, 17)), ("math_hard", range(17, 25))):
        for k in ks:
            math.extend(line(ex, cls) for ex in tasks.test_set("chain", k, 7, seed=SEED))
    workloads["math"] = math

    workloads["education"] = domain(rng, "education", 50)
    workloads["finance"] = domain(rng, "finance", 50)
    return finish(workloads, rng)


def build_calibration(evaluation):
    """Calibration workloads: CALIBRATION_PER_CLASS items per class, another seed, and no
    prompt of any evaluation workload (calibrating on evaluation data would void the
    guarantee the evaluation is meant to check)."""
    used = frozenset(row["prompt"] for rows in evaluation.values() for row in rows)
    rng = random.Random(CALIBRATION_SEED)
    workloads = {name: domain(rng, name, CALIBRATION_PER_CLASS, CALIBRATION_SEED, used)
                 for name in ("education", "finance", "chat")}
    finish(workloads, rng, "-cal")
    for rows in workloads.values():
        common = used.intersection(row["prompt"] for row in rows)
        assert not common, sorted(common)[:5]
    return workloads


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    classes = {}
    for row in rows:
        classes[row["class"]] = classes.get(row["class"], 0) + 1
    print(f"{path}: {len(rows)} lines {classes}")


def main():
    evaluation = build()
    for name, rows in evaluation.items():
        write(os.path.join(HERE, f"{name}.jsonl"), rows)
    for name, rows in build_calibration(evaluation).items():
        write(os.path.join(HERE, "calibration", f"{name}.jsonl"), rows)


if __name__ == "__main__":
    main()
