"""Filter-then-rerank: a classic recommender shortlists, the fine-tuned LLM reorders the shortlist.

The classic model (any baseline with ``score(histories, users)``, e.g. SASRec) scores every
item; its top ``candidates`` are the hard candidates. History items are left in or out as the
evaluator treats them (``mask_history``: by default masked on deduplicated data, as for every model), so
that w = 0 below is exactly the classic model's evaluation. The LLM scores each candidate by the log-probability of the candidate's code
sequence after the user's prompt (teacher-forced, exactly the score its beam search gives).
Both scores are turned into a distribution over the shortlist (log-softmax over the candidates)
and mixed as a product of experts,

    fused = (1 - w) * log p_base(i | shortlist) + w * log p_llm(i | shortlist),

w = 0 is the classic model alone, w = 1 the LLM alone on the classic model's shortlist. ``w`` is
picked on the validation split (:func:`pick_weight`); the lists past the shortlist keep the
classic order. The LLM costs one beam-search step per code level for ``candidates`` slots per
user, and nothing when the shortlist is served from a cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.errors import DataError, GenrecError

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # the validation grid of w


def load_scorer(folder: str | Path):
    """A fitted classic model saved by a baseline stage (``runs/X/baselines/NAME/model``)."""
    from genrec.baselines import SPECS as CLASSIC
    from genrec.baselines import Pop
    from genrec.cf import SPECS as GRAPH

    scorers = {**CLASSIC, **GRAPH}  # TIGER ranks by decoding, it scores no items
    folder = Path(folder)
    if (folder / "pop.json").is_file():
        return Pop.load(folder)
    meta = folder / "model.json"
    if not meta.is_file():
        raise DataError(folder, None, "a baseline's saved model (model.json and model.safetensors, or pop.json), "
                                      "e.g. runs/scientific/baselines/sasrec-ce/model")
    name = json.loads(meta.read_text()).get("name")
    if name not in scorers:
        raise DataError(meta, None, f"a model that scores every item (one of {', '.join(scorers)}); found {name!r}")
    return scorers[name].load().load(folder)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    m = np.where(finite, x, -np.inf).max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = np.where(finite, np.exp(x - m), 0.0)
    with np.errstate(divide="ignore"):
        return np.where(finite, x - m - np.log(z.sum(axis=1, keepdims=True)), -np.inf)


@dataclass
class Shortlists:
    """For each user: the classic model's ranked list (``tail`` items past the shortlist too),
    its scores and the LLM's scores of the first ``candidates`` items (-1 / -inf pad)."""

    users: np.ndarray  # [U]
    items: np.ndarray  # [U, n] the classic model's order, n >= candidates
    base: np.ndarray  # [U, candidates] classic scores
    llm: np.ndarray  # [U, candidates] LLM log-probabilities of the candidates' codes

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, users=self.users, items=self.items, base=self.base, llm=self.llm)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Shortlists:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["users"], z["items"], z["base"], z["llm"])

    @classmethod
    def concat(cls, parts: list[Shortlists]) -> Shortlists:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("users", "items", "base", "llm")))

    def ranker(self, weight: float) -> FusedRanker:
        return FusedRanker(self, weight)


class FusedRanker:
    """The shortlist reordered by the fused score, then the rest of the classic list; goes
    through the shared evaluator like any ranked model."""

    def __init__(self, short: Shortlists, weight: float):
        if not 0.0 <= weight <= 1.0:
            raise GenrecError(f"rerank weight {weight}: expected a number in [0, 1]")
        c = short.base.shape[1]
        fused = np.zeros(short.base.shape)
        for w, scores in ((1.0 - weight, short.base), (weight, short.llm)):
            if w > 0:  # a weight of 0 drops its scores, -inf included
                fused += w * _log_softmax(scores)
        fused = np.where(short.items[:, :c] >= 0, fused, -np.inf)
        order = np.argsort(-fused, axis=1, kind="stable")  # ties keep the classic order
        head = np.take_along_axis(short.items[:, :c], order, axis=1)
        self.lists = {int(u): np.concatenate([h, t]) for u, h, t in zip(short.users, head, short.items[:, c:], strict=True)}

    def rank(self, histories, users: np.ndarray, k: int) -> list[np.ndarray]:
        missing = [int(u) for u in users if int(u) not in self.lists]
        if missing:
            raise GenrecError(f"no shortlist for users {missing[:5]}: score them first")
        return [self.lists[int(u)][:k] for u in users]


