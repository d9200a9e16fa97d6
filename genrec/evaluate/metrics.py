"""Ranking metrics as pure numpy functions.

Tie rule: when the target's score equals the score of ``ties`` other items and ``greater``
items score strictly higher, its rank is taken as uniformly distributed over
``greater + 1 .. greater + ties + 1`` and every metric is the exact expectation over that
range (the value under random tie-breaking). A constant scorer therefore gets HR@K = K/N,
never an optimistic 1.0. NaN scores count as -inf; items at -inf (masked) never tie with a
finite target score.

Metric keys: ``"HR@K"``, ``"NDCG@K"`` for each K, and ``"MRR"``; values are per-user arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalize_ks(ks: Sequence[int]) -> list[int]:
    """Validate cut-offs: positive integers, order kept, duplicates dropped."""
    out: list[int] = []
    for k in ks:
        if int(k) != k or int(k) < 1:
            raise ValueError(f"every K must be a positive integer, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks must not be empty")
    return out


def _as_float_scores(scores: np.ndarray) -> np.ndarray:
    """2-D float view of ``scores`` with NaN replaced by -inf (copies only if needed)."""
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [B, N], got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        return s.astype(np.float64)
    nan = np.isnan(s)
    if nan.any():
        s = np.where(nan, -np.inf, s)
    return s


def _check_targets(targets: np.ndarray, n_rows: int, n_items: int | None) -> np.ndarray:
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(t) != n_rows:
        raise ValueError(f"expected {n_rows} targets, got {len(t)}")
    if len(t) and t.min() < 0:
        raise ValueError("targets must be item indices >= 0 (filter out users without a target first)")
    if n_items is not None and len(t) and t.max() >= n_items:
        raise ValueError(f"target {int(t.max())} out of range for {n_items} items")
    return t


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (items scoring strictly above the target, OTHER items scoring equal to it).

    NaN counts as -inf, so a masked or undefined item never ties with a finite target.
    """
    s = _as_float_scores(scores)
    b, n = s.shape
    t = _check_targets(targets, b, n)
    target_scores = s[np.arange(b), t][:, None]
    greater = (s > target_scores).sum(axis=1).astype(np.int64)
    ties = (s == target_scores).sum(axis=1).astype(np.int64) - 1
    return greater, ties


def expected_rank(greater: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Mean rank under random tie-breaking: ``greater + 1 + ties / 2``."""
    return np.asarray(greater, dtype=np.float64) + 1.0 + np.asarray(ties, dtype=np.float64) / 2.0


def metrics_from_rank_range(greater: np.ndarray, ties: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Exact per-user HR@K, NDCG@K and MRR with the rank uniform over greater+1..greater+ties+1.

    Uses prefix sums of 1/log2(r+1) and of 1/r up to the largest possible rank, so a tie
    range as wide as the catalogue costs O(N) once per call, not per user.
    """
    ks_ = normalize_ks(ks)
    g = np.asarray(greater, dtype=np.int64).reshape(-1)
    t = np.asarray(ties, dtype=np.int64).reshape(-1)
    if g.shape != t.shape:
        raise ValueError("greater and ties must have the same length")
    if len(g) and (g.min() < 0 or t.min() < 0):
        raise ValueError("greater and ties must be >= 0")
    m = t + 1  # number of equally likely ranks
    hi = g + m  # last possible rank
    top = int(hi.max()) if len(hi) else 0
    r = np.arange(1, top + 1, dtype=np.float64)
    # disc[n] = sum_{r=1..n} 1/log2(r+1); harm[n] = sum_{r=1..n} 1/r (index 0 is the empty sum)
    disc = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(r + 1.0))])
    harm = np.concatenate([[0.0], np.cumsum(1.0 / r)])
    mf = m.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks_:
        out[f"HR@{k}"] = np.clip(k - g, 0, m) / mf
    for k in ks_:
        upper = np.maximum(np.minimum(hi, k), g)  # ranks g+1..upper count; none when k <= g
        out[f"NDCG@{k}"] = (disc[upper] - disc[g]) / mf
    out["MRR"] = (harm[hi] - harm[g]) / mf
    return out


def pad_lists(lists: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Ragged ranked lists -> int64 array [B, L] padded with -1 (a 2-D array passes through)."""
    if isinstance(lists, np.ndarray):
        if lists.ndim != 2:
            raise ValueError(f"a ranked-list array must be 2-D [B, L], got shape {lists.shape}")
        return lists.astype(np.int64, copy=False)
    rows = [np.asarray(x, dtype=np.int64).reshape(-1) for x in lists]
    width = max((len(x) for x in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, x in enumerate(rows):
        out[i, : len(x)] = x
    return out


def ranks_from_lists(lists: Sequence[Sequence[int]] | np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based position of each target's first occurrence in its ranked list; NaN if absent."""
    arr = pad_lists(lists)
    t = _check_targets(targets, arr.shape[0], None)
    match = arr == t[:, None]
    found = match.any(axis=1)
    pos = match.argmax(axis=1) if arr.shape[1] else np.zeros(len(t), dtype=np.int64)
    return np.where(found, pos + 1.0, np.nan)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user HR@K, NDCG@K, MRR from exact ranks (NaN = not retrieved, contributes 0)."""
    ks_ = normalize_ks(ks)
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    found = ~np.isnan(r)
    safe = np.where(found, r, 1.0)
    gain = np.where(found, 1.0 / np.log2(safe + 1.0), 0.0)
    out: dict[str, np.ndarray] = {}
    for k in ks_:
        out[f"HR@{k}"] = (found & (safe <= k)).astype(np.float64)
    for k in ks_:
        out[f"NDCG@{k}"] = np.where(found & (safe <= k), gain, 0.0)
    out["MRR"] = np.where(found, 1.0 / safe, 0.0)
    return out


def metrics_from_ranked_lists(
    lists: Sequence[Sequence[int]] | np.ndarray, targets: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user metrics for models that return ranked lists (rank = position + 1).

    A target absent from its list contributes 0 to HR, NDCG and MRR; K may exceed a list's length.
    """
    return metrics_from_ranks(ranks_from_lists(lists, targets), ks)


def top_k_from_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` item indices per row by score, ties broken by lower item index.

    Items at -inf (masked; NaN counts as -inf) are never listed: such rows are padded with -1.
    Returns int64 [B, min(k, N)].
    """
    s = _as_float_scores(scores)
    b, n = s.shape
    k = min(int(k), n)
    if k <= 0 or b == 0:
        return np.zeros((b, max(k, 0)), dtype=np.int64)
    if k < n:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        rows = np.arange(b)[:, None]
        kth = s[rows, part].min(axis=1)  # k-th largest score per row
        # argpartition picks arbitrarily among items tied at the boundary; redo those rows.
        n_eq = (s == kth[:, None]).sum(axis=1)
        n_eq_in = (s[rows, part] == kth[:, None]).sum(axis=1)
        for i in np.flatnonzero(n_eq > n_eq_in):
            above = np.flatnonzero(s[i] > kth[i])
            level = np.flatnonzero(s[i] == kth[i])[: k - len(above)]
            part[i] = np.concatenate([above, level])
    else:
        part = np.broadcast_to(np.arange(n), (b, n)).copy()
    sel = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -sel), axis=-1)  # primary: -score, secondary: item index
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(sel, order, axis=1)
    return np.where(top_scores == -np.inf, -1, top)
