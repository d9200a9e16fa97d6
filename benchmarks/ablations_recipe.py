"""The reference paper's ablations rerun at the chosen recipe (configs/scientific.yaml as it is: 2 x 256
alignment index, the sequential task alone in the codes prompt, full fine-tuning of SmolLM2-135M with
SASRec-CE distillation, validation selection, masked evaluation), with the backbone cut to its first
12 layers (``train.layers=12``: a third of the cost, within the 30-layer recipe's seed spread; see
recipe.md's x7) so that the set fits a session on this machine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ablations_recipe.py --base runs/recipes/x7 --only wo-LA L3

Each variant is `genrec run configs/scientific.yaml --set train.layers=12 <its overrides>` in its own
folder under runs/ablations-recipe/. The stages a variant does not change are copied from --base (a
finished run of the same recipe at 12 layers: `genrec run configs/scientific.yaml --set
run_dir=runs/recipes/x7 --set train.layers=12`), whose manifests make `genrec run` skip them; the
ones it changes (index, tasks, distillation targets, fine-tuning, evaluation) run again. Then every
finished variant is recorded beside the other recipes with

    .venv/bin/python benchmarks/recipe.py --run ablation-NAME=runs/ablations-recipe/NAME ...

so each row has its test and validation metrics, coverage, tail and wall times from its manifests.
Variants (ours is the base run itself):
- ``wo-LA``: the index without LLM alignment (alignment loss weight 0);
- ``ED``: an RQ-VAE encoder-decoder over the same behaviour embeddings instead of the cascaded codebooks;
- ``L3`` / ``L4``: three / four codebook levels of 256 (the paper's default is 4);
- ``RQ-KMeans`` (a lever, not one of the paper's ablations): residual k-means (``semid``) over the
  same behaviour embeddings, 2 x 256;
- ``NS-1to1``: negative-behaviour samples added (1 per user sequence; the recipe has none, which is
  the paper's "w/o NS").
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ["train.layers=12"]
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "wo-LA": (["index.config.llm_weight=0"], ["data", "cf", "baselines"]),
    "ED": (["index.method=rqvae", "index.config={input: behaviour, levels: 2, codebook_size: 256}"], ["data", "cf", "baselines"]),
    "RQ-KMeans": (["index.method=semid", "index.config={input: behaviour, levels: 2, codebook_size: 256}"],
                  ["data", "cf", "baselines"]),
    "L3": (["index.config.levels=3"], ["data", "cf", "baselines"]),
    "L4": (["index.config.levels=4"], ["data", "cf", "baselines"]),
    "NS-1to1": (["tasks.tasks=[seq, neg]", "tasks.negatives_per_positive=1"], ["data", "cf", "index", "baselines"]),
}
ORDER = ["wo-LA", "L3", "ED", "NS-1to1", "L4", "RQ-KMeans"]
assert sorted(ORDER) == sorted(VARIANTS)


def command(name: str, run: Path, config: str = "configs/scientific.yaml", extra: list[str] | None = None) -> list[str]:
    """``extra``: overrides after the budget's and the variant's (a smoke run's smaller budget)."""
    cmd = [sys.executable, "-m", "genrec", "run", str(config), "--no-progress", "--set", f"run_dir={run}"]
    for o in BUDGET + VARIANTS[name][0] + (extra or []):
        cmd += ["--set", o]
    return cmd


def run_variant(name: str, base: Path, out: Path, config: str = "configs/scientific.yaml", extra: list[str] | None = None) -> int:
    run = out / name
    if (run / "evaluate" / "metrics.json").is_file():
        print(f"{name}: finished before, skipped", flush=True)
        return 0
    run.mkdir(parents=True, exist_ok=True)
    for stage in VARIANTS[name][1]:
        src, dst = base / stage, run / stage
        if not src.is_dir():
            sys.exit(f"{src}: missing; --base must be a finished run of configs/scientific.yaml with {' '.join(BUDGET)}")
        if not dst.exists():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ckpt-*"))
    cmd = command(name, run, config, extra)
    t = time.time()
    with open(run / "run.log", "a") as log:
        log.write("$ " + " ".join(cmd[1:]) + "\n")
        log.flush()
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"{name}: {'done' if code == 0 else f'FAILED (exit {code}, see {run}/run.log)'} in {(time.time() - t) / 60:.1f} min",
          flush=True)
    return code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="a finished run of the recipe at 12 layers")
    ap.add_argument("--only", nargs="*", help=f"these variants, in this order (default: {' '.join(ORDER)})")
    ap.add_argument("--out", type=Path, default=Path("runs") / "ablations-recipe")
    ap.add_argument("--dry-run", action="store_true", help="print each variant's command only")
    ap.add_argument("--config", default="configs/scientific.yaml", help="the recipe's config (--base is a run of it)")
    ap.add_argument("--set", nargs="*", default=[], dest="extra", metavar="KEY=VALUE",
                    help="overrides after the budget's and each variant's (e.g. a smoke run's smaller backbone)")
    args = ap.parse_args()
    names = args.only or ORDER
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {ORDER}")
    for name in names:
        if args.dry_run:
            print(" ".join(command(name, args.out / name, args.config, args.extra)[1:]))
        elif run_variant(name, args.base, args.out, args.config, args.extra):
            sys.exit(1)


if __name__ == "__main__":
    main()
