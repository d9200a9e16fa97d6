"""GRU4Rec (Hidasi et al., ICLR 2016): a GRU over the item sequence predicts the next item.

This is the session-parallel-free variant with full softmax cross-entropy, as commonly used
in sequential-recommendation benchmarks: each user's training sequence is one left-padded
sequence, the GRU runs over it and the hidden state at every position scores the next item
over the whole catalogue. Items enter through an embedding layer (the paper's one-hot input
times the first weight matrix), the GRU has one layer of 100 units as in the paper, and a
linear layer maps its state back to the item-embedding space, whose embeddings are shared
with the input.

Settings: one GRU layer of 100 units, mini-batches of 50 and dropout 0.5 as in the paper's
best setting; item embeddings of size 64 (the paper feeds one-hot vectors).

Differences from the original: no session-parallel mini-batches (sequences are padded and
batched), cross-entropy over all items instead of TOP1/BPR over in-batch negatives, Adam
instead of Adagrad, and padding is skipped (packed sequences), so the GRU starts from the
zero state at the first item whatever the padding length.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.baselines.configs import GRU4RecConfig
from genrec.baselines.sequential import SequentialRecommender
from genrec.training.trainer import NeuralBaseline


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"

    def __init__(self, n_items: int, n_users: int, cfg: GRU4RecConfig):
        super().__init__(n_items, n_users, cfg)
        self.gru = nn.GRU(cfg.dim, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.out = nn.Linear(cfg.hidden, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.out.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, dim]; the GRU starts at the first real item."""
        b, length = seq.shape
        lengths = (seq > 0).sum(1)
        # move each row's items to the left (right padding), run the packed GRU, move back
        shift = length - lengths
        idx = (torch.arange(length, device=seq.device).unsqueeze(0) + shift.unsqueeze(1)) % length
        x = self.drop(self.item_emb(seq.gather(1, idx)))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=length)
        back = (torch.arange(length, device=seq.device).unsqueeze(0) - shift.unsqueeze(1)) % length
        h = out.gather(1, back.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        h = h * (seq > 0).unsqueeze(-1)
        return self.out(self.drop(h))

    def loss(self, batch: dict) -> torch.Tensor:
        return self.ce_loss(batch)


class GRU4RecBaseline(NeuralBaseline):
    """GRU4Rec, sequential form with full softmax cross-entropy."""

    name = "gru4rec"
    model_cls = GRU4Rec
    config_cls = GRU4RecConfig
    # the paper trains with mini-batches of 50; Adam at 1e-3 replaces its Adagrad
    train_defaults = {"lr": 1e-3, "batch_size": 50, "patience": 20}
