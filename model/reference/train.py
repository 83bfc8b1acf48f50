#!/usr/bin/python3
"""Trains ponder-micro, the bundled recurrent-depth model, on the CPU.

The model is the reference architecture (huginn.py) in the Huginn layout: scaled tied
embedding, prelude, a core block iterated r times on adapter(cat[s, e]), coda, sandwich
norms, qk bias, RoPE. The recipe is the paper's, scaled down:

  * depth per step r = Poisson(exp(N(log(mean) - sigma^2/2, sigma))) + 1, capped (and
    raised to --depth-min, if given);
    the first r - k iterations run without gradients, the last k carry them
    (truncated backpropagation through depth);
  * the initial state is Huginn's truncated normal (init_scale 1), as at inference;
  * AdamW (0.9, 0.95), weight decay on matrices, gradient clipping, linear warm-up,
    constant learning rate, linear decay to 0.1x over the last 20% of the budget;
  * tasks from tasks.py: 70% chain (curriculum on its length k), 30% easy families;
    one example per row, right-padded (causal attention never looks at the padding),
    loss on the answer tokens and the end marker only.

The budget is --minutes of training time (the decay is scheduled against it) or
--steps. Every --save-every-min minutes the full training state goes to
--work-dir/state.pt; --resume continues from it. At the end the model is exported in
f32 to --out (config.json, model.safetensors, tokenizer.json, training.json) and,
unless --no-eval, evaluate.py writes eval.json, the plot and MODEL_CARD.md there.

    /usr/bin/python3 model/reference/train.py --minutes 45
"""

import argparse
import json
import math
import os
import random
import sys
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import bpe  # noqa: E402
import make_checkpoint  # noqa: E402
import tasks  # noqa: E402
from huginn import Huginn, HuginnConfig  # noqa: E402
from safetensors_io import save_file  # noqa: E402

DEFAULT_OUT = os.path.join(REPO, "model", "zoo", "ponder-micro")


# ---- tokenizer ---------------------------------------------------------------------


def build_tokenizer_json():
    """Character (byte) vocabulary: the 256 GPT-2 byte characters with id = byte value,
    plus one merged token per chain term (`+0`..`+9`, `*3`, `*7`, `*9`: a term is one
    token, as one step of the computation), then the special tokens. No Split
    pre-tokenizer, so a merge applies wherever its two characters meet; no other task
    text contains `+` or `*`, so every other character stays one token."""
    vocab = {bpe.BYTE_TO_CHAR[b]: b for b in range(256)}
    merges = []
    for term in tasks.CHAIN_TERMS:
        a, b = bpe.BYTE_TO_CHAR[ord(term[0])], bpe.BYTE_TO_CHAR[ord(term[1])]
        merges.append(f"{a} {b}")
        vocab[a + b] = len(vocab)
    return bpe.build_tokenizer_json(vocab, merges, split=False)


class CharCodec:
    """Fast encoder for task text (chain terms are one token, every other character one
    token), checked against bpe.Tokenizer at construction."""

    def __init__(self, tj):
        self.tok = bpe.Tokenizer(tj)
        self.bos = self.tok.bos_id
        self.eos = self.tok.eos_id
        self.pad = self.tok.added["<|pad|>"]
        self.ids = {}
        for c in sorted(set(tasks.LETTERS + tasks.DIGITS + "+*=|<?")):
            enc = self.tok.encode(c)
            if len(enc) != 1:
                raise RuntimeError(f"character {c!r} is not a single token: {enc}")
            self.ids[c] = enc[0]
        for term in tasks.CHAIN_TERMS:
            enc = self.tok.encode(term)
            if len(enc) != 1:
                raise RuntimeError(f"chain term {term!r} is not a single token: {enc}")
            self.ids[term] = enc[0]
        for probe in ("+4*3+7*9=1", "abcxyz|", "qhb<", "a3q7?q", "+0+9*9*3*7="):
            if self.tok.encode(probe) != self.encode(probe):
                raise RuntimeError(f"fast encoder disagrees with the tokenizer on {probe!r}")

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            if text[i] in "+*" and text[i:i + 2] in self.ids:
                out.append(self.ids[text[i:i + 2]])
                i += 2
            else:
                out.append(self.ids[text[i]])
                i += 1
        return out


