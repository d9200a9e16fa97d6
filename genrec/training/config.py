"""The shared trainer's settings and a model's registry entry, apart from the trainer (which imports
torch) so that a run config's model sections are checked before any stage runs
(:func:`genrec.config.load_config`)."""

from __future__ import annotations

import importlib
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field


class Spec(NamedTuple):
    """A trainable recommender in a registry: its class, imported on use, and its model settings
    (the class's ``config_cls``)."""

    cls: str  #: "module:Class"
    config: type[BaseModel] | None  #: None: no settings at all; otherwise neural, also taking TrainConfig settings

    def load(self) -> type:
        """The class itself (importing its module, torch with it)."""
        module, name = self.cls.split(":")
        return getattr(importlib.import_module(module), name)


class TrainConfig(BaseModel):
    """Optimisation settings shared by every neural baseline."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(10, ge=1, description="epochs without a better validation NDCG@10 before stopping")
    eval_every: int = Field(1, ge=1)
    metric: str = "NDCG@10"
    mask_history: bool | Literal["auto"] = Field("auto", description="the validation ranking early stopping reads: "
                                                                      "as the evaluator's setting of that name")
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    eval_batch_size: int = Field(1024, ge=1)
    grad_clip: float | None = Field(5.0, description="max gradient norm; None: off")
    progress: bool = True

