"""`genrec report` over hand-made run folders: the table, the improvement and the plots."""

from __future__ import annotations

import json
from pathlib import Path


def fake_run(root: Path, name: str, levels: int, negatives: int, ours: dict, pop: dict, train: dict | None = None) -> Path:
    run = root / name
    for stage, config in (("data", {}), ("index", {"method": "alignment", "config": {"levels": levels}}),
                          ("tasks", {"tasks": {"negatives_per_positive": negatives}}), ("model", {"train": train or {}})):
        (run / stage).mkdir(parents=True)
        metrics = {"steps": 10, "final_train_loss": 2.5, "val_loss": 3.0, "seconds_this_session": 12.0} if stage == "model" else {}
        (run / stage / "manifest.json").write_text(json.dumps({"config": config, "metrics": metrics, "wall_seconds": 1.5}))
    (run / "baselines" / "pop").mkdir(parents=True)
    (run / "baselines" / "pop" / "metrics.json").write_text(json.dumps({"test": {"metrics": pop}}))
    (run / "evaluate").mkdir()
    (run / "evaluate" / "metrics.json").write_text(json.dumps({"test": {"metrics": ours}, "users_sampled": None}))
    (run / "model" / "log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 5.0 / s}) for s in range(1, 6))
                                             + "\n" + json.dumps({"step": 5, "val_loss": 1.5}) + "\n")
    return run


def metrics(x: float) -> dict:
    return {"HR@1": x, "HR@5": 2 * x, "HR@10": 3 * x, "NDCG@5": x, "NDCG@10": 1.5 * x}


def test_report_table_improvement_and_plots(tmp_path, cli):
    a = fake_run(tmp_path, "L2-neg1", 2, 1, metrics(0.02), metrics(0.01))
    b = fake_run(tmp_path, "L3-neg3", 3, 3, metrics(0.03), metrics(0.01))
    c = fake_run(tmp_path, "L3-neg1", 3, 1, metrics(0.025), metrics(0.01))  # with a: the codebook sweep; with b: negatives
    code, out, err = cli("report", a, b, c, "--out", tmp_path / "rep", "--title", "T")
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| Pop | 0.0100 | 0.0200 | 0.0300 | 0.0100 | 0.0150 |" in text
    assert "| genrec: L2-neg1 | 0.0200 |" in text and "| genrec: L3-neg3 | 0.0300 |" in text
    # best of ours (0.03) over the best baseline (0.01): +200% in every column
    assert "| improvement of the best of ours over the best baseline | +200.0% | +200.0% | +200.0% | +200.0% | +200.0% |" in text
    for png in ("loss.png", "codebooks.png", "negatives.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    assert "| L3-neg3 | alignment | 3 | 1:3 | 10 | 2.5 | 3.0 |" in text


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, cli):
    code, _, err = cli("report", tmp_path, "--out", tmp_path / "rep")
    assert code == 2 and "expected a run folder" in err


def test_one_run_has_no_sweep_plots(tmp_path, cli):
    a = fake_run(tmp_path, "only", 2, 1, metrics(0.02), metrics(0.01))
    assert cli("report", a, "--out", tmp_path / "rep")[0] == 0
    assert not (tmp_path / "rep" / "codebooks.png").exists() and (tmp_path / "rep" / "loss.png").exists()


def test_sweeps_hold_only_runs_that_differ_in_the_swept_setting_and_baselines_come_from_a_file(tmp_path, cli):
    runs = [fake_run(tmp_path, "L2", 2, 3, metrics(0.02), metrics(0.01)),
            fake_run(tmp_path, "L3", 3, 3, metrics(0.03), metrics(0.01)),
            fake_run(tmp_path, "neg1", 3, 1, metrics(0.01), metrics(0.01)),
            fake_run(tmp_path, "ed", 4, 3, metrics(0.04), metrics(0.01))]
    index = runs[3] / "index" / "manifest.json"  # another indexer: in neither sweep
    index.write_text(json.dumps({"config": {"method": "rqvae", "config": {"levels": 4}}, "metrics": {}, "wall_seconds": 1.0}))
    rows = [{"dataset": "scientific", "method": "fmlp", **metrics(0.05)}, {"dataset": "other", "method": "pop", **metrics(0.5)}]
    (tmp_path / "b.json").write_text(json.dumps(rows))
    code, _, err = cli("report", *runs, "--out", tmp_path / "rep", "--baselines", tmp_path / "b.json", "--dataset", "scientific")
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    codebooks = text.split("## Metrics against the number of codebooks")[1].split("##")[0]
    assert "| 2 | L2 | 0.0600 | 0.0300 |" in codebooks and "| 3 | L3 | 0.0900 | 0.0450 |" in codebooks
    assert "neg1" not in codebooks and "| ed |" not in codebooks
    negatives = text.split("## Metrics against the negative-sampling ratio")[1].split("##")[0]
    assert "| 1 | neg1 |" in negatives and "| 3 | L3 |" in negatives and "L2" not in negatives
    # FMLP-Rec from the file (best baseline 0.05 > Pop 0.01); the other dataset's row is left out
    assert "| FMLP-Rec | 0.0500 |" in text and "0.5000" not in text
    assert "| improvement of the best of ours over the best baseline | -20.0% |" in text
    code, _, err = cli("report", *runs, "--out", tmp_path / "rep2", "--baselines", tmp_path / "b.json", "--dataset", "nope")
    assert code == 2 and "no rows of dataset 'nope'" in err


def test_runs_that_differ_only_in_the_seed_are_one_point_and_another_budget_is_another_sweep(tmp_path, cli):
    runs = [fake_run(tmp_path, "L2", 2, 3, metrics(0.02), metrics(0.01)),
            fake_run(tmp_path, "L4", 4, 3, metrics(0.04), metrics(0.01)),
            fake_run(tmp_path, "L4-seed1", 4, 3, metrics(0.01), metrics(0.01), {"seed": 1}),
            fake_run(tmp_path, "L4-big", 4, 3, metrics(0.09), metrics(0.01), {"backbone": "default", "epochs": 1})]
    code, _, err = cli("report", *runs, "--out", tmp_path / "rep")
    assert code == 0, err
    codebooks = (tmp_path / "rep" / "report.md").read_text().split("## Metrics against the number of codebooks")[1].split("##")[0]
    # L=4 is the mean of L4 and L4-seed1: HR@10 (0.12 + 0.03) / 2, NDCG@10 (0.06 + 0.015) / 2
    assert "| 4 | mean of the 2 runs above (the plotted point) | 0.0750 | 0.0375 |" in codebooks
    assert "| 4 | L4-seed1 | 0.0300 | 0.0150 |" in codebooks and "L4-big" not in codebooks