# ---- config, init, forward -----------------------------------------------------------


def make_config(a, tj):
    special_ids = {t["content"]: t["id"] for t in tj["added_tokens"]}
    ns = types.SimpleNamespace(
        n_embd=a.n_embd, n_heads=a.n_heads, intermediate=a.intermediate, prelude=a.prelude,
        core=a.core, coda=a.coda, block_size=a.block_size, rope_base=a.rope_base,
        mean_recurrence=a.mean_recurrence, untied=False, dtype="f32")
    cfg = make_checkpoint.make_config(ns, len(tj["model"]["vocab"]), special_ids)
    cfg["mean_backprop_depth"] = a.backprop_depth
    return cfg


def init_weights(model, cfg_json):
    """Takase-style init of the Huginn layout: N(0, std) for the embedding and every
    matrix, std / sqrt(2 * effective depth) for the output projections, norms at 1,
    qk_bias at 0."""
    iv = cfg_json["init_values"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm_" in name or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif name.endswith("qk_bias"):
                p.zero_()
            elif name.endswith("wte.weight"):
                p.normal_(0.0, iv["embedding"])
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                p.normal_(0.0, iv["out_proj"])
            else:
                p.normal_(0.0, iv["std"])


def forward_train(model, ids, n_no_grad, n_grad, init_scale=1.0):
    """Huginn's training forward from huginn.py's pieces: the first `n_no_grad`
    iterations without gradients, then `n_grad` iterations with them (the state
    entering them is detached, i.e. it plays the role of `input_states`)."""
    B, T = ids.shape
    cos, sin = model._rope(0, T)
    e = model.embed(ids, cos, sin)
    s = model.initial_state(e, init_scale)
    if n_no_grad:
        with torch.no_grad():
            e_ng = e.detach()
            for step in range(1, n_no_grad + 1):
                s = model.core_step(s, e_ng, cos, sin, step)
    for step in range(n_no_grad + 1, n_no_grad + n_grad + 1):
        s = model.core_step(s, e, cos, sin, step)
    return model.predict(s, cos, sin)


def sample_depth(np_rng, mean, sigma, cap, floor=1):
    tau = np_rng.normal(math.log(mean) - sigma * sigma / 2, sigma)
    r = int(np_rng.poisson(math.exp(tau))) + 1
    return max(floor, min(r, cap))


def collate(codec, examples):
    """Rows [BOS prompt answer EOS] right-padded; returns (inputs, targets, mask,
    answer-token counts). Targets are masked to the answer tokens and the EOS."""
    seqs, starts = [], []
    for _, _, prompt, answer in examples:
        p = [codec.bos] + codec.encode(prompt)
        seqs.append(p + codec.encode(answer) + [codec.eos])
        starts.append(len(p) - 1)  # first input position whose target is an answer token
    T = max(len(s) for s in seqs) - 1
    inp = torch.full((len(seqs), T), codec.pad, dtype=torch.long)
    tgt = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        inp[i, : len(s) - 1] = torch.tensor(s[:-1])
        tgt[i, st : len(s) - 1] = torch.tensor(s[st + 1 :])
    return inp, tgt


def lr_at(a, step, progress):
    warm = min(1.0, (step + 1) / a.warmup)
    if progress < 1.0 - a.decay_frac:
        decay = 1.0
    else:
        f = min(1.0, (progress - (1.0 - a.decay_frac)) / a.decay_frac)
        decay = 1.0 - (1.0 - a.final_lr_frac) * f
    return a.lr * warm * decay


# ---- validation (teacher forced: equals greedy exact match) ------------------------------


@torch.no_grad()
def quick_val(model, codec, examples, r, init_scale=1.0):
    """Exact-match accuracy with teacher forcing: an answer is right iff every answer
    token and the EOS are the argmax, which is what greedy decoding needs."""
    rows = [(e["family"], e["difficulty"], e["prompt"], e["answer"]) for e in examples]
    inp, tgt = collate(codec, rows)
    logits = model(inp, num_steps=r, init_scale=init_scale)
    pred = logits.argmax(-1)
    m = tgt != -100
    ok = ((pred == tgt) | ~m).all(dim=1)
    return ok.float().mean().item()


# ---- training state --------------------------------------------------------------------


def save_state(path, model, opt, cur, rngs, meta):
    tmp = path + ".tmp"
    torch.save({
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "curriculum": cur.state_dict(),
        "py_rng": rngs["py"].getstate(),
        "np_rng": rngs["np"].bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "meta": meta,
    }, tmp)
    os.replace(tmp, path)


def export(model, cfg_json, tj, out, training):
    os.makedirs(out, exist_ok=True)
    tensors = {n: p.detach().to(torch.float32).contiguous().clone() for n, p in model.named_parameters()}
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(training, f, indent=2)
        f.write("\n")
    # The export must load with the reference and give the same logits.
    back = Huginn.from_dir(out)
    ids = torch.tensor([[cfg_json["bos_token_id"], 43, 52, 42, 51, 61]])
    with torch.no_grad():
        a = model(ids, num_steps=4, init_scale=0)
        b = back(ids, num_steps=4, init_scale=0)
    if not torch.equal(a, b):
        raise RuntimeError("exported model does not reproduce the trained model")


# ---- main -----------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("budget and files")
    g.add_argument("--minutes", type=float, default=45.0, help="training time budget (LR decay scheduled against it)")
    g.add_argument("--max-minutes", type=float, default=0.0,
                   help="allow the time budget to grow up to this many minutes until the curriculum has "
                        "reached its last k and trained --settle-min minutes there (0: fixed budget)")
    g.add_argument("--settle-min", type=float, default=10.0)
    g.add_argument("--steps", type=int, default=0, help="a step budget instead of --minutes (deterministic schedule)")
    g.add_argument("--work-dir", default="/tmp/ponder-micro-train")
    g.add_argument("--resume", action="store_true", help="continue from WORK_DIR/state.pt")
    g.add_argument("--save-every-min", type=float, default=3.0)
    g.add_argument("--out", default=DEFAULT_OUT, help="export directory")
    g.add_argument("--no-eval", action="store_true", help="skip evaluate.py after the export")
    g.add_argument("--eval-per-level", type=int, default=200, help="held-out examples per family and level")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--log-every", type=int, default=20, help="steps between progress lines")
    g.add_argument("--val-every-min", type=float, default=5.0, help="minutes between held-out checks")
    g = p.add_argument_group("model")
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--n-heads", type=int, default=4)
    g.add_argument("--intermediate", type=int, default=384)
    g.add_argument("--prelude", type=int, default=1)
    g.add_argument("--core", type=int, default=2)
    g.add_argument("--coda", type=int, default=1)
    g.add_argument("--block-size", type=int, default=64)
    g.add_argument("--rope-base", type=float, default=50000.0)
    g.add_argument("--mean-recurrence", type=int, default=32, help="config default depth at inference")
    g = p.add_argument_group("recipe")
    g.add_argument("--batch", type=int, default=256, help="examples per step")
    g.add_argument("--chunks", type=int, default=4, help="length-sorted micro-batches per step")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip", type=float, default=1.0)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--decay-frac", type=float, default=0.2)
    g.add_argument("--final-lr-frac", type=float, default=0.1)
    g.add_argument("--depth-mean", type=float, default=8.0)
    g.add_argument("--depth-sigma", type=float, default=0.5)
    g.add_argument("--depth-cap", type=int, default=32)
    g.add_argument("--depth-min", type=int, default=1,
                   help="floor on the sampled depth: no step trains the model to answer in fewer iterations")
    g.add_argument("--backprop-depth", type=int, default=4, help="iterations that carry gradients")
    g.add_argument("--k-start", type=int, default=2)
    g.add_argument("--k-max", type=int, default=tasks.LEVELS["chain"][1],
                   help="last chain length of the curriculum (default: the top level of tasks.LEVELS)")
    g.add_argument("--k-threshold", type=float, default=0.8)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(a.work_dir, exist_ok=True)
    state_path = os.path.join(a.work_dir, "state.pt")

    tj = build_tokenizer_json()
    codec = CharCodec(tj)
    cfg_json = make_config(a, tj)
    cfg = HuginnConfig(cfg_json)

    torch.manual_seed(a.seed)
    rngs = {"py": random.Random(a.seed), "np": np.random.default_rng(a.seed)}
    model = Huginn(cfg)
    init_weights(model, cfg_json)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    cur = tasks.Curriculum(k_start=a.k_start, k_max=a.k_max, threshold=a.k_threshold)
    meta = {"step": 0, "elapsed": 0.0, "loss_hist": [], "val": [], "k_raised": {}, "wall_start": time.time(),
            "invocations": []}

    if a.resume:
        if not os.path.exists(state_path):
            sys.exit(f"--resume: {state_path} does not exist")
        st = torch.load(state_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        cur.load_state_dict(st["curriculum"])
        rngs["py"].setstate(st["py_rng"])
        rngs["np"].bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
        meta = st["meta"]
        print(f"resumed from {state_path}: step {meta['step']}, {meta['elapsed'] / 60:.1f} min trained, k={cur.k}",
              flush=True)

    meta.setdefault("invocations", []).append(" ".join(sys.argv[1:] if argv is None else argv))
    budget_s = a.minutes * 60.0
    print(f"ponder-micro: {n_params} parameters, vocab {cfg.vocab_size} (padded {cfg.padded_vocab_size}), "
          f"batch {a.batch}, budget {'%d steps' % a.steps if a.steps else '%.1f min' % a.minutes}"
          f"{' (up to %.1f min)' % a.max_minutes if not a.steps and a.max_minutes > a.minutes else ''}, "
          f"threads {torch.get_num_threads()}", flush=True)

    k_top = a.k_max
    val_sets = {k: tasks.test_set("chain", k, 100, seed=777) for k in range(1, k_top + 1)}
    val_easy = [e for fam in ("copy", "reverse", "lookup")
                for e in tasks.test_set(fam, tasks.LEVELS[fam][1], 50, seed=777)]
    last_save = time.time()
    last_val = time.time()
    win = {"loss": 0.0, "tok": 0, "ok": 0, "n": 0, "r": 0, "steps": 0, "t0": time.time()}

    def budget():
        """Training seconds of the run. With --max-minutes above --minutes the budget
        stretches so that the decay does not start before the curriculum has reached its
        last k and trained --settle-min minutes there (never beyond --max-minutes)."""
        if a.max_minutes <= a.minutes:
            return budget_s
        raised = meta["k_raised"].get(str(cur.k_max))
        t_last = raised["minutes"] * 60.0 if raised else meta["elapsed"]
        need = (t_last + a.settle_min * 60.0) / (1.0 - a.decay_frac)
        return min(a.max_minutes * 60.0, max(budget_s, need))

    def progress():
        return meta["step"] / a.steps if a.steps else meta["elapsed"] / budget()

    while progress() < 1.0:
        t_step = time.time()
        step = meta["step"]
        lr = lr_at(a, step, progress())
        for g in opt.param_groups:
            g["lr"] = lr
        r = sample_depth(rngs["np"], a.depth_mean, a.depth_sigma, a.depth_cap, a.depth_min)
        n_grad = min(a.backprop_depth, r)
        batch = tasks.training_batch(rngs["py"], a.batch, cur)
        batch.sort(key=lambda x: len(x[2]) + len(x[3]))
        n_ans = sum(len(x[3]) + 1 for x in batch)
        chunk = math.ceil(len(batch) / a.chunks)
        opt.zero_grad(set_to_none=True)
        loss_sum, ok_k, n_k, ok_all = 0.0, 0, 0, 0
        for c0 in range(0, len(batch), chunk):
            part = batch[c0 : c0 + chunk]
            inp, tgt = collate(codec, part)
            logits = forward_train(model, inp, r - n_grad, n_grad)
            loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="sum")
            (loss / n_ans).backward()
            loss_sum += loss.item()
            with torch.no_grad():
                m = tgt != -100
                ok = ((logits.argmax(-1) == tgt) | ~m).all(dim=1)
            for (fam, lvl, _, _), o in zip(part, ok.tolist()):
                ok_all += o
                if fam == "chain" and lvl == cur.k:
                    ok_k += o
                    n_k += 1
        gnorm = nn.utils.clip_grad_norm_(model.parameters(), a.clip).item()
        opt.step()
        meta["step"] += 1
        meta["elapsed"] += time.time() - t_step
        k_before = cur.k
        if cur.update(ok_k, n_k, meta["step"]):
            meta["k_raised"][str(cur.k)] = {"step": meta["step"], "minutes": round(meta["elapsed"] / 60, 2)}
            print(f"  curriculum: k {k_before} -> {cur.k} at step {meta['step']} "
                  f"({meta['elapsed'] / 60:.1f} min)", flush=True)
        meta["loss_hist"].append(loss_sum / n_ans)
        meta["loss_hist"] = meta["loss_hist"][-200:]
        win["loss"] += loss_sum
        win["tok"] += n_ans
        win["ok"] += ok_all
        win["n"] += len(batch)
        win["r"] += r
        win["steps"] += 1
        if meta["step"] % a.log_every == 0:
            dt = time.time() - win["t0"]
            print(f"step {meta['step']:5d}  loss {win['loss'] / win['tok']:.4f}  k {cur.k:2d}  "
                  f"acc@k {cur.accuracy():.3f}  acc {win['ok'] / win['n']:.3f}  r {win['r'] / win['steps']:.1f}  "
                  f"lr {lr:.2e}  |g| {gnorm:.2f}  {dt / win['steps']:.2f}s/step  "
                  f"elapsed {meta['elapsed'] / 60:.1f}/{budget() / 60:.1f} min", flush=True)
            win = {"loss": 0.0, "tok": 0, "ok": 0, "n": 0, "r": 0, "steps": 0, "t0": time.time()}
        if time.time() - last_val > a.val_every_min * 60:
            model.eval()
            ks = sorted({1, max(1, cur.k // 2), cur.k, k_top})
            res = {f"k{k}_r{r_}": round(quick_val(model, codec, val_sets[k], r_), 3) for k in ks for r_ in (4, 32)}
            res["easy_r4"] = round(quick_val(model, codec, val_easy, 4), 3)
            model.train()
            meta["val"].append({"step": meta["step"], "minutes": round(meta["elapsed"] / 60, 2), **res})
            print("  held-out chain (teacher forced): " + "  ".join(f"{k}={v}" for k, v in res.items()), flush=True)
            last_val = time.time()
        if time.time() - last_save > a.save_every_min * 60:
            save_state(state_path, model, opt, cur, rngs, meta)
            last_save = time.time()

    save_state(state_path, model, opt, cur, rngs, meta)
    final_loss = float(np.mean(meta["loss_hist"][-50:])) if meta["loss_hist"] else float("nan")
    print(f"done: {meta['step']} steps, {meta['elapsed'] / 60:.1f} min, final loss (last 50 steps) {final_loss:.4f}, "
          f"k {cur.k}", flush=True)

    first = " ".join(x for x in meta["invocations"][-1].split() if x != "--resume")
    training = {
        "command": "/usr/bin/python3 model/reference/train.py " + first,
        "invocations": meta["invocations"],
        "args": vars(a),
        "parameters": n_params,
        "steps": meta["step"],
        "train_minutes": round(meta["elapsed"] / 60, 2),
        "budget_minutes": round(budget() / 60, 2),
        "final_loss": final_loss,
        "final_k": cur.k,
        "k_raised": meta["k_raised"],
        "val": meta["val"],
        "torch": torch.__version__,
    }
    model.eval()
    export(model, cfg_json, tj, a.out, training)
    print(f"exported to {a.out}", flush=True)
    if not a.no_eval:
        import evaluate

        ev = [a.out, "--per-level", str(a.eval_per_level), "--threads", str(a.threads), "--model-card"]
        wl = os.path.join(REPO, "scenarios", "workloads")
        if os.path.isdir(wl):
            ev += ["--workloads", wl]
        evaluate.main(ev)


if __name__ == "__main__":
    main()
