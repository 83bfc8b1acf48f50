#!/usr/bin/python3
"""Writes tests/data/goldens/exits.json: per-token exits of the bundled model, in float64.

Regenerate (after retraining model/zoo/ponder-micro, or after changing the exit algorithm)
from the repository root with

    nice -n 19 /usr/bin/python3 model/reference/make_exit_goldens.py     (~2 min, 1 thread)

then run the C++ check: ponder_exec_test --gtest_filter='ExitGolden*'.

Each case runs adaptive.generate_adaptive (the PyTorch reference of exec::GenerateAdaptive,
step for step) on a prompt of scenarios/workloads/{education,finance}.jsonl, encoded as the
replay does (<|begin_text|>, then the prompt without specials), greedy, from the zero state
(init_scale 0) unless the case says otherwise. Nothing here depends on the current weights:
each case's threshold (and gate) is picked by this script from a fixed list of candidates,
as the one that spreads the tokens' exit depths most while keeping every threshold
comparison at least MIN_MARGIN (relative) away from a tie and giving the same trace when
the model runs in float32 (as the C++ runtime does), so the goldens stay meaningful after a
retrain. Per token the file holds the token, steps, reason, the rule's value at
the deciding check (`signal`), the smallest relative distance of any of the token's
threshold comparisons (rule and gate) to its threshold (`margin`), the smallest top-1 minus
top-2 logit gap of the logits rows it decided on (`gap`) and its check counts; a C++
difference is only acceptable at a token whose margin or gap says it was a near tie.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from adaptive import AdaptiveKVCache, generate_adaptive  # noqa: E402
from bpe import Tokenizer  # noqa: E402
from huginn import Huginn, KVCache  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
MODEL = "model/zoo/ponder-micro"
OUT = "tests/data/goldens/exits.json"
WORKLOADS = ["scenarios/workloads/education.jsonl", "scenarios/workloads/finance.jsonl"]
MAX_PROMPT_TOKENS = 24  # the model's context is 64 tokens
MIN_MARGIN = 0.02  # preferred distance of every threshold comparison from a tie (relative)
MIN_GAP = 1e-3  # preferred top-1 minus top-2 logit gap of the decisions

THRESHOLDS = {
    "kl": [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5],
    "minp-kl": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
    "entropy-diff": [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5],
    "latent-diff": [0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 5e-3, 2e-3, 1e-3],
    "cosine": [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5],
    "argmax-stability": [1, 2, 3, 4, 6],
    "none": [0.0],
}
GATES = [0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 5e-3]

BASE = dict(min_steps=1, max_steps=24, check_every=1, check_from=1, gate_latent_below=None,
            warm_start=False, kv="full", max_tokens=12, stop_at_eos=True, init_scale=0.0,
            seed=0)

# (name, prompt index, overrides of BASE). "gate": "auto" picks the gate from GATES.
CASES = [
    ("kl-full", 0, dict(rule="kl")),
    ("kl-compress-s2", 1, dict(rule="kl", kv="compress-s2", stop_at_eos=False)),
    ("minp-kl-full", 6, dict(rule="minp-kl", stop_at_eos=False)),
    ("minp-kl-compress-s2", 3, dict(rule="minp-kl", kv="compress-s2", stop_at_eos=False)),
    ("entropy-diff-full", 4, dict(rule="entropy-diff", min_steps=2)),
    ("entropy-diff-compress-s2", 5, dict(rule="entropy-diff", kv="compress-s2",
                                         stop_at_eos=False)),
    ("latent-diff-full", 6, dict(rule="latent-diff", stop_at_eos=False)),
    ("latent-diff-compress-s2", 7, dict(rule="latent-diff", kv="compress-s2")),
    ("cosine-full", 1, dict(rule="cosine")),
    ("cosine-compress-s2", 0, dict(rule="cosine", kv="compress-s2", stop_at_eos=False)),
    ("argmax-stability-full", 3, dict(rule="argmax-stability", stop_at_eos=False)),
    ("argmax-stability-compress-s2", 7, dict(rule="argmax-stability", kv="compress-s2",
                                             stop_at_eos=False)),
    ("none-full", 2, dict(rule="none", max_steps=8, max_tokens=6)),
    ("none-compress-s2", 4, dict(rule="none", kv="compress-s2", max_steps=6, max_tokens=8,
                                 stop_at_eos=False)),
    ("kl-every3-from4", 7, dict(rule="kl", min_steps=2, check_every=3, check_from=4,
                                stop_at_eos=False)),
    ("entropy-diff-every2-from3-compress-s2", 6,
     dict(rule="entropy-diff", check_every=2, check_from=3, kv="compress-s2", stop_at_eos=False)),
    ("latent-diff-min4-max10", 0, dict(rule="latent-diff", min_steps=4, max_steps=10,
                                       check_every=2, check_from=1, stop_at_eos=False)),
    ("kl-gated", 9, dict(rule="kl", gate_latent_below="auto", stop_at_eos=False)),
    ("argmax-stability-gated-compress-s2", 1,
     dict(rule="argmax-stability", gate_latent_below="auto", kv="compress-s2",
          stop_at_eos=False)),
    ("latent-diff-warm", 3, dict(rule="latent-diff", warm_start=True, stop_at_eos=False)),
    ("kl-warm-compress-s2", 10, dict(rule="kl", warm_start=True, kv="compress-s2",
                                     stop_at_eos=False)),
    ("cosine-warm-min3", 11, dict(rule="cosine", warm_start=True, min_steps=3,
                                  stop_at_eos=False)),
    ("kl-compress-s3", 8, dict(rule="kl", kv="compress-s3", stop_at_eos=False)),
    ("kl-init-scale1", 7, dict(rule="kl", init_scale=1.0, seed=7, stop_at_eos=False)),
]


def load_prompts(tok, per_family=2):
    """From each workload file, the first `per_family` items of each family (in file order)
    whose encoding fits MAX_PROMPT_TOKENS; ordered by rank within the family, then family
    (first appearance), alternating between the files."""
    per_file = []
    for rel in WORKLOADS:
        by_family = {}
        with open(os.path.join(REPO, rel)) as f:
            for line in f:
                if not line.strip():
                    continue
                it = json.loads(line)
                ids = [tok.bos_id] + tok.encode(it["prompt"])
                got = by_family.setdefault(it["family"], [])
                if len(got) < per_family and len(ids) <= MAX_PROMPT_TOKENS:
                    got.append({"id": it["id"], "prompt": it["prompt"], "ids": ids})
        per_file.append([fam[r] for r in range(per_family) for fam in by_family.values()
                         if r < len(fam)])
    out = []
    for i in range(max(len(c) for c in per_file)):
        for c in per_file:
            if i < len(c):
                out.append(c[i])
    return out


def run(model, ids, settings, eos):
    s = dict(settings)
    return generate_adaptive(
        model, ids, rule=s["rule"], threshold=s["threshold"], min_steps=s["min_steps"],
        max_steps=s["max_steps"], check_every=s["check_every"], check_from=s["check_from"],
        gate_latent_below=s["gate_latent_below"], warm_start=s["warm_start"], kv=s["kv"],
        max_tokens=s["max_tokens"], eos=eos if s["stop_at_eos"] else None,
        init_scale=s["init_scale"], seed=s["seed"])


def score(trace, settings):
    """(robust, spread): robust when no comparison is within MIN_MARGIN of a tie and no
    decision within MIN_GAP; spread rewards distinct depths, then a mix of reasons."""
    robust = all((t["margin"] is None or t["margin"] >= MIN_MARGIN) and t["gap"] >= MIN_GAP
                 for t in trace)
    steps = [t["steps"] for t in trace]
    reasons = {t["reason"] for t in trace}
    spread = len(set(steps)) + (0.5 if len(reasons) > 1 else 0.0)
    if settings["rule"] != "none" and all(s == settings["max_steps"] for s in steps):
        spread -= 10  # the rule never fired
    return robust, spread


def pick(model, model32, ids, settings, eos, verbose=False):
    """The (threshold, gate) candidate with the best spread, robust ones first. A candidate
    is robust when its comparisons keep MIN_MARGIN / MIN_GAP from ties and the same case
    run in float32 (what the C++ runtime computes in) gives the same trace."""
    gates = GATES if settings["gate_latent_below"] == "auto" else [settings["gate_latent_below"]]
    best = None
    for th in THRESHOLDS[settings["rule"]]:
        for g in gates:
            s = dict(settings, threshold=th, gate_latent_below=g)
            trace = run(model, ids, s, eos)
            robust, spread = score(trace, s)
            if g is not None:  # a gate that never shuts (or never opens) tests nothing
                shut = sum(t["latent_checks"] - t["logit_checks"] for t in trace)
                opened = sum(t["logit_checks"] for t in trace)
                spread += 1.0 if shut > 0 and opened > 0 else -10
            key = (robust, spread)
            if robust and (best is None or key > best[0]):
                trace32 = run(model32, ids, s, eos)
                robust = [(t["token"], t["steps"], t["reason"]) for t in trace32] == \
                    [(t["token"], t["steps"], t["reason"]) for t in trace]
                key = (robust, spread)
            if verbose:
                print(f"    th={th:<8g} gate={g} robust={robust} spread={spread} "
                      f"steps={[t['steps'] for t in trace]}")
            if best is None or key > best[0]:
                best = (key, s, trace)
    (robust, _), s, trace = best
    if not robust:
        print(f"  warning: no robust threshold for {settings['rule']}; near ties are recorded")
    return s, trace


def self_check(model, cfg, ids, eos):
    """The cache rules against plain forward passes: with every token at the same depth
    (rule none) the adaptive loop equals cached forward passes with huginn.KVCache, and
    compress-sN whose ring never wraps equals full."""
    steps = 5
    trace = generate_adaptive(model, ids, rule="none", max_steps=steps, max_tokens=5, eos=None)
    cache, inp, want = KVCache(), list(ids), []
    for _ in range(5):
        logits = model(torch.tensor([inp]), num_steps=steps, init_scale=0.0, cache=cache)
        want.append(int(torch.argmax(logits[0, -1, :cfg.vocab_size])))
        inp = [want[-1]]
    got = [t["token"] for t in trace]
    assert got == want, f"self-check: adaptive 'none' {got} != cached forward {want}"
    ring = cfg.n_layers_in_recurrent_block * 24
    a = generate_adaptive(model, ids, rule="kl", threshold=1e-3, max_steps=24, max_tokens=6)
    b = generate_adaptive(model, ids, rule="kl", threshold=1e-3, max_steps=24, max_tokens=6,
                          kv=f"compress-s{ring}")
    assert [(t["token"], t["steps"]) for t in a] == [(t["token"], t["steps"]) for t in b], \
        "self-check: compress-s{ring} differs from full"
    assert isinstance(AdaptiveKVCache(cfg, "compress-s2").ring, int)


def rounded(x, digits):
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, MODEL))
    ap.add_argument("--out", default=os.path.join(REPO, OUT))
    ap.add_argument("--verbose", action="store_true", help="print every candidate")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model = Huginn.from_dir(args.model, dtype=torch.float64)
    model32 = Huginn.from_dir(args.model, dtype=torch.float32)
    cfg = model.cfg
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    eos = tok.eos_id if tok.eos_id is not None else int(cfg.raw["eos_token_id"])
    prompts = load_prompts(tok)
    self_check(model, cfg, prompts[0]["ids"], eos)
    cases = []
    for name, pi, over in CASES:
        p = prompts[pi % len(prompts)]
        settings = dict(BASE, **over)
        s, trace = pick(model, model32, p["ids"], settings, eos, args.verbose)
        steps = [t["steps"] for t in trace]
        print(f"{name:40s} {s['rule']:17s} th={s['threshold']:<8g} gate={s['gate_latent_below']} "
              f"steps={steps}")
        cases.append({
            "name": name,
            "prompt_id": p["id"],
            "prompt": p["prompt"],
            "prompt_ids": p["ids"],
            "rule": s["rule"],
            "threshold": s["threshold"],
            "min_steps": s["min_steps"],
            "max_steps": s["max_steps"],
            "check_every": s["check_every"],
            "check_from": s["check_from"],
            "gate_latent_below": s["gate_latent_below"],
            "warm_start": s["warm_start"],
            "kv": s["kv"],
            "max_tokens": s["max_tokens"],
            "stop_ids": [eos] if s["stop_at_eos"] else [],
            "init_scale": s["init_scale"],
            "seed": s["seed"],
            "tokens": [t["token"] for t in trace],
            "steps": steps,
            "reasons": [t["reason"] for t in trace],
            "signal": [rounded(t["signal"], 7) for t in trace],
            "margin": [rounded(t["margin"], 4) for t in trace],
            "gap": [rounded(t["gap"], 4) for t in trace],
            "latent_checks": [t["latent_checks"] for t in trace],
            "logit_checks": [t["logit_checks"] for t in trace],
        })
    doc = {
        "about": "Per-token exits of model/zoo/ponder-micro from the PyTorch reference in "
                 "float64 (model/reference/adaptive.py); written by "
                 "model/reference/make_exit_goldens.py. Per case and token: token, steps, "
                 "reason; signal = the rule's value at the deciding check (argmax-stability: "
                 "the streak; null: no evaluated check at the exit step, or not finite); margin = min "
                 "|value - threshold| / threshold over the token's rule and gate comparisons; "
                 "gap = min top-1 minus top-2 logit over the logits it decided on.",
        "model": MODEL,
        "dtype": "float64",
        "greedy": True,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out} ({os.path.getsize(args.out)} bytes) "
          f"in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
