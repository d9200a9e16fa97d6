"""Stage artifacts: skipped when up to date, rebuilt on change, atomic on failure."""

from __future__ import annotations

import json

import pytest

from genrec.artifacts import read_manifest, run_stage
from genrec.config import load_config
from genrec.errors import DataError, GenrecError


def test_stage_skips_when_unchanged_and_rebuilds_on_change(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("v1")
    calls = []

    def build(folder):
        calls.append(1)
        (folder / "out.txt").write_text(src.read_text().upper())
        return {"n": len(calls)}

    out = tmp_path / "stage"
    r1 = run_stage(out, "demo", {"a": 1}, {"src": src}, build)
    assert not r1.skipped and (out / "out.txt").read_text() == "V1"
    r2 = run_stage(out, "demo", {"a": 1}, {"src": src}, build)
    assert r2.skipped and len(calls) == 1
    r3 = run_stage(out, "demo", {"a": 2}, {"src": src}, build)  # config changed
    assert not r3.skipped and len(calls) == 2
    src.write_text("v2")  # input changed
    r4 = run_stage(out, "demo", {"a": 2}, {"src": src}, build)
    assert not r4.skipped and (out / "out.txt").read_text() == "V2"
    m = read_manifest(out)
    assert m["config"] == {"a": 2} and m["metrics"] == {"n": 3}
    assert {"python", "genrec", "numpy"} <= set(m["versions"]) and m["wall_seconds"] >= 0
    assert m["inputs"]["src"]["path"] == str(src)


def test_failed_stage_keeps_previous_artifact(tmp_path):
    out = tmp_path / "stage"
    run_stage(out, "demo", {"a": 1}, {}, lambda f: (f / "x").write_text("good") and None)

    def broken(folder):
        (folder / "x").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(out, "demo", {"a": 2}, {}, broken)
    assert (out / "x").read_text() == "good" and read_manifest(out)["config"] == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_downstream_stage_sees_upstream_fingerprint(tmp_path):
    up, down = tmp_path / "up", tmp_path / "down"
    run_stage(up, "up", {"v": 1}, {}, lambda f: None)
    assert not run_stage(down, "down", {}, {"up": up}, lambda f: None).skipped
    assert run_stage(down, "down", {}, {"up": up}, lambda f: None).skipped
    run_stage(up, "up", {"v": 2}, {}, lambda f: None)
    assert not run_stage(down, "down", {}, {"up": up}, lambda f: None).skipped


def test_config_overrides_and_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ndata:\n  prepare:\n    kcore: 3\n")
    cfg = load_config(path, ["data.prepare.kcore=7", "evaluate.ks=[1, 2]", "data.source=/x"])
    assert cfg.data.prepare.kcore == 7 and cfg.evaluate.ks == [1, 2] and cfg.data.source == "/x"
    assert cfg.resolved_run_dir().as_posix() == "runs/t"
    with pytest.raises(DataError, match="kcore"):
        load_config(path, ["data.prepare.kcore=-1"])
    with pytest.raises(DataError, match="bogus"):
        load_config(path, ["data.bogus=1"])
    with pytest.raises(GenrecError, match="KEY=VALUE"):
        load_config(path, ["nonsense"])
    path.write_text("data: [1,\n")
    with pytest.raises(DataError, match=str(path)):
        load_config(path)


def test_cli_run_is_idempotent(cli, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "t",
                "run_dir": str(tmp_path / "run"),
                "data": {"synth": {"n_users": 200, "n_items": 80}, "prepare": {"kcore": 2}},
            }
        )
    )
    code, out, err = cli("run", path)
    assert code == 0, err
    assert "pop" in out and "HR@10" in out
    assert "done in" in err
    code, out, err = cli("run", path)
    assert code == 0 and err.count("up to date, skipped") == 3
    for stage in ("raw", "data", "baselines/pop"):
        assert read_manifest(tmp_path / "run" / stage) is not None
