"""Alignment-task corpus: counts per task and per user by hand, and no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genrec.data.dataset import Dataset
from genrec.llm.tasks import TaskConfig, build_tasks, task_counts


def tiny(with_reviews: bool) -> Dataset:
    # user 0: 0 1 2 3 4 (train 0 1 2, valid 3, test 4); user 1: 2 3 1 (train 2, valid 3, test 1)
    seqs = {0: [0, 1, 2, 3, 4], 1: [2, 3, 1]}
    rows = [(u, i, t) for u, s in seqs.items() for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    if with_reviews:
        inter["review"] = [f"review {u}-{i}" for u, i, _ in rows]
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(6)],
            "title": [f"Item {i}" for i in range(6)],
            "description": ["" for _ in range(6)],
            "brand": ["Acme"] * 6,
            "categories": ["Tools,Drills"] * 6,
        }
    )
    return Dataset(items, np.array(["u0", "u1"]), inter)


def test_counts_by_hand():
    ds = tiny(with_reviews=True)
    samples = build_tasks(ds, TaskConfig(negatives_per_positive=2))
    # seq, per prefix: user 0 train [0,1,2] -> targets 1, 2; user 1 train [2] -> none
    # neg: 2 per seq sample -> 4; title2item / item2title: train items {0,1,2} -> 3 each
    # query: reviews of training interactions only: user 0 items 0,1,2 and user 1 item 2 -> 4
    assert task_counts(samples) == {"item2title": 3, "neg": 4, "query-review": 4, "seq": 2, "title2item": 3}
    per_user = {}
    for s in samples:
        if s.task == "seq":
            per_user.setdefault(s.user, []).append(s.item)
    assert per_user == {0: [1, 2]}


def test_no_validation_or_test_item_is_a_target_of_its_user():
    ds = tiny(with_reviews=True)
    held_out = {0: {3, 4}, 1: {3, 1}}
    for s in build_tasks(ds, TaskConfig(negatives_per_positive=3)):
        if s.user >= 0:
            assert not set(s.targets()) & held_out[s.user], s
        if s.task == "neg":
            assert s.item not in set(ds.sequences[s.user].tolist())
        if s.task in ("title2item", "query-review"):
            assert s.item in {0, 1, 2}
        # history items in the prompt come from the training part only
        prompt_items = [v for k, v, loss in s.parts if k == "i" and not loss]
        if s.task in ("seq", "neg"):
            assert set(prompt_items) <= set(ds.train_sequences()[s.user].tolist())


def test_attribute_queries_without_reviews_and_all_positions_layout():
    ds = tiny(with_reviews=False)
    samples = build_tasks(ds, TaskConfig(tasks=["seq", "query"], layout="all_positions"))
    counts = task_counts(samples)
    assert counts == {"query-attr": 3, "seq_all": 1}
    seq = next(s for s in samples if s.task == "seq_all")
    assert seq.targets() == [1, 2]  # loss on every item after the first
    q = next(s for s in samples if s.task == "query-attr")
    assert "drills" in q.parts[1][1] and "Acme" in q.parts[1][1]
    # negatives: per user after the whole training history [0, 1, 2] (user 1 has one training item: none)
    negs = [s for s in build_tasks(ds, TaskConfig(tasks=["neg"], layout="all_positions", negatives_per_positive=3)) if s.task == "neg"]
    assert len(negs) == 3
    assert all([p[1] for p in n.parts if p[0] == "i"][:-1] == [0, 1, 2] and n.targets()[0] not in (0, 1, 2, 3, 4) for n in negs)


def test_deterministic_for_a_seed():
    ds = tiny(with_reviews=True)
    a, b = build_tasks(ds, TaskConfig(seed=3)), build_tasks(ds, TaskConfig(seed=3))
    assert [(s.task, s.template, s.parts) for s in a] == [(s.task, s.template, s.parts) for s in b]


@pytest.mark.parametrize("history", [1, 2])
def test_history_cap(history):
    ds = tiny(with_reviews=False)
    for s in build_tasks(ds, TaskConfig(tasks=["seq"], max_history=history)):
        assert sum(1 for k, _, loss in s.parts if k == "i" and not loss) <= history


def long_user() -> Dataset:
    # one user with 16 items: train = items 0..13 (14 items), valid 14, test 15
    seq = list(range(16))
    inter = pd.DataFrame([(0, i, t) for t, i in enumerate(seq)], columns=["user_idx", "item_idx", "timestamp"])
    items = pd.DataFrame({"item_id": [str(i) for i in range(16)], "title": [""] * 16, "description": [""] * 16,
                          "brand": [""] * 16, "categories": [""] * 16})
    return Dataset(items, np.array(["u0"]), inter)


def contexts(samples) -> list[tuple[int, list[int]]]:
    """(target, the items before it in its sequence) for every target item of all_positions samples."""
    out = []
    for s in samples:
        items = [(v, loss) for k, v, loss in s.parts if k == "i"]
        out += [(v, [w for w, _ in items[:n]]) for n, (v, loss) in enumerate(items) if loss]
    return out


def test_all_positions_windows_make_every_training_item_a_target_once_with_its_recent_history():
    ds, h = long_user(), 4
    train = list(range(14))
    got = contexts(s for s in build_tasks(ds, TaskConfig(tasks=["seq"], layout="all_positions", max_history=h))
                   if s.task == "seq_all")
    # the per-prefix supervision, by hand: every item after the first, after its (up to h) previous items
    assert [t for t, _ in got] == train[1:]
    for t, ctx in got:
        assert ctx == train[max(0, t - len(ctx)) : t]  # the items right before the target, in order
        assert len(ctx) <= h and (len(ctx) == t or len(ctx) >= h - h // 2 + 1)  # short only at the very start
    # 'last': only the last window of h + 1 items
    last = contexts(s for s in build_tasks(ds, TaskConfig(tasks=["seq"], layout="all_positions", max_history=h,
                                                          long_histories="last")) if s.task == "seq_all")
    assert last == [(t, train[9 : t]) for t in range(10, 14)]


def test_task_fingerprint_names_long_histories_only_where_it_changes_a_corpus():
    from genrec.llm.fingerprints import task_fingerprint

    def fp(**kw):  # negative prompts as before that setting, so only long_histories is at stake
        return task_fingerprint(TaskConfig(negative_prompts="independent", **kw))

    assert fp() == {}
    assert fp(long_histories="last") == {}  # per_prefix: no effect
    # corpora built before the setting existed were built as 'last': their fingerprints stay
    assert fp(layout="all_positions", long_histories="last") == {"layout": "all_positions"}
    assert fp(layout="all_positions") == {"layout": "all_positions", "long_histories": "windows"}


def test_shared_negative_prompts_take_one_template_per_history():
    ds = tiny(with_reviews=False)
    shared = build_tasks(ds, TaskConfig(tasks=["neg"], layout="all_positions", negatives_per_positive=4, seed=1))
    by_user: dict[int, set[int]] = {}
    for s in shared:
        by_user.setdefault(s.user, set()).add(s.template)
    histories = sum(len(s) >= 2 for s in ds.train_sequences())
    assert histories == 1 and len(shared) == 4 * histories and all(len(t) == 1 for t in by_user.values())
    # and each negative still comes after the whole history, never an item of the user
    for s in shared:
        assert s.item not in ds.sequences[s.user].tolist()
    # one negative per history: nothing to share, the corpus is the original one
    a = build_tasks(ds, TaskConfig(negatives_per_positive=1))
    b = build_tasks(ds, TaskConfig(negatives_per_positive=1, negative_prompts="independent"))
    assert [(x.task, x.template, x.item, x.parts) for x in a] == [(x.task, x.template, x.item, x.parts) for x in b]


def test_task_fingerprint_names_negative_prompts_only_where_there_are_negatives_to_share():
    from genrec.llm.fingerprints import task_fingerprint

    assert task_fingerprint(TaskConfig(negative_prompts="independent")) == {}  # the behaviour before the setting
    assert task_fingerprint(TaskConfig()) == {"negative_prompts": "shared"}
    assert task_fingerprint(TaskConfig(negatives_per_positive=1)) == {"negatives_per_positive": 1}
    assert task_fingerprint(TaskConfig(tasks=["seq"])) == {"tasks": ["seq"]}


def test_train_fingerprint_keeps_runs_started_before_shared_prompts(tmp_path):
    from genrec.llm.config import LLMTrainConfig
    from genrec.llm.fingerprints import train_fingerprint

    before = train_fingerprint(tmp_path, LLMTrainConfig(share_prefixes=False))
    assert before[0] == {"train": {}}
    now = train_fingerprint(tmp_path, LLMTrainConfig())
    assert now[0] == {"train": {"share_prefixes": True}} and now[2] != before[2]
