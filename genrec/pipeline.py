"""The stages wired together. Each stage is a function from artifact folders to an artifact folder,
defined in :mod:`genrec.stages`; ``run`` executes them in order, skipping up-to-date ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from genrec.artifacts import StageResult
from genrec.config import CFSection, RunConfig
from genrec.data.dataset import Dataset
from genrec.errors import GenrecError
from genrec.registry import READS_ITEM_TEXT
from genrec.stages import (
    stage_baseline,
    stage_cache,
    stage_cf,
    stage_data,
    stage_distill,
    stage_evaluate,
    stage_index,
    stage_synth,
    stage_tags,
    stage_tasks,
    stage_text,
    stage_train,
    validation_sample,
)


def item_text_data(cfg: RunConfig, run_dir: Path) -> Path:
    """The prepared dataset the stages that read item text read: the tags stage's (``data-tags``)
    when the config has a ``tags`` section, else the data stage's."""
    return run_dir / ("data-tags" if cfg.tags is not None else "data")


def run_baselines(cfg: RunConfig, run_dir: Path, force: bool, note: Callable[[str, StageResult], None]) -> None:
    """The baseline stages of ``cfg.baselines``, in order. ``cllm4rec-emb`` without a ``source`` reads the
    run's ``cllm4rec`` baseline (fitted first when the list does not hold it before). The baselines that
    read item text (``READS_ITEM_TEXT``) read :func:`item_text_data`."""
    fitted: dict[str, StageResult] = {}

    def baseline(name: str, params: dict | None, inputs: dict | None = None) -> StageResult:
        if name not in fitted:
            data = item_text_data(cfg, run_dir) if name in READS_ITEM_TEXT else run_dir / "data"
            fitted[name] = stage_baseline(data, run_dir / "baselines" / name, name, cfg.evaluate,
                                          seed=cfg.seed, params=params, inputs=inputs, force=force)
            note(f"baseline:{name}", fitted[name])
        return fitted[name]

    for name in cfg.baselines:
        params, inputs = cfg.baseline_params.get(name), None
        if name == "cllm4rec-emb" and not (params or {}).get("config", {}).get("source"):
            source = baseline("cllm4rec", cfg.baseline_params.get("cllm4rec")).path / "model"
            params = {**(params or {}), "config": {**(params or {}).get("config", {}), "source": str(source)}}
            inputs = {"source": source}
        baseline(name, params, inputs)


def run(cfg: RunConfig, force: bool = False, echo: Callable[[str], None] = print, until: str | None = None,
        stop_after: int | None = None, progress: bool = True) -> dict:
    """Run every configured stage in order (up to the stage ``until``); return {stage: manifest}.

    ``stop_after`` bounds the fine-tuning steps of this call (a resumable session budget).
    """
    run_dir = cfg.resolved_run_dir()
    done: dict[str, dict] = {}

    def note(label: str, res: StageResult) -> None:
        state = "up to date, skipped" if res.skipped else f"done in {res.manifest['wall_seconds']:.1f}s"
        echo(f"[{label}] {state} -> {res.manifest.get('store', res.path)}")
        done[label] = res.manifest

    source: str | Path = cfg.data.source
    fmt = cfg.data.format
    if cfg.data.source == "synth":
        res = stage_synth(run_dir / "raw", cfg.data.synth, force=force)
        note("synth", res)
        source, fmt = res.path, "tabular"
    res = stage_data(source, run_dir / "data", cfg.data.prepare, format=fmt, options=cfg.data.options, force=force)
    note("data", res)
    if cfg.tags is not None:
        note("tags", stage_tags(res.path, item_text_data(cfg, run_dir), cfg.tags, force=force))
    if until in ("index", "tasks", "train"):
        llm_stages(cfg, run_dir, force, note, until, stop_after, progress)
        return done
    run_baselines(cfg, run_dir, force, note)
    llm_stages(cfg, run_dir, force, note, until, stop_after, progress)
    return done


