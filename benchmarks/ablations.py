"""The reference paper's ablations on scientific, every variant on one shared reduced budget, around
the previous default recipe (``PREVIOUS``: a 4 x 256 alignment index, every task with 1:3
negatives in the chat form, unmasked evaluation), which this set was measured with; the current
configs/scientific.yaml is another recipe (benchmarks/results/recipe.md), so every variant pins
the previous one's settings and its shared stages come from runs/scientific-v1, a run of them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ablations.py --workers 2

Each variant is a `genrec run configs/scientific.yaml` with a few `--set` overrides into its own
run folder under runs/ablations/ (so `genrec report` reads it like any run). Every variant gets
the same fine-tuning budget (`BUDGET`: the same small Llama trained from scratch with the real
tokenizer, the same number of optimizer steps of the same token budget, the same learning-rate
schedule) and the same evaluation (every test user, beam 20, the shared evaluator), so their
differences come from the index and the tasks alone. The stages that do not change (the prepared
data, the DCCF embeddings, and the default index and corpus where a variant keeps them) are
copied from runs/scientific, whose manifests make `genrec run` skip them.

Then `genrec report` over every variant, with the classic baselines of baselines.json, writes
benchmarks/results/report-scientific/. Each finished variant leaves a light copy of its run
folder there (runs/NAME: the manifests, the loss log, the metrics; no weights), which the report
reads and which marks it done. A killed run resumes: finished variants are skipped, an
unfinished fine-tune restarts from its last checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "runs" / "scientific-v1"
# configs/scientific.yaml as it was when this set was measured (the settings the current one changed)
PREVIOUS = [
    "index.config={levels: 4, codebook_size: 256}", "tasks.tasks=[seq, neg, title2item, item2title, query]",
    "tasks.negatives_per_positive=3", "tasks.prompt=chat", "tasks.long_histories=last", "tasks.negative_prompts=independent",
    "train.share_prefixes=false", "train.train_text_rows=true", "train.code_init=random", "train.untie_codes=false",
    "train.code_lr=null", "train.select_users=0", "train.patience=null", "train.dtype=fp32", "decode.pop_alpha=[0.0]",
    "evaluate.mask_history=false",
]

# the shared reduced budget: a 2-layer Llama of width 64 trained from scratch (the real tokenizer,
# code-only softmax), 3 epochs of the variant's own corpus, cosine schedule; every test user
BUDGET = [
    "train.backbone=random:64x2", "train.mode=full", "train.softmax=codes", "train.lr=3e-3", "train.epochs=3",
    "train.batch_tokens=4096", "train.batch_size=32", "train.save_every=200", "train.eval_every=500",
    "decode.beams=20", "decode.batch_users=32",
]
ALIGN = "index.config"

# name -> (overrides, stages copied from runs/scientific)
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "ours": ([], ["data", "cf", "text", "index"]),
    "ED": (["index.method=rqvae", "index.config={input: behaviour, levels: 4, codebook_size: 256}"], ["data", "cf", "text"]),
    "wo-LA": ([f"{ALIGN}.llm_weight=0"], ["data", "cf", "text"]),
    "neg-1to0": (["tasks.negatives_per_positive=0"], ["data", "cf", "text", "index"]),
    "neg-1to1": (["tasks.negatives_per_positive=1"], ["data", "cf", "text", "index"]),
    "neg-1to2": (["tasks.negatives_per_positive=2"], ["data", "cf", "text", "index"]),
    "neg-1to4": (["tasks.negatives_per_positive=4"], ["data", "cf", "text", "index"]),
    "neg-1to5": (["tasks.negatives_per_positive=5"], ["data", "cf", "text", "index"]),
    "L1": ([f"{ALIGN}.levels=1"], ["data", "cf", "text"]),
    "L2": ([f"{ALIGN}.levels=2"], ["data", "cf", "text"]),
    "L3": ([f"{ALIGN}.levels=3"], ["data", "cf", "text"]),
    "L5": ([f"{ALIGN}.levels=5"], ["data", "cf", "text"]),
    # ours again with another training seed (initial weights, batch order): the run-to-run spread
    # the other differences are to be read against
    "ours-seed1": (["train.seed=1"], ["data", "cf", "text", "index"]),
    # LC-Rec: RQ-VAE over the LLM text embedding, its tasks (sequential per prefix, item <-> text,
    # queries), no negative sampling
    "LC-Rec-style": (["index.method=rqvae", "index.config={input: llm, levels: 4, codebook_size: 256}",
                      "tasks.negatives_per_positive=0", "tasks.layout=per_prefix"], ["data", "cf", "text"]),
    # TIGER: an encoder-decoder from scratch on the same codes as ours (runs/scientific/index), trained
    # as a baseline (early stopping on validation NDCG@10, at most 12 epochs)
    "TIGER-style": (["index=null", "baselines=[tiger]",
                     "baseline_params={tiger: {config: {index: runs/scientific/index}, train: {epochs: 12, eval_every: 2, "
                     "patience: 3}}}"], ["data"]),
}


#: the order they run in: the most telling first
ORDER = ["ours", "wo-LA", "ED", "neg-1to0", "L3", "L2", "neg-1to1", "neg-1to5", "LC-Rec-style", "TIGER-style", "L1", "L5",
         "neg-1to2", "neg-1to4", "ours-seed1"]
assert sorted(ORDER) == sorted(VARIANTS)
FULL = "ours-135M-full-budget"  # the light copy of runs/scientific once it is evaluated
FULL_BUDGET = "configs/scientific.yaml as it is: SmolLM2-135M, LoRA r=8 + code-token rows, lr 1e-3, 1 epoch (1,491 steps)"


def shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it (the form the commands are written in)."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def seed(run: Path, stages: list[str], base: Path = BASE) -> None:
    for s in stages:
        src, dst = base / s, run / s
        if not dst.exists():
            if not (src / "manifest.json").is_file() and not list(src.glob("*/manifest.json")):
                sys.exit(f"{src}: missing; run `genrec train --config configs/scientific.yaml --set run_dir={shown(base)} "
                         + " ".join(f"--set '{o}'" for o in PREVIOUS) + " --stop-after 1` first")
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ckpt-*"))


#: what a finished variant keeps in git (benchmarks/results/report-scientific/runs/NAME): every file
#: `genrec report` reads, none of the weights
LIGHT = ["*/manifest.json", "*/*/manifest.json", "model/log.jsonl", "evaluate/metrics.json", "baselines/*/metrics.json"]


def keep_light(run: Path, dest: Path, max_points: int = 300) -> None:
    for pattern in LIGHT:
        for f in run.glob(pattern):
            target = dest / f.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.name == "log.jsonl":  # the loss curve thinned to ~max_points training points, every validation point
                lines = f.read_text().splitlines()
                every = max(1, sum('"val_loss"' not in x for x in lines) // max_points)
                kept, n = [], 0
                for x in lines:
                    if '"val_loss"' in x or n % every == 0:
                        kept.append(x)
                    n += '"val_loss"' not in x
                target.write_text("\n".join(kept) + "\n")
            else:
                shutil.copy2(f, target)


def finished(run: Path) -> bool:
    return (run / "evaluate" / "metrics.json").is_file() or bool(list((run / "baselines").glob("*/metrics.json")))


def run_variant(name: str, out: Path, keep: Path, base: Path = BASE, config: str = "configs/scientific.yaml",
                extra: list[str] | None = None) -> tuple[str, int, float]:
    """``extra``: overrides after the previous recipe's, the budget's and the variant's (a smoke run's smaller shop)."""
    if finished(keep / name):
        return name, 0, 0.0
    overrides, stages = VARIANTS[name]
    run = out / name
    run.mkdir(parents=True, exist_ok=True)
    seed(run, stages, base)
    cmd = [sys.executable, "-m", "genrec", "run", str(config), "--no-progress",
           "--set", f"run_dir={shown(run)}", "--set", "baselines=[]"]
    for o in PREVIOUS + BUDGET + overrides + (extra or []):
        cmd += ["--set", o]
    t = time.time()
    with open(run / "run.log", "a") as log:
        log.write("$ " + " ".join(cmd[1:]) + "\n")
        log.flush()
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code == 0 and finished(run):
        keep_light(run, keep / name)
    return name, code, time.time() - t


def write_json(runs: list[str], path: Path) -> None:
    """Every finished variant's test metrics (its evaluate stage, or its baseline for TIGER-style),
    with the budget, in the same row form as baselines.json."""
    import json

    from genrec.report import COLS, read_run

    rows = []
    for folder in runs:
        run = read_run(folder)
        metrics = run.ours if run.ours is not None else next(iter(run.baselines.values()))
        budget = ("TIGER-style: early stopping, at most 12 epochs" if run.ours is None
                  else FULL_BUDGET if Path(folder).name == FULL else " ".join(BUDGET))
        rows.append({"dataset": "scientific", "method": run.name, **{c: round(metrics[c], 4) for c in COLS},
                     "budget": budget})
    path.write_text(json.dumps(rows, indent=2) + "\n")


def pipeline_walls(base: Path = BASE) -> list[str]:
    """The scientific pipeline's wall time stage by stage, from runs/scientific's manifests and the
    fine-tune report (the full-budget run: SmolLM2-135M, LoRA, all tasks)."""
    import json

    def hours(wall: float) -> str:
        return f"{wall:,.0f} s{f' ({wall / 3600:.1f} h)' if wall >= 3600 else ''}"

    rows, total = ["| stage | wall time | source |", "|---|---|---|"], 0.0
    ft = ROOT / "benchmarks" / "results" / "finetune-scientific.json"  # per-session step times: finetune_report.py
    for stage in ("data", "cf/dccf", "text", "index", "tasks", "model", "evaluate"):
        m = base / stage / "manifest.json"
        if m.is_file():
            m = json.loads(m.read_text())
            fit, label, source = m.get("metrics", {}), stage, f"{shown(base)}/{stage}/manifest.json"
            if stage == "model":
                label = f"train (SmolLM2-135M LoRA, {fit.get('epochs', '?')} epoch(s), {fit.get('sessions', 1)} process(es))"
                if ft.is_file():
                    f = json.loads(ft.read_text())
                    label += (f"; {f['seconds_per_step']:.1f} s/step in its last session, {f['seconds_per_epoch'] / 3600:.1f} h "
                              "per epoch at that rate")
                    source += ", [finetune-scientific.md](../finetune-scientific.md)"
            elif stage == "evaluate":
                label = f"evaluate (beam search, {fit['test']['n_users']:,} test users)"
            total += m["wall_seconds"]
            rows.append(f"| {label} | {hours(m['wall_seconds'])} | {source} |")
    if (base / "evaluate" / "manifest.json").is_file():
        rows.append(f"| the whole pipeline (sum of the stages) | {hours(total)} | the rows above |")
    if ft.is_file() and not (base / "model" / "manifest.json").is_file():
        f = json.loads(ft.read_text())
        rows.append(f"| train (SmolLM2-135M LoRA, 1 epoch = {f['steps_per_epoch']:,} steps) | {f['seconds_per_step']:.0f} s/step "
                    f"in its latest session: {f['seconds_per_epoch'] / 3600:.1f} h per epoch at that rate; "
                    f"{f['steps']} steps done | [finetune-scientific.md](../finetune-scientific.md) |")
    return rows


NOTES = """Every number below is on the leave-one-out test split, full ranking over all 4,344 items, all
8,317 test users, through the same evaluator; the classic baselines are the rows of
[../baselines.md](../baselines.md) (same split, same evaluator).

