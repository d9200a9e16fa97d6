"""A dataset's table: our fine-tuned models beside the classic baselines, same split, same evaluator.

    .venv/bin/python benchmarks/dataset_table.py --dataset scientific \
        --row "METHOD" "BUDGET" runs/X/evaluate/metrics.json "COMMAND" [--row ...] [--recipe NAME ...] [--remark "..."]

Reads the dataset's baseline rows from benchmarks/results/baselines.json and each of our models'
test metrics from an evaluation metrics.json (``genrec evaluate --out DIR`` or a pipeline's
evaluate stage; all test users) or from benchmarks/results/recipe.json (``--recipe``), and writes
benchmarks/results/DATASET.{md,json} with the improvement of the best of ours over the best
baseline and the command that wrote it. Rows are grouped by the evaluator's history masking
(``mask_history``: masked, the default on deduplicated data; unmasked, the protocol of most
papers); a metrics.json that does not record it was measured unmasked.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402
from genrec.report import BASELINE_NAMES, COLS  # noqa: E402


def read_eval(path: Path) -> dict:
    """{"metrics", "n_users", "beams"} of a `genrec evaluate --out` or evaluate-stage metrics.json."""
    raw = json.loads(path.read_text())
    if raw.get("users_sampled"):
        sys.exit(f"{path}: evaluated on a sample of {raw['users_sampled']} users; the table needs every test user")
    mask = raw.get("mask_history")
    manifest = path.parent / "manifest.json"  # an evaluate stage's: its evaluate settings and its data
    if mask is None and manifest.is_file():
        m = json.loads(manifest.read_text())
        from genrec.data.dataset import Dataset
        from genrec.evaluate import resolve_mask_history

        mask = resolve_mask_history(m["config"].get("evaluate", {}).get("mask_history", False),
                                    Dataset.load(m["inputs"]["data"]["path"]))
    mask = bool(mask)
    if "test" in raw:  # the evaluate stage's (genrec run, genrec evaluate --out)
        return {"metrics": raw["test"]["metrics"], "n_users": raw["test"].get("n_users"), "beams": raw.get("beams", 20),
                "mask_history": mask}
    # an older `genrec evaluate --out`, before it wrote the stage's artifact
    return {"metrics": raw["metrics"], "n_users": raw["n_users"], "beams": raw.get("beams", 20), "mask_history": mask}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="scientific", help="a dataset of benchmarks/results/baselines.json")
    ap.add_argument("--row", nargs=4, action="append", default=[], metavar=("METHOD", "BUDGET", "METRICS_JSON", "COMMAND"),
                    help="one of our models: its name, its training budget in words, its metrics.json, the command")
    ap.add_argument("--recipe", nargs=3, action="append", default=[], metavar=("RECIPE", "METHOD", "BUDGET"),
                    help="one of our models from benchmarks/results/recipe.json (every masking it has), shown as METHOD")
    ap.add_argument("--remark", default="", help="a paragraph placed under the commands (wall times, caveats)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--baselines", type=Path, default=ROOT / "benchmarks" / "results" / "baselines.json",
                    help="the baseline rows (benchmarks/baselines.py's baselines.json)")
    ap.add_argument("--recipes", type=Path, default=ROOT / "benchmarks" / "results" / "recipe.json",
                    help="the recipe rows --recipe reads (benchmarks/recipe.py's recipe.json)")
    args = ap.parse_args()
    ds = args.dataset
    base = [r for r in json.loads(args.baselines.read_text()) if r["dataset"] == ds]
    if not base:
        sys.exit(f"{args.baselines}: no rows of dataset {ds!r}; run benchmarks/baselines.py --datasets {ds}")
    rows = [{"dataset": ds, "method": r["method"], **{c: r[c] for c in COLS}, "mask_history": bool(r.get("mask_history", False)),
             "seconds_per_epoch": r.get("seconds_per_epoch")} for r in base]
    ours = []
    for method, budget, path, command in args.row:
        ev = read_eval(Path(path))
        ours.append({"dataset": ds, "method": method, **{c: round(ev["metrics"][c], 4) for c in COLS},
                     "mask_history": ev["mask_history"], "seconds_per_epoch": None, "users": ev["n_users"], "budget": budget,
                     "command": command, "beams": ev["beams"], "ours": True})
    recipes = json.loads(args.recipes.read_text()) if args.recipe else []
    for name, method, budget in args.recipe:
        found = [r for r in recipes if r["dataset"] == ds and r["method"] == name]
        if not found:
            sys.exit(f"{args.recipes}: no row {name!r} of dataset {ds!r}")
        ours += [{"dataset": ds, "method": method, **{c: r[c] for c in COLS}, "mask_history": r["mask_history"],
                  "seconds_per_epoch": None, "users": None, "budget": budget, "command": "benchmarks/results/recipe.md",
                  "beams": 20, "ours": True} for r in found]
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{ds}.json").write_text(json.dumps(rows + ours, indent=2) + "\n")
    lines = [f"# Our models beside the baselines: {ds}", "",
             "Test split (leave-one-out), full ranking over all items, every test user, the same `Evaluator` for every "
             f"row. Machine: {describe(info)}.", ""]
    for r in {r["method"]: r for r in ours}.values():
        lines += [f"- **{r['method']}**: {r['budget']} Beam {r['beams']}. `{r['command']}`"]
    lines += ["", *([args.remark, ""] if args.remark else []),
              f"Baselines: `OMP_NUM_THREADS=1 python benchmarks/baselines.py --datasets {ds}` ([baselines.md](baselines.md)).", ""]
    for mask in (True, False):
        group = [r for r in rows + ours if r["mask_history"] == mask]
        if not group:
            continue
        lines += [f"## {'History masked (the evaluator’s default on deduplicated data)' if mask else 'Unmasked (the protocol of most papers)'}",
                  "", "| method | " + " | ".join(COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
        for r in group:
            name = r["method"] if r.get("ours") else BASELINE_NAMES.get(r["method"], r["method"])
            lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in COLS) + " |")
        mine, theirs = [r for r in group if r.get("ours")], [r for r in group if not r.get("ours")]
        if mine and theirs:
            top = {c: max(r[c] for r in mine) for c in COLS}
            best = {c: max(r[c] for r in theirs) for c in COLS}
            lines.append("| best of ours vs the best baseline | "
                         + " | ".join(f"{(top[c] / best[c] - 1) * 100:+.1f}%" for c in COLS) + " |")
        lines.append("")
    lines += ["Written by:", "", "```", shlex.join(["python", "benchmarks/dataset_table.py", *sys.argv[1:]]), "```"]
    (args.out / f"{ds}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
