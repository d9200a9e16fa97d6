"""The synthetic demo dataset: determinism, shape, invariants, atomic writing, and sequential signal."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from genrec.data import synth
from genrec.data.synth import CATEGORIES, SynthConfig, generate, write
from genrec.errors import GenrecError

SMALL = SynthConfig(n_users=150, n_items=120, n_categories=4, seed=3)


@pytest.fixture(scope="module")
def default_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate(SynthConfig())


def test_deterministic_frames_and_files(tmp_path: Path) -> None:
    a_inter, a_items = generate(SMALL)
    b_inter, b_items = generate(SMALL)
    pd.testing.assert_frame_equal(a_inter, b_inter)
    pd.testing.assert_frame_equal(a_items, b_items)
    pa = write(SMALL, tmp_path / "a")
    pb = write(SMALL, tmp_path / "b")
    assert [p.name for p in pa] == ["interactions.csv", "items.csv", "synth.json"]
    for x, y in zip(pa, pb, strict=True):
        assert x.read_bytes() == y.read_bytes()
    other, _ = generate(SMALL.model_copy(update={"seed": 4}))
    assert not other.equals(a_inter)


def test_default_sizes(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    inter, items = default_data
    cfg = SynthConfig()
    assert inter["user_id"].nunique() == cfg.n_users
    assert len(items) == cfg.n_items
    assert 0.8 * cfg.n_users * cfg.mean_length <= len(inter) <= 1.2 * cfg.n_users * cfg.mean_length
    lengths = inter.groupby("user_id").size()
    assert lengths.min() >= cfg.min_length and lengths.max() <= cfg.max_length
    counts = inter["item_id"].value_counts()
    assert len(counts) == cfg.n_items and counts.min() >= 5  # survives the default 5-core intact
    assert set(inter["rating"].unique()) <= {1, 2, 3, 4, 5}
    assert 0.2 < (inter["review"] != "").mean() < 0.4


def test_invariants(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    inter, items = default_data
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating", "review"]
    assert list(items.columns) == ["item_id", "title", "description", "brand", "categories"]
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert items["item_id"].is_unique
    assert set(inter["item_id"]) <= set(items["item_id"])
    for _, ts in inter.groupby("user_id")["timestamp"]:
        assert (ts.diff().dropna() > 0).all()
    assert items["title"].nunique() > 0.95 * len(items)
    assert items["description"].nunique() > 0.9 * len(items)
    assert (items["description"].str.len() > 0).all()


def test_text_tells_the_category(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, items = default_data
    by_name = {f"{c.top},{c.sub}": c for c in CATEGORIES}
    assert items["categories"].nunique() == SynthConfig().n_categories
    for row in items.itertuples():
        spec = by_name[row.categories]
        assert any(r.noun in row.title for r in spec.roles), row.title
        assert row.brand and row.title.startswith(row.brand)


def test_reviews_mention_the_item(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    inter, items = default_data
    by_name = {f"{c.top},{c.sub}": c for c in CATEGORIES}
    cats = dict(zip(items["item_id"], items["categories"], strict=True))
    reviewed = inter[inter["review"] != ""].head(300)
    for row in reviewed.itertuples():
        spec = by_name[cats[row.item_id]]
        words = [r.noun.lower() for r in spec.roles] + [spec.kind] + list(spec.uses)
        words += [w for r in spec.roles for w in r.features + r.materials]
        assert any(w in row.review for w in words), row.review


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        SynthConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SynthConfig(mean_length=3, min_length=5)
    with pytest.raises(ValidationError):
        SynthConfig(n_categories=len(CATEGORIES) + 1)
    with pytest.raises(ValidationError):
        SynthConfig(n_items=5, n_categories=8)
    with pytest.raises(ValidationError):
        SynthConfig(brands_per_category=1000)


def test_tiny_catalogue() -> None:
    cfg = SynthConfig(n_users=20, n_items=8, n_categories=8)  # one item per category, short catalogue
    inter, items = generate(cfg)
    assert len(items) == 8
    assert inter.groupby("user_id").size().max() <= 8
    assert not inter.duplicated(["user_id", "item_id"]).any()


def test_write_round_trip_and_marker(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    paths = write(SMALL, out)
    assert all(p.is_file() for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp folder left behind
    inter, items = generate(SMALL)
    read_inter = pd.read_csv(out / "interactions.csv", dtype={"review": str}, keep_default_na=False)
    read_items = pd.read_csv(out / "items.csv", dtype=str, keep_default_na=False)
    assert read_inter["review"].tolist() == inter["review"].tolist()
    assert read_inter["timestamp"].tolist() == inter["timestamp"].tolist()
    assert read_items["categories"].tolist() == items["categories"].tolist()
    assert read_items["description"].tolist() == items["description"].tolist()
    marker = json.loads((out / "synth.json").read_text())
    assert marker["generator"] == "genrec.data.synth"
    assert SynthConfig(**marker["config"]) == SMALL
    assert marker["stats"]["interactions"] == len(inter)


def test_write_replaces_own_output_refuses_foreign(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    write(SMALL, out)
    bigger = SMALL.model_copy(update={"n_users": 200})
    write(bigger, out)  # made by synth: replaced without asking
    assert json.loads((out / "synth.json").read_text())["config"]["n_users"] == 200

    empty = tmp_path / "empty"
    empty.mkdir()
    write(SMALL, empty)
    assert (empty / "items.csv").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(GenrecError, match="not made by"):
        write(SMALL, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (out / "extra.txt").write_text("added by hand")  # a synth folder with foreign files is foreign
    with pytest.raises(GenrecError):
        write(SMALL, out)
    write(SMALL, foreign, overwrite=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["interactions.csv", "items.csv", "synth.json"]

    a_file = tmp_path / "file.csv"
    a_file.write_text("x")
    with pytest.raises(GenrecError):
        write(SMALL, a_file, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "empty", "file.csv", "foreign"]


def test_write_failure_leaves_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    write(SMALL, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_marker", boom)
    with pytest.raises(RuntimeError):
        write(SMALL.model_copy(update={"seed": 9}), out)
    with pytest.raises(RuntimeError):
        write(SMALL, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp or half-written folder
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _hit_rates(inter: pd.DataFrame, k: int = 10) -> tuple[float, float]:
    """HR@k of popularity and of a first-order transition model under leave-one-out, done by hand.

    Each user's last item is the test target; models are fit on all but the last two items
    (the second-to-last is the validation target). Items already in the history are not ranked.
    """
    sequences = [list(g["item_id"]) for _, g in inter.sort_values(["user_id", "timestamp"]).groupby("user_id")]
    all_items = sorted(set(inter["item_id"]))
    popularity: Counter[str] = Counter()
    transitions: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for seq in sequences:
        train = seq[:-2]
        popularity.update(train)
        for a, b in zip(train, train[1:], strict=False):
            transitions[a][b] += 1
    pop_hits = trans_hits = 0
    for seq in sequences:
        history, target = seq[:-1], seq[-1]
        seen = set(history)
        candidates = [i for i in all_items if i not in seen]
        by_pop = sorted(candidates, key=lambda i: (-popularity[i], i))
        nxt = transitions[history[-1]]
        by_trans = sorted(candidates, key=lambda i: (-nxt[i], -popularity[i], i))
        pop_hits += target in by_pop[:k]
        trans_hits += target in by_trans[:k]
    return pop_hits / len(sequences), trans_hits / len(sequences)


def test_transitions_beat_popularity(default_data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    inter, _ = default_data
    pop_hr, trans_hr = _hit_rates(inter)
    assert pop_hr > 0.02  # popularity carries some signal too
    assert trans_hr >= 2 * pop_hr, (trans_hr, pop_hr)
