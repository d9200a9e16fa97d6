"""Popularity bias and fairness of ranked lists: what a model recommends, and whom it serves well.

Everything is computed from the per-user rows the shared evaluator writes (``{valid,test}_users.parquet``:
``user_idx``, ``target``, ``rank``, ``topk``) and the training split of the dataset, so any run's
stored lists get a report without scoring again. Popularity is an item's number of training
interactions (:meth:`genrec.data.dataset.Dataset.item_popularity`).

Item groups (the Pareto split of the interactions). Items are taken from the most to the least
popular; an item belongs to the group in which the interactions of all *strictly more* popular items
end: **head** while that share is below ``cuts[0]`` (default 0.5), **torso** below ``cuts[1]``
(default 0.8), **tail** after it. So the head is the few most popular items that together hold
half of the interactions, the tail the many items that hold the last 20% (the long tail), items
of equal popularity always share a group, and items never seen in training are tail.

User groups (activity). A user's activity is their number of training interactions; with ``q1``
and ``q2`` the 1/3 and 2/3 quantiles of it over the evaluated users (numpy's ``lower`` method: a
value that occurs), **light** users have at most ``q1``, **medium** at most ``q2``, **heavy** more.
Ties stay together, so the groups need not be thirds; their sizes are reported.

Metrics at each cut-off K (over the evaluated users):

- ``avg_pop@K``: the mean over users of the mean popularity of their top-K items (ARP);
  ``avg_pop_norm@K``: the same with popularity divided by the largest item popularity (0..1);
- ``tail_share@K`` / ``head_share@K``: the mean over users of the share of their top-K items that
  are tail / head items (APLT for the tail);
- ``coverage@K``: the share of the catalogue in at least one user's top-K;
- ``gini@K``: the Gini coefficient of item exposure, the number of top-K lists each catalogue item
  is in (items never recommended count with 0): 0 when every item is shown equally often, ``1 - 1/n``
  when one item takes every slot;
- ``HR@K`` and ``NDCG@K`` by user group and by the popularity group of the target item, from each
  row's ``rank`` (the evaluator's expected rank under random tie-breaking: exact when no tie
  straddles K, which holds for every model without ties in scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from genrec.data.dataset import Dataset
from genrec.errors import DataError
from genrec.evaluate.metrics import normalize_ks

ITEM_GROUPS = ("head", "torso", "tail")
USER_GROUPS = ("light", "medium", "heavy")
DEFAULT_CUTS = (0.5, 0.8)


def gini(x: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative values (0: all equal; ``1 - 1/n``: all on one); 0 for all zeros."""
    v = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))
    if len(v) == 0 or v.sum() == 0:
        return 0.0
    if v[0] < 0:
        raise ValueError("gini: values must be non-negative")
    n = len(v)
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * v) / (n * v.sum()))


def item_groups(popularity: np.ndarray, cuts: tuple[float, float] = DEFAULT_CUTS) -> np.ndarray:
    """[n_items] group of each item (0 head, 1 torso, 2 tail) by the Pareto split described above."""
    lo, hi = cuts
    if not 0 < lo < hi <= 1:
        raise ValueError(f"cuts must satisfy 0 < head < torso <= 1, got {cuts}")
    pop = np.asarray(popularity, dtype=np.float64)
    total = pop.sum()
    if total <= 0:
        return np.full(len(pop), 2, dtype=np.int64)
    levels = np.unique(pop)[::-1]  # descending distinct popularity values
    per_level = np.array([pop[pop == v].sum() for v in levels])
    before = (np.cumsum(per_level) - per_level) / total  # share held by strictly more popular items
    level_group = np.where(before < lo, 0, np.where(before < hi, 1, 2))
    level_group[levels == 0] = 2
    return level_group[np.searchsorted(-levels, -pop)]


def user_groups(activity: np.ndarray) -> np.ndarray:
    """[n] group of each user (0 light, 1 medium, 2 heavy) by activity terciles, ties kept together."""
    a = np.asarray(activity, dtype=np.float64)
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    q1, q2 = np.quantile(a, [1 / 3, 2 / 3], method="lower")
    return np.where(a <= q1, 0, np.where(a <= q2, 1, 2))


def read_rows(path: str | Path) -> dict[str, object]:
    """The per-user rows of an evaluator dump, checked: user_idx, target, rank arrays and topk lists."""
    path = Path(path)
    try:
        table = pq.read_table(path, columns=["user_idx", "target", "rank", "topk"])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(path, None, f"expected per-user rows (user_idx, target, rank, topk) written by the evaluator ({e})") from None
    return {"user_idx": table["user_idx"].to_numpy(), "target": table["target"].to_numpy(),
            "rank": table["rank"].to_numpy(zero_copy_only=False).astype(np.float64), "topk": table["topk"].to_pylist()}


