#!/usr/bin/python3
"""Evaluates a model directory (e.g. model/zoo/ponder-micro) on held-out tasks.

Protocol (the same as the C++ runtime's replay of scenarios/workloads/*.jsonl): the
prompt text is encoded without special tokens, `<|begin_text|>` is prepended, and the
model generates greedily with a KV cache, r core iterations per token, until it emits
`<|end_text|>`. An answer is correct when the generated text before `<|end_text|>`
equals the expected answer exactly.

For the held-out split the default --mode is `forced`: one teacher-forced pass per depth,
an answer counting when each of its tokens and the end marker is the argmax after its
prefix, which is exactly when greedy decoding returns it (each position draws its own
initial state, as in decoding); a subset is also decoded greedily as a check. Workloads
default to `greedy`.

The initial latent state is Huginn's random truncated normal (init_scale 1, the
runtime's default and what training used), drawn from torch's RNG seeded per pass (the
C++ runtime draws its own numbers, so single answers may differ; accuracies agree
statistically). init_scale 0 (zero state) is evaluated too.

    /usr/bin/python3 model/reference/evaluate.py model/zoo/ponder-micro            # held-out split
    /usr/bin/python3 model/reference/evaluate.py model/zoo/ponder-micro \\
        --workload scenarios/workloads/math.jsonl                                    # a workload

Outputs (held-out mode): DIR/eval.json, DIR/accuracy_vs_depth.png and, with
--model-card, DIR/MODEL_CARD.md.
"""

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tasks  # noqa: E402
from bpe import Tokenizer  # noqa: E402
from huginn import Huginn, KVCache  # noqa: E402

DEPTHS = (1, 2, 4, 8, 16, 32, 64)


def encode_prompt(tok, prompt):
    """[<|begin_text|>] + encode(prompt, add_special_tokens=False)."""
    return [tok.bos_id] + tok.encode(prompt, add_special_tokens=False)


@torch.no_grad()
def greedy(model, tok, prompts, r, init_scale, max_new, batch_size=128):
    """Greedy generation for prompts of equal token length. Returns, per prompt, the
    generated ids up to (excluding) <|end_text|>, or None if it did not stop within
    max_new tokens."""
    out = []
    for b0 in range(0, len(prompts), batch_size):
        ids = torch.tensor([encode_prompt(tok, p) for p in prompts[b0 : b0 + batch_size]])
        B = ids.shape[0]
        cache = KVCache()
        logits = model(ids, num_steps=r, init_scale=init_scale, cache=cache)
        gen = [[] for _ in range(B)]
        done = [False] * B
        for _ in range(max_new):
            nxt = logits[:, -1].argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    if t == tok.eos_id:
                        done[i] = True
                    else:
                        gen[i].append(t)
            if all(done):
                break
            logits = model(nxt[:, None], num_steps=r, init_scale=init_scale, cache=cache)
        out.extend(g if d else None for g, d in zip(gen, done))
    return out


@torch.no_grad()
def forced(model, tok, prompts, answers, r, init_scale, batch_size=256):
    """Teacher-forced check for prompts of equal token length and answers of equal
    length: True where every answer token and the final <|end_text|> are the argmax
    after their prefix, i.e. exactly where greedy decoding returns the answer. One
    forward pass per batch; each position draws its own initial state, as in decoding."""
    out = []
    for b0 in range(0, len(prompts), batch_size):
        ps, ans = prompts[b0 : b0 + batch_size], answers[b0 : b0 + batch_size]
        seqs = [encode_prompt(tok, p) + a + [tok.eos_id] for p, a in zip(ps, ans)]
        ids = torch.tensor(seqs)
        T0 = len(encode_prompt(tok, ps[0]))
        logits = model(ids[:, :-1], num_steps=r, init_scale=init_scale)
        pred = logits[:, T0 - 1 :].argmax(-1)
        out.extend((pred == ids[:, T0:]).all(dim=1).tolist())
    return out


