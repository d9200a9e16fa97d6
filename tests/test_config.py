"""Run configs are checked in full when they are loaded: every section that names a class
(baselines, baseline_params, cf, index, train.distill.teacher) against that class's settings,
before any stage runs and without importing torch."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from genrec.config import load_config
from genrec.errors import DataError, GenrecError

ROOT = Path(__file__).resolve().parents[1]

#: a small but complete run config; the cases below each break one key of it
BASE = {
    "name": "t",
    "data": {"source": "synth", "synth": {"n_users": 40, "n_items": 30, "n_categories": 2, "seed": 0}},
    "baselines": ["pop", "sasrec-ce"],
    "baseline_params": {"sasrec-ce": {"config": {"dim": 16}, "train": {"epochs": 2}}},
    "cf": {"model": "dccf", "dim": 8, "train": {"epochs": 2}},
    "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 4}},
    "tasks": {"layout": "all_positions"},
    "train": {"max_steps": 2, "distill": {"teacher": "sasrec-ce"}},
}


def _set(cfg: dict, key: str, value) -> dict:
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return cfg


#: (case, key set, value, the key path the error names, words the error must list: the allowed keys or names)
BROKEN = [
    ("index.config typo", "index.config.levls", 3, "index.config.levls", ["levels", "codebook_size", "llm_weight"]),
    ("index.config bad value", "index.config.levels", 0, "index.config.levels", ["greater than or equal to 1"]),
    ("unknown index method", "index.method", "alignmnt", "index.method", ["'alignmnt'", "alignment", "rqvae", "iid"]),
    ("cf.train typo", "cf.train.epocs", 3, "cf.train.epocs", ["epochs", "patience", "batch_size"]),
    ("cf.config typo", "cf.config", {"layer": 3}, "cf.config.layer", ["layers", "intents", "emb_reg"]),
    ("unknown cf model", "cf.model", "dcf", "cf.model", ["'dcf'", "dccf", "lightgcn", "sasrec"]),
    ("baseline train typo", "baseline_params.sasrec-ce.train.patiense", 3, "baseline_params.sasrec-ce.train.patiense",
     ["patience", "epochs"]),
    ("baseline config typo", "baseline_params.sasrec-ce.config.head", 2, "baseline_params.sasrec-ce.config.head",
     ["heads", "max_len", "dropout"]),
    ("baseline params key typo", "baseline_params.sasrec-ce.trian", {}, "baseline_params.sasrec-ce.trian",
     ["config", "train"]),
    ("unknown baseline", "baselines", ["pop", "sasrec_ce"], "baselines", ["'sasrec_ce'", "sasrec-ce", "bert4rec", "pop"]),
    ("unknown baseline in baseline_params", "baseline_params.sasrecce", {}, "baseline_params.sasrecce",
     ["unknown baseline", "sasrec-ce", "tiger"]),
    ("unknown distill teacher", "train.distill.teacher", "sasrecce", "train.distill.teacher",
     ["'sasrecce'", "sasrec-ce", "gru4rec"]),
    ("pop takes no settings", "baseline_params.pop", {"train": {"epochs": 3}}, "baseline_params.pop.train",
     ["no settings"]),
    ("a listed baseline's required setting", "baselines", ["pop", "tiger"], "baseline_params.tiger.config.index",
     ["required"]),
    ("a key of the run config itself", "evaluate", {"kss": [1]}, "evaluate.kss", ["ks", "mask_history"]),
]


def _write(tmp_path: Path, key: str | None = None, value=None) -> Path:
    cfg = copy.deepcopy(BASE)
    cfg["run_dir"] = str(tmp_path / "run")
    if key is not None:
        _set(cfg, key, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def stages(monkeypatch):
    """Records pipeline.run calls instead of running the stages, and stops there (a check that let a
    broken config through then fails at once rather than training on it)."""
    import genrec.pipeline

    calls = []

    def run(cfg, **kwargs):
        calls.append(cfg)
        raise GenrecError("the stages were started")

    monkeypatch.setattr(genrec.pipeline, "run", run)
    return calls


@pytest.mark.parametrize("command", ["run", "train"])
@pytest.mark.parametrize(("case", "key", "value", "where", "listed"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_section_fails_before_any_stage(cli, tmp_path, stages, command, case, key, value, where, listed):
    path = _write(tmp_path, key, value)
    args = ["run", path] if command == "run" else ["train", "--config", path]
    t0 = time.perf_counter()
    code, out, err = cli(*args)
    seconds = time.perf_counter() - t0
    assert code == 2, err
    assert err.startswith(f"error: {path}: {where}: ") and err.count("\n") == 1, err  # one line: file, key, then what
    for word in listed:
        assert word in err, (word, err)
    assert not stages and not (tmp_path / "run").exists()
    assert seconds < 10, seconds


def test_a_valid_config_reaches_the_stages_with_its_sections_as_written(cli, tmp_path, stages):
    """The checks pass a good config through unchanged: the stages get the dicts as written (they
    hash them into their fingerprints), no defaults filled in."""
    code, _, err = cli("run", _write(tmp_path))
    assert code == 2 and err == "error: the stages were started\n" and len(stages) == 1, err
    cfg = stages[0]
    assert cfg.index.config == BASE["index"]["config"]
    assert cfg.cf.train == BASE["cf"]["train"] and cfg.cf.config == {}
    assert cfg.baseline_params == BASE["baseline_params"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_passes_the_checks(path):
    cfg = load_config(path)
    assert cfg.name


def test_overrides_are_checked_too(tmp_path):
    path = _write(tmp_path)
    with pytest.raises(DataError, match=r"index\.config\.codebook: unknown key; expected one of: levels, codebook_size"):
        load_config(path, ["index.config.codebook=8"])


def test_the_settings_registries_match_the_classes():
    """The torch-free registries the checks read name the settings the classes are built with."""
    from genrec.index.configs import CONFIGS
    from genrec.index.registry import INDEXERS
    from genrec.registry import BASELINES, EMBEDDING_MODELS, SPECS

    assert list(BASELINES) == list(SPECS)
    for name, spec in SPECS.items():
        assert getattr(BASELINES[name], "config_cls", None) is spec.config, name
    assert set(EMBEDDING_MODELS.values()) <= set(SPECS)
    assert set(INDEXERS) == set(CONFIGS)
    for method, cls in INDEXERS.items():
        assert getattr(cls, "config_class", CONFIGS[method]) is CONFIGS[method], method


def test_the_cli_reports_a_broken_config_quickly_without_loading_torch(tmp_path):
    """As a user runs it: a fresh process, one line on stderr, exit code 2; loading and checking a
    whole config imports no torch (that import alone takes seconds on a busy machine)."""
    path = _write(tmp_path, "index.config.levls", 3)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "genrec", "run", str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    seconds = time.perf_counter() - t0
    assert res.returncode == 2 and res.stderr.startswith(f"error: {path}: index.config.levls: unknown key"), res.stderr
    assert not (tmp_path / "run").exists()
    assert seconds < 10, seconds
    check = ("import sys; from genrec.config import load_config; load_config(sys.argv[1]); "
             "assert 'torch' not in sys.modules, 'torch was imported'")
    res = subprocess.run([sys.executable, "-c", check, str(ROOT / "configs" / "scientific.yaml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_baselines_list_names_every_registered_model(cli):
    from genrec.registry import SPECS

    code, out, err = cli("baselines", "list")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == list(SPECS)
