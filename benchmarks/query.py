"""Recommendation from a request in words: the model with history and request against BM25 and the history alone.

    python benchmarks/query.py --run runs/scientific-query [--model DIR] [--users 1000]

A finished run whose model was trained with the ``seq_query`` task (``tasks.tasks`` holding it).
For a seeded sample of test users, the held-out request is built from the test target's
attributes only (its leaf category and brand, :func:`genrec.llm.tasks.attribute_query`; never its
id or title); users whose target has neither are left out (counted). Each method ranks the top 10
for the same users and requests; HR@10 and NDCG@10 of the test target:

- ``ours: history + query``: constrained beam search after the seq_query prompt (history and request);
- ``ours: query only (cold user)``: the same with an empty history (nothing masked: a cold user has none);
- ``ours: history only``: the sequential prompt, no request (what `genrec evaluate` ranks);
- ``BM25: query``: Okapi BM25 (:mod:`genrec.baselines.bm25`) over each item's title, description,
  categories and brand, the request as the search string, the user's history items excluded
  where the evaluator masks them;
- ``BM25: query only (cold user)``: the same, nothing excluded;
- ``BM25 top-N reranked by history``: BM25's top ``--rerank`` (history excluded) reordered by the
  model's likelihood of each candidate after the history alone (its sequential prompt).

Writes ``query.{md,json}`` with the machine, the command and seconds per user of each method.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402

K = 10


def hit_metrics(lists, targets) -> tuple[float, float]:
    """(HR@10, NDCG@10) of one target per list (the list's first 10 entries; -1 pads)."""
    import numpy as np

    hr, ndcg = [], []
    for row, t in zip(lists, targets, strict=True):
        row = [int(i) for i in row[:K]]
        r = row.index(int(t)) if int(t) in row else None
        hr.append(r is not None)
        ndcg.append(0.0 if r is None else 1.0 / np.log2(r + 2))
    return float(np.mean(hr)), float(np.mean(ndcg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder with data/, index/ and model/")
    ap.add_argument("--model", type=Path, default=None, help="trained model folder (default: the run's model/)")
    ap.add_argument("--users", type=int, default=1000, help="seeded sample of test users")
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="users per decoding batch")
    ap.add_argument("--rerank", type=int, default=50, help="BM25 candidates the history model reorders")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="a remark for the results file (e.g. the machine's other load)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    model = args.model or args.run / "model"
    for need in (args.run / "data", args.run / "index", model):
        if not need.is_dir():
            sys.exit(f"{need}: no such folder (a finished `genrec run` folder holds data/, index/ and model/)")
    import numpy as np
    import torch

    from genrec.baselines.bm25 import BM25, item_documents
    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.evaluate import Evaluator
    from genrec.llm.tasks import attribute_query

    ds = Dataset.load(args.run / "data")
    evaluator = Evaluator(ds, ks=(K,), progress=False)
    split = evaluator.split("test")
    mask = evaluator.mask_history
    item_queries = [attribute_query(ds, i) for i in range(ds.n_items)]
    pool = np.flatnonzero(split.targets >= 0)
    asked = pool[[bool(item_queries[int(split.targets[u])]) for u in pool]]
    users = np.sort(np.random.default_rng(args.seed).choice(asked, size=min(args.users, len(asked)), replace=False))
    targets = split.targets[users]
    histories = [np.asarray(split.histories[u], dtype=np.int64) for u in users]
    queries = [item_queries[int(t)] for t in targets]
    same = Counter(item_queries)

    rec = GenerativeRecommender.load(model, args.run / "index", device=args.device, beams=args.beams, batch_users=args.batch)
    if rec.query_max_chars is None:
        sys.exit(f"{model}: trained without the seq_query task (its corpus_meta.json lists no seq_query); train one with "
                 "--set 'tasks.tasks=[seq, seq_query]'")
    rec.exclude_history = mask
    t = time.perf_counter()
    bm25 = BM25(item_documents(ds.items))
    bm25_build = time.perf_counter() - t
    empty = [np.zeros(0, dtype=np.int64)] * len(users)
    exclude = histories if mask else None
    rec.rank_scored(histories[:2], K, queries=queries[:2])  # warm-up

    def rerank():
        cands = bm25.rank(queries, args.rerank, exclude)
        scores = rec.score_items(histories, cands)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(cands, order, 1)

    methods = {
        "ours: history + query": lambda: rec.rank_scored(histories, K, queries=queries).items,
        "ours: query only (cold user)": lambda: rec.rank_scored(empty, K, queries=queries).items,
        "ours: history only": lambda: rec.rank_scored(histories, K).items,
        "BM25: query": lambda: bm25.rank(queries, K, exclude),
        "BM25: query only (cold user)": lambda: bm25.rank(queries, K),
        f"BM25 top-{args.rerank} reranked by history": rerank,
    }
    rows, lists = [], {}
    for name, fn in methods.items():
        t = time.perf_counter()
        lists[name] = np.asarray(fn())
        seconds = time.perf_counter() - t
        hr, ndcg = hit_metrics(lists[name], targets)
        rows.append({"method": name, "HR@10": round(hr, 5), "NDCG@10": round(ndcg, 5),
                     "seconds_per_user": round(seconds / len(users), 6)})
    examples = []
    for n in range(min(3, len(users))):
        title = {name: [str(ds.items.iloc[int(i)]["title"])[:60] for i in lists[name][n][:3] if i >= 0]
                 for name in ("ours: history + query", "BM25: query")}
        examples.append({"user": int(users[n]), "query": queries[n], "target": str(ds.items.iloc[int(targets[n])]["title"])[:80],
                         "top3": title})
    info = machine()
    cmd = shlex.join(["python", "benchmarks/query.py", *sys.argv[1:]])
    result = {"rows": rows, "users": len(users), "users_without_attributes": int(len(pool) - len(asked)),
              "items_per_query": round(float(np.mean([same[q] for q in queries])), 2), "beams": args.beams,
              "batch": args.batch, "rerank": args.rerank, "seed": args.seed, "mask_history": mask,
              "query_max_chars": rec.query_max_chars, "bm25_build_seconds": round(bm25_build, 3), "model": str(model),
              "run": str(args.run), "examples": examples, "command": cmd, "note": args.note,
              "threads": torch.get_num_threads(), "machine": info}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "query.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| method | HR@10 | NDCG@10 | s/user |", "|---|---|---|---|"]
    table += [f"| {r['method']} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['seconds_per_user']:.4f} |" for r in rows]
    ex = [f"- \"{e['query']}\" (target: {e['target']}): ours {e['top3']['ours: history + query']}; "
          f"BM25 {e['top3']['BM25: query']}" for e in examples]
    (args.out / "query.md").write_text("\n".join([
        "# Recommendation from a request in words", "", f"Machine: {describe(info)}; torch threads {torch.get_num_threads()}."
        + (f" {args.note}" if args.note else ""), "", f"Command: `{cmd}`", "",
        f"{len(users)} seeded test users of {args.run.name} (model `{model}`); the request is built from the test "
        f"target's leaf category and brand only ({result['users_without_attributes']} users whose target has neither "
        f"left out; {result['items_per_query']} catalogue items share a request on average). Beam {args.beams}, top 10; "
        f"history items {'excluded' if mask else 'kept'} where the user's history is known (not for the cold-user rows).",
        "", *table, "", "Examples (top 3 titles):", "", *ex, ""]))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
