"""What names the LLM's artifacts: the task settings that enter a corpus's fingerprint, the config and
inputs of a fine-tune's, and the per-user summary of a corpus. The stages themselves (text, tasks,
train) live on top, in :mod:`genrec.stages`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.artifacts import config_hash, fingerprint
from genrec.errors import GenrecError
from genrec.llm.config import LLMTrainConfig
from genrec.llm.tasks import TaskConfig


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


def per_user_summary(corpus) -> dict:
    """Samples per user of a corpus: users, mean and max (empty without user samples)."""
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
