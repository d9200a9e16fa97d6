"""Shared prompts: the negative-behaviour samples of a user batched as one prompt with a branch per
negative (``train.share_prefixes``, the default) against every sample padded on its own.

    .venv/bin/python benchmarks/shared_prompts.py --run runs/scientific --users 48

Builds the default task corpus (``negative_prompts: shared``: a user's N negatives take one
template, so their whole prompt is the same) over ``--run``'s prepared data and index, keeps the
samples of ``--users`` random users (their sequential sequence and their 3 negatives), and
fine-tunes the backbone on them for one epoch twice, each in its own process: ``padded``
(share_prefixes=false: every sample its own row, as before) and ``shared``. Both take the same
losses on the same (context, target) pairs (tests/test_train.py checks the losses and one
training step to float precision); what differs is how many tokens go through the model.
Writes benchmarks/results/shared_prompts.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._child import report, run_child  # noqa: E402
from benchmarks._machine import describe, machine  # noqa: E402


def corpus_of(run: Path, users: int, seed: int, backbone: str):
    """(corpus of the chosen users' samples, vocabulary size, code tokens)."""
    import numpy as np

    from genrec.data.dataset import Dataset
    from genrec.index.base import ItemIndex
    from genrec.llm.backbone import add_tokens, load_tokenizer
    from genrec.llm.corpus import build_corpus
    from genrec.llm.tasks import TaskConfig

    ds = Dataset.load(run / "data")
    index = ItemIndex.load(run / "index")
    tok = load_tokenizer(backbone)
    add_tokens(tok, None, index.new_tokens)
    train, _, info = build_corpus(ds, index, tok, TaskConfig(tasks=["seq", "neg"], layout="all_positions"), valid_users=1)
    chosen = np.random.default_rng(seed).choice(np.unique(train.user[train.user >= 0]), size=users, replace=False)
    return train.subset(np.flatnonzero(np.isin(train.user, chosen))), info["vocab_size"], list(index.new_tokens)


def child(args) -> None:
    from genrec.llm.config import LLMTrainConfig
    from genrec.llm.train import Units, train

    corpus, vocab, tokens = corpus_of(args.run, args.users, args.seed, args.backbone)
    share = args.which == "shared"
    cfg = LLMTrainConfig(backbone=args.backbone, epochs=1, batch_size=args.batch, batch_tokens=args.batch_tokens,
                         share_prefixes=share, lora_dropout=0.0, save_every=10**6, log_every=10**6, seed=args.seed)
    units = Units(corpus, share, args.batch_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = train(cfg, args.backbone, corpus, None, tokens, Path(tmp) / "out", Path(tmp) / "ckpt", vocab, progress=False,
                  log=lambda _: None, layout="all_positions")
        seconds = time.time() - t
    r = {"samples": len(corpus), "units": len(units), "tokens": int(units.lengths.sum()),
         "padded_tokens": int(corpus.lengths.sum()), "target_tokens": int(corpus.mask.sum()),
         "steps": m["steps"], "train_seconds": m["seconds_this_session"], "wall_seconds": round(seconds, 1),
         "final_loss": m["final_train_loss"],
         "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    report(r)


def spawn(which: str, args) -> dict:
    cmd = [__file__, "--child", which, "--run", str(args.run), "--users", str(args.users),
           "--seed", str(args.seed), "--backbone", args.backbone, "--batch", str(args.batch),
           "--batch-tokens", str(args.batch_tokens)]
    r = run_child(cmd, which)
    r["target_tokens_per_s"] = round(r["target_tokens"] / r["train_seconds"], 2)
    print(f"{which:<7} {r['samples']} samples as {r['units']} rows, {r['tokens']:,} tokens, {r['steps']} steps in "
          f"{r['train_seconds']:.1f}s: {r['target_tokens_per_s']:.1f} target tokens/s, peak {r['peak_mem_mb']:.0f} MB",
          flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific", help="a run folder with data/ and index/")
    ap.add_argument("--users", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each, alternating; the fastest counts")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--child", choices=["padded", "shared"], dest="which", default=None)
    args = ap.parse_args()
    if args.which:
        child(args)
        return
    if not ((args.run / "data").is_dir() and (args.run / "index").is_dir()):
        sys.exit(f"{args.run}: expected data/ and index/ of a run (genrec run configs/scientific.yaml builds them)")
    tries: dict[str, list[dict]] = {"padded": [], "shared": []}
    for _ in range(args.repeat):  # taking turns, so both see the same background load; the fastest of each counts
        for w in tries:
            tries[w].append(spawn(w, args))
    rows = {w: min(t, key=lambda r: r["train_seconds"]) for w, t in tries.items()}
    ratio = rows["shared"]["target_tokens_per_s"] / rows["padded"]["target_tokens_per_s"]
    info = machine()
    result = {"ratio": round(ratio, 2), "token_ratio": round(rows["padded"]["tokens"] / rows["shared"]["tokens"], 2),
              "runs": rows, "seconds_of_every_run": {w: [r["train_seconds"] for r in t] for w, t in tries.items()},
              "machine": info,
              "settings": {"users": args.users, "seed": args.seed, "backbone": args.backbone, "batch": args.batch,
                           "batch_tokens": args.batch_tokens, "run": str(args.run),
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_prompts.json").write_text(json.dumps(result, indent=2) + "\n")
    cmd = " ".join(["python benchmarks/shared_prompts.py", *sys.argv[1:]])
    p = rows["padded"]
    lines = ["# Shared prompts in fine-tuning", "", f"Machine: {describe(info)}.", "", f"Command: `{cmd}`", "",
             f"The sequential sequence and the 3 negative-behaviour samples of {args.users} random users of `{args.run.name}` "
             f"({p['samples']} samples, {p['target_tokens']:,} target tokens), the default task settings, backbone "
             f"`{args.backbone}` with LoRA r=8, batch {args.batch} / {args.batch_tokens} tokens, one epoch, each run in its "
             f"own process, the two taking turns {args.repeat} times (the fastest run of each counts). Both take the "
             "same losses on the same (context, target) pairs; `shared` puts a user's negatives behind one copy of "
             "their prompt.", "",
             "| run | rows | tokens through the model | optimizer steps | seconds | target tokens/s | peak MB | last step's loss |",
             "|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['units']} | {r['tokens']:,} | {r['steps']} | {r['train_seconds']:.1f} | "
                     f"{r['target_tokens_per_s']:.1f} | {r['peak_mem_mb']:.0f} | {r['final_loss']} |")
    lines += ["", f"Speed-up: **{ratio:.2f}x** target tokens per second ({result['token_ratio']:.2f}x fewer tokens). "
              "The runs take turns on a machine that may have other jobs: the ratio is measured under the same "
              "conditions for both, the absolute rates are lower bounds."]
    (args.out / "shared_prompts.md").write_text("\n".join(lines) + "\n")
    print(f"speed-up {ratio:.2f}x ({result['token_ratio']:.2f}x fewer tokens)")


if __name__ == "__main__":
    main()
