"""Shortlist scoring speed: our shared-prompt scorer against one padded forward per user.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rerank.py [--run runs/scientific] [--users 16] [--candidates 20]

Scores the same shortlists (the Pop top ``--candidates`` of each of ``--users`` test users of
the run, history items kept) with the run's fine-tuned model, LoRA merged, two ways:

- ours: :meth:`GenerativeRecommender.score_items` (:func:`genrec.decode.beam.score_sequences`):
  each prompt encoded once, then one step per code level for all of the user's candidates, which
  read the prompt's keys and values without copies;
- the alternative a user would write first: one forward per user over ``candidates`` rows of
  prompt + candidate codes (padded on the right), summing the codes' log-probabilities.

Reports users per second of each, the ratio, and the largest score difference. Writes
benchmarks/results/rerank.{md,json}.

    .venv/bin/python benchmarks/rerank.py --quality runs/scientific/rerank-sasrec-ce

writes the quality table of a finished `genrec rerank --out DIR` instead
(benchmarks/results/rerank-DATASET-BASE.{md,json}; ``-tallrec`` before the suffix for a
``--method tallrec`` folder): its test rows, the validation grid, and a paired
bootstrap (2,000 resamples of the test users) of the fused list's HR@10 / NDCG@10 gain over the
classic model's on the same users, from the kept shortlists.

    .venv/bin/python benchmarks/rerank.py --quality runs/scientific/rerank-sasrec-ce runs/scientific/rerank-tallrec

writes each folder's table and, for folders reranking the same classic model's shortlists of the
same test users (the code-likelihood reranker and the TALLRec-style yes/no ranker, say), one table
of both side by side with each scorer's seconds per user
(benchmarks/results/rerank-compare-DATASET-BASE.{md,json}).
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


def padded_forward(rec, prompt: list[int], items, trie=None) -> list[float]:
    """log p(codes | prompt) of each item, one right-padded forward over prompt + codes rows; with
    ``trie`` (a model trained with ``softmax="trie"``), each step's softmax over the trie node's
    children, as the model was trained and as ours scores."""
    import torch

    rows = [prompt + rec.fmt.items[int(i)] for i in items]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    att = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        ids[j, : len(r)], att[j, : len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        hs = rec.lm.hidden(ids, attention_mask=att).last_hidden_state
        logp = torch.log_softmax(rec.lm.logits(hs), -1)
    out = []
    for j, i in enumerate(items):
        toks = rec.fmt.items[int(i)]
        step = [logp[j, len(prompt) - 1 + t] for t in range(len(toks))]
        if trie is not None:
            step = [s - torch.logsumexp(s[trie.allowed(toks[:t])], 0) for t, s in enumerate(step)]
        out.append(sum(float(s[tok]) for s, tok in zip(step, toks, strict=True)))
    return out


def shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it (the form the commands are written in)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def describe_model(model: Path) -> str:
    """The fine-tuned LLM in a few words, from its train_config.json."""
    f = model / "train_config.json"
    if not f.is_file():
        return "fine-tuned backbone"
    cfg = json.loads(f.read_text())
    layers = f", first {cfg['layers']} layers" if cfg.get("layers") else ""
    distill = f", distilled from {cfg['distill']['teacher']}" if cfg.get("distill") else ""
    return f"{cfg.get('mode', 'lora')} fine-tune{layers}, {cfg.get('epochs', 1):g} epoch(s){distill}"


def quality(folder: Path, out: Path, label: str | None = None) -> dict:
    import numpy as np

    from genrec.data.dataset import Dataset
    from genrec.decode.rerank import Shortlists
    from genrec.evaluate.metrics import metrics_from_ranked_lists

    res = json.loads((folder / "metrics.json").read_text())
    data = Path(res.get("data") or Path(res["model"]).parent / "data")  # runs/NAME/{model,data}
    dataset = label or data.parent.name
    method = res.get("method", "codes")
    ds = Dataset.load(data)
    parts = sorted((folder / ".shortlists-test").glob("chunk-*.npz"))
    short = Shortlists.concat([Shortlists.load(p) for p in parts])
    targets = ds.eval_split("test").targets[short.users]

    def per_user(weight: float) -> dict[str, np.ndarray]:  # the evaluator's per-user metrics of the fused lists
        lists = short.ranker(weight).rank(None, short.users, 10)
        return metrics_from_ranked_lists(lists, targets, (10,))

    before, after = per_user(0.0), per_user(res["weight"])
    idx = np.random.default_rng(0).integers(0, len(short.users), (2000, len(short.users)))
    boot = {}
    for name in ("HR@10", "NDCG@10"):
        d = after[name] - before[name]
        boot[name] = (float(d.mean()), *np.percentile(d[idx].mean(1), [2.5, 97.5]).tolist())
    t, cols = res["test"], ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]
    sampled = f" --users {res['test_users_sampled']}" if res.get("test_users_sampled") else ""
    who = (f"a seeded sample of {t['users']:,} test users (seed {res['seed']}; every row on the same users)" if sampled
           else f"all {t['users']:,} test users")
    name = Path(res["base"]).parent.name
    valid = res.get("valid")  # absent when the weight was given (genrec rerank --weight), not picked
    picked = "picked on validation" if valid else "given"
    llm = METHOD_NAMES[method]
    rows = [(f"{name} alone", t["base"]), (f"{llm} alone on {name}'s top {res['candidates']} (w = 1)", t["llm_on_shortlist"]),
            (f"{name} + {llm} rerank (w = {res['weight']}, {picked})", t["fused"])]
    where = (f"--index {Path(res['model']).parent / 'index'}" if method == "codes" else f"--method {method}")
    md = [f"# Filter-then-rerank on {dataset}: {name}'s shortlist reordered by {llm}", "",
          f"Machine: {describe(machine())}.", "",
          f"Command: `OMP_NUM_THREADS=2 genrec rerank --base {res['base']} --model {res['model']} {where} "
          f"--data {data} --out {shown(folder)} "
          + (f"--valid-users {valid['users']}" if valid else f"--weight {res['weight']}") + f"{sampled}`, then "
          f"`python benchmarks/rerank.py --quality {shown(folder)}{f' --label {label}' if label else ''}`.", "",
          f"Test split, {who}, full ranking, the shared evaluator ("
          f"{'history items never recommended' if res.get('mask_history') else 'history items kept'}, as for every "
          f"model in the same table). The LLM: {Path(res['model'])} ({describe_model(ROOT / res['model'])}"
          + (f"; shortlisting and scoring {res['seconds_per_user']:.3f} s per user" if res.get("seconds_per_user") else "")
          + "). "
          f"The weight w of the LLM in (1 - w) log p_{name} + w log p_LLM over the shortlist was "
          + (f"picked by NDCG@10 on {valid['users']:,} validation users (seed {res['seed']})." if valid else "given."), "",
          "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    md += [f"| {label} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |" for label, m in rows]
    md += ["", "Gain of the fused list over the classic model's own on the same users (paired bootstrap, "
           "2,000 resamples, 95% interval):", ""]
    md += [f"- {k}: {v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]" for k, v in boot.items()]
    if valid:
        md += ["", "Validation grid (NDCG@10 / HR@10 by w):", "",
               ", ".join(f"{w}: {m['NDCG@10']:.4f} / {m['HR@10']:.4f}" for w, m in valid["by_weight"].items())]
    md.append("")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"rerank-{dataset}-{name}" + ("" if method == "codes" else f"-{method}")
    (out / f"{stem}.md").write_text("\n".join(md))
    (out / f"{stem}.json").write_text(json.dumps({**res, "bootstrap": boot, "machine": machine()}, indent=2) + "\n")
    print("\n".join(md))
    return {**res, "name": name, "dataset": dataset, "users": short.users}


METHOD_NAMES = {"codes": "the LLM (code likelihood)", "tallrec": "the TALLRec-style yes/no ranker"}


def compare(results: list[dict], out: Path, folders: list[Path]) -> None:
    """One table of several rerank folders over the same classic model's shortlists of the same
    test users: the classic model once, then each scorer alone and fused, with its seconds per user."""
    import numpy as np

    first = results[0]
    for r in results[1:]:
        if r["name"] != first["name"] or r["candidates"] != first["candidates"] or not np.array_equal(r["users"], first["users"]):
            raise SystemExit("--quality folders to compare must rerank the same classic model's top candidates of the "
                             f"same test users ({first['name']}, {first['candidates']} candidates, the same --users and --seed)")
    cols = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]
    name, base = first["name"], first["test"]["base"]
    rows = [(f"{name} alone", base, "")]
    for r in results:
        llm, spu = METHOD_NAMES[r.get("method", "codes")], r.get("seconds_per_user")
        cost = f"{spu:.3f}" if spu else "n/a"
        rows += [(f"{llm} alone on the top {r['candidates']}", r["test"]["llm_on_shortlist"], cost),
                 (f"{name} + {llm} (w = {r['weight']})", r["test"]["fused"], cost)]
    md = [f"# Reranking {name}'s shortlist on {first['dataset']}: code likelihood against the yes/no ranker", "",
          f"Machine: {describe(machine())}.", "",
          "Command: `python benchmarks/rerank.py --quality " + " ".join(str(shown(f)) for f in folders) + "` over the "
          "`genrec rerank` folders named there.", "",
          f"Test split, the same {len(first['users']):,} users for every row. Seconds per user: shortlisting and "
          "scoring the test users' candidates (the classic model's share is the same in every row).", "",
          "| method | " + " | ".join(cols) + " | s per user |", "|---|" + "---|" * (len(cols) + 1)]
    md += [f"| {label} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {cost} |" for label, m, cost in rows]
    md.append("")
    stem = f"rerank-compare-{first['dataset']}-{name}"
    (out / f"{stem}.md").write_text("\n".join(md))
    keep = [{k: v for k, v in r.items() if k != "users"} for r in results]
    (out / f"{stem}.json").write_text(json.dumps({"folders": [str(shown(f)) for f in folders], "results": keep,
                                                  "machine": machine()}, indent=2) + "\n")
    print("\n".join(md))


def main() -> None:
    import numpy as np

    from genrec.baselines import Pop
    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.decode.rerank import shortlist
    from genrec.llm.files import has_trained_weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="users scored together by ours")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quality", type=Path, nargs="+", help="finished `genrec rerank --out` folders: write each one's quality "
                                                            "table, and with several, their comparison")
    ap.add_argument("--label", help="with --quality: the results are rerank-LABEL-BASE.{md,json} (default: the run folder's name)")
    args = ap.parse_args()
    if args.quality:
        folders = [q.resolve() for q in args.quality]
        results = [quality(f, args.out, args.label) for f in folders]
        if len(results) > 1:
            compare(results, args.out, folders)
        return
    if not has_trained_weights(args.run / "model"):
        sys.exit(f"{args.run}/model: no trained model; run `genrec run configs/scientific.yaml` first")
    ds = Dataset.load(args.run / "data")
    rec = GenerativeRecommender.load(args.run / "model", args.run / "index", device="cpu", batch_users=args.batch)
    pop = Pop()
    pop.fit(ds)
    split = ds.eval_split("test")
    users = np.flatnonzero(split.targets >= 0)[: args.users]
    hists = [split.histories[u] for u in users]

    class NoLLM:  # the shortlist alone: both scorers get the same candidates
        def score_items(self, histories, items):
            return np.zeros(items.shape)

    items = shortlist(pop, NoLLM(), hists, users, args.candidates, args.candidates).items
    rec.score_items(hists[:2], items[:2])  # warm-up
    t = time.perf_counter()
    ours = rec.score_items(hists, items)
    t_ours = time.perf_counter() - t
    prompts = rec.prompts(hists)
    t = time.perf_counter()
    trie = rec.index.trie(rec.fmt.items) if rec.lm.softmax == "trie" else None
    theirs = np.array([padded_forward(rec, p, row, trie) for p, row in zip(prompts, items, strict=True)])
    t_theirs = time.perf_counter() - t
    diff = float(np.abs(ours - theirs).max())
    res = {"users": len(users), "candidates": args.candidates, "batch": args.batch,
           "ours_s_per_user": round(t_ours / len(users), 3), "padded_s_per_user": round(t_theirs / len(users), 3),
           "ours_seconds": t_ours, "padded_seconds": t_theirs,
           "speedup": round(t_theirs / t_ours, 2), "max_abs_score_diff": diff, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rerank.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        "# Shortlist scoring: shared-prompt steps vs one padded forward per user", "",
        f"Machine: {describe(res['machine'])}.", "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/rerank.py --users {args.users} --candidates {args.candidates}`", "",
        f"The Pop top {args.candidates} (history items kept, as the evaluator does) of the first {len(users)} test users of {args.run.name}, "
        "scored by its fine-tuned model (LoRA merged) as log p(codes | prompt).", "",
        "| scorer | s per user | users per s |", "|---|---|---|",
        f"| ours (`score_items`, {args.batch} users at a time) | {res['ours_s_per_user']} | {1 / res['ours_s_per_user']:.2f} |",
        f"| one right-padded forward per user ({args.candidates} rows) | {res['padded_s_per_user']} | "
        f"{1 / res['padded_s_per_user']:.2f} |", "",
        f"**{res['speedup']}x** the users per second; largest score difference {diff:.2e}.", "",
    ]
    (args.out / "rerank.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
