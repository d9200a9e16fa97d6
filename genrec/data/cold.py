"""A cold-item split: items whose interactions are all held out of training, evaluated on the users
who bought them.

``cold_item_split`` picks a seeded share of the items that have interactions as cold items and cuts
every user's sequence just after their first cold item: that item becomes the user's test target
(the leave-one-out protocol's last item), the item before it the validation target, the rest
training. Cold items therefore never appear in any training part nor as a validation target (each
sequence holds at most one, at its end), and the evaluation users are those whose test target is
cold and who have some history before it. What came after a user's first cold item is dropped (it
would put the cold item in the history of later positions). Users without cold items keep their
sequences. The catalogue is unchanged: item indices are the input's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.dataset import Dataset


@dataclass
class ColdSplit:
    dataset: Dataset  #: the cut dataset (same items and users)
    cold_items: np.ndarray  #: item indices held out of training, sorted
    users: np.ndarray  #: users whose test target is a cold item, with a non-empty history, sorted


def cold_item_split(dataset: Dataset, share: float = 0.05, seed: int = 0) -> ColdSplit:
    """The split above with ``round(share x items with interactions)`` cold items (at least one)."""
    if not 0 < share < 1:
        raise ValueError(f"share must lie in (0, 1), got {share}")
    seen = np.flatnonzero(np.bincount(dataset.interactions["item_idx"].to_numpy(), minlength=dataset.n_items) > 0)
    if len(seen) < 2:
        raise ValueError("a cold-item split needs at least two items with interactions")
    n_cold = min(len(seen) - 1, max(1, round(share * len(seen))))
    cold = np.sort(np.random.default_rng(seed).choice(seen, size=n_cold, replace=False))
    is_cold = np.zeros(dataset.n_items, dtype=bool)
    is_cold[cold] = True
    inter = dataset.interactions
    keep = np.ones(len(inter), dtype=bool)
    bounds = np.concatenate([[0], np.cumsum(dataset.lengths())])
    users = []
    for u, seq in enumerate(dataset.sequences):
        hits = np.flatnonzero(is_cold[seq])
        if len(hits):
            first = int(hits[0])
            keep[bounds[u] + first + 1 : bounds[u + 1]] = False
            if first >= 1:
                users.append(u)
    cut = Dataset(dataset.items, dataset.user_ids, inter[keep], {**dataset.meta, "cold_items": int(n_cold)})
    return ColdSplit(cut, cold, np.asarray(users, dtype=np.int64))
