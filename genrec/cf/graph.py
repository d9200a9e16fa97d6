"""The user-item graph of the training split, BPR sampling, and the base class of graph models.

Nodes are users ``0..U-1`` followed by items ``U..U+I-1``. Only :meth:`Dataset.train_sequences`
(every sequence without its validation and test items) contributes edges, each distinct
user-item pair once. :func:`normalized_adjacency` is the symmetric ``D^-1/2 A D^-1/2`` of
LightGCN (a node without edges gets an empty row). :class:`BipartiteGraph` holds the edge list
of both directions and multiplies a matrix by "the adjacency with these edge values", also
differentiably in the values, which DCCF's learned graphs need. :class:`BPRSampler` draws
(user, positive, negative) triples; :class:`GraphRecommender` is what LightGCN and DCCF share.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from genrec.data.dataset import Dataset
from genrec.training.trainer import NeuralBaseline, NeuralRecommender


def training_pairs(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user_idx, item_idx) pairs of the training split, sorted by user then item."""
    train = dataset.train_sequences()
    lengths = np.fromiter((len(s) for s in train), dtype=np.int64, count=len(train))
    users = np.repeat(np.arange(len(train), dtype=np.int64), lengths)
    items = np.concatenate(train).astype(np.int64) if lengths.sum() else np.zeros(0, np.int64)
    keys = np.unique(users * max(dataset.n_items, 1) + items)
    return keys // max(dataset.n_items, 1), keys % max(dataset.n_items, 1)


