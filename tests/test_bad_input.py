"""Bad input: one clear error line naming the file and record, non-zero exit, no partial
artifact, and an existing artifact left exactly as it was."""

from __future__ import annotations

import json

import pytest

from genrec.artifacts import fingerprint


def good_lcrec(folder):
    folder.mkdir(parents=True, exist_ok=True)
    inter = {str(u): [(u + k) % 6 for k in range(5)] for u in range(6)}
    (folder / "G.inter.json").write_text(json.dumps(inter))
    (folder / "G.item.json").write_text(json.dumps({str(i): {"title": f"item {i}"} for i in range(6)}))
    return folder


def truncated_json(folder):
    good_lcrec(folder)
    text = (folder / "G.inter.json").read_text()
    (folder / "G.inter.json").write_text(text[: len(text) // 2])
    return folder / "G.inter.json", "line 1"


def missing_column(folder):
    folder.mkdir(parents=True)
    (folder / "interactions.csv").write_text("user_id,timestamp\nu1,1\nu2,2\n")
    return folder / "interactions.csv", "item_id"


def absent_item(folder):
    good_lcrec(folder)
    inter = json.loads((folder / "G.inter.json").read_text())
    inter["3"].append(99)
    (folder / "G.inter.json").write_text(json.dumps(inter))
    return folder / "G.inter.json", "user '3'"


def kcore_empties(folder):
    folder.mkdir(parents=True)
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu2,a,3\n")
    return folder / "interactions.csv", "5-core"


def non_numeric_timestamp(folder):
    folder.mkdir(parents=True)
    (folder / "x.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t10\nu1\tb\tyesterday\n"
    )
    return folder / "x.inter", "line 3"


CASES = [truncated_json, missing_column, absent_item, kcore_empties, non_numeric_timestamp]


@pytest.mark.parametrize("make", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_fails_cleanly_and_keeps_old_artifact(cli, tmp_path, make):
    out = tmp_path / "prepared"
    code, _, err = cli("data", "prepare", good_lcrec(tmp_path / "good"), "--out", out)
    assert code == 0, err
    before = fingerprint(out)
    manifest_before = (out / "manifest.json").read_text()

    bad_file, record = make(tmp_path / "bad")
    code, stdout, err = cli("data", "prepare", tmp_path / "bad", "--out", out)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert str(bad_file) in lines[0] and record in lines[0], lines[0]
    # the earlier artifact is untouched and no temporary folder is left behind
    assert fingerprint(out) == before and (out / "manifest.json").read_text() == manifest_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "prepared"]


@pytest.mark.parametrize("make", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_leaves_no_new_artifact(cli, tmp_path, make):
    make(tmp_path / "bad")
    code, _, err = cli("data", "prepare", tmp_path / "bad", "--out", tmp_path / "new")
    assert code == 2 and err.startswith("error: ")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_stats_reports_bad_input_too(cli, tmp_path):
    bad_file, record = non_numeric_timestamp(tmp_path / "bad")
    code, out, err = cli("data", "stats", tmp_path / "bad", "--json")
    assert code == 2 and out == "" and str(bad_file) in err and record in err
