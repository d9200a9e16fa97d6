"""A dataset's table: our fine-tuned models beside the classic baselines, same split, same evaluator.

    .venv/bin/python benchmarks/dataset_table.py --dataset scientific \
        --row "METHOD" "BUDGET" runs/X/evaluate/metrics.json "COMMAND" [--row ...] [--remark "..."]

Reads the dataset's baseline rows from benchmarks/results/baselines.json and each of our models'
test metrics from an evaluation metrics.json (``genrec evaluate --out DIR`` or a pipeline's
evaluate stage; all test users), and writes benchmarks/results/DATASET.{md,json} with the
improvement of the best of ours over the best baseline and the command that wrote it.
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
    if "test" in raw:  # the pipeline's evaluate stage
        return {"metrics": raw["test"]["metrics"], "n_users": raw["test"].get("n_users"), "beams": raw.get("beams", 20)}
    return {"metrics": raw["metrics"], "n_users": raw["n_users"], "beams": raw.get("beams", 20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="scientific", help="a dataset of benchmarks/results/baselines.json")
    ap.add_argument("--row", nargs=4, action="append", required=True, metavar=("METHOD", "BUDGET", "METRICS_JSON", "COMMAND"),
                    help="one of our models: its name, its training budget in words, its metrics.json, the command")
    ap.add_argument("--remark", default="", help="a paragraph placed under the commands (wall times, caveats)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    ds = args.dataset
    base = [r for r in json.loads((ROOT / "benchmarks" / "results" / "baselines.json").read_text()) if r["dataset"] == ds]
    if not base:
        sys.exit(f"benchmarks/results/baselines.json: no rows of dataset {ds!r}; run benchmarks/baselines.py --datasets {ds}")
    rows = [{"dataset": ds, "method": r["method"], **{c: r[c] for c in COLS},
             "seconds_per_epoch": r.get("seconds_per_epoch")} for r in base]
    best = {c: max(r[c] for r in rows) for c in COLS}
    ours = []
    for method, budget, path, command in args.row:
        ev = read_eval(Path(path))
        ours.append({"dataset": ds, "method": method, **{c: round(ev["metrics"][c], 4) for c in COLS},
                     "seconds_per_epoch": None, "users": ev["n_users"], "budget": budget, "command": command,
                     "beams": ev["beams"], "ours": True})
    info = machine()
    (args.out / f"{ds}.json").write_text(json.dumps(rows + ours, indent=2) + "\n")
    users = {r["users"] for r in ours if r["users"]}
    lines = [f"# Our models beside the baselines: {ds}", "",
             f"Test split (leave-one-out), full ranking over all items, {', '.join(f'{u:,}' for u in sorted(users))} test "
             f"users, the same `Evaluator` for every row. Machine: {describe(info)}.", ""]
    for r in ours:
        lines += [f"- **{r['method']}**: {r['budget']} Beam {r['beams']}. `{r['command']}`"]
    lines += ["", *([args.remark, ""] if args.remark else []),
              f"Baselines: `OMP_NUM_THREADS=1 python benchmarks/baselines.py --datasets {ds}` ([baselines.md](baselines.md)).",
              "", "| method | " + " | ".join(COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
    for r in rows + ours:
        name = r["method"] if r.get("ours") else BASELINE_NAMES.get(r["method"], r["method"])
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in COLS) + " |")
    top = {c: max(r[c] for r in ours) for c in COLS}
    lines.append("| best of ours vs the best baseline | " + " | ".join(f"{(top[c] / best[c] - 1) * 100:+.1f}%" for c in COLS) + " |")
    lines += ["", "Written by:", "", "```", shlex.join(["python", "benchmarks/dataset_table.py", *sys.argv[1:]]), "```"]
    (args.out / f"{ds}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
