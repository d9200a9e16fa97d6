"""How much constrained beam search loses against exhaustive scoring, by beam width.

    .venv/bin/python benchmarks/search_error.py --run runs/scientific --users 30 --beams 5 10 20 50

On a seeded sample of validation users of a finished run, every item of the catalogue is scored
by teacher forcing (its codes' log-probability after the user's prompt: the score beam search
ranks by, `GenerativeRecommender.score_items`), which gives the exact top-10; each beam width
then decodes the same users. Reported per width: how often the beam's top-1 is the exact top-1,
the share of the exact top-10 the beam's top-10 holds, and the validation HR@10 / NDCG@10 of both
(history items kept in both, no popularity adjustment: the model's own ranking). Validation
split only. Writes benchmarks/results/search_error.{md,json} (or --out).
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


def ndcg_hr(ranked: list[int], target: int, k: int = 10) -> tuple[float, float]:
    top = list(ranked[:k])
    if target not in top:
        return 0.0, 0.0
    return 1.0 / np.log2(top.index(target) + 2), 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific", help="a finished `genrec run` folder")
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--beams", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--chunk", type=int, default=512, help="items scored per teacher-forced pass")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender

    ds = Dataset.load(args.run / "data")
    split = ds.eval_split("valid")
    have = np.flatnonzero(split.targets >= 0)
    users = np.sort(np.random.default_rng(args.seed).choice(have, size=min(args.users, len(have)), replace=False))
    hist = [split.histories[u] for u in users]
    targets = split.targets[users]
    rec = GenerativeRecommender.load(args.run / "model", args.run / "index", beams=max(args.beams), batch_users=1)
    n = rec.index.n_items
    t = time.time()
    exact = np.full((len(users), n), -np.inf)
    for lo in range(0, n, args.chunk):
        items = np.tile(np.arange(lo, min(n, lo + args.chunk)), (len(users), 1))
        exact[:, lo : lo + items.shape[1]] = rec.score_items(hist, items)
    exact_seconds = time.time() - t
    order = np.argsort(-exact, axis=1, kind="stable")
    ex = [ndcg_hr(order[i].tolist(), int(targets[i])) for i in range(len(users))]
    rows = [{"decoder": "exhaustive", "beams": None, "top1_equal": 1.0, "top10_recall": 1.0,
             "NDCG@10": float(np.mean([x[0] for x in ex])), "HR@10": float(np.mean([x[1] for x in ex])),
             "seconds_per_user": round(exact_seconds / len(users), 3)}]
    for b in args.beams:
        rec.beams = b
        t = time.time()
        got = rec.rank(hist, users, 10)
        secs = time.time() - t
        res = [ndcg_hr([int(x) for x in got[i] if x >= 0], int(targets[i])) for i in range(len(users))]
        rows.append({"decoder": "beam", "beams": b,
                     "top1_equal": float(np.mean([got[i][0] == order[i][0] for i in range(len(users))])),
                     "top10_recall": float(np.mean([len(set(got[i][:10].tolist()) & set(order[i][:10].tolist())) / 10
                                                    for i in range(len(users))])),
                     "NDCG@10": float(np.mean([x[0] for x in res])), "HR@10": float(np.mean([x[1] for x in res])),
                     "seconds_per_user": round(secs / len(users), 3)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_error.json").write_text(json.dumps({"run": str(args.run), "users": len(users), "rows": rows},
                                                           indent=2) + "\n")
    lines = ["# Search error of constrained beam search", "",
             f"{len(users)} seeded validation users of `{args.run}`; every one of the {n:,} items scored exactly by "
             "teacher forcing, against beam search at each width (history items kept, no popularity adjustment).", "",
             f"Machine: {describe(machine())}.", "",
             f"Command: `python benchmarks/search_error.py {' '.join(sys.argv[1:])}`", "",
             "| decoder | beams | top-1 = exact top-1 | share of exact top-10 found | HR@10 | NDCG@10 | s/user |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['decoder']} | {r['beams'] or ''} | {r['top1_equal']:.3f} | {r['top10_recall']:.3f} | "
                     f"{r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['seconds_per_user']} |")
    (args.out / "search_error.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
