"""The LLM as item encoder for SASRec (``sasrec-llm``) against plain SASRec-CE, side by side on one
prepared dataset, through the baseline stage and the shared evaluator (history masked as the
evaluator's auto setting decides), plus the costs of the long-short update.

    OMP_NUM_THREADS=1 python benchmarks/llm_patterns.py --data runs/scientific/data --label scientific \\
        --cache ~/.cache/genrec/item-encoder --encoder-layers 4 --max-tokens 64

- **normal split**: both models on the dataset's leave-one-out split; rows as in baselines.json plus
  ``seconds_per_user`` (the test evaluation's wall time per user: scoring every item) and
  ``train_seconds`` (the training epochs' wall time, validation passes excluded).
- **cold-item split** (``--cold-share``, :func:`genrec.data.cold.cold_item_split`): both models
  trained on the cut data and measured on the users whose test target is a cold item (never in
  training), from the stage's per-user rows.
- **costs**: the encoder cache reused as is (nothing encoded), and rebuilt after ``--changed``
  items' text changed (only those encoded, the backbone loaded once), against SASRec-LLM's training.

``--parts``: run only some of the three (e.g. the cold split in a second process); a last run with
all of them gathers what is finished. ``--reuse NAME=STAGE``: take a finished baseline stage of the same data (e.g. a run's
``baselines/sasrec-ce``) instead of training that model again. Stages are kept under --run-dir, so a
rerun skips what is done and a killed fit resumes. Writes ``llm_patterns.{md,json}`` under --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402
from genrec.artifacts import fingerprint, read_manifest  # noqa: E402
from genrec.config import EvaluateSection  # noqa: E402
from genrec.data.cold import cold_item_split  # noqa: E402
from genrec.data.dataset import Dataset  # noqa: E402
from genrec.evaluate import resolve_mask_history  # noqa: E402
from genrec.report import COLS  # noqa: E402
from genrec.stages import stage_baseline  # noqa: E402

MODELS = ["sasrec-ce", "sasrec-llm"]


def row_of(stage: Path, dataset: str, method: str, split: str, mask: bool) -> dict:
    """A baselines.json row of a finished baseline stage, plus seconds_per_user and train_seconds."""
    m = read_manifest(stage)
    metrics = m["metrics"]
    test, fit = metrics["test"]["metrics"], metrics.get("fit", {})
    row = {"dataset": dataset, "split": split, "method": method, "mask_history": mask, **{c: round(test[c], 4) for c in COLS},
           "seconds_per_epoch": fit.get("seconds_per_epoch"), "best_epoch": fit.get("best_epoch"),
           "epochs_run": fit.get("epochs_run"), "wall_seconds": m["wall_seconds"],
           "train_seconds": round(fit["seconds_per_epoch"] * fit["epochs_run"], 3),  # kept across a resumed fit
           "seconds_per_user": round(metrics["test"]["seconds"] / metrics["test"]["n_users"], 6)}
    if "encoder" in fit:
        row["encoder"] = {k: v for k, v in fit["encoder"].items() if k != "cache_file"}
    return row


def cold_metrics(stage: Path, users: np.ndarray, cold_items: np.ndarray, ks=(1, 5, 10)) -> dict:
    """HR/NDCG of the stage's test rows restricted to ``users``, from their ranks; and for the other
    users, the share of their top-10 slots that cold items take and their HR@10."""
    t = pq.read_table(stage / "test_users.parquet", columns=["user_idx", "rank", "topk"])
    keep = np.isin(t["user_idx"].to_numpy(), users)
    others = [lst[:10] for lst, k in zip(t["topk"].to_pylist(), keep, strict=True) if not k]
    all_rank = np.nan_to_num(t["rank"].to_numpy(zero_copy_only=False).astype(float), nan=np.inf)
    rank = np.nan_to_num(t["rank"].to_numpy(zero_copy_only=False)[keep].astype(float), nan=np.inf)
    out = {"users": int(keep.sum()),
           "others_cold_slots": round(float(np.mean([np.isin(x, cold_items).mean() if x else 0.0 for x in others])), 4)
           if others else None,
           "others_HR@10": round(float((all_rank[~keep] <= 10).mean()), 4) if others else None}
    for k in ks:
        hit = rank <= k
        out[f"HR@{k}"] = round(float(hit.mean()), 4)
        if k > 1:
            out[f"NDCG@{k}"] = round(float(np.where(hit, 1 / np.log2(np.where(hit, rank, 1) + 1), 0).mean()), 4)
    return out


def per_user(stage: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(users, {HR@10, NDCG@10} per user) of a stage's test rows, from their ranks."""
    t = pq.read_table(stage / "test_users.parquet", columns=["user_idx", "rank"])
    rank = np.nan_to_num(t["rank"].to_numpy(zero_copy_only=False).astype(float), nan=np.inf)
    hit = rank <= 10
    return t["user_idx"].to_numpy(), {"HR@10": hit.astype(float), "NDCG@10": np.where(hit, 1 / np.log2(np.where(hit, rank, 1) + 1), 0.0)}


