"""Popularity bias and fairness metrics against hand-computed values and a slow per-user loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.dataset import Dataset
from genrec.evaluate.fairness import fairness, gini, item_groups, read_rows, user_groups


def test_gini_of_known_vectors():
    assert gini([3, 3, 3, 3]) == 0.0
    assert gini([0, 0, 0, 5]) == pytest.approx(3 / 4)  # one item takes every slot: 1 - 1/n
    # [1, 2, 3]: mean absolute difference over all ordered pairs / (2 * mean) = (8/9) / (2 * 2) = 2/9
    assert gini([2, 3, 1]) == pytest.approx(2 / 9)
    assert gini([0, 0]) == 0.0
    with pytest.raises(ValueError):
        gini([-1, 2])


def test_gini_matches_the_pairwise_definition():
    x = np.random.default_rng(0).integers(0, 20, 37).astype(float)
    pairwise = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(pairwise)


def test_item_groups_pareto_split_by_hand():
    # 100 interactions; from the most popular: 40 (before 0), 30 (before .40), 10, 10 (before .70), 5, 5 (before .90), 0
    pop = np.array([10, 40, 5, 30, 10, 0, 5])
    # head: share before < .5 -> 40 and 30; torso: before < .8 -> both 10s (ties share a group); tail: the 5s and the unseen item
    assert item_groups(pop, (0.5, 0.8)).tolist() == [1, 0, 2, 0, 1, 2, 2]
    assert item_groups(np.zeros(3)).tolist() == [2, 2, 2]
    with pytest.raises(ValueError):
        item_groups(pop, (0.8, 0.5))


def test_user_groups_terciles_keep_ties_together():
    a = np.array([3, 3, 3, 4, 5, 9])  # lower 1/3 quantile: 3, lower 2/3 quantile: 4
    assert user_groups(a).tolist() == [0, 0, 0, 1, 2, 2]


def tiny_dataset() -> Dataset:
    """5 items, 4 users; training parts (all but the last two items of each sequence) give popularity
    item 0: 4, item 1: 3, item 2: 1, items 3 and 4: 0."""
    seqs = {0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 4], 2: [0, 1, 3, 2], 3: [0, 2, 3]}
    rows = [(u, i, t) for u, s in seqs.items() for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(5)], "title": [""] * 5, "description": [""] * 5})
    return Dataset(items, np.array(["a", "b", "c", "d"]), inter)


def slow_fairness(ds: Dataset, users, targets, ranks, lists, k: int, groups, ugroups) -> dict:
    pop = ds.item_popularity()
    out = {"avg_pop": 0.0, "tail": 0.0, "exposure": [0] * ds.n_items}
    for lst in lists:
        top = lst[:k]
        out["avg_pop"] += sum(pop[i] for i in top) / len(top) / len(lists)
        out["tail"] += sum(1 for i in top if groups[i] == 2) / len(top) / len(lists)
        for i in top:
            out["exposure"][i] += 1
    out["coverage"] = sum(1 for e in out["exposure"] if e > 0) / ds.n_items
    for name, labels in (("user", ugroups), ("target", [groups[t] for t in targets])):
        for g in range(3):
            hits = [1.0 if r <= k else 0.0 for r, lab in zip(ranks, labels, strict=True) if lab == g]
            gains = [1 / math.log2(r + 1) if r <= k else 0.0 for r, lab in zip(ranks, labels, strict=True) if lab == g]
            out[f"{name}{g}"] = (sum(hits) / len(hits), sum(gains) / len(gains)) if hits else None
    return out


def test_fairness_on_a_tiny_case_by_hand_and_by_a_slow_loop(tmp_path):
    ds = tiny_dataset()
    assert ds.item_popularity().tolist() == [4, 3, 1, 0, 0]
    lists = [[0, 1], [0, 3], [4, 2], [0, 1]]
    targets = [4, 4, 2, 3]
    ranks = [math.nan, math.nan, 2.0, math.nan]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"user_idx": [0, 1, 2, 3], "user_id": list("abcd"), "target": targets, "rank": ranks,
                             "topk": pa.array(lists, type=pa.list_(pa.int64()))}), path)
    res = fairness(ds, read_rows(path), ks=(2,), cuts=(0.5, 0.8))
    o = res["overall"]
    # groups (8 interactions): item 0 head (before 0), item 1 torso (before 4/8 = .5, not below .5), item 2 tail
    # (before 7/8), items 3 and 4 unseen: tail
    assert res["item_groups"]["head"]["n_items"] == 1 and res["item_groups"]["tail"]["n_items"] == 3
    # mean list popularity: (4+3)/2, (4+0)/2, (0+1)/2, (4+3)/2 -> mean 2.375; normalised by the max 4
    assert o["avg_pop@2"] == pytest.approx(2.375) and o["avg_pop_norm@2"] == pytest.approx(2.375 / 4)
    # tail items per list: 0, 1 (item 3), 2 (items 4, 2), 0 -> shares 0, .5, 1, 0; head (item 0): .5, .5, 0, .5
    assert o["tail_share@2"] == pytest.approx(0.375) and o["head_share@2"] == pytest.approx(0.375)
    # exposure [3, 2, 1, 1, 1] over 5 items: all covered; Gini by hand: sorted [1,1,1,2,3], sum 8
    assert o["coverage@2"] == 1.0
    assert o["gini@2"] == pytest.approx(sum((2 * i - 6) * v for i, v in enumerate([1, 1, 1, 2, 3], 1)) / (5 * 8))
    # only user 2 hits (rank 2): HR .25, NDCG 1/log2(3)/4
    assert o["HR@2"] == 0.25 and o["NDCG@2"] == pytest.approx(1 / math.log2(3) / 4)
    # target groups: 4 tail, 4 tail, 2 tail, 3 tail -> every user in tail
    assert res["by_target_group"]["tail"]["n_users"] == 4 and res["by_target_group"]["head"]["n_users"] == 0
    assert math.isnan(res["by_target_group"]["head"]["HR@2"])
    # activity (training items): 3, 2, 2, 1; sorted 1, 2, 2, 3: the lower 1/3 and 2/3 quantiles (positions 1 and 2)
    # are both 2 -> light: users 1, 2, 3; medium: none; heavy: user 0
    assert {g: v["n_users"] for g, v in res["by_user_group"].items()} == {"light": 3, "medium": 0, "heavy": 1}
    assert res["by_user_group"]["light"]["HR@2"] == pytest.approx(1 / 3)
    assert res["by_user_group"]["heavy"]["activity_range"] == [3, 3]
    slow = slow_fairness(ds, [0, 1, 2, 3], targets, ranks, lists, 2, item_groups(ds.item_popularity(), (0.5, 0.8)),
                         [2, 0, 0, 0])
    assert o["avg_pop@2"] == pytest.approx(slow["avg_pop"]) and o["tail_share@2"] == pytest.approx(slow["tail"])
    assert o["gini@2"] == pytest.approx(gini(slow["exposure"]))


def test_group_metrics_match_a_slow_loop_on_random_rows():
    rng = np.random.default_rng(3)
    n_users, n_items = 60, 25
    seqs = [rng.choice(n_items, size=rng.integers(3, 12), replace=False) for _ in range(n_users)]
    rows = [(u, int(i), t) for u, s in enumerate(seqs) for t, i in enumerate(s)]
    items = pd.DataFrame({"item_id": [str(i) for i in range(n_items)], "title": "", "description": ""})
    ds = Dataset(items, np.array([str(u) for u in range(n_users)]),
                 pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]))
    users = np.arange(n_users)
    targets = np.array([s[-1] for s in seqs])
    lists = [rng.choice(n_items, size=10, replace=False).tolist() for _ in users]
    ranks = np.array([lst.index(t) + 1.0 if t in lst else np.nan for lst, t in zip(lists, targets, strict=True)])
    res = fairness(ds, {"user_idx": users, "target": targets, "rank": ranks, "topk": lists}, ks=(5,))
    groups = item_groups(ds.item_popularity())
    ugroups = user_groups(np.array([len(s) - 2 for s in seqs]))
    slow = slow_fairness(ds, users, targets, ranks, lists, 5, groups, ugroups)
    o = res["overall"]
    assert o["avg_pop@5"] == pytest.approx(slow["avg_pop"]) and o["tail_share@5"] == pytest.approx(slow["tail"])
    assert o["coverage@5"] == pytest.approx(slow["coverage"])
    for g, name in enumerate(("light", "medium", "heavy")):
        cell = res["by_user_group"][name]
        assert (cell["HR@5"], cell["NDCG@5"]) == pytest.approx(slow[f"user{g}"]) if slow[f"user{g}"] else cell["n_users"] == 0
    for g, name in enumerate(("head", "torso", "tail")):
        cell = res["by_target_group"][name]
        assert (cell["HR@5"], cell["NDCG@5"]) == pytest.approx(slow[f"target{g}"]) if slow[f"target{g}"] else cell["n_users"] == 0


def test_rows_that_are_not_an_evaluator_dump_are_refused(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user_idx": [0]}), bad)
    with pytest.raises(Exception, match="expected per-user rows"):
        read_rows(bad)
    with pytest.raises(ValueError, match="outside the dataset"):
        fairness(tiny_dataset(), {"user_idx": [0], "target": [9], "rank": [1.0], "topk": [[0]]})


def test_report_has_a_fairness_section_for_runs_with_ranked_lists(tmp_path, cli):
    ds = tiny_dataset()
    run = tmp_path / "run"
    ds.save(run / "data")
    (run / "data" / "manifest.json").write_text(json.dumps({"stage": "data", "config": {}, "metrics": {}}))
    (run / "baselines" / "pop").mkdir(parents=True)
    m = {"HR@1": 0.0, "HR@5": 0.25, "HR@10": 0.25, "NDCG@5": 0.1, "NDCG@10": 0.1}
    (run / "baselines" / "pop" / "metrics.json").write_text(json.dumps({"test": {"metrics": m}}))
    pq.write_table(pa.table({"user_idx": [0, 1, 2, 3], "user_id": list("abcd"), "target": [4, 4, 2, 3],
                             "rank": [math.nan, math.nan, 2.0, math.nan],
                             "topk": pa.array([[0, 1], [0, 3], [4, 2], [0, 1]], type=pa.list_(pa.int64()))}),
                   run / "baselines" / "pop" / "test_users.parquet")
    code, _, err = cli("report", run, "--out", tmp_path / "rep")
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Bias and fairness" in text
    # lists of 2 items: @10 is the whole list (as the tiny-case test at K = 2)
    assert "| Pop | 2.4 | 0.5938 | 0.3750 | 0.3750 | 1.0000 |" in text
    saved = json.loads((tmp_path / "rep" / "fairness.json").read_text())
    assert saved["run"]["Pop"]["overall"]["tail_share@10"] == pytest.approx(0.375)


def test_evaluate_fairness_option_reads_the_decoded_lists(recipe_run, cli):
    """`genrec evaluate --fairness` without --out: the lists go through a temporary dump; its overall HR/NDCG
    agree with the evaluator's own (no tie in a ranked list)."""
    code, out, err = cli("evaluate", "--model", recipe_run / "model", "--index", recipe_run / "index", "--data",
                         recipe_run / "data", "--users", 12, "--beams", 5, "--fairness", "--json")
    assert code == 0, err
    res = json.loads(out)
    fair = res["fairness"]
    assert fair["n_users"] == res["n_users"]
    for k in (1, 5, 10, 20):
        assert fair["overall"][f"HR@{k}"] == pytest.approx(res["metrics"][f"HR@{k}"])
        assert fair["overall"][f"NDCG@{k}"] == pytest.approx(res["metrics"][f"NDCG@{k}"])
        assert fair["overall"][f"coverage@{k}"] == pytest.approx(res["metrics"][f"coverage@{k}"])
        assert fair["overall"][f"avg_pop@{k}"] == pytest.approx(res["metrics"][f"avg_pop@{k}"])
    assert sum(g["n_users"] for g in fair["by_user_group"].values()) == res["n_users"]
