"""Metrics and the evaluation protocol, checked against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data.dataset import Dataset
from genrec.evaluate import (
    EvalResult,
    Evaluator,
    expected_rank,
    metrics_from_rank_range,
    metrics_from_ranked_lists,
    ranks_from_scores,
    top_k_from_scores,
)

L2 = math.log2

# 5-item catalogue, 3 users.
#   user 0: target 2 has the top score                     -> rank 1
#   user 1: target 4 (0.6) is beaten by items 1 (0.9), 3 (0.7) -> rank 3
#   user 2: target 0 (0.5) is beaten by item 2 (0.9) and tied with items 1 and 3
#           -> greater = 1, ties = 2, rank uniform over {2, 3, 4}
SCORES = np.array(
    [
        [0.1, 0.2, 0.9, 0.3, 0.4],
        [0.5, 0.9, 0.1, 0.7, 0.6],
        [0.5, 0.5, 0.9, 0.5, 0.1],
    ]
)
TARGETS = np.array([2, 4, 0])


def test_ranks_from_scores_counts_greater_and_ties():
    greater, ties = ranks_from_scores(SCORES, TARGETS)
    assert greater.tolist() == [0, 2, 1]
    assert ties.tolist() == [0, 0, 2]
    # expected rank = greater + 1 + ties / 2: 1, 3, 1 + 1 + 1 = 3
    assert expected_rank(greater, ties).tolist() == [1.0, 3.0, 3.0]


def test_hand_computed_metrics_with_tie_range():
    g, t = ranks_from_scores(SCORES, TARGETS)
    m = metrics_from_rank_range(g, t, ks=(1, 3, 5, 10))
    # HR@1: user 0 -> 1; user 1 -> 0; user 2 -> P(rank <= 1) = 0
    assert m["HR@1"].tolist() == [1.0, 0.0, 0.0]
    # HR@3: user 1 rank 3 -> 1; user 2 -> P(rank in {2, 3}) = 2/3
    np.testing.assert_allclose(m["HR@3"], [1.0, 1.0, 2 / 3])
    # HR@5: everyone is within the 5-item catalogue
    np.testing.assert_allclose(m["HR@5"], [1.0, 1.0, 1.0])
    # NDCG@1: only user 0 (1 / log2(2) = 1)
    np.testing.assert_allclose(m["NDCG@1"], [1.0, 0.0, 0.0])
    # NDCG@3: user 1 -> 1/log2(4) = 0.5; user 2 -> (1/log2(3) + 1/log2(4) + 0) / 3
    np.testing.assert_allclose(m["NDCG@3"], [1.0, 0.5, (1 / L2(3) + 1 / L2(4)) / 3])
    # NDCG@5: user 2 -> (1/log2(3) + 1/log2(4) + 1/log2(5)) / 3 = (0.6309298 + 0.5 + 0.4306766) / 3 = 1.5616064 / 3
    ndcg5_u2 = (1 / L2(3) + 1 / L2(4) + 1 / L2(5)) / 3
    np.testing.assert_allclose(m["NDCG@5"], [1.0, 0.5, ndcg5_u2])
    assert ndcg5_u2 == pytest.approx(0.5205355, abs=1e-7)
    # MRR: 1, 1/3, (1/2 + 1/3 + 1/4) / 3 = (13/12) / 3 = 13/36
    np.testing.assert_allclose(m["MRR"], [1.0, 1 / 3, 13 / 36])
    # means: HR@1 = 1/3, MRR = (1 + 1/3 + 13/36) / 3 = 61/108
    assert m["HR@1"].mean() == pytest.approx(1 / 3)
    assert m["MRR"].mean() == pytest.approx(61 / 108)
    # K = 10 > 5 items: HR is 1 for everyone, NDCG equals NDCG@5
    np.testing.assert_allclose(m["HR@10"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(m["NDCG@10"], m["NDCG@5"])


def test_constant_scorer_gets_k_over_n():
    n = 5
    scores = np.zeros((3, n))
    g, t = ranks_from_scores(scores, np.array([0, 2, 4]))
    assert g.tolist() == [0, 0, 0] and t.tolist() == [4, 4, 4]
    m = metrics_from_rank_range(g, t, ks=(1, 2, 3, 4, 5, 7))
    for k in (1, 2, 3, 4, 5):
        np.testing.assert_allclose(m[f"HR@{k}"], k / n)  # never an optimistic 1.0
    np.testing.assert_allclose(m["HR@7"], 1.0)
    # MRR = (1 + 1/2 + 1/3 + 1/4 + 1/5) / 5 = (137/60) / 5
    np.testing.assert_allclose(m["MRR"], 137 / 300)


def test_constant_scorer_large_catalogue_is_exact_and_fast():
    n = 100_000
    g, t = ranks_from_scores(np.ones((4, n), dtype=np.float32), np.array([0, 1, 50_000, n - 1]))
    m = metrics_from_rank_range(g, t, ks=(10, 20))
    np.testing.assert_allclose(m["HR@10"], 10 / n)
    np.testing.assert_allclose(m["HR@20"], 20 / n)
    harmonic = np.sum(1.0 / np.arange(1, n + 1))
    np.testing.assert_allclose(m["MRR"], harmonic / n, rtol=1e-12)


def test_nan_is_minus_inf_and_masked_items_do_not_tie():
    scores = np.array([[np.nan, 1.0, -np.inf, 0.5], [np.nan, 1.0, -np.inf, 0.5]])
    g, t = ranks_from_scores(scores, np.array([3, 2]))
    # row 0: target 0.5, only item 1 above; the NaN and -inf items do not tie with it
    # row 1: target itself at -inf: items 1, 3 above, the NaN item (as -inf) ties with it
    assert g.tolist() == [1, 2]
    assert t.tolist() == [0, 1]


def test_ranked_lists_match_equivalent_scores_without_ties():
    scores = np.array(
        [
            [0.1, 0.2, 0.9, 0.3, 0.4],
            [0.5, 0.9, 0.1, 0.7, 0.6],
            [0.8, 0.5, 0.9, 0.4, 0.1],
        ]
    )
    targets = np.array([2, 4, 3])
    ks = (1, 2, 5, 10)
    lists = [list(np.argsort(-row)) for row in scores]
    from_lists = metrics_from_ranked_lists(lists, targets, ks)
    from_scores = metrics_from_rank_range(*ranks_from_scores(scores, targets), ks)
    assert from_lists.keys() == from_scores.keys()
    for key in from_scores:
        np.testing.assert_allclose(from_lists[key], from_scores[key], err_msg=key)


def test_ranked_lists_absent_target_and_short_lists():
    # padded array form: user 0 list [3, 1], target 1 -> rank 2; user 1 target absent -> 0
    lists = np.array([[3, 1], [0, -1]])
    m = metrics_from_ranked_lists(lists, np.array([1, 4]), ks=(1, 5))
    np.testing.assert_allclose(m["HR@1"], [0.0, 0.0])
    np.testing.assert_allclose(m["HR@5"], [1.0, 0.0])  # K larger than the list is fine
    np.testing.assert_allclose(m["NDCG@5"], [1 / L2(3), 0.0])
    np.testing.assert_allclose(m["MRR"], [0.5, 0.0])
    # ragged list-of-lists form, including an empty list
    m2 = metrics_from_ranked_lists([[3, 1], []], np.array([1, 4]), ks=(1, 5))
    for key in m:
        np.testing.assert_allclose(m2[key], m[key])


def test_top_k_breaks_ties_by_lower_index_and_skips_masked():
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [-np.inf, 1.0, np.nan, -np.inf, 3.0]])
    top = top_k_from_scores(scores, 2)
    assert top.tolist() == [[1, 2], [0, 1], [4, 1]]
    top4 = top_k_from_scores(scores, 4)
    assert top4.tolist() == [[1, 2, 3, 0], [0, 1, 2, 3], [4, 1, -1, -1]]
    assert top_k_from_scores(scores, 50).shape == (3, 5)  # K beyond the catalogue
    big = np.zeros((2, 10_000))
    big[1, 9_999] = 1.0
    assert top_k_from_scores(big, 3).tolist() == [[0, 1, 2], [9_999, 0, 1]]


def _brute_force(scores: list[int], target: int, ks: list[int]) -> dict[str, float]:
    """Average the metrics over every tie-break order (all permutations of item priorities)."""
    n = len(scores)
    totals = {**{f"HR@{k}": 0.0 for k in ks}, **{f"NDCG@{k}": 0.0 for k in ks}, "MRR": 0.0}
    perms = list(itertools.permutations(range(n)))
    for prio in perms:
        order = sorted(range(n), key=lambda i: (-scores[i], prio[i]))
        rank = order.index(target) + 1
        for k in ks:
            totals[f"HR@{k}"] += float(rank <= k)
            totals[f"NDCG@{k}"] += (1 / math.log2(rank + 1)) if rank <= k else 0.0
        totals["MRR"] += 1 / rank
    return {key: v / len(perms) for key, v in totals.items()}


@settings(max_examples=60, deadline=None)
@given(
    data=st.integers(1, 6).flatmap(
        lambda n: st.tuples(st.lists(st.integers(0, 3), min_size=n, max_size=n), st.integers(0, n - 1))
    ),
    ks=st.lists(st.integers(1, 8), min_size=1, max_size=4, unique=True),
)
def test_rank_range_matches_brute_force(data, ks):
    scores, target = data
    g, t = ranks_from_scores(np.array([scores], dtype=float), np.array([target]))
    fast = metrics_from_rank_range(g, t, ks)
    slow = _brute_force(scores, target, ks)
    for key, value in slow.items():
        assert fast[key][0] == pytest.approx(value, abs=1e-12), key


# --- Evaluator on a tiny hand-built dataset ---------------------------------------------
#   user 'a' (0): [0, 1, 2, 3] -> test target 3, history [0, 1, 2], train [0, 1]
#   user 'b' (1): [4, 2, 4]    -> test target 4, history [4, 2],    train [4]
#   user 'c' (2): [0]          -> test target 0, history [],        train []
#   user 'd' (3): no items     -> no target, skipped
# training popularity: item 0 -> 1, item 1 -> 1, item 4 -> 1, others 0 => [1, 1, 0, 0, 1]
STATIC = np.array([1.0, 5.0, 4.0, 2.0, 3.0])  # order: 1 > 2 > 4 > 3 > 0
STATIC_ORDER = [1, 2, 4, 3, 0]


def _dataset() -> Dataset:
    items = pd.DataFrame({"title": [f"item {i}" for i in range(5)]})
    seqs = {0: [0, 1, 2, 3], 1: [4, 2, 4], 2: [0]}
    rows = [(u, i, t) for u, s in seqs.items() for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    return Dataset(items, np.array(["a", "b", "c", "d"]), inter)


class StaticScorer:
    """Same scores for every user."""

    def score(self, histories, users):
        return np.tile(STATIC, (len(users), 1))


class StaticRanker:
    """Same ranked list for every user, cut to k."""

    def rank(self, histories, users, k):
        return [STATIC_ORDER[:k] for _ in users]


def test_dataset_fixture_is_as_documented():
    ds = _dataset()
    assert ds.item_popularity().tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert ds.eval_split("test").targets.tolist() == [3, 4, 0, -1]


@pytest.mark.parametrize("model", [StaticScorer(), StaticRanker()])
def test_evaluator_without_masking(model, tmp_path):
    ev = Evaluator(_dataset(), ks=(1, 2, 5), batch_size=2, progress=False)
    res = ev.evaluate(model, dump_path=tmp_path / "out" / "test.parquet")
    assert isinstance(res, EvalResult)
    assert (res.n_users, res.n_skipped, res.stage) == (3, 1, "test")
    m = res.metrics
    # ranks: user a target 3 -> 4th; user b target 4 -> 3rd; user c target 0 -> 5th
    assert m["HR@1"] == 0.0 and m["HR@2"] == 0.0 and m["HR@5"] == 1.0
    assert m["NDCG@5"] == pytest.approx((1 / L2(5) + 1 / L2(4) + 1 / L2(6)) / 3)
    assert m["MRR"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 5) / 3)
    # everyone's top list is [1, 2, 4, 3, 0]
    assert m["coverage@1"] == pytest.approx(1 / 5)
    assert m["coverage@2"] == pytest.approx(2 / 5)
    assert m["coverage@5"] == pytest.approx(1.0)
    # avg_pop@1 = pop[1] = 1; @2 = (1 + 0) / 2; @5 = (1 + 0 + 1 + 0 + 1) / 5
    assert m["avg_pop@1"] == pytest.approx(1.0)
    assert m["avg_pop@2"] == pytest.approx(0.5)
    assert m["avg_pop@5"] == pytest.approx(0.6)

    dump = pq.read_table(tmp_path / "out" / "test.parquet").to_pandas()
    assert len(dump) == res.n_users == 3
    assert dump["user_idx"].tolist() == [0, 1, 2]
    assert dump["user_id"].tolist() == ["a", "b", "c"]
    assert dump["target"].tolist() == [3, 4, 0]
    assert dump["rank"].tolist() == [4.0, 3.0, 5.0]
    assert [list(x) for x in dump["topk"]] == [STATIC_ORDER] * 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["test.parquet"]  # no temp left over


@pytest.mark.parametrize("model", [StaticScorer(), StaticRanker()])
def test_evaluator_mask_history_changes_ranks(model):
    ev = Evaluator(_dataset(), ks=(1, 2, 5), mask_history=True, batch_size=2, progress=False)
    m = ev.evaluate(model).metrics
    # user a: items 0, 1, 2 masked -> remaining 4 (3.0) > 3 (2.0): target 3 is 2nd, top [4, 3]
    # user b: item 2 masked, item 4 is the target so kept -> 1 > 4 > 3 > 0: target 4 is 2nd
    # user c: nothing to mask -> target 0 still 5th
    assert m["HR@1"] == 0.0
    assert m["HR@2"] == pytest.approx(2 / 3)
    assert m["NDCG@2"] == pytest.approx(2 / L2(3) / 3)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 5) / 3)
    # top-1: {4, 1, 1}; top-2: {4, 3} | {1, 4} | {1, 2} = {1, 2, 3, 4}; top-5: all items
    assert m["coverage@1"] == pytest.approx(2 / 5)
    assert m["coverage@2"] == pytest.approx(4 / 5)
    assert m["coverage@5"] == pytest.approx(1.0)
    # avg_pop@2: a [4, 3] -> (1 + 0) / 2 = 0.5; b [1, 4] -> 1; c [1, 2] -> 0.5 => 2/3
    # avg_pop@5: a [4, 3] -> 0.5; b [1, 4, 3, 0] -> 0.75; c all -> 0.6 => 1.85 / 3
    assert m["avg_pop@1"] == pytest.approx(1.0)
    assert m["avg_pop@2"] == pytest.approx(2 / 3)
    assert m["avg_pop@5"] == pytest.approx(1.85 / 3)


def test_evaluator_user_subset_and_skips():
    ev = Evaluator(_dataset(), ks=(1, 5), progress=False)
    res = ev.evaluate(StaticScorer(), users=[2, 3])
    assert (res.n_users, res.n_skipped) == (1, 1)  # user d has no target and is not in the mean
    assert res.metrics["HR@5"] == 1.0 and res.metrics["MRR"] == pytest.approx(1 / 5)


def test_ranked_dump_has_nan_rank_for_missing_target(tmp_path):
    ev = Evaluator(_dataset(), ks=(1, 2), progress=False)
    res = ev.evaluate(StaticRanker(), stage="valid", dump_path=tmp_path / "valid.parquet")
    # valid targets: a -> 2, b -> 2, c and d have fewer than 2 items (skipped)
    assert (res.n_users, res.n_skipped, res.stage) == (2, 2, "valid")
    dump = pq.read_table(tmp_path / "valid.parquet").to_pandas()
    assert dump["rank"].tolist() == [2.0, 2.0]
    res_c = ev.evaluate(StaticRanker(), dump_path=tmp_path / "t.parquet", users=[2])
    assert res_c.metrics["HR@2"] == 0.0
    assert np.isnan(pq.read_table(tmp_path / "t.parquet").to_pandas()["rank"][0])


def test_score_preferred_and_bad_models_rejected():
    class Both(StaticScorer, StaticRanker):
        pass

    ev = Evaluator(_dataset(), ks=(5,), progress=False)
    # via score, the MRR is over the full ranking; the ranker would give the same here
    assert ev.evaluate(Both()).metrics["MRR"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 5) / 3)
    with pytest.raises(TypeError):
        ev.evaluate(object())

    class WrongShape:
        def score(self, histories, users):
            return np.zeros((len(users), 3))

    with pytest.raises(ValueError):
        ev.evaluate(WrongShape())


def test_result_table_and_dict():
    res = Evaluator(_dataset(), ks=(1, 5), progress=False).evaluate(StaticScorer())
    text = res.table()
    lines = text.splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == ["HR", "NDCG", "coverage", "avg_pop", "MRR"]
    assert "@1" in lines[1] and "@5" in lines[1]
    d = res.to_dict()
    assert d["n_users"] == 3 and d["metrics"]["HR@5"] == 1.0


def _dedup_dataset() -> Dataset:
    """The fixture without its repeat: user b is [4, 2, 3] (test target 3, history [4, 2])."""
    items = pd.DataFrame({"title": [f"item {i}" for i in range(5)]})
    seqs = {0: [0, 1, 2, 3], 1: [4, 2, 3], 2: [0]}
    rows = [(u, i, t) for u, s in seqs.items() for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    return Dataset(items, np.array(["a", "b", "c", "d"]), inter)


@pytest.mark.parametrize("model", [StaticScorer(), StaticRanker()])
def test_mask_history_auto_masks_deduplicated_data_only(model):
    assert _dataset().has_repeats() and not _dedup_dataset().has_repeats()
    # the fixture repeats item 4 for user b: auto leaves the history in (ranks 4, 3, 5 as unmasked)
    assert not Evaluator(_dataset(), progress=False).mask_history
    assert Evaluator(_dataset(), ks=(5,), progress=False).evaluate(model).metrics["MRR"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 5) / 3)
    # deduplicated: auto masks. order 1 > 2 > 4 > 3 > 0
    #   a: history [0, 1, 2] masked -> [4, 3]: target 3 is 2nd
    #   b: history [4, 2] masked -> [1, 3, 0]: target 3 is 2nd
    #   c: no history -> target 0 is 5th
    ev = Evaluator(_dedup_dataset(), ks=(1, 2, 5), progress=False)
    assert ev.mask_history
    m = ev.evaluate(model).metrics
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 5) / 3)
    assert m["HR@2"] == pytest.approx(2 / 3)
    # explicit settings win over auto
    assert not Evaluator(_dedup_dataset(), mask_history=False, progress=False).mask_history
    with pytest.raises(ValueError, match="mask_history"):
        Evaluator(_dedup_dataset(), mask_history="yes", progress=False)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_masking_removes_history_items_only_and_never_the_target(data):
    """Any ranked list: masking keeps, in order, every item that is not in the history, and the
    target always; the masked list's metrics equal those of that list computed by hand."""
    n_items = 12
    lists = data.draw(st.lists(st.permutations(range(n_items)).map(lambda p: p[:8]), min_size=3, max_size=3))
    hists = data.draw(st.lists(st.lists(st.integers(0, n_items - 1), max_size=6), min_size=3, max_size=3))
    targets = np.array(data.draw(st.lists(st.integers(0, n_items - 1), min_size=3, max_size=3)))

    class Ranker:
        def rank(self, histories, users, k):
            return [lists[int(u)][:k] for u in users]

    items = pd.DataFrame({"title": [f"item {i}" for i in range(n_items)]})
    inter = pd.DataFrame([(u, i, i) for u in range(3) for i in range(3)], columns=["user_idx", "item_idx", "timestamp"])
    ev = Evaluator(Dataset(items, np.array(["a", "b", "c"]), inter), ks=(1, 5, 8), mask_history=True, progress=False)
    lists_kept = []
    for lst, h, t in zip(lists, hists, targets, strict=True):
        kept = [i for i in lst if i not in set(h) or i == t]
        lists_kept.append(kept)
        if t in lst:
            assert t in kept
    per_user, _, _ = ev._rank_batch(Ranker().rank, [np.array(h, dtype=np.int64) for h in hists], np.arange(3), targets)
    for u, kept in enumerate(lists_kept):
        rank = kept.index(targets[u]) + 1 if targets[u] in kept else None
        for k in (1, 5, 8):
            hit = rank is not None and rank <= k
            assert per_user[f"HR@{k}"][u] == float(hit)
            assert per_user[f"NDCG@{k}"][u] == pytest.approx(1 / math.log2(rank + 1) if hit else 0.0)
