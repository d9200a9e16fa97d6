"""Filter-then-rerank: the fused order by hand, the shortlist, and the weight picked on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.data.loaders import load_raw
from genrec.data.preprocess import PrepareConfig, preprocess
from genrec.data.synth import SynthConfig, write
from genrec.decode.rerank import FusedRanker, Shortlists, pick_weight, shortlist
from genrec.errors import GenrecError
from genrec.evaluate import Evaluator


def test_fused_order_by_hand():
    # one user, shortlist [7, 3, 5] in the classic order, then the tail [9]
    base = np.array([[2.0, 1.0, 0.0]])
    llm = np.array([[-3.0, -1.0, -2.0]])  # the LLM prefers 3, then 5, then 7
    short = Shortlists(np.array([0]), np.array([[7, 3, 5, 9]]), base, llm)
    assert FusedRanker(short, 0.0).rank(None, np.array([0]), 4)[0].tolist() == [7, 3, 5, 9]
    assert FusedRanker(short, 1.0).rank(None, np.array([0]), 4)[0].tolist() == [3, 5, 7, 9]
    # w = 0.5: log-softmax of each row, by hand
    lb = [x - math.log(sum(math.exp(y) for y in base[0])) for x in base[0]]
    ll = [x - math.log(sum(math.exp(y) for y in llm[0])) for x in llm[0]]
    fused = [0.5 * a + 0.5 * b for a, b in zip(lb, ll, strict=True)]  # 7: -1.11, 3: -0.61, 5: -1.61
    expect = [int(i) for _, i in sorted(zip(fused, [7, 3, 5], strict=True), key=lambda x: -x[0])]
    assert FusedRanker(short, 0.5).rank(None, np.array([0]), 3)[0].tolist() == expect == [3, 7, 5]
    with pytest.raises(GenrecError, match="in \\[0, 1\\]"):
        FusedRanker(short, 1.5)
    with pytest.raises(GenrecError, match="no shortlist"):
        FusedRanker(short, 0.5).rank(None, np.array([1]), 3)


def test_padding_candidates_never_rank_above_real_ones():
    # a shortlist shorter than asked (-1 pads, -inf scores) keeps its pads last at every weight
    short = Shortlists(np.array([4]), np.array([[2, 6, -1, -1]]), np.array([[0.0, 1.0, -np.inf]]),
                       np.array([[-1.0, -5.0, -np.inf]]))
    for w in (0.0, 0.3, 1.0):
        lst = FusedRanker(short, w).rank(None, np.array([4]), 4)[0].tolist()
        assert sorted(lst[:2]) == [2, 6] and lst[2:] == [-1, -1]


class Fixed:
    """A classic model with given scores for every user."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float64)

    def score(self, histories, users):
        return self.scores[np.asarray(users)]


class Oracle:
    """An LLM that knows each user's target: log p = 0 for it, -1 for every other item."""

    def __init__(self, targets):
        self.targets = targets

    def score_items(self, histories, items):
        return np.where(items == self.targets[self.users][:, None], 0.0, -1.0)


def test_shortlist_keeps_the_classic_order_with_or_without_history():
    scores = np.array([[0.1, 0.9, 0.5, 0.7, 0.3], [0.5, 0.4, 0.3, 0.2, 0.1]])

    class Rec:
        def score_items(self, histories, items):
            return -items.astype(float)  # any scores: they are stored as given

    hist = [np.array([1]), np.array([0, 4])]
    s = shortlist(Fixed(scores), Rec(), hist, np.array([0, 1]), candidates=2, n=4, exclude_history=True)
    assert s.items.tolist() == [[3, 2, 4, 0], [1, 2, 3, -1]]  # item 1 / items 0, 4 are history
    assert s.base.tolist() == [[0.7, 0.5], [0.4, 0.3]]
    assert s.llm.tolist() == [[-3.0, -2.0], [-1.0, -2.0]]
    # as the evaluator does by default, history items stay in
    s = shortlist(Fixed(scores), Rec(), hist, np.array([0, 1]), candidates=2, n=4)
    assert s.items.tolist() == [[1, 3, 2, 4], [0, 1, 2, 3]]


def test_an_oracle_llm_gets_picked_and_finds_every_target_in_its_shortlist(tmp_path):
    write(SynthConfig(n_users=60, n_items=40, seed=3, mean_length=6), tmp_path / "raw")
    ds = preprocess(load_raw(tmp_path / "raw"), PrepareConfig(kcore=2))
    ev = Evaluator(ds, ks=(1, 5, 10), progress=False)
    rng = np.random.default_rng(0)
    base = Fixed(rng.normal(size=(ds.n_users, ds.n_items)))  # a poor classic model
    out = {}
    for stage in ("valid", "test"):
        split = ev.split(stage)
        users = np.flatnonzero(split.targets >= 0)
        oracle = Oracle(split.targets)
        oracle.users = users
        out[stage] = (split, users, shortlist(base, oracle, [split.histories[u] for u in users], users, 8, 10))
    split, users, short = out["valid"]
    w, by_w = pick_weight(ev, short, "valid", "NDCG@10", weights=(0.0, 0.5, 1.0))
    assert w > 0
    # by hand: the oracle puts the target first whenever the shortlist holds it (and it is not history)
    found = np.array([t in row[:8] for t, row in zip(split.targets[users], short.items, strict=True)])
    assert by_w[1.0]["HR@1"] == pytest.approx(found.mean())
    # w = 0 keeps the classic order: HR@10 is the share of targets in its top 10
    assert by_w[0.0]["HR@10"] == pytest.approx(np.mean([t in row[:10] for t, row in zip(split.targets[users],
                                                                                        short.items, strict=True)]))
