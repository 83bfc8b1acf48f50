"""PyTorch reference implementation of the Huginn recurrent-depth architecture.

Mirrors the forward pass of Huginn-0125 (see the architecture notes): scaled token
embedding -> prelude sandwich blocks -> r iterations of
    s = core_block(adapter(cat[s, e]))
-> ln_f -> coda -> ln_f -> head. Parameter names match the checkpoint layout
(transformer.wte.weight, transformer.core_block.0.attn.Wqkv.weight, lm_head.weight, ...).

The module can run in float32 (default) or float64 (`model.double()`); RoPE angles are
always computed in float32 like the original, then cast to the compute dtype.
Per-token exits and the `compress-sN` KV strategy are in adaptive.py (generate_adaptive).
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from safetensors_io import load_file
except ImportError:  # imported as a package module
    from .safetensors_io import load_file


class HuginnConfig:
    """The config.json fields the forward pass needs."""

    def __init__(self, d):
        self.raw = dict(d)
        self.n_embd = int(d["n_embd"])
        self.n_heads = int(d.get("n_heads", d.get("num_attention_heads")))
        self.num_key_value_heads = int(d.get("num_key_value_heads", self.n_heads))
        if self.num_key_value_heads != self.n_heads:
            raise ValueError("grouped-query attention is not part of this architecture")
        self.head_dim = int(d.get("head_dim", self.n_embd // self.n_heads))
        if self.head_dim * self.n_heads != self.n_embd:
            raise ValueError("head_dim * n_heads must equal n_embd")
        self.vocab_size = int(d["vocab_size"])
        self.padded_vocab_size = int(d.get("padded_vocab_size", self.vocab_size))
        self.intermediate_size = int(d["intermediate_size"])
        self.n_layers_in_prelude = int(d["n_layers_in_prelude"])
        self.n_layers_in_recurrent_block = int(d["n_layers_in_recurrent_block"])
        self.n_layers_in_coda = int(d["n_layers_in_coda"])
        self.block_size = int(d.get("block_size", 4096))
        self.rope_base = float(d.get("rope_base", 50000.0))
        self.norm_eps = float(d.get("norm_eps", 1e-6))
        self.qk_bias = bool(d.get("qk_bias", True))
        self.tie_embeddings = bool(d.get("tie_embeddings", True))
        self.mean_recurrence = int(d.get("mean_recurrence", 32))
        if bool(d.get("bias", False)):
            raise ValueError("linear biases are not supported (bias must be false)")
        iv = d.get("init_values") or {}
        self.init_std = float(iv.get("std", math.sqrt(2.0 / (5.0 * self.n_embd))))
        self.embed_scale = float(iv.get("embed_scale", math.sqrt(self.n_embd)))

    @classmethod
    def from_file(cls, path):
        with open(path) as f:
            return cls(json.load(f))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in at least float32, cast back, then scale.
        xf = x if x.dtype == torch.float64 else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def rope_tables(head_dim, positions, base):
    """cos, sin of shape [T, head_dim/2] in float32 for integer `positions` [T]."""
    idx = torch.arange(0, head_dim, 2, dtype=torch.float32)
    inv_freq = 1.0 / (base ** (idx / head_dim))
    angles = torch.outer(positions.to(torch.float32), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def freqs_cis_buffer(head_dim, block_size, base):
    """The [1, block_size, 1, head_dim/2, 2] (cos, sin) float32 buffer of the original."""
    cos, sin = rope_tables(head_dim, torch.arange(block_size), base)
    return torch.stack([cos, sin], dim=-1)[None, :, None, :, :].contiguous()


def apply_rope(x, cos, sin):
    """x [B, T, H, hd]; cos, sin [1, T, 1, hd/2] in x's dtype. Rotates adjacent pairs
    (2i, 2i+1) by the angle of frequency i."""
    x2 = x.unflatten(-1, (-1, 2))
    a, b = x2[..., 0], x2[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)


class KVCache:
    """The `full` lookup strategy: one K/V store per slot, every slot keeps every token.

    Slots: prelude layer i -> i; core layer j of iteration `step` (1-based) ->
    n_prelude + n_core * (step - 1) + j; coda layer k -> -(k + 1) (counted from the end,
    i.e. after every core slot, as in the original)."""

    def __init__(self):
        self.k = {}
        self.v = {}
        self.seen = 0  # tokens stored in slot 0, i.e. fully processed positions

    def update(self, slot, k, v):
        """k, v: [B, H, T, hd] for the new tokens. Returns all keys/values of the slot."""
        if slot in self.k:
            self.k[slot] = torch.cat([self.k[slot], k], dim=2)
            self.v[slot] = torch.cat([self.v[slot], v], dim=2)
        else:
            self.k[slot] = k
            self.v[slot] = v
        return self.k[slot], self.v[slot]

    def num_slots(self):
        return len(self.k)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        d = cfg.n_embd
        self.Wqkv = nn.Linear(d, 3 * d, bias=False)
        self.use_qk_bias = cfg.qk_bias
        if cfg.qk_bias:
            self.qk_bias = nn.Parameter(torch.zeros(2, 1, self.n_head, self.head_dim))
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, cache=None, slot=None):
        B, T, D = x.shape
        H, hd = self.n_head, self.head_dim
        q, k, v = self.Wqkv(x).split(D, dim=-1)
        q = q.view(B, T, H, hd)
        k = k.view(B, T, H, hd)
        v = v.view(B, T, H, hd)
        if self.use_qk_bias:
            q = q + self.qk_bias[0]
            k = k + self.qk_bias[1]
        q, k = apply_rope(torch.cat([q, k], dim=2), cos, sin).split(H, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        if cache is not None:
            k, v = cache.update(slot, k, v)
        S = k.shape[2]
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if T > 1:
            # Lower-right causal mask: query i (absolute S - T + i) sees keys <= itself.
            qi = torch.arange(T)[:, None] + (S - T)
            kj = torch.arange(S)[None, :]
            scores = scores.masked_fill(kj > qi, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.proj(y)


class GatedMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class SandwichBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm_1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = GatedMLP(cfg)
        self.norm_3 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.norm_4 = RMSNorm(cfg.n_embd, cfg.norm_eps)

    def forward(self, x, cos, sin, cache=None, slot=None):
        x = self.norm_2(x + self.attn(self.norm_1(x), cos, sin, cache, slot))
        x = self.norm_4(x + self.mlp(self.norm_3(x)))
        return x


class Huginn(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, d),
                prelude=nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_prelude)),
                adapter=nn.Linear(2 * d, d, bias=False),
                core_block=nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_recurrent_block)),
                coda=nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_coda)),
                ln_f=RMSNorm(d, cfg.norm_eps),
            )
        )
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(d, cfg.padded_vocab_size, bias=False)

    # ---- loading -------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path, dtype=torch.float32):
        """Loads config.json + model.safetensors from a checkpoint directory."""
        cfg = HuginnConfig.from_file(os.path.join(path, "config.json"))
        model = cls(cfg)
        tensors = load_file(os.path.join(path, "model.safetensors"), dtype=torch.float32)
        model.load_tensors(tensors)
        return model.to(dtype).eval()

    def load_tensors(self, tensors):
        tensors = dict(tensors)
        tensors.pop("freqs_cis", None)  # recomputed, not a parameter
        if self.cfg.tie_embeddings:
            tensors.pop("lm_head.weight", None)  # a stored copy of the tied head
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if missing or extra:
            raise ValueError(f"checkpoint mismatch: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for name, p in own.items():
                t = tensors[name]
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(t.shape)} != {tuple(p.shape)}")
                p.copy_(t.to(p.dtype))

    # ---- pieces of the forward pass --------------------------------------------------

    @property
    def dtype(self):
        return self.transformer.wte.weight.dtype

    def head_weight(self):
        return self.transformer.wte.weight if self.cfg.tie_embeddings else self.lm_head.weight

    def _rope(self, start, T):
        """cos, sin for positions start..start+T-1, shaped [1, T, 1, hd/2], compute dtype."""
        cos, sin = rope_tables(self.cfg.head_dim, torch.arange(start, start + T), self.cfg.rope_base)
        return cos[None, :, None, :].to(self.dtype), sin[None, :, None, :].to(self.dtype)

    def core_slot(self, step, j):
        return self.cfg.n_layers_in_prelude + self.cfg.n_layers_in_recurrent_block * (step - 1) + j

    def embed(self, ids, cos, sin, cache=None):
        """Scaled embedding followed by the prelude: e [B, T, d]."""
        x = self.transformer.wte(ids) * self.cfg.embed_scale
        for i, block in enumerate(self.transformer.prelude):
            x = block(x, cos, sin, cache, i)
        return x

    def initial_state(self, e, init_scale=1.0):
        """Truncated normal (std init_std * init_scale, cut at +-3 std) times embed_scale."""
        std = self.cfg.init_std * init_scale
        if std <= 0:
            return torch.zeros_like(e)
        x = torch.empty_like(e)
        nn.init.trunc_normal_(x, mean=0.0, std=std, a=-3 * std, b=3 * std)
        return x * self.cfg.embed_scale

    def core_step(self, s, e, cos, sin, step, cache=None):
        """One iteration (1-based `step` numbers the cache slots)."""
        x = self.transformer.adapter(torch.cat([s, e], dim=-1))
        for j, block in enumerate(self.transformer.core_block):
            x = block(x, cos, sin, cache, self.core_slot(step, j))
        return x

    def predict(self, s, cos, sin, cache=None):
        """ln_f -> coda -> ln_f -> head. Logits in at least float32."""
        x = self.transformer.ln_f(s)
        for k, block in enumerate(self.transformer.coda):
            x = block(x, cos, sin, cache, -(k + 1))
        x = self.transformer.ln_f(x)
        logits = x @ self.head_weight().t()
        return logits if logits.dtype == torch.float64 else logits.float()

    # ---- public entry points -------------------------------------------------------

    @torch.no_grad()
    def forward(self, ids, num_steps=None, init_scale=1.0, input_states=None, cache=None,
                return_state=False):
        """ids [B, T] -> logits [B, T, padded_vocab].

        `input_states` [B, T, d] replaces the random initial state; `init_scale` 0 gives
        the zero state. With `cache` (a KVCache), the tokens continue the cached sequence
        (prefill or one-token decode). With `return_state`, also returns the last raw core
        output s_r (before ln_f), which can be fed back as `input_states`."""
        r = self.cfg.mean_recurrence if num_steps is None else int(num_steps)
        B, T = ids.shape
        start = cache.seen if cache is not None else 0
        cos, sin = self._rope(start, T)
        e = self.embed(ids, cos, sin, cache)
        s = self.initial_state(e, init_scale) if input_states is None else input_states.to(e.dtype)
        for step in range(1, r + 1):
            s = self.core_step(s, e, cos, sin, step, cache)
        logits = self.predict(s, cos, sin, cache)
        if cache is not None:
            cache.seen += T
        return (logits, s) if return_state else logits


def load(path, dtype=torch.float32):
    return Huginn.from_dir(path, dtype)
