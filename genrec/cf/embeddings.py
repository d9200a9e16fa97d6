"""The behaviour item-embedding artifact: train a CF model, keep its item representations.

``train_embeddings`` is one stage (see :mod:`genrec.artifacts`): the output folder holds

- ``item_embeddings.npy``: float32 [n_items, dim], row i is item_idx i;
- ``model/``: the trained model (``NeuralBaseline.save``), loadable with the class's ``load``;
- ``metrics.json``: validation and test metrics of the model through the shared evaluator;
- ``train_log.txt`` (the per-epoch lines) and ``train_log.json`` (the full training log);
- ``manifest.json``: config, input fingerprint, versions; a rerun with the same data and
  config is skipped.

Models: ``dccf`` and ``lightgcn`` (final item representations) and ``sasrec`` (SASRec with
full cross-entropy; its item embedding table without the padding row).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from genrec.artifacts import StageResult, config_hash, fingerprint, run_stage

#: model name -> the baseline (genrec.baselines) it trains: its class, model and trainer settings
EMBEDDING_MODELS: dict[str, str] = {
    "dccf": "dccf",
    "lightgcn": "lightgcn",
    "sasrec": "sasrec-ce",
}


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
    """Train ``name`` (dccf, lightgcn or sasrec) on ``data_folder`` and write its item embeddings.

    ``train`` overrides the model's training defaults (``TrainConfig`` fields, e.g. epochs),
    ``config`` its model settings (``dim`` always comes from ``dim``). ``data_folder`` is a
    prepared dataset (or a raw folder, prepared in memory with the default settings).
    """
    from genrec.errors import GenrecError

    if name not in EMBEDDING_MODELS:
        raise GenrecError(f"unknown embedding model {name!r}; expected one of {', '.join(EMBEDDING_MODELS)}")
    train = dict(train or {})
    model_config = {**(config or {}), "dim": int(dim)}
    stage_config = {"model": name, "dim": int(dim), "seed": int(seed), "train": train, "config": model_config}
    # checkpoints next to the stage folder, keyed by config and data: a killed stage resumes
    out_folder = Path(out_folder)
    ckpt = out_folder.parent / f".ckpt-{out_folder.name}-{config_hash(stage_config, {'data': fingerprint(data_folder)})[:12]}"

    def build(tmp: Path) -> dict:
        from genrec.baselines import BASELINES
        from genrec.data.preprocess import load_dataset
        from genrec.evaluate import Evaluator

        cls = BASELINES[EMBEDDING_MODELS[name]]
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
