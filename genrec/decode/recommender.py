"""The fine-tuned LLM as a recommender: sequential prompt -> constrained beam search -> items.

It has ``rank(histories, users, k)``, so it goes through the same evaluator as every baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from genrec.decode.beam import BeamResult, Decoder, TrieTensors, rank_prompts
from genrec.errors import DataError
from genrec.index.base import ItemIndex


class GenerativeRecommender:
    def __init__(self, lm, tokenizer, index: ItemIndex, beams: int = 20, batch_users: int = 8, max_history: int = 20,
                 cold_from: int | None = None, layout: str = "per_prefix"):
        """``cold_from``: items from this index on were added after training (their unseen last
        codes are scored by their trained siblings; see :func:`genrec.decode.beam._backoff`).
        ``layout``: the sequential layout the model was trained on, which fixes the prompt form
        (see :meth:`genrec.llm.encode.PromptFormat.seq_prompt`)."""
        from genrec.llm.encode import PromptFormat

        self.lm = lm.eval()
        self.fmt = PromptFormat(tokenizer, index)
        self.index = index
        self.beams, self.batch_users, self.max_history, self.layout = beams, batch_users, max_history, layout
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.decoder = Decoder.from_codelm(lm, pad)
        cold = range(cold_from, index.n_items) if cold_from is not None else None
        self.trie = TrieTensors.of(index.trie(self.fmt.items), self.decoder.device, cold)

    @classmethod
    def load(cls, model_dir: str | Path, index: str | Path | ItemIndex, device: str = "auto", **kw) -> GenerativeRecommender:
        """A model folder from the train stage, or a checkpoint folder of an unfinished one (its
        latest weights), with the index it was trained on (a folder, or the index itself, e.g.
        extended with items added after training)."""
        from genrec.device import pick_device
        from genrec.llm.config import LLMTrainConfig
        from genrec.llm.train import build_model

        model_dir = Path(model_dir)
        cfg_file = model_dir / "train_config.json"
        if (model_dir / "trainable.pt").is_file():
            weights = torch.load(model_dir / "trainable.pt", map_location="cpu")
        elif (model_dir / "state.pt").is_file():
            weights = torch.load(model_dir / "state.pt", map_location="cpu", weights_only=False)["trainable"]
        else:
            weights = None
        if not cfg_file.is_file() or weights is None:
            raise DataError(model_dir, None, "a trained model folder (train_config.json, trainable.pt) from `genrec train`, "
                                             "or one of its checkpoint folders (train_config.json, state.pt)")
        raw = json.loads(cfg_file.read_text())
        backbone = raw.pop("backbone", "default")
        raw.pop("new_tokens", None)
        layout = raw.pop("layout", None) or _corpus_layout(model_dir)
        cfg = LLMTrainConfig.model_validate(raw)
        index = index if isinstance(index, ItemIndex) else ItemIndex.load(index)
        dev = pick_device(device)
        lm, tok = build_model(cfg, backbone, list(index.new_tokens), dev)
        lm.load_trainable(weights, model_dir)
        return cls(lm.merge_for_inference(), tok, index, **{"layout": layout, **kw})

    def prompts(self, histories: list[np.ndarray]) -> list[list[int]]:
        return [self.fmt.seq_prompt([int(i) for i in h], 0, self.max_history, self.layout) for h in histories]

    def rank_scored(self, histories: list[np.ndarray], k: int) -> BeamResult:
        """Top-``k`` items per history with their log-probabilities, best first (-1 / -inf pad a
        list with fewer than k items)."""
        from genrec.llm.train import autocast

        with autocast(self.decoder.device, self.lm.compute_dtype):
            return rank_prompts(self.decoder, self.prompts(histories), self.trie, self.beams, k, self.batch_users)

    def rank(self, histories: list[np.ndarray], users: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` items per history, best first (-1 pads a list with fewer than k items)."""
        return self.rank_scored(histories, k).items


def _corpus_layout(model_dir: Path) -> str:
    """The layout of a model folder written before train_config.json recorded it: its corpus
    meta, else the per-prefix default."""
    meta = model_dir / "corpus_meta.json"
    return json.loads(meta.read_text()).get("layout", "per_prefix") if meta.is_file() else "per_prefix"


class PrecomputedRanker:
    """Ranked lists computed elsewhere (e.g. by every rank of a launch), looked up by user."""

    def __init__(self, lists: dict[int, list[int]]):
        self.lists = lists

    def rank(self, histories, users: np.ndarray, k: int) -> list[list[int]]:
        return [self.lists[int(u)][:k] for u in users]


def evaluate_generative(rec: GenerativeRecommender, evaluator, stage: str = "test", users: np.ndarray | None = None,
                        dump_path: Path | None = None):
    """Evaluate through the shared evaluator. Under a multi-process launch every rank decodes a
    shard of the users, the lists are gathered, and rank 0 evaluates them (same result as one
    process, its ``seconds`` the wall time of the whole sharded run); the other ranks return None."""
    import dataclasses
    import time

    from genrec.device import launch_rank

    if launch_rank()[1] == 1:
        return evaluator.evaluate(rec, stage=stage, dump_path=dump_path, users=users)
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=rec.decoder.device.type == "cpu")
    start = time.perf_counter()
    split = evaluator.split(stage)
    todo = np.arange(evaluator.dataset.n_users) if users is None else np.asarray(users)
    todo = todo[split.targets[todo] >= 0]
    mine = todo[state.process_index :: state.num_processes]
    k = max(evaluator.ks)
    lists = rec.rank([split.histories[u] for u in mine], mine, k) if len(mine) else np.zeros((0, k), np.int64)
    gathered = gather_object([(int(u), [int(i) for i in row if i >= 0]) for u, row in zip(mine, lists, strict=True)])
    if not state.is_main_process:
        return None
    res = evaluator.evaluate(PrecomputedRanker(dict(gathered)), stage=stage, dump_path=dump_path, users=users)
    return dataclasses.replace(res, seconds=time.perf_counter() - start)
