"""``genrec report RUN...``: one Markdown report over run folders, with PNG plots.

- the reference paper's Table 1 layout: every method (each run's baselines, and each run's
  fine-tuned model) x HR@1/5/10 and NDCG@5/10, and the improvement of the best of ours over the
  best baseline;
- fine-tuning loss curves (train and validation) of every run;
- test metrics against the number of codebooks and against the negative-sampling ratio, when the
  runs differ in them;
- each run's settings and stage wall times, read from the stage manifests;
- popularity bias and fairness (:mod:`genrec.evaluate.fairness`) of every model whose test ranked
  lists the run keeps (``baselines/*/test_users.parquet``, ``evaluate/test_users.parquet``).

Every number comes from the runs' own artifacts (``baselines/*/metrics.json``,
``evaluate/metrics.json``, ``model/log.jsonl``, ``*/manifest.json``, the per-user rows and the
training split for the fairness section); no model is run again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from genrec.artifacts import read_manifest
from genrec.data.dataset import Dataset
from genrec.errors import DataError
from genrec.evaluate.fairness import fairness, fairness_markdown, read_rows

COLS = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]
BASELINE_NAMES = {"pop": "Pop", "sasrec": "SASRec (BCE)", "sasrec-ce": "SASRec (CE)", "bert4rec": "BERT4Rec",
                  "gru4rec": "GRU4Rec", "fmlp": "FMLP-Rec", "lightgcn": "LightGCN", "dccf": "DCCF",
                  "tiger": "TIGER-style encoder-decoder (on an index's codes)", "sasrec-llm": "SASRec + LLM item embeddings"}


@dataclass
class Run:
    path: Path
    name: str
    baselines: dict[str, dict] = field(default_factory=dict)
    ours: dict | None = None
    users_sampled: int | None = None
    index: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    walls: dict[str, float] = field(default_factory=dict)

    @property
    def levels(self) -> int | None:
        return (self.index.get("config") or {}).get("levels")

    @property
    def negatives(self) -> int | None:
        tasks = self.tasks.get("tasks") or {}
        return tasks.get("negatives_per_positive", 3) if self.tasks else None

    def settings_but(self, key: str) -> str:
        """The index, task and training settings except ``key`` (levels or negatives) and the
        training seed: runs that agree on them form one sweep over ``key`` (runs that differ only
        in the seed are repeats of one point)."""
        index_cfg, tasks_cfg = dict(self.index.get("config") or {}), dict(self.tasks.get("tasks") or {})
        if key == "levels":
            index_cfg.pop("levels", None)
        else:
            tasks_cfg.pop("negatives_per_positive", None)
        train = {k: v for k, v in self.train_config.items() if k != "seed"}
        return json.dumps([{**self.index, "config": index_cfg}, {**self.tasks, "tasks": tasks_cfg}, train], sort_keys=True)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, None, f"expected a JSON file written by genrec ({e})") from None


def read_run(path: str | Path) -> Run:
    path = Path(path)
    if read_manifest(path / "data") is None:
        raise DataError(path, None, "expected a run folder (a data/ stage with manifest.json), e.g. runs/demo")
    run = Run(path, path.name)
    for f in sorted((path / "baselines").glob("*/metrics.json")):
        run.baselines[f.parent.name] = _json(f)["test"]["metrics"]
    if (path / "evaluate" / "metrics.json").is_file():
        ev = _json(path / "evaluate" / "metrics.json")
        run.ours, run.users_sampled = ev["test"]["metrics"], ev.get("users_sampled")
    index, tasks, model = (read_manifest(path / s) for s in ("index", "tasks", "model"))
    run.index = index["config"] if index else {}  # method, config (levels, ...)
    run.tasks = tasks["config"] if tasks else {}  # tasks (negatives_per_positive, ...)
    run.train = model.get("metrics", {}) if model else {}  # steps, losses
    run.train_config = (model.get("config") or {}).get("train", {}) if model else {}
    if (path / "model" / "log.jsonl").is_file():
        run.log = [json.loads(x) for x in (path / "model" / "log.jsonl").read_text().splitlines() if x.strip()]
    for m_path in sorted(path.glob("*/manifest.json")) + sorted(path.glob("*/*/manifest.json")):
        m = json.loads(m_path.read_text())
        label = str(m_path.parent.relative_to(path))
        fit = m.get("metrics", {})
        # a model manifest written before wall_seconds included training holds it in its metrics only
        old_model = label == "model" and "train_seconds" not in fit
        run.walls[label] = fit.get("seconds_this_session") if old_model else m.get("wall_seconds")
    return run


def read_baselines(path: str | Path, dataset: str) -> dict[str, dict]:
    """{method: metrics} of ``dataset`` from a baselines JSON list (``benchmarks/baselines.py`` output:
    rows with ``dataset``, ``method`` and the metric columns)."""
    path = Path(path)
    rows = _json(path)
    if not isinstance(rows, list):
        raise DataError(path, None, "expected a JSON list of rows with dataset, method and metrics")
    out = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"dataset", "method", *COLS} <= set(r):
            raise DataError(path, f"row {i}", f"expected dataset, method and {', '.join(COLS)}")
        if r["dataset"] == dataset:
            out[r["method"]] = {c: float(r[c]) for c in COLS}
    if not out:
        raise DataError(path, None, f"no rows of dataset {dataset!r}")
    return out


def table1(runs: list[Run], baselines: dict[str, dict] | None = None) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(baseline rows, our rows), each (label, metrics); baselines from ``baselines`` first, then
    from the first run that has each."""
    base: dict[str, dict] = dict(baselines or {})
    for r in runs:
        for name, m in r.baselines.items():
            base.setdefault(name, m)
    ours = [(f"genrec: {r.name}", r.ours) for r in runs if r.ours is not None]
    return [(BASELINE_NAMES.get(n, n), m) for n, m in base.items()], ours


