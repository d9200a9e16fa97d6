"""The classic baselines' settings, pydantic models that reject unknown keys (the shared trainer's
are :class:`genrec.training.config.TrainConfig`, DCCF's and LightGCN's are in :mod:`genrec.cf.configs`).

They live apart from the models (which import torch) so that a run config's ``baselines``,
``baseline_params``, ``cf`` and ``train.distill`` sections are checked in a fraction of a
second, before any stage runs (:func:`genrec.config.load_config`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SequentialConfig(BaseModel):
    """What the sequential models share (:mod:`genrec.baselines.sequential`)."""

    model_config = ConfigDict(extra="forbid")

    max_len: int = Field(20, ge=2, description="history items the model sees (the protocol's cap is 20)")
    dim: int = Field(64, ge=4)
    dropout: float = Field(0.2, ge=0, lt=1)


class SASRecConfig(SequentialConfig):
    """:mod:`genrec.baselines.sasrec`."""

    dim: int = 50  # the paper's d for Amazon data
    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = 0.5  # the paper's rate for the sparse Amazon datasets
    loss: str = Field("bce", pattern="^(bce|ce)$")


class BERT4RecConfig(SequentialConfig):
    """:mod:`genrec.baselines.bert4rec`."""

    dim: int = 64  # the paper's d
    layers: int = Field(2, ge=1)  # the paper's L
    heads: int = Field(2, ge=1)  # the paper's h
    dropout: float = 0.1  # the paper's dropout
    mask_prob: float = Field(0.6, gt=0, le=1, description="Cloze mask proportion (paper: 0.6 for Amazon Beauty)")
    last_share: float = Field(0.3, ge=0, le=1, description="share of sequences masked at the last item only")


class GRU4RecConfig(SequentialConfig):
    """:mod:`genrec.baselines.gru4rec`."""

    dim: int = 64  # item-embedding size
    hidden: int = Field(100, ge=1)  # the paper's 100 GRU units
    layers: int = Field(1, ge=1)  # the paper's single GRU layer
    dropout: float = 0.5  # as in the paper's best RSC15 setting; 0.5 beat 0.25 on validation here


class FMLPConfig(SequentialConfig):
    """:mod:`genrec.baselines.fmlp`."""

    dim: int = 64  # the paper's embedding size
    layers: int = Field(2, ge=1)  # the paper's two filter-enhanced blocks
    dropout: float = 0.5
