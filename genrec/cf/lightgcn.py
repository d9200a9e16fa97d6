"""LightGCN (He et al., SIGIR 2020): linear propagation over the user-item graph.

Implemented as in the paper: ego embeddings ``E0`` for users and items, ``K`` propagation
steps ``E(k+1) = D^-1/2 A D^-1/2 E(k)`` with no feature transform and no nonlinearity, the
final representation the mean of ``E0..EK`` (layer combination with ``alpha_k = 1/(K+1)``),
the score the dot product of user and item representations. Loss: BPR with one uniformly
sampled negative per (user, positive) plus ``reg * (|e_u|^2 + |e_p|^2 + |e_n|^2) / 2``
averaged over the batch, on the ego embeddings only. Defaults are the paper's: 3 layers,
Adam lr 1e-3, L2 1e-4, batch 2048, dim 64, normal(0, 0.1) initialisation (the authors'
PyTorch code), no gradient clipping.

Differences: the graph is built from the leave-one-out training split (all but each user's
last two items), and training stops early on validation NDCG@10 (the paper ran a fixed
budget with early stopping on recall@20). An epoch draws as many triples as there are training
pairs, with users uniform (the authors' sampler).
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.cf.configs import LightGCNConfig
from genrec.cf.graph import GraphBaseline, GraphRecommender


class LightGCN(GraphRecommender):
    name = "lightgcn"

    def __init__(self, n_items: int, n_users: int, cfg: LightGCNConfig):
        super().__init__(n_items, n_users)
        self.cfg = cfg
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.user_emb.weight, self.item_emb.weight]).float()
        graph = self.graph()
        total = x
        for _ in range(self.cfg.layers):
            x = graph.propagate(x)
            total = total + x
        out = total / (self.cfg.layers + 1)
        return out[: self.n_users], out[self.n_users :]

    def loss(self, batch: dict) -> torch.Tensor:
        users, items = self.propagate_fp32()
        u, p, n = batch["users"], batch["pos"], batch["neg"]
        bpr = self.bpr(users[u], items[p], items[n])
        ego = self.user_emb(u).pow(2).sum() + self.item_emb(p).pow(2).sum() + self.item_emb(n).pow(2).sum()
        return bpr + self.cfg.reg * 0.5 * ego / len(u)


class LightGCNBaseline(GraphBaseline):
    """LightGCN: linear graph propagation, BPR (He et al., SIGIR 2020)."""

    name = "lightgcn"
    model_cls = LightGCN
    config_cls = LightGCNConfig
    train_defaults = {"lr": 1e-3, "batch_size": 2048, "epochs": 1000, "patience": 20, "grad_clip": None}
