"""Report of a fine-tuning run: loss curve (SVG), time per step and epoch, throughput, memory.

    .venv/bin/python benchmarks/finetune_report.py [--run runs/scientific] [--name finetune-scientific]

Reads the finished model's log (``RUN/model/log.jsonl`` and its manifest) or, for a run still in
progress, its latest checkpoint (``RUN/.ckpt-model-*/log.jsonl``). Writes
benchmarks/results/NAME.{md,json,svg}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402
from genrec.llm.train import sessions  # noqa: E402


def svg_curve(series: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 320) -> str:
    """A plain SVG line chart (no plotting dependency): x = step, y = loss."""
    pts = [p for s in series.values() for p in s]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    m = 48

    def xy(p):
        return (m + (p[0] - x0) / (x1 - x0) * (width - 2 * m), height - m - (p[1] - y0) / (y1 - y0) * (height - 2 * m))

    colours = ["#1f77b4", "#d62728", "#2ca02c"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{m}" y1="{height - m}" x2="{width - m}" y2="{height - m}" stroke="black"/>',
           f'<line x1="{m}" y1="{m}" x2="{m}" y2="{height - m}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">optimizer step ({x0:g} to {x1:g})</text>',
           f'<text x="{m - 4}" y="{height - m}" text-anchor="end">{y0:.2f}</text>',
           f'<text x="{m - 4}" y="{m + 4}" text-anchor="end">{y1:.2f}</text>']
    for n, (name, s) in enumerate(series.items()):
        c = colours[n % len(colours)]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in map(xy, s))
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{path}"/>')
        if len(s) == 1:
            a, b = xy(s[0])
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"/>')
        out.append(f'<text x="{width - m}" y="{m + 16 * n}" text-anchor="end" fill="{c}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def train_settings(folder: Path, config: Path | None):
    """The training settings: the config's train section if given, else those the model (or
    checkpoint) folder was trained with (its train_config.json), else configs/scientific.yaml's."""
    from genrec.config import load_config
    from genrec.llm.config import LLMTrainConfig

    if config is None and (folder / "train_config.json").is_file():
        raw = json.loads((folder / "train_config.json").read_text())
        for key in ("backbone", "new_tokens", "layout", "prompt"):  # recorded beside the settings, not settings
            raw.pop(key, None)
        return LLMTrainConfig.model_validate(raw)
    return load_config(config or ROOT / "configs" / "scientific.yaml").train


