"""Dataset statistics on the real benchmark data (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import shared


@pytest.mark.parametrize(
    "name, users, items, interactions",
    [
        ("scientific", 8317, 4344, 58492),
        ("instruments", 24772, 9922, 206153),
        ("ml-100k", 943, 1349, 99287),  # raw ratings log after 5-core
    ],
)
def test_stats_match_published_counts(cli, name, users, items, interactions):
    code, out, err = cli("data", "stats", shared(name), "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert set(stats) == {"users", "items", "interactions", "avg_len", "long_user_share"}
    assert (stats["users"], stats["items"], stats["interactions"]) == (users, items, interactions)
    assert stats["avg_len"] == pytest.approx(interactions / users, abs=1e-4)


def test_instruments_matches_paper_table2(cli):
    # Table 2 of the reference paper: Instruments avg length 8.322, long users 3.48%
    code, out, _ = cli("data", "stats", shared("instruments"), "--json")
    stats = json.loads(out)
    assert stats["avg_len"] == pytest.approx(8.322, abs=5e-4)
    assert stats["long_user_share"] == pytest.approx(0.0348, abs=5e-5)


def test_scientific_prepared_roundtrip(cli, tmp_path):
    out = tmp_path / "sci"
    code, _, err = cli("data", "prepare", shared("scientific"), "--out", out)
    assert code == 0, err
    code, stdout, _ = cli("data", "stats", out, "--json")
    assert json.loads(stdout)["interactions"] == 58492
    from genrec.data.dataset import Dataset

    ds = Dataset.load(out)
    # LC-Rec keeps item indices: item 0 is the SUPCO relay kit, user "0" starts with items 0..8
    assert ds.items.loc[0, "title"].startswith("SUPCO SPP6")
    assert ds.user_ids[0] == "0" and ds.sequences[0].tolist() == list(range(9))