**Budget of the ablation set (the same for every variant):** the fine-tuned model is a 2-layer
Llama of width 64 trained from scratch (`train.backbone=random:64x2`, 3.3M parameters, the
SmolLM2 tokenizer, code-only softmax), 3 epochs over the variant's own corpus, lr 3e-3 with
warm-up and cosine decay, batches of at most 32 samples / 4,096 tokens; decoding with 20 beams.
The default backbone (SmolLM2-135M) needs many hours per epoch on this machine (table below), so the
ablations use this reduced budget; ours also has the full budget (`ours-135M-full-budget`, below).
What changes between variants: the index (ours: behaviour-aligned cascaded codebooks over DCCF
embeddings with LLM alignment, L=4 x 256; `ED`: an RQ-VAE encoder-decoder over the same
behaviour embeddings; `wo-LA`: LLM alignment weight 0; `L1`..`L5`: codebook levels), the
negative-sampling ratio (`neg-1toN`: N negative-behaviour samples per user sequence; ours is
1:3; 1:0 is "w/o NS"), and the LC-Rec-style run (RQ-VAE over the LLM text embedding, per-prefix
sequential samples, no negatives). TIGER-style: an encoder-decoder from scratch on ours' codes,
trained like the classic baselines (early stopping on validation NDCG@10, at most 12 epochs).
`ours-seed1` is ours with another training seed (initial weights and batch order; the same
corpus): the gap between the two is the run-to-run spread the other differences compare with
(the sweeps plot the mean of the two at L=4 and 1:3). `ours-135M-full-budget` is runs/scientific:
configs/scientific.yaml as it is, the default backbone (SmolLM2-135M) with LoRA (r=8 on every
projection + trainable code-token rows, lr 1e-3) for one epoch (1,491 steps) of ours' corpus, the
same index and corpus as `ours`; its training curve is in [../finetune-scientific.md](../finetune-scientific.md).
Note that with a backbone trained from scratch, LLM alignment of the index cannot help the
backbone read the codes (its purpose in the paper); here it only shapes which items share codes.