def run_examples(model, tok, examples, depths, init_scale, seed, mode="greedy"):
    """Returns {r: [bool per example]} (examples in the given order)."""
    groups = defaultdict(list)
    for i, ex in enumerate(examples):
        key = len(encode_prompt(tok, ex["prompt"]))
        if mode == "forced":
            key = (key, len(tok.encode(ex["expected"])))
        groups[key].append(i)
    res = {}
    for r in depths:
        torch.manual_seed(seed * 1000 + r)
        ok = [False] * len(examples)
        for _, idx in sorted(groups.items()):
            prompts = [examples[i]["prompt"] for i in idx]
            answers = [tok.encode(examples[i]["expected"]) for i in idx]
            if mode == "forced":
                for i, o in zip(idx, forced(model, tok, prompts, answers, r, init_scale)):
                    ok[i] = o
                continue
            max_new = max(len(a) for a in answers) + 1
            gen = greedy(model, tok, prompts, r, init_scale, max_new)
            for i, g, a in zip(idx, gen, answers):
                ok[i] = g is not None and g == a
        res[r] = ok
    return res


def summarize(examples, res, keys):
    """{key value: {r: accuracy}} for each field in `keys` (tuples allowed)."""
    out = {}
    for key in keys:
        table = defaultdict(lambda: defaultdict(list))
        for r, ok in res.items():
            for ex, o in zip(examples, ok):
                kv = "/".join(str(ex[k]) for k in key) if isinstance(key, tuple) else str(ex[key])
                table[kv][r].append(o)
        name = "/".join(key) if isinstance(key, tuple) else key
        out[name] = {kv: {"n": len(next(iter(rs.values()))),
                          **{str(r): round(sum(v) / len(v), 4) for r, v in rs.items()}}
                     for kv, rs in sorted(table.items(), key=lambda x: _sort_key(x[0]))}
    return out