def llm_stages(cfg: RunConfig, run_dir: Path, force: bool, note: Callable[[str, StageResult], None],
               until: str | None = None, stop_after: int | None = None, progress: bool = True) -> None:
    """cf -> text -> index -> tasks -> train, as far as the config has sections (and ``until`` allows).
    The text, index and tasks stages read the item text of :func:`item_text_data`; the others, which
    read interactions only, the data stage's folder."""
    if cfg.index is None:
        if until is not None:
            raise GenrecError(f"the config has no index section: nothing to build up to {until!r}")
        return
    from genrec.index.stage import NEEDS_LLM, needs_behaviour

    data, text_data = run_dir / "data", item_text_data(cfg, run_dir)
    emb = None
    if needs_behaviour(cfg.index.method, cfg.index.config):
        cf = cfg.cf or CFSection()
        res = stage_cf(data, run_dir / "cf" / cf.model, cf, seed=cfg.seed, force=force)
        note(f"cf:{cf.model}", res)
        emb = res.path
    text = index_text = None
    layers = cfg.index.text_layers if cfg.index.method in NEEDS_LLM else None
    if (cfg.index.method in NEEDS_LLM and not layers) or (cfg.train is not None and cfg.train.code_init == "text"):
        res = stage_text(text_data, run_dir / "text", cfg.backbone, force=force)  # the mean input-layer embedding
        note("text", res)
        text = index_text = res.path
    if layers:  # the index's text vectors from deeper in the backbone, a folder of their own
        res = stage_text(text_data, run_dir / f"text-l{layers}", cfg.backbone, layers=layers, force=force)
        note(f"text:l{layers}", res)
        index_text = res.path
    res = stage_index(text_data, run_dir / "index", cfg.index, embeddings=emb,
                      text=index_text if cfg.index.method in NEEDS_LLM else None, seed=cfg.seed, force=force)
    note(f"index:{cfg.index.method}", res)
    if until == "index" or cfg.tasks is None:
        if until in ("tasks", "train"):
            raise GenrecError("the config has no tasks section")
        return
    res = stage_tasks(text_data, run_dir / "index", run_dir / "tasks", cfg.tasks, backbone=cfg.backbone, force=force)
    note("tasks", res)
    if until == "tasks" or cfg.train is None:
        if until == "train":
            raise GenrecError("the config has no train section")
        return
    distill = None
    if cfg.train.distill is not None:  # the teacher: a baseline fitted on this run's training split
        teacher = cfg.train.distill.teacher
        res = stage_baseline(data, run_dir / "baselines" / teacher, teacher, cfg.evaluate, seed=cfg.seed,
                             params=cfg.baseline_params.get(teacher), force=force)
        note(f"baseline:{teacher}", res)
        distill = run_dir / "distill"
        res = stage_distill(run_dir / "tasks", res.path / "model", data, distill, cfg.train.distill,
                            mask_history=cfg.evaluate.mask_history, force=force)
        note("distill", res)
    select = ranking_selector(run_dir, cfg) if cfg.train.select_users else None
    res = stage_train(run_dir / "tasks", run_dir / "model", cfg.train, distill=distill, text=text, force=force,
                      stop_after=stop_after, progress=progress, select=select)
    if res is None:
        return
    note("train", res)
    if until == "train":
        return
    if cfg.decode is not None:
        note("evaluate", stage_evaluate(run_dir / "model", run_dir / "index", data, run_dir / "evaluate", cfg.decode,
                                        cfg.evaluate, seed=cfg.seed, force=force, progress=progress))
    if cfg.cache is not None:
        note("cache", stage_cache(run_dir / "model", run_dir / "index", data, cfg.cache.store or run_dir / "cache.db",
                                  cfg.cache, evaluate=run_dir / "evaluate" if cfg.decode is not None else None,
                                  progress=progress))


def ranking_selector(run_dir: Path, cfg: RunConfig) -> Callable:
    """Model selection for the train stage: ``select(lm, tokenizer)`` decodes a fixed seeded sample
    of ``train.select_users`` validation users with constrained beam search and returns their
    metrics through the shared evaluator (the run's ``evaluate`` settings). Reads the validation
    split only."""
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.index.base import ItemIndex
    from genrec.llm.corpus import load_meta

    t = cfg.train
    ds = Dataset.load(run_dir / "data")
    index = ItemIndex.load(run_dir / "index")
    meta = load_meta(run_dir / "tasks")
    ev, users = validation_sample(ds, cfg.evaluate, cfg.seed, t.select_users)
    batch = cfg.decode.batch_users if cfg.decode is not None else 8

    def select(lm, tokenizer) -> dict:
        rec = GenerativeRecommender(lm, tokenizer, index, beams=t.select_beams, batch_users=batch,
                                    layout=meta.get("layout", "per_prefix"), prompt=meta.get("prompt", "chat"),
                                    exclude_history=ev.mask_history)
        return ev.evaluate(rec, stage="valid", users=users).metrics

    return select
