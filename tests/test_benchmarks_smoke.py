"""A smoke run of every script in benchmarks/ (the private helpers _child.py and _machine.py aside),
each the real script in its own process on tiny inputs: the finished tiny run of the recipe
(``recipe_run``), synthetic shops, the tiny backbone with the real tokenizer; outputs under tmp_path,
never benchmarks/results. Each checks what it wrote against what it read. recipe.py and
search_error.py have theirs in tests/test_recipe.py; the last test here checks that no script is
left without one."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
COLS = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]


def bench(script: str, *args, timeout: int = 600, ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``python benchmarks/NAME.py ARGS`` from the repository root at one thread; with ``ok``,
    fail with its stderr unless it exits 0."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def synth_raw(folder: Path, n_users: int = 40, n_items: int = 30) -> Path:
    from genrec.data.synth import SynthConfig, write

    write(SynthConfig(n_users=n_users, n_items=n_items, seed=2, mean_length=6), folder)
    return folder


# ------------------------------------------------------------------------------------ decoding


def test_decode_smoke_run_agrees_with_hf_generate(recipe_run, tiny_backbone, tmp_path):
    bench("benchmarks/decode.py", "--run", recipe_run, "--model", recipe_run / "model", "--users", 4, "--batch", 2,
          "--beams", 4, "--k", 3, "--round-beams", 2, "--repeats", 1, "--out", tmp_path)
    r = json.loads((tmp_path / "decode.json").read_text())
    # the model as its folder says: the tiny backbone cut to one layer, the codes prompt, the trie softmax
    assert (r["backbone"], r["prompt"], r["softmax"]) == (str(tiny_backbone), "codes", "trie")
    assert r["weights"] == str(recipe_run / "model") and r["users"] == 4 and (r["beams"], r["k"]) == (4, 3)
    assert r["identical_top10_share"] == 1.0  # the same model, the same trie, the same scores: the same lists
    assert r["ratio"] == pytest.approx(r["ours_users_per_s"] / r["hf_users_per_s"], rel=0.02)
    assert r["ratio"] == pytest.approx(r["hf_s_per_user"] / r["ours_s_per_user"], rel=0.02)
    # the floor (each prompt read once, no beam step) is part of what ours does: below it is impossible
    assert r["floor_ratio"] == pytest.approx(r["ours_s_per_user"] / r["floor_s_per_user"], rel=0.02)
    assert r["floor_ratio"] > 1 and r["hf_floor_ratio"] > 1
    assert r["round_beams"] == 2 and isinstance(r["cpu_bf16"], bool) and r["machine"]["cpu_bf16"] == r["cpu_bf16"]
    md = (tmp_path / "decode.md").read_text()
    assert f"**{r['ratio']:.1f}x**" in md and f"**{r['floor_ratio']:.2f}x**" in md and "| floor: one forward" in md


def test_inference_precision_smoke_run_compares_against_fp32(recipe_run, tmp_path):
    from genrec.data.dataset import Dataset

    bench("benchmarks/inference_precision.py", "--run", recipe_run, "--users", 6, "--beams", 5, "--batch", 4,
          "--out", tmp_path)
    r = json.loads((tmp_path / "inference_precision.json").read_text())
    ds = Dataset.load(recipe_run / "data")
    assert r["users"] == 6 and r["model"] == str(recipe_run / "model") and r["mask_history"] == (not ds.has_repeats())
    ref, bf16, int8 = r["rows"]
    assert [x["precision"] for x in r["rows"]] == ["fp32", "bf16", "int8"]
    assert ref["identical_top10_share"] == ref["top10_overlap"] == 1.0 and ref["NDCG@10_diff"] == 0.0
    assert bf16["compute"] == ("bfloat16" if r["cpu_bf16"] else "float32") and int8["compute"].startswith("int8")
    for x in r["rows"]:
        assert 0 <= x["NDCG@10"] <= x["HR@10"] <= 1  # one target per user: NDCG@10 <= HR@10
        assert x["NDCG@10_diff"] == pytest.approx(x["NDCG@10"] - ref["NDCG@10"], abs=1e-5)
        assert 0 <= x["identical_top10_share"] <= x["top10_overlap"] <= 1
        assert x["users_per_s"] > 0 and x["s_per_user"] == pytest.approx(1 / x["users_per_s"], rel=0.01)
        assert f"| {x['precision']} |" in (tmp_path / "inference_precision.md").read_text()


def test_new_items_smoke_run_adds_items_with_codes_of_their_own(recipe_run, tmp_path):
    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.index.base import ItemIndex

    bench("benchmarks/new_items.py", "--run", recipe_run, "--items", 2, "--users", 4, "--k", 20, "--beams", 20,
          "--note", "a note", "--out", tmp_path)
    r = json.loads((tmp_path / "new_items.json").read_text())
    index = ItemIndex.load(recipe_run / "index")
    ds = Dataset.load(recipe_run / "data")
    ids = [str(i) for i in json.loads((recipe_run / "index" / "item_ids.json").read_text())]
    trained = {tuple(int(c) for c in row) for row in index.codes}
    assert r["model"] == str(recipe_run / "model") and r["step"] is None and len(r["rows"]) == 2
    assert r["command"] == f"OMP_NUM_THREADS=1 python benchmarks/new_items.py --run {recipe_run} --items 2 --users 4 " \
                           f"--k 20 --beams 20 --out {tmp_path}" and r["note"] == "a note"
    assert r["exclude_history"] == (not ds.has_repeats()) and r["max_history"] == 20
    user = {u: k for k, u in enumerate(ds.user_ids.tolist())}
    for row in r["rows"]:
        assert tuple(row["new_codes"]) not in trained  # unique codes from the codebooks
        assert row["anchor_codes"] == [int(c) for c in index.codes[ids.index(row["anchor_id"])]]
        shared = 0
        while shared < len(row["new_codes"]) and row["new_codes"][shared] == row["anchor_codes"][shared]:
            shared += 1
        assert row["shared_prefix"] == shared
        assert 1 <= row["holders"] == len(row["holder_users"]) <= 4 and 1 <= row["others"] == len(row["other_users"]) <= 4
        neighbours = {ids.index(i) for i in row["neighbour_ids"]}
        assert len(neighbours) == 5 and ids.index(row["anchor_id"]) not in neighbours
        for u in row["holder_users"]:  # a neighbour in the prompt (the last max_history items)
            assert neighbours & set(ds.sequences[user[u]][-r["max_history"]:].tolist())
        for u in row["other_users"]:  # no neighbour anywhere in the history
            assert not neighbours & set(ds.sequences[user[u]].tolist())
    # the shares again, decoded here: the index with the new items appended, each scoring its own recommender
    codes = np.concatenate([index.codes, [row["new_codes"] for row in r["rows"]]])
    extended = ItemIndex.from_codes(index.method, codes, index.sizes, config=index.config)
    users = sorted({user[u] for row in r["rows"] for u in row["holder_users"] + row["other_users"]})
    for scoring, cold_from in (("backoff", len(ids)), ("alone", None)):
        rec = GenerativeRecommender.load(recipe_run / "model", extended, beams=20, exclude_history=r["exclude_history"],
                                         cold_from=cold_from)
        lists = dict(zip(users, rec.rank([ds.sequences[u] for u in users], np.array(users), 20), strict=True))
        for n, row in enumerate(r["rows"]):
            new, anchor = len(ids) + n, ids.index(row["anchor_id"])
            got = row[scoring]
            assert got["new_in_holders"] == pytest.approx(np.mean([new in lists[user[u]] for u in row["holder_users"]]))
            assert got["new_in_others"] == pytest.approx(np.mean([new in lists[user[u]] for u in row["other_users"]]))
            assert got["anchor_in_holders"] == pytest.approx(np.mean([anchor in lists[user[u]] for u in row["holder_users"]]))
        for key in ("new_in_holders", "new_in_others", "anchor_in_holders"):
            assert r["mean"][scoring][key] == pytest.approx(np.mean([row[scoring][key] for row in r["rows"]]))
    # top-20 of the tiny shop's ~40 items: with the back-off, the new items reach some lists (the shares above are not all 0)
    assert sum(row["backoff"]["new_in_holders"] + row["backoff"]["new_in_others"] for row in r["rows"]) > 0
    md = (tmp_path / "new_items.md").read_text()
    assert r["command"] in md and "a note" in md and f"**{r['mean']['backoff']['new_in_holders']:.3f}**" in md


def test_new_items_synthetic_smoke_run_scores_every_category_both_ways(tmp_path):
    bench("benchmarks/new_items_synthetic.py", "--epochs", 1, "--users", 40, "--out", tmp_path)
    r = json.loads((tmp_path / "new_items_synthetic.json").read_text())
    rows = r["rows"]
    assert len(rows) == 8 and [x["scoring"] for x in rows] == ["model alone"] * 4 + ["sibling back-off"] * 4
    alone, backoff = rows[:4], rows[4:]
    # the same four added items (one per category, codes of their own) under both scorings
    assert [(x["category"], x["codes"], x["holders"]) for x in alone] == [(x["category"], x["codes"], x["holders"]) for x in backoff]
    assert len({tuple(x["codes"]) for x in alone}) == 4 and len({x["category"] for x in alone}) == 4
    assert r["users"] <= 40 and r["items"] <= 24
    for x in rows:
        assert 1 <= x["holders"] < r["users"]
        assert 0 <= x["share_holders"] <= 1 and 0 <= x["share_others"] <= 1 and 0 <= x["top10_in_last_items_category"] <= 1


def test_rerank_smoke_run_scores_as_the_padded_forward_does(recipe_run, tmp_path):
    bench("benchmarks/rerank.py", "--run", recipe_run, "--users", 4, "--candidates", 5, "--batch", 2, "--out", tmp_path)
    r = json.loads((tmp_path / "rerank.json").read_text())
    assert (r["users"], r["candidates"], r["batch"]) == (4, 5, 2)
    assert r["max_abs_score_diff"] < 1e-4  # the trie softmax renormalised in both
    assert r["speedup"] == round(r["padded_seconds"] / r["ours_seconds"], 2)
    assert f"**{r['speedup']}x**" in (tmp_path / "rerank.md").read_text()


def test_rerank_quality_smoke_run_bootstraps_the_gain_of_a_rerank_folder(recipe_run, tmp_path, cli):
    folder = tmp_path / "rerank"
    code, _, err = cli("rerank", "--base", recipe_run / "baselines" / "sasrec-ce" / "model", "--model", recipe_run / "model",
                       "--index", recipe_run / "index", "--data", recipe_run / "data", "--out", folder, "--candidates", 5,
                       "--weight", 1.0, "--batch-users", 8)
    assert code == 0, err
    bench("benchmarks/rerank.py", "--quality", folder, "--out", tmp_path / "out")
    (written,) = (tmp_path / "out").glob("rerank-*.json")
    assert written.name == "rerank-run-sasrec-ce.json"
    r = json.loads(written.read_text())
    for name in ("HR@10", "NDCG@10"):  # the mean paired gain is the difference of the two test rows
        mean, lo, hi = r["bootstrap"][name]
        assert mean == pytest.approx(r["test"]["fused"][name] - r["test"]["base"][name], abs=1e-9)
        assert lo <= mean + 1e-9 and mean <= hi + 1e-9
    assert "(w = 1.0, given)" in written.with_suffix(".md").read_text()


def test_rerank_quality_smoke_run_compares_the_yes_no_ranker_with_code_likelihood(recipe_run, tiny_backbone, tmp_path, cli):
    base = recipe_run / "baselines" / "sasrec-ce" / "model"
    common = ["--base", base, "--data", recipe_run / "data", "--candidates", 5, "--weight", 1.0, "--users", 6, "--seed", 1]
    code, _, err = cli("tallrec", "train", "--data", recipe_run / "data", "--out", tmp_path / "tallrec", "--no-progress",
                       "--set", f"backbone={tiny_backbone}", "--set", "train.max_steps=3", "--set", "train.dtype=fp32",
                       "--set", "valid_users=4")
    assert code == 0, err
    code, out, err = cli("rerank", "--method", "tallrec", "--model", tmp_path / "tallrec", "--out", tmp_path / "yn", *common)
    assert code == 0, err
    assert "tallrec scores" in out and "s per user" in out
    code, _, err = cli("rerank", "--model", recipe_run / "model", "--index", recipe_run / "index", "--out", tmp_path / "codes",
                       *common)
    assert code == 0, err
    bench("benchmarks/rerank.py", "--quality", tmp_path / "codes", tmp_path / "yn", "--out", tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").glob("*.json")} == {
        "rerank-run-sasrec-ce.json", "rerank-run-sasrec-ce-tallrec.json", "rerank-compare-run-sasrec-ce.json"}
    r = json.loads((tmp_path / "out" / "rerank-compare-run-sasrec-ce.json").read_text())
    codes, yn = r["results"]
    assert (codes["method"], yn["method"]) == ("codes", "tallrec") and codes["test"]["base"] == yn["test"]["base"]
    assert yn["seconds_per_user"] > 0 and codes["seconds_per_user"] > 0
    md = (tmp_path / "out" / "rerank-compare-run-sasrec-ce.md").read_text()
    assert f"| {yn['seconds_per_user']:.3f} |" in md and "yes/no ranker alone on the top 5" in md
    # shortlists of other users are not compared
    code, _, err = cli("rerank", "--method", "tallrec", "--model", tmp_path / "tallrec", "--out", tmp_path / "yn2",
                       *common[:-1], 2)
    assert code == 0, err
    proc = bench("benchmarks/rerank.py", "--quality", tmp_path / "codes", tmp_path / "yn2", "--out", tmp_path / "o2", ok=False)
    assert proc.returncode != 0 and "same test users" in proc.stderr


def test_query_smoke_run_ranks_with_requests_built_from_the_targets_attributes(query_run, tmp_path):
    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.evaluate import Evaluator

    bench("benchmarks/query.py", "--run", query_run, "--users", 12, "--beams", 6, "--batch", 4, "--rerank", 8,
          "--device", "cpu", "--out", tmp_path)
    r = json.loads((tmp_path / "query.json").read_text())
    assert r["command"] == f"python benchmarks/query.py --run {query_run} --users 12 --beams 6 --batch 4 --rerank 8 " \
                           f"--device cpu --out {tmp_path}"
    assert [x["method"] for x in r["rows"]] == ["ours: history + query", "ours: query only (cold user)", "ours: history only",
                                                 "BM25: query", "BM25: query only (cold user)",
                                                 "BM25 top-8 reranked by history"]
    assert r["users"] == 12 and r["query_max_chars"] == 300 and all(0 <= x["HR@10"] <= 1 for x in r["rows"])
    assert all(x["NDCG@10"] <= x["HR@10"] for x in r["rows"])
    ds = Dataset.load(query_run / "data")
    evaluator = Evaluator(ds, ks=(10,), progress=False)
    split = evaluator.split("test")
    for e in r["examples"]:  # the request: the test target's leaf category and brand, written out here
        item = ds.items.iloc[int(split.targets[e["user"]])]
        assert e["query"] == f"a {item['categories'].split(',')[-1].strip().lower()} item by {item['brand']}"
    # the history-only row is what the shared evaluator gives the same users (the same seeded sample)
    pool = np.flatnonzero(split.targets >= 0)
    users = np.sort(np.random.default_rng(0).choice(pool, size=12, replace=False))
    assert [e["user"] for e in r["examples"]] == users[:3].tolist()
    rec = GenerativeRecommender.load(query_run / "model", query_run / "index", device="cpu", beams=6, batch_users=4,
                                     exclude_history=evaluator.mask_history)
    m = evaluator.evaluate(rec, stage="test", users=users).metrics
    hist_only = r["rows"][2]
    assert hist_only["HR@10"] == pytest.approx(m["HR@10"], abs=1e-5)
    assert hist_only["NDCG@10"] == pytest.approx(m["NDCG@10"], abs=1e-5)
    assert (tmp_path / "query.md").read_text().count("| ours: ") == 3


# ------------------------------------------------------------------------------------ runners


def test_ablations_recipe_smoke_run_runs_a_variant_on_the_base_runs_stages(recipe_run, tmp_path):
    from genrec.config import check_settings, load_config

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ablations_recipe
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # every variant's command, against configs/scientific.yaml as it is now
    out = bench("benchmarks/ablations_recipe.py", "--base", recipe_run, "--dry-run", "--out", tmp_path / "dry").stdout.splitlines()
    assert len(out) == len(ablations_recipe.ORDER)
    for line, name in zip(out, ablations_recipe.ORDER, strict=True):
        sets = re.findall(r"--set (.*?)(?= --set |$)", line)
        assert sets[0] == f"run_dir={tmp_path / 'dry' / name}" and sets[1:] == ablations_recipe.BUDGET + ablations_recipe.VARIANTS[name][0]
        check_settings(load_config(ROOT / "configs" / "scientific.yaml", sets[1:]))  # no stale key
    # one variant for real on the tiny recipe, its unchanged stages copied from the base run
    args = ["--base", recipe_run, "--only", "wo-LA", "--out", tmp_path / "abl", "--config", recipe_run.parent / "run.yaml",
            "--set", "train.layers=1"]
    bench("benchmarks/ablations_recipe.py", *args)
    run = tmp_path / "abl" / "wo-LA"
    for stage in ("data", "cf/lightgcn", "baselines/sasrec-ce"):  # copied, and skipped by `genrec run`
        assert (run / stage / "manifest.json").read_text() == (recipe_run / stage / "manifest.json").read_text()
    index = json.loads((run / "index" / "manifest.json").read_text())
    assert index["config"]["config"]["llm_weight"] == 0
    assert json.loads((run / "model" / "train_config.json").read_text())["layers"] == 1
    ndcg = json.loads((run / "evaluate" / "metrics.json").read_text())["test"]["metrics"]["NDCG@10"]
    assert 0 <= ndcg <= 1
    assert "finished before, skipped" in bench("benchmarks/ablations_recipe.py", *args).stdout


def test_ablations_smoke_run_reports_a_variant_with_its_light_copy(recipe_run, tmp_path):
    from genrec.config import check_settings, load_config

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ablations
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for name in ablations.ORDER:  # every variant's overrides, against configs/scientific.yaml as it is now
        overrides = ["baselines=[]", *ablations.PREVIOUS, *ablations.BUDGET, *ablations.VARIANTS[name][0]]
        check_settings(load_config(ROOT / "configs" / "scientific.yaml", overrides))
    report = tmp_path / "report"
    bench("benchmarks/ablations.py", "--only", "ours", "--out", tmp_path / "runs", "--report", report, "--base", recipe_run,
          "--config", recipe_run.parent / "run.yaml", "--set",
          "index.config={levels: 2, codebook_size: 8, epochs: 3, progress: false}", "train.epochs=1", "train.distill=null",
          "decode.beams=5", "decode.users=12")
    rows = json.loads((report / "ablations.json").read_text())
    assert [r["method"] for r in rows] == ["ours", ablations.FULL]  # the variant, and the base run as the full budget
    for row, run in zip(rows, (tmp_path / "runs" / "ours", recipe_run), strict=True):
        test = json.loads((run / "evaluate" / "metrics.json").read_text())["test"]["metrics"]
        assert {c: row[c] for c in COLS} == {c: round(test[c], 4) for c in COLS}
    light = report / "runs" / "ours"
    assert (light / "evaluate" / "metrics.json").is_file() and (light / "model" / "log.jsonl").is_file()
    assert not [f for f in light.rglob("*") if f.suffix in (".safetensors", ".pt", ".npy", ".npz")]  # no weights
    assert (report / "report.md").is_file()
    assert "Not finished yet (the runner resumes them): wo-LA" in (report / "notes.md").read_text()


# ------------------------------------------------------------------------------------ tables


def test_baselines_smoke_run_on_a_synthetic_source(tmp_path):
    raw = synth_raw(tmp_path / "raw")
    args = ["--source", f"synth={raw}", "--models", "pop", "sasrec-ce", "--params", 'sasrec-ce={"train": {"epochs": 2}}',
            "--run-dir", tmp_path / "runs", "--out", tmp_path / "out"]
    bench("benchmarks/baselines.py", *args)
    rows = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert [(r["dataset"], r["method"]) for r in rows] == [("synth", "pop"), ("synth", "sasrec-ce")]
    for r in rows:
        stage = tmp_path / "runs" / "synth" / "baselines" / r["method"]
        test = json.loads((stage / "metrics.json").read_text())["test"]["metrics"]
        assert {c: r[c] for c in COLS} == {c: round(test[c], 4) for c in COLS}
        assert r["mask_history"] is True  # auto: a synthetic shop never repeats an item
    assert rows[1]["epochs_run"] == 2 and rows[0]["epochs_run"] is None
    assert "## synth" in (tmp_path / "out" / "baselines.md").read_text()
    bench("benchmarks/baselines.py", *args, "--report-only")  # rewritten from the finished stages alone
    assert json.loads((tmp_path / "out" / "baselines.json").read_text()) == rows


def test_dataset_table_smoke_run_sets_ours_beside_the_baselines(recipe_run, tmp_path):
    base = [{"dataset": "synth", "method": m, **dict(zip(COLS, v, strict=True)), "mask_history": True, "seconds_per_epoch": None}
            for m, v in (("pop", [0.01, 0.05, 0.1, 0.03, 0.05]), ("sasrec-ce", [0.02, 0.06, 0.12, 0.04, 0.06]))]
    (tmp_path / "baselines.json").write_text(json.dumps(base))
    (tmp_path / "recipe.json").write_text(json.dumps([{"dataset": "synth", "method": "tiny", "mask_history": True,
                                                       **dict.fromkeys(COLS, 0.09)}]))
    bench("benchmarks/dataset_table.py", "--dataset", "synth",
          "--row", "LLM", "a tiny budget.", recipe_run / "evaluate" / "metrics.json", "genrec run run.yaml",
          "--recipe", "tiny", "LLM (recipe)", "the same.", "--baselines", tmp_path / "baselines.json",
          "--recipes", tmp_path / "recipe.json", "--out", tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "synth.json").read_text())
    assert [r["method"] for r in rows] == ["pop", "sasrec-ce", "LLM", "LLM (recipe)"]
    test = json.loads((recipe_run / "evaluate" / "metrics.json").read_text())["test"]
    assert {c: rows[2][c] for c in COLS} == {c: round(test["metrics"][c], 4) for c in COLS}
    assert rows[2]["mask_history"] is True and rows[2]["users"] == test["n_users"]  # from the evaluate stage's manifest and metrics
    md = (tmp_path / "out" / "synth.md").read_text()
    gain = {c: (max(r[c] for r in rows[2:]) / max(r[c] for r in rows[:2]) - 1) * 100 for c in COLS}
    assert "| best of ours vs the best baseline | " + " | ".join(f"{gain[c]:+.1f}%" for c in COLS) + " |" in md
    assert "Unmasked" not in md  # every row masked


def test_finetune_report_smoke_run_reads_the_model_log(recipe_run, tmp_path):
    bench("benchmarks/finetune_report.py", "--run", recipe_run, "--name", "ft", "--out", tmp_path)
    r = json.loads((tmp_path / "ft.json").read_text())
    model = json.loads((recipe_run / "model" / "manifest.json").read_text())["metrics"]
    log = [json.loads(x) for x in (recipe_run / "model" / "log.jsonl").read_text().splitlines()]
    train = [x for x in log if "loss" in x]
    assert r["state"] == "finished" and r["steps"] == model["steps"] and r["epochs"] == model["epochs"]
    assert r["steps_per_epoch"] == model["steps_per_epoch"]  # under the run's own batching, not configs/scientific.yaml's
    assert (r["first_loss"], r["last_loss"]) == (train[0]["loss"], train[-1]["loss"])
    assert [v["step"] for v in r["val"]] == [x["step"] for x in log if "val_loss" in x]
    assert r["sessions"] == 1 and r["corpus"]["tasks"] == {"seq_all": r["corpus"]["samples"]}
    import xml.etree.ElementTree as ET

    svg = ET.fromstring((tmp_path / "ft.svg").read_text())
    assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2  # train and validation loss
    assert "![loss curve](ft.svg)" in (tmp_path / "ft.md").read_text()


def test_index_smoke_run_on_a_synthetic_source(tiny_backbone, tmp_path):
    from genrec.data.dataset import Dataset

    raw = synth_raw(tmp_path / "shop")
    bench("benchmarks/index.py", "--source", raw, "--run-dir", tmp_path / "runs", "--out", tmp_path / "out", "--set",
          "codebook_size=4", "levels=2", "epochs=2", "progress=false", "n_clusters=4", "--cf-epochs", 2, "--new-items", 5,
          "--backbone", tiny_backbone)
    rows = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [r["method"] for r in rows[:9]] == ["alignment", "alignment w/o LA", "rqvae (ED: behaviour)",
                                               "rqvae (LC-Rec/TIGER: text)", "semid", "cid", "rid", "tid", "iid"]
    assert [r["levels_requested"] for r in rows[9:]] == [1, 2, 3, 4, 5]
    assert all(r["dataset"] == "shop" for r in rows)
    assert all(r["collision_rate_after"] == 0 for r in rows)  # every index tells items apart
    by = {r["method"]: r for r in rows}
    assert by["alignment"]["config"]["codebook_size"] == 4 and by["cid"]["config"]["n_clusters"] == 4
    assert by["alignment w/o LA"]["config"]["llm_weight"] == 0.0 and "codebook_size" not in by["rid"]["config"]
    assert [r["config"]["levels"] for r in rows[9:]] == [1, 2, 3, 4, 5]
    n = Dataset.load(tmp_path / "runs" / "shop" / "data").n_items
    cold = json.loads((tmp_path / "out" / "cold_start.json").read_text())
    assert (cold["n_new"], cold["catalogue"]) == (5, n - 5)
    for source in ("behaviour", "neighbours", "text"):
        assert cold[source]["items"] <= 5
        assert cold[source]["first_code_agreement"] is None or 0 <= cold[source]["first_code_agreement"] <= 1
    assert cold["behaviour"]["items"] == 5 and cold["text"]["items"] == 5
    assert "## Cold start" in (tmp_path / "out" / "index.md").read_text()


def test_text_encoder_smoke_run_scores_every_depth_like_a_slow_neighbour_count(recipe_run, tiny_backbone, tmp_path):
    """Depth 0 and the last depth re-scored here the obvious way: each item's 10 most cosine-similar
    items (centred vectors), counted against the items it shares a training sequence with."""
    from genrec.data.dataset import Dataset
    from genrec.llm.backbone import item_texts
    from genrec.llm.item_encoder import BackboneEncoder

    data = recipe_run / "data"
    bench("benchmarks/text_encoder.py", "--data", data, "--backbone", tiny_backbone, "--max-tokens", 16, "--out", tmp_path)
    r = json.loads((tmp_path / "text_encoder.json").read_text())
    assert [row["layers"] for row in r["rows"]] == [0, 1, 2]  # the tiny backbone has two layers
    assert r["best_layers"] == max(r["rows"], key=lambda row: (row["precision@10"], row["hit@10"]))["layers"]
    ds = Dataset.load(data)
    co = [set() for _ in range(ds.n_items)]
    for seq in ds.train_sequences():
        for i in seq:
            co[int(i)] |= {int(j) for j in seq} - {int(i)}
    for depth in (0, 2):
        v = BackboneEncoder(str(tiny_backbone), depth, 16, device="cpu", dtype="fp32")(item_texts(ds.items))
        v = v - v.mean(0)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        hits, prec = [], []
        for i in range(ds.n_items):
            if not co[i]:
                continue
            order = [j for j in np.argsort(-(v @ v[i]), kind="stable") if j != i][:10]
            n = sum(int(j) in co[i] for j in order)
            hits.append(n > 0)
            prec.append(n / 10)
        row = r["rows"][depth]
        assert row["items"] == len(hits)
        assert row["hit@10"] == pytest.approx(np.mean(hits), abs=1e-4)
        assert row["precision@10"] == pytest.approx(np.mean(prec), abs=1e-4)
    assert "| random vectors |" in (tmp_path / "text_encoder.md").read_text()


# ------------------------------------------------------------------------------------ throughput


def test_shared_prompts_smoke_run_sends_fewer_tokens_through_the_model(recipe_run, tiny_backbone, tmp_path):
    bench("benchmarks/shared_prompts.py", "--run", recipe_run, "--users", 4, "--backbone", tiny_backbone, "--repeat", 1,
          "--batch", 8, "--out", tmp_path)
    r = json.loads((tmp_path / "shared_prompts.json").read_text())
    padded, shared = r["runs"]["padded"], r["runs"]["shared"]
    assert padded["samples"] == shared["samples"] and padded["target_tokens"] == shared["target_tokens"]  # the same losses
    assert padded["units"] == padded["samples"] and shared["units"] < shared["samples"]  # negatives behind one prompt
    assert shared["tokens"] < padded["tokens"] == padded["padded_tokens"]
    assert r["token_ratio"] == round(padded["tokens"] / shared["tokens"], 2)
    assert r["ratio"] == pytest.approx(shared["target_tokens_per_s"] / padded["target_tokens_per_s"], abs=0.01)
    assert all(math.isfinite(x["final_loss"]) for x in (padded, shared))


def test_train_throughput_smoke_run_trains_the_same_targets_three_ways(recipe_run, tiny_backbone, tmp_path, cli):
    # a codes-prompt corpus (the recipe's) has no item boundary to cut per-prefix samples at: refused, saying why
    proc = bench("benchmarks/train_throughput.py", "--corpus", recipe_run / "tasks", "--out", tmp_path, ok=False)
    assert proc.returncode != 0 and "codes-prompt corpus" in proc.stderr
    corpus = tmp_path / "corpus"
    code, _, err = cli("tasks", "build", "--data", recipe_run / "data", "--index", recipe_run / "index", "--out", corpus,
                       "--backbone", tiny_backbone, "--set", "layout=all_positions", "--set", "tasks=[seq]",
                       "--set", "negatives_per_positive=0", "--valid-users", 5)
    assert code == 0, err
    bench("benchmarks/train_throughput.py", "--corpus", corpus, "--users", 4, "--batch", 4, "--out", tmp_path)
    r = json.loads((tmp_path / "train_throughput.json").read_text())
    hf, per_prefix, ours = r["runs"]["hf"], r["runs"]["ours-per-prefix"], r["runs"]["ours"]
    assert hf["target_tokens"] == per_prefix["target_tokens"] == ours["target_tokens"] > 0  # the same supervision
    assert hf["samples"] == per_prefix["samples"] > ours["samples"] == 4  # 4 sequences cut into their prefixes
    assert r["ratio"] == round(ours["target_tokens_per_s"] / hf["target_tokens_per_s"], 2)
    assert r["trainer_only_ratio"] == round(per_prefix["target_tokens_per_s"] / hf["target_tokens_per_s"], 2)
    assert all(math.isfinite(x["mean_loss"]) for x in (hf, per_prefix, ours))


# ------------------------------------------------------------------------------------ serving


def test_serve_load_smoke_run_serves_every_store_without_errors(recipe_run, tmp_path):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (`make setup` installs it with apt-get): serve_load.py drives the server with it")
    from genrec.data.dataset import Dataset

    stores = ["sqlite", *(["redis"] if shutil.which("redis-server") else [])]
    bench("benchmarks/serve_load.py", "--run", recipe_run, "--modes", "hit", "--seconds", 1, "--warmup", 1,
          "--connections", 2, "--stores", *stores, "--out", tmp_path)
    rows = json.loads((tmp_path / "serve_load.json").read_text())
    assert [r["store"] for r in rows] == stores and {r["mode"] for r in rows} == {"hit"}
    for r in rows:
        assert r["users"] == Dataset.load(recipe_run / "data").n_users
        assert r["errors"] == 0 and r["requests"] > 0 and r["rps"] > 0  # every request a 200 from the cache
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]


def test_serve_load_smoke_run_decodes_misses_rides_out_a_redis_fault_and_times_a_build(recipe_run, tmp_path):
    for need in ("wrk", "redis-server"):
        if shutil.which(need) is None:
            pytest.skip(f"{need} is not installed (`make setup` installs it with apt-get): serve_load.py's miss and fault runs use it")
    from genrec.data.dataset import Dataset

    bench("benchmarks/serve_load.py", "--run", recipe_run, "--modes", "miss", "fault", "--miss-seconds", 2, "--miss-users", 8,
          "--fault-seconds", 1, "--warmup", 1, "--connections", 2, "--build-sample", 4, "--out", tmp_path)
    rows = json.loads((tmp_path / "serve_load.json").read_text())
    assert [r["mode"] for r in rows] == ["miss", "hit during decoding", "miss", "fault", "build"]
    decoded, hits, budgeted, fault, build = rows
    n_users = Dataset.load(recipe_run / "data").n_users
    assert decoded["users"] == 8 and hits["users"] == n_users - 8
    # every miss answered 200; with an unbounded budget each held-out user is decoded (a repeat is kept: still "decode")
    assert decoded["by_status"] == {"200": decoded["requests"]} and decoded["by_source"] == {"decode": decoded["requests"]}
    assert hits["errors"] == 0 and hits["requests"] > 0
    assert sum(budgeted["by_status"].values()) == budgeted["requests"] and set(budgeted["by_status"]) == {"200"}
    assert set(budgeted["by_source"]) <= {"decode", "popular"}
    phases = fault["phases"]
    assert list(phases) == ["healthy", "paused (SIGSTOP)", "killed (SIGKILL)", "restarted"]
    for name, ph in phases.items():
        assert ph["by_status"] == {"200": ph["requests"]}, name  # never a 5xx: cache or popularity
    assert phases["healthy"]["by_source"] == {"cache": phases["healthy"]["requests"]}
    assert phases["paused (SIGSTOP)"]["by_source"].get("popular", 0) > 0
    assert phases["killed (SIGKILL)"]["by_source"] == {"popular": phases["killed (SIGKILL)"]["requests"]}
    assert phases["restarted"]["by_source"].get("cache", 0) > 0 and fault["recover_s"] is not None
    assert build["users"] == 4 and build["all_users"] == n_users and 0 < build["decode_seconds"] <= build["seconds"]
    text = (tmp_path / "serve_load.md").read_text()
    assert "Redis store fault" in text and "Cache build" in text


def test_llm_patterns_smoke_run_sets_sasrec_llm_beside_sasrec_ce(tiny_backbone, tmp_path):
    from genrec.data.cold import cold_item_split
    from genrec.data.dataset import Dataset
    from genrec.data.loaders import load_raw
    from genrec.data.preprocess import PrepareConfig, preprocess

    ds = preprocess(load_raw(synth_raw(tmp_path / "raw", n_users=60, n_items=30)), PrepareConfig(kcore=2))
    ds.save(tmp_path / "data")
    args = ["--data", tmp_path / "data", "--label", "synth", "--run-dir", tmp_path / "runs", "--out", tmp_path / "out",
            "--cache", tmp_path / "cache", "--backbone", tiny_backbone, "--encoder-layers", 1, "--max-tokens", 16,
            "--train", '{"epochs": 2, "progress": false}', "--cold-share", 0.2, "--changed", 3, "--cold-modes", "add", "replace"]
    bench("benchmarks/llm_patterns.py", *args)
    res = json.loads((tmp_path / "out" / "llm_patterns.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["sasrec-ce", "sasrec-llm"]
    for r in res["rows"]:
        m = json.loads((tmp_path / "runs" / "normal" / r["method"] / "metrics.json").read_text())
        assert {c: r[c] for c in COLS} == {c: round(m["test"]["metrics"][c], 4) for c in COLS}
        fit = m["fit"]  # training time from the stage's own epoch timing (a tiny epoch may round to 0)
        assert r["epochs_run"] == fit["epochs_run"] == 2 and r["seconds_per_user"] > 0
        assert r["train_seconds"] == round(fit["seconds_per_epoch"] * 2, 3) and 0 <= r["train_seconds"] <= r["wall_seconds"]
    llm = res["rows"][1]
    hits = {}  # HR@10 gain by a plain loop over the two stages' rows
    for r in res["rows"]:
        rows = pq.read_table(tmp_path / "runs" / "normal" / r["method"] / "test_users.parquet").to_pylist()
        hits[r["method"]] = [1.0 if x["rank"] == x["rank"] and x["rank"] <= 10 else 0.0 for x in rows]
    gain = sum(b - a for a, b in zip(hits["sasrec-ce"], hits["sasrec-llm"], strict=True)) / len(hits["sasrec-ce"])
    assert res["gain"]["HR@10"][0] == round(gain, 4) and res["gain"]["HR@10"][1] <= res["gain"]["HR@10"][2]
    assert llm["encoder"]["encoded"] + llm["encoder"]["reused"] == len(set(ds.items["title"] + " " + ds.items["description"]))
    assert res["costs"]["reuse"]["encoded"] == 0 and res["costs"]["update"]["encoded"] == 3  # only the changed texts
    split = cold_item_split(ds, 0.2, 0)
    assert [r["method"] for r in res["cold"]] == ["sasrec-ce", "sasrec-llm", "sasrec-llm-replace"]
    made = json.loads((tmp_path / "runs" / "cold" / "sasrec-llm-replace" / "manifest.json").read_text())
    assert made["config"]["params"]["config"]["mode"] == "replace"
    for r in res["cold"]:  # cold users' HR@10 from the stage's per-user rows, by a plain loop
        rows = pq.read_table(tmp_path / "runs" / "cold" / r["method"] / "test_users.parquet").to_pylist()
        mine = [x for x in rows if x["user_idx"] in set(split.users.tolist())]
        assert r["users"] == len(split.users) == len(mine)
        assert r["HR@10"] == round(sum(1 for x in mine if x["rank"] == x["rank"] and x["rank"] <= 10) / len(mine), 4)
        others = [x for x in rows if x["user_idx"] not in set(split.users.tolist())]
        cold = set(split.cold_items.tolist())
        share = sum(sum(i in cold for i in x["topk"][:10]) / len(x["topk"][:10]) for x in others) / len(others)
        assert r["others_cold_slots"] == round(share, 4)
    assert Dataset.load(tmp_path / "runs" / "cold" / "data").item_popularity()[split.cold_items].sum() == 0
    text = (tmp_path / "out" / "llm_patterns.md").read_text()
    assert "## synth: normal split" in text and "cold-item split" in text and "long-short update" in text


# ------------------------------------------------------------------------------------ coverage


def test_every_benchmark_script_has_a_smoke_run():
    """Each benchmarks/NAME.py (not the _private helpers) is run by some test as a subprocess."""
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    missing = [p.name for p in sorted((ROOT / "benchmarks").glob("*.py")) if not p.name.startswith("_")
               and f'"benchmarks/{p.name}"' not in tests and f'"benchmarks" / "{p.name}"' not in tests]
    assert not missing, f"benchmark scripts without a smoke run: {missing}"
