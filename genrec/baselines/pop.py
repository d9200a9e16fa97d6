"""Most-popular items: every user gets the catalogue ranked by training interaction count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genrec.data.dataset import Dataset


class Pop:
    """Scores each item by how often it occurs in the training part of the split."""

    name = "pop"

    def __init__(self, config: dict | None = None, train: dict | None = None) -> None:
        if config or train:
            raise ValueError("pop has no settings")
        self.counts: np.ndarray | None = None

    def fit(self, dataset: Dataset, **_: object) -> dict:
        self.counts = dataset.item_popularity()
        return {"items_seen": int((self.counts > 0).sum())}

    def score(self, histories: list[np.ndarray], users: np.ndarray) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("Pop.score called before fit")
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))

    def save(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "pop.json").write_text(json.dumps({"counts": self.counts.tolist()}))

    @classmethod
    def load(cls, folder: str | Path) -> Pop:
        model = cls()
        model.counts = np.asarray(json.loads((Path(folder) / "pop.json").read_text())["counts"], dtype=np.float64)
        return model
