#!/usr/bin/python3
"""One core iteration of the PyTorch reference (model/reference/huginn.py) at Huginn-0125
width (n_embd 5280, 55 heads, mlp 17920, 4 core layers), f32, batch B, one new token per
sequence: the baseline beside build/bench/core_iteration_bench.

    /usr/bin/python3 bench/torch_core_iteration.py [--threads 2] [--batch 1] [--repeats 7]
Prints one JSON line with the median ms per iteration.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model",
                                "reference"))
from huginn import Huginn, HuginnConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = HuginnConfig(dict(n_embd=5280, n_heads=55, intermediate_size=17920, vocab_size=64,
                            n_layers_in_prelude=0, n_layers_in_recurrent_block=4,
                            n_layers_in_coda=0, block_size=4096))
    model = Huginn(cfg).eval()
    d = cfg.n_embd
    s = torch.randn(args.batch, 1, d) * 0.6
    e = torch.randn(args.batch, 1, d)
    cos, sin = model._rope(0, 1)
    times = []
    with torch.no_grad():
        model.core_step(s, e, cos, sin, 1)  # warm-up
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.core_step(s, e, cos, sin, 1)
            times.append(time.perf_counter() - t0)
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if n.startswith("transformer.core_block") or n.startswith("transformer.adapter"))
    print(json.dumps({"bench": "torch_core_iteration", "threads": args.threads,
                      "batch": args.batch, "dtype": "f32", "weight_bytes": weights * 4,
                      "median_ms": round(1e3 * statistics.median(times), 2),
                      "runs_ms": [round(1e3 * t, 2) for t in times]}))


if __name__ == "__main__":
    main()
