"""LC-Rec, RecBole and tabular loaders and the shared preprocessing, on hand-made fixtures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genrec.data.dataset import Dataset
from genrec.data.loaders import detect_format, load_raw
from genrec.data.preprocess import PrepareConfig, kcore_filter, preprocess


def write_lcrec(folder, inter, items=None, stem="Toy"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.inter.json").write_text(json.dumps(inter))
    if items is not None:
        (folder / f"{stem}.item.json").write_text(json.dumps(items))
    return folder


def test_lcrec_loads_sequences_in_order(tmp_path):
    folder = write_lcrec(
        tmp_path / "lc",
        {"0": [2, 0, 1], "1": [1, 2]},
        {str(i): {"title": f"T{i}", "description": "", "brand": "B", "categories": "A,B"} for i in range(3)},
    )
    assert detect_format(folder) == "lcrec"
    raw = load_raw(folder)
    assert raw.interactions["user_id"].tolist() == ["0", "0", "0", "1", "1"]
    assert raw.interactions["item_id"].tolist() == ["2", "0", "1", "1", "2"]
    assert raw.interactions["timestamp"].tolist() == [0, 1, 2, 0, 1]
    ds = preprocess(raw, PrepareConfig(kcore=0))
    # item table order is kept: item "0" -> 0, "1" -> 1, "2" -> 2
    assert ds.sequences[0].tolist() == [2, 0, 1]
    assert ds.sequences[1].tolist() == [1, 2]
    assert ds.items["title"].tolist() == ["T0", "T1", "T2"]
    assert ds.items.loc[0, "categories"] == "A,B"


def test_lcrec_item2id_gives_id_only_items(tmp_path):
    folder = tmp_path / "ins"
    folder.mkdir()
    (folder / "Ins.inter.json").write_text(json.dumps({"0": [0, 1], "1": [1, 0]}))
    (folder / "Ins.item2id").write_text("B000A\t0\nB000B\t1\n")
    ds = preprocess(load_raw(folder), PrepareConfig(kcore=0, missing_items="drop"))
    assert ds.n_items == 2 and ds.items["asin"].tolist() == ["B000A", "B000B"]


def test_recbole_reads_typed_header_and_item_text(tmp_path):
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti2\t4\t20\nu1\ti1\t3\t10\nu2\ti1\t5\t5\nu1\ti3\t1\t20\n"
    )
    (folder / "m.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "i1\tToy Story\t1995\tAnimation Comedy\ni2\tHeat\t1995\tAction\ni3\tBabe\t1995\tDrama\n"
    )
    assert detect_format(folder) == "recbole"
    ds = preprocess(load_raw(folder), PrepareConfig(kcore=0))
    assert ds.user_ids.tolist() == ["u1", "u2"]
    # u1: i1 at t=10, then i2 and i3 both at t=20 in file order
    assert [ds.items.loc[i, "item_id"] for i in ds.sequences[0]] == ["i1", "i2", "i3"]
    assert ds.items.set_index("item_id").loc["i1", "categories"] == "Animation,Comedy"
    assert ds.items.set_index("item_id").loc["i1", "title"] == "Toy Story"
    assert "1995" in ds.items.set_index("item_id").loc["i1", "description"]
    assert ds.interactions["rating"].tolist() == [3.0, 4.0, 1.0, 5.0]


def test_tabular_csv_and_parquet_agree(tmp_path):
    inter = pd.DataFrame(
        {"uid": ["a", "a", "b", "b", "a"], "iid": ["x", "y", "x", "z", "x"], "ts": [3, 1, 2, 1, 5]}
    )
    items = pd.DataFrame({"iid": ["x", "y", "z"], "title": ["X", "Y", "Z"]})
    results = []
    for ext in ("csv", "parquet"):
        folder = tmp_path / ext
        folder.mkdir()
        if ext == "csv":
            inter.to_csv(folder / "interactions.csv", index=False)
            items.to_csv(folder / "items.csv", index=False)
        else:
            inter.to_parquet(folder / "interactions.parquet")
            items.to_parquet(folder / "items.parquet")
        assert detect_format(folder) == "tabular"
        raw = load_raw(folder, user_col="uid", item_col="iid", time_col="ts")
        ds = preprocess(raw, PrepareConfig(kcore=0))
        results.append([[ds.items.loc[i, "item_id"] for i in s] for s in ds.sequences])
    # a: y(1) x(3) x(5, a repeat: dropped); b: z(1) x(2)
    assert results[0] == results[1] == [["y", "x"], ["z", "x"]]


def test_dedup_keeps_first_occurrence(tmp_path):
    folder = write_lcrec(tmp_path / "d", {"0": [1, 2, 1, 3]}, {str(i): {"title": "t"} for i in range(4)})
    ds = preprocess(load_raw(folder), PrepareConfig(kcore=0))
    assert [ds.items.loc[i, "item_id"] for i in ds.sequences[0]] == ["1", "2", "3"]
    ds = preprocess(load_raw(folder), PrepareConfig(kcore=0, dedup=False))
    assert [ds.items.loc[i, "item_id"] for i in ds.sequences[0]] == ["1", "2", "1", "3"]


def test_kcore_is_iterative():
    # k=2. Item c occurs once -> dropped; then user 3 (b, c) keeps only b -> 1 interaction
    # -> dropped; then item b occurs once (user 1) -> dropped; user 1 keeps a only -> dropped.
    users = np.array([1, 1, 2, 2, 3, 3, 4, 4])
    items = np.array(["a", "b", "a", "d", "b", "c", "a", "d"])
    keep = kcore_filter(users, items, 2)
    assert keep.tolist() == [False, False, True, True, False, False, True, True]


def test_split_is_leave_one_out(tmp_path):
    folder = write_lcrec(tmp_path / "s", {"0": [0, 1, 2, 3], "1": [3, 2]}, {str(i): {"title": "t"} for i in range(4)})
    ds = preprocess(load_raw(folder), PrepareConfig(kcore=0))
    assert [s.tolist() for s in ds.train_sequences()] == [[0, 1], []]
    valid, test = ds.eval_split("valid"), ds.eval_split("test")
    assert valid.targets.tolist() == [2, 3] and test.targets.tolist() == [3, 2]
    assert valid.histories[0].tolist() == [0, 1] and test.histories[0].tolist() == [0, 1, 2]
    assert test.histories[1].tolist() == [3] and valid.histories[1].tolist() == []
    # popularity counts the training part only
    assert ds.item_popularity().tolist() == [1, 1, 0, 0]


def test_dataset_save_load_roundtrip(tmp_path):
    folder = write_lcrec(tmp_path / "r", {"0": [0, 1, 2], "1": [2, 1, 0]}, {str(i): {"title": f"t{i}"} for i in range(3)})
    ds = preprocess(load_raw(folder), PrepareConfig(kcore=0))
    ds.save(tmp_path / "out")
    back = Dataset.load(tmp_path / "out")
    assert [s.tolist() for s in back.sequences] == [s.tolist() for s in ds.sequences]
    assert back.items.equals(ds.items) and back.user_ids.tolist() == ds.user_ids.tolist()
    assert back.stats() == ds.stats()


def test_detect_rejects_unknown_folder(tmp_path):
    from genrec.errors import DataError

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="could not recognise"):
        detect_format(tmp_path)
