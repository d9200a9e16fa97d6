"""A prepared dataset: contiguous ids, chronological sequences, and the leave-one-out split.

On disk (one folder): ``items.parquet`` (row i is item i), ``users.parquet`` (row u is user u),
``interactions.parquet`` (user_idx, item_idx, timestamp, optional rating/review; sorted by
user then time) and ``dataset.json`` (sizes, statistics, how it was made).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.errors import DataError, read_json

DATASET_FILE = "dataset.json"
FORMAT_VERSION = 1
#: A user whose sequence is longer than the history cap (20) counts as "long", as in Table 2
#: of the reference paper (this threshold reproduces its 3.48% for Instruments).
LONG_USER_THRESHOLD = 20


def sequence_stats(lengths: np.ndarray, n_items: int) -> dict:
    """users, items, interactions, avg_len and long_user_share of a set of sequences."""
    n_users = int(len(lengths))
    inter = int(lengths.sum())
    return {
        "users": n_users,
        "items": int(n_items),
        "interactions": inter,
        "avg_len": round(inter / n_users, 4) if n_users else 0.0,
        "long_user_share": round(float((lengths > LONG_USER_THRESHOLD).mean()), 4) if n_users else 0.0,
    }


@dataclass
class EvalSplit:
    """What an evaluator needs for one stage: each user's history and held-out target.

    ``targets[u] == -1`` means user u has no target at this stage (too short a sequence).
    """

    histories: list[np.ndarray]
    targets: np.ndarray


class Dataset:
    """Items, users and chronological interaction sequences with a leave-one-out split.

    Leave-one-out: the last item of each user is the test target, the one before it the
    validation target, the rest is training. ``history(u, stage)`` is everything before the
    target; models cap it to ``max_history`` most recent items themselves.
    """

    def __init__(
        self,
        items: pd.DataFrame,
        user_ids: np.ndarray,
        interactions: pd.DataFrame,
        meta: dict | None = None,
    ):
        self.items = items.reset_index(drop=True)
        self.user_ids = np.asarray(user_ids).astype(str)
        self.interactions = interactions.reset_index(drop=True)
        self.meta = dict(meta or {})
        users = self.interactions["user_idx"].to_numpy()
        if len(users) and np.any(np.diff(users) < 0):
            raise ValueError("interactions must be sorted by user_idx")
        counts = np.bincount(users, minlength=len(self.user_ids)) if len(users) else np.zeros(len(self.user_ids), int)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        item_col = self.interactions["item_idx"].to_numpy(dtype=np.int64)
        ts_col = self.interactions["timestamp"].to_numpy(dtype=np.float64)
        self.sequences: list[np.ndarray] = [item_col[bounds[u] : bounds[u + 1]] for u in range(len(counts))]
        self.timestamps: list[np.ndarray] = [ts_col[bounds[u] : bounds[u + 1]] for u in range(len(counts))]
        self._bounds = bounds
        self.max_history = int(self.meta.get("max_history", LONG_USER_THRESHOLD))

    # sizes ---------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        return np.diff(self._bounds)

    def stats(self) -> dict:
        return sequence_stats(self.lengths(), self.n_items)

    def has_repeats(self) -> bool:
        """Whether any user interacted with an item more than once (data that was not deduplicated)."""
        inter = self.interactions
        return bool(len(inter)) and bool(inter.duplicated(["user_idx", "item_idx"]).any())

    # split ---------------------------------------------------------------------------
    def train_sequences(self) -> list[np.ndarray]:
        """Training part of every user's sequence (all but the last two items)."""
        return [s[:-2] if len(s) > 2 else s[:0] for s in self.sequences]

    def eval_split(self, stage: str) -> EvalSplit:
        """Histories and targets for ``stage`` in {"valid", "test"}.

        valid: history = seq[:-2], target = seq[-2] (users with >= 2 items);
        test: history = seq[:-1], target = seq[-1].
        """
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        offset = 2 if stage == "valid" else 1
        histories, targets = [], np.full(self.n_users, -1, dtype=np.int64)
        for u, s in enumerate(self.sequences):
            if len(s) >= offset:
                targets[u] = s[len(s) - offset]
                histories.append(s[: len(s) - offset])
            else:
                histories.append(s[:0])
        return EvalSplit(histories=histories, targets=targets)

    def item_popularity(self) -> np.ndarray:
        """Interaction count of each item in the training part of the split."""
        train = self.train_sequences()
        flat = np.concatenate(train) if train else np.zeros(0, np.int64)
        return np.bincount(flat, minlength=self.n_items).astype(np.float64)

    def item_text(self, i: int) -> dict:
        row = self.items.iloc[i]
        return {k: row[k] for k in self.items.columns}

    # persistence ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.items.to_parquet(folder / "items.parquet", index=False)
        pd.DataFrame({"user_idx": np.arange(self.n_users), "user_id": self.user_ids}).to_parquet(
            folder / "users.parquet", index=False
        )
        self.interactions.to_parquet(folder / "interactions.parquet", index=False)
        meta = dict(self.meta)
        meta.update({"format_version": FORMAT_VERSION, "stats": self.stats()})
        (folder / DATASET_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    @staticmethod
    def is_prepared(folder: str | Path) -> bool:
        return (Path(folder) / DATASET_FILE).is_file()

    @classmethod
    def load(cls, folder: str | Path) -> Dataset:
        folder = Path(folder)
        meta_path = folder / DATASET_FILE
        if not meta_path.is_file():
            raise DataError(folder, None, f"expected a prepared dataset ({DATASET_FILE} missing); run `genrec data prepare` first")
        meta = read_json(meta_path)
        items = pd.read_parquet(folder / "items.parquet")
        users = pd.read_parquet(folder / "users.parquet")
        inter = pd.read_parquet(folder / "interactions.parquet")
        return cls(items, users["user_id"].to_numpy(), inter, meta)