def exact_steps_per_epoch(run: Path, cfg) -> int:
    """Optimizer steps per epoch of the run's corpus under the settings' batching (single process)."""
    from genrec.llm.corpus import load_corpus
    from genrec.llm.train import Units, make_batches

    corpus, _, _ = load_corpus(run / "tasks")
    units = Units(corpus, cfg.share_prefixes, cfg.batch_tokens)
    return len(make_batches(units.lengths, cfg, 0)) // cfg.grad_accum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific")
    ap.add_argument("--name", default="finetune-scientific")
    ap.add_argument("--config", type=Path, default=None,
                    help="the run's config (default: the settings its model folder records)")
    ap.add_argument("--note", default="", help="a line for the report (budget, how the machine was shared)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    model = args.run / "model"
    manifest = None
    if (model / "log.jsonl").is_file():
        log_file, state = model / "log.jsonl", "finished"
        manifest = json.loads((model / "manifest.json").read_text())
    else:
        ckpts = sorted(args.run.glob(".ckpt-model-*/log.jsonl"), key=lambda p: p.stat().st_mtime)
        if not ckpts:
            sys.exit(f"no finished model or checkpoint under {args.run}")
        log_file, state = ckpts[-1], "in progress (latest checkpoint)"
    log = [json.loads(x) for x in log_file.read_text().splitlines() if x.strip()]
    train = [x for x in log if "loss" in x]
    val = [x for x in log if "val_loss" in x]
    cfg = json.loads((args.run / "tasks" / "manifest.json").read_text())
    corpus = cfg["metrics"]["train"]
    parts = [{**p, "seconds_per_step": round(p["seconds"] / (p["last_step"] - p["first_step"] + 1), 2)} for p in sessions(train)]
    train_seconds, n_sessions = sum(p["seconds"] for p in parts), len(parts)
    steps_done = train[-1]["step"] if train else 0
    epoch_done = train[-1]["epoch"] if train else 0.0
    mean_step = train_seconds / len(train) if train else None
    # the projection uses the latest session: earlier ones ran with more jobs on the cores (one was paused for most of its wall time)
    last_step = parts[-1]["seconds_per_step"] if parts else None
    steps_per_epoch = exact_steps_per_epoch(args.run, train_settings(log_file.parent, args.config))
    rates = [x["tokens_per_s"] for x in train if "tokens_per_s" in x]
    result = {
        "state": state, "steps": steps_done, "epochs": epoch_done, "steps_per_epoch": steps_per_epoch,
        "sessions": n_sessions, "per_session": parts, "train_seconds": round(train_seconds, 1), "seconds_per_step": last_step,
        "seconds_per_step_mean": round(mean_step, 2) if mean_step else None,
        "seconds_per_epoch": round(last_step * steps_per_epoch, 0) if last_step and steps_per_epoch else None,
        "tokens_per_s": rates[-1] if rates else None,
        "first_loss": train[0]["loss"] if train else None, "last_loss": train[-1]["loss"] if train else None,
        "val": [{k: x[k] for k in ("step", "val_loss", "val_acc")} for x in val],
        "peak_mem_mb": manifest["metrics"]["peak_mem_mb"] if manifest else max((x.get("peak_mem_mb", 0) for x in train), default=None) or None,
        "corpus": {k: corpus[k] for k in ("samples", "tokens", "target_tokens", "tasks")},
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    series = {"train loss (per step)": [(x["step"], x["loss"]) for x in train]}
    if val:
        series["validation loss"] = [(x["step"], x["val_loss"]) for x in val]
    (args.out / f"{args.name}.svg").write_text(svg_curve(series))
    cmd = " ".join(["python benchmarks/finetune_report.py", *sys.argv[1:]])
    lines = [f"# Fine-tuning: {args.run.name}", "", f"Machine: {describe(result['machine'])}.", "", f"Command: `{cmd}`", "",
             f"State: {state}; {steps_done} of {steps_per_epoch} steps per epoch ({epoch_done:.3f} epochs) in {n_sessions} session(s).",
             "", f"![loss curve]({args.name}.svg)", "",
             f"- corpus: {corpus['samples']:,} samples, {corpus['tokens']:,} tokens ({corpus['target_tokens']:,} targets): "
             + ", ".join(f"{k} {v:,}" for k, v in corpus["tasks"].items()),
             f"- train loss: {result['first_loss']} at step 1 -> {result['last_loss']} at step {steps_done}",
             f"- time: {result['seconds_per_step']} s per optimizer step in the latest session, so about {result['seconds_per_epoch']:,.0f} s "
             f"({(result['seconds_per_epoch'] or 0) / 3600:.1f} h) per epoch on this machine at that rate; {result['tokens_per_s']} tokens/s; "
             f"{result['seconds_per_step_mean']} s per step over every session ({train_seconds / 3600:.1f} h of training wall time "
             f"{'in all' if state == 'finished' else 'so far'})",
             "- time per step, session by session (how many other jobs shared the cores changed between them): "
             + ", ".join(f"steps {p['first_step']}-{p['last_step']}: {p['seconds_per_step']} s" for p in parts),
             f"- peak memory: {result['peak_mem_mb']} MB" if result["peak_mem_mb"] else
             "- peak memory: see the run's manifest when finished (the process's maximum resident set size)"]
    if val:
        lines.append("- validation loss (training history -> validation item, 1,000 users): "
                     + ", ".join(f"step {x['step']}: {x['val_loss']} (next-token accuracy {x['val_acc']})" for x in val))
    if args.note:
        lines += ["", args.note]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
