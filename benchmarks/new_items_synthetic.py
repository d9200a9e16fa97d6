"""New items without retraining, on a synthetic shop where the answer is known.

    .venv/bin/python benchmarks/new_items_synthetic.py

400 synthetic users who each buy within one of 4 categories (24 items), LightGCN behaviour
embeddings, an alignment index (2 levels x 8 codes), per-prefix sequential tasks, and a small
Llama (hidden 64, 3 layers, the default backbone's real tokenizer) fully fine-tuned for 8 epochs.
Then, per category, a new item is added as `POST /items` adds one: from the category's 4 most
popular items as its ``neighbours`` (codes from the codebooks; no retraining), and every user's
top-10 is decoded (beam 20). Reported: the share of users whose history holds one of the
neighbours ("holders") with the new item in their top-10, against the other users, with the
added items' unseen last codes scored by the model alone and by their trained siblings' mean
probability (the back-off `genrec cache build` uses). Writes
benchmarks/results/new_items_synthetic.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402


def small_llama(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from genrec.llm.backbone import load_tokenizer

    tok = load_tokenizer("default")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--users", type=int, default=400, help="synthetic users (a smoke run takes a few)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    try:
        measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(args, root: Path) -> None:
    import numpy as np
    import yaml

    from genrec.cli import main as cli
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.serve.catalog import Catalog
    from genrec.serve.store import open_store

    cfg = {
        "name": "new-items", "run_dir": str(root / "run"), "seed": 0,
        "data": {"source": "synth", "prepare": {"kcore": 2},
                 "synth": {"n_users": args.users, "n_items": 24, "n_categories": 4, "seed": 5, "mean_length": 8,
                           "p_followup_same_category": 1.0, "max_taste_categories": 1, "p_explore": 0.0}},
        "baselines": [], "backbone": str(small_llama(root / "llama")),
        "cf": {"model": "lightgcn", "dim": 16, "train": {"epochs": 50}},
        "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 8, "epochs": 50, "progress": False}},
        "tasks": {"tasks": ["seq"], "layout": "per_prefix", "negatives_per_positive": 0},
        "train": {"mode": "full", "epochs": args.epochs, "batch_size": 32, "lr": 1e-2, "save_every": 1000,
                  "lora_dropout": 0.0, "log_every": 50},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    start = time.time()
    if cli(["train", "--config", str(root / "run.yaml"), "--no-progress"]) != 0:
        sys.exit("the pipeline failed")
    train_s = time.time() - start
    run = root / "run"
    catalog = Catalog(run / "index", run / "data", open_store(root / "cache.db"))
    ds = catalog.ds
    cats = ds.items["categories"].to_numpy()
    pop = np.bincount(np.concatenate(ds.sequences), minlength=ds.n_items)
    plans = []
    for c in np.unique(cats):
        members = np.flatnonzero(cats == c)
        nb = [int(i) for i in members[np.argsort(-pop[members], kind="stable")][:4]]
        rec = catalog.add({"item_id": f"new-{c}", "neighbours": [catalog.ids[i] for i in nb]})
        plans.append((str(c), nb, rec["codes"]))
    rows = []
    for label, cold in (("model alone", None), ("sibling back-off", catalog.n_catalogue)):
        rec = GenerativeRecommender.load(run / "model", catalog.extended_index(), device="cpu", beams=20, batch_users=16,
                                         cold_from=cold)
        res = rec.rank_scored(ds.sequences, 10)
        same = np.mean([np.mean([cats[i] == cats[s[-1]] for i in r if 0 <= i < ds.n_items]) for r, s in
                        zip(res.items, ds.sequences, strict=True)])
        for n, (c, nb, codes) in enumerate(plans):
            holders = np.array([np.isin(s, nb).any() for s in ds.sequences])
            got = np.array([ds.n_items + n in r for r in res.items])
            rows.append({"scoring": label, "category": c, "codes": codes, "holders": int(holders.sum()),
                         "share_holders": round(float(got[holders].mean()), 3),
                         "share_others": round(float(got[~holders].mean()), 3),
                         "top10_in_last_items_category": round(float(same), 3)})
    info = machine()
    result = {"rows": rows, "users": ds.n_users, "items": ds.n_items, "train_seconds": round(train_s, 1), "machine": info,
              "command": " ".join(["python benchmarks/new_items_synthetic.py", *sys.argv[1:]])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "new_items_synthetic.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# New items without retraining (synthetic shop)", "",
             f"`{result['command']}` on {describe(info)}; data, index and fine-tune took {train_s:.0f} s.", "",
             f"{ds.n_users} users, {ds.n_items} items in 4 categories, each user buying in one. Per category, a new item "
             "is added from the category's 4 most popular items as neighbours; every user's top-10 is decoded (beam 20).", "",
             "| scoring of added items | category | codes | neighbour holders | new item in holders' top-10 | in others' top-10 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scoring']} | {r['category']} | {r['codes']} | {r['holders']} | {r['share_holders']:.2f} | "
                     f"{r['share_others']:.2f} |")
    lines += ["", "Share of top-10 items in the category of the user's last item (chance: 0.25): "
              + ", ".join(f"{label} {next(r['top10_in_last_items_category'] for r in rows if r['scoring'] == label):.2f}"
                          for label in ("model alone", "sibling back-off"))]
    (args.out / "new_items_synthetic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
