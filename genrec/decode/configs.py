"""TIGER's settings, a pydantic model that rejects unknown keys, apart from the model (which imports
torch) so that a run config naming ``tiger`` among its baselines is checked before any stage runs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TigerConfig(BaseModel):
    """:mod:`genrec.decode.tiger`."""

    model_config = ConfigDict(extra="forbid")

    index: str = Field(..., description="folder of a code-based item index (e.g. runs/scientific/index)")
    max_len: int = Field(20, ge=1, description="history items the encoder reads")
    dim: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1, description="encoder and decoder layers each")
    ff: int = Field(512, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    beams: int = Field(20, ge=1)
    batch_users: int = Field(64, ge=1, description="users per beam-search batch")
