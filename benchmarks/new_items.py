"""New items without retraining: do they reach the users whose histories hold their neighbours?

    OMP_NUM_THREADS=1 python benchmarks/new_items.py [--run runs/scientific] [--model DIR] [--items 5] [--users 20]

For ``--items`` catalogue items X (among the 200 most interacted), a new item is added the way
`POST /items` adds one: from X's 5 most co-interacted items as its ``neighbours`` (codes from the
index's codebooks, unique, persisted in a cache store). The model is not retrained. All new items
then join the trie together, and for each new item we decode top-``--k`` (beam ``--beams``) for
``--users`` users whose prompt (their last ``max_history`` items, what the model reads) holds one
of its neighbours ("holders") and as many users whose history holds none ("others"), and report how
often the new item is in their lists: once with the decoder's back-off (a new item's unseen last
code scored by its trained siblings) and once with the model alone, on the same users. As a
reference, the share of holders whose list holds X itself (a trained item with the same
neighbours). Histories are left out of the lists when the dataset has no repeats, as in evaluation.

Weights: ``--model`` (a model folder or a checkpoint folder), else the run's ``model`` folder, else
its latest checkpoint. Writes benchmarks/results/new_items.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402

SCORINGS = ("backoff", "alone")  #: with the decoder's sibling back-off for new items' last codes; the model alone
SHARES = ("new_in_holders", "new_in_others", "anchor_in_holders")


def pick_model(run: Path, model: Path | None) -> Path:
    from genrec.llm.files import has_trained_weights, is_checkpoint

    if model is not None:
        return model
    if has_trained_weights(run / "model"):
        return run / "model"
    ckpts = sorted(d for d in run.glob(".ckpt-model-*") if is_checkpoint(d))
    if not ckpts:
        sys.exit(f"no trained model folder or checkpoint in {run}")
    return ckpts[-1]


def without_note(argv: list[str]) -> list[str]:
    """The arguments less ``--note`` and its text (the note is printed beside the command, not in it)."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--note="):
            skip = False
        elif a == "--note":
            skip = True
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific", help="a run folder (data/, index/, model/)")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--items", type=int, default=5)
    ap.add_argument("--users", type=int, default=20, help="holders, and as many others, per new item")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="users decoded together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    import numpy as np

    from genrec.decode.recommender import GenerativeRecommender
    from genrec.llm.files import checkpoint_step, is_checkpoint
    from genrec.serve.catalog import Catalog
    from genrec.serve.store import open_store

    model = pick_model(args.run, args.model)
    step = checkpoint_step(model) if is_checkpoint(model) else None
    rng = np.random.default_rng(args.seed)
    st = open_store(Path(tempfile.mkdtemp()) / "cache.db")
    catalog = Catalog(args.run / "index", args.run / "data", st)
    ds = catalog.ds
    exclude = not ds.has_repeats()
    rec = GenerativeRecommender.load(model, catalog.index, beams=args.beams, batch_users=args.batch,
                                     exclude_history=exclude)  # the trained catalogue; new items join below
    window = rec.max_history
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
        added = catalog.add({"item_id": f"new-{n}", "neighbours": [catalog.ids[i] for i in neighbours]})
        hold = np.flatnonzero([np.isin(s[-window:], neighbours).any() for s in ds.sequences])
        rest = np.flatnonzero([not np.isin(s, neighbours).any() for s in ds.sequences])
        plans.append({"anchor": int(x), "anchor_id": catalog.ids[int(x)], "neighbours": neighbours, "codes": added["codes"],
                      "anchor_codes": [int(c) for c in catalog.index.codes[int(x)]],
                      "holders": rng.choice(hold, size=min(args.users, len(hold)), replace=False).tolist(),
                      "others": rng.choice(rest, size=min(args.users, len(rest)), replace=False).tolist()})
    users = sorted({u for p in plans for u in p["holders"] + p["others"]})
    index = catalog.extended_index()
    settings = {"beams": args.beams, "batch_users": args.batch, "max_history": window, "layout": rec.layout,
                "prompt": rec.prompt, "exclude_history": exclude, "precision": rec.precision}
    lists, seconds = {}, {}
    for scoring in SCORINGS:
        r = GenerativeRecommender(rec.lm, rec.fmt.tok, index, **settings,
                                  cold_from=catalog.n_catalogue if scoring == "backoff" else None)
        t = time.perf_counter()
        res = r.rank_scored([ds.sequences[u] for u in users], args.k)
        seconds[scoring] = round(time.perf_counter() - t, 1)
        lists[scoring] = {u: set(row[row >= 0].tolist()) for u, row in zip(users, res.items, strict=True)}
        print(f"{scoring}: {len(users)} users in {seconds[scoring]:.0f} s", file=sys.stderr)
    rows = []
    for n, p in enumerate(plans):
        new = catalog.n_catalogue + n
        row = {"anchor_id": p["anchor_id"], "anchor_codes": p["anchor_codes"], "new_codes": p["codes"],
               "shared_prefix": int(np.cumprod(np.array(p["codes"]) == np.array(p["anchor_codes"])).sum()),
               "neighbour_ids": [catalog.ids[i] for i in p["neighbours"]],
               "holders": len(p["holders"]), "others": len(p["others"]),
               "holder_users": [str(ds.user_ids[u]) for u in p["holders"]],
               "other_users": [str(ds.user_ids[u]) for u in p["others"]]}
        for scoring in SCORINGS:
            got = lists[scoring]
            row[scoring] = {
                "new_in_holders": float(np.mean([new in got[u] for u in p["holders"]])),
                "new_in_others": float(np.mean([new in got[u] for u in p["others"]])),
                "anchor_in_holders": float(np.mean([p["anchor"] in got[u] for u in p["holders"]])),
            }
        rows.append(row)
    mean = {s: {k: float(np.mean([r[s][k] for r in rows])) for k in SHARES} for s in SCORINGS}
    info = machine()
    command = " ".join(["OMP_NUM_THREADS=1 python benchmarks/new_items.py", *map(shlex.quote, without_note(argv))])
    result = {"model": str(model), "step": step, "rows": rows, "mean": mean, "k": args.k, "beams": args.beams,
              "max_history": window, "exclude_history": exclude, "holders_per_item": args.users,
              "users_decoded": len(users), "decode_seconds": seconds, "machine": info, "note": args.note,
              "command": command}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "new_items.json").write_text(json.dumps(result, indent=2) + "\n")
    names = {"backoff": "back-off", "alone": "model alone"}
    lines = [
        "# New items without retraining", "",
        f"Command: `{command}`", "", f"Machine: {describe(info)}.", "",
        f"Weights: `{model}`" + (f" (step {step})" if step else "") + ".", "",
        f"Each new item is added from the 5 items most co-interacted with a catalogue item X (among the 200 most "
        f"interacted), all {len(rows)} at once; top-{args.k}, beam {args.beams}. Per new item, up to {args.users} holders "
        f"(a neighbour among the last {window} items, the prompt) and as many others (no neighbour in the history); "
        f"{len(users)} distinct users, each decoded twice: with the back-off in {seconds['backoff']:.0f} s, "
        f"with the model alone in {seconds['alone']:.0f} s."
        + (" History items are left out of the lists." if exclude else ""), "",
        "| X | X codes | new item codes | shared prefix | holders / others | new item in holders' top-k (back-off / alone) "
        "| in others' top-k (back-off / alone) | X in holders' top-k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r["backoff"], r["alone"]
        lines.append(f"| {r['anchor_id']} | {r['anchor_codes']} | {r['new_codes']} | {r['shared_prefix']} | "
                     f"{r['holders']} / {r['others']} | {b['new_in_holders']:.2f} / {a['new_in_holders']:.2f} | "
                     f"{b['new_in_others']:.2f} / {a['new_in_others']:.2f} | {b['anchor_in_holders']:.2f} |")
    b, a = mean["backoff"], mean["alone"]
    lines.append(f"| **mean** | | | | | **{b['new_in_holders']:.3f}** / {a['new_in_holders']:.3f} | "
                 f"**{b['new_in_others']:.3f}** / {a['new_in_others']:.3f} | {b['anchor_in_holders']:.3f} |")
    lines += ["", "Means over the items of each share: " + "; ".join(
        f"{names[s]}: holders {mean[s]['new_in_holders']:.3f}, others {mean[s]['new_in_others']:.3f}" for s in SCORINGS) + "."]
    if args.note:
        lines += ["", args.note]
    (args.out / "new_items.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
