"""Decoding arithmetic side by side: fp32, bf16 and int8 on the same test users.

    python benchmarks/inference_precision.py --run runs/recipes/x7 [--model DIR] [--users 1000]

One trained model (``--model``, default the run's ``model/``) with the run's index and data. For
each precision, :meth:`GenerativeRecommender.load` with ``precision=`` (fp32; bf16 under autocast,
which falls back to fp32 on a CPU without native bf16; int8: the decoder's linear layers
quantised dynamically, ``torch.ao.quantization.quantize_dynamic``) decodes the top 10 of the same
seeded test users (beam ``--beams``, ``--batch`` users per batch, history items excluded where the
evaluator masks them), timed after a warm-up. HR@10 and NDCG@10 come from the shared evaluator;
against fp32's lists: the share of users whose top 10 is identical, the mean share of fp32's
top 10 kept, and the NDCG@10 difference. Writes ``inference_precision.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402

PRECISIONS = ("fp32", "bf16", "int8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder with data/, index/ and model/")
    ap.add_argument("--model", type=Path, default=None, help="trained model folder (default: the run's model/)")
    ap.add_argument("--users", type=int, default=1000, help="seeded sample of test users")
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated; fp32 first (the reference)")
    ap.add_argument("--note", default="", help="a remark for the results file (e.g. the machine's other load)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or precisions[0] != "fp32" or not set(precisions) <= set(PRECISIONS):
        sys.exit(f"--precisions {args.precisions!r}: a comma-separated subset of {','.join(PRECISIONS)} starting with fp32")
    model = args.model or args.run / "model"
    for need in (args.run / "data", args.run / "index", model):
        if not need.is_dir():
            sys.exit(f"{need}: no such folder (a finished `genrec run` folder holds data/, index/ and model/)")
    import numpy as np
    import torch

    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender, PrecomputedRanker
    from genrec.evaluate import Evaluator

    ds = Dataset.load(args.run / "data")
    evaluator = Evaluator(ds, ks=(1, 5, 10), progress=False)
    split = evaluator.split("test")
    pool = np.flatnonzero(split.targets >= 0)
    users = np.sort(np.random.default_rng(args.seed).choice(pool, size=min(args.users, len(pool)), replace=False))
    histories = [split.histories[u] for u in users]
    rows, lists = [], {}
    for p in precisions:
        rec = GenerativeRecommender.load(model, args.run / "index", device="cpu", beams=args.beams,
                                         batch_users=args.batch, precision=p)
        rec.exclude_history = evaluator.mask_history  # masked history items take no beam slot, as in the evaluate stage
        rec.rank(histories[:2], users[:2], 10)  # warm-up
        t = time.perf_counter()
        ranked = rec.rank(histories, users, 10)
        seconds = time.perf_counter() - t
        lists[p] = {int(u): [int(i) for i in row if i >= 0] for u, row in zip(users, ranked, strict=True)}
        metrics = evaluator.evaluate(PrecomputedRanker(lists[p]), stage="test", users=users).metrics
        ref = lists[precisions[0]]
        rows.append({"precision": p, "compute": "int8 linear layers, fp32 rest" if p == "int8" else str(rec.dtype).split(".")[-1],
                     "users_per_s": round(len(users) / seconds, 3), "s_per_user": round(seconds / len(users), 5),
                     "HR@10": round(float(metrics["HR@10"]), 5), "NDCG@10": round(float(metrics["NDCG@10"]), 5),
                     "identical_top10_share": round(float(np.mean([lists[p][u] == ref[u] for u in ref])), 4),
                     "top10_overlap": round(float(np.mean([len(set(lists[p][u]) & set(ref[u])) / max(1, len(ref[u]))
                                                          for u in ref])), 4)})
        del rec
    for r in rows:
        r["NDCG@10_diff"] = round(r["NDCG@10"] - rows[0]["NDCG@10"], 5)
        r["speedup"] = round(r["users_per_s"] / rows[0]["users_per_s"], 2)
    info = machine()
    cmd = shlex.join(["python", "benchmarks/inference_precision.py", *sys.argv[1:]])
    result = {"rows": rows, "users": len(users), "beams": args.beams, "batch": args.batch, "seed": args.seed,
              "model": str(model), "run": str(args.run), "mask_history": evaluator.mask_history, "command": cmd,
              "note": args.note, "threads": torch.get_num_threads(), "cpu_bf16": info.get("cpu_bf16"), "machine": info}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference_precision.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| precision | computes in | users/s | s/user | speed-up | HR@10 | NDCG@10 | NDCG@10 - fp32 | identical top-10 "
             "| top-10 overlap |", "|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['precision']} | {r['compute']} | {r['users_per_s']:.2f} | {r['s_per_user']:.4f} | {r['speedup']:.2f}x | "
              f"{r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['NDCG@10_diff']:+.4f} | {r['identical_top10_share']:.1%} | "
              f"{r['top10_overlap']:.1%} |" for r in rows]
    (args.out / "inference_precision.md").write_text("\n".join([
        "# Inference precision", "", f"Machine: {describe(info)}; torch threads {torch.get_num_threads()}."
        + (f" {args.note}" if args.note else ""), "", f"Command: `{cmd}`", "",
        f"{len(users)} seeded test users of {args.run.name} (model `{model}`), beam {args.beams}, top 10, "
        f"{args.batch} users per batch, history items {'excluded' if evaluator.mask_history else 'kept'}. "
        "Identical top-10 and overlap are against fp32's lists.", "", *table, ""]))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
