"""Run configuration: YAML validated by pydantic, with ``--set a.b=value`` overrides.

The sections that name a class (``baselines``, ``baseline_params``, ``cf``, ``index``,
``train.distill.teacher``) stay plain dicts, as written: the stages hash them into their
fingerprints. :func:`check_settings` checks them against the named class's settings model at
load time, without importing torch, so a typo fails before any stage runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genrec.data.preprocess import PrepareConfig
from genrec.data.synth import SynthConfig
from genrec.errors import DataError, GenrecError
from genrec.index.configs import CONFIGS as INDEX_CONFIGS
from genrec.llm.config import LLMTrainConfig, TagsConfig
from genrec.llm.tasks import TaskConfig
from genrec.registry import EMBEDDING_MODELS
from genrec.registry import SPECS as BASELINE_SPECS
from genrec.training.config import TrainConfig


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
    train: dict[str, Any] = Field(default_factory=dict, description="trainer settings (genrec.training.config."
                                                                    "TrainConfig), e.g. {epochs: 50}")
    config: dict[str, Any] = Field(default_factory=dict, description="model settings (the model's baseline's, see "
                                                                     "genrec.registry.SPECS); dim comes from dim")


class IndexSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field("alignment", description="alignment, rqvae, semid, cid, rid, tid or iid")
    config: dict[str, Any] = Field(default_factory=dict, description="indexer settings (genrec.index.configs), "
                                                                     "e.g. {levels: 4}")
    id_level: bool = Field(False, description="add a last level that is each item's own token (one new token per "
                           "item): the codes narrow the choice, the last token names the item; a new item gets its "
                           "cluster from the codebooks and an own token scored by the sibling back-off")
    text_layers: int | None = Field(None, ge=1, description="the items' text embeddings (LLM alignment, new items) "
                                    "from the backbone's first N decoder layers, mean-pooled; unset: the mean "
                                    "input-layer embedding (benchmarks/text_encoder.py compares the depths)")


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
    precision: Literal["auto", "fp32", "bf16", "int8"] | None = Field(
        None, description="decoding arithmetic (as `genrec evaluate --precision`); None: the model's training dtype")


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
        description="per baseline: {'config': model settings, 'train': trainer settings} (genrec.registry.SPECS)",
    )

    backbone: str = Field("default", description="LLM for item text, tasks and fine-tuning: default, a folder, a .gguf or a hub id")
    tags: TagsConfig | None = Field(None, description="LLM-written keyword tags for items with a short description, "
                                    "added to the item text that the text stage, the index, the tasks and the "
                                    "text-reading baselines read (genrec.llm.tags); unset: the plain item text")
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
    cfg = _validated(RunConfig, raw, "", path)
    check_settings(cfg, path)
    return cfg


def check_settings(cfg: RunConfig, path: str | Path | None = None) -> None:
    """Check every section that names a class against that class's settings model: the baseline
    names and ``baseline_params`` (for the baselines and the distillation teacher too when they have
    none), the behaviour model (``cf``) and the indexer (``index``). Raises a DataError naming
    ``path``, the key and what is allowed at the first problem. Nothing is changed: the stages get
    the dicts as written (their fingerprints hash them). Needs no torch, so it is quick."""
    baselines = list(BASELINE_SPECS)
    for name in cfg.baselines:
        if name not in BASELINE_SPECS:
            raise DataError(path, "baselines", f"unknown baseline {name!r}; expected one of: {_listed(baselines)}")
    for name in cfg.baseline_params:
        if name not in BASELINE_SPECS:
            raise DataError(path, f"baseline_params.{name}", f"unknown baseline; expected one of: {_listed(baselines)}")
    teacher = cfg.train.distill.teacher if cfg.train is not None and cfg.train.distill is not None else None
    if teacher is not None and teacher not in BASELINE_SPECS:
        raise DataError(path, "train.distill.teacher", f"unknown baseline {teacher!r}; expected one of: {_listed(baselines)}")
    for name in dict.fromkeys([*cfg.baselines, *([teacher] if teacher else []), *cfg.baseline_params]):
        params, where = cfg.baseline_params.get(name, {}), f"baseline_params.{name}"
        for key in params:
            if key not in ("config", "train"):
                raise DataError(path, f"{where}.{key}", "unknown key; expected one of: config, train")
        model = BASELINE_SPECS[name].config
        if model is None:
            for key, value in params.items():
                if value:
                    raise DataError(path, f"{where}.{key}", f"{name} has no settings")
            continue
        _validated(model, params.get("config", {}), f"{where}.config", path)
        _validated(TrainConfig, params.get("train", {}), f"{where}.train", path)
    if cfg.cf is not None:
        if cfg.cf.model not in EMBEDDING_MODELS:
            raise DataError(path, "cf.model", f"unknown model {cfg.cf.model!r}; expected one of: {_listed(EMBEDDING_MODELS)}")
        model = BASELINE_SPECS[EMBEDDING_MODELS[cfg.cf.model]].config
        # as the cf stage builds it: cf.dim is the model's dim, and early stopping reads unmasked validation
        _validated(model, {**cfg.cf.config, "dim": cfg.cf.dim}, "cf.config", path, {"cf.config.dim": "cf.dim"})
        _validated(TrainConfig, {"mask_history": False, **cfg.cf.train}, "cf.train", path)
    if cfg.index is not None:
        if cfg.index.method not in INDEX_CONFIGS:
            raise DataError(path, "index.method",
                            f"unknown indexer {cfg.index.method!r}; expected one of: {_listed(INDEX_CONFIGS)}")
        _validated(INDEX_CONFIGS[cfg.index.method], cfg.index.config, "index.config", path)


def _validated(model: type[BaseModel], values: dict, prefix: str, path: str | Path | None,
               renamed: dict[str, str] | None = None) -> BaseModel:
    """``model`` validated from ``values``, or a DataError at the first error: its key path under
    ``prefix`` (``renamed`` maps some to where they are set), and for an unknown key the keys allowed."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join([prefix, *map(str, err["loc"])] if prefix else map(str, err["loc"]))
        where = (renamed or {}).get(where, where)
        owner = _model_at(model, err["loc"][:-1])
        if err["type"] == "extra_forbidden" and owner is not None:
            what = f"unknown key; expected one of: {_listed(owner.model_fields)}"
        elif err["type"] == "missing":
            what = err["msg"]
        else:
            what = f"{err['msg']} (input {err.get('input')!r})"
        raise DataError(path, where, what) from None


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The settings model at key path ``loc`` under ``model`` (through optional sections), or None."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        kinds = (field.annotation, *get_args(field.annotation))
        model = next((t for t in kinds if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if model is None:
            return None
    return model


def _listed(names) -> str:
    return ", ".join(names)