def paired_gain(base: Path, new: Path, resamples: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """{metric: [mean gain of ``new`` over ``base``, 2.5%, 97.5%]}: a paired bootstrap over the test users."""
    ub, b = per_user(base)
    un, n = per_user(new)
    if not np.array_equal(ub, un):
        raise ValueError(f"{base} and {new} hold different test users")
    idx = np.random.default_rng(seed).integers(0, len(ub), size=(resamples, len(ub)))
    return {k: [round(float((n[k] - b[k]).mean()), 4), *(round(float(x), 4) for x in np.percentile((n[k] - b[k])[idx].mean(1), [2.5, 97.5]))]
            for k in b}


def encoder_costs(ds: Dataset, cfg: dict, run_dir: Path, changed: int, seed: int) -> dict:
    """The cache reused as is, then a copy rebuilt after ``changed`` items' text changed."""
    from genrec.llm.item_encoder import encoder_key, item_encoder_embeddings

    args = (cfg.get("backbone", "default"), cfg.get("encoder_layers"), cfg.get("max_tokens", 64), cfg.get("encoder_dtype", "auto"))
    cache = Path(cfg["cache"])
    t0 = time.perf_counter()
    _, reuse = item_encoder_embeddings(ds.items, *args, cache_dir=cache)
    reuse["wall"] = round(time.perf_counter() - t0, 3)
    copy = run_dir / "encoder-cache-copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    name = f"{encoder_key(*args)}.npz"
    shutil.copy2(cache / name, copy / name)
    items = ds.items.copy()
    pick = np.random.default_rng(seed).choice(len(items), size=changed, replace=False)
    items.loc[pick, "description"] = items.loc[pick, "description"].astype(str) + " (revised listing)"
    t0 = time.perf_counter()
    _, update = item_encoder_embeddings(items, *args, cache_dir=copy)
    update["wall"] = round(time.perf_counter() - t0, 3)
    shutil.rmtree(copy, ignore_errors=True)
    enc = update["seconds"] - update.get("load_seconds", 0.0)
    update["seconds_per_text"] = round(enc / max(update["encoded"], 1), 4)
    return {"reuse": {k: v for k, v in reuse.items() if k != "cache_file"},
            "update": {k: v for k, v in update.items() if k != "cache_file"}, "changed_items": changed}


def write_results(out: Path, label: str, rows: list[dict], cold: list[dict], costs: dict | None, command: str,
                  note: str, n_items: int, gain: dict | None = None) -> None:
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm_patterns.json").write_text(json.dumps({"machine": info, "command": command, "rows": rows, "gain": gain,
                                                       "cold": cold, "costs": costs}, indent=2) + "\n")
    lines = ["# The LLM as item encoder: SASRec with LLM item embeddings", "",
             "Test split (leave-one-out), full ranking over all items, history masked as the evaluator's auto setting "
             "decides; both models through the baseline stage and `genrec.evaluate.Evaluator`. `s/user`: the test "
             "evaluation's wall time per user (scoring every item); `train s`: the training epochs' wall time "
             "(validation passes excluded). sasrec-llm reads the encoder cache (its build is under Costs).", "",
             f"Machine: {describe(info)}.", "", f"Command: `{command}`", ""]
    if note:
        lines += [note, ""]
    lines += [f"## {label}: normal split", "", "| method | " + " | ".join(COLS) + " | s/epoch | best epoch | epochs run | train s | s/user |",
              "|---" * (len(COLS) + 6) + "|"]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in COLS) +
                     f" | {r['seconds_per_epoch']} | {r['best_epoch']} | {r['epochs_run']} | {r['train_seconds']:.0f} | "
                     f"{r['seconds_per_user']:.5f} |")
    if gain:
        lines += ["", "Gain of sasrec-llm over sasrec-ce on the same users (paired bootstrap, 2,000 resamples, 95% interval): "
                  + "; ".join(f"{k} {v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]" for k, v in gain.items()) + "."]
    if cold:
        c0 = cold[0]
        lines += ["", f"## {label}: cold-item split", "",
                  f"{c0['cold_items']} items ({c0['cold_share']:.0%} of those with interactions) held out of training; "
                  f"metrics over the {c0['users']:,} users whose test target is one of them. All-user metrics of the "
                  f"same fits beside them. Training settings: {json.dumps(c0['train']) if c0['train'] else 'the defaults'}.", "",
                  "| method | HR@1 | HR@5 | HR@10 | NDCG@5 | NDCG@10 | other users: cold items' share of the top 10 | "
                  "other users HR@10 | all users HR@10 | all users NDCG@10 | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in cold:
            lines.append(f"| {r['method']} | {r['HR@1']:.4f} | {r['HR@5']:.4f} | {r['HR@10']:.4f} | {r['NDCG@5']:.4f} | "
                         f"{r['NDCG@10']:.4f} | {r['others_cold_slots']:.4f} | {r['others_HR@10']:.4f} | {r['all']['HR@10']:.4f} | "
                         f"{r['all']['NDCG@10']:.4f} | {r['train_seconds']:.0f} |")
    if costs:
        u, reuse = costs["update"], costs["reuse"]
        llm = next((r for r in rows if r["method"] == "sasrec-llm"), None)
        full = u["seconds_per_text"] * n_items
        lines += ["", "## Costs: the long-short update", "",
                  "| step | texts encoded | seconds |", "|---|---|---|",
                  f"| encoder cache reused as is (a SASRec retrain on an unchanged catalogue) | {reuse['encoded']} | {reuse['wall']:.2f} |",
                  f"| cache rebuilt after {costs['changed_items']} items' text changed (backbone load "
                  f"{u.get('load_seconds', 0):.0f} s included) | {u['encoded']} | {u['wall']:.1f} |",
                  f"| a full build of the {n_items:,} items at the same rate ({u['seconds_per_text']:.3f} s per text, "
                  f"plus the load) | {n_items} | {full + u.get('load_seconds', 0):.0f} |"]
        if llm is not None:
            lines.append(f"| SASRec-LLM training (the retrain) | 0 | {llm['train_seconds']:.0f} |")
    (out / "llm_patterns.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    ap.add_argument("--label", default="dataset")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "llm-patterns")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--cache", type=Path, default=None, help="the item-encoder cache folder (default: the library's)")
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--encoder-layers", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mode", default="add", choices=["add", "replace"])
    ap.add_argument("--train", default="{}", help="training settings of both models as JSON, e.g. '{\"epochs\": 2}'")
    ap.add_argument("--reuse", nargs="*", default=[], metavar="NAME=STAGE", help="a finished baseline stage of the same data")
    ap.add_argument("--cold-share", type=float, default=0.05, help="share of the items made cold; 0: no cold-item table")
    ap.add_argument("--cold-modes", nargs="+", default=None, choices=["add", "replace"],
                    help="sasrec-llm's modes on the cold-item split (default: --mode)")
    ap.add_argument("--cold-train", default=None, help="training settings of both models on the cold-item split (default: --train)")
    ap.add_argument("--changed", type=int, default=43, help="items whose text changes for the incremental rebuild")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", nargs="+", default=["normal", "costs", "cold"], choices=["normal", "costs", "cold"],
                    help="what to run (several processes may run different parts on one --run-dir; a last run with "
                         "all parts gathers the finished stages into the results)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    from genrec.llm.item_encoder import default_cache_dir

    cache = str(args.cache or default_cache_dir())
    train = json.loads(args.train)
    llm_cfg = {"backbone": args.backbone, "encoder_layers": args.encoder_layers, "max_tokens": args.max_tokens,
               "cache": cache, "mode": args.mode}
    cold_train = json.loads(args.cold_train) if args.cold_train is not None else train

    def params_of(name: str, train: dict) -> dict | None:
        params = {**({"config": llm_cfg} if name == "sasrec-llm" else {}), **({"train": train} if train else {})}
        return params or None

    reuse = {n: Path(p) for n, p in (x.split("=", 1) for x in args.reuse)}
    ds = Dataset.load(args.data)
    mask = resolve_mask_history("auto", ds)
    ev = EvaluateSection()
    argv = sys.argv[1:]
    if "--note" in argv:  # the note is printed apart
        at = argv.index("--note")
        argv = argv[:at] + argv[at + 2 :]
    command = "OMP_NUM_THREADS=1 python benchmarks/llm_patterns.py " + " ".join(shlex.quote(a) for a in argv)
    rows: list[dict] = []
    stages: dict[str, Path] = {}
    gain = None
    for name in MODELS if "normal" in args.parts else []:
        if name in reuse:
            made = read_manifest(reuse[name])
            if made is None or made["inputs"]["data"]["fingerprint"] != fingerprint(args.data):
                sys.exit(f"--reuse {name}: {reuse[name]} is no finished baseline stage of {args.data}")
            stage = reuse[name]
        else:
            stage = stage_baseline(args.data, args.run_dir / "normal" / name, name, ev, seed=args.seed,
                                   params=params_of(name, train)).path
        stages[name] = stage
        rows.append(row_of(stage, args.label, name, "normal", mask))
        print(f"normal {name}: HR@10 {rows[-1]['HR@10']:.4f} NDCG@10 {rows[-1]['NDCG@10']:.4f}", flush=True)
        if len(stages) == len(MODELS):
            gain = paired_gain(*stages.values())
        write_results(args.out, args.label, rows, [], None, command, args.note, ds.n_items, gain)
    costs = None
    if "costs" in args.parts:  # measured once per --run-dir (it loads the backbone)
        kept = args.run_dir / "costs.json"
        costs = json.loads(kept.read_text()) if kept.is_file() else encoder_costs(ds, llm_cfg, args.run_dir, args.changed, args.seed)
        kept.write_text(json.dumps(costs, indent=2))
        print(f"costs: {costs}", flush=True)
        write_results(args.out, args.label, rows, [], costs, command, args.note, ds.n_items, gain)
    cold = []
    if args.cold_share > 0 and "cold" in args.parts:
        split = cold_item_split(ds, args.cold_share, args.seed)
        cold_data = args.run_dir / "cold" / "data"
        if not Dataset.is_prepared(cold_data):  # no manifest: its fingerprint is its files' hash
            split.dataset.save(cold_data)
        # sasrec-llm in each of --cold-modes; a mode other than --mode has its own stage folder and label
        runs = [("sasrec-ce", "sasrec-ce", None)] + [
            ("sasrec-llm", "sasrec-llm" if m == args.mode else f"sasrec-llm-{m}", m) for m in args.cold_modes or [args.mode]]
        for name, label, mode in runs:
            params = params_of(name, cold_train)
            if mode is not None:
                params = {**params, "config": {**llm_cfg, "mode": mode}}
            stage = stage_baseline(cold_data, args.run_dir / "cold" / label, name, ev, seed=args.seed, params=params).path
            r = row_of(stage, args.label, name, "cold", mask)
            cold.append({"method": label, "cold_items": len(split.cold_items), "cold_share": args.cold_share, "train": cold_train,
                         **cold_metrics(stage, split.users, split.cold_items), "all": {c: r[c] for c in COLS},
                         "train_seconds": r["train_seconds"]})
            print(f"cold {label}: {cold[-1]}", flush=True)
            write_results(args.out, args.label, rows, cold, costs, command, args.note, ds.n_items, gain)


if __name__ == "__main__":
    main()
