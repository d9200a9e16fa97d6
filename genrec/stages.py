"""Every stage of a run, in one place: data -> (baselines, cf) -> text -> index -> tasks -> (distill) ->
train -> evaluate -> cache.

Each stage is a function from artifact folders to an artifact folder (see :mod:`genrec.artifacts`),
with one signature style: the input folders first, then ``out``, then the stage's typed config, then
keyword-only ``force`` and the rest. Each returns a :class:`~genrec.artifacts.StageResult` (the train
stage None when stopped by its step budget, the evaluate and train stages a rank's result under a
multi-process launch). The module sits on top of the layers (it may import every one of them);
:func:`genrec.pipeline.run` wires the stages together and every ``genrec`` command that builds an
artifact calls one of them. What a stage's fingerprint is made of (its config dict and its inputs)
stays as it was when the stages lived in the layers, so existing run folders stay up to date."""

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
from genrec.config import CacheSection, CFSection, DecodeSection, EvaluateSection, IndexSection
from genrec.data import synth
from genrec.data.dataset import Dataset
from genrec.data.loaders import load_raw
from genrec.data.preprocess import PrepareConfig, load_dataset, preprocess
from genrec.errors import DataError, GenrecError
from genrec.evaluate import Evaluator, resolve_mask_history
from genrec.registry import EMBEDDING_MODELS, SPECS

__all__ = [
    "evaluate_decoding",
    "evaluate_model",
    "item_embedding_matrix",
    "make_baseline",
    "pick_pop_alpha",
    "stage_baseline",
    "stage_cache",
    "stage_cf",
    "stage_data",
    "stage_distill",
    "stage_evaluate",
    "stage_index",
    "stage_synth",
    "stage_tags",
    "stage_tasks",
    "stage_text",
    "stage_train",
    "validation_sample",
]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


# -- data -------------------------------------------------------------------------------------------
def stage_synth(out: Path, cfg: synth.SynthConfig, *, force: bool = False) -> StageResult:
    """Generate the synthetic raw data (CSV) into ``out``."""

    def build(tmp: Path) -> None:
        synth.write(cfg, tmp, overwrite=True)

    return run_stage(out, "synth", {"synth": cfg.model_dump()}, {}, build, force)


def stage_data(
    source: str | Path,
    out: Path,
    prepare: PrepareConfig,
    *,
    format: str | None = None,
    options: dict | None = None,
    force: bool = False,
) -> StageResult:
    """Load raw data in any supported format (``source``: a folder or file), preprocess it with
    ``prepare`` and save a prepared dataset into ``out``."""
    options = options or {}

    def build(tmp: Path) -> dict:
        ds = preprocess(load_raw(source, format, **options), prepare)
        ds.save(tmp)
        return ds.stats()

    config = {"format": format, "options": options, "prepare": prepare.model_dump()}
    return run_stage(out, "data", config, {"source": source}, build, force)


def stage_tags(data: Path, out: Path, cfg, *, force: bool = False, generator=None) -> StageResult:
    """The prepared dataset ``data`` with LLM-written keyword tags in the descriptions of its items whose
    description is short (``cfg``: a :class:`genrec.llm.config.TagsConfig`; see :mod:`genrec.llm.tags`):
    ``out`` is a prepared dataset like ``data`` (users and interactions as they were) whose tagged items'
    description is ``"<description> Tags: <tags>"``, plus ``tags.json`` ({item_id: tags}). The stages
    that read item text read it in place of ``data``. Generations are cached by content hash outside
    the artifact, so a killed stage resumes and a rebuild generates only for new or changed text.
    The batch size, device and cache folder stay out of the config: they do not change the tags.
    ``generator``: a callable in place of the backbone (tests)."""
    from genrec.llm.tags import (
        CLEAN_VERSION,
        PROMPT_VERSION,
        TAGS_FILE,
        item_tags,
        with_tags,
        write_tags_file,
    )

    config = {**cfg.model_dump(exclude={"batch_size", "device", "cache"}), "prompt": PROMPT_VERSION, "clean": CLEAN_VERSION}

    def build(tmp: Path) -> dict:
        ds = Dataset.load(data)
        tags, stats = item_tags(ds.items, cfg, generator)
        Dataset(with_tags(ds.items, tags), ds.user_ids, ds.interactions, {**ds.meta, "tags": config}).save(tmp)
        write_tags_file(tmp / TAGS_FILE, ds.items, tags)
        return stats

    return run_stage(out, "tags", config, {"data": data}, build, force)


