"""Per-token adaptive generation on the PyTorch reference, step for step as the C++ runtime.

The algorithm is that of exec/adaptive.cc (GenerateAdaptive) with policy/exit_controller.cc
and policy/criteria.cc, and the KV cache of exec/kv_cache.cc with the per-position depth
lookup of exec/cpu/cpu_model.cc:

 - the prompt's rows go through prelude and core iterations together and exit on the LAST
   row's signals; every prompt position is recorded with that depth; then each generated
   token is one row;
 - the initial state is InitState (init_scale 0: zeros; otherwise the C++ SplitMix64 /
   Box-Muller truncated normal, ported exactly), or with warm_start (continuous CoT) the
   previous token's final raw core output;
 - signals are against the previous CHECK of the same token (p_0 uniform over vocab_size,
   H_0 = 100, s_0 = the initial state), computed in float64 with the formulas of
   policy/criteria.cc; a logit check runs ln_f -> coda -> ln_f -> head, which rewrites the
   coda KV of the rows (the last coda pass of a token is at its final state);
 - a check is due at step s when s >= check_from, s >= min_steps and
   (s - check_from) % check_every == 0; with gate_latent_below a logit check only runs when
   latent_diff < gate; exits at max_steps otherwise;
 - KV strategies `full` and `compress-sN` (core slot = (n_core * (iteration - 1) + layer)
   mod N): attention at core iteration i reads a past position p of depth d from core
   (min(i, d), layer) resolved through the strategy's slot mapping (with compress, the ring
   slot holds the latest write with that residue);
 - greedy decoding (argmax over vocab_size, first on ties), stop at `eos`, max_tokens, and
   the context limit (stop when cached tokens + 1 >= block_size).

Run the model in float64 (`Huginn.from_dir(path, dtype=torch.float64)`) for the exact-math
answer; make_exit_goldens.py writes tests/data/goldens/exits.json from it.
"""

import math

import torch

try:
    from huginn import Huginn  # noqa: F401  (for callers: from adaptive import Huginn)
except ImportError:  # imported as a package module
    from .huginn import Huginn  # noqa: F401

RULES = ("none", "kl", "minp-kl", "entropy-diff", "latent-diff", "cosine", "argmax-stability")
LOGIT_RULES = ("kl", "minp-kl", "entropy-diff", "argmax-stability")
LATENT_RULES = ("latent-diff", "cosine")


# ---- KV cache -----------------------------------------------------------------------------


def parse_kv(text):
    """'full' -> None; 'compress-sN' -> N (>= 1)."""
    if text == "full":
        return None
    if text.startswith("compress-s") and text[len("compress-s"):].isdigit():
        n = int(text[len("compress-s"):])
        if n >= 1:
            return n
    raise ValueError(f'unknown KV-cache strategy "{text}"')