def fairness(dataset: Dataset, rows: dict, ks: Sequence[int] = (10,), cuts: tuple[float, float] = DEFAULT_CUTS) -> dict:
    """The metrics above for one model's per-user ``rows`` (:func:`read_rows`) on ``dataset``.

    Returns ``{"n_users", "ks", "cuts", "overall": {metric@K: value}, "item_groups": {group: {"n_items",
    "interaction_share"}}, "by_user_group": {group: {"n_users", "activity_range", HR@K, NDCG@K}},
    "by_target_group": {group: {"n_users", HR@K, NDCG@K}}}``."""
    ks = normalize_ks(ks)
    n_items = dataset.n_items
    pop = dataset.item_popularity()
    groups = item_groups(pop, cuts)
    users = np.asarray(rows["user_idx"], dtype=np.int64)
    targets = np.asarray(rows["target"], dtype=np.int64)
    rank = np.asarray(rows["rank"], dtype=np.float64)
    lists = rows["topk"]
    if not (len(users) == len(targets) == len(rank) == len(lists)):
        raise ValueError("rows: user_idx, target, rank and topk must have one entry per user")
    if len(users) and (users.min() < 0 or users.max() >= dataset.n_users or targets.min() < 0 or targets.max() >= n_items):
        raise ValueError("rows: user or target index outside the dataset")
    max_len = max((len(x) for x in lists), default=0)
    top = np.full((len(lists), max_len), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        top[r, : len(lst)] = lst
    if top.size and top.max() >= n_items:
        raise ValueError("rows: a recommended item index lies outside the dataset")
    pop_max = pop.max() if len(pop) and pop.max() > 0 else 1.0
    overall: dict[str, float] = {}
    for k in ks:
        head = top[:, :k]
        valid = head >= 0
        safe = np.where(valid, head, 0)
        counts = valid.sum(1)
        has = counts > 0
        item_pop = np.where(valid, pop[safe], 0.0).sum(1)
        for key, total in (("avg_pop", item_pop), ("avg_pop_norm", item_pop / pop_max),
                           ("head_share", (valid & (groups[safe] == 0)).sum(1)), ("tail_share", (valid & (groups[safe] == 2)).sum(1))):
            overall[f"{key}@{k}"] = float(np.mean(total[has] / counts[has])) if has.any() else float("nan")
        exposure = np.bincount(head[valid], minlength=n_items)
        overall[f"coverage@{k}"] = float((exposure > 0).sum() / n_items) if n_items else float("nan")
        overall[f"gini@{k}"] = gini(exposure)
    hit = {k: np.nan_to_num(rank, nan=np.inf) <= k for k in ks}
    ndcg = {k: np.where(hit[k], 1.0 / np.log2(np.where(hit[k], rank, 1.0) + 1.0), 0.0) for k in ks}
    for k in ks:
        overall[f"HR@{k}"] = float(hit[k].mean()) if len(users) else float("nan")
        overall[f"NDCG@{k}"] = float(ndcg[k].mean()) if len(users) else float("nan")

    def by(labels: np.ndarray, names: tuple[str, ...]) -> dict:
        out = {}
        for g, name in enumerate(names):
            sel = labels == g
            cell: dict = {"n_users": int(sel.sum())}
            for k in ks:
                cell[f"HR@{k}"] = float(hit[k][sel].mean()) if sel.any() else float("nan")
                cell[f"NDCG@{k}"] = float(ndcg[k][sel].mean()) if sel.any() else float("nan")
            out[name] = cell
        return out

    activity = dataset.lengths()[users] - 2  # training interactions: all but the validation and test items
    activity = np.maximum(activity, 0)
    ugroup = user_groups(activity)
    by_user = by(ugroup, USER_GROUPS)
    for g, name in enumerate(USER_GROUPS):
        sel = ugroup == g
        by_user[name]["activity_range"] = [int(activity[sel].min()), int(activity[sel].max())] if sel.any() else None
    total = pop.sum() or 1.0
    return {
        "n_users": int(len(users)),
        "ks": ks,
        "cuts": list(cuts),
        "overall": overall,
        "item_groups": {name: {"n_items": int((groups == g).sum()), "interaction_share": float(pop[groups == g].sum() / total)}
                        for g, name in enumerate(ITEM_GROUPS)},
        "by_user_group": by_user,
        "by_target_group": by(groups[targets], ITEM_GROUPS),
    }


def fairness_markdown(results: list[tuple[str, dict]], k: int = 10) -> list[str]:
    """Markdown tables of several models' :func:`fairness` results (one row per model) at cut-off ``k``."""
    if not results:
        return []
    first = results[0][1]
    groups = ", ".join(f"{g} {v['n_items']:,} items ({v['interaction_share']:.0%} of interactions)"
                       for g, v in first["item_groups"].items())
    users = ", ".join(f"{g} {v['n_users']:,} users ({v['activity_range'][0]}-{v['activity_range'][1]} training items)"
                      for g, v in first["by_user_group"].items() if v["activity_range"] is not None)
    lines = [f"Item groups (Pareto split of the training interactions at {first['cuts'][0]:.0%} / {first['cuts'][1]:.0%}): "
             f"{groups}. User groups (activity terciles): {users}. Target items: "
             + ", ".join(f"{g} {v['n_users']:,}" for g, v in first["by_target_group"].items()) + ".", "",
             f"| model | avg pop@{k} | avg pop norm@{k} | head share@{k} | tail share@{k} | coverage@{k} | Gini@{k} |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results:
        o = r["overall"]
        lines.append(f"| {name} | {o[f'avg_pop@{k}']:.1f} | {o[f'avg_pop_norm@{k}']:.4f} | {o[f'head_share@{k}']:.4f} | "
                     f"{o[f'tail_share@{k}']:.4f} | {o[f'coverage@{k}']:.4f} | {o[f'gini@{k}']:.4f} |")
    for key, names, what in (("by_user_group", USER_GROUPS, "user activity"), ("by_target_group", ITEM_GROUPS, "target item popularity")):
        lines += ["", f"HR@{k} / NDCG@{k} by {what}:", "",
                  "| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for name, r in results:
            cells = [r[key][g] for g in names]
            lines.append(f"| {name} | " + " | ".join(
                "–" if c["n_users"] == 0 else f"{c[f'HR@{k}']:.4f} / {c[f'NDCG@{k}']:.4f}" for c in cells) + " |")
    return lines
