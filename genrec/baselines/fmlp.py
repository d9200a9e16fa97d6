"""FMLP-Rec (Zhou et al., WWW 2022): an all-MLP model with learnable frequency-domain filters.

Implemented as in the paper: item + learned positional embeddings, LayerNorm and dropout,
then blocks of (1) a learnable filter layer: FFT along the sequence (``rfft``), element-wise
product with a learnable complex weight per frequency and channel, inverse FFT, dropout,
residual and LayerNorm, and (2) a point-wise feed-forward network (width 4d, GELU), dropout,
residual and LayerNorm. The last position's output is scored against the shared item
embeddings.

The filter is a circular convolution over all positions, so position t sees the items after
it: training on every position at once would leak the targets. Each training sample is
therefore a prefix of a training sequence, labelled with the item that follows it, and only
the last position is scored (full softmax cross-entropy over the catalogue instead of the
paper's loss with sampled negatives). Padded positions are zeroed before every filter, so
the filter mixes only the history.

Settings: d = 64, two blocks, Adam with lr 1e-3 and batches of 256 as in the paper; dropout
0.5 (the paper tunes it per dataset; SASRec's rate for sparse Amazon data, not tuned here).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from genrec.baselines.configs import FMLPConfig
from genrec.baselines.sequential import SequentialRecommender
from genrec.data.dataset import Dataset
from genrec.training.trainer import NeuralBaseline


class FilterBlock(nn.Module):
    """Learnable filter layer and point-wise FFN, each with dropout, residual and LayerNorm."""

    def __init__(self, length: int, dim: int, dropout: float):
        super().__init__()
        # one complex weight per frequency (length // 2 + 1) and channel, stored as (re, im)
        self.filter = nn.Parameter(torch.randn(length // 2 + 1, dim, 2) * 0.02)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        x = x * keep
        spec = torch.fft.rfft(x.float(), dim=1, norm="ortho")
        y = torch.fft.irfft(spec * torch.view_as_complex(self.filter.float()), n=length, dim=1, norm="ortho")
        x = self.ln1(x + self.drop(y.to(x.dtype)))
        return self.ln2(x + self.drop(self.ff(x)))


class FMLPRec(SequentialRecommender):
    name = "fmlp"

    def __init__(self, n_items: int, n_users: int, cfg: FMLPConfig):
        super().__init__(n_items, n_users, cfg)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.emb_ln = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(FilterBlock(cfg.max_len, cfg.dim, cfg.dropout) for _ in range(cfg.layers))
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self._flat: np.ndarray | None = None  # training sequences back to back, shifted by one
        self._targets = np.zeros(0, np.int64)  # index in _flat of every sample's target
        self._seq_start = np.zeros(0, np.int64)  # index in _flat where its sequence starts

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, dim]; positions mix (only the last one is used)."""
        keep = (seq > 0).unsqueeze(-1).to(self.pos_emb.weight.dtype)
        x = self.item_emb(seq) + self.pos_emb.weight[-seq.shape[1] :]
        x = self.drop(self.emb_ln(x))
        for block in self.blocks:
            x = block(x, keep)
        return x

    def prepare(self, dataset: Dataset) -> None:
        """All training sequences back to back, and for every sample the index of its target."""
        train = [np.asarray(s, dtype=np.int64) for s in dataset.train_sequences() if len(s) >= 2]
        lengths = np.array([len(s) for s in train], dtype=np.int64)
        self._flat = np.concatenate([np.zeros(0, np.int64), *train]) + 1  # 0 = pad
        starts = np.cumsum(lengths) - lengths
        # every item but the first of each sequence is a target
        self._seq_start = np.repeat(starts, lengths - 1)
        self._targets = np.arange(len(self._flat))[np.isin(np.arange(len(self._flat)), starts, invert=True)]

    def batches(self, dataset: Dataset, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        """Every prefix of every training sequence (left-padded to ``max_len``) and its next item."""
        if self._flat is None:
            self.prepare(dataset)
        length = self.cfg.max_len
        offsets = np.arange(-length, 0, dtype=np.int64)
        order = rng.permutation(len(self._targets))
        for lo in range(0, len(order), batch_size):
            pick = order[lo : lo + batch_size]
            tgt = self._targets[pick]
            idx = tgt[:, None] + offsets[None, :]
            valid = idx >= self._seq_start[pick][:, None]
            inp = np.where(valid, self._flat[np.maximum(idx, 0)], 0)
            yield {"input": torch.from_numpy(inp), "target": torch.from_numpy(self._flat[tgt])}

    def loss(self, batch: dict) -> torch.Tensor:
        """Full softmax cross-entropy of the next item, from the last position only."""
        h = self.encode(batch["input"])[:, -1]
        logits = h @ self.item_weights().T
        return nn.functional.cross_entropy(logits.float(), batch["target"] - 1)


class FMLPBaseline(NeuralBaseline):
    """FMLP-Rec trained on sequence prefixes with full softmax cross-entropy."""

    name = "fmlp"
    model_cls = FMLPRec
    config_cls = FMLPConfig
    # the paper: Adam, lr 1e-3, batch 256
    train_defaults = {"lr": 1e-3, "batch_size": 256, "patience": 20}
