"""The LLM's stages: dataset -> the items' text embeddings (for the index stage, below); (dataset,
index) -> token corpus -> fine-tuned model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from genrec.artifacts import StageResult, config_hash, fingerprint, read_manifest, run_stage
from genrec.errors import GenrecError
from genrec.llm.config import LLMTrainConfig
from genrec.llm.corpus import build_corpus, load_corpus, load_item_tokens, save_corpus
from genrec.llm.tasks import TaskConfig


def stage_text(data: Path, out: Path, backbone: str = "default", force: bool = False) -> StageResult:
    """The items' LLM embeddings (:func:`genrec.llm.backbone.item_llm_embeddings`) as an artifact the
    index stage reads: ``item_embeddings.npy`` (float32 [n_items, hidden], row i is item_idx i), left
    out when no item has a title (the indexers then go without text). A stage of its own because the
    index sits below the LLM; its config names the backbone as given, which the index stage copies
    into its own config."""
    from genrec.data.dataset import Dataset
    from genrec.index.stage import EMBEDDINGS_FILE

    def build(tmp: Path) -> dict:
        ds = Dataset.load(data)
        if not (ds.items["title"].str.len() > 0).any():
            return {"n_items": ds.n_items, "dim": None}
        from genrec.llm.backbone import item_llm_embeddings

        emb = item_llm_embeddings(ds.items, backbone)
        np.save(tmp / EMBEDDINGS_FILE, emb)
        return {"n_items": ds.n_items, "dim": int(emb.shape[1])}

    return run_stage(out, "text", {"backbone": backbone}, {"data": data}, build, force)


def stage_tasks(
    data: Path, index: Path, out: Path, cfg: TaskConfig, backbone: str = "default", valid_users: int = 1000,
    force: bool = False,
) -> StageResult:
    """Build the alignment-task corpus of ``data`` with ``index``'s codes, tokenized for ``backbone``."""
    from genrec.data.dataset import Dataset
    from genrec.index.base import ItemIndex
    from genrec.llm.backbone import add_tokens, load_tokenizer

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
                "per_user": _per_user(train)}

    return run_stage(out, "tasks", config, {"data": data, "index": index}, build, force)


def task_fingerprint(cfg: TaskConfig) -> dict:
    """The task settings that name a corpus. Settings at their defaults stay out, so adding a
    setting later does not orphan existing artifacts and checkpoints; ``long_histories`` arrived
    with a new default ('windows'), so it is its old behaviour ('last') that stays out, and the
    default is named wherever it changes a corpus (the all_positions layout). ``negative_prompts``
    the same way: its old behaviour stays out, the default is named where there are negatives to share."""
    config = cfg.model_dump(exclude_defaults=True)
    config.pop("long_histories", None)
    if cfg.layout == "all_positions" and cfg.long_histories != "last":
        config["long_histories"] = cfg.long_histories
    config.pop("negative_prompts", None)  # likewise: 'independent' was the behaviour before the setting
    if "neg" in cfg.tasks and cfg.negatives_per_positive > 1 and cfg.negative_prompts != "independent":
        config["negative_prompts"] = cfg.negative_prompts
    return config


def _per_user(corpus) -> dict:
    users = corpus.user[corpus.user >= 0]
    if not len(users):
        return {}
    n = np.bincount(users)
    n = n[n > 0]
    return {"users": int(len(n)), "mean": round(float(n.mean()), 2), "max": int(n.max())}


def train_fingerprint(corpus: Path, cfg: LLMTrainConfig, distill: Path | None = None,
                      text: Path | None = None) -> tuple[dict, dict, str]:
    """(config, inputs, fingerprint) of a train stage; the checkpoint folder is named after it.
    ``share_prefixes`` arrived with a new default (true): it is the old behaviour (false) that
    stays out, so runs started before it keep their checkpoints when they pin it."""
    train = cfg.model_dump(exclude_defaults=True)
    train.pop("share_prefixes", None)
    if cfg.share_prefixes:
        train["share_prefixes"] = True
    config = {"train": train}
    inputs = {"corpus": corpus}
    if cfg.distill is not None:
        if distill is None:
            raise GenrecError("train.distill needs the distill stage's targets: run it through a run config (genrec run)")
        inputs["distill"] = distill
    if cfg.code_init == "text":
        if text is None:
            raise GenrecError("train.code_init: text needs the text stage's item embeddings: run it through a run config (genrec run)")
        inputs["text"] = text
    return config, inputs, config_hash(config, {k: fingerprint(v) for k, v in inputs.items()})


def stage_train(
    corpus: Path, out: Path, cfg: LLMTrainConfig, force: bool = False, stop_after: int | None = None,
    progress: bool = True, select=None, distill: Path | None = None, text: Path | None = None,
) -> StageResult | None:
    """Fine-tune the corpus's backbone on it (``select``: model selection by ranking, see
    :func:`genrec.llm.train.train`). Checkpoints live next to ``out`` (keyed by corpus and config), so
    rerunning a killed or budgeted run resumes it. Under ``accelerate launch`` every rank trains
    and rank 0 writes the artifact. Returns None when stopped by ``stop_after`` steps."""
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
