"""CID: collaborative indexing by hierarchical spectral clustering (Hua et al., 2023, "How to
Index Item IDs for Recommendation Foundation Models").

Items that users interact with close together in time should share a long code prefix. The
co-occurrence graph is built from the TRAINING part of each user's sequence only (validation
and test targets never leak into the index): items i and j are linked when they appear at most
``window`` positions apart in one sequence, the weight being the number of such co-occurrences.

The catalogue is then split top-down. A cluster of more than N items (``n_clusters``) is
divided into at most N children by spectral clustering (Ng, Jordan and Weiss: the leading
eigenvectors of the normalised adjacency ``D^-1/2 W D^-1/2``, i.e. the smallest of the
normalised Laplacian, rows normalised, then k-means), and each child is split again; a cluster
of at most N items is a leaf and its items take their position in it (in item order) as the
last code. An item's code is its path of child numbers plus that position.

Details this implementation settles:

- disconnected parts are never cut by spectral clustering: the connected components of a
  cluster come first, the N child slots are shared among them in proportion to their size
  (a component with one slot stays whole), and when there are more than N components they are
  packed into N balanced groups that are split further;
- items without any co-occurrence (e.g. items seen only as validation/test targets) form their
  own chain from the root: the last top-level child, split in balanced chunks of item order;
- past ``max_spectral_depth`` levels (or when k-means fails to separate a cluster) a cluster is
  split into balanced chunks along its leading non-trivial eigenvector, so depth stays bounded;
- codes are made rectangular by padding shallower paths with trailing 0 levels. Paths are
  prefix-free (a leaf has no children), so padded tuples stay unique and, having one length,
  none is a prefix of another. ``sizes = [N] * depth``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from genrec.index.base import ItemIndex
from genrec.index.configs import CIDConfig
from genrec.index.inputs import IndexInputs
from genrec.index.kmeans import kmeans
from genrec.index.semid import INDEXER_FILE, code_stats, resolve_seed


def cooccurrence_graph(sequences: list[np.ndarray], n_items: int, window: int | None) -> sp.csr_matrix:
    """Symmetric [n_items, n_items] counts of item pairs at most ``window`` apart in a sequence
    (no self loops)."""
    rows, cols = [], []
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        reach = len(s) - 1 if window is None else min(window, len(s) - 1)
        for off in range(1, reach + 1):
            rows.append(s[:-off])
            cols.append(s[off:])
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
    else:
        r = c = np.zeros(0, dtype=np.int64)
    keep = r != c
    r, c = r[keep], c[keep]
    w = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items)).tocsr()
    w = (w + w.T).tocsr()
    w.sum_duplicates()
    return w


def _chunks(nodes: np.ndarray, k: int) -> list[np.ndarray]:
    """``nodes`` in ``k`` balanced, order-preserving non-empty chunks."""
    return [c for c in np.array_split(nodes, min(k, len(nodes))) if len(c)]


def _shares(sizes: list[int], k: int) -> list[int]:
    """Child slots per component: one each, the remaining ``k - len(sizes)`` by largest
    remainder in proportion to size, never more than a component's size."""
    alloc = [1] * len(sizes)
    spare = k - len(sizes)
    total = float(sum(sizes))
    if spare <= 0 or total <= 0:
        return alloc
    ideal = [spare * s / total for s in sizes]
    extra = [min(int(v), s - 1) for v, s in zip(ideal, sizes, strict=True)]
    left = spare - sum(extra)
    order = sorted(range(len(sizes)), key=lambda i: (-(ideal[i] - int(ideal[i])), i))
    while left > 0:
        moved = False
        for i in order:
            if left > 0 and 1 + extra[i] < sizes[i]:
                extra[i] += 1
                left -= 1
                moved = True
        if not moved:
            break
    return [a + e for a, e in zip(alloc, extra, strict=True)]


