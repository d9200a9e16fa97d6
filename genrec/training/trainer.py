"""The one training loop every neural baseline uses, readable top to bottom.

A model plugs in by subclassing :class:`NeuralRecommender` (an ``nn.Module``) and defining
``batches`` (training batches for one epoch), ``loss`` and ``scores``. :func:`fit` then
does the rest: seeding, device and precision, Adam, early stopping on validation NDCG@10
with patience, a progress bar, checkpoints (best and last, resumable), and restoring the
best weights at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from tqdm import tqdm

from genrec.data.dataset import Dataset
from genrec.device import pick_device
from genrec.evaluate import Evaluator
from genrec.safefiles import load_tensors, load_weights_only, save_tensors
from genrec.training.config import TrainConfig

#: a saved baseline's weights (beside model.json); older versions wrote model.pt (torch.save), read weights-only
WEIGHTS_FILE, OLD_WEIGHTS_FILE = "model.safetensors", "model.pt"
RESTART = "delete the checkpoint folder to train from the start, or finish with the genrec version that wrote it"


def log_stderr(message: str) -> None:
    """Training logs go to stderr, so a command's stdout stays its result."""
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked for (CPU and CUDA both support it), else a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NeuralRecommender(nn.Module):
    """Base class: one model a file implements ``batches``, ``loss`` and ``scores``.

    ``scores`` returns a [B, n_items] tensor for users' histories; the shared evaluator calls
    :meth:`score`, which wraps it (eval mode, no grad, numpy out).
    """

    name = "neural"
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    def batches(self, dataset: Dataset, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        raise NotImplementedError

    def loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, histories: list[np.ndarray], users: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, dataset: Dataset) -> None:
        """Hook run once before training (e.g. build a graph from the training split)."""

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], users: np.ndarray) -> np.ndarray:
        was_training = self.training
        self.eval()
        with autocast(self.device, self.precision):
            out = self.scores(histories, users)
        self.train(was_training)
        return out.float().cpu().numpy()


