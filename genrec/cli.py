"""The ``genrec`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from genrec.errors import DataError, GenrecError

app = typer.Typer(
    help="genrec: LLM-based generative recommendation, from raw logs to a served model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Load, prepare, describe and generate datasets.", no_args_is_help=True)
baselines_app = typer.Typer(help="Classic recommenders through the shared evaluator.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(baselines_app, name="baselines")

FormatOpt = Annotated[
    str | None, typer.Option("--format", "-f", help="lcrec, recbole, amazon2018, amazon2023 or tabular; detected when omitted")
]
KcoreOpt = Annotated[int, typer.Option("--kcore", help="iterative k-core threshold (0: off)")]
MissingOpt = Annotated[
    str, typer.Option("--missing-items", help="items absent from the item table: error, drop or keep")
]


def _options(pairs: list[str] | None) -> dict:
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep:
            raise GenrecError(f"--option {p!r}: expected NAME=VALUE, e.g. user_col=uid")
        out[k] = v
    return out


def _prepare_config(kcore: int, missing_items: str, dedup: bool = True):
    from pydantic import ValidationError

    from genrec.data.preprocess import PrepareConfig

    try:
        return PrepareConfig(kcore=kcore, missing_items=missing_items, dedup=dedup)
    except ValidationError as e:
        err = e.errors()[0]
        raise GenrecError(f"--{err['loc'][0]}: {err['msg']}") from None


# -- run ------------------------------------------------------------------------------
def _fit_summary(m: dict) -> str:
    """A fine-tune's losses and, with model selection, the step it kept and that step's validation metric."""
    out = f"train loss {m['final_train_loss']}"
    if m.get("val_loss") is not None:
        out += f", validation loss {m['val_loss']}"
    if m.get("selected_step") is not None:
        metric = next((k for k in m if k.startswith("valid_")), None)
        out += f", kept step {m['selected_step']:,} (epoch {m['selected_epoch']:g})"
        if metric:
            out += f" with validation {metric[len('valid_'):]} {m[metric]:.4f}"
    return out


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="YAML run config, e.g. configs/demo.yaml")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config value: a.b=value")] = None,
    force: Annotated[bool, typer.Option(help="rebuild stages even when up to date")] = False,
    serve: Annotated[bool, typer.Option(help="then serve the cache over HTTP (needs a cache section)")] = False,
    port: Annotated[int, typer.Option(help="port for --serve")] = 8000,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Run every stage of a config in order, skipping stages whose inputs and config are unchanged."""
    import time

    from genrec.config import load_config

    start = time.time()
    cfg = load_config(config, set_)  # every section checked, before the stages (and torch) load
    from genrec import pipeline

    done = pipeline.run(cfg, force=force, echo=lambda s: typer.echo(s, err=True), progress=progress)
    run_dir = cfg.resolved_run_dir()
    stats = done["data"]["metrics"]
    typer.echo(
        f"\nData: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions "
        f"(avg length {stats['avg_len']:.2f}), leave-one-out split, full ranking over every item."
    )
    rows = {k.split(":", 1)[1]: v["metrics"]["test"]["metrics"] for k, v in done.items() if k.startswith("baseline:")}
    if "evaluate" in done:
        ev = done["evaluate"]["metrics"]
        label = "genrec-llm" + (f" ({ev['users_sampled']} users)" if ev.get("users_sampled") else "")
        rows[label] = ev["test"]["metrics"]
    if rows:
        typer.echo(_compare_table(rows, cfg.evaluate.ks))
    if "train" in done:
        m = done["train"]["metrics"]
        typer.echo(f"Fine-tuning: {m['steps']:,} steps, {_fit_summary(m)}.")
    if "cache" in done:
        c = done["cache"]["metrics"]
        typer.echo(f"Cache: {c['users']:,} users' top-{cfg.cache.k} in {done['cache']['store']} (version {c['version']}).")
    typer.echo(f"Artifacts in {run_dir}/ (each stage folder has a manifest.json). {time.time() - start:.0f} s in all.")
    if serve:
        if cfg.cache is None:
            raise GenrecError(f"{config}: --serve needs a cache section")
        _serve(run_dir / "index", run_dir / "data", cfg.cache.store or str(run_dir / "cache.db"), port=port, self_check=True)


def _compare_table(rows: dict[str, dict], ks: list[int]) -> str:
    cols = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks if k > 1] + ["MRR"]
    width = max([12, *(len(n) + 1 for n in rows)])
    head = f"{'test':<{width}}" + "".join(f"{c:>9}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{m.get(c, float('nan')):>9.4f}" for c in cols))
    return "\n".join(lines)


