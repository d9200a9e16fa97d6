"""The simple item indexings compared by Hua et al. (2023, "How to Index Item IDs for
Recommendation Foundation Models"): random ids (RID), titles (TID) and one token per item (IID).

- **RID** writes each item as a random integer in decimal, all of one digit count, unique and
  seeded. The backbone's tokenizer splits it (into digits, for most modern tokenizers); the end
  token ``<end_item>`` closes it.
- **TID** writes each item as its title, whitespace normalised. Titles are data: a title that
  contains ``<a_12>`` or ``<|im_end|>`` stays plain text here and is split like any text when
  tokenized. Duplicate titles are told apart by a suffix (" (2)", " (3)", ...), an empty title
  becomes "item <item id>", and no item string equals a new token.
- **IID** gives every item its own new token ``<item_i>``: codes ``[[i]]``, one level of
  ``n_items`` codes.

RID and TID have no codes; a later stage builds the decoding trie over the tokenizer's ids of
``item_strings[i]`` followed by the end token, which makes the sequences prefix-free (a string
that is a prefix of another still differs at the end token), so the indexers only make the
strings unique.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.dataset import Dataset
from genrec.index.base import ItemIndex, perplexity
from genrec.index.configs import END_TOKEN, IIDConfig, RIDConfig, TIDConfig  # noqa: F401 (END_TOKEN re-exported)
from genrec.index.inputs import IndexInputs
from genrec.index.semid import INDEXER_FILE, resolve_seed


def _save(folder: str | Path, method: str, config: dict, index: ItemIndex | None, extra: dict | None = None) -> None:
    if index is None:
        raise RuntimeError("save called before build")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"method": method, "config": config, **(extra or {})}
    (folder / INDEXER_FILE).write_text(json.dumps(meta, indent=1))
    index.save(folder)


def _load_meta(folder: str | Path) -> dict:
    return json.loads((Path(folder) / INDEXER_FILE).read_text())


def _text_stats(before: list[str], after: list[str]) -> dict:
    def rate(strings: list[str]) -> float:
        if not strings:
            return 0.0
        counts = Counter(strings)
        return sum(counts[s] > 1 for s in strings) / len(strings)

    return {"collision_rate_before": rate(before), "collision_rate_after": rate(after)}


# RID -------------------------------------------------------------------------------------
class RIDIndexer:
    """Random decimal ids of one length, unique, seeded."""

    method = "rid"
    config_class = RIDConfig

    def __init__(self, cfg: RIDConfig | None = None):
        self.cfg = cfg or RIDConfig()
        self.index: ItemIndex | None = None
        self.seed: int | None = None
        self.digits: int | None = None

    def build(self, inputs: IndexInputs) -> ItemIndex:
        n = inputs.dataset.n_items
        self.seed = resolve_seed(self.cfg.seed, inputs.seed)
        self.digits = self.cfg.digits or max(4, len(str(10 * n)))
        low, high = 10 ** (self.digits - 1), 10**self.digits
        if high - low < n:
            raise ValueError(f"{n} items do not fit in {self.digits}-digit ids")
        rng = np.random.default_rng(self.seed)
        ids = low + rng.choice(high - low, size=n, replace=False)
        strings = [str(int(v)) for v in ids]
        self.index = ItemIndex(
            method=self.method,
            item_strings=strings,
            new_tokens=[self.cfg.end_token],
            end_token=self.cfg.end_token,
            stats=_text_stats(strings, strings),
            config={**self.cfg.model_dump(), "seed_used": self.seed, "digits_used": self.digits},
        )
        return self.index

    def encode(self, count: int, taken: set[str] | None = None) -> list[str]:
        """Ids for ``count`` new items, of the catalogue's length, unique against ``taken``
        (default: the catalogue's strings) and each other; deterministic for a given catalogue."""
        if self.index is None:
            raise RuntimeError("encode called before build or load")
        used = set(self.index.item_strings) if taken is None else set(taken)
        low, high = 10 ** (self.digits - 1), 10**self.digits
        if high - low - len(used) < count:
            raise ValueError(f"not enough free {self.digits}-digit ids for {count} new items")
        rng = np.random.default_rng([self.seed, self.index.n_items, 1])
        out: list[str] = []
        while len(out) < count:
            s = str(int(low + rng.integers(high - low)))
            if s not in used:
                used.add(s)
                out.append(s)
        return out

    def save(self, folder: str | Path) -> None:
        _save(folder, self.method, self.cfg.model_dump(), self.index, {"seed": self.seed, "digits": self.digits})

    @classmethod
    def load(cls, folder: str | Path) -> RIDIndexer:
        meta = _load_meta(folder)
        out = cls(RIDConfig(**meta["config"]))
        out.seed, out.digits = meta["seed"], meta["digits"]
        out.index = ItemIndex.load(folder)
        return out


# TID -------------------------------------------------------------------------------------
def clean_title(value: object) -> str:
    """A title with runs of whitespace collapsed to one space and the ends stripped; '' for
    missing values."""
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return ""
    return " ".join(str(value).split())


class TIDIndexer:
    """Item titles as identifiers, made unique."""

    method = "tid"
    config_class = TIDConfig

    def __init__(self, cfg: TIDConfig | None = None):
        self.cfg = cfg or TIDConfig()
        self.index: ItemIndex | None = None

    def _base(self, title: object, item_id: str) -> str:
        t = clean_title(title)
        return t if t else clean_title(self.cfg.empty_title.format(item_id=item_id))

    @staticmethod
    def _unique(base: str, used: set[str]) -> str:
        cand, k = base, 1
        while cand in used:
            k += 1
            cand = f"{base} ({k})"
        used.add(cand)
        return cand

    @staticmethod
    def _titles_and_ids(dataset: Dataset) -> tuple[list[object], list[str]]:
        items = dataset.items
        titles = items["title"].tolist() if "title" in items.columns else [""] * len(items)
        ids = items["item_id"].astype(str).tolist() if "item_id" in items.columns else [str(i) for i in range(len(items))]
        return titles, ids

    def build(self, inputs: IndexInputs) -> ItemIndex:
        titles, ids = self._titles_and_ids(inputs.dataset)
        base = [self._base(t, i) for t, i in zip(titles, ids, strict=True)]
        used: set[str] = {self.cfg.end_token}  # no item string may equal a new token
        strings = [self._unique(b, used) for b in base]
        stats = _text_stats(base, strings)
        stats["empty_titles"] = int(sum(clean_title(t) == "" for t in titles))
        self.index = ItemIndex(
            method=self.method,
            item_strings=strings,
            new_tokens=[self.cfg.end_token],
            end_token=self.cfg.end_token,
            stats=stats,
            config=self.cfg.model_dump(),
        )
        return self.index

    def encode(self, titles: list[object], item_ids: list[str] | None = None, taken: set[str] | None = None) -> list[str]:
        """Strings for new items from their titles (``item_ids`` name empty ones), unique against
        ``taken`` (default: the catalogue's strings and the new tokens) and each other."""
        if self.index is None:
            raise RuntimeError("encode called before build or load")
        used = set(self.index.item_strings) | set(self.index.new_tokens) if taken is None else set(taken)
        ids = item_ids if item_ids is not None else [f"new{j}" for j in range(len(titles))]
        return [self._unique(self._base(t, i), used) for t, i in zip(titles, ids, strict=True)]

    def save(self, folder: str | Path) -> None:
        _save(folder, self.method, self.cfg.model_dump(), self.index)

    @classmethod
    def load(cls, folder: str | Path) -> TIDIndexer:
        meta = _load_meta(folder)
        out = cls(TIDConfig(**meta["config"]))
        out.index = ItemIndex.load(folder)
        return out


# IID -------------------------------------------------------------------------------------
def iid_token(i: int) -> str:
    return f"<item_{i}>"


class IIDIndexer:
    """One new vocabulary token per item."""

    method = "iid"
    config_class = IIDConfig

    def __init__(self, cfg: IIDConfig | None = None):
        self.cfg = cfg or IIDConfig()
        self.index: ItemIndex | None = None

    def build(self, inputs: IndexInputs) -> ItemIndex:
        n = inputs.dataset.n_items
        tokens = [iid_token(i) for i in range(n)]
        codes = np.arange(n, dtype=np.int64)[:, None]
        stats = {
            "collision_rate_before": 0.0,
            "collision_rate_after": 0.0,
            "perplexity": [perplexity(codes[:, 0], n)] if n else [],
        }
        self.index = ItemIndex(
            method=self.method,
            item_strings=list(tokens),
            new_tokens=list(tokens),
            codes=codes,
            sizes=[n],
            stats=stats,
            config=self.cfg.model_dump(),
        )
        return self.index

    def save(self, folder: str | Path) -> None:
        _save(folder, self.method, self.cfg.model_dump(), self.index)

    @classmethod
    def load(cls, folder: str | Path) -> IIDIndexer:
        meta = _load_meta(folder)
        out = cls(IIDConfig(**meta["config"]))
        out.index = ItemIndex.load(folder)
        return out

