"""The one evaluation protocol every model goes through.

A model is any object with EITHER ``score(histories, users) -> [B, n_items]`` (higher is
better) OR ``rank(histories, users, k) -> list[list[int]]``; ``score`` wins when both exist.
Users without a target at the stage are skipped and counted. Scores are consumed batch by
batch, so the full users x items matrix never exists.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from genrec.data.dataset import Dataset, EvalSplit
from genrec.evaluate.metrics import (
    expected_rank,
    metrics_from_rank_range,
    metrics_from_ranked_lists,
    normalize_ks,
    pad_lists,
    ranks_from_lists,
    ranks_from_scores,
    top_k_from_scores,
)

ScoreFn = Callable[[list[np.ndarray], np.ndarray], np.ndarray]

#: the command-line words for the ``mask_history`` setting
MASK_WORDS: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


def resolve_mask_history(setting: bool | str, dataset: Dataset) -> bool:
    """Whether history items are masked for ``dataset`` under ``setting`` (true, false, or
    ``"auto"``: exactly when the data holds no repeated user-item pair)."""
    if setting == "auto":
        return not dataset.has_repeats()
    if not isinstance(setting, bool):
        raise ValueError(f"mask_history must be true, false or 'auto', got {setting!r}")
    return setting
RankFn = Callable[[list[np.ndarray], np.ndarray, int], Sequence[Sequence[int]] | np.ndarray]


@dataclass
class EvalResult:
    """Mean metrics over evaluated users, plus how many users were evaluated or skipped."""

    metrics: dict[str, float]
    n_users: int
    n_skipped: int
    stage: str
    seconds: float

    def ks(self) -> list[int]:
        """The cut-offs present in ``metrics``, ascending."""
        return sorted({int(key.split("@", 1)[1]) for key in self.metrics if key.startswith("HR@")})

    def table(self) -> str:
        """Fixed-width text table: rows HR, NDCG, coverage, avg_pop per K, and MRR."""
        ks = self.ks()
        width = 10
        lines = [
            f"stage={self.stage}  users={self.n_users}  skipped={self.n_skipped}  time={self.seconds:.1f}s",
            f"{'metric':<10}" + "".join(f"{'@' + str(k):>{width}}" for k in ks),
        ]
        for name in ("HR", "NDCG", "coverage", "avg_pop"):
            cells = [self.metrics.get(f"{name}@{k}", float("nan")) for k in ks]
            lines.append(f"{name:<10}" + "".join(f"{v:>{width}.4f}" for v in cells))
        lines.append(f"{'MRR':<10}{self.metrics.get('MRR', float('nan')):>{width}.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return asdict(self)


class _Accumulator:
    """Running sums over batches for the mean metrics, coverage and popularity bias."""

    def __init__(self, ks: list[int], n_items: int, popularity: np.ndarray):
        self.ks = ks
        self.popularity = popularity
        self.sums: dict[str, float] = {}
        self.n = 0
        self.covered = {k: np.zeros(n_items, dtype=bool) for k in ks}
        self.pop_sum = dict.fromkeys(ks, 0.0)
        self.pop_n = dict.fromkeys(ks, 0)
        self.dump_rows: dict[str, list] = {"user_idx": [], "target": [], "rank": [], "topk": []}

    def add(self, per_user: dict[str, np.ndarray], top: np.ndarray, users: np.ndarray,
            targets: np.ndarray, ranks: np.ndarray, dump: bool) -> None:
        """Fold in one batch: per-user metric arrays and padded top lists (-1 = empty slot)."""
        self.n += len(users)
        for key, values in per_user.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(values))
        for k in self.ks:
            head = top[:, :k]
            valid = head >= 0
            self.covered[k][head[valid]] = True
            counts = valid.sum(axis=1)
            pops = np.where(valid, self.popularity[np.where(valid, head, 0)], 0.0).sum(axis=1)
            has = counts > 0
            self.pop_sum[k] += float(np.sum(pops[has] / counts[has]))
            self.pop_n[k] += int(has.sum())
        if dump:
            self.dump_rows["user_idx"].append(users)
            self.dump_rows["target"].append(targets)
            self.dump_rows["rank"].append(ranks)
            self.dump_rows["topk"].extend(row[row >= 0].tolist() for row in top)

    def means(self, n_items: int) -> dict[str, float]:
        """Mean metrics in a fixed order: HR@K, NDCG@K, MRR, coverage@K, avg_pop@K."""
        out: dict[str, float] = {}
        for key in [f"HR@{k}" for k in self.ks] + [f"NDCG@{k}" for k in self.ks] + ["MRR"]:
            out[key] = self.sums.get(key, 0.0) / self.n if self.n else float("nan")
        for k in self.ks:
            out[f"coverage@{k}"] = float(self.covered[k].sum()) / n_items if n_items else float("nan")
        for k in self.ks:
            out[f"avg_pop@{k}"] = self.pop_sum[k] / self.pop_n[k] if self.pop_n[k] else float("nan")
        return out


class Evaluator:
    """Leave-one-out evaluation of any scoring or ranking model on a Dataset.

    ``mask_history``: scores of history items (other than the target itself) become -inf;
    ranked lists lose their history items (other than the target). ``"auto"`` masks exactly when
    the data holds no repeated user-item pair (deduplicated data, as RecBole does): there a
    history item can never be the target, so recommending one only wastes a slot.
    """

    def __init__(
        self,
        dataset: Dataset,
        ks: Sequence[int] = (1, 5, 10, 20),
        mask_history: bool | str = "auto",
        batch_size: int = 256,
        progress: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.ks = sorted(normalize_ks(ks))
        self.mask_history = resolve_mask_history(mask_history, dataset)
        self.batch_size = int(batch_size)
        self.progress = bool(progress)
        self._splits: dict[str, EvalSplit] = {}
        self._popularity: np.ndarray | None = None

    # inputs --------------------------------------------------------------------------
    def split(self, stage: str) -> EvalSplit:
        """The (cached) histories and targets of ``stage``."""
        if stage not in self._splits:
            self._splits[stage] = self.dataset.eval_split(stage)
        return self._splits[stage]

    def popularity(self) -> np.ndarray:
        """Training popularity of every item (cached)."""
        if self._popularity is None:
            self._popularity = self.dataset.item_popularity()
        return self._popularity

    # main entry ----------------------------------------------------------------------
    def evaluate(
        self,
        model: Any,
        stage: str = "test",
        dump_path: str | Path | None = None,
        users: Sequence[int] | np.ndarray | None = None,
        progress: bool | None = None,
    ) -> EvalResult:
        """Evaluate ``model`` (with ``score`` or ``rank``) on ``stage``; optionally dump per-user rows."""
        score = getattr(model, "score", None)
        rank = getattr(model, "rank", None)
        if callable(score):
            return self.evaluate_scores(score, stage, dump_path, users, progress)
        if callable(rank):
            return self.evaluate_ranked(rank, stage, dump_path, users, progress)
        raise TypeError(f"{type(model).__name__} has neither score(histories, users) nor rank(histories, users, k)")

    def evaluate_scores(
        self,
        score_fn: ScoreFn,
        stage: str = "test",
        dump_path: str | Path | None = None,
        users: Sequence[int] | np.ndarray | None = None,
        progress: bool | None = None,
    ) -> EvalResult:
        """Evaluate a ``score(histories, users) -> [B, n_items]`` function."""
        return self._run(stage, dump_path, users, progress, lambda h, u, t: self._score_batch(score_fn, h, u, t))

    def evaluate_ranked(
        self,
        rank_fn: RankFn,
        stage: str = "test",
        dump_path: str | Path | None = None,
        users: Sequence[int] | np.ndarray | None = None,
        progress: bool | None = None,
    ) -> EvalResult:
        """Evaluate a ``rank(histories, users, k) -> ranked lists`` function (k = max(ks))."""
        return self._run(stage, dump_path, users, progress, lambda h, u, t: self._rank_batch(rank_fn, h, u, t))

    # batches -------------------------------------------------------------------------
    def _score_batch(
        self, score_fn: ScoreFn, histories: list[np.ndarray], users: np.ndarray, targets: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Per-user metrics, top lists and expected ranks for one batch of scores."""
        n_items = self.dataset.n_items
        raw = np.asarray(score_fn(histories, users))
        if raw.shape != (len(users), n_items):
            raise ValueError(f"score() must return shape {(len(users), n_items)}, got {raw.shape}")
        dtype = raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.float64
        scores = np.array(raw, dtype=dtype, copy=True)  # never mutate the model's array
        scores[np.isnan(scores)] = -np.inf
        if self.mask_history:
            lens = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
            if lens.sum():
                rows = np.repeat(np.arange(len(users)), lens)
                cols = np.concatenate(histories).astype(np.int64)
                keep = cols != targets[rows]
                scores[rows[keep], cols[keep]] = -np.inf
        greater, ties = ranks_from_scores(scores, targets)
        per_user = metrics_from_rank_range(greater, ties, self.ks)
        top = top_k_from_scores(scores, max(self.ks))
        return per_user, top, expected_rank(greater, ties)

    def _rank_batch(
        self, rank_fn: RankFn, histories: list[np.ndarray], users: np.ndarray, targets: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Per-user metrics, top lists and ranks for one batch of ranked lists."""
        n_items = self.dataset.n_items
        lists = pad_lists(rank_fn(histories, users, max(self.ks)))
        if lists.shape[0] != len(users):
            raise ValueError(f"rank() must return {len(users)} lists, got {lists.shape[0]}")
        if lists.size and (lists.min() < -1 or lists.max() >= n_items):
            raise ValueError(f"rank() returned item indices outside [0, {n_items})")
        if self.mask_history:
            rows = []
            for lst, hist, t in zip(lists, histories, targets, strict=True):
                drop = np.isin(lst, hist) & (lst != t)
                rows.append(lst[(lst >= 0) & ~drop])
            lists = pad_lists(rows)
        per_user = metrics_from_ranked_lists(lists, targets, self.ks)
        return per_user, lists, ranks_from_lists(lists, targets)

    # loop ----------------------------------------------------------------------------
    def _run(
        self,
        stage: str,
        dump_path: str | Path | None,
        users: Sequence[int] | np.ndarray | None,
        progress: bool | None,
        batch_fn: Callable[[list[np.ndarray], np.ndarray, np.ndarray], tuple[dict, np.ndarray, np.ndarray]],
    ) -> EvalResult:
        """Iterate users with a target in batches, accumulate, and build the result."""
        start = time.perf_counter()
        split = self.split(stage)
        n_users, n_items = self.dataset.n_users, self.dataset.n_items
        if users is None:
            chosen = np.arange(n_users, dtype=np.int64)
        else:
            chosen = np.asarray(users, dtype=np.int64).reshape(-1)
            if len(chosen) and (chosen.min() < 0 or chosen.max() >= n_users):
                raise ValueError(f"user indices must lie in [0, {n_users})")
        has_target = split.targets[chosen] >= 0
        todo = chosen[has_target]
        n_skipped = int((~has_target).sum())
        acc = _Accumulator(self.ks, n_items, self.popularity())
        show = (self.progress if progress is None else progress) and sys.stderr.isatty()
        with tqdm(total=len(todo), desc=f"eval {stage}", unit="user", disable=not show) as bar:
            for lo in range(0, len(todo), self.batch_size):
                batch = todo[lo : lo + self.batch_size]
                targets = split.targets[batch]
                histories = [split.histories[u] for u in batch]
                per_user, top, ranks = batch_fn(histories, batch, targets)
                acc.add(per_user, top, batch, targets, ranks, dump=dump_path is not None)
                bar.update(len(batch))
        if dump_path is not None:
            self._write_dump(Path(dump_path), acc.dump_rows)
        return EvalResult(
            metrics=acc.means(n_items),
            n_users=int(len(todo)),
            n_skipped=n_skipped,
            stage=stage,
            seconds=time.perf_counter() - start,
        )

    def _write_dump(self, path: Path, rows: dict[str, list]) -> None:
        """Write the per-user Parquet file atomically (temp file in the same folder, then rename)."""
        def cat(parts: list, dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        user_idx = cat(rows["user_idx"], np.int64)
        table = pa.table(
            {
                "user_idx": pa.array(user_idx, type=pa.int64()),
                "user_id": pa.array(self.dataset.user_ids[user_idx].tolist(), type=pa.string()),
                "target": pa.array(cat(rows["target"], np.int64), type=pa.int64()),
                "rank": pa.array(cat(rows["rank"], np.float64), type=pa.float64()),
                "topk": pa.array(rows["topk"], type=pa.list_(pa.int64())),
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
