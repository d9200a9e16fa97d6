"""Classic baselines on the benchmark data, through the pipeline's stages and the shared evaluator.

    .venv/bin/python benchmarks/baselines.py                       # every model, every dataset
    .venv/bin/python benchmarks/baselines.py --datasets scientific --models pop sasrec-ce
    .venv/bin/python benchmarks/baselines.py --mask-history off      # the unmasked protocol of most papers

Each (dataset, model) is a stage folder under --run-dir: a finished row is skipped on rerun and a
killed neural run resumes from its checkpoint. Writes benchmarks/results/baselines.{md,json}
from every finished row; each row says whether history items were masked (`mask_history`), and
masked and unmasked rows of one model stand side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402
from genrec.artifacts import read_manifest  # noqa: E402
from genrec.config import EvaluateSection  # noqa: E402
from genrec.data.dataset import Dataset  # noqa: E402
from genrec.data.preprocess import PrepareConfig  # noqa: E402
from genrec.evaluate import MASK_WORDS, resolve_mask_history  # noqa: E402
from genrec.report import COLS  # noqa: E402
from genrec.stages import stage_baseline, stage_data  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
MODELS = ["pop", "sasrec", "sasrec-ce", "bert4rec", "gru4rec", "fmlp", "lightgcn", "dccf"]
FORMATS = {"scientific": "lcrec", "instruments": "lcrec", "ml-100k": "recbole"}  # as in configs/NAME.yaml


def rows_from(run_dir: Path, datasets: list[str], models: list[str]) -> list[dict]:
    rows = []
    for ds in datasets:
        for name in models:
            m = read_manifest(run_dir / ds / "baselines" / name)
            if m is None:
                continue
            test, fit = m["metrics"]["test"]["metrics"], m["metrics"].get("fit", {})
            mask = resolve_mask_history(m["config"]["evaluate"].get("mask_history", False), Dataset.load(run_dir / ds / "data"))
            row = {"dataset": ds, "method": name, "mask_history": mask, **{c: round(test[c], 4) for c in COLS}}
            row["seconds_per_epoch"] = fit.get("seconds_per_epoch")
            row["best_epoch"] = fit.get("best_epoch")
            row["epochs_run"] = fit.get("epochs_run")
            row["wall_seconds"] = m["wall_seconds"]
            rows.append(row)
    return rows


def merge_committed(rows: list[dict], out: Path) -> list[dict]:
    """Rows finished in this run directory, plus committed rows of (dataset, method) pairs it lacks.

    Run directories are not kept across machines or sessions; a rerun of some models must not drop
    the committed results of the others. Order: dataset, then MODELS order.
    """
    key = lambda r: (r["dataset"], r["method"], r.get("mask_history", False))  # noqa: E731
    have = {key(r) for r in rows}
    old = out / "baselines.json"
    kept = [r for r in json.loads(old.read_text()) if key(r) not in have] if old.exists() else []
    for r in kept:  # rows from before the setting were measured unmasked
        r.setdefault("mask_history", False)
    order = {m: i for i, m in enumerate(MODELS)}
    datasets = list(dict.fromkeys([r["dataset"] for r in kept + rows]))
    return sorted(kept + rows, key=lambda r: (datasets.index(r["dataset"]), not r["mask_history"],
                                              order.get(r["method"], len(order))))


def write_results(rows: list[dict], out: Path, command: str, note: str = "") -> None:
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    rows = merge_committed(rows, out)
    (out / "baselines.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Classic baselines",
        "",
        "Test split (leave-one-out, last item), full ranking over all items, history capped at 20; every",
        "model through `genrec.evaluate.Evaluator`. `masked`: the user's history items are never recommended",
        "(the evaluator's default on deduplicated data, where a history item is never the target); the",
        "unmasked rows are the protocol of most papers. Neural models: early stopping on validation",
        "NDCG@10 (under the same masking); `s/epoch` is training time per epoch (validation excluded).",
        "",
        f"Machine: {describe(info)}.",
        "",
        f"Command: `{command}`",
        "",
    ]
    if note:
        lines += [note, ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"## {ds}", "", "| method | masked | " + " | ".join(COLS) + " | s/epoch | best epoch | epochs run | wall s |"]
        lines.append("|---" * (len(COLS) + 6) + "|")
        for r in (r for r in rows if r["dataset"] == ds):
            cells = ["yes" if r["mask_history"] else "no", *(f"{r[c]:.4f}" for c in COLS)]
            extra = [r["seconds_per_epoch"], r["best_epoch"], r["epochs_run"], round(r["wall_seconds"])]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " | " + " | ".join("" if v is None else str(v) for v in extra) + " |")
        lines.append("")
    (out / "baselines.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=None, choices=list(FORMATS), help="default: all (none with --source)")
    ap.add_argument("--source", nargs="*", default=[], metavar="NAME=DIR",
                    help="a raw dataset (any format genrec reads, e.g. a synthetic shop) as dataset NAME, instead of "
                         "../shared/data")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--params", nargs="*", default=[], metavar="MODEL=JSON",
                    help='a model\'s settings, e.g. sasrec-ce=\'{"train": {"epochs": 2}}\' (default: its own)')
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="rewrite the results from finished rows, train nothing")
    ap.add_argument("--note", default="", help="a line for the report, e.g. how the machine was shared")
    ap.add_argument("--mask-history", default="auto", choices=list(MASK_WORDS),
                    help="the evaluator's history masking (auto: on deduplicated data)")
    args = ap.parse_args()
    sources = {n: (Path(d), None) for n, d in (x.split("=", 1) for x in args.source)}
    args.datasets = list(dict.fromkeys([*(args.datasets or ([] if sources else FORMATS)), *sources]))
    sources = {**{d: (SHARED / d, FORMATS[d]) for d in args.datasets if d not in sources}, **sources}
    params = {n: json.loads(v) for n, v in (x.split("=", 1) for x in args.params)}
    command = "OMP_NUM_THREADS=1 python benchmarks/baselines.py  # all datasets and models; a subset with --datasets/--models"
    if args.report_only:
        write_results(rows_from(args.run_dir, args.datasets, MODELS), args.out, command, args.note)
        return
    ev = EvaluateSection(mask_history=MASK_WORDS[args.mask_history])
    for ds in args.datasets:
        src, fmt = sources[ds]
        if not src.is_dir():
            print(f"skip {ds}: {src} is absent", file=sys.stderr)
            continue
        data = stage_data(src, args.run_dir / ds / "data", PrepareConfig(), format=fmt).path
        for name in args.models:
            t = time.time()
            res = stage_baseline(data, args.run_dir / ds / "baselines" / name, name, ev, seed=args.seed, params=params.get(name))
            test = res.manifest["metrics"]["test"]["metrics"]
            state = "cached" if res.skipped else f"{time.time() - t:.0f}s"
            print(f"{ds:<12} {name:<10} NDCG@10 {test['NDCG@10']:.4f} HR@10 {test['HR@10']:.4f} ({state})", flush=True)
            write_results(rows_from(args.run_dir, args.datasets, MODELS), args.out, command, args.note)


if __name__ == "__main__":
    main()