class AdaptiveKVCache:
    """Position-indexed K/V slots with a lookup strategy and per-position depth.

    Drop-in for huginn.KVCache inside Huginn.embed / core_step / predict: `update(slot, k,
    v)` receives Huginn's slot numbers (prelude i, core n_prelude + n_core*(step-1) + j,
    coda -(k+1)), writes the new rows at positions [pos, pos + T) (overwriting: a second
    coda pass of the same rows replaces the first) and returns the keys/values visible to
    them, [B, H, pos + T, hd]. Set `pos` before each call of a chunk."""

    def __init__(self, cfg, strategy="full"):
        self.n_prelude = cfg.n_layers_in_prelude
        self.n_core = cfg.n_layers_in_recurrent_block
        self.ring = parse_kv(strategy)
        self.store = {}  # key -> (k, v), each [B, H, capacity, hd]
        self.depth = []  # per position: core iterations run (its last written iteration)
        self.tokens = 0  # positions whose whole forward pass (through the coda) is cached
        self.pos = 0  # first position of the chunk being computed

    def core_key(self, iteration, layer):
        c = self.n_core * (iteration - 1) + layer
        return ("core", c if self.ring is None else c % self.ring)

    def _write(self, key, k, v):
        B, H, T, hd = k.shape
        end = self.pos + T
        if key not in self.store:
            self.store[key] = (k.new_zeros(B, H, 0, hd), v.new_zeros(B, H, 0, hd))
        K, V = self.store[key]
        if K.shape[2] < end:
            pad = end - K.shape[2]
            K = torch.cat([K, K.new_zeros(B, H, pad, hd)], dim=2)
            V = torch.cat([V, V.new_zeros(B, H, pad, hd)], dim=2)
        K = K.clone()
        V = V.clone()
        K[:, :, self.pos:end] = k
        V[:, :, self.pos:end] = v
        self.store[key] = (K, V)
        return K[:, :, :end], V[:, :, :end]

    def update(self, slot, k, v):
        if slot < 0:
            return self._write(("coda", -slot - 1), k, v)
        if slot < self.n_prelude:
            return self._write(("prelude", slot), k, v)
        c = slot - self.n_prelude
        it, layer = c // self.n_core + 1, c % self.n_core
        K, V = self._write(self.core_key(it, layer), k, v)
        # Past positions that ran fewer iterations are read from their last iteration of
        # this layer (through the strategy's slot mapping).
        if self.pos == 0 or min(self.depth[: self.pos]) >= it:
            return K, V
        K, V = K.clone(), V.clone()
        for p in range(self.pos):
            src = min(it, self.depth[p])
            if src != it:
                Ks, Vs = self.store[self.core_key(src, layer)]
                K[:, :, p] = Ks[:, :, p]
                V[:, :, p] = Vs[:, :, p]
        return K, V

    def set_depth(self, count, iterations):
        end = self.pos + count
        if len(self.depth) < end:
            self.depth.extend([0] * (end - len(self.depth)))
        for p in range(self.pos, end):
            self.depth[p] = iterations


# ---- initial state (exec/cpu/cpu_model.cc InitState) ----------------------------------------

_M64 = (1 << 64) - 1


def _splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def init_state_row(cfg, seed, stream, pos, scale):
    """The C++ InitState row of position `pos`: a list of float32-rounded values."""
    d = cfg.n_embd
    if scale == 0.0:
        return [0.0] * d
    mult = cfg.embed_scale * scale
    state = seed & _M64
    state, _ = _splitmix64(state)
    state ^= (0xD1B54A32D192ED03 * (stream + 1)) & _M64
    state, _ = _splitmix64(state)
    state ^= (0x8CB92BA72F3D8DD7 * (pos + 1)) & _M64

    def uniform():
        nonlocal state
        state, z = _splitmix64(state)
        return ((z >> 11) + 0.5) * (1.0 / 9007199254740992.0)

    out = []
    for _ in range(d):
        while True:
            u1 = uniform()
            u2 = uniform()
            z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
            if abs(z) <= 3.0:
                break
        out.append(z * cfg.init_std * mult)
    return torch.tensor(out, dtype=torch.float64).float().double().tolist()


# ---- signals (policy/criteria.cc), float64 ---------------------------------------------------


def log_softmax(logits):
    x = logits.double()
    mx = x.max()
    return x - (mx + torch.log(torch.exp(x - mx).sum()))


def minp_log_probs(logits, min_p=0.1):
    p = torch.exp(log_softmax(logits))
    fill = 1.0 / p.numel()
    p = torch.where(p < min_p * p.max(), torch.full_like(p, fill), p)
    return torch.log(p / p.sum())


def kl_divergence(prev_lp, cur_lp):
    keep = prev_lp != -math.inf
    return float((torch.exp(prev_lp[keep]) * (prev_lp[keep] - cur_lp[keep])).sum())


def entropy(logits):
    lp = log_softmax(logits)
    keep = lp != -math.inf
    return float(-(torch.exp(lp[keep]) * lp[keep]).sum())