def improvement(base: list[tuple[str, dict]], ours: list[tuple[str, dict]]) -> dict[str, float]:
    """Best of ours over the best baseline, per column, in percent."""
    out = {}
    for c in COLS:
        b = max((m[c] for _, m in base), default=0.0)
        o = max((m[c] for _, m in ours), default=0.0)
        out[c] = (o / b - 1) * 100 if b > 0 else float("nan")
    return out


def _plot_losses(runs: list[Run], out: Path) -> str | None:
    """Every run's training loss (a thin line) and validation loss (dots on a line, the same colour),
    one legend entry per run outside the axes, so a dozen runs stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if r.log]
    if not runs:
        return None
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(runs):
        colour = colours(i % colours.N)
        tr = [(x["step"], x["loss"]) for x in r.log if "loss" in x]
        va = [(x["step"], x["val_loss"]) for x in r.log if "val_loss" in x]
        if tr:
            ax.plot(*zip(*tr, strict=True), color=colour, lw=0.7, alpha=0.45, label=None if va else r.name)
        if va:
            ax.plot(*zip(*va, strict=True), "o-", color=colour, ms=3, lw=1.2, label=r.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="thin: train; dots: validation",
              title_fontsize=7, ncol=1 if len(runs) <= 18 else 2)
    fig.savefig(out / "loss.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return "loss.png"


def _plot_against(runs: list[Run], key: str, xlabel: str, fname: str, out: Path) -> tuple[str, list[str]] | None:
    """The plot (and its table) of the largest sweep over ``key``: runs that differ only in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep, pts = sweep_points(runs, key)
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for c in ("HR@10", "NDCG@10"):
        line = ax.plot([x for x, _, _ in pts], [m[c] for _, m, _ in pts], "o-", label=c)[0]
        repeats = [(x, r.ours[c]) for x, _, group in pts if len(group) > 1 for r in group]
        if repeats:  # every run of a repeated point, around the mean the line goes through
            ax.plot([x for x, _ in repeats], [y for _, y in repeats], "x", color=line.get_color(), alpha=0.6)
    ax.set_xticks([x for x, _, _ in pts])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test metric")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / fname, dpi=120)
    plt.close(fig)
    rows = [f"| {xlabel} | run | HR@10 | NDCG@10 |", "|---|---|---|---|"]
    for x, mean, group in pts:
        rows += [f"| {x} | {r.name} | {r.ours['HR@10']:.4f} | {r.ours['NDCG@10']:.4f} |" for r in group]
        if len(group) > 1:
            rows.append(f"| {x} | mean of the {len(group)} runs above (the plotted point) | {mean['HR@10']:.4f} | "
                        f"{mean['NDCG@10']:.4f} |")
    return fname, rows


