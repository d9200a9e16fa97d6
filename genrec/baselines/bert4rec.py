"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained with the Cloze task.

Implemented as in the paper: item + learned positional embeddings, LayerNorm and dropout,
post-LayerNorm Transformer blocks (multi-head bidirectional self-attention, a GELU
feed-forward network of width 4d), and the output layer ``GELU(h W + b)`` -> LayerNorm ->
dot product with the shared item embeddings plus a per-item bias. Training masks every item
of a training sequence with probability ``mask_prob`` (replaced by a [MASK] token, id
``n_items + 1``; a sequence that draws no mask gets its last item masked) and minimises the
full softmax cross-entropy over the catalogue at the masked positions. As the paper
suggests, a share of the sequences (``last_share``) is masked at the last item only, which
matches the inference layout. At inference [MASK] is appended after the history (truncated
to ``max_len - 1`` items) and its output scores the catalogue.

Settings: d = 64, 2 layers, 2 heads, dropout 0.1 and truncated-normal initialisation as in
the paper; ``mask_prob`` 0.6 is the paper's value for Amazon Beauty (short sequences; it
uses smaller proportions, down to 0.2, for its longer Steam and MovieLens sequences), and
0.6 also beat 0.2 on validation here (Amazon Scientific). The paper gives no share of
last-item samples: 0.3 was slightly better than 0.1 on validation.

Differences from the original: masks are redrawn every epoch (the original writes several
fixed maskings of each sequence to disk), one window per user (the most recent
``max_len`` training items, the protocol's history cap of 20) instead of sliding windows,
Adam with a constant learning rate instead of Adam with decoupled weight decay and linear
decay, and a learning rate of 1e-3 rather than 1e-4 (see
:class:`BERT4RecBaseline`'s ``train_defaults``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from genrec.baselines.configs import BERT4RecConfig
from genrec.baselines.sequential import SequentialRecommender, left_pad
from genrec.data.dataset import Dataset
from genrec.training.trainer import NeuralBaseline, shuffled_rows


class Block(nn.Module):
    """Post-LN Transformer block: bidirectional self-attention and a GELU FFN, both residual."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.heads, self.p = heads, dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = self.ln1(x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d))))
        return self.ln2(x + self.drop(self.ff(x)))


class BERT4Rec(SequentialRecommender):
    name = "bert4rec"

    def __init__(self, n_items: int, n_users: int, cfg: BERT4RecConfig):
        super().__init__(n_items, n_users, cfg)
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} must be divisible by heads {cfg.heads}")
        self.mask_id = n_items + 1
        self.item_emb = nn.Embedding(n_items + 2, cfg.dim, padding_idx=0)  # + the [MASK] token
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.emb_ln = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim))
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        for m in self.modules():  # BERT's initialisation: truncated normal, std 0.02
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] ids (0 pad, n_items + 1 mask) -> [B, L, dim]; every position sees every item."""
        length = seq.shape[1]
        pad = seq == 0
        x = self.item_emb(seq) + self.pos_emb.weight[-length:]
        x = self.drop(self.emb_ln(x))
        # every query attends every non-padding key; a padded query attends itself only
        mask = (~pad).unsqueeze(1) | torch.eye(length, dtype=torch.bool, device=seq.device)
        mask = mask.unsqueeze(1)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def item_weights(self) -> torch.Tensor:
        return self.item_emb.weight[1 : self.n_items + 1]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """[N, dim] hidden states -> [N, n_items] item logits through the output layer."""
        return self.head(h) @ self.item_weights().T + self.out_bias

    def prepare(self, dataset: Dataset) -> None:
        train = [s for s in dataset.train_sequences() if len(s) >= 2]
        self._windows = left_pad(train, self.cfg.max_len)

    def batches(self, dataset: Dataset, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        """Every user's window with freshly drawn masks; targets are the masked items (0: no loss)."""
        if self._windows is None:
            self.prepare(dataset)
        for w in shuffled_rows(self._windows, batch_size, rng):
            real = w > 0
            masked = real & (rng.random(w.shape) < self.cfg.mask_prob)
            last_only = rng.random(len(w)) < self.cfg.last_share
            masked[last_only] = False
            masked[~masked.any(axis=1), -1] = True  # left padding: the last position is always an item
            inp = np.where(masked, self.mask_id, w)
            tgt = np.where(masked, w, 0)
            yield {"input": torch.from_numpy(inp), "target": torch.from_numpy(tgt)}

    def loss(self, batch: dict) -> torch.Tensor:
        """Full softmax cross-entropy over all items at the masked positions."""
        h = self.encode(batch["input"])
        mask = batch["target"] > 0
        logits = self.logits(h[mask])
        return nn.functional.cross_entropy(logits.float(), batch["target"][mask] - 1)

    def scores(self, histories: list[np.ndarray], users: np.ndarray) -> torch.Tensor:
        """Append [MASK] to the last ``max_len - 1`` history items and score its position."""
        seq = left_pad(histories, self.cfg.max_len - 1)
        seq = np.concatenate([seq, np.full((len(seq), 1), self.mask_id, dtype=np.int64)], axis=1)
        h = self.encode(torch.from_numpy(seq).to(self.device))[:, -1]
        return self.logits(h)


class BERT4RecBaseline(NeuralBaseline):
    """BERT4Rec with the Cloze objective and full softmax cross-entropy."""

    name = "bert4rec"
    model_cls = BERT4Rec
    config_cls = BERT4RecConfig
    # the paper: batch 256, gradient clipping at norm 5; lr 1e-3 instead of its 1e-4 (which
    # needs the original's hundreds of thousands of steps), no weight decay (Adam here couples it)
    train_defaults = {"lr": 1e-3, "batch_size": 256, "patience": 20, "grad_clip": 5.0}