class CIDIndexer:
    """Hierarchical spectral clustering of the training co-occurrence graph (collaborative ids)."""

    method = "cid"
    config_class = CIDConfig

    def __init__(self, cfg: CIDConfig | None = None):
        self.cfg = cfg or CIDConfig()
        self.index: ItemIndex | None = None
        self.seed: int | None = None

    # clustering --------------------------------------------------------------------------
    def _spectral(self, w: sp.csr_matrix, k: int, gen: torch.Generator, rng: np.random.Generator) -> list[np.ndarray]:
        """Local positions of ``w``'s nodes (a connected graph) in at most ``k`` groups."""
        n = w.shape[0]
        if n <= k:
            return [np.array([i]) for i in range(n)]
        deg = np.asarray(w.sum(1)).ravel()
        inv = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
        m = sp.diags(inv) @ w @ sp.diags(inv)
        if n <= self.cfg.dense_limit:
            vals, vecs = np.linalg.eigh(m.toarray())
            vecs = vecs[:, -k:]
        else:
            try:
                vals, vecs = eigsh(m.tocsr(), k=k, which="LA", v0=rng.standard_normal(n), tol=1e-6)
            except ArpackNoConvergence as e:  # keep what converged; too little: plain chunks
                vals, vecs = e.eigenvalues, e.eigenvectors
                if vecs is None or vecs.shape[1] < 2:
                    return _chunks(np.arange(n), k)
            vecs = vecs[:, np.argsort(vals)]
        emb = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        x = torch.as_tensor(emb, dtype=torch.float32)
        centres = kmeans(x, k, iters=self.cfg.kmeans_iters, generator=gen)
        labels = torch.cdist(x, centres).argmin(1).numpy()
        groups = [np.flatnonzero(labels == g) for g in range(k)]
        groups = [g for g in groups if len(g)]
        if len(groups) < 2:
            # k-means could not separate: balanced chunks along the leading non-trivial eigenvector
            return _chunks(np.argsort(vecs[:, -2], kind="stable"), k)
        return groups

    def _partition(
        self, w: sp.csr_matrix, nodes: np.ndarray, k: int, depth: int, gen: torch.Generator, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Split ``nodes`` (more than N items) into 2..k groups of item ids."""
        if depth >= self.cfg.max_spectral_depth:
            return _chunks(nodes, k)
        sub = w[nodes][:, nodes].tocsr()
        n_comp, labels = connected_components(sub, directed=False)
        comps = [np.flatnonzero(labels == c) for c in range(n_comp)]
        if n_comp > k:
            # more components than slots: pack them, largest first, into k balanced groups
            bins: list[list[int]] = [[] for _ in range(k)]
            load = [0] * k
            for c in sorted(range(n_comp), key=lambda c: (-len(comps[c]), c)):
                b = min(range(k), key=lambda b: (load[b], b))
                bins[b].extend(comps[c].tolist())
                load[b] += len(comps[c])
            return [nodes[np.sort(np.asarray(b))] for b in bins if b]
        groups: list[np.ndarray] = []
        for comp, slots in zip(comps, _shares([len(c) for c in comps], k), strict=True):
            if slots <= 1 or len(comp) <= 1:
                groups.append(nodes[comp])
            else:
                for g in self._spectral(sub[comp][:, comp].tocsr(), slots, gen, rng):
                    groups.append(nodes[comp[g]])
        if len(groups) < 2:
            return _chunks(nodes, k)
        return groups

    def _paths(self, w: sp.csr_matrix, n_items: int, gen: torch.Generator, rng: np.random.Generator) -> list[list[int]]:
        n_max = self.cfg.n_clusters
        paths: list[list[int]] = [[] for _ in range(n_items)]
        deg = np.asarray(w.sum(1)).ravel()
        linked, isolated = np.flatnonzero(deg > 0), np.flatnonzero(deg == 0)
        stack: list[tuple[np.ndarray, list[int], bool]] = []  # (items, prefix, structure-free)
        if n_items <= n_max:
            stack.append((np.arange(n_items), [], True))
        else:
            tops: list[tuple[np.ndarray, bool]] = []
            if len(linked):
                slots = n_max - 1 if len(isolated) else n_max
                if len(linked) <= slots:
                    tops += [(np.array([i]), False) for i in linked]
                else:
                    tops += [(g, False) for g in self._partition(w, linked, slots, 0, gen, rng)]
            if len(isolated):
                tops.append((isolated, True))
            for c, (g, plain) in enumerate(tops):
                stack.append((g, [c], plain))
        while stack:
            nodes, prefix, plain = stack.pop()
            if len(nodes) <= n_max:
                for pos, i in enumerate(np.sort(nodes)):
                    paths[int(i)] = [*prefix, pos]
                continue
            groups = _chunks(np.sort(nodes), n_max) if plain else self._partition(w, nodes, n_max, len(prefix), gen, rng)
            for c, g in enumerate(groups):
                stack.append((g, [*prefix, c], plain))
        return paths

    # the indexer -------------------------------------------------------------------------
    def build(self, inputs: IndexInputs) -> ItemIndex:
        cfg = self.cfg
        ds = inputs.dataset
        self.seed = resolve_seed(cfg.seed, inputs.seed)
        gen = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        w = cooccurrence_graph(ds.train_sequences(), ds.n_items, cfg.window)
        paths = self._paths(w, ds.n_items, gen, rng)
        depth = max((len(p) for p in paths), default=1)
        codes = np.zeros((ds.n_items, depth), dtype=np.int64)
        for i, p in enumerate(paths):
            codes[i, : len(p)] = p
        sizes = [cfg.n_clusters] * depth
        stats = code_stats(codes, codes, sizes)
        lengths = np.bincount([len(p) for p in paths], minlength=depth + 1)
        stats.update(
            {
                "path_lengths": {str(d): int(c) for d, c in enumerate(lengths) if c},
                "isolated_items": int((np.asarray(w.sum(1)).ravel() == 0).sum()),
                "graph_edges": int(w.nnz // 2),
            }
        )
        self.index = ItemIndex.from_codes(
            self.method, codes, sizes, stats=stats, config={**cfg.model_dump(), "seed_used": self.seed}
        )
        return self.index

    # persistence -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        if self.index is None:
            raise RuntimeError("save called before build")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.method, "config": self.cfg.model_dump(), "seed": self.seed}
        (folder / INDEXER_FILE).write_text(json.dumps(meta, indent=1))
        self.index.save(folder)

    @classmethod
    def load(cls, folder: str | Path) -> CIDIndexer:
        folder = Path(folder)
        meta = json.loads((folder / INDEXER_FILE).read_text())
        out = cls(CIDConfig(**meta["config"]))
        out.seed = meta["seed"]
        out.index = ItemIndex.load(folder)
        return out
