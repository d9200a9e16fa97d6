"""Run configuration: YAML validated by pydantic, with ``--set a.b=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genrec.data.preprocess import PrepareConfig
from genrec.data.synth import SynthConfig
from genrec.errors import DataError, GenrecError
from genrec.llm.config import LLMTrainConfig
from genrec.llm.tasks import TaskConfig


class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field("synth", description="'synth' or a folder of raw or prepared data")
    format: str | None = Field(None, description="raw format; detected when omitted")
    options: dict[str, Any] = Field(default_factory=dict, description="loader options (file and column names)")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)


class EvaluateSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    mask_history: bool | Literal["auto"] = Field(
        "auto", description="leave a user's history items out of their recommendations; auto: exactly when the data "
                            "holds no repeated user-item pair (deduplicated data, where a history item is never the target)")
    batch_size: int = Field(256, ge=1)


class CFSection(BaseModel):
    """The behaviour model whose item embeddings the index is built from."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("dccf", description="dccf, lightgcn or sasrec")
    dim: int = Field(32, ge=1)
    train: dict[str, Any] = Field(default_factory=dict, description="trainer settings, e.g. {epochs: 50}")
    config: dict[str, Any] = Field(default_factory=dict, description="model settings")


class IndexSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field("alignment", description="alignment, rqvae, semid, cid, rid, tid or iid")
    config: dict[str, Any] = Field(default_factory=dict, description="indexer settings, e.g. {levels: 4}")


class DecodeSection(BaseModel):
    """Evaluate the fine-tuned model by constrained beam search through the shared evaluator."""

    model_config = ConfigDict(extra="forbid")

    beams: int = Field(20, ge=1)
    batch_users: int = Field(8, ge=1)
    users: int | None = Field(None, ge=1, description="a seeded random sample of test users; default all")
    pop_alpha: list[float] = Field(default_factory=lambda: [0.0], description="popularity adjustment of the ranking "
                                   "(log p(item | history) - alpha * log popularity share); with several values, the one with "
                                   "the best validation NDCG@10 on select_users validation users is used for the test")
    select_users: int = Field(1000, ge=1, description="validation users that pick pop_alpha (the train stage's sample)")


class CacheSection(BaseModel):
    """Pre-compute every user's top-K into a store for serving."""

    model_config = ConfigDict(extra="forbid")

    store: str | None = Field(None, description="file path, sqlite:///path or redis://...; default <run_dir>/cache.db")
    k: int = Field(20, ge=1)
    beams: int = Field(20, ge=1)
    batch_users: int = Field(8, ge=1)
    chunk_users: int = Field(64, ge=1)
    pop_alpha: float | Literal["evaluate"] = Field(
        "evaluate", description="popularity adjustment of the cached rankings: a value, or 'evaluate': the one the "
                                "evaluate stage picked on validation (0 without an evaluate stage)")


class RunConfig(BaseModel):
    """A whole pipeline run."""

    model_config = ConfigDict(extra="forbid")

    name: str = "run"
    run_dir: str | None = Field(None, description="defaults to runs/<name>")
    seed: int = 0
    data: DataSection = Field(default_factory=DataSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    baselines: list[str] = Field(default_factory=lambda: ["pop"])
    baseline_params: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="per baseline: {'config': model settings, 'train': trainer settings}",
    )

    backbone: str = Field("default", description="LLM for item text, tasks and fine-tuning: default, a folder, a .gguf or a hub id")
    cf: CFSection | None = Field(None, description="behaviour embeddings for the index (when the indexer needs them)")
    index: IndexSection | None = None
    tasks: TaskConfig | None = None
    train: LLMTrainConfig | None = None
    decode: DecodeSection | None = None
    cache: CacheSection | None = None

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GenrecError(f"override {item!r}: expected KEY=VALUE, e.g. data.prepare.kcore=10")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise GenrecError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or start from defaults), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, None, "no such config file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise DataError(path, f"line {mark.line + 1}" if mark else None, f"invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise DataError(path, None, "expected a mapping of sections at the top level")
    apply_overrides(raw, overrides or [])
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise DataError(path, where, f"{err['msg']} (input {err.get('input')!r})") from None
    return cfg