def sweep_points(runs: list[Run], key: str) -> tuple[list[Run], list[tuple[object, dict, list[Run]]]]:
    """(runs, points) of the largest sweep over ``key``: runs that differ only in it (and in the
    training seed). A point is (value, mean HR@10 / NDCG@10 over its runs, its runs), by value."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if r.ours is not None and getattr(r, key) is not None:
            groups.setdefault(r.settings_but(key), []).append(r)
    sweep = max(groups.values(), key=lambda g: len({getattr(r, key) for r in g}), default=[])
    by_x: dict[object, list[Run]] = {}
    for r in sweep:
        by_x.setdefault(getattr(r, key), []).append(r)
    pts = [(x, {c: sum(r.ours[c] for r in g) / len(g) for c in ("HR@10", "NDCG@10")}, g) for x, g in sorted(by_x.items())]
    return sweep, pts


def fairness_of_run(run: Run, stage: str = "test") -> dict[str, dict]:
    """{method label: :func:`~genrec.evaluate.fairness.fairness` at K = 10, 20} of every model of ``run``
    whose per-user rows of ``stage`` are kept (empty when none is)."""
    files = [(BASELINE_NAMES.get(f.parent.name, f.parent.name), f) for f in sorted((run.path / "baselines").glob(f"*/{stage}_users.parquet"))]
    if (run.path / "evaluate" / f"{stage}_users.parquet").is_file():
        files.append((f"genrec: {run.name}", run.path / "evaluate" / f"{stage}_users.parquet"))
    if not files:
        return {}
    dataset = Dataset.load(run.path / "data")
    return {label: fairness(dataset, read_rows(f), ks=(10, 20)) for label, f in files}


def write_report(run_dirs: list[str | Path], out: str | Path, title: str = "genrec report", notes: str = "",
                 baselines: dict[str, dict] | None = None) -> Path:
    runs = [read_run(p) for p in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base, ours = table1(runs, baselines)
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    lines += ["## Methods (test split, full ranking)", "", "| method | " + " | ".join(COLS) + " |",
              "|---" * (len(COLS) + 1) + "|"]
    for label, m in base + ours:
        lines.append(f"| {label} | " + " | ".join(f"{m[c]:.4f}" for c in COLS) + " |")
    if base and ours:
        imp = improvement(base, ours)
        lines.append("| improvement of the best of ours over the best baseline | "
                     + " | ".join(f"{imp[c]:+.1f}%" for c in COLS) + " |")
    sampled = [r.name for r in runs if r.users_sampled]
    if sampled:
        lines += ["", f"Runs evaluated on a sample of test users: {', '.join(sampled)}."]
    loss_png = _plot_losses(runs, out)
    figures = [("Fine-tuning loss", (loss_png, []) if loss_png else None),
               ("Metrics against the number of codebooks", _plot_against(runs, "levels", "codebooks (L)", "codebooks.png", out)),
               ("Metrics against the negative-sampling ratio",
                _plot_against(runs, "negatives", "negatives per positive (1:N)", "negatives.png", out))]
    for caption, fig in figures:
        if fig is not None:
            lines += ["", f"## {caption}", "", f"![{caption}]({fig[0]})", "", *fig[1]]
    lines += ["", "## Runs", "", "| run | index | codebooks | negatives | fine-tuning steps | final train loss | validation loss |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        tm = r.train
        lines.append(f"| {r.name} | {r.index.get('method', '')} | {r.levels or ''} | "
                     f"{'' if r.negatives is None else '1:' + str(r.negatives)} | {tm.get('steps', '')} | "
                     f"{tm.get('final_train_loss', '')} | {tm.get('val_loss', '')} |")
    lines += ["", "## Stage wall times (seconds, from the stage manifests)", ""]
    for r in runs:
        walls = ", ".join(f"{k} {v:,.1f}" for k, v in r.walls.items() if v is not None)
        lines.append(f"- {r.name}: {walls}")
    fair = {r.name: fairness_of_run(r) for r in runs}
    if any(fair.values()):
        lines += ["", "## Bias and fairness (test split, @10)", "",
                  "Popularity is an item's number of training interactions; the groups and metrics are defined in "
                  "`genrec.evaluate.fairness`."]
        for name, results in fair.items():
            if results:
                lines += ["", f"### {name}", "", *fairness_markdown([(label, res) for label, res in results.items()])]
        (out / "fairness.json").write_text(json.dumps(fair, indent=2))
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