def bipartite_edges(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every user-item edge as (heads, tails) node ids, sorted by head then tail."""
    heads = np.concatenate([users, items + n_users]).astype(np.int64)
    tails = np.concatenate([items + n_users, users]).astype(np.int64)
    order = np.lexsort((tails, heads))
    return heads[order], tails[order]


def symmetric_norm_values(heads: np.ndarray, tails: np.ndarray, n_nodes: int) -> np.ndarray:
    """``1 / sqrt(deg(h) deg(t))`` for every edge (the entries of ``D^-1/2 A D^-1/2``)."""
    deg = np.bincount(heads, minlength=n_nodes).astype(np.float64)
    return (1.0 / np.sqrt(deg[heads] * deg[tails])).astype(np.float32)


def normalized_adjacency(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, device: str | torch.device | None = None
) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph as a coalesced sparse COO tensor [U+I, U+I].

    ``users``/``items`` are the interaction pairs (duplicates count once).
    """
    n = n_users + n_items
    keys = np.unique(np.asarray(users, np.int64) * max(n_items, 1) + np.asarray(items, np.int64))
    heads, tails = bipartite_edges(keys // max(n_items, 1), keys % max(n_items, 1), n_users)
    values = symmetric_norm_values(heads, tails, n)
    index = torch.from_numpy(np.stack([heads, tails]))
    return torch.sparse_coo_tensor(
        index, torch.from_numpy(values), (n, n), is_coalesced=True, check_invariants=False
    ).to(device or "cpu")


class _EdgeSpmm(torch.autograd.Function):
    """``A(values) @ x`` for a sparse A with a fixed symmetric pattern, differentiable in both.

    ``rev[e]`` is the index of the reverse edge of e, so ``A^T`` shares A's (sorted) pattern
    with values ``values[rev]``; the backward pass is then one more sparse product plus a
    row-wise dot per edge, far cheaper than autograd through a sparse tensor's values.
    """

    @staticmethod
    def forward(ctx, values, x, index, rev, n):  # type: ignore[override]
        a = torch.sparse_coo_tensor(index, values, (n, n), is_coalesced=True, check_invariants=False)
        ctx.save_for_backward(values, x, index, rev)
        ctx.n = n
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, x, index, rev = ctx.saved_tensors
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_values = (grad[index[0]] * x[index[1]]).sum(1)
        if ctx.needs_input_grad[1]:
            at = torch.sparse_coo_tensor(index, values[rev], (ctx.n, ctx.n), is_coalesced=True, check_invariants=False)
            grad_x = torch.sparse.mm(at, grad)
        return grad_values, grad_x, None, None, None


class BipartiteGraph:
    """Edge list (both directions, sorted) of a user-item graph on one device.

    ``heads``/``tails`` are node ids; ``norm`` the symmetric normalisation of each edge.
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int):
        device = users.device
        heads, tails = bipartite_edges(users.cpu().numpy(), items.cpu().numpy(), n_users)
        self.n_users, self.n_items, self.n_nodes = n_users, n_items, n_users + n_items
        self.n_edges = len(heads)
        # reverse edge of e: the position of (tail, head) in the sorted order
        rev = np.lexsort((heads, tails))
        self.index = torch.from_numpy(np.stack([heads, tails])).to(device)
        self.rev = torch.from_numpy(rev).to(device)
        self.norm = torch.from_numpy(symmetric_norm_values(heads, tails, self.n_nodes)).to(device)

    @property
    def heads(self) -> torch.Tensor:
        return self.index[0]

    @property
    def tails(self) -> torch.Tensor:
        return self.index[1]

    def spmm(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[N, d] product of the adjacency with per-edge ``values`` [E] and ``x`` [N, d] (fp32)."""
        return _EdgeSpmm.apply(values.float(), x.float(), self.index, self.rev, self.n_nodes)

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """One LightGCN step: ``D^-1/2 A D^-1/2 @ x``."""
        return self.spmm(self.norm, x)

    def row_normalize(self, weights: torch.Tensor) -> torch.Tensor:
        """Edge weights divided by their head's weight sum (``D^-1 A``; 0 for an all-zero row)."""
        sums = torch.zeros(self.n_nodes, dtype=weights.dtype, device=weights.device).index_add_(0, self.heads, weights)
        inv = torch.where(sums > 0, 1.0 / sums.clamp_min(1e-12), torch.zeros_like(sums))
        return weights * inv[self.heads]


class BPRSampler:
    """(user, positive, negative) triples for BPR from the training pairs.

    Users are drawn uniformly among those with at least one training item (and not every item),
    the positive uniformly among the user's training items, the negative uniformly among
    items outside them (rejection sampling). An epoch has as many triples as training pairs,
    the convention of LightGCN's and DCCF's samplers.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
        self.n_users, self.n_items = n_users, n_items
        self.keys = np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))
        self.items = self.keys % n_items
        counts = np.bincount(self.keys // n_items, minlength=n_users)
        self.indptr = np.concatenate([[0], np.cumsum(counts)])
        self.counts = counts
        self.active = np.flatnonzero((counts > 0) & (counts < n_items))
        if len(self.keys) and not len(self.active):
            raise ValueError("no user has both a training item and an item outside it; BPR cannot sample")

    def __len__(self) -> int:
        return len(self.keys)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is a training pair."""
        q = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(self.keys, q)
        return (pos < len(self.keys)) & (self.keys[np.minimum(pos, len(self.keys) - 1)] == q)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` triples (users, positives, negatives) as int64 arrays."""
        users = self.active[rng.integers(0, len(self.active), n)]
        offsets = (rng.random(n) * self.counts[users]).astype(np.int64)
        pos = self.items[self.indptr[users] + offsets]
        neg = rng.integers(0, self.n_items, n)
        bad = np.flatnonzero(self.is_positive(users, neg))
        while len(bad):
            neg[bad] = rng.integers(0, self.n_items, len(bad))
            bad = bad[self.is_positive(users[bad], neg[bad])]
        return users, pos, neg

    def batches(self, batch_size: int, rng: np.random.Generator, n: int | None = None) -> Iterator[dict]:
        """One epoch of ``n`` (default: number of training pairs) triples in batches of tensors."""
        n = len(self) if n is None else n
        for start in range(0, n, batch_size):
            u, p, q = self.sample(min(batch_size, n - start), rng)
            yield {"users": torch.from_numpy(u), "pos": torch.from_numpy(p), "neg": torch.from_numpy(q)}


class GraphRecommender(NeuralRecommender):
    """Shared by the graph models: the training graph, BPR batches and cached propagation.

    The training pairs are buffers (``edge_users``, ``edge_items``), so a saved state dict
    carries its graph and a loaded model scores without the dataset. Subclasses define
    :meth:`propagate` (final user and item representations, fp32) and ``loss``. In eval mode
    without gradients, the propagated embeddings are cached until a parameter changes.
    """

    def __init__(self, n_items: int, n_users: int):
        super().__init__()
        self.n_items, self.n_users = n_items, n_users
        self.register_buffer("edge_users", torch.zeros(0, dtype=torch.long))
        self.register_buffer("edge_items", torch.zeros(0, dtype=torch.long))
        self._graph: BipartiteGraph | None = None
        self._graph_key: tuple | None = None
        self._sampler: BPRSampler | None = None
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._generation = 0  # bumped whenever the graph buffers are replaced

    # graph ---------------------------------------------------------------------------
    def prepare(self, dataset: Dataset) -> None:
        """Build the graph and the BPR sampler from ``dataset``'s training split."""
        if (dataset.n_items, dataset.n_users) != (self.n_items, self.n_users):
            raise ValueError(
                f"{self.name}: model built for {self.n_users} users x {self.n_items} items, "
                f"dataset has {dataset.n_users} x {dataset.n_items}"
            )
        users, items = training_pairs(dataset)
        device = self.edge_users.device
        self.edge_users = torch.from_numpy(users).to(device)
        self.edge_items = torch.from_numpy(items).to(device)
        self._sampler = BPRSampler(users, items, self.n_users, self.n_items)
        self._generation += 1

    def graph(self) -> BipartiteGraph:
        """The training graph on the model's current device (rebuilt when the buffers change)."""
        key = (self._generation, self.edge_users.device, self.edge_users.data_ptr(), self.edge_users.shape)
        if self._graph is None or self._graph_key != key:
            self._graph = BipartiteGraph(self.edge_users, self.edge_items, self.n_users, self.n_items)
            self._graph_key = key
        return self._graph

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # the graph buffers have the dataset's size, not the empty placeholder's: resize first
        for name in ("edge_users", "edge_items"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        self._generation += 1
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    # training ------------------------------------------------------------------------
    def batches(self, dataset: Dataset, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        if self._sampler is None:
            self.prepare(dataset)
        yield from self._sampler.batches(batch_size, rng)

    @staticmethod
    def bpr(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Mean of ``-log sigmoid(u.p - u.n)``."""
        diff = (users * pos).sum(-1) - (users * neg).sum(-1)
        return torch.nn.functional.softplus(-diff.float()).mean()

    # scoring -------------------------------------------------------------------------
    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final ([U, d] users, [I, d] items) representations, fp32."""
        raise NotImplementedError

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`propagate`, cached in eval mode without gradients while no parameter changes."""
        if self.training or torch.is_grad_enabled():
            return self.propagate_fp32()
        key = (self._generation,) + tuple(
            (t.device, t.data_ptr(), t._version) for t in itertools.chain(self.parameters(), self.buffers())
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.propagate_fp32())
        return self._cache[1]

    def propagate_fp32(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`propagate` with autocast off: sparse products and softmaxes stay in fp32."""
        with torch.autocast(device_type=self.edge_users.device.type, enabled=False):
            return self.propagate()

    def scores(self, histories: list[np.ndarray], users: np.ndarray) -> torch.Tensor:
        """User embedding . item embeddings for the given ``user_idx`` (histories unused)."""
        u, i = self.final_embeddings()
        idx = torch.as_tensor(np.asarray(users), dtype=torch.long, device=u.device)
        return u[idx] @ i.T

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """[n_items, dim] float32: the final item representations used for scoring."""
        was_training = self.training
        self.eval()
        items = self.final_embeddings()[1].float().cpu().numpy()
        self.train(was_training)
        return items


class GraphBaseline(NeuralBaseline):
    """A :class:`NeuralBaseline` over a :class:`GraphRecommender`: also yields its item embeddings."""

    def item_embeddings(self) -> np.ndarray:
        """[n_items, dim] float32 final item representations."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: item_embeddings called before fit or load")
        return self.model.item_embeddings()
