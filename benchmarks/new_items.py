"""New items without retraining: do they reach the users whose histories hold their neighbours?

    .venv/bin/python benchmarks/new_items.py [--run runs/scientific] [--model DIR] [--items 5] [--users 20]

For ``--items`` catalogue items X (among the 200 most interacted), a new item is added the way
`POST /items` adds one: from X's 5 most co-interacted items as its ``neighbours`` (codes from the
index's codebooks, unique, persisted in a cache store). The model is not retrained. Every new
item then joins the trie, and for each new item we decode top-``--k`` (beam 20) for ``--users``
users whose history holds one of its neighbours ("holders") and as many users whose history holds
none ("others"), and report how often the new item is in their lists. As a reference, the share
of holders whose list holds X itself (a trained item with the same neighbours).

Weights: ``--model`` (a model folder or a checkpoint folder), else the latest checkpoint of the
run. Writes benchmarks/results/new_items.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--items", type=int, default=5)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-backoff", action="store_true", help="score new items' last codes by the model alone")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import numpy as np

    from genrec.decode.recommender import GenerativeRecommender
    from genrec.llm.files import checkpoint_step, is_checkpoint
    from genrec.serve.catalog import Catalog
    from genrec.serve.store import open_store

    model = args.model
    if model is None:
        found = sorted(args.run.glob(".ckpt-model-*")) or ([args.run / "model"] if (args.run / "model").is_dir() else [])
        if not found:
            sys.exit(f"no model or checkpoint in {args.run}")
        model = found[-1]
    step = checkpoint_step(model) if is_checkpoint(model) else None
    rng = np.random.default_rng(args.seed)
    st = open_store(Path(tempfile.mkdtemp()) / "cache.db")
    catalog = Catalog(args.run / "index", args.run / "data", st)
    ds = catalog.ds
    train = ds.train_sequences()
    pop = np.bincount(np.concatenate(train), minlength=ds.n_items)
    anchors = rng.choice(np.argsort(-pop, kind="stable")[:200], size=args.items, replace=False)
    plans = []
    for n, x in enumerate(anchors):
        co = np.zeros(ds.n_items)
        for s in train:
            if x in s:
                np.add.at(co, s, 1)
        co[x] = 0
        neighbours = [int(i) for i in np.argsort(-co, kind="stable")[:5]]
        rec = catalog.add({"item_id": f"new-{n}", "neighbours": [catalog.ids[i] for i in neighbours]})
        hold = np.flatnonzero([np.isin(s, neighbours).any() for s in ds.sequences])
        rest = np.setdiff1d(np.arange(ds.n_users), hold)
        plans.append({"anchor": int(x), "anchor_id": catalog.ids[int(x)], "neighbours": neighbours, "codes": rec["codes"],
                      "anchor_codes": [int(c) for c in catalog.index.codes[int(x)]],
                      "holders": rng.choice(hold, size=min(args.users, len(hold)), replace=False).tolist(),
                      "others": rng.choice(rest, size=min(args.users, len(rest)), replace=False).tolist()})
    users = sorted({u for p in plans for u in p["holders"] + p["others"]})
    rec = GenerativeRecommender.load(model, catalog.extended_index(), beams=args.beams, batch_users=8,
                                     cold_from=None if args.no_backoff else catalog.n_catalogue)
    t = time.perf_counter()
    res = rec.rank_scored([ds.sequences[u] for u in users], args.k)
    seconds = time.perf_counter() - t
    lists = {u: set(row[row >= 0].tolist()) for u, row in zip(users, res.items, strict=True)}
    rows = []
    for n, p in enumerate(plans):
        new = catalog.n_catalogue + n
        rows.append({
            "anchor_id": p["anchor_id"], "anchor_codes": p["anchor_codes"], "new_codes": p["codes"],
            "shared_prefix": int(np.cumprod(np.array(p["codes"]) == np.array(p["anchor_codes"])).sum()),
            "holders": len(p["holders"]), "others": len(p["others"]),
            "new_in_holders": float(np.mean([new in lists[u] for u in p["holders"]])),
            "new_in_others": float(np.mean([new in lists[u] for u in p["others"]])),
            "anchor_in_holders": float(np.mean([p["anchor"] in lists[u] for u in p["holders"]])),
        })
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("new_in_holders", "new_in_others", "anchor_in_holders")}
    info = machine()
    result = {"model": str(model), "step": step, "rows": rows, "mean": mean, "k": args.k, "beams": args.beams,
              "decode_seconds": round(seconds, 1), "users_decoded": len(users), "machine": info, "note": args.note,
              "command": f"python benchmarks/new_items.py --items {args.items} --users {args.users} --k {args.k}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "new_items.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# New items without retraining", "",
        f"`{result['command']}` on {describe(info)}. Weights: `{model.name}`" + (f" (step {step})" if step else "") + ".",
        "", f"Each new item is added from the 5 items most co-interacted with a catalogue item X; top-{args.k}, "
        f"beam {args.beams}; {len(users)} users decoded in {seconds:.0f} s.", "",
        "| X | X codes | new item codes | shared prefix | holders | new item in holders' top-k | in others' top-k | X in holders' top-k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['anchor_id']} | {r['anchor_codes']} | {r['new_codes']} | {r['shared_prefix']} | {r['holders']} | "
                     f"{r['new_in_holders']:.2f} | {r['new_in_others']:.2f} | {r['anchor_in_holders']:.2f} |")
    lines.append(f"| mean | | | | | {mean['new_in_holders']:.2f} | {mean['new_in_others']:.2f} | {mean['anchor_in_holders']:.2f} |")
    if args.note:
        lines += ["", args.note]
    (args.out / "new_items.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
