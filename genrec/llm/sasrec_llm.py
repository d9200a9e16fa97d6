"""SASRec with LLM item embeddings (``sasrec-llm``): the sequential model reads the items through the
vectors the backbone gives their text (:mod:`genrec.llm.item_encoder`), LEARN-style.

The frozen text vectors are standardised (each dimension centred and scaled over the catalogue) and
go through a learned linear projection to SASRec's size. ``mode: replace``: that projection is the
item's embedding, input and output alike (tied, as in SASRec); ``mode: add``: it is added to a
trainable ID embedding, whose rows for items without any training interaction are held at zero.
Either way an item never seen in training has a real embedding, its text's, and is scored like any
other. Everything else (blocks, objective, trainer, early stopping) is :mod:`genrec.baselines.sasrec`.

The text vectors are computed once per encoder and catalogue text and cached; ``fit`` reports how
many were encoded and how many reused (``encoder``), so a retrain costs SASRec's training alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from genrec.baselines.sasrec import SASRec
from genrec.data.dataset import Dataset
from genrec.errors import DataError
from genrec.llm.config import SASRecLLMConfig
from genrec.training.trainer import NeuralBaseline, fit, seed_everything


class TextItemEmbedding(nn.Module):
    """An ``nn.Embedding`` look-alike over n_items + 1 rows (row 0: padding, zeros): the projected
    standardised text vectors, plus (``add``) masked ID embeddings."""

    def __init__(self, features: torch.Tensor, dim: int, mode: str):
        super().__init__()
        feats = features.float()
        mean, std = feats.mean(0, keepdim=True), feats.std(0, keepdim=True)
        self.register_buffer("features", feats.clone())
        self.register_buffer("standardised", (feats - mean) / std.clamp(min=1e-6), persistent=False)
        self.proj = nn.Linear(feats.shape[1], dim)
        self.ids = nn.Embedding(feats.shape[0], dim) if mode == "add" else None
        self.register_buffer("id_mask", torch.ones(feats.shape[0], 1))

    def item_vectors(self) -> torch.Tensor:
        """[n_items, dim]"""
        v = self.proj(self.standardised)
        return v + self.ids.weight * self.id_mask if self.ids is not None else v

    @property
    def weight(self) -> torch.Tensor:
        v = self.item_vectors()
        return torch.cat([torch.zeros(1, v.shape[1], dtype=v.dtype, device=v.device), v])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx]


class SASRecLLM(SASRec):
    name = "sasrec-llm"

    def __init__(self, n_items: int, n_users: int, cfg: SASRecLLMConfig, features: torch.Tensor):
        if features.shape[0] != n_items:
            raise ValueError(f"{features.shape[0]} item vectors for a catalogue of {n_items} items")
        super().__init__(n_items, n_users, cfg)
        self.item_emb = TextItemEmbedding(features, cfg.dim, cfg.mode)
        nn.init.xavier_normal_(self.item_emb.proj.weight)
        if self.item_emb.ids is not None:
            nn.init.xavier_normal_(self.item_emb.ids.weight)

    def prepare(self, dataset: Dataset) -> None:
        super().prepare(dataset)
        if self.item_emb.ids is not None:  # an item without training interactions: its text alone
            seen = torch.from_numpy(dataset.item_popularity() > 0).float().unsqueeze(1)
            self.item_emb.id_mask.copy_(seen.to(self.item_emb.id_mask.device))


def load_features(path: str | Path, n_items: int) -> np.ndarray:
    """Item vectors from a .npy file or a text stage folder, checked against the catalogue."""
    path = Path(path)
    f = path / "item_embeddings.npy" if path.is_dir() else path
    try:
        emb = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f, None, f"expected item vectors (.npy, [n_items, hidden]) ({e})") from None
    if emb.ndim != 2 or emb.shape[0] != n_items or not np.isfinite(emb).all():
        raise DataError(f, None, f"expected finite item vectors [n_items={n_items}, hidden], found shape {emb.shape}")
    return emb.astype(np.float32)


class SASRecLLMBaseline(NeuralBaseline):
    """SASRec-CE with the items' LLM text embeddings (projected; replacing or added to the ID embeddings)."""

    name = "sasrec-llm"
    model_cls = SASRecLLM
    config_cls = SASRecLLMConfig
    train_defaults = {"lr": 1e-3, "batch_size": 128, "patience": 20}

    def __init__(self, config: dict | None = None, train: dict | None = None, encoder=None):
        super().__init__(config, train)
        self.encoder = encoder  #: an EmbedFn in place of the backbone (tests)

    def item_features(self, dataset: Dataset) -> tuple[np.ndarray, dict]:
        """The catalogue's text vectors and how they were obtained (encoded / reused counts, seconds)."""
        c = self.config
        if c.embeddings is not None:
            return load_features(c.embeddings, dataset.n_items), {"source": str(c.embeddings)}
        from genrec.llm.item_encoder import item_encoder_embeddings

        return item_encoder_embeddings(dataset.items, c.backbone, c.encoder_layers, c.max_tokens, c.encoder_dtype,
                                       c.cache, device=self.train_cfg.device, encoder=self.encoder)

    def fit(self, dataset: Dataset, seed: int | None = None, checkpoint_dir=None, log=None, **_: object) -> dict:
        if seed is not None:
            self.train_cfg = self.train_cfg.model_copy(update={"seed": seed})
        features, info = self.item_features(dataset)
        seed_everything(self.train_cfg.seed)
        self.model = SASRecLLM(dataset.n_items, dataset.n_users, self.config, torch.from_numpy(features))
        self.log = fit(self.model, dataset, self.train_cfg, checkpoint_dir, log)
        self.log["encoder"] = info
        return {k: v for k, v in self.log.items() if k != "history"}

    @classmethod
    def build_model(cls, meta: dict, config: SASRecLLMConfig, state: dict[str, torch.Tensor]) -> SASRecLLM:
        return SASRecLLM(meta["n_items"], meta["n_users"], config, state["item_emb.features"])
