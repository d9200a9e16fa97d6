"""What the sequential baselines share: padded training sequences and next-item scoring.

Items enter models shifted by one, so id 0 is padding. Sequences are left-padded to
``max_len`` (the most recent items are kept), so the last position is always the newest.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from genrec.baselines.configs import SequentialConfig
from genrec.data.dataset import Dataset
from genrec.training.trainer import NeuralRecommender, shuffled_rows


def left_pad(seqs: list[np.ndarray], length: int, shift: int = 1) -> np.ndarray:
    """[B, length] int64: the last ``length`` items of each sequence (+shift), zeros on the left."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = np.asarray(s[-length:], dtype=np.int64)
        if len(s):
            out[r, length - len(s) :] = s + shift
    return out


def training_windows(dataset: Dataset, max_len: int) -> np.ndarray:
    """[U, max_len + 1] windows of each user's training sequence (users with >= 2 items)."""
    train = [s for s in dataset.train_sequences() if len(s) >= 2]
    return left_pad(train, max_len + 1)


class SequentialRecommender(NeuralRecommender):
    """A next-item model over padded sequences: subclasses define :meth:`encode`."""

    def __init__(self, n_items: int, n_users: int, cfg: SequentialConfig):
        super().__init__()
        self.n_items, self.n_users, self.cfg = n_items, n_users, cfg
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self._windows: np.ndarray | None = None

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] item ids (0 = pad) -> [B, L, dim] hidden states; position t sees items <= t."""
        raise NotImplementedError

    def prepare(self, dataset: Dataset) -> None:
        self._windows = training_windows(dataset, self.cfg.max_len)

    def batches(self, dataset: Dataset, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        """Every user's window; inputs are items 0..L-1 and targets items 1..L (0: no loss)."""
        if self._windows is None:
            self.prepare(dataset)
        for w in shuffled_rows(self._windows, batch_size, rng):
            inp, tgt = w[:, :-1].copy(), w[:, 1:].copy()
            tgt[inp == 0] = 0  # the first real item has no history to predict it from
            yield {"input": torch.from_numpy(inp), "target": torch.from_numpy(tgt)}

    def item_weights(self) -> torch.Tensor:
        """[n_items, dim] output embeddings (tied with the input embeddings)."""
        return self.item_emb.weight[1:]

    def scores(self, histories: list[np.ndarray], users: np.ndarray) -> torch.Tensor:
        seq = torch.from_numpy(left_pad(histories, self.cfg.max_len)).to(self.device)
        h = self.encode(seq)[:, -1]
        return h @ self.item_weights().T

    def ce_loss(self, batch: dict) -> torch.Tensor:
        """Full softmax cross-entropy over all items at every non-padded position."""
        h = self.encode(batch["input"])
        mask = batch["target"] > 0
        logits = h[mask] @ self.item_weights().T
        return nn.functional.cross_entropy(logits.float(), batch["target"][mask] - 1)

    def bce_loss(self, batch: dict) -> torch.Tensor:
        """Binary cross-entropy with one uniformly sampled negative per position (original SASRec)."""
        h = self.encode(batch["input"])
        tgt = batch["target"]
        mask = tgt > 0
        neg = torch.randint(1, self.n_items + 1, tgt.shape, device=tgt.device)
        clash = neg == tgt
        neg[clash] = neg[clash] % self.n_items + 1  # never the positive itself
        pos_logit = (h * self.item_emb(tgt)).sum(-1)[mask]
        neg_logit = (h * self.item_emb(neg)).sum(-1)[mask]
        f = nn.functional.binary_cross_entropy_with_logits
        return f(pos_logit.float(), torch.ones_like(pos_logit, dtype=torch.float)) + f(
            neg_logit.float(), torch.zeros_like(neg_logit, dtype=torch.float)
        )
