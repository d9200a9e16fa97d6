"""The ``ItemIndex`` artifact every indexer produces, collision handling and index statistics.

An index says, for every item, which tokens stand for it. Code-based indexers (alignment,
RQ-VAE, CID, SemID, IID) give each item a tuple of integer codes, one per level, written as new
vocabulary tokens ``<a_12><b_3>...`` (level letters a, b, c, ...); text indexers (TID, RID) give
each item a string the backbone's own tokenizer splits (and an end marker closes it). Either
way ``item_strings[i]`` is exactly what the LLM reads and writes for item i, and
``new_tokens`` are the tokens to add to the vocabulary.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INDEX_FILE = "index.json"
CODES_FILE = "codes.npy"


def level_letter(level: int) -> str:
    """a, b, ..., z, then aa, ab, ... for very deep indexes."""
    letters = string.ascii_lowercase
    return letters[level] if level < 26 else letters[level // 26 - 1] + letters[level % 26]


def code_token(level: int, code: int) -> str:
    return f"<{level_letter(level)}_{code}>"


def code_vocabulary(levels: int, sizes: list[int] | int) -> list[str]:
    """Every code token of an index with ``levels`` levels of ``sizes`` codes each."""
    sizes = [sizes] * levels if isinstance(sizes, int) else sizes
    return [code_token(lv, c) for lv in range(levels) for c in range(sizes[lv])]


def codes_to_strings(codes: np.ndarray) -> list[str]:
    return ["".join(code_token(lv, int(c)) for lv, c in enumerate(row)) for row in codes]


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code tuple is shared with at least one other item."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())


def resolve_collisions(
    codes: np.ndarray, distances: np.ndarray | None = None, sizes: list[int] | None = None
) -> np.ndarray:
    """Give every item a unique tuple by moving later duplicates to their next-best last-level code.

    ``distances[i, k]`` is item i's distance to code k of the last level (lower is better); without
    it the smallest free code is taken. The first item of each group keeps its tuple. When every
    last-level code under a prefix is taken, the item moves to the best free code of the level
    above (keeping the rest of its prefix) and so on; ``sizes`` gives the codes per level (default:
    the largest code used + 1). Returns a new array; raises if the code space is exhausted.
    """
    codes = codes.copy()
    n, levels = codes.shape
    taken = {tuple(r) for r in np.unique(codes, axis=0)}
    seen: set[tuple] = set()
    sizes = list(sizes) if sizes is not None else [int(codes[:, lv].max()) + 1 for lv in range(levels)]
    k_last = sizes[-1] if distances is None else distances.shape[1]
    for i in range(n):
        t = tuple(int(c) for c in codes[i])
        if t not in seen:
            seen.add(t)
            continue
        order = np.argsort(distances[i], kind="stable") if distances is not None else np.arange(k_last)
        placed = False
        for c in order:
            cand = t[:-1] + (int(c),)
            if cand not in taken:
                placed = True
                break
        if not placed:
            # the whole last level under this prefix is used: vary the level above as well
            for depth in range(levels - 2, -1, -1):
                for c_up in range(sizes[depth]):
                    for c in order:
                        cand = t[:depth] + (c_up,) + t[depth + 1 : -1] + (int(c),)
                        if cand not in taken:
                            placed = True
                            break
                    if placed:
                        break
                if placed:
                    break
        if not placed:
            raise ValueError("code space exhausted: more items than distinct code tuples")
        codes[i] = cand
        taken.add(cand)
        seen.add(cand)
    return codes


def append_disambiguation(codes: np.ndarray) -> np.ndarray:
    """TIGER's fallback: add a last level numbering the items that share a tuple (0, 1, 2, ...)."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    extra = np.zeros(len(codes), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(inverse):
        extra[i] = seen.get(g, 0)
        seen[g] = extra[i] + 1
    return np.hstack([codes, extra[:, None]])


def unique_codes(codes: np.ndarray, distances: np.ndarray | None, sizes: list[int]) -> tuple[np.ndarray, list[int]]:
    """Resolve collisions in place of the last level when the code space allows it, else append a
    disambiguation level. Returns the codes and the per-level sizes."""
    try:
        return resolve_collisions(codes, distances, sizes), list(sizes)
    except ValueError:
        out = append_disambiguation(codes)
        return out, [*sizes, int(out[:, -1].max()) + 1]


def with_id_level(index: ItemIndex) -> ItemIndex:
    """``index`` with a last level that is each item's own token: item i's tuple gains the code i
    (one token per item, shared by no other item). The levels before it carry the shared meaning and
    narrow the choice; the last token is the item's identity, with an input and an output row of its
    own, as an ID-based sequential model has. The trie then offers, under each prefix, exactly the
    items of that prefix. The level goes on the indexer's codes before collision handling
    (``raw_codes``), which the id level makes needless. An item added after training gets its
    cluster codes from the codebooks and the next id (see :meth:`ItemIndex.extended`); its own token
    has no trained row, so the decoder scores it by the cold-item back-off."""
    if index.codes is None:
        raise ValueError(f"the {index.method} index has no codes to add an item level to")
    n = index.n_items
    base = index.codes if index.raw_codes is None else np.asarray(index.raw_codes, dtype=np.int64)
    sizes = index.sizes[: base.shape[1]]  # without a level appended for collisions
    codes = np.hstack([base, np.arange(n, dtype=np.int64)[:, None]])
    return ItemIndex.from_codes(index.method, codes, [*sizes, n], end_token=index.end_token,
                                stats={**index.stats, "id_level": True}, config={**index.config, "id_level": True})


