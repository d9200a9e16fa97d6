"""Pop end to end through the CLI, against hand-computed metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from genrec.baselines.pop import Pop
from tests.test_loaders import write_lcrec


@pytest.fixture
def tiny(tmp_path):
    # train parts: u0 [0,1], u1 [0,1], u2 [1,0] -> counts item0 = 3, item1 = 3, items 2,3,4 = 0
    return write_lcrec(
        tmp_path / "tiny",
        {"0": [0, 1, 2, 3], "1": [0, 1, 3, 2], "2": [1, 0, 2, 4]},
        {str(i): {"title": f"t{i}"} for i in range(5)},
    )


def test_pop_metrics_by_hand(cli, tiny):
    code, out, err = cli("baselines", "run", "pop", "--data", tiny, "--kcore", "0", "--json", "--mask-history", "off")
    assert code == 0, err
    m = json.loads(out)["metrics"]
    # every test target scores 0 and sits behind items 0 and 1, tied with the 2 other zero items:
    # its rank is uniform over {3, 4, 5}
    assert m["HR@1"] == pytest.approx(0.0)
    assert m["HR@5"] == pytest.approx(1.0)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(5) + 1 / math.log2(6)) / 3)
    assert m["MRR"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)


def test_pop_with_history_masked(cli, tiny):
    code, out, err = cli("baselines", "run", "pop", "--data", tiny, "--kcore", "0", "--json", "--mask-history", "on")
    assert code == 0, err
    m = json.loads(out)["metrics"]
    # history (3 items) removed: the target ties with the one remaining item -> rank 1 or 2
    assert m["HR@1"] == pytest.approx(0.5) and m["MRR"] == pytest.approx(0.75)
    # the data has no repeated user-item pair: the default (auto) masks too
    code, out, _ = cli("baselines", "run", "pop", "--data", tiny, "--kcore", "0", "--json")
    assert code == 0 and json.loads(out)["metrics"] == m
    code, _, err = cli("baselines", "run", "pop", "--data", tiny, "--kcore", "0", "--mask-history", "maybe")
    assert code != 0 and "--mask-history" in err


def test_pop_table_output_and_save_load(cli, tiny, tmp_path):
    code, out, err = cli("baselines", "run", "pop", "--data", tiny, "--kcore", "0")
    assert code == 0, err
    assert "HR" in out and "NDCG" in out and "@10" in out and "coverage" in out
    from genrec.data.preprocess import PrepareConfig, load_dataset

    ds = load_dataset(tiny, prepare=PrepareConfig(kcore=0))
    model = Pop()
    model.fit(ds)
    model.save(tmp_path / "m")
    back = Pop.load(tmp_path / "m")
    users = np.arange(3)
    assert np.array_equal(back.score([], users), model.score([], users))


def test_unknown_baseline_is_a_clear_error(cli, tiny):
    code, _, err = cli("baselines", "run", "nope", "--data", tiny)
    assert code == 2 and "unknown baseline 'nope'" in err


def test_baselines_run_writes_the_baseline_stage(cli, tiny, tmp_path):
    """`genrec baselines run` goes through stage_baseline: the same folder, manifest and metrics."""
    from genrec.config import EvaluateSection
    from genrec.data.preprocess import PrepareConfig
    from genrec.stages import stage_baseline, stage_data

    data = stage_data(tiny, tmp_path / "data", PrepareConfig(kcore=0)).path
    out = tmp_path / "cli-pop"
    code, printed, err = cli("baselines", "run", "pop", "--data", data, "--out", out, "--json")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "baseline:pop" and (out / "metrics.json").is_file() and (out / "model").is_dir()
    direct = stage_baseline(data, tmp_path / "direct-pop", "pop", EvaluateSection())
    assert manifest["metrics"]["test"]["metrics"] == direct.manifest["metrics"]["test"]["metrics"]
    assert manifest["fingerprint"] == direct.manifest["fingerprint"]  # the same stage: same config and inputs
    assert json.loads(printed)["metrics"] == direct.manifest["metrics"]["test"]["metrics"]
    # rerun: up to date; the default --out is baselines/NAME beside the data folder
    code, printed, err = cli("baselines", "run", "pop", "--data", data, "--out", out)
    assert code == 0 and "up to date" in printed and "NDCG" in printed
    code, _, err = cli("baselines", "run", "pop", "--data", data)
    assert code == 0, err
    assert (data.parent / "baselines" / "pop" / "manifest.json").is_file()
