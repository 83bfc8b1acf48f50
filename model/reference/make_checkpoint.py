#!/usr/bin/python3
"""Writes a random checkpoint directory in the Huginn layout.

Output: config.json, model.safetensors (F32 or BF16) and tokenizer.json (a small
byte-level BPE trained on the text below). Weights are random but non-degenerate:
RMSNorm weights around 1, small random qk_bias, matrices scaled by 1/sqrt(fan_in),
and a recurrence that contracts so that many iterations stay numerically stable.
"""

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
from huginn import freqs_cis_buffer  # noqa: E402
from safetensors_io import save_file  # noqa: E402

CORPUS = """\
The quick brown fox jumps over the lazy dog. A recurrent model thinks in a loop: it reads
the prompt once, then iterates a small block of layers many times before it answers. The
more it iterates, the more time it has to think about the question. When the state stops
changing, the model can stop early and write the next token.

Once upon a time there was a little robot who liked to count. Every morning it counted the
birds in the garden, the clouds in the sky and the steps from the door to the tree. One day
the robot met a cat. "What are you doing?" asked the cat. "I am counting," said the robot.
"Counting is easy," said the cat, "but thinking is hard." The robot thought about that for
a long time, and then it thought about it some more.

We write the answer after the equals sign. Here are some sums and products:
1 + 2 = 3. 2 + 2 = 4. 3 + 4 = 7. 5 + 5 = 10. 6 + 7 = 13. 8 + 9 = 17. 12 + 30 = 42.
9 - 4 = 5. 10 - 3 = 7. 15 - 6 = 9. 100 - 1 = 99. 7 * 3 = 21. 9 * 9 = 81. 6 * 8 = 48.
4 * 25 = 100. 64 / 8 = 8. 81 / 9 = 9. 2 + 3 * 4 = 14. (2 + 3) * 4 = 20.
Question: What is 17 + 25? Answer: 42. Question: What is 13 * 3? Answer: 39.
Question: What is 250 - 125? Answer: 125. Question: What is 144 / 12? Answer: 12.
The chain +4 *3 +7 *9 = 1 is evaluated from left to right, modulo ten.

It is important to check the work. If the first answer is wrong, try again, and think about
each step. Numbers can be added in any order, but subtraction and division cannot. The sum
of two even numbers is even, and the sum of an even and an odd number is odd. There are
ten digits: 0, 1, 2, 3, 4, 5, 6, 7, 8 and 9.

User: Can you tell me the capital of France?
Assistant: The capital of France is Paris. It is a large city on the river Seine.
User: And what about Germany?
Assistant: The capital of Germany is Berlin.
User: Thanks! What is the weather like today?
Assistant: I don't know the weather today, but I can tell you how to find out.

Reading and writing are the things that people do with language. A language model learns
to predict the next word from the words that came before it. It doesn't know what the
words mean, but it learns which words go together. They're trained on a lot of text, and
we've seen that they can do surprising things. I'll show you: the cat sat on the mat, and
the dog sat on the log. She said that she'd come back later, and then she left.
"""

PRESETS = {
    # About 1M parameters: the width and depth of the small pilot model.
    "bench-1m": dict(n_embd=128, n_heads=4, intermediate=384, prelude=1, core=2, coda=1, dtype="f32"),
}


def build_tokenizer(num_merges):
    vocab, merges = bpe.train(CORPUS, num_merges)
    return bpe.build_tokenizer_json(vocab, merges)


def round_up(x, m):
    return (x + m - 1) // m * m


