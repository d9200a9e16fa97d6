"""SemID: semantic ids by residual k-means on item text embeddings (no training).

Semantic-id baselines of generative recommendation write an item as a short code tuple derived
from its content. This variant is the training-free one (often called RQ-KMeans): L codebooks
of K centres, each fitted by k-means on the residuals the levels above leave,

    r_1 = x,  c_l = argmin_k ||r_l - C_l[k]||,  r_{l+1} = r_l - C_l[c_l],

on the item's LLM embedding (mean input-layer embedding over title and description), or on
the behaviour embedding with ``input="behaviour"``. It is the RQ-VAE of
:mod:`genrec.index.rqvae` without encoder, decoder and gradient training, and the cascaded
codebooks of :mod:`genrec.index.alignment` without any alignment loss. Collisions are resolved
by :func:`genrec.index.base.unique_codes` (nearest free last-level code, else an appended level).

Raw LLM embeddings are anisotropic, and in their full dimension the deeper levels' k-means
collapses onto a few central codes (on Scientific, 576-d: per-level perplexity 118, 43, 20, 13
of 256). ``pca_dim`` (e.g. 32) projects onto the leading principal components first, which
keeps every level in use (179, 144, 139, 140) at a lower collision rate; the default (None)
is the plain method.

The module also holds the helpers the residual quantisers share: input standardisation, code
statistics, seed and device choice, and unique codes for new items.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genrec.device import pick_device
from genrec.index.base import ItemIndex, collision_rate, perplexity, unique_codes
from genrec.index.configs import SemIDConfig
from genrec.index.inputs import IndexInputs
from genrec.index.kmeans import kmeans

INDEXER_FILE = "indexer.json"


# shared helpers --------------------------------------------------------------------------
def resolve_seed(cfg_seed: int | None, inputs_seed: int) -> int:
    """The config's seed when set, else the pipeline's (``IndexInputs.seed``)."""
    return int(inputs_seed if cfg_seed is None else cfg_seed)


def fit_standardiser(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean [d] and one global scale so the centred data has unit mean variance per dimension
    (a single scale keeps the geometry: no dimension is blown up the way a per-dimension z-score
    would blow up a near-constant one)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    scale = float(np.sqrt(((x - mean) ** 2).sum(1).mean() / x.shape[1]))
    return mean.astype(np.float32), max(scale, 1e-8)


def standardise(x: np.ndarray, mean: np.ndarray, scale: float, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    return (t - torch.as_tensor(mean, device=device)) / scale


def check_embeddings(x: np.ndarray, n_items: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) != n_items:
        raise ValueError(f"{what} embeddings must be [n_items={n_items}, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} embeddings contain NaN or inf")
    return x


def code_stats(raw: np.ndarray, resolved: np.ndarray, sizes: Sequence[int]) -> dict:
    """The stats every code-based index reports: collision rates before/after resolution and the
    perplexity of each level of the raw codes (per level, so an appended level has its own)."""
    return {
        "collision_rate_before": collision_rate(raw),
        "collision_rate_after": collision_rate(resolved),
        "perplexity": [perplexity(resolved[:, lv] if lv >= raw.shape[1] else raw[:, lv], int(sizes[lv]))
                       for lv in range(resolved.shape[1])],
        "appended_level": resolved.shape[1] > raw.shape[1],
    }


def assign_new_codes(
    codes: np.ndarray,
    last_dist: np.ndarray,
    catalogue: np.ndarray,
    taken: set[tuple[int, ...]] | None = None,
) -> np.ndarray:
    """Unique tuples for new items quantised to ``codes`` [M, L] (``last_dist`` [M, K]: distance to
    each last-level code). A tuple already in ``taken`` (default: the catalogue's) moves to the
    nearest free last-level code under the same prefix. When the catalogue has an appended
    disambiguation level (``catalogue`` has L + 1 columns) the new item takes the smallest free
    number there, within the range the catalogue's vocabulary already covers. New items are
    unique against each other too. Raises when nothing is free under the item's prefix."""
    levels = codes.shape[1]
    appended = catalogue.shape[1] > levels
    extra = range(int(catalogue[:, -1].max()) + 1) if appended else range(1)
    used = set(map(tuple, catalogue.tolist())) if taken is None else {tuple(int(c) for c in t) for t in taken}
    out = np.empty((len(codes), catalogue.shape[1]), dtype=np.int64)
    for i in range(len(codes)):
        prefix = tuple(int(c) for c in codes[i, :-1])
        order = [int(codes[i, -1])] + [int(c) for c in np.argsort(last_dist[i], kind="stable") if c != codes[i, -1]]
        found = None
        for c in order:
            for d in extra:
                cand = (*prefix, c, d) if appended else (*prefix, c)
                if cand not in used:
                    found = cand
                    break
            if found is not None:
                break
        if found is None:
            raise ValueError(f"new item {i}: no free code under prefix {prefix}; rebuild the index")
        out[i] = found
        used.add(found)
    return out


@torch.no_grad()
def residual_assign(x: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, L] of ``x`` under residual codebooks and distances [N, K] of the last residual to
    the last codebook."""
    r, codes, last = x, [], None
    for cb in codebooks:
        last = torch.cdist(r, cb)
        c = last.argmin(1)
        codes.append(c)
        r = r - cb[c]
    return torch.stack(codes, 1), last


# the indexer -----------------------------------------------------------------------------
class SemIDIndexer:
    """Residual k-means over item embeddings; ``build`` gives an :class:`ItemIndex`, ``encode``
    codes new items from the same kind of embedding."""

    method = "semid"
    config_class = SemIDConfig

    def __init__(self, cfg: SemIDConfig | None = None):
        self.cfg = cfg or SemIDConfig()
        self.mean: np.ndarray | None = None
        self.scale: float = 1.0
        self.codebooks: np.ndarray | None = None  # [L, K, d'] in the (projected) space k-means ran in
        self.projection: np.ndarray | None = None  # [d, pca_dim] principal axes, when pca_dim is set
        self.index: ItemIndex | None = None
        self.seed: int | None = None

    def build(self, inputs: IndexInputs) -> ItemIndex:
        cfg = self.cfg
        x = check_embeddings(inputs.require(cfg.input, self.method), inputs.dataset.n_items, cfg.input)
        self.seed = resolve_seed(cfg.seed, inputs.seed)
        dev = pick_device(cfg.device)
        gen = torch.Generator().manual_seed(self.seed)
        self.mean, self.scale = fit_standardiser(x)
        if cfg.pca_dim is not None:
            centred = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            self.projection = vt[: cfg.pca_dim].T.astype(np.float32)
        r = self._features(x, dev)
        books = []
        for _ in range(cfg.levels):
            cb = kmeans(r, cfg.codebook_size, iters=cfg.iters, generator=gen)
            books.append(cb)
            r = r - cb[torch.cdist(r, cb).argmin(1)]
        self.codebooks = torch.stack(books).cpu().numpy()
        codes, last = residual_assign(self._features(x, dev), books)
        raw = codes.cpu().numpy()
        resolved, sizes = unique_codes(raw, last.cpu().numpy(), [cfg.codebook_size] * cfg.levels)
        stats = code_stats(raw, resolved, sizes)
        self.index = ItemIndex.from_codes(self.method, resolved, sizes, stats=stats, config=self._config(), raw_codes=raw)
        return self.index

    def _features(self, x: np.ndarray, device: torch.device) -> torch.Tensor:
        """Standardised (and, with ``pca_dim``, projected) embeddings: the space k-means runs in."""
        z = standardise(x, self.mean, self.scale, device)
        return z if self.projection is None else z @ torch.as_tensor(self.projection, device=device)

    def _config(self) -> dict:
        return {**self.cfg.model_dump(), "seed_used": self.seed}

    def encode(self, x: np.ndarray, taken: set[tuple[int, ...]] | None = None) -> np.ndarray:
        """Codes for new items from embeddings [M, d] of the kind the index was built on; unique
        against ``taken`` (default: the catalogue's tuples) and each other."""
        if self.index is None or self.codebooks is None:
            raise RuntimeError("encode called before build or load")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"expected [M, {len(self.mean)}] {self.cfg.input} embeddings, got {x.shape}")
        dev = torch.device("cpu")
        books = [torch.as_tensor(cb) for cb in self.codebooks]
        codes, last = residual_assign(self._features(x, dev), books)
        return assign_new_codes(codes.numpy(), last.numpy(), self.index.codes, taken)

    def save(self, folder: str | Path) -> None:
        if self.index is None:
            raise RuntimeError("save called before build")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.method, "config": self.cfg.model_dump(), "seed": self.seed, "scale": self.scale}
        (folder / INDEXER_FILE).write_text(json.dumps(meta, indent=1))
        arrays = {"mean": self.mean, "codebooks": self.codebooks}
        if self.projection is not None:
            arrays["projection"] = self.projection
        np.savez(folder / "semid.npz", **arrays)
        self.index.save(folder)

    @classmethod
    def load(cls, folder: str | Path) -> SemIDIndexer:
        folder = Path(folder)
        meta = json.loads((folder / INDEXER_FILE).read_text())
        out = cls(SemIDConfig(**meta["config"]))
        out.seed, out.scale = meta["seed"], float(meta["scale"])
        with np.load(folder / "semid.npz", allow_pickle=False) as z:
            out.mean, out.codebooks = z["mean"], z["codebooks"]
            out.projection = z["projection"] if "projection" in z.files else None
        out.index = ItemIndex.load(folder)
        return out
