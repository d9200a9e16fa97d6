"""What an indexer may read: the dataset (items, training split) and item embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.dataset import Dataset


@dataclass
class IndexInputs:
    """Inputs of the index stage. ``behaviour`` [n_items, d] comes from the cf stage (DCCF by
    default); ``llm`` [n_items, hidden] is each item's mean input-layer embedding over its title
    and description (the text stage, :func:`genrec.stages.stage_text`). Either may be None when
    an indexer does not need it."""

    dataset: Dataset
    behaviour: np.ndarray | None = None
    llm: np.ndarray | None = None
    seed: int = 0

    def require(self, what: str, method: str) -> np.ndarray:
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"the {method} indexer needs {what} embeddings")
        return value
