"""The files of a fine-tuned model folder and of a training checkpoint folder.

A model folder (``genrec train``) holds

- ``trainable.safetensors``: the trained weights (adapters, code-token rows), by parameter name;
- ``train_config.json``: the settings to rebuild the model with; ``log.jsonl``: the training log.

A checkpoint folder holds the same ``trainable.safetensors`` and ``train_config.json`` (so an
unfinished run decodes like a finished one), and, for the trainer alone,

- ``state.json``: the optimizer step and epoch reached;
- ``optimizer.pt``: the optimizer's state dict (tensors, numbers, lists and dicts; read weights-only);
- ``rng-{rank}.safetensors``: each process's torch RNG states (``torch``, ``cuda.0``, ...);
- ``best.safetensors`` and ``best.json``: the best weights of model selection so far, their step
  and metric.

Folders of older versions hold ``trainable.pt``, or ``state.pt`` (weights, optimizer, step, epoch),
``rng-{rank}.pt`` and ``best.pt``, written by ``torch.save``: they are read weights-only (see
:mod:`genrec.safefiles`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genrec.errors import DataError
from genrec.safefiles import load_tensors, load_weights_only, save_tensors

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
BEST_FILE, BEST_META = "best.safetensors", "best.json"
#: files of the same things written by older versions (torch.save), read weights-only
OLD_TRAINABLE_FILE, OLD_STATE_FILE, OLD_BEST_FILE = "trainable.pt", "state.pt", "best.pt"

RETRAIN = "train the model again (genrec train) to write trainable.safetensors"
RESTART = ("delete the checkpoint folder to train from the start, or finish the run with the genrec "
           "version that wrote it")


def rng_file(folder: Path, rank: int, old: bool = False) -> Path:
    return folder / (f"rng-{rank}.pt" if old else f"rng-{rank}.safetensors")


# ---------------------------------------------------------------------------------------- trained weights


def save_trainable(folder: Path, state: dict[str, torch.Tensor]) -> None:
    save_tensors(folder / TRAINABLE_FILE, state)


def has_trained_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in (TRAINABLE_FILE, OLD_TRAINABLE_FILE, OLD_STATE_FILE))


def load_trained_weights(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The trained weights of a model folder or a checkpoint folder, or None if it has none."""
    folder = Path(folder)
    if (folder / TRAINABLE_FILE).is_file():
        return load_tensors(folder / TRAINABLE_FILE)
    if (folder / OLD_TRAINABLE_FILE).is_file():
        return _tensor_dict(load_weights_only(folder / OLD_TRAINABLE_FILE, RETRAIN), folder / OLD_TRAINABLE_FILE)
    if (folder / OLD_STATE_FILE).is_file():
        return _tensor_dict(_old_state(folder)["trainable"], folder / OLD_STATE_FILE)
    return None


# ---------------------------------------------------------------------------------------- checkpoints


def is_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() or (folder / OLD_STATE_FILE).is_file()


def write_checkpoint(folder: Path, trainable: dict[str, torch.Tensor], optimizer: dict, step: int, epoch: int,
                     best: dict | None) -> None:
    """The main process's part of a checkpoint (``best``: trainable state, step, metric)."""
    save_trainable(folder, trainable)
    torch.save(optimizer, folder / OPTIMIZER_FILE)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "epoch": epoch}))
    if best is not None:
        save_tensors(folder / BEST_FILE, best["trainable"])
        (folder / BEST_META).write_text(json.dumps({"step": best["step"], "metric": best["metric"]}))


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict, int]:
    """(trainable weights, optimizer state dict, step) of a checkpoint folder."""
    if (folder / STATE_FILE).is_file():
        step = int(json.loads((folder / STATE_FILE).read_text())["step"])
        return load_tensors(folder / TRAINABLE_FILE), load_weights_only(folder / OPTIMIZER_FILE, RESTART), step
    state = _old_state(folder)
    return _tensor_dict(state["trainable"], folder / OLD_STATE_FILE), state["optimizer"], int(state["step"])


def checkpoint_step(folder: Path) -> int:
    """The optimizer step a checkpoint folder reached."""
    if (folder / STATE_FILE).is_file():
        return int(json.loads((folder / STATE_FILE).read_text())["step"])
    return int(_old_state(folder)["step"])


def read_best(folder: Path) -> dict | None:
    """The best weights of model selection a checkpoint holds (trainable state, step, metric), if any."""
    if (folder / BEST_META).is_file():
        return {"trainable": load_tensors(folder / BEST_FILE), **json.loads((folder / BEST_META).read_text())}
    if (folder / OLD_BEST_FILE).is_file():
        return load_weights_only(folder / OLD_BEST_FILE, RESTART)
    return None


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states as tensors: the CPU generator's and each CUDA device's."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def write_rng(folder: Path, rank: int) -> None:
    save_tensors(rng_file(folder, rank), rng_state())


def restore_rng(folder: Path, rank: int) -> None:
    """Set this process's RNG states to those a checkpoint saved for ``rank`` (if it saved any)."""
    if rng_file(folder, rank).is_file():
        state = load_tensors(rng_file(folder, rank))
    elif rng_file(folder, rank, old=True).is_file():
        old = load_weights_only(rng_file(folder, rank, old=True), RESTART)
        state = {"torch": old["torch"], **{f"cuda.{i}": s for i, s in enumerate(old.get("cuda") or [])}}
    else:
        return
    torch.set_rng_state(state["torch"])
    cuda = [state[f"cuda.{i}"] for i in range(len(state) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------- older versions


def _old_state(folder: Path) -> dict:
    state = load_weights_only(folder / OLD_STATE_FILE, RESTART)
    if not isinstance(state, dict) or not {"trainable", "optimizer", "step"} <= set(state):
        raise _not_ours(folder / OLD_STATE_FILE, "a dict of trainable, optimizer and step")
    return state


def _tensor_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise _not_ours(path, "a dict of named tensors")
    return obj


def _not_ours(path: Path, expected: str) -> DataError:
    return DataError(path, None, f"expected {expected}, as genrec train writes")
