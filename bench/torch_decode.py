#!/usr/bin/python3
"""Times PyTorch greedy decoding with a KV cache (the `full` strategy) at batch 1.

Prefills a fixed prompt, then decodes new tokens one at a time, each with r core
iterations. Prints one JSON line with the median ms/token over the repeats.

  bench/torch_decode.py CHECKPOINT_DIR [--steps 32] [--threads 2]

On a loaded machine, OpenMP's busy-waiting can make --threads 2 many times slower;
OMP_WAIT_POLICY=PASSIVE (set in the environment) avoids that. The value is reported.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "reference"))
from huginn import Huginn, KVCache  # noqa: E402


def run_once(model, prompt, steps, new_tokens):
    cache = KVCache()
    t0 = time.perf_counter()
    logits = model(prompt, steps, init_scale=0.0, cache=cache)
    t1 = time.perf_counter()
    tok = logits[:, -1].argmax(-1, keepdim=True)
    out = [int(tok)]
    for _ in range(new_tokens - 1):
        logits = model(tok, steps, init_scale=0.0, cache=cache)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(tok))
    t2 = time.perf_counter()
    # new_tokens - 1 single-token forwards after the prefill produced the first token.
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(1, new_tokens - 1), out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--steps", type=int, default=32, help="core iterations per token (r)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    model = Huginn.from_dir(a.checkpoint, torch.float32)
    g = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, model.cfg.vocab_size, (1, a.prompt_len), generator=g)
    if a.prompt_len + a.new_tokens > model.cfg.block_size:
        p.error("prompt + new tokens exceed block_size")

    run_once(model, prompt, a.steps, 4)  # warm-up
    prefill, per_tok, outs = [], [], []
    for _ in range(a.repeats):
        pf, ms, out = run_once(model, prompt, a.steps, a.new_tokens)
        prefill.append(pf)
        per_tok.append(ms)
        outs.append(out)
    med = statistics.median(per_tok)
    print(json.dumps({
        "bench": "torch_decode",
        "checkpoint": a.checkpoint,
        "params": sum(q.numel() for q in model.parameters()),
        "threads": a.threads,
        "steps": a.steps,
        "batch": 1,
        "prompt_tokens": a.prompt_len,
        "new_tokens": a.new_tokens,
        "prefill_ms_median": round(statistics.median(prefill), 3),
        "ms_per_token_median": round(med, 3),
        "ms_per_token_runs": [round(x, 3) for x in per_tok],
        "tokens_per_s": round(1e3 / med, 2),
        "deterministic": all(o == outs[0] for o in outs),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
