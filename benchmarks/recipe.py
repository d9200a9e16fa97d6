"""The generative recommender's recipes side by side: every recipe tried, on one split, through one
evaluator, with what it cost.

    .venv/bin/python benchmarks/recipe.py --run v2-seq-full=runs/scientific --chosen v2-seq-full
    .venv/bin/python benchmarks/recipe.py --report-only          # rewrite the tables from recipe.json

A recipe is a finished run folder of `genrec run` (data, cf, index, tasks, model, evaluate). Its row
holds the settings that differ between recipes, the budget (epochs and steps run, the epoch kept),
the wall time of every stage from the stage manifests (``pipeline_seconds``: data to test
metrics, baselines excluded), the validation metrics of model selection (the sample of validation
users decoded while training), and the test metrics with coverage@10 and tail NDCG@10 (users whose
test item has at most ``--tail`` training interactions). Rows are merged into
benchmarks/results/recipe.json by (dataset, method, seed, mask_history), so rows measured in
earlier sessions stay; ``--chosen`` marks the recipe the configs run. The SASRec-CE and FMLP-Rec
rows of baselines.json under the same masking are printed beside them.

``--lists NAME=EVALUATE_DIR`` adds the rows of the decoded lists of an earlier evaluation (its
``test_users.parquet``) re-scored with the evaluator's default masking and without masking, with
its settings and costs given as ``--info NAME=JSON``: how the previous default recipe gets its
masked row without a second 46-minute decode.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402
from genrec.artifacts import read_manifest  # noqa: E402
from genrec.data.dataset import Dataset  # noqa: E402
from genrec.evaluate import Evaluator, resolve_mask_history  # noqa: E402
from genrec.llm.config import DistillConfig  # noqa: E402

COLS = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]
STAGES = ["data", "cf/*", "text", "index", "tasks", "distill", "model", "evaluate"]


def tail_ndcg(dump: Path, dataset: Dataset, max_pop: int, k: int = 10) -> tuple[float | None, int]:
    """(NDCG@k over users whose test item has at most ``max_pop`` training interactions, their count);
    None when there are none."""
    import pyarrow.parquet as pq

    t = pq.read_table(dump).to_pandas()
    pop = dataset.item_popularity()
    tail = pop[t["target"].to_numpy()] <= max_pop
    rank = t["rank"].to_numpy()[tail]
    gain = np.where(np.isfinite(rank) & (rank <= k), 1.0 / np.log2(np.nan_to_num(rank, nan=1e9) + 1), 0.0)
    return (round(float(gain.mean()), 4) if len(gain) else None), int(tail.sum())


def dataset_name(data: Path) -> str:
    """The name of a prepared dataset folder's data: its source folder's, or 'synth' for generated data."""
    source = Path(read_manifest(data)["inputs"]["source"]["path"])
    synth = read_manifest(source)
    return "synth" if synth is not None and synth.get("stage") == "synth" else source.name


def stage_seconds(run: Path) -> dict[str, float]:
    """Wall seconds of each stage of a run from its manifests (a distilling run's teacher included)."""
    out = {}
    train = (read_manifest(run / "model") or {}).get("config", {}).get("train", {})
    teacher = [f"baselines/{DistillConfig(**train['distill']).teacher}"] if train.get("distill") is not None else []
    for pattern in STAGES + teacher:
        for folder in sorted(run.glob(pattern)):
            m = read_manifest(folder)
            if m is not None:
                out[str(folder.relative_to(run))] = float(m["wall_seconds"])
    return out


def settings(run: Path) -> dict:
    """The index, task and training settings of a run (from its stage manifests)."""
    index, tasks, model = (read_manifest(run / s) or {} for s in ("index", "tasks", "model"))
    train = dict(model.get("config", {}).get("train", {}))
    if train.get("distill") is not None:  # the manifest leaves defaults out; a row names them
        train["distill"] = DistillConfig(**train["distill"]).model_dump()
    return {"index": index.get("config", {}), "tasks": tasks.get("config", {}).get("tasks", {}), "train": train}


def selection(run: Path) -> dict:
    """The validation metrics of the selected weights (model selection's best entry), if any."""
    log = run / "model" / "log.jsonl"
    if not log.is_file():
        return {}
    chosen = [x for x in map(json.loads, log.read_text().splitlines()) if "select_value" in x]
    if not chosen:
        return {}
    best = max(chosen, key=lambda x: (x["select_value"], -x["step"]))
    return {"valid": best["select"], "selections": [(x["epoch"], x["select_value"]) for x in chosen]}


def row_from_run(name: str, run: Path, tail: int) -> dict:
    ev_m, model_m = read_manifest(run / "evaluate"), read_manifest(run / "model")
    if ev_m is None or model_m is None:
        raise SystemExit(f"{run}: not a finished run (needs model/ and evaluate/ stages)")
    test = json.loads((run / "evaluate" / "metrics.json").read_text())["test"]["metrics"]
    ds = Dataset.load(run / "data")
    mask = resolve_mask_history(ev_m["config"]["evaluate"].get("mask_history", False), ds)
    tail_v, tail_n = tail_ndcg(run / "evaluate" / "test_users.parquet", ds, tail)
    secs = stage_seconds(run)
    m = model_m["metrics"]
    sel = selection(run)
    kept = settings(run)
    return {
        "dataset": dataset_name(run / "data"),
        "method": name, **{c: round(test[c], 4) for c in COLS},
        "coverage@10": round(test["coverage@10"], 4), "tail_NDCG@10": tail_v, "tail_users": tail_n,
        "valid_HR@10": sel.get("valid", {}).get("HR@10"), "valid_NDCG@10": sel.get("valid", {}).get("NDCG@10"),
        "valid_users": kept["train"].get("select_users"),
        "selections": sel.get("selections"),
        "seed": int(kept["train"].get("seed", 0)),
        "epochs_run": m.get("epochs"), "steps": m.get("steps"), "selected_epoch": m.get("selected_epoch"),
        "pipeline_seconds": round(sum(secs.values()), 1), "train_seconds": round(m.get("train_seconds", 0.0), 1),
        "decode_seconds": round(ev_m["wall_seconds"], 1), "stage_seconds": secs,
        "mask_history": mask, "settings": kept, "chosen": False,
    }


def row_from_lists(name: str, folder: Path, data: Path, info: dict, tail: int, mask) -> dict:
    """A row from an earlier evaluation's decoded lists, re-scored with history masking ``mask``."""
    import pyarrow.parquet as pq

    from genrec.decode.recommender import PrecomputedRanker

    t = pq.read_table(folder / "test_users.parquet").to_pandas()
    ds = Dataset.load(data)
    lists = {int(u): [int(i) for i in x] for u, x in zip(t["user_idx"], t["topk"], strict=True)}
    ev = Evaluator(ds, ks=(1, 5, 10, 20), mask_history=mask, progress=False)
    dump = folder.parent / f".{folder.name}-rescored.parquet"
    res = ev.evaluate(PrecomputedRanker(lists), stage="test", users=np.array(sorted(lists)), dump_path=dump)
    tail_v, tail_n = tail_ndcg(dump, ds, tail)
    dump.unlink()
    return {"dataset": "scientific", "method": name, **{c: round(res.metrics[c], 4) for c in COLS},
            "coverage@10": round(res.metrics["coverage@10"], 4), "tail_NDCG@10": tail_v, "tail_users": tail_n,
            "mask_history": ev.mask_history, "chosen": False, **info}


def row_from_baseline(stage: Path, tail: int) -> dict:
    """A classic baseline's stage (benchmarks/baselines.py's run folder) as a reference row: its test
    metrics, coverage@10 and tail NDCG@10 from its per-user dump, its wall time."""
    m = read_manifest(stage)
    if m is None:
        raise SystemExit(f"{stage}: not a finished baseline stage")
    test = json.loads((stage / "metrics.json").read_text())["test"]["metrics"]
    data = Path(m["inputs"]["data"]["path"])
    ds = Dataset.load(data)
    mask = resolve_mask_history(m["config"]["evaluate"].get("mask_history", False), ds)
    tail_v, tail_n = tail_ndcg(stage / "test_users.parquet", ds, tail)
    return {"dataset": dataset_name(data), "method": f"baseline: {stage.name}",
            **{c: round(test[c], 4) for c in COLS}, "coverage@10": round(test["coverage@10"], 4), "tail_NDCG@10": tail_v,
            "tail_users": tail_n, "mask_history": mask, "chosen": False, "baseline": True,
            "pipeline_seconds": round(m["wall_seconds"], 1), "seed": int(m["config"].get("seed", 0))}


def merge(rows: list[dict], out: Path) -> list[dict]:
    """The rows measured now merged into recipe.json: a re-measured row takes its old row's place and
    keeps its note and chosen mark (curation, not measurement: --note and --chosen set them); new
    rows come last."""
    key = lambda r: (r["dataset"], r["method"], r.get("seed", 0), r["mask_history"])  # noqa: E731
    fresh = {key(r): r for r in rows}
    old = json.loads((out / "recipe.json").read_text()) if (out / "recipe.json").is_file() else []
    merged = []
    for r in old:
        new = fresh.pop(key(r), None)
        merged.append(r if new is None else {**new, **{f: r[f] for f in ("note", "chosen") if f in r}})
    return merged + list(fresh.values())


def cell(v, fmt="{:.4f}") -> str:
    return "" if v is None else (fmt.format(v) if isinstance(v, float) else str(v))


def write(rows: list[dict], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: not r.get("baseline", False))  # the reference rows first, then in the order tried
    (out / "recipe.json").write_text(json.dumps(rows, indent=2) + "\n")
    base = json.loads((out / "baselines.json").read_text()) if (out / "baselines.json").is_file() else []
    lines = ["# Recipes of the generative recommender", "",
             "Every recipe tried, on the same leave-one-out split through the same evaluator (full ranking over all",
             "items, test split read once per recipe). `masked`: history items never recommended (the evaluator's",
             "default on deduplicated data). Validation: model selection's sample of validation users. Tail: users",
             "whose test item has at most 5 training interactions. Seconds from the stage manifests; `pipeline`:",
             "data to test metrics (baselines excluded). The chosen recipe (what `configs/<dataset>.yaml` runs) is",
             "in bold; negative results stay.", "",
             f"Machine: {describe(machine())}.", "", f"Command: `{command}`", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"## {ds}", "",
                  "| recipe | seed | masked | " + " | ".join(COLS) + " | coverage@10 | tail NDCG@10 | valid HR@10 | valid NDCG@10 "
                  "| epochs (kept) | steps | train s | decode s | pipeline s |",
                  "|---" * (len(COLS) + 12) + "|"]
        for r in (r for r in rows if r["dataset"] == ds):
            name = f"**{r['method']}**" if r["chosen"] else r["method"]
            ep = cell(r.get("epochs_run"), "{:g}") + (f" ({r['selected_epoch']:g})" if r.get("selected_epoch") else "")
            lines.append("| " + " | ".join([name, str(r.get("seed", 0)), "yes" if r["mask_history"] else "no",
                                            *(cell(r[c]) for c in COLS), cell(r.get("coverage@10")), cell(r.get("tail_NDCG@10")),
                                            cell(r.get("valid_HR@10")), cell(r.get("valid_NDCG@10")), ep, cell(r.get("steps")),
                                            cell(r.get("train_seconds"), "{:,.0f}"), cell(r.get("decode_seconds"), "{:,.0f}"),
                                            cell(r.get("pipeline_seconds"), "{:,.0f}")]) + " |")
        refs = [b for b in base if b["dataset"] == ds and b["method"] in ("sasrec-ce", "fmlp", "pop")]
        if refs:
            lines += ["", "Baselines on the same split (benchmarks/results/baselines.json; the `baseline:` rows above are the "
                      "masked ones with their coverage and tail):", "",
                      "| baseline | masked | " + " | ".join(COLS) + " |", "|---" * (len(COLS) + 2) + "|"]
            lines += [f"| {b['method']} | {'yes' if b.get('mask_history') else 'no'} | " + " | ".join(f"{b[c]:.4f}" for c in COLS) + " |"
                      for b in refs]
        lines.append("")
        for r in {r["method"]: r for r in rows if r["dataset"] == ds and r.get("settings")}.values():
            lines.append(f"- `{r['method']}` (seed {r.get('seed', 0)}): `{json.dumps(r['settings'], sort_keys=True)}`"
                         + (f"; {r['note']}" if r.get("note") else ""))
        lines.append("")
    (out / "recipe.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="*", default=[], help="NAME=RUN_DIR of a finished `genrec run`")
    ap.add_argument("--lists", nargs="*", default=[], help="NAME=EVALUATE_DIR of an earlier evaluation to re-score")
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "scientific" / "data", help="the data of --lists")
    ap.add_argument("--info", nargs="*", default=[], help="NAME=JSON: fields of a --lists row (settings, costs)")
    ap.add_argument("--stopped", nargs="*", default=[],
                    help="NAME=JSON: an exploration stopped before its test evaluation (settings, budget, validation "
                         "figures); listed with empty test cells, the test split never read")
    ap.add_argument("--note", nargs="*", default=[], help="NAME=TEXT: a note beside a recipe")
    ap.add_argument("--chosen", nargs="*", default=[], help="the recipes the configs run")
    ap.add_argument("--baseline", nargs="*", default=[], help="a finished baseline stage folder, e.g. "
                                                                   "runs/bench/scientific/baselines/sasrec-ce: a reference row")
    ap.add_argument("--tail", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    pairs = lambda xs: dict(x.split("=", 1) for x in xs)  # noqa: E731
    rows = [{**row_from_run(n, Path(p), args.tail), "command": f"--run {n}={p}"} for n, p in pairs(args.run).items()]
    rows += [{**row_from_baseline(Path(p), args.tail), "command": f"--baseline {p}"} for p in args.baseline]
    info = {n: json.loads(v) for n, v in pairs(args.info).items()}
    rows += [{**row_from_lists(n, Path(p), args.data, info.get(n, {}), args.tail, mask),
              "command": f"--lists {n}={p} --data {args.data} --info {n}=..."}
             for n, p in pairs(args.lists).items() for mask in ("auto", False)]
    for n, v in pairs(args.stopped).items():
        rows.append({"dataset": "scientific", "method": n, **dict.fromkeys(COLS), "mask_history": True, "chosen": False,
                     "stopped": True, "command": f"--stopped {n}=...", **json.loads(v)})
    rows = merge(rows, args.out) if not args.report_only else json.loads((args.out / "recipe.json").read_text())
    notes = pairs(args.note)
    for r in rows:
        if args.chosen:
            r["chosen"] = r["method"] in args.chosen
        if r["method"] in notes:
            r["note"] = notes[r["method"]]
    write(rows, args.out, "python benchmarks/recipe.py --run NAME=RUN_DIR [--baseline STAGE_DIR] [--chosen NAME]  "
                          "(each row's own arguments: its `command` in recipe.json)")
    for r in rows:
        print(f"{r['dataset']:<12} {r['method']:<28} seed {r.get('seed', 0)} masked {r['mask_history']!s:<5} "
              f"HR@10 {cell(r['HR@10'])} NDCG@10 {cell(r['NDCG@10'])}")


if __name__ == "__main__":
    main()
