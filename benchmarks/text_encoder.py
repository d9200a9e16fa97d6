"""Which text embedding of the items agrees best with behaviour: the probe that picks
``index.text_layers``, the depth of the backbone the index's text embeddings come from.

    .venv/bin/python benchmarks/text_encoder.py --data runs/recipes/x12/data --max-tokens 64

Every item's title and description goes through the backbone once; each depth L is read from that
one pass (row 0: the mean input-layer embedding, what the text stage used before the option; row
L: the final norm of layer L's output, mean-pooled over the text's tokens, which is exactly what
``BackboneEncoder(layers=L)`` and the text stage with ``layers: L`` compute). For each depth, the
vectors are centred and L2-normalised, and every item with co-interacted items (two items in one
user's *training* sequence; validation and test items are never read) gets its 10 nearest items by
cosine. Reported per depth: the share of those items with at least one co-interacted item among
their 10 neighbours (hit@10) and the mean share of the 10 that are co-interacted (precision@10),
beside the same for 10 random items. Training split only, so it may choose a setting.
Writes benchmarks/results/text_encoder.{md,json} (or --out).
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


def co_interacted(sequences, n_items: int) -> list[set[int]]:
    """For each item, the other items that share a training sequence with it."""
    co: list[set[int]] = [set() for _ in range(n_items)]
    for s in sequences:
        items = set(int(i) for i in s)
        for i in items:
            co[i] |= items - {i}
    return co


def neighbour_agreement(vectors: np.ndarray, co: list[set[int]], k: int = 10, chunk: int = 1024) -> dict:
    """hit@k and precision@k of each item's k nearest items by cosine (itself left out) against its
    co-interacted items, over the items that have any; items without text (zero rows) count as misses."""
    x = vectors - vectors.mean(0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norms > 0, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    have = np.array([i for i, c in enumerate(co) if c])
    hits, prec = [], []
    for lo in range(0, len(have), chunk):
        rows = have[lo : lo + chunk]
        sim = x[rows] @ x.T
        sim[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        for r, i in enumerate(rows):
            n = sum(int(j) in co[i] for j in top[r]) if norms[i, 0] > 0 else 0
            hits.append(n > 0)
            prec.append(n / k)
    return {"hit@10": round(float(np.mean(hits)), 4), "precision@10": round(float(np.mean(prec)), 4), "items": len(have)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset folder (a run's data/)")
    ap.add_argument("--dataset", default="scientific", help="the dataset's name in the results")
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="fp32", help="fp32 (the text stage's), bf16 or auto")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    from genrec.data.dataset import Dataset
    from genrec.llm.backbone import item_texts
    from genrec.llm.item_encoder import BackboneEncoder

    ds = Dataset.load(args.data)
    co = co_interacted(ds.train_sequences(), ds.n_items)
    t0 = time.perf_counter()
    enc = BackboneEncoder(args.backbone, None, args.max_tokens, batch_size=args.batch, device="cpu", dtype=args.dtype)
    depths = enc.pooled(item_texts(ds.items), every_layer=True)
    seconds = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    rows = [{"layers": d, **neighbour_agreement(depths[d], co)} for d in range(len(depths))]
    rand = neighbour_agreement(rng.standard_normal(depths[0].shape).astype(np.float32), co)
    best = max(rows, key=lambda r: (r["precision@10"], r["hit@10"]))
    result = {
        "dataset": args.dataset, "data": str(args.data), "backbone": args.backbone,
        "max_tokens": args.max_tokens, "dtype": args.dtype, "items": ds.n_items, "encode_seconds": round(seconds, 1),
        "rows": rows, "random": rand, "best_layers": best["layers"], "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_encoder.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Text embeddings against behaviour, by backbone depth",
        "",
        f"`python benchmarks/text_encoder.py --data {args.data} --max-tokens {args.max_tokens} --dtype {args.dtype}` on "
        f"{describe(result['machine'])}: {ds.n_items:,} items encoded in {seconds:.0f} s (every depth from one pass).",
        "",
        "For each item with co-interacted items in the training split, its 10 nearest items by the cosine of the "
        "centred text vectors: the share of items with a co-interacted item among them (hit@10) and the mean share of "
        "the 10 that are co-interacted (precision@10). Depth 0 is the mean input-layer embedding (the text stage's "
        "vectors without `index.text_layers`); depth L is `index.text_layers: L`.",
        "",
        "| depth (layers) | hit@10 | precision@10 |",
        "|---:|---:|---:|",
        *(f"| {r['layers']}{' (best)' if r is best else ''} | {r['hit@10']:.4f} | {r['precision@10']:.4f} |" for r in rows),
        f"| random vectors | {rand['hit@10']:.4f} | {rand['precision@10']:.4f} |",
        "",
    ]
    (args.out / "text_encoder.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
