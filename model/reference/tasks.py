"""Seeded task generators for ponder-micro, the bundled recurrent-depth model.

Every example is a prompt followed by its answer. The model sees

    <|begin_text|> PROMPT ANSWER <|end_text|>

with the tokenizer of train.py (byte-level characters, one merged token per chain
term such as `+4` or `*3`, every other character one token). The prompt ends right
before the answer; the answer is followed by the end marker `<|end_text|>`, so greedy
generation stops there.

Families (the difficulty knob in brackets):

  chain    hard   a non-commutative chain of k operations mod 10 evaluated left to
                  right from 0; each term is one token pair `+d` (d = 0..9) or `*3`,
                  `*7`, `*9`; the first term is always `+d`.   [k = 1..24]
                  `+4*3+7*9=` -> `1`   (0+4=4, 4*3=12->2, 2+7=9, 9*9=81->1)
  copy     easy   copy 3..8 lowercase letters.               [length]
                  `qhbzt|` -> `qhbzt`
  reverse  easy   reverse 3..8 lowercase letters.            [length]
                  `qhbzt<` -> `tzbhq`
  lookup   easy   2..6 key/digit pairs with distinct keys, then `?key`. [pairs]
                  `a3q7x1?q` -> `7`

Held-out split: an example belongs to the test split when a hash of its family and
prompt falls in a fixed bucket (`is_heldout`, 10% of the prompt space). Training draws
reject those prompts, so no test prompt is ever trained on. For the shortest chains
(k = 1, 2, 3, whose whole prompt space has 10, 130 and 1690 prompts) the test split is
the few held-out prompts there are; `test_set` enumerates them.
"""

import hashlib
import itertools
import random

BOS = "<|begin_text|>"
EOS = "<|end_text|>"

HARD_FAMILIES = ("chain",)
EASY_FAMILIES = ("copy", "reverse", "lookup")
FAMILIES = HARD_FAMILIES + EASY_FAMILIES

# Difficulty range of each family (inclusive).
LEVELS = {
    "chain": (1, 24),
    "copy": (3, 8),
    "reverse": (3, 8),
    "lookup": (2, 6),
}

MUL_FACTORS = (3, 7, 9)  # units mod 10: multiplication by them is a permutation
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
CHAIN_TERMS = [f"+{d}" for d in range(10)] + [f"*{m}" for m in MUL_FACTORS]

HELDOUT_PERCENT = 10


# ---- the families --------------------------------------------------------------------


def chain_value(prompt):
    """Evaluates `+4*3+7*9=` left to right mod 10."""
    body = prompt.rstrip("=")
    v = 0
    for i in range(0, len(body), 2):
        op, d = body[i], int(body[i + 1])
        v = (v + d) % 10 if op == "+" else (v * d) % 10
    return v


def make_chain(rng, k):
    terms = [f"+{rng.randrange(10)}"]
    for _ in range(k - 1):
        terms.append(CHAIN_TERMS[rng.randrange(len(CHAIN_TERMS))])
    prompt = "".join(terms) + "="
    return prompt, str(chain_value(prompt))


def make_copy(rng, n):
    s = "".join(rng.choice(LETTERS) for _ in range(n))
    return s + "|", s


def make_reverse(rng, n):
    s = "".join(rng.choice(LETTERS) for _ in range(n))
    return s + "<", s[::-1]


def make_lookup(rng, n):
    keys = rng.sample(LETTERS, n)
    vals = [rng.choice(DIGITS) for _ in range(n)]
    q = rng.randrange(n)
    prompt = "".join(k + v for k, v in zip(keys, vals)) + "?" + keys[q]
    return prompt, vals[q]


MAKERS = {"chain": make_chain, "copy": make_copy, "reverse": make_reverse, "lookup": make_lookup}


def solve(family, prompt):
    """The answer of a prompt, recomputed from its text (a check on the generators)."""
    if family == "chain":
        return str(chain_value(prompt))
    if family == "copy":
        return prompt[:-1]
    if family == "reverse":
        return prompt[:-1][::-1]
    if family == "lookup":
        body, key = prompt.split("?")
        pairs = {body[i]: body[i + 1] for i in range(0, len(body), 2)}
        return pairs[key]
    raise ValueError(family)


def difficulty_of(family, prompt):
    if family == "chain":
        return (len(prompt) - 1) // 2
    if family in ("copy", "reverse"):
        return len(prompt) - 1
    if family == "lookup":
        return (len(prompt) - 2) // 2
    raise ValueError(family)


# ---- the split -----------------------------------------------------------------------


def is_heldout(family, prompt):
    h = hashlib.sha256(f"{family}\x00{prompt}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") % 100 < HELDOUT_PERCENT


def text_of(prompt, answer):
    """The full training text of an example (special tokens spelled out)."""
    return BOS + prompt + answer + EOS


def sample(rng, family, level, split="train", max_tries=10000):
    """One (prompt, answer) of `family` at difficulty `level` from `split`."""
    make = MAKERS[family]
    want_heldout = split == "test"
    for _ in range(max_tries):
        prompt, answer = make(rng, level)
        if is_heldout(family, prompt) == want_heldout:
            return prompt, answer
    raise RuntimeError(f"no {split} example for {family} at level {level}")


