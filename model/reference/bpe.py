"""Byte-level BPE in the Hugging Face `tokenizers` tokenizer.json format.

Contains: the GPT-2 byte <-> unicode mapping, the pre-tokenizer split, a tiny BPE
trainer, a tokenizer.json builder and an encoder/decoder that reads tokenizer.json.

The split regex in tokenizer.json uses \\p{L} / \\p{N}; Python's `re` has no Unicode
properties, so the encoder uses an equivalent pattern that is exact for ASCII input
([^\\W\\d_] for letters, \\d for digits).
"""

import json
import re

SPLIT_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PY_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")

SPECIAL_TOKENS = [
    "<|begin_text|>",
    "<|end_text|>",
    "<|begin_header|>",
    "<|end_header|>",
    "<|end_turn|>",
    "<|pad|>",
]


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def pretokenize(text):
    """Split into pre-tokens, each mapped to its byte-level character string."""
    return ["".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8")) for piece in _PY_SPLIT.findall(text)]


def train(corpus, num_merges):
    """Learns up to `num_merges` merges on `corpus`. Returns (vocab dict, merges list).

    Ids 0..255 are the byte characters in byte order; each merge that creates a new
    string gets the next id. Ties between equally frequent pairs go to the
    lexicographically smallest pair, so training is deterministic."""
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    counts = {}
    for w in pretokenize(corpus):
        counts[w] = counts.get(w, 0) + 1
    words = [(list(w), c) for w, c in counts.items()]
    merges = []
    while len(merges) < num_merges:
        pairs = {}
        for syms, c in words:
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        a, b = best
        merges.append(f"{a} {b}")
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        for syms, _ in words:
            i = 0
            while i < len(syms) - 1:
                if syms[i] == a and syms[i + 1] == b:
                    syms[i : i + 2] = [a + b]
                i += 1
    return vocab, merges


def build_tokenizer_json(vocab, merges, split=True):
    """The tokenizer.json dict, special tokens appended after the BPE vocab.

    split=False leaves out the Split pre-tokenizer: the whole text (between special
    tokens) is one BPE word, so merges may join any adjacent characters."""
    specials = {tok: len(vocab) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    full_vocab = dict(vocab)
    full_vocab.update(specials)
    bos, eos = "<|begin_text|>", "<|end_text|>"

    def special(tok):
        return {"SpecialToken": {"id": tok, "type_id": 0}}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": specials[t],
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": ([{"type": "Split", "pattern": {"Regex": SPLIT_REGEX}, "behavior": "Isolated",
                                "invert": False}] if split else [])
            + [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(bos), {"Sequence": {"id": "A", "type_id": 0}}, special(eos)],
            "pair": [
                special(bos),
                {"Sequence": {"id": "A", "type_id": 0}},
                special(eos),
                special(bos),
                {"Sequence": {"id": "B", "type_id": 1}},
                special(eos),
            ],
            "special_tokens": {t: {"id": t, "ids": [specials[t]], "tokens": [t]} for t in (bos, eos)},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": full_vocab,
            "merges": merges,
        },
    }


class Tokenizer:
    """Encoder/decoder for a byte-level BPE tokenizer.json (the subset written above)."""

    def __init__(self, tj):
        model = tj["model"]
        self.vocab = dict(model["vocab"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
        for tok, i in self.added.items():
            self.vocab.setdefault(tok, i)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        pre = tj.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [pre])
        self.split = any(p.get("type") == "Split" for p in steps)
        self.bos_id = self.added.get("<|begin_text|>")
        self.eos_id = self.added.get("<|end_text|>")
        if self.added:
            alts = sorted(self.added, key=len, reverse=True)
            self._added_re = re.compile("(" + "|".join(re.escape(a) for a in alts) + ")")
        else:
            self._added_re = None

    @classmethod
    def from_file(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def _bpe(self, word):
        syms = list(word)
        while len(syms) > 1:
            best, best_rank = None, None
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            a, b = syms[best], syms[best + 1]
            out, i = [], 0
            while i < len(syms):
                if i < len(syms) - 1 and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        return [self.vocab[s] for s in syms]

    def encode(self, text, add_special_tokens=False):
        ids = []
        pieces = self._added_re.split(text) if self._added_re else [text]
        for k, piece in enumerate(pieces):
            if not piece:
                continue
            if k % 2 == 1:  # a captured added token
                ids.append(self.added[piece])
                continue
            words = pretokenize(piece) if self.split else [
                "".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))]
            for w in words:
                ids.extend(self._bpe(w))
        if add_special_tokens:
            ids = [self.bos_id] + ids + [self.eos_id]
        return ids

    def decode(self, ids, skip_special_tokens=False):
        out = bytearray()
        for i in ids:
            tok = self.id_to_token[i]
            if tok in self.added:
                if not skip_special_tokens:
                    out.extend(tok.encode("utf-8"))
                continue
            out.extend(CHAR_TO_BYTE[c] for c in tok)
        return out.decode("utf-8", errors="replace")


if __name__ == "__main__":
    import sys

    tok = Tokenizer.from_file(sys.argv[1])
    for line in sys.argv[2:]:
        print(json.dumps(tok.encode(line)))
