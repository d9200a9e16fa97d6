"""DCCF's and LightGCN's settings, pydantic models that reject unknown keys, apart from the
models (which import torch) so that a run config is checked before any stage runs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DCCFConfig(BaseModel):
    """:mod:`genrec.cf.dccf` (its docstring explains the defaults)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)
    intents: int = Field(128, ge=1, description="global intent prototypes, each for users and items")
    temperature: float = Field(1.0, gt=0)
    ssl_weight: float = Field(0.1, ge=0)
    emb_reg: float = Field(5e-3, ge=0, description="times the batch's summed squared ego embeddings (code: 2.5e-5)")
    cen_reg: float = Field(5e-3, ge=0, description="times the squared norm of the intent prototypes")


class LightGCNConfig(BaseModel):
    """:mod:`genrec.cf.lightgcn`."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(64, ge=1)
    layers: int = Field(3, ge=0)
    reg: float = Field(1e-4, ge=0, description="L2 weight on the batch's ego embeddings")
    init_std: float = Field(0.1, gt=0)