def make_config(a, vocab_size, special_ids):
    d = a.n_embd
    n_layers = a.prelude + a.core + a.coda
    std = math.sqrt(2.0 / (5.0 * d))
    mean_rec = a.mean_recurrence
    eff_depth = a.prelude + a.coda + a.core * mean_rec
    return {
        "architectures": ["RavenForCausalLM"],
        "model_type": "huginn_raven",
        "n_embd": d,
        "n_heads": a.n_heads,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_heads,
        "head_dim": d // a.n_heads,
        "intermediate_size": a.intermediate,
        "vocab_size": vocab_size,
        "padded_vocab_size": round_up(vocab_size, 8),
        "n_layers": n_layers,
        "n_layers_in_prelude": a.prelude,
        "n_layers_in_recurrent_block": a.core,
        "n_layers_in_coda": a.coda,
        "block_size": a.block_size,
        "rope_base": a.rope_base,
        "norm_eps": 1e-6,
        "bias": False,
        "qk_bias": True,
        "tie_embeddings": not a.untied,
        "mean_recurrence": mean_rec,
        "mean_backprop_depth": max(1, mean_rec // 4),
        "injection_type": "linear",
        "state_init": "like-init",
        "block_class_name": "SandwichBlock",
        "mlp_class_name": "GatedMLP",
        "nonlin_name": "SiLU",
        "norm_class_name": "RMSNorm_llama",
        "init_strategy": "takase",
        "init_values": {
            "std": std,
            "out_proj": std / math.sqrt(2.0 * eff_depth),
            "embedding": std,
            "embed_scale": math.sqrt(d),
        },
        "bos_token_id": special_ids["<|begin_text|>"],
        "eos_token_id": special_ids["<|end_text|>"],
        "pad_token_id": special_ids["<|pad|>"],
        "torch_dtype": "float32" if a.dtype == "f32" else "bfloat16",
    }


def make_weights(cfg, a, gen):
    d = cfg["n_embd"]
    f = cfg["intermediate_size"]
    H = cfg["n_heads"]
    hd = cfg["head_dim"]
    V = cfg["padded_vocab_size"]

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std + mean

    w = {}
    w["transformer.wte.weight"] = randn(V, d, std=cfg["init_values"]["embedding"])

    def block(prefix):
        for n in range(1, 5):
            w[f"{prefix}.norm_{n}.weight"] = randn(d, std=0.1, mean=1.0)
        w[f"{prefix}.attn.Wqkv.weight"] = randn(3 * d, d, std=1.0 / math.sqrt(d))
        w[f"{prefix}.attn.qk_bias"] = randn(2, 1, H, hd, std=0.2)
        w[f"{prefix}.attn.proj.weight"] = randn(d, d, std=0.5 / math.sqrt(d))
        w[f"{prefix}.mlp.fc.weight"] = randn(2 * f, d, std=1.0 / math.sqrt(d))
        w[f"{prefix}.mlp.proj.weight"] = randn(d, f, std=0.5 / math.sqrt(f))

    for i in range(cfg["n_layers_in_prelude"]):
        block(f"transformer.prelude.{i}")
    for j in range(cfg["n_layers_in_recurrent_block"]):
        block(f"transformer.core_block.{j}")
    for k in range(cfg["n_layers_in_coda"]):
        block(f"transformer.coda.{k}")
    # Adapter columns 0..d-1 act on the state, d..2d-1 on the prelude output. A smaller
    # state half makes the iteration contract towards a fixed point (as a trained
    # model's does), so long recurrences stay well conditioned in float32.
    ad = randn(d, 2 * d, std=1.0 / math.sqrt(2 * d))
    ad[:, :d] *= a.state_gain
    w["transformer.adapter.weight"] = ad
    w["transformer.ln_f.weight"] = randn(d, std=0.1, mean=1.0)
    if not cfg["tie_embeddings"]:
        w["lm_head.weight"] = randn(V, d, std=1.0 / math.sqrt(d))
    return w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output checkpoint directory")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named size (overrides the size options)")
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=160)
    p.add_argument("--prelude", type=int, default=1)
    p.add_argument("--core", type=int, default=3)
    p.add_argument("--coda", type=int, default=2)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--rope-base", type=float, default=50000.0)
    p.add_argument("--mean-recurrence", type=int, default=8)
    p.add_argument("--merges", type=int, default=150, help="BPE merges to learn for tokenizer.json")
    p.add_argument("--state-gain", type=float, default=0.5,
                   help="scale of the adapter columns acting on the state (contraction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--untied", action="store_true", help="separate lm_head (tie_embeddings false)")
    p.add_argument("--store-tied-copy", action="store_true",
                   help="also write lm_head.weight as a copy of wte when tied (as the hub checkpoint)")
    p.add_argument("--freqs-cis", action="store_true",
                   help="write the freqs_cis buffer [1, block_size, 1, hd/2, 2] (float32)")
    a = p.parse_args(argv)
    if a.preset:
        for k, v in PRESETS[a.preset].items():
            setattr(a, k, v)
    if a.n_embd % a.n_heads or (a.n_embd // a.n_heads) % 2:
        p.error("n_embd must be a multiple of n_heads with an even head_dim")

    tj = build_tokenizer(a.merges)
    special_ids = {t["content"]: t["id"] for t in tj["added_tokens"]}
    vocab_size = len(tj["model"]["vocab"])
    cfg = make_config(a, vocab_size, special_ids)

    gen = torch.Generator().manual_seed(a.seed)
    w = make_weights(cfg, a, gen)
    store = torch.float32 if a.dtype == "f32" else torch.bfloat16
    tensors = {k: v.to(store).contiguous() for k, v in w.items()}
    if cfg["tie_embeddings"] and a.store_tied_copy:
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    if a.freqs_cis:
        tensors["freqs_cis"] = freqs_cis_buffer(cfg["head_dim"], cfg["block_size"], cfg["rope_base"])

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(a.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_params = sum(v.numel() for k, v in w.items())
    print(json.dumps({"out": a.out, "params": n_params, "vocab_size": vocab_size,
                      "padded_vocab_size": cfg["padded_vocab_size"], "dtype": a.dtype}))


if __name__ == "__main__":
    main()
