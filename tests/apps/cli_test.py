#!/usr/bin/env python3
"""Black-box tests of the `ponder` command line (the contracts external checks use).

usage: cli_test.py PONDER_BINARY TEST_DATA_DIR
Prints 'N passed, M failed' and exits non-zero on any failure.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

PONDER, DATA = sys.argv[1], sys.argv[2]
passed, failed = 0, 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"[ OK ] {name}")
    else:
        failed += 1
        print(f"[FAIL] {name} {detail}")


def run(*args):
    return subprocess.run([PONDER, *args], capture_output=True, text=True, timeout=120)


def rel_l2(a, b):
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(y * y for y in b)
    return math.sqrt(num / den)


golden = json.load(open(os.path.join(DATA, "goldens", "tiny.json")))
for case in golden["cases"]:
    if case["init"] != "zero" or case["steps"] > 4:
        continue
    toks = ",".join(str(t) for t in case["tokens"])
    p = run("logits", "--model", os.path.join(DATA, "tiny"), "--tokens", toks,
            "--steps", str(case["steps"]), "--init-scale", "0")
    ok = p.returncode == 0
    out = json.loads(p.stdout) if ok else {}
    rows = out.get("logits", [])
    flat = [x for r in rows for x in r]
    want = [x for r in case["logits"] for x in r]
    check(f"logits {case['name']}",
          ok and len(rows) == len(case["tokens"]) and len(flat) == len(want)
          and rel_l2(flat, want) < 1e-4, p.stderr[-300:])

# Errors: stderr, non-zero exit, no crash (a signal gives a negative return code).
p = run("logits", "--model", "/nonexistent", "--tokens", "1,2")
check("missing model dir is an error", p.returncode == 1 and "nonexistent" in p.stderr, p.stderr)
p = run("logits", "--model", os.path.join(DATA, "tiny"), "--tokens", "1,x")
check("bad token list is an error", p.returncode == 1 and "x" in p.stderr, p.stderr)
p = run("logits", "--model", os.path.join(DATA, "tiny"), "--tokens", "1,99999", "--steps", "1")
check("out-of-vocabulary token is an error", p.returncode == 1 and "99999" in p.stderr, p.stderr)
p = run("logits", "--model", os.path.join(DATA, "tiny"), "--tokens", "1,2", "--backend", "tpu")
check("unknown backend is an error", p.returncode != 0 and "tpu" in p.stderr, p.stderr)
# --backend cuda: the logits of the CPU where a device is present, else an error naming it.
p = run("logits", "--model", os.path.join(DATA, "tiny"), "--tokens", "1,2", "--steps", "2",
        "--backend", "cuda")
check("--backend cuda runs or says why not",
      p.returncode == 0 or (p.returncode == 1 and "backend cuda" in p.stderr), p.stderr)
with tempfile.TemporaryDirectory() as tmp:
    for f in ("config.json", "tokenizer.json"):
        with open(os.path.join(DATA, "tiny", f), "rb") as src, \
                open(os.path.join(tmp, f), "wb") as dst:
            dst.write(src.read())
    blob = open(os.path.join(DATA, "tiny", "model.safetensors"), "rb").read()
    open(os.path.join(tmp, "model.safetensors"), "wb").write(blob[: len(blob) // 2])
    p = run("generate", "--model", tmp, "--prompt", "hi", "--steps", "2")
    check("truncated checkpoint is an error", p.returncode == 1 and "model.safetensors" in p.stderr,
          p.stderr)

# generate: deterministic with a seed, JSON shape.
args = ("generate", "--model", os.path.join(DATA, "tiny"), "--prompt", "The answer is",
        "--steps", "4", "--max-tokens", "8", "--seed", "3", "--temperature", "0.8", "--json")
a, b = run(*args), run(*args)
ok = a.returncode == 0 and b.returncode == 0
ja = json.loads(a.stdout) if ok else {}
check("generate --json fields", ok and {"text", "tokens", "finish_reason"} <= set(ja), a.stderr)
jb = json.loads(b.stdout) if ok else {}
check("generate is deterministic for a seed",
      ok and ja["tokens"] == jb["tokens"] and len(ja["tokens"]) == 8)
c = run(*args[:-4], "4", "--temperature", "0.8", "--json")
check("another seed samples differently",
      c.returncode == 0 and json.loads(c.stdout)["tokens"] != ja.get("tokens"))
p = run("inspect", "--model", os.path.join(DATA, "tiny"), "--steps", "32", "--json")
ok = p.returncode == 0
info = json.loads(p.stdout) if ok else {}
check("inspect reports layers from the file",
      ok and info["layers"] == {"prelude": 1, "core": 3, "coda": 2}, p.stderr)
check("inspect kv full > compress", ok and info["kv_cache"]["full"]["bytes_per_token"]
      > info["kv_cache"]["compress-s3"]["bytes_per_token"])

# Per-token exits: steps per token within [min, max], reasons named, deterministic.
p = run("generate", "--model", os.path.join(DATA, "tiny"), "--prompt", "The answer is",
        "--steps", "32", "--min-steps", "3", "--exit", "latent-diff", "--exit-threshold", "0.01",
        "--max-tokens", "6", "--json")
ok = p.returncode == 0
ad = json.loads(p.stdout) if ok else {}
steps = [t["steps"] for t in ad.get("per_token", [])]
check("adaptive generate exits per token",
      ok and len(steps) == 6 and all(3 <= s <= 32 for s in steps)
      and any(t["exit"] == "converged" for t in ad["per_token"]), p.stderr)
p = run("generate", "--model", os.path.join(DATA, "tiny"), "--prompt", "x", "--exit", "klx")
check("unknown exit rule is an error", p.returncode == 1 and "klx" in p.stderr, p.stderr)
p = run("replay", "--model", os.path.join(DATA, "tiny"), "--workload", "x.jsonl", "--fixed-steps",
        "2", "--profile", "p.json")
check("replay --fixed-steps with --profile is refused", p.returncode != 0
      and "--fixed-steps excludes --profile" in p.stderr, p.stderr)
p = run("generate", "--model", os.path.join(DATA, "tiny"), "--prompt", "x", "--min-steps", "3")
check("generate --min-steps without --exit is refused", p.returncode != 0
      and "--min-steps requires --exit" in p.stderr, p.stderr)
for flag, value in (("--temperature", "nan"), ("--top-p", "0"), ("--init-scale", "inf"),
                    ("--exit-threshold", "-1")):
    p = run("generate", "--model", os.path.join(DATA, "tiny"), "--prompt", "x", "--exit", "kl",
            flag, value)
    check(f"{flag} {value} is refused, naming the flag",
          p.returncode != 0 and flag in p.stderr and "finite" in p.stderr, p.stderr)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