# -- models: baselines and cf -----------------------------------------------------------------------
def evaluate_model(model, dataset: Dataset, ev: EvaluateSection, out: Path | None = None) -> dict:
    """Validation and test metrics of a fitted model through the shared evaluator (with ``out``, the
    per-user rows go to ``out/{valid,test}_users.parquet``)."""
    evaluator = Evaluator(dataset, ks=tuple(ev.ks), mask_history=ev.mask_history, batch_size=ev.batch_size)
    result = {}
    for stage in ("valid", "test"):
        dump = out / f"{stage}_users.parquet" if out is not None else None
        res = evaluator.evaluate(model, stage=stage, dump_path=dump)
        result[stage] = res.to_dict()
    return result


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
    data: Path,
    out: Path,
    name: str,
    ev: EvaluateSection,
    *,
    seed: int = 0,
    params: dict | None = None,
    inputs: dict[str, Path] | None = None,
    force: bool = False,
) -> StageResult:
    """Fit the classic baseline ``name`` (``params``: its {'config', 'train'} settings) on the training
    split of ``data`` and evaluate it: ``out`` holds ``model/``, ``metrics.json`` (valid, test, fit)
    and ``{valid,test}_users.parquet``.

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


def item_embedding_matrix(name: str, model) -> np.ndarray:
    """[n_items, dim] float32 item embeddings of a fitted ``EMBEDDING_MODELS[name]`` baseline."""
    if name == "sasrec":
        weights = model.model.item_emb.weight[1:]  # row 0 is padding
        return weights.detach().float().cpu().numpy().astype(np.float32)
    return np.asarray(model.item_embeddings(), dtype=np.float32)


def stage_cf(
    data: str | Path,
    out: str | Path,
    cfg: CFSection,
    *,
    seed: int = 0,
    force: bool = False,
    log: Callable[[str], None] | None = _stderr,
) -> StageResult:
    """The cf stage: train ``cfg.model`` (dccf, lightgcn or sasrec) on ``data`` and write its item
    embeddings, the behaviour input of the index stage. The output folder holds ``item_embeddings.npy``
    (float32 [n_items, dim], row i is item_idx i), ``model/`` (loadable with the class's ``load``),
    ``metrics.json`` (validation and test metrics through the shared evaluator), ``train_log.txt``
    and ``train_log.json``. dccf and lightgcn give their final item representations, sasrec (SASRec
    with full cross-entropy) its item embedding table without the padding row.

    ``cfg.train`` overrides the model's training defaults (``TrainConfig`` fields, e.g. epochs),
    ``cfg.config`` its model settings (``dim`` always comes from ``cfg.dim``). ``data`` is a
    prepared dataset (or a raw folder, prepared in memory with the default settings).
    """
    name, dim = cfg.model, int(cfg.dim)
    if name not in EMBEDDING_MODELS:
        raise GenrecError(f"unknown embedding model {name!r}; expected one of {', '.join(EMBEDDING_MODELS)}")
    train = dict(cfg.train or {})
    model_config = {**(cfg.config or {}), "dim": dim}
    stage_config = {"model": name, "dim": dim, "seed": int(seed), "train": train, "config": model_config}
    # checkpoints next to the stage folder, keyed by config and data: a killed stage resumes
    out = Path(out)
    ckpt = out.parent / f".ckpt-{out.name}-{config_hash(stage_config, {'data': fingerprint(data)})[:12]}"

    def build(tmp: Path) -> dict:
        cls = SPECS[EMBEDDING_MODELS[name]].load()
        ds = load_dataset(data)
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
            "dim": dim,
        }

    res = run_stage(out, f"cf:{name}", stage_config, {"data": data}, build, force)
    shutil.rmtree(ckpt, ignore_errors=True)
    return res


# -- text and index ---------------------------------------------------------------------------------
def stage_text(data: Path, out: Path, backbone: str = "default", *, layers: int | None = None,
               force: bool = False) -> StageResult:
    """The items' LLM embeddings (:class:`genrec.llm.backbone.TextEmbedder`: the mean input-layer
    embedding, or with ``layers`` the pooled hidden state after that many decoder layers) as an
    artifact the index stage reads: ``item_embeddings.npy`` (float32 [n_items, hidden], row i is
    item_idx i), left out when no item has a title (the indexers then go without text). A stage of
    its own because the index sits below the LLM; its config names the backbone as given (and the
    depth when set), which the index stage copies into its own config."""
    from genrec.index.stage import EMBEDDINGS_FILE

    def build(tmp: Path) -> dict:
        ds = Dataset.load(data)
        if not (ds.items["title"].str.len() > 0).any():
            return {"n_items": ds.n_items, "dim": None}
        from genrec.llm.backbone import item_llm_embeddings

        emb = item_llm_embeddings(ds.items, backbone, layers)
        np.save(tmp / EMBEDDINGS_FILE, emb)
        return {"n_items": ds.n_items, "dim": int(emb.shape[1])}

    config: dict = {"backbone": backbone}
    if layers:  # only when set: the text folders built before the option stay up to date
        config["layers"] = int(layers)
    return run_stage(out, "text", config, {"data": data}, build, force)


def stage_index(
    data: Path,
    out: Path,
    cfg: IndexSection,
    *,
    embeddings: Path | None = None,
    text: Path | None = None,
    seed: int = 0,
    force: bool = False,
) -> StageResult:
    """Build an item index with ``cfg.method`` (settings ``cfg.config``) and write it, with its quality
    statistics, to ``out``.

    ``embeddings``: behaviour embeddings (a cf stage's folder or a .npy file), for the indexers that
    read them (``NEEDS_BEHAVIOUR``). ``text``: the text stage's folder for the indexers that read the
    items' LLM embeddings (``NEEDS_LLM``). It is checked against ``data``, and its backbone goes into
    this stage's config in its place: the embeddings are a function of the two, and the fingerprint
    stays the one of indexes built before the text stage existed (and of everything trained on them)."""
    from genrec.index.base import with_id_level
    from genrec.index.inputs import IndexInputs
    from genrec.index.quality import index_quality
    from genrec.index.registry import make_indexer
    from genrec.index.stage import EMBEDDINGS_FILE, NEEDS_LLM, check_request, load_embeddings, text_encoder

    method, config = cfg.method, cfg.config
    check_request(method, data, embeddings, config)
    backbone, text_layers = text_encoder(text, data) if method in NEEDS_LLM else (None, None)
    if text_layers != (cfg.text_layers if method in NEEDS_LLM else None):
        raise GenrecError(f"the index asks for text_layers {cfg.text_layers}, the text stage {text} has {text_layers}")
    stage_config = {"method": method, "config": config or {}, "backbone": backbone, "seed": seed}
    if text_layers:  # only when set, as id_level
        stage_config["text_layers"] = text_layers
    if cfg.id_level:  # only when set: the fingerprints of indexes built before the option stay
        stage_config["id_level"] = True
    inputs: dict[str, Path] = {"data": data}
    if embeddings is not None:
        inputs["embeddings"] = embeddings

    def build(tmp: Path) -> dict:
        ds = Dataset.load(data)
        behaviour = load_embeddings(embeddings, ds.n_items) if embeddings is not None else None
        llm = None
        if backbone is not None and (text / EMBEDDINGS_FILE).is_file():
            llm = load_embeddings(text, ds.n_items)
        indexer = make_indexer(method, {**(config or {})})
        t0 = time.time()
        index = indexer.build(IndexInputs(ds, behaviour, llm, seed))
        if cfg.id_level:
            index = with_id_level(index)
        index.stats["build_seconds"] = round(time.time() - t0, 3)
        index.stats.update(index_quality(index, ds, seed))
        index.save(tmp)
        indexer.save(tmp / "indexer")
        (tmp / "item_ids.json").write_text(json.dumps(ds.items["item_id"].astype(str).tolist()))
        return index.stats

    return run_stage(out, f"index:{method}", stage_config, inputs, build, force)


# -- llm: tasks, distill, train ---------------------------------------------------------------------
def stage_tasks(
    data: Path, index: Path, out: Path, cfg, *, backbone: str = "default", valid_users: int = 1000,
    force: bool = False,
) -> StageResult:
    """Build the alignment-task corpus of ``data`` with ``index``'s codes, tokenized for ``backbone``
    (``cfg``: a :class:`genrec.llm.tasks.TaskConfig`)."""
    from genrec.index.base import ItemIndex
    from genrec.llm.backbone import add_tokens, load_tokenizer
    from genrec.llm.corpus import build_corpus, save_corpus
    from genrec.llm.fingerprints import per_user_summary, task_fingerprint

    config = {"tasks": task_fingerprint(cfg), "backbone": backbone, "valid_users": valid_users}

    def build(tmp: Path) -> dict:
        ds = Dataset.load(data)
        idx = ItemIndex.load(index)
        tok = load_tokenizer(backbone)
        add_tokens(tok, None, idx.new_tokens)
        train, valid, info = build_corpus(ds, idx, tok, cfg, valid_users)
        info.update(backbone=backbone, index_method=idx.method, new_token_list=list(idx.new_tokens))
        save_corpus(tmp, train, valid, info)
        return {"train": train.summary(), "valid": valid.summary(), "dropped_too_long": info["dropped_too_long"],
                "per_user": per_user_summary(train)}

    return run_stage(out, "tasks", config, {"data": data, "index": index}, build, force)


def stage_distill(corpus: Path, teacher: Path, data: Path, out: Path, cfg, *, mask_history: bool | str = "auto",
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


def stage_train(
    corpus: Path, out: Path, cfg, *, distill: Path | None = None, text: Path | None = None, force: bool = False,
    stop_after: int | None = None, progress: bool = True, select=None,
) -> StageResult | None:
    """Fine-tune the corpus's backbone on it (``cfg``: a :class:`genrec.llm.config.LLMTrainConfig`;
    ``distill``: the distill stage's folder when ``cfg.distill`` is set; ``text``: the text stage's
    folder when ``cfg.code_init`` is text; ``select``: model selection by ranking, see
    :func:`genrec.llm.train.train`). Checkpoints live next to ``out`` (keyed by corpus and config), so
    rerunning a killed or budgeted run resumes it. Under ``accelerate launch`` every rank trains
    and rank 0 writes the artifact. Returns None when stopped by ``stop_after`` steps."""
    from genrec.llm.corpus import load_corpus, load_item_tokens
    from genrec.llm.fingerprints import train_fingerprint

    config, inputs, fp = train_fingerprint(corpus, cfg, distill, text)
    old = read_manifest(out)
    if not force and old is not None and old.get("fingerprint") == fp:
        return StageResult(out, old, skipped=True)
    ckpt = out.parent / f".ckpt-{out.name}-{fp[:12]}"
    train_c, valid_c, meta = load_corpus(corpus)
    tokens = meta.get("new_token_list")
    if tokens is None:
        raise GenrecError(f"{corpus}: corpus without its token list; rebuild it with `genrec tasks build`")
    backbone = cfg.backbone or meta.get("backbone") or "default"

    from genrec.llm.train import train

    soft = None
    if cfg.distill is not None:
        from genrec.llm.distill import load_targets

        soft = load_targets(distill, train_c, len(tokens))
    vectors = None
    if cfg.code_init == "text":
        from genrec.index.stage import EMBEDDINGS_FILE

        vectors_file = text / EMBEDDINGS_FILE
        if not vectors_file.is_file():
            raise GenrecError(f"{vectors_file}: missing; train.code_init: text needs item text (this dataset has none)")
        vectors = np.load(vectors_file, allow_pickle=False)
    result = ckpt / "result"
    metrics = train(cfg, backbone, train_c, valid_c, tokens, result, ckpt, meta.get("vocab_size"), progress, stop_after=stop_after,
                    layout=meta.get("layout", "per_prefix"), prompt=meta.get("prompt", "chat"), select=select,
                    item_tokens=load_item_tokens(corpus) if cfg.softmax == "trie" or vectors is not None else None, soft=soft,
                    item_vectors=vectors)
    if metrics.get("stopped"):
        return None
    from genrec.device import launch_rank

    if launch_rank()[0] != 0:
        return StageResult(out, {"metrics": metrics}, skipped=False)

    def build(tmp: Path) -> dict:
        for f in result.iterdir():
            shutil.copy2(f, tmp / f.name)
        shutil.copy2(corpus / "meta.json", tmp / "corpus_meta.json")
        return metrics

    res = run_stage(out, "train", config, inputs, build, force=True, spent=metrics.get("train_seconds", 0.0))
    shutil.rmtree(ckpt, ignore_errors=True)
    return res


# -- decode: evaluate -------------------------------------------------------------------------------
def validation_sample(dataset: Dataset, ev: EvaluateSection, seed: int, n: int) -> tuple[Evaluator, np.ndarray]:
    """What choices are made on: the run's evaluator (its masking, NDCG@10 always among the
    cut-offs) and a seeded sample of ``n`` users with a validation target (all when fewer), sorted."""
    evaluator = Evaluator(dataset, ks=tuple(sorted({*ev.ks, 10})), mask_history=ev.mask_history, progress=False)
    users = np.flatnonzero(evaluator.split("valid").targets >= 0)
    if n < len(users):
        users = np.sort(np.random.default_rng([seed, 1]).choice(users, size=n, replace=False))
    return evaluator, users


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
                      resume_dir: Path | None = None, key: dict | None = None, precision: str | None = None) -> dict | None:
    """Metrics of a fine-tuned model on ``split``: constrained beam search through the shared evaluator,
    on a seeded sample of ``dec.users`` users (all by default), with the popularity adjustment
    :func:`pick_pop_alpha` picks. The evaluate stage's work, also what ``genrec evaluate`` without
    ``--out`` runs. ``dump``, ``resume_dir`` and ``key``: see :func:`evaluate_generative`. ``precision``:
    the decoding arithmetic (:func:`genrec.decode.recommender.inference_precision`; None: the model's
    own). Under a multi-process launch the ranks share the users and all but rank 0 return None."""
    from genrec.decode.recommender import GenerativeRecommender, evaluate_generative

    ds = Dataset.load(data)
    rec = GenerativeRecommender.load(model, index, beams=dec.beams, batch_users=dec.batch_users,
                                     popularity=ds.item_popularity(), precision=precision)
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


def stage_evaluate(model: Path, index: Path, data: Path, out: Path, dec: DecodeSection, ev: EvaluateSection, *,
                   seed: int = 0, split: str = "test", force: bool = False, progress: bool = True,
                   precision: str | None = None) -> StageResult | None:
    """The evaluate stage: :func:`evaluate_decoding` into ``out`` (``metrics.json`` and
    ``{split}_users.parquet``). The lists decoded so far are kept beside ``out``, so a killed
    evaluation resumes. Under a multi-process launch every rank decodes its share and rank 0 writes
    the artifact; the others return None."""
    from genrec.decode.recommender import partial_seconds

    config = {"decode": dec.model_dump(), "evaluate": ev.model_dump(), "seed": seed}
    if split != "test":  # the pipeline's split stays out, so its artifacts stay up to date
        config["split"] = split
    if precision is not None:  # likewise: the model's own precision keeps existing artifacts up to date
        config["precision"] = precision
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
    metrics = evaluate_decoding(model, index, data, dec, ev, seed, split, progress, dump, partial, key, precision)
    if metrics is None:  # not rank 0 of a launch
        return None

    def build(tmp: Path) -> dict:
        shutil.copy2(dump, tmp / dump.name)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        return metrics

    res = run_stage(out, "evaluate", config, inputs, build, force=True, spent=spent + time.time() - start)
    shutil.rmtree(partial, ignore_errors=True)
    return res


# -- serve: cache -----------------------------------------------------------------------------------
def stage_cache(
    model: Path, index: Path, data: Path, out: str | Path, cfg: CacheSection, *, evaluate: Path | None = None,
    users: Path | None = None, progress: bool = True, echo: Callable[[str], None] = lambda m: None,
) -> StageResult:
    """Every user's top-K into the cache store ``out`` (a file path, sqlite:///path or redis://...;
    ``cfg.store`` is not read here). The cache build is resumable and versioned itself (see
    :mod:`genrec.serve.cache`), so there is no ``force``. ``cfg.pop_alpha: evaluate`` takes the evaluate
    stage's pick from ``evaluate/metrics.json`` (0 without it). ``users``: a file of user ids, one a
    line, to cache only those (default all). Under a multi-process launch the ranks share the users."""
    from genrec.serve.cache import build_cache, read_user_list
    from genrec.serve.catalog import Catalog
    from genrec.serve.store import open_store

    alpha = cfg.pop_alpha
    if alpha == "evaluate":
        picked = evaluate / "metrics.json" if evaluate is not None else None
        alpha = json.loads(picked.read_text()).get("pop_alpha", 0.0) if picked is not None and picked.is_file() else 0.0
    store = open_store(out)
    catalog = Catalog(index, data, store)
    chosen = None
    if users is not None:
        chosen = read_user_list(users)
        unknown = [u for u in chosen if catalog.history(u) is None]
        if unknown:
            raise DataError(users, f"user {unknown[0]!r}", f"expected user ids of {data} ({len(unknown)} unknown)")
    summary = build_cache(store, catalog, model, chosen, k=cfg.k, beams=cfg.beams, batch_users=cfg.batch_users,
                          chunk_users=cfg.chunk_users, progress=progress, echo=echo, pop_alpha=float(alpha),
                          precision=cfg.precision)
    manifest = {"stage": "cache", "wall_seconds": summary["seconds"], "metrics": summary, "store": store.url}
    return StageResult(Path(store.url), manifest, skipped=summary["skipped"])
