#!/usr/bin/python3
"""Creates the committed test data under tests/data/.

  tests/data/tiny/          f32, tied head (+ stored tied copy and freqs_cis), seed 1
  tests/data/tiny-bf16/     bf16, separate lm_head, seed 2
  tests/data/goldens/tiny.json, tiny-bf16.json   reference logits (computed in float64)
  tests/data/goldens/tokenizer.json              encode() goldens

Golden logits are computed in float64 from the stored weights (bf16 converted exactly)
and rounded to 7 significant digits. The script checks itself: cached decoding equals
the full forward, and k iterations followed by m more from the returned state equal
k + m iterations.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_checkpoint  # noqa: E402
from bpe import Tokenizer  # noqa: E402
from huginn import Huginn, KVCache  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

MODELS = {
    "tiny": ["--seed", "1", "--dtype", "f32", "--store-tied-copy", "--freqs-cis"],
    "tiny-bf16": ["--seed", "2", "--dtype", "bf16", "--untied"],
}
SHAPE_ARGS = ["--n-embd", "64", "--n-heads", "4", "--intermediate", "160", "--prelude", "1",
              "--core", "3", "--coda", "2", "--block-size", "128"]

# Fixed prompts (ids < vocab_size; 406 is <|begin_text|> in the generated tokenizer).
PROMPTS = {
    1: [406],
    5: [406, 84, 258, 17, 32],
    17: [406, 54, 258, 33, 0, 255, 300, 301, 12, 405, 99, 1, 263, 128, 77, 200, 411],
}
STEPS = [1, 4, 16]
GIVEN_SEED = 1234
DECODE_PREFILL = 9
DECODE_NEW = 3
DECODE_STEPS = 4

TOKENIZER_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "the cat sat on the mat",
    "12 + 30 = 42",
    "What is 17 * 3? Answer: 51.",
    "1234567890",
    "a  b   c    d",
    "  leading and trailing spaces  ",
    "line one\nline two\n\nline four",
    "tabs\tand\tnewlines\n",
    "don't we'll they're I'm you've he'd it's",
    "Hello, world! (punctuation) [brackets] {braces} <angles> ...",
    "User: hi<|end_turn|>Assistant: hello",
    "<|begin_text|>The answer is 7.<|end_text|>",
    "snake_case_name = value_1; x+=y**2 -> z",
    "MiXeD CaSe WoRdS and UPPER lower",
    "",
]


def g7(x):
    """7 significant digits, as a float that json writes compactly."""
    return float("%.7g" % x)


def f32_repr(x):
    """Shortest decimal that round-trips the float32 value."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def rows(t):
    return [[g7(v) for v in row] for row in t.tolist()]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def check_decode(model, tokens, steps, prefill, tol):
    """Cached prefill + one-token steps vs the full forward; returns rows for positions
    prefill-1 .. T-1 from the cached run."""
    ids = torch.tensor([tokens])
    full = model(ids, steps, init_scale=0.0)[0]
    cache = KVCache()
    out = [model(ids[:, :prefill], steps, init_scale=0.0, cache=cache)[0, -1]]
    for t in range(prefill, len(tokens)):
        out.append(model(ids[:, t : t + 1], steps, init_scale=0.0, cache=cache)[0, -1])
    expect_slots = model.cfg.n_layers_in_prelude + model.cfg.n_layers_in_coda + steps * model.cfg.n_layers_in_recurrent_block
    assert cache.num_slots() == expect_slots, (cache.num_slots(), expect_slots)
    assert cache.seen == len(tokens)
    for i, row in enumerate(out):
        pos = prefill - 1 + i
        e = rel(row, full[pos])
        assert e < tol, f"decode mismatch at position {pos}: rel {e:.3e}"
    return torch.stack(out)


def check_continuation(model, ids, k, m):
    _, s = model(ids, k, init_scale=0.0, return_state=True)
    cont = model(ids, m, input_states=s)
    ref = model(ids, k + m, init_scale=0.0)
    e = rel(cont, ref)
    assert e < 1e-12, f"continuation mismatch k={k} m={m}: rel {e:.3e}"