def argmax(logits):
    return int(torch.argmax(logits))  # first maximal index


def latent_diff(prev, cur):
    norm = float((cur * cur).sum())
    if norm == 0.0:
        return math.inf
    return math.sqrt(float(((cur - prev) ** 2).sum())) / math.sqrt(norm)


def cosine_distance(prev, cur):
    pn, cn = float((prev * prev).sum()), float((cur * cur).sum())
    if pn == 0.0 or cn == 0.0:
        return math.inf
    return 1.0 - float((prev * cur).sum()) / (math.sqrt(pn) * math.sqrt(cn))


def top2_gap(logits):
    """Largest minus second-largest logit (how close greedy / argmax is to a tie)."""
    top = torch.topk(logits.double(), 2).values
    return float(top[0] - top[1])


class SignalTracker:
    """policy::SignalTracker: the previous check's log-probs, entropy and latent row."""

    def begin(self, initial_latent):
        self.prev_lp = None  # uniform over vocab on first use
        self.prev_entropy = 100.0
        self.prev_latent = initial_latent.double().clone()

    def observe_logits(self, rule, logits):
        if rule in ("kl", "minp-kl"):
            cur = log_softmax(logits) if rule == "kl" else minp_log_probs(logits)
            if self.prev_lp is None:
                self.prev_lp = torch.full_like(cur, -math.log(cur.numel()))
            v = kl_divergence(self.prev_lp, cur)
            self.prev_lp = cur
            return v
        if rule == "entropy-diff":
            h = entropy(logits)
            v = abs(h - self.prev_entropy)
            self.prev_entropy = h
            return v
        if rule == "argmax-stability":
            return float(argmax(logits))
        raise ValueError(f"not a logit rule: {rule}")

    def observe_latent(self, latent):
        cur = latent.double()
        out = (latent_diff(self.prev_latent, cur), cosine_distance(self.prev_latent, cur))
        self.prev_latent = cur.clone()
        return out


# ---- the controller (policy/exit_controller.cc, without deadline / budget / load) -----------


class ExitController:
    def __init__(self, rule, threshold, min_steps, max_steps, check_every, check_from, gate):
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule}")
        self.rule = rule
        self.threshold = math.floor(threshold) if rule == "argmax-stability" else threshold
        self.min_steps, self.max_steps = min_steps, max_steps
        self.check_every, self.check_from, self.gate = max(1, check_every), check_from, gate

    def begin_token(self):
        self.prev_argmax = -1
        self.stable = 0

    def due(self, step):
        if self.rule == "none" or step < self.check_from or step < self.min_steps:
            return False
        return (step - self.check_from) % self.check_every == 0

    def observe(self, value):
        """One evaluated check: the rule's value (argmax-stability: the argmax); returns
        (converged, signal) where signal is the value (argmax-stability: the streak)."""
        if self.rule == "argmax-stability":
            tok = int(value)
            self.stable = self.stable + 1 if tok == self.prev_argmax else 0
            self.prev_argmax = tok
            return self.stable >= self.threshold, float(self.stable)
        return value < self.threshold, value


# ---- generation -------------------------------------------------------------------------------


