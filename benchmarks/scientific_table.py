"""The scientific table: our fine-tuned model beside the classic baselines, same split, same evaluator.

    .venv/bin/python benchmarks/scientific_table.py --eval runs/scientific/eval/metrics.json --budget "..."

Reads the baselines' scientific rows from benchmarks/results/baselines.json and our model's test
metrics from a `genrec evaluate --out DIR` metrics.json (all test users), and writes
benchmarks/results/scientific.{md,json} with the improvement of ours over the best baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402

NAMES = {"pop": "Pop", "sasrec": "SASRec (BCE, 1 negative)", "sasrec-ce": "SASRec (cross-entropy)", "bert4rec": "BERT4Rec",
         "gru4rec": "GRU4Rec", "fmlp": "FMLP-Rec", "lightgcn": "LightGCN", "dccf": "DCCF"}
COLS = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=Path, required=True, help="metrics.json of `genrec evaluate --out`")
    ap.add_argument("--method", default="genrec (alignment index, all tasks)")
    ap.add_argument("--budget", required=True, help="the fine-tuning budget the model had, in words")
    ap.add_argument("--command", required=True, help="the command that produced --eval")
    ap.add_argument("--remark", default="", help="a sentence placed under the commands (wall times, caveats)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    ours = json.loads(args.eval.read_text())
    if ours.get("users_sampled"):
        sys.exit(f"{args.eval}: evaluated on a sample of {ours['users_sampled']} users; the table needs every test user")
    base = [r for r in json.loads((ROOT / "benchmarks" / "results" / "baselines.json").read_text()) if r["dataset"] == "scientific"]
    rows = [{"dataset": "scientific", "method": r["method"], **{c: r[c] for c in COLS},
             "seconds_per_epoch": r.get("seconds_per_epoch")} for r in base]
    m = ours["metrics"]
    rows.append({"dataset": "scientific", "method": "genrec", **{c: round(m[c], 4) for c in COLS}, "seconds_per_epoch": None,
                 "users": ours["n_users"], "budget": args.budget})
    best = {c: max(r[c] for r in rows[:-1]) for c in COLS}
    info = machine()
    (args.out / "scientific.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Scientific: our model beside the baselines", "",
             f"Test split (leave-one-out), full ranking over all items, {ours['n_users']:,} test users, the same "
             f"`Evaluator` for every row. Machine: {describe(info)}.", "",
             f"Ours: `{args.command}`; beam {ours.get('beams', 20)}. Fine-tuning budget: {args.budget}.",
             *([args.remark] if args.remark else []),
             "Baselines: `OMP_NUM_THREADS=1 python benchmarks/baselines.py --datasets scientific` "
             "([baselines.md](baselines.md)).", "",
             "| method | " + " | ".join(COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
    for r in rows:
        name = args.method if r["method"] == "genrec" else NAMES.get(r["method"], r["method"])
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in COLS) + " |")
    lines.append("| ours vs the best baseline | " + " | ".join(f"{(rows[-1][c] / best[c] - 1) * 100:+.1f}%" for c in COLS) + " |")
    (args.out / "scientific.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
