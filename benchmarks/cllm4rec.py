"""CLLM4Rec and its comparison rows on one dataset, through the pipeline's baseline stages and the
shared evaluator; and the latency of its one forward pass per user against the semantic-ID model's
beam search.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cllm4rec.py --dataset scientific
    .venv/bin/python benchmarks/cllm4rec.py --dataset scientific --methods CLLM4Rec CLLM4Rec-Emb
    .venv/bin/python benchmarks/cllm4rec.py --dataset scientific --semid-run runs/scientific   # + latency
    .venv/bin/python benchmarks/cllm4rec.py --dataset scientific --set config.layers=4 --set train.epochs=3

Rows (``--methods``): CLLM4Rec (frozen backbone, RecLLM fine-tuning), CLLM4Rec-Emb (a two-tower model
over CLLM4Rec's token embeddings projected to 128), LLM-PreRec (pretraining only, the collaborative
LM recommends), LLM-Scratch (the backbone's architecture randomly initialised, trained in full),
LLM-FTAll (the backbone fine-tuned too). Each row is a baseline stage folder under
``--run-dir/DATASET/baselines/``: a finished row is skipped on rerun and a killed one resumes from its
checkpoint. ``--set`` overrides every CLLM4Rec row's settings (``config.*``, ``train.*``),
``--emb-set`` the two-tower's.

Writes ``--out/cllm4rec.json`` (rows in ``baselines.json`` form: dataset, method, mask_history, the
metric columns, wall seconds, and the budget: variant, layers, epochs) and ``--out/cllm4rec.md``; with
``--semid-run`` (a finished ``genrec run`` folder: ``data/``, ``index/``, ``model/`` on the same data)
also ``--out/cllm4rec_latency.json``: milliseconds per user of CLLM4Rec's forward pass and of the
semantic-ID model's constrained beam search (beam 20, top 10), one user at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402
from genrec.config import EvaluateSection, apply_overrides  # noqa: E402
from genrec.data.dataset import Dataset  # noqa: E402
from genrec.data.preprocess import PrepareConfig  # noqa: E402
from genrec.evaluate import MASK_WORDS, resolve_mask_history  # noqa: E402
from genrec.report import COLS  # noqa: E402
from genrec.stages import stage_baseline, stage_data  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FORMATS = {"scientific": "lcrec", "instruments": "lcrec", "ml-100k": "recbole"}
#: row label -> (registry name, stage folder, the CLLM4Rec variant)
METHODS = {
    "CLLM4Rec": ("cllm4rec", "cllm4rec", "cllm4rec"),
    "CLLM4Rec-Emb": ("cllm4rec-emb", "cllm4rec-emb", None),
    "LLM-PreRec": ("cllm4rec", "cllm4rec-prerec", "prerec"),
    "LLM-Scratch": ("cllm4rec", "cllm4rec-scratch", "scratch"),
    "LLM-FTAll": ("cllm4rec", "cllm4rec-ftall", "ftall"),
}


def cllm4rec_params(variant: str, sets: list[str]) -> dict:
    params = apply_overrides({}, sets)
    params.setdefault("config", {})["variant"] = variant
    return params


def budget(params: dict, fit: dict) -> dict:
    from genrec.llm.cllm4rec import CLLM4Rec
    from genrec.llm.config import CLLM4RecConfig

    cfg = CLLM4RecConfig(**params.get("config", {}))
    train = {**CLLM4Rec.train_defaults, **params.get("train", {})}
    return {"variant": cfg.variant, "backbone": cfg.backbone, "layers": cfg.layers, "dtype": cfg.dtype,
            "pretrain_epochs": cfg.pretrain_epochs, "finetune_epochs": train["epochs"] if cfg.variant != "prerec" else 0,
            "epochs_run": fit.get("epochs_run"), "best_epoch": fit.get("best_epoch"),
            "collaborative_only": fit.get("collaborative_only")}


def run_rows(args, data: Path, ev: EvaluateSection) -> tuple[list[dict], dict[str, Path]]:
    rows, folders = [], {}
    base_dir = args.run_dir / args.dataset / "baselines"
    order = sorted(args.methods, key=lambda m: m == "CLLM4Rec-Emb")  # the two-tower reads CLLM4Rec's folder
    for label in order:
        name, slug, variant = METHODS[label]
        inputs = None
        if name == "cllm4rec-emb":
            if "CLLM4Rec" not in folders:
                raise SystemExit("CLLM4Rec-Emb needs the CLLM4Rec row: add CLLM4Rec to --methods")
            params = apply_overrides({}, args.emb_set)
            params.setdefault("config", {})["source"] = str(folders["CLLM4Rec"])
            inputs = {"source": folders["CLLM4Rec"]}
        else:
            params = cllm4rec_params(variant, args.set)
        t = time.time()
        res = stage_baseline(data, base_dir / slug, name, ev, seed=args.seed, params=params, inputs=inputs)
        folders[label] = res.path / "model"
        m = res.manifest
        test, fit = m["metrics"]["test"]["metrics"], m["metrics"].get("fit", {})
        row = {"dataset": args.dataset, "method": label, "mask_history": resolve_mask_history(ev.mask_history, Dataset.load(data)),
               **{c: round(test[c], 4) for c in COLS}, "wall_seconds": round(m["wall_seconds"], 1)}
        if name == "cllm4rec-emb":
            row["budget"] = {"source": "CLLM4Rec row", "epochs_run": fit.get("epochs_run"), "best_epoch": fit.get("best_epoch")}
        else:
            row["budget"] = budget(params, fit)
        rows.append(row)
        state = "cached" if res.skipped else f"{time.time() - t:.0f}s"
        print(f"{args.dataset:<12} {label:<13} NDCG@10 {test['NDCG@10']:.4f} HR@10 {test['HR@10']:.4f} ({state})", flush=True)
    rows.sort(key=lambda r: list(METHODS).index(r["method"]))
    return rows, folders


def latency(model_dir: Path, semid_run: Path | None, data: Path, n_users: int, seed: int) -> list[dict]:
    """Milliseconds per user, one user at a time, on a seeded sample of test users: CLLM4Rec's one
    forward pass (scores for every item) and, given a finished run, its semantic-ID model's beam search."""
    import torch

    from genrec.llm.cllm4rec import CLLM4Rec

    ds = Dataset.load(data)
    split = ds.eval_split("test")
    have = np.flatnonzero(split.targets >= 0)
    users = np.sort(np.random.default_rng(seed).choice(have, size=min(n_users, len(have)), replace=False))
    hist = [split.histories[u] for u in users]
    out = []
    cllm = CLLM4Rec.load(model_dir, device="cpu")

    def timed(fn) -> float:
        fn(0)  # warm-up
        t = time.time()
        for i in range(len(users)):
            fn(i)
        return (time.time() - t) / len(users) * 1000

    with torch.inference_mode():
        ms = timed(lambda i: cllm.score([hist[i]], users[i : i + 1]))
    out.append({"model": "CLLM4Rec (one forward pass, all items scored)", "ms_per_user": round(ms, 1), "users": len(users),
                "layers": cllm.config.layers})
    if semid_run is not None:
        from genrec.decode.recommender import GenerativeRecommender

        run_ds = Dataset.load(semid_run / "data")
        if run_ds.n_users != ds.n_users or run_ds.n_items != ds.n_items:
            raise SystemExit(f"{semid_run}: another dataset ({run_ds.n_users} users, {run_ds.n_items} items; "
                             f"CLLM4Rec's has {ds.n_users} and {ds.n_items})")
        rec = GenerativeRecommender.load(semid_run / "model", semid_run / "index", device="cpu", beams=20, batch_users=1,
                                         exclude_history=resolve_mask_history("auto", ds))
        ms = timed(lambda i: rec.rank([hist[i]], users[i : i + 1], 10))
        cfg = json.loads((semid_run / "model" / "train_config.json").read_text())
        out.append({"model": "semantic-ID LLM (constrained beam search, beam 20, top 10)", "ms_per_user": round(ms, 1),
                    "users": len(users), "layers": cfg.get("layers")})
        out[-1]["ratio_to_cllm4rec"] = round(out[-1]["ms_per_user"] / max(out[0]["ms_per_user"], 1e-9), 2)
    return out