def shortlist(base, rec, histories: list[np.ndarray], users: np.ndarray, candidates: int, n: int,
              exclude_history: bool = False) -> Shortlists:
    """The classic model's top ``n`` (history items left out if ``exclude_history``) and both
    scores of its first ``candidates``."""
    scores = np.array(base.score(histories, users), dtype=np.float64, copy=True)
    if exclude_history:
        for row, h in zip(scores, histories, strict=True):
            row[np.asarray(h, dtype=np.int64)] = -np.inf
    n = min(n, scores.shape[1])
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < scores.shape[1] else np.tile(np.arange(n), (len(users), 1))
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    items = np.take_along_axis(top, order, 1)
    base_top = np.take_along_axis(scores, items, 1)
    items = np.where(np.isfinite(base_top), items, -1)
    c = min(candidates, n)
    llm = rec.score_items(histories, items[:, :c])
    return Shortlists(np.asarray(users, dtype=np.int64), items, base_top[:, :c], llm)


def pick_weight(evaluator, short: Shortlists, stage: str = "valid", metric: str = "NDCG@10",
                weights: tuple[float, ...] = WEIGHTS) -> tuple[float, dict[float, dict]]:
    """The weight of the grid with the best ``metric`` on ``stage`` (the smallest on a tie), and
    every weight's metrics."""
    results = {w: evaluator.evaluate(short.ranker(w), stage=stage, users=short.users).metrics for w in weights}
    best = max(weights, key=lambda w: (results[w][metric], -w))
    return best, results


def _sample(split, size: int | None, seed: int) -> np.ndarray:
    """Every user with a target in ``split``, or a seeded sample of ``size`` of them."""
    users = np.flatnonzero(split.targets >= 0)
    if size is not None and size < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, size=size, replace=False))
    return users


def scored_shortlists(base, rec, split, users: np.ndarray, candidates: int, n: int, folder: Path, key: dict,
                      exclude_history: bool = False, chunk_users: int = 256, progress: bool = True) -> Shortlists | None:
    """:func:`shortlist` for ``users``, ``chunk_users`` at a time, each chunk kept in ``folder``
    (under ``key``: a folder of another key is emptied), so a killed run resumes. Under a
    multi-process launch the chunks are shared out between ranks; rank 0 gets the result, the
    others None."""
    import time

    from accelerate import PartialState
    from tqdm.auto import tqdm

    from genrec.artifacts import write_json_atomic
    from genrec.decode.recommender import partial_open

    state = PartialState(cpu=rec.device.type == "cpu")
    folder = Path(folder)
    if state.is_main_process:
        partial_open(folder, key)
    state.wait_for_everyone()
    chunks = [users[a : a + chunk_users] for a in range(0, len(users), chunk_users)]
    mine = [c for c in range(len(chunks)) if c % state.num_processes == state.process_index]
    for c in tqdm(mine, unit="chunk", disable=not (progress and state.is_main_process), dynamic_ncols=True):
        path = folder / f"chunk-{c:05d}.npz"
        if path.is_file():
            continue
        part = chunks[c]
        t = time.perf_counter()
        short = shortlist(base, rec, [split.histories[u] for u in part], part, candidates, n, exclude_history)
        write_json_atomic(path.with_suffix(".json"), {"users": len(part), "seconds": time.perf_counter() - t})
        short.save(path)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return Shortlists.concat([Shortlists.load(folder / f"chunk-{c:05d}.npz") for c in range(len(chunks))])


def seconds_per_user(folder: Path) -> float | None:
    """Wall time of shortlisting and scoring per user, over the chunks of a :func:`scored_shortlists`
    folder (each timed when it was scored, so a resumed run counts every chunk once); None when a
    chunk has no timing (scored by an older version)."""
    chunks = sorted(Path(folder).glob("chunk-*.npz"))
    times = [chunk.with_suffix(".json") for chunk in chunks]
    if not chunks or not all(t.is_file() for t in times):
        return None
    parts = [json.loads(t.read_text()) for t in times]
    return sum(p["seconds"] for p in parts) / max(1, sum(p["users"] for p in parts))


