"""Stages wired together. Each stage is a function from artifact folders to an artifact folder
(see :mod:`genrec.artifacts`); ``run`` executes them in order, skipping up-to-date ones."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from genrec.artifacts import StageResult, config_hash, fingerprint, read_manifest, run_stage
from genrec.config import DecodeSection, EvaluateSection, RunConfig
from genrec.data import synth
from genrec.data.dataset import Dataset
from genrec.data.loaders import load_raw
from genrec.data.preprocess import PrepareConfig, load_dataset, preprocess
from genrec.errors import GenrecError
from genrec.evaluate import Evaluator, resolve_mask_history
from genrec.registry import EMBEDDING_MODELS, SPECS


def stage_synth(out: Path, cfg: synth.SynthConfig, force: bool = False) -> StageResult:
    """Generate the synthetic raw data (CSV) into ``out``."""

    def build(tmp: Path) -> None:
        synth.write(cfg, tmp, overwrite=True)

    return run_stage(out, "synth", {"synth": cfg.model_dump()}, {}, build, force)


def stage_data(
    source: str | Path,
    out: Path,
    prepare: PrepareConfig,
    format: str | None = None,
    options: dict | None = None,
    force: bool = False,
) -> StageResult:
    """Load raw data in any supported format, preprocess and save a prepared dataset."""
    options = options or {}

    def build(tmp: Path) -> dict:
        ds = preprocess(load_raw(source, format, **options), prepare)
        ds.save(tmp)
        return ds.stats()

    config = {"format": format, "options": options, "prepare": prepare.model_dump()}
    return run_stage(out, "data", config, {"source": source}, build, force)


def evaluate_model(model, dataset: Dataset, ev: EvaluateSection, out: Path | None = None) -> dict:
    """Validation and test metrics of a fitted model through the shared evaluator."""
    evaluator = Evaluator(dataset, ks=tuple(ev.ks), mask_history=ev.mask_history, batch_size=ev.batch_size)
    result = {}
    for stage in ("valid", "test"):
        dump = out / f"{stage}_users.parquet" if out is not None else None
        res = evaluator.evaluate(model, stage=stage, dump_path=dump)
        result[stage] = res.to_dict()
    return result


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def item_embedding_matrix(name: str, model) -> np.ndarray:
    """[n_items, dim] float32 item embeddings of a fitted ``EMBEDDING_MODELS[name]`` baseline."""
    if name == "sasrec":
        weights = model.model.item_emb.weight[1:]  # row 0 is padding
        return weights.detach().float().cpu().numpy().astype(np.float32)
    return np.asarray(model.item_embeddings(), dtype=np.float32)


def train_embeddings(
    name: str,
    data_folder: str | Path,
    out_folder: str | Path,
    dim: int = 32,
    seed: int = 0,
    train: dict | None = None,
    config: dict | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = _stderr,
) -> StageResult:
    """The cf stage: train ``name`` (dccf, lightgcn or sasrec) on ``data_folder`` and write its item
    embeddings, the behaviour input of the index stage. The output folder holds ``item_embeddings.npy``
    (float32 [n_items, dim], row i is item_idx i), ``model/`` (loadable with the class's ``load``),
    ``metrics.json`` (validation and test metrics through the shared evaluator), ``train_log.txt``
    and ``train_log.json``. dccf and lightgcn give their final item representations, sasrec (SASRec
    with full cross-entropy) its item embedding table without the padding row.

    ``train`` overrides the model's training defaults (``TrainConfig`` fields, e.g. epochs),
    ``config`` its model settings (``dim`` always comes from ``dim``). ``data_folder`` is a
    prepared dataset (or a raw folder, prepared in memory with the default settings).
    """
    if name not in EMBEDDING_MODELS:
        raise GenrecError(f"unknown embedding model {name!r}; expected one of {', '.join(EMBEDDING_MODELS)}")
    train = dict(train or {})
    model_config = {**(config or {}), "dim": int(dim)}
    stage_config = {"model": name, "dim": int(dim), "seed": int(seed), "train": train, "config": model_config}
    # checkpoints next to the stage folder, keyed by config and data: a killed stage resumes
    out_folder = Path(out_folder)
    ckpt = out_folder.parent / f".ckpt-{out_folder.name}-{config_hash(stage_config, {'data': fingerprint(data_folder)})[:12]}"

    def build(tmp: Path) -> dict:
        cls = SPECS[EMBEDDING_MODELS[name]].load()
        ds = load_dataset(data_folder)
        lines: list[str] = []

        def keep(line: str) -> None:
            lines.append(line)
            if log is not None:
                log(line)

        # early stopping of a behaviour model reads unmasked validation ranking unless told otherwise
        # (the embeddings feed the index, they are not a recommendation we report; every index so
        # far was built that way, so the stage's result does not change with the evaluator's default)
        model = cls(model_config, {"mask_history": False, **train})
        fit_info = model.fit(ds, seed=seed, log=keep, checkpoint_dir=ckpt)
        emb = item_embedding_matrix(name, model)
        if emb.shape != (ds.n_items, dim):
            raise RuntimeError(f"{name}: item embeddings have shape {emb.shape}, expected {(ds.n_items, dim)}")
        np.save(tmp / "item_embeddings.npy", emb)
        model.save(tmp / "model")
        evaluator = Evaluator(ds, progress=False)
        results = {stage: evaluator.evaluate(model, stage=stage).to_dict() for stage in ("valid", "test")}
        metrics = {**results, "fit": fit_info}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (tmp / "train_log.txt").write_text("".join(f"{line}\n" for line in lines))
        (tmp / "train_log.json").write_text(json.dumps(model.log, indent=2))
        return {
            "valid": results["valid"]["metrics"],
            "test": results["test"]["metrics"],
            "fit": fit_info,
            "n_items": ds.n_items,
            "dim": int(dim),
        }

    res = run_stage(out_folder, f"cf:{name}", stage_config, {"data": data_folder}, build, force)
    shutil.rmtree(ckpt, ignore_errors=True)
    return res


def make_baseline(name: str, params: dict | None = None):
    """An unfitted baseline by name, with optional {'config': ..., 'train': ...} settings."""
    if name not in SPECS:
        raise GenrecError(f"unknown baseline {name!r}; expected one of {', '.join(SPECS)}")
    params = params or {}
    unknown = set(params) - {"config", "train"}
    if unknown:
        raise GenrecError(f"baseline {name!r}: unknown settings {sorted(unknown)}; expected 'config' and/or 'train'")
    cls = SPECS[name].load()
    try:
        return cls(params.get("config"), params.get("train")) if params else cls()
    except (ValidationError, ValueError) as e:
        raise GenrecError(f"baseline {name!r}: invalid settings {params}: {str(e).splitlines()[0]}") from None


def stage_baseline(
    name: str,
    data: Path,
    out: Path,
    ev: EvaluateSection,
    seed: int,
    params: dict | None = None,
    force: bool = False,
    inputs: dict[str, Path] | None = None,
) -> StageResult:
    """Fit a classic baseline on the training split and evaluate it.

    Neural models checkpoint next to ``out`` (keyed by config), so a killed stage resumes. ``inputs``:
    artifact folders the baseline reads besides the data (their fingerprints enter the stage's).
    """
    config = {"baseline": name, "params": params or {}, "evaluate": ev.model_dump(), "seed": seed}
    inputs = {"data": data, **(inputs or {})}
    ckpt = out.parent / f".ckpt-{name}-{config_hash(config, {k: fingerprint(v) for k, v in inputs.items()})[:12]}"

    def build(tmp: Path) -> dict:
        ds = Dataset.load(data)
        model = make_baseline(name, params)
        fit_info = model.fit(ds, seed=seed, checkpoint_dir=ckpt)
        model.save(tmp / "model")
        metrics = evaluate_model(model, ds, ev, tmp)
        metrics["fit"] = fit_info
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        return metrics

    res = run_stage(out, f"baseline:{name}", config, inputs, build, force)
    shutil.rmtree(ckpt, ignore_errors=True)
    return res


def run_baselines(cfg: RunConfig, run_dir: Path, force: bool, note: Callable[[str, StageResult], None]) -> None:
    """The baseline stages of ``cfg.baselines``, in order. ``cllm4rec-emb`` without a ``source`` reads the
    run's ``cllm4rec`` baseline (fitted first when the list does not hold it before)."""
    fitted: dict[str, StageResult] = {}

    def baseline(name: str, params: dict | None, inputs: dict | None = None) -> StageResult:
        if name not in fitted:
            fitted[name] = stage_baseline(name, run_dir / "data", run_dir / "baselines" / name, cfg.evaluate, cfg.seed,
                                          params, force, inputs)
            note(f"baseline:{name}", fitted[name])
        return fitted[name]

    for name in cfg.baselines:
        params, inputs = cfg.baseline_params.get(name), None
        if name == "cllm4rec-emb" and not (params or {}).get("config", {}).get("source"):
            source = baseline("cllm4rec", cfg.baseline_params.get("cllm4rec")).path / "model"
            params = {**(params or {}), "config": {**(params or {}).get("config", {}), "source": str(source)}}
            inputs = {"source": source}
        baseline(name, params, inputs)


def stage_distill(corpus: Path, teacher: Path, data: Path, out: Path, cfg, mask_history: bool | str = "auto",
                  force: bool = False) -> StageResult:
    """The teacher's soft targets for the corpus's sequential code targets (see :mod:`genrec.llm.distill`);
    ``teacher`` is a fitted baseline's folder (the baseline stage's ``model``), ``cfg`` a DistillConfig.
    On top because the teacher is any registered baseline; the train stage only reads ``targets.npz``."""
    from genrec.llm.corpus import load_corpus, load_item_tokens
    from genrec.llm.distill import save_targets, soft_targets

    if cfg.teacher not in SPECS:
        raise GenrecError(f"distill.teacher {cfg.teacher!r}: expected one of {', '.join(SPECS)}")
    config = {"teacher": cfg.teacher, "temperature": cfg.temperature, "mask_history": mask_history}

    def build(tmp: Path) -> dict:
        train, _, meta = load_corpus(corpus)
        items = load_item_tokens(corpus)
        if items is None or meta.get("new_token_ids") is None:
            raise GenrecError(f"{corpus}: a corpus without its items' tokens; rebuild it with `genrec tasks build`")
        n_old = int(meta["new_token_ids"][0])
        masked = resolve_mask_history(mask_history, Dataset.load(data))
        model = SPECS[cfg.teacher].load().load(teacher)
        rows, probs = soft_targets(train, items, n_old, int(meta["new_tokens"]), model, cfg.temperature, masked)
        save_targets(tmp, rows, probs)
        return {"targets": int(len(probs)), "tokens_with_targets": int((rows >= 0).sum()), "mask_history": masked}

    return run_stage(out, "distill", config, {"corpus": corpus, "teacher": teacher, "data": data}, build, force)


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
        res = stage_synth(run_dir / "raw", cfg.data.synth, force)
        note("synth", res)
        source, fmt = res.path, "tabular"
    res = stage_data(source, run_dir / "data", cfg.data.prepare, fmt, cfg.data.options, force)
    note("data", res)
    if until in ("index", "tasks", "train"):
        llm_stages(cfg, run_dir, force, note, until, stop_after, progress)
        return done
    run_baselines(cfg, run_dir, force, note)
    llm_stages(cfg, run_dir, force, note, until, stop_after, progress)
    return done


def llm_stages(cfg: RunConfig, run_dir: Path, force: bool, note: Callable[[str, StageResult], None],
               until: str | None = None, stop_after: int | None = None, progress: bool = True) -> None:
    """cf -> text -> index -> tasks -> train, as far as the config has sections (and ``until`` allows)."""
    if cfg.index is None:
        if until is not None:
            raise GenrecError(f"the config has no index section: nothing to build up to {until!r}")
        return
    from genrec.config import CFSection
    from genrec.index.stage import NEEDS_BEHAVIOUR, NEEDS_LLM, stage_index
    from genrec.llm.stages import stage_tasks, stage_text, stage_train

    data = run_dir / "data"
    emb = None
    if cfg.index.method in NEEDS_BEHAVIOUR:
        cf = cfg.cf or CFSection()
        res = train_embeddings(cf.model, data, run_dir / "cf" / cf.model, cf.dim, cfg.seed, cf.train, cf.config, force)
        note(f"cf:{cf.model}", res)
        emb = res.path
    text = None
    if cfg.index.method in NEEDS_LLM or (cfg.train is not None and cfg.train.code_init == "text"):
        res = stage_text(data, run_dir / "text", cfg.backbone, force)
        note("text", res)
        text = res.path
    res = stage_index(cfg.index.method, data, run_dir / "index", emb, cfg.index.config,
                      text if cfg.index.method in NEEDS_LLM else None, cfg.seed, force=force)
    note(f"index:{cfg.index.method}", res)
    if until == "index" or cfg.tasks is None:
        if until in ("tasks", "train"):
            raise GenrecError("the config has no tasks section")
        return
    res = stage_tasks(data, run_dir / "index", run_dir / "tasks", cfg.tasks, cfg.backbone, force=force)
    note("tasks", res)
    if until == "tasks" or cfg.train is None:
        if until == "train":
            raise GenrecError("the config has no train section")
        return
    distill = None
    if cfg.train.distill is not None:  # the teacher: a baseline fitted on this run's training split
        teacher = cfg.train.distill.teacher
        res = stage_baseline(teacher, data, run_dir / "baselines" / teacher, cfg.evaluate, cfg.seed,
                             cfg.baseline_params.get(teacher), force)
        note(f"baseline:{teacher}", res)
        distill = run_dir / "distill"
        res = stage_distill(run_dir / "tasks", res.path / "model", data, distill, cfg.train.distill,
                            cfg.evaluate.mask_history, force)
        note("distill", res)
    select = ranking_selector(run_dir, cfg) if cfg.train.select_users else None
    res = stage_train(run_dir / "tasks", run_dir / "model", cfg.train, force, stop_after, progress, select, distill, text)
    if res is None:
        return
    note("train", res)
    if until == "train":
        return
    if cfg.decode is not None:
        note("evaluate", stage_evaluate(run_dir / "model", run_dir / "index", data, run_dir / "evaluate", cfg.decode,
                                        cfg.evaluate, cfg.seed, force=force, progress=progress))
    if cfg.cache is not None:
        note("cache", stage_cache(run_dir, cfg, progress))


def validation_sample(dataset: Dataset, ev: EvaluateSection, seed: int, n: int) -> tuple[Evaluator, np.ndarray]:
    """What choices are made on: the run's evaluator (its masking, NDCG@10 always among the
    cut-offs) and a seeded sample of ``n`` users with a validation target (all when fewer), sorted."""
    evaluator = Evaluator(dataset, ks=tuple(sorted({*ev.ks, 10})), mask_history=ev.mask_history, progress=False)
    users = np.flatnonzero(evaluator.split("valid").targets >= 0)
    if n < len(users):
        users = np.sort(np.random.default_rng([seed, 1]).choice(users, size=n, replace=False))
    return evaluator, users


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


def pick_pop_alpha(rec, ds: Dataset, dec: DecodeSection, ev: EvaluateSection, seed: int) -> tuple[float, dict]:
    """The decode section's popularity adjustment: its only value, or the one of several with the
    best NDCG@10 on the seeded validation sample (validation split only); (alpha, metrics by alpha)."""
    alphas = dec.pop_alpha
    if len(alphas) == 1:
        return float(alphas[0]), {}
    evaluator, users = validation_sample(ds, ev, seed, dec.select_users)
    on_valid = {}
    for a in alphas:
        rec.pop_alpha = float(a)
        m = evaluator.evaluate(rec, stage="valid", users=users).metrics
        on_valid[str(a)] = {k: round(float(v), 5) for k, v in m.items() if k in ("HR@10", "NDCG@10", "coverage@10")}
    best = max(alphas, key=lambda a: (on_valid[str(a)]["NDCG@10"], -a))
    return float(best), on_valid


def evaluate_decoding(model: Path, index: Path, data: Path, dec: DecodeSection, ev: EvaluateSection, seed: int = 0,
                      split: str = "test", progress: bool = True, dump: Path | None = None,
                      resume_dir: Path | None = None, key: dict | None = None) -> dict | None:
    """Metrics of a fine-tuned model on ``split``: constrained beam search through the shared evaluator,
    on a seeded sample of ``dec.users`` users (all by default), with the popularity adjustment
    :func:`pick_pop_alpha` picks. The evaluate stage's work, also what ``genrec evaluate`` without
    ``--out`` runs. ``dump``, ``resume_dir`` and ``key``: see :func:`evaluate_generative`. Under a
    multi-process launch the ranks share the users and all but rank 0 return None."""
    from genrec.decode.recommender import GenerativeRecommender, evaluate_generative

    ds = Dataset.load(data)
    rec = GenerativeRecommender.load(model, index, beams=dec.beams, batch_users=dec.batch_users,
                                     popularity=ds.item_popularity())
    users = None
    if dec.users is not None:
        users = np.sort(np.random.default_rng(seed).choice(ds.n_users, size=min(dec.users, ds.n_users), replace=False))
    evaluator = Evaluator(ds, ks=tuple(ev.ks), mask_history=ev.mask_history, progress=progress)
    rec.exclude_history = evaluator.mask_history  # masked history items take no beam slot
    rec.pop_alpha, on_valid = pick_pop_alpha(rec, ds, dec, ev, seed)
    res = evaluate_generative(rec, evaluator, split, users, dump, resume_dir=resume_dir, key=key)
    if res is None:
        return None
    return {split: res.to_dict(), "beams": dec.beams, "users_sampled": dec.users, "mask_history": evaluator.mask_history,
            "pop_alpha": rec.pop_alpha, "pop_alpha_valid": on_valid}


def stage_evaluate(model: Path, index: Path, data: Path, out: Path, dec: DecodeSection, ev: EvaluateSection,
                   seed: int = 0, split: str = "test", force: bool = False, progress: bool = True) -> StageResult | None:
    """The evaluate stage: :func:`evaluate_decoding` into ``out`` (``metrics.json`` and
    ``{split}_users.parquet``). The lists decoded so far are kept beside ``out``, so a killed
    evaluation resumes. Under a multi-process launch every rank decodes its share and rank 0 writes
    the artifact; the others return None."""
    from genrec.decode.recommender import partial_seconds

    config = {"decode": dec.model_dump(), "evaluate": ev.model_dump(), "seed": seed}
    if split != "test":  # the pipeline's split stays out, so its artifacts stay up to date
        config["split"] = split
    inputs = {"model": model, "index": index, "data": data}
    # config holds the user sample; "decoder": 2 since beam search leaves masked history items out as it goes
    # (lists kept by the decoder before it are not these)
    key = {"config": config, "inputs": {k: fingerprint(v) for k, v in inputs.items()}, "decoder": 2}
    old = read_manifest(out)
    if not force and old is not None and old.get("fingerprint") == config_hash(config, key["inputs"]):
        return StageResult(out, old, skipped=True)
    partial = out.parent / f".{out.name}-partial"  # the lists decoded so far: a killed evaluation resumes
    dump = partial / f"{split}_users.parquet"
    start, spent = time.time(), partial_seconds(partial, key, split, max(ev.ks))
    metrics = evaluate_decoding(model, index, data, dec, ev, seed, split, progress, dump, partial, key)
    if metrics is None:  # not rank 0 of a launch
        return None

    def build(tmp: Path) -> dict:
        shutil.copy2(dump, tmp / dump.name)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        return metrics

    res = run_stage(out, "evaluate", config, inputs, build, force=True, spent=spent + time.time() - start)
    shutil.rmtree(partial, ignore_errors=True)
    return res


def stage_cache(run_dir: Path, cfg: RunConfig, progress: bool = True) -> StageResult:
    """Every user's top-K into the cache store (itself resumable and versioned; see genrec.serve.cache)."""
    from genrec.serve.cache import build_cache
    from genrec.serve.catalog import Catalog
    from genrec.serve.store import open_store

    c = cfg.cache
    alpha = c.pop_alpha
    if alpha == "evaluate":
        picked = run_dir / "evaluate" / "metrics.json"
        alpha = json.loads(picked.read_text()).get("pop_alpha", 0.0) if cfg.decode is not None and picked.is_file() else 0.0
    store = open_store(c.store or run_dir / "cache.db")
    summary = build_cache(store, Catalog(run_dir / "index", run_dir / "data", store), run_dir / "model", k=c.k,
                          beams=c.beams, batch_users=c.batch_users, chunk_users=c.chunk_users, progress=progress,
                          echo=lambda m: None, pop_alpha=float(alpha))
    manifest = {"stage": "cache", "wall_seconds": summary["seconds"], "metrics": summary, "store": store.url}
    return StageResult(Path(store.url), manifest, skipped=summary["skipped"])
