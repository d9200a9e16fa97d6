"""Item indexings on scientific: collisions, code usage, prefix sharing, category agreement,
build time; the alignment tokenizer at L = 1..5; cold start of new items.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/index.py

Stages (data, DCCF embeddings, each index) are cached under --run-dir, so a rerun only builds
what changed. Writes benchmarks/results/index.{md,json} and cold_start.json.
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
from genrec.config import CFSection, IndexSection  # noqa: E402
from genrec.data.dataset import Dataset  # noqa: E402
from genrec.data.preprocess import PrepareConfig  # noqa: E402
from genrec.index.alignment import AlignmentConfig, AlignmentTokenizer  # noqa: E402
from genrec.index.quality import co_interacted_pairs  # noqa: E402
from genrec.index.stage import load_embeddings  # noqa: E402
from genrec.stages import stage_cf, stage_data, stage_index, stage_text  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"

#: (row label, method, config)
VARIANTS = [
    ("alignment", "alignment", {}),
    ("alignment w/o LA", "alignment", {"llm_weight": 0.0}),
    ("rqvae (ED: behaviour)", "rqvae", {"input": "behaviour"}),
    ("rqvae (LC-Rec/TIGER: text)", "rqvae", {"input": "llm"}),
    ("semid", "semid", {}),
    ("cid", "cid", {}),
    ("rid", "rid", {}),
    ("tid", "tid", {}),
    ("iid", "iid", {}),
]


def row_of(label: str, method: str, config: dict, stats: dict, dataset: str = "scientific") -> dict:
    keep = [
        "collision_rate_before", "collision_rate_after", "perplexity", "prefix_co_interacted", "prefix_random",
        "category_purity", "category_purity_shuffled", "build_seconds", "new_tokens", "appended_level",
    ]
    row = {"dataset": dataset, "method": label, "indexer": method, "config": config}
    row["levels"] = len(stats["perplexity"]) if "perplexity" in stats else None
    row.update({k: stats.get(k) for k in keep})
    return row


def cold_start(data: Path, emb_path: Path, llm: np.ndarray, n_new: int, seed: int, settings: dict | None = None,
               dataset: str = "scientific") -> dict:
    """Build on the catalogue without ``n_new`` items, then assign them from the codebooks
    (``settings``: the alignment tokenizer's, beside the defaults)."""
    ds = Dataset.load(data)
    beh = load_embeddings(emb_path, ds.n_items)
    rng = np.random.default_rng(seed)
    new = np.sort(rng.choice(ds.n_items, n_new, replace=False))
    old = np.setdiff1d(np.arange(ds.n_items), new)
    tok = AlignmentTokenizer(AlignmentConfig(**{"seed": seed, "progress": False, **(settings or {})}))
    t0 = time.time()
    tok.fit(beh[old], llm[old])
    build = time.time() - t0
    pos = {int(i): k for k, i in enumerate(old)}
    # nearest behaviour neighbour (cosine) of each new item among the kept items
    unit = beh / np.linalg.norm(beh, axis=1, keepdims=True).clip(1e-8)
    nearest = old[np.argmax(unit[new] @ unit[old].T, axis=1)]
    neighbour_first = tok.codes[[pos[int(j)] for j in nearest], 0]
    # co-interacted kept items of each new item (consecutive in training sequences)
    pairs = co_interacted_pairs(ds, 10**9, rng)
    co = {int(i): set() for i in new}
    for a, b in pairs:
        if int(a) in co and int(b) in pos:
            co[int(a)].add(pos[int(b)])
        if int(b) in co and int(a) in pos:
            co[int(b)].add(pos[int(a)])
    out = {"dataset": dataset, "n_new": n_new, "catalogue": int(len(old)), "build_seconds": round(build, 2)}
    sources = {
        "behaviour": lambda i: tok.encode(behaviour=beh[[i]], llm=llm[[i]]),
        "neighbours": lambda i: tok.encode(neighbours=[sorted(co[i])], llm=llm[[i]]) if co[i] else None,
        "text": lambda i: tok.encode(llm=llm[[i]]),
    }
    for name, fn in sources.items():
        times, firsts, agree = [], [], []
        for k, i in enumerate(new):
            t = time.perf_counter()
            codes = fn(int(i))
            times.append(time.perf_counter() - t)
            if codes is None:
                continue
            firsts.append(codes[0, 0])
            agree.append(codes[0, 0] == neighbour_first[k])
        out[name] = {
            "items": len(agree),
            "mean_ms_per_item": round(1000 * float(np.mean(times)), 3),
            "first_code_agreement": round(float(np.mean(agree)), 4) if agree else None,
        }
    out["mean_ms_per_item"] = out["behaviour"]["mean_ms_per_item"]
    out["first_code_agreement"] = out["behaviour"]["first_code_agreement"]
    # chance level: how often two random catalogue items share a first code
    c = tok.codes[:, 0]
    out["first_code_agreement_random_pair"] = round(float(np.mean(c[rng.integers(len(c), size=5000)] == c[rng.integers(len(c), size=5000)])), 4)
    return out


def write_md(rows: list[dict], levels: list[dict], cold: dict, out: Path, command: str) -> None:
    def f(v, d=3):
        if v is None:
            return ""
        if isinstance(v, list):
            return "/".join(f"{x:.0f}" for x in v)
        if isinstance(v, float):
            return f"{v:.{d}f}"
        return str(v)

    head = "| method | levels | collisions before | after | code perplexity per level | shared prefix co-interacted | random | first-code category purity | shuffled | build s |"
    lines = [
        "# Item indexings on scientific",
        "",
        "Behaviour embeddings: DCCF, 32-d (`genrec cf train dccf`); LLM embeddings: mean input-layer",
        "embedding of the default backbone (SmolLM2-135M) over title and description. Shared prefix:",
        "mean number of leading codes two items share, for consecutive items of training sequences vs",
        "random pairs. Category purity: share of items whose top category (level 2 of the Amazon path)",
        "is the majority one of their first-level code; 'shuffled' is the same with codes permuted.",
        "",
        f"Machine: {describe(machine())}.",
        "",
        f"Command: `{command}`",
        "",
        head,
        "|---" * 10 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {f(r['levels'])} | {f(r['collision_rate_before'], 4)} | {f(r['collision_rate_after'], 4)} | "
            f"{f(r['perplexity'])} | {f(r['prefix_co_interacted'])} | {f(r['prefix_random'])} | "
            f"{f(r['category_purity'])} | {f(r['category_purity_shuffled'])} | {f(r['build_seconds'], 1)} |"
        )
    lines += ["", "## Alignment tokenizer, L = 1..5 (K = 256)", "", head, "|---" * 10 + "|"]
    for r in levels:
        lines.append(
            f"| L={r['levels_requested']} | {f(r['levels'])} | {f(r['collision_rate_before'], 4)} | {f(r['collision_rate_after'], 4)} | "
            f"{f(r['perplexity'])} | {f(r['prefix_co_interacted'])} | {f(r['prefix_random'])} | "
            f"{f(r['category_purity'])} | {f(r['category_purity_shuffled'])} | {f(r['build_seconds'], 1)} |"
        )
    if cold:
        lines += [
            "",
            f"## Cold start: build without {cold['n_new']} items, then assign them",
            "",
            "First-code agreement: how often a new item's first-level code equals that of its nearest",
            "behaviour neighbour (cosine of DCCF embeddings) among the catalogue items, in the same build.",
            f"Chance level (two random catalogue items): {cold['first_code_agreement_random_pair']}.",
            "",
            "| encoded from | items | mean ms per item | first-code agreement |",
            "|---|---|---|---|",
        ]
        for name in ("behaviour", "neighbours", "text"):
            c = cold[name]
            lines.append(f"| {name} | {c['items']} | {c['mean_ms_per_item']} | {c['first_code_agreement']} |")
    (out / "index.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="row labels to build (default: all)")
    ap.add_argument("--source", type=Path, default=SHARED / "scientific",
                    help="the raw dataset (default ../shared/data/scientific, LC-Rec format; another folder in any "
                         "format genrec reads, e.g. a synthetic shop)")
    ap.add_argument("--set", nargs="*", default=[], dest="settings", metavar="KEY=VALUE",
                    help="an index setting for every indexer that has it (e.g. a smoke run's codebook_size=8 epochs=2)")
    ap.add_argument("--cf-epochs", type=int, default=None, help="DCCF's training epochs (default: its own)")
    ap.add_argument("--new-items", type=int, default=100, help="items left out of the cold-start build")
    ap.add_argument("--backbone", default="default", help="the LLM whose input embeddings give the items' text embeddings")
    args = ap.parse_args()
    command = "python benchmarks/index.py " + " ".join(sys.argv[1:])
    src = args.source
    if not src.is_dir():
        sys.exit(f"{src} is absent")
    import yaml

    from genrec.index.configs import CONFIGS

    settings = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in args.settings)}

    def own(method: str, config: dict) -> dict:  # the --set settings this indexer has, under the variant's own
        return {**{k: v for k, v in settings.items() if k in CONFIGS[method].model_fields}, **config}

    name = src.name
    run = args.run_dir / name
    data = stage_data(src, run / "data", PrepareConfig(), format="lcrec" if src == SHARED / "scientific" else None).path
    cf = CFSection(model="dccf", dim=32, train={} if args.cf_epochs is None else {"epochs": args.cf_epochs})
    emb = stage_cf(data, run / "cf-dccf", cf, seed=args.seed).path
    text = stage_text(data, run / "text", args.backbone).path
    rows = []
    for label, method, config in VARIANTS:
        if args.only and label not in args.only:
            continue
        config = own(method, config)
        needs_emb = method in ("alignment", "rqvae")
        slug = "".join(ch if ch.isalnum() else "-" for ch in label).strip("-")
        res = stage_index(data, run / "index" / slug, IndexSection(method=method, config=config),
                          embeddings=emb if needs_emb else None, text=text, seed=args.seed)
        rows.append(row_of(label, method, config, res.manifest["metrics"], name))
        print(f"{label:<28} collisions {rows[-1]['collision_rate_before']} -> {rows[-1]['collision_rate_after']} "
              f"({res.manifest['wall_seconds']:.0f}s{' cached' if res.skipped else ''})", flush=True)
    levels = []
    for L in range(1, 6):
        config = own("alignment", {"levels": L})
        res = stage_index(data, run / "index" / f"alignment-L{L}", IndexSection(method="alignment", config=config),
                          embeddings=emb, text=text, seed=args.seed)
        r = row_of(f"alignment L={L}", "alignment", config, res.manifest["metrics"], name)
        r["levels_requested"] = L
        levels.append(r)
        print(f"alignment L={L}: collisions {r['collision_rate_before']}", flush=True)
    llm = load_embeddings(text, Dataset.load(data).n_items)
    cold = cold_start(data, emb, llm, args.new_items, args.seed, own("alignment", {}), name)
    print(json.dumps(cold), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(rows + levels, indent=2, default=float) + "\n")
    (args.out / "cold_start.json").write_text(json.dumps(cold, indent=2, default=float) + "\n")
    write_md(rows, levels, cold, args.out, command)


if __name__ == "__main__":
    main()