# -- data -----------------------------------------------------------------------------
@data_app.command("prepare")
def data_prepare(
    source: Annotated[Path, typer.Argument(help="raw data folder (or file)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for the prepared dataset")],
    format: FormatOpt = None,
    kcore: KcoreOpt = 5,
    missing_items: MissingOpt = "error",
    dedup: Annotated[bool, typer.Option(help="drop repeated user-item pairs (first stays)")] = True,
    option: Annotated[list[str] | None, typer.Option("--option", help="loader option NAME=VALUE")] = None,
    force: Annotated[bool, typer.Option(help="rebuild even when up to date")] = False,
) -> None:
    """Read raw data, filter (dedup, k-core), build chronological sequences and the split."""
    from genrec.stages import stage_data

    res = stage_data(source, out, _prepare_config(kcore, missing_items, dedup), format=format, options=_options(option),
                     force=force)
    s = res.manifest["metrics"]
    state = "up to date" if res.skipped else f"prepared in {res.manifest['wall_seconds']:.1f}s"
    typer.echo(
        f"{out}: {state}: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions, "
        f"avg length {s['avg_len']:.2f}, long users {100 * s['long_user_share']:.2f}%"
    )


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="prepared dataset or raw data folder")],
    format: FormatOpt = None,
    kcore: KcoreOpt = 5,
    missing_items: MissingOpt = "error",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Users, items, interactions, average length and share of long users (as the paper's Table 2).

    A raw folder is preprocessed in memory first (dedup, k-core), without writing anything.
    """
    from genrec.data.preprocess import load_dataset

    ds = load_dataset(path, format, _prepare_config(kcore, missing_items))
    s = ds.stats()
    if as_json:
        typer.echo(json.dumps(s))
        return
    src = ds.meta.get("source", {}).get("format", "?")
    typer.echo(f"{path} ({src})")
    typer.echo(f"  users          {s['users']:>10,}")
    typer.echo(f"  items          {s['items']:>10,}")
    typer.echo(f"  interactions   {s['interactions']:>10,}")
    typer.echo(f"  avg length     {s['avg_len']:>10.3f}")
    typer.echo(f"  long users     {100 * s['long_user_share']:>9.2f}%  (sequences longer than 20)")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for the raw CSV files")],
    users: Annotated[int | None, typer.Option(help="number of users")] = None,
    items: Annotated[int | None, typer.Option(help="number of items")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing synthetic folder")] = False,
) -> None:
    """Generate the seeded synthetic catalogue and user log (the demo's default data)."""
    from genrec.data import synth

    fields = {"seed": seed}
    if users is not None:
        fields["n_users"] = users
    if items is not None:
        fields["n_items"] = items
    from pydantic import ValidationError

    try:
        cfg = synth.SynthConfig(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        raise GenrecError(f"synthetic data settings: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    synth.write(cfg, out, overwrite=overwrite)
    typer.echo(f"wrote synthetic data to {out} (prepare it with `genrec data prepare {out} --out DIR`)")


@data_app.command("download")
def data_download(
    source: Annotated[str, typer.Argument(help="amazon2018 or amazon2023")],
    category: Annotated[str, typer.Option("--category", "-c", help="e.g. Industrial_and_Scientific")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the downloaded files")],
    five_core: Annotated[bool, typer.Option("--five-core", help="amazon2018: the smaller 5-core review file")] = False,
    base_url: Annotated[str | None, typer.Option(help="a mirror of the public files")] = None,
) -> None:
    """Fetch the public Amazon review files for a category (needs internet)."""
    from genrec.data.download import download

    paths = download(source, category, out, base_url=base_url, five_core=five_core)
    typer.echo("downloaded: " + ", ".join(str(p) for p in paths))
    typer.echo(f"next: genrec data prepare {out} --out DIR --missing-items drop")


# -- baselines ------------------------------------------------------------------------
@baselines_app.command("list")
def baselines_list() -> None:
    """Name every classic baseline."""
    from genrec.registry import BASELINES

    for name, cls in BASELINES.items():
        typer.echo(f"{name:<12} {(cls.__doc__ or '').strip().splitlines()[0]}")


@baselines_app.command("run")
def baselines_run(
    name: Annotated[str, typer.Argument(help="baseline name (see `genrec baselines list`)")],
    data: Annotated[Path, typer.Option("--data", "-d", help="prepared dataset or raw data folder")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="the baseline stage's folder (model, metrics.json, "
                                                                 "per-user rows, manifest.json); default: "
                                                                 "baselines/NAME beside the data folder")] = None,
    format: FormatOpt = None,
    kcore: KcoreOpt = 5,
    missing_items: MissingOpt = "error",
    stage: Annotated[str, typer.Option(help="valid or test")] = "test",
    mask_history: Annotated[str, typer.Option(help="remove the user's history items from the ranking: auto (when the data "
                                                   "has no repeated user-item pair), on or off")] = "auto",
    ks: Annotated[str, typer.Option(help="cut-offs, comma-separated")] = "1,5,10,20",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="model setting, e.g. train.epochs=50 or config.dim=64")
    ] = None,
    dump: Annotated[Path | None, typer.Option(help="write per-user results to this Parquet file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
    force: Annotated[bool, typer.Option(help="refit even when up to date")] = False,
    fairness: Annotated[bool, typer.Option("--fairness", help="also report popularity bias and fairness of the lists "
                                                              "(as `genrec evaluate --fairness`)")] = False,
) -> None:
    """Fit a baseline on the training split through the baseline stage (the one `genrec run` runs) and
    print its metrics on the chosen split. A raw --data folder is prepared first, into a folder beside
    --out; a rerun with the same data and settings is up to date and refits nothing."""
    import shutil

    from genrec.config import EvaluateSection, apply_overrides
    from genrec.data.dataset import Dataset
    from genrec.evaluate import MASK_WORDS, EvalResult
    from genrec.stages import make_baseline, stage_baseline, stage_data

    params = apply_overrides({}, set_ or [])
    make_baseline(name, params)  # an unknown name or settings, before any work
    if stage not in ("valid", "test"):
        raise GenrecError(f"--stage must be valid or test, got {stage!r}")
    try:
        cutoffs = [int(k) for k in ks.split(",")]
    except ValueError:
        raise GenrecError(f"--ks must be comma-separated integers, got {ks!r}") from None
    if mask_history not in MASK_WORDS:
        raise GenrecError(f"--mask-history must be auto, on or off, got {mask_history!r}")
    ev = _validated(EvaluateSection, {"ks": cutoffs, "mask_history": MASK_WORDS[mask_history]}, "evaluate")
    out = out if out is not None else data.parent / "baselines" / name
    if not Dataset.is_prepared(data):
        prepared = stage_data(data, out.parent / f".{out.name}-data", _prepare_config(kcore, missing_items), format=format)
        data = prepared.path
    inputs = None
    source = (params.get("config") or {}).get("source")
    if name == "cllm4rec-emb" and source:  # the CLLM4Rec model it reads is an input, as in `genrec run`
        inputs = {"source": Path(source)}
    res = stage_baseline(data, out, name, ev, seed=seed, params=params, inputs=inputs, force=force)
    if dump is not None:
        shutil.copy2(res.path / f"{stage}_users.parquet", dump)
    result = res.manifest["metrics"][stage]
    fair = _fairness(data, res.path / f"{stage}_users.parquet", ev.ks) if fairness else None
    if as_json:
        typer.echo(json.dumps({**result, "fairness": fair} if fair else result))
        return
    n_items = Dataset.load(data).n_items
    state = "up to date, skipped" if res.skipped else f"fitted in {res.manifest['wall_seconds']:.1f}s"
    typer.echo(f"{name} on {data} ({stage}, {result['n_users']:,} users, full ranking over {n_items:,} items); "
               f"{out}: {state}")
    typer.echo(EvalResult(**result).table())
    if fair:
        _echo_fairness(name, fair)


# -- cf -------------------------------------------------------------------------------
cf_app = typer.Typer(help="Collaborative-filtering item embeddings (DCCF, LightGCN, SASRec).", no_args_is_help=True)
app.add_typer(cf_app, name="cf")


@cf_app.command("train")
def cf_train(
    name: Annotated[str, typer.Argument(help="dccf, lightgcn or sasrec")],
    data: Annotated[Path, typer.Option("--data", "-d", help="prepared dataset folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (item_embeddings.npy, model, metrics)")],
    dim: Annotated[int, typer.Option(help="embedding dimension")] = 32,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    epochs: Annotated[int | None, typer.Option(help="maximum training epochs (default: the model's)")] = None,
    force: Annotated[bool, typer.Option(help="retrain even when up to date")] = False,
) -> None:
    """Train a CF model on the training split and write its item embeddings (row i = item i)."""
    from genrec.config import CFSection
    from genrec.stages import stage_cf

    train = {"epochs": epochs} if epochs is not None else {}
    cfg = _validated(CFSection, {"model": name, "dim": dim, "train": train}, "cf")
    res = stage_cf(data, out, cfg, seed=seed, force=force, log=lambda s: typer.echo(s, err=True))
    m = res.manifest["metrics"]
    state = "up to date, skipped" if res.skipped else f"trained in {res.manifest['wall_seconds']:.1f}s"
    typer.echo(
        f"{name}: {state}; valid NDCG@10 {m['valid']['NDCG@10']:.4f}, test NDCG@10 {m['test']['NDCG@10']:.4f}; "
        f"item embeddings [{m['n_items']} x {m['dim']}] in {res.path / 'item_embeddings.npy'}"
    )


# -- index ----------------------------------------------------------------------------
index_app = typer.Typer(help="Item indexing: write each item as a short token sequence.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    method: Annotated[str, typer.Option("--method", "-m", help="alignment, rqvae, semid, cid, rid, tid or iid")],
    data: Annotated[Path, typer.Option("--data", "-d", help="prepared dataset folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for the index")],
    embeddings: Annotated[
        Path | None, typer.Option(help="behaviour embeddings: a `genrec cf train` folder or a .npy file")
    ] = None,
    backbone: Annotated[str, typer.Option(help="LLM for item text embeddings: default, a folder, a .gguf or a hub id")] = "default",
    levels: Annotated[int | None, typer.Option(help="code levels (alignment, rqvae, semid)")] = None,
    codebook_size: Annotated[int | None, typer.Option(help="codes per level (alignment, rqvae, semid)")] = None,
    no_llm_alignment: Annotated[bool, typer.Option("--no-llm-alignment", help="the 'w/o LA' ablation (alignment)")] = False,
    id_level: Annotated[bool, typer.Option("--id-level", help="a last level of one token per item")] = False,
    text_layers: Annotated[int | None, typer.Option(
        help="text embeddings from the backbone's first N layers (default: the mean input-layer embedding)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="indexer setting NAME=VALUE")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    force: Annotated[bool, typer.Option(help="rebuild even when up to date")] = False,
) -> None:
    """Build an item index (codes, trie-ready item strings, statistics) from a prepared dataset."""
    from genrec.config import IndexSection, apply_overrides
    from genrec.index.stage import NEEDS_LLM, check_request
    from genrec.stages import stage_index, stage_text

    config = apply_overrides({}, set_ or [])
    if levels is not None:
        config["levels"] = levels
    if codebook_size is not None:
        config["codebook_size"] = codebook_size
    if no_llm_alignment:
        config["llm_weight"] = 0.0
    check_request(method, data, embeddings, config)
    # the items' text embeddings beside the index, kept while data and backbone stay the same
    section = IndexSection(method=method, config=config, id_level=id_level, text_layers=text_layers)
    text_dir = out.parent / (f".{out.name}-text" + (f"-l{text_layers}" if text_layers else ""))
    text = stage_text(data, text_dir, backbone, layers=text_layers).path if method in NEEDS_LLM else None
    res = stage_index(data, out, section, embeddings=embeddings, text=text, seed=seed, force=force)
    typer.echo(_index_summary(out, res.manifest, res.skipped))


def _index_summary(path: Path, manifest: dict, skipped: bool = False) -> str:
    s = manifest["metrics"]
    lines = [f"{path}: {manifest['config']['method']} index of {s.get('n_items', '?'):,} items"
             + (" (up to date, skipped)" if skipped else f" built in {manifest['wall_seconds']:.1f}s")]
    if "collision_rate_before" in s:
        lines.append(f"  collisions       {100 * s['collision_rate_before']:.2f}% before resolution, "
                     f"{100 * s['collision_rate_after']:.2f}% after")
    if s.get("perplexity"):
        lines.append("  code perplexity  " + " / ".join(f"{p:.0f}" for p in s["perplexity"]) + " (per level)")
    if "prefix_co_interacted" in s:
        lines.append(f"  shared prefix    {s['prefix_co_interacted']:.3f} co-interacted vs {s['prefix_random']:.3f} random pairs")
    if "category_purity" in s:
        lines.append(f"  category purity  {s['category_purity']:.3f} (codes shuffled: {s['category_purity_shuffled']:.3f})")
    lines.append(f"  new tokens       {s.get('new_tokens', 0):,}")
    return "\n".join(lines)


@index_app.command("stats")
def index_stats(
    path: Annotated[Path, typer.Argument(help="an index folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the statistics as JSON")] = False,
) -> None:
    """Collisions, code usage, prefix sharing and category agreement of a built index."""
    from genrec.artifacts import read_manifest

    manifest = read_manifest(path)
    if manifest is None or not manifest.get("stage", "").startswith("index"):
        raise DataError(path, None, "expected an index folder built by `genrec index build`")
    typer.echo(json.dumps(manifest["metrics"]) if as_json else _index_summary(path, manifest, True).replace(" (up to date, skipped)", ""))


@index_app.command("assign")
def index_assign(
    index: Annotated[Path, typer.Argument(help="an index folder (alignment or rqvae)")],
    new_items: Annotated[Path, typer.Argument(help="JSON lines: item_id, title, description, and embedding or neighbours")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the assignments as JSON lines here")] = None,
) -> None:
    """Codes for new items from the codebooks, without retraining."""
    import time

    from genrec.index.stage import assign_new_items
    from genrec.llm.backbone import TextEmbedder

    t0 = time.perf_counter()
    rows = assign_new_items(index, new_items, TextEmbedder)
    ms = 1000 * (time.perf_counter() - t0) / len(rows)
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(out)
    else:
        for r in rows:
            typer.echo(json.dumps(r))
    typer.echo(f"assigned {len(rows)} new items ({ms:.2f} ms each){'; wrote ' + str(out) if out else ''}", err=True)


# -- tags ------------------------------------------------------------------------------
tags_app = typer.Typer(help="LLM-written keyword tags for items with a short description.", no_args_is_help=True)
app.add_typer(tags_app, name="tags")


@tags_app.command("generate")
def tags_generate(
    data: Annotated[Path, typer.Option("--data", "-d", help="prepared dataset folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="write {item_id: tags} of the tagged items here (JSON)")],
    backbone: Annotated[str, typer.Option(help="the instruct LLM: default, a folder, a .gguf or a hub id")] = "default",
    min_description: Annotated[int, typer.Option(help="tag the items whose description is shorter (characters)")] = 50,
    batch: Annotated[int, typer.Option(help="prompts per generate call")] = 16,
    max_tags: Annotated[int, typer.Option(help="tags kept per item")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="tokens generated per item")] = 32,
    cache: Annotated[Path | None, typer.Option(help="the tag cache folder (default $GENREC_CACHE/tags)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32 or bf16")] = "auto",
) -> None:
    """Generate tags for the items with little description (greedy, batched, cached by content hash:
    a rerun generates only for new or changed items, a killed run resumes). A run config's ``tags``
    section does the same inside `genrec run` and puts the tags into the item text."""
    from genrec.data.dataset import Dataset
    from genrec.llm.config import TagsConfig
    from genrec.llm.tags import item_tags, write_tags_file

    cfg = _validated(TagsConfig, {"backbone": backbone, "min_description": min_description, "batch_size": batch,
                                  "max_tags": max_tags, "max_new_tokens": max_new_tokens, "device": device, "dtype": dtype,
                                  "cache": str(cache) if cache is not None else None}, "tags")
    items = Dataset.load(data).items
    tags, s = item_tags(items, cfg)
    write_tags_file(out, items, tags)
    typer.echo(f"{s['eligible']:,} of {s['items']:,} items have a description under {min_description} characters: "
               f"{s['generated']:,} generated, {s['reused']:,} reused, {s['seconds']:.1f}s generating"
               + (f" (+{s['load_seconds']:.1f}s loading)" if "load_seconds" in s else ""))
    typer.echo(f"{s['tagged']:,} items tagged; wrote {out} (cache {s['cache_file']})")


# -- tasks and train -------------------------------------------------------------------
tasks_app = typer.Typer(help="Alignment tasks: the fine-tuning corpus.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


def _validated(model_cls, raw: dict, what: str):
    from pydantic import ValidationError

    try:
        return model_cls.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise GenrecError(f"{what} setting {'.'.join(str(x) for x in err['loc'])}: {err['msg']} (input {err.get('input')!r})") from None


@tasks_app.command("build")
def tasks_build(
    data: Annotated[Path, typer.Option("--data", "-d", help="prepared dataset folder")],
    index: Annotated[Path, typer.Option("--index", "-i", help="item index folder (`genrec index build`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for the corpus")],
    backbone: Annotated[str, typer.Option(help="tokenizer: default, a folder, a .gguf or a hub id")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", help="task setting NAME=VALUE, e.g. layout=all_positions, negatives_per_positive=0")] = None,
    valid_users: Annotated[int, typer.Option(help="users in the held-out validation corpus")] = 1000,
    force: Annotated[bool, typer.Option(help="rebuild even when up to date")] = False,
) -> None:
    """Build the alignment-task corpus (training part of the split only) as token ids."""
    from genrec.config import apply_overrides
    from genrec.llm.tasks import TaskConfig
    from genrec.stages import stage_tasks

    cfg = _validated(TaskConfig, apply_overrides({}, set_ or []), "task")
    res = stage_tasks(data, index, out, cfg, backbone=backbone, valid_users=valid_users, force=force)
    m = res.manifest["metrics"]
    state = "up to date, skipped" if res.skipped else f"built in {res.manifest['wall_seconds']:.1f}s"
    t = m["train"]
    typer.echo(f"corpus {res.path}: {state}")
    typer.echo(f"  {t['samples']:,} training samples, {t['tokens']:,} tokens ({t['target_tokens']:,} targets), "
               f"mean length {t['mean_length']}, longest {t['max_length']}")
    for task, n in t["tasks"].items():
        typer.echo(f"  {task:<14} {n:>9,}")
    typer.echo(f"  validation: {m['valid']['samples']:,} samples (training history -> validation item)")
    if m.get("dropped_too_long"):
        typer.echo(f"  dropped {m['dropped_too_long']:,} samples longer than the length limit")


@tasks_app.command("show")
def tasks_show(
    corpus: Annotated[Path, typer.Argument(help="corpus folder")],
    n: Annotated[int, typer.Option(help="samples per task")] = 1,
) -> None:
    """Print samples of each task as text, with the target tokens in [[...]]."""
    import numpy as np

    from genrec.llm.backbone import add_tokens, load_tokenizer
    from genrec.llm.corpus import load_corpus

    train, _, meta = load_corpus(corpus)
    tok = load_tokenizer(meta.get("backbone"))
    add_tokens(tok, None, meta["new_token_list"])
    for t, name in enumerate(train.task_names):
        for row in np.flatnonzero(train.task == t)[:n]:
            ids, mask = train.sample(int(row))
            pieces, cur, cur_mask = [], [], None
            for i, m in zip(ids.tolist(), mask.tolist(), strict=True):
                if cur and m != cur_mask:
                    text = tok.decode(cur)
                    pieces.append(f"[[{text}]]" if cur_mask else text)
                    cur = []
                cur.append(i)
                cur_mask = m
            if cur:
                text = tok.decode(cur)
                pieces.append(f"[[{text}]]" if cur_mask else text)
            typer.echo(f"--- {name} (sample {row})\n{''.join(pieces)}")


@app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="run config: data, index, tasks and train sections")] = None,
    corpus: Annotated[Path | None, typer.Option(help="or: a corpus folder from `genrec tasks build`")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output folder (with --corpus)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: a.b=value (with --corpus: train settings, e.g. lr=1e-3)")] = None,
    stop_after: Annotated[int | None, typer.Option(help="stop after this many optimizer steps, with a checkpoint; rerun to resume")] = None,
    force: Annotated[bool, typer.Option(help="retrain even when up to date")] = False,
    progress: Annotated[bool, typer.Option(help="progress bar")] = True,
) -> None:
    """Fine-tune the backbone on the alignment tasks. Works unchanged under `accelerate launch`."""

    from genrec.config import apply_overrides, load_config

    if (config is None) == (corpus is None):
        raise GenrecError("give either --config (a run config) or --corpus with --out")
    if config is not None:
        cfg = load_config(config, set_)  # every section checked, before the stages (and torch) load
        if cfg.train is None:
            raise GenrecError(f"{config}: no train section")
    from genrec.device import launch_rank

    main_rank = launch_rank()[0] == 0
    say = (lambda s: typer.echo(s, err=True)) if main_rank else (lambda s: None)
    if corpus is not None:
        from genrec.llm.config import LLMTrainConfig
        from genrec.stages import stage_train

        if out is None:
            raise GenrecError("--corpus needs --out")
        cfg = _validated(LLMTrainConfig, apply_overrides({}, set_ or []), "train")
        res = stage_train(corpus, out, cfg, force=force, stop_after=stop_after, progress=progress)
    else:
        from genrec import pipeline

        with _main_process_first():
            pipeline.run(cfg, force=force, echo=say, until="tasks")
        done = pipeline.run(cfg, force=False, echo=say, until="train", stop_after=stop_after, progress=progress)
        res = None
        if "train" in done:
            from genrec.artifacts import StageResult

            res = StageResult(cfg.resolved_run_dir() / "model", done["train"], False)
    if res is None:
        say("stopped by --stop-after; rerun the same command to resume from the checkpoint")
        return
    m = res.manifest["metrics"]
    if res.skipped:
        say(f"model {res.path}: up to date, skipped")
    say(f"model {res.path}: {m['steps']:,} steps ({m['epochs']} epochs), final {_fit_summary(m)}, "
        f"{m['tokens_per_s']:,} tokens/s, peak memory {m['peak_mem_mb']:,.0f} MB")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path | None, typer.Option(help="trained model folder (`genrec train`)")] = None,
    index: Annotated[Path | None, typer.Option(help="the item index it was trained on")] = None,
    data: Annotated[Path | None, typer.Option(help="prepared dataset folder")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="or: a run config (its run folder holds data, index, model)")] = None,
    stage: Annotated[str, typer.Option(help="valid or test")] = "test",
    beams: Annotated[int, typer.Option(help="beam width")] = 20,
    users: Annotated[int | None, typer.Option(help="evaluate a random sample of this many users (seeded); default all")] = None,
    batch_users: Annotated[int, typer.Option(help="users decoded together")] = 8,
    precision: Annotated[str | None, typer.Option(help="decoding arithmetic: auto (bf16 where the hardware has it natively, "
                                                       "else fp32), fp32, bf16 or int8 (CPU: dynamically quantised "
                                                       "linear layers); default the model's own training dtype")] = None,
    seed: Annotated[int, typer.Option(help="seed of the user sample")] = 0,
    out: Annotated[Path | None, typer.Option(help="write metrics.json and per-user rows here; the decoded lists are "
                                                  "kept there as they come, so a killed run resumes when rerun")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
    fairness: Annotated[bool, typer.Option("--fairness", help="also report popularity bias and fairness of the lists: "
                                                              "average popularity, long-tail share, coverage, Gini "
                                                              "of exposure, HR/NDCG by user and item group")] = False,
) -> None:
    """Evaluate a fine-tuned generative model with constrained beam search through the shared evaluator.

    Under `accelerate launch` the users are sharded across ranks and rank 0 prints the result."""
    import tempfile

    from genrec.config import DecodeSection, EvaluateSection
    from genrec.evaluate import EvalResult
    from genrec.stages import evaluate_decoding, stage_evaluate

    if config is not None:
        from genrec.config import load_config

        run_dir = load_config(config).resolved_run_dir()
        model, index, data = model or run_dir / "model", index or run_dir / "index", data or run_dir / "data"
    if model is None or index is None or data is None:
        raise GenrecError("give --config, or --model, --index and --data")
    if stage not in ("valid", "test"):
        raise GenrecError(f"--stage {stage!r}: expected valid or test")
    dec = _validated(DecodeSection, {"beams": beams, "batch_users": batch_users, "users": users}, "decode")
    from genrec.decode.recommender import check_precision

    check_precision(precision, "--precision")
    ev = EvaluateSection()
    # the seed only draws the user sample: without one, any --seed names the same evaluation
    sample_seed = seed if users is not None else 0
    with tempfile.TemporaryDirectory() as scratch:
        if out is not None:
            res = stage_evaluate(model, index, data, out, dec, ev, seed=sample_seed, split=stage, precision=precision)
            metrics = None if res is None else res.manifest["metrics"]
            rows = out / f"{stage}_users.parquet"
        else:
            rows = Path(scratch) / f"{stage}_users.parquet" if fairness else None
            metrics = evaluate_decoding(model, index, data, dec, ev, sample_seed, stage, dump=rows, precision=precision)
        if metrics is None:  # not rank 0 of a launch
            return
        fair = _fairness(data, rows, ev.ks) if fairness else None
    if as_json:
        typer.echo(json.dumps({**metrics[stage], "beams": beams, "users_sampled": users, "seed": seed, "model": str(model),
                               "mask_history": metrics["mask_history"], "precision": precision,
                               **({"fairness": fair} if fair else {})}, indent=2))
    else:
        typer.echo(EvalResult(**metrics[stage]).table())
        if fair:
            _echo_fairness(str(model), fair)


def _fairness(data: Path, rows: Path, ks) -> dict:
    """Popularity bias and fairness (:func:`genrec.evaluate.fairness.fairness`) of the ranked lists
    in a per-user rows file of ``data``."""
    from genrec.data.dataset import Dataset
    from genrec.evaluate.fairness import fairness, read_rows

    return fairness(Dataset.load(data), read_rows(rows), ks=ks)


def _echo_fairness(name: str, fair: dict) -> None:
    from genrec.evaluate.fairness import fairness_markdown

    for k in fair["ks"]:
        typer.echo("\n".join(["", f"bias and fairness @{k}", *fairness_markdown([(name, fair)], k)]))


@app.command("rerank")
def rerank_cmd(
    base: Annotated[Path, typer.Option(help="a classic model that shortlists: a baseline stage's model folder, "
                                            "e.g. runs/scientific/baselines/sasrec-ce/model")],
    model: Annotated[Path, typer.Option(help="the fine-tuned LLM that reorders the shortlist (`genrec train`)")],
    data: Annotated[Path, typer.Option(help="prepared dataset folder")],
    out: Annotated[Path, typer.Option(help="metrics.json goes here; the scored shortlists are kept as they come, "
                                           "so a killed run resumes when rerun")],
    index: Annotated[Path | None, typer.Option(help="the item index the model was trained on (--method codes)")] = None,
    method: Annotated[str, typer.Option(help="codes: the generative model's log-likelihood of each candidate's codes; "
                                             "tallrec: a yes/no ranker's log P(Yes) (--model from `genrec tallrec train`)")] = "codes",
    candidates: Annotated[int, typer.Option(help="shortlist length (the hard candidates the LLM scores)")] = 20,
    weight: Annotated[float | None, typer.Option(help="the LLM's weight in [0, 1]; default: the best of 0, 0.1, ..., 1 "
                                                      "on the validation split")] = None,
    valid_users: Annotated[int | None, typer.Option(help="pick the weight on a seeded sample of this many validation users")] = None,
    users: Annotated[int | None, typer.Option(help="evaluate a seeded sample of this many test users; default all")] = None,
    seed: Annotated[int, typer.Option(help="seed of the user samples")] = 0,
    batch_users: Annotated[int, typer.Option(help="users scored together")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Filter-then-rerank: the classic model's top candidates reordered by the fine-tuned LLM.

    The fused score is (1 - w) log p_base + w log p_llm over the shortlist; w = 0 is the classic
    model alone, w = 1 the LLM alone. Under `accelerate launch` the users are shared out between
    ranks and rank 0 prints the result."""
    from genrec.decode.rerank import run_rerank

    res = run_rerank(base, model, index, data, out, candidates, valid_users, users, seed, batch_users, weight,
                     method=method)
    if res is None:  # not rank 0 of a launch
        return
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    t = res["test"]
    rows = {"classic model alone": t["base"], "LLM alone on its shortlist (w = 1)": t["llm_on_shortlist"],
            f"fused (w = {res['weight']})": t["fused"]}
    typer.echo(f"test, {t['users']:,} users, shortlist of {res['candidates']} from {base}, {method} scores"
               + (f", {res['seconds_per_user']:.3f} s per user:" if res.get("seconds_per_user") is not None else ":"))
    typer.echo(_compare_table(rows, [1, 5, 10, 20]))


tallrec_app = typer.Typer(help="A TALLRec-style yes/no ranker: the backbone tuned with LoRA to answer "
                               "'will the user buy it?'; it reranks with `genrec rerank --method tallrec`.",
                          no_args_is_help=True)
app.add_typer(tallrec_app, name="tallrec")


@tallrec_app.command("train")
def tallrec_train(
    data: Annotated[Path, typer.Option("--data", "-d", help="prepared dataset folder")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the ranker's model folder (replaced when training ends)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="a setting, e.g. negatives=2, train.layers=4, "
                                                                 "train.max_steps=100 (see docs/cli.md)")] = None,
    stop_after: Annotated[int | None, typer.Option(help="stop after this many optimizer steps, with a checkpoint; rerun to resume")] = None,
    progress: Annotated[bool, typer.Option(help="progress bar")] = True,
) -> None:
    """Tune the backbone on yes/no prompts (history titles, a candidate, the question) with sampled
    negatives. A killed run resumes when rerun; works unchanged under `accelerate launch`."""
    from genrec.config import apply_overrides
    from genrec.llm.config import TallrecConfig

    cfg = _validated(TallrecConfig, apply_overrides({}, set_ or []), "tallrec")
    from genrec.device import launch_rank
    from genrec.llm.tallrec import train_tallrec

    res = train_tallrec(data, out, cfg, progress=progress, stop_after=stop_after)
    if launch_rank()[0] != 0:
        return
    if res.get("stopped"):
        typer.echo(f"stopped at step {res['step']} of {res['total']}; rerun the same command to resume", err=True)
        return
    typer.echo(f"yes/no ranker {out}: {res['samples']:,} samples ({res['positives']:,} positives), {res['steps']:,} steps, "
               f"final {_fit_summary(res)}", err=True)


cache_app = typer.Typer(help="Precomputed top-K per user in a store (SQLite or Redis).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _serving_paths(config: Path | None, model: Path | None, index: Path | None, data: Path | None,
                   store: str | None) -> tuple[Path | None, Path, Path, str]:
    """--config fills what is not given: run_dir/{model,index,data} and run_dir/cache.db."""
    if config is not None:
        from genrec.config import load_config

        run_dir = load_config(config).resolved_run_dir()
        model, index, data = model or run_dir / "model", index or run_dir / "index", data or run_dir / "data"
        store = store or str(run_dir / "cache.db")
    if index is None or data is None or store is None:
        raise GenrecError("give --config, or --index, --data and --store (and --model to decode)")
    return model, index, data, store


@cache_app.command("build")
def cache_build(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="a run config: its run folder holds model, index, data")] = None,
    model: Annotated[Path | None, typer.Option(help="trained model folder (`genrec train`)")] = None,
    index: Annotated[Path | None, typer.Option(help="the item index it was trained on")] = None,
    data: Annotated[Path | None, typer.Option(help="prepared dataset folder (users' histories)")] = None,
    store: Annotated[str | None, typer.Option(help="cache store: a file path, sqlite:///path or redis://host:port/db")] = None,
    users: Annotated[Path | None, typer.Option(help="only these user ids (one per line); default all")] = None,
    k: Annotated[int, typer.Option(help="items cached per user")] = 20,
    beams: Annotated[int, typer.Option(help="beam width")] = 20,
    batch_users: Annotated[int, typer.Option(help="users decoded together")] = 8,
    chunk_users: Annotated[int, typer.Option(help="users written per transaction (the unit of resuming)")] = 64,
    pop_alpha: Annotated[float, typer.Option(help="popularity adjustment of the ranking (the evaluate stage's pick is in its "
                                                   "metrics.json)")] = 0.0,
    precision: Annotated[str | None, typer.Option(help="decoding arithmetic: auto, fp32, bf16 or int8 (as `genrec "
                                                       "evaluate`); default the model's own training dtype")] = None,
    progress: Annotated[bool, typer.Option(help="progress bar")] = True,
) -> None:
    """Decode every user's top-K and switch the store to the new cache atomically. Rerun after a
    kill: it resumes and ends with the same cache. Works under `accelerate launch` (users sharded)."""
    from genrec.config import CacheSection
    from genrec.device import launch_rank
    from genrec.stages import stage_cache

    model, index, data, store = _serving_paths(config, model, index, data, store)
    if model is None:
        raise GenrecError("--model (or --config) is needed to decode the cache")
    if min(k, beams, batch_users, chunk_users) < 1:
        raise GenrecError("--k, --beams, --batch-users and --chunk-users must be at least 1")
    from genrec.decode.recommender import check_precision

    check_precision(precision, "--precision")
    cfg = CacheSection(k=k, beams=beams, batch_users=batch_users, chunk_users=chunk_users, pop_alpha=pop_alpha,
                       precision=precision)
    say = (lambda m: typer.echo(m, err=True)) if launch_rank()[0] == 0 else (lambda m: None)
    stage_cache(model, index, data, store, cfg, users=users, progress=progress, echo=say)


@cache_app.command("show")
def cache_show(
    store: Annotated[str, typer.Argument(help="cache store: a file path, sqlite:///path or redis://host:port/db")],
    user: Annotated[str | None, typer.Option(help="also print this user's cached list")] = None,
) -> None:
    """The active cache version, and a user's list."""
    from genrec.serve.store import decode_row, open_store

    st = open_store(store)
    act = st.active()
    if act is None:
        raise GenrecError(f"{store}: no cache has been built into this store yet")
    act.pop("popular", None)
    typer.echo(json.dumps(act, indent=2))
    if user is not None:
        found = st.lookup(user)
        if found is None:
            raise GenrecError(f"{store}: user {user!r} is not in the active cache")
        items, scores = decode_row(found[1])
        typer.echo(json.dumps({"user_id": user, "items": items, "scores": scores}))


@app.command("serve")
def serve_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="a run config: its run folder holds index, data, cache.db")] = None,
    index: Annotated[Path | None, typer.Option(help="the item index (codebooks for new items)")] = None,
    data: Annotated[Path | None, typer.Option(help="prepared dataset folder (histories, popularity)")] = None,
    store: Annotated[str | None, typer.Option(help="cache store: a file path, sqlite:///path or redis://host:port/db")] = None,
    model: Annotated[Path | None, typer.Option(help="also load the model to decode users the cache lacks")] = None,
    decode: Annotated[bool, typer.Option(help="decode users missing from the cache on the fly (needs the model)")] = False,
    decode_budget_ms: Annotated[float, typer.Option(help="time budget of an on-the-fly decode; popularity after it")] = 200.0,
    decode_queue: Annotated[int, typer.Option(help="decodes queued or running at most; popularity beyond")] = 8,
    store_timeout_ms: Annotated[float, typer.Option(help="longest wait on the cache store; a fallback after it")] = 50.0,
    store_retry_ms: Annotated[float, typer.Option(help="after a store fault, how long requests fall back at once "
                                                       "before the store is tried again")] = 250.0,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    admin_token_env: Annotated[str, typer.Option(help="environment variable holding the admin token for POST /items")] = "GENREC_ADMIN_TOKEN",
    max_k: Annotated[int, typer.Option(help="largest k a request may ask for")] = 100,
) -> None:
    """Serve recommendations from the cache over HTTP (OpenAPI schema at /docs and /openapi.json)."""
    model, index, data, store = _serving_paths(config, model, index, data, store)
    if decode and model is None:
        raise GenrecError("--decode needs --model (or --config)")
    if min(decode_budget_ms, decode_queue, store_timeout_ms, store_retry_ms) <= 0:
        raise GenrecError("--decode-budget-ms, --decode-queue, --store-timeout-ms and --store-retry-ms must be positive")
    _serve(index, data, store, model if decode else None, decode_budget_ms, host, port, admin_token_env, max_k,
           decode_queue=decode_queue, store_timeout_ms=store_timeout_ms, store_retry_ms=store_retry_ms)


def _serve(index: Path, data: Path, store: str, model: Path | None = None, decode_budget_ms: float = 200.0,
           host: str = "127.0.0.1", port: int = 8000, admin_token_env: str = "GENREC_ADMIN_TOKEN", max_k: int = 100,
           self_check: bool = False, decode_queue: int = 8, store_timeout_ms: float = 50.0,
           store_retry_ms: float = 250.0) -> None:
    """Start the API (blocking). ``self_check``: once it is up, request one user's list and print it.
    With ``model``, cache misses are decoded with the settings (beams, popularity adjustment,
    precision) of the active cache's build, else beam 20 without adjustment."""
    import os
    import threading

    import uvicorn

    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog
    from genrec.serve.store import open_store

    st = open_store(store, timeout_ms=store_timeout_ms)
    catalog = Catalog(index, data, st)
    act = st.active()
    rec = None
    if model is not None:
        from genrec.serve.app import DecodeProcess

        built = act or {}
        typer.echo(f"loading the decoder from {model} ...", err=True)
        rec = DecodeProcess(model, index, data, store, beams=built.get("beams", 20), pop_alpha=built.get("pop_alpha", 0.0),
                            precision=built.get("precision"))
    token = os.environ.get(admin_token_env) or None
    app_ = create_app(st, catalog, admin_token=token, recommender=rec, decode_budget_ms=decode_budget_ms,
                      decode_queue=decode_queue, max_k=max_k, store_timeout_ms=store_timeout_ms,
                      store_retry_ms=store_retry_ms)
    url = f"http://{host}:{port}/users/{catalog.ds.user_ids[0]}/recommendations?k=5"
    typer.echo(f"serving {store} ({'cache ' + act['version'] if act else 'no cache yet: popularity only'}) on "
               f"http://{host}:{port} (API docs at /docs); admin endpoints "
               f"{'on' if token else 'off (set $' + admin_token_env + ')'}. Ctrl-C stops it.", err=True)
    server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port, log_level="warning", access_log=False))
    if self_check:
        def check() -> None:
            import time
            import urllib.request

            for _ in range(100):
                if server.started:
                    break
                time.sleep(0.1)
            with urllib.request.urlopen(url, timeout=10) as r:
                typer.echo(f"\n$ curl '{url}'\n{r.read().decode()}\n", err=True)

        threading.Thread(target=check, daemon=True).start()
    else:
        typer.echo(f"try: curl '{url}'", err=True)
    server.run()


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders (e.g. runs/scientific runs/scientific-L3 ...)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for report.md and its PNG plots")],
    title: Annotated[str, typer.Option(help="report title")] = "genrec report",
    notes: Annotated[Path | None, typer.Option(help="a Markdown file placed under the title (budgets, commands)")] = None,
    baselines: Annotated[Path | None, typer.Option(help="baseline rows measured elsewhere on the same split "
                                                       "(benchmarks/results/baselines.json)")] = None,
    dataset: Annotated[str | None, typer.Option(help="the dataset whose rows --baselines contributes")] = None,
) -> None:
    """A Markdown report over runs: the methods table with the improvement over the best baseline,
    loss curves, and metrics against the number of codebooks and the negative-sampling ratio."""
    from genrec.report import read_baselines, write_report

    if (baselines is None) != (dataset is None):
        raise GenrecError("--baselines and --dataset go together")
    text = notes.read_text() if notes is not None else ""
    rows = read_baselines(baselines, dataset) if baselines is not None else None
    typer.echo(f"wrote {write_report(runs, out, title, text, rows)}")


def _main_process_first():
    """Under a multi-process launch: rank 0 builds shared stages first, the others then find them up to date."""
    import contextlib

    from genrec.device import launch_rank

    if launch_rank()[1] == 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    from genrec.device import pick_device

    return PartialState(cpu=pick_device("auto").type == "cpu").main_process_first()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a GenrecError becomes one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="genrec")
    except GenrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # typer's standalone mode exits with the command's code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def entry() -> None:
    sys.exit(main())
