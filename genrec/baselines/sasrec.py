"""SASRec (Kang and McAuley, ICDM 2018): causal self-attention over the item sequence.

Implemented as in the paper: learned positional embeddings, pre-LayerNorm blocks of causal
single-head attention and a point-wise feed-forward network, dropout, the item embedding
shared between input and output. Two training objectives:

- ``sasrec`` (BCE, the original): one uniformly sampled negative per position, the setting
  most LLM-recommender papers copy, which makes the baseline weak;
- ``sasrec-ce``: full softmax cross-entropy over all items at every position, much stronger
  (as reported by Klenitskiy and Vasilev, RecSys 2023).

Differences from the original: padding keys are masked out of attention (the original lets
queries attend to zeroed padding), and the history is capped at 20 items, the protocol of
every model here.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.baselines.configs import SASRecConfig
from genrec.baselines.sequential import SequentialRecommender
from genrec.training.trainer import NeuralBaseline


class Block(nn.Module):
    """Pre-LN causal self-attention + feed-forward, both residual."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)
        self.heads, self.p = heads, dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(SequentialRecommender):
    name = "sasrec"

    def __init__(self, n_items: int, n_users: int, cfg: SASRecConfig):
        super().__init__(n_items, n_users, cfg)
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} must be divisible by heads {cfg.heads}")
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        pad = seq == 0
        x = self.item_emb(seq) * self.cfg.dim**0.5 + self.pos_emb.weight[-length:]
        x = self.drop(x) * (~pad).unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        # query i may attend key j <= i that is not padding; a padded query attends itself only
        mask = causal & (~pad).unsqueeze(1) | torch.eye(length, dtype=torch.bool, device=seq.device)
        mask = mask.unsqueeze(1)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x)

    def loss(self, batch: dict) -> torch.Tensor:
        return self.ce_loss(batch) if self.cfg.loss == "ce" else self.bce_loss(batch)


class SASRecBCE(NeuralBaseline):
    """SASRec with one sampled negative and binary cross-entropy (the original objective)."""

    name = "sasrec"
    model_cls = SASRec
    config_cls = SASRecConfig
    train_defaults = {"lr": 1e-3, "batch_size": 128, "patience": 20}


class SASRecCE(NeuralBaseline):
    """SASRec with full softmax cross-entropy over the catalogue."""

    name = "sasrec-ce"
    model_cls = SASRec
    config_cls = SASRecConfig
    train_defaults = {"lr": 1e-3, "batch_size": 128, "patience": 20}

    def __init__(self, config: dict | None = None, train: dict | None = None):
        super().__init__({"loss": "ce", **(config or {})}, train)