The prepared data and the DCCF embeddings (and the default index, for the variants that keep it)
were built once in runs/scientific and copied into each variant's run folder, so the wall
times at the bottom repeat them. The runs' light copies (manifests, loss logs thinned to ~300
points, metrics, logs; no weights) are in [runs/](runs/).

Commands: `OMP_NUM_THREADS=1 python benchmarks/ablations.py --workers 2` (runs every variant
with `genrec run configs/scientific.yaml --set ...`, the exact overrides are in each variant's
`runs/ablations/NAME/run.log` and in benchmarks/ablations.py, then writes this report with
`genrec report runs/ablations/* --baselines benchmarks/results/baselines.json --dataset scientific`).

Wall time of the scientific pipeline on this machine (2 cores, no GPU), stage by stage:

"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=1, help="variants run at once (one thread each)")
    ap.add_argument("--only", nargs="*", help="these variants (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablations")
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "report-scientific")
    ap.add_argument("--report-only", action="store_true", help="write the report from the finished variants")
    ap.add_argument("--base", type=Path, default=BASE, help="the run of the previous recipe whose stages the variants copy")
    ap.add_argument("--config", default="configs/scientific.yaml", help="the config every variant overrides")
    ap.add_argument("--set", nargs="*", default=[], dest="extra", metavar="KEY=VALUE",
                    help="overrides after every other (e.g. a smoke run's smaller codebooks)")
    args = ap.parse_args()
    names = args.only or ORDER
    keep = args.report / "runs"
    for n in ORDER:  # variants finished before their light copy existed
        if finished(args.out / n) and not finished(keep / n):
            keep_light(args.out / n, keep / n)
    if not args.report_only:
        with ThreadPoolExecutor(args.workers) as pool:
            for name, code, secs in pool.map(lambda n: run_variant(n, args.out, keep, args.base, args.config, args.extra), names):
                print(f"{name}: {'done' if code == 0 else f'FAILED (exit {code}, see its run.log)'} in {secs / 60:.1f} min",
                      flush=True)
    # ours with the full budget: the default backbone's run, once its own evaluation (not only its Pop row) exists
    if (args.base / "evaluate" / "metrics.json").is_file() and not finished(keep / FULL):
        keep_light(args.base, keep / FULL)
    runs = [str(keep / n) for n in [*ORDER, FULL] if finished(keep / n)]
    missing = [n for n in ORDER if not finished(keep / n)]
    args.report.mkdir(parents=True, exist_ok=True)
    notes = NOTES + "\n".join(pipeline_walls(args.base)) + "\n"
    if missing:
        notes += f"\nNot finished yet (the runner resumes them): {', '.join(missing)}.\n"
    (args.report / "notes.md").write_text(notes)
    write_json(runs, args.report / "ablations.json")
    subprocess.run([sys.executable, "-m", "genrec", "report", *runs, "--out", str(args.report),
                    "--title", "Scientific: ours, the ablations and the baselines",
                    "--notes", str(args.report / "notes.md"),
                    "--baselines", str(ROOT / "benchmarks" / "results" / "baselines.json"), "--dataset", "scientific"],
                   cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