def _enumerate_chain(k):
    firsts = [f"+{d}" for d in range(10)]
    for first in firsts:
        for rest in itertools.product(CHAIN_TERMS, repeat=k - 1):
            yield first + "".join(rest) + "="


def test_set(family, level, n, seed=20250101):
    """Up to `n` distinct held-out examples of `family` at `level`, deterministic.

    Returns a list of dicts {prompt, answer, family, difficulty}."""
    out = []
    if family == "chain" and level <= 3:
        prompts = [p for p in _enumerate_chain(level) if is_heldout("chain", p)]
        random.Random(seed * 1000 + level).shuffle(prompts)
        prompts = prompts[:n]
    else:
        rng = random.Random(f"{seed}-{family}-{level}")
        seen = set()
        prompts = []
        tries = 0
        while len(prompts) < n and tries < 200 * n:
            tries += 1
            p, _ = MAKERS[family](rng, level)
            if p in seen or not is_heldout(family, p):
                continue
            seen.add(p)
            prompts.append(p)
    for p in prompts:
        out.append({"prompt": p, "answer": solve(family, p), "family": family, "difficulty": level})
    return out


def full_test_split(per_level=200, seed=20250101, families=FAMILIES):
    """The evaluation split: `per_level` distinct held-out examples per family and level."""
    out = []
    for fam in families:
        lo, hi = LEVELS[fam]
        for level in range(lo, hi + 1):
            out.extend(test_set(fam, level, per_level, seed))
    return out


# ---- training mixture ------------------------------------------------------------------


class Curriculum:
    """Chain difficulty schedule: half the chains at the current k, half uniform in 1..k;
    k rises by one when the pooled training accuracy of the last `window` steps at the
    current k exceeds `threshold` (and at least `min_steps` steps were spent on it)."""

    def __init__(self, k_start=2, k_max=LEVELS["chain"][1], threshold=0.8, window=10, min_steps=10):
        self.k = k_start
        self.k_max = k_max
        self.threshold = threshold
        self.window = window
        self.min_steps = min_steps
        self.history = []  # (correct, total) per step at the current k
        self.raised_at = {k_start: 0}

    def level(self, rng):
        if rng.random() < 0.5:
            return self.k
        return rng.randint(1, self.k)

    def accuracy(self):
        h = self.history[-self.window :]
        c = sum(x[0] for x in h)
        t = sum(x[1] for x in h)
        return c / t if t else 0.0

    def update(self, correct, total, step):
        """Records one step's accuracy at the current k; returns True if k was raised."""
        if total:
            self.history.append((correct, total))
        if (self.k < self.k_max and len(self.history) >= self.min_steps
                and self.accuracy() > self.threshold):
            self.k += 1
            self.history = []
            self.raised_at[self.k] = step
            return True
        return False

    def state_dict(self):
        return {"k": self.k, "history": list(self.history), "raised_at": dict(self.raised_at)}

    def load_state_dict(self, d):
        self.k = d["k"]
        self.history = [tuple(x) for x in d["history"]]
        self.raised_at = {int(a): b for a, b in d["raised_at"].items()}


# Mixture of a training batch: 70% chain, 30% easy (split evenly).
MIX = (("chain", 0.70), ("copy", 0.10), ("reverse", 0.10), ("lookup", 0.10))


def training_batch(rng, n, curriculum):
    """`n` training examples: list of (family, level, prompt, answer)."""
    out = []
    names = [m[0] for m in MIX]
    weights = [m[1] for m in MIX]
    for _ in range(n):
        fam = rng.choices(names, weights)[0]
        if fam == "chain":
            level = curriculum.level(rng)
        else:
            lo, hi = LEVELS[fam]
            level = rng.randint(lo, hi)
        prompt, answer = sample(rng, fam, level, "train")
        out.append((fam, level, prompt, answer))
    return out


def _self_check():
    rng = random.Random(0)
    assert chain_value("+4*3+7*9=") == 1
    for fam in FAMILIES:
        lo, hi = LEVELS[fam]
        for level in range(lo, hi + 1):
            for _ in range(50):
                p, a = sample(rng, fam, level, "train")
                assert not is_heldout(fam, p)
                assert solve(fam, p) == a, (fam, p, a)
                assert difficulty_of(fam, p) == level, (fam, p, level)
    test = full_test_split(per_level=50)
    assert all(is_heldout(t["family"], t["prompt"]) for t in test)
    counts = {}
    for t in test:
        counts[(t["family"], t["difficulty"])] = counts.get((t["family"], t["difficulty"]), 0) + 1
    return counts


if __name__ == "__main__":
    counts = _self_check()
    for (fam, lvl), c in sorted(counts.items()):
        print(f"{fam:8s} {lvl:2d} {c}")
    rng = random.Random(1)
    for fam in FAMILIES:
        p, a = sample(rng, fam, LEVELS[fam][1], "train")
        print(repr(text_of(p, a)))
