"""Every indexer's settings, by method name: pydantic models that reject unknown keys.

They live apart from the indexers (which import torch) so that a run config's ``index``
section is checked in a fraction of a second, before any stage runs (:func:`genrec.config.load_config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: closes an RID or TID item string (see :mod:`genrec.index.trivial`)
END_TOKEN = "<end_item>"


class AlignmentConfig(BaseModel):
    """:mod:`genrec.index.alignment`."""

    model_config = ConfigDict(extra="forbid")

    levels: int = Field(4, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    epochs: int = Field(200, ge=0)
    batch_size: int = Field(1024, ge=2)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(0.25, ge=0, description="commitment weight")
    llm_weight: float = Field(0.5, ge=0, description="LLM alignment weight; 0 = the 'w/o LA' ablation")
    temperature: float = Field(0.1, gt=0)
    proj_hidden: int = Field(256, ge=1)
    reset_dead_codes: bool = True
    seed: int | None = Field(None, description="default: the index stage's seed")
    device: str = "auto"
    progress: bool = True


class RQVAEConfig(BaseModel):
    """:mod:`genrec.index.rqvae`."""

    model_config = ConfigDict(extra="forbid")

    input: Literal["llm", "behaviour"] = Field("llm", description="llm: TIGER / LC-Rec; behaviour: the 'ED' ablation")
    hidden: list[int] = Field(default_factory=lambda: [512, 256, 128], description="encoder widths (decoder mirrors)")
    latent_dim: int = Field(32, ge=1)
    levels: int = Field(4, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    dropout: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(150, ge=0)
    batch_size: int = Field(512, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    beta: float = Field(0.25, ge=0, description="commitment weight")
    quant_weight: float = Field(1.0, ge=0, description="weight of the quantisation loss")
    llm_weight: float = Field(0.0, ge=0, description="LLM alignment (InfoNCE) weight; needs LLM embeddings")
    temperature: float = Field(0.1, gt=0)
    proj_hidden: int = Field(256, ge=1)
    reset_dead_codes: bool = True
    seed: int | None = Field(None, description="None: the pipeline's seed")
    device: str = "auto"
    progress: bool = True


class SemIDConfig(BaseModel):
    """:mod:`genrec.index.semid`."""

    model_config = ConfigDict(extra="forbid")

    input: Literal["llm", "behaviour"] = Field("llm", description="which item embeddings to quantise")
    levels: int = Field(4, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    iters: int = Field(50, ge=1, description="k-means iterations per level")
    pca_dim: int | None = Field(
        None, ge=1, description="project onto this many principal components first; None: raw embeddings"
    )
    seed: int | None = Field(None, description="None: the pipeline's seed")
    device: str = "auto"


class CIDConfig(BaseModel):
    """:mod:`genrec.index.collaborative`."""

    model_config = ConfigDict(extra="forbid")

    n_clusters: int = Field(32, ge=2, description="N: children per cluster, and the largest leaf")
    window: int | None = Field(5, ge=1, description="co-occurrence window in a sequence; None: whole sequence")
    dense_limit: int = Field(1500, ge=2, description="dense eigendecomposition up to this many items, else eigsh")
    kmeans_iters: int = Field(50, ge=1)
    max_spectral_depth: int = Field(6, ge=1, description="below this depth clusters are split in balanced chunks")
    seed: int | None = Field(None, description="None: the pipeline's seed")


class RIDConfig(BaseModel):
    """:mod:`genrec.index.trivial` (RID)."""

    model_config = ConfigDict(extra="forbid")

    digits: int | None = Field(None, ge=1, le=18, description="None: max(4, digits of 10 * n_items)")
    end_token: str = END_TOKEN
    seed: int | None = Field(None, description="None: the pipeline's seed")


class TIDConfig(BaseModel):
    """:mod:`genrec.index.trivial` (TID)."""

    model_config = ConfigDict(extra="forbid")

    end_token: str = END_TOKEN
    empty_title: str = Field("item {item_id}", description="stands in for an empty title; {item_id} is the raw id")


class IIDConfig(BaseModel):
    """:mod:`genrec.index.trivial` (IID): no settings."""

    model_config = ConfigDict(extra="forbid")


#: method name -> its settings
CONFIGS: dict[str, type[BaseModel]] = {
    "alignment": AlignmentConfig,
    "rqvae": RQVAEConfig,
    "semid": SemIDConfig,
    "cid": CIDConfig,
    "rid": RIDConfig,
    "tid": TIDConfig,
    "iid": IIDConfig,
}