def make_goldens(name, ckpt_dir):
    m64 = Huginn.from_dir(ckpt_dir, torch.float64)
    m32 = Huginn.from_dir(ckpt_dir, torch.float32)
    cfg = m64.cfg
    assert all(t < cfg.vocab_size for p in PROMPTS.values() for t in p)
    cases = []
    worst32 = 0.0
    for length, tokens in PROMPTS.items():
        ids = torch.tensor([tokens])
        for r in STEPS:
            logits = m64(ids, r, init_scale=0.0)[0]
            worst32 = max(worst32, rel(m32(ids, r, init_scale=0.0)[0].double(), logits))
            cases.append({"name": f"len{length}_r{r}_zero", "tokens": tokens, "steps": r,
                          "init": "zero", "logits": rows(logits)})
    # A given initial state for r=4 on the length-5 prompt.
    tokens = PROMPTS[5]
    g = torch.Generator().manual_seed(GIVEN_SEED)
    state = (torch.randn(len(tokens), cfg.n_embd, generator=g) * 0.5).to(torch.float32)
    state_list = [[f32_repr(v) for v in row] for row in state.tolist()]
    state64 = torch.tensor(state_list, dtype=torch.float32).double()[None]
    assert torch.equal(state64.float()[0], state)
    ids = torch.tensor([tokens])
    logits = m64(ids, 4, input_states=state64)[0]
    zero = m64(ids, 4, init_scale=0.0)[0]
    assert rel(logits, zero) > 1e-4, "the initial state should change the logits"
    worst32 = max(worst32, rel(m32(ids, 4, input_states=state64.float())[0].double(), logits))
    cases.append({"name": "len5_r4_given", "tokens": tokens, "steps": 4, "init": "given",
                  "state": state_list, "logits": rows(logits)})

    # Self-checks: continuation from a returned state, cached decoding.
    ids17 = torch.tensor([PROMPTS[17]])
    check_continuation(m64, ids17, 3, 5)
    check_continuation(m64, ids17, 1, 1)
    dec_tokens = PROMPTS[17][: DECODE_PREFILL + DECODE_NEW]
    dec = check_decode(m64, dec_tokens, DECODE_STEPS, DECODE_PREFILL, 1e-5)
    check_decode(m32, dec_tokens, DECODE_STEPS, DECODE_PREFILL, 1e-5)
    check_decode(m64, PROMPTS[17], 16, 1, 1e-5)
    decode = [{
        "name": f"decode_prefill{DECODE_PREFILL}_r{DECODE_STEPS}",
        "tokens": dec_tokens,
        "prefill": DECODE_PREFILL,
        "steps": DECODE_STEPS,
        "init": "zero",
        "positions": list(range(DECODE_PREFILL - 1, len(dec_tokens))),
        "logits": rows(dec),
    }]
    golden = {
        "model": name,
        "checkpoint": os.path.relpath(ckpt_dir, REPO),
        "vocab_size": cfg.vocab_size,
        "rows": cfg.padded_vocab_size,
        "cases": cases,
        "decode": decode,
    }
    return golden, worst32


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"), ensure_ascii=True)
        f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    a = p.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    gold_dir = os.path.join(a.out, "goldens")
    os.makedirs(gold_dir, exist_ok=True)
    for name, extra in MODELS.items():
        ckpt = os.path.join(a.out, name)
        make_checkpoint.main([ckpt] + SHAPE_ARGS + extra)
        golden, worst32 = make_goldens(name, ckpt)
        path = os.path.join(gold_dir, f"{name}.json")
        write_json(golden, path)
        print(f"{path}: {len(golden['cases'])} cases, {os.path.getsize(path)} bytes, "
              f"float32 forward vs golden: max rel L2 {worst32:.2e}")

    tok = Tokenizer.from_file(os.path.join(a.out, "tiny", "tokenizer.json"))
    assert tok.bos_id == PROMPTS[1][0], "the fixed prompts assume <|begin_text|> = 406"
    entries = []
    for text in TOKENIZER_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text, text
        entries.append({"text": text, "ids": ids})
    path = os.path.join(gold_dir, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    print(f"{path}: {len(entries)} strings")


if __name__ == "__main__":
    main()