METHODS = ("codes", "tallrec")


def load_reranker(method: str, model_dir: Path, index_dir: Path | None, data_dir: Path, batch_users: int):
    """The LLM scorer of a shortlist: ``codes``, the fine-tuned generative model's code
    log-likelihood; ``tallrec``, a yes/no ranker's log P(Yes) (:mod:`genrec.llm.tallrec`)."""
    if method not in METHODS:
        raise GenrecError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "codes":
        from genrec.decode.recommender import GenerativeRecommender

        if index_dir is None:
            raise GenrecError("--method codes needs --index (the item index the model was trained on)")
        return GenerativeRecommender.load(model_dir, index_dir, batch_users=batch_users)
    from genrec.llm.tallrec import YesNoRanker

    return YesNoRanker.load(model_dir, data_dir, batch_rows=8 * batch_users)


def run_rerank(base_dir: Path, model_dir: Path, index_dir: Path | None, data_dir: Path, out: Path, candidates: int = 20,
               valid_users: int | None = None, test_users: int | None = None, seed: int = 0, batch_users: int = 8,
               weight: float | None = None, progress: bool = True, method: str = "codes") -> dict | None:
    """Shortlist with the classic model, score with the LLM (``method``: see :func:`load_reranker`),
    pick the weight on validation (unless given), evaluate on test beside the classic model alone;
    write ``out/metrics.json``."""
    import time

    from genrec.artifacts import fingerprint, write_json_atomic
    from genrec.data.dataset import Dataset
    from genrec.evaluate import Evaluator

    if candidates < 1:
        raise GenrecError(f"--candidates {candidates}: expected at least 1")
    start = time.perf_counter()
    ds = Dataset.load(data_dir)
    rec = load_reranker(method, model_dir, index_dir, data_dir, batch_users)
    base = load_scorer(base_dir)
    ev = Evaluator(ds, ks=(1, 5, 10, 20), progress=False)
    n = max(candidates, max(ev.ks))
    key = {"base": fingerprint(base_dir), "model": fingerprint(model_dir), "data": fingerprint(data_dir),
           "candidates": candidates, "n": n, "exclude_history": ev.mask_history}
    if method == "codes":  # (the key of a folder written before there were methods)
        key["index"] = fingerprint(index_dir)
    else:
        key["method"] = method
    out = Path(out)
    short = {}
    for stage, size in (("valid", valid_users), ("test", test_users)):
        if stage == "valid" and weight is not None:
            continue
        split = ev.split(stage)
        users = _sample(split, size, seed)
        short[stage] = scored_shortlists(base, rec, split, users, candidates, n, out / f".shortlists-{stage}",
                                         {**key, "stage": stage, "users": size, "seed": seed if size is not None else None},
                                         ev.mask_history, progress=progress)
    if short["test"] is None:  # not rank 0 of a launch
        return None
    result = {"method": method, "base": str(base_dir), "model": str(model_dir), "data": str(data_dir),
              "candidates": candidates, "seed": seed,
              "valid_users_sampled": valid_users, "test_users_sampled": test_users, "mask_history": bool(ev.mask_history)}
    if weight is None:
        weight, valid = pick_weight(ev, short["valid"])
        result["valid"] = {"users": int(len(short["valid"].users)), "by_weight": {str(w): m for w, m in valid.items()}}
    test = short["test"]
    result.update(weight=weight, test={
        "users": int(len(test.users)),
        "base": ev.evaluate(base, stage="test", users=test.users).metrics,  # the classic model through the evaluator
        "llm_on_shortlist": ev.evaluate(test.ranker(1.0), stage="test", users=test.users).metrics,
        "fused": ev.evaluate(test.ranker(weight), stage="test", users=test.users).metrics,
    }, seconds=round(time.perf_counter() - start, 1), seconds_per_user=seconds_per_user(out / ".shortlists-test"))
    write_json_atomic(out / "metrics.json", result)
    return result
