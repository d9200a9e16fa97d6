"""How good an item index is, measured the same way for every indexer."""

from __future__ import annotations

import numpy as np

from genrec.data.dataset import Dataset
from genrec.index.base import ItemIndex, prefix_sharing


def top_categories(dataset: Dataset) -> np.ndarray:
    """Each item's top category: the first level of its category path that is not shared by
    (nearly) the whole catalogue, e.g. "Industrial Electrical" under "Industrial & Scientific"."""
    paths = [[c.strip() for c in str(s).split(",") if c.strip()] for s in dataset.items["categories"]]
    for level in range(4):
        values = [p[level] if len(p) > level else "" for p in paths]
        known = [v for v in values if v]
        if not known:
            break
        _, counts = np.unique(known, return_counts=True)
        if counts.max() < 0.9 * len(known):
            return np.asarray(values, dtype=object)
    return np.asarray([p[0] if p else "" for p in paths], dtype=object)


def purity(codes: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose label is the majority label of their code (items without a label skipped)."""
    keep = labels != ""
    codes, labels = codes[keep], labels[keep]
    if len(codes) == 0:
        return float("nan")
    hit = 0
    for c in np.unique(codes):
        _, counts = np.unique(labels[codes == c], return_counts=True)
        hit += counts.max()
    return float(hit / len(codes))


def co_interacted_pairs(dataset: Dataset, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Consecutive item pairs of the training sequences, a sample of at most ``max_pairs``."""
    pairs = [np.stack([s[:-1], s[1:]], 1) for s in dataset.train_sequences() if len(s) >= 2]
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    allp = np.concatenate(pairs)
    allp = allp[allp[:, 0] != allp[:, 1]]
    if len(allp) > max_pairs:
        allp = allp[rng.choice(len(allp), max_pairs, replace=False)]
    return allp


def index_quality(index: ItemIndex, dataset: Dataset, seed: int = 0, max_pairs: int = 20000) -> dict:
    """Code usage, prefix sharing of co-interacted vs random pairs, and category agreement."""
    out: dict = {"n_items": index.n_items, "unique": index.is_unique(), "new_tokens": len(index.new_tokens)}
    if index.codes is None:
        return out
    rng = np.random.default_rng(seed)
    codes = index.codes
    co = co_interacted_pairs(dataset, max_pairs, rng)
    rand = rng.integers(0, index.n_items, size=(max(len(co), 1000), 2))
    rand = rand[rand[:, 0] != rand[:, 1]]
    out["prefix_co_interacted"] = prefix_sharing(codes, co)
    out["prefix_random"] = prefix_sharing(codes, rand)
    cats = top_categories(dataset)
    if (cats != "").any():
        out["category_purity"] = purity(codes[:, 0], cats)
        out["category_purity_shuffled"] = purity(rng.permutation(codes[:, 0]), cats)
    return out