def _sort_key(s):
    parts = s.split("/")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def acceptance(summary):
    """The ponder-micro acceptance checks on one init_scale's summary."""
    fam = summary["family"]
    lvl = summary["family/difficulty"]
    checks = []
    if not all(str(r) in next(iter(fam.values())) for r in (4, 32, 64)):
        return checks  # needs depths 4, 32 and 64

    def add(name, value, ok):
        checks.append({"check": name, "value": value, "pass": bool(ok)})

    for f in tasks.HARD_FAMILIES:
        hi = f"{f}/{tasks.LEVELS[f][1]}"
        if hi in lvl:
            add(f"{hi} accuracy at r=4 <= 0.70", lvl[hi]["4"], lvl[hi]["4"] <= 0.70)
            add(f"{hi} accuracy at r=32 >= 0.95", lvl[hi]["32"], lvl[hi]["32"] >= 0.95)
        if f in fam:
            add(f"{f} (all levels) accuracy at r=32 >= 0.95", fam[f]["32"], fam[f]["32"] >= 0.95)
            add(f"{f} accuracy at r=64 >= r=32 - 0.01", [fam[f]["64"], fam[f]["32"]],
                fam[f]["64"] >= fam[f]["32"] - 0.01)
    for f in tasks.EASY_FAMILIES:
        if f in fam:
            add(f"{f} accuracy at r=4 >= 0.98", fam[f]["4"], fam[f]["4"] >= 0.98)
            add(f"{f} |acc(r=4) - acc(r=32)| <= 0.01", [fam[f]["4"], fam[f]["32"]],
                abs(fam[f]["4"] - fam[f]["32"]) <= 0.01)
    return checks


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (apt-get install python3-matplotlib)", flush=True)
        return False
    depths = report["depths"]
    res = report["results"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    colors = {}
    for scale, style in (("1", "-"), ("0", ":")):
        if scale not in res:
            continue
        for f, accs in res[scale]["family"].items():
            line = ax.plot(depths, [accs[str(r)] for r in depths], style, marker="o", ms=4,
                           color=colors.get(f), label=f"{f}" + (" (zero init)" if scale == "0" else ""))
            colors[f] = line[0].get_color()
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths)
    ax.set_xticklabels([str(r) for r in depths])
    ax.set_xlabel("recurrence depth r")
    ax.set_ylabel("exact-match accuracy (held-out)")
    ax.set_title("ponder-micro: accuracy vs depth per family")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    lvl = res["1"]["family/difficulty"] if "1" in res else res[next(iter(res))]["family/difficulty"]
    chain = [(int(k.split("/")[1]), v) for k, v in lvl.items() if k.startswith("chain/")]
    cmap = plt.get_cmap("viridis")
    k_top = max(k for k, _ in chain)
    step = max(1, k_top // 6)  # a legend entry for every step-th length (and the longest)
    for k, v in sorted(chain):
        ax.plot(depths, [v[str(r)] for r in depths], marker="o", ms=3, color=cmap((k - 1) / max(1, k_top - 1)),
                label=f"k={k}" if k % step == 0 or k in (1, k_top) else None)
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths)
    ax.set_xticklabels([str(r) for r in depths])
    ax.set_xlabel("recurrence depth r")
    ax.set_title("chain: accuracy vs depth per length k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _table(rows, depths, label):
    head = f"| {label} | n | " + " | ".join(f"r={r}" for r in depths) + " |"
    sep = "|---|---|" + "---|" * len(depths)
    lines = [head, sep]
    for name, v in rows:
        lines.append(f"| {name} | {v['n']} | " + " | ".join(f"{v[str(r)]:.3f}" for r in depths) + " |")
    return "\n".join(lines)


def _tokenizer_text(model_dir):
    """A paragraph describing tokenizer.json, read from the file."""
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    tok = Tokenizer(tj)
    merges = tj["model"].get("merges", [])
    pre = tj.get("pre_tokenizer") or {}
    pre_types = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    merged = []
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        merged.append(tok.decode([tok.vocab[a + b]]))
    specials = ", ".join(f"`{t['content']}` ({t['id']})" for t in tj.get("added_tokens", []))
    text = (f"The tokenizer (`tokenizer.json`, Hugging Face BPE format, pre-tokenizer "
            f"{' + '.join(pre_types)}) has the 256 byte-level characters as its base vocabulary (id = byte "
            f"value)")
    if merged:
        text += (f", {len(merged)} merges that make each chain term one token ("
                 + ", ".join(f"`{m}`" for m in merged) + ")")
    else:
        text += ", no merges"
    text += f", and the special tokens {specials}. Every other character is one token.\n"
    return text


def write_model_card(model_dir, report):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tpath = os.path.join(model_dir, "training.json")
    tr = json.load(open(tpath)) if os.path.exists(tpath) else None
    n_params = report["parameters"]
    depths = report["depths"]
    res1 = report["results"]["1"]
    res0 = report["results"].get("0")
    a = tr["args"] if tr else {}
    lines = []
    lines.append("# ponder-micro\n")
    lines.append(
        "A recurrent-depth language model of about 0.9 M parameters in the Huginn-0125 layout, trained in\n"
        "this repository on synthetic tasks on which more iterations of the core block pay off. It is\n"
        "small enough to ship in the repository and to run anywhere, and it is what Ponder's\n"
        "scheduling experiments run on: easy prompts are answered at any depth, hard ones need depth.\n")
    lines.append("## Architecture\n")
    lines.append(
        f"Huginn layout (`model/reference/huginn.py`): scaled tied embedding (x sqrt({cfg['n_embd']})), "
        f"{cfg['n_layers_in_prelude']} prelude block, a core of {cfg['n_layers_in_recurrent_block']} blocks "
        f"iterated r times on `adapter(cat[s, e])`, {cfg['n_layers_in_coda']} coda block, `ln_f` before and "
        "after the coda, tied head. Sandwich blocks (4 RMSNorms each), fused Wqkv with a learned qk bias "
        "before RoPE (adjacent pairs), gated SiLU MLP, no linear biases. The initial state is Huginn's "
        "truncated normal (std sqrt(2/(5 d)) x sqrt(d), cut at 3 std).\n")
    lines.append("| field | value |\n|---|---|")
    for k in ("n_embd", "n_heads", "head_dim", "intermediate_size", "n_layers_in_prelude",
              "n_layers_in_recurrent_block", "n_layers_in_coda", "vocab_size", "padded_vocab_size",
              "block_size", "rope_base", "norm_eps", "qk_bias", "tie_embeddings", "mean_recurrence"):
        lines.append(f"| {k} | {cfg[k]} |")
    lines.append(f"| parameters (unique) | {n_params:,} |")
    lines.append("| weights | f32, model.safetensors |\n")
    lines.append(f"`mean_recurrence` {cfg['mean_recurrence']} is the default depth at inference.\n")
    lines.append(_tokenizer_text(model_dir))
    lines.append("## Tasks and prompt protocol\n")
    lines.append(
        "Generators in `model/reference/tasks.py` (seeded). A training sequence is "
        "`<|begin_text|>PROMPT ANSWER<|end_text|>`; the loss is on the answer and the end marker.\n")
    lines.append("| family | kind | difficulty | example prompt -> answer |\n|---|---|---|---|")
    lo, hi = tasks.LEVELS["chain"]
    lines.append(f"| chain | hard | k = {lo}..{hi} terms | `+4*3+7*9=` -> `1` (left to right mod 10 from 0; `+d` or `*3/*7/*9`) |")
    lines.append("| copy | easy | 3..8 letters | `qhbzt\\|` -> `qhbzt` |")
    lines.append("| reverse | easy | 3..8 letters | `qhbzt<` -> `tzbhq` |")
    lines.append("| lookup | easy | 2..6 pairs | `a3q7x1?q` -> `7` |\n")
    lines.append(
        "To query the model: encode the prompt without special tokens, prepend `<|begin_text|>`, "
        "generate greedily until `<|end_text|>`; the text before it is the answer. The held-out split is "
        "the 10% of each family's prompt space whose SHA-256 hash falls in a fixed bucket "
        "(`tasks.is_heldout`); training never draws those prompts. The workloads in "
        "`scenarios/workloads/` come from it.\n")
    lines.append("## Training\n")
    if tr:
        lines.append(
            f"`model/reference/train.py`, CPU (2 threads, PyTorch {tr['torch']}, f32), seed {a['seed']}: "
            f"{tr['steps']} steps in {tr['train_minutes']:.1f} minutes of training time; final training loss "
            f"{tr['final_loss']:.4f} (answer tokens, mean of the last 50 steps). Reproduce with\n")
        lines.append(f"```\n{tr['command']}\n```\n")
        lines.append(
            "(the budget is wall time, so the number of steps depends on the machine; `--steps N` gives a "
            "step-scheduled run).\n")
        lines.append(
            f"- depth per step r = Poisson(exp(N(log {a['depth_mean']:g} - {a['depth_sigma']}^2/2, "
            f"{a['depth_sigma']}))) + 1, capped at {a['depth_cap']}"
            + (f" and raised to at least {a['depth_min']}" if a.get("depth_min", 1) > 1 else "")
            + "; gradients through the last "
            f"{a['backprop_depth']} iterations only (the earlier ones run without gradients);\n"
            "- initial state: the random truncated normal (init_scale 1), as at inference;\n"
            f"- AdamW lr {a['lr']:g}, betas (0.9, 0.95), weight decay {a['weight_decay']} on matrices, "
            f"gradient clipping {a['clip']}, {a['warmup']} warm-up steps, constant, then linear decay to "
            f"{a['final_lr_frac']}x over the last {int(a['decay_frac'] * 100)}% of the budget"
            + (f" (the budget of {a['minutes']:g} minutes may stretch, up to {a['max_minutes']:g}, until the "
               f"curriculum has reached k = {a.get('k_max', tasks.LEVELS['chain'][1])} and trained "
               f"{a['settle_min']:g} minutes there; this run's "
               f"budget: {tr.get('budget_minutes', 0):.1f} minutes)" if a.get("max_minutes", 0) > a["minutes"] else "")
            + ";\n"
            f"- {a['batch']} examples per step, one per row, right-padded (causal attention never sees the "
            f"padding), in {a['chunks']} length-sorted micro-batches; 70% chain, 10% each copy, reverse, "
            "lookup;\n"
            f"- curriculum on the chain length: start at k = {a['k_start']}, half the chains at the current k, "
            f"half uniform in 1..k, k + 1 when the training accuracy at k over the last 10 steps passes "
            f"{a['k_threshold']}.\n")
        if tr.get("k_raised"):
            ks = ", ".join(f"k={k} at {v['minutes']:.1f} min" for k, v in
                           sorted(tr["k_raised"].items(), key=lambda x: int(x[0])))
            lines.append(f"Curriculum: {ks}.\n")
    lines.append("## Evaluation\n")
    lines.append(
        f"`model/reference/evaluate.py`: held-out split, {report['per_level']} distinct prompts per family "
        "and level (fewer for chains of k <= 2, whose held-out prompt space is that small), exact match "
        "of the greedy answer. Random initial state (init_scale 1) from torch's RNG. "
        + ("The tables use the teacher-forced check (an answer counts when each of its tokens and the "
           "end marker is the argmax after its prefix, which is exactly when greedy decoding returns it; "
           "every position draws its own initial state, as in decoding); greedy decoding with a KV cache "
           "on a subset gives the same accuracies within sampling noise (below).\n"
           if report.get("mode") == "forced" else "Greedy decoding with a KV cache.\n"))
    lines.append("![accuracy vs depth](accuracy_vs_depth.png)\n")
    lines.append("### Per family (init_scale 1)\n")
    lines.append(_table(list(res1["family"].items()), depths, "family") + "\n")
    lines.append("### Per family and level (init_scale 1)\n")
    lines.append(_table(list(res1["family/difficulty"].items()), depths, "family/level") + "\n")
    if res0:
        lines.append("### Per family, zero initial state (init_scale 0)\n")
        lines.append(_table(list(res0["family"].items()), depths, "family") + "\n")
    lines.append("### Acceptance (init_scale 1)\n")
    lines.append("| check | value | pass |\n|---|---|---|")
    for c in report["acceptance"]["1"]:
        lines.append(f"| {c['check']} | {c['value']} | {'yes' if c['pass'] else 'NO'} |")
    lines.append("")
    if report.get("workloads"):
        lines.append("### Workloads (`scenarios/workloads/`, per class, init_scale 1)\n")
        rows = [(f"{n[:-6]}: {c}", v) for n, t in report["workloads"].items() for c, v in t.items()]
        lines.append(_table(rows, depths, "workload: class") + "\n")
    gc = report.get("greedy_check")
    if gc:
        lines.append(f"### Greedy decoding (KV cache) against the teacher-forced check, {gc['n']} examples\n")
        lines.append("| family | " + " | ".join(f"greedy r={r} | forced r={r}" for r in gc["depths"]) + " |")
        lines.append("|---|" + "---|---|" * len(gc["depths"]))
        for fam in gc["greedy"]:
            lines.append(f"| {fam} | " + " | ".join(
                f"{gc['greedy'][fam][str(r)]:.3f} | {gc['forced'][fam][str(r)]:.3f}" for r in gc["depths"]) + " |")
        lines.append("")
    lines.append(f"Evaluation took {report['eval_seconds'] / 60:.1f} minutes.\n")
    with open(os.path.join(model_dir, "MODEL_CARD.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--workload", help="evaluate a workload JSONL instead of the held-out split")
    p.add_argument("--per-level", type=int, default=200, help="held-out examples per family and level")
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    p.add_argument("--init-scales", default="1,0")
    p.add_argument("--mode", choices=["greedy", "forced"], default=None,
                   help="greedy decoding with a KV cache (default for a workload), or the equivalent "
                        "teacher-forced check (default for the held-out split: one pass per depth)")
    p.add_argument("--greedy-check", type=int, default=25,
                   help="with --mode forced: also decode this many examples per family and level "
                        "greedily at r=4 and r=32 (init_scale 1) and report both accuracies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="report JSON (default MODEL/eval.json, or stdout for a workload)")
    p.add_argument("--model-card", action="store_true", help="also write MODEL/MODEL_CARD.md")
    p.add_argument("--workloads", help="with the held-out split: also score every *.jsonl of this folder "
                                       "per class (init_scale 1, same --mode) into the report and card")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    depths = [int(x) for x in a.depths.split(",")]
    if a.mode is None:
        a.mode = "greedy" if a.workload else "forced"
    scales = [x.strip() for x in a.init_scales.split(",")]

    model = Huginn.from_dir(a.model)
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    if a.workload:
        with open(a.workload) as f:
            examples = [json.loads(line) for line in f if line.strip()]
        keys = ["class", "family", ("family", "difficulty")]
    else:
        examples = [dict(ex, expected=ex["answer"]) for ex in tasks.full_test_split(a.per_level)]
        keys = ["family", ("family", "difficulty")]
    t0 = time.time()
    report = {"model": os.path.abspath(a.model), "depths": depths, "per_level": a.per_level, "mode": a.mode,
              "n_examples": len(examples), "parameters": sum(p.numel() for p in model.parameters()),
              "workload": a.workload, "results": {}, "acceptance": {}}
    for scale in scales:
        res = run_examples(model, tok, examples, depths, float(scale), a.seed, a.mode)
        summary = summarize(examples, res, keys)
        report["results"][scale] = summary
        if not a.workload:
            report["acceptance"][scale] = acceptance(summary)
        for f, v in summary[keys[0] if isinstance(keys[0], str) else "/".join(keys[0])].items():
            print(f"init_scale {scale}  {f:24s} n={v['n']:4d}  " +
                  "  ".join(f"r{r}={v[str(r)]:.3f}" for r in depths), flush=True)
    if a.mode == "forced" and a.greedy_check > 0:
        # Greedy decoding with a KV cache on a subset: the runtime's protocol, as a check
        # that the teacher-forced numbers are the decoding accuracies.
        seen = defaultdict(int)
        sub = []
        for ex in examples:
            key = (ex["family"], ex["difficulty"])
            if seen[key] < a.greedy_check:
                seen[key] += 1
                sub.append(ex)
        check_depths = [r for r in (4, 32) if r in depths] or depths[:1]
        g = summarize(sub, run_examples(model, tok, sub, check_depths, 1.0, a.seed + 1, "greedy"), ["family"])
        f = summarize(sub, run_examples(model, tok, sub, check_depths, 1.0, a.seed + 1, "forced"), ["family"])
        report["greedy_check"] = {"n": len(sub), "depths": check_depths, "greedy": g["family"],
                                  "forced": f["family"]}
        for fam in g["family"]:
            print(f"greedy check {fam:8s} " + "  ".join(
                f"r{r}: greedy {g['family'][fam][str(r)]:.3f} forced {f['family'][fam][str(r)]:.3f}"
                for r in check_depths), flush=True)
    if a.workloads and not a.workload:
        report["workloads"] = {}
        for name in sorted(os.listdir(a.workloads)):
            if not name.endswith(".jsonl"):
                continue
            with open(os.path.join(a.workloads, name)) as f:
                wl = [json.loads(line) for line in f if line.strip()]
            res = run_examples(model, tok, wl, depths, 1.0, a.seed + 2, a.mode)
            report["workloads"][name] = summarize(wl, res, ["class"])["class"]
            for c, v in report["workloads"][name].items():
                print(f"workload {name:16s} {c:24s} n={v['n']:4d}  " +
                      "  ".join(f"r{r}={v[str(r)]:.3f}" for r in depths), flush=True)
    report["eval_seconds"] = round(time.time() - t0, 1)
    if a.workload:
        text = json.dumps(report, indent=1)
        if a.out:
            open(a.out, "w").write(text + "\n")
        else:
            print(text)
        return report
    out = a.out or os.path.join(a.model, "eval.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    for c in report["acceptance"].get("1", []):
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['value']}", flush=True)
    plot(report, os.path.join(a.model, "accuracy_vs_depth.png"))
    if a.model_card:
        write_model_card(a.model, report)
    print(f"wrote {out}" + (" and MODEL_CARD.md" if a.model_card else "") +
          f" ({report['eval_seconds'] / 60:.1f} min)", flush=True)
    return report


if __name__ == "__main__":
    main()