def shuffled_rows(rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The rows of ``rows`` in a fresh random order, ``batch_size`` at a time."""
    order = rng.permutation(len(rows))
    for start in range(0, len(order), batch_size):
        yield rows[order[start : start + batch_size]]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fit(
    model: NeuralRecommender,
    dataset: Dataset,
    cfg: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    log=None,
) -> dict:
    """Train ``model`` with early stopping on validation ``cfg.metric``; return a training log.

    With ``checkpoint_dir``, ``last.pt`` (weights, optimiser, epoch, best so far) is written
    after every evaluation and a rerun resumes from it; ``best.pt`` holds the best weights. Both
    hold tensors, numbers, strings, lists and dicts only (the numpy RNG state as JSON text), so
    they are read weights-only (:mod:`genrec.safefiles`).
    """
    log = log or log_stderr
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model.device, model.precision = device, cfg.precision
    model.to(device)
    model.prepare(dataset)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    evaluator = Evaluator(dataset, ks=(1, 5, 10, 20), mask_history=cfg.mask_history, batch_size=cfg.eval_batch_size,
                          progress=False)
    rng = np.random.default_rng(cfg.seed)

    history: list[dict] = []
    best, best_epoch, start_epoch = -math.inf, 0, 1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt and (ckpt / "last.pt").is_file():
        state = load_weights_only(ckpt / "last.pt", RESTART)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        # JSON text; older versions stored the (plain) dict itself
        rng.bit_generator.state = json.loads(state["rng"]) if isinstance(state["rng"], str) else state["rng"]
        torch.set_rng_state(state["torch_rng"])
        history, best, best_epoch = state["history"], state["best"], state["best_epoch"]
        best_state = load_weights_only(ckpt / "best.pt", RESTART)
        start_epoch = state["epoch"] + 1
        log(f"resumed from {ckpt / 'last.pt'} at epoch {start_epoch}")

    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs + 1):
        if epoch - best_epoch > cfg.patience * cfg.eval_every and best_epoch > 0:
            break
        model.train()
        t0, total, n = time.time(), 0.0, 0
        bar = tqdm(
            model.batches(dataset, cfg.batch_size, rng),
            desc=f"{model.name} epoch {epoch}",
            leave=False,
            disable=None if cfg.progress else True,  # None: off when not a terminal
        )
        for batch in bar:
            batch = _to_device(batch, device)
            with autocast(device, cfg.precision):
                loss = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach())
            n += 1
            bar.set_postfix(loss=f"{total / n:.4f}")
        row = {"epoch": epoch, "loss": total / max(n, 1), "train_seconds": round(time.time() - t0, 3)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            res = evaluator.evaluate(model, stage="valid")
            row["valid"] = {k: v for k, v in res.metrics.items() if k.startswith(("HR", "NDCG", "MRR"))}
            value = res.metrics[cfg.metric]
            if value > best:
                best, best_epoch = value, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if ckpt:
                    ckpt.mkdir(parents=True, exist_ok=True)
                    _save(best_state, ckpt / "best.pt")
            log(
                f"{model.name} epoch {epoch}: loss {row['loss']:.4f}, valid {cfg.metric} {value:.4f} "
                f"(best {best:.4f} @ {best_epoch}), {row['train_seconds']:.1f}s"
            )
        history.append(row)
        if ckpt:
            ckpt.mkdir(parents=True, exist_ok=True)
            _save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": json.dumps(rng.bit_generator.state),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best": float(best),
                    "best_epoch": best_epoch,
                    "epoch": epoch,
                },
                ckpt / "last.pt",
            )
    model.load_state_dict(best_state)
    train_secs = [h["train_seconds"] for h in history]
    return {
        "best_epoch": best_epoch,
        f"best_valid_{cfg.metric}": best,
        "epochs_run": len(history),
        "seconds_per_epoch": round(float(np.mean(train_secs)), 3) if train_secs else 0.0,
        "history": history,
    }


def _save(obj: object, path: Path) -> None:
    """torch.save through a temporary file, so a kill never leaves a torn checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class NeuralBaseline:
    """Adapter from a :class:`NeuralRecommender` class to the baseline interface
    (``fit``, ``score``, ``save``, ``load``) used by the pipeline and the CLI."""

    model_cls: type[NeuralRecommender]
    config_cls: type[BaseModel]
    name = "neural"
    #: training defaults from the model's paper, overriding :class:`TrainConfig`'s
    train_defaults: dict = {}

    def __init__(self, config: dict | None = None, train: dict | None = None):
        self.config = self.config_cls(**(config or {}))
        self.train_cfg = TrainConfig(**{**self.train_defaults, **(train or {})})
        self.model: NeuralRecommender | None = None
        self.log: dict = {}

    def fit(self, dataset: Dataset, seed: int | None = None, checkpoint_dir=None, log=None, **_: object) -> dict:
        if seed is not None:
            self.train_cfg = self.train_cfg.model_copy(update={"seed": seed})
        seed_everything(self.train_cfg.seed)
        self.model = self.model_cls(dataset.n_items, dataset.n_users, self.config)
        self.log = fit(self.model, dataset, self.train_cfg, checkpoint_dir, log)
        return {k: v for k, v in self.log.items() if k != "history"}

    def score(self, histories: list[np.ndarray], users: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(f"{self.name}: score called before fit or load")
        return self.model.score(histories, users)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": self.name,
            "config": self.config.model_dump(),
            "train": self.train_cfg.model_dump(),
            "n_items": self.model.n_items,
            "n_users": self.model.n_users,
            "log": self.log,
        }
        (folder / "model.json").write_text(json.dumps(meta, indent=2))
        save_tensors(folder / WEIGHTS_FILE, self.model.state_dict())

    @classmethod
    def build_model(cls, meta: dict, config: BaseModel, state: dict[str, torch.Tensor]) -> NeuralRecommender:
        """The model of a saved folder before its weights go in (``meta``: its model.json). A model
        built around fixed tensors (item features, say) takes them from ``state``."""
        return cls.model_cls(meta["n_items"], meta["n_users"], config)

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto") -> NeuralBaseline:
        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        obj = cls(meta["config"], meta["train"])
        state = _weights(folder)
        obj.model = cls.build_model(meta, obj.config, state)
        dev = pick_device(device)
        obj.model.load_state_dict(state)
        obj.model.device, obj.model.precision = dev, obj.train_cfg.precision
        obj.model.to(dev)
        obj.log = meta.get("log", {})
        return obj


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """A saved baseline's state dict: model.safetensors, or an older version's model.pt read weights-only."""
    if (folder / WEIGHTS_FILE).is_file() or not (folder / OLD_WEIGHTS_FILE).is_file():
        return load_tensors(folder / WEIGHTS_FILE)
    return load_weights_only(folder / OLD_WEIGHTS_FILE, "fit and save the baseline again")