@torch.no_grad()
def generate_adaptive(model, prompt_ids, rule="none", threshold=0.0, min_steps=1, max_steps=32,
                      check_every=1, check_from=1, gate_latent_below=None, warm_start=False,
                      kv="full", max_tokens=32, eos=None, init_scale=0.0, seed=0):
    """Greedy per-token adaptive generation of one sequence (batch 1).

    Returns a list with one dict per generated token (the first is the prompt's exit):
      token, steps, reason ("converged" / "max_steps"),
      signal:  the rule's value at the deciding check (None when the exit step ran no
               evaluated check, e.g. max_steps without a due check or a shut gate),
      margin:  min over the token's threshold comparisons (rule checks, and gate checks) of
               |value - threshold| / |threshold| (None when there were none),
      gap:     min over the token's logits rows used for a decision (argmax-stability checks
               and the final greedy pick) of the top-1 minus top-2 logit gap,
      latent_checks, logit_checks: the checks run, counted as policy::CheckCounts (a gated
               logit check is one latent check, plus one logit check when the gate opens)."""
    cfg = model.cfg
    if max_steps < 1 or min_steps < 1 or min_steps > max_steps:
        raise ValueError("the steps must satisfy 1 <= min <= max")
    if len(prompt_ids) >= cfg.block_size:
        raise ValueError("the prompt leaves no room in the context")
    V = cfg.vocab_size
    dt = model.dtype
    cache = AdaptiveKVCache(cfg, kv)
    ctl = ExitController(rule, threshold, min_steps, max_steps, check_every, check_from,
                         gate_latent_below)
    tracker = SignalTracker()
    out = []
    inp = list(prompt_ids)
    warm = None
    for produced in range(max_tokens):
        n = len(inp)
        cache.pos = cache.tokens
        cos, sin = model._rope(cache.pos, n)
        ids = torch.tensor([inp], dtype=torch.long)
        e = model.embed(ids, cos, sin, cache)
        if warm_start and produced > 0:
            s = warm.clone().view(1, 1, -1)
        else:
            rows = [init_state_row(cfg, seed, 0, cache.pos + t, init_scale) for t in range(n)]
            s = torch.tensor(rows, dtype=torch.float64).to(dt).view(1, n, -1)
        ctl.begin_token()
        tracker.begin(s[0, -1])
        logits = None
        signal, margin, gap, reason = None, None, math.inf, None
        latent_checks = logit_checks = 0

        def note(value, ref):
            nonlocal margin
            if ref != 0 and math.isfinite(value):
                m = abs(value - ref) / abs(ref)
                margin = m if margin is None else min(margin, m)

        step = 0
        while True:
            step += 1
            s = model.core_step(s, e, cos, sin, step, cache)
            cache.set_depth(n, step)
            logits = None
            signal = None
            converged = False
            if step >= min_steps and ctl.due(step):
                if rule in LATENT_RULES:
                    ld, cs = tracker.observe_latent(s[0, -1])
                    latent_checks += 1
                    value = cs if rule == "cosine" else ld
                    note(value, ctl.threshold)
                    converged, signal = ctl.observe(value)
                elif rule in LOGIT_RULES:
                    gate_open = True
                    if gate_latent_below is not None:
                        ld, _ = tracker.observe_latent(s[0, -1])
                        latent_checks += 1
                        note(ld, gate_latent_below)
                        gate_open = ld < gate_latent_below
                    if gate_open:
                        logits = model.predict(s, cos, sin, cache)[0, -1, :V]
                        value = tracker.observe_logits(rule, logits)
                        logit_checks += 1
                        if rule == "argmax-stability":
                            gap = min(gap, top2_gap(logits))
                        converged, signal = ctl.observe(value)
                        if rule != "argmax-stability":
                            note(value, ctl.threshold)
            if converged:
                reason = "converged"
                break
            if step >= max_steps:
                reason = "max_steps"
                break
        if logits is None:
            logits = model.predict(s, cos, sin, cache)[0, -1, :V]
        cache.tokens = max(cache.tokens, cache.pos + n)
        if warm_start:
            warm = s[0, -1].clone()
        nxt = argmax(logits)
        gap = min(gap, top2_gap(logits))
        out.append({"token": nxt, "steps": step, "reason": reason, "signal": signal,
                    "margin": margin, "gap": gap, "latent_checks": latent_checks,
                    "logit_checks": logit_checks})
        if eos is not None and nxt == eos:
            break
        if cache.tokens + 1 >= cfg.block_size:
            break
        inp = [nxt]
    return out
