"""CLLM4Rec-Emb: a two-tower model fed with a fitted CLLM4Rec's user and item token embeddings.

The paper's industrial answer to CLLM4Rec's latency: the collaborative user and item token embeddings,
projected to 128 dimensions, enter a two-tower (TT) model that scores by a dot product. Here the item
tower is the item's projected CLLM4Rec embedding plus (``id_embeddings``) a trainable ID embedding of
the same size; the user tower is a two-layer MLP over the user's projected CLLM4Rec embedding and the
mean of the item-tower vectors of the user's most recent ``max_len`` history items. It trains like the
other baselines (the shared trainer: full softmax over the items at every prefix of the training
sequences, early stopping on validation NDCG@10) with the CLLM4Rec embeddings frozen.

The embeddings come from ``source``, a fitted ``cllm4rec`` model folder (read with
:func:`genrec.llm.cllm4rec.read_embeddings`, no backbone needed); without one, ``fit`` first fits a
CLLM4Rec with the ``cllm4rec`` settings (``genrec run`` passes its ``cllm4rec`` baseline's folder instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genrec.baselines.sequential import left_pad, training_windows
from genrec.data.dataset import Dataset
from genrec.llm.config import CLLM4RecEmbConfig
from genrec.training.trainer import NeuralBaseline, NeuralRecommender, fit, seed_everything, shuffled_rows


class TwoTower(NeuralRecommender):
    name = "cllm4rec-emb"

    def __init__(self, n_items: int, n_users: int, cfg: CLLM4RecEmbConfig, user_feat: torch.Tensor,
                 item_feat: torch.Tensor):
        super().__init__()
        self.n_items, self.n_users, self.cfg = n_items, n_users, cfg
        if user_feat.shape[0] != n_users or item_feat.shape[0] != n_items:
            raise ValueError(f"CLLM4Rec embeddings of {user_feat.shape[0]} users and {item_feat.shape[0]} items; "
                             f"the dataset has {n_users} and {n_items}")
        self.register_buffer("user_feat", user_feat.float().clone())
        self.register_buffer("item_feat", item_feat.float().clone())
        d, h = cfg.dim, user_feat.shape[1]
        self.proj_user, self.proj_item = nn.Linear(h, d), nn.Linear(h, d)
        self.item_id = nn.Embedding(n_items, d) if cfg.id_embeddings else None
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=0.02)
        self.user_mlp = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(2 * d, d))
        self._windows: np.ndarray | None = None

    def item_vectors(self) -> torch.Tensor:
        """[n_items, dim] the item tower."""
        v = self.proj_item(self.item_feat)
        return v + self.item_id.weight if self.item_id is not None else v

    def user_vectors(self, users: torch.Tensor, seq: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, dim] the user tower at every position of left-padded ``seq`` (0 = pad, items + 1):
        the user's projected embedding with the running mean of the item vectors up to that position."""
        items = self.item_vectors() if items is None else items
        pad_row = torch.zeros(1, items.shape[1], device=items.device, dtype=items.dtype)
        x = torch.cat([pad_row, items])[seq]  # [B, L, d]
        counts = (seq > 0).cumsum(1).clamp(min=1).unsqueeze(-1)
        pooled = x.cumsum(1) / counts
        u = self.proj_user(self.user_feat[users]).unsqueeze(1).expand_as(pooled)
        return self.user_mlp(torch.cat([u, pooled], -1))

    def prepare(self, dataset: Dataset) -> None:
        windows = training_windows(dataset, self.cfg.max_len)
        users = np.array([u for u, s in enumerate(dataset.train_sequences()) if len(s) >= 2], dtype=np.int64)
        self._windows = np.concatenate([users[:, None], windows], axis=1)  # column 0: the user

    def batches(self, dataset: Dataset, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        if self._windows is None:
            self.prepare(dataset)
        for w in shuffled_rows(self._windows, batch_size, rng):
            inp, tgt = w[:, 1:-1].copy(), w[:, 2:].copy()
            tgt[inp == 0] = 0
            yield {"user": torch.from_numpy(w[:, 0].copy()), "input": torch.from_numpy(inp), "target": torch.from_numpy(tgt)}

    def loss(self, batch: dict) -> torch.Tensor:
        items = self.item_vectors()
        h = self.user_vectors(batch["user"], batch["input"], items)
        mask = batch["target"] > 0
        return nn.functional.cross_entropy((h[mask] @ items.T).float(), batch["target"][mask] - 1)

    def scores(self, histories: list[np.ndarray], users: np.ndarray) -> torch.Tensor:
        seq = torch.from_numpy(left_pad(histories, self.cfg.max_len)).to(self.device)
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        items = self.item_vectors()
        return self.user_vectors(u, seq, items)[:, -1] @ items.T


class CLLM4RecEmb(NeuralBaseline):
    """CLLM4Rec-Emb: a two-tower model over CLLM4Rec's user/item token embeddings projected to 128."""

    name = "cllm4rec-emb"
    model_cls = TwoTower
    config_cls = CLLM4RecEmbConfig
    train_defaults = {"lr": 1e-3, "batch_size": 128, "patience": 10}

    def fit(self, dataset: Dataset, seed: int | None = None, checkpoint_dir=None, log=None, **_: object) -> dict:
        from genrec.llm.cllm4rec import CLLM4Rec, read_embeddings

        if seed is not None:
            self.train_cfg = self.train_cfg.model_copy(update={"seed": seed})
        info: dict = {}
        if self.config.source is not None:
            users, items = read_embeddings(self.config.source)
        else:
            params = self.config.cllm4rec
            base = CLLM4Rec(params.get("config"), params.get("train"))
            sub = Path(checkpoint_dir) / "cllm4rec" if checkpoint_dir else None
            info["cllm4rec"] = base.fit(dataset, seed=self.train_cfg.seed, checkpoint_dir=sub, log=log)
            users, items = base.embeddings()
            del base
        seed_everything(self.train_cfg.seed)
        self.model = TwoTower(dataset.n_items, dataset.n_users, self.config, torch.from_numpy(users),
                              torch.from_numpy(items))
        tt = Path(checkpoint_dir) / "two-tower" if checkpoint_dir else None
        self.log = fit(self.model, dataset, self.train_cfg, tt, log)
        self.log.update(info)
        return {k: v for k, v in self.log.items() if k != "history"}

    @classmethod
    def build_model(cls, meta: dict, config: CLLM4RecEmbConfig, state: dict[str, torch.Tensor]) -> TwoTower:
        return TwoTower(meta["n_items"], meta["n_users"], config, state["user_feat"], state["item_feat"])