def write_results(rows: list[dict], lat: list[dict] | None, out: Path, command: str, note: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cllm4rec.json").write_text(json.dumps(rows, indent=2) + "\n")
    if lat is not None:
        (out / "cllm4rec_latency.json").write_text(json.dumps(lat, indent=2) + "\n")
    lines = ["# CLLM4Rec", "",
             "Test split (leave-one-out), full ranking over all items through `genrec.evaluate.Evaluator` (history",
             "masked as the evaluator does by default); early stopping on validation NDCG@10. Budget: the",
             "backbone's layers, pretraining and fine-tuning epochs of each row.", "",
             f"Machine: {describe(machine())}.", "", f"Command: `{command}`", ""]
    if note:
        lines += [note, ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"## {ds}", "", "| method | masked | " + " | ".join(COLS) + " | layers | pretrain ep. | fine-tune ep. run | wall s |",
                  "|---" * (len(COLS) + 6) + "|"]
        for r in (r for r in rows if r["dataset"] == ds):
            b = r.get("budget", {})
            cells = ["yes" if r["mask_history"] else "no", *(f"{r[c]:.4f}" for c in COLS), str(b.get("layers", "")),
                     str(b.get("pretrain_epochs", "")), str(b.get("epochs_run", "")), str(round(r["wall_seconds"]))]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    if lat:
        lines += ["## Latency", "", "One user at a time on the CPU, after one warm-up user.", "",
                  "| model | ms per user | users | layers |", "|---|---|---|---|"]
        lines += [f"| {x['model']} | {x['ms_per_user']} | {x['users']} | {x['layers']} |" for x in lat]
        lines.append("")
    (out / "cllm4rec.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scientific", help="a name (its rows' label; ../shared/data/NAME by default)")
    ap.add_argument("--data", type=Path, default=None, help="a prepared dataset or raw folder (default ../shared/data/DATASET)")
    ap.add_argument("--format", default=None, help="raw data format (default: the dataset's, as in configs/NAME.yaml)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--set", action="append", default=[], help="a CLLM4Rec setting, e.g. config.layers=4, train.epochs=3")
    ap.add_argument("--emb-set", action="append", default=[], help="a CLLM4Rec-Emb setting, e.g. train.epochs=50")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "cllm4rec")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--semid-run", type=Path, default=None, help="a finished genrec run folder on the same data, for latency")
    ap.add_argument("--latency-users", type=int, default=50)
    ap.add_argument("--mask-history", default="auto", choices=list(MASK_WORDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="a line for the report, e.g. how the machine was shared")
    args = ap.parse_args(argv)
    src = args.data or SHARED / args.dataset
    if not Path(src).exists():
        raise SystemExit(f"{src}: no such data folder")
    if Dataset.is_prepared(src):
        data = Path(src)
    else:
        data = stage_data(src, args.run_dir / args.dataset / "data", PrepareConfig(),
                          format=args.format or FORMATS.get(args.dataset)).path
    ev = EvaluateSection(mask_history=MASK_WORDS[args.mask_history])
    rows, folders = run_rows(args, data, ev)
    lat = None
    if "CLLM4Rec" in folders and args.latency_users > 0:
        lat = latency(folders["CLLM4Rec"], args.semid_run, data, args.latency_users, args.seed)
        for x in lat:
            print(f"latency: {x['model']}: {x['ms_per_user']} ms per user", flush=True)
    command = "python benchmarks/cllm4rec.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(rows, lat, args.out, command, args.note)


if __name__ == "__main__":
    main()