def perplexity(codes_at_level: np.ndarray, size: int) -> float:
    """exp(entropy) of the code distribution at one level: how many codes are effectively used."""
    p = np.bincount(codes_at_level, minlength=size).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@dataclass
class ItemIndex:
    """Item -> tokens, shared by every indexer and consumed by the tasks, decoder and server."""

    method: str
    item_strings: list[str]
    new_tokens: list[str] = field(default_factory=list)
    codes: np.ndarray | None = None  # [n_items, levels] for code-based indexes
    sizes: list[int] = field(default_factory=list)  # codes per level
    end_token: str | None = None  # closes variable-length (text) identifiers
    stats: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    #: the codes before collision handling, where the indexer made them unique (not saved): an id
    #: level makes every tuple unique by itself, so it goes on these (see :func:`with_id_level`)
    raw_codes: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.item_strings)

    @property
    def levels(self) -> int:
        return 0 if self.codes is None else int(self.codes.shape[1])

    @property
    def id_level(self) -> bool:
        """Whether the last level is each item's own token (:func:`with_id_level`)."""
        return bool(self.config.get("id_level"))

    def extended(self, codes: np.ndarray) -> ItemIndex:
        """This index with items added after training: ``codes`` [n_items + added, levels] holds the
        trained items' tuples, then the added items'. The vocabulary (``new_tokens``, ``sizes``) stays
        the trained one, so a model built from the extended index is the trained model.

        On a plain index the added items' codes are old tokens. On an id-level index an added item's
        last code is its own position (``n_items``, ``n_items + 1``, ...), one past the trained item
        tokens: its token string (``<b_{position}>``) names a token the model never had, which
        :func:`genrec.llm.encode.item_token_ids` maps past the vocabulary and the decoder scores by
        the cold-item back-off (:func:`genrec.decode.beam._backoff`) without reading a model row."""
        if self.codes is None:
            raise ValueError(f"the {self.method} index has no codes to add items to")
        codes = np.asarray(codes, dtype=np.int64)
        n = self.n_items
        if codes.ndim != 2 or codes.shape[1] != self.levels or len(codes) < n or (codes[:n] != self.codes).any():
            raise ValueError(f"expected the {n} trained items' {self.levels}-level codes followed by the added items'")
        shared = self.levels - 1 if self.id_level else self.levels  # the levels whose codes are trained tokens
        added = codes[n:]
        if ((added[:, :shared] < 0) | (added[:, :shared] >= np.asarray(self.sizes[:shared]))).any():
            raise ValueError(f"an added item's codes are outside the index's code sizes {self.sizes[:shared]}")
        if self.id_level and (added[:, -1] != np.arange(n, len(codes))).any():
            raise ValueError("on an id-level index an added item's last code is its position (the next id)")
        return ItemIndex(self.method, codes_to_strings(codes), list(self.new_tokens), codes, list(self.sizes),
                         self.end_token, dict(self.stats), dict(self.config))

    @classmethod
    def from_codes(cls, method: str, codes: np.ndarray, sizes: list[int], **kw) -> ItemIndex:
        codes = np.asarray(codes, dtype=np.int64)
        return cls(
            method=method,
            item_strings=codes_to_strings(codes),
            new_tokens=code_vocabulary(codes.shape[1], sizes),
            codes=codes,
            sizes=list(sizes),
            **kw,
        )

    def trie(self, token_ids: list[list[int]] | None = None):
        """The trie of valid identifiers: over the code tuples, or over the given per-item token ids
        (what a constrained decoder walks; see :func:`genrec.llm.encode.item_token_ids`)."""
        from genrec.index.trie import Trie

        if token_ids is None:
            if self.codes is None:
                raise ValueError(f"the {self.method} index has no codes: pass the items' token ids")
            return Trie(self.codes.tolist())
        return Trie(token_ids)

    def is_unique(self) -> bool:
        return len(set(self.item_strings)) == self.n_items

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "method": self.method,
            "item_strings": self.item_strings,
            "new_tokens": self.new_tokens,
            "sizes": self.sizes,
            "end_token": self.end_token,
            "stats": self.stats,
            "config": self.config,
        }
        (folder / INDEX_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        if self.codes is not None:
            np.save(folder / CODES_FILE, self.codes)

    @classmethod
    def load(cls, folder: str | Path) -> ItemIndex:
        folder = Path(folder)
        meta = json.loads((folder / INDEX_FILE).read_text())
        codes = np.load(folder / CODES_FILE, allow_pickle=False) if (folder / CODES_FILE).is_file() else None
        return cls(codes=codes, **meta)


def prefix_sharing(codes: np.ndarray, pairs: np.ndarray) -> float:
    """Mean length of the shared code prefix over item pairs [P, 2]."""
    if len(pairs) == 0:
        return 0.0
    a, b = codes[pairs[:, 0]], codes[pairs[:, 1]]
    same = a == b
    # length of the leading run of True per row
    return float(np.cumprod(same, axis=1).sum(axis=1).mean())
